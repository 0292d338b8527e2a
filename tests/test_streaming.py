"""Streaming inference (streaming_foveated.py) equals the parallel two-pass forward and stays bounded."""

from __future__ import annotations

import pytest
import torch

from modeling_foveated import COARSE, FINE
from streaming_foveated import FoveatedStream, stream_prompt_inputs

PROMPTS = ("Describe the video.", "What does the red ball do?")
FRAME_COUNTS = (5, 3)  # a batch of streams of different lengths (and prompts of different lengths)
CAPTION_TOKENS = 6
# Larger than the tiny default so that random logits are far from ties and greedy captions are not degenerate.
TEXT_INIT_STD = 0.2
REMEDIES = {"predict_delta": True, "query_skip_to_head": True, "separate_prediction_heads": True}
# Relative tolerances (max |stream - parallel| / max |parallel|). The stream runs the same ops on other shapes
# (one token per LLM call instead of one prefill), so results agree to float rounding: ~1e-6 in fp32. bf16 keeps
# 8 mantissa bits (epsilon 2^-8 = 0.4%); rounding differences pass through the LLM and encoder layers, measured
# at 0.4-1.6% on these clips: 4% leaves margin while still catching any real mismatch (those are O(1)).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 4e-2}
LONG_VIDEO_FRAMES = 2000
LONG_VIDEO_CHUNK = 256


@pytest.fixture
def build(make_model):
    """``build(dtype, **config_overrides)`` -> a tiny random model in eval mode and its processor."""

    def make(dtype: torch.dtype = torch.float32, **overrides):
        text = {"initializer_range": TEXT_INIT_STD, **overrides.pop("text", {})}
        model, processor = make_model(text=text, **overrides)
        return model.to(dtype), processor

    return make


def clip_batch(processor, rows=slice(None)):
    """Processor inputs of the test clips (the same frames every call); ``rows`` picks some of them."""
    generator = torch.Generator().manual_seed(1)
    videos = [torch.rand(count, 40, 48, 3, generator=generator) for count in FRAME_COUNTS]
    return processor(text=list(PROMPTS[rows]), videos=videos[rows], return_targets=True)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def step_through(model, processor, inputs, prompts=PROMPTS, **stream_kwargs):
    """Drive a batch of streams frame by frame, as a padded batch from the processor is driven."""
    stream = model.stream(**stream_prompt_inputs(processor, list(prompts)), **stream_kwargs)
    steps = [
        stream.step(
            inputs["pixel_values_videos"][:, t],
            inputs["video_frame_mask"][:, t],
            inputs["prediction_targets"][:, t],
        )
        for t in range(inputs["video_frame_mask"].shape[1])
    ]
    stacked = {
        name: torch.stack([step[name] for step in steps], dim=1)
        for name in steps[0].keys()
        if name != "next_queries"
    }
    return stream, stacked


def caption_pair(model, inputs, stream, mode: str, **generate_kwargs):
    """(parallel generate, stream caption) with logits; the same seed before each for sampling."""
    common = {"max_new_tokens": CAPTION_TOKENS, "output_logits": True, "return_dict_in_generate": True}
    parallel_inputs = {k: v for k, v in inputs.items() if k != "prediction_targets"}
    torch.manual_seed(2)
    parallel = model.generate(**parallel_inputs, inference_mode=mode, **common, **generate_kwargs)
    torch.manual_seed(2)
    streamed = stream.caption(**common, **generate_kwargs)
    return parallel, streamed


