"""Real video data: a folder of videos with captions, a CSV/JSONL manifest, or a ``datasets`` repository.

Every source becomes a :class:`VideoClipDataset`: a map-style data set of :class:`VideoRecord` s whose items
are ``{"frames": uint8 [T, S, S, 3], "prompt", "caption", "clip_id"}``, decoded with PyAV on access
(``num_frames`` sampled uniformly, or at ``fps``) and resized (shorter side, centre crop) to ``image_size``.

Unreadable files never crash an epoch and are never dropped silently: :func:`scan_clips` (or the target cache,
which decodes every clip once) reports each by name with the total count, and :meth:`VideoClipDataset.without`
removes them; a clip that still fails later is logged by name, counted in ``num_failed`` and replaced by the
next readable clip.

Layouts:

* folder: ``root/**/name.mp4`` with a caption in ``root/**/name.txt``; or ``root/metadata.jsonl`` /
  ``root/metadata.csv`` (a manifest, see below). Sub-folders named like a split (``train/``, ``validation/``)
  give the split.
* manifest (CSV or JSONL): one row per clip with the video path (relative to the manifest's folder, or
  absolute) in ``video_column`` and the caption in ``caption_column``; optional ``prompt`` and ``split`` columns.
* hub: ``datasets.load_dataset(path)`` (a repository id or a local data folder) or ``load_from_disk(path)``;
  the video column may hold paths, ``{"path", "bytes"}`` dicts or ``datasets.Video`` features.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from processing_foveated import DEFAULT_PROMPT
from video_foveated import check_sampling, load_video

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
MANIFEST_NAMES = ("metadata.jsonl", "metadata.csv")
SPLIT_NAMES = ("train", "validation", "heldout", "test")
HASH_RANGE = 2**32
MAX_REPORTED_NAMES = 20


@dataclass(frozen=True)
class VideoRecord:
    """One clip: where its video is, its caption, optional prompt and split.

    ``source`` is a file path, or a zero-argument callable that returns ``(path, cleanup)`` for videos that
    must first be written out (``datasets`` bytes).
    """

    clip_id: str
    source: str | Callable[[], tuple[str, bool]]
    caption: str
    prompt: str | None = None
    split: str | None = None


def report_skipped(skipped: dict[str, str], total: int, what: str = "videos") -> None:
    """Log the unreadable clips by name (first ``MAX_REPORTED_NAMES``) with the count, once."""
    if not skipped:
        return
    names = list(skipped.items())
    listed = "; ".join(f"{name}: {reason}" for name, reason in names[:MAX_REPORTED_NAMES])
    more = f" (and {len(names) - MAX_REPORTED_NAMES} more)" if len(names) > MAX_REPORTED_NAMES else ""
    logger.warning(
        "skipped %d of %d %s that could not be decoded: %s%s", len(names), total, what, listed, more
    )


class VideoClipDataset(torch.utils.data.Dataset):
    """Map-style data set of video clips decoded with PyAV.

    Args:
        records: the clips.
        num_frames: frames sampled uniformly over each video (exclusive with ``fps``).
        fps: sample at this rate instead.
        image_size: resize (shorter side) and centre-crop frames to this side; None keeps them as decoded.
        prompt: prompt of records that have none.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        num_frames: int | None = 8,
        fps: float | None = None,
        image_size: int | None = None,
        prompt: str = DEFAULT_PROMPT,
    ):
        check_sampling(num_frames, fps)
        self.records = list(records)
        self.num_frames = num_frames
        self.fps = fps
        self.image_size = image_size
        self.prompt = prompt
        self.num_failed = 0

    def __len__(self) -> int:
        return len(self.records)

    def clip_id(self, index: int) -> str:
        return self.records[index].clip_id

    def load(self, index: int) -> dict[str, Any]:
        """Decode clip ``index``; raises ``ValueError`` naming the file when it cannot be decoded."""
        record = self.records[index]
        path, cleanup = record.source() if callable(record.source) else (record.source, False)
        try:
            frames = load_video(path, num_frames=self.num_frames, fps=self.fps, image_size=self.image_size)
        finally:
            if cleanup:
                os.unlink(path)
        return {
            "frames": frames,
            "prompt": record.prompt or self.prompt,
            "caption": record.caption,
            "clip_id": record.clip_id,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Clip ``index``; an unreadable one is logged by name, counted, and replaced by the next readable clip."""
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            try:
                return self.load(candidate)
            except ValueError as error:
                self.num_failed += 1
                logger.warning(
                    "skipping unreadable video %s (%d skipped in this worker so far): %s",
                    self.clip_id(candidate),
                    self.num_failed,
                    error,
                )
        raise ValueError(f"none of the {len(self)} videos of the data set can be decoded")

    def without(self, clip_ids: set[str] | dict[str, str]) -> VideoClipDataset:
        """The same data set minus the given clips (e.g. those a scan or the target cache found unreadable)."""
        kept = [record for record in self.records if record.clip_id not in clip_ids]
        return VideoClipDataset(kept, self.num_frames, self.fps, self.image_size, self.prompt)

    def subset(self, count: int | None) -> VideoClipDataset:
        """The first ``count`` clips (all when None or larger than the data set)."""
        if count is None or count >= len(self):
            return self
        return VideoClipDataset(self.records[:count], self.num_frames, self.fps, self.image_size, self.prompt)


def scan_clips(dataset: VideoClipDataset, progress: bool = False, report: bool = True) -> dict[str, str]:
    """Decode every clip once; return ``{clip_id: reason}`` of the unreadable ones (reported unless told not)."""
    from tqdm.auto import tqdm

    skipped: dict[str, str] = {}
    for index in tqdm(range(len(dataset)), desc="scanning videos", disable=not progress):
        try:
            dataset.load(index)
        except ValueError as error:
            skipped[dataset.clip_id(index)] = str(error)
    if report:
        report_skipped(skipped, len(dataset))
    return skipped


# ------------------------------------------------------------------------------------------------ splits
def hashed_fraction(clip_id: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) per clip (split carving that survives adding files)."""
    return zlib.crc32(f"{seed}:{clip_id}".encode()) / HASH_RANGE


def select_split(
    records: Sequence[VideoRecord], split: str, validation_fraction: float, seed: int
) -> list[VideoRecord]:
    """Records of ``split``: by their own split labels when they have them, else carved deterministically.

    Unlabelled data: ``validation_fraction`` of the clips (by :func:`hashed_fraction`) form ``validation``
    (which also serves as ``heldout``); the rest is ``train``.
    """
    labelled = {record.split for record in records if record.split is not None}
    if labelled:
        if split not in labelled:
            return select_split(
                [replace(r, split=None) for r in records if r.split == "train"],
                split,
                validation_fraction,
                seed,
            )
        return [record for record in records if record.split == split]
    want_held_out = split != "train"
    return [r for r in records if (hashed_fraction(r.clip_id, seed) < validation_fraction) == want_held_out]


# ------------------------------------------------------------------------------------------------ folder
def _split_of(relative: Path) -> str | None:
    return next((part for part in relative.parts[:-1] if part in SPLIT_NAMES), None)


def folder_records(root: str | os.PathLike) -> list[VideoRecord]:
    """Videos under ``root`` with same-name ``.txt`` captions (or the folder's ``metadata.jsonl/csv``)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"video folder not found: {root}")
    for name in MANIFEST_NAMES:
        if (root / name).is_file():
            return manifest_records(root / name)
    videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not videos:
        raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {root}")
    records, uncaptioned = [], []
    for video in videos:
        caption_file = video.with_suffix(".txt")
        relative = video.relative_to(root)
        if not caption_file.is_file():
            uncaptioned.append(str(relative))
            continue
        caption = caption_file.read_text(encoding="utf-8").strip()
        records.append(VideoRecord(str(relative), str(video), caption, split=_split_of(relative)))
    if uncaptioned:
        logger.warning(
            "skipped %d of %d videos without a caption file (.txt): %s",
            len(uncaptioned),
            len(videos),
            ", ".join(uncaptioned[:MAX_REPORTED_NAMES]),
        )
    if not records:
        raise ValueError(f"none of the {len(videos)} videos under {root} has a caption (.txt next to it)")
    return records


# ------------------------------------------------------------------------------------------------ manifest
def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{number} is not valid JSON: {error}") from error
        return rows
    raise ValueError(f"manifest must be .csv or .jsonl, got {path}")


def manifest_records(
    path: str | os.PathLike,
    video_column: str = "video",
    caption_column: str = "caption",
    prompt_column: str = "prompt",
) -> list[VideoRecord]:
    """Rows of a CSV/JSONL manifest as records (video paths relative to the manifest's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest not found: {path}")
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    video_key = video_column if video_column in rows[0] else "file_name"
    for column in (video_key, caption_column):
        if column not in rows[0]:
            raise ValueError(f"manifest {path} has no column {column!r}; columns: {sorted(rows[0])}")
    records = []
    for row in rows:
        video = Path(row[video_key])
        video = video if video.is_absolute() else path.parent / video
        records.append(
            VideoRecord(
                clip_id=str(row[video_key]),
                source=str(video),
                caption=str(row[caption_column]).strip(),
                prompt=row.get(prompt_column) or None,
                split=row.get("split") or None,
            )
        )
    return records


# ------------------------------------------------------------------------------------------------ hub
class _BytesSource:
    """Writes a ``datasets`` row's video bytes to a temporary file on demand (PyAV decodes files)."""

    def __init__(self, dataset, index: int, column: str, suffix: str):
        self.dataset, self.index, self.column, self.suffix = dataset, index, column, suffix

    def __call__(self) -> tuple[str, bool]:
        value = self.dataset[self.index][self.column]
        if value.get("path") and os.path.isfile(value["path"]) and not value.get("bytes"):
            return value["path"], False
        if not value.get("bytes"):
            raise ValueError(
                f"row {self.index} of the data set holds neither a readable path nor video bytes"
            )
        handle = tempfile.NamedTemporaryFile(suffix=self.suffix, delete=False)
        with handle:
            handle.write(value["bytes"])
        return handle.name, True


def _load_hub_split(path: str, split: str):
    """A ``datasets.Dataset`` of ``split`` from a saved directory, a local data folder or a Hub repository."""
    import datasets

    if os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "dataset_dict.json"))
        or os.path.isfile(os.path.join(path, "state.json"))
    ):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise KeyError(split)
            return loaded[split]
        if split != "train":
            raise KeyError(split)
        return loaded
    try:
        return datasets.load_dataset(path, split=split)
    except ValueError as error:  # datasets raises ValueError for an unknown split
        raise KeyError(split) from error


