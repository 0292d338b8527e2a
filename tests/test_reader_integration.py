"""Every spatial reader through the shared machinery: streaming (general and fast path), Hub loading, probes."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from configuration_foveated import FoveatedVLMConfig
from eval import probes
from foveated_vlm.data.procedural import ProceduralVideoConfig, ProceduralVideoDataset
from streaming_foveated import stream_prompt_inputs

from .builders import (
    READER_ARMS,
    STREAM_FRAME_COUNTS,
    STREAM_PROMPTS,
    STREAM_TEXT_INIT_STD,
    STREAM_TOLERANCE,
    TOKENS,
    caption_pair,
    relative_error,
    step_through,
    stream_clip_batch,
)
from .environments import bare_site, run_isolated

# One LLM token a frame: what streaming reads (the k-token variants go through model(...) and generate).
STREAMED = [(name, o) for name, o in READER_ARMS if FoveatedVLMConfig(**o).tokens_per_frame == 1]
STREAMED_IDS = [name for name, _ in STREAMED]
WITH_REMEDIES = {"query_skip_to_head": True, "glimpse_location": True, "plan_first_query": True}
PROBE_CLIPS = 2
PROBE_FRAMES = 4
PROBE_TOKENS = 2


@pytest.fixture
def build(make_model):
    def make(**overrides):
        text = {"initializer_range": STREAM_TEXT_INIT_STD}
        return make_model(text=text, **overrides)

    return make


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
    for overrides, fused in (({"frame_reader": "multi_scale"}, True), ({"frame_reader": "hybrid"}, False)):
        model, processor = build(**overrides)
        stream = model.stream(**stream_prompt_inputs(processor, list(STREAM_PROMPTS)), max_frames=2)
        assert stream._static.fused_read is fused, overrides


def test_streaming_refuses_more_than_one_token_a_frame(build):
    model, processor = build(frame_reader="top_k", top_k_output="tokens", **TOKENS)
    with pytest.raises(ValueError, match="one token per frame; frame_reader='top_k' gives 4"):
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


def test_every_reader_loads_from_the_hub_files_with_the_same_logits(make_model, random_video, tmp_path):
    arms = [overrides for _, overrides in READER_ARMS]
    directories, expected = [], []
    for index, overrides in enumerate(arms):
        model, processor = make_model(**overrides)
        directory = tmp_path / f"reader_{index}"
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
        assert (directory / "spatial_readers_foveated.py").is_file()
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
