"""Section ``stream``: per-frame latency (batch 1) of the library's eager stream and of its fast path."""

from __future__ import annotations

import sys
import traceback
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from streaming_foveated import FoveatedStream, stream_prompt_inputs

from .settings import ERROR_CHARS, PROMPT, SEED, Settings
from .timing import PROFILE_STEPS, median, time_calls, write_profile

CHECK_FRAMES = 4  # frames on which the graphed streaming step is compared with FoveatedStream.step
STREAM_EAGER_FRAMES = 50  # frames timed for the eager library step (~0.2 s each on the GPU machine's CPU)


def _open_stream(model, processor, **options) -> FoveatedStream:
    return model.stream(**stream_prompt_inputs(processor, PROMPT), **options)


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12))


def stream_variants(settings: Settings, device: torch.device) -> dict[str, dict[str, Any]]:
    """The library's fast-path options measured (``model.stream(..., max_frames=...)``), by variant name."""
    where = "one CUDA graph per frame" if device.type == "cuda" else "eager (CPU)"
    variants = {
        f"static caches, {where}": {"fuse_passes": False},
        f"static caches, {where}, fused passes (one 2-token query pass, one batch-2 LLM call)": {},
    }
    if device.type == "cuda" and settings.compile:
        compiled = "+ torch.compile (encoder patch/query layers, whole LLM) inside the graph"
        variants[f"{compiled}, fused passes"] = {"torch_compile": True}
        variants[f"{compiled}, unfused"] = {"torch_compile": True, "fuse_passes": False}
    return variants


def _agreement(model, processor, frames, targets, **options) -> dict[str, float]:
    """Max relative error of the fast step (``options``) against ``FoveatedStream.step`` over ``CHECK_FRAMES``."""
    library = _open_stream(model, processor)
    fast = _open_stream(model, processor, max_frames=CHECK_FRAMES, **options)
    errors: dict[str, float] = {}
    for t in range(CHECK_FRAMES):
        expected = library.step(frames[t], targets=targets[t])
        ours = fast.step(frames[t], targets=targets[t])
        for name in ("predictions", "queries", "attention", "next_queries"):
            errors[name] = max(errors.get(name, 0.0), _relative_error(ours[name], expected[name]))
    return errors


@torch.no_grad()
def bench_streaming(
    model, processor, settings: Settings, device: torch.device, profile_dir: Path | None
) -> dict:
    """Per-frame latency (batch 1) of the library's eager step and of its fast path, plus their agreement."""
    config = model.config
    total = settings.stream_warmup + settings.stream_frames
    size = config.vision_config.image_size
    generator = torch.Generator(device=device).manual_seed(SEED)
    pixels = torch.rand(
        total + CHECK_FRAMES, size, size, 3, device=device, generator=generator
    )  # [T, H, W, 3]
    frames = (
        processor.video_processor.preprocess_frames(pixels)[0].unsqueeze(1).to(model.dtype)
    )  # [T, 1, 3, S, S] normalised
    targets = torch.randn(total + CHECK_FRAMES, 1, *config.target_shape, device=device, generator=generator)
    targets = targets.to(model.dtype)
    results: dict[str, Any] = {
        "agreement_max_relative_error": _agreement(model, processor, frames, targets, fuse_passes=False),
        "agreement_fused_max_relative_error": _agreement(model, processor, frames, targets),
        "frames": settings.stream_frames,
        "variants": {},
        "errors": {},
    }
    eager = replace(settings, stream_frames=min(settings.stream_frames, STREAM_EAGER_FRAMES))
    library = _open_stream(model, processor)
    name = f"library FoveatedStream.step (eager, DynamicCache; median of {eager.stream_frames} frames)"
    results["variants"][name] = median(
        stream_step_times(library, frames, device, eager.stream_warmup, eager.stream_frames, targets)
    )
    variants = stream_variants(settings, device)
    # the profiler table shows the compiled fused step (the fastest), or the last variant without compile
    profiled = next(
        (name for name, options in variants.items() if "torch_compile" in options), list(variants)[-1]
    )
    for name, options in variants.items():
        try:
            stream = _open_stream(model, processor, max_frames=total + PROFILE_STEPS + 1, **options)
            results["variants"][name] = median(
                stream_step_times(
                    stream, frames, device, settings.stream_warmup, settings.stream_frames, targets
                )
            )
            if profile_dir is not None and name == profiled:
                write_profile(
                    partial(stream.step, frames[0], targets=targets[0]),
                    device,
                    profile_dir / "profile_stream.txt",
                )
        except Exception as error:  # noqa: BLE001 - one failing variant must not hide the others
            traceback.print_exc()
            results["errors"][name] = f"{type(error).__name__}: {error}"[:ERROR_CHARS]
        except KeyboardInterrupt:  # a time limit (timeout -s INT): keep the variants measured so far
            results["errors"][name] = "interrupted"
            break
        print(f"[benchmark] {name}: {results['variants'].get(name)} ms", file=sys.stderr, flush=True)
    results["best_ms"] = min(results["variants"].values())
    return results


def stream_step_times(
    stream: FoveatedStream,
    frames: torch.Tensor,
    device: torch.device,
    warmup: int,
    repeats: int,
    targets: torch.Tensor | None = None,
) -> list[float]:
    """Milliseconds of each of ``repeats`` ``stream.step`` calls after ``warmup`` (one frame a call).

    ``frames``: ``[T, B, C, S, S]`` normalised frames, read in turn (cycling past ``T``); ``targets``: ``[T, B, ...]``
    next-frame targets or None. The stream must hold ``warmup + repeats`` frames.
    """
    frame = iter(range(warmup + repeats))

    def step() -> None:
        t = next(frame) % len(frames)
        stream.step(frames[t], targets=None if targets is None else targets[t])

    return time_calls(step, device, warmup, repeats)
