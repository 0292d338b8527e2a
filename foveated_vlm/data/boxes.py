"""Object boxes of procedural clips in the model's frame: the processor's crop, patch coverage, the target's box."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .procedural import render_box_mask


def crop_boxes(boxes: np.ndarray, frame_height: int, frame_width: int, image_size: int) -> np.ndarray:
    """Boxes ``[..., 4]`` (x0, y0, x1, y1 in a frame's pixels) -> the processor's resized, centre-cropped frame.

    The processor scales the shorter side to ``image_size`` and crops the centre (``resize_frames``); boxes
    follow the same map and are clipped to the crop.
    """
    scale = image_size / min(frame_height, frame_width)
    new_h, new_w = max(image_size, round(frame_height * scale)), max(image_size, round(frame_width * scale))
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    scaled = np.asarray(boxes, dtype=np.float64).copy()
    scaled[..., 0::2] = scaled[..., 0::2] * (new_w / frame_width) - left
    scaled[..., 1::2] = scaled[..., 1::2] * (new_h / frame_height) - top
    return np.clip(scaled, 0.0, image_size)


def box_patch_masks(boxes: np.ndarray, image_size: int, patch_size: int) -> torch.Tensor:
    """Boxes ``[N, 4]`` in the model's frame -> fraction of each patch they cover ``[N, P]`` (row-major grid)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    masks = [render_box_mask(box, image_size, patch_size).reshape(-1) for box in boxes]
    grid = (image_size // patch_size) ** 2
    return torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, grid)


def target_box_coverage(
    item: dict[str, Any], image_size: int, patch_size: int, index: int | None = None
) -> torch.Tensor:
    """Patch coverage of a procedural clip's target box (or of object ``index``'s) in every frame ``[T, P]``, in the
    model's frame coordinates (the clip's boxes follow the processor's resize and centre crop)."""
    frames = np.asarray(item["frames"])
    boxes = np.asarray(item["boxes"])[:, item["target_index"] if index is None else index]
    return box_patch_masks(
        crop_boxes(boxes, frames.shape[1], frames.shape[2], image_size), image_size, patch_size
    )


__all__ = ["box_patch_masks", "crop_boxes", "target_box_coverage"]
