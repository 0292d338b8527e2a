"""Speed of the foveated VLM (one token per frame) against the dense baseline (64 tokens per frame), side by side.

Both models come from the same configuration class (``foveation_mode="foveated"`` / ``"dense"``), with random
weights of the real shapes (throughput does not depend on weight values), and are measured in one run:

1. the query pass through cached patch K/V against re-encoding the frame, per frame, over 256 frames;
2. training throughput (T = 16 frames, ~48 text tokens, encoder trainable, LLM fully fine-tuned): frames/s, MFU
   and peak GPU memory, ours against dense, with every lever measured on and off;
3. streaming latency, batch 1: encoder + two query passes + two LLM steps + head, per frame (the library's
   eager ``FoveatedStream.step``, and its fast path ``model.stream(..., max_frames=...)``: static KV caches, one
   CUDA graph per frame, with and without fused passes and ``torch.compile``);
4. captioning a 3,600-frame video (1 h at 1 fps) with 64 new tokens, end to end from decoded frames (the dense
   baseline's 8,192-token context cannot hold it: the report says how many frames fit);
5. how many frames/s the data loader (procedural clips + collator, workers, pinned memory) can feed.

Usage::

    python -m eval.benchmark --device cuda --output BENCHMARKS.md --json OUT/benchmark.json
    python -m eval.benchmark --tiny --device cpu     # tiny config on the CPU in seconds (tests run this)

GPU times are CUDA-event times after warm-up, medians of many repeats; CPU times use ``perf_counter``.
``torch.compile`` and CUDA graphs are GPU levers: on the CPU only the eager paths run (the fast streaming step
runs its graphed function eagerly there, so its logic is still checked against ``FoveatedStream.step``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import shlex
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python eval/benchmark.py): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import transformers
from torch import nn

from configuration_foveated import FoveatedVLMConfig
from eval.common import markdown_table
from foveated_vlm.data.collate import VideoCaptionCollator
from foveated_vlm.data.procedural import ProceduralVideoConfig, ProceduralVideoDataset
from foveated_vlm.files import atomic_write_text
from foveated_vlm.tiny import tiny_config, tiny_processor, tiny_tokenizer
from foveated_vlm.training.modeling import set_encoder_trainable
from foveated_vlm.training.speed import GRAPH_WARMUP_STEPS as TRAIN_GRAPH_WARMUP_STEPS
from foveated_vlm.training.speed import GraphedTrainStep, compile_regions
from modeling_foveated import FoveatedVLMForConditionalGeneration
from processing_foveated import VIDEO_TOKENS, FoveatedVLMProcessor
from streaming_foveated import FoveatedStream, stream_prompt_inputs

# ---------------------------------------------------------------------------------------------- targets
QUERY_SPEEDUP_TARGET = 100.0  # query pass at least this many times cheaper than re-encoding, per frame
TRAIN_FRAMES_PER_S_TARGET = 6000.0
TRAIN_DENSE_RATIO_TARGET = 1.8  # ours / dense training frames per second
STREAM_MS_TARGET = 4.0
LONG_VIDEO_S_TARGET = 10.0

# ---------------------------------------------------------------------------------------------- workload
PROMPT = "Describe the video."
CAPTION = "the red square moves from left to right, then stays still."  # 48 text tokens per clip in all
DENSE_TOKENS_FULL = 64
DENSE_TOKENS_TINY = 4  # the tiny 4 x 4 patch grid pixel-unshuffled by 2, as 16 x 16 -> 64 at full size
LEARNING_RATE = 1.0e-5
CLIP_GRAD_NORM = 1.0
SEED = 0
BF16 = torch.bfloat16
DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 tensor-core rate of the SXM parts
MATMUL_SIZE = 8192  # side of the bf16 matrix product that measures the achievable peak
COPY_BYTES = 2 * 1024**3  # bytes of the device-to-device copy that measures bandwidth
CEILING_REPEATS = 10
GRAPH_WARMUP_STEPS = 3  # eager runs on a side stream before a CUDA graph capture (PyTorch's recipe)
CHECK_FRAMES = 4  # frames on which the graphed streaming step is compared with FoveatedStream.step
PROFILE_STEPS = 3
PROFILE_ROWS = 25
RECOMPILE_LIMIT = 64
GIB = 1024**3
ERROR_CHARS = 500  # of a failed section's message kept in the report
SECTIONS = ("env", "query", "train", "stream", "long", "loader")


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts of one benchmark run."""

    tiny: bool = False
    batch_size: int = 16
    num_frames: int = 16
    query_frames: int = 256
    stream_frames: int = 500
    stream_warmup: int = 20
    long_video_frames: int = 3600
    decoded_size: tuple[int, int] = (360, 640)  # height, width of the decoded frames (360p)
    chunk_frames: int = 256  # long video: frames per encoder pass (caption_video.py's default is 64)
    new_tokens: int = 64
    warmup: int = 5
    repeats: int = 50
    train_warmup: int = 3
    train_repeats: int = 20
    loader_batches: int = 24
    loader_workers: int = 15
    compile: bool = True
    train_variants: tuple[str, ...] = ()  # run only the training variants whose name contains one of these


TINY_SETTINGS = Settings(
    tiny=True,
    batch_size=2,
    num_frames=4,
    query_frames=8,
    stream_frames=6,
    stream_warmup=2,
    long_video_frames=40,
    decoded_size=(48, 64),
    chunk_frames=16,
    new_tokens=4,
    warmup=1,
    repeats=3,
    train_warmup=1,
    train_repeats=2,
    loader_batches=2,
    loader_workers=0,
    compile=False,
)


