"""Evaluate a trained run on held-out procedural clips: captions, attribute accuracy, losses, two figures.

    python -m foveated_vlm.training.demo_report --run_dir outputs/demo

Loads ``RUN/final``, captions ``eval.num_heldout_clips`` clips of the held-out split (colour x shape x motion
combinations never seen in training) with greedy ``generate``, and prints the exact-match accuracy of each
attribute (colour, shape, motion, read from the generated text with ``parse_caption``), loss_fine vs
loss_coarse on those clips, and writes ``RUN/loss_curve.png``, ``RUN/attention_over_frames.png`` and
``RUN/report.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modeling_foveated import FoveatedVLMForConditionalGeneration
from processing_foveated import FoveatedVLMProcessor

from ..data.collate import VideoCaptionCollator
from ..data.procedural import parse_caption
from ..data.targets import atomic_write_text
from .config import load_config
from .data import build_split, eval_loader
from .figures import plot_attention_over_frames, plot_loss_curve
from .trainer import CONFIG_NAME, FINAL_DIR, LOG_NAME, validate

ATTRIBUTES = ("colour", "shape", "motion")
REPORT_NAME = "report.json"
NUM_EXAMPLES = 8


@torch.no_grad()
def caption_clips(model, processor, dataset, batch_size: int, max_new_tokens: int) -> list[dict[str, str]]:
    """Greedy captions of every clip: ``[{"clip_id", "prompt", "reference", "generated"}]``."""
    from tqdm.auto import tqdm

    collator = VideoCaptionCollator(processor, with_captions=False, with_targets=False, with_layout=False)
    results = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="captioning held-out clips"):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        inputs = collator(items)
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        for item, text in zip(items, processor.decode_generated(generated, inputs), strict=True):
            results.append(
                {
                    "clip_id": item["clip_id"],
                    "prompt": item["prompt"],
                    "reference": item["caption"],
                    "generated": text.strip(),
                }
            )
    return results


def attribute_accuracy(results: list[dict[str, str]]) -> dict[str, float]:
    """Exact-match accuracy of colour, shape and motion (parsed from the text), their mean, and whole triples."""
    if not results:
        raise ValueError("no captions to score")
    hits = {key: 0 for key in (*ATTRIBUTES, "all")}
    for result in results:
        reference, generated = parse_caption(result["reference"]), parse_caption(result["generated"])
        matched = [generated[key] == reference[key] for key in ATTRIBUTES]
        for key, match in zip(ATTRIBUTES, matched, strict=True):
            hits[key] += match
        hits["all"] += all(matched)
    accuracy = {key: value / len(results) for key, value in hits.items()}
    accuracy["mean"] = sum(accuracy[key] for key in ATTRIBUTES) / len(ATTRIBUTES)
    return accuracy


@torch.no_grad()
def attention_maps(
    model, processor, items: list[dict[str, Any]]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Fine and coarse query attention of each clip on the patch grid: per clip ``[T, g, g]`` each."""
    batch = VideoCaptionCollator(processor)(items)
    output = model(**batch)
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    lengths = batch["video_frame_mask"].sum(1).tolist()
    fine = output.attention_fine.float().reshape(-1, grid, grid).split(lengths)
    coarse = output.attention_coarse.float().reshape(-1, grid, grid).split(lengths)
    return [m.numpy() for m in fine], [m.numpy() for m in coarse]


def run_report(
    run_dir: str | Path, num_clips: int | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """Evaluate ``run_dir/final`` on held-out clips; write figures and ``report.json``; return the figures."""
    from accelerate import Accelerator

    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_NAME)
    if config.data.kind != "procedural":
        raise ValueError(
            f"demo_report scores procedural captions; this run trained on data.kind={config.data.kind!r}"
        )
    if num_clips is not None:
        config.data.num_clips["heldout"] = num_clips
    else:
        config.data.num_clips["heldout"] = config.eval.num_heldout_clips
    batch_size = batch_size or config.eval.batch_size
    model = FoveatedVLMForConditionalGeneration.from_pretrained(run_dir / FINAL_DIR).eval()
    processor = FoveatedVLMProcessor.from_pretrained(run_dir / FINAL_DIR)
    heldout = build_split(config, "heldout", processor, model.config.target_source)

    results = caption_clips(model, processor, heldout, batch_size, config.eval.max_new_tokens)
    accuracy = attribute_accuracy(results)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    losses = validate(
        model, eval_loader(heldout, VideoCaptionCollator(processor), batch_size, 1, 0), accelerator, None
    )
    examples = [heldout[i] for i in range(min(len(heldout), NUM_EXAMPLES // 2))]
    fine, coarse = attention_maps(model, processor, examples)
    titles = [f"{r['reference']}  ->  {r['generated']}" for r in results[: len(examples)]]
    plot_attention_over_frames(
        [e["frames"] for e in examples], fine, coarse, titles, run_dir / "attention_over_frames.png"
    )
    if (run_dir / LOG_NAME).is_file():
        plot_loss_curve(run_dir / LOG_NAME, run_dir / "loss_curve.png")
    report = {
        "num_clips": len(results),
        "accuracy": accuracy,
        "heldout_losses": losses,
        "examples": results[:NUM_EXAMPLES],
    }
    atomic_write_text(run_dir / REPORT_NAME, json.dumps(report, indent=2))
    return report


def format_report(report: dict[str, Any]) -> str:
    """Human-readable summary of :func:`run_report`'s figures."""
    accuracy, losses = report["accuracy"], report["heldout_losses"]
    lines = [
        f"held-out clips captioned: {report['num_clips']} (colour x shape x motion combinations unseen in "
        "training)"
    ]
    lines += [f"  {key:<7} exact-match accuracy: {accuracy[key]:6.1%}" for key in ATTRIBUTES]
    lines.append(
        f"  mean attribute accuracy: {accuracy['mean']:6.1%}   all three right: {accuracy['all']:6.1%}"
    )
    lines.append(
        f"  loss_fine {losses['loss_fine']:.5f}  vs  loss_coarse {losses['loss_coarse']:.5f}  "
        f"(coarse/fine = {losses['ratio_coarse_fine']:.3f})   loss_caption {losses['loss_caption']:.4f}"
    )
    lines.append("examples (reference -> generated):")
    lines += [f"  [{e['prompt']}] {e['reference']} -> {e['generated']}" for e in report["examples"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run_dir", required=True, help="output folder of train_accelerate.py")
    parser.add_argument(
        "--num_clips", type=int, help="held-out clips to caption (default eval.num_heldout_clips)"
    )
    parser.add_argument("--batch_size", type=int, help="clips per generate call (default eval.batch_size)")
    args = parser.parse_args(argv)
    report = run_report(args.run_dir, args.num_clips, args.batch_size)
    print(format_report(report))
    print(
        f"figures: {Path(args.run_dir) / 'loss_curve.png'}, {Path(args.run_dir) / 'attention_over_frames.png'}"
    )
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
