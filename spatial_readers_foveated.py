"""Spatial frame readers: pooling at several scales, coarse-to-fine glimpses, log-polar sampling, top-K patches.

Each reads a frame from the final patch states (or, ``cascade``, through the encoder like the query reader) and
reports where it looked as a full distribution over ``[CLS, registers, patches, own key]`` (see
``reader_base_foveated``). Every knob is a :class:`FoveatedVLMConfig` field named after its reader:

* ``multi_scale``: the query scores the patch grid average-pooled by each of ``multi_scale_factors``; the
  attention-weighted pools of the scales, mixed by learned scale weights, are one token.
* ``cascade``: ``cascade_steps`` glimpses through the encoder; after each, a residual MLP refines the query from
  its output and a Gaussian bias (std ``cascade_sigma``) centred where it looked narrows the next one.
* ``log_polar``: the plan is a fixation (x, y; tanh-bounded); the patch-state map is sampled on
  ``log_polar_rings`` rings of ``log_polar_wedges`` points around it (radii geometric from
  ``log_polar_min_radius`` to ``log_polar_max_radius``); ring means -> Linear -> one token.
* ``top_k``: the query scores the patches; the ``top_k_patches`` best become tokens (``top_k_output="tokens"``)
  or one token, their score-softmax-weighted sum (``"weighted_sum"``), straight-through: the forward uses the
  selection, the backward the softmax over every patch.
* ``hybrid``: ``top_k``'s tokens plus one log-polar coverage token around the best patch.

Shapes: N frames, k plans a frame, P patches on a g x g grid, D encoder width, t tokens of one plan.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

try:
    from .reader_base_foveated import FrameReader, FrameReading, glimpse_location, patch_coordinates
except ImportError:  # imported as a top-level module from a checkout of the repository
    from reader_base_foveated import FrameReader, FrameReading, glimpse_location, patch_coordinates

FIXATION_DIMS = 2  # a log-polar plan is a fixation (x, y)
TOP_K_OUTPUTS = ("weighted_sum", "tokens")


def _grid_side(config) -> int:
    return round(config.num_patches**0.5)


def _per_plan(patch_bias: torch.Tensor | None, plans: int) -> torch.Tensor | None:
    """A probe's bias ``[N, P]`` or ``[N, k, P]`` -> ``[N, k, P]`` (the same region for every plan)."""
    if patch_bias is None:
        return None
    if patch_bias.dim() == 2:
        patch_bias = patch_bias.unsqueeze(1)  # (N, 1, P)
    return patch_bias.expand(patch_bias.shape[0], plans, patch_bias.shape[-1])


