"""Captioning scores: BLEU-4, ROUGE-L, CIDEr-D against references; attribute accuracy on procedural clips.

    python -m eval.captioning --run_dir RUN --split heldout --num_clips 256 --out OUT [--modes two_pass coarse]

Greedy captions (``generate``) in each inference mode: ``two_pass`` (coarse plans, fine reads) and ``coarse``
(static query only). BLEU/ROUGE come from ``evaluate.load`` when it can be loaded and otherwise from
``foveated_vlm.metrics`` (the report names the implementation of every number); CIDEr-D replaces METEOR,
whose WordNet data cannot be had offline. On procedural clips the script also scores the exact colour, shape
and motion read from each caption (``parse_caption``); the default ``heldout`` split holds only shape x motion
combinations never seen in training. Writes ``OUT/report.md``, ``OUT/report.json``,
``OUT/captions.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from configuration_foveated import INFERENCE_MODES
from eval.attributes import DEFAULT_SCORED_ATTRIBUTES, score_caption
from eval.common import (
    DEFAULT_MAX_NEW_TOKENS,
    command_line,
    default_inference_mode,
    format_ci,
    load_context,
    markdown_table,
    script_main,
    script_parser,
    summarise,
    write_report,
)
from foveated_vlm.data.collate import VideoCaptionCollator
from foveated_vlm.files import atomic_write_text
from foveated_vlm.metrics import BACKENDS, CAPTION_METRICS, caption_metrics

NUM_EXAMPLES = 8
CAPTIONS_NAME = "captions.jsonl"
ACCURACY_KEYS = (*DEFAULT_SCORED_ATTRIBUTES, "all")
"""Attribute accuracies reported: each of :data:`DEFAULT_SCORED_ATTRIBUTES` and all of them together."""


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


def attribute_hits(result: dict[str, str]) -> dict[str, float]:
    """1.0 or 0.0 per key of ``ACCURACY_KEYS``: the generated caption's attributes against the reference's
    (:func:`eval.attributes.score_caption`)."""
    hits = score_caption({"caption": result["reference"]}, result["generated"])
    return {**{key: float(hit) for key, hit in hits.items()}, "all": float(all(hits.values()))}


def score_captions(results: list[dict[str, str]], procedural: bool, backend: str) -> dict[str, Any]:
    """Caption metrics of ``[{"reference", "generated", ...}]`` and, for procedural clips, attribute accuracy."""
    predictions = [result["generated"] for result in results]
    scores, implementations = caption_metrics(predictions, [[r["reference"]] for r in results], backend)
    figures: dict[str, Any] = {"metrics": scores, "implementations": implementations}
    if procedural:
        hits = [attribute_hits(result) for result in results]
        figures["attribute_accuracy"] = {key: summarise([hit[key] for hit in hits]) for key in ACCURACY_KEYS}
    return figures


def format_markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    modes = report["modes"]
    rows = [[name, *(modes[mode]["metrics"][name] for mode in modes)] for name in CAPTION_METRICS]
    if all("attribute_accuracy" in figures for figures in modes.values()):
        rows += [
            [f"{key} accuracy", *(format_ci(modes[mode]["attribute_accuracy"][key], 3) for mode in modes)]
            for key in ACCURACY_KEYS
        ]
    first = next(iter(modes.values()))
    implementations = ", ".join(f"{name}: `{impl}`" for name, impl in first["implementations"].items())
    lines = [
        "# Captioning",
        "",
        f"`{report['command']}`",
        "",
        f"Model `{report['model']}`, {report['num_clips']} clips of split `{report['split']}` "
        f"({report['data_kind']} data), greedy decoding, at most {report['max_new_tokens']} new tokens.",
        f"Implementations: {implementations}. METEOR is not reported (WordNet data unavailable offline); "
        "CIDEr-D stands in for it. Accuracies: mean [95% bootstrap CI] of exact matches parsed from the captions.",
        "",
        markdown_table(["metric", *modes], rows),
        "",
        "## Examples",
        "",
    ]
    for mode, figures in modes.items():
        lines += [f"**{mode}**", ""]
        lines += [f"- [{e['prompt']}] {e['reference']} -> `{e['generated']}`" for e in figures["examples"]]
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Caption in every mode, score, write the reports, return the report."""
    context = load_context(args)
    model = context.model
    modes = args.modes or (INFERENCE_MODES if model.config.inference_mode == "two_pass" else ("coarse",))
    report: dict[str, Any] = {
        "command": command_line(),
        "model": str(context.model_path),
        "split": args.split,
        "data_kind": context.config.data.kind,
        "num_clips": len(context.dataset),
        "max_new_tokens": args.max_new_tokens,
        "modes": {},
    }
    lines = []
    for mode in modes:
        with default_inference_mode(model, mode):
            results = caption_clips(
                model, context.processor, context.dataset, args.batch_size, args.max_new_tokens
            )
        figures = score_captions(results, context.is_procedural, args.metrics_backend)
        report["modes"][mode] = {**figures, "examples": results[:NUM_EXAMPLES]}
        lines += [json.dumps({"mode": mode, **result}) + "\n" for result in results]
    atomic_write_text(context.out_dir / CAPTIONS_NAME, "".join(lines))
    write_report(context.out_dir, report, format_markdown(report))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=INFERENCE_MODES,
        help="inference modes to caption with (default: both, or coarse for a coarse-only model)",
    )
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument(
        "--metrics_backend",
        choices=BACKENDS,
        default="auto",
        help="auto: evaluate.load if it loads, else the built-in implementations",
    )
    return parser


main = script_main(run, build_parser, format_markdown)

if __name__ == "__main__":
    main()
