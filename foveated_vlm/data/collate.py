"""Batching: a list of clip items -> the model's inputs, built by the processor (in DataLoader workers).

Items are dicts with ``frames`` (``[T, H, W, 3]`` uint8), ``prompt``, ``caption`` and, when a target cache
provides them, ``prediction_targets`` (``[T, C, h, w]``). Without cached targets the processor computes
downsampled-frame targets itself (still in the worker, never in the training step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import BatchFeature


class VideoCaptionCollator:
    """Collate clip items into a :class:`~transformers.BatchFeature` of model inputs.

    Args:
        processor: the :class:`FoveatedVLMProcessor`.
        with_captions: add ``labels`` (training, validation); False for generation.
        with_targets: add ``prediction_targets [B, T, C, h, w]`` (cached ones when every item has them).
        with_layout: add ``video_layout`` (frame and caption positions as index tensors, computed here in the
            worker) so that the training forward runs without host synchronisation; False for ``generate``.
    """

    def __init__(
        self, processor, with_captions: bool = True, with_targets: bool = True, with_layout: bool = True
    ):
        self.processor = processor
        self.with_captions = with_captions
        self.with_targets = with_targets
        self.with_layout = with_layout

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
        return self.processor(
            text=[item["prompt"] for item in items],
            videos=[item["frames"] for item in items],
            return_video_layout=self.with_layout,
            **kwargs,
        )


__all__ = ["VideoCaptionCollator"]
