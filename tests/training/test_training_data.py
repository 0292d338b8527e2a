"""The training data sets: deterministic, held-out split disjoint from training, batches built by the processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foveated_vlm.data.collate import VideoCaptionCollator
from foveated_vlm.data.procedural import parse_caption
from foveated_vlm.training.config import load_config
from foveated_vlm.training.data import build_split, procedural_config
from foveated_vlm.training.modeling import build_model_and_processor


@pytest.fixture(scope="module")
def setup():
    config = load_config(
        "configs/smoke.yaml",
        [
            "data.num_clips={train: 48, validation: 16, heldout: 48}",
            "data.procedural={camera_pan_probability: 0.5}",
        ],
    )
    _, processor = build_model_and_processor(config)
    return config, processor


def _pair(item) -> tuple:
    """The target's (shape, motion): the unit of the train / held-out partition."""
    parsed = parse_caption(item["caption"])
    return parsed["shape"], parsed["motion"]


def test_splits_are_deterministic(setup):
    config, processor = setup
    first, second = build_split(config, "train", processor), build_split(config, "train", processor)
    for index in (0, 7, 47):
        a, b = first[index], second[index]
        assert a["caption"] == b["caption"] and a["prompt"] == b["prompt"]
        np.testing.assert_array_equal(a["frames"], b["frames"])
    assert procedural_config(config, processor.image_size).camera_pan_probability == 0.5


def test_heldout_pairs_never_occur_in_training(setup):
    config, processor = setup
    splits = {role: build_split(config, role, processor) for role in ("train", "validation", "heldout")}
    pairs = {role: {_pair(split[i]) for i in range(len(split))} for role, split in splits.items()}
    assert pairs["heldout"].isdisjoint(pairs["train"] | pairs["validation"])
    clip_ids = {role: {split[i]["clip_id"] for i in range(len(split))} for role, split in splits.items()}
    assert clip_ids["train"].isdisjoint(clip_ids["validation"])
    assert splits["train"][0]["frames"].shape == (config.data.num_frames, 32, 32, 3)


def test_collated_batch_holds_model_inputs(setup):
    config, processor = setup
    dataset = build_split(config, "train", processor)
    batch = VideoCaptionCollator(processor)([dataset[i] for i in range(3)])
    frames = config.data.num_frames
    assert batch["pixel_values_videos"].shape == (3, frames, 3, 32, 32)
    assert batch["prediction_targets"].shape == (3, frames, 3, 4, 4)
    assert batch["video_frame_mask"].all()
    assert (batch["labels"] != -100).sum() > 0
    assert batch["video_layout"].frame_index.tolist() == list(range(3 * frames))
    assert batch["video_layout"].caption_targets.numel() == int((batch["labels"] != -100).sum())
    generation = VideoCaptionCollator(processor, with_captions=False, with_targets=False, with_layout=False)(
        [dataset[0]]
    )
    assert not {"labels", "prediction_targets", "video_layout"} & set(generation)
    assert torch.equal(generation["pixel_values_videos"], batch["pixel_values_videos"][:1])


def test_empty_batch_raises(setup):
    _, processor = setup
    with pytest.raises(ValueError, match="empty batch"):
        VideoCaptionCollator(processor)([])


def test_drop_prompt_empties_every_prompt_and_keeps_the_rest(setup):
    config, processor = setup
    dropped = load_config(
        "configs/smoke.yaml",
        ["data.num_clips={train: 48, validation: 16, heldout: 48}", "data.drop_prompt=true"],
    )
    with_prompt = build_split(config, "heldout", processor)
    without = build_split(dropped, "heldout", processor)
    assert len(without) == len(with_prompt)
    for index in (0, 5):
        assert with_prompt[index]["prompt"] and without[index]["prompt"] == ""
        assert without[index]["caption"] == with_prompt[index]["caption"]
    batch = VideoCaptionCollator(processor)([without[i] for i in range(2)])
    assert (
        batch["input_ids"].shape[1]
        < VideoCaptionCollator(processor)([with_prompt[i] for i in range(2)])["input_ids"].shape[1]
    )


def test_every_default_ablation_arm_is_a_valid_config():
    from studies.runner import DEFAULT_ARMS

    for arm in DEFAULT_ARMS:
        load_config("configs/smoke.yaml", arm.overrides)
