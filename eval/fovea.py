"""Does the fovea find the object? Attention mass inside the target object's box, dynamic vs static queries.

    python -m eval.fovea --run_dir RUN --split heldout --num_clips 256 --out OUT

Procedural clips know every object's box. The target is the object the caption is about: the only object of a
generic clip ("What happens in the video?"), or the object the prompt names by its colour among several. For every frame where the target is visible, the script measures the attention mass the query puts
inside the target's box (patches partly covered count with their covered fraction; mass on CLS, registers
and the query's own key counts as outside) for the dynamic (fine) and the static (coarse) query, against the
chance level: the box's area fraction, the mass of a uniform map over the patches.
Also: how often the attention peak lies in the box, the lift over chance, everything per frame index (frame
1 of the fine pass is read by the learned ``q_init``, before any plan), and for named vs generic clips.

Boxes are in the clip's pixels; the processor resizes and crops frames to the model's ``image_size``, and
the boxes follow the same map (:func:`foveated_vlm.metrics.crop_boxes`). Writes ``OUT/report.md``,
``OUT/report.json`` and ``OUT/mass_over_time.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.common import (
    PASSES,
    ClipOutputs,
    command_line,
    format_ci,
    forward_clips,
    load_context,
    markdown_table,
    pyplot,
    save_figure,
    script_main,
    script_parser,
    summarise,
    write_report,
)
from foveated_vlm.metrics import (
    attention_mass_in_box,
    bootstrap_ci,
    ratio_of_means,
    target_box_coverage,
)

FIGURE_NAME = "mass_over_time.png"
PLOT_HEADROOM = 1.3
SUBSETS = {"all": None, "named": True, "generic": False}
"""Clip subsets every box report gives (``eval.fovea``, ``eval.probes``): value = the clips' ``named`` flag
(None: every clip)."""


def mass_in_box(attention: torch.Tensor | None, coverage: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mass in the target's box and its chance level, per frame: the one computation of every box report.

    ``attention``: ``[N, P]`` patch part of the query's full attention (a pass's ``attention_*``), or None for a
    model without a map (dense: its mass is NaN); ``coverage``: ``[N, P]`` box coverage fractions of the patches
    (:func:`~foveated_vlm.metrics.target_box_coverage`). Returns ``(mass [N], chance [N])`` in float64 on the
    CPU; chance is the box's area share (a uniform map's mass).
    """
    coverage = coverage.float().cpu()
    chance = coverage.double().mean(-1)
    if attention is None:
        return torch.full_like(chance, float("nan")), chance
    return attention_mass_in_box(attention.float().cpu(), coverage).double(), chance


def target_visible(item: dict[str, Any]) -> np.ndarray:
    """``[T]`` bool: frames of a procedural clip where its target object is visible."""
    return np.asarray(item["visible"])[:, item["target_index"]].astype(bool)


def clip_record(
    item: dict[str, Any], outputs: ClipOutputs, image_size: int, patch_size: int
) -> dict[str, Any]:
    """Per-frame masses ``[T]`` of both passes, chance, peak-in-box hits and visibility of one clip."""
    masks = target_box_coverage(item, image_size, patch_size)
    record: dict[str, Any] = {
        "clip_id": item["clip_id"],
        "named": bool(item["named"]),
        "visible": target_visible(item),
        "chance": mass_in_box(None, masks)[1].numpy(),
    }
    for name in PASSES:
        attention = getattr(outputs, f"attention_{name}")
        if attention is None:
            continue
        record[f"mass_{name}"] = mass_in_box(attention, masks)[0].numpy()
        peaks = attention.argmax(-1)
        record[f"peak_{name}"] = (masks[torch.arange(len(peaks)), peaks] > 0).double().numpy()
    return record


def _clip_means(records: list[dict[str, Any]], key: str, frames: slice) -> np.ndarray:
    """Per clip: mean of ``key`` over its visible frames within ``frames`` (NaN when none is visible)."""
    means = []
    for record in records:
        visible = record["visible"][frames]
        values = record[key][frames][visible]
        means.append(values.mean() if values.size else np.nan)
    return np.asarray(means)


def summarise_records(records: list[dict[str, Any]], frames: slice) -> dict[str, Any]:
    """Means with CI of mass, chance, peak hits, lift over chance and fine - coarse, over ``frames``."""
    summary: dict[str, Any] = {
        "num_clips": len(records),
        "chance": summarise(_clip_means(records, "chance", frames)),
    }
    chance = _clip_means(records, "chance", frames)
    for name in PASSES:
        if records and f"mass_{name}" in records[0]:
            mass = _clip_means(records, f"mass_{name}", frames)
            summary[f"mass_{name}"] = summarise(mass)
            summary[f"peak_in_box_{name}"] = summarise(_clip_means(records, f"peak_{name}", frames))
            pairs = np.stack([mass, chance], 1)
            pairs = pairs[np.isfinite(pairs).all(1)]
            summary[f"lift_{name}"] = bootstrap_ci(pairs, ratio_of_means) if len(pairs) else None
    if records and all(f"mass_{name}" in records[0] for name in PASSES):
        summary["mass_fine_minus_coarse"] = summarise(
            _clip_means(records, "mass_fine", frames) - _clip_means(records, "mass_coarse", frames)
        )
    return summary


