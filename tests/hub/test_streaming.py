"""Streaming inference (streaming_foveated.py) equals the parallel two-pass forward and stays bounded."""

from __future__ import annotations

import pytest
import torch

from layout_foveated import COARSE, FINE
from streaming_foveated import FoveatedStream, stream_prompt_inputs

from ..builders import STREAM_CAPTION_TOKENS as CAPTION_TOKENS
from ..builders import STREAM_FRAME_COUNTS as FRAME_COUNTS
from ..builders import STREAM_PROMPTS as PROMPTS
from ..builders import STREAM_TEXT_INIT_STD as TEXT_INIT_STD
from ..builders import STREAM_TOLERANCE as TOLERANCE
from ..builders import caption_pair, relative_error, step_through
from ..builders import stream_clip_batch as clip_batch

REMEDIES = {"plan_first_query": True, "glimpse_location": True, "previous_target_dropout": 0.5}
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


@pytest.mark.parametrize(
    ("dtype", "mode", "overrides"),
    [
        (torch.float32, "two_pass", {}),
        (torch.bfloat16, "two_pass", {}),
        (torch.float32, "two_pass", REMEDIES),
        (torch.float32, "coarse", REMEDIES),
        (torch.bfloat16, "coarse", {}),
        (torch.float32, "two_pass", {"coarse_reading": "mean_pool"}),
        (torch.float32, "two_pass", {"visual_token_norm": True, "plan_first_query": True}),
    ],
    ids=[
        "fp32",
        "bf16",
        "fp32-remedies",
        "fp32-coarse-remedies",
        "bf16-coarse",
        "fp32-mean-pool",
        "fp32-label-free",
    ],
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
    encode_patches = model.model.fovea_encoder.encode_patches

    def counting_encode(pixels):
        cache = encode_patches(pixels)
        held = sum(t.numel() * t.element_size() for t in (*cache.keys, *cache.values, cache.patch_states))
        encoder_calls.append((pixels.shape[0], held))
        return cache

    model.model.fovea_encoder.encode_patches = counting_encode
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

    model.model.fovea_encoder.encode_patches = encode_patches
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
    frames = torch.full((1, fit + 1, 3, 32, 32), -1.0)  # normalised values (all-zero frames warn)
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


# ---------------------------------------------------------------------------------------------- fast path
FAST_TOLERANCE = (
    1e-5  # static caches + fixed buffers vs the DynamicCache path, float32: same ops, other shapes
)
FAST_FRAMES = 5
FAST_CASES = {
    "two-pass-fused": ("two_pass", {}, True),
    "two-pass-unfused": ("two_pass", {}, False),
    "fused-multi-scale": ("two_pass", {"frame_reader": "multi_scale"}, True),
    "fused-remedies": ("two_pass", REMEDIES, True),
    "fused-mean-pool": ("two_pass", {"coarse_reading": "mean_pool"}, True),
    "coarse-remedies": ("coarse", REMEDIES, True),
}


def fast_clip(model, count: int = FAST_FRAMES):
    """Frames, targets and an activity pattern with gaps (row 0 skips slot 1, row 1 ends after 3 frames)."""
    generator = torch.Generator().manual_seed(3)
    size = model.config.vision_config.image_size
    frames = torch.randn(len(PROMPTS), count, 3, size, size, generator=generator)
    targets = torch.randn(len(PROMPTS), count, *model.config.target_shape, generator=generator)
    active = torch.ones(len(PROMPTS), count, dtype=torch.bool)
    active[0, 1] = False
    active[1, 3:] = False
    return frames, targets, active


def run_steps(stream, frames, targets, active, slots):
    """``stream.step`` over ``slots``; targets on even slots only (a step with and one without targets)."""
    return [stream.step(frames[:, t], active[:, t], targets[:, t] if t % 2 == 0 else None) for t in slots]


@pytest.mark.parametrize(("mode", "overrides", "fuse"), list(FAST_CASES.values()), ids=list(FAST_CASES))
def test_fast_step_equals_step(build, mode, overrides, fuse):
    """max_frames (static caches, fixed buffers; eager on the CPU) gives FoveatedStream.step's outputs."""
    model, processor = build(**overrides)
    frames, targets, active = fast_clip(model)
    prompt = stream_prompt_inputs(processor, list(PROMPTS))
    reference = model.stream(**prompt, inference_mode=mode)
    fast = model.stream(**prompt, inference_mode=mode, max_frames=FAST_FRAMES, fuse_passes=fuse)
    expected = run_steps(reference, frames, targets, active, range(FAST_FRAMES))
    # compared after the last step: the outputs of earlier steps are copies, not views of the reused buffers
    steps = run_steps(fast, frames, targets, active, range(FAST_FRAMES))
    for step, reference_step in zip(steps, expected):
        assert list(step.keys()) == list(reference_step.keys())
        assert torch.equal(step.frame_mask, reference_step.frame_mask)
        for name in ("predictions", "queries", "attention", "attention_coarse", "next_queries"):
            if name in reference_step:
                assert relative_error(step[name], reference_step[name]) < FAST_TOLERANCE, name
                assert step[name].dtype == reference_step[name].dtype, name
    assert torch.equal(fast.num_frames, reference.num_frames)
    assert torch.equal(fast.input_ids, reference.input_ids)
    assert torch.equal(fast.attention_mask, reference.attention_mask)
    valid = reference.attention_mask.bool()
    for mode_id, cache in reference.caches.items():
        keys = fast.caches[mode_id].layers[-1].keys.transpose(1, 2)[valid]  # masked columns may differ
        assert relative_error(keys, cache.layers[-1].keys.transpose(1, 2)[valid]) < FAST_TOLERANCE
    assert torch.equal(
        fast.caption(max_new_tokens=CAPTION_TOKENS), reference.caption(max_new_tokens=CAPTION_TOKENS)
    )


def test_fast_steps_and_extend_interleave(build):
    """Fast steps, then chunked extend (dynamic caches), then fast steps again: the general path's results."""
    model, processor = build()
    frames, targets, active = fast_clip(model, 6)
    prompt = stream_prompt_inputs(processor, list(PROMPTS))
    reference = model.stream(**prompt)
    fast = model.stream(**prompt, max_frames=6)
    expected = run_steps(reference, frames, targets, active, range(6))
    steps = run_steps(fast, frames, targets, active, range(2))
    extended = fast.extend(frames[:, 2:4], active[:, 2:4], targets[:, 2:4])
    steps += [
        {name: value[:, i] for name, value in extended.items() if name != "next_queries"} for i in range(2)
    ]
    steps += run_steps(fast, frames, targets, active, range(4, 6))
    for step, reference_step in zip(steps, expected):
        for name in ("predictions", "queries", "attention", "attention_coarse"):
            if name in step and name in reference_step:  # extend had targets on every slot
                assert relative_error(step[name], reference_step[name]) < FAST_TOLERANCE, name
    assert relative_error(fast.next_queries, reference.next_queries) < FAST_TOLERANCE
    assert torch.equal(fast.attention_mask, reference.attention_mask)
    assert fast.caches[FINE].get_seq_length() == reference.caches[FINE].get_seq_length()


def test_fused_query_pass_equals_two_reads(build):
    """Two query tokens per frame in one pass (each sees the cached K/V and its own key) = two separate passes."""
    model, _ = build()
    frames, _, _ = fast_clip(model)
    with torch.no_grad():
        patches = model.encode_frames(frames[:, 0])
        queries = torch.randn(2, 2, model.config.query_dim, generator=torch.Generator().manual_seed(4))
        tokens, attention = model.read_frames(queries, patches)
        for k in range(2):
            expected_tokens, expected_attention = model.read_frames(queries[:, k], patches)
            assert relative_error(tokens[:, k], expected_tokens) < FAST_TOLERANCE
            assert relative_error(attention[:, k], expected_attention) < FAST_TOLERANCE


def test_fast_frames_that_fit_reads_the_static_state_without_exporting(build):
    model, processor = build()
    frames, targets, active = fast_clip(model)
    prompt = stream_prompt_inputs(processor, list(PROMPTS))
    fast = model.stream(**prompt, max_frames=FAST_FRAMES + 3)
    reference = model.stream(**prompt)
    for t in range(FAST_FRAMES - 1):
        fast.step(frames[:, t], active[:, t])
        reference.step(frames[:, t], active[:, t])
        columns_left = FAST_FRAMES + 3 - (t + 1)
        assert fast.frames_that_fit == min(reference.frames_that_fit, columns_left)
        assert fast._static.ahead  # the dynamic caches were not rebuilt to answer
        used, _ = fast._static.context_used()  # what the context part of the answer reads
        assert torch.equal(used, reference.attention_mask.sum(1))


def test_fast_step_overflow_and_bad_options_are_value_errors(build):
    model, processor = build()
    frames, targets, _ = fast_clip(model)
    prompt = stream_prompt_inputs(processor, list(PROMPTS))
    stream = model.stream(**prompt, max_frames=2)
    assert stream.frames_that_fit == 2
    run_steps(stream, frames, targets, torch.ones(2, FAST_FRAMES, dtype=torch.bool), range(2))
    assert stream.frames_that_fit == 0
    with pytest.raises(ValueError, match="opened with max_frames=2"):
        stream.step(frames[:, 2])
    with pytest.raises(ValueError, match="opened with max_frames=2"):
        stream.extend(frames[:, 2:3])
    assert stream.num_frames.tolist() == [2, 2]  # nothing was consumed
    assert stream.caches[FINE].get_seq_length() == prompt["input_ids"].shape[1] + 2
    stream.caption(max_new_tokens=2)
    context = model.config.text_config.max_position_embeddings
    with pytest.raises(ValueError, match=f"max_frames={context} does not fit: .* more frames fit"):
        model.stream(**prompt, max_frames=context)
    with pytest.raises(ValueError, match="pass max_frames too"):
        model.stream(**prompt, torch_compile=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graph=True needs the model on a CUDA device"):
            model.stream(**prompt, max_frames=2, cuda_graph=True)
    with pytest.raises(ValueError, match="decodes greedily"):
        stream.caption(max_new_tokens=2, static_cache=True, do_sample=True)


def test_torch_compile_regions_are_used_and_removed(build, monkeypatch):
    """torch_compile wraps the patch layer, the query layer and the LLM decoder, only while a fast step runs."""
    model, processor = build()
    compiled, calls = [], []

    def fake_compile(fn, **kwargs):
        compiled.append(fn)

        def wrapped(*args, **kw):
            calls.append(fn)
            return fn(*args, **kw)

        return wrapped

    monkeypatch.setattr(torch, "compile", fake_compile)
    frames, targets, active = fast_clip(model)
    prompt = stream_prompt_inputs(processor, list(PROMPTS))
    reference = run_steps(model.stream(**prompt), frames, targets, active, range(2))
    steps = run_steps(
        model.stream(**prompt, max_frames=2, torch_compile=True), frames, targets, active, range(2)
    )
    encoder = model.model.fovea_encoder
    assert len(compiled) == 3 and model.model.language_model in compiled
    assert {getattr(fn, "__name__", None) for fn in calls} >= {"_patch_layer", "_query_layer"}
    assert model.model.language_model in calls
    assert encoder.use_regions({}) == {}, "the compiled layers were removed after the steps"
    for step, reference_step in zip(steps, reference):
        assert relative_error(step.attention, reference_step.attention) < FAST_TOLERANCE


def test_static_caption_equals_greedy_generate(build):
    """caption(static_cache=True) gives generate's greedy tokens, its EOS padding and stop, and min_new_tokens."""
    model, processor = build()
    frames, targets, active = fast_clip(model)
    stream = model.stream(**stream_prompt_inputs(processor, list(PROMPTS)), max_frames=FAST_FRAMES)
    run_steps(stream, frames, targets, active, range(FAST_FRAMES))
    greedy = stream.caption(max_new_tokens=CAPTION_TOKENS, do_sample=False)
    assert torch.equal(stream.caption(max_new_tokens=CAPTION_TOKENS, static_cache=True), greedy)
    # make a token each row emits early the end of turn: generate pads after it and stops when all rows ended
    config = model.generation_config
    saved = config.eos_token_id
    try:
        config.eos_token_id = [int(greedy[0, 1]), int(greedy[1, 2])]
        ended = stream.caption(max_new_tokens=CAPTION_TOKENS)
        assert ended.shape[1] < CAPTION_TOKENS
        assert torch.equal(stream.caption(max_new_tokens=CAPTION_TOKENS, static_cache=True), ended)
        forced = stream.caption(max_new_tokens=CAPTION_TOKENS, min_new_tokens=3)
        static = stream.caption(max_new_tokens=CAPTION_TOKENS, min_new_tokens=3, static_cache=True)
        assert torch.equal(static, forced)
    finally:
        config.eos_token_id = saved


@pytest.mark.gpu
@pytest.mark.parametrize("fuse", [True, False])
def test_cuda_graph_step_equals_eager_step(build, fuse):
    """On CUDA the fast step (one replayed graph per frame) and the graphed caption equal the eager path."""
    model, processor = build()
    model.to("cuda")
    frames, targets, active = (tensor.cuda() for tensor in fast_clip(model))
    prompt = stream_prompt_inputs(processor, list(PROMPTS))
    reference = model.stream(**prompt)
    graphed = model.stream(**prompt, max_frames=FAST_FRAMES, fuse_passes=fuse)
    assert graphed._static.runs[True].cuda_graph
    expected = run_steps(reference, frames, targets, active, range(FAST_FRAMES))
    steps = run_steps(graphed, frames, targets, active, range(FAST_FRAMES))
    for step, reference_step in zip(steps, expected):
        for name in reference_step.keys():
            assert relative_error(step[name], reference_step[name]) < 1e-4, name
    greedy = reference.caption(max_new_tokens=CAPTION_TOKENS, do_sample=False)
    assert torch.equal(graphed.caption(max_new_tokens=CAPTION_TOKENS, static_cache=True), greedy)
