"""The frame-reader contract: how a frame's cached patch pass and the LLM's plan become the frame's visual tokens.

A reader is the part of the model between the encoder's patch pass (:class:`PatchCache`, computed once per frame)
and the LLM: it reads a frame with a *plan* (what the LLM's plan head ``fovea_query_head`` predicts per token; the
static plan of pass 1 and the initial plan of frame 1 are learned parameters of the same width) and returns the
frame's visual tokens and where it looked. Every reader is a config choice (``config.frame_reader``); everything
else (processor, LLM, two-pass planning, losses, generate, streaming, Hub loading) is shared.

A reader's knobs are its config (``reader_config_foveated``: a :class:`ReaderConfig` subclass per reader, which
also gives the plan width and the tokens of one plan); its module reads them as ``self.settings``. The module
declares (class attributes of :class:`FrameReader`):

* ``plan_is_query``: the model maps query plans to encoder width (``fovea_query_input_projection``) before ``read``;
* ``needs_pixels``: ``encode_frames`` then keeps the frames in ``PatchCache.pixels``;
* ``fuses_plans``: stacking plans ``[N, k, W]`` reads them as k independent reads (the streaming fast path then
  reads the static and the planned plan of a frame in one call);
* ``needs_frame_caption_losses``: with labels, the model puts each frame's clip's fine caption loss in
  ``output.caption_loss_frames [N]`` before calling ``auxiliary_loss`` (a per-clip reward, e.g. REINFORCE);

and implements ``read(inputs, cache, encoder, patch_bias) -> FrameReading(visual, attention)``. Attention is a full
distribution over ``[CLS, registers, patches, own key]`` (``S + 1`` entries, sums to 1): for readers that do not
attend it is where the reader looked (its sampling weights on the patch grid; the prefix 0; mass that fell outside
the frame on the last, "own key", entry: ``self.full_distribution``), so ``split_attention``, ``glimpse_location``, the attention metrics, the
attention supervision loss and the probes work for every reader unchanged. A reader may add an auxiliary loss term
(``auxiliary_loss``, weighted by its ``auxiliary_loss_weight``) from the extras its fine-pass reading carries, and
may replace the attention supervision by its own (``box_loss``: fixation readers, whose coverage has no gradient
while a window misses the box).

Shapes: N frames, k plans a frame, m = k * tokens_per_plan tokens a frame, S encoder tokens (CLS + R registers +
P patches), D encoder width, W plan width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput


@dataclass
class PatchCache(ModelOutput):
    """Per-layer patch keys/values of a batch of frames, computed once by the patch pass.

    Args:
        keys: one ``[N, heads, S, D/heads]`` tensor per encoder layer (RoPE already applied to the patches).
        values: one ``[N, heads, S, D/heads]`` tensor per encoder layer.
        patch_states: ``[N, S, D]`` final (normed) encoder states of CLS, registers and patches.
        pixels: ``[N, 3, H, W]`` the frames themselves, kept only for readers that read pixels (``needs_pixels``).
    """

    keys: list[torch.Tensor] | None = None
    values: list[torch.Tensor] | None = None
    patch_states: torch.Tensor | None = None
    pixels: torch.Tensor | None = None


class FrameReading(tuple):
    """``(visual, attention)`` of one read, unpacked as a pair; ``extras`` holds what a reader's auxiliary loss needs.

    ``visual`` is ``[N, D]`` (one plan a frame, one token a plan) or ``[N, m, D]``; ``attention`` is ``[N, S+1]``
    or ``[N, m, S+1]``, a full distribution per token.
    """

    extras: dict[str, torch.Tensor]

    def __new__(cls, visual: torch.Tensor, attention: torch.Tensor, extras: dict | None = None):
        reading = super().__new__(cls, (visual, attention))
        reading.extras = dict(extras or {})
        return reading


class FrameReader(nn.Module):
    """Base of every frame reader (see the module docstring for the contract); the defaults are a query reader's."""

    plan_is_query: ClassVar[bool] = True
    needs_pixels: ClassVar[bool] = False
    fuses_plans: ClassVar[bool] = True
    needs_frame_caption_losses: ClassVar[bool] = False

    def __init__(self, config):
        super().__init__()
        self.num_prefix_tokens = 1 + config.vision_config.num_register_tokens
        self.settings = config.reader_settings

    @property
    def auxiliary_loss_weight(self) -> float:
        """Weight of :meth:`auxiliary_loss` in the model's total loss (1 unless the reader's config sets one)."""
        return 1.0

    def init_learned_parameters(self) -> None:
        """Initialise the reader's own ``nn.Parameter`` s (its Linear layers are initialised by the model)."""

    # ------------------------------------------------------------------------------ helpers of the readers
    @staticmethod
    def as_plans(inputs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Plans ``[N, W]`` or ``[N, k, W]`` -> ``([N, k, W], whether there was one plan a frame)``."""
        one_plan = inputs.dim() == 2
        return (inputs.unsqueeze(1) if one_plan else inputs), one_plan

    @staticmethod
    def as_reading(
        visual: torch.Tensor, attention: torch.Tensor, one_token: bool, extras=None
    ) -> FrameReading:
        """Tokens ``[N, m, D]`` and attention ``[N, m, S+1]`` as a reading (``[N, D]``, ``[N, S+1]`` if one token)."""
        if one_token:
            return FrameReading(visual.squeeze(1), attention.squeeze(1), extras)
        return FrameReading(visual, attention, extras)

    @staticmethod
    def patch_gate(patch_bias: torch.Tensor | None) -> torch.Tensor | None:
        """A probe's additive patch bias as a multiplicative gate in [0, 1]: ``exp(min(bias, 0))`` (0 keeps a
        patch, ``-inf`` removes it); None stays None."""
        return None if patch_bias is None else patch_bias.float().clamp_max(0.0).exp()

    @staticmethod
    def patch_map(states: torch.Tensor) -> torch.Tensor:
        """Patch states ``[N, P, D]`` as a square map ``[N, D, g, g]``."""
        n, p, d = states.shape
        side = round(p**0.5)
        return states.transpose(1, 2).reshape(n, d, side, side)  # (N, D, g, g)

    def patch_states(self, cache: PatchCache) -> torch.Tensor:
        """The final patch states ``[N, P, D]`` of a cache (CLS and registers dropped)."""
        return cache.patch_states[:, self.num_prefix_tokens :]

    def full_distribution(self, patch_weights: torch.Tensor) -> torch.Tensor:
        """Where a reader looked, ``[..., P]`` weights summing to at most 1, as a full distribution ``[..., S+1]``:
        zeros on CLS and registers, the weights on the patches, the rest (mass that fell outside the frame or was
        gated off) on the last entry."""
        weights = patch_weights.float()
        prefix = weights.new_zeros(*weights.shape[:-1], self.num_prefix_tokens)
        rest = (1.0 - weights.sum(-1, keepdim=True)).clamp_min(0.0)
        return torch.cat([prefix, weights, rest], -1)

    # ------------------------------------------------------------------------------ the contract
    def read(
        self,
        inputs: torch.Tensor,
        cache: PatchCache,
        encoder: nn.Module,
        patch_bias: torch.Tensor | None = None,
    ) -> FrameReading:
        """Read N cached frames.

        Args:
            inputs: ``[N, W']`` or ``[N, k, W']`` plans (query plans already projected to encoder width D).
            cache: the frames' patch pass.
            encoder: the model's ``FoveatedEncoder`` (its ``query`` pass, ``layers`` and ``vision_model``).
            patch_bias: ``[N, P]`` (or ``[N, k, P]``) added to the patch scores; ``-inf`` outside a region confines
                the reading to it (test-time probes). Readers that do not score patches gate the patches by
                ``self.patch_gate(patch_bias)``.
        """
        raise NotImplementedError

    def box_loss(self, extras: dict[str, torch.Tensor], boxes: torch.Tensor) -> torch.Tensor | None:
        """The reader's own attention-supervision loss from its fine-pass reading's ``extras`` and the box coverage
        ``boxes [N, P]`` of the object the text is about, replacing ``-log`` mass in the box of its attention
        (``heads_foveated.attention_box_loss``); None: that default."""
        return None

    def auxiliary_loss(self, extras: dict[str, torch.Tensor], output, targets) -> torch.Tensor | None:
        """The reader's own loss term from its fine-pass reading's ``extras`` and the forward's ``output`` (whose
        other loss terms are computed; ``targets [N, C, h, w]`` or None); None: no term (the default)."""
        return None


class QueryReader(FrameReader):
    """Today's reader (``frame_reader="query"``): the query token goes through every encoder layer against the
    frame's cached patch K/V (``FoveatedEncoder.query``); its output is the visual token, its attention the map."""

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        return FrameReading(*encoder.query(inputs, cache, patch_bias))


