"""Section ``train``: frames/s, MFU and peak memory of the trainer's step, ours and dense, every lever on and off.

Every variant runs the trainer's own step, :class:`~foveated_vlm.training.step.TrainStep`, with the trainer's
optimizer (:func:`~foveated_vlm.training.modeling.build_optimizer`: parameter groups, fused or foreach AdamW,
capturable under a CUDA graph) and Accelerator (:func:`~foveated_vlm.training.trainer.make_accelerator`, which
also sets the autocast), all from the variant's ``train`` settings (:meth:`TrainVariant.train_section`).
"""

from __future__ import annotations

import itertools
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BatchFeature

from acceleration_foveated import GRAPH_WARMUP_RUNS
from foveated_vlm.tiny import tiny_processor
from foveated_vlm.training.config import TrainingConfig, config_from_dict
from foveated_vlm.training.modeling import build_optimizer, set_encoder_trainable
from foveated_vlm.training.speed import compile_regions
from foveated_vlm.training.step import LOSS_KEYS, TrainStep
from foveated_vlm.training.trainer import make_accelerator

from .flops import training_step_flops
from .settings import BF16, ERROR_CHARS, Settings
from .timing import free_memory, host_sync_sites, median, peak_gib, time_calls, write_profile
from .workload import benchmark_config, build_model, make_batch, text_tokens_per_clip

LEARNING_RATE = 1.0e-5
CLIP_GRAD_NORM = 1.0


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

    @property
    def trainer_supported(self) -> bool:
        """Whether ``train_accelerate.py`` runs this lever set (its batches carry a layout, it keeps one logit)."""
        return (
            self.headline
            and self.video_layout
            and self.logits_to_keep == 1
            and self.compile_mode != "reduce-overhead"
        )

    def train_section(self, device: torch.device) -> dict[str, Any]:
        """The trainer's ``train`` settings of these levers (bf16 autocast is the GPU recipe: off on the CPU)."""
        autocast = device.type == "cuda" and not self.pure_bf16
        return {
            "mixed_precision": "bf16" if autocast else "no",
            "fused_adamw": self.fused_adamw,
            "cuda_graph": self.cuda_graph,
            "compile": self.compile_mode is not None,
            "freeze_encoder": self.frozen_encoder,
        }


def train_variants(settings: Settings, device: torch.device) -> list[TrainVariant]:
    """The lever ladder, from what the trainer did first to every lever on (GPU-only levers skipped on CPU)."""
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


def trainer_variant(settings: Settings, device: torch.device) -> TrainVariant:
    """The fastest lever set the trainer supports: the last of the whole ladder it can run."""
    ladder = train_variants(replace(settings, train_variants=()), device)
    return [variant for variant in ladder if variant.trainer_supported][-1]


def step_config(variant: TrainVariant, device: torch.device) -> TrainingConfig:
    """The training config of a variant's step: its levers, one learning rate, gradient clipping, no tracker."""
    rates = {name: LEARNING_RATE for name in ("lr_new", "lr_encoder", "lr_llm")}
    train = {**rates, **variant.train_section(device), "clip_grad": CLIP_GRAD_NORM, "report_to": None}
    return config_from_dict({"train": train})


class Prepared(nn.Module):
    """A fresh module around the measured model for each variant: Accelerate prepares a module only once (its
    autocast wrapper, of that variant's settings, then stays), while every variant prepares its own."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **inputs):
        return self.model(**inputs)


class VariantStep:
    """The trainer's step for ``variant`` on one fixed batch: each call is one optimizer step of ``model``.

    ``model`` is already on ``device``, compiled and frozen as the variant asks; it is prepared (autocast) through
    a :class:`Prepared` module of its own, so the next variant prepares the same model afresh.
    """

    def __init__(
        self, model, batch: BatchFeature, variant: TrainVariant, settings: Settings, device: torch.device
    ):
        config = step_config(variant, device)
        self.accelerator = make_accelerator(config)
        optimizer = build_optimizer(model, config)
        self.model = model
        prepared, optimizer = self.accelerator.prepare(
            Prepared(model), optimizer, device_placement=[False, False]
        )
        self.step = TrainStep(
            prepared,
            optimizer,
            self.accelerator,
            device,
            clip_grad=config.train.clip_grad,
            logits_to_keep=variant.logits_to_keep,
            cuda_graph=variant.cuda_graph,
            region_graphs=variant.compile_mode == "reduce-overhead",
        )
        if not variant.video_layout:
            batch = BatchFeature({name: value for name, value in batch.items() if name != "video_layout"})
        self.batches = itertools.repeat(batch)
        self.losses = torch.zeros(len(LOSS_KEYS), device=device)

    def __call__(self) -> None:
        self.step(self.batches, self.losses)

    def loss(self) -> float:
        """The loss of one more step, read back."""
        self.losses.zero_()
        self()
        return float(self.losses[0])

    def close(self) -> None:
        self.model.zero_grad(set_to_none=True)


def bench_training(
    mode: str,
    tokenizer,
    settings: Settings,
    device: torch.device,
    peak_tflops: float | None,
    profile_dir: Path | None,
    variants: list[TrainVariant] | None = None,
) -> dict[str, Any]:
    """Frames/s, step time, MFU and peak memory of every training variant of ``mode`` (or of ``variants``)."""
    config = benchmark_config(tokenizer, settings.tiny, mode)
    batch = make_batch(tiny_processor(config, tokenizer), settings, device)
    model = build_model(config, device).train()
    results: dict[str, Any] = {
        "frames_per_step": int(batch["video_frame_mask"].sum()),
        "text_tokens_per_clip": text_tokens_per_clip(batch, config.tokens_per_frame),
        "sequence_length": int(batch["input_ids"].shape[1]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "variants": {},
    }
    variants = variants or train_variants(settings, device)
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
                _profile_variant(
                    model, batch, variant, settings, device, profile_dir / f"profile_train_{mode}.txt"
                )
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
    return max(settings.train_warmup, GRAPH_WARMUP_RUNS + 1) if variant.cuda_graph else settings.train_warmup


def _run_train_variant(model, batch, variant, config, settings, device, peak_tflops) -> dict[str, Any]:
    free_memory(device)
    step = VariantStep(model, batch, variant, settings, device)
    try:
        times = time_calls(step, device, _warmup_steps(variant, settings), settings.train_repeats)
        syncs = host_sync_sites(step, device)
        loss = step.loss()  # read back once, after timing
    finally:
        step.close()
    step_ms = median(times)
    frames = int(batch["video_frame_mask"].sum())
    # the analytic count is that of a fully trainable step: a frozen encoder skips part of it, so no FLOP rate
    flops = None if variant.frozen_encoder else training_step_flops(config, batch, variant.logits_to_keep)
    achieved = None if flops is None else flops / (step_ms / 1000) / 1e12
    return {
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


def _profile_variant(model, batch, variant, settings, device, path: Path) -> None:
    """The profiler table of a fresh step of ``variant`` (new optimizer and graph), after its warm-up."""
    step = VariantStep(model, batch, variant, settings, device)
    try:
        for _ in range(_warmup_steps(variant, settings)):
            step()
        write_profile(step, device, path)
    finally:
        step.close()
