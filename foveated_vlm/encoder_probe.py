"""The frame encoder's report card: linear probes on frozen patch features, pretrained against random init.

    python -m foveated_vlm.encoder_probe --config configs/encoder.yaml --encoder outputs/encoder \\
        --out studies/encoder

For every patch of held-out procedural frames that one object covers (at least ``probe.min_coverage`` of its
pixels), the probe predicts that object's shape (4 classes) and colour (7 classes) from the encoder's final
(normed) patch feature, with a multinomial logistic regression fitted on other frames. The frozen features of
the pretrained encoder are compared with random-init encoders of the same shapes (one per
``probe.random_init_ranges``) and the majority answer. Prints a table, writes ``card.json`` and ``card.png``.
Targets (issue 21): shape >= 0.95, colour >= 0.99.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from foveated_vlm.data.frames import NO_OBJECT, LabelledFrames, patch_labels, procedural_frames
from foveated_vlm.data.procedural import COLOURS, SHAPES
from foveated_vlm.pretrain_encoder import EncoderPretrainConfig, load_encoder_config, normalise_frames

ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS}
"""What is probed, and its classes."""
TARGETS: dict[str, float] = {"shape": 0.95, "colour": 0.99}
"""The accuracy each probe must reach on held-out frames (issue 21)."""
CARD_JSON = "card.json"
CARD_PNG = "card.png"
FEATURE_EPSILON = 1e-6
"""Added to each feature's standard deviation before standardising (constant features)."""


@torch.no_grad()
def patch_features(encoder: DINOv3ViTModel, frames: np.ndarray, batch_size: int) -> torch.Tensor:
    """Final normed patch features of uint8 frames ``[N, H, W, 3]``: ``[N, (H / p) * (W / p), D]``."""
    encoder.eval()
    prefix = 1 + encoder.config.num_register_tokens
    chunks = []
    for start in range(0, len(frames), batch_size):
        pixels = normalise_frames(torch.from_numpy(frames[start : start + batch_size]))
        chunks.append(encoder(pixels).last_hidden_state[:, prefix:])
    return torch.cat(chunks)


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, max_iter: int, weight_decay: float
) -> nn.Module:
    """Multinomial logistic regression (L-BFGS, L2 ``weight_decay``) on standardised ``features`` ``[M, D]``
    with ``labels`` ``[M]`` in ``[0, num_classes)``; returns a module mapping raw features to logits."""
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"features must be [M, D] and labels [M], got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be a non-empty set of class indices in [0, {num_classes})")
    mean, std = features.mean(0), features.std(0) + FEATURE_EPSILON
    linear = nn.Linear(features.shape[1], num_classes)
    standardised = (features - mean) / std
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(standardised), labels) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():  # fold the standardisation into the layer
        linear.weight.div_(std)
        linear.bias.sub_(linear.weight @ mean)
    return linear.requires_grad_(False)


def _labelled(features: torch.Tensor, pixel_map: np.ndarray, patch_size: int, min_coverage: float):
    """The features ``[N, P, D]`` of patches one object covers, and that object's class: ``[M, D]``, ``[M]``."""
    labels = torch.from_numpy(patch_labels(pixel_map, patch_size, min_coverage)).reshape(len(pixel_map), -1)
    keep = labels != NO_OBJECT
    return features[keep], labels[keep]


def probe_encoder(
    encoder: DINOv3ViTModel, fit: LabelledFrames, test: LabelledFrames, config: EncoderPretrainConfig
) -> dict[str, float]:
    """Held-out accuracy of each attribute's linear probe on ``encoder``'s frozen patch features."""
    settings = config.probe
    patch_size = encoder.config.patch_size
    fit_features = patch_features(encoder, fit.frames, settings.batch_size)
    test_features = patch_features(encoder, test.frames, settings.batch_size)
    scores = {}
    for attribute, classes in ATTRIBUTES.items():
        x_fit, y_fit = _labelled(
            fit_features, getattr(fit, f"{attribute}_map"), patch_size, settings.min_coverage
        )
        x_test, y_test = _labelled(
            test_features, getattr(test, f"{attribute}_map"), patch_size, settings.min_coverage
        )
        probe = fit_linear_probe(x_fit, y_fit, len(classes), settings.max_iter, settings.weight_decay)
        scores[attribute] = round((probe(x_test).argmax(-1) == y_test).float().mean().item(), 4)
    return scores


