"""The measured models and batch: full-size (or tiny) configs of both modes, random weights, one training batch."""

from __future__ import annotations

import torch
from transformers import BatchFeature

from configuration_foveated import FoveatedVLMConfig
from foveated_vlm.tiny import full_size_config, tiny_config
from modeling_foveated import FoveatedVLMForConditionalGeneration
from processing_foveated import FoveatedVLMProcessor

from .settings import CAPTION, PROMPT, SEED, Settings

DENSE_TOKENS_FULL = 64
DENSE_TOKENS_TINY = 4  # the tiny 4 x 4 patch grid pixel-unshuffled by 2, as 16 x 16 -> 64 at full size
RECOMPILE_LIMIT = 64


def benchmark_config(tokenizer, tiny: bool, mode: str) -> FoveatedVLMConfig:
    """The full-size (or tiny) config of ``mode``, its video token ids taken from ``tokenizer``.

    The full size is the trainer's ``model.size: full_random`` (:func:`foveated_vlm.tiny.full_size_config`).
    """
    if tiny:
        return tiny_config(tokenizer, foveation_mode=mode, dense_tokens_per_frame=DENSE_TOKENS_TINY)
    return full_size_config(tokenizer, foveation_mode=mode, dense_tokens_per_frame=DENSE_TOKENS_FULL)


def build_model(config: FoveatedVLMConfig, device: torch.device) -> FoveatedVLMForConditionalGeneration:
    """Random-init model built directly on ``device`` (float32 weights)."""
    torch.manual_seed(SEED)
    with torch.device(device):
        return FoveatedVLMForConditionalGeneration(config)


def make_batch(processor: FoveatedVLMProcessor, settings: Settings, device: torch.device) -> BatchFeature:
    """A training batch built by the processor (chat text, frames, targets, labels, video layout) on ``device``."""
    generator = torch.Generator().manual_seed(SEED)
    size = processor.image_size
    shape = (settings.batch_size, settings.num_frames, size, size, 3)  # [B, T, H, W, C] uint8 frames
    videos = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    batch = processor(
        text=[PROMPT] * settings.batch_size,
        videos=videos,
        captions=[CAPTION] * settings.batch_size,
        return_targets=True,
        return_video_layout=True,
    )
    on_device = {
        name: value.to(device, non_blocking=True) for name, value in batch.items()
    }  # VideoLayout.to too
    return BatchFeature(on_device)  # what the trainer's loader yields: TrainStep moves it with ``.to``


def text_tokens_per_clip(batch: BatchFeature, tokens_per_frame: int) -> int:
    """Sequence length of a clip minus its frame placeholders."""
    frames = int(batch["video_frame_mask"][0].sum())
    return int(batch["attention_mask"][0].sum()) - frames * tokens_per_frame


def set_recompile_limit(limit: int) -> None:
    """Let every regional graph be compiled for each shape regime of the run (training, dense, streaming)."""
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, limit)
