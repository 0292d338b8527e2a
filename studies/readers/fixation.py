"""Fixation study readers: the plan says where to look, and the ViT reads a crop of the frame's pixels there.

Every reader here reads pixels (``needs_pixels``): a plan places one or more crop windows on the frame, each window
is resampled differentiably to ``fixation_crop_size`` pixels (``F.affine_grid`` + ``F.grid_sample``) and read by the
model's own ViT in a patch pass over the crop (cheap for a small crop); the crop's CLS (or mean patch) state is the
*foveal* token. A *periphery* token, the mean of the frame's cached final patch states (a low-resolution view of
the whole frame; ``fixation_periphery_grid`` keeps a G x G grid of cell means, mapped to one token), can follow
the foveal tokens or be fused with them into one token (``fixation_periphery``).

* ``dual_stream``: one fixation (centre x, y and window scale, bounded by tanh / sigmoid between the knobs'
  limits) read as fovea + periphery: two tokens, or one fused token.
* ``multi_fixation``: ``num_fixations`` such fixations a plan, one foveal token each (plus the periphery).
* ``glimpse_rl``: a hard glimpse (RAM): the plan is logits over a ``glimpse_grid x glimpse_grid`` grid of
  locations; a cell is sampled while training (argmax in eval) and the crop at its centre is read. The policy
  learns by REINFORCE with a learned baseline through the auxiliary-loss hook (:func:`reinforce_loss`).
* ``adaptive_fixation``: an adaptive token budget: the plan also holds logits over ``glimpse_budget_levels``; a
  frame reads the chosen number of its fixations (straight-through Gumbel-softmax while training), the unused
  slots hold a learned "no glimpse" embedding, and ``glimpse_cost`` per glimpse is the auxiliary loss.

Where a reader looked (its attention, a full distribution over ``[CLS, registers, patches, own key]``): a foveal
token's is its window's coverage of the patch grid (the fraction of the window's area on each patch; the part
outside the frame, or gated off by a probe, on the last entry); the periphery token's is uniform over the patches
it averaged; a fused token's is the mean of the distributions it fuses. A probe's ``patch_bias`` gates the frame's
pixels (before the crop), the coverage and the periphery's average by ``patch_gate``.

Coordinates run from -1 (left, top) to 1 (right, bottom) over the frame's *edges* (``grid_sample`` with
``align_corners=False``); a window of side fraction ``f`` of the frame has half-width ``f`` in them.

Shapes: N frames, k plans a frame, m fixations a plan, t tokens a plan, P patches of a g x g grid, D encoder
width, c crop side in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from reader_base_foveated import FrameReader, FrameReading, PatchCache
from reader_config_foveated import ReaderConfig

FIXATION_WIDTH = 3  # plan numbers of one fixation: centre x, centre y, window scale
FIXATION_TOKENS = ("cls", "mean")
PERIPHERY_MODES = ("none", "token", "fused")
BOX_LOSSES = ("gaussian", "coverage")


# ----------------------------------------------------------------------------------------------------
# Windows, crops, coverage
# ----------------------------------------------------------------------------------------------------


def fixation_windows(fixations: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor]:
    """Plan numbers ``[..., 3]`` (x, y, scale) -> window centres ``[..., 2]`` and half-widths ``[...]``.

    The centre is ``fixation_centre_range * tanh`` of the first two, the window side (a fraction of the frame's)
    ``fixation_min_scale + (fixation_max_scale - fixation_min_scale) * sigmoid`` of the third.
    """
    fixations = fixations.float()
    centres = config.reader_settings.fixation_centre_range * fixations[..., :2].tanh()
    low, high = config.reader_settings.fixation_min_scale, config.reader_settings.fixation_max_scale
    return centres, low + (high - low) * fixations[..., 2].sigmoid()


def crop_windows(pixels: torch.Tensor, centres: torch.Tensor, half: torch.Tensor, size: int) -> torch.Tensor:
    """Crops ``[W, 3, c, c]`` of square windows (``centres [..., 2]``, ``half [...]``, W windows in all).

    ``pixels [F, 3, H, W]`` hold the frames the windows lie on, the windows in order, ``W / F`` consecutive ones on
    each frame. The windows of a frame are stacked along the grid's height, so one ``grid_sample`` call reads them
    all without copying the frame. Bilinear, differentiable in the centres and sizes; outside the frame is 0.
    """
    count = half.numel()
    centres, half = centres.reshape(count, 2), half.reshape(count)
    zeros = torch.zeros_like(half)
    theta = torch.stack([half, zeros, centres[:, 0], zeros, half, centres[:, 1]], -1).view(count, 2, 3)
    grid = F.affine_grid(theta, [count, 3, size, size], align_corners=False)  # (W, c, c, 2)
    grid = grid.reshape(pixels.shape[0], -1, size, 2).to(pixels.dtype)  # (F, W/F * c, c, 2)
    crops = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    crops = crops.unflatten(2, (-1, size)).transpose(1, 2)  # (F, W/F, 3, c, c)
    return crops.reshape(count, 3, size, size)  # (W, 3, c, c)


def _axis_overlap(centre: torch.Tensor, half: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Fraction of the interval ``centre +- half`` (``[...]``) inside each of the cells between ``edges`` ->
    ``[..., g]``."""
    low, high = (centre - half).unsqueeze(-1), (centre + half).unsqueeze(-1)
    overlap = (torch.minimum(high, edges[1:]) - torch.maximum(low, edges[:-1])).clamp_min(0.0)
    return overlap / (2 * half).unsqueeze(-1)


def window_coverage(centres: torch.Tensor, half: torch.Tensor, side: int) -> torch.Tensor:
    """Fraction of each window's area on each patch of a ``side x side`` grid: ``[..., 2]``, ``[...]`` -> ``[..., P]``
    (row-major; sums to the fraction of the window inside the frame). Differentiable where windows overlap patches.
    """
    edges = torch.linspace(-1.0, 1.0, side + 1, device=centres.device)
    columns = _axis_overlap(centres[..., 0], half, edges)  # (..., g)
    rows = _axis_overlap(centres[..., 1], half, edges)  # (..., g)
    return (rows.unsqueeze(-1) * columns.unsqueeze(-2)).flatten(-2)  # (..., P)


def patch_centres(side: int, device: torch.device) -> torch.Tensor:
    """Centres ``[P, 2]`` (x, y) of a ``side x side`` patch grid, row-major, in the frame-edge coordinates of the
    windows (-1 and 1 are the frame's edges, so the first centre is ``1 / side - 1``)."""
    axis = torch.arange(side, device=device, dtype=torch.float32).add(0.5).mul(2.0 / side).sub(1.0)
    rows, columns = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([columns, rows], -1).reshape(side * side, 2)  # (P, 2)


def _masked_frame_mean(nll: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Mean of per-frame losses ``[N]`` over the frames where the box (coverage ``[N, P]``) is in view."""
    in_view = (boxes.sum(-1) > 0).float()
    return (nll * in_view).sum() / in_view.sum().clamp_min(1.0)


def _log_coverage(boxes: torch.Tensor) -> torch.Tensor:
    """``log`` of a box coverage ``[..., P]``, with the float32 minimum (not ``-inf``) where it is 0, so a
    ``logsumexp`` over a frame without the box stays finite (such frames are masked out afterwards)."""
    coverage = boxes.float()
    tiny = torch.finfo(torch.float32)
    return torch.where(coverage > 0, coverage.clamp_min(tiny.tiny).log(), coverage.new_tensor(tiny.min))


def gaussian_box_loss(
    centres: torch.Tensor, half: torch.Tensor, boxes: torch.Tensor, sigma: float
) -> torch.Tensor:
    """``-log`` mass in the box of each window's Gaussian footprint, mean over windows and in-view frames.

    A window (``centres [N, k, m, 2]``, half-widths ``[N, k, m]``) puts weight ``exp(-d^2 / (2 (sigma * half)^2))``
    on each patch at distance d from its centre, normalised over the patches; its mass in the box is the sum of
    those weights times the box's coverage ``boxes [N, P]``. All in log space (``logsumexp``), so the loss of a
    window far from the box is about ``d^2 / (2 (sigma * half)^2)``: a pull towards the box wherever it is,
    unlike the exact coverage, which is flat while the window misses the box.
    """
    side = round(boxes.shape[-1] ** 0.5)
    points = patch_centres(side, centres.device)  # (P, 2)
    distance = (centres.float().unsqueeze(-2) - points).square().sum(-1)  # (N, k, m, P)
    spread = 2 * (sigma * half.float()).square().unsqueeze(-1)  # (N, k, m, 1)
    log_weights = (-distance / spread).log_softmax(-1)  # (N, k, m, P)
    log_box = _log_coverage(boxes)[:, None, None]  # (N, 1, 1, P)
    nll = -(log_weights + log_box).logsumexp(-1)  # (N, k, m)
    return _masked_frame_mean(nll.flatten(1).mean(1), boxes)


def policy_box_loss(log_policy: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``-log`` of a glimpse policy's probability of a cell in the box, weighted by the box's share of each cell:
    ``log_policy [N, k, G * G]``, ``boxes [N, P]`` (P patches of a g x g grid, g a multiple of G or not: the
    coverage is average-pooled to the G x G cells) -> mean over plans and in-view frames."""
    side, cells = round(boxes.shape[-1] ** 0.5), round(log_policy.shape[-1] ** 0.5)
    grid = boxes.float().reshape(-1, 1, side, side)  # (N, 1, g, g)
    cell_coverage = F.adaptive_avg_pool2d(grid, cells).flatten(1)  # (N, G * G)
    nll = -(log_policy.float() + _log_coverage(cell_coverage)[:, None]).logsumexp(-1)  # (N, k)
    return _masked_frame_mean(nll.mean(1), boxes)


def _pixel_gate(gate: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """A patch gate ``[N, k, P]`` as a pixel gate ``[N * k, 1, H, W]`` (each patch's value on its pixels)."""
    side = round(gate.shape[-1] ** 0.5)
    grid = gate.reshape(-1, 1, side, side).to(pixels.dtype)  # (N * k, 1, g, g)
    return F.interpolate(grid, size=pixels.shape[-2:], mode="nearest")


def _plan_gate(patch_bias: torch.Tensor | None, plans: int) -> torch.Tensor | None:
    """A probe's bias ``[N, P]`` or ``[N, k, P]`` as a gate ``[N, k, P]`` in [0, 1] (None stays None)."""
    gate = FrameReader.patch_gate(patch_bias)
    if gate is not None and gate.dim() == 2:
        gate = gate.unsqueeze(1).expand(-1, plans, -1)  # (N, k, P): the same region for every plan
    return gate


# ----------------------------------------------------------------------------------------------------
# Configs: the knobs of each reader (``FoveatedVLMConfig.reader_config``); the readers' classmethods check them
# ----------------------------------------------------------------------------------------------------


@dataclass
class FixationReaderConfig(ReaderConfig):
    """Knobs shared by the fixation readers; ``reader`` is the module class whose classmethods give the shapes."""

    reader: ClassVar[type[FrameReader]]
    fixation_crop_size: int = 64
    """Side in pixels of the crop around a fixation that the ViT reads in its own patch pass (a multiple of
    ``patch_size``; 64 px at 16 px patches is 16 patches, 1/16 of a 256 px frame's pass)."""
    fixation_token: str = "cls"
    """The foveal token of a crop: its ViT output at ``"cls"`` or the ``"mean"`` of its patch states (both normed)."""
    fixation_min_scale: float = 0.125
    """Smallest crop window side, a fraction of the frame side (a sigmoid of the plan between the two scales)."""
    fixation_max_scale: float = 0.5
    """Largest crop window side, a fraction of the frame side (<= 1)."""
    fixation_centre_range: float = 1.0
    """The window centre is ``fixation_centre_range * tanh(plan)`` per axis, in -1..1 frame coordinates."""
    fixation_periphery: str = "token"
    """``"token"``: a periphery token (the mean of the frame's final patch states) after the foveal ones;
    ``"fused"``: foveal tokens and periphery fused into one token (a learned linear map); ``"none"``: foveal only."""
    fixation_periphery_grid: int = 1
    """The periphery pools the final patch states over a G x G grid of cells and maps the cells' means to one token
    (a low-resolution view that keeps where things are); 1: the plain mean of the patch states."""
    fixation_box_loss: str = "gaussian"
    """With attention supervision: ``"gaussian"`` scores each window by ``-log`` of the mass a Gaussian footprint of
    it puts in the named object's box (a gradient even when the window misses the box); ``"coverage"``: ``-log``
    mass in the box of the window's exact coverage."""
    fixation_box_sigma: float = 1.0
    """``fixation_box_loss="gaussian"``: std of the footprint, in window half-widths."""

    def validate(self, config) -> None:
        self.reader.validate(config)

    def plan_width(self, config) -> int:
        return self.reader.plan_width(config)

    def tokens_per_plan(self, config) -> int:
        return self.reader.tokens_per_plan(config)


@dataclass
class MultiFixationReaderConfig(FixationReaderConfig):
    """Knobs of ``multi_fixation``."""

    num_fixations: int = 2
    """Fixations a plan holds (``3 * num_fixations`` plan numbers: x, y, scale each), each a foveal crop."""

    def validate(self, config) -> None:
        self.check(config.frame_reader, {"num_fixations": (self.num_fixations >= 1, ">= 1")})
        super().validate(config)


@dataclass
class DualStreamReaderConfig(FixationReaderConfig):
    """Knobs of ``dual_stream`` (one fixation, fovea + periphery)."""


@dataclass
class GlimpseReaderConfig(FixationReaderConfig):
    """Knobs of ``glimpse_rl``."""

    glimpse_grid: int = 4
    """The plan is logits over a ``glimpse_grid x glimpse_grid`` grid of glimpse locations; one cell is sampled
    while training (argmax in eval) and read as a foveal crop at its centre."""
    glimpse_window: float = 1.0
    """Side of the crop window around the chosen cell's centre, in grid cells."""
    glimpse_entropy_weight: float = 0.0
    """Weight of the policy's entropy bonus in its REINFORCE loss (``loss_reader``)."""
    glimpse_baseline_hidden_dim: int = 64
    """Hidden width of the learned REINFORCE baseline (an MLP of the detached plan logits)."""
    reader_loss_weight: float = 1.0
    """Weight of the REINFORCE loss (``loss_reader``) in the total loss."""


@dataclass
class AdaptiveFixationReaderConfig(FixationReaderConfig):
    """Knobs of ``adaptive_fixation``."""

    glimpse_budget_levels: list[int] = field(default_factory=lambda: [1, 2, 4])
    """The glimpse counts a frame may choose from (increasing); a frame has as many token slots as the largest, and
    unused slots hold a learned "no glimpse" embedding."""
    glimpse_budget_temperature: float = 1.0
    """Temperature of the straight-through Gumbel-softmax over the budget levels while training (argmax in eval)."""
    glimpse_cost: float = 0.01
    """Penalty per glimpse a frame reads (``loss_reader`` is this times the mean glimpses per frame)."""
    reader_loss_weight: float = 1.0
    """Weight of the glimpse cost (``loss_reader``) in the total loss."""


# ----------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------


class FixationReader(FrameReader):
    """``frame_reader="multi_fixation"``: ``num_fixations`` crop fixations a plan, each read by the ViT as a
    foveal token, plus the periphery (``fixation_periphery``). The base of every reader of this file."""

    plan_is_query = False
    needs_pixels = True

    def __init__(self, config):
        super().__init__(config)
        self.config = config
        self.grid_side = config.vision_config.image_size // config.vision_config.patch_size
        width = config.vision_config.hidden_size
        fused = (self.fixations(config) + 1) * width
        self.fovea_fusion = (
            nn.Linear(fused, width) if config.reader_settings.fixation_periphery == "fused" else None
        )
        cells = config.reader_settings.fixation_periphery_grid**2
        gridded = config.reader_settings.fixation_periphery != "none" and cells > 1
        self.periphery_projection = nn.Linear(cells * width, width) if gridded else None

    @classmethod
    def fixations(cls, config) -> int:
        """Foveal token slots of one plan (m)."""
        return config.reader_settings.num_fixations

    @classmethod
    def plan_width(cls, config) -> int:
        return FIXATION_WIDTH * cls.fixations(config)

    @classmethod
    def tokens_per_plan(cls, config) -> int:
        if config.reader_settings.fixation_periphery == "fused":
            return 1
        return cls.fixations(config) + (config.reader_settings.fixation_periphery == "token")

    @classmethod
    def validate(cls, config) -> None:
        patch = config.vision_config.patch_size
        side = config.vision_config.image_size // patch
        config.reader_settings.check(
            config.frame_reader,
            {
                "fixation_crop_size": (
                    config.reader_settings.fixation_crop_size > 0
                    and config.reader_settings.fixation_crop_size % patch == 0,
                    f"a positive multiple of patch_size ({patch})",
                ),
                "fixation_token": (
                    config.reader_settings.fixation_token in FIXATION_TOKENS,
                    f"one of {FIXATION_TOKENS}",
                ),
                "fixation_periphery": (
                    config.reader_settings.fixation_periphery in PERIPHERY_MODES,
                    f"one of {PERIPHERY_MODES}",
                ),
                "fixation_min_scale": (0 < config.reader_settings.fixation_min_scale, "positive"),
                "fixation_max_scale": (
                    config.reader_settings.fixation_min_scale
                    <= config.reader_settings.fixation_max_scale
                    <= 1,
                    "in [fixation_min_scale, 1]",
                ),
                "fixation_centre_range": (0 < config.reader_settings.fixation_centre_range <= 1, "in (0, 1]"),
                "fixation_periphery_grid": (
                    1 <= config.reader_settings.fixation_periphery_grid <= side
                    and (
                        config.reader_settings.fixation_periphery != "none"
                        or config.reader_settings.fixation_periphery_grid == 1
                    ),
                    f"in [1, the patch grid's side {side}], and 1 without a periphery",
                ),
                "fixation_box_loss": (
                    config.reader_settings.fixation_box_loss in BOX_LOSSES,
                    f"one of {BOX_LOSSES}",
                ),
                "fixation_box_sigma": (config.reader_settings.fixation_box_sigma > 0, "positive"),
            },
        )

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        plans, one_plan = self.as_plans(inputs)  # (N, k, 3m)
        windows = plans.unflatten(-1, (-1, FIXATION_WIDTH))  # (N, k, m, 3)
        centres, half = fixation_windows(windows, self.config)
        gate = _plan_gate(patch_bias, plans.shape[1])
        fovea, coverage = self.read_windows(centres, half, cache, encoder, gate)
        return self.reading(fovea, coverage, cache, gate, one_plan, {"centres": centres, "half": half})

    def box_loss(self, extras, boxes) -> torch.Tensor | None:
        """:func:`gaussian_box_loss` of the fine pass's windows (``fixation_box_loss="gaussian"``); None (the exact
        coverage's ``-log`` mass) for ``"coverage"``."""
        if self.settings.fixation_box_loss != "gaussian":
            return None
        return gaussian_box_loss(extras["centres"], extras["half"], boxes, self.settings.fixation_box_sigma)

    def read_windows(
        self,
        centres: torch.Tensor,
        half: torch.Tensor,
        cache: PatchCache,
        encoder: nn.Module,
        gate: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Foveal tokens ``[N, k, m, D]`` of windows ``centres [N, k, m, 2]``, ``half [N, k, m]`` and their coverage
        ``[N, k, m, P]`` of the patch grid (gated by ``gate [N, k, P]``: pixels and coverage)."""
        n, k, m = half.shape
        pixels = cache.pixels
        coverage = window_coverage(centres, half, self.grid_side)  # (N, k, m, P)
        if gate is not None:
            frames = pixels.unsqueeze(1).expand(n, k, *pixels.shape[1:]).flatten(0, 1)  # (N * k, 3, H, W)
            pixels = frames * _pixel_gate(gate, frames)
            coverage = coverage * gate.unsqueeze(2)
        crops = crop_windows(pixels, centres, half, self.settings.fixation_crop_size)  # (N * k * m, 3, c, c)
        states = encoder.encode_patches(crops).patch_states  # (N * k * m, S_c, D)
        if self.settings.fixation_token == "cls":
            tokens = states[:, 0]
        else:
            tokens = states[:, self.num_prefix_tokens :].mean(1)
        return tokens.view(n, k, m, -1), coverage  # (N, k, m, D), (N, k, m, P)

    def reading(
        self,
        fovea: torch.Tensor,
        coverage: torch.Tensor,
        cache: PatchCache,
        gate: torch.Tensor | None,
        one_plan: bool,
        extras: dict | None = None,
    ) -> FrameReading:
        """Foveal tokens ``[N, k, m, D]`` and coverage ``[N, k, m, P]`` with the periphery as a reading: tokens
        ``[N, k * t, D]`` (``[N, D]`` for one plan of one token) and their full distributions."""
        tokens, weights = fovea, coverage
        if self.settings.fixation_periphery != "none":
            periphery, uniform = self.periphery(cache, gate, fovea.shape[1])
            tokens = torch.cat([fovea, periphery.unsqueeze(2).to(fovea.dtype)], 2)  # (N, k, m + 1, D)
            weights = torch.cat([coverage, uniform.unsqueeze(2)], 2)  # (N, k, m + 1, P)
        if self.fovea_fusion is not None:
            tokens = self.fovea_fusion(tokens.flatten(-2)).unsqueeze(2)  # (N, k, 1, D)
            weights = weights.mean(2, keepdim=True)  # (N, k, 1, P)
        per_plan = tokens.shape[2]
        attention = self.full_distribution(weights.flatten(1, 2))  # (N, k * t, S + 1)
        return self.as_reading(tokens.flatten(1, 2), attention, one_plan and per_plan == 1, extras)

    def periphery(
        self, cache: PatchCache, gate: torch.Tensor | None, plans: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The periphery token of each plan ``[N, k, D]`` over the patches ``gate [N, k, P]`` keeps (all without
        one) and its weights ``[N, k, P]`` (uniform over those): the mean of the frame's final patch states, or
        (``fixation_periphery_grid`` G > 1) their means over G x G cells, flattened and mapped to one token."""
        states = self.patch_states(cache)  # (N, P, D)
        n, patches, width = states.shape
        tiny = torch.finfo(torch.float32).tiny
        kept = states.new_ones(n, plans, patches, dtype=torch.float32) if gate is None else gate.float()
        weights = kept / kept.sum(-1, keepdim=True).clamp_min(tiny)
        if self.periphery_projection is None:
            return torch.einsum("nkp,npd->nkd", weights.to(states.dtype), states), weights
        side, cells = self.grid_side, self.settings.fixation_periphery_grid
        kept_map = kept.reshape(n * plans, 1, side, side)  # (N * k, 1, g, g)
        state_map = self.patch_map(states).unsqueeze(1) * kept_map.view(n, plans, 1, side, side).to(
            states.dtype
        )
        pooled = F.adaptive_avg_pool2d(state_map.flatten(0, 1).float(), cells)  # (N * k, D, G, G)
        share = F.adaptive_avg_pool2d(kept_map, cells).clamp_min(tiny)  # (N * k, 1, G, G)
        cell_means = (pooled / share).flatten(1).to(states.dtype)  # (N * k, D * G * G)
        return self.periphery_projection(cell_means).view(n, plans, width), weights


class DualStreamReader(FixationReader):
    """``frame_reader="dual_stream"``: one fixation a plan, read as a foveal crop token and a periphery token
    (``fixation_periphery="token"``: two tokens; ``"fused"``: one)."""

    @classmethod
    def fixations(cls, config) -> int:
        return 1

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        config.reader_settings.check(
            config.frame_reader,
            {
                "fixation_periphery": (
                    config.reader_settings.fixation_periphery != "none",
                    "'token' or 'fused'",
                )
            },
        )


class GlimpseReader(FixationReader):
    """``frame_reader="glimpse_rl"``: a hard glimpse on a ``glimpse_grid x glimpse_grid`` grid (RAM's glimpse).

    The plan is ``G * G`` logits, the policy; while training a cell is sampled from it, in eval the argmax is
    taken. The crop of ``glimpse_window`` cells around the cell's centre is read as the foveal token (plus the
    periphery). The crop has no gradient to the plan: the policy learns from the fine pass's loss by REINFORCE
    (:meth:`auxiliary_loss`) on batch-standardised rewards, against a learned baseline of the detached plan
    logits (the plan head's projection of the LLM state that planned the glimpse). Only the fine pass is scored:
    pass 1's static plan is sampled the same way while training but learns nothing (in eval it reads one fixed
    cell; a periphery gives pass 1 the whole frame).
    """

    needs_frame_caption_losses = True

    def __init__(self, config):
        super().__init__(config)
        cells = config.reader_settings.glimpse_grid**2
        self.fovea_baseline = nn.Sequential(
            nn.Linear(cells, config.reader_settings.glimpse_baseline_hidden_dim),
            nn.GELU(),
            nn.Linear(config.reader_settings.glimpse_baseline_hidden_dim, 1),
        )

    @classmethod
    def fixations(cls, config) -> int:
        return 1

    @classmethod
    def plan_width(cls, config) -> int:
        return config.reader_settings.glimpse_grid**2

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        config.reader_settings.check(
            config.frame_reader,
            {
                "glimpse_grid": (config.reader_settings.glimpse_grid >= 1, ">= 1"),
                "glimpse_window": (config.reader_settings.glimpse_window > 0, "positive"),
                "glimpse_entropy_weight": (config.reader_settings.glimpse_entropy_weight >= 0, ">= 0"),
                "glimpse_baseline_hidden_dim": (
                    config.reader_settings.glimpse_baseline_hidden_dim >= 1,
                    ">= 1",
                ),
            },
        )

    def cell_centres(self, cells: torch.Tensor) -> torch.Tensor:
        """Centres ``[..., 2]`` (x, y) of grid cells ``[...]`` (row-major indices of the ``G x G`` grid)."""
        return patch_centres(self.settings.glimpse_grid, cells.device)[cells]

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        plans, one_plan = self.as_plans(inputs)  # (N, k, G * G)
        logits = plans.float()
        if self.training:
            cells = torch.distributions.Categorical(logits=logits).sample()  # (N, k)
        else:
            cells = logits.argmax(-1)  # (N, k)
        centres = self.cell_centres(cells).unsqueeze(2)  # (N, k, 1, 2)
        half = torch.full_like(
            logits[..., :1], self.settings.glimpse_window / self.settings.glimpse_grid
        )  # (N, k, 1)
        gate = _plan_gate(patch_bias, plans.shape[1])
        fovea, coverage = self.read_windows(centres, half, cache, encoder, gate)
        log_policy = logits.log_softmax(-1)  # (N, k, G * G)
        extras = {
            "cells": cells,
            "log_policy": log_policy,
            "log_prob": log_policy.gather(-1, cells.unsqueeze(-1)).squeeze(-1),  # (N, k)
            "entropy": -(log_policy.exp() * log_policy).sum(-1),  # (N, k)
            "baseline": self.fovea_baseline(logits.detach()).squeeze(-1),  # (N, k)
        }
        return self.reading(fovea, coverage, cache, gate, one_plan, extras)

    def box_loss(self, extras, boxes) -> torch.Tensor | None:
        """:func:`policy_box_loss` of the fine pass's policy (``fixation_box_loss="gaussian"``: the supervision
        teaches the policy directly); None for ``"coverage"`` (the sampled crop gives the box loss no gradient)."""
        if self.settings.fixation_box_loss != "gaussian":
            return None
        return policy_box_loss(extras["log_policy"], boxes)

    @property
    def auxiliary_loss_weight(self) -> float:
        return self.settings.reader_loss_weight

    def auxiliary_loss(self, extras, output, targets) -> torch.Tensor | None:
        """REINFORCE of the fine pass's glimpses: :func:`reinforce_loss` with :func:`glimpse_rewards`."""
        rewards = glimpse_rewards(output, targets, self.config)
        if rewards is None:
            return None
        return reinforce_loss(extras, rewards, self.settings.glimpse_entropy_weight)


def glimpse_rewards(output, targets: torch.Tensor | None, config) -> torch.Tensor | None:
    """Reward ``[N]`` of each frame's glimpse: minus the fine pass's weighted loss that the glimpse informs (detached).

    The prediction term is ``prediction_loss_weight`` times the MSE of the *next* frame's fine prediction (frame
    t's token first reaches the prediction of frame t + 1; at a clip's last frame the next row belongs to another
    clip, independent of the glimpse: noise, no bias). The caption term is ``caption_loss_weight`` times the fine
    caption loss of the frame's own clip (``output.caption_loss_frames``). None when the forward computed neither.
    """
    terms = []
    if output.predictions_fine is not None and targets is not None:
        errors = (output.predictions_fine.float() - targets.float()).square().flatten(1).mean(1)  # (N,)
        terms.append(config.prediction_loss_weight * errors.roll(-1, 0))
    if output.caption_loss_frames is not None:
        terms.append(config.caption_loss_weight * output.caption_loss_frames.float())
    if not terms:
        return None
    return -torch.stack(terms).sum(0).detach()


def standardised_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """Rewards ``[N, k]`` as advantages of unit scale: minus the mean of the *other* rewards (a leave-one-out
    baseline, unbiased), over the batch's standard deviation (1 where they are all equal)."""
    count = rewards.numel()
    others = (rewards.sum() - rewards) / max(count - 1, 1)
    spread = rewards.std() if count > 1 else rewards.new_ones(())
    return (rewards - others) / spread.clamp_min(torch.finfo(rewards.dtype).eps)


def reinforce_loss(
    extras: dict[str, torch.Tensor], rewards: torch.Tensor, entropy_weight: float
) -> torch.Tensor:
    """Policy-gradient loss of sampled glimpses: ``-(z - baseline) * log pi(a)``, the baseline's MSE to ``z``, and
    ``-entropy_weight * entropy`` (means over the glimpses).

    ``z`` are the rewards standardised over the batch (:func:`standardised_rewards`), so the policy term has unit
    scale whatever the loss weights behind the reward (a raw loss-sized reward would dwarf every other gradient
    under clipping); the learned baseline predicts the rest of ``z`` from the plan.

    Args:
        extras: a glimpse reading's ``log_prob``, ``baseline`` and ``entropy``, each ``[N, k]``.
        rewards: ``[N]`` (one per frame, shared by its k glimpses) or ``[N, k]``.
    """
    log_prob = extras["log_prob"]
    if rewards.dim() == 1:
        rewards = rewards.unsqueeze(1).expand_as(log_prob)  # (N, k)
    scores = standardised_rewards(rewards.float().detach())
    baseline = extras["baseline"].float()
    advantage = (scores - baseline).detach()
    policy = -(advantage * log_prob).mean()
    return policy + (baseline - scores).square().mean() - entropy_weight * extras["entropy"].mean()


class AdaptiveFixationReader(FixationReader):
    """``frame_reader="adaptive_fixation"``: an adaptive glimpse budget per frame, static shapes.

    A plan holds ``M = max(glimpse_budget_levels)`` fixations (x, y, scale each) and one logit per level. The
    frame reads its first ``level`` fixations; the other slots hold the learned ``fovea_no_glimpse`` embedding and
    looked nowhere (their attention is all on the last entry). The level is a straight-through Gumbel-softmax
    sample while training (``glimpse_budget_temperature``), the argmax in eval; the reading's extras carry the
    glimpses of each frame (``glimpses [N, k]``, ``mean_glimpses``) and the auxiliary loss is ``glimpse_cost``
    times their mean. Every slot is read (static shapes): the budget is a cost, not yet a saving.
    """

    def __init__(self, config):
        super().__init__(config)
        self.fovea_no_glimpse = nn.Parameter(torch.empty(config.vision_config.hidden_size))

    def init_learned_parameters(self) -> None:
        init.zeros_(self.fovea_no_glimpse)

    @classmethod
    def fixations(cls, config) -> int:
        return max(config.reader_settings.glimpse_budget_levels)

    @classmethod
    def plan_width(cls, config) -> int:
        return FIXATION_WIDTH * cls.fixations(config) + len(config.reader_settings.glimpse_budget_levels)

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        levels = list(config.reader_settings.glimpse_budget_levels)
        config.reader_settings.check(
            config.frame_reader,
            {
                "glimpse_budget_levels": (
                    len(levels) >= 1 and min(levels) >= 1 and levels == sorted(set(levels)),
                    "non-empty, increasing, >= 1",
                ),
                "glimpse_budget_temperature": (
                    config.reader_settings.glimpse_budget_temperature > 0,
                    "positive",
                ),
                "glimpse_cost": (config.reader_settings.glimpse_cost >= 0, ">= 0"),
            },
        )

    def budget_choice(self, logits: torch.Tensor) -> torch.Tensor:
        """One-hot level choices ``[N, k, L]``: straight-through Gumbel-softmax while training, argmax in eval."""
        if self.training:
            return F.gumbel_softmax(logits.float(), tau=self.settings.glimpse_budget_temperature, hard=True)
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).float()

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        plans, one_plan = self.as_plans(inputs)  # (N, k, 3M + L)
        slots = self.fixations(self.config)
        windows = plans[..., : FIXATION_WIDTH * slots].unflatten(-1, (slots, FIXATION_WIDTH))  # (N, k, M, 3)
        centres, half = fixation_windows(windows, self.config)
        gate = _plan_gate(patch_bias, plans.shape[1])
        fovea, coverage = self.read_windows(centres, half, cache, encoder, gate)
        choice = self.budget_choice(plans[..., FIXATION_WIDTH * slots :])  # (N, k, L)
        # the levels stay Python numbers: no host-to-device copy, so the read can be captured in a CUDA graph
        levels = self.settings.glimpse_budget_levels
        slot_index = torch.arange(slots, device=choice.device)
        level_slots = torch.stack([slot_index < level for level in levels]).to(choice.dtype)  # (L, M)
        used = (choice @ level_slots).unsqueeze(-1).to(fovea.dtype)  # (N, k, M, 1): the chosen level's slots
        fovea = used * fovea + (1 - used) * self.fovea_no_glimpse.to(fovea.dtype)
        glimpses = sum(choice[..., index] * level for index, level in enumerate(levels))  # (N, k)
        extras = {
            "glimpses": glimpses,
            "mean_glimpses": glimpses.detach().mean(),
            "centres": centres,
            "half": half,
        }
        return self.reading(fovea, coverage * used, cache, gate, one_plan, extras)

    @property
    def auxiliary_loss_weight(self) -> float:
        return self.settings.reader_loss_weight

    def auxiliary_loss(self, extras, output, targets) -> torch.Tensor:
        """``glimpse_cost`` times the mean glimpses a frame read (straight-through to the level logits)."""
        return self.settings.glimpse_cost * extras["glimpses"].mean()


MultiFixationReaderConfig.reader = FixationReader
DualStreamReaderConfig.reader = DualStreamReader
GlimpseReaderConfig.reader = GlimpseReader
AdaptiveFixationReaderConfig.reader = AdaptiveFixationReader

STUDY_FIXATION_READERS: dict[str, tuple[type[FrameReader], type[ReaderConfig]]] = {
    "dual_stream": (DualStreamReader, DualStreamReaderConfig),
    "multi_fixation": (FixationReader, MultiFixationReaderConfig),
    "glimpse_rl": (GlimpseReader, GlimpseReaderConfig),
    "adaptive_fixation": (AdaptiveFixationReader, AdaptiveFixationReaderConfig),
}
