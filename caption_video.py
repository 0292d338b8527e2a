"""Caption a video file with a foveated VLM, frame by frame in bounded memory.

    python caption_video.py VIDEO --model PATH_OR_REPO [--prompt TEXT] [--fps F] [--max-new-tokens N]
        [--sample] [--temperature T] [--top-p P] [--num-beams K] [--seed S] [--chunk-frames N]
        [--device cpu|cuda] [--dtype auto|float32|bfloat16|float16]
        [--attention OUT.gif] [--predictions OUT.png]

The model and processor are loaded with ``trust_remote_code`` from a directory (a trainer's ``D/final``) or a
Hub repo. The video is decoded with PyAV and read by a :class:`FoveatedStream` chunk by chunk (decoded, resized
and encoded ``--chunk-frames`` frames at a time): memory holds one chunk of frames and encoder K/V plus the LLM
caches (one position per frame), so an hour at 1 fps (3,600 positions) fits SmolLM2's 8,192. The caption goes
to stdout. ``--attention`` writes a GIF of the frames the model saw with each frame's query attention as a heat
map; ``--predictions`` writes a PNG of real next-frame targets above the predicted ones (decoded through the VAE
for VAE targets). Frames are kept only for the GIF (``T x 3 x S x S`` bytes).

Dense-baseline models have no queries: they are captioned with one ``generate`` over all frames.
Bad input (missing or undecodable file, too many frames for the context) prints ``error: ...`` and exits 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from tqdm import tqdm

from streaming_foveated import DEFAULT_CHUNK_FRAMES, stream_prompt_inputs

DEFAULT_PROMPT = "Describe the video."
DEFAULT_MAX_NEW_TOKENS = 64
# Frames are shown at least this large in the GIF (upscaled when the model reads fewer pixels).
DISPLAY_SIZE = 256
MAX_GIF_FRAMES = 600  # longer videos are subsampled evenly for the GIF
GIF_FPS = 8.0  # playback rate of the GIF when --fps is not given
HEATMAP_ALPHA = 0.7  # weight of the heat map where attention is highest
HEATMAP_COLORMAP = "inferno"
PREDICTION_COLUMNS = 8  # frames shown in the predictions figure (evenly spaced)
PREDICTION_PANEL_INCHES = 1.6
TITLE_INCHES = 0.4
FIGURE_DPI = 100
EXIT_ERROR = 1
TICK_TOLERANCE = 1e-6  # fraction of a sampling period: a frame this close before a tick counts as on it


@dataclass
class DecodedChunk:
    """Consecutive sampled frames: ``pixels [n, 3, S, S]`` normalised, ``resized [n, 3, S, S]`` in [0, 1]."""

    pixels: torch.Tensor
    resized: torch.Tensor


@dataclass
class VideoReading:
    """What the CLI collected while the model watched a video (frames/attention/predictions only on request)."""

    caption: str
    frames: list[torch.Tensor] = field(default_factory=list)  # uint8 [n, 3, S, S] chunks
    attention: list[torch.Tensor] = field(default_factory=list)  # [n, P] chunks
    targets: list[torch.Tensor] = field(default_factory=list)  # [n, C, h, w] chunks
    predictions: list[torch.Tensor] = field(default_factory=list)  # [n, C, h, w]: predicted target of frame t


# ---------------------------------------------------------------------------------------------- decoding
def video_duration(path: str) -> tuple[float | None, int | None]:
    """Duration in seconds and frame count of ``path``'s first video stream from its metadata (None if unknown)."""
    import av

    with _open_video(path) as (container, stream):
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base), stream.frames or None
        duration = None if container.duration is None else container.duration / av.time_base
        return duration, stream.frames or None


def frames_at(duration: float | None, count: int | None, fps: float | None) -> int | None:
    """Frames that sampling a video of ``duration`` seconds (``count`` frames) at ``fps`` gives, if known."""
    if fps is None:
        return count
    return None if duration is None else math.floor(duration * fps) + 1