def majority_scores(fit: LabelledFrames, test: LabelledFrames, patch_size: int, min_coverage: float) -> dict:
    """Accuracy of always answering the fitting frames' most common class (the floor of every probe)."""
    scores = {}
    for attribute in ATTRIBUTES:
        fitted = patch_labels(getattr(fit, f"{attribute}_map"), patch_size, min_coverage)
        tested = patch_labels(getattr(test, f"{attribute}_map"), patch_size, min_coverage)
        majority = np.bincount(fitted[fitted != NO_OBJECT]).argmax()
        scores[attribute] = round(float((tested[tested != NO_OBJECT] == majority).mean()), 4)
    return scores


def report_card(config: EncoderPretrainConfig, encoder: DINOv3ViTModel) -> dict[str, Any]:
    """Probe ``encoder`` and random-init encoders of its shapes on the same frames: rows of the card."""
    source = config.frame_source(config.probe.procedural)
    fit = procedural_frames(source, "validation", config.probe.num_fit_frames)
    test = procedural_frames(
        source, "validation", config.probe.num_test_frames, start=config.probe.num_fit_frames
    )
    patch_size = encoder.config.patch_size
    rows = {"pretrained": probe_encoder(encoder, fit, test, config)}
    for init_range in config.probe.random_init_ranges:
        torch.manual_seed(config.pretrain.seed)
        random_config = DINOv3ViTConfig(**{**encoder.config.to_dict(), "initializer_range": init_range})
        rows[f"random init {init_range}"] = probe_encoder(DINOv3ViTModel(random_config), fit, test, config)
    rows["majority answer"] = majority_scores(fit, test, patch_size, config.probe.min_coverage)
    num_test = int((patch_labels(test.shape_map, patch_size, config.probe.min_coverage) != NO_OBJECT).sum())
    return {
        "rows": rows,
        "targets": TARGETS,
        "num_test_patches": num_test,
        "num_fit_frames": config.probe.num_fit_frames,
        "num_test_frames": config.probe.num_test_frames,
        "image_size": source.image_size,
        "patch_size": patch_size,
    }


def format_table(card: dict[str, Any]) -> str:
    """The card as a Markdown table (one row per encoder, the targets last)."""
    lines = ["| encoder | " + " | ".join(ATTRIBUTES) + " |", "|---|" + "---|" * len(ATTRIBUTES)]
    rows = {**card["rows"], "target": card["targets"]}
    for name, scores in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{scores[key]:.3f}" for key in ATTRIBUTES) + " |")
    return "\n".join(lines)


def plot_card(card: dict[str, Any], path: str) -> None:
    """Grouped bars: each encoder's held-out accuracy per attribute, the target as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in card["rows"] if name != "majority answer"]
    figure, axes = plt.subplots(1, len(ATTRIBUTES), figsize=(4.2 * len(ATTRIBUTES), 3.6), sharey=True)
    for axis, attribute in zip(axes, ATTRIBUTES, strict=True):
        values = [card["rows"][name][attribute] for name in names]
        bars = axis.bar(range(len(names)), values, color=["tab:blue"] + ["tab:grey"] * (len(names) - 1))
        axis.bar_label(bars, fmt="%.3f", fontsize=8)
        axis.axhline(card["targets"][attribute], color="tab:red", linestyle="--", label="target")
        axis.axhline(
            card["rows"]["majority answer"][attribute], color="black", linestyle=":", label="majority"
        )
        axis.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
        axis.set_title(f"{attribute} of the object under a patch")
        axis.set_ylim(0, 1.05)
    axes[0].set_ylabel("linear probe accuracy, held-out frames")
    axes[0].legend(loc="lower left", fontsize=8)
    figure.suptitle(
        f"Frozen patch features, {card['num_test_patches']} held-out patches "
        f"({card['image_size']} px frames, {card['patch_size']} px patches)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default=None, help="YAML file (configs/encoder.yaml): its frames and probe"
    )
    parser.add_argument(
        "--encoder", required=True, help="saved encoder folder (python -m foveated_vlm.pretrain_encoder)"
    )
    parser.add_argument("--out", required=True, help="folder for card.json and card.png")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.encoder, "config.json")):
        raise SystemExit(f"--encoder {args.encoder!r} is not a saved encoder folder (no config.json)")
    config = load_encoder_config(args.config, args.overrides)
    if config.pretrain.torch_threads:
        torch.set_num_threads(config.pretrain.torch_threads)
    card = report_card(config, DINOv3ViTModel.from_pretrained(args.encoder))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, CARD_JSON), "w", encoding="utf-8") as handle:
        json.dump(card, handle, indent=1)
    plot_card(card, os.path.join(args.out, CARD_PNG))
    print(format_table(card))
    print(f"wrote {os.path.join(args.out, CARD_JSON)} and {os.path.join(args.out, CARD_PNG)}")


if __name__ == "__main__":
    main()
