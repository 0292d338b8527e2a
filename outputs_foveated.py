"""What the foveated VLM returns: the readings of the two passes, the base model's states, the full output.

Shapes: B (batch), L (sequence length), N (valid frames), k (queries a frame), P (patches), R (registers),
D (encoder width), H (LLM width), Q (query width), V (vocabulary), C x h x w (a target).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from transformers.modeling_outputs import ModelOutput

try:
    from .layout_foveated import VideoLayout
except ImportError:  # imported as a top-level module from a checkout of the repository
    from layout_foveated import VideoLayout


@dataclass
class FoveatedReadings(ModelOutput):
    """How the two passes read the valid frames (fields first in both outputs of the model).

    Args:
        queries: ``[N, Q]`` (``[N, k, Q]``) queries that read each valid frame in the fine pass (``q_init`` for
            first frames).
        attention_fine / attention_coarse: ``[N, P]`` the query's attention over the patches (mean over heads and
            over the k queries) as part of its full distribution: it sums to 1 minus the prefix mass.
        attention_prefix_fine / attention_prefix_coarse: ``[N, 1 + R + 1]`` the rest of that distribution, on CLS,
            the R registers and the query's own key.
        visual_tokens_fine / visual_tokens_coarse: ``[N, D]`` (``[N, k, D]``) encoder outputs of the queries.
        reader_extras: what the fine pass's frame reader returned for its auxiliary loss (``FrameReading.extras``;
            None when it returned nothing).
    """

    queries: torch.Tensor | None = None
    attention_fine: torch.Tensor | None = None
    attention_coarse: torch.Tensor | None = None
    attention_prefix_fine: torch.Tensor | None = None
    attention_prefix_coarse: torch.Tensor | None = None
    visual_tokens_fine: torch.Tensor | None = None
    visual_tokens_coarse: torch.Tensor | None = None
    reader_extras: dict[str, torch.Tensor] | None = None


READING_FIELDS = tuple(field.name for field in fields(FoveatedReadings))
"""The names of the readings (what the conditional-generation output copies from the base model's)."""


@dataclass
class FoveatedVLMModelOutput(FoveatedReadings):
    """Output of :meth:`FoveatedVLMModel.forward`: the readings (:class:`FoveatedReadings`) and the LLM's states.

    Args:
        last_hidden_state: ``[B, L, H]`` LLM states of the pass that feeds the cache (fine; coarse in coarse
            inference; the only pass in dense mode and without video).
        cache: the LLM cache of that pass.
        hidden_fine: ``[B, L, H]`` states of the fine pass (the dense pass in dense mode; None in coarse inference).
        hidden_coarse: ``[B, L, H]`` states of the coarse pass (None in dense mode).
        video_layout: where the batch's frames and supervised tokens sit (None without video).
    """

    last_hidden_state: torch.Tensor | None = None
    cache: object | None = None
    hidden_fine: torch.Tensor | None = None
    hidden_coarse: torch.Tensor | None = None
    video_layout: VideoLayout | None = None


@dataclass
class FoveatedVLMOutput(FoveatedReadings):
    """Output of :meth:`FoveatedVLMForConditionalGeneration.forward`: the readings (``FoveatedReadings``:
    ``queries``, ``attention_fine`` / ``_coarse``, ``attention_prefix_fine`` / ``_coarse``, ``visual_tokens_fine`` /
    ``_coarse``), then the predictions, logits and losses.

    Args:
        loss: weighted total of the terms below (present when targets or labels are given).
        loss_fine: next-frame prediction MSE of the fine (dynamic-query) pass.
        loss_coarse: next-frame prediction MSE of the coarse (static-query) pass.
        loss_caption: caption cross-entropy of the fine pass (tokens after ``<video_end>``).
        loss_caption_coarse: caption cross-entropy of the coarse pass.
        logits: ``[B, L', V]`` next-token logits of the pass that feeds the cache (``L'`` per ``logits_to_keep``).
        cache: the LLM cache (fine stream, or coarse stream in coarse inference).
        predictions_fine / predictions_coarse: ``[N, C, h, w]`` predicted next-frame targets of the valid frames.
        loss_attention: ``-log`` mass of the fine attention in the box of the object the text is about.
        loss_reader: the frame reader's own auxiliary term (``FrameReader.auxiliary_loss``), when it has one.
        caption_loss_frames: ``[N]`` the fine pass's caption cross-entropy of each valid frame's clip (the mean over
            that clip's supervised tokens, 0 for a clip without any; no gradient): only with labels, for a reader
            that asks for it (``FrameReader.needs_frame_caption_losses``, e.g. a per-clip reward).
    """

    loss: torch.Tensor | None = None
    loss_fine: torch.Tensor | None = None
    loss_coarse: torch.Tensor | None = None
    loss_caption: torch.Tensor | None = None
    loss_caption_coarse: torch.Tensor | None = None
    loss_attention: torch.Tensor | None = None
    loss_reader: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: object | None = None
    predictions_fine: torch.Tensor | None = None
    predictions_coarse: torch.Tensor | None = None
    caption_loss_frames: torch.Tensor | None = None


__all__ = ["READING_FIELDS", "FoveatedReadings", "FoveatedVLMModelOutput", "FoveatedVLMOutput"]
