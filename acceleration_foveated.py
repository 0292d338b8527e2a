"""The project's one CUDA-graph recipe and one regional ``torch.compile`` recipe.

CUDA graphs (PyTorch's recipe, ``torch.cuda.graphs``): warm the function up eagerly on a side stream (cuBLAS
workspaces, compiled kernels and lazily allocated state come into being there), synchronise, capture one call into
a graph (recorded, not executed), then replay it. :func:`capture_graph` is that recipe; :class:`GraphedRun` is a
function over fixed buffers captured at its first call, with the warm-up runs rewound so that every call is one
real run (the streaming fast path); ``foveated_vlm.training.speed.GraphedTrainStep`` graphs whole training steps
with it.

Regional compile: the parts of the model declare which of their blocks repeat (``FoveatedEncoder.compile_regions``,
``FoveatedVLMForConditionalGeneration.regional_compile``); :class:`CompiledRegions` compiles each once with static
shapes (dynamic frame counts would recompile constantly) and installs them while active. Identical layers share
one compiled graph, so compile time does not grow with depth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

GRAPH_WARMUP_RUNS = 3  # eager runs on a side stream before a CUDA graph capture (PyTorch's recipe)


def run_on_side_stream(
    fn: Callable[[], Any],
    device: torch.device,
    runs: int = 1,
    after_each: Callable[[], None] | None = None,
    stream: torch.cuda.Stream | None = None,
) -> Any:
    """Run ``fn`` ``runs`` times on a side stream ordered after, and joined back into, the current stream.

    ``after_each`` runs after every call (e.g. to rewind state the call advanced); ``stream`` is the side stream to
    use (default: a new one). Returns the last call's result.
    """
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device) if stream is None else stream
    side.wait_stream(current)
    result = None
    with torch.cuda.stream(side):
        for _ in range(runs):
            result = fn()
            if after_each is not None:
                after_each()
    current.wait_stream(side)
    return result


def capture_graph(
    fn: Callable[[], Any],
    device: torch.device,
    pool=None,
    warmup_runs: int = GRAPH_WARMUP_RUNS,
    after_warmup_run: Callable[[], None] | None = None,
) -> torch.cuda.CUDAGraph:
    """Warm ``fn`` up ``warmup_runs`` times on a side stream, then capture one call of it in a CUDA graph.

    The captured call is recorded, not executed: run it with ``graph.replay()``. Tensors ``fn`` allocates while
    captured stay allocated (in ``pool``, a ``torch.cuda.graph_pool_handle()`` that graphs may share) for the
    replays. ``after_warmup_run`` runs after every warm-up call (rewinding what it advanced).

    Example:
        >>> graph = capture_graph(lambda: model.read_frames(queries, cache), torch.device("cuda"))
        >>> graph.replay()
    """
    if warmup_runs:
        run_on_side_stream(fn, device, warmup_runs, after_warmup_run)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        fn()
    return graph


class GraphedRun:
    """A function over fixed buffers, run eagerly or replayed from one CUDA graph captured at its first call.

    ``state`` lists the tensors ``run`` advances in place: the warm-up runs that precede the capture rewind them,
    so that every call (the capturing one included) is exactly one real run.

    Args:
        run: the function (reads and writes fixed buffers only, returns nothing).
        state: the tensors it advances in place.
        cuda_graph: capture and replay (on CUDA); False runs ``run`` eagerly at every call.
        pool: memory pool shared with other graphs (``torch.cuda.graph_pool_handle()``).
    """

    def __init__(self, run: Callable[[], None], state: Sequence[torch.Tensor], cuda_graph: bool, pool=None):
        self.run = run
        self.state = list(state)
        self.cuda_graph = cuda_graph
        self.pool = pool
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> None:
        if not self.cuda_graph:
            self.run()
            return
        if self.graph is None:
            saved = [tensor.clone() for tensor in self.state]

            def rewind() -> None:
                for tensor, value in zip(self.state, saved):
                    tensor.copy_(value)

            self.graph = capture_graph(self.run, self.state[0].device, self.pool, after_warmup_run=rewind)
        self.graph.replay()


def compile_static(fn: Callable, mode: str = "default") -> Callable:
    """``torch.compile`` with static shapes, the setting of every compiled region of this model."""
    return torch.compile(fn, dynamic=False, mode=mode)


class RegionOwner(Protocol):
    """A part of the model that declares its compilable regions and runs their compiled versions when given."""

    def compile_regions(self) -> dict[str, Callable]:
        """The eager functions that repeat (one compiled graph serves every call), by name."""

    def use_regions(self, functions: Mapping[str, Callable]) -> dict[str, Callable]:
        """Run ``functions`` (by name) instead of the eager ones (an empty mapping: the eager ones); returns the
        mapping it replaced."""


class CompiledRegions:
    """Regional ``torch.compile``: the regions that parts of a model declare, compiled once, installed on demand.

    Args:
        owners: parts that declare function regions (:class:`RegionOwner`, e.g. the encoder's patch and query
            layers); each is compiled here, once.
        modules: modules compiled in place (``nn.Module.compile``) while installed (e.g. LLM decoder layers).
        mode: the ``torch.compile`` mode (``"reduce-overhead"`` also replays each region as a CUDA graph).

    Use :meth:`install` / :meth:`remove`, or ``with regions:`` to install them for a block only.
    """

    def __init__(
        self, owners: Iterable[RegionOwner] = (), modules: Iterable[nn.Module] = (), mode: str = "default"
    ):
        self.mode = mode
        self.owners = [
            (owner, {name: compile_static(fn, mode) for name, fn in owner.compile_regions().items()})
            for owner in owners
        ]
        self.modules = list(modules)
        self.replaced: list[dict[str, Callable]] = []  # what each owner ran before install()

    def install(self) -> None:
        self.replaced = [owner.use_regions(functions) for owner, functions in self.owners]
        for module in self.modules:
            module.compile(dynamic=False, mode=self.mode)

    def remove(self) -> None:
        for (owner, _), previous in zip(self.owners, self.replaced):
            owner.use_regions(previous)
        for module in self.modules:
            module._compiled_call_impl = None  # what nn.Module.compile set: eager calls again

    def __enter__(self) -> CompiledRegions:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


__all__ = [
    "GRAPH_WARMUP_RUNS",
    "CompiledRegions",
    "GraphedRun",
    "RegionOwner",
    "capture_graph",
    "compile_static",
    "run_on_side_stream",
]
