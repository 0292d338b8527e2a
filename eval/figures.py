"""Figures of a run: loss curves, attention heat maps over frames, predicted vs real next frames (PNG + GIF).

    python -m eval.figures --run_dir RUN --out OUT [--clips 0 1] [--split heldout]

* ``loss_curves.png``: loss_fine and loss_coarse against the step (training rows and validation points, log
  scale) and their ratio coarse / fine (> 1: the predicted queries help), from ``RUN/log.jsonl`` (``--log``).
* ``attention_clip<i>.png`` / ``.gif``: per frame, the frame (target box in green when known), the static
  query's attention (coarse) and the dynamic query's (fine), side by side.
* ``next_frames_clip<i>.png`` / ``.gif``: per frame, the real target, the fine and coarse predictions and the
  previous frame (the copy baseline), decoded to pixels (VAE decode for latent targets).

Writes ``OUT/report.md`` (embedding every figure) and ``OUT/report.json`` (their paths).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch

from configuration_foveated import INFERENCE_MODES
from eval.common import (
    LOG_NAME,
    ClipOutputs,
    command_line,
    forward_clips,
    load_context,
    pyplot,
    save_figure,
    script_main,
    script_parser,
    write_report,
)
from foveated_vlm.files import atomic_path
from foveated_vlm.metrics import crop_boxes
from foveated_vlm.training.figures import LOSS_NOTE, NOTE_WIDTH, read_log
from video_foveated import to_uint8

DISPLAY_SIDE = 160
"""Frames are upscaled (nearest) to about this many pixels for the GIFs."""
GIF_FRAME_MS = 600
HEAT_ALPHA = 0.65
HEAT_COLORMAP = "magma"
BOX_RGB = (60, 230, 60)
PANEL_GAP = 4
LABEL_HEIGHT = 14
SMOOTHING_POINTS = 20
"""The training curves are also drawn as a running mean over about 1/this of their rows."""
ATTENTION_NOTE = (
    "heat: the query's attention over the patches, scaled to each map's maximum (spread evenly = uniform colour); "
    "green box: the target"
)
LOSS_PASSES = (("loss_fine", "fine (dynamic)", "tab:red"), ("loss_coarse", "coarse (static)", "tab:blue"))


# ----------------------------------------------------------------------------------------------------
# Loss curves
# ----------------------------------------------------------------------------------------------------


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing running mean (shorter windows at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.maximum(0, np.arange(1, len(values) + 1) - window)]) / counts


def plot_loss_curves(log_path: Path, out_path: Path) -> dict[str, Any]:
    """Fine vs coarse losses and their ratio against the step; returns the final figures plotted."""
    rows = read_log(log_path)
    train = [r for r in rows if r.get("split") == "train" and "loss_fine" in r and "loss_coarse" in r]
    validation = [
        r for r in rows if r.get("split") == "validation" and "loss_fine" in r and "loss_coarse" in r
    ]
    if not train and not validation:
        raise ValueError(f"{log_path} has no rows with both loss_fine and loss_coarse")
    plt = pyplot()
    figure, (losses, ratios) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    window = max(1, len(train) // SMOOTHING_POINTS)
    steps = np.array([r["step"] for r in train])
    for key, label, colour in LOSS_PASSES:
        if train:
            values = np.array([r[key] for r in train])
            losses.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            losses.plot(steps, _running_mean(values, window), color=colour, label=f"{label} train")
        if validation:
            losses.plot(
                [r["step"] for r in validation],
                [r[key] for r in validation],
                "o--",
                color=colour,
                label=f"{label} validation",
                markersize=4,
            )
    losses.set_yscale("log")
    losses.set_title("next-frame prediction loss")
    if train:
        ratio = np.array([r["loss_coarse"] / r["loss_fine"] for r in train])
        ratios.plot(steps, ratio, color="tab:purple", alpha=0.25, linewidth=0.8)
        ratios.plot(steps, _running_mean(ratio, window), color="tab:purple", label="train")
    if validation:
        ratios.plot(
            [r["step"] for r in validation],
            [r["loss_coarse"] / r["loss_fine"] for r in validation],
            "o--",
            color="black",
            label="validation",
            markersize=4,
        )
    ratios.axhline(1.0, color="grey", linestyle=":", label="no gain")
    ratios.set_title("loss_coarse / loss_fine (> 1: dynamic queries help)")
    for axis in (losses, ratios):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    note = f"{LOSS_NOTE} Right: their ratio, 1 (dotted) where planning gives no gain; > 1 it helps."
    figure.supxlabel(textwrap.fill(note, NOTE_WIDTH), fontsize=8, ha="left", x=0.01)
    save_figure(figure, out_path)
    last = (validation or train)[-1]
    return {
        "step": last["step"],
        "split": last["split"],
        "loss_fine": last["loss_fine"],
        "loss_coarse": last["loss_coarse"],
        "ratio": last["loss_coarse"] / last["loss_fine"],
    }


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------


def _upscale(image: np.ndarray, side: int) -> np.ndarray:
    """Nearest-neighbour upscale of ``[h, w, 3]`` by an integer factor to about ``side`` pixels."""
    factor = max(1, round(side / image.shape[0]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[n, 3, h, w]`` in [0, 1] -> uint8 ``[n, h, w, 3]``."""
    return to_uint8(images.clamp(0, 1)).permute(0, 2, 3, 1).numpy()


