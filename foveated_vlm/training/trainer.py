"""The training loop behind ``accelerate launch train_accelerate.py``.

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` clips on every process. Losses are
accumulated on the device and read back (``.item()``) only every ``log_every`` steps. Every ``eval_every``
steps the validation split is read once (sharded across processes) for loss_fine, loss_coarse, their ratio,
loss_caption and the attention entropies; every ``save_every`` steps (and at the end) a resumable checkpoint
is written. A resumed run restores model, optimizer, scheduler, RNG and data position and continues with
the very losses an uninterrupted run would have logged.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from encoder_foveated import attention_entropy
from foveated_vlm.files import atomic_write_text, replace_directory
from modeling_foveated import FoveatedVLMForConditionalGeneration

from ..data.collate import VideoCaptionCollator
from ..metrics import attention_mass_in_box, scored_frames_mask
from .checkpoint import read_trainer_state, resolve_resume, save_checkpoint
from .config import TrainingConfig, flat_config
from .data import build_datasets, eval_loader, train_loader
from .figures import plot_loss_curve
from .hub import push_to_hub, write_model_card
from .modeling import (
    build_model_and_processor,
    build_optimizer,
    build_scheduler,
    export_model,
    freeze_unused_parameters,
    prepare_for_training,
    record_trained_frames,
)
from .speed import compile_regions
from .step import LOSS_KEYS, TrainStep

logger = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "training_config.yaml"
FINAL_DIR = "final"
TRACKER_PROJECT = "tensorboard"
VALIDATION_KEYS = (
    "loss",
    "loss_fine",
    "loss_coarse",
    "loss_caption",
    "attention_entropy_fine",
    "attention_entropy_coarse",
    "mass_in_box_fine",
    "mass_in_box_coarse",
)


class JsonlLog:
    """``log.jsonl`` of a run, written by the main process; a resumed run drops rows after its step."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path = path
        self.enabled = enabled
        if enabled and resume_step is not None and path.is_file():
            with open(path, encoding="utf-8") as handle:
                kept = [line for line in handle if line.strip() and json.loads(line)["step"] <= resume_step]
            atomic_write_text(path, "".join(kept))
        elif enabled:
            atomic_write_text(path, "")

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


def make_accelerator(config: TrainingConfig):
    """The ``Accelerator`` for this run (precision, trackers, DDP settings).

    Accelerate keeps its settings in a process-wide singleton; they are cleared first (the process group is
    kept) so that ``train_accelerate.main`` can run several configs, e.g. different precisions, in one process.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import AutocastKwargs, DistributedDataParallelKwargs

    AcceleratorState._reset_state(reset_partial_state=False)
    report_to = config.train.report_to
    return Accelerator(
        cpu=not torch.cuda.is_available(),  # several CPU processes (torchrun without GPUs) form a gloo group
        mixed_precision=config.train.mixed_precision,
        log_with=report_to if report_to not in (None, "none", []) else None,
        project_dir=config.output_dir,
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=config.train.ddp_find_unused_parameters),
            # CUDA graph capture cannot keep autocast's cache of cast weights across the captured region
            AutocastKwargs(cache_enabled=not config.train.cuda_graph),
        ],
    )


@torch.no_grad()
def validate(model, loader, accelerator, max_batches: int | None) -> dict[str, float]:
    """Mean validation figures over this process's share of the split, reduced over processes.

    ``model`` is the unwrapped model: a DDP forward would synchronise buffers with its peers. Every process runs
    the same number of forwards (a process with a shorter share repeats its last batch with weight 0), since a
    forward of an FSDP-sharded model gathers weights from all processes.

    Returns loss, loss_fine, loss_coarse, loss_caption, ratio_coarse_fine (loss_coarse / loss_fine, > 1 when
    the predicted queries help), the mean attention entropy (nats, of the full distribution) of the fine and
    coarse reads and, on procedural data (batches with ``attention_targets``), their attention mass inside the
    target's box.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(VALIDATION_KEYS) + 1, device=accelerator.device)
    for batch, weight in _padded_batches(loader, accelerator, max_batches):
        batch = batch.to(accelerator.device)
        with accelerator.autocast():
            output = model(**batch)
        size = batch["input_ids"].shape[0] * weight
        values = [getattr(output, key) for key in VALIDATION_KEYS[:4]]
        reads = [
            (output.attention_fine, output.attention_prefix_fine),
            (output.attention_coarse, output.attention_prefix_coarse),
        ]
        values += [
            attention_entropy(attention.float(), prefix).mean() if attention is not None else None
            for attention, prefix in reads
        ]
        values += [_mass_in_box(attention, batch) for attention, _ in reads]
        sums += size * torch.stack(
            [
                value.float()
                if value is not None
                else torch.full((), float("nan"), device=accelerator.device)
                for value in values
            ]
            + [torch.ones((), device=accelerator.device)]
        )
    model.train(was_training)
    totals = accelerator.reduce(sums, reduction="sum").tolist()
    count = max(totals[-1], 1.0)
    figures = {key: totals[i] / count for i, key in enumerate(VALIDATION_KEYS)}
    figures["ratio_coarse_fine"] = (
        figures["loss_coarse"] / figures["loss_fine"] if figures["loss_fine"] else None
    )
    return {key: (None if value != value else value) for key, value in figures.items()}


