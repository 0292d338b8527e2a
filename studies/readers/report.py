"""The frame readers side by side: tables and one figure from readers sweeps (one a seed) and a cost run.

    python -m studies.readers.report --sweep OUT [OUT_SEED1 ...] --arms studies/readers/arms.yaml
        [--costs COSTS/reader_costs.json] --out docs [--name readers] [--split validation]

Each ``--sweep`` is a ``studies.runner`` output folder (``OUT/arms/NAME/log.jsonl``, and probe reports
``OUT/arms/NAME/eval/*/probes.json``: ``eval/probes`` from the runner, others from ``eval.probes --out``, one per
split), one a seed of the same arms. Per arm and seed, from the last validation row of its log: attention mass in the
named object's box of the planned (fine) and static (coarse) readings, the teacher-forced caption loss, the
next-frame losses and their coarse/fine ratio; from its probes of ``--split``, if any: caption accuracy (all
attributes right, and motion) of the planned, static and blank readings. A figure of several seeds is their mean,
with each seed's value in brackets. ``--costs`` (``studies.readers.costs`` JSON) adds training and streaming
milliseconds per frame. Where probes ran, a second table gives, per probed split (e.g. held-out (shape, motion)
pairs), the mass in the named box on those clips and every scored attribute's accuracy of the three readings.
Writes ``OUT/NAME_results.json``, ``OUT/NAME.md`` and ``OUT/figures/NAME_mass_caption.png`` (NAME:
``reader_comparison``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.common import SPLIT_ROLES, markdown_table, pyplot, save_figure
from eval.probes import JSON_NAME as PROBES_FILE
from foveated_vlm.files import atomic_write_text
from foveated_vlm.training.figures import read_log
from foveated_vlm.training.trainer import LOG_NAME
from studies.runner import load_arms

VALIDATION_KEYS = ("mass_in_box_fine", "mass_in_box_coarse", "loss_caption", "loss_fine", "loss_coarse")
DEFAULT_SPLIT = "validation"
"""The probed split whose accuracy the main table and the figure show (the ablation runner's ``--eval_split``)."""
PROBE_READERS = ("dynamic", "static", "blank")
"""Readers whose caption accuracy the table shows: the planned reading, the static reading of the same weights
and the blank-frame control."""
COST_KEYS = ("train_ms_per_frame", "stream_ms_per_frame", "stream_fast_ms_per_frame")
ATTRIBUTE_TABLE_TITLE = (
    "Probes by attribute, on the probed clips: accuracy as planned / static / blank reading, seed means"
)
CAPTION_AXIS_MARGIN = 0.02  # caption-loss axis: this much below the lowest bar and above the highest
ACCURACY_AXIS_HEADROOM = 1.5  # accuracy axis: this many times the tallest bar (at most 1)


def last_validation(log: Path) -> dict[str, Any] | None:
    """The last ``split == "validation"`` row of a training log (JSON lines), or None if it has none."""
    validation = [row for row in read_log(log) if row.get("split") == "validation"]
    return validation[-1] if validation else None


def probe_figures(path: Path) -> dict[str, Any]:
    """Probe estimates of one ``eval.probes`` report: ``split``, ``chance``, the scored
    ``attributes``, and per reader of :data:`PROBE_READERS` that ran ``all_<reader>`` (all attributes right),
    ``mass_<reader>`` (mass in the named box on the probed clips) and ``<attribute>_<reader>`` for each attribute
    (``motion_dynamic``, ...)."""
    report = json.loads(path.read_text())
    summary = report["summary"]["all"]["readers"]

    def estimate(reader: str, key: str, attribute: str | None = None) -> float | None:
        figures = summary.get(reader, {})
        value = (figures.get(key) or {}).get(attribute) if attribute else figures.get(key)
        return None if value is None else value["estimate"]

    attributes = report["attributes"]
    figures: dict[str, Any] = {
        "split": report["split"],
        "chance": estimate("dynamic", "chance"),
        "attributes": list(attributes),
    }
    for reader in PROBE_READERS:
        figures[f"all_{reader}"] = estimate(reader, "all_attributes")
        figures[f"mass_{reader}"] = estimate(reader, "mass_in_box")
        for attribute in attributes:
            figures[f"{attribute}_{reader}"] = estimate(reader, "accuracy", attribute)
    return figures


def arm_figures(arm_dir: Path) -> dict[str, Any] | None:
    """One seed's figures of an arm: its step, validation figures and probes (None when it has no log)."""
    log = arm_dir / LOG_NAME
    if not log.exists():
        return None
    validation = last_validation(log)
    if validation is None:
        raise ValueError(f"{log} has no validation row: the arm did not reach its first evaluation")
    figures = {key: validation.get(key) for key in VALIDATION_KEYS}
    if figures["loss_coarse"] and figures["loss_fine"]:
        figures["ratio_coarse_fine"] = figures["loss_coarse"] / figures["loss_fine"]
    return {"step": validation["step"], "validation": figures, "probes": probes_by_split(arm_dir)}


def probes_by_split(arm_dir: Path) -> dict[str, dict[str, Any]]:
    """Every probe report of an arm (``eval/*/probes.json``: ``eval/probes`` from the ablation runner, others from
    ``eval.probes --out``), keyed by the split it probed; two reports of one split are refused by name."""
    found: dict[str, dict[str, Any]] = {}
    where: dict[str, Path] = {}
    for path in sorted((arm_dir / "eval").glob(f"*/{PROBES_FILE}")):
        figures = probe_figures(path)
        split = figures["split"]
        if split in found:
            raise ValueError(f"{where[split]} and {path} both probe the {split!r} split: keep one")
        found[split], where[split] = figures, path
    return found


def collect(
    sweeps: Sequence[Path], arms_file: str, costs: Path | None, split: str = DEFAULT_SPLIT
) -> dict[str, Any]:
    """Every arm of ``arms_file`` that a sweep trained: its figures per seed (sweep), its costs, its description;
    ``split``: the probed split whose accuracy the main table and the figure show."""
    cost_rows = {}
    if costs is not None:
        cost_rows = {row["arm"]: row for row in json.loads(costs.read_text())["arms"]}
    arms = {}
    for arm in load_arms(arms_file):
        seeds = {str(sweep): arm_figures(sweep / "arms" / arm.name) for sweep in sweeps}
        seeds = {sweep: figures for sweep, figures in seeds.items() if figures is not None}
        if not seeds:
            continue
        arms[arm.name] = {
            "description": arm.description,
            "steps": sorted({figures["step"] for figures in seeds.values()}),
            "seeds": seeds,
            "costs": {key: cost_rows[arm.name].get(key) for key in COST_KEYS}
            if arm.name in cost_rows
            else None,
        }
    if not arms:
        raise ValueError(
            f"no arm of {arms_file} has a training log under {[str(s / 'arms') for s in sweeps]}"
        )
    return {
        "sweeps": [str(sweep) for sweep in sweeps],
        "split": split,
        "arms": arms,
        "costs_device": None if costs is None else json.loads(costs.read_text())["settings"],
    }


def seed_values(arm: dict[str, Any], key: str) -> list[float]:
    """An arm's value of ``key`` in its training log's last validation figures for each seed that has it."""
    values = [figures["validation"].get(key) for figures in arm["seeds"].values()]
    return [value for value in values if value is not None]


def probe_values(arm: dict[str, Any], split: str, key: str) -> list[float]:
    """An arm's probe estimate ``key`` on ``split`` for each seed that probed that split."""
    values = [(figures["probes"].get(split) or {}).get(key) for figures in arm["seeds"].values()]
    return [value for value in values if value is not None]


def probed_splits(arm: dict[str, Any]) -> list[str]:
    """The splits any seed of an arm was probed on, sorted."""
    return sorted({split for figures in arm["seeds"].values() for split in figures["probes"]})


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _over_seeds(values: list[float], digits: int = 3) -> str:
    """``"mean"`` of one seed, ``"mean (a / b)"`` of several, ``"n/a"`` of none."""
    if not values:
        return "n/a"
    mean = _number(statistics.fmean(values), digits)
    return mean if len(values) == 1 else f"{mean} ({' / '.join(_number(v, digits) for v in values)})"


def format_markdown(report: dict[str, Any]) -> str:
    headers = [
        "arm", "seeds", "mass (planned)", "mass (static)", "caption loss", "coarse/fine",
        "accuracy, all: planned", "static", "blank", "motion (planned)",
        *(key.removesuffix("_per_frame").replace("_", " ") + " (ms/frame)" for key in COST_KEYS),
    ]  # fmt: skip
    rows = []
    for name, arm in report["arms"].items():
        costs = arm["costs"] or {}
        rows.append(
            [
                name,
                len(arm["seeds"]),
                *(
                    _over_seeds(seed_values(arm, key))
                    for key in ("mass_in_box_fine", "mass_in_box_coarse", "loss_caption", "ratio_coarse_fine")
                ),
                *(
                    _over_seeds(probe_values(arm, report["split"], key))
                    for key in ("all_dynamic", "all_static", "all_blank", "motion_dynamic")
                ),
                *(_number(costs.get(key), 2) for key in COST_KEYS),
            ]
        )
    return markdown_table(headers, rows)


def format_attribute_markdown(report: dict[str, Any]) -> str:
    """Per probed arm and split: mass in the named box on those clips (planned, static) and each scored attribute's
    accuracy as ``planned / static / blank`` (seed means); "" when no arm was probed."""
    rows_of = [(name, arm, split) for name, arm in report["arms"].items() for split in probed_splits(arm)]
    if not rows_of:
        return ""
    attributes = list(
        dict.fromkeys(
            attribute
            for arm in report["arms"].values()
            for figures in arm["seeds"].values()
            for probes in figures["probes"].values()
            for attribute in probes["attributes"]
        )
    )
    headers = ["arm", "seeds", "split", "mass (planned)", "mass (static)", "all", *attributes]

    def mean(arm: dict[str, Any], split: str, key: str) -> str:
        values = probe_values(arm, split, key)
        return _number(statistics.fmean(values) if values else None)

    def readings(arm: dict[str, Any], split: str, key: str) -> str:
        return " / ".join(mean(arm, split, f"{key}_{reader}") for reader in PROBE_READERS)

    rows = [
        [
            name,
            sum(split in figures["probes"] for figures in arm["seeds"].values()),
            split,
            mean(arm, split, "mass_dynamic"),
            mean(arm, split, "mass_static"),
            readings(arm, split, "all"),
            *(readings(arm, split, attribute) for attribute in attributes),
        ]
        for name, arm, split in rows_of
    ]
    return markdown_table(headers, rows)


def _bars(axis, per_arm: list[list[float]], offset: float, width: float, **style) -> list[float]:
    """Bars of the seed means of each arm's values at ``offset``, each seed a black dot; returns the means."""
    means = []
    for position, values in enumerate(per_arm):
        mean = statistics.fmean(values) if values else 0.0
        means.append(mean)
        if len(values) > 1:
            axis.scatter([position + offset] * len(values), values, color="black", s=9, zorder=3)
    axis.bar([i + offset for i in range(len(per_arm))], means, width, **style)
    return means


def plot(report: dict[str, Any], path: Path) -> None:
    """Per arm: mass in the named box (planned vs static), caption loss (the dense baseline as a line) and, where
    the probes ran, caption accuracy of the planned, static and blank readings; seed means, seeds as dots."""
    plt = pyplot()
    arms = {name: arm for name, arm in report["arms"].items() if seed_values(arm, "mass_in_box_fine")}
    names = sorted(arms, key=lambda name: -statistics.fmean(seed_values(arms[name], "mass_in_box_fine")))
    split = report["split"]
    probed = any(probe_values(arm, split, "all_dynamic") for arm in arms.values())
    figure, axes = plt.subplots(
        1, 3 if probed else 2, figsize=(19 if probed else 13, 4.8), layout="constrained"
    )
    mass, caption = axes[0], axes[1]

    def logged(key: str) -> list[list[float]]:
        return [seed_values(arms[name], key) for name in names]

    _bars(mass, logged("mass_in_box_fine"), -0.2, 0.4, label="planned (fine pass)", color="tab:red")
    _bars(mass, logged("mass_in_box_coarse"), 0.2, 0.4, label="static query (coarse pass)", color="tab:blue")
    chances = [v for arm in arms.values() for v in probe_values(arm, split, "chance")]
    if chances:
        chance = statistics.fmean(chances)
        mass.axhline(chance, color="grey", linestyle="--", label=f"chance (box area) {chance:.3f}")
    mass.set_ylim(0, 1)
    mass.set_ylabel("attention mass in the named object's box")
    mass.set_title("Where each reader looks (validation clips)")
    mass.legend()
    captions = _bars(caption, logged("loss_caption"), 0.0, 0.6, color="tab:green")
    dense = report["arms"].get("dense")
    if dense is not None:
        dense_caption = statistics.fmean(seed_values(dense, "loss_caption"))
        caption.axhline(dense_caption, color="black", linestyle=":", label="dense baseline")
        caption.legend()
        captions.append(dense_caption)
    caption.set_ylim(min(captions) - CAPTION_AXIS_MARGIN, max(captions) + CAPTION_AXIS_MARGIN)
    caption.set_ylabel("caption cross-entropy per token")
    caption.set_title("Teacher-forced caption loss (lower is better)")
    if probed:
        accuracy = axes[2]
        tallest = 0.0
        for offset, reader, color in ((-0.27, "dynamic", "tab:red"), (0.0, "static", "tab:blue"),
                                      (0.27, "blank", "tab:grey")):  # fmt: skip
            probed_values = [probe_values(arms[name], split, f"all_{reader}") for name in names]
            means = _bars(accuracy, probed_values, offset, 0.27, label=reader, color=color)
            tallest = max(tallest, *means)
        accuracy.set_ylim(0, min(1.0, ACCURACY_AXIS_HEADROOM * tallest) or 1.0)
        accuracy.set_ylabel("captions with every attribute right")
        accuracy.set_title(f"Caption accuracy by reading ({split} clips)")
        accuracy.legend()
    for axis in axes:
        axis.set_xticks(
            list(range(len(names))),
            [n.replace("_supervised", " (sup.)") for n in names],
            rotation=40,
            ha="right",
        )
    steps = sorted({step for arm in report["arms"].values() for step in arm["steps"]})
    seeds = len(report["sweeps"])
    figure.suptitle(
        f"Frame readers on the named-object task, same data and steps ({', '.join(map(str, steps))}), "
        f"{seeds} seed{'s' if seeds > 1 else ''}"
    )
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sweep", required=True, nargs="+", help="studies.runner output folders, one a seed of the same arms"
    )
    parser.add_argument("--arms", required=True, help="the sweep's arms YAML (names and descriptions)")
    parser.add_argument("--costs", help="studies.readers.costs JSON")
    parser.add_argument("--out", required=True, help="folder of the JSON, the markdown and figures/")
    parser.add_argument("--name", default="reader_comparison", help="file name stem")
    parser.add_argument(
        "--split",
        default=DEFAULT_SPLIT,
        choices=SPLIT_ROLES,
        help="probed split of the main table's and the figure's accuracy (every probed split is in the attribute table)",
    )
    args = parser.parse_args(argv)
    report = collect(
        [Path(sweep) for sweep in args.sweep],
        args.arms,
        Path(args.costs) if args.costs else None,
        args.split,
    )
    out = Path(args.out)
    atomic_write_text(out / f"{args.name}_results.json", json.dumps(report, indent=1))
    attribute_table = format_attribute_markdown(report)
    markdown = format_markdown(report) + "\n"
    if attribute_table:
        markdown += f"\n{ATTRIBUTE_TABLE_TITLE}\n\n{attribute_table}\n"
    atomic_write_text(out / f"{args.name}.md", markdown)
    plot(report, out / "figures" / f"{args.name}_mass_caption.png")
    print(markdown, end="")
    return report


if __name__ == "__main__":
    main()
