"""Fair controls of the probes (issue 21): where else the query looks, and at which encoder layer.

:func:`other_boxes_coverage` and :func:`largest_other_mass` give the selectivity's denominator (the most-attended
object other than the named one); :func:`map_layer` makes a reading report another encoder layer's attention
(``eval.probes.mass_by_layer``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from foveated_vlm.metrics import attention_mass_in_box, target_box_coverage


def other_boxes_coverage(item: dict[str, Any], image_size: int, patch_size: int) -> torch.Tensor:
    """``[K-1, T, P]`` patch coverage of every object of a procedural clip but the target, in the model's frame;
    a frame where an object is not visible has zero coverage."""
    visible = torch.as_tensor(np.asarray(item["visible"]))  # (T, K)
    rows = [
        target_box_coverage(item, image_size, patch_size, index).float() * visible[:, index, None]
        for index in range(visible.shape[1])
        if index != item["target_index"]
    ]
    return torch.stack(rows) if rows else torch.zeros(0, *visible.shape[:1], (image_size // patch_size) ** 2)


def largest_other_mass(attention: torch.Tensor, others: torch.Tensor, frames: torch.Tensor) -> float:
    """The largest mean attention mass ``attention [T, P]`` puts in another object's box ``others [K-1, T, P]``
    over ``frames`` (indices) where that object is in view; nan with no such object and frame."""
    masses = []
    for coverage in others:
        shown = frames[coverage[frames].sum(-1) > 0]
        if len(shown):
            masses.append(float(attention_mass_in_box(attention[shown], coverage[shown]).double().mean()))
    return max(masses) if masses else float("nan")


@contextlib.contextmanager
def map_layer(model, layer: int) -> Iterator[None]:
    """Within the block, readings report the query attention of encoder ``layer`` (``config.attention_map_layer``)."""
    saved = model.config.attention_map_layer
    model.config.attention_map_layer = layer
    try:
        yield
    finally:
        model.config.attention_map_layer = saved


__all__ = ["largest_other_mass", "map_layer", "other_boxes_coverage"]
