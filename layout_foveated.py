"""Where the frames and captions of a batch sit, as index tensors: a forward with no host synchronisation.

Finding the valid frames, the frame placeholders, the states that predict each frame and the supervised caption
positions is data-dependent indexing (``tensor[mask]``): on a GPU every such step waits for the device, which
keeps the CPU from running ahead and rules out capturing the training step in one CUDA graph. A
:class:`VideoLayout` holds those positions as flat index tensors, computed once on the CPU (by the processor with
``return_video_layout=True``, in the data loader's workers), so that the forward only runs ``index_select`` /
``index_copy`` of static shape. Without one, the model computes the same layout from its inputs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields, replace

import torch

IGNORE_INDEX = -100
COARSE, FINE = 0, 1
"""The two passes (streams) over a video: rows of the learned mode embeddings the sequence carries at
``<video_start>``. COARSE reads with the static query and plans; FINE reads with the planned queries."""


def caption_positions(labels: torch.Tensor, bucket: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """States whose next token is supervised by ``labels [B, L]``: flat indices ``[M]`` and next tokens ``[M]``.

    ``bucket > 1`` rounds ``M`` up to a multiple of it with position 0 and target ``-100`` (ignored by the
    cross-entropy, so the loss is unchanged): batches whose captions differ in length then share a shape, and a
    CUDA graph captured for one replays for the others.

    Raises:
        ValueError: if the labels supervise no token, or ``bucket`` is not a positive integer.
    """
    if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1:
        raise ValueError(f"caption bucket must be a positive integer, got {bucket!r}")
    next_tokens = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].flatten()
    supervised = (next_tokens != IGNORE_INDEX).nonzero().flatten()
    if supervised.numel() == 0:
        raise ValueError("labels supervise no token: every position is -100")
    padding = -supervised.numel() % bucket
    targets = torch.nn.functional.pad(next_tokens[supervised], (0, padding), value=IGNORE_INDEX)
    return torch.nn.functional.pad(supervised, (0, padding)), targets  # [M'], [M'] with M' % bucket == 0


NORMALISED_PIXEL_LIMIT = 5.0
"""Largest magnitude of a normalised pixel: (x - mean) / std for x in [0, 1] stays within +-2.7 for ImageNet's
statistics (DINOv3's) and within 5 for any std >= 0.2; raw 0-255 values go far beyond it."""


def check_video_channels(
    pixel_values: torch.Tensor, channels: int, name: str = "pixel_values_videos"
) -> None:
    """ValueError unless ``pixel_values [B, T, C, H, W]`` hold ``channels`` colour channels at dim 2 (a shape
    check: free, no synchronisation). Channels-last frames (``[B, T, H, W, C]``) get the permutation to use."""
    if pixel_values.dim() != 5 or pixel_values.shape[2] == channels:
        return
    hint = (
        f" (channels last? permute(0, 1, 4, 2, 3) gives [B, T, {channels}, H, W])"
        if pixel_values.shape[-1] == channels
        else ""
    )
    raise ValueError(
        f"{name} must be [B, T, {channels}, H, W] with {channels} colour channels, got shape "
        f"{tuple(pixel_values.shape)}{hint}: pass the videos through the processor (processor(text=..., videos=...))"
    )


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, name: str = "input_ids") -> None:
    """ValueError if ``input_ids`` hold a token id outside ``[0, vocab_size)`` (one host synchronisation: call it
    only where the inputs are read back anyway, never on a training step with a :class:`VideoLayout`)."""
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(
            f"{name} must be integer token ids, got dtype {input_ids.dtype}: build them with this model's processor "
            "(processor(text=..., videos=...)), or convert them with .long()"
        )
    if input_ids.numel() == 0:
        return
    low, high = torch.stack([input_ids.amin(), input_ids.amax()]).tolist()  # one synchronisation
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name} hold the token id {bad}, outside the model's vocabulary of {vocab_size} (ids 0-{vocab_size - 1}):"
            " build them with this model's processor (processor(text=..., videos=...)); labels' -100 belongs in "
            "labels, not in input_ids"
        )


class UnnormalisedPixelsWarning(UserWarning):
    """Pixels that look scaled to [0, 1] but not normalised (they cannot be told apart for sure)."""


