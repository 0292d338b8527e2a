"""Timing, host synchronisation, memory and profiler tables: how every section measures.

The one timing harness of the repository: the benchmark's sections and the studies' cost runs
(``studies.readers.costs``) time through :func:`time_calls` / :func:`median_ms`."""

from __future__ import annotations

import gc
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from foveated_vlm.files import atomic_write_text

GIB = 1024**3
PROFILE_STEPS = 3
PROFILE_ROWS = 25


def sync(device: torch.device) -> None:
    """Wait for ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn`` after ``warmup`` calls.

    On a GPU each call is bracketed by CUDA events and nothing synchronises between calls; on the CPU each call
    is timed with ``perf_counter``.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - start))
        return times
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)
    ]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) for start, end in events]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def median_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` (:func:`time_calls`)."""
    return median(time_calls(fn, device, warmup, repeats))


def host_sync_sites(fn: Callable[[], Any], device: torch.device) -> list[str] | None:
    """``file:line`` of every host-device synchronisation during one call of ``fn`` (CUDA's sync debug mode);
    None on the CPU."""
    if device.type != "cuda":
        return None
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [
        f"{warning.filename}:{warning.lineno}" for warning in caught if "synchroniz" in str(warning.message)
    ]


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def write_profile(step: Callable[[], Any], device: torch.device, path: Path) -> None:
    """Write the torch.profiler table (top ops by device time) of a few calls of ``step`` to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    sync(device)
    with profile(activities=activities) as profiler:
        for _ in range(PROFILE_STEPS):
            step()
        sync(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort, row_limit=PROFILE_ROWS)
    atomic_write_text(path, f"{PROFILE_STEPS} calls\n{table}\n")
