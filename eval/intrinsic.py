"""Intrinsic metrics of a checkpoint on any data set (proposal §13.1).

    python -m eval.intrinsic --run_dir RUN --split heldout --num_clips 256 --out OUT

Per clip, from one forward pass (both passes in two-pass mode):

* ``loss_fine`` / ``loss_coarse``: next-frame prediction MSE in target space over every frame (the training
  losses), and ``loss_coarse / loss_fine`` with a paired bootstrap CI (> 1: the predicted queries help);
* next-frame MSE, PSNR and SSIM over frames 2..T (a previous frame exists) for both passes and for the
  copy-the-last-frame baseline; PSNR/SSIM compare decoded images in [0, 1] (VAE decode for latent targets,
  else the downsampled frames): the decoded prediction against the decoded real target, so the figures
  measure prediction error, not the VAE's reconstruction error;
* ``caption_nll``: caption cross-entropy of the pass that feeds the cache;
* attention entropy (nats; log P is uniform) and coverage (fraction of patches holding 90% of the mass) of
  the static (coarse) and dynamic (fine) queries;
* collapse symptoms (NOTES §3): cosine similarity of the planned queries across the frames of a clip, of
  each pass's visual tokens across frames, of each planned query with the static query, of fine and coarse
  visual tokens of the same frame, and the overlap (sum of minima) of the two passes' attention maps.

Every figure is the mean over clips with a 95% bootstrap CI. Writes ``OUT/report.md``, ``OUT/report.json`` and
``OUT/per_clip.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from configuration_foveated import INFERENCE_MODES
from eval.common import (
    PASSES,
    ClipOutputs,
    command_line,
    format_ci,
    forward_clips,
    load_context,
    markdown_table,
    script_main,
    script_parser,
    summarise,
    write_report,
)
from foveated_vlm.files import atomic_write_text
from foveated_vlm.metrics import (
    attention_coverage,
    attention_entropy,
    bootstrap_ci,
    cosine_similarity_across_frames,
    psnr,
    ratio_of_means,
    ssim,
)

BASELINE = "copy"
PER_CLIP_NAME = "per_clip.jsonl"
NAN = float("nan")


def _mse_per_frame(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[T, C, h, w]`` pairs -> ``[T]``."""
    return (prediction - target).pow(2).flatten(1).mean(1)


def _mean(values: torch.Tensor) -> float:
    return float(values.double().mean()) if values.numel() else NAN


def prediction_metrics(outputs: ClipOutputs, decode) -> dict[str, float]:
    """Losses over all frames and next-frame MSE / PSNR / SSIM over frames 2..T for both passes and the baseline.

    ``decode`` maps targets ``[n, C, h, w]`` to images in [0, 1].
    """
    targets = outputs.targets
    later = slice(1, None)
    decoded_targets = decode(targets[later]) if targets.shape[0] > 1 else None
    candidates = {"fine": outputs.predictions_fine, "coarse": outputs.predictions_coarse}
    candidates[BASELINE] = targets.roll(1, dims=0)  # frame t predicted by frame t - 1 (row 0 unused)
    metrics: dict[str, float] = {}
    for name, prediction in candidates.items():
        if prediction is None:
            continue
        if name != BASELINE:
            metrics[f"loss_{name}"] = _mean(_mse_per_frame(prediction, targets))
        if decoded_targets is None:
            continue
        metrics[f"next_mse_{name}"] = _mean(_mse_per_frame(prediction[later], targets[later]))
        images = decode(prediction[later])
        metrics[f"psnr_{name}"] = _mean(psnr(images, decoded_targets))
        metrics[f"ssim_{name}"] = _mean(ssim(images, decoded_targets))
    return metrics


def attention_metrics(outputs: ClipOutputs) -> dict[str, float]:
    """Mean entropy and 90% coverage of each pass's attention maps, and the overlap of the two passes."""
    maps = {"fine": outputs.attention_fine, "coarse": outputs.attention_coarse}
    metrics: dict[str, float] = {}
    for name, attention in maps.items():
        if attention is not None:
            metrics[f"entropy_{name}"] = _mean(attention_entropy(attention.double()))
            metrics[f"coverage_{name}"] = _mean(attention_coverage(attention))
    if all(value is not None for value in maps.values()):
        metrics["attention_overlap_passes"] = _mean(torch.minimum(maps["fine"], maps["coarse"]).sum(-1))
    return metrics


def collapse_metrics(outputs: ClipOutputs, static_query: torch.Tensor | None) -> dict[str, float]:
    """Cosine similarities of queries and visual tokens across frames and between the passes."""
    metrics: dict[str, float] = {}
    if outputs.queries is not None:
        planned = outputs.queries[1:]  # frame 1 is always read by q_init
        metrics["query_similarity_frames"] = (
            cosine_similarity_across_frames(planned) if len(planned) > 1 else NAN
        )
        if static_query is not None and len(planned):
            metrics["query_static_similarity"] = _mean(
                F.cosine_similarity(planned, static_query[None], dim=-1)
            )
    for name, tokens in (("fine", outputs.visual_fine), ("coarse", outputs.visual_coarse)):
        if tokens is not None:
            metrics[f"visual_similarity_frames_{name}"] = cosine_similarity_across_frames(tokens)
    if outputs.visual_fine is not None and outputs.visual_coarse is not None:
        metrics["visual_similarity_passes"] = _mean(
            F.cosine_similarity(outputs.visual_fine, outputs.visual_coarse, dim=-1)
        )
    return metrics