def _padded_batches(loader, accelerator, max_batches: int | None):
    """``(batch, weight)`` pairs: this process's batches (weight 1), then its last batch again (weight 0) until
    every process has yielded as many as the longest share."""
    mine = len(loader) if max_batches is None else min(len(loader), max_batches)
    longest = int(accelerator.gather(torch.tensor([mine], device=accelerator.device)).max())
    if mine == 0 and longest > 0:
        raise ValueError(
            f"validation: process {accelerator.process_index} got no clip; use at least as many validation "
            f"clips as processes ({accelerator.num_processes})"
        )
    batch = None
    for _, batch in zip(range(mine), loader):
        yield batch, 1
    for _ in range(longest - mine):
        yield batch, 0


def _mass_in_box(attention: torch.Tensor | None, batch) -> torch.Tensor | None:
    """Mean attention mass ``[]`` inside the target's box over frames 2..T where it is in view (as eval.probes)."""
    if attention is None or "attention_targets" not in batch:
        return None
    coverage = batch["attention_targets"][batch["video_frame_mask"].bool()]  # (N, P)
    in_view = (coverage.sum(-1) > 0) & scored_frames_mask(batch["video_frame_mask"])  # (N,)
    return attention_mass_in_box(attention.float()[in_view], coverage[in_view]).mean()


def _learning_rates(optimizer) -> dict[str, float]:
    """Current learning rate of each parameter group family (``lr_new``, ``lr_encoder``, ``lr_llm``)."""
    rates = {}
    for group in optimizer.param_groups:
        rates.setdefault(f"lr_{group['name'].removesuffix('_no_decay')}", float(group["lr"]))
    return rates


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    """Drop NaN/None figures (terms the model does not compute) before logging."""
    return {key: value for key, value in values.items() if value is not None and value == value}


@dataclass
class _Run:
    """Everything the loop of one run holds."""

    config: TrainingConfig
    accelerator: Any
    model: Any
    processor: Any
    optimizer: Any
    scheduler: Any
    datasets: dict[str, Any]
    log: JsonlLog
    start_step: int
    samples_per_step: int
    step: TrainStep | None = None

    @property
    def train(self):
        return self.config.train


