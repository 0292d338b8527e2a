"""Section ``loader``: frames/s the training data path (procedural clips + collator, workers) delivers."""

from __future__ import annotations

import time
from typing import Any

import torch

from foveated_vlm.data.collate import VideoCaptionCollator
from foveated_vlm.data.procedural import ProceduralVideoConfig, ProceduralVideoDataset
from processing_foveated import FoveatedVLMProcessor

from .settings import Settings
from .timing import sync


def bench_loader(processor: FoveatedVLMProcessor, settings: Settings, device: torch.device) -> dict[str, Any]:
    """Frames/s the training data path delivers: procedural clips + collator in workers, pinned batches."""
    config = ProceduralVideoConfig(image_size=processor.image_size, num_frames=settings.num_frames)
    clips = settings.batch_size * (settings.loader_batches + 1)
    loader = torch.utils.data.DataLoader(
        ProceduralVideoDataset("train", clips, config),
        batch_size=settings.batch_size,
        collate_fn=VideoCaptionCollator(processor),
        num_workers=settings.loader_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if settings.loader_workers else None,
    )
    batches = iter(loader)
    next(batches)  # start-up (worker processes, first clips) is not throughput
    start = time.perf_counter()
    for batch in batches:
        batch = {name: value.to(device, non_blocking=True) for name, value in batch.items()}
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "workers": settings.loader_workers,
        "frames_per_s": settings.loader_batches * settings.batch_size * settings.num_frames / seconds,
    }
