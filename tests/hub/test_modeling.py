"""The foveated encoder, the two passes, the losses and generate, on tiny configs built in code."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTModel

from modeling_foveated import FoveatedVLMOutput

from ..builders import CAPTIONS, PROMPTS, caption_batch


def _masked_reference(vit: DINOv3ViTModel, pixels: torch.Tensor, query_tokens: torch.Tensor) -> torch.Tensor:
    """The proposal's formulation: the ViT over [CLS, registers, query, patches] with an asymmetric mask."""
    states = vit.embeddings(pixels)
    prefix = 1 + vit.config.num_register_tokens
    states = torch.cat([states[:, :prefix], query_tokens[:, None], states[:, prefix:]], dim=1)
    size = states.shape[1]
    mask = torch.zeros(size, size)
    mask[:, prefix] = float("-inf")  # nobody sees the query ...
    mask[prefix, :] = 0.0  # ... except the query itself, which sees everything
    position = vit.rope_embeddings(pixels)
    for layer in vit.model.layer:
        states = layer(
            states, attention_mask=mask.expand(len(pixels), 1, size, size), position_embeddings=position
        )
    return vit.norm(states)[:, prefix]


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_query_pass_equals_masked_self_attention(make_model, implementation):
    model, _ = make_model()
    vit = model.model.fovea_encoder.vision_model
    vit.config._attn_implementation = implementation
    pixels = torch.randn(6, 3, 32, 32)
    queries = torch.randn(6, model.config.query_dim)
    tokens, attention = model.read_frames(queries, model.encode_frames(pixels))
    reference = _masked_reference(vit, pixels, model.model.fovea_query_input_projection(queries))
    torch.testing.assert_close(tokens, reference, atol=1e-5, rtol=1e-4)
    tokens_per_frame = 1 + model.config.vision_config.num_register_tokens + model.config.num_patches
    assert attention.shape == (6, tokens_per_frame + 1)  # [CLS, registers, patches, own key]
    torch.testing.assert_close(attention.sum(-1), torch.ones(6))


def test_patch_states_equal_plain_forward_and_ignore_the_query(make_model):
    model, _ = make_model()
    pixels = torch.randn(4, 3, 32, 32)
    cache = model.encode_frames(pixels)
    plain = model.model.fovea_encoder.vision_model(pixels).last_hidden_state
    torch.testing.assert_close(cache.patch_states, plain, atol=1e-5, rtol=1e-4)
    model.read_frames(torch.randn(4, model.config.query_dim), cache)
    torch.testing.assert_close(cache.patch_states, plain, atol=1e-5, rtol=1e-4)


def test_patch_keys_and_values_are_computed_once(make_model, random_video):
    """k_proj sees each frame's S tokens once (patch pass) plus one row per query read (2 passes)."""
    model, processor = make_model()
    batch = caption_batch(processor)
    rows = []
    hooks = [
        layer.attention.k_proj.register_forward_hook(
            lambda _m, args, _o: rows.append(args[0].shape[:-1].numel())
        )
        for layer in model.model.fovea_encoder.layers
    ]
    model(**batch)
    for hook in hooks:
        hook.remove()
    frames = int(batch["video_frame_mask"].sum())
    tokens_per_frame = 1 + model.config.vision_config.num_register_tokens + model.config.num_patches
    layers = len(model.model.fovea_encoder.layers)
    assert sum(rows) == layers * (frames * tokens_per_frame + 2 * frames)


def test_output_shapes(make_model, random_video):
    model, processor = make_model()
    batch = caption_batch(processor)
    out = model(**batch)
    frames = int(batch["video_frame_mask"].sum())
    config = model.config
    assert isinstance(out, FoveatedVLMOutput)
    assert out.logits.shape == (*batch["input_ids"].shape, config.text_config.vocab_size)
    for name in ("predictions_fine", "predictions_coarse"):
        assert out[name].shape == (frames, *config.target_shape)
    assert out.queries.shape == (frames, config.query_dim)
    for name in ("attention_fine", "attention_coarse"):
        assert out[name].shape == (frames, config.num_patches)
    for name in ("visual_tokens_fine", "visual_tokens_coarse"):
        assert out[name].shape == (frames, config.vision_config.hidden_size)
    for name in ("loss", "loss_fine", "loss_coarse", "loss_caption", "loss_caption_coarse"):
        assert out[name].dim() == 0 and torch.isfinite(out[name])
    expected = out.loss_fine + out.loss_coarse + out.loss_caption + out.loss_caption_coarse
    torch.testing.assert_close(out.loss, expected)


