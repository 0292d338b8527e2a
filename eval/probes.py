"""Test-time query probes: the same weights read the same clips with different queries, side by side.

    python -m eval.probes --run_dir RUN --split heldout --num_clips 256 --out OUT [--readers dynamic static ...]

The evidence that the planned queries matter (as RAM's learned vs random glimpses): one trained model, one set of
procedural clips, several *readers* of the fine pass. Readers:

* ``dynamic``: the model's own planned queries (the normal two-pass forward).
* ``static``: the static-query reading of the same weights (``inference_mode="coarse"``; its losses are the
  coarse pass's and its attention the static query's).
* ``random``: Gaussian queries of std ``config.query_init_std`` (seeded per clip) for every frame.
* ``centre``: the planned queries, confined (``probe_reading(patch_bias=...)``) to the patches nearest the frame's centre,
  as many as the target box covers in that frame (at least one).
* ``shuffled``: the planned queries of each video permuted in time (a seeded derangement per clip).
* ``oracle``: the planned queries, confined to the patches the target box covers (no confinement in frames
  where the target is out of view).
* ``blank``: every frame replaced by the mean-colour frame (zero after the processor's normalisation), read
  dynamically: the zero-frame control, whose caption accuracy should sit at chance.
* ``other_clip``: every clip read with the frames of the next clip of the set (same prompt): the
  in-distribution null (real scenes, the named colour usually absent or another object), at chance if the
  caption comes from the frames; its mass in box is measured against the prompt's clip's boxes (meaningless).

Per reader: exact-match accuracy of each scored caption attribute (greedy ``generate``, parsed with
``parse_caption``) and of all scored attributes together; the next-frame prediction MSE and the caption
cross-entropy (per clip, teacher-forced); the attention mass inside the box of the object the caption is about
over frames 2..T where the target is in view (frame 1 is read by ``q_init``), the box's area share (chance)
and the lift (mass / chance, a ratio of means); the selectivity (mass in the target box over the largest
mean mass in any other object's box, frames 2..T where both are in view, a ratio of means); each a mean over clips with a 95% bootstrap interval. Also
each reader's prediction loss relative to the dynamic reader's (static / dynamic is the coarse/fine ratio).
Named and generic clips are reported separately when both occur. Writes ``OUT/probes.json``,
``OUT/probes.md`` and ``OUT/probes.png``. :func:`run_probes` is the same evaluation as a function.
"""

from __future__ import annotations

import argparse
import collections
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from eval.attributes import ATTRIBUTES, score_caption, scored_attributes_of, true_attributes
from eval.common import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_NEW_TOKENS,
    command_line,
    default_inference_mode,
    load_context,
    model_inputs,
    script_main,
    script_parser,
    summarise,
    write_report,
)
from eval.controls import largest_other_mass, map_layer, other_boxes_coverage
from eval.fovea import SUBSETS, mass_in_box, target_visible
from eval.probe_report import format_markdown, plot_probes
from foveated_vlm.metrics import (
    FIRST_SCORED_FRAME,
    bootstrap_ci,
    ratio_of_means,
    target_box_coverage,
    token_log_likelihoods,
)
from layout_foveated import IGNORE_INDEX

logger = logging.getLogger(__name__)

READERS = ("dynamic", "static", "random", "centre", "shuffled", "oracle", "blank", "other_clip")
DENSE_READERS = ("dynamic", "blank", "other_clip")
"""The readers of a dense model (``foveation_mode="dense"``): it has no queries to replace, and no attention map
(its mass in the box is NaN)."""
JSON_NAME = "probes.json"
MARKDOWN_NAME = "probes.md"
FIGURE_NAME = "probes.png"
_RANDOM_STREAM, _SHUFFLE_STREAM = 1, 2
"""Second entries of the per-clip seed sequences, so that readers draw independent numbers."""

__all__ = [
    "READERS",
    "ProbeBatch",
    "blank_inputs",
    "other_clip_inputs",
    "centre_bias",
    "centre_order",
    "derangement",
    "generation_inputs",
    "main",
    "oracle_bias",
    "prepare_batch",
    "random_queries",
    "reader_call",
    "run_probes",
    "shuffled_order",
]