def _setup(config: TrainingConfig, resume: str | None) -> _Run:
    """Accelerator, model, data, optimizer and schedule; restores a checkpoint when resuming."""
    from accelerate.utils import set_seed

    train = config.train
    if train.torch_threads:
        torch.set_num_threads(train.torch_threads)
    output_dir = Path(config.output_dir)
    accelerator = make_accelerator(config)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / CONFIG_NAME, yaml.safe_dump(config.to_dict(), sort_keys=False))
    set_seed(train.seed)
    model, processor = build_model_and_processor(config)
    datasets = build_datasets(config, processor, model.config, accelerator)
    model = prepare_for_training(model, config)
    model.train()
    _check_distributed(config, accelerator)
    if _is_fsdp(accelerator):
        freeze_unused_parameters(model)
    model.to(accelerator.device)  # before the optimizer: fused AdamW needs its parameters on the GPU
    if train.compile:
        compile_regions(model)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    samples_per_step = train.batch_size * train.grad_accum * accelerator.num_processes
    checkpoint = resolve_resume(resume, output_dir)
    start_step = 0
    if checkpoint is not None:
        saved = read_trainer_state(checkpoint)
        _check_resumable(checkpoint, saved, samples_per_step)
        accelerator.load_state(str(checkpoint))
        start_step = saved["step"]
        logger.info("resumed from %s at step %d", checkpoint, start_step)
    log = JsonlLog(output_dir / LOG_NAME, accelerator.is_main_process, start_step if checkpoint else None)
    if accelerator.log_with:
        accelerator.init_trackers(TRACKER_PROJECT, config=flat_config(config))
    run = _Run(
        config,
        accelerator,
        model,
        processor,
        optimizer,
        scheduler,
        datasets,
        log,
        start_step,
        samples_per_step,
    )
    run.step = TrainStep(
        model,
        optimizer,
        accelerator,
        accelerator.device,
        clip_grad=train.clip_grad,
        grad_accum=train.grad_accum,
        cuda_graph=train.cuda_graph,
    )
    return run


def _check_distributed(config: TrainingConfig, accelerator) -> None:
    """Refuse the combinations of speed levers and distributed modes that cannot work (docs/distributed.md)."""
    if config.train.cuda_graph and accelerator.device.type != "cuda":
        raise ValueError(
            f"train.cuda_graph needs one CUDA process, got {accelerator.num_processes} process(es) on "
            f"{accelerator.device.type}"
        )
    if config.train.cuda_graph and accelerator.num_processes != 1:
        raise ValueError(
            f"train.cuda_graph captures one process's whole step and cannot run on {accelerator.num_processes} "
            "processes: DDP's gradient all-reduce is launched by host-side bucket hooks that a replayed graph "
            "skips, and FSDP gathers and frees weights between layers; use train.compile (regional compile "
            "works under DDP and FSDP) and see docs/distributed.md"
        )
    if _is_fsdp(accelerator) and config.train.lora.enabled:
        raise ValueError(
            "train.lora with FSDP: merging the adapters for OUTPUT/final needs the unsharded weights; "
            "LoRA trains few parameters, so launch it with DDP (configs/accelerate/ddp.yaml) instead"
        )


def _is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _check_resumable(checkpoint: Path, saved: dict[str, Any], samples_per_step: int) -> None:
    """A checkpoint resumes on any number of processes, but only at the global batch it was trained with."""
    if saved["samples_per_step"] != samples_per_step:
        raise ValueError(
            f"--resume {checkpoint}: it was trained with {saved['samples_per_step']} samples per optimizer "
            f"step and this run has {samples_per_step} (train.batch_size x train.grad_accum x processes); "
            "the data position and the schedule are counted in steps, so keep the global batch"
        )


