"""Every frame reader (``READER_ARMS``) through the shared machinery: shapes and full distributions, gradients,
attention supervision, padding, streaming (general and fast path), Hub loading, probes."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from configuration_foveated import FoveatedVLMConfig
from eval import probes
from foveated_vlm.data.procedural import ProceduralVideoConfig, ProceduralVideoDataset
from readers_foveated import FRAME_READERS
from spatial_readers_foveated import SPATIAL_READERS
from streaming_foveated import stream_prompt_inputs

from ..builders import (
    FIXATION_CROP,
    HARD_GLIMPSE_READERS,
    READER_ARMS,
    STREAM_FRAME_COUNTS,
    STREAM_PROMPTS,
    STREAM_TEXT_INIT_STD,
    STREAM_TOLERANCE,
    TOKENS,
    caption_batch,
    caption_batch_row,
    caption_pair,
    relative_error,
    step_through,
    stream_clip_batch,
)
from ..environments import bare_site, run_isolated

ARM_IDS = [name for name, _ in READER_ARMS]
HUB_READERS = ("query", *SPATIAL_READERS)
ARM_OVERRIDES = [overrides for _, overrides in READER_ARMS]
LEFT_HALF_COLUMNS = 2  # of the tiny model's 4 x 4 patch grid
# One LLM token a frame: what streaming reads (the k-token variants go through model(...) and generate).
STREAMED = [(name, o) for name, o in READER_ARMS if FoveatedVLMConfig(**o).tokens_per_frame == 1]
STREAMED_IDS = [name for name, _ in STREAMED]
WITH_REMEDIES = {"glimpse_location": True, "plan_first_query": True}
PROBE_CLIPS = 2
PROBE_FRAMES = 4
PROBE_TOKENS = 2


@pytest.fixture
def build(make_model):
    def make(**overrides):
        text = {"initializer_range": STREAM_TEXT_INIT_STD}
        return make_model(text=text, **overrides)

    return make


def test_every_reader_is_tested_and_has_a_one_token_arm_that_streams():
    readers = {overrides["frame_reader"] for _, overrides in READER_ARMS}
    assert readers == set(FRAME_READERS) - {"query"}, "the query reader has its own tests"
    assert {overrides["frame_reader"] for _, overrides in STREAMED} == readers


@pytest.mark.parametrize("overrides", ARM_OVERRIDES, ids=ARM_IDS)
def test_reading_shapes_and_full_distributions(make_model, overrides):
    model, processor = make_model(**overrides)
    config = model.config
    frames = 3
    tokens = config.num_queries_per_frame * config.tokens_per_plan
    cache = model.encode_frames(torch.randn(frames, 3, 32, 32))
    visual, attention = model.read_frames(model.static_queries(frames), cache)
    width = config.vision_config.hidden_size
    distribution = 1 + config.vision_config.num_register_tokens + config.num_patches + 1
    leading = (frames,) if tokens == 1 else (frames, tokens)
    assert visual.shape == (*leading, width)
    assert attention.shape == (*leading, distribution)
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(leading))

    batch = caption_batch(processor)
    out = model(**batch)
    valid = int(batch["video_frame_mask"].sum())
    assert out.queries.shape[-1] == config.plan_dim
    assert out.visual_tokens_fine.shape == ((valid, width) if tokens == 1 else (valid, tokens, width))
    assert out.attention_fine.shape == (valid, config.num_patches)
    assert int((batch["input_ids"] == config.frame_token_id).sum()) == valid * config.tokens_per_frame


@pytest.mark.parametrize("overrides", ARM_OVERRIDES, ids=ARM_IDS)
def test_gradients_reach_the_plan_head_and_every_reader_parameter(make_model, overrides):
    model, processor = make_model(**overrides)
    model.train()
    model(**caption_batch(processor)).loss.backward()
    states = model.model
    assert states.fovea_query_head.weight.grad.abs().sum() > 0, "the loss must reach the LLM's plan head"
    patch_embedding = states.fovea_encoder.vision_model.embeddings.patch_embeddings.weight
    assert patch_embedding.grad.abs().sum() > 0, "the loss must reach the encoder through the reading"
    if overrides["frame_reader"] not in HARD_GLIMPSE_READERS:
        assert states.fovea_static_query.grad.abs().sum() > 0, "the loss must reach the static plan"
    for name, parameter in states.fovea_reader.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("overrides", ARM_OVERRIDES, ids=ARM_IDS)
def test_attention_supervision_reaches_the_plan_head(make_model, overrides):
    model, processor = make_model(attention_supervision_weight=1.0, **overrides)
    model.train()
    batch = caption_batch(processor)
    side = round(model.config.num_patches**0.5)
    boxes = torch.zeros(*batch["video_frame_mask"].shape, side, side)
    boxes[..., :LEFT_HALF_COLUMNS] = 1.0  # the object covers the left half of every frame
    out = model(**batch, attention_targets=boxes.flatten(-2))
    (gradient,) = torch.autograd.grad(out.loss_attention, model.model.fovea_query_head.weight)
    assert gradient.abs().sum() > 0, "the box loss must reach the plan head through where the reader looked"


@pytest.mark.parametrize("reader", sorted(HARD_GLIMPSE_READERS))
def test_a_hard_glimpses_coverage_gives_the_box_loss_no_path_to_the_plan(make_model, reader):
    model, processor = make_model(
        attention_supervision_weight=1.0, frame_reader=reader, fixation_box_loss="coverage"
    )
    model.train()
    batch = caption_batch(processor)
    boxes = torch.zeros(*batch["video_frame_mask"].shape, model.config.num_patches)
    boxes[..., 0] = 1.0
    assert not model(**batch, attention_targets=boxes).loss_attention.requires_grad


@pytest.mark.parametrize("overrides", ARM_OVERRIDES, ids=ARM_IDS)
def test_padded_batch_matches_unpadded_runs(make_model, overrides):
    model, processor = make_model(**overrides)
    lengths = (5, 3)
    out = model(**caption_batch(processor, lengths=lengths))
    start = 0
    for row, length in enumerate(lengths):
        single = caption_batch_row(processor, row, length)
        alone = model(**single)
        frames = slice(start, start + length)
        for name in ("visual_tokens_fine", "attention_fine", "predictions_fine", "queries"):
            torch.testing.assert_close(out[name][frames], alone[name], atol=1e-5, rtol=1e-4, msg=name)
        columns = single["input_ids"].shape[1]
        torch.testing.assert_close(out.logits[row, -columns:], alone.logits[0], atol=1e-4, rtol=1e-4)
        start += length
    batch = caption_batch(processor, lengths=lengths)
    batch["pixel_values_videos"][1, lengths[1] :] = 1e6  # garbage in the padded frame slots changes nothing
    torch.testing.assert_close(model(**batch).logits, out.logits)


@pytest.mark.parametrize("fast", [False, True], ids=["step", "max_frames"])
@pytest.mark.parametrize("overrides", [o for _, o in STREAMED], ids=STREAMED_IDS)
def test_stream_equals_parallel_forward(build, overrides, fast):
    model, processor = build(**overrides, **WITH_REMEDIES)
    inputs = stream_clip_batch(processor)
    with torch.no_grad():
        parallel = model(**inputs)
    kwargs = {"max_frames": max(STREAM_FRAME_COUNTS)} if fast else {}
    stream, steps = step_through(model, processor, inputs, **kwargs)
    valid = inputs["video_frame_mask"]
    tolerance = STREAM_TOLERANCE[torch.float32]
    assert relative_error(steps["attention_coarse"][valid], parallel.attention_coarse) < tolerance
    assert relative_error(steps["queries"][valid], parallel.queries) < tolerance
    assert relative_error(steps["attention"][valid], parallel.attention_fine) < tolerance
    predictions = torch.cat([stream.initial_prediction.unsqueeze(1), steps["predictions"]], dim=1)
    assert relative_error(predictions[:, : valid.shape[1]][valid], parallel.predictions_fine) < tolerance
    expected, streamed = caption_pair(model, inputs, stream, "two_pass", do_sample=False)
    assert torch.equal(streamed.sequences, expected.sequences[:, inputs["input_ids"].shape[1] :])
    assert relative_error(torch.stack(streamed.logits), torch.stack(expected.logits)) < tolerance


def test_the_fast_path_fuses_the_reads_only_where_the_reader_allows(build):
    cases = (
        ({"frame_reader": "multi_scale"}, True),
        ({"frame_reader": "hybrid"}, False),
        ({"frame_reader": "dual_stream", "fixation_periphery": "fused"}, True),
        ({"frame_reader": "dual_stream"}, False),  # fovea + periphery, averaged into one LLM token
    )
    for overrides, fused in cases:
        crop = {"fixation_crop_size": FIXATION_CROP} if overrides["frame_reader"] == "dual_stream" else {}
        model, processor = build(**crop, **overrides)
        stream = model.stream(**stream_prompt_inputs(processor, list(STREAM_PROMPTS)), max_frames=2)
        assert stream._static.fused_read is fused, overrides


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"frame_reader": "top_k", "top_k_output": "tokens"}, "frame_reader='top_k' gives 4"),
        (
            {"frame_reader": "dual_stream", "fixation_crop_size": FIXATION_CROP},
            "frame_reader='dual_stream' gives 2",
        ),
    ],
    ids=["top_k", "dual_stream"],
)
def test_streaming_refuses_more_than_one_token_a_frame(build, overrides, message):
    model, processor = build(**overrides, **TOKENS)
    with pytest.raises(ValueError, match=f"one token per frame; {message}"):
        model.stream(**stream_prompt_inputs(processor, list(STREAM_PROMPTS)))


LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoProcessor

    out, directories = sys.argv[1], sys.argv[2:]
    video = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    results, readers = {}, []
    for index, directory in enumerate(directories):
        model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
        with torch.no_grad():
            results[str(index)] = model(**processor(text="Describe the video.", videos=video)).logits
        readers.append([model.config.frame_reader, type(model).__module__])
    save_file(results, out)
    print(json.dumps(readers))
    """
)