def test_first_frame_is_read_by_the_initial_query_and_later_frames_by_planned_ones(make_model, random_video):
    model, processor = make_model()
    batch = caption_batch(processor)
    out = model(**batch)
    first = torch.tensor([True, False, False, False, False, True, False, False])
    torch.testing.assert_close(out.queries[first], model.model.fovea_initial_query.expand(2, -1))
    assert not torch.isclose(out.queries[~first], model.model.fovea_initial_query).all(-1).any()


def test_gradients_reach_static_query_through_both_paths(make_model, random_video):
    model, processor = make_model()
    model.train()
    out = model(**caption_batch(processor))
    for term in ("loss_coarse", "loss_fine", "loss_caption"):
        (gradient,) = torch.autograd.grad(out[term], model.model.fovea_static_query, retain_graph=True)
        assert gradient.abs().sum() > 0, f"{term} does not reach q_static"
    (gradient,) = torch.autograd.grad(out.loss_fine, model.model.fovea_initial_query, retain_graph=True)
    assert gradient.abs().sum() > 0
    (gradient,) = torch.autograd.grad(out.loss_coarse, model.model.fovea_query_head.weight, allow_unused=True)
    assert gradient is None, "the coarse loss must not depend on the planned queries"


def test_padded_batch_matches_unpadded_runs(make_model, random_video):
    model, processor = make_model()
    batch = caption_batch(processor)
    out = model(**batch)
    singles = [caption_batch(processor, lengths=(5,)), None]
    singles[1] = processor(
        text=list(PROMPTS[1:2]),
        videos=[random_video(3, seed=1)],
        captions=list(CAPTIONS[1:2]),
        return_targets=True,
    )
    results = [model(**single) for single in singles]
    torch.testing.assert_close(out.predictions_fine[:5], results[0].predictions_fine, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.predictions_fine[5:], results[1].predictions_fine, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.queries[5:], results[1].queries, atol=1e-5, rtol=1e-4)
    for row, (single, result) in enumerate(zip(singles, results)):
        length = single["input_ids"].shape[1]
        torch.testing.assert_close(out.logits[row, -length:], result.logits[0], atol=1e-4, rtol=1e-4)
    frame_weights = torch.tensor([5.0, 3.0])
    token_weights = torch.tensor([float((s["labels"] != -100).sum()) for s in singles])
    for name, weights in (
        ("loss_fine", frame_weights),
        ("loss_coarse", frame_weights),
        ("loss_caption", token_weights),
    ):
        combined = (torch.stack([r[name] for r in results]) * weights).sum() / weights.sum()
        torch.testing.assert_close(out[name], combined, atol=1e-5, rtol=1e-4)


def test_padded_frames_never_reach_the_model(make_model, random_video):
    """Garbage in padded frame slots changes nothing."""
    model, processor = make_model()
    batch = caption_batch(processor)
    reference = model(**batch)
    batch["pixel_values_videos"][1, 3:] = 1e6
    batch["prediction_targets"][1, 3:] = float("nan")
    out = model(**batch)
    torch.testing.assert_close(out.loss, reference.loss)


def test_generate_greedy_sampling_and_coarse_mode(make_model, random_video):
    model, processor = make_model()
    inputs = processor(text=list(PROMPTS), videos=[random_video(4), random_video(2, seed=3)])
    greedy = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    again = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert greedy.shape == (2, inputs["input_ids"].shape[1] + 6)
    assert torch.equal(greedy, again)
    torch.manual_seed(0)
    sampled = model.generate(**inputs, max_new_tokens=6, do_sample=True, top_k=0, temperature=5.0)
    assert sampled.shape == greedy.shape and not torch.equal(sampled, greedy)
    coarse = model.generate(**inputs, max_new_tokens=6, do_sample=False, inference_mode="coarse")
    assert coarse.shape == greedy.shape
    # The first generated token equals the argmax of the forward's last logits in each mode.
    for mode, generated in (("two_pass", greedy), ("coarse", coarse)):
        logits = model(**inputs, inference_mode=mode).logits[:, -1]
        assert torch.equal(generated[:, inputs["input_ids"].shape[1]], logits.argmax(-1))
    assert processor.decode_generated(greedy, inputs)[0] == processor.decode(
        greedy[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )


def test_generate_with_cache_equals_full_recompute(make_model, random_video):
    model, processor = make_model()
    inputs = processor(text=list(PROMPTS[:1]), videos=[random_video(4)])
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    mask = torch.ones_like(generated)
    video = {k: inputs[k] for k in ("pixel_values_videos", "video_frame_mask")}
    logits = model(input_ids=generated, attention_mask=mask, **video).logits
    start = inputs["input_ids"].shape[1]
    assert torch.equal(logits[0, start - 1 : -1].argmax(-1), generated[0, start:])


def test_cache_continues_the_prompt_and_accepts_its_deprecated_name(make_model, random_video):
    model, processor = make_model()
    model.eval()
    inputs = processor(text=list(PROMPTS[:1]), videos=[random_video(4)])
    prompt = model(**inputs, use_cache=True)
    suffix = torch.tensor([[processor.tokenizer.eos_token_id]])
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(suffix)], dim=1)
    full = model(
        **{**inputs, "input_ids": torch.cat([inputs["input_ids"], suffix], 1), "attention_mask": mask}
    )
    continued = model(input_ids=suffix, attention_mask=mask, cache=prompt.cache, use_cache=True)
    torch.testing.assert_close(continued.logits[:, -1], full.logits[:, -1], rtol=1e-4, atol=1e-4)
    prompt.cache.crop(-suffix.shape[1])  # back to the prompt
    renamed = model(input_ids=suffix, attention_mask=mask, past_key_values=prompt.cache, use_cache=True)
    torch.testing.assert_close(renamed.logits, continued.logits)