def _loaders(run: _Run):
    """The infinite training loader (positioned at the resume step) and the validation loader."""
    accelerator, train = run.accelerator, run.train
    procedural = run.config.data.kind == "procedural"
    patch_size = (
        run.accelerator.unwrap_model(run.model).config.vision_config.patch_size if procedural else None
    )
    collator = VideoCaptionCollator(
        run.processor, attention_patch_size=patch_size, caption_bucket=run.train.caption_bucket
    )
    training = train_loader(
        run.datasets["train"],
        collator,
        train.batch_size,
        accelerator.num_processes,
        accelerator.process_index,
        train.seed,
        run.start_step * train.grad_accum,
        train.num_workers,
    )
    validation = eval_loader(
        run.datasets["validation"],
        collator,
        run.config.eval.batch_size,
        accelerator.num_processes,
        accelerator.process_index,
        train.num_workers,
    )
    return training, validation


@dataclass
class _Window:
    """The steps since the last train row: their start time, count and valid frames (this process's); and the
    most frames of a clip in any batch of the run so far (never reset)."""

    start: float
    steps: int = 0
    frames: int = 0
    longest_clip: int = 0


def _counting_frames(batches: Iterator[Any], window: _Window) -> Iterator[Any]:
    """The loader's batches, each adding its valid frames to ``window`` (a sum over a CPU tensor: no device sync)
    and raising its longest clip (the padded frame count, a shape)."""
    for batch in batches:
        window.frames += int(batch["video_frame_mask"].sum())
        window.longest_clip = max(window.longest_clip, batch["video_frame_mask"].shape[1])
        yield batch


def _log_train(
    run: _Run, step: int, running: torch.Tensor, window: _Window, started: float
) -> dict[str, float]:
    """Read the running losses and the frame count back (the loop's only host syncs), log them; returns the
    losses' means.

    ``samples_per_second`` and ``frames_per_second`` (valid frames, all processes) cover the steps since the
    previous train row, without the validation and checkpoint saving between them; the first row also holds the
    start-up (compilation, CUDA graph warm-up and capture), later rows of static batch shapes are steady state.
    """
    micro_batches = window.steps * run.train.grad_accum
    means = (run.accelerator.reduce(running, reduction="mean") / micro_batches).tolist()
    frames = torch.tensor(float(window.frames), device=run.accelerator.device)
    frames = run.accelerator.reduce(frames, reduction="sum").item()
    now = time.perf_counter()
    seconds = max(now - window.start, 1e-9)
    figures = _clean(dict(zip(LOSS_KEYS, means, strict=True)))
    row = {
        "step": step,
        "split": "train",
        **figures,
        **_learning_rates(run.optimizer),
        "samples": step * run.samples_per_step,
        "samples_per_second": window.steps * run.samples_per_step / seconds,
        "frames_per_second": frames / seconds,
        "elapsed_seconds": now - started,
    }
    run.log.write(row)
    run.accelerator.log({f"train/{k}": v for k, v in row.items() if k not in ("step", "split")}, step=step)
    return figures


