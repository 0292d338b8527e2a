"""Real video data: folders, CSV/JSONL manifests and ``datasets`` data sets of video files, decoded with PyAV;
corrupt files are reported by name with a count and skipped, never a crash mid-epoch."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from foveated_vlm.data.video_folder import (
    VideoClipDataset,
    folder_records,
    hub_records,
    manifest_records,
    scan_clips,
    select_split,
    split_records,
)

from ..builders import RAMP_FRAMES, RAMP_RATE, RAMP_SIZE, write_video


def test_manifest_with_a_corrupt_file_is_reported_and_skipped(manifest, caplog):
    records = manifest_records(manifest)
    assert [r.clip_id for r in records] == [
        "clips/good0.mp4",
        "clips/broken.mp4",
        "clips/good1.mp4",
        "clips/good2.mp4",
    ]
    dataset = VideoClipDataset(records, num_frames=4, image_size=32)
    with caplog.at_level(logging.WARNING):
        skipped = scan_clips(dataset)
    assert list(skipped) == ["clips/broken.mp4"]
    assert "skipped 1 of 4 videos" in caplog.text and "clips/broken.mp4" in caplog.text
    clean = dataset.without(skipped)
    assert len(clean) == 3
    items = [clean[i] for i in range(len(clean))]  # a whole epoch, no exception
    assert [item["caption"] for item in items] == ["clip number 0", "clip number 1", "clip number 2"]
    assert all(item["frames"].shape == (4, 32, 32, 3) and item["frames"].dtype == np.uint8 for item in items)


def test_unreadable_clip_mid_epoch_is_replaced_and_counted(manifest, caplog):
    dataset = VideoClipDataset(manifest_records(manifest), num_frames=4)
    with caplog.at_level(logging.WARNING):
        item = dataset[1]
    assert item["clip_id"] == "clips/good1.mp4", "the next readable clip stands in"
    assert dataset.num_failed == 1 and "clips/broken.mp4" in caplog.text


def test_uniform_and_fps_sampling_and_resizing(tmp_path):
    frames = write_video(tmp_path / "v.mp4")
    record = manifest_records(_single_manifest(tmp_path, "v.mp4"))
    uniform = VideoClipDataset(record, num_frames=4)[0]["frames"]
    assert uniform.shape == (4, RAMP_SIZE, RAMP_SIZE + 8, 3)
    levels = uniform.reshape(4, -1).mean(1)
    expected = frames[np.linspace(0, RAMP_FRAMES - 1, 4).round().astype(int)].reshape(4, -1).mean(1)
    np.testing.assert_allclose(levels, expected, atol=6)
    at_fps = VideoClipDataset(record, num_frames=None, fps=RAMP_RATE / 3)[0]["frames"]
    assert len(at_fps) == RAMP_FRAMES // 3
    resized = VideoClipDataset(record, num_frames=2, image_size=16)[0]["frames"]
    assert resized.shape == (2, 16, 16, 3)


def _single_manifest(tmp_path, name: str):
    path = tmp_path / "one.csv"
    path.write_text(f"video,caption,prompt\n{name},a grey clip,What is it?\n")
    return path


def test_csv_manifest_prompt_and_missing_column(tmp_path):
    write_video(tmp_path / "v.mp4")
    records = manifest_records(_single_manifest(tmp_path, "v.mp4"))
    assert records[0].prompt == "What is it?" and records[0].caption == "a grey clip"
    assert VideoClipDataset(records, num_frames=2)[0]["prompt"] == "What is it?"
    with pytest.raises(ValueError, match="no column 'text'"):
        manifest_records(_single_manifest(tmp_path, "v.mp4"), caption_column="text")


def test_folder_with_caption_files_and_split_folders(tmp_path, caplog):
    for split, count in (("train", 3), ("validation", 1)):
        (tmp_path / split).mkdir()
        for index in range(count):
            write_video(tmp_path / split / f"{index}.mp4", num_frames=4)
            (tmp_path / split / f"{index}.txt").write_text(f"{split} caption {index}\n")
    write_video(tmp_path / "train" / "uncaptioned.mp4", num_frames=4)
    with caplog.at_level(logging.WARNING):
        records = folder_records(tmp_path)
    assert "uncaptioned.mp4" in caplog.text and len(records) == 4
    train = split_records("folder", str(tmp_path), "train")
    validation = split_records("folder", str(tmp_path), "validation")
    assert {r.caption for r in validation} == {"validation caption 0"}
    assert len(train) == 3
    heldout = split_records("folder", str(tmp_path), "heldout", validation_fraction=0.5)
    assert heldout and {r.clip_id for r in heldout} <= {r.clip_id for r in train}, "carved from train"


def test_unlabelled_records_split_deterministically_and_disjointly(manifest):
    records = [
        r.__class__(r.clip_id + str(i), r.source, r.caption)
        for i in range(50)
        for r in manifest_records(manifest)[:1]
    ]
    train = select_split(records, "train", 0.2, seed=1)
    validation = select_split(records, "validation", 0.2, seed=1)
    assert {r.clip_id for r in train}.isdisjoint(r.clip_id for r in validation)
    assert len(train) + len(validation) == 50 and 0 < len(validation) < 25
    assert select_split(records, "validation", 0.2, seed=1) == validation


def test_hub_dataset_with_paths_and_with_bytes(tmp_path):
    import datasets

    write_video(tmp_path / "a.mp4", seed=1)
    write_video(tmp_path / "b.mp4", seed=2)
    by_path = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"video": [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")], "caption": ["first", "second"]}
            )
        }
    )
    by_path.save_to_disk(tmp_path / "paths")
    records = hub_records(str(tmp_path / "paths"), "train")
    assert [r.caption for r in records] == ["first", "second"]
    assert VideoClipDataset(records, num_frames=3)[1]["frames"].shape[0] == 3

    by_bytes = datasets.Dataset.from_dict(
        {
            "clip": [{"path": "a.mp4", "bytes": (tmp_path / "a.mp4").read_bytes()}],
            "text": ["from bytes"],
        }
    )
    by_bytes.save_to_disk(tmp_path / "bytes")
    records = split_records(
        "hub", str(tmp_path / "bytes"), "train", video_column="clip", caption_column="text"
    )
    item = VideoClipDataset(records, num_frames=2)[0]
    assert item["caption"] == "from bytes" and item["frames"].shape == (2, RAMP_SIZE, RAMP_SIZE + 8, 3)
    validation = split_records("hub", str(tmp_path / "paths"), "validation", validation_fraction=0.99)
    assert validation, "a missing split is carved from train"
