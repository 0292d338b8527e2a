"""Checkpoints of the unsplit model (before ``FoveatedVLMModel`` became ``model.model``) load, and new ones keep
that key layout on disk, so that older code loads them too."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModel

from modeling_foveated import FoveatedVLMForConditionalGeneration

HEAD_KEY = "language_model.lm_head.weight"  # tied to the embeddings: save_pretrained leaves it out


def previous_layout_key(key: str) -> str:
    """The unsplit model's name of a parameter (stated independently of ``PREVIOUS_LAYOUT_KEYS``): the LLM was a
    ``LlamaForCausalLM`` named ``language_model``, everything of the base model sat on the model itself."""
    if key.startswith("lm_head."):
        return "language_model." + key
    if key.startswith("model.language_model."):
        return "language_model.model." + key.removeprefix("model.language_model.")
    return key.removeprefix("model.")


def _write_previous_checkpoint(model, directory, with_code: bool = False) -> dict[str, torch.Tensor]:
    """A directory holding ``model``'s weights under the unsplit names, as the previous code wrote them."""
    if with_code:
        model.save_pretrained(directory)  # config, auto_map and the Hub files; the weights are replaced below
    else:
        model.config.save_pretrained(directory)
    state = {previous_layout_key(k): v.clone() for k, v in model.state_dict().items()}
    assert "language_model.model.embed_tokens.weight" in state and "fovea_mode_embeddings" in state
    assert (
        "fovea_prediction_head.film.0.weight" in state
        and "fovea_encoder.vision_model.embeddings.cls_token" in state
    )
    del state[HEAD_KEY]
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return state


def _same_model(loaded, model, random_video, processor) -> None:
    reference = model.state_dict()
    weights = loaded.state_dict()
    assert weights.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(weights[key], value), key
    assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr(), "tying kept"
    inputs = processor(text="Describe the video.", videos=random_video(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"glimpse_location": True, "frame_reader": "cascade"},
        {"foveation_mode": "dense", "dense_tokens_per_frame": 4},
    ],
)
def test_a_checkpoint_of_the_unsplit_model_loads(make_model, random_video, tmp_path, overrides):
    model, processor = make_model(**overrides)
    _write_previous_checkpoint(model, tmp_path)
    loaded = FoveatedVLMForConditionalGeneration.from_pretrained(tmp_path)
    _same_model(loaded, model, random_video, processor)


def test_a_checkpoint_of_the_unsplit_model_loads_with_trust_remote_code(make_model, random_video, tmp_path):
    model, processor = make_model()
    _write_previous_checkpoint(model, tmp_path, with_code=True)
    loaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__module__.startswith("transformers_modules"), "the class came from the saved files"
    assert type(loaded).__name__ == "FoveatedVLMForConditionalGeneration"
    _same_model(loaded, model, random_video, processor)


def test_save_pretrained_keeps_the_unsplit_layout(make_model, tmp_path):
    model, _ = make_model()
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        saved = set(handle.keys())
    # transformers' own DINOv3 renaming writes the ViT's ``model.layer.N`` as ``layer.N``
    expected = {
        previous_layout_key(key).replace(".vision_model.model.layer.", ".vision_model.layer.")
        for key in model.state_dict()
    }
    assert saved == expected - {HEAD_KEY}
