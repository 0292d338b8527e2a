"""Spatial study readers: log-polar sampling, top-K patches and their hybrid (``frame_reader`` ``log_polar``,
``top_k``, ``hybrid``), with their configs.

They read the final patch states and report where they looked as a full distribution over ``[CLS, registers,
patches, own key]`` (``reader_base_foveated``). In the readers comparison (``studies/readers/RESULTS.md``) none of
them learned to look where the prompt pointed, so they are not part of the model's files.

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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reader_base_foveated import FrameReader, FrameReading, patch_coordinates
from reader_config_foveated import ReaderConfig
from spatial_readers_foveated import per_plan

FIXATION_DIMS = 2  # a log-polar plan is a fixation (x, y)
TOP_K_OUTPUTS = ("weighted_sum", "tokens")


@dataclass
class LogPolarReaderConfig(ReaderConfig):
    """Knobs of ``log_polar``: a log-polar sampling of the patch states around a fixation."""

    log_polar_rings: int = 4
    """Rings of the log-polar sampling grid around the fixation."""
    log_polar_wedges: int = 8
    """Sample points per ring (averaged: one feature per ring)."""
    log_polar_min_radius: float = 0.1
    """Radius of the innermost ring in -1..1 frame units (the radii grow geometrically from it)."""
    log_polar_max_radius: float = 1.0
    """Radius of the outermost ring in -1..1 frame units."""

    def log_polar_checks(self) -> dict[str, tuple[bool, str]]:
        return {
            "log_polar_rings": (self.log_polar_rings >= 1, ">= 1"),
            "log_polar_wedges": (self.log_polar_wedges >= 1, ">= 1"),
            "log_polar_min_radius": (self.log_polar_min_radius > 0, "positive"),
            "log_polar_max_radius": (
                self.log_polar_max_radius >= self.log_polar_min_radius,
                ">= log_polar_min_radius",
            ),
        }

    def validate(self, config) -> None:
        self.check(config.frame_reader, self.log_polar_checks())

    def plan_width(self, config) -> int:
        return FIXATION_DIMS


@dataclass
class TopKReaderConfig(ReaderConfig):
    """Knobs of ``top_k``: the query's best patches."""

    top_k_patches: int = 4
    """Patches the query keeps (the K best scores)."""
    top_k_output: str = "weighted_sum"
    """``"weighted_sum"``: one token, the kept patches weighted by the softmax of their scores; ``"tokens"``: the
    K patches as K tokens (with ``multi_query_output="tokens"`` the LLM sees them; ``"mean"`` averages them)."""

    def top_k_checks(self, config) -> dict[str, tuple[bool, str]]:
        return {
            "top_k_patches": (
                1 <= self.top_k_patches <= config.num_patches,
                f"in [1, {config.num_patches}] (the patches of a frame)",
            ),
            "top_k_output": (self.top_k_output in TOP_K_OUTPUTS, f"one of {TOP_K_OUTPUTS}"),
        }

    def validate(self, config) -> None:
        self.check(config.frame_reader, self.top_k_checks(config))

    def tokens_per_plan(self, config) -> int:
        """The K patches, or their weighted sum."""
        return self.top_k_patches if self.top_k_output == "tokens" else 1


@dataclass
class HybridReaderConfig(TopKReaderConfig, LogPolarReaderConfig):
    """Knobs of ``hybrid``: ``top_k``'s and ``log_polar``'s."""

    def validate(self, config) -> None:
        self.check(config.frame_reader, {**self.top_k_checks(config), **self.log_polar_checks()})

    def plan_width(self, config) -> int:
        return config.query_dim

    def tokens_per_plan(self, config) -> int:
        return TopKReaderConfig.tokens_per_plan(self, config) + 1


def _straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``hard`` in the forward, the gradient of ``soft`` in the backward."""
    return soft + (hard - soft).detach()


# ----------------------------------------------------------------------------------------------- log-polar
class LogPolarSampler(nn.Module):
    """Samples a patch-state map on a log-polar grid around fixations; ring means -> Linear -> one token each."""

    def __init__(self, config):
        super().__init__()
        width = config.vision_config.hidden_size
        settings = config.reader_settings
        self.rings, self.wedges = settings.log_polar_rings, settings.log_polar_wedges
        self.radii = (settings.log_polar_min_radius, settings.log_polar_max_radius)
        self.projection = nn.Linear(self.rings * width, width)

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

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        plans, one_plan = self.as_plans(inputs)  # (N, k, 2)
        grid = self.patch_map(self.patch_states(cache))  # (N, D, g, g)
        gate = self.patch_gate(per_plan(patch_bias, plans.shape[1]))
        visual, weights = self.sampler(grid, plans.float().tanh(), gate)
        return self.as_reading(visual, self.full_distribution(weights), one_plan)


# ----------------------------------------------------------------------------------------------- top-K
class TopKSelector(nn.Module):
    """Scores the final patch states with a projected query and keeps the ``top_k_patches`` best."""

    def __init__(self, config):
        super().__init__()
        width = config.vision_config.hidden_size
        self.top_k = config.reader_settings.top_k_patches
        self.separate_tokens = config.reader_settings.top_k_output == "tokens"
        self.query_projection = nn.Linear(width, width, bias=False)

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

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        queries, one_plan = self.as_plans(inputs)  # (N, k, D)
        states = self.patch_states(cache)  # (N, P, D)
        tokens, weights, _ = self.selector(queries, states, per_plan(patch_bias, queries.shape[1]))
        attention = self.full_distribution(weights)  # (N, k, t, S+1)
        one_token = one_plan and tokens.shape[2] == 1
        return self.as_reading(tokens.flatten(1, 2), attention.flatten(1, 2), one_token)


class HybridReader(FrameReader):
    """``top_k``'s tokens plus one log-polar coverage token around the best patch (its context at low acuity)."""

    def __init__(self, config):
        super().__init__(config)
        self.selector = TopKSelector(config)
        self.sampler = LogPolarSampler(config)
        self.side = round(config.num_patches**0.5)

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        queries, _ = self.as_plans(inputs)  # (N, k, D)
        states = self.patch_states(cache)  # (N, P, D)
        bias = per_plan(patch_bias, queries.shape[1])
        tokens, weights, best = self.selector(queries, states, bias)
        fixations = patch_coordinates(self.side, states.device)[best]  # (N, k, 2): the best patch's centre
        coverage, looked = self.sampler(self.patch_map(states), fixations, self.patch_gate(bias))
        tokens = torch.cat([tokens, coverage.unsqueeze(2)], 2)  # (N, k, t + 1, D)
        weights = torch.cat([weights, looked.unsqueeze(2)], 2)  # (N, k, t + 1, P)
        attention = self.full_distribution(weights)
        return self.as_reading(tokens.flatten(1, 2), attention.flatten(1, 2), one_token=False)


STUDY_SPATIAL_READERS: dict[str, tuple[type[FrameReader], type[ReaderConfig]]] = {
    "log_polar": (LogPolarReader, LogPolarReaderConfig),
    "top_k": (TopKReader, TopKReaderConfig),
    "hybrid": (HybridReader, HybridReaderConfig),
}