# ---------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn`` after ``warmup`` calls.

    On a GPU each call is bracketed by CUDA events and nothing synchronises between calls; on the CPU each call
    is timed with ``perf_counter``.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
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


def host_sync_sites(fn: Callable[[], Any], device: torch.device) -> list[str] | None:
    """``file:line`` of every host-device synchronisation during one call of ``fn`` (CUDA's sync debug mode);
    None on the CPU."""
    if device.type != "cuda":
        return None
    _sync(device)
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


# ---------------------------------------------------------------------------------------------- FLOPs
def encoder_frame_flops(config: FoveatedVLMConfig) -> float:
    """Forward FLOPs of the patch pass over one frame (patch embedding, every layer's linears and attention)."""
    vision = config.vision_config
    width, tokens = vision.hidden_size, config.num_patches + 1 + vision.num_register_tokens
    layer_weights = 4 * width * width + 2 * width * vision.intermediate_size
    embed = 2 * config.num_patches * vision.num_channels * vision.patch_size**2 * width
    return embed + vision.num_hidden_layers * (2 * tokens * layer_weights + 4 * tokens * tokens * width)


def query_frame_flops(config: FoveatedVLMConfig) -> float:
    """Forward FLOPs of one query token through every encoder layer against a frame's cached K/V (+ projections)."""
    vision = config.vision_config
    width, tokens = vision.hidden_size, config.num_patches + 1 + vision.num_register_tokens
    layer_weights = 4 * width * width + 2 * width * vision.intermediate_size
    projections = 2 * config.query_dim * width + 2 * width * config.text_config.hidden_size
    return projections + vision.num_hidden_layers * (2 * layer_weights + 4 * (tokens + 1) * width)


def llm_token_flops(config: FoveatedVLMConfig, context: int) -> float:
    """Forward FLOPs of one LLM token attending to ``context`` positions (full-square attention convention)."""
    text = config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    attention_width = text.num_attention_heads * head_dim
    kv_width = 2 * text.num_key_value_heads * head_dim
    weights = (
        text.hidden_size * (2 * attention_width + kv_width) + 3 * text.hidden_size * text.intermediate_size
    )
    return text.num_hidden_layers * (2 * weights + 4 * context * attention_width)


def prediction_head_flops(config: FoveatedVLMConfig) -> float:
    """Forward FLOPs of the FiLM prediction head for one frame (MLP + conv encoder and decoder at target size)."""
    channels = [config.target_channels, *config.film_channels]
    _, height, width = config.target_shape
    convs = sum(2 * height * width * 9 * c_in * c_out for c_in, c_out in zip(channels[:-1], channels[1:]))
    film = 2 * (
        config.text_config.hidden_size * config.film_hidden_dim + config.film_hidden_dim * 2 * channels[-1]
    )
    return 2 * convs + film


def training_step_flops(
    config: FoveatedVLMConfig, batch: dict[str, torch.Tensor], logits_to_keep: int
) -> float:
    """Model FLOPs of one training step on ``batch``: 3x the forward of every trained part (forward + backward).

    Counts the patch pass, the query passes (two when foveated), the LLM over every sequence (two passes when
    foveated), the dense projection, the LM head on supervised tokens, the prediction head, and the forward-only
    logits of the last ``logits_to_keep`` positions. Elementwise work is not counted.
    """
    frames = int(batch["video_frame_mask"].sum())
    passes = 2 if config.foveation_mode == "foveated" else 1
    lengths = batch["attention_mask"].sum(1).tolist()
    text = config.text_config
    supervised = int((batch["labels"][:, 1:] != -100).sum()) if "labels" in batch else 0
    forward = frames * encoder_frame_flops(config)
    if config.foveation_mode == "foveated":
        forward += passes * frames * query_frame_flops(config)
    else:
        unshuffled = config.vision_config.hidden_size * config.num_patches // config.dense_tokens_per_frame
        forward += frames * config.dense_tokens_per_frame * 2 * unshuffled * text.hidden_size
    forward += passes * sum(length * llm_token_flops(config, length) for length in lengths)
    forward += passes * supervised * 2 * text.hidden_size * text.vocab_size
    if "prediction_targets" in batch:
        forward += passes * frames * prediction_head_flops(config)
    keep = max(lengths) if logits_to_keep == 0 else logits_to_keep
    return 3 * forward + len(lengths) * keep * 2 * text.hidden_size * text.vocab_size


# ---------------------------------------------------------------------------------------------- models
def benchmark_config(tokenizer, tiny: bool, mode: str) -> FoveatedVLMConfig:
    """The full-size (or tiny) config of ``mode``, its video token ids taken from ``tokenizer``."""
    if tiny:
        return tiny_config(tokenizer, foveation_mode=mode, dense_tokens_per_frame=DENSE_TOKENS_TINY)
    ids = [tokenizer.convert_tokens_to_ids(token) for token in VIDEO_TOKENS]
    return FoveatedVLMConfig(
        foveation_mode=mode,
        dense_tokens_per_frame=DENSE_TOKENS_FULL,
        frame_token_id=ids[0],
        video_start_token_id=ids[1],
        video_end_token_id=ids[2],
    )


def build_model(config: FoveatedVLMConfig, device: torch.device) -> FoveatedVLMForConditionalGeneration:
    """Random-init model built directly on ``device`` (float32 weights)."""
    torch.manual_seed(SEED)
    with torch.device(device):
        return FoveatedVLMForConditionalGeneration(config)


