"""Data side of training: the configured data sets (with cached targets), loaders and their sharding."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader

from foveated_vlm.data.collate import VideoCaptionCollator
from foveated_vlm.data.procedural import ProceduralVideoConfig, ProceduralVideoDataset
from foveated_vlm.data.sampler import ShardedBatchSampler, shard_indices
from foveated_vlm.data.targets import WithCachedTargets, build_target_cache, target_spec, vae_for
from foveated_vlm.data.video_folder import VideoClipDataset, report_skipped, scan_clips, split_records

from .config import TrainingConfig

PROCEDURAL_CACHE_DIR = "target_cache"
REAL_DATA_CACHE_DIR = ".foveated_cache"
HUB_CACHE_ENV = "HF_HOME"


def procedural_config(config: TrainingConfig, image_size: int) -> ProceduralVideoConfig:
    """The procedural data set's config: frame size and count from the data section, then its extra fields."""
    data = config.data
    fields = {
        key: tuple(value) if isinstance(value, list) else value for key, value in data.procedural.items()
    }
    return ProceduralVideoConfig(image_size=image_size, num_frames=data.num_frames, seed=data.seed, **fields)


def _cache_root(config: TrainingConfig) -> Path:
    """Where targets are cached: ``data.cache_dir``, else next to the data (procedural: in the run's folder)."""
    data = config.data
    if data.cache_dir:
        return Path(data.cache_dir)
    if data.kind == "procedural":
        return Path(config.output_dir) / PROCEDURAL_CACHE_DIR
    path = Path(data.path)
    if path.is_dir():
        return path / REAL_DATA_CACHE_DIR
    if path.is_file():
        return path.parent / REAL_DATA_CACHE_DIR
    hub_home = Path(os.environ.get(HUB_CACHE_ENV, Path.home() / ".cache" / "huggingface"))
    return hub_home / "foveated_vlm_targets" / data.path.replace("/", "--")


def _clips_key(config: TrainingConfig, dataset, role: str) -> list[str]:
    """What identifies the clips of a split in the cache fingerprint."""
    if isinstance(dataset, ProceduralVideoDataset):
        description = json.dumps([repr(dataset.config), dataset.split, len(dataset)])
        return [hashlib.sha256(description.encode()).hexdigest()]
    return [f"{config.data.kind}:{config.data.path}:{role}", *(record.clip_id for record in dataset.records)]


class WithoutPrompt(torch.utils.data.Dataset):
    """A data set whose items have an empty ``prompt`` (``data.drop_prompt``: no text conditioning)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "prompt": ""}


def build_split(
    config: TrainingConfig,
    role: str,
    processor,
    target_source: str = "downsampled_frames",
    accelerator=None,
    vae=None,
):
    """The data set of one role (``train``, ``validation``, ``heldout``): items of frames, prompt, caption.

    Real data is decoded once by the target cache (or scanned, without one); unreadable clips are reported by
    name with their count and left out. With the cache, items carry ``prediction_targets``. With
    ``data.drop_prompt`` every prompt is empty.
    """
    dataset = _build_split(config, role, processor, target_source, accelerator, vae)
    return WithoutPrompt(dataset) if config.data.drop_prompt else dataset


def _build_split(config: TrainingConfig, role: str, processor, target_source: str, accelerator, vae):
    data = config.data
    split = data.splits.get(role, role)
    count = data.num_clips.get(role)
    if data.kind == "procedural":
        dataset = ProceduralVideoDataset(split, count or 0, procedural_config(config, processor.image_size))
    else:
        records = split_records(
            data.kind,
            data.path,
            split,
            data.validation_fraction,
            data.seed,
            data.video_column,
            data.caption_column,
            data.prompt_column,
        )
        num_frames = None if data.fps is not None else data.num_frames
        dataset = VideoClipDataset(records, num_frames, data.fps, processor.image_size, data.prompt).subset(
            count
        )
    use_cache = (
        data.target_cache
        if data.target_cache is not None
        else (data.kind != "procedural" or target_source == "vae")
    )
    if target_source == "vae" and not use_cache:
        raise ValueError("VAE targets need the target cache: set data.target_cache=true (or leave it unset)")
    if use_cache:
        spec = target_spec(
            processor,
            split,
            _clips_key(config, dataset, role),
            data.num_frames if data.fps is None else None,
            data.fps,
            target_source,
            config.model.vae_name_or_path,
        )
        cache = build_target_cache(dataset, processor, spec, _cache_root(config), accelerator, vae)
        if isinstance(dataset, VideoClipDataset):
            dataset = dataset.without(cache.skipped)
        return WithCachedTargets(dataset, cache)
    if isinstance(dataset, VideoClipDataset):
        dataset = dataset.without(_scan_sharded(dataset, accelerator))
    return dataset


def _scan_sharded(dataset: VideoClipDataset, accelerator) -> dict[str, str]:
    """Decode every clip once, split across processes; every process gets the merged ``{clip_id: reason}``."""
    if accelerator is None or accelerator.num_processes == 1:
        return scan_clips(dataset, progress=True)
    from accelerate.utils import gather_object

    mine = VideoClipDataset(
        [
            dataset.records[i]
            for i in shard_indices(len(dataset), accelerator.num_processes, accelerator.process_index)
        ],
        dataset.num_frames,
        dataset.fps,
        dataset.image_size,
        dataset.prompt,
    )
    skipped: dict[str, str] = {}
    for part in gather_object([scan_clips(mine, report=False)]):
        skipped.update(part)
    report_skipped(skipped, len(dataset))
    return skipped


def build_datasets(config: TrainingConfig, processor, model_config, accelerator=None) -> dict[str, Any]:
    """``{"train": ..., "validation": ...}`` data sets (held-out clips are built by the demo report)."""
    device = accelerator.device if accelerator is not None else "cpu"
    vae = vae_for(model_config, device, config.model.vae_name_or_path)
    return {
        role: build_split(config, role, processor, model_config.target_source, accelerator, vae)
        for role in ("train", "validation")
    }


def train_loader(
    dataset,
    collator,
    batch_size: int,
    num_replicas: int,
    rank: int,
    seed: int,
    start_batch: int,
    num_workers: int,
) -> DataLoader:
    """Infinite training loader: exactly-once sharding by :class:`ShardedBatchSampler` (resumable).

    The loader's own generator keeps worker seeding off the global RNG (resume restores that RNG exactly).
    """
    sampler = ShardedBatchSampler(len(dataset), batch_size, num_replicas, rank, seed, start_batch)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
    )


def eval_loader(dataset, collator, batch_size: int, num_replicas: int, rank: int, num_workers: int = 0):
    """One pass over this process's strided share of ``dataset``."""
    indices = shard_indices(len(dataset), num_replicas, rank)
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(indices, batch_size, drop_last=False),
        collate_fn=collator,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )


__all__ = [
    "VideoCaptionCollator",
    "WithoutPrompt",
    "build_datasets",
    "build_split",
    "eval_loader",
    "procedural_config",
    "train_loader",
]
