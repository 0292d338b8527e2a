"""Building the model from pretrained parts: local directories here (no hub), the packaged GGUF when marked slow."""

from __future__ import annotations

import pytest
import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel, LlamaConfig, LlamaForCausalLM

from foveated_vlm.build import SMOLLM2_GGUF, VOCAB_MULTIPLE, build_foveated_vlm
from processing_foveated import VIDEO_TOKENS

VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 8,
    "num_register_tokens": 4,
}


@pytest.fixture
def parts(tmp_path, tokenizer):
    """A tiny DINOv3 and a tiny Llama (with the tiny tokenizer) saved as pretrained directories."""
    torch.manual_seed(0)
    vision = DINOv3ViTModel(DINOv3ViTConfig(**VISION))
    vision.save_pretrained(tmp_path / "vision")
    text_config = LlamaConfig(
        vocab_size=450,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    language = LlamaForCausalLM(text_config)
    language.save_pretrained(tmp_path / "text")
    tokenizer.save_pretrained(tmp_path / "text")
    return vision, language, tmp_path


def test_build_copies_the_parts_and_adds_the_video_tokens(parts, random_video):
    vision, language, root = parts
    model, processor = build_foveated_vlm(
        vision=root / "vision", text=root / "text", image_size=32, lambda_coarse=0.5
    )
    assert model.config.lambda_coarse == 0.5 and model.config.vision_config.image_size == 32
    for key, value in vision.state_dict().items():
        assert torch.equal(model.model.fovea_encoder.vision_model.state_dict()[key], value), key
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] % VOCAB_MULTIPLE == 0 and embeddings.shape[0] >= len(processor.tokenizer)
    assert torch.equal(embeddings[:450], language.get_input_embeddings().weight)
    assert model.lm_head.weight.data_ptr() == embeddings.data_ptr(), "tying kept"
    ids = [processor.tokenizer.convert_tokens_to_ids(token) for token in VIDEO_TOKENS]
    config = model.config
    assert ids == [config.frame_token_id, config.video_start_token_id, config.video_end_token_id]
    inputs = processor(text="Describe the video.", videos=random_video(3))
    assert (
        model.eval().generate(**inputs, max_new_tokens=3, do_sample=False).shape[1]
        == inputs["input_ids"].shape[1] + 3
    )


def test_missing_vision_encoder_warns_loudly_and_initialises_randomly(parts):
    _, _, root = parts
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        model, _ = build_foveated_vlm(vision=root / "missing", text=root / "text", image_size=64)
    assert model.config.vision_config.num_register_tokens == 4
    assert model.config.vision_config.hidden_size == 384


def test_non_llama_language_models_are_refused(tmp_path, parts):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, _, root = parts
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=450)).save_pretrained(
        tmp_path / "gpt2"
    )
    (root / "text" / "tokenizer.json").replace(tmp_path / "gpt2" / "tokenizer.json")
    (root / "text" / "tokenizer_config.json").replace(tmp_path / "gpt2" / "tokenizer_config.json")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="Llama-architecture"):
        build_foveated_vlm(vision=None, text=tmp_path / "gpt2", image_size=32)


@pytest.mark.slow
def test_full_size_model_from_the_packaged_smollm2_gguf(random_video):
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        model, processor = build_foveated_vlm(vision=None, text=SMOLLM2_GGUF)
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (576, 30, 49216)
    tokenizer = processor.tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    answer = model.eval().generate(input_ids=ids["input_ids"], max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, ids["input_ids"].shape[1] :])
    inputs = processor(text="Describe the video.", videos=random_video(2, 256, 256))
    assert (
        model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1]
        == inputs["input_ids"].shape[1] + 2
    )