def hub_records(
    path: str,
    split: str,
    video_column: str = "video",
    caption_column: str = "caption",
    prompt_column: str = "prompt",
) -> list[VideoRecord]:
    """Records of one split of a ``datasets`` data set with a video column (decoded lazily, with PyAV)."""
    import datasets

    dataset = _load_hub_split(path, split)
    for column in (video_column, caption_column):
        if column not in dataset.column_names:
            raise ValueError(f"data set {path} has no column {column!r}; columns: {dataset.column_names}")
    feature = dataset.features[video_column]
    if isinstance(feature, datasets.Video):
        dataset = dataset.cast_column(video_column, datasets.Video(decode=False))
    captions = [str(caption).strip() for caption in dataset[caption_column]]
    prompts = dataset[prompt_column] if prompt_column in dataset.column_names else [None] * len(dataset)
    first = dataset[0][video_column] if len(dataset) else None
    if isinstance(first, str):
        sources = list(dataset[video_column])
        names = sources
    elif isinstance(first, dict):
        suffix = Path(first.get("path") or "video.mp4").suffix or ".mp4"
        sources = [_BytesSource(dataset, index, video_column, suffix) for index in range(len(dataset))]
        names = [f"{split}-{index:08d}" for index in range(len(dataset))]
    else:
        raise ValueError(
            f"{path}: column {video_column!r} holds {type(first).__name__}, "
            "expected a path or a {path, bytes} dict"
        )
    return [
        VideoRecord(f"{split}/{name}", source, caption, prompt)
        for name, source, caption, prompt in zip(names, sources, captions, prompts, strict=True)
    ]


def split_records(
    kind: str,
    path: str,
    split: str,
    validation_fraction: float = 0.05,
    seed: int = 0,
    video_column: str = "video",
    caption_column: str = "caption",
    prompt_column: str = "prompt",
) -> list[VideoRecord]:
    """Records of one split of a ``folder``, ``manifest`` or ``hub`` source (carved from train if absent)."""
    columns = {"video_column": video_column, "caption_column": caption_column, "prompt_column": prompt_column}
    if kind == "folder":
        records = folder_records(path)
    elif kind == "manifest":
        records = manifest_records(path, **columns)
    elif kind == "hub":
        try:
            return hub_records(path, split, **columns)
        except KeyError:
            records = hub_records(path, "train", **columns)
    else:
        raise ValueError(f"unknown video source kind {kind!r}; expected folder, manifest or hub")
    selected = select_split(records, split, validation_fraction, seed)
    if not selected:
        raise ValueError(f"split {split!r} of {path} is empty")
    return selected


__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoClipDataset",
    "VideoRecord",
    "folder_records",
    "hashed_fraction",
    "hub_records",
    "manifest_records",
    "report_skipped",
    "scan_clips",
    "select_split",
    "split_records",
]
