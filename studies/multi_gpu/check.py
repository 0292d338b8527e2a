"""Training on 2 GPUs against 1, through ``accelerate launch`` (needs a machine with >= 2 CUDA devices).

Three checks, each a real ``train_accelerate.py`` run of the full-size model (DINOv3 ViT-S/16 at 256 px +
SmolLM2-135M shapes, random init written once to ``OUT/full_random`` so that no model hub is needed; pass
``--pretrained DIR`` to use real weights), procedural clips of 16 frames, bf16:

1. loss curve: 1 GPU x ``batch`` clips x 2 accumulated micro-batches against 2 GPUs (DDP) x ``batch`` clips,
   ``--steps`` steps: the same micro-batches, so the curves differ only by bf16 rounding and summation order;
   the check passes when every logged (``log_every``-step mean) loss agrees within ``--tolerance`` (relative);
2. FSDP (``configs/accelerate/fsdp.yaml``) on 2 GPUs: trains the DDP curve, its ``final/`` loads with
   ``AutoModel`` and gives the logits of the last checkpoint's gathered weights, and a resume from the middle
   checkpoint logs the same losses;
3. throughput: frames/s of 1 GPU and 2 GPUs at the same per-GPU batch (eager and regional compile), and the
   2-GPU / 1-GPU ratio (target >= 1.9x).

Usage (on the 2-GPU machine)::

    python -m studies.multi_gpu.check --output OUT --markdown OUT/multi_gpu.md   # also OUT/multi_gpu.json

The markdown section is meant for ``BENCHMARKS.md``; every command it ran is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from foveated_vlm.files import atomic_write_text
from foveated_vlm.training.figures import read_log
from foveated_vlm.training.trainer import LOG_NAME

REPO = Path(__file__).resolve().parents[2]
FSDP_CONFIG = "configs/accelerate/fsdp.yaml"
DDP_CONFIG = "configs/accelerate/ddp.yaml"
NUM_FRAMES = 16  # configs/full.yaml
THROUGHPUT_WARMUP_STEPS = 20  # logged windows before this step are left out (compile, cuDNN autotuning)
TARGET_SPEEDUP = 1.9


def write_random_full_model(directory: Path) -> Path:
    """Full-size shapes, random weights, the tiny tokenizer (the benchmark's model): a ``model.pretrained``
    folder for runs without a model hub."""
    from eval.benchmark import benchmark_config, build_model
    from foveated_vlm.tiny import tiny_processor, tiny_tokenizer

    if (directory / "config.json").is_file():
        return directory
    tokenizer = tiny_tokenizer()
    config = benchmark_config(tokenizer, tiny=False, mode="foveated")
    build_model(config, torch.device("cpu")).save_pretrained(directory)
    tiny_processor(config, tokenizer).save_pretrained(directory)
    return directory


def launch(
    processes: int, output: Path, settings: list[str], accelerate_config: str, resume: Path | None = None
):
    """One ``accelerate launch train_accelerate.py`` run; returns its command."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
        "--num_processes", str(processes), "train_accelerate.py", "--config", "configs/full.yaml",
        "--output_dir", str(output), *(["--resume", str(resume)] if resume else []),
    ]  # fmt: skip
    for setting in settings:
        command += ["--set", setting]
    print("+", shlex.join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    return shlex.join(command)


def train_rows(run: Path) -> dict[int, dict]:
    return {row["step"]: row for row in read_log(run / LOG_NAME) if row["split"] == "train"}


def curve_deviation(actual: dict[int, dict], expected: dict[int, dict]) -> float:
    """Largest relative difference of the logged total loss over the steps both runs logged."""
    steps = sorted(set(actual) & set(expected))
    return max(abs(actual[s]["loss"] - expected[s]["loss"]) / abs(expected[s]["loss"]) for s in steps)


def frames_per_second(run: Path) -> float:
    """Median logged frames/s of the windows after the warm-up steps."""
    rates = [
        row["samples_per_second"] for step, row in train_rows(run).items() if step > THROUGHPUT_WARMUP_STEPS
    ]
    return statistics.median(rates) * NUM_FRAMES


def fsdp_export_matches_checkpoint(run: Path, checkpoint: Path) -> float:
    """Max |logit difference| between ``final/`` loaded with ``AutoModel`` and the checkpoint's gathered weights."""
    from transformers import AutoModel, AutoProcessor

    from modeling_foveated import FoveatedVLMForConditionalGeneration

    loaded = AutoModel.from_pretrained(run / "final", trust_remote_code=True).eval()
    reference = FoveatedVLMForConditionalGeneration(loaded.config).eval()
    reference.load_state_dict(torch.load(checkpoint / "pytorch_model_fsdp.bin", map_location="cpu"))
    processor = AutoProcessor.from_pretrained(run / "final", trust_remote_code=True)
    generator = torch.Generator().manual_seed(0)
    video = torch.randint(
        0, 256, (NUM_FRAMES, 256, 256, 3), generator=generator, dtype=torch.uint8
    )  # [T,H,W,3]
    inputs = processor(text="Describe the video.", videos=video)
    with torch.no_grad():
        return float((loaded(**inputs).logits - reference(**inputs).logits).abs().max())


def run(args: argparse.Namespace) -> dict[str, Any]:
    if torch.cuda.device_count() < 2:
        raise SystemExit(f"studies.multi_gpu.check needs 2 CUDA devices, found {torch.cuda.device_count()}")
    out = Path(args.output)
    pretrained = Path(args.pretrained) if args.pretrained else write_random_full_model(out / "full_random")
    common = [
        f"model.pretrained={pretrained}", "train.report_to=null", "train.log_every=10",
        "data.num_clips.validation=64", "eval.batch_size=16", "train.num_workers=8",
    ]  # fmt: skip
    curve = [
        *common,
        f"train.max_steps={args.steps}",
        f"train.eval_every={args.steps}",
        f"train.save_every={args.steps}",
    ]
    report: dict[str, Any] = {"commands": [], "devices": [torch.cuda.get_device_name(i) for i in range(2)]}

    def go(processes, name, settings, accelerate_config=DDP_CONFIG, resume=None) -> Path:
        report["commands"].append(launch(processes, out / name, settings, accelerate_config, resume))
        return out / name

    batch = f"train.batch_size={args.batch_size}"
    single = go(1, "curve_1gpu", [*curve, batch, "train.grad_accum=2"])
    ddp = go(2, "curve_2gpu_ddp", [*curve, batch, "train.grad_accum=1"])
    report["curve"] = {
        "steps": args.steps,
        "max_relative_deviation": curve_deviation(train_rows(ddp), train_rows(single)),
    }
    report["curve"]["passed"] = report["curve"]["max_relative_deviation"] <= args.tolerance

    half = args.steps // 2
    fsdp_settings = [*curve, batch, "train.grad_accum=1", f"train.save_every={half}"]
    fsdp = go(2, "fsdp", fsdp_settings, FSDP_CONFIG)
    resumed = go(2, "fsdp_resumed", fsdp_settings, FSDP_CONFIG, fsdp / "checkpoints" / f"step-{half}")
    later = {step: row for step, row in train_rows(fsdp).items() if step > half}
    report["fsdp"] = {
        "curve_vs_ddp": curve_deviation(train_rows(fsdp), train_rows(ddp)),
        "resumed_vs_uninterrupted": curve_deviation(train_rows(resumed), later),
        "final_vs_checkpoint_max_logit_diff": fsdp_export_matches_checkpoint(
            fsdp, fsdp / "checkpoints" / f"step-{args.steps}"
        ),
    }
    report["fsdp"]["passed"] = (
        report["fsdp"]["curve_vs_ddp"] <= args.tolerance
        and report["fsdp"]["resumed_vs_uninterrupted"] <= args.tolerance
        and report["fsdp"]["final_vs_checkpoint_max_logit_diff"] <= 1e-4
    )

    speed = [
        *common,
        "train.max_steps=60",
        "train.eval_every=60",
        "train.save_every=60",
        "train.batch_size=16",
        "train.grad_accum=1",
    ]
    report["throughput"] = {}
    for lever, compiled in (("eager", False), ("regional compile", True)):
        settings = [*speed, f"train.compile={str(compiled).lower()}"]
        rates = {n: frames_per_second(go(n, f"speed_{n}gpu_compile_{compiled}", settings)) for n in (1, 2)}
        report["throughput"][lever] = {"1gpu": rates[1], "2gpu": rates[2], "speedup": rates[2] / rates[1]}
    return report


def render_markdown(report: dict[str, Any]) -> str:
    curve, fsdp = report["curve"], report["fsdp"]
    lines = [
        "## Two GPUs against one (`python -m studies.multi_gpu.check`)",
        "",
        f"- Devices: {', '.join(report['devices'])}; full-size shapes, procedural clips of 16 frames, bf16",
        f"- Loss curve, {curve['steps']} steps, 1 GPU x 2 accumulated micro-batches vs 2 GPUs (DDP): max relative "
        f"deviation {curve['max_relative_deviation']:.2e} ({'pass' if curve['passed'] else 'FAIL'})",
        f"- FSDP (full shard, 2 GPUs): curve vs DDP {fsdp['curve_vs_ddp']:.2e}, resumed vs uninterrupted "
        f"{fsdp['resumed_vs_uninterrupted']:.2e}, `final/` (AutoModel) vs checkpoint logits "
        f"{fsdp['final_vs_checkpoint_max_logit_diff']:.1e} ({'pass' if fsdp['passed'] else 'FAIL'})",
        "",
        "| levers | 1 GPU frames/s | 2 GPUs frames/s | 2 GPUs / 1 GPU | target |",
        "|---|---|---|---|---|",
    ]
    for lever, figures in report["throughput"].items():
        lines.append(
            f"| {lever}, 16 clips per GPU | {figures['1gpu']:,.0f} | {figures['2gpu']:,.0f} | "
            f"{figures['speedup']:.2f}x | >= {TARGET_SPEEDUP}x |"
        )
    lines += ["", "Commands:", "", *(f"    {command}" for command in report["commands"]), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="outputs/multi_gpu", help="folder of the runs and the report")
    parser.add_argument("--markdown", default=None, help="markdown section (default OUTPUT/multi_gpu.md)")
    parser.add_argument(
        "--pretrained", default=None, help="a saved foveated model (default: random full-size)"
    )
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of the loss-curve runs")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="clips per GPU and micro-batch (curve runs)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-2, help="relative loss deviation allowed (bf16)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    out = Path(args.output)
    atomic_write_text(out / "multi_gpu.json", json.dumps(report, indent=2))
    atomic_write_text(Path(args.markdown or out / "multi_gpu.md"), render_markdown(report))
    print(render_markdown(report))
    return report


if __name__ == "__main__":
    main()