def clip_metrics(outputs: ClipOutputs, decode, static_query: torch.Tensor | None) -> dict[str, float]:
    """Every per-clip figure of this script."""
    total, count = outputs.caption_log_likelihood
    return {
        **prediction_metrics(outputs, decode),
        "caption_nll": -total / count if count else NAN,
        **attention_metrics(outputs),
        **collapse_metrics(outputs, static_query),
    }


def aggregate(rows: list[dict[str, Any]], num_patches: int) -> dict[str, Any]:
    """Mean and bootstrap CI of every figure; the paired coarse/fine ratios; the fraction of clips fine wins."""
    keys = sorted({key for row in rows for key in row if key not in ("clip_id", "prompt")})
    summary: dict[str, Any] = {key: summarise([row.get(key, NAN) for row in rows]) for key in keys}
    for name in ("loss", "next_mse"):
        pairs = np.array([[row.get(f"{name}_coarse", NAN), row.get(f"{name}_fine", NAN)] for row in rows])
        pairs = pairs[np.isfinite(pairs).all(1)]
        if len(pairs):
            summary[f"ratio_{name}_coarse_fine"] = bootstrap_ci(pairs, ratio_of_means)
            summary[f"fine_wins_{name}"] = float(np.mean(pairs[:, 1] < pairs[:, 0]))
    summary["uniform_entropy"] = math.log(num_patches)
    return summary


def format_markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    summary = report["metrics"]
    rows = []
    for label, key in (
        ("loss (target MSE, all frames)", "loss"),
        ("next-frame MSE (frames 2..T)", "next_mse"),
        ("PSNR dB (decoded)", "psnr"),
        ("SSIM (decoded)", "ssim"),
        ("attention entropy (nats)", "entropy"),
        ("attention coverage 90%", "coverage"),
        ("visual-token similarity across frames", "visual_similarity_frames"),
    ):
        rows.append([label, *(format_ci(summary.get(f"{key}_{name}")) for name in (*PASSES, BASELINE))])
    ratio = summary.get("ratio_loss_coarse_fine")
    lines = [
        "# Intrinsic metrics",
        "",
        f"`{report['command']}`",
        "",
        f"Model `{report['model']}`, {report['num_clips']} clips of split `{report['split']}` "
        f"({report['data_kind']} data), inference mode `{report['inference_mode']}`, target `{report['target']}`.",
        "Mean over clips with 95% bootstrap CI. fine = dynamic (predicted) queries, coarse = static query, "
        "copy = the previous frame as prediction.",
        "",
        markdown_table(["metric", "fine (dynamic)", "coarse (static)", "copy last frame"], rows),
        "",
        f"- **loss_coarse / loss_fine = {format_ci(ratio)}** (> 1: the predicted queries help); fine beats coarse "
        f"on {summary.get('fine_wins_loss', float('nan')):.1%} of clips.",
        f"- next-frame MSE ratio coarse / fine = {format_ci(summary.get('ratio_next_mse_coarse_fine'))}.",
        f"- caption NLL = {format_ci(summary.get('caption_nll'))} nats/token.",
        f"- uniform attention entropy = log P = {summary['uniform_entropy']:.4f} nats.",
        "",
        "## Collapse symptoms (NOTES §3)",
        "",
        markdown_table(
            ["figure", "mean [95% CI]"],
            [
                ["planned-query cosine across frames", format_ci(summary.get("query_similarity_frames"))],
                ["planned query vs static query cosine", format_ci(summary.get("query_static_similarity"))],
                ["fine vs coarse visual token cosine", format_ci(summary.get("visual_similarity_passes"))],
                ["fine vs coarse attention overlap", format_ci(summary.get("attention_overlap_passes"))],
            ],
        ),
        "",
        "Values near 1 mean the dynamic queries barely differ across frames or from the static query.",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, write the reports, return the report."""
    context = load_context(args)
    model, processor = context.model, context.processor
    static_query = (
        model.fovea_static_query.detach().float().cpu() if hasattr(model, "fovea_static_query") else None
    )

    def decode(targets: torch.Tensor) -> torch.Tensor:
        return processor.video_processor.postprocess_targets(targets, context.vae).float().cpu()

    rows = []
    for item, outputs in forward_clips(context, args.inference_mode, args.batch_size, args.num_workers):
        rows.append({"clip_id": item.get("clip_id"), **clip_metrics(outputs, decode, static_query)})
    report = {
        "command": command_line(),
        "model": str(context.model_path),
        "split": args.split,
        "data_kind": context.config.data.kind,
        "num_clips": len(rows),
        "inference_mode": args.inference_mode or model.config.inference_mode,
        "target": model.config.target_source,
        "metrics": aggregate(rows, model.config.num_patches),
    }
    atomic_write_text(context.out_dir / PER_CLIP_NAME, "".join(json.dumps(row) + "\n" for row in rows))
    write_report(context.out_dir, report, format_markdown(report))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--inference_mode",
        choices=INFERENCE_MODES,
        help="reading to evaluate (default: the model's; two_pass gives both passes)",
    )
    return parser


main = script_main(run, build_parser, format_markdown)

if __name__ == "__main__":
    main()
