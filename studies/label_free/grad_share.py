"""The gradient each loss term sends to the planner (``fovea_query_head``), measured term by term.

    python -m studies.label_free.grad_share --run_dir RUN --split validation --num_clips 32 --out OUT

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

from eval.common import command_line, load_context, model_inputs, script_parser

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
    context = load_context(args)
    items = [context.dataset[index] for index in range(len(context.dataset))]
    inputs = model_inputs(context.processor, items, context.vae).to(context.model.device)
    report = {
        "command": command_line(),
        "model": str(context.model_path),
        "num_clips": len(items),
        "terms": planner_gradient_norms(context.model, inputs),
    }
    Path(args.out, JSON_NAME).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    report = run(script_parser(__doc__).parse_args(argv))
    print(json.dumps(report["terms"], indent=1))
    return report


if __name__ == "__main__":
    main()