@pytest.mark.parametrize(
    ("dtype", "mode", "overrides"),
    [
        (torch.float32, "two_pass", {}),
        (torch.bfloat16, "two_pass", {}),
        (torch.float32, "two_pass", REMEDIES),
        (torch.float32, "coarse", REMEDIES),
        (torch.bfloat16, "coarse", {}),
        (torch.float32, "two_pass", {"coarse_reading": "mean_pool"}),
    ],
    ids=["fp32", "bf16", "fp32-remedies", "fp32-coarse-remedies", "bf16-coarse", "fp32-mean-pool"],
)
def test_stream_equals_parallel_forward(build, dtype, mode, overrides):
    model, processor = build(dtype, **overrides)
    inputs = clip_batch(processor)
    with torch.no_grad():
        parallel = model(**inputs, inference_mode=mode)
    stream, steps = step_through(model, processor, inputs, inference_mode=mode)
    valid = inputs["video_frame_mask"]
    tolerance = TOLERANCE[dtype]

    assert relative_error(steps["attention_coarse"][valid], parallel.attention_coarse) < tolerance
    if mode == "two_pass":
        assert relative_error(steps["queries"][valid], parallel.queries) < tolerance
        assert relative_error(steps["attention"][valid], parallel.attention_fine) < tolerance
    expected_predictions = parallel.predictions_fine if mode == "two_pass" else parallel.predictions_coarse
    # Prediction of frame 1 comes at creation; step t predicts frame t + 1 (the last step's has no counterpart).
    predictions = torch.cat([stream.initial_prediction.unsqueeze(1), steps["predictions"]], dim=1)
    assert relative_error(predictions[:, : valid.shape[1]][valid], expected_predictions) < tolerance

    expected, streamed = caption_pair(model, inputs, stream, mode, do_sample=False)
    # The first caption step has the same context in both; later steps only if the chosen tokens agree, which
    # bf16 rounding does not guarantee where two logits nearly tie (fp32 must agree on every token).
    assert relative_error(streamed.logits[0], expected.logits[0]) < tolerance
    if dtype == torch.float32:
        assert torch.equal(streamed.sequences, expected.sequences[:, inputs["input_ids"].shape[1] :])
        assert relative_error(torch.stack(streamed.logits), torch.stack(expected.logits)) < tolerance


def test_caption_sampling_and_beams_match_generate(build):
    model, processor = build()
    inputs = clip_batch(processor)
    stream, _ = step_through(model, processor, inputs)
    prompt_length = inputs["input_ids"].shape[1]
    expected, streamed = caption_pair(
        model, inputs, stream, "two_pass", do_sample=True, top_k=0, temperature=1.5
    )
    assert torch.equal(streamed.sequences, expected.sequences[:, prompt_length:])
    assert (
        relative_error(torch.stack(streamed.logits), torch.stack(expected.logits)) < TOLERANCE[torch.float32]
    )
    expected, streamed = caption_pair(model, inputs, stream, "two_pass", num_beams=3, num_return_sequences=2)
    assert streamed.sequences.shape[0] == 2 * len(PROMPTS)
    assert torch.equal(streamed.sequences, expected.sequences[:, prompt_length:])


def test_chunked_extend_equals_steps(build):
    model, processor = build()
    inputs = clip_batch(processor)
    stepped, steps = step_through(model, processor, inputs)
    chunked = model.stream(**stream_prompt_inputs(processor, list(PROMPTS)), chunk_frames=2)
    extended = chunked.extend(
        inputs["pixel_values_videos"], inputs["video_frame_mask"], inputs["prediction_targets"]
    )
    for name, value in steps.items():
        assert relative_error(extended[name], value) < TOLERANCE[torch.float32], name
    assert relative_error(chunked.next_queries, stepped.next_queries) < TOLERANCE[torch.float32]
    assert torch.equal(chunked.input_ids, stepped.input_ids)
    assert torch.equal(chunked.attention_mask, stepped.attention_mask)
    for mode in (COARSE, FINE):
        keys, reference = chunked.caches[mode].layers[0].keys, stepped.caches[mode].layers[0].keys
        assert relative_error(keys, reference) < TOLERANCE[torch.float32]


def test_prompt_inputs_are_the_processor_tokens(build):
    _, processor = build()
    inputs = clip_batch(processor)
    prompt = stream_prompt_inputs(processor, list(PROMPTS))
    for row, count in enumerate(FRAME_COUNTS):
        prefix = prompt["input_ids"][row][prompt["attention_mask"][row].bool()]
        frames = torch.full((count,), processor.video_token_ids["<|frame|>"])
        full = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
        assert torch.equal(torch.cat([prefix, frames, prompt["suffix_ids"]]), full)


