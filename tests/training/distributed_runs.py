"""Training runs inside ``accelerate launch`` processes, for ``tests/training/test_training_distributed.py``.

``python distributed_runs.py ddp ROOT`` trains ``ROOT/ddp`` (2 processes, :data:`DDP_ARGS`); ``ddp_resume``
resumes ``ROOT/single/checkpoints/step-3`` (written by one process beforehand) into ``ROOT/single_to_ddp``.
``ddp_compiled`` is ``ddp`` with regional compile. Every process records what it writes under ``ROOT`` (``ROOT/writes-MODE-RANK.json``) and, each time
``save_checkpoint`` returns, whether the checkpoint is complete and visible.

``fsdp`` trains the same run as ``ddp`` into ``ROOT/fsdp`` under Accelerate's FSDP2 plugin and records the
trained model's logits on a fixed batch (``ROOT/fsdp_logits.pt``); ``fsdp_resume`` resumes its step-3
checkpoint into ``ROOT/fsdp_resumed``. Accelerate enables FSDP only on accelerators (``AcceleratorState`` keeps
``MULTI_CPU`` when ``cpu=True``); :func:`force_fsdp` sets the distributed type after the accelerator is made,
so the very code paths of a GPU run (``fully_shard`` of the configured layer classes, the full state dict
gathered on rank 0) run on CPU processes over gloo.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import train_accelerate  # noqa: E402
from foveated_vlm.training import trainer  # noqa: E402

COMMON = [
    "--config", "configs/smoke.yaml", "--set", "train.batch_size=2", "--set", "train.log_every=1",
    "--set", "train.report_to=null", "--set", "train.eval_every=3", "--set", "train.save_every=3",
]  # fmt: skip
DDP_ARGS = [*COMMON, "--max_steps", "6"]
SINGLE_ARGS = [*DDP_ARGS, "--set", "train.grad_accum=2"]  # one process, the same micro-batches
WRITE_MODES = set("wax+")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


class WriteRecorder:
    """Paths under ``root`` that this process opens for writing, creates, renames or removes.

    Python-level file operations come from audit events; ``torch.save`` and safetensors' ``save_file`` open
    their files in C++, so they are wrapped where accelerate and transformers call them.
    """

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.paths: list[str] = []
        sys.addaudithook(self._audit)
        self._wrap(torch, "save")
        import accelerate.utils.other
        import transformers.modeling_utils

        self._wrap(accelerate.utils.other, "safe_save_file")
        self._wrap(transformers.modeling_utils, "safe_save_file")

    def _record(self, path) -> None:
        if isinstance(path, (str, os.PathLike)):
            resolved = Path(os.fsdecode(path)).resolve()
            if resolved.is_relative_to(self.root):
                self.paths.append(str(resolved.relative_to(self.root)))

    def _audit(self, event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if (mode and WRITE_MODES & set(mode)) or (not mode and flags & WRITE_FLAGS):
                self._record(path)
        elif event == "os.mkdir" and not Path(os.fsdecode(args[0])).exists():  # not makedirs(exist_ok) no-ops
            self._record(args[0])
        elif event in ("os.remove", "shutil.rmtree"):
            self._record(args[0])
        elif event == "os.rename":
            self._record(args[0])
            self._record(args[1])

    def _wrap(self, module, name: str) -> None:
        original = getattr(module, name)

        def recorded(obj, path, *args, **kwargs):
            self._record(path)
            return original(obj, path, *args, **kwargs)

        setattr(module, name, recorded)


def record_checkpoint_visibility(visible: list) -> None:
    """On every process, note ``(step, complete and visible, hidden folder gone)`` when a save returns."""
    original = trainer.save_checkpoint

    def save(accelerator, output_dir, step, state, keep):
        final = original(accelerator, output_dir, step, state, keep)
        hidden = final.parent / f".tmp-{final.name}"
        visible.append((step, (final / "trainer_state.json").is_file(), not hidden.exists()))
        return final

    trainer.save_checkpoint = save


def force_fsdp() -> None:
    """Make every accelerator the trainer builds use FSDP (from the launch's FSDP settings) on CPU processes."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    original = trainer.make_accelerator

    def make_accelerator(config):
        accelerator = original(config)
        PartialState().distributed_type = DistributedType.FSDP  # AcceleratorState() copies it from here
        state = AcceleratorState()
        state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables of the launch
        state.distributed_type = DistributedType.FSDP
        return accelerator

    trainer.make_accelerator = make_accelerator


def fixed_inputs(processor) -> dict:
    """A prompt and a fixed 4-frame video, to compare a model's logits before and after saving."""
    generator = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (4, 32, 32, 3), generator=generator, dtype=torch.uint8)  # [T, H, W, 3]
    return processor(text="Describe the video.", videos=video)


def record_final_logits() -> None:
    """Before ``OUTPUT/final`` is written, save the trained (sharded) model's logits on a fixed batch to
    ``OUTPUT_logits.pt``."""
    original = trainer.save_final

    def save_final(accelerator, model, processor, config, metrics, repo_id=None):
        model.eval()
        with torch.no_grad():
            logits = model(**fixed_inputs(processor)).logits
        if accelerator.is_main_process:
            output = Path(config.output_dir)
            torch.save(logits, output.parent / f"{output.name}_logits.pt")
        return original(accelerator, model, processor, config, metrics, repo_id)

    trainer.save_final = save_final


def run(mode: str, root: Path) -> None:
    """One run per launch (``end_training`` ends the process group): ``ddp``, ``ddp_resume``,
    ``ddp_compiled`` (regional compile), ``fsdp`` or ``fsdp_resume``."""
    from accelerate import PartialState

    recorder = WriteRecorder(root)
    visible: list = []
    record_checkpoint_visibility(visible)
    if mode.startswith("fsdp"):
        force_fsdp()
        record_final_logits()
    runs = {
        "ddp": ("ddp", []),
        "ddp_resume": ("single_to_ddp", ["--resume", str(root / "single" / "checkpoints" / "step-3")]),
        "ddp_compiled": ("ddp_compiled", ["--set", "train.compile=true"]),
        "fsdp": ("fsdp", []),
        "fsdp_resume": ("fsdp_resumed", ["--resume", str(root / "fsdp" / "checkpoints" / "step-3")]),
    }
    output, extra = runs[mode]
    train_accelerate.main([*DDP_ARGS, "--output_dir", str(root / output), *extra])
    record = {"writes": recorder.paths, "visible_after_save": visible}
    (root / f"writes-{mode}-{PartialState().process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    run(sys.argv[1], Path(sys.argv[2]))