EMPTY_MAP_MASS = 1e-6
"""Patch mass under which ``glimpse_location`` treats a map as empty (it looked nowhere)."""


def glimpse_location(patch_attention: torch.Tensor) -> torch.Tensor:
    """Where attention over a square patch grid looked: ``[..., P]`` -> ``[..., 4]`` (mean x, mean y, std x, std y).

    Coordinates run from -1 (left, top) to 1 (right, bottom); the map is renormalised over the patches first. A map
    with less than ``EMPTY_MAP_MASS`` on the patches (a slot that looked nowhere, e.g. an unused glimpse of
    ``adaptive_fixation``) reads as the centre with no spread, and passes no gradient (dividing by its tiny mass
    would scale the gradient by its inverse).
    """
    side = round(patch_attention.shape[-1] ** 0.5)
    mass = patch_attention.float().sum(-1, keepdim=True)
    looked = mass > EMPTY_MAP_MASS
    weights = torch.where(looked, patch_attention.float() / torch.where(looked, mass, 1.0), 0.0)
    weights = weights.unflatten(-1, (side, side))  # (..., rows, cols)
    axis = torch.linspace(-1.0, 1.0, side, device=weights.device)
    marginal_x, marginal_y = weights.sum(-2), weights.sum(-1)  # (..., cols), (..., rows)
    mean_x, mean_y = (marginal_x * axis).sum(-1), (marginal_y * axis).sum(-1)
    var_x = (marginal_x * axis.square()).sum(-1) - mean_x.square()
    var_y = (marginal_y * axis.square()).sum(-1) - mean_y.square()
    spread = torch.stack([var_x, var_y], -1).clamp_min(0.0).add(1e-6).sqrt()
    return torch.cat([torch.stack([mean_x, mean_y], -1), spread], -1)


def patch_coordinates(side: int, device: torch.device) -> torch.Tensor:
    """Centres ``[P, 2]`` (x, y) of a ``side x side`` patch grid in row-major order, from -1 to 1 (as
    :func:`glimpse_location` and ``grid_sample(align_corners=True)`` count)."""
    axis = torch.linspace(-1.0, 1.0, side, device=device)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([cols, rows], -1).reshape(side * side, 2)  # (P, 2)


__all__ = [
    "FrameReader",
    "FrameReading",
    "PatchCache",
    "QueryReader",
    "glimpse_location",
    "patch_coordinates",
]
