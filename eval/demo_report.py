"""The demo's report: held-out named-object clips read dynamically, statically and blind, and the fovea figure.

    python -m eval.demo_report --run_dir outputs/demo

Loads ``RUN/final`` and reads ``eval.num_heldout_clips`` clips of the held-out split (targets whose (shape,
motion) pair never occurs in training) with :func:`eval.probes.run_probes`, the one scoring path of the
project. Reported separately for each reader of the same weights: the dynamic reading (the planned queries),
the static reading (the static query, ``inference_mode="coarse"``), the zero-frame control (blank frames) and
the oracle and random queries as bounds: exact-match accuracy of every scored attribute (a named clip scores
shape, size and motion; the prompt gives the colour) and of all of them together; the attention mass inside the
named object's box against chance (its area share) and the lift; and the static / dynamic (coarse / fine)
next-frame prediction-loss ratio, each with a 95% bootstrap interval; then the accuracy and mass in box on as
many validation clips (training (shape, motion) pairs, clips never trained on). Writes
``RUN/fovea_named_object.png`` (frames with the named object's box, dynamic and static attention heat maps of the
first held-out clips), ``RUN/probes.png``, ``RUN/loss_curve.png`` and ``RUN/report.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.fovea import target_visible
from eval.probe_report import plot_probes
from eval.probes import run_probes
from foveated_vlm.files import atomic_write_text
from foveated_vlm.training.config import load_config
from foveated_vlm.training.data import build_split
from foveated_vlm.training.figures import plot_fovea_on_named_object, plot_loss_curve
from foveated_vlm.training.trainer import CONFIG_NAME, FINAL_DIR, LOG_NAME
from layout_foveated import UnnormalisedPixelsWarning
from modeling_foveated import FoveatedVLMForConditionalGeneration
from processing_foveated import FoveatedVLMProcessor

REPORT_NAME = "report.json"
FOVEA_FIGURE = "fovea_named_object.png"
PROBES_FIGURE = "probes.png"
LOSS_FIGURE = "loss_curve.png"
DEMO_READERS = ("dynamic", "static", "blank", "oracle", "random")
"""The readers of the report: the model's two readings, the zero-frame control and the two query bounds."""
READER_LABELS = {
    "dynamic": "dynamic (planned queries)",
    "static": "static (static query, same weights)",
    "blank": "blank (zero-frame control)",
    "oracle": "oracle (planned, confined to the box)",
    "random": "random queries",
    "centre": "centre (planned, confined to the centre)",
    "shuffled": "shuffled (planned, permuted in time)",
}
NUM_EXAMPLES = 6
HELDOUT_TESTS = (
    "What the held-out split tests: whether each attribute is read from the video rather than guessed from another "
    "(a model that infers shape from motion fails shape here, so 'all' can sit below the majority answer, which "
    "is counted on these unseen pairs)."
)
NUM_FIGURE_CLIPS = 3


@torch.no_grad()
def reader_attention(model, processor, items: list[dict[str, Any]], reader: str) -> list[np.ndarray]:
    """Per clip ``[T, g, g]``: the attention ``reader`` (of :mod:`eval.probes`) spreads over the patch grid.

    The same inputs and call as the probes' mass in box: the dynamic reader's fine pass, the static reader's
    coarse pass.
    """
    from eval.probes import prepare_batch, reader_call

    batch = prepare_batch(model, processor, items, list(range(len(items))))
    inputs, _, probe, mode = reader_call(reader, model, batch)
    with model.probe_reading(**probe):
        output = model(**inputs, inference_mode=mode)
    attention = output.attention_coarse if reader == "static" else output.attention_fine
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    return [m.numpy() for m in attention.float().cpu().reshape(-1, grid, grid).split(batch.lengths)]


def target_boxes(item: dict[str, Any]) -> np.ndarray:
    """``[T, 4]`` pixel box of the clip's target (the named object), NaN in frames where it is out of view."""
    boxes = np.asarray(item["boxes"], dtype=float)[:, item["target_index"]].copy()
    boxes[~target_visible(item)] = np.nan
    return boxes


def _marks(hits: dict[str, bool]) -> str:
    """``"shape ✗  size ✓  motion ✓"``: which scored attributes a caption got right."""
    return "  ".join(f"{name} {'✓' if hit else '✗'}" for name, hit in hits.items())


