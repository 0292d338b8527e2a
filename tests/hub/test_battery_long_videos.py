"""A new user's first hour (issue 22), garbage accepted silently: a video read far past the trained length.

A model trained on short clips captions a long read badly ("top top top ..."). The processor records the trained
length (``trained_frames``, written by the trainer), warns once when a video is read as more than
``long_video_factor`` times that, and lets the caller cap the read (``max_frames``); the CLI prints the warning as
one line. A checkpoint saved before the trained length was recorded loads and reads without a warning.
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

import caption_video
from foveated_vlm.training.config import config_from_dict
from foveated_vlm.training.modeling import record_sampling, record_trained_frames
from foveated_vlm.training.trainer import _counting_frames, _Window
from video_foveated import LongVideoWarning, load_video, uniform_indices

from ..builders import LONG_CLIP_FRAMES, TRAINED_FRAMES, World, pan

LONG = pan(3 * TRAINED_FRAMES, 24, 24, seed=3)  # [12, 24, 24, 3]: 3x the trained length


def _trained(world: World, **attributes):
    processor = copy.copy(world.processor)
    processor.video_processor = copy.copy(
        world.processor.video_processor
    )  # its own warning state and settings
    frames = processor.video_processor
    frames.trained_frames, frames._warned_long_video = TRAINED_FRAMES, False
    for name, value in attributes.items():
        setattr(frames, name, value)
    return processor


def test_a_read_far_past_the_trained_length_warns_once_with_the_length_and_the_fix(world):
    processor = _trained(world)
    with pytest.warns(LongVideoWarning) as caught:
        processor(text="a", videos=LONG)
        processor(text=["a", "b"], videos=[LONG, LONG])
    assert len(caught) == 1, "once per processor"
    message = str(caught[0].message)
    assert f"read as {3 * TRAINED_FRAMES} frames, more than 2x the {TRAINED_FRAMES} frames" in message
    assert f"num_frames={TRAINED_FRAMES}" in message and "max_frames=N" in message


@pytest.mark.parametrize(
    ("attributes", "frames"),
    [
        ({}, 2 * TRAINED_FRAMES),  # up to the factor: no warning
        ({"long_video_factor": 4.0}, 3 * TRAINED_FRAMES),  # the knob moves the limit
        ({"long_video_factor": None}, 3 * TRAINED_FRAMES),  # None: never
        ({"trained_frames": None}, 3 * TRAINED_FRAMES),  # an old checkpoint records no length: never
    ],
)
def test_no_warning_within_the_limit_or_without_a_trained_length(world, attributes, frames):
    processor = _trained(world, **attributes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor(text="a", videos=LONG[:frames])


def test_max_frames_caps_every_kind_of_video_uniformly(world):
    processor = _trained(world)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a capped read does not warn
        capped = processor(text="a", videos=LONG, max_frames=TRAINED_FRAMES)["pixel_values_videos"]
        uniform = processor(text="a", videos=LONG, num_frames=TRAINED_FRAMES)["pixel_values_videos"]
        assert torch.equal(capped, uniform)
        short = processor(text="a", videos=LONG[:2], max_frames=TRAINED_FRAMES)["pixel_values_videos"]
        assert short.shape[1] == 2, "a shorter video is read whole"
        both = processor(text="a", videos=LONG, num_frames=8, max_frames=3)["pixel_values_videos"]
        assert both.shape[1] == 3
    at_fps = load_video(world.long_clip, fps=5.0)
    expected = processor(text="a", videos=at_fps[uniform_indices(len(at_fps), 6)])["pixel_values_videos"]
    got = processor(text="a", videos=world.long_clip, fps=5.0, max_frames=6)["pixel_values_videos"]
    assert len(at_fps) > 6 and torch.equal(got, expected), "fps sampling first, then the cap"


def test_the_trained_length_is_saved_and_an_old_processor_config_loads_without_it(world, tmp_path):
    from transformers import AutoProcessor

    saved = json.loads((world.model_dir / "processor_config.json").read_text())
    frames = saved["video_processor"]
    assert frames["trained_frames"] == TRAINED_FRAMES and frames["long_video_factor"] == 2.0
    old = tmp_path / "old"
    old.mkdir()
    for path in world.model_dir.iterdir():
        if path.is_file():
            (old / path.name).write_bytes(path.read_bytes())
    del frames["trained_frames"], frames["long_video_factor"]
    (old / "processor_config.json").write_text(json.dumps(saved))
    processor = AutoProcessor.from_pretrained(old, trust_remote_code=True)
    assert processor.trained_frames is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor(text="a", videos=pan(LONG_CLIP_FRAMES, 24, 24))


def test_the_trainer_records_the_trained_length():
    processor = type("RecordedProcessor", (), {})()
    uniform = config_from_dict({"data": {"num_frames": 6}})
    record_sampling(processor, uniform)
    assert (processor.num_frames, processor.fps, processor.trained_frames) == (6, None, 6)
    at_fps = config_from_dict({"data": {"fps": 2.0}})
    record_sampling(processor, at_fps)
    assert (processor.num_frames, processor.fps, processor.trained_frames) == (None, 2.0, None)
    window = _Window(0.0)
    batches = [{"video_frame_mask": torch.ones(2, length, dtype=torch.bool)} for length in (5, 9, 7)]
    assert len(list(_counting_frames(iter(batches), window))) == 3
    record_trained_frames(processor, window.longest_clip)
    assert processor.trained_frames == 9, "with fps the longest clip read"


def test_the_cli_prints_the_warning_as_one_line(world, capsys):
    argv = [str(world.long_clip), "--model", str(world.model_dir), "--device", "cpu", "--max-new-tokens", "2"]
    assert caption_video.main([*argv, "--num-frames", str(LONG_CLIP_FRAMES)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1, err
    assert f"read as {LONG_CLIP_FRAMES} frames, more than 2x the {TRAINED_FRAMES} frames" in lines[0]
    assert "Traceback" not in err and "LongVideoWarning" not in err
    assert caption_video.main([*argv, "--num-frames", str(2 * TRAINED_FRAMES)]) == 0
    assert "warning: " not in capsys.readouterr().err


def test_the_long_read_is_not_a_warning_for_arrays_of_many_short_videos(world):
    """The count is per video: a batch of many short videos is no long read."""
    processor = _trained(world)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor(text=["a"] * 4, videos=[np.asarray(LONG[:TRAINED_FRAMES])] * 4)
