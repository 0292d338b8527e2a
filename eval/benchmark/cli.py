"""The command line: ``python -m eval.benchmark [--tiny] [--sections ...]``; runs the sections, saves the report.

Each section is a module of this package; a section that fails is recorded in the report (``errors``) and the
others still run. The report is saved after every section (Markdown, and JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from foveated_vlm.files import atomic_write_text
from foveated_vlm.tiny import tiny_processor, tiny_tokenizer

from . import __doc__ as PACKAGE_DOC
from .environment import environment, measure_ceilings
from .loader import bench_loader
from .long_video import bench_long_video
from .query import bench_query_pass
from .report import render_markdown
from .settings import BF16, ERROR_CHARS, SEED, TINY_SETTINGS, Settings
from .streaming import bench_streaming
from .timing import free_memory
from .trainer import bench_trainer
from .training import bench_training
from .workload import RECOMPILE_LIMIT, benchmark_config, build_model, set_recompile_limit

SECTIONS = ("env", "query", "train", "stream", "long", "loader", "trainer")
SECTION_KEYS = {
    "env": ("ceilings",),
    "train": ("train_foveated", "train_dense"),
    "query": ("query",),
    "stream": ("stream",),
    "long": ("long",),
    "loader": ("loader",),
    "trainer": ("trainer",),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=PACKAGE_DOC.split("\n\n")[0])
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


def run_settings(args: argparse.Namespace, device: torch.device) -> Settings:
    """The run's sizes: full (or ``--tiny``), compile only on a GPU, the batch and training variants asked for."""
    settings = TINY_SETTINGS if args.tiny else Settings()
    return replace(
        settings,
        compile=settings.compile and not args.no_compile and device.type == "cuda",
        batch_size=args.batch_size or settings.batch_size,
        train_variants=tuple(part for part in args.train_variants.split(",") if part),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected sections; returns the report (also written as Markdown and optional JSON)."""
    device = torch.device(args.device)
    settings = run_settings(args, device)
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
    config = benchmark_config(tokenizer, settings.tiny, "foveated")
    if "trainer" in sections:
        with _section(report, "trainer", save):
            report["trainer"] = bench_trainer(report, tokenizer, settings, device, config)
    if sections & {"query", "stream", "long", "loader"}:
        _inference_sections(report, sections, config, tokenizer, settings, device, profile_dir, save)
    save()
    print(render_markdown(report))
    return report


def _inference_sections(report, sections, config, tokenizer, settings, device, profile_dir, save) -> None:
    """The sections of the inference model (bf16 on a GPU): query, stream, long; then the data loader."""
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
            dense_processor = tiny_processor(benchmark_config(tokenizer, settings.tiny, "dense"), tokenizer)
            report["long"] = bench_long_video(model, processor, dense_processor, settings, device)
    del model
    free_memory(device)
    if "loader" in sections:
        with _section(report, "loader", save):
            report["loader"] = bench_loader(processor, settings, device)


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