def _straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``hard`` in the forward, the gradient of ``soft`` in the backward."""
    return soft + (hard - soft).detach()


# ----------------------------------------------------------------------------------------------- multi-scale
class MultiScaleReader(FrameReader):
    """Attention-weighted pooling of the final patch states at several scales, mixed by learned scale weights."""

    def __init__(self, config):
        super().__init__(config)
        width = config.vision_config.hidden_size
        self.factors = tuple(config.multi_scale_factors)
        self.query_projection = nn.Linear(width, width, bias=False)
        self.scale_logits = nn.Parameter(torch.empty(len(self.factors)))

    @classmethod
    def validate(cls, config) -> None:
        side = _grid_side(config)
        factors = list(config.multi_scale_factors)
        FrameReader.check_knobs(
            config,
            {
                "multi_scale_factors": (
                    len(factors) > 0
                    and len(set(factors)) == len(factors)
                    and all(f >= 1 and side % f == 0 for f in factors),
                    f"distinct pooling factors that divide the {side}x{side} patch grid",
                )
            },
        )

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
        gate = self.patch_gate(_per_plan(patch_bias, plans))
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
        self.steps = config.cascade_steps
        self.sigma = config.cascade_sigma
        self.side = _grid_side(config)
        self.refine = nn.Sequential(
            nn.Linear(width, config.cascade_hidden_dim),
            nn.GELU(),
            nn.Linear(config.cascade_hidden_dim, width),
        )

    @classmethod
    def validate(cls, config) -> None:
        FrameReader.check_knobs(
            config,
            {
                "cascade_steps": (config.cascade_steps >= 2, ">= 2 (one glimpse is the query reader)"),
                "cascade_sigma": (config.cascade_sigma > 0, "positive"),
                "cascade_hidden_dim": (config.cascade_hidden_dim > 0, "positive"),
            },
        )

    def narrowing_bias(self, attention: torch.Tensor) -> torch.Tensor:
        """Gaussian log-bias ``[N, k, P]`` centred where attention ``[N, k, S+1]`` looked (std ``cascade_sigma``)."""
        centre = glimpse_location(attention[..., self.num_prefix_tokens : -1])[..., :2]  # (N, k, 2)
        coordinates = patch_coordinates(self.side, attention.device)  # (P, 2)
        distance = (coordinates - centre.unsqueeze(-2)).square().sum(-1)  # (N, k, P)
        return -distance / (2 * self.sigma**2)

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        tokens, one_plan = self.as_plans(inputs)  # (N, k, D)
        outer = _per_plan(patch_bias, tokens.shape[1])
        bias = outer
        for step in range(self.steps):
            visual, attention = encoder.query(tokens, cache, bias)  # (N, k, D), (N, k, S+1)
            if step == self.steps - 1:
                break
            narrowing = self.narrowing_bias(attention)
            bias = narrowing if outer is None else narrowing + outer.float()
            tokens = tokens + self.refine(visual).to(tokens.dtype)
        return self.as_reading(visual, attention, one_plan)


# ----------------------------------------------------------------------------------------------- log-polar
class LogPolarSampler(nn.Module):
    """Samples a patch-state map on a log-polar grid around fixations; ring means -> Linear -> one token each."""

    def __init__(self, config):
        super().__init__()
        width = config.vision_config.hidden_size
        self.rings, self.wedges = config.log_polar_rings, config.log_polar_wedges
        self.radii = (config.log_polar_min_radius, config.log_polar_max_radius)
        self.projection = nn.Linear(self.rings * width, width)

    @staticmethod
    def validate(config) -> None:
        FrameReader.check_knobs(
            config,
            {
                "log_polar_rings": (config.log_polar_rings >= 1, ">= 1"),
                "log_polar_wedges": (config.log_polar_wedges >= 1, ">= 1"),
                "log_polar_min_radius": (config.log_polar_min_radius > 0, "positive"),
                "log_polar_max_radius": (
                    config.log_polar_max_radius >= config.log_polar_min_radius,
                    ">= log_polar_min_radius",
                ),
            },
        )

    def offsets(self, device: torch.device) -> torch.Tensor:
        """Sample points ``[R * W, 2]`` (x, y) around a fixation at 0: R geometric radii x W wedges, ring-major."""
        low, high = self.radii
        radii = torch.logspace(math.log10(low), math.log10(high), self.rings, device=device)  # (R,)
        angles = torch.arange(self.wedges, device=device) * (2 * torch.pi / self.wedges)
        directions = torch.stack([angles.cos(), angles.sin()], -1)  # (W, 2)
        return (radii[:, None, None] * directions).reshape(-1, 2)  # (R * W, 2)

    def forward(
        self, grid: torch.Tensor, fixations: torch.Tensor, gate: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``grid [N, D, g, g]``, ``fixations [N, k, 2]`` in -1..1, ``gate [N, k, P]`` or None -> tokens
        ``[N, k, D]`` and each token's sampling weights on the patches ``[N, k, P]`` (points outside the frame
        or on gated patches read zeros: their weight is missing from the sum)."""
        count, width, side, _ = grid.shape
        plans = fixations.shape[1]
        points = fixations.unsqueeze(2) + self.offsets(grid.device)  # (N, k, R*W, 2)
        points = points.reshape(count * plans, -1, 1, 2).to(grid.dtype)  # (N*k, R*W, 1, 2)
        basis = torch.eye(side * side, device=grid.device, dtype=grid.dtype).reshape(1, -1, side, side)
        basis = basis.expand(count * plans, -1, -1, -1)  # (N*k, P, g, g): one channel per patch
        frames = grid.unsqueeze(1).expand(-1, plans, -1, -1, -1)  # (N, k, D, g, g)
        if gate is not None:
            mask = gate.reshape(count, plans, 1, side, side).to(grid.dtype)  # (N, k, 1, g, g)
            frames, basis = frames * mask, basis * mask.flatten(0, 1)
        frames = frames.reshape(count * plans, width, side, side)  # (N*k, D, g, g)
        samples = F.grid_sample(frames, points, align_corners=True)  # (N*k, D, R*W, 1)
        rings = samples.reshape(count * plans, width, self.rings, self.wedges).mean(-1)  # (N*k, D, R)
        tokens = self.projection(rings.transpose(1, 2).flatten(1))  # (N*k, D)
        weights = F.grid_sample(basis, points, align_corners=True).mean((2, 3))  # (N*k, P)
        return tokens.reshape(count, plans, width), weights.float().reshape(count, plans, side * side)


class LogPolarReader(FrameReader):
    """The plan is a fixation (tanh-bounded x, y); a log-polar sampling of the patch states around it is the token."""

    plan_is_query = False

    def __init__(self, config):
        super().__init__(config)
        self.sampler = LogPolarSampler(config)

    @classmethod
    def plan_width(cls, config) -> int:
        return FIXATION_DIMS

    @classmethod
    def validate(cls, config) -> None:
        LogPolarSampler.validate(config)

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        plans, one_plan = self.as_plans(inputs)  # (N, k, 2)
        grid = self.patch_map(self.patch_states(cache))  # (N, D, g, g)
        gate = self.patch_gate(_per_plan(patch_bias, plans.shape[1]))
        visual, weights = self.sampler(grid, plans.float().tanh(), gate)
        return self.as_reading(visual, self.full_distribution(weights), one_plan)


