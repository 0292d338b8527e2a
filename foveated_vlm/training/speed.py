"""Speed levers of the training step: regional ``torch.compile`` and one CUDA graph per optimizer step.

These are levers, not a timer: ``python -m eval.benchmark`` (the one timing harness) measured them on one H100
(``docs/performance.md``). The eager step of this model is bound by the CPU launching ~10k small kernels; these
two levers take the CPU off the critical path:

* :func:`compile_regions` compiles the blocks that repeat (encoder patch layer, encoder query layer, LLM decoder
  layers, prediction heads): identical layers share one graph, so compile time does not grow with depth.
* :class:`GraphedTrainStep` records forward, backward, gradient clipping and the optimizer update in one CUDA
  graph per batch shape and replays it. It needs a forward without host synchronisation (batches carrying a
  ``video_layout``), an optimizer built with ``capturable=True`` and learning rates held in tensors.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from acceleration_foveated import GRAPH_WARMUP_RUNS, capture_graph, run_on_side_stream

logger = logging.getLogger(__name__)

MAX_GRAPHS = 8  # batch shapes kept as graphs; further shapes run eagerly (with a warning)


def compile_regions(model: nn.Module, mode: str = "default") -> Callable[[], None]:
    """Regional ``torch.compile`` (static shapes) of the repeated blocks; returns a function that undoes it.

    The encoder's patch layer and query layer (the same code for all layers, the layer passed in), every
    LLM decoder layer and the prediction heads (training has no KV cache, so the decoder layers share one graph;
    the streaming fast path compiles its cached decoder as a whole instead, ``FoveatedStream(torch_compile=True)``).
    ``mode="reduce-overhead"`` also replays each compiled region as a CUDA graph (cudagraph trees); leave it at
    ``"default"`` under :class:`GraphedTrainStep`, which graphs the whole step. The model declares the regions
    (``FoveatedVLMForConditionalGeneration.regional_compile``); a PEFT wrapper is looked through.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    regions = base.regional_compile(mode)
    regions.install()
    return regions.remove


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor of a batch (dict, tensor, dataclass such as ``VideoLayout``, list), in a fixed order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [tensor for name in sorted(value) for tensor in _tensors(value[name])]
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _tensors(item)]
    if dataclasses.is_dataclass(value):
        return [
            tensor for field in dataclasses.fields(value) for tensor in _tensors(getattr(value, field.name))
        ]
    return []


def batch_signature(batch: dict[str, Any]) -> tuple:
    """What decides a captured graph: names, tensor shapes, dtypes and devices, and every non-tensor value."""

    def describe(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return (tuple(value.shape), value.dtype)
        if dataclasses.is_dataclass(value):
            return tuple(
                (field.name, describe(getattr(value, field.name))) for field in dataclasses.fields(value)
            )
        return value

    return tuple((name, describe(value)) for name, value in sorted(batch.items()))


def clone_to(value: Any, device: torch.device) -> Any:
    """A copy on ``device`` of a batch or batch value (tensors copied, dataclasses and dicts rebuilt)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, copy=True)
    if isinstance(value, Mapping):
        return {name: clone_to(item, device) for name, item in value.items()}
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(
            value,
            **{
                field.name: clone_to(getattr(value, field.name), device)
                for field in dataclasses.fields(value)
            },
        )
    return value


class GraphedTrainStep:
    """Run ``step(batch)`` (one whole optimizer step) as a replayed CUDA graph, one graph per batch shape.

    A new batch shape first runs ``warmup_steps`` real steps eagerly on a side stream (the recipe of
    ``torch.cuda.graphs``), then the next step of that shape is captured and replayed; later batches of the shape
    are copied into the graph's input buffers and replayed. Every call is one real training step.

    ``step`` must zero the gradients in place first (``optimizer.zero_grad(set_to_none=False)``) so that they
    live in fixed buffers, must not synchronise with the host, and returns a tensor of detached figures (copied
    out after each replay).

    Args:
        step: ``batch -> Tensor``, forward + backward + clip + optimizer step.
        device: the CUDA device.
        warmup_steps: eager steps per batch shape before its capture (side stream: cuBLAS workspaces, compile).
        max_graphs: shapes kept as graphs; later new shapes run eagerly.
    """

    def __init__(
        self,
        step: Callable[[dict[str, Any]], torch.Tensor],
        device: torch.device,
        warmup_steps: int = GRAPH_WARMUP_RUNS,
        max_graphs: int = MAX_GRAPHS,
    ):
        if torch.device(device).type != "cuda":
            raise ValueError(f"GraphedTrainStep needs a CUDA device, got {device}")
        self.step = step
        self.device = torch.device(device)
        self.warmup_steps = warmup_steps
        self.max_graphs = max_graphs
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, Any], torch.Tensor]] = {}
        self.warmups: dict[tuple, int] = {}
        self.uncaptured: set[tuple] = set()
        self.side_stream = torch.cuda.Stream(self.device)  # every eager step runs on it

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        key = batch_signature(batch)
        if key in self.graphs:
            graph, inputs, output = self.graphs[key]
            for static, new in zip(_tensors(inputs), _tensors(batch)):
                static.copy_(new, non_blocking=True)
            graph.replay()
            return output.clone()
        if self.warmups.get(key, 0) < self.warmup_steps or len(self.graphs) >= self.max_graphs:
            if len(self.graphs) >= self.max_graphs and key not in self.uncaptured:
                self.uncaptured.add(key)  # warned once per shape, not at every step
                logger.warning("more than %d batch shapes: shape %s runs eagerly", self.max_graphs, key)
            self.warmups[key] = self.warmups.get(key, 0) + 1
            return self._eager(batch)
        return self._capture(key, batch)

    def _eager(self, batch: dict[str, Any]) -> torch.Tensor:
        return run_on_side_stream(
            lambda: self.step(clone_to(batch, self.device)), self.device, stream=self.side_stream
        )

    def _capture(self, key: tuple, batch: dict[str, Any]) -> torch.Tensor:
        """Capture one step of this shape (its warm-up steps ran as real steps before) and replay it once."""
        inputs = clone_to(batch, self.device)
        outputs: list[torch.Tensor] = []
        graph = capture_graph(
            lambda: outputs.append(self.step(inputs)), self.device, self.pool, warmup_runs=0
        )
        self.graphs[key] = (graph, inputs, outputs[0])
        graph.replay()
        return outputs[0].clone()


__all__ = [
    "MAX_GRAPHS",
    "GraphedTrainStep",
    "batch_signature",
    "clone_to",
    "compile_regions",
]
