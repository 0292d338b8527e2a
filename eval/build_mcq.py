"""Build a small multiple-choice video QA set from the procedural data, in the MVBench / Video-MME layout.

    python -m eval.build_mcq --out MCQ --split heldout --num_clips 64 [--config RUN/training_config.yaml]

Writes ``MCQ/mcq.jsonl`` (one question per line: id, prompt (the clip's caption prompt), question, options
(4; 2 for size), answer (index), video (path relative to the file), attribute (generic clips: colour / shape /
motion; named clips, whose question names the colour: shape / size / motion), caption, clip_id) and the clips as
``MCQ/videos/<clip_id>.mp4`` (H.264 through PyAV) or ``.npy`` (``--format npy``, exact uint8 frames). Load
it with ``python -m eval.mcq --data MCQ/mcq.jsonl``. Clip settings (frame size and count, seed, procedural
fields) come from ``--config`` (a training YAML, e.g. a run's own) or from the flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from foveated_vlm.data.procedural import ProceduralVideoConfig, ProceduralVideoDataset
from foveated_vlm.files import atomic_path, atomic_write_text
from foveated_vlm.training.config import load_config
from foveated_vlm.training.data import procedural_config

MCQ_NAME = "mcq.jsonl"
VIDEO_DIR = "videos"
FORMATS = ("mp4", "npy")
VIDEO_CODEC = "libx264"
VIDEO_PIXEL_FORMAT = "yuv420p"
VIDEO_CRF = "10"
"""Constant rate factor of the H.264 encode: near-lossless for flat-coloured shapes."""
VIDEO_FPS = 8


def write_mp4(frames: np.ndarray, path: Path, fps: int = VIDEO_FPS) -> None:
    """Encode uint8 ``[T, H, W, 3]`` frames (even H and W) to an H.264 mp4, atomically."""
    import av

    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 with 4:2:0 chroma needs even frame sides, got {frames.shape[1:3]}")
    with atomic_path(path) as temporary, av.open(str(temporary), mode="w", format="mp4") as container:
        stream = container.add_stream(VIDEO_CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], VIDEO_PIXEL_FORMAT
        stream.options = {"crf": VIDEO_CRF}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_npy(frames: np.ndarray, path: Path) -> None:
    """Save frames as ``.npy``, atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, frames)


def mcq_row(clip: dict[str, Any], video: str) -> dict[str, Any]:
    """The question of one procedural clip in the MCQ layout."""
    mcq = clip["mcq"]
    return {
        "id": clip["clip_id"],
        "prompt": clip["prompt"],
        "question": mcq["question"],
        "options": list(mcq["options"]),
        "answer": int(mcq["answer_index"]),
        "video": video,
        "attribute": mcq["attribute"],
        "caption": clip["caption"],
        "clip_id": clip["clip_id"],
    }


def build(dataset: ProceduralVideoDataset, out_dir: Path, video_format: str = "mp4") -> Path:
    """Write every clip of ``dataset`` and ``mcq.jsonl`` under ``out_dir``; return the JSONL path."""
    if video_format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {video_format!r}")
    (out_dir / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    lines = []
    for clip in dataset:
        relative = f"{VIDEO_DIR}/{clip['clip_id']}.{video_format}"
        writer = write_mp4 if video_format == "mp4" else write_npy
        writer(clip["frames"], out_dir / relative)
        lines.append(json.dumps(mcq_row(clip, relative)) + "\n")
    path = out_dir / MCQ_NAME
    atomic_write_text(path, "".join(lines))
    return path


def procedural_settings(args: argparse.Namespace) -> ProceduralVideoConfig:
    """The procedural config from ``--config`` (its data section) or from the flags."""
    if args.config:
        config = load_config(args.config)
        return procedural_config(config, config.data.image_size or args.image_size)
    return ProceduralVideoConfig(image_size=args.image_size, num_frames=args.num_frames, seed=args.seed)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--split", default="heldout", choices=("train", "validation", "heldout"))
    parser.add_argument("--num_clips", type=int, default=64)
    parser.add_argument("--config", help="training YAML whose data section sets the procedural clips")
    parser.add_argument("--image_size", type=int, default=64, help="frame side (without --config)")
    parser.add_argument("--num_frames", type=int, default=8, help="frames per clip (without --config)")
    parser.add_argument("--seed", type=int, default=0, help="procedural data seed (without --config)")
    parser.add_argument("--format", dest="video_format", default="mp4", choices=FORMATS)
    args = parser.parse_args(argv)
    dataset = ProceduralVideoDataset(args.split, args.num_clips, procedural_settings(args))
    path = build(dataset, Path(args.out), args.video_format)
    print(f"wrote {len(dataset)} questions to {path}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