def test_text_only_forward_is_a_language_model(make_model, tokenizer):
    model, _ = make_model()
    ids = tokenizer("the red square", return_tensors="pt")["input_ids"]
    out = model(input_ids=ids, labels=ids)
    language_model = LlamaForCausalLM(model.config.text_config).eval()  # the same weights in transformers' LM
    decoder = {f"model.{name}": value for name, value in model.model.language_model.state_dict().items()}
    language_model.load_state_dict({**decoder, "lm_head.weight": model.lm_head.weight})
    reference = language_model(input_ids=ids, labels=ids)
    torch.testing.assert_close(out.logits, reference.logits)
    torch.testing.assert_close(out.loss, reference.loss)


def test_model_rejects_inconsistent_inputs(make_model, random_video):
    model, processor = make_model()
    batch = caption_batch(processor)
    mask = batch["video_frame_mask"].clone()
    mask[0, 4] = False
    with pytest.raises(ValueError, match="frame tokens per sample"):
        model(**{**batch, "video_frame_mask": mask})
    with pytest.raises(ValueError, match=r"\[B, T, C, H, W\]"):
        model(**{**batch, "pixel_values_videos": batch["pixel_values_videos"][0]})
    with pytest.raises(ValueError, match="inference_mode"):
        model(**batch, inference_mode="fovea")
    with pytest.raises(ValueError, match="input_ids"):
        model(inputs_embeds=torch.zeros(1, 3, 48))


def test_prediction_head_runs_channels_last_and_returns_a_contiguous_prediction(make_model):
    model, _ = make_model()
    head = model.fovea_prediction_head
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, model.config.text_config.hidden_size, generator=generator)
    previous = torch.randn(3, model.config.target_channels, 8, 8, generator=generator)
    scale, shift = head.film(hidden).chunk(2, dim=-1)
    features = head.target_encoder(previous) * scale[..., None, None] + shift[..., None, None]
    prediction = head(hidden, previous)
    assert prediction.is_contiguous()
    torch.testing.assert_close(prediction, head.target_decoder(features))


def test_activation_checkpointing_covers_both_models_and_refuses_other_layouts(make_model, random_video):
    model, processor = make_model()
    model.train().activation_checkpointing_enable()
    assert (
        model.model.fovea_encoder.gradient_checkpointing
        and model.model.language_model.is_activation_checkpointing
    )
    out = model(**caption_batch(processor))
    out.loss.backward()
    assert model.model.fovea_static_query.grad is not None
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing
    with pytest.raises(ValueError, match="every_n_layers=2"):
        model.activation_checkpointing_enable(every_n_layers=2)
    with pytest.raises(ValueError, match="use_reentrant"):
        model.activation_checkpointing_enable({"use_reentrant": True})


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_unpadded_batch_attends_causally_with_every_attention_kernel(
    make_model, random_video, implementation
):
    """The mask-free decoder path must equal the decoder's own masked path (eager attention needs the mask)."""
    model, processor = make_model()
    model.model.language_model.config._attn_implementation = implementation
    inputs = processor(text=list(PROMPTS[:1]), videos=[random_video(4)])
    positions = torch.arange(inputs["input_ids"].shape[1]).unsqueeze(0)
    with torch.no_grad():
        direct = model(**inputs).logits
        masked = model(**inputs, position_ids=positions).logits
    torch.testing.assert_close(direct, masked)
