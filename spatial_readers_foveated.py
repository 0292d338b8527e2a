"""Spatial frame readers a released checkpoint may use: pooling at several scales, coarse-to-fine glimpses.

Each reads a frame from the final patch states (or, ``cascade``, through the encoder like the query reader) and
reports where it looked as a full distribution over ``[CLS, registers, patches, own key]`` (see
``reader_base_foveated``). Their knobs are their configs in ``reader_config_foveated``. They are the readers that
looked where the prompt pointed in the readers comparison (``studies/readers/RESULTS.md``); the log-polar, top-K,
hybrid and fixation readers, which did not, live in ``studies.readers``.

* ``multi_scale``: the query scores the patch grid average-pooled by each of ``multi_scale_factors``; the
  attention-weighted pools of the scales, mixed by learned scale weights, are one token.
* ``cascade``: ``cascade_steps`` glimpses through the encoder; after each, a residual MLP refines the query from
  its output and a Gaussian bias (std ``cascade_sigma``) centred where it looked narrows the next one.

Shapes: N frames, k plans a frame, P patches on a g x g grid, D encoder width, t tokens of one plan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

try:
    from .reader_base_foveated import FrameReader, FrameReading, glimpse_location, patch_coordinates
except ImportError:  # imported as a top-level module from a checkout of the repository
    from reader_base_foveated import FrameReader, FrameReading, glimpse_location, patch_coordinates


def grid_side(config) -> int:
    """Side g of the square patch grid."""
    return round(config.num_patches**0.5)


def per_plan(patch_bias: torch.Tensor | None, plans: int) -> torch.Tensor | None:
    """A probe's bias ``[N, P]`` or ``[N, k, P]`` -> ``[N, k, P]`` (the same region for every plan)."""
    if patch_bias is None:
        return None
    if patch_bias.dim() == 2:
        patch_bias = patch_bias.unsqueeze(1)  # (N, 1, P)
    return patch_bias.expand(patch_bias.shape[0], plans, patch_bias.shape[-1])


# ----------------------------------------------------------------------------------------------- multi-scale
class MultiScaleReader(FrameReader):
    """Attention-weighted pooling of the final patch states at several scales, mixed by learned scale weights."""

    def __init__(self, config):
        super().__init__(config)
        width = config.vision_config.hidden_size
        self.factors = tuple(self.settings.multi_scale_factors)
        self.query_projection = nn.Linear(width, width, bias=False)
        self.scale_logits = nn.Parameter(torch.empty(len(self.factors)))

    def init_learned_parameters(self) -> None:
        init.zeros_(self.scale_logits)  # every scale weighs the same at the start

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        """A probe's ``patch_bias`` gates the patches (``patch_gate``): a cell pools its open patches only and
        its score drops by ``log`` of its open fraction, so no mass lands on a closed patch."""
        tokens, one_plan = self.as_plans(inputs)  # (N, k, D)
        count, plans, width = tokens.shape
        grid = self.patch_map(self.patch_states(cache))  # (N, D, g, g)
        side = grid.shape[-1]
        frames = grid.unsqueeze(1).expand(-1, plans, -1, -1, -1).flatten(0, 1)  # (N*k, D, g, g)
        gate = self.patch_gate(per_plan(patch_bias, plans))
        if gate is None:
            gate_map = frames.new_ones(count * plans, 1, side, side)
        else:
            gate_map = gate.reshape(count * plans, 1, side, side).to(frames.dtype)  # (N*k, 1, g, g)
        queries = self.query_projection(tokens.to(grid.dtype)).unsqueeze(2)  # (N, k, 1, D)
        tiny = torch.finfo(torch.float32).tiny
        mix = self.scale_logits.float().softmax(0)
        visual, looked = 0.0, 0.0
        for factor, weight in zip(self.factors, mix):
            cells = side // factor
            open_share = F.avg_pool2d(gate_map, factor).clamp_min(tiny)  # (N*k, 1, g/f, g/f)
            pooled = F.avg_pool2d(frames * gate_map, factor) / open_share  # (N*k, D, g/f, g/f)
            pooled = (
                pooled.flatten(2).transpose(1, 2).reshape(count, plans, cells * cells, width)
            )  # (N, k, C, D)
            scores = (
                torch.matmul(queries, pooled.transpose(-1, -2)).squeeze(2).float() / width**0.5
            )  # (N, k, C)
            scores = scores + open_share.float().log().reshape(count, plans, -1)
            cell_weights = scores.softmax(-1)  # (N, k, C)
            pooled_token = torch.matmul(cell_weights.unsqueeze(2).to(pooled.dtype), pooled).squeeze(2)
            visual = visual + weight * pooled_token  # (N, k, D)
            per_open = cell_weights.reshape(count * plans, 1, cells, cells) / open_share.float()
            share = F.interpolate(per_open, scale_factor=factor, mode="nearest") * gate_map / factor**2
            looked = looked + weight * share.reshape(count, plans, side * side)  # (N, k, P)
        attention = self.full_distribution(looked)
        return self.as_reading(visual.to(grid.dtype), attention, one_plan)


# ----------------------------------------------------------------------------------------------- cascade
class CascadeReader(FrameReader):
    """Coarse-to-fine glimpses within a frame: each glimpse refines the query and narrows the next one."""

    def __init__(self, config):
        super().__init__(config)
        width = config.vision_config.hidden_size
        settings = self.settings
        self.steps = settings.cascade_steps
        self.sigma = settings.cascade_sigma
        self.side = grid_side(config)
        self.refine = nn.Sequential(
            nn.Linear(width, settings.cascade_hidden_dim),
            nn.GELU(),
            nn.Linear(settings.cascade_hidden_dim, width),
        )

    def narrowing_bias(self, attention: torch.Tensor) -> torch.Tensor:
        """Gaussian log-bias ``[N, k, P]`` centred where attention ``[N, k, S+1]`` looked (std ``cascade_sigma``)."""
        centre = glimpse_location(attention[..., self.num_prefix_tokens : -1])[..., :2]  # (N, k, 2)
        coordinates = patch_coordinates(self.side, attention.device)  # (P, 2)
        distance = (coordinates - centre.unsqueeze(-2)).square().sum(-1)  # (N, k, P)
        return -distance / (2 * self.sigma**2)

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        tokens, one_plan = self.as_plans(inputs)  # (N, k, D)
        outer = per_plan(patch_bias, tokens.shape[1])
        bias = outer
        for step in range(self.steps):
            visual, attention = encoder.query(tokens, cache, bias)  # (N, k, D), (N, k, S+1)
            if step == self.steps - 1:
                break
            narrowing = self.narrowing_bias(attention)
            bias = narrowing if outer is None else narrowing + outer.float()
            tokens = tokens + self.refine(visual).to(tokens.dtype)
        return self.as_reading(visual, attention, one_plan)


SPATIAL_READERS: dict[str, type[FrameReader]] = {
    "multi_scale": MultiScaleReader,
    "cascade": CascadeReader,
}

__all__ = [
    "SPATIAL_READERS",
    "CascadeReader",
    "MultiScaleReader",
    "grid_side",
    "per_plan",
]
