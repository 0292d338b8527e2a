"""Target cache: next-frame prediction targets computed once over a data set and reused on later runs.

Targets are SD-VAE latents (``latent_dist.mean * scaling_factor``) or 8x area-downsampled frames, exactly as the
processor computes them. :func:`build_target_cache` shards the clips across the ``accelerate`` processes (each
clip once), writes safetensors shards and then one ``index.json`` (atomically, by the main process) into a
directory named by a fingerprint of everything that determines the targets: target source, VAE, frame size,
frame sampling and the clip list. A later run with the same fingerprint finds ``index.json`` and computes
nothing. Each clip is stored as one ``[T, C, h, w]`` tensor whose row t is the target of sampled frame t,
so a target is addressed by (clip id, frame index). Clips that cannot be decoded are listed in the index by
name with the reason, reported once, and left out of training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from configuration_foveated import TARGET_SOURCES
from foveated_vlm.files import atomic_path, atomic_write_text
from video_foveated import video_to_array

from .sampler import shard_indices
from .video_folder import report_skipped

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
INDEX_NAME = "index.json"
FINGERPRINT_LENGTH = 16
DEFAULT_CHUNK_CLIPS = 512


def target_spec(
    processor,
    split: str,
    clip_ids: Sequence[str],
    num_frames: int | None,
    fps: float | None,
    target_source: str,
    vae_name_or_path: str | None = None,
) -> dict[str, Any]:
    """Everything that determines a data set's targets (the cache is keyed by its fingerprint)."""
    if target_source not in TARGET_SOURCES:
        raise ValueError(f"target_source must be one of {TARGET_SOURCES}, got {target_source!r}")
    if target_source == "vae" and not vae_name_or_path:
        raise ValueError("target_source='vae' needs model.vae_name_or_path (a diffusers AutoencoderKL)")
    clips_digest = hashlib.sha256("\n".join(clip_ids).encode()).hexdigest()
    return {
        "version": CACHE_FORMAT_VERSION,
        "split": split,
        "target_source": target_source,
        "vae": vae_name_or_path if target_source == "vae" else None,
        "image_size": processor.image_size,
        "target_downsample": processor.video_processor.target_downsample,
        "num_frames": num_frames,
        "fps": fps,
        "num_clips": len(clip_ids),
        "clips_sha256": clips_digest,
    }


def spec_fingerprint(spec: dict[str, Any]) -> str:
    """Short stable hash of a target spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:FINGERPRINT_LENGTH]


def cache_directory(root: str | os.PathLike, spec: dict[str, Any]) -> Path:
    """``root/<split>-<fingerprint>``: where the targets of ``spec`` live."""
    return Path(root) / f"{spec['split']}-{spec_fingerprint(spec)}"


def compute_targets(frames, processor, vae=None) -> torch.Tensor:
    """Targets of one clip: ``[T, H, W, 3]`` frames -> ``[T, C, h, w]`` (VAE latents, else the processor's own)."""
    _, resized = processor.video_processor.preprocess_frames(video_to_array(frames))
    return processor.video_processor.frame_targets(resized, vae)


def load_vae(name_or_path: str | os.PathLike, device: torch.device | str = "cpu"):
    """The frozen ``diffusers.AutoencoderKL`` (eval mode, no gradients) that makes and decodes VAE targets."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(os.fspath(name_or_path)).to(device)
    vae.requires_grad_(False)
    return vae.eval()


def vae_for(model_config, device: torch.device | str = "cpu", name_or_path: str | None = None):
    """The VAE of a model that predicts VAE latents (``name_or_path``, else its config's); None for other targets.

    Raises:
        ValueError: if the model predicts VAE latents but no VAE is named.
    """
    if model_config.target_source != "vae":
        return None
    name = name_or_path or model_config.vae_name_or_path
    if not name:
        raise ValueError("the model predicts VAE latents but its config names no vae_name_or_path")
    return load_vae(name, device)


class TargetCache:
    """Read access to a built cache: ``cache[clip_id]`` -> ``[T, C, h, w]`` float tensor.

    Shard files are opened lazily in each process (safe to pickle into DataLoader workers).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        index_path = self.directory / INDEX_NAME
        if not index_path.is_file():
            raise ValueError(f"no target cache at {self.directory} (missing {INDEX_NAME})")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        self.spec: dict[str, Any] = index["spec"]
        self.clips: dict[str, list[str]] = index["clips"]
        self.skipped: dict[str, str] = index["skipped"]
        self._handles: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return len(self.clips)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self.clips

    def __getitem__(self, clip_id: str) -> torch.Tensor:
        if clip_id not in self.clips:
            raise KeyError(f"clip {clip_id!r} is not in the target cache at {self.directory}")
        shard, key = self.clips[clip_id]
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.directory / shard), framework="pt")
        return self._handles[shard].get_tensor(key)

    def frame(self, clip_id: str, frame_index: int) -> torch.Tensor:
        """Target of one sampled frame ``[C, h, w]``."""
        return self[clip_id][frame_index]