def test_every_hub_reader_loads_from_the_hub_files_with_the_same_logits(make_model, random_video, tmp_path):
    """The readers of the model's files load where only torch and transformers can be imported, with the same
    logits; a study reader's checkpoint carries no study code and says where its reader lives."""
    arms = [{"frame_reader": "query"}] + [o for _, o in READER_ARMS if o["frame_reader"] in HUB_READERS]
    assert {overrides["frame_reader"] for overrides in arms} == set(HUB_READERS)
    directories, expected = [], []
    for index, overrides in enumerate(arms):
        model, processor = make_model(**overrides)
        directory = tmp_path / f"reader_{index}"
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
        assert (directory / "spatial_readers_foveated.py").is_file()
        assert not list(directory.glob("*fixation*")), "no study code in a checkpoint"
        directories.append(str(directory))
        inputs = processor(text="Describe the video.", videos=random_video(4))
        with torch.no_grad():
            expected.append(model(**inputs).logits)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    site = bare_site(tmp_path / "site")
    result = run_isolated(
        LOADER, str(tmp_path / "out.safetensors"), *directories, paths=[site], cwd=elsewhere
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert [reader for reader, _ in loaded] == [overrides["frame_reader"] for overrides in arms]
    assert all(module.startswith("transformers_modules") for _, module in loaded)
    logits = load_file(tmp_path / "out.safetensors")
    for index, reference in enumerate(expected):
        assert torch.equal(logits[str(index)], reference), arms[index]
    study, processor = make_model(frame_reader="dual_stream", fixation_crop_size=FIXATION_CROP)
    study.save_pretrained(tmp_path / "study")
    processor.save_pretrained(tmp_path / "study")
    refused = run_isolated(
        LOADER, str(tmp_path / "study.safetensors"), str(tmp_path / "study"), paths=[site], cwd=elsewhere
    )
    assert refused.returncode != 0 and "studies.readers" in refused.stderr, refused.stderr[-2000:]


@pytest.fixture(scope="module")
def probe_clips() -> list[dict]:
    dataset = ProceduralVideoDataset(
        "heldout", 8, ProceduralVideoConfig(image_size=32, num_frames=PROBE_FRAMES)
    )
    return [item for item in dataset if item["named"]][:PROBE_CLIPS]


@pytest.mark.parametrize("overrides", [o for _, o in READER_ARMS], ids=[name for name, _ in READER_ARMS])
def test_the_probes_run_on_every_reader(make_model, probe_clips, overrides):
    model, processor = make_model(**overrides)
    report = probes.run_probes(
        model, processor, probe_clips, batch_size=PROBE_CLIPS, max_new_tokens=PROBE_TOKENS, progress=False
    )
    assert set(report["summary"]["all"]["readers"]) == set(probes.READERS)
    for record in report["clips"]:
        for reader, values in record["readers"].items():
            assert torch.isfinite(torch.tensor(values["loss_fine"])), (reader, values)


@pytest.mark.parametrize("reader", ["dual_stream", "glimpse_rl", "adaptive_fixation"])
def test_the_probes_plans_read_other_places_for_fixation_plans(build, probe_clips, reader):
    """The probes' plans mean something for fixation plans: Gaussian numbers are fixations (through tanh and
    sigmoid), cells (argmax) or budgets, each reading a place of its own."""
    model, processor = build(frame_reader=reader, fixation_crop_size=FIXATION_CROP)
    batch = probes.prepare_batch(model, processor, probe_clips, list(range(PROBE_CLIPS)))
    attention = {}
    for name in ("dynamic", "static", "random", "shuffled"):
        inputs, _, probe, mode = probes.reader_call(name, model, batch, seed=0)
        with torch.no_grad(), model.probe_reading(**probe):
            out = model(**inputs, inference_mode=mode)
        attention[name] = out.attention_fine if mode == "two_pass" else out.attention_coarse
    for name in ("static", "random", "shuffled"):
        assert not torch.allclose(attention[name], attention["dynamic"]), name
