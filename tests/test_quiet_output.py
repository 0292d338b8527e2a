"""The main job's output holds no prompt and no warning a user has to interpret (issue 12, item 7)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from foveated_vlm.training import checkpoint

LOAD_BY_CLASS = textwrap.dedent(
    """
    import sys
    from modeling_foveated import FoveatedVLMForConditionalGeneration
    from processing_foveated import FoveatedVLMProcessor
    FoveatedVLMForConditionalGeneration.from_pretrained(sys.argv[1])
    FoveatedVLMProcessor.from_pretrained(sys.argv[1])
    print("loaded")
    """
)


def test_loading_the_saved_processor_by_class_asks_nothing_and_warns_nothing(make_model, tmp_path):
    """The demo report loads its own model by class: transformers used to ask 'Do you wish to run the custom
    code? [y/N]' (the tokenizer read config.json through AutoConfig) and warn about the model type."""
    model, processor = make_model()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_BY_CLASS, str(tmp_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env={"TRANSFORMERS_VERBOSITY": "warning", "PATH": "", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded"
    for noise in ("custom code", "[y/N]", "You are using a model of type", "trust_remote_code"):
        assert noise not in result.stderr, result.stderr


def test_accelerates_tied_head_notice_is_dropped_and_other_warnings_kept(caplog):
    logger = logging.getLogger("accelerate.utils.other")
    with caplog.at_level(logging.WARNING):
        logger.warning(
            "[RANK 0] Removed shared tensor {'language_model.lm_head.weight'} while saving. This should be OK, but "
            "check by verifying that you don't receive any warning while reloading"
        )
        logger.warning("[RANK 0] Removed shared tensor {'something.else'} while saving.")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["[RANK 0] Removed shared tensor {'something.else'} while saving."]
    assert any(isinstance(f, checkpoint._TiedHeadNotice) for f in logger.filters)
