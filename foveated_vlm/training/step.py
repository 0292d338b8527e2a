"""The one training step: forward, backward, gradient clipping and the optimizer update.

The trainer runs it (``foveated_vlm.training.trainer``) and the speed benchmark times it (``eval.benchmark``), so
the benchmark's frames/s are those of the step the trainer runs. It goes through an Accelerate ``Accelerator``
(``backward``, ``clip_grad_norm_``, ``no_sync``); autocast is the prepared model's (``mixed_precision``).

Eagerly, one call runs ``grad_accum`` micro-batches (gradients synchronised across processes on the last one
only) and one update, then frees the gradients. With ``cuda_graph`` the whole step (gradients zeroed in place,
forward, backward, clip, update) is one :class:`~foveated_vlm.training.speed.GraphedTrainStep` replay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .speed import GraphedTrainStep

LOSS_KEYS = ("loss", "loss_fine", "loss_coarse", "loss_caption", "loss_attention")
"""The loss terms a step returns, in this order."""


def step_losses(output) -> torch.Tensor:
    """``[len(LOSS_KEYS)]`` detached losses of one micro-batch (NaN for a term the model did not compute)."""
    values = [getattr(output, key) for key in LOSS_KEYS]
    reference = output.loss
    return torch.stack(
        [
            value.detach().float()
            if value is not None
            else torch.full((), float("nan"), device=reference.device)
            for value in values
        ]
    )


class TrainStep:
    """One optimizer step of ``model``: ``step(batches, losses)`` adds each micro-batch's losses to ``losses``.

    ``batches`` is an iterator of batches (``BatchFeature``, moved to ``device`` here); a call takes
    ``grad_accum`` of them (one under ``cuda_graph``). ``losses`` is a ``[len(LOSS_KEYS)]`` float tensor on the
    device (a running sum). Nothing in a step reads a value back to the host.

    Args:
        model: the (Accelerate-prepared) model; ``model(**batch, logits_to_keep=...)`` returns the losses.
        optimizer: its optimizer (capturable, with tensor learning rates, under ``cuda_graph``:
            :func:`~foveated_vlm.training.modeling.build_optimizer` builds it so).
        accelerator: the ``Accelerator`` the model and optimizer were prepared by.
        device: where batches go (the CUDA device of the graph under ``cuda_graph``).
        clip_grad: max gradient norm; 0 leaves the gradients unclipped.
        grad_accum: micro-batches per optimizer step (1 under ``cuda_graph``).
        logits_to_keep: LM-head positions kept (1: the losses never need more; 0: every position).
        cuda_graph: replay the whole step as one CUDA graph per batch shape.
        region_graphs: the model's compiled regions replay CUDA graphs of their own (``torch.compile``
            ``mode="reduce-overhead"``): each micro-batch then marks a new cudagraph-trees step.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        accelerator: Any,
        device: torch.device,
        clip_grad: float,
        grad_accum: int = 1,
        logits_to_keep: int = 1,
        cuda_graph: bool = False,
        region_graphs: bool = False,
    ):
        if grad_accum < 1:
            raise ValueError(f"grad_accum must be a positive int, got {grad_accum!r}")
        if cuda_graph and grad_accum != 1:
            raise ValueError(f"a CUDA-graphed step holds one micro-batch, got grad_accum={grad_accum}")
        self.model = model
        self.optimizer = optimizer
        self.accelerator = accelerator
        self.device = torch.device(device)
        self.clip_grad = clip_grad
        self.grad_accum = grad_accum
        self.logits_to_keep = logits_to_keep
        self.region_graphs = region_graphs
        self.graphed = GraphedTrainStep(self._captured, self.device) if cuda_graph else None

    def __call__(self, batches: Iterator[Any], losses: torch.Tensor) -> None:
        if self.graphed is not None:
            losses += self.graphed(next(batches))
            return
        for micro in range(self.grad_accum):
            batch = next(batches).to(self.device)
            last_micro = micro == self.grad_accum - 1
            with self.accelerator.no_sync(self.model) if not last_micro else contextlib.nullcontext():
                losses += self._forward_backward(batch, 1.0 / self.grad_accum)
        self._update()
        self.optimizer.zero_grad(set_to_none=True)

    def _forward_backward(self, batch, loss_scale: float) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its detached losses ``[len(LOSS_KEYS)]``."""
        if self.region_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        output = self.model(**batch, logits_to_keep=self.logits_to_keep)
        self.accelerator.backward(output.loss * loss_scale)
        return step_losses(output)

    def _update(self) -> None:
        if self.clip_grad:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.optimizer.step()

    def _captured(self, batch) -> torch.Tensor:
        """The whole step as :class:`GraphedTrainStep` records it: gradients zeroed in place, so they stay put."""
        self.optimizer.zero_grad(set_to_none=False)
        losses = self._forward_backward(batch, 1.0)
        self._update()
        return losses


__all__ = ["LOSS_KEYS", "TrainStep", "step_losses"]