def heat_overlay(frame: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """A frame ``[S, S, 3]`` uint8 blended with a ``[g, g]`` attention map (scaled to its maximum)."""
    from matplotlib import colormaps

    grid = attention / max(float(attention.max()), np.finfo(np.float64).tiny)
    factor = frame.shape[0] // grid.shape[0]
    heat = colormaps[HEAT_COLORMAP](grid.repeat(factor, 0).repeat(factor, 1))[..., :3] * 255
    return ((1 - HEAT_ALPHA) * frame + HEAT_ALPHA * heat).round().astype(np.uint8)


def draw_box(image: np.ndarray, box: np.ndarray, scale: float) -> np.ndarray:
    """A copy of ``image`` with the outline of ``box`` (x0, y0, x1, y1, scaled by ``scale``)."""
    x0, y0, x1, y1 = (np.asarray(box) * scale).round().astype(int)
    height, width = image.shape[:2]
    x0, x1 = np.clip([x0, x1 - 1], 0, width - 1)
    y0, y1 = np.clip([y0, y1 - 1], 0, height - 1)
    image = image.copy()
    image[y0, x0 : x1 + 1] = image[y1, x0 : x1 + 1] = BOX_RGB
    image[y0 : y1 + 1, x0] = image[y0 : y1 + 1, x1] = BOX_RGB
    return image


def side_by_side(panels: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """Equal-height uint8 images joined left to right with a white gap, each under its label."""
    from PIL import Image, ImageDraw

    gap = np.full((panels[0].shape[0], PANEL_GAP, 3), 255, dtype=np.uint8)
    joined = np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1)
    canvas = Image.new("RGB", (joined.shape[1], joined.shape[0] + LABEL_HEIGHT), "white")
    canvas.paste(Image.fromarray(joined), (0, LABEL_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    left = 0
    for panel, label in zip(panels, labels):
        draw.text((left + 2, 1), label, fill="black")
        left += panel.shape[1] + PANEL_GAP
    return np.asarray(canvas)


def save_gif(images: list[np.ndarray], path: Path) -> None:
    """An endlessly looping GIF of uint8 ``[H, W, 3]`` images, written atomically."""
    from PIL import Image

    first, *rest = [Image.fromarray(image) for image in images]
    with atomic_path(path) as temporary:
        first.save(temporary, format="GIF", save_all=True, append_images=rest, duration=GIF_FRAME_MS, loop=0)


def plot_grid(rows: dict[str, list[np.ndarray]], title: str, path: Path) -> None:
    """A PNG grid: one row per entry of ``rows`` (label -> images, one per frame), one column per frame."""
    plt = pyplot()
    num_frames = max(len(images) for images in rows.values())
    figure, axes = plt.subplots(
        len(rows), num_frames, figsize=(1.7 * num_frames, 1.8 * len(rows)), squeeze=False
    )
    for row, (label, images) in enumerate(rows.items()):
        for t in range(num_frames):
            axis = axes[row, t]
            axis.set_xticks([])
            axis.set_yticks([])
            if t < len(images):
                axis.imshow(images[t], interpolation="nearest")
            if row == 0:
                axis.set_title(f"frame {t + 1}", fontsize=8)
            if t == 0:
                axis.set_ylabel(label, fontsize=8)
    figure.suptitle(title, fontsize=9)
    save_figure(figure, path)


def attention_images(item: dict[str, Any], outputs: ClipOutputs, processor, patch_size: int):
    """Per-frame rows (frame with target box, static overlay, dynamic overlay) at display size."""
    frames_resized = _to_uint8(
        processor.video_processor.preprocess_frames(torch.as_tensor(item["frames"]).float() / 255)[1]
    )
    size = processor.image_size
    grid = size // patch_size
    scale = max(1, round(DISPLAY_SIDE / size))
    boxes = None
    if "boxes" in item:
        raw = np.asarray(item["boxes"])[:, item["target_index"]]
        boxes = crop_boxes(raw, item["frames"].shape[1], item["frames"].shape[2], size)
    rows: dict[str, list[np.ndarray]] = {"frame": [], "static (coarse)": [], "dynamic (fine)": []}
    for t, frame in enumerate(frames_resized):
        shown = _upscale(frame, DISPLAY_SIDE)
        images = {"frame": shown}
        for label, attention in (
            ("static (coarse)", outputs.attention_coarse),
            ("dynamic (fine)", outputs.attention_fine),
        ):
            if attention is not None:
                images[label] = heat_overlay(shown, attention[t].reshape(grid, grid).numpy())
        for label, image in images.items():
            rows[label].append(draw_box(image, boxes[t], scale) if boxes is not None else image)
    return {label: images for label, images in rows.items() if images}


@torch.no_grad()
def next_frame_images(outputs: ClipOutputs, model, processor, vae) -> dict[str, list[np.ndarray]]:
    """Per-frame rows (real target, fine and coarse predictions, previous frame) decoded, at display size.

    The previous frame of frame 1 is the model's learned initial target, what its prediction is conditioned on.
    """
    first_frame = torch.arange(len(outputs.targets)) == 0
    previous = model.previous_targets(outputs.targets.to(model.device), first_frame.to(model.device))
    candidates = {
        "real": outputs.targets,
        "predicted fine": outputs.predictions_fine,
        "predicted coarse": outputs.predictions_coarse,
        "previous (copy)": previous.float().cpu(),
    }
    rows = {}
    for label, targets in candidates.items():
        if targets is not None:
            decoded = _to_uint8(processor.video_processor.postprocess_targets(targets, vae).float().cpu())
            rows[label] = [_upscale(image, DISPLAY_SIDE) for image in decoded]
    return rows


def _gif_frames(rows: dict[str, list[np.ndarray]]) -> list[np.ndarray]:
    """One GIF frame per video frame: the rows' images of that frame side by side, labelled."""
    return [
        side_by_side(
            list(panels), [f"{label} t={t + 1}" if i == 0 else label for i, label in enumerate(rows)]
        )
        for t, panels in enumerate(zip(*rows.values()))
    ]


def clip_figures(context, index: int, item: dict[str, Any], outputs: ClipOutputs) -> dict[str, str]:
    """Attention and next-frame figures of one clip (PNG + GIF); returns their file names."""
    out_dir = context.out_dir
    title = f"{item.get('clip_id', index)}: [{item['prompt']}] {item['caption']}"
    names: dict[str, str] = {}
    attention = attention_images(
        item, outputs, context.processor, context.model.config.vision_config.patch_size
    )
    if len(attention) > 1:
        names["attention_png"], names["attention_gif"] = (
            f"attention_clip{index}.png",
            f"attention_clip{index}.gif",
        )
        plot_grid(attention, f"{title}\n{ATTENTION_NOTE}", out_dir / names["attention_png"])
        save_gif(_gif_frames(attention), out_dir / names["attention_gif"])
    frames = next_frame_images(outputs, context.model, context.processor, context.vae)
    names["next_frames_png"], names["next_frames_gif"] = (
        f"next_frames_clip{index}.png",
        f"next_frames_clip{index}.gif",
    )
    plot_grid(
        frames,
        f"{title} (row t: target of frame t; the predictions see frames < t)",
        out_dir / names["next_frames_png"],
    )
    save_gif(_gif_frames(frames), out_dir / names["next_frames_gif"])
    return names


def format_markdown(report: dict[str, Any]) -> str:
    """The report: every figure embedded with a caption."""
    lines = ["# Figures", "", f"`{report['command']}`", ""]
    if "loss_curves" in report:
        final = report["loss_curves"]
        lines += [
            "## Loss curves",
            "",
            f"Last {final['split']} row (step {final['step']}): loss_fine "
            f"{final['loss_fine']:.5f}, loss_coarse {final['loss_coarse']:.5f}, ratio {final['ratio']:.4f}.",
            "",
            "![loss curves](loss_curves.png)",
            "",
        ]
    for clip in report["clips"]:
        lines += [f"## Clip {clip['index']}: {clip['caption']}", ""]
        lines += [f"![{key}]({name})" for key, name in clip["figures"].items()]
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Draw every figure, write the report, return it."""
    context = load_context(args)
    report: dict[str, Any] = {"command": command_line(), "model": str(context.model_path), "clips": []}
    log_path = Path(args.log) if args.log else (Path(args.run_dir) / LOG_NAME if args.run_dir else None)
    if log_path is not None and log_path.is_file():
        report["loss_curves"] = plot_loss_curves(log_path, context.out_dir / "loss_curves.png")
    clips = forward_clips(context, args.inference_mode, args.batch_size, args.num_workers, indices=args.clips)
    for index, (item, outputs) in zip(args.clips, list(clips)):
        report["clips"].append(
            {
                "index": index,
                "caption": item["caption"],
                "figures": clip_figures(context, index, item, outputs),
            }
        )
    write_report(context.out_dir, report, format_markdown(report))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    parser.add_argument("--log", help=f"training log (default: RUN/{LOG_NAME} with --run_dir)")
    parser.add_argument("--clips", type=int, nargs="+", default=[0, 1], help="indices of the clips to draw")
    parser.add_argument("--inference_mode", choices=INFERENCE_MODES, help="default: the model's")
    return parser


main = script_main(run, build_parser, format_markdown)

if __name__ == "__main__":
    main()