def check_pixel_values(
    pixel_values: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
    values: bool = True,
    name: str = "pixel_values_videos",
) -> None:
    """ValueError unless ``pixel_values`` look like the processor's normalised float pixels.

    The dtype is checked always (free). With ``values`` the contents are checked too, at the price of one host
    synchronisation: NaN or inf, and magnitudes beyond :data:`NORMALISED_PIXEL_LIMIT` (raw 0-255 pixels) raise; values
    that all lie in [0, 1] (frames scaled but never normalised, or a rare all-mid-grey video) give an
    :class:`UnnormalisedPixelsWarning`. The model calls it with ``values`` only when it synchronises anyway (no
    ``video_layout``), so a training step with a layout gains no synchronisation. Padded frame slots (``frame_mask [B, T]`` False) are never read, so only
    the valid frames are checked.
    """
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(
            f"{name} must be a float tensor of normalised pixels, got {type(pixel_values).__name__}: "
            "pass the videos through the processor (processor(text=..., videos=...))"
        )
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"{name} must be float normalised pixels, got dtype {pixel_values.dtype}: raw frames go through the "
            "processor (processor(text=..., videos=frames)), which resizes and normalises them"
        )
    if not values:
        return
    if pixel_values.numel() == 0:
        return
    pixels = pixel_values.detach()
    if pixels.dim() > 2:  # per frame slot first: no copy of the pixels, and padded slots can be left out
        lows, highs = pixels.flatten(2).amin(-1), pixels.flatten(2).amax(-1)
        if frame_mask is not None and frame_mask.shape == pixels.shape[:2]:
            valid = frame_mask.to(lows.device).bool()
            lows, highs = lows.where(valid, 0.0), highs.where(valid, 0.0)  # padded slots read as 0
    else:
        lows, highs = pixels, pixels
    low, high = torch.stack([lows.amin(), highs.amax()]).float().tolist()  # one synchronisation
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(
            f"{name} hold NaN or inf values: check the frames (the processor refuses non-finite pixels)"
        )
    if 0 <= low and high <= 1:
        warnings.warn(
            f"{name} all lie in [0, 1]: normalised frames almost always hold negative values, so these look like "
            "frames scaled to [0, 1] but not normalised, which the model reads wrongly; pass the videos through "
            "the processor (processor(text=..., videos=...)). (A video of mid-grey only is normalised into [0, 1].)",
            UnnormalisedPixelsWarning,
            stacklevel=3,
        )
    if max(-low, high) > NORMALISED_PIXEL_LIMIT:
        raise ValueError(
            f"{name} range over [{low:g}, {high:g}], beyond the +-{NORMALISED_PIXEL_LIMIT:g} of normalised pixels: they "
            "look like raw pixel values; pass the videos through the processor (processor(text=..., videos=...)), "
            "which divides by 255 and normalises"
        )


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows ``[M, H]`` of ``hidden [B, L, H]`` at flat positions ``positions [M]``."""
    return hidden.flatten(0, 1).index_select(0, positions)


@dataclass
class VideoLayout:
    """Flat positions of a batch's frames and supervised tokens (``B`` videos, ``T`` frame slots, ``L`` tokens).

    Args:
        frame_index: ``[N]`` index into ``B * T`` of every valid frame, in (video, time) order.
        first_frame: ``[N]`` bool, True for the first valid frame of each video.
        slot_index: ``[N * k]`` index into ``B * L`` of every frame placeholder (``k`` tokens per frame), in order.
        predictor_index: ``[N]`` index into ``B * L`` of the LLM state that predicts each valid frame (the
            position just before the frame's first placeholder).
        caption_index: ``[M]`` index into ``B * L`` of the states whose next token is supervised (with labels).
        caption_targets: ``[M]`` those next tokens.
        padded: whether any row of the text is padded; False lets the LLM run purely causal attention.
    """

    frame_index: torch.Tensor
    first_frame: torch.Tensor
    slot_index: torch.Tensor
    predictor_index: torch.Tensor
    caption_index: torch.Tensor | None = None
    caption_targets: torch.Tensor | None = None
    padded: bool = True

    @classmethod
    def from_inputs(
        cls,
        input_ids: torch.Tensor,
        video_frame_mask: torch.Tensor,
        frame_token_id: int,
        tokens_per_frame: int,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        caption_bucket: int = 1,
    ) -> VideoLayout:
        """The layout of ``input_ids [B, L]`` with frames ``video_frame_mask [B, T]`` (and ``labels [B, L]``).

        Raises:
            ValueError: if a video's placeholders do not match its valid frames, or the labels supervise no token.
        """
        frame_mask = video_frame_mask.bool()
        slots = input_ids == frame_token_id
        tokens = slots.sum(1)
        expected = frame_mask.sum(1) * tokens_per_frame
        if not torch.equal(tokens.cpu(), expected.cpu()):
            raise ValueError(
                f"input_ids hold {tokens.tolist()} frame tokens per sample but the videos need "
                f"{expected.tolist()} ({tokens_per_frame} per valid frame)"
            )
        frame_starts = slots & ((slots.cumsum(1) - 1) % tokens_per_frame == 0)
        predictors = torch.zeros_like(frame_starts)
        predictors[:, :-1] = frame_starts[:, 1:]
        layout = cls(
            frame_index=frame_mask.flatten().nonzero().flatten(),
            first_frame=(frame_mask.cumsum(1) == 1)[frame_mask],
            slot_index=slots.flatten().nonzero().flatten(),
            predictor_index=predictors.flatten().nonzero().flatten(),
            padded=attention_mask is not None and not bool(attention_mask.bool().all()),
        )
        return layout if labels is None else layout.with_captions(labels, caption_bucket)

    def with_captions(self, labels: torch.Tensor, bucket: int = 1) -> VideoLayout:
        """This layout with the supervised positions of ``labels [B, L]`` (ValueError if they supervise none),
        their count rounded up to a multiple of ``bucket`` (see :func:`caption_positions`)."""
        caption_index, caption_targets = caption_positions(labels, bucket)
        return replace(self, caption_index=caption_index, caption_targets=caption_targets)

    def select_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """The valid frames ``[N, ...]`` of per-slot values ``frames [B, T, ...]`` (pixels, targets, boxes)."""
        return frames.flatten(0, 1).index_select(0, self.frame_index)

    def check(self, num_frame_slots: int, num_positions: int, tokens_per_frame: int) -> None:
        """Shape checks against a batch of ``num_frame_slots = B * T`` frames and ``B * L`` positions (no sync)."""
        frames = self.frame_index.numel()
        sizes = {
            "first_frame": (self.first_frame.numel(), frames),
            "predictor_index": (self.predictor_index.numel(), frames),
            "slot_index": (self.slot_index.numel(), frames * tokens_per_frame),
        }
        for name, (size, expected) in sizes.items():
            if size != expected:
                raise ValueError(f"video_layout.{name} has {size} entries, expected {expected}")
        if frames > num_frame_slots or self.slot_index.numel() > num_positions:
            raise ValueError(
                f"video_layout indexes {frames} frames and {self.slot_index.numel()} placeholders but the batch has "
                f"{num_frame_slots} frame slots and {num_positions} positions: was it built for another batch?"
            )
        if (self.caption_index is None) != (self.caption_targets is None):
            raise ValueError("video_layout needs both caption_index and caption_targets, or neither")

    def _map(self, function) -> VideoLayout:
        values = {
            field.name: function(value)
            if isinstance(value := getattr(self, field.name), torch.Tensor)
            else value
            for field in fields(self)
        }
        return VideoLayout(**values)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> VideoLayout:
        """The layout on ``device`` (what ``BatchFeature.to`` / accelerate call)."""
        return self._map(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> VideoLayout:
        """Page-locked copy (what ``DataLoader(pin_memory=True)`` calls)."""
        return self._map(torch.Tensor.pin_memory)


__all__ = [
    "COARSE",
    "FINE",
    "IGNORE_INDEX",
    "NORMALISED_PIXEL_LIMIT",
    "UnnormalisedPixelsWarning",
    "VideoLayout",
    "caption_positions",
    "check_pixel_values",
    "check_token_ids",
    "check_video_channels",
    "gather_positions",
]
