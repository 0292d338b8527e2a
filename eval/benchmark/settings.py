"""Sizes, repeat counts and the fixed workload of one benchmark run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

PROMPT = "Describe the video."
CAPTION = "the red square moves from left to right, then stays still."  # 48 text tokens per clip in all
SEED = 0
BF16 = torch.bfloat16
ERROR_CHARS = 500  # of a failed section's message kept in the report


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts of one benchmark run."""

    tiny: bool = False
    batch_size: int = 16
    num_frames: int = 16
    query_frames: int = 256
    stream_frames: int = 500
    stream_warmup: int = 20
    long_video_frames: int = 3600
    decoded_size: tuple[int, int] = (360, 640)  # height, width of the decoded frames (360p)
    chunk_frames: int = 256  # long video: frames per encoder pass (caption_video.py's default is 64)
    new_tokens: int = 64
    warmup: int = 5
    repeats: int = 50
    train_warmup: int = 3
    train_repeats: int = 20
    loader_batches: int = 24
    loader_workers: int = 15
    compile: bool = True
    train_variants: tuple[str, ...] = ()  # run only the training variants whose name contains one of these
    trainer_log_every: int = 10  # trainer run: steps per logged window (the first holds compile and capture)
    trainer_windows: int = 5  # trainer run: steady-state windows measured after the first


TINY_SETTINGS = Settings(
    tiny=True,
    batch_size=2,
    num_frames=4,
    query_frames=8,
    stream_frames=6,
    stream_warmup=2,
    long_video_frames=40,
    decoded_size=(48, 64),
    chunk_frames=16,
    new_tokens=4,
    warmup=1,
    repeats=3,
    train_warmup=1,
    train_repeats=2,
    loader_batches=2,
    loader_workers=0,
    compile=False,
    trainer_log_every=2,
    trainer_windows=2,
)
