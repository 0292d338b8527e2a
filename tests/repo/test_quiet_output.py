"""The main job's output holds no prompt and no warning a user has to interpret (issue 12, item 7)."""

from __future__ import annotations

import logging

from foveated_vlm.training import checkpoint


def test_loading_the_saved_processor_by_class_asks_nothing_and_warns_nothing(
    make_model, tmp_path, monkeypatch, capfd
):
    """The demo report loads its own model by class: transformers used to ask 'Do you wish to run the custom
    code? [y/N]' (the tokenizer read config.json through AutoConfig) and warn about the model type."""
    from transformers.models.auto import configuration_auto

    from modeling_foveated import FoveatedVLMForConditionalGeneration
    from processing_foveated import FoveatedVLMProcessor

    def asked(*args, **kwargs):
        raise AssertionError("loading asked whether to trust the directory's code")

    model, processor = make_model()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    capfd.readouterr()
    monkeypatch.setattr(configuration_auto, "resolve_trust_remote_code", asked)
    FoveatedVLMForConditionalGeneration.from_pretrained(tmp_path)
    loaded = FoveatedVLMProcessor.from_pretrained(tmp_path)
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    err = capfd.readouterr().err
    for noise in ("custom code", "[y/N]", "You are using a model of type", "trust_remote_code"):
        assert noise not in err, err


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