def make_batch(
    processor: FoveatedVLMProcessor, settings: Settings, device: torch.device
) -> dict[str, torch.Tensor]:
    """A training batch built by the processor (chat text, frames, targets, labels, video layout) on ``device``."""
    generator = torch.Generator().manual_seed(SEED)
    size = processor.image_size
    shape = (settings.batch_size, settings.num_frames, size, size, 3)
    videos = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    batch = processor(
        text=[PROMPT] * settings.batch_size,
        videos=videos,
        captions=[CAPTION] * settings.batch_size,
        return_targets=True,
        return_video_layout=True,
    )
    return {name: value.to(device, non_blocking=True) for name, value in batch.items()}  # VideoLayout.to too


def text_tokens_per_clip(batch: dict[str, torch.Tensor], tokens_per_frame: int) -> int:
    """Sequence length of a clip minus its frame placeholders."""
    frames = int(batch["video_frame_mask"][0].sum())
    return int(batch["attention_mask"][0].sum()) - frames * tokens_per_frame


def set_recompile_limit(limit: int) -> None:
    """Let every regional graph be compiled for each shape regime of the run (training, dense, streaming)."""
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, limit)


# ---------------------------------------------------------------------------------------------- ceilings
def measure_ceilings(device: torch.device) -> dict[str, float | None]:
    """Achievable bf16 matmul TFLOP/s (random data) and device-to-device copy TB/s (bytes read + written)."""
    if device.type != "cuda":
        return {"matmul_tflops": None, "copy_tbps": None}
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=BF16)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=BF16)
    matmul_ms = median(time_calls(partial(torch.matmul, a, b), device, 3, CEILING_REPEATS))
    source = torch.empty(COPY_BYTES // 2, dtype=BF16, device=device).normal_()
    target = torch.empty_like(source)
    copy_ms = median(time_calls(partial(target.copy_, source), device, 3, CEILING_REPEATS))
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


# ---------------------------------------------------------------------------------------------- 1. query pass
def capture_graph(fn: Callable[[], Any], device: torch.device) -> torch.cuda.CUDAGraph:
    """Warm ``fn`` up on a side stream, then capture it in a CUDA graph (its tensors stay allocated)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP_STEPS):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


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
    variants = {
        "eager": (encode, read),
    }
    results: dict[str, Any] = {}
    for name, (encode_fn, read_fn) in variants.items():
        results[name] = _query_figures(encode_fn, read_fn, settings, device, per_frame)
    if device.type == "cuda":
        graph = capture_graph(read, device)
        results["eager encode, graphed query"] = _query_figures(
            encode, graph.replay, settings, device, per_frame
        )
        if settings.compile:
            undo = compile_regions(model)
            try:
                graph = capture_graph(read, device)
                results["compiled encode, compiled+graphed query"] = _query_figures(
                    encode, graph.replay, settings, device, per_frame
                )
            finally:
                undo()
    kv_bytes = sum(t.numel() * t.element_size() for t in [*cache.keys, *cache.values]) / settings.query_frames
    encode_flops = encoder_frame_flops(config)
    floors = {"encode_flops": encode_flops, "query_flops": query_frame_flops(config), "kv_bytes": kv_bytes}
    if ceilings.get("matmul_tflops"):
        floors["encode_floor_us"] = encode_flops / (ceilings["matmul_tflops"] * 1e12) * 1e6
        floors["query_floor_us"] = kv_bytes / (ceilings["copy_tbps"] * 1e12) * 1e6
        floors["ratio_ceiling"] = floors["encode_floor_us"] / floors["query_floor_us"]
    encode_us = min(r["encode_us"] for r in results.values())
    query_us = min(r["query_us"] for r in results.values())
    best = {"encode_us": encode_us, "query_us": query_us, "ratio": encode_us / query_us}
    return {"variants": results, "best": best, "floors": floors, "frames": settings.query_frames}


def _query_figures(
    encode, read, settings: Settings, device: torch.device, per_frame: float
) -> dict[str, float]:
    encode_us = median(time_calls(encode, device, settings.warmup, settings.repeats)) * per_frame
    read_us = median(time_calls(read, device, settings.warmup, settings.repeats)) * per_frame
    return {"encode_us": encode_us, "query_us": read_us, "ratio": encode_us / read_us}


# ---------------------------------------------------------------------------------------------- 2. training
@dataclass
class TrainVariant:
    """One way of running the training step (each a lever on or off)."""

    name: str
    fused_adamw: bool = True
    logits_to_keep: int = 1
    compile_mode: str | None = None  # torch.compile mode of the regions (None: eager)
    pure_bf16: bool = False  # bf16 weights and optimizer state, no autocast, no fp32 master copy
    video_layout: bool = True  # the collator's index tensors: no host syncs, causal attention when unpadded
    cuda_graph: bool = False  # the whole optimizer step replayed as one CUDA graph (GraphedTrainStep)
    frozen_encoder: bool = False  # the ViT's weights frozen: shows what its backward pass costs

    @property
    def headline(self) -> bool:
        """Whether the variant trains what the target asks (fp32 master weights, encoder trainable)."""
        return not (self.pure_bf16 or self.frozen_encoder)


def train_variants(settings: Settings, device: torch.device) -> list[TrainVariant]:
    """The lever ladder, from what the trainer does today to every lever on (GPU-only levers skipped on CPU)."""
    variants = [
        TrainVariant(
            "no levers: autocast, AdamW foreach, full logits, masks searched in the forward",
            fused_adamw=False,
            logits_to_keep=0,
            video_layout=False,
        ),
        TrainVariant("+ last-position logits only", fused_adamw=False, video_layout=False),
        TrainVariant("+ video_layout (no host syncs, causal attention)", fused_adamw=False),
    ]
    if device.type == "cuda":
        variants.append(TrainVariant("+ fused AdamW"))
        variants.append(TrainVariant("+ whole step in one CUDA graph, eager regions", cuda_graph=True))
        if settings.compile:
            variants.append(TrainVariant("+ regional torch.compile, no graph", compile_mode="default"))
            variants.append(
                TrainVariant(
                    "+ regional torch.compile + whole step in one CUDA graph",
                    compile_mode="default",
                    cuda_graph=True,
                )
            )
            variants.append(
                TrainVariant(
                    "diagnostic: encoder frozen (regional torch.compile + whole step in one CUDA graph)",
                    compile_mode="default",
                    cuda_graph=True,
                    frozen_encoder=True,
                )
            )
            # last of the compiled rows: cudagraph trees keep private pools and streams for the process
            variants.append(
                TrainVariant(
                    "regional torch.compile, CUDA graph per region (reduce-overhead)",
                    compile_mode="reduce-overhead",
                )
            )
        variants.append(TrainVariant("pure bf16 weights (no fp32 master), fused AdamW", pure_bf16=True))
    if settings.train_variants:
        variants = [v for v in variants if any(part in v.name for part in settings.train_variants)]
        if not variants:
            raise ValueError(f"no training variant matches {settings.train_variants}")
    return variants


def train_step_fn(
    model, optimizer, batch, variant: TrainVariant, device: torch.device
) -> Callable[[], torch.Tensor]:
    """One optimizer step: autocast forward, backward, clip, AdamW, no host sync (loss stays on the device).

    A captured step (``variant.cuda_graph``) zeroes the gradients in place at its start, so that they stay in
    fixed buffers; the others free them after the update. Autocast's weight cache is off (capture requires it).
    """
    if not variant.video_layout:
        batch = {name: value for name, value in batch.items() if name != "video_layout"}
    # bf16 autocast is the GPU recipe; on the CPU (smoke runs) it would only slow the tiny model down
    enabled = not variant.pure_bf16 and device.type == "cuda"
    region_graphs = variant.compile_mode == "reduce-overhead"

    def step(inputs: dict[str, Any]) -> torch.Tensor:
        if region_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if variant.cuda_graph:
            optimizer.zero_grad(set_to_none=False)
        with torch.autocast(device.type, dtype=BF16, enabled=enabled, cache_enabled=not variant.cuda_graph):
            output = model(**inputs, logits_to_keep=variant.logits_to_keep)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_GRAD_NORM, foreach=True)
        optimizer.step()
        if not variant.cuda_graph:
            optimizer.zero_grad(set_to_none=True)
        return output.loss.detach()

    if variant.cuda_graph:
        graphed = GraphedTrainStep(step, device)
        return partial(graphed, batch)
    return partial(step, batch)


def bench_training(
    mode: str,
    tokenizer,
    settings: Settings,
    device: torch.device,
    peak_tflops: float | None,
    profile_dir: Path | None,
) -> dict[str, Any]:
    """Frames/s, step time, MFU and peak memory of every training variant of ``mode``."""
    config = benchmark_config(tokenizer, settings.tiny, mode)
    processor = tiny_processor(config, tokenizer)
    batch = make_batch(processor, settings, device)
    model = build_model(config, device).train()
    frames = int(batch["video_frame_mask"].sum())
    results: dict[str, Any] = {
        "frames_per_step": frames,
        "text_tokens_per_clip": text_tokens_per_clip(batch, config.tokens_per_frame),
        "sequence_length": int(batch["input_ids"].shape[1]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "variants": {},
    }
    variants = train_variants(settings, device)
    profiled = _profiled_variant(variants)
    undo, compiled_mode = None, None
    for variant in variants:
        if variant.compile_mode != compiled_mode and undo is not None:
            undo()
            undo = None
            torch._dynamo.reset()  # drop the previous mode's graphs (and cudagraph trees) with their guards
        if variant.compile_mode is not None and undo is None:
            undo = compile_regions(model, mode=variant.compile_mode)
        compiled_mode = variant.compile_mode
        if variant.pure_bf16:
            model.to(BF16)
        set_encoder_trainable(model, not variant.frozen_encoder)
        try:
            results["variants"][variant.name] = _run_train_variant(
                model, batch, variant, config, settings, device, peak_tflops
            )
            if profile_dir is not None and variant is profiled:
                step = train_step_fn(model, _optimizer(model, variant), batch, variant, device)
                for _ in range(_warmup_steps(variant, settings)):
                    step()
                _profile(step, device, profile_dir / f"profile_train_{mode}.txt")
        except Exception as error:  # noqa: BLE001 - one failing lever must not hide the others
            traceback.print_exc()
            results["variants"][variant.name] = {"error": f"{type(error).__name__}: {error}"[:ERROR_CHARS]}
            model.zero_grad(set_to_none=True)
            free_memory(device)
    if undo is not None:
        undo()
        torch._dynamo.reset()
    headline = {variant.name for variant in variants if variant.headline}
    measured = [name for name, r in results["variants"].items() if "error" not in r and name in headline]
    best_name = max(measured, key=lambda name: results["variants"][name]["frames_per_s"])
    results["best"] = {"name": best_name, **results["variants"][best_name]}
    del model, batch
    free_memory(device)
    return results


def _profiled_variant(variants: list[TrainVariant]) -> TrainVariant | None:
    """The variant whose kernels the profiler table shows: the fastest recipe (regional compile + one graph)."""
    plain = [
        variant for variant in variants if variant.compile_mode != "reduce-overhead" and variant.headline
    ]
    best = [variant for variant in plain if variant.cuda_graph and variant.compile_mode == "default"]
    return (best or plain or [None])[-1]


def _warmup_steps(variant: TrainVariant, settings: Settings) -> int:
    """Steps before timing: a captured step first runs eagerly, is captured, then replays."""
    return (
        max(settings.train_warmup, TRAIN_GRAPH_WARMUP_STEPS + 1)
        if variant.cuda_graph
        else settings.train_warmup
    )


def _optimizer(model: nn.Module, variant: TrainVariant) -> torch.optim.Optimizer:
    parameter = next(model.parameters())
    fused = variant.fused_adamw and parameter.is_cuda
    if variant.cuda_graph:  # learning rate in a tensor and device-side step counts: capturable
        lr = torch.tensor(LEARNING_RATE, device=parameter.device)
        return torch.optim.AdamW(model.parameters(), lr=lr, fused=True, capturable=True)
    return torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, fused=fused, foreach=not fused)


def _run_train_variant(model, batch, variant, config, settings, device, peak_tflops) -> dict[str, Any]:
    free_memory(device)
    optimizer = _optimizer(model, variant)
    step = train_step_fn(model, optimizer, batch, variant, device)
    times = time_calls(step, device, _warmup_steps(variant, settings), settings.train_repeats)
    syncs = host_sync_sites(step, device)
    loss = float(step())  # read back once, after timing
    step_ms = median(times)
    frames = int(batch["video_frame_mask"].sum())
    # the analytic count is that of a fully trainable step: a frozen encoder skips part of it, so no FLOP rate
    flops = None if variant.frozen_encoder else training_step_flops(config, batch, variant.logits_to_keep)
    achieved = None if flops is None else flops / (step_ms / 1000) / 1e12
    result = {
        "step_ms": step_ms,
        "frames_per_s": frames / (step_ms / 1000),
        "model_tflops_per_step": None if flops is None else flops / 1e12,
        "achieved_tflops": achieved,
        "mfu": achieved / peak_tflops if peak_tflops and achieved is not None else None,
        "peak_memory_gib": peak_gib(device),
        "host_syncs_per_step": None if syncs is None else len(syncs),
        "host_sync_sites": syncs,
        "loss": loss,
    }
    del optimizer
    model.zero_grad(set_to_none=True)
    return result


def _profile(step: Callable[[], Any], device: torch.device, path: Path) -> None:
    """Write the torch.profiler table (top ops by device time) of a few steps of ``step`` to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    _sync(device)
    with profile(activities=activities) as profiler:
        for _ in range(PROFILE_STEPS):
            step()
        _sync(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort, row_limit=PROFILE_ROWS)
    atomic_write_text(path, f"{PROFILE_STEPS} calls\n{table}\n")


# ---------------------------------------------------------------------------------------------- 3. streaming
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
    frames = torch.randn(total + CHECK_FRAMES, 1, 3, size, size, device=device, generator=generator).to(
        model.dtype
    )
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
    results["variants"][name] = median(_stream_times(library, frames, targets, eager, device))
    variants = stream_variants(settings, device)
    # the profiler table shows the compiled fused step (the fastest), or the last variant without compile
    profiled = next(
        (name for name, options in variants.items() if "torch_compile" in options), list(variants)[-1]
    )
    for name, options in variants.items():
        try:
            stream = _open_stream(model, processor, max_frames=total + PROFILE_STEPS + 1, **options)
            results["variants"][name] = median(_stream_times(stream, frames, targets, settings, device))
            if profile_dir is not None and name == profiled:
                _profile(
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


def _stream_times(
    stream: FoveatedStream,
    frames: torch.Tensor,
    targets: torch.Tensor,
    settings: Settings,
    device: torch.device,
) -> list[float]:
    """Milliseconds of each ``stream.step`` after ``stream_warmup`` steps (the stream advances one frame per call)."""
    frame = iter(range(settings.stream_warmup + settings.stream_frames))

    def step() -> None:
        t = next(frame)
        stream.step(frames[t], targets=targets[t])

    return time_calls(step, device, settings.stream_warmup, settings.stream_frames)


# ---------------------------------------------------------------------------------------------- 4. long video
@torch.no_grad()
def bench_long_video(model, processor, dense_processor, settings: Settings, device: torch.device) -> dict:
    """Caption a ``long_video_frames`` video from decoded uint8 frames, end to end; and what the dense baseline fits.

    Watching: decoded frames go to the device chunk by chunk, are resized and normalised there
    (``processor.preprocess_frames`` runs on the frames' device) and read by ``stream.extend``. Captioning: greedy
    over a static cache, one CUDA graph per token (``caption(static_cache=True)``, the timed path), then the same
    stream captioned by ``generate`` for comparison.
    """
    generator = torch.Generator().manual_seed(SEED)
    distinct = min(settings.long_video_frames, settings.chunk_frames)
    pool = torch.randint(
        0, 256, (distinct, *settings.decoded_size, 3), dtype=torch.uint8, generator=generator
    )
    decoded = pool[torch.arange(settings.long_video_frames) % distinct]  # decoded frames, held in host memory
    if device.type == "cuda":
        decoded = decoded.pin_memory()
    _sync(device)
    start = time.perf_counter()
    stream = model.stream(**stream_prompt_inputs(processor, PROMPT), chunk_frames=settings.chunk_frames)
    for begin in range(0, settings.long_video_frames, settings.chunk_frames):
        chunk = decoded[begin : begin + settings.chunk_frames].to(device, non_blocking=True)
        pixels, _ = processor.preprocess_frames(chunk)
        stream.extend(pixels.to(model.dtype).unsqueeze(0))
    _sync(device)
    watched = time.perf_counter()
    print(f"[benchmark] long video watched in {watched - start:.2f} s", file=sys.stderr, flush=True)
    tokens = settings.new_tokens
    caption = stream.caption(max_new_tokens=tokens, min_new_tokens=tokens, static_cache=True)
    _sync(device)
    done = time.perf_counter()
    print(f"[benchmark] static-cache caption in {done - watched:.2f} s", file=sys.stderr, flush=True)
    generated = stream.caption(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    _sync(device)
    generate_seconds = time.perf_counter() - done
    prompt_tokens = len(
        processor.tokenizer(processor.format_prompt(PROMPT, 0), add_special_tokens=False)["input_ids"]
    )
    return {
        "frames": settings.long_video_frames,
        "decoded_size": list(settings.decoded_size),
        "chunk_frames": settings.chunk_frames,
        "new_tokens": int(caption.shape[-1]),
        "seconds": done - start,
        "watch_seconds": watched - start,
        "caption_seconds": done - watched,
        "caption_generate_seconds": generate_seconds,
        "captions_equal": bool(torch.equal(caption, generated)),
        "positions": int(stream.attention_mask.sum()) + stream.suffix_ids.numel() + settings.new_tokens,
        "dense_positions_needed": prompt_tokens
        + settings.long_video_frames * dense_processor.tokens_per_frame,
        "dense_frames_that_fit": dense_processor.frames_that_fit(prompt_tokens + settings.new_tokens),
        "context": dense_processor.max_sequence_length,
    }


# ---------------------------------------------------------------------------------------------- 5. loader
def bench_loader(processor: FoveatedVLMProcessor, settings: Settings, device: torch.device) -> dict[str, Any]:
    """Frames/s the training data path delivers: procedural clips + collator in workers, pinned batches."""
    config = ProceduralVideoConfig(image_size=processor.image_size, num_frames=settings.num_frames)
    clips = settings.batch_size * (settings.loader_batches + 1)
    loader = torch.utils.data.DataLoader(
        ProceduralVideoDataset("train", clips, config),
        batch_size=settings.batch_size,
        collate_fn=VideoCaptionCollator(processor),
        num_workers=settings.loader_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if settings.loader_workers else None,
    )
    batches = iter(loader)
    next(batches)  # start-up (worker processes, first clips) is not throughput
    start = time.perf_counter()
    for batch in batches:
        batch = {name: value.to(device, non_blocking=True) for name, value in batch.items()}
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "workers": settings.loader_workers,
        "frames_per_s": settings.loader_batches * settings.batch_size * settings.num_frames / seconds,
    }


# ---------------------------------------------------------------------------------------------- report
def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{suffix}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """The issue's table: figure, ours, dense, target, verdict."""
    rows = []
    query = report.get("query")
    if query:
        best = query["best"]
        rows.append(
            [
                f"query pass vs re-encoding, per frame, {query['frames']} frames",
                f"{best['ratio']:.1f}x (encode {best['encode_us']:.2f} us, query {best['query_us']:.3f} us per frame)",
                "no query pass (reads every patch)",
                f">= {QUERY_SPEEDUP_TARGET:.0f}x",
                _verdict(best["ratio"] >= QUERY_SPEEDUP_TARGET),
            ]
        )
    ours, dense = report.get("train_foveated"), report.get("train_dense")
    if ours and dense:
        a, b = ours["best"], dense["best"]
        ratio = a["frames_per_s"] / b["frames_per_s"]
        rows.append(
            [
                f"training, T = {report['settings']['num_frames']}, {ours['text_tokens_per_clip']} text tokens",
                f"{a['frames_per_s']:,.0f} frames/s, MFU {_fmt(_pct(a['mfu']), 1, '%')} ({a['name']})",
                f"{b['frames_per_s']:,.0f} frames/s, MFU {_fmt(_pct(b['mfu']), 1, '%')}; ours / dense = {ratio:.2f}x",
                f">= {TRAIN_FRAMES_PER_S_TARGET:,.0f} frames/s and >= {TRAIN_DENSE_RATIO_TARGET}x dense",
                _verdict(
                    a["frames_per_s"] >= TRAIN_FRAMES_PER_S_TARGET and ratio >= TRAIN_DENSE_RATIO_TARGET
                ),
            ]
        )
    stream = report.get("stream")
    if stream:
        rows.append(
            [
                f"streaming, batch 1, median over {stream['frames']} frames",
                f"{stream['best_ms']:.2f} ms per frame",
                "no streaming path (64 tokens per frame)",
                f"<= {STREAM_MS_TARGET:.0f} ms",
                _verdict(stream["best_ms"] <= STREAM_MS_TARGET),
            ]
        )
    long_video = report.get("long")
    if long_video:
        rows.append(
            [
                f"caption {long_video['frames']:,} frames + {long_video['new_tokens']} new tokens, from decoded frames",
                f"{long_video['seconds']:.2f} s (watch {long_video['watch_seconds']:.2f} s, caption "
                f"{long_video['caption_seconds']:.2f} s greedy over a static cache + CUDA graph per token; "
                f"generate: {_fmt(long_video.get('caption_generate_seconds'), 2, ' s')}; "
                f"{long_video['positions']:,} positions)",
                _dense_long_video(long_video),
                f"<= {LONG_VIDEO_S_TARGET:.0f} s",
                _verdict(long_video["seconds"] <= LONG_VIDEO_S_TARGET),
            ]
        )
    if ours and dense:
        rows.append(
            [
                "peak GPU memory of the training step",
                f"{_fmt(ours['best']['peak_memory_gib'], 2, ' GiB')}",
                f"{_fmt(dense['best']['peak_memory_gib'], 2, ' GiB')}",
                "reported for both",
                "n/a",
            ]
        )
    return rows


def _dense_long_video(long_video: dict[str, Any]) -> str:
    """Whether the dense baseline's context holds the long video, and how many of its frames fit."""
    needed, context = long_video["dense_positions_needed"], long_video["context"]
    if needed <= context:
        return f"fits: {needed:,} of {context:,} positions"
    return f"cannot: needs {needed:,} positions > {context:,}; at most {long_video['dense_frames_that_fit']} frames fit"


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def lever_rows(report: dict[str, Any]) -> list[list[str]]:
    """Every measured variant, grouped by figure."""
    rows = []
    query = report.get("query")
    if query:
        for name, r in query["variants"].items():
            rows.append(
                [
                    "query vs encode",
                    name,
                    f"encode {r['encode_us']:.2f} us, query {r['query_us']:.3f} us",
                    f"{r['ratio']:.1f}x",
                ]
            )
    for mode in ("foveated", "dense"):
        train = report.get(f"train_{mode}")
        for name, r in (train or {}).get("variants", {}).items():
            if "error" in r:
                rows.append([f"training ({mode})", name, "failed", r["error"].splitlines()[0]])
                continue
            rows.append(
                [
                    f"training ({mode})",
                    name,
                    f"{r['step_ms']:.1f} ms/step, {_fmt(r['peak_memory_gib'], 2, ' GiB')}, "
                    f"{_fmt(r['host_syncs_per_step'], 0)} host syncs",
                    f"{r['frames_per_s']:,.0f} frames/s, {_fmt(r['achieved_tflops'], 0, ' TFLOP/s')}, "
                    f"MFU {_fmt(_pct(r['mfu']), 1, '%')}",
                ]
            )
    stream = report.get("stream")
    if stream:
        for name, ms in stream["variants"].items():
            rows.append(
                [
                    "streaming",
                    name,
                    "batch 1, encoder + 2 query passes + 2 LLM steps + head",
                    f"{ms:.2f} ms/frame",
                ]
            )
        for name, error in stream.get("errors", {}).items():
            rows.append(["streaming", name, "failed", error.splitlines()[0]])
    loader = report.get("loader")
    if loader:
        rows.append(
            [
                "data loader",
                f"procedural clips + collator, {loader['workers']} workers, pinned memory on GPU runs",
                "frames delivered",
                f"{loader['frames_per_s']:,.0f} frames/s",
            ]
        )
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    env, ceilings, settings = report["environment"], report.get("ceilings", {}), report["settings"]
    size = (
        "tiny config (CPU smoke run)"
        if settings["tiny"]
        else ("DINOv3 ViT-S/16 at 256 px (4 registers) + SmolLM2-135M, random init of the real shapes, bf16")
    )
    lines = [
        "# Benchmarks: foveated (1 token/frame) vs dense baseline (64 tokens/frame)",
        "",
        f"- Device: {env['device']}"
        + (
            f" ({env.get('multiprocessors')} SMs, {env.get('memory_gib', 0):.0f} GiB)"
            if "multiprocessors" in env
            else ""
        ),
        f"- Versions: Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}"
        + (f", CUDA {env['cuda']}" if env.get("cuda") else ""),
        f"- Measured ceilings: bf16 matmul {_fmt(ceilings.get('matmul_tflops'), 0, ' TFLOP/s')} "
        f"({MATMUL_SIZE}^3, random data), device copy {_fmt(ceilings.get('copy_tbps'), 2, ' TB/s')}",
        f"- Model: {size}",
        f"- Command: `{report['command']}`",
        *(
            [
                f"- Sections {', '.join(report['merged']['sections'])} come from an earlier run on the same device: "
                f"`{report['merged']['command']}`"
            ]
            if report.get("merged")
            else []
        ),
        f"- Training batch: {settings['batch_size']} clips x {settings['num_frames']} frames; timings are CUDA-event "
        "medians after warm-up (perf_counter on the CPU). MFU = model FLOPs (3x forward, counted analytically) / "
        "time / measured bf16 matmul peak.",
        "",
        markdown_table(
            ["figure", "ours (foveated)", "dense baseline", "target", "verdict"], summary_rows(report)
        ),
        "",
        "## Every variant measured in this run",
        "",
        markdown_table(["figure", "variant", "detail", "result"], lever_rows(report)),
    ]
    query = report.get("query")
    if query and "ratio_ceiling" in query["floors"]:
        floors = query["floors"]
        lines += [
            "",
            f"Query-pass floors: re-encoding a frame is {floors['encode_flops'] / 1e9:.2f} GFLOP "
            f"(>= {floors['encode_floor_us']:.2f} us at the measured matmul peak); the query pass is "
            f"{floors['query_flops'] / 1e9:.3f} GFLOP but must read the frame's cached K/V, "
            f"{floors['kv_bytes'] / 1e6:.2f} MB (>= {floors['query_floor_us']:.2f} us at the measured bandwidth): "
            f"the ratio cannot exceed ~{floors['ratio_ceiling']:.0f}x with bf16 K/V read from device memory.",
        ]
    stream = report.get("stream")
    if stream:
        errors = ", ".join(f"{k} {v:.1e}" for k, v in stream["agreement_max_relative_error"].items())
        fused = ", ".join(
            f"{k} {v:.1e}" for k, v in stream.get("agreement_fused_max_relative_error", {}).items()
        )
        lines += [
            "",
            f"Fast streaming step (`model.stream(..., max_frames=...)`) vs `FoveatedStream.step` over {CHECK_FRAMES} "
            f"frames, max relative error: unfused {errors}; fused passes {fused or 'n/a'}.",
        ]
    if report.get("errors"):
        lines += ["", "## Sections that failed", ""] + [
            f"- {name}: {error}" for name, error in report["errors"].items()
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny config and counts (CPU smoke run)")
    parser.add_argument("--output", default="BENCHMARKS.md", help="Markdown report")
    parser.add_argument("--json", default=None, help="also write every figure as JSON here")
    parser.add_argument("--profile", default=None, help="directory for torch.profiler tables")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--batch-size", type=int, default=None, help="training clips per step (default 16)")
    parser.add_argument(
        "--merge",
        default=None,
        help="JSON of an earlier run on the same device: fills in the sections not run now",
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    parser.add_argument(
        "--train-variants",
        default="",
        help="comma-separated substrings: run only the training variants whose name contains one (default all)",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    return args


@contextlib.contextmanager
def _section(report: dict[str, Any], name: str, save: Callable[[], None]) -> Iterator[None]:
    """Run one section; a failure is recorded in the report instead of ending the run; save after each."""
    start = time.perf_counter()
    try:
        yield
    except Exception as error:  # noqa: BLE001 - every section must leave a report behind
        report.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"[:ERROR_CHARS]
        traceback.print_exc()
    print(f"[benchmark] {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    save()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected sections; returns the report (also written as Markdown and optional JSON)."""
    device = torch.device(args.device)
    settings = TINY_SETTINGS if args.tiny else Settings()
    settings = replace(
        settings,
        compile=settings.compile and not args.no_compile and device.type == "cuda",
        batch_size=args.batch_size or settings.batch_size,
        train_variants=tuple(part for part in args.train_variants.split(",") if part),
    )
    sections = set(args.sections.split(","))
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    set_recompile_limit(RECOMPILE_LIMIT)
    torch.manual_seed(SEED)
    tokenizer = tiny_tokenizer()
    report: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "eval.benchmark", *args.argv]),
        "environment": environment(device),
        "settings": asdict(settings),
    }

    def save() -> None:
        atomic_write_text(Path(args.output), render_markdown(report))
        if args.json:
            atomic_write_text(Path(args.json), json.dumps(report, indent=2, default=str))

    if args.merge:
        merge_report(report, json.loads(Path(args.merge).read_text()), sections)

    with _section(report, "env", save):
        if "env" in sections:
            report["ceilings"] = measure_ceilings(device)
    peak = (report.get("ceilings") or {}).get("matmul_tflops")
    for mode in ("foveated", "dense"):
        if "train" in sections:
            with _section(report, f"train_{mode}", save):
                report[f"train_{mode}"] = bench_training(mode, tokenizer, settings, device, peak, profile_dir)
    inference_sections = sections & {"query", "stream", "long", "loader"}
    if inference_sections:
        config = benchmark_config(tokenizer, settings.tiny, "foveated")
        processor = tiny_processor(config, tokenizer)
        dtype = BF16 if device.type == "cuda" else torch.float32
        model = build_model(config, device).to(dtype).eval()
        if "query" in sections:
            with _section(report, "query", save):
                report["query"] = bench_query_pass(model, settings, device, report.get("ceilings") or {})
        if "stream" in sections:
            with _section(report, "stream", save):
                report["stream"] = bench_streaming(model, processor, settings, device, profile_dir)
        if "long" in sections:
            with _section(report, "long", save):
                dense_processor = tiny_processor(
                    benchmark_config(tokenizer, settings.tiny, "dense"), tokenizer
                )
                report["long"] = bench_long_video(model, processor, dense_processor, settings, device)
        del model
        free_memory(device)
        if "loader" in sections:
            with _section(report, "loader", save):
                report["loader"] = bench_loader(processor, settings, device)
    save()
    print(render_markdown(report))
    return report


SECTION_KEYS = {
    "env": ("ceilings",),
    "train": ("train_foveated", "train_dense"),
    "query": ("query",),
    "stream": ("stream",),
    "long": ("long",),
    "loader": ("loader",),
}


def merge_report(report: dict[str, Any], earlier: dict[str, Any], sections: set[str]) -> None:
    """Fill the sections this run skips from an earlier run's JSON, which must come from the same device."""
    if earlier["environment"].get("device") != report["environment"].get("device"):
        raise ValueError(
            f"--merge report comes from {earlier['environment'].get('device')!r}, this run from "
            f"{report['environment'].get('device')!r}: merge only runs of the same device"
        )
    skipped = [key for section, keys in SECTION_KEYS.items() if section not in sections for key in keys]
    taken = [key for key in skipped if earlier.get(key)]
    for key in taken:
        report[key] = earlier[key]
    report["merged"] = {"command": earlier["command"], "sections": taken}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
