"""The frame readers side by side: one table and one figure from a readers sweep and a cost run.

    python -m eval.readers_report --sweep OUT --arms configs/readers_arms.yaml [--costs COSTS/reader_costs.json]
        --out docs [--name readers]

``--sweep`` is an ``eval.ablations`` output folder (``OUT/arms/NAME/log.jsonl``, and ``eval/probes/probes.json``
where the held-out probes ran). Per arm, from the last validation row of its log: attention mass in the named
object's box of the planned (fine) and static (coarse) readings, the teacher-forced caption loss, the next-frame
losses and their coarse/fine ratio; from its probes, if any: held-out accuracy (all attributes, motion) and mass.
``--costs`` (``eval.reader_costs`` JSON) adds training and streaming milliseconds per frame. Writes
``OUT/NAME_results.json``, ``OUT/NAME.md`` and ``OUT/figures/NAME_mass_caption.png`` (NAME: ``reader_comparison``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from eval.ablations import load_arms
from eval.common import markdown_table, pyplot, save_figure
from foveated_vlm.files import atomic_write_text
from foveated_vlm.training.figures import read_log
from foveated_vlm.training.trainer import LOG_NAME

VALIDATION_KEYS = ("mass_in_box_fine", "mass_in_box_coarse", "loss_caption", "loss_fine", "loss_coarse")
COST_KEYS = ("train_ms_per_frame", "stream_ms_per_frame", "stream_fast_ms_per_frame")
CAPTION_AXIS_MARGIN = 0.02  # caption-loss axis: this much below the lowest bar and above the highest


def last_validation(log: Path) -> dict[str, Any] | None:
    """The last ``split == "validation"`` row of a training log (JSON lines), or None if it has none."""
    validation = [row for row in read_log(log) if row.get("split") == "validation"]
    return validation[-1] if validation else None


def probe_figures(path: Path) -> dict[str, Any] | None:
    """Held-out probe estimates of the dynamic and static readers (None when the probes did not run)."""
    if not path.exists():
        return None
    summary = json.loads(path.read_text())["summary"]["all"]

    def estimate(reader: str, key: str, attribute: str | None = None) -> float | None:
        figures = summary["readers"].get(reader, {})
        value = figures.get(key, {}).get(attribute) if attribute else figures.get(key)
        return None if value is None else value["estimate"]

    return {
        "all_attributes": estimate("dynamic", "all_attributes"),
        "motion": estimate("dynamic", "accuracy", "motion"),
        "mass_in_box": estimate("dynamic", "mass_in_box"),
        "static_mass_in_box": estimate("static", "mass_in_box"),
        "chance": estimate("dynamic", "chance"),
    }


def collect(sweep: Path, arms_file: str, costs: Path | None) -> dict[str, Any]:
    """Every arm of ``arms_file`` that the sweep trained: its figures, its costs, its description."""
    cost_rows = {}
    if costs is not None:
        cost_rows = {row["arm"]: row for row in json.loads(costs.read_text())["arms"]}
    arms = {}
    for arm in load_arms(arms_file):
        log = sweep / "arms" / arm.name / LOG_NAME
        if not log.exists():
            continue
        validation = last_validation(log)
        if validation is None:
            raise ValueError(f"{log} has no validation row: the arm did not reach its first evaluation")
        figures = {key: validation.get(key) for key in VALIDATION_KEYS}
        if figures["loss_coarse"] and figures["loss_fine"]:
            figures["ratio_coarse_fine"] = figures["loss_coarse"] / figures["loss_fine"]
        arms[arm.name] = {
            "description": arm.description,
            "step": validation["step"],
            "validation": figures,
            "heldout_probes": probe_figures(sweep / "arms" / arm.name / "eval" / "probes" / "probes.json"),
            "costs": {key: cost_rows[arm.name].get(key) for key in COST_KEYS}
            if arm.name in cost_rows
            else None,
        }
    if not arms:
        raise ValueError(f"no arm of {arms_file} has a training log under {sweep / 'arms'}")
    return {
        "arms": arms,
        "costs_device": None if costs is None else json.loads(costs.read_text())["settings"],
    }


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_markdown(report: dict[str, Any]) -> str:
    headers = [
        "arm", "mass (planned)", "mass (static)", "caption loss", "coarse/fine", "held-out all / motion",
        *(key.removesuffix("_per_frame").replace("_", " ") + " (ms/frame)" for key in COST_KEYS),
    ]  # fmt: skip
    rows = []
    for name, arm in report["arms"].items():
        figures, probes, costs = arm["validation"], arm["heldout_probes"], arm["costs"] or {}
        held_out = (
            "n/a" if probes is None else f"{_number(probes['all_attributes'])} / {_number(probes['motion'])}"
        )
        rows.append(
            [
                name,
                _number(figures["mass_in_box_fine"]),
                _number(figures["mass_in_box_coarse"]),
                _number(figures["loss_caption"]),
                _number(figures.get("ratio_coarse_fine")),
                held_out,
                *(_number(costs.get(key), 2) for key in COST_KEYS),
            ]
        )
    return markdown_table(headers, rows)


def plot(report: dict[str, Any], path: Path) -> None:
    """Mass in the named box (planned vs static) and caption loss per arm, the dense baseline as a line."""
    plt = pyplot()
    arms = {
        name: arm for name, arm in report["arms"].items() if arm["validation"]["mass_in_box_fine"] is not None
    }
    names = sorted(arms, key=lambda name: -arms[name]["validation"]["mass_in_box_fine"])
    positions = range(len(names))
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6), layout="constrained")
    left.bar([i - 0.2 for i in positions], [arms[n]["validation"]["mass_in_box_fine"] for n in names], 0.4,
             label="planned (fine pass)", color="tab:red")  # fmt: skip
    left.bar([i + 0.2 for i in positions], [arms[n]["validation"]["mass_in_box_coarse"] for n in names], 0.4,
             label="static query (coarse pass)", color="tab:blue")  # fmt: skip
    chances = [a["heldout_probes"]["chance"] for a in report["arms"].values() if a["heldout_probes"]]
    if chances:
        left.axhline(
            chances[0], color="grey", linestyle="--", label=f"chance (box area, held-out) {chances[0]:.3f}"
        )
    left.set_ylim(0, 1)
    left.set_ylabel("attention mass in the named object's box")
    left.set_title("Where each reader looks (validation clips)")
    left.legend()
    captions = [arms[n]["validation"]["loss_caption"] for n in names]
    right.bar(list(positions), captions, color="tab:green")
    dense = report["arms"].get("dense")
    if dense is not None:
        right.axhline(
            dense["validation"]["loss_caption"], color="black", linestyle=":", label="dense baseline"
        )
        right.legend()
        captions.append(dense["validation"]["loss_caption"])
    right.set_ylim(min(captions) - CAPTION_AXIS_MARGIN, max(captions) + CAPTION_AXIS_MARGIN)
    right.set_ylabel("caption cross-entropy per token")
    right.set_title("Teacher-forced caption loss (lower is better)")
    for axis in (left, right):
        axis.set_xticks(
            list(positions), [n.replace("_supervised", " (sup.)") for n in names], rotation=40, ha="right"
        )
    steps = {arm["step"] for arm in report["arms"].values()}
    figure.suptitle(
        f"Frame readers on the named-object task, same data and steps ({', '.join(map(str, steps))})"
    )
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sweep", required=True, help="eval.ablations output folder")
    parser.add_argument("--arms", required=True, help="the sweep's arms YAML (names and descriptions)")
    parser.add_argument("--costs", help="eval.reader_costs JSON")
    parser.add_argument("--out", required=True, help="folder of the JSON, the markdown and figures/")
    parser.add_argument("--name", default="reader_comparison", help="file name stem")
    args = parser.parse_args(argv)
    report = collect(Path(args.sweep), args.arms, Path(args.costs) if args.costs else None)
    out = Path(args.out)
    atomic_write_text(out / f"{args.name}_results.json", json.dumps(report, indent=1))
    atomic_write_text(out / f"{args.name}.md", format_markdown(report) + "\n")
    plot(report, out / "figures" / f"{args.name}_mass_caption.png")
    print(format_markdown(report))
    return report


if __name__ == "__main__":
    main()
