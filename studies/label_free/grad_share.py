"""The gradient each loss term sends to the planner (``fovea_query_head``), measured term by term.

    python -m studies.label_free.grad_share --run_dir RUN --split validation --num_clips 32 --out OUT
    python -m studies.label_free.grad_share --at_init --config configs/named.yaml [--set model.X=Y] --out OUT

``--at_init`` measures a freshly initialised model of ``--config`` (seeded by ``train.seed``) instead of a saved one.

One training-mode forward of a batch of clips (captions and next-frame targets), then for each weighted term of
the total loss (``loss_fine``, ``loss_coarse``, ``loss_caption``, ``loss_caption_coarse``) the L2 norm of its
gradient on the planner's parameters and its share of the sum of those norms. The issue's question: does the
next-frame loss out-shout the caption loss where the plan is made? Writes ``OUT/grad_share.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from eval.common import command_line, data_config, load_context, model_inputs, script_parser
from foveated_vlm.training.data import build_split
from foveated_vlm.training.modeling import build_model_and_processor

JSON_NAME = "grad_share.json"


def weighted_terms(config, output) -> dict[str, torch.Tensor]:
    """The weighted loss terms of ``output`` that the total loss sums, by name (the caption and next-frame ones;
    the reading losses, off in this study, are left out). ``loss_fine`` is absent with
    ``prediction_passes="coarse"``."""
    prediction = config.prediction_loss_weight
    candidates = {
        "loss_fine": (prediction if config.prediction_passes == "both" else 0.0, output.loss_fine),
        "loss_coarse": (prediction * config.lambda_coarse, output.loss_coarse),
        "loss_caption": (config.caption_loss_weight, output.loss_caption),
        "loss_caption_coarse": (
            config.caption_loss_weight * config.lambda_coarse,
            output.loss_caption_coarse,
        ),
    }
    return {name: weight * loss for name, (weight, loss) in candidates.items() if loss is not None and weight}


def planner_gradient_norms(model, inputs) -> dict[str, dict[str, float]]:
    """``{term: {"norm", "share"}}``: the L2 norm of each weighted term's gradient on ``fovea_query_head``'s
    parameters (one forward of ``inputs`` in training mode, one backward per term) and its share of their sum."""
    if model.config.foveation_mode != "foveated":
        raise ValueError(
            "grad_share measures the planner of a foveated model; this one is dense (no planner)"
        )
    parameters = list(model.model.fovea_query_head.parameters())
    model.train()
    output = model(**inputs)
    terms = weighted_terms(model.config, output)
    norms = {}
    for name, term in terms.items():
        grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
        squares = [grad.float().pow(2).sum() for grad in grads if grad is not None]
        norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    total = sum(norms.values()) or 1.0
    return {name: {"norm": norm, "share": norm / total} for name, norm in norms.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure on the first ``--num_clips`` clips of the split and write ``OUT/grad_share.json``."""
    if args.at_init:
        model, processor, dataset, source = _fresh_model(args)
    else:
        context = load_context(args)
        model, processor, dataset, source = (
            context.model,
            context.processor,
            context.dataset,
            context.model_path,
        )
    items = [dataset[index] for index in range(len(dataset))]
    inputs = model_inputs(processor, items).to(model.device)
    report = {
        "command": command_line(),
        "model": str(source),
        "num_clips": len(items),
        "terms": planner_gradient_norms(model, inputs),
    }
    Path(args.out, JSON_NAME).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def _fresh_model(args: argparse.Namespace):
    """A freshly initialised model of ``--config`` (``--set`` applied), its processor and the split's clips."""
    if not args.config:
        raise ValueError("--at_init builds the model of --config: pass --config (a training YAML)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    config = data_config(args, Path(args.out) / "none", Path(args.out))
    torch.manual_seed(config.train.seed)
    model, processor = build_model_and_processor(config)
    model.to(args.device)
    return model, processor, build_split(config, args.split, processor), f"fresh: {args.config}"


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    parser.add_argument("--at_init", action="store_true", help="measure a fresh model of --config")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    report = run(build_parser().parse_args(argv))
    print(json.dumps(report["terms"], indent=1))
    return report


if __name__ == "__main__":
    main()
