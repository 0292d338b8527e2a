"""The study's table from a ``studies.runner`` output folder: one row per arm, planned against static readings.

    python -m studies.label_free.summarise OUT [--json SUMMARY.json]

Per arm (``OUT/arms/NAME``): mass in the named box of the planned (``dynamic``) and static readings, the planned
reading's selectivity (named box over the most-attended other object), accuracy of shape / size / motion and of
all three for the planned, static, shuffled-in-time and other-clip (in-distribution null) readings, the caption
cross-entropy, the next-frame losses of both readings, and the planner's gradient share of each loss
(``grad_share.json``, where measured). Prints a Markdown table; ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from eval.probes import JSON_NAME as PROBES_JSON
from studies.label_free.grad_share import JSON_NAME as GRAD_JSON
from studies.runner import ARMS_DIR, EVAL_DIR

READERS = ("dynamic", "static", "shuffled", "other_clip")
ATTRIBUTES = ("shape", "size", "motion")


def _mean(summary: dict[str, Any] | None) -> float | None:
    return None if summary is None else summary.get("estimate")


def arm_figures(arm_dir: Path) -> dict[str, Any] | None:
    """The figures of one arm folder (None before its probes ran)."""
    probes_path = arm_dir / EVAL_DIR / "probes" / PROBES_JSON
    if not probes_path.is_file():
        return None
    summary = json.loads(probes_path.read_text(encoding="utf-8"))["summary"]["all"]
    figures: dict[str, Any] = {"majority": summary["majority_baseline"], "readers": {}}
    for reader, values in summary["readers"].items():
        figures["readers"][reader] = {
            "mass_in_box": _mean(values.get("mass_in_box")),
            "chance": _mean(values.get("chance")),
            "selectivity": _mean(values.get("selectivity")),
            "loss_fine": _mean(values.get("loss_fine")),
            "loss_caption": _mean(values.get("loss_caption")),
            "all_attributes": _mean(values.get("all_attributes")),
            **{name: _mean(values["accuracy"].get(name)) for name in ATTRIBUTES},
        }
    grad_path = arm_dir / GRAD_JSON
    if grad_path.is_file():
        terms = json.loads(grad_path.read_text(encoding="utf-8"))["terms"]
        figures["grad_share"] = {name: value["share"] for name, value in terms.items()}
    return figures


def _pair(readers: dict[str, Any], key: str) -> str:
    def cell(reader: str) -> str:
        value = readers.get(reader, {}).get(key)
        return "-" if value is None else f"{value:.3f}"

    return f"{cell('dynamic')} / {cell('static')}"


def _cell(readers: dict[str, Any], reader: str, key: str) -> str:
    value = readers.get(reader, {}).get(key)
    return "-" if value is None else f"{value:.3f}"


def table(arms: dict[str, dict[str, Any]]) -> str:
    """Markdown table of :func:`arm_figures` per arm."""
    headers = [
        "arm",
        "mass planned / static",
        "selectivity",
        *(f"{name} planned / static" for name in ATTRIBUTES),
        "all three planned / static",
        "all three shuffled",
        "all three other-clip null",
        "caption NLL planned / static",
        "next-frame MSE planned / static",
        "planner grad share (fine, coarse, caption)",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, figures in arms.items():
        readers = figures["readers"]
        share = figures.get("grad_share", {})
        shares = ", ".join(
            f"{share.get(term, 0.0):.2f}" for term in ("loss_fine", "loss_coarse", "loss_caption")
        )
        row = [
            name,
            _pair(readers, "mass_in_box"),
            _cell(readers, "dynamic", "selectivity"),
            *(_pair(readers, attribute) for attribute in ATTRIBUTES),
            _pair(readers, "all_attributes"),
            _cell(readers, "shuffled", "all_attributes"),
            _cell(readers, "other_clip", "all_attributes"),
            _pair(readers, "loss_caption"),
            _pair(readers, "loss_fine"),
            shares if share else "-",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def summarise(out: Path) -> dict[str, dict[str, Any]]:
    """``{arm: figures}`` of every arm of a runner output folder whose probes ran, by name."""
    arms = {}
    for arm_dir in sorted((out / ARMS_DIR).iterdir()):
        figures = arm_figures(arm_dir)
        if figures is not None:
            arms[arm_dir.name] = figures
    return arms


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", help="a studies.runner output folder")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    arms = summarise(Path(args.out))
    print(table(arms))
    if args.json:
        Path(args.json).write_text(json.dumps(arms, indent=1), encoding="utf-8")
    return arms


if __name__ == "__main__":
    main()
