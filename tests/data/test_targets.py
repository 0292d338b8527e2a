"""Target cache: computed once (sharded over processes), equal to the processor's own targets, reused on a later
run without recomputation, invalidated by a change of sampling, and it skips unreadable clips by name."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from foveated_vlm.data import targets as targets_module
from foveated_vlm.data.collate import VideoCaptionCollator
from foveated_vlm.data.targets import (
    TargetCache,
    WithCachedTargets,
    build_target_cache,
    cache_directory,
    merge_target_shards,
    target_spec,
    vae_for,
    write_target_shard,
)
from foveated_vlm.data.video_folder import VideoClipDataset, manifest_records
from foveated_vlm.tiny import tiny_config, tiny_processor
from foveated_vlm.training.config import load_config
from foveated_vlm.training.data import build_split

from ..builders import TINY_VAE_CHANNELS, save_tiny_vae


@pytest.fixture
def processor(tokenizer):
    return tiny_processor(tiny_config(tokenizer), tokenizer)


def _dataset(manifest_path, num_frames: int = 4) -> VideoClipDataset:
    return VideoClipDataset(manifest_records(manifest_path), num_frames=num_frames, image_size=32)


def _spec(processor, dataset, num_frames: int = 4):
    return target_spec(
        processor, "train", [r.clip_id for r in dataset.records], num_frames, None, "downsampled_frames"
    )


def test_cache_matches_processor_targets_and_skips_corrupt(manifest, processor, tmp_path, caplog):
    dataset = _dataset(manifest)
    with caplog.at_level(logging.WARNING):
        cache = build_target_cache(
            dataset, processor, _spec(processor, dataset), tmp_path / "cache", progress=False
        )
    assert set(cache.skipped) == {"clips/broken.mp4"} and "skipped 1 of 4" in caplog.text
    assert len(cache) == 3
    item = dataset.load(0)
    expected = processor(videos=[item["frames"]], return_targets=True)["prediction_targets"][0]
    torch.testing.assert_close(cache["clips/good0.mp4"], expected)
    torch.testing.assert_close(cache.frame("clips/good0.mp4", 2), expected[2])
    assert cache["clips/good0.mp4"].shape == (4, 3, 4, 4)


def test_cache_is_reused_without_recomputation(manifest, processor, tmp_path, monkeypatch):
    dataset = _dataset(manifest)
    spec = _spec(processor, dataset)
    first = build_target_cache(dataset, processor, spec, tmp_path / "cache", progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("targets were recomputed although the cache exists")

    monkeypatch.setattr(targets_module, "compute_targets", fail)
    second = build_target_cache(dataset, processor, spec, tmp_path / "cache", progress=False)
    assert second.directory == first.directory and second.skipped == first.skipped
    torch.testing.assert_close(second["clips/good2.mp4"], first["clips/good2.mp4"])
    changed = _spec(processor, _dataset(manifest, num_frames=3), num_frames=3)
    assert cache_directory(tmp_path / "cache", changed) != first.directory, "new sampling, new cache"


def test_cache_built_by_two_processes_covers_each_clip_once(manifest, processor, tmp_path, monkeypatch):
    dataset = _dataset(manifest)
    spec = _spec(processor, dataset)
    directory = cache_directory(tmp_path / "c", spec)
    computed = []
    original = targets_module.compute_targets

    def counting(frames, processor_, vae=None):
        computed.append(frames.mean())
        return original(frames, processor_, vae)

    monkeypatch.setattr(targets_module, "compute_targets", counting)
    for rank in (0, 1):  # what each of two processes does before the barrier
        write_target_shard(dataset, processor, directory, rank, 2)
    assert len(computed) == 3, "each readable clip computed exactly once across the two processes"
    merge_target_shards(directory, spec, 2)
    cache = TargetCache(directory)
    assert len(cache) == 3 and list(cache.skipped) == ["clips/broken.mp4"]
    assert not list(directory.glob("part-*.json")), "part files merged into the index"
    assert {shard for shard, _ in cache.clips.values()} == {
        "targets-r00000-w00002-c000000.safetensors",
        "targets-r00001-w00002-c000000.safetensors",
    }
    single = build_target_cache(dataset, processor, spec, tmp_path / "c", progress=False)
    assert single.directory == directory, "the cache the two processes built is reused"


def test_cached_targets_flow_into_batches(manifest, processor, tmp_path):
    dataset = _dataset(manifest)
    cache = build_target_cache(
        dataset, processor, _spec(processor, dataset), tmp_path / "cache", progress=False
    )
    with_targets = WithCachedTargets(dataset.without(cache.skipped), cache)
    items = [with_targets[i] for i in range(len(with_targets))]
    batch = VideoCaptionCollator(processor)(items)
    recomputed = VideoCaptionCollator(processor)(
        [{k: v for k, v in i.items() if k != "prediction_targets"} for i in items]
    )
    torch.testing.assert_close(batch["prediction_targets"], recomputed["prediction_targets"])
    assert batch["labels"].shape == batch["input_ids"].shape


def test_training_split_from_a_manifest_uses_the_cache(manifest, tmp_path):
    config = load_config(
        "configs/smoke.yaml",
        [
            "data.kind=manifest",
            f"data.path={manifest}",
            "data.num_frames=4",
            f"output_dir={tmp_path}",
        ],
    )
    from foveated_vlm.training.modeling import build_model_and_processor

    _, processor = build_model_and_processor(config)
    train = build_split(config, "train", processor)
    assert len(train) == 3 and all("prediction_targets" in train[i] for i in range(3))
    assert any(manifest.parent.joinpath(".foveated_cache").iterdir()), "cache stored next to the data"
    validation_frames = np.stack([train[i]["frames"] for i in range(3)])
    assert validation_frames.shape == (3, 4, 32, 32, 3)


def test_vae_targets_are_cached_and_train(tmp_path):
    """VAE-latent targets (a tiny random AutoencoderKL built in code) are computed once into the cache and train."""
    import train_accelerate

    save_tiny_vae(tmp_path / "vae")
    run = tmp_path / "run"
    metrics = train_accelerate.main(
        [
            "--config",
            "configs/smoke.yaml",
            "--max_steps",
            "1",
            "--output_dir",
            str(run),
            "--set",
            f"model.vae_name_or_path={tmp_path / 'vae'}",
            "--set",
            "model.target_source=vae",
            "--set",
            "model.target_channels=4",
            "--set",
            "train.report_to=null",
        ]
    )
    assert metrics["train"]["loss_fine"] > 0
    indexes = sorted((run / "target_cache").glob("*/index.json"))
    assert [path.parent.name.split("-")[0] for path in indexes] == ["train", "validation"]
    cache = TargetCache(indexes[0].parent)
    assert cache.spec["target_source"] == "vae" and cache["train-000000"].shape == (4, 4, 4, 4)


def test_vae_for_loads_the_named_vae_only_for_models_of_vae_targets(tokenizer, tmp_path):
    """One loader of the VAE: None for other targets, the config's (or the given) VAE frozen, a clear error."""
    assert vae_for(tiny_config(tokenizer)) is None
    vae_targets = {"target_source": "vae", "target_channels": TINY_VAE_CHANNELS}
    with pytest.raises(ValueError, match="names no vae_name_or_path"):
        vae_for(tiny_config(tokenizer, **vae_targets))
    directory = str(save_tiny_vae(tmp_path / "vae"))
    vae = vae_for(tiny_config(tokenizer, vae_name_or_path=directory, **vae_targets))
    assert not vae.training and not any(parameter.requires_grad for parameter in vae.parameters())
    named = vae_for(
        tiny_config(tokenizer, vae_name_or_path=str(tmp_path / "absent"), **vae_targets), "cpu", directory
    )
    assert named.config.latent_channels == TINY_VAE_CHANNELS
