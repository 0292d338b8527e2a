"""Section ``trainer``: ``train_accelerate.py`` end to end, its steady-state frames/s beside its step's.

The trainer runs as a subprocess, ``python train_accelerate.py --config configs/benchmark_trainer.yaml --set ...``:
the benchmark's model (full size: :func:`foveated_vlm.tiny.full_size_config`, ``model.size: full_random``; the
tiny config with ``--tiny``), procedural clips through the trainer's own data loader (the loader section's
workers), the batch and frames of the step, and the fastest levers the trainer supports
(:func:`~.training.trainer_variant`: regional compile + whole-step CUDA graph on one CUDA device). It trains
``trainer_log_every * (trainer_windows + 1)`` steps and logs one row per ``trainer_log_every`` steps; the first
window holds compilation and the CUDA graph warm-up and capture, so the trainer's figure is the median of the
later windows' ``frames_per_second`` (its ``log.jsonl``). The step's figure is that lever set's
``frames_per_s`` in the ``train`` section (measured here when that section did not run).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from configuration_foveated import FoveatedVLMConfig
from foveated_vlm.training.figures import read_log
from foveated_vlm.training.trainer import LOG_NAME

from .settings import SEED, Settings
from .timing import median
from .training import TrainVariant, bench_training, trainer_variant

REPOSITORY = Path(__file__).resolve().parents[2]
TRAINER_SCRIPT = "train_accelerate.py"
TRAINER_CONFIG = "configs/benchmark_trainer.yaml"
TRAINER_TIMEOUT_S = 1800  # the full-size run: compilation, capture, the steps, validation and saving
OUTPUT_PLACEHOLDER = "OUT"  # the run folder, as the reported command shows it
ERROR_TAIL_CHARS = 2000  # of a failed trainer's stderr kept in the error


def trainer_overrides(
    variant: TrainVariant, settings: Settings, device: torch.device, image_size: int
) -> list[str]:
    """``--set`` assignments of the trainer run: the step's levers, batch, frames and frame size; the window."""
    steps = settings.trainer_log_every * (settings.trainer_windows + 1)
    values = {
        "model.size": "tiny" if settings.tiny else "full_random",
        "data.image_size": image_size,
        "data.num_frames": settings.num_frames,
        "data.num_clips": {
            "train": steps * settings.batch_size,
            "validation": settings.batch_size,
            "heldout": settings.batch_size,
        },
        **{f"train.{key}": value for key, value in variant.train_section(device).items()},
        "train.batch_size": settings.batch_size,
        "train.max_steps": steps,
        "train.log_every": settings.trainer_log_every,
        "train.eval_every": steps,
        "train.save_every": steps,
        "train.num_workers": settings.loader_workers,
        "train.seed": SEED,
        "train.torch_threads": torch.get_num_threads(),  # the step's threads (CPU runs: they set the speed)
        "eval.batch_size": settings.batch_size,
    }
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]  # JSON is YAML


def trainer_command(overrides: list[str], output_dir: str) -> list[str]:
    """The ``train_accelerate.py`` command line (without the interpreter)."""
    command = [TRAINER_SCRIPT, "--config", TRAINER_CONFIG, "--output_dir", output_dir]
    for assignment in overrides:
        command += ["--set", assignment]
    return command


def window_frames_per_s(log_path: Path) -> list[float]:
    """``frames_per_second`` of every train row of a trainer's ``log.jsonl``, in step order."""
    return [row["frames_per_second"] for row in read_log(log_path) if row["split"] == "train"]


def run_trainer(overrides: list[str], device: torch.device) -> tuple[list[float], float]:
    """Run the trainer in a fresh process; returns its windows' frames/s and its wall time in seconds."""
    environment = dict(os.environ)
    if device.type != "cuda":
        environment["CUDA_VISIBLE_DEVICES"] = ""  # a CPU benchmark's trainer runs on the CPU too
    with tempfile.TemporaryDirectory() as output_dir:
        command = [sys.executable, *trainer_command(overrides, output_dir)]
        start = time.perf_counter()
        finished = subprocess.run(
            command,
            cwd=REPOSITORY,
            env=environment,
            capture_output=True,
            text=True,
            timeout=TRAINER_TIMEOUT_S,
        )
        seconds = time.perf_counter() - start
        if finished.returncode != 0:
            raise RuntimeError(
                f"{TRAINER_SCRIPT} exited with {finished.returncode}: {finished.stderr[-ERROR_TAIL_CHARS:]}"
            )
        return window_frames_per_s(Path(output_dir) / LOG_NAME), seconds


def bench_trainer(
    report: dict[str, Any], tokenizer, settings: Settings, device: torch.device, config: FoveatedVLMConfig
) -> dict[str, Any]:
    """The trainer's steady-state frames/s, the step's at the same levers, batch and frames, and their ratio."""
    variant = trainer_variant(settings, device)
    overrides = trainer_overrides(variant, settings, device, config.vision_config.image_size)
    windows, seconds = run_trainer(overrides, device)
    if len(windows) < 2:
        raise ValueError(
            f"the trainer logged {len(windows)} window(s): no steady-state window after the first"
        )
    step = (report.get("train_foveated") or {}).get("variants", {}).get(variant.name)
    measured_here = step is None or "error" in step
    if measured_here:
        step = bench_training("foveated", tokenizer, settings, device, None, None, [variant])["variants"][
            variant.name
        ]
    frames_per_s = median(windows[1:])
    return {
        "command": shlex.join(["python", *trainer_command(overrides, OUTPUT_PLACEHOLDER)]),
        "variant": variant.name,
        "levers": variant.train_section(device),
        "batch_size": settings.batch_size,
        "num_frames": settings.num_frames,
        "steps": settings.trainer_log_every * (settings.trainer_windows + 1),
        "log_every": settings.trainer_log_every,
        "first_window_frames_per_s": windows[0],
        "window_frames_per_s": windows[1:],
        "frames_per_s": frames_per_s,
        "step_frames_per_s": step["frames_per_s"],
        "step_measured_here": measured_here,
        "ratio": frames_per_s / step["frames_per_s"],
        "wall_seconds": seconds,
    }
