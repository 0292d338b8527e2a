"""The run's environment (device, versions) and the device's measured ceilings (bf16 matmul, copy bandwidth)."""

from __future__ import annotations

import platform
from functools import partial
from typing import Any

import torch
import transformers

from .settings import BF16
from .timing import GIB, free_memory, median_ms

MATMUL_SIZE = 8192  # side of the bf16 matrix product that measures the achievable peak
COPY_BYTES = 2 * 1024**3  # bytes of the device-to-device copy that measures bandwidth
CEILING_REPEATS = 10
CEILING_WARMUP = 3


def measure_ceilings(device: torch.device) -> dict[str, float | None]:
    """Achievable bf16 matmul TFLOP/s (random data) and device-to-device copy TB/s (bytes read + written)."""
    if device.type != "cuda":
        return {"matmul_tflops": None, "copy_tbps": None}
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=BF16)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=BF16)
    matmul_ms = median_ms(partial(torch.matmul, a, b), device, CEILING_WARMUP, CEILING_REPEATS)
    source = torch.empty(COPY_BYTES // 2, dtype=BF16, device=device).normal_()
    target = torch.empty_like(source)
    copy_ms = median_ms(partial(target.copy_, source), device, CEILING_WARMUP, CEILING_REPEATS)
    del a, b, source, target
    free_memory(device)
    return {
        "matmul_tflops": 2 * MATMUL_SIZE**3 / (matmul_ms / 1000) / 1e12,
        "copy_tbps": 2 * COPY_BYTES / (copy_ms / 1000) / 1e12,
    }


def environment(device: torch.device) -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            device=properties.name,
            multiprocessors=properties.multi_processor_count,
            memory_gib=properties.total_memory / GIB,
            cuda=torch.version.cuda,
        )
    return info
