"""The report of :mod:`eval.probes`: its markdown table and its bar figure (one reader a bar)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.common import format_ci, markdown_table, pyplot, save_figure

READER_DESCRIPTIONS = {
    "dynamic": "the model's planned queries",
    "static": "the static query (coarse reading)",
    "random": "Gaussian queries, std query_init_std",
    "centre": "planned queries confined to a centred region of the box's patch count",
    "shuffled": "planned queries permuted in time within each video",
    "oracle": "planned queries confined to the target box's patches",
    "blank": "mean-colour frames, planned queries",
    "other_clip": "another clip's frames, same prompt (in-distribution null)",
}
NUM_EXAMPLES = 4
PLOT_HEADROOM = 1.35


def _table(summary: dict[str, Any], attributes: Sequence[str]) -> str:
    headers = [
        "reader",
        *(f"{name} acc." for name in attributes),
        "all attributes",
        "loss_fine",
        "÷ dynamic",
        "loss_caption",
        "mass in box",
        "chance",
        "lift",
        "selectivity",
    ]
    rows = []
    for reader, figures in summary["readers"].items():
        rows.append(
            [
                reader,
                *(format_ci(figures["accuracy"].get(name), 3) for name in attributes),
                format_ci(figures["all_attributes"], 3),
                format_ci(figures["loss_fine"]),
                format_ci(figures.get("loss_fine_ratio_to_dynamic"), 3),
                format_ci(figures["loss_caption"], 3),
                format_ci(figures["mass_in_box"], 3),
                format_ci(figures["chance"], 3),
                format_ci(figures["lift"], 2),
                format_ci(figures.get("selectivity"), 2),
            ]
        )
    baseline = summary["majority_baseline"]
    rows.append(
        [
            "*majority answer*",
            *(f"{baseline[name]:.3f}" if name in baseline else "n/a" for name in attributes),
            f"{baseline['all_attributes']:.3f}",
            *([""] * (len(headers) - len(attributes) - 2)),
        ]
    )
    return markdown_table(headers, rows)


def format_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: one table of every reader (and one per clip kind when both occur)."""
    summary = report["summary"]
    attributes = report["attributes"]
    ratio = summary["all"].get("ratio_loss_static_dynamic")
    header = f"Model `{report['model']}`, " if report.get("model") else ""
    split = f" of split `{report['split']}`" if report.get("split") else ""
    lines = ["# Test-time query probes", ""]
    if report.get("command"):
        lines += [f"`{report['command']}`", ""]
    lines += [
        f"{header}{report['num_clips']} procedural clips{split}, the same weights read by each reader "
        f"(seed {report['seed']}); greedy captions of at most {report['max_new_tokens']} tokens. "
        "Mean over clips [95% bootstrap CI]. Accuracy: exact match of each scored attribute parsed from the "
        "caption; *all attributes*: every scored attribute of the clip right. loss_fine: next-frame prediction "
        "MSE of the reading pass (static: the coarse pass), ÷ dynamic its ratio of means to the dynamic reader's; "
        "loss_caption: teacher-forced caption cross-entropy per token. Mass in box: attention inside the target's "
        "box over frames 2..T where it is in view (patch part of the full distribution); chance: the box's area "
        "share; lift = mass / chance (ratio of means). *Majority answer*: the accuracy of always giving these clips' most "
        "common value, what a reader that ignores the video can reach at best (the blank reader's reference).",
        "",
        "Readers: " + "; ".join(f"**{r}**: {READER_DESCRIPTIONS[r]}" for r in report["readers"]) + ".",
        "",
        _table(summary["all"], attributes),
        "",
        f"Coarse / fine prediction-loss ratio (static / dynamic): {format_ci(ratio, 3)}.",
    ]
    for subset in ("named", "generic"):
        if subset in summary:
            lines += ["", f"## {subset} clips ({summary[subset]['num_clips']})", ""]
            lines.append(_table(summary[subset], attributes))
    if report.get("figure"):
        lines += ["", f"![probes]({report['figure']})"]
    lines += ["", "## Examples", ""]
    for record in report["clips"][:NUM_EXAMPLES]:
        lines.append(f"- `{record['clip_id']}` {record['reference']}")
        lines += [
            f"  - {reader}: `{result['generated']}`" if result["generated"] else f"  - {reader}: (empty)"
            for reader, result in record["readers"].items()
        ]
    return "\n".join(lines)


READER_COLOURS = {
    "dynamic": "tab:red",
    "static": "tab:blue",
    "random": "tab:grey",
    "centre": "tab:olive",
    "shuffled": "tab:purple",
    "oracle": "tab:green",
    "blank": "black",
    "other_clip": "tab:brown",
}


