"""Small, self-contained figures of a training run: the loss curve, the query attention over frames, and the
fovea on the named object beside the static query."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np

from foveated_vlm.files import atomic_path

FIGURE_DPI = 120
NOTE_WIDTH = 140
"""Characters per line of a figure's explanatory note."""
TRAIN_CURVES = ("loss_fine", "loss_coarse", "loss_caption")
CURVE_STYLES = {"loss_fine": "-", "loss_coarse": "--", "loss_caption": "-"}
MAX_ATTENTION_CLIPS = 4
LOSS_NOTE = (
    "loss_fine / loss_coarse: next-frame prediction loss when the frames are read with the planned queries / the "
    "static query (fine below coarse: planning where to look helps predict); loss_caption: cross-entropy per "
    "caption token (nats). Log scale, lower is better; training rows are means over log_every steps."
)
BOX_COLOUR = "cyan"


def read_log(path: str | os.PathLike) -> list[dict]:
    """Rows of a run's ``log.jsonl``."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def save_figure(figure, path: str | os.PathLike) -> None:
    """Save a matplotlib figure atomically (PNG at ``FIGURE_DPI``) and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(figure)


def plot_loss_curve(log_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Training and validation losses (fine, coarse, caption) against the step, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    for axis, split in zip(axes, ("train", "validation"), strict=True):
        split_rows = [row for row in rows if row.get("split") == split]
        for key in TRAIN_CURVES:
            points = [(row["step"], row[key]) for row in split_rows if row.get(key) is not None]
            if points:
                steps, values = zip(*points, strict=True)
                axis.plot(
                    steps, values, CURVE_STYLES[key], marker="." if split == "validation" else None, label=key
                )
        axis.set_yscale("log")
        axis.set_xlabel("step")
        axis.set_title(f"{split} losses")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.supxlabel(textwrap.fill(LOSS_NOTE, NOTE_WIDTH), fontsize=8, ha="left", x=0.01)
    save_figure(figure, out_path)


def plot_attention_over_frames(
    frames: list[np.ndarray],
    attention_fine: list[np.ndarray],
    attention_coarse: list[np.ndarray],
    captions: list[str],
    out_path: str | os.PathLike,
) -> None:
    """Per clip three rows: the frames, the fine (predicted-query) attention and the coarse (static) one.

    Args:
        frames: per clip ``[T, H, W, 3]`` uint8.
        attention_fine / attention_coarse: per clip ``[T, g, g]`` attention over the patch grid.
        captions: per clip a title (e.g. the reference and the generated caption).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = min(len(frames), MAX_ATTENTION_CLIPS)
    num_frames = max(len(clip) for clip in frames[:clips])
    figure, axes = plt.subplots(
        3 * clips, num_frames, figsize=(1.6 * num_frames, 1.7 * 3 * clips), squeeze=False
    )
    for clip in range(clips):
        rows = (frames[clip], attention_fine[clip], attention_coarse[clip])
        for kind, (images, label) in enumerate(zip(rows, ("frame", "fine", "coarse"), strict=True)):
            for t in range(num_frames):
                axis = axes[3 * clip + kind, t]
                axis.axis("off")
                if t < len(images):
                    extent = (0, frames[clip].shape[2], frames[clip].shape[1], 0)
                    if kind == 0:
                        axis.imshow(images[t])
                    else:
                        axis.imshow(frames[clip][t], alpha=0.35, extent=extent)
                        axis.imshow(
                            images[t], cmap="magma", alpha=0.75, extent=extent, interpolation="nearest"
                        )
                if t == 0:
                    axis.text(-0.1, 0.5, label, transform=axis.transAxes, ha="right", va="center", fontsize=8)
        axes[3 * clip, 0].set_title(captions[clip], loc="left", fontsize=8)
    save_figure(figure, out_path)


def plot_fovea_on_named_object(
    frames: list[np.ndarray],
    boxes: list[np.ndarray],
    attention_dynamic: list[np.ndarray],
    attention_static: list[np.ndarray],
    titles: list[str],
    row_labels: list[tuple[str, str]],
    out_path: str | os.PathLike,
    title: str | None = None,
) -> None:
    """Per clip three rows: the frames with the named object's box, the dynamic (planned-query) attention and
    the static-query attention of the same weights, both heat maps on one colour scale per clip.

    Args:
        frames: per clip ``[T, H, W, 3]`` uint8.
        boxes: per clip ``[T, 4]`` ``[x0, y0, x1, y1]`` pixel box of the named object (NaN where out of view).
        attention_dynamic / attention_static: per clip ``[T, g, g]`` attention over the patch grid.
        titles: per clip a (multi-line) title, e.g. the prompt, the reference and the generated captions.
        row_labels: per clip the labels of the dynamic and the static row (e.g. with their mass in the box).
        title: the figure's title, above every clip.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    clips = min(len(frames), MAX_ATTENTION_CLIPS)
    num_frames = max(len(clip) for clip in frames[:clips])
    title_lines = max(title.count("\n") + 1 for title in titles[:clips])
    clip_height = 1.45 * 3 + 0.16 * title_lines + 0.2
    figure = plt.figure(figsize=(1.45 * num_frames + 1.3, clip_height * clips), layout="constrained")
    if title:
        figure.suptitle(title, fontsize=9)
    for clip, panel in enumerate(np.atleast_1d(figure.subfigures(clips, 1))):
        axes = panel.subplots(3, num_frames, squeeze=False, gridspec_kw={"hspace": 0.04, "wspace": 0.04})
        panel.suptitle(titles[clip], x=0.02, ha="left", fontsize=8, linespacing=1.35)
        height, width = frames[clip].shape[1:3]
        extent = (0, width, height, 0)
        vmax = float(max(attention_dynamic[clip].max(), attention_static[clip].max(), 1e-8))
        rows = (frames[clip], attention_dynamic[clip], attention_static[clip])
        labels = ("frames +\nnamed box", *row_labels[clip])
        for kind, (images, label) in enumerate(zip(rows, labels, strict=True)):
            for t in range(num_frames):
                axis = axes[kind, t]
                axis.set_xticks([])
                axis.set_yticks([])
                for spine in axis.spines.values():
                    spine.set_visible(False)
                if t >= len(images):
                    axis.axis("off")
                    continue
                if kind == 0:
                    axis.imshow(images[t], extent=extent)
                else:
                    axis.imshow(frames[clip][t], alpha=0.35, extent=extent)
                    axis.imshow(
                        images[t],
                        cmap="magma",
                        alpha=0.8,
                        extent=extent,
                        interpolation="nearest",
                        vmin=0.0,
                        vmax=vmax,
                    )
                box = np.asarray(boxes[clip][t], dtype=float)
                if np.isfinite(box).all():
                    axis.add_patch(
                        Rectangle(
                            (box[0], box[1]),
                            box[2] - box[0],
                            box[3] - box[1],
                            fill=False,
                            edgecolor=BOX_COLOUR,
                            linewidth=1.2,
                            linestyle="-" if kind == 0 else "--",
                        )
                    )
                axis.set_xlim(0, width)
                axis.set_ylim(height, 0)
                if kind == 0:
                    axis.set_title(f"frame {t + 1}", fontsize=7, pad=2)
                if t == 0:
                    axis.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center", labelpad=4)
    save_figure(figure, out_path)


__all__ = [
    "plot_attention_over_frames",
    "plot_fovea_on_named_object",
    "plot_loss_curve",
    "read_log",
    "save_figure",
]