# ----------------------------------------------------------------------------------------------- top-K
class TopKSelector(nn.Module):
    """Scores the final patch states with a projected query and keeps the ``top_k_patches`` best."""

    def __init__(self, config):
        super().__init__()
        width = config.vision_config.hidden_size
        self.top_k = config.top_k_patches
        self.separate_tokens = config.top_k_output == "tokens"
        self.query_projection = nn.Linear(width, width, bias=False)

    @staticmethod
    def validate(config) -> None:
        FrameReader.check_knobs(
            config,
            {
                "top_k_patches": (
                    1 <= config.top_k_patches <= config.num_patches,
                    f"in [1, {config.num_patches}] (the patches of a frame)",
                ),
                "top_k_output": (config.top_k_output in TOP_K_OUTPUTS, f"one of {TOP_K_OUTPUTS}"),
            },
        )

    @staticmethod
    def tokens(config) -> int:
        """Tokens one plan gives: the K patches, or their weighted sum."""
        return config.top_k_patches if config.top_k_output == "tokens" else 1

    def forward(
        self, queries: torch.Tensor, states: torch.Tensor, patch_bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``queries [N, k, D]``, ``states [N, P, D]``, ``patch_bias [N, k, P]`` or None -> tokens ``[N, k, t, D]``,
        their patch weights ``[N, k, t, P]`` (one-hot per kept patch, or the softmax over the kept ones) and the
        best patch ``[N, k]``."""
        width = states.shape[-1]
        scores = torch.matmul(self.query_projection(queries.to(states.dtype)), states.transpose(1, 2)).float()
        scores = scores / width**0.5  # (N, k, P)
        if patch_bias is not None:
            scores = (scores + patch_bias.float()).clamp_min(torch.finfo(torch.float32).min)
        soft = scores.softmax(-1)
        kept = scores.topk(self.top_k, dim=-1).indices  # (N, k, K), best first
        if self.separate_tokens:
            hard = F.one_hot(kept, scores.shape[-1]).to(soft.dtype)  # (N, k, K, P)
            weights = _straight_through(hard, soft.unsqueeze(2).expand_as(hard))
        else:
            selected = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, kept, True)
            hard = scores.masked_fill(~selected, float("-inf")).softmax(
                -1
            )  # (N, k, P): softmax over the kept
            weights = _straight_through(hard, soft).unsqueeze(2)  # (N, k, 1, P)
        tokens = torch.matmul(weights.to(states.dtype), states.unsqueeze(1))  # (N, k, t, D)
        return tokens, weights, kept[..., 0]


class TopKReader(FrameReader):
    """The query's ``top_k_patches`` best patches as tokens, or their score-softmax-weighted sum as one token."""

    def __init__(self, config):
        super().__init__(config)
        self.selector = TopKSelector(config)

    @classmethod
    def tokens_per_plan(cls, config) -> int:
        return TopKSelector.tokens(config)

    @classmethod
    def validate(cls, config) -> None:
        TopKSelector.validate(config)

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        queries, one_plan = self.as_plans(inputs)  # (N, k, D)
        states = self.patch_states(cache)  # (N, P, D)
        tokens, weights, _ = self.selector(queries, states, _per_plan(patch_bias, queries.shape[1]))
        attention = self.full_distribution(weights)  # (N, k, t, S+1)
        one_token = one_plan and tokens.shape[2] == 1
        return self.as_reading(tokens.flatten(1, 2), attention.flatten(1, 2), one_token)


class HybridReader(FrameReader):
    """``top_k``'s tokens plus one log-polar coverage token around the best patch (its context at low acuity)."""

    def __init__(self, config):
        super().__init__(config)
        self.selector = TopKSelector(config)
        self.sampler = LogPolarSampler(config)
        self.side = _grid_side(config)

    @classmethod
    def tokens_per_plan(cls, config) -> int:
        return TopKSelector.tokens(config) + 1

    @classmethod
    def validate(cls, config) -> None:
        TopKSelector.validate(config)
        LogPolarSampler.validate(config)

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        queries, _ = self.as_plans(inputs)  # (N, k, D)
        states = self.patch_states(cache)  # (N, P, D)
        bias = _per_plan(patch_bias, queries.shape[1])
        tokens, weights, best = self.selector(queries, states, bias)
        fixations = patch_coordinates(self.side, states.device)[best]  # (N, k, 2): the best patch's centre
        coverage, looked = self.sampler(self.patch_map(states), fixations, self.patch_gate(bias))
        tokens = torch.cat([tokens, coverage.unsqueeze(2)], 2)  # (N, k, t + 1, D)
        weights = torch.cat([weights, looked.unsqueeze(2)], 2)  # (N, k, t + 1, P)
        attention = self.full_distribution(weights)
        return self.as_reading(tokens.flatten(1, 2), attention.flatten(1, 2), one_token=False)


SPATIAL_READERS: dict[str, type[FrameReader]] = {
    "multi_scale": MultiScaleReader,
    "cascade": CascadeReader,
    "log_polar": LogPolarReader,
    "top_k": TopKReader,
    "hybrid": HybridReader,
}

__all__ = [
    "SPATIAL_READERS",
    "CascadeReader",
    "HybridReader",
    "LogPolarReader",
    "LogPolarSampler",
    "MultiScaleReader",
    "TopKReader",
    "TopKSelector",
]
