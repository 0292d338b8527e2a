"""Checkpoints written before the library split (code at d3a04ba, ``tests/fixtures/legacy_d3a04ba``) load in
today's code and give bit-identical outputs on the same inputs: logits, every loss term, attention maps and greedy
``generate``. The fixtures hold each model's ``config.json`` (every field of the old 71-field config), its weights
and ``expected.safetensors`` (the inputs and the outputs the old code computed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_foveated import FoveatedVLMForConditionalGeneration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_d3a04ba"
OUTPUTS = ("logits", "loss", "loss_fine", "loss_coarse", "loss_caption", "loss_caption_coarse")
ATTENTIONS = ("attention_fine", "attention_coarse")


def _expected(name: str) -> tuple[dict, dict]:
    tensors = load_file(FIXTURES / name / "expected.safetensors")
    inputs = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")}
    outputs = {k.removeprefix("output."): v for k, v in tensors.items() if k.startswith("output.")}
    return inputs, outputs


def _check_bit_identical(name: str) -> None:
    model = FoveatedVLMForConditionalGeneration.from_pretrained(FIXTURES / name).eval()
    inputs, expected = _expected(name)
    with torch.no_grad():
        output = model(**inputs)
        generate_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "prediction_targets")}
        generated = model.generate(**generate_inputs, max_new_tokens=4, do_sample=False)
    for field in (*OUTPUTS, *ATTENTIONS):
        assert torch.equal(getattr(output, field), expected[field]), f"{name}: {field} changed"
    assert torch.equal(generated, expected["generated"]), f"{name}: generate changed"


@pytest.mark.parametrize("name", ["query", "recipe", "multi_scale"])
def test_legacy_checkpoint_outputs_are_bit_identical(name):
    _check_bit_identical(name)


def test_legacy_study_reader_checkpoint_says_where_its_reader_lives(monkeypatch):
    """A checkpoint of a reader that moved to ``studies.readers`` fails to load without it, naming the package;
    with it imported, it loads and computes what it computed."""
    import reader_config_foveated
    import readers_foveated

    monkeypatch.setattr(readers_foveated, "FRAME_READERS", dict(readers_foveated.FRAME_READERS))
    monkeypatch.setattr(reader_config_foveated, "READER_CONFIGS", dict(reader_config_foveated.READER_CONFIGS))
    readers_foveated.FRAME_READERS.pop("dual_stream", None)
    reader_config_foveated.READER_CONFIGS.pop("dual_stream", None)
    with pytest.raises(ValueError, match=r"study reader.*studies\.readers"):
        FoveatedVLMForConditionalGeneration.from_pretrained(FIXTURES / "dual_stream")
    import studies.readers  # registers the study readers (here, or already in an earlier test: then again)

    if "dual_stream" not in readers_foveated.FRAME_READERS:
        readers_foveated.register_reader("dual_stream", *studies.readers.STUDY_READERS["dual_stream"])
    _check_bit_identical("dual_stream")


@pytest.mark.parametrize("name", ["query", "recipe"])
def test_a_fresh_model_initialises_the_weights_the_old_code_did(tokenizer, name):
    """The same seed draws the same weights as before the split, so a training run (the main job) reproduces its
    figures: the fixtures' weights are the old code's initialisation at seed 0 of the same tiny config."""
    from foveated_vlm.tiny import tiny_config

    saved = FoveatedVLMForConditionalGeneration.from_pretrained(FIXTURES / name).config.to_dict()
    overrides = {key: saved[key] for key in ("plan_first_query", "glimpse_location", "attention_map_layer")}
    overrides["previous_target_dropout"] = saved["previous_target_dropout"]
    torch.manual_seed(0)
    fresh = FoveatedVLMForConditionalGeneration(tiny_config(tokenizer, **overrides)).state_dict()
    reloaded = FoveatedVLMForConditionalGeneration.from_pretrained(FIXTURES / name).state_dict()
    assert set(fresh) == set(reloaded)
    for key, value in reloaded.items():
        assert torch.equal(fresh[key], value), key
