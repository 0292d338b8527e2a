"""The prediction head and the loss terms of the foveated VLM.

:class:`FiLMPredictionHead` predicts the next frame's target from an LLM state; the functions below are the loss
terms that ``FoveatedVLMForConditionalGeneration`` weights and adds (prediction MSE is ``F.mse_loss``).
Shapes: N (valid frames), M (supervised caption positions), P (patches), H (LLM width), C x h x w (a target).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

try:
    from .configuration_foveated import FoveatedVLMConfig
    from .layout_foveated import gather_positions
except ImportError:  # imported as a top-level module from a checkout of the repository
    from configuration_foveated import FoveatedVLMConfig
    from layout_foveated import gather_positions


class FiLMPredictionHead(nn.Module):
    """Predicts the next frame's target from an LLM state and the previous target (FiLM conditioning).

    The previous target ``[N, C, h, w]`` is encoded by convolutions, scaled and shifted channel-wise by values
    computed from the LLM state ``[N, H]``, and decoded back to a full (non-residual) target ``[N, C, h, w]``.
    """

    def __init__(self, config: FoveatedVLMConfig):
        super().__init__()
        channels = [config.target_channels, *config.film_channels]
        width = channels[-1]
        self.film = nn.Sequential(
            nn.Linear(config.text_config.hidden_size, config.film_hidden_dim),
            nn.GELU(),
            nn.Linear(config.film_hidden_dim, 2 * width),
        )
        self.target_encoder = self._conv_stack(channels)
        self.target_decoder = self._conv_stack(channels[::-1])

    @staticmethod
    def _conv_stack(channels: list[int]) -> nn.Sequential:
        modules: list[nn.Module] = []
        for index, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            modules.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
            if index < len(channels) - 2:
                modules.append(nn.GELU())
        return nn.Sequential(*modules)

    def forward(self, hidden: torch.Tensor, previous_target: torch.Tensor) -> torch.Tensor:
        """``hidden [N, H]``, ``previous_target [N, C, h, w]`` -> ``[N, C, h, w]``.

        The convolutions run channels-last (the layout cuDNN's bf16 kernels use: no layout conversion of the
        wide intermediate features); the prediction comes back contiguous.
        """
        previous = previous_target.to(hidden.dtype, memory_format=torch.channels_last)
        features = self.target_encoder(previous)
        scale, shift = self.film(hidden).chunk(2, dim=-1)
        features = features * scale[..., None, None] + shift[..., None, None]
        return self.target_decoder(features).contiguous()


def attention_box_loss(patch_attention: torch.Tensor, box_coverage: torch.Tensor) -> torch.Tensor:
    """``-log`` attention mass inside a box, mean over the frames where the box is in view.

    ``patch_attention [N, P]`` is the patch part of the full distribution (mass on CLS, registers or the query's
    own key counts as outside); ``box_coverage [N, P]`` is the fraction of each patch the box covers.
    """
    coverage = box_coverage.to(patch_attention.dtype)
    mass = (patch_attention.float() * coverage.float()).sum(-1)
    in_view = (coverage.sum(-1) > 0).float()
    nll = -mass.clamp_min(torch.finfo(torch.float32).tiny).log()
    return (nll * in_view).sum() / in_view.sum().clamp_min(1.0)


def caption_loss(
    lm_head: nn.Module, hidden: torch.Tensor, caption_index: torch.Tensor, caption_targets: torch.Tensor
) -> torch.Tensor:
    """Next-token cross-entropy on the supervised positions ``[M]`` of ``hidden [B, L, H]`` (LM head on those)."""
    logits = lm_head(gather_positions(hidden, caption_index)).float()  # (M, V)
    return F.cross_entropy(logits, caption_targets)


def clip_caption_losses(
    lm_head: nn.Module, hidden: torch.Tensor, caption_index: torch.Tensor, caption_targets: torch.Tensor
) -> torch.Tensor:
    """Each sequence's own caption cross-entropy ``[B]``: the mean over its supervised positions (those of the
    flat ``caption_index [M]`` into ``hidden [B, L, H]`` that fall in its row); 0 for a sequence without any."""
    batch, length = hidden.shape[:2]
    logits = lm_head(gather_positions(hidden, caption_index)).float()  # (M, V)
    token_losses = F.cross_entropy(logits, caption_targets, reduction="none")  # (M,)
    rows = caption_index.div(length, rounding_mode="floor")  # (M,): the sequence of each position
    totals = token_losses.new_zeros(batch).index_add(0, rows, token_losses)  # (B,)
    counts = token_losses.new_zeros(batch).index_add(0, rows, torch.ones_like(token_losses))  # (B,)
    return totals / counts.clamp_min(1.0)


def reading_losses(
    config: FoveatedVLMConfig,
    readings,
    boxes: torch.Tensor | None = None,
    reader_box_loss: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
) -> dict[str, tuple[float, torch.Tensor]]:
    """The terms on the readings whose weights are non-zero: ``name -> (weight, unweighted loss)``.

    ``readings`` has the fields of ``outputs_foveated.FoveatedReadings``. ``loss_attention``:
    :func:`attention_box_loss` of the fine reading against ``boxes [N, P]`` (the box of the object the text is
    about), or the reader's own ``reader_box_loss(boxes)`` where it returns one (``FrameReader.box_loss``).
    """
    losses = {}
    if boxes is not None and readings.attention_fine is not None and config.attention_supervision_weight:
        own = None if reader_box_loss is None else reader_box_loss(boxes)
        mass = attention_box_loss(readings.attention_fine, boxes) if own is None else own
        losses["loss_attention"] = (config.attention_supervision_weight, mass)
    return losses


__all__ = [
    "FiLMPredictionHead",
    "attention_box_loss",
    "caption_loss",
    "clip_caption_losses",
    "reading_losses",
]