def fovea_figure(model, processor, clips, records: list[dict[str, Any]], path: Path, num_clips: int) -> None:
    """The fovea on the named object beside the static query, for the first ``num_clips`` clips (unselected)."""
    items = [clips[i] for i in range(min(num_clips, len(clips)))]
    dynamic = reader_attention(model, processor, items, "dynamic")
    static = reader_attention(model, processor, items, "static")
    titles, labels = [], []
    for item, record in zip(items, records, strict=False):
        readers = record["readers"]
        lines = [f"prompt: {item['prompt']!r}", f"reference: {record['reference']!r}"]
        lines += [
            f"{reader} caption: {readers[reader]['generated']!r}  {_marks(readers[reader]['hits'])}"
            for reader in ("dynamic", "static")
            if reader in readers
        ]
        titles.append("\n".join(lines))
        mass = {
            name: readers.get(name, {}).get("mass_in_box", float("nan")) for name in ("dynamic", "static")
        }
        chance = readers["dynamic"]["chance"]
        labels.append(
            (
                f"dynamic\nmass in box {mass['dynamic']:.2f}\n(chance {chance:.2f})",
                f"static\nmass in box {mass['static']:.2f}",
            )
        )
    plot_fovea_on_named_object(
        [item["frames"] for item in items],
        [target_boxes(item) for item in items],
        dynamic,
        static,
        titles,
        labels,
        path,
        title=f"The fovea on the named object beside the static query: the first {len(items)} held-out clips "
        "(unselected)\ncyan box: the object the prompt names; heat maps: query attention over the patches, one "
        "colour scale per clip; mass in box over frames 2..T"
        + ("; frame 1's query is planned from the prompt" if model.config.plan_first_query else ""),
    )


def summarise_probes(probes: dict[str, Any]) -> dict[str, Any]:
    """The report's figures from a :func:`eval.probes.run_probes` result (its named clips, else all clips)."""
    subset = "named" if "named" in probes["summary"] else "all"
    summary = probes["summary"][subset]
    readers = summary["readers"]
    attributes = [
        name
        for name in probes["attributes"]
        if any(name in figures["accuracy"] for figures in readers.values())
    ]
    return {
        "subset": subset,
        "num_clips": summary["num_clips"],
        "num_named": sum(record["named"] for record in probes["clips"]),
        "attributes": attributes,
        "accuracy": {
            reader: {"all_attributes": figures["all_attributes"], **figures["accuracy"]}
            for reader, figures in readers.items()
        },
        "majority_baseline": summary["majority_baseline"],
        "mass_in_box": {
            reader: {key: figures[key] for key in ("mass_in_box", "chance", "lift")}
            for reader, figures in readers.items()
        },
        "chance": readers[next(iter(readers))]["chance"],
        "loss_fine": {reader: figures["loss_fine"] for reader, figures in readers.items()},
        "ratio_loss_static_dynamic": summary["ratio_loss_static_dynamic"],
    }


