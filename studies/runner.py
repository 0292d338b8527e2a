"""The studies' shared arms runner: train every arm with the same data, steps and seed, evaluate each, one table.

    python -m studies.runner --config configs/demo.yaml --out OUT [--arms ARMS.yaml] [--only two_pass static_only]
        [--max_steps N] [--seed S] [--launcher "accelerate launch"] [--eval_clips 128] [--parallel 8]
        [--evaluations intrinsic captioning fovea]

An arm is a name and a list of ``--set`` overrides applied on top of the base config (and of ``--set`` given
to this script). Each arm is trained from scratch by ``train_accelerate.py`` into ``OUT/arms/NAME`` (a
subprocess; its output goes to ``OUT/arms/NAME/train.log``), then its ``final/`` model is evaluated with
``eval.intrinsic``, ``eval.captioning`` and, on procedural data, ``eval.fovea`` on the same split
(``--evaluations`` picks). A finished arm (``final/`` present) and a finished evaluation (its ``report.json``) are
reused unless ``--retrain``. ``--parallel N`` runs up to N arms at once, each as its own process (training and
evaluation; e.g. several tiny arms side by side on one GPU), then gathers their reports into the table. An arm whose overrides the config rejects (a switch the
model or data do not have yet) is listed as unavailable with the reason, and the others still run.

Every arm trains every pass it is evaluated on (the peer compared a pass that was never trained, NOTES §3):
the static arm trains and reads with the static query alone (``model.inference_mode=coarse``: one coarse pass
in training too), the two-pass arm trains both passes (coarse weighted by ``lambda_coarse``).

Default arms, the ablations of proposal §13.2 (``--arms`` replaces them, e.g. ``studies/named_object/arms.yaml``;
YAML ``arms: [{name, set: [...], description}]``): two_pass, static_only, mean_pool_pass1, query_dim_32, query_dim_128, no_text, lambda_coarse_{0.25,0.5,2}.
Writes ``OUT/ablations.md`` and ``OUT/ablations.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval import captioning, fovea, intrinsic, probes
from eval.common import (
    DEFAULT_MAX_NEW_TOKENS,
    FINAL_DIR,
    REPORT_JSON,
    SPLIT_ROLES,
    add_override_argument,
    command_line,
    format_ci,
    markdown_table,
    write_report,
)
from foveated_vlm.files import atomic_write_text
from foveated_vlm.metrics import BACKENDS
from foveated_vlm.training.config import load_config, parse_yaml
from foveated_vlm.training.trainer import METRICS_NAME as TRAINING_METRICS

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO_ROOT / "train_accelerate.py"
STUDY_PLUGINS = "model.plugins=[studies.readers]"
"""Every arm may name a study reader: its training (and so its evaluation) imports them."""
ARMS_DIR = "arms"
EVAL_DIR = "eval"
TRAIN_LOG = "train.log"
ARM_PROCESS_LOG = "ablation.log"
TABLE_NAME = "ablations"
DEFAULT_LAUNCHER = f"{shlex.quote(sys.executable)} -u"


@dataclass
class Arm:
    """One ablation arm: ``--set`` overrides on top of the base config."""

    name: str
    overrides: list[str] = field(default_factory=list)
    description: str = ""


DEFAULT_ARMS = (
    Arm("two_pass", [], "dynamic queries: the coarse pass plans, the fine pass reads (the proposal)"),
    Arm(
        "static_only",
        ["model.inference_mode=coarse"],
        "static query only, trained and evaluated with the single coarse pass",
    ),
    Arm(
        "mean_pool_pass1",
        ["model.coarse_reading=mean_pool"],
        "pass 1 reads frames by average pooling of the patches instead of q_static",
    ),
    Arm("query_dim_32", ["model.query_dim=32"], "query width 32"),
    Arm("query_dim_128", ["model.query_dim=128"], "query width 128"),
    Arm(
        "no_text",
        ["data.drop_prompt=true"],
        "no text conditioning: the prompt is dropped (training and eval)",
    ),
    Arm("lambda_coarse_0.25", ["model.lambda_coarse=0.25"], "coarse losses weighted 0.25"),
    Arm("lambda_coarse_0.5", ["model.lambda_coarse=0.5"], "coarse losses weighted 0.5"),
    Arm("lambda_coarse_2", ["model.lambda_coarse=2.0"], "coarse losses weighted 2"),
)

Trainer = Callable[[list[str], Path], None]
"""Trains one arm: ``(train_accelerate.py arguments, log file) -> None``; raises on failure."""


def subprocess_trainer(launcher: str = DEFAULT_LAUNCHER) -> Trainer:
    """A trainer that runs ``LAUNCHER train_accelerate.py ARGS`` (e.g. ``accelerate launch``) in a subprocess."""

    def train(argv: list[str], log_path: Path) -> None:
        command = [*shlex.split(launcher), str(TRAIN_SCRIPT), *argv]
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(shlex.join(command) + "\n")
            log.flush()
            result = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
        if result.returncode:
            raise RuntimeError(f"training exited with status {result.returncode}; see {log_path}")

    return train


def load_arms(path: str | Path) -> list[Arm]:
    """Arms from a YAML file: ``arms: [{name, set: [overrides], description}]``."""
    values = parse_yaml(Path(path).read_text(encoding="utf-8")) or {}
    rows = values.get("arms") if isinstance(values, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path} must hold `arms:`, a non-empty list of {{name, set, description}}")
    arms = [
        Arm(str(row["name"]), [str(o) for o in row.get("set", [])], str(row.get("description", "")))
        for row in rows
    ]
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    return arms


def training_arguments(args: argparse.Namespace, arm: Arm, arm_dir: Path) -> list[str]:
    """``train_accelerate.py`` arguments of an arm: base config, shared steps and seed (unless the arm sets its own
    ``train.seed``: a replicate with a fresh seed), overrides."""
    argv = ["--output_dir", str(arm_dir), "--max_steps", str(args.max_steps)]
    if not any(override.startswith("train.seed=") for override in arm.overrides):
        argv += ["--seed", str(args.seed)]
    if args.config:
        argv = ["--config", str(args.config), *argv]
    for override in [STUDY_PLUGINS, *args.overrides, *arm.overrides]:
        argv += ["--set", override]
    return argv


def evaluation_arguments(args: argparse.Namespace, arm_dir: Path, name: str) -> list[str]:
    """Shared arguments of the evaluation scripts for one arm (its own config and data section)."""
    argv = [
        "--run_dir",
        str(arm_dir),
        "--out",
        str(arm_dir / EVAL_DIR / name),
        "--split",
        args.eval_split,
        "--batch_size",
        str(args.eval_batch_size),
        "--device",
        args.device,
    ]
    return argv + (["--num_clips", str(args.eval_clips)] if args.eval_clips else [])


EVALUATIONS = ("intrinsic", "captioning", "fovea", "probes")
PROCEDURAL_ONLY = ("fovea", "probes")
SAVED_REPORT = {"probes": probes.JSON_NAME}
"""File an evaluation writes its report to, where it is not ``report.json``."""
COARSE_ONLY_READERS = ("static",)
"""Probes of an arm that trained the static query alone (its fine pass was never trained)."""


def arm_probe_readers(args: argparse.Namespace, coarse_only: bool, dense: bool) -> tuple[str, ...] | None:
    """The probes' readers of an arm: ``static`` alone for a static-only arm, the ``--probe_readers`` (all when
    omitted) a dense arm can run (``probes.DENSE_READERS``) for a dense one, ``--probe_readers`` otherwise (None:
    the probes' default, all)."""
    if coarse_only:
        return COARSE_ONLY_READERS
    if dense:
        return tuple(name for name in args.probe_readers or probes.READERS if name in probes.DENSE_READERS)
    return tuple(args.probe_readers) if args.probe_readers else None


def _evaluation_argv(
    args: argparse.Namespace, arm_dir: Path, name: str, readers: tuple[str, ...] | None
) -> list[str]:
    argv = evaluation_arguments(args, arm_dir, name)
    if name == "captioning":
        argv += ["--max_new_tokens", str(args.max_new_tokens), "--metrics_backend", args.metrics_backend]
    if name == "probes":
        argv += ["--max_new_tokens", str(args.max_new_tokens), "--seed", str(args.seed)]
        argv += ["--readers", *readers] if readers else []
    return argv


def evaluate_arm(
    args: argparse.Namespace, arm_dir: Path, procedural: bool, probe_readers: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The selected reports (``args.evaluations``) of a trained arm; a finished one is read back, not rerun."""
    scripts = {"intrinsic": intrinsic, "captioning": captioning, "fovea": fovea, "probes": probes}
    results = {}
    for name in args.evaluations:
        if name in PROCEDURAL_ONLY and not procedural:
            continue
        saved = arm_dir / EVAL_DIR / name / SAVED_REPORT.get(name, REPORT_JSON)
        if saved.is_file() and not args.retrain:
            results[name] = json.loads(saved.read_text(encoding="utf-8"))
            continue
        script = scripts[name]
        argv = _evaluation_argv(args, arm_dir, name, probe_readers)
        results[name] = script.run(script.build_parser().parse_args(argv))
    return results


def run_arm(args: argparse.Namespace, arm: Arm, trainer: Trainer) -> dict[str, Any]:
    """Validate, train (unless already trained) and evaluate one arm; never raises for an arm's own failure."""
    arm_dir = Path(args.out) / ARMS_DIR / arm.name
    record: dict[str, Any] = {"arm": asdict(arm), "dir": str(arm_dir)}
    try:
        config = load_config(args.config, [*args.overrides, *arm.overrides])
    except ValueError as error:
        return {**record, "status": "unavailable", "reason": str(error)}
    record["trained_passes"] = (
        "coarse" if config.model.overrides.get("inference_mode") == "coarse" else "coarse+fine"
    )
    record["lambda_coarse"] = config.model.overrides.get("lambda_coarse", 1.0)
    try:
        if args.retrain or not (arm_dir / FINAL_DIR / "config.json").is_file():
            arm_dir.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            trainer(training_arguments(args, arm, arm_dir), arm_dir / TRAIN_LOG)
            record["train_seconds"] = time.perf_counter() - started
        else:
            record["reused"] = True
        metrics = json.loads((arm_dir / TRAINING_METRICS).read_text(encoding="utf-8"))
        record["steps"] = metrics.get("step")
        readers = arm_probe_readers(
            args,
            record["trained_passes"] == "coarse",
            config.model.overrides.get("foveation_mode") == "dense",
        )
        record["evaluation"] = evaluate_arm(args, arm_dir, config.data.kind == "procedural", readers)
    except Exception as error:  # noqa: BLE001 (one arm's failure is reported in the table; the others run)
        logger.error("arm %s failed:\n%s", arm.name, traceback.format_exc())
        return {**record, "status": "failed", "reason": f"{type(error).__name__}: {error}"}
    return {**record, "status": "ok"}


def _get(record: dict[str, Any], *keys: str) -> Any:
    """Nested lookup that yields None on any missing level."""
    value: Any = record
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def table_row(record: dict[str, Any]) -> list[Any]:
    """One line of the ablation table."""
    name = record["arm"]["name"]
    if record["status"] != "ok":
        return [name, f"{record['status']}: {record['reason'][:120]}", *([None] * 10)]
    metrics = _get(record, "evaluation", "intrinsic", "metrics") or {}
    modes = _get(record, "evaluation", "captioning", "modes") or {}
    reading = "two_pass" if "two_pass" in modes else "coarse"
    fovea_summary = _get(record, "evaluation", "fovea", "summary", "all", "frames_2_to_T") or {}
    return [
        name,
        f"ok ({record['trained_passes']}, λ={record['lambda_coarse']})",
        record.get("steps"),
        format_ci(metrics.get("loss_fine")),
        format_ci(metrics.get("loss_coarse")),
        format_ci(metrics.get("ratio_loss_coarse_fine")),
        format_ci(metrics.get("caption_nll"), 3),
        _get(modes, reading, "metrics", "cider"),
        format_ci(_get(modes, reading, "attribute_accuracy", "all"), 3),
        format_ci(_get(modes, "coarse", "attribute_accuracy", "all"), 3),
        format_ci(fovea_summary.get("mass_fine"), 3) + " / " + format_ci(fovea_summary.get("mass_coarse"), 3),
        format_ci(metrics.get("query_similarity_frames"), 3),
    ]


TABLE_HEADERS = [
    "arm",
    "status",
    "steps",
    "loss_fine",
    "loss_coarse",
    "coarse/fine",
    "caption NLL",
    "CIDEr",
    "attributes all (own reading)",
    "attributes all (coarse)",
    "mass in box fine / coarse",
    "query cos across frames",
]


PROBE_READERS = probes.READERS
PROBE_HEADERS = [
    "arm",
    *(f"all right: {reader}" for reader in PROBE_READERS),
    "mass in box: dynamic",
    "mass in box: static",
    "chance",
    "loss static / dynamic",
]


def probe_row(record: dict[str, Any]) -> list[Any] | None:
    """One line of the probe table (all-attributes accuracy per reader, mass in box), or None without probes."""
    summary = _get(record, "evaluation", "probes", "summary", "all")
    if record["status"] != "ok" or summary is None:
        return None
    readers = summary.get("readers", {})

    def figure(reader: str, key: str) -> str:
        return format_ci(_get(readers, reader, key), 3) if reader in readers else "-"

    chance = _get(readers, "dynamic", "chance") or _get(readers, "static", "chance")
    return [
        record["arm"]["name"],
        *(figure(reader, "all_attributes") for reader in PROBE_READERS),
        figure("dynamic", "mass_in_box"),
        figure("static", "mass_in_box"),
        format_ci(chance, 3),
        format_ci(summary.get("ratio_loss_static_dynamic"), 4),
    ]


def format_markdown(report: dict[str, Any]) -> str:
    """The ablation table and each arm's description."""
    lines = [
        "# Ablations (§13.2)",
        "",
        f"`{report['command']}`",
        "",
        f"Every arm: base config `{report['config']}`, {report['max_steps']} steps, seed {report['seed']}, the same "
        f"data; evaluated on {report['eval_clips'] or 'the configured'} `{report['eval_split']}` clips. Figures: "
        "mean [95% bootstrap CI] over clips. 'own reading' = two-pass captions for two-pass arms, coarse for "
        "coarse-only arms; mass in box over frames 2..T (chance in each arm's fovea report).",
        "",
        markdown_table(TABLE_HEADERS, [table_row(record) for record in report["arms"]]),
        "",
    ]
    rows = [row for row in map(probe_row, report["arms"]) if row is not None]
    if rows:
        lines += [
            "## Test-time probes on the same weights (`eval.probes`)",
            "",
            "All scored attributes right per reader; mass in the named object's box over frames 2..T (chance: "
            "the box's area share); loss static / dynamic: next-frame loss of the static reading over the "
            "dynamic one (> 1 when looking helps).",
            "",
            markdown_table(PROBE_HEADERS, rows),
            "",
        ]
    lines += ["## Arms", ""]
    lines += [
        f"- **{r['arm']['name']}** (`{' '.join(r['arm']['overrides']) or 'base config'}`): "
        f"{r['arm']['description']}"
        for r in report["arms"]
    ]
    return "\n".join(lines)


def run_in_parallel(argv: list[str], arms: list[Arm], out_dir: Path, workers: int) -> None:
    """Run each arm as ``python -m studies.runner ARGV --only NAME`` (training and evaluation), ``workers`` at once.

    A failed arm process is logged and left for the gathering pass, which reports the arm's own failure.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(arm: Arm) -> int:
        log_path = out_dir / ARMS_DIR / arm.name / ARM_PROCESS_LOG
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-u", "-m", "studies.runner", *argv, "--only", arm.name]
        with open(log_path, "w", encoding="utf-8") as log:
            code = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        if code:
            logger.error("arm %s: its process exited with status %d; see %s", arm.name, code, log_path)
        return code

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, arms))


def _without_parallel(argv: list[str]) -> list[str]:
    """``argv`` without ``--parallel N`` and without ``--only NAME ...`` (each child process names its own arm)."""
    kept: list[str] = []
    dropping = None  # the option whose values are being skipped
    for value in argv:
        if dropping is not None and not value.startswith("-"):
            if dropping == "--parallel":
                dropping = None
            continue
        dropping = None
        if value in ("--parallel", "--only"):
            dropping = value
        elif not value.startswith(("--parallel=", "--only=")):
            kept.append(value)
    return kept


def run(args: argparse.Namespace, trainer: Trainer | None = None) -> dict[str, Any]:
    """Run every selected arm, write the table, return the report."""
    arms = load_arms(args.arms) if args.arms else list(DEFAULT_ARMS)
    if args.only:
        unknown = sorted(set(args.only) - {arm.name for arm in arms})
        if unknown:
            raise ValueError(f"--only names unknown arms {unknown}; known: {[arm.name for arm in arms]}")
        arms = [arm for arm in arms if arm.name in args.only]
    load_config(args.config, list(args.overrides))  # a bad base config fails before any arm runs
    trainer = trainer or subprocess_trainer(args.launcher)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.parallel > 1 and len(arms) > 1:
        run_in_parallel(args.child_argv, arms, out_dir, args.parallel)
    report: dict[str, Any] = {
        "command": command_line(),
        "config": args.config,
        "max_steps": args.max_steps,
        "seed": args.seed,
        "eval_split": args.eval_split,
        "eval_clips": args.eval_clips,
        "arms": [],
    }
    for arm in arms:
        logger.info("arm %s: %s", arm.name, " ".join(arm.overrides) or "base config")
        report["arms"].append(run_arm(args, arm, trainer))
        atomic_write_text(out_dir / f"{TABLE_NAME}.json", json.dumps(report, indent=2, default=str))
    markdown = format_markdown(report)
    atomic_write_text(out_dir / f"{TABLE_NAME}.md", markdown + "\n")
    write_report(out_dir, report, markdown)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="base training YAML (train_accelerate.py's defaults if omitted)")
    add_override_argument(parser, "override applied to every arm (repeatable)")
    parser.add_argument("--arms", help="YAML file of arms (default: the built-in list)")
    parser.add_argument("--only", nargs="+", help="run only these arms")
    parser.add_argument("--out", required=True, help="output folder (arms/NAME runs, ablations.md/.json)")
    parser.add_argument("--max_steps", type=int, required=True, help="optimizer steps of every arm")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every arm")
    parser.add_argument(
        "--launcher",
        default=DEFAULT_LAUNCHER,
        help='command that runs train_accelerate.py (e.g. "accelerate launch --num_processes 8")',
    )
    parser.add_argument(
        "--retrain", action="store_true", help="train arms again even if OUT/arms/NAME/final exists"
    )
    parser.add_argument("--eval_split", default="heldout", choices=SPLIT_ROLES)
    parser.add_argument(
        "--eval_clips", type=int, help="clips evaluated per arm (default: the config's count)"
    )
    parser.add_argument("--eval_batch_size", type=int, default=16)
    parser.add_argument(
        "--probe_readers",
        nargs="+",
        choices=probes.READERS,
        help="readers the probes run on a two-pass arm (default: all); a static-only arm runs 'static' alone",
    )
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--metrics_backend", default="auto", choices=BACKENDS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--evaluations",
        nargs="+",
        default=list(EVALUATIONS),
        choices=EVALUATIONS,
        help="reports to make per arm",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="arms run at once, each in its own process (default 1: in turn)",
    )
    return parser


def main(argv: list[str] | None = None, trainer: Trainer | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.parallel < 1:
        raise SystemExit(f"error: --parallel must be >= 1, got {args.parallel}")
    args.child_argv = _without_parallel(argv)
    report = run(args, trainer)
    print(format_markdown(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