def test_caches_grow_one_position_per_frame(build):
    model, processor = build()
    inputs = clip_batch(processor)
    prompt = stream_prompt_inputs(processor, list(PROMPTS))
    stream = model.stream(**prompt)
    prompt_length = prompt["input_ids"].shape[1]
    assert {mode: cache.get_seq_length() for mode, cache in stream.caches.items()} == {
        COARSE: prompt_length,
        FINE: prompt_length,
    }
    fit = stream.frames_that_fit
    for t in range(inputs["video_frame_mask"].shape[1]):
        stream.step(inputs["pixel_values_videos"][:, t], inputs["video_frame_mask"][:, t])
        for cache in stream.caches.values():
            assert cache.get_seq_length() == prompt_length + t + 1
            assert cache.layers[0].keys.shape[-2] == prompt_length + t + 1
    assert stream.num_frames.tolist() == list(FRAME_COUNTS)
    free = model.config.text_config.max_position_embeddings - prompt["attention_mask"].sum(1)
    free = free - prompt["suffix_ids"].numel() - torch.tensor(FRAME_COUNTS)
    assert stream.frames_that_fit == int(free.min()) < fit  # the fullest stream limits the batch
    stream.caption(max_new_tokens=CAPTION_TOKENS)
    assert all(
        cache.get_seq_length() == prompt_length + max(FRAME_COUNTS) for cache in stream.caches.values()
    )


def test_ended_stream_does_not_advance(build):
    """A stream whose frames ran out keeps its state while the others go on: it equals a stream run alone."""
    model, processor = build()
    inputs = clip_batch(processor)
    batch, batch_steps = step_through(model, processor, inputs)
    alone, alone_steps = step_through(
        model, processor, clip_batch(processor, slice(1, 2)), prompts=PROMPTS[1:]
    )
    count = FRAME_COUNTS[1]
    assert torch.equal(batch.num_frames, torch.tensor(FRAME_COUNTS))
    assert (
        relative_error(batch_steps["queries"][1, :count], alone_steps["queries"][0])
        < TOLERANCE[torch.float32]
    )
    assert not batch_steps["attention"][1, count:].any()
    assert relative_error(batch.next_queries[1], alone.next_queries[0]) < TOLERANCE[torch.float32]
    batch_caption = batch.caption(max_new_tokens=CAPTION_TOKENS)
    assert torch.equal(batch_caption[1:], alone.caption(max_new_tokens=CAPTION_TOKENS))


def test_inactive_slot_is_skipped(build):
    """A slot where no stream is active (an all-False column) consumes no position: the stream is unchanged."""
    model, processor = build()
    inputs = clip_batch(processor, slice(0, 1))
    pixels, targets = inputs["pixel_values_videos"], inputs["prediction_targets"]
    kept = [0, 2, 3, 4]
    mask = torch.tensor([[True, False, True, True, True]])
    prompt = stream_prompt_inputs(processor, PROMPTS[0])
    gapped = model.stream(**prompt, chunk_frames=1)
    gapped_step = gapped.extend(pixels, mask, targets)
    plain = model.stream(**prompt)
    plain_step = plain.extend(pixels[:, kept], targets=targets[:, kept])
    assert not gapped_step.attention[0, 1].any()
    for name in ("queries", "attention", "predictions"):
        assert relative_error(gapped_step[name][:, kept], plain_step[name]) < TOLERANCE[torch.float32], name
    assert torch.equal(
        gapped.caption(max_new_tokens=CAPTION_TOKENS), plain.caption(max_new_tokens=CAPTION_TOKENS)
    )