def _examples(clips, records: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [
        {
            "clip_id": record["clip_id"],
            "prompt": clips[i]["prompt"],
            "reference": record["reference"],
            **{reader: result["generated"] for reader, result in record["readers"].items()},
        }
        for i, record in enumerate(records[:NUM_EXAMPLES])
    ]


def run_report(
    run_dir: str | Path,
    num_clips: int | None = None,
    batch_size: int | None = None,
    readers: tuple[str, ...] = DEMO_READERS,
    num_figure_clips: int = NUM_FIGURE_CLIPS,
    validation: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Probe ``run_dir/final`` on held-out clips (and, with ``validation``, on as many validation clips: the
    training (shape, motion) pairs); write the figures and ``report.json``; return the report."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_NAME)
    if config.data.kind != "procedural":
        raise ValueError(
            f"demo_report scores procedural captions; this run trained on data.kind={config.data.kind!r}"
        )
    count = num_clips or config.eval.num_heldout_clips
    batch_size = batch_size or config.eval.batch_size
    model = FoveatedVLMForConditionalGeneration.from_pretrained(run_dir / FINAL_DIR).eval()
    processor = FoveatedVLMProcessor.from_pretrained(run_dir / FINAL_DIR)

    def probe(role: str):
        config.data.num_clips[role] = count
        clips = build_split(config, role, processor, model.config.target_source)
        with warnings.catch_warnings():
            # The blank reader's all-zero frames are the mean-colour frames on purpose, not unnormalised pixels.
            warnings.simplefilter("ignore", UnnormalisedPixelsWarning)
            probes = run_probes(
                model,
                processor,
                clips,
                batch_size=batch_size,
                max_new_tokens=config.eval.max_new_tokens,
                readers=readers,
                progress=progress,
            )
        return clips, probes

    heldout, probes = probe("heldout")
    figures = {"fovea": str(run_dir / FOVEA_FIGURE), "probes": str(run_dir / PROBES_FIGURE)}
    fovea_figure(model, processor, heldout, probes["clips"], run_dir / FOVEA_FIGURE, num_figure_clips)
    plot_probes(probes["summary"]["all"], run_dir / PROBES_FIGURE, split="heldout")
    if (run_dir / LOG_NAME).is_file():
        plot_loss_curve(run_dir / LOG_NAME, run_dir / LOSS_FIGURE)
        figures["loss_curve"] = str(run_dir / LOSS_FIGURE)
    report = {
        "split": "heldout",
        "train_seed": config.train.seed,
        "data_seed": config.data.seed,
        "readers": list(readers),
        "box_labels": model.config.attention_supervision_weight > 0,
        **summarise_probes(probes),
        "figures": figures,
        "examples": _examples(heldout, probes["clips"]),
        "probes": probes,
    }
    if validation:
        clips, validation_probes = probe("validation")
        report["validation"] = {
            "split": "validation",
            **summarise_probes(validation_probes),
            "examples": _examples(clips, validation_probes["clips"]),
            "probes": validation_probes,
        }
    atomic_write_text(run_dir / REPORT_NAME, json.dumps(_json_safe(report), indent=2))
    return report


def _json_safe(value: Any) -> Any:
    """Non-finite floats as strings ("nan"), so that report.json is strict JSON."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def _ci(figure: dict[str, float] | None, decimals: int = 3) -> str:
    if figure is None:
        return "n/a"
    return f"{figure['estimate']:.{decimals}f} [{figure['low']:.{decimals}f}, {figure['high']:.{decimals}f}]"


def _accuracy_lines(block: dict[str, Any], width: int) -> list[str]:
    attributes, accuracy = block["attributes"], block["accuracy"]
    lines = [f"  {'reader':<{width}}" + "".join(f"{name:<22}" for name in ("all", *attributes))]
    for reader, figures in accuracy.items():
        cells = [_ci(figures.get(name)) for name in ("all_attributes", *attributes)]
        lines.append(f"  {READER_LABELS[reader]:<{width}}" + "".join(f"{cell:<22}" for cell in cells))
    baseline = block["majority_baseline"]
    cells = [
        f"{baseline[name]:.3f}" if name in baseline else "n/a" for name in ("all_attributes", *attributes)
    ]
    lines.append(f"  {'majority answer (blind)':<{width}}" + "".join(f"{cell:<22}" for cell in cells))
    return lines


def _kind(block: dict[str, Any]) -> str:
    return "named-object" if block["subset"] == "named" or block["num_named"] == block["num_clips"] else "all"


BOX_LABELS_USED = (
    "Box labels: USED. The fovea was trained with attention supervision (attention_supervision_weight > 0: -log "
    "mass in the named object's box, from the procedural boxes); the label-free recipe is studied in "
    "studies/label_free/RESULTS.md."
)
NO_BOX_LABELS = "Box labels: none (attention_supervision_weight 0): every figure below is label-free."


def format_report(report: dict[str, Any]) -> str:
    """Human-readable summary of :func:`run_report`'s figures, one block per question."""
    width = max(len(READER_LABELS[reader]) for reader in report["accuracy"]) + 2
    lines = [
        f"held-out {_kind(report)} clips: {report['num_clips']} (train seed {report['train_seed']}, data seed "
        f"{report['data_seed']}; each target's (shape, motion) pair never occurs in training). Mean over clips "
        "[95% bootstrap CI].",
        HELDOUT_TESTS,
        BOX_LABELS_USED if report["box_labels"] else NO_BOX_LABELS,
        "",
        "Caption accuracy (exact match of each scored attribute; 'all' = every one right):",
        *_accuracy_lines(report, width),
        "",
        "Attention mass in the named object's box (frames 2..T where it is in view):",
    ]
    for reader, figures in report["mass_in_box"].items():
        lines.append(
            f"  {READER_LABELS[reader]:<{width}}mass {_ci(figures['mass_in_box'])}   "
            f"lift {_ci(figures['lift'], 2)}"
        )
    lines.append(f"  {'chance (box area share)':<{width}}     {_ci(report['chance'])}")
    losses = report["loss_fine"]
    lines += [
        "",
        "Next-frame prediction loss (MSE): "
        + ", ".join(
            f"{reader} {_ci(losses[reader], 5)}" for reader in ("dynamic", "static") if reader in losses
        ),
        f"  coarse / fine = static / dynamic ratio: {_ci(report['ratio_loss_static_dynamic'])}"
        " (> 1: the planned queries predict the next frame better)",
    ]
    validation = report.get("validation")
    if validation:
        lines += [
            "",
            f"validation {_kind(validation)} clips: {validation['num_clips']} (training (shape, motion) pairs, "
            "clips not trained on). Caption accuracy:",
            *_accuracy_lines(validation, width),
            "  mass in box: "
            + ", ".join(
                f"{reader} {_ci(figures['mass_in_box'])}"
                for reader, figures in validation["mass_in_box"].items()
                if reader in ("dynamic", "static")
            )
            + f", chance {_ci(validation['chance'])}",
        ]
    lines += ["", "held-out examples [prompt] reference -> " + " | ".join(report["readers"]) + ":"]
    for example in report["examples"]:
        generated = " | ".join(example.get(reader, "") or "(empty)" for reader in report["readers"])
        lines.append(f"  [{example['prompt']}] {example['reference']} -> {generated}")
    lines.append("figures: " + ", ".join(report["figures"].values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run_dir", required=True, help="output folder of train_accelerate.py")
    parser.add_argument(
        "--num_clips", type=int, help="held-out clips to read (default eval.num_heldout_clips)"
    )
    parser.add_argument(
        "--batch_size", type=int, help="clips per forward and generate (default eval.batch_size)"
    )
    parser.add_argument(
        "--readers",
        nargs="+",
        default=list(DEMO_READERS),
        choices=list(READER_LABELS),
        help=f"readers of eval.probes to report (default {' '.join(DEMO_READERS)}; dynamic comes first)",
    )
    args = parser.parse_args(argv)
    readers = tuple(dict.fromkeys(["dynamic", *args.readers]))
    report = run_report(args.run_dir, args.num_clips, args.batch_size, readers)
    print(format_report(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