def _load_item(dataset, index: int) -> dict[str, Any]:
    """Item ``index`` without the substitution of unreadable clips (``load`` where the data set has it)."""
    return dataset.load(index) if hasattr(dataset, "load") else dataset[index]


def _write_chunk(directory: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(directory / name) as temporary:
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(temporary))


def write_target_shard(
    dataset,
    processor,
    directory: str | os.PathLike,
    rank: int = 0,
    world: int = 1,
    vae=None,
    chunk_clips: int = DEFAULT_CHUNK_CLIPS,
    progress: bool = False,
) -> None:
    """Compute the targets of process ``rank``'s clips (every ``world``-th) into safetensors chunks and a part file.

    Unreadable clips (``dataset.load`` raises ``ValueError``) are recorded with their reason, not computed.
    """
    from tqdm.auto import tqdm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    indices = shard_indices(len(dataset), world, rank)
    clips: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    chunk_number = 0
    for position, index in enumerate(tqdm(indices, desc="caching targets", disable=not progress)):
        shard = f"targets-r{rank:05d}-w{world:05d}-c{chunk_number:06d}.safetensors"
        try:
            item = _load_item(dataset, index)
        except ValueError as error:
            skipped[dataset.clip_id(index)] = str(error)
        else:
            key = f"clip{index:010d}"
            tensors[key] = compute_targets(item["frames"], processor, vae).float()
            clips[item["clip_id"]] = [shard, key]
        if tensors and (len(tensors) == chunk_clips or position == len(indices) - 1):
            _write_chunk(directory, shard, tensors)
            tensors, chunk_number = {}, chunk_number + 1
    part = json.dumps({"clips": clips, "skipped": skipped})
    atomic_write_text(directory / f"part-r{rank:05d}-w{world:05d}.json", part)


def merge_target_shards(directory: str | os.PathLike, spec: dict[str, Any], world: int) -> None:
    """Join the processes' part files into ``index.json`` (written last, atomically: it marks the cache done)."""
    directory = Path(directory)
    clips: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for rank in range(world):
        part_path = directory / f"part-r{rank:05d}-w{world:05d}.json"
        part = json.loads(part_path.read_text(encoding="utf-8"))
        clips.update(part["clips"])
        skipped.update(part["skipped"])
        part_path.unlink()
    atomic_write_text(directory / INDEX_NAME, json.dumps({"spec": spec, "clips": clips, "skipped": skipped}))


def build_target_cache(
    dataset,
    processor,
    spec: dict[str, Any],
    root: str | os.PathLike,
    accelerator=None,
    vae=None,
    chunk_clips: int = DEFAULT_CHUNK_CLIPS,
    progress: bool = True,
) -> TargetCache:
    """Compute (or reuse) the targets of every clip of ``dataset`` under ``root``; returns the cache.

    Args:
        dataset: items with ``frames`` and ``clip_id``; a ``load(i)`` method that raises ``ValueError`` for an
            unreadable clip (``VideoClipDataset``) lets the cache record and skip it.
        processor: the :class:`FoveatedVLMProcessor` (frame size, target factor).
        spec: from :func:`target_spec` (its fingerprint names the cache directory).
        accelerator: an ``accelerate.Accelerator`` to split the clips across processes (None: this process).
        vae: the ``AutoencoderKL`` when ``spec["target_source"] == "vae"``.
    """
    if (spec["target_source"] == "vae") != (vae is not None):
        raise ValueError("pass the VAE exactly when spec['target_source'] is 'vae'")
    directory = cache_directory(root, spec)
    if (directory / INDEX_NAME).is_file():
        cache = TargetCache(directory)
        if cache.spec == spec:
            logger.info("reusing target cache %s (%d clips)", directory, len(cache))
            report_skipped(cache.skipped, spec["num_clips"])
            return cache
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    write_target_shard(dataset, processor, directory, rank, world, vae, chunk_clips, progress and rank == 0)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if rank == 0:
        merge_target_shards(directory, spec, world)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    cache = TargetCache(directory)
    report_skipped(cache.skipped, spec["num_clips"])
    return cache


class WithCachedTargets(torch.utils.data.Dataset):
    """A data set whose items gain ``prediction_targets [T, C, h, w]`` from a :class:`TargetCache`."""

    def __init__(self, dataset, cache: TargetCache):
        self.dataset = dataset
        self.cache = cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        targets = self.cache[item["clip_id"]]
        if targets.shape[0] != len(item["frames"]):
            raise ValueError(
                f"cached targets of {item['clip_id']} have {targets.shape[0]} frames but the clip decoded to "
                f"{len(item['frames'])}: the video changed since the cache was built; delete {self.cache.directory}"
            )
        item["prediction_targets"] = targets
        return item


__all__ = [
    "TargetCache",
    "WithCachedTargets",
    "build_target_cache",
    "cache_directory",
    "compute_targets",
    "load_vae",
    "spec_fingerprint",
    "target_spec",
    "vae_for",
]