def _bars(axis, summary: dict[str, Any], key: str, title: str) -> float:
    """Bars with CI error bars and their values; returns the highest upper bound drawn."""
    readers = list(summary["readers"])
    values = [summary["readers"][reader][key] for reader in readers]
    estimates = [np.nan if v is None else v["estimate"] for v in values]
    errors = np.array(
        [[0.0, 0.0] if v is None else [v["estimate"] - v["low"], v["high"] - v["estimate"]] for v in values]
    ).T
    bars = axis.bar(
        readers,
        estimates,
        yerr=np.clip(errors, 0, None),
        capsize=4,
        color=[READER_COLOURS[reader] for reader in readers],
        alpha=0.8,
    )
    axis.bar_label(bars, labels=["" if v is None else f"{v['estimate']:.2f}" for v in values], padding=6)
    for position, value in enumerate(values):
        if value is None:
            axis.text(position, 0.01, "n/a", ha="center", va="bottom")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    axis.tick_params(axis="x", rotation=30)
    return max([0.0, *(v["high"] for v in values if v is not None)])


HELDOUT_SPLIT = "heldout"
NOTE_WIDTH = 190
"""Characters per line of the figure's explanatory note."""
BARS_NOTE = (
    "Bars: per reader of the same weights, left the fraction of clips whose caption gets every scored attribute "
    "right, right the mean attention mass inside the target's box (frames 2..T); whiskers: 95% bootstrap CI. "
    "Dashed lines: the majority answer (always giving these clips' most common value: the best a reader that "
    "ignores the video can do) and chance (the box's share of the frame: attention spread evenly)."
)
HELDOUT_NOTE = (
    "Held-out clips pair a shape with a motion never seen together in training: they test whether the model "
    "reads each attribute from the video or guesses one from another. Their majority answer is counted on these "
    "clips themselves, which the model never saw, so a reader can fall below it."
)


def below_majority_note(summary: dict[str, Any]) -> str | None:
    """One sentence on all-attribute bars under the majority line: which readers, and the attribute they miss
    most (the all-attribute score needs every one right); None if no bar is under it."""
    majority = summary.get("majority_baseline", {}).get("all_attributes")
    readers = summary["readers"]
    below = [
        reader
        for reader, figures in readers.items()
        if majority is not None and figures["all_attributes"] is not None
        and figures["all_attributes"]["estimate"] < majority
    ]  # fmt: skip
    if not below:
        return None
    first = readers[below[0]]["accuracy"]
    attributes = {name: value["estimate"] for name, value in first.items() if value is not None}
    missed = (
        f"; their weakest attribute is {min(attributes, key=attributes.get)} ("
        + ", ".join(f"{name} {value:.2f}" for name, value in attributes.items())
        + f" for {below[0]})"
        if attributes
        else ""
    )
    return (
        f"Bars under the majority line ({', '.join(below)}): these readings get every attribute right less often "
        f"than the blind majority answer{missed}."
    )


def plot_probes(summary: dict[str, Any], path: str | Path, split: str | None = None) -> None:
    """Bars per reader: all-attributes accuracy and mass in the target box (with chance), 95% CI error bars, and
    a note under the plots saying what the bars and lines mean (and, for the held-out ``split`` or bars under the
    majority line, why they can be)."""
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 5.2), layout="constrained")
    _bars(left, summary, "all_attributes", "all scored attributes right")
    left.set_ylim(0, 1.1)
    majority = summary.get("majority_baseline", {}).get("all_attributes")
    if majority is not None and np.isfinite(majority):
        left.axhline(majority, color="grey", linestyle="--", label=f"majority answer {majority:.2f}")
        left.legend(loc="upper right")
    left.set_ylabel("fraction of clips")
    highest = _bars(right, summary, "mass_in_box", "attention mass in target box (frames 2..T)")
    chances = [f["chance"]["estimate"] for f in summary["readers"].values() if f["chance"] is not None]
    if chances:
        chance = float(np.mean(chances))
        right.axhline(chance, color="grey", linestyle="--", label=f"chance (box area) {chance:.2f}")
        right.legend(loc="upper left")
        highest = max(highest, chance)
    right.set_ylim(0, min(1.1, PLOT_HEADROOM * highest) or 1.0)
    right.set_ylabel("attention mass")
    of_split = f" of split {split}" if split else ""
    figure.suptitle(f"Test-time query probes ({summary['num_clips']} clips{of_split}, 95% bootstrap CI)")
    notes = [BARS_NOTE, HELDOUT_NOTE if split == HELDOUT_SPLIT else "", below_majority_note(summary) or ""]
    wrapped = textwrap.fill(" ".join(note for note in notes if note), NOTE_WIDTH)
    figure.supxlabel(wrapped, fontsize=8, ha="left", x=0.01, multialignment="left")
    save_figure(figure, path)