def over_time(records: list[dict[str, Any]]) -> dict[str, list[dict[str, float] | None]]:
    """Per frame index t: mean (CI) over clips where the target is visible at t, for masses and chance."""
    num_frames = max(len(record["visible"]) for record in records)
    keys = ["chance", *(f"mass_{name}" for name in PASSES if f"mass_{name}" in records[0])]
    return {key: [_frame_summary(records, key, t) for t in range(num_frames)] for key in keys}


def _frame_summary(records: list[dict[str, Any]], key: str, t: int) -> dict[str, float] | None:
    values = [r[key][t] for r in records if t < len(r["visible"]) and r["visible"][t]]
    return summarise(values)


def plot_over_time(curves: dict[str, list[dict[str, float] | None]], path: Path) -> None:
    """Mass in the target box against frame index, with 95% CI bands, and the chance level."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    styles = {
        "mass_fine": ("dynamic (fine)", "tab:red", "o", "-"),
        "mass_coarse": ("static (coarse)", "tab:blue", "s", ":"),
        "chance": ("chance (box area)", "grey", ".", "--"),
    }
    highest = 0.0
    for key, points in curves.items():
        frames = [t + 1 for t, point in enumerate(points) if point is not None]
        values = [point for point in points if point is not None]
        label, colour, marker, line = styles[key]
        axis.plot(
            frames, [v["estimate"] for v in values], marker=marker, label=label, color=colour, linestyle=line
        )
        axis.fill_between(
            frames, [v["low"] for v in values], [v["high"] for v in values], color=colour, alpha=0.15
        )
        highest = max([highest, *(v["high"] for v in values)])
    axis.set_xlabel("frame")
    axis.set_ylabel("attention mass in target box")
    axis.set_ylim(0, min(1.0, PLOT_HEADROOM * highest) or 1.0)
    axis.set_title("Does the fovea find the object?")
    axis.grid(alpha=0.3)
    axis.legend()
    save_figure(figure, path)


def format_markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    rows = []
    for subset, frames in ((s, f) for s in SUBSETS for f in ("frames_2_to_T", "all_frames")):
        summary = report["summary"][subset][frames]
        rows.append(
            [
                subset,
                frames.replace("_", " "),
                summary["num_clips"],
                format_ci(summary.get("mass_fine")),
                format_ci(summary.get("mass_coarse")),
                format_ci(summary["chance"]),
                format_ci(summary.get("lift_fine"), 2),
                format_ci(summary.get("lift_coarse"), 2),
                format_ci(summary.get("peak_in_box_fine"), 2),
                format_ci(summary.get("peak_in_box_coarse"), 2),
            ]
        )
    headers = [
        "clips",
        "frames",
        "n",
        "mass fine",
        "mass coarse",
        "chance",
        "lift fine",
        "lift coarse",
        "peak in box fine",
        "peak in box coarse",
    ]
    time_rows = [
        [t + 1, *(format_ci(report["over_time"][key][t]) for key in report["over_time"])]
        for t in range(len(report["over_time"]["chance"]))
    ]
    return "\n".join(
        [
            "# Does the fovea find the object?",
            "",
            f"`{report['command']}`",
            "",
            f"Model `{report['model']}`, {report['num_clips']} procedural clips of split `{report['split']}`. "
            "Attention mass inside the target's box (frames where it is visible), mean over clips with 95% bootstrap "
            "CI; lift = mass / chance; chance = box area fraction. named = the prompt names the target among "
            "several moving objects; generic = one moving object, generic prompt.",
            "",
            markdown_table(headers, rows),
            "",
            "## Per frame",
            "",
            markdown_table(["frame", *report["over_time"]], time_rows),
            "",
            f"![mass over time]({FIGURE_NAME})",
        ]
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, plot, write the reports, return the report."""
    context = load_context(args)
    if not context.is_procedural:
        raise ValueError(
            "eval.fovea needs procedural clips (they know every object's box); "
            f"this config reads data.kind={context.config.data.kind!r}"
        )
    vision = context.model.config.vision_config
    records = [
        clip_record(item, outputs, vision.image_size, vision.patch_size)
        for item, outputs in forward_clips(context, None, args.batch_size, args.num_workers)
    ]
    if not any(f"mass_{name}" in records[0] for name in PASSES):
        raise ValueError("the model returns no query attention (foveation_mode='dense' has no queries)")
    summary = {}
    for subset, named in SUBSETS.items():
        chosen = [r for r in records if named is None or r["named"] == named]
        summary[subset] = {
            "frames_2_to_T": summarise_records(chosen, slice(1, None)),
            "all_frames": summarise_records(chosen, slice(None)),
        }
    curves = over_time(records)
    plot_over_time(curves, context.out_dir / FIGURE_NAME)
    report = {
        "command": command_line(),
        "model": str(context.model_path),
        "split": args.split,
        "num_clips": len(records),
        "summary": summary,
        "over_time": curves,
        "figure": FIGURE_NAME,
    }
    write_report(context.out_dir, report, format_markdown(report))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    return parser


main = script_main(run, build_parser, format_markdown)

if __name__ == "__main__":
    main()