def test_long_video_in_bounded_memory(build):
    """2,000 frames captioned chunk by chunk: the encoder never holds more than one chunk's K/V."""
    prompt_text = PROMPTS[0]
    model, processor = build(text={"max_position_embeddings": LONG_VIDEO_FRAMES + 64})
    video = torch.randint(0, 256, (LONG_VIDEO_FRAMES, 32, 32, 3), dtype=torch.uint8)
    inputs = processor(text=prompt_text, videos=video)
    encoder_calls: list[tuple[int, int]] = []
    encode_patches = model.fovea_encoder.encode_patches

    def counting_encode(pixels):
        cache = encode_patches(pixels)
        held = sum(t.numel() * t.element_size() for t in (*cache.keys, *cache.values, cache.patch_states))
        encoder_calls.append((pixels.shape[0], held))
        return cache

    model.fovea_encoder.encode_patches = counting_encode
    stream = model.stream(**stream_prompt_inputs(processor, prompt_text), chunk_frames=LONG_VIDEO_CHUNK)
    step = stream.extend(inputs["pixel_values_videos"])
    streamed = stream.caption(max_new_tokens=CAPTION_TOKENS, output_logits=True, return_dict_in_generate=True)

    frames_per_call = [frames for frames, _ in encoder_calls]
    assert max(frames_per_call) == LONG_VIDEO_CHUNK and sum(frames_per_call) == LONG_VIDEO_FRAMES
    per_frame_bytes = encoder_calls[0][1] // encoder_calls[0][0]
    assert max(held for _, held in encoder_calls) <= LONG_VIDEO_CHUNK * per_frame_bytes
    for cache in stream.caches.values():
        assert cache.get_seq_length() == inputs["input_ids"].shape[1] - stream.suffix_ids.numel()
    assert step.attention.shape == (1, LONG_VIDEO_FRAMES, model.config.num_patches)

    model.fovea_encoder.encode_patches = encode_patches
    expected = model.generate(
        **inputs, max_new_tokens=CAPTION_TOKENS, output_logits=True, return_dict_in_generate=True
    )
    assert torch.equal(streamed.sequences, expected.sequences[:, inputs["input_ids"].shape[1] :])
    assert (
        relative_error(torch.stack(streamed.logits), torch.stack(expected.logits)) < TOLERANCE[torch.float32]
    )


def test_too_many_frames_is_a_clear_error(build):
    model, processor = build()
    prompt = stream_prompt_inputs(processor, PROMPTS[0])
    stream = model.stream(**prompt)
    text_tokens = prompt["input_ids"].shape[1] + prompt["suffix_ids"].numel()
    fit = processor.frames_that_fit(text_tokens)
    assert stream.frames_that_fit == fit
    frames = torch.zeros(1, fit + 1, 3, 32, 32)
    with pytest.raises(ValueError, match=f"at most {fit} more frames fit; subsample"):
        stream.extend(frames)
    assert stream.caches[FINE].get_seq_length() == prompt["input_ids"].shape[1]  # nothing was consumed


def test_bad_inputs_are_value_errors(build):
    model, processor = build()
    prompt = stream_prompt_inputs(processor, PROMPTS[0])
    with pytest.raises(ValueError, match="must end with <video_start>"):
        model.stream(prompt["input_ids"][:, :-1])
    with pytest.raises(ValueError, match="suffix_ids must start with <video_end>"):
        model.stream(prompt["input_ids"], suffix_ids=prompt["suffix_ids"][1:])
    with pytest.raises(ValueError, match="inference_mode"):
        model.stream(**prompt, inference_mode="fine")
    stream = model.stream(prompt["input_ids"])
    with pytest.raises(ValueError, match=r"frames must be \[B=1, n, 3, 32, 32\]"):
        stream.extend(torch.zeros(1, 2, 3, 16, 16))
    with pytest.raises(ValueError, match="targets must be"):
        stream.step(torch.zeros(1, 3, 32, 32), targets=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="caption\\(\\) needs suffix_ids"):
        stream.caption()
    with pytest.raises(ValueError, match="model.eval"):
        FoveatedStream(model.train(), **prompt)
    dense, _ = build(foveation_mode="dense", dense_tokens_per_frame=4)
    with pytest.raises(ValueError, match="no queries"):
        dense.eval().stream(**prompt)
