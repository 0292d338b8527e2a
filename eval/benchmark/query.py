"""Section ``query``: the query pass through a frame's cached patch K/V against re-encoding the frame."""

from __future__ import annotations

from typing import Any

import torch

from acceleration_foveated import capture_graph
from configuration_foveated import FoveatedVLMConfig
from foveated_vlm.training.speed import compile_regions

from .flops import encoder_frame_flops, query_frame_flops
from .settings import Settings
from .timing import median_ms

GRAPHED_VARIANTS = {  # name -> whether the encoder's regions are compiled first
    "eager encode, graphed query": False,
    "compiled encode, compiled+graphed query": True,
}


@torch.no_grad()
def bench_query_pass(model, settings: Settings, device: torch.device, ceilings: dict) -> dict[str, Any]:
    """Per-frame time of the patch pass (re-encoding) and of the query pass through cached K/V, N frames."""
    config = model.config
    size = config.vision_config.image_size
    frames = torch.randn(settings.query_frames, 3, size, size, device=device, dtype=model.dtype)
    cache = model.encode_frames(frames)
    queries = torch.randn(settings.query_frames, config.query_dim, device=device, dtype=model.dtype)

    def encode() -> None:
        model.encode_frames(frames)

    def read() -> None:
        model.read_frames(queries, cache)

    per_frame = 1000.0 / settings.query_frames  # ms per batch -> us per frame
    results = {"eager": _query_figures(encode, read, settings, device, per_frame)}
    if device.type == "cuda":
        for name, compiled in GRAPHED_VARIANTS.items():
            if compiled and not settings.compile:
                continue
            undo = compile_regions(model) if compiled else None
            try:
                graph = capture_graph(read, device)  # the one CUDA-graph recipe (acceleration_foveated)
                results[name] = _query_figures(encode, graph.replay, settings, device, per_frame)
            finally:
                if undo is not None:
                    undo()
    kv_bytes = sum(t.numel() * t.element_size() for t in [*cache.keys, *cache.values]) / settings.query_frames
    encode_us = min(r["encode_us"] for r in results.values())
    query_us = min(r["query_us"] for r in results.values())
    best = {"encode_us": encode_us, "query_us": query_us, "ratio": encode_us / query_us}
    return {
        "variants": results,
        "best": best,
        "floors": query_floors(config, kv_bytes, ceilings),
        "frames": settings.query_frames,
    }


def query_floors(config: FoveatedVLMConfig, kv_bytes: float, ceilings: dict) -> dict[str, float]:
    """FLOPs and K/V bytes per frame; with measured ceilings, the time floors and the ratio they allow."""
    encode_flops = encoder_frame_flops(config)
    floors = {"encode_flops": encode_flops, "query_flops": query_frame_flops(config), "kv_bytes": kv_bytes}
    if ceilings.get("matmul_tflops"):
        floors["encode_floor_us"] = encode_flops / (ceilings["matmul_tflops"] * 1e12) * 1e6
        floors["query_floor_us"] = kv_bytes / (ceilings["copy_tbps"] * 1e12) * 1e6
        floors["ratio_ceiling"] = floors["encode_floor_us"] / floors["query_floor_us"]
    return floors


def _query_figures(
    encode, read, settings: Settings, device: torch.device, per_frame: float
) -> dict[str, float]:
    encode_us = median_ms(encode, device, settings.warmup, settings.repeats) * per_frame
    read_us = median_ms(read, device, settings.warmup, settings.repeats) * per_frame
    return {"encode_us": encode_us, "query_us": read_us, "ratio": encode_us / read_us}