# ----------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------


def derangement(length: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly drawn permutation of ``range(length)`` with no fixed point (the identity for length < 2)."""
    if length < 2:
        return np.arange(length)
    while True:
        order = rng.permutation(length)
        if (order != np.arange(length)).all():
            return order


def shuffled_order(lengths: Sequence[int], clip_indices: Sequence[int], seed: int) -> torch.Tensor:
    """Flat indices ``[N]`` that permute each video's frames in time (a derangement seeded by the clip's index)."""
    orders, offset = [], 0
    for length, index in zip(lengths, clip_indices, strict=True):
        rng = np.random.default_rng([seed, _SHUFFLE_STREAM, int(index)])
        orders.append(offset + derangement(int(length), rng))
        offset += int(length)
    return torch.from_numpy(np.concatenate(orders)).long()


def random_queries(
    lengths: Sequence[int], clip_indices: Sequence[int], seed: int, shape: Sequence[int], std: float
) -> torch.Tensor:
    """Gaussian queries ``[N, *shape]`` of std ``std``, drawn per clip from ``(seed, clip index)``."""
    draws = [
        np.random.default_rng([seed, _RANDOM_STREAM, int(index)]).standard_normal((int(length), *shape))
        for length, index in zip(lengths, clip_indices, strict=True)
    ]
    return torch.from_numpy(np.concatenate(draws) * std).float()


def centre_order(grid: int) -> np.ndarray:
    """Patch indices of a ``grid x grid`` map from the centre outwards (square rings, then distance, then index).

    The first k form the centred, as-square-as-possible region of k patches.
    """
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    dr, dc = np.abs(rows - (grid - 1) / 2), np.abs(cols - (grid - 1) / 2)
    return np.lexsort((np.arange(grid * grid), dr**2 + dc**2, np.maximum(dr, dc)))


def _blocked(region: torch.Tensor) -> torch.Tensor:
    return torch.zeros(region.shape).masked_fill(~region, float("-inf"))


def centre_bias(coverage: torch.Tensor) -> torch.Tensor:
    """``[N, P]`` bias: 0 on the centred region with as many patches as the box covers in that frame (>= 1)."""
    grid = round(coverage.shape[-1] ** 0.5)
    order = torch.from_numpy(centre_order(grid))
    counts = (coverage > 0).sum(-1).clamp_min(1)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return _blocked(rank.unsqueeze(0) < counts.unsqueeze(1))


def oracle_bias(coverage: torch.Tensor) -> torch.Tensor:
    """``[N, P]`` bias: 0 on the patches the target box covers, -inf elsewhere; all 0 where it is out of view."""
    return _blocked((coverage > 0) | (coverage.sum(-1, keepdim=True) == 0))


def blank_inputs(inputs) -> dict[str, Any]:
    """A copy of ``inputs`` whose frames are all the mean-colour frame (zero pixels after normalisation)."""
    blank = dict(inputs)
    blank["pixel_values_videos"] = torch.zeros_like(inputs["pixel_values_videos"])
    return blank


def other_clip_inputs(inputs, frames: torch.Tensor | None) -> dict[str, Any]:
    """A copy of ``inputs`` whose frames are ``frames [B, T, 3, H, W]`` (other clips', :attr:`ProbeBatch.null_frames`).

    A batch prepared without ``null_items``, or null clips of another length, is refused by name.
    """
    if frames is None:
        raise ValueError(
            "the other_clip reader needs prepare_batch(..., null_items=...): the clips it reads instead"
        )
    if frames.shape != inputs["pixel_values_videos"].shape:
        raise ValueError(
            f"other_clip frames {tuple(frames.shape)} differ from the batch's "
            f"{tuple(inputs['pixel_values_videos'].shape)}: null clips must have the same length"
        )
    swapped = dict(inputs)
    swapped["pixel_values_videos"] = frames
    return swapped


def generation_inputs(inputs, pad_token_id: int) -> dict[str, Any]:
    """Prompt-only ``generate`` inputs from teacher-forced ones: caption tokens cut off, rows re-left-padded.

    The frames are the same tensors; ``labels``, ``prediction_targets`` and any layout are dropped.
    """
    input_ids, labels = inputs["input_ids"], inputs["labels"]
    prompt = inputs["attention_mask"].bool() & (labels == IGNORE_INDEX)
    lengths = prompt.sum(1)
    width = int(lengths.max())
    ids = torch.full((len(input_ids), width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths.tolist()):
        ids[row, width - length :] = input_ids[row][prompt[row]]
        mask[row, width - length :] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values_videos": inputs["pixel_values_videos"],
        "video_frame_mask": inputs["video_frame_mask"],
    }


@dataclass
class ProbeBatch:
    """One batch of clips, its inputs built once and shared by every reader.

    Args:
        items: the clip dicts.
        clip_indices: each clip's position among all clips (seeds its random draws).
        inputs: teacher-forced forward inputs (captions as labels, prediction targets) on the model's device.
        generate_inputs: prompt-only inputs of the same frames for ``generate``.
        lengths: valid frames of each clip.
        coverage: ``[N, P]`` target-box coverage of every valid frame, in (video, time) order, on the CPU.
        others: per clip, ``[K-1, T, P]`` box coverage of each other object, on the CPU.
        null_frames: ``[B, T, 3, H, W]`` frames of other clips (the ``other_clip`` reader's), or None.
        planned: ``[N, Q]`` the queries the dynamic reading used (filled by the first two-pass forward).
    """

    items: list[dict[str, Any]]
    clip_indices: list[int]
    inputs: Any
    generate_inputs: dict[str, Any]
    lengths: list[int]
    coverage: torch.Tensor
    others: list[torch.Tensor] = field(default_factory=list)
    null_frames: torch.Tensor | None = field(default=None)
    planned: torch.Tensor | None = field(default=None)


def prepare_batch(
    model,
    processor,
    items: Sequence[dict[str, Any]],
    clip_indices: Sequence[int],
    vae=None,
    null_items: Sequence[dict[str, Any]] | None = None,
):
    """Inputs of both kinds, valid-frame counts and target-box coverage of ``items`` (and the frames of
    ``null_items``, one other clip per item, for the ``other_clip`` reader)."""
    missing = [item.get("clip_id", i) for i, item in enumerate(items) if "boxes" not in item]
    if missing:
        raise ValueError(f"probes need procedural clips (object boxes); clips {missing} have no 'boxes'")
    vision = model.config.vision_config
    inputs = model_inputs(processor, items, vae)
    generate = generation_inputs(inputs, processor.tokenizer.pad_token_id)
    lengths = inputs["video_frame_mask"].sum(1).tolist()
    coverage = [target_box_coverage(item, vision.image_size, vision.patch_size).float() for item in items]
    for item, length, boxes in zip(items, lengths, coverage, strict=True):
        if boxes.shape[0] != length:
            raise ValueError(f"clip {item['clip_id']!r} has {boxes.shape[0]} boxed frames but {length} read")
    device = model.device
    return ProbeBatch(
        items=list(items),
        clip_indices=list(clip_indices),
        inputs=inputs.to(device),
        generate_inputs={key: value.to(device) for key, value in generate.items()},
        lengths=lengths,
        coverage=torch.cat(coverage),
        others=[other_boxes_coverage(item, vision.image_size, vision.patch_size) for item in items],
        null_frames=None if null_items is None else _null_frames(processor, null_items, vae).to(device),
    )


def _null_frames(processor, null_items: Sequence[dict[str, Any]], vae=None) -> torch.Tensor:
    """The processed frames ``[B, T, 3, H, W]`` of ``null_items``."""
    return model_inputs(processor, null_items, vae, captions=False)["pixel_values_videos"]


@torch.no_grad()
def planned_queries(model, batch: ProbeBatch) -> torch.Tensor:
    """The planned queries of the batch (one two-pass forward, unless the dynamic reader already ran)."""
    if batch.planned is None:
        batch.planned = model(**batch.inputs, inference_mode="two_pass").queries
    return batch.planned


def reader_call(reader: str, model, batch: ProbeBatch, seed: int = 0):
    """How ``reader`` reads ``batch``: ``(forward inputs, generate inputs, probe, inference mode)``.

    ``with model.probe_reading(**probe): model(**inputs, inference_mode=mode)`` is its teacher-forced forward, and
    ``model.generate(**generate_inputs)`` in the same block (with ``mode`` as the default mode) its captions.
    """
    inputs, generate, probe, mode = batch.inputs, batch.generate_inputs, {}, "two_pass"
    device = model.device
    if reader == "static":
        mode = "coarse"
    elif reader == "random":
        shape = model.fovea_static_query.shape
        queries = random_queries(batch.lengths, batch.clip_indices, seed, shape, model.config.query_init_std)
        probe["queries"] = queries.to(device=device, dtype=model.fovea_static_query.dtype)
    elif reader == "centre":
        probe["patch_bias"] = centre_bias(batch.coverage).to(device)
    elif reader == "shuffled":
        order = shuffled_order(batch.lengths, batch.clip_indices, seed).to(device)
        probe["queries"] = planned_queries(model, batch).index_select(0, order)
    elif reader == "oracle":
        probe["patch_bias"] = oracle_bias(batch.coverage).to(device)
    elif reader == "blank":
        inputs, generate = blank_inputs(inputs), blank_inputs(generate)
    elif reader == "other_clip":
        inputs = other_clip_inputs(inputs, batch.null_frames)
        generate = other_clip_inputs(generate, batch.null_frames)
    elif reader != "dynamic":
        raise ValueError(f"unknown reader {reader!r}; readers: {READERS}")
    return inputs, generate, probe, mode


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------


def _check_arguments(model, readers: Sequence[str], batch_size: int, max_new_tokens: int) -> tuple[str, ...]:
    readers = tuple(readers)
    unknown = [name for name in readers if name not in READERS]
    if unknown or not readers:
        raise ValueError(f"readers must be a non-empty selection of {READERS}, got {list(readers)}")
    if len(set(readers)) != len(readers):
        raise ValueError(f"readers repeat: {list(readers)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    query_readers = [name for name in readers if name not in DENSE_READERS]
    if model.config.foveation_mode == "dense" and query_readers:
        raise ValueError(
            f"readers {query_readers} replace the fine pass's queries: a dense model (foveation_mode='dense') "
            f"has none; its readers are {DENSE_READERS}"
        )
    return readers


def _progress(iterable: Iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the progress bar is optional; the numbers are not
        return iterable
    return tqdm(iterable, total=total, desc="probes", unit="batch")


def _as_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def _clip_values(output, batch: ProbeBatch, reader: str) -> list[dict[str, float]]:
    """Per clip of the batch: prediction MSE, caption cross-entropy, mean mass in box and chance (frames 2..T)."""
    passes = "coarse" if reader == "static" else "fine"
    inputs = batch.inputs
    frame_mask = inputs["video_frame_mask"]
    predictions = getattr(output, f"predictions_{passes}").float()
    targets = inputs["prediction_targets"][frame_mask].float()
    frame_mse = (predictions - targets).pow(2).flatten(1).mean(1).cpu().split(batch.lengths)
    log_likelihood, counts = token_log_likelihoods(
        output.logits, inputs["labels"][:, -output.logits.shape[1] :]
    )
    caption_nll = (-log_likelihood / counts.clamp_min(1)).cpu().tolist()
    attention = getattr(output, f"attention_{passes}")
    maps = None if attention is None else attention.float().cpu().split(batch.lengths)  # T x [t, P]
    mass, chance = mass_in_box(attention, batch.coverage)  # [N] each
    mass, chance = mass.split(batch.lengths), chance.split(batch.lengths)
    in_view = (batch.coverage.sum(-1) > 0).split(batch.lengths)
    values = []
    for row, item in enumerate(batch.items):
        frames = scored_frames(item, in_view[row])
        values.append(
            {
                "loss_fine": float(frame_mse[row].mean()),
                "loss_caption": float(caption_nll[row]) if counts[row] > 0 else float("nan"),
                "mass_in_box": float(mass[row][frames].mean()) if len(frames) else float("nan"),
                "chance": float(chance[row][frames].mean()) if len(frames) else float("nan"),
                "mass_other": float("nan")
                if maps is None
                else largest_other_mass(maps[row], batch.others[row], frames),
            }
        )
    return values


def scored_frames(item: dict[str, Any], in_view: torch.Tensor) -> torch.Tensor:
    """Indices of the frames 2..T of a clip where its target is visible (``item["visible"]``) and its box in view
    (``in_view [T]``): where every mass in box is averaged."""
    visible = torch.as_tensor(target_visible(item)) & in_view
    visible[:FIRST_SCORED_FRAME] = False
    return visible.nonzero().squeeze(-1)


@torch.no_grad()
def mass_by_layer(model, batch: ProbeBatch) -> dict[str, list[list[float]]]:
    """Mass in the target box at every encoder layer: ``{"planned", "static"}`` -> per clip, per layer, the mean
    over :func:`scored_frames` (nan without one) of the planned queries' (the dynamic reading's) and the static
    query's attention at that layer. Only the reported map changes with the layer: the reading is the model's."""
    inputs = batch.inputs
    cache = model.encode_frames(inputs["pixel_values_videos"][inputs["video_frame_mask"]])  # N valid frames
    queries = {"planned": planned_queries(model, batch), "static": model.static_queries(len(batch.coverage))}
    in_view = (batch.coverage.sum(-1) > 0).split(batch.lengths)
    frames = [scored_frames(item, in_view[row]) for row, item in enumerate(batch.items)]
    result: dict[str, list[list[float]]] = {name: [[] for _ in batch.items] for name in queries}
    for layer in range(len(model.model.fovea_encoder.layers)):
        with map_layer(model, layer):
            for name, plan in queries.items():
                patches, _ = model.split_attention(model.read_frames(plan, cache)[1])  # (N, P)
                mass = mass_in_box(patches, batch.coverage)[0].split(batch.lengths)
                for row, chosen in enumerate(frames):
                    result[name][row].append(float(mass[row][chosen].mean()) if len(chosen) else float("nan"))
    return result


def _caption_logits_to_keep(labels: torch.Tensor) -> int:
    """Positions whose logits the caption needs: the longest caption + 1 (left padding puts captions last)."""
    return int((labels != IGNORE_INDEX).sum(1).max()) + 1


@torch.no_grad()
def probe_batch(model, processor, batch: ProbeBatch, readers, max_new_tokens: int, seed: int):
    """Every reader on one batch: per clip ``{reader: {"generated", "hits", values...}}``."""
    results: list[dict[str, dict[str, Any]]] = [{} for _ in batch.items]
    keep = _caption_logits_to_keep(batch.inputs["labels"])
    for reader in readers:
        inputs, generate, probe, mode = reader_call(reader, model, batch, seed)
        with model.probe_reading(**probe):
            output = model(**inputs, inference_mode=mode, logits_to_keep=keep)
            with default_inference_mode(model, mode):
                tokens = model.generate(**generate, max_new_tokens=max_new_tokens, do_sample=False)
        if reader == "dynamic":
            batch.planned = output.queries
        texts = processor.decode_generated(tokens, generate)
        for row, (item, text, values) in enumerate(
            zip(batch.items, texts, _clip_values(output, batch, reader), strict=True)
        ):
            hits = score_caption(item, text)
            results[row][reader] = {
                "generated": text.strip(),
                "hits": hits,
                "all_attributes": all(hits.values()),
                **values,
            }
    return results


def _pairs(first: list[dict[str, Any]], second: list[dict[str, Any]], key_a: str, key_b: str) -> np.ndarray:
    """Finite per-clip pairs ``[n, 2]`` of ``first[i][key_a]`` and ``second[i][key_b]``."""
    pairs = np.asarray([[a[key_a], b[key_b]] for a, b in zip(first, second, strict=True)], dtype=float)
    return pairs.reshape(-1, 2)[np.isfinite(pairs.reshape(-1, 2)).all(1)]


def _ratio(pairs: np.ndarray) -> dict[str, float] | None:
    """Ratio of means with its bootstrap CI (None without pairs)."""
    return bootstrap_ci(pairs, ratio_of_means) if len(pairs) else None


def summarise_reader(records: list[dict[str, Any]], reader: str) -> dict[str, Any]:
    """Means with 95% bootstrap CIs over the clips of ``records`` for one reader."""
    rows = [record["readers"][reader] for record in records]
    accuracy = {}
    for name in ATTRIBUTES:
        hits = [row["hits"][name] for row in rows if name in row["hits"]]
        if hits:
            accuracy[name] = summarise(np.asarray(hits, dtype=float))
    summary: dict[str, Any] = {
        "num_clips": len(rows),
        "accuracy": accuracy,
        "all_attributes": summarise(np.asarray([row["all_attributes"] for row in rows], dtype=float)),
    }
    for key in ("loss_fine", "loss_caption", "mass_in_box", "chance", "mass_other"):
        summary[key] = summarise([row.get(key, float("nan")) for row in rows])
    summary["lift"] = _ratio(_pairs(rows, rows, "mass_in_box", "chance"))
    summary["selectivity"] = _ratio(_pairs(rows, rows, "mass_in_box", "mass_other"))
    if "dynamic" in records[0]["readers"]:
        dynamic = [record["readers"]["dynamic"] for record in records]
        summary["loss_fine_ratio_to_dynamic"] = _ratio(_pairs(rows, dynamic, "loss_fine", "loss_fine"))
    return summary


def summarise_layers(records: list[dict[str, Any]]) -> dict[str, list[dict[str, float] | None]]:
    """``{name: [CI of the mass in box at layer l, for each l]}`` over the clips' ``"mass_by_layer"``."""
    first = records[0]["mass_by_layer"]
    return {
        name: [
            summarise([record["mass_by_layer"][name][layer] for record in records])
            for layer in range(len(values))
        ]
        for name, values in first.items()
    }


def majority_baseline(records: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy of always answering the most common value (per attribute, and the most common scored tuple)."""
    baseline = {}
    for name in ATTRIBUTES:
        values = [record["truth"][name] for record in records if name in record["truth"]]
        if values:
            baseline[name] = collections.Counter(values).most_common(1)[0][1] / len(values)
    tuples = collections.Counter(tuple(sorted(record["truth"].items())) for record in records)
    baseline["all_attributes"] = tuples.most_common(1)[0][1] / len(records) if records else float("nan")
    return baseline


def summarise_records(records: list[dict[str, Any]], readers: Sequence[str]) -> dict[str, Any]:
    """Per reader summaries of ``records``, the blind majority baseline and the static/dynamic loss ratio."""
    summary: dict[str, Any] = {
        "num_clips": len(records),
        "readers": {reader: summarise_reader(records, reader) for reader in readers},
        "majority_baseline": majority_baseline(records),
    }
    static = summary["readers"].get("static", {})
    summary["ratio_loss_static_dynamic"] = static.get("loss_fine_ratio_to_dynamic")
    return summary


def run_probes(
    model,
    processor,
    clips: Sequence[dict[str, Any]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    seed: int = 0,
    readers: Sequence[str] = READERS,
    vae=None,
    num_workers: int = 0,
    progress: bool = True,
    by_layer: bool = False,
) -> dict[str, Any]:
    """Read ``clips`` with every reader on the same weights; per-clip results and their summaries.

    Args:
        model: a foveated (not dense) model, in eval mode, on its device.
        processor: its processor.
        clips: procedural clip dicts (``ProceduralVideoDataset`` items, or its wrappers with cached targets).
        batch_size: clips per forward and per ``generate`` (inputs are built once per batch for every reader).
        max_new_tokens: greedy caption length limit.
        seed: seeds the random queries and the time shuffles (per clip, so independent of ``batch_size``).
        readers: a selection of :data:`READERS`.
        vae: the VAE that makes prediction targets, for VAE-target models whose clips carry no cached targets.
        by_layer: also measure the planned and static mass in box at every encoder layer (:func:`mass_by_layer`;
            each clip record's ``"mass_by_layer"``, and ``summary[subset]["mass_by_layer"][name]``, a CI a layer).

    Returns:
        ``{"readers", "seed", "max_new_tokens", "num_clips", "attributes", "summary", "clips"}``: ``summary[subset]``
        for subset ``all`` (and ``named``/``generic`` when both occur) holds ``num_clips``,
        ``ratio_loss_static_dynamic``, ``majority_baseline`` ({attribute: accuracy of always answering the
        commonest value, "all_attributes"}) and ``readers[reader]`` = ``{"num_clips", "accuracy": {attribute: ci},
        "all_attributes", "loss_fine", "loss_caption", "mass_in_box", "chance", "mass_other", "lift", "selectivity",
        "loss_fine_ratio_to_dynamic"}`` (each a :func:`bootstrap_ci` dict, or None where nothing was measured);
        ``clips`` lists per clip ``{"clip_id", "named", "scored_attributes", "truth", "reference", "readers": {reader:
        {"generated", "hits", "all_attributes", "loss_fine", "loss_caption", "mass_in_box", "chance",
        "mass_other"}}}``.
    """
    readers = _check_arguments(model, readers, batch_size, max_new_tokens)
    if len(clips) == 0:
        raise ValueError("no clips to probe")
    model.eval()
    loader = DataLoader(clips, batch_size=batch_size, collate_fn=_as_list, num_workers=num_workers)
    records: list[dict[str, Any]] = []
    start = 0
    for items in _progress(loader, len(loader), progress):
        indices = list(range(start, start + len(items)))
        start += len(items)
        null_items = (
            [clips[(index + 1) % len(clips)] for index in indices] if "other_clip" in readers else None
        )
        batch = prepare_batch(model, processor, items, indices, vae, null_items)
        results_of_batch = probe_batch(model, processor, batch, readers, max_new_tokens, seed)
        layers = mass_by_layer(model, batch) if by_layer else None
        for row, (item, results) in enumerate(zip(items, results_of_batch)):
            extra = (
                {}
                if layers is None
                else {"mass_by_layer": {name: value[row] for name, value in layers.items()}}
            )
            records.append(
                {
                    "clip_id": item.get("clip_id"),
                    "named": bool(item.get("named", False)),
                    "scored_attributes": list(scored_attributes_of(item)),
                    "truth": {name: true_attributes(item).get(name) for name in scored_attributes_of(item)},
                    "reference": item["caption"],
                    "readers": results,
                    **extra,
                }
            )
    summary = {}
    for subset, named in SUBSETS.items():
        chosen = [r for r in records if named is None or r["named"] == named]
        if subset == "all" or (chosen and len(chosen) < len(records)):
            summary[subset] = summarise_records(chosen, readers)
            if by_layer:
                summary[subset]["mass_by_layer"] = summarise_layers(chosen)
    attributes = [name for name in ATTRIBUTES if any(name in r["scored_attributes"] for r in records)]
    return {
        "readers": list(readers),
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "num_clips": len(records),
        "attributes": attributes,
        "summary": summary,
        "clips": records,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Probe, plot, write the reports, return the report."""
    context = load_context(args)
    if not context.is_procedural:
        raise ValueError(
            "eval.probes needs procedural clips (exact captions and object boxes); "
            f"this config reads data.kind={context.config.data.kind!r}"
        )
    report = run_probes(
        context.model,
        context.processor,
        context.dataset,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        readers=args.readers or READERS,
        vae=context.vae,
        num_workers=args.num_workers,
        by_layer=args.mass_by_layer,
    )
    report = {"command": command_line(), "model": str(context.model_path), "split": args.split, **report}
    report["figure"] = None
    try:
        plot_probes(report["summary"]["all"], context.out_dir / FIGURE_NAME, split=args.split)
        report["figure"] = FIGURE_NAME
    except ImportError as error:  # no matplotlib: the numbers are still written
        logger.warning("no figure (%s); probes.json and probes.md are written", error)
    write_report(context.out_dir, report, format_markdown(report), JSON_NAME, MARKDOWN_NAME)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--readers", nargs="+", choices=READERS, help=f"readers to run (default: all of {READERS})"
    )
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--seed", type=int, default=0, help="seeds the random queries and the time shuffles")
    parser.add_argument(
        "--mass_by_layer",
        action="store_true",
        help="also the planned and static mass in box at every encoder layer",
    )
    return parser


main = script_main(run, build_parser, format_markdown)

if __name__ == "__main__":
    main()
