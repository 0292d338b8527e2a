"""Batching: a list of clip items -> the model's inputs, built by the processor (in DataLoader workers).

Items are dicts with ``frames`` (``[T, H, W, 3]`` uint8), ``prompt``, ``caption`` and, when a target cache
provides them, ``prediction_targets`` (``[T, C, h, w]``); procedural items also carry their objects' ``boxes``
and ``target_index``, which become ``attention_targets`` (attention supervision, mass in box). Without cached
targets the processor computes the targets itself (still in the worker, never in the training step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchFeature

from .boxes import target_box_coverage


class VideoCaptionCollator:
    """Collate clip items into a :class:`~transformers.BatchFeature` of model inputs.

    Args:
        processor: the :class:`FoveatedVLMProcessor`.
        with_captions: add ``labels`` (training, validation); False for generation.
        with_targets: add ``prediction_targets [B, T, C, h, w]`` (cached ones when every item has them).
        with_layout: add ``video_layout`` (frame and caption positions as index tensors, computed here in the
            worker) so that the training forward runs without host synchronisation; False for ``generate``.
        attention_patch_size: when set, add ``attention_targets [B, T, P]``: the patch coverage of each clip's
            target box (items must carry ``boxes`` and ``target_index``; padded frames cover nothing).
        caption_bucket: the layout's caption positions are padded to a multiple of this (see
            ``layout_foveated.caption_positions``): one batch shape for captions of different lengths.
    """

    def __init__(
        self,
        processor,
        with_captions: bool = True,
        with_targets: bool = True,
        with_layout: bool = True,
        attention_patch_size: int | None = None,
        caption_bucket: int = 1,
    ):
        self.processor = processor
        self.with_captions = with_captions
        self.with_targets = with_targets
        self.with_layout = with_layout
        self.attention_patch_size = attention_patch_size
        self.caption_bucket = caption_bucket

    def __call__(self, items: Sequence[dict[str, Any]]) -> BatchFeature:
        if not items:
            raise ValueError("cannot collate an empty batch")
        kwargs: dict[str, Any] = {}
        if self.with_captions:
            kwargs["captions"] = [item["caption"] for item in items]
        if self.with_targets:
            if all("prediction_targets" in item for item in items):
                kwargs["prediction_targets"] = [item["prediction_targets"] for item in items]
            else:
                kwargs["return_targets"] = True
        batch = self.processor(
            text=[item["prompt"] for item in items],
            videos=[item["frames"] for item in items],
            return_video_layout=self.with_layout,
            caption_bucket=self.caption_bucket,
            **kwargs,
        )
        if self.attention_patch_size is not None:
            batch["attention_targets"] = self._attention_targets(items, batch["video_frame_mask"].shape[1])
        return batch

    def _attention_targets(self, items: Sequence[dict[str, Any]], num_frames: int) -> torch.Tensor:
        """Target-box coverage ``[B, T, P]`` of the items (zero rows for padded frames)."""
        missing = [
            index for index, item in enumerate(items) if "boxes" not in item or "target_index" not in item
        ]
        if missing:
            raise ValueError(
                f"attention supervision needs object boxes, but items {missing} have no 'boxes'/'target_index' "
                "(only procedural clips carry them): set model.attention_supervision_weight=0 for this data"
            )
        image_size = self.processor.image_size
        coverage = [
            target_box_coverage(item, image_size, self.attention_patch_size).float() for item in items
        ]
        padded = torch.zeros(len(items), num_frames, coverage[0].shape[-1])
        for row, clip in enumerate(coverage):
            padded[row, : clip.shape[0]] = clip
        return padded


__all__ = ["VideoCaptionCollator"]
