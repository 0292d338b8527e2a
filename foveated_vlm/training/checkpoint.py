"""Resumable checkpoints: ``OUTPUT/checkpoints/step-N/``, written atomically.

A checkpoint holds what ``accelerator.save_state`` writes (model, optimizer, registered scheduler, every
process's RNG states) plus ``trainer_state.json`` (the step, hence the data position, and the config). It is
written into a hidden ``.tmp-step-N`` folder and renamed into place by the main process only when complete, so
a run killed while saving leaves the previous checkpoints intact and no half-written ``step-N``. The main
process writes everything but the other processes' RNG states (``random_states_R.pkl``, which only process R
has); every process returns once the checkpoint is in place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from foveated_vlm.files import atomic_write_text, replace_directory

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"
STEP_PATTERN = re.compile(r"^step-(\d+)$")
LATEST = "latest"
TIED_HEAD_NOTICE = re.compile(r"Removed shared tensor \{'[\w.]*lm_head\.weight'\} while saving")


class _TiedHeadNotice(logging.Filter):
    """Drops accelerate's warning that it left the tied LM head out of ``model.safetensors``.

    The head shares the input embedding's storage (``tie_word_embeddings``) and is tied again when the state is
    loaded (the resume tests check it), so the warning asks the user to check something that is fine.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not TIED_HEAD_NOTICE.search(record.getMessage())


logging.getLogger("accelerate.utils.other").addFilter(_TiedHeadNotice())


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)`` in step order (folders with a trainer state)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_PATTERN.match(path.name)
        if match and (path / STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder to resume from: a path, or ``"latest"`` (None when there is none yet)."""
    if resume is None:
        return None
    if resume == LATEST:
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(resume)
    if not (path / STATE_NAME).is_file():
        raise ValueError(f"--resume {resume}: not a checkpoint folder (no {STATE_NAME})")
    return path


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_NAME).read_text(encoding="utf-8"))


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, step: int, state: dict[str, Any], keep: int
) -> Path:
    """Save the full training state at ``step`` (all processes call this); returns the checkpoint folder."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step}"
    temporary = root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)  # by the main process: the others only write their RNG state into it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(temporary / STATE_NAME, json.dumps({**state, "step": step}, indent=2))
        replace_directory(temporary, final)
        for _, old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


__all__ = [
    "LATEST",
    "checkpoint_root",
    "list_checkpoints",
    "read_trainer_state",
    "resolve_resume",
    "save_checkpoint",
]