def decode_video(path: str, processor, fps: float | None, chunk_frames: int) -> Iterator[DecodedChunk]:
    """Decode ``path`` with PyAV, keep the first frame at or after every ``1/fps`` tick (every frame without
    ``fps``), resize each kept frame as the processor does, and yield them ``chunk_frames`` at a time."""
    if fps is not None and fps <= 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    pixels: list[torch.Tensor] = []
    resized: list[torch.Tensor] = []
    kept = 0
    with _open_video(path) as (container, stream):
        for frame in _frames_at_rate(container.decode(stream), stream, fps):
            kept += 1
            rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).unsqueeze(0).float() / 255.0
            frame_pixels, frame_resized = processor.preprocess_frames(rgb)
            pixels.append(frame_pixels)
            resized.append(frame_resized)
            if len(pixels) == chunk_frames:
                yield DecodedChunk(torch.cat(pixels), torch.cat(resized))
                pixels, resized = [], []
    if not kept:
        raise ValueError(f"video {path} holds no decodable frame")
    if pixels:
        yield DecodedChunk(torch.cat(pixels), torch.cat(resized))


def _frames_at_rate(frames: Iterator, stream, fps: float | None) -> Iterator:
    """The decoded frames to keep: all without ``fps``, else the first at or after each ``1/fps`` tick."""
    start = next_tick = None
    for index, frame in enumerate(frames):
        time = float(frame.time) if frame.time is not None else index / float(stream.average_rate)
        start = time if start is None else start
        if fps is not None and next_tick is not None and time < next_tick:
            continue
        if fps is not None:
            next_tick = start + (math.floor((time - start) * fps + TICK_TOLERANCE) + 1) / fps
        yield frame


@contextmanager
def _open_video(path: str):
    """``(container, first video stream)`` of ``path``; a missing or undecodable file is a ValueError."""
    import av

    if not os.path.isfile(path):
        raise ValueError(f"video file not found: {path}")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            yield container, container.streams.video[0]
    except av.error.FFmpegError as error:
        raise ValueError(f"cannot decode video {path}: {error}") from error


