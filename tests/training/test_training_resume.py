"""Kill-and-resume: a run killed after a checkpoint and resumed with ``--resume latest`` logs the very losses of
an uninterrupted run (model, optimizer, scheduler, RNG and data position restored); checkpoints are atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import train_accelerate
from foveated_vlm.training import trainer
from foveated_vlm.training.checkpoint import list_checkpoints, resolve_resume

# Dropout in the prediction head's input and LoRA dropout make the run depend on the RNG state too.
ARGS = [
    "--config",
    "configs/smoke.yaml",
    "--max_steps",
    "6",
    "--set",
    "train.save_every=3",
    "--set",
    "train.eval_every=3",
    "--set",
    "train.log_every=1",
    "--set",
    "train.report_to=null",
    "--set",
    "model.previous_target_dropout=0.3",
    "--set",
    "train.lora.enabled=true",
    "--set",
    "train.lora.dropout=0.2",
    "--set",
    "train.lora.r=4",
]
KILL_AFTER_STEP = 5


class Killed(Exception):
    """Stands for the process dying (SIGKILL): nothing after it runs."""


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _losses(rows: list[dict]) -> list[tuple]:
    keys = ("loss", "loss_fine", "loss_coarse", "loss_caption")
    return [(row["step"], row["split"], *(row.get(k) for k in keys)) for row in rows]


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, monkeypatch):
    full = tmp_path / "full"
    train_accelerate.main([*ARGS, "--output_dir", str(full)])

    killed = tmp_path / "killed"
    original_write = trainer.JsonlLog.write

    def write_then_die(self, row):
        original_write(self, row)
        if row["step"] == KILL_AFTER_STEP and row["split"] == "train":
            raise Killed

    monkeypatch.setattr(trainer.JsonlLog, "write", write_then_die)
    with pytest.raises(Killed):
        train_accelerate.main([*ARGS, "--output_dir", str(killed)])
    monkeypatch.setattr(trainer.JsonlLog, "write", original_write)
    assert [step for step, _ in list_checkpoints(killed)] == [3]
    assert max(row["step"] for row in _rows(killed)) == KILL_AFTER_STEP

    metrics = train_accelerate.main([*ARGS, "--output_dir", str(killed), "--resume", "latest"])
    assert metrics["step"] == 6
    assert _losses(_rows(killed)) == _losses(_rows(full)), "resumed losses differ from the uninterrupted run"
    assert [step for step, _ in list_checkpoints(killed)] == [3, 6]


def test_resume_latest_without_checkpoints_starts_fresh(tmp_path):
    assert resolve_resume("latest", tmp_path) is None
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        resolve_resume(str(tmp_path), tmp_path)


def test_interrupted_save_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    """A save that dies midway leaves only a hidden temporary folder; 'latest' still finds the previous one."""
    from accelerate import Accelerator

    run = tmp_path / "run"
    original = Accelerator.save_state
    calls = {"count": 0}

    def save_then_die(self, output_dir=None, **kwargs):
        calls["count"] += 1
        if calls["count"] == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            Path(output_dir, "model.safetensors").write_bytes(b"partial")
            raise Killed
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_then_die)
    with pytest.raises(Killed):
        train_accelerate.main([*ARGS, "--output_dir", str(run)])
    assert [step for step, _ in list_checkpoints(run)] == [3]
    assert resolve_resume("latest", run).name == "step-3"
    assert not (run / "checkpoints" / "step-6").exists()