def _log_validation(run: _Run, step: int, loader, progress) -> dict[str, float]:
    figures = _clean(
        validate(
            run.accelerator.unwrap_model(run.model),
            loader,
            run.accelerator,
            run.config.eval.num_validation_batches,
        )
    )
    run.log.write({"step": step, "split": "validation", **figures})
    run.accelerator.log({f"validation/{k}": v for k, v in figures.items()}, step=step)
    if run.accelerator.is_main_process:
        progress.write(f"step {step} validation: " + ", ".join(f"{k}={v:.4f}" for k, v in figures.items()))
    return figures


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def run_training(
    config: TrainingConfig,
    resume: str | None = None,
    push_to_hub_repo: str | None = None,
    hub_local_dir: str | None = None,
) -> dict[str, Any]:
    """Train as configured; returns the final metrics (also written to ``OUTPUT/metrics.json``)."""
    from tqdm.auto import tqdm

    run = _setup(config, resume)
    train, accelerator = run.train, run.accelerator
    training, validation = _loaders(run)
    started = time.perf_counter()
    window = _Window(started)
    batches = _counting_frames(iter(training), window)
    state = {
        "config": config.to_dict(),
        "samples_per_step": run.samples_per_step,
        "num_processes": accelerator.num_processes,
    }
    running = torch.zeros(len(LOSS_KEYS), device=accelerator.device)
    last_train: dict[str, float] = {}
    last_validation: dict[str, float] = {}
    progress = tqdm(
        total=train.max_steps,
        initial=run.start_step,
        disable=not accelerator.is_main_process,
        desc="training",
        mininterval=1.0,
    )
    for step in range(run.start_step + 1, train.max_steps + 1):
        run.step(batches, running)
        run.scheduler.step()
        window.steps += 1
        progress.update(1)
        logged = _due(step, train.log_every, train.max_steps)
        if logged:
            last_train = _log_train(run, step, running, window, started)
            progress.set_postfix({k.removeprefix("loss_"): f"{v:.4f}" for k, v in last_train.items()})
            running.zero_()
        if _due(step, train.eval_every, train.max_steps):
            last_validation = _log_validation(run, step, validation, progress)
        if _due(step, train.save_every, train.max_steps):
            save_checkpoint(accelerator, config.output_dir, step, state, train.keep_checkpoints)
        if logged:  # the next window starts after this step's validation and checkpoint
            window.start, window.steps, window.frames = time.perf_counter(), 0, 0
    progress.close()
    metrics = {
        "step": max(run.start_step, train.max_steps),
        "train": last_train,
        "validation": last_validation,
        "wall_seconds": time.perf_counter() - started,
        "num_processes": accelerator.num_processes,
        "samples_per_step": run.samples_per_step,
        "num_train_clips": len(run.datasets["train"]),
        "num_validation_clips": len(run.datasets["validation"]),
    }
    record_trained_frames(run.processor, window.longest_clip)
    final_dir = save_final(accelerator, run.model, run.processor, config, metrics, push_to_hub_repo)
    if accelerator.is_main_process:
        if push_to_hub_repo:
            metrics["hub"] = push_to_hub(final_dir, push_to_hub_repo, hub_local_dir)
        atomic_write_text(Path(config.output_dir) / METRICS_NAME, json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def save_final(
    accelerator, model, processor, config: TrainingConfig, metrics: dict[str, Any], repo_id: str | None = None
) -> Path:
    """Write ``OUTPUT/final``: the Hub-loadable model (LoRA merged), processor, loss curve and model card."""
    output_dir = Path(config.output_dir)
    final_dir = output_dir / FINAL_DIR
    exported = _exportable_model(accelerator, model)
    if accelerator.is_main_process:
        temporary = output_dir / f".{FINAL_DIR}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        exported.save_pretrained(temporary)
        processor.save_pretrained(temporary)
        log_path = output_dir / LOG_NAME
        if log_path.is_file() and log_path.stat().st_size:
            plot_loss_curve(log_path, temporary / "loss_curve.png")
        write_model_card(temporary, config, metrics, repo_id)
        replace_directory(temporary, final_dir)
    accelerator.wait_for_everyone()
    return final_dir


def _exportable_model(accelerator, model) -> FoveatedVLMForConditionalGeneration | None:
    """The plain model to save on the main process (None elsewhere); every process must call this.

    Under FSDP the weights are sharded across processes: they are gathered into one full state dict on the
    main process (a collective) and loaded into a fresh, unsharded model, so that ``save_pretrained`` writes
    the ordinary Hub layout (the sharded module's class is FSDP's, not ours). Otherwise the unwrapped model,
    LoRA merged.
    """
    if not _is_fsdp(accelerator):
        return export_model(accelerator.unwrap_model(model)) if accelerator.is_main_process else None
    state_dict = accelerator.get_state_dict(model)  # full, on the main process's CPU; empty elsewhere
    if not accelerator.is_main_process:
        return None
    plain = FoveatedVLMForConditionalGeneration(accelerator.unwrap_model(model).config)
    plain.load_state_dict(state_dict)
    return plain


__all__ = ["JsonlLog", "run_training", "save_final", "validate"]