# ---------------------------------------------------------------------------------------------- model
def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_model(name_or_path: str, device: str, dtype: torch.dtype):
    """Model and processor from a directory or Hub repo (``trust_remote_code``), the model in eval mode."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)
    return model, processor


def load_vae(config, device: str):
    """The ``diffusers`` VAE of VAE-target models (needed to make and decode targets), else None."""
    if config.target_source != "vae":
        return None
    if not config.vae_name_or_path:
        raise ValueError("the model predicts VAE latents but its config names no vae_name_or_path")
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(config.vae_name_or_path).to(device).eval()


def generation_kwargs(args: argparse.Namespace) -> dict:
    """``generate`` arguments from the command line."""
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": args.sample, "num_beams": args.num_beams}
    if args.sample:
        kwargs.update(temperature=args.temperature, top_p=args.top_p)
    return kwargs


def watch_video(
    model,
    processor,
    path: str,
    prompt: str,
    fps: float | None,
    chunk_frames: int,
    generate: dict,
    keep_frames: bool = False,
    vae=None,
    predict: bool = False,
) -> VideoReading:
    """Stream the decoded video through the model chunk by chunk and caption it."""
    stream = model.stream(**stream_prompt_inputs(processor, prompt), chunk_frames=chunk_frames)
    fit = stream.frames_that_fit
    duration, count = video_duration(path)
    estimate = frames_at(duration, count, fps)
    if estimate is not None and estimate > fit:
        raise ValueError(_too_long(path, estimate, fit, fps, duration))
    reading = VideoReading(caption="")
    if predict:
        reading.predictions.append(stream.initial_prediction.float().cpu())
    with tqdm(total=estimate, unit="frame", desc="watching", disable=None, file=sys.stderr) as bar:
        for chunk in decode_video(path, processor, fps, chunk_frames):
            seen = int(stream.num_frames[0]) + chunk.pixels.shape[0]
            if seen > fit:
                raise ValueError(_too_long(path, seen, fit, fps, duration))
            targets = _targets(processor, chunk.resized, vae) if predict else None
            step = stream.extend(
                chunk.pixels.unsqueeze(0), targets=None if targets is None else targets.unsqueeze(0)
            )
            if keep_frames:
                reading.frames.append((chunk.resized * 255).round().to(torch.uint8))
                reading.attention.append(step.attention[0].float().cpu())
            if predict:
                reading.targets.append(targets)
                reading.predictions.append(step.predictions[0].float().cpu())
            bar.update(chunk.pixels.shape[0])
    reading.caption = _decode_caption(processor, stream.caption(**generate))
    return reading


def caption_dense(model, processor, path: str, prompt: str, fps: float | None, generate: dict) -> str:
    """Dense baseline (many tokens per frame, no queries): one ``generate`` over every sampled frame."""
    frames = torch.cat([chunk.resized for chunk in decode_video(path, processor, fps, DEFAULT_CHUNK_FRAMES)])
    inputs = processor(text=prompt, videos=frames.permute(0, 2, 3, 1)).to(model.device)
    return _decode_caption(processor, model.generate(**inputs, **generate)[:, inputs["input_ids"].shape[1] :])


def _targets(processor, resized: torch.Tensor, vae) -> torch.Tensor:
    """Next-frame targets of resized frames ``[n, 3, S, S]``: VAE latents or downsampled frames."""
    return processor.frame_targets(resized, vae)


def _decode_caption(processor, new_tokens: torch.Tensor) -> str:
    return processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()


def _too_long(path: str, frames: int, fit: int, fps: float | None, duration: float | None) -> str:
    rate = "every frame" if fps is None else f"{fps:g} fps"
    advice = "a lower --fps"
    if duration:
        advice = f"--fps {math.floor(1000 * (fit - 1) / duration) / 1000:g} or lower"
    return (
        f"{path} at {rate} gives at least {frames} frames but the model's context fits {fit} after the prompt "
        f"(one position per frame): subsample the video with {advice}"
    )


# ---------------------------------------------------------------------------------------------- figures
def attention_overlays(frames: torch.Tensor, attention: torch.Tensor) -> list[Image.Image]:
    """Frames ``[T, 3, S, S]`` uint8 with their patch attention ``[T, P]`` as heat maps -> RGB images.

    Each map is min-max scaled per frame and upsampled bilinearly; the colour covers the frame in proportion to
    the attention, so unattended regions show the frame itself.
    """
    size = max(DISPLAY_SIZE, frames.shape[-1])
    grid = math.isqrt(attention.shape[-1])
    heat = attention.reshape(-1, 1, grid, grid).float()
    low = heat.amin(dim=(-1, -2), keepdim=True)
    span = (heat.amax(dim=(-1, -2), keepdim=True) - low).clamp_min(torch.finfo(heat.dtype).tiny)
    heat = F.interpolate((heat - low) / span, size=(size, size), mode="bilinear", align_corners=False)
    heat = heat.squeeze(1).clamp(0, 1).numpy()
    colours = matplotlib.colormaps[HEATMAP_COLORMAP](heat)[..., :3]
    shown = F.interpolate(frames.float() / 255, size=(size, size), mode="nearest").permute(0, 2, 3, 1).numpy()
    weight = HEATMAP_ALPHA * heat[..., None]
    blended = (1 - weight) * shown + weight * colours
    return [Image.fromarray((image * 255).round().astype(np.uint8)) for image in blended]


def write_attention_gif(path: str, frames: torch.Tensor, attention: torch.Tensor, fps: float | None) -> None:
    """GIF of every frame (at most ``MAX_GIF_FRAMES``, evenly chosen) with its query attention overlaid."""
    keep = np.linspace(0, frames.shape[0] - 1, min(frames.shape[0], MAX_GIF_FRAMES)).round().astype(int)
    images = attention_overlays(frames[keep], attention[keep])
    step = (frames.shape[0] - 1) / max(1, len(keep) - 1) if len(keep) > 1 else 1.0
    duration_ms = round(1000 * step / (fps or GIF_FPS))
    _atomic_write(
        path,
        lambda tmp: images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0
        ),
    )


def write_predictions_png(path: str, real: torch.Tensor, predicted: torch.Tensor) -> None:
    """Real targets (top row) above the predicted ones (bottom row), images ``[T, 3, h, w]`` in [0, 1]."""
    columns = np.linspace(0, real.shape[0] - 1, min(real.shape[0], PREDICTION_COLUMNS)).round().astype(int)
    figure = Figure(
        figsize=(PREDICTION_PANEL_INCHES * len(columns), 2 * PREDICTION_PANEL_INCHES + TITLE_INCHES),
        dpi=FIGURE_DPI,
    )
    axes = figure.subplots(2, len(columns), squeeze=False)
    for column, frame in enumerate(columns):
        for row, images in enumerate((real, predicted)):
            axis = axes[row, column]
            axis.imshow(images[frame].permute(1, 2, 0).numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        axes[0, column].set_title(f"frame {frame + 1}", fontsize=9)
    axes[0, 0].set_ylabel("real")
    axes[1, 0].set_ylabel("predicted")
    figure.tight_layout()
    _atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


def _atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)`` then move the file into place."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", help="video file (anything PyAV decodes)")
    parser.add_argument(
        "--model", required=True, help="directory saved by the trainer (D/final) or Hub repo id"
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="instruction placed before the video")
    parser.add_argument(
        "--fps", type=float, default=None, help="frames per second to read (default: every frame)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--chunk-frames", type=int, default=DEFAULT_CHUNK_FRAMES, help="frames per encoder pass"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument(
        "--attention", metavar="OUT.gif", help="write the frames with query attention heat maps"
    )
    parser.add_argument("--predictions", metavar="OUT.png", help="write real vs predicted next frames")
    args = parser.parse_args(argv)
    if args.chunk_frames < 1 or args.max_new_tokens < 1 or args.num_beams < 1:
        parser.error("--chunk-frames, --max-new-tokens and --num-beams must be >= 1")
    return args


def run(args: argparse.Namespace) -> str:
    """Caption ``args.video`` and write the requested figures; returns the caption."""
    video_duration(args.video)  # a missing or undecodable file fails before the model is loaded
    torch.manual_seed(args.seed)
    model, processor = load_model(args.model, args.device, resolve_dtype(args.dtype, args.device))
    generate = generation_kwargs(args)
    if model.config.foveation_mode != "foveated":
        if args.attention or args.predictions:
            raise ValueError("a dense-baseline model has no query attention or streaming predictions")
        return caption_dense(model, processor, args.video, args.prompt, args.fps, generate)
    vae = load_vae(model.config, args.device) if args.predictions else None
    reading = watch_video(
        model,
        processor,
        args.video,
        args.prompt,
        args.fps,
        args.chunk_frames,
        generate,
        keep_frames=bool(args.attention),
        vae=vae,
        predict=bool(args.predictions),
    )
    if args.attention:
        write_attention_gif(args.attention, torch.cat(reading.frames), torch.cat(reading.attention), args.fps)
    if args.predictions:
        real = torch.cat(reading.targets)
        predicted = torch.cat(reading.predictions)[: real.shape[0]]
        write_predictions_png(
            args.predictions,
            processor.postprocess_targets(real, vae),
            processor.postprocess_targets(predicted, vae),
        )
    return reading.caption


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        caption = run(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(caption)
    return 0


if __name__ == "__main__":
    sys.exit(main())
