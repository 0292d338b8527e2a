"""Caption a video file with a foveated VLM, frame by frame in bounded memory.

    python caption_video.py VIDEO --model PATH_OR_REPO [--prompt TEXT] [--num-frames N | --fps F]
        [--max-new-tokens N] [--sample] [--temperature T] [--top-p P] [--num-beams K] [--seed S]
        [--chunk-frames N] [--device cpu|cuda] [--dtype auto|float32|bfloat16|float16]
        [--attention OUT.gif] [--predictions OUT.png]

The model and processor are loaded with ``trust_remote_code`` from a directory (a trainer's ``D/final``) or a
Hub repo. Frames are sampled as the processor samples them (``video_foveated.iter_video``, the one
decoding path): by default as the model was trained (the processor's recorded ``num_frames`` or ``fps``; every
frame, with a note, for a model that records neither), or by ``--num-frames`` (uniform over the video) or
``--fps`` (the frame nearest to each tick). They are read by a :class:`FoveatedStream` chunk by chunk (decoded,
resized and encoded ``--chunk-frames`` frames at a time): memory holds one chunk of frames and encoder K/V plus
the LLM caches (one position per frame), so an hour at 1 fps (3,600 positions) fits SmolLM2's 8,192. The caption
goes to stdout. ``--attention`` writes a GIF of the frames the model saw with each frame's query attention as a heat
map; ``--predictions`` writes a PNG of real next-frame targets above the predicted ones (decoded through the VAE
for VAE targets). Frames are kept only for the GIF (``T x 3 x S x S`` bytes).

Dense-baseline models have no queries: they are captioned with one ``generate`` over all frames.
Bad input never prints a traceback: the arguments, the output paths (``--attention``/``--predictions``), the
device, the prompt and the model path are checked before the model is loaded or a frame decoded, and every
failure (missing or undecodable file, too many frames for the context, ...) prints ``error: ...`` on stderr and
exits 1 (2 for malformed arguments, as argparse does). A warning is one ``warning: ...`` line: reading a video
as far more frames than the model was trained on (the processor's ``trained_frames`` x ``long_video_factor``)
says so, with the trained length and how to subsample.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from tqdm import tqdm

from foveated_vlm.data.targets import vae_for
from foveated_vlm.files import atomic_path
from processing_foveated import DEFAULT_PROMPT, check_prompt_text
from streaming_foveated import DEFAULT_CHUNK_FRAMES, stream_prompt_inputs
from video_foveated import (
    LongVideoWarning,
    iter_video,
    long_video_message,
    sampled_frame_count,
    to_uint8,
    video_duration,
)

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
EXIT_INTERRUPTED = 130
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
OUTPUT_SUFFIXES = {"--attention": ".gif", "--predictions": ".png"}


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
def decode_video(
    path: str, processor, num_frames: int | None, fps: float | None, chunk_frames: int
) -> Iterator[DecodedChunk]:
    """The frames :func:`video_foveated.iter_video` samples (``num_frames`` uniformly, ``fps`` nearest to
    each tick, or every frame), resized as the processor does, ``chunk_frames`` at a time."""
    frames: list[np.ndarray] = []
    for frame in iter_video(path, num_frames=num_frames, fps=fps):
        frames.append(frame)
        if len(frames) == chunk_frames:
            yield _chunk(processor, frames)
            frames = []
    if frames:
        yield _chunk(processor, frames)


def _chunk(processor, frames: list[np.ndarray]) -> DecodedChunk:
    pixels, resized = processor.video_processor.preprocess_frames(torch.from_numpy(np.stack(frames)))
    return DecodedChunk(pixels, resized)


# ---------------------------------------------------------------------------------------------- model
def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def check_model_source(name: str) -> str:
    """``--model`` as a local directory (checked: it exists and holds ``config.json``) or a Hub repo id.

    A name that cannot be a repo id (``./x``, ``/x``, ``~/x``, ``a/b/c``, ...) and is no directory is a mistyped
    path: "no such directory", not the Hub's complaint about repo id characters.
    """
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            final = os.path.join(path, "final")
            hint = f" (a trainer's run folder keeps the model in {final})" if os.path.isdir(final) else ""
            raise ValueError(
                f"--model {name}: the directory holds no config.json, so it is no saved model{hint}"
            )
        return path
    if os.path.exists(path):
        raise ValueError(f"--model {name} is a file: give the directory the model was saved to")
    if not HUB_REPO_ID.fullmatch(name) or ".." in name:
        raise ValueError(f"--model {name}: no such directory (nor a Hub repo id, which reads owner/name)")
    return name


def load_model(name_or_path: str, device: str, dtype: torch.dtype):
    """Model and processor from a directory or Hub repo (``trust_remote_code``), the model in eval mode.

    A model that cannot be loaded is a ValueError saying where it was looked for.
    """
    from transformers import AutoModel, AutoProcessor

    try:
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype)
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)
    except (OSError, ValueError, KeyError) as error:
        where = "directory" if os.path.isdir(name_or_path) else "no such local directory; as a Hub repo"
        raise ValueError(f"--model {name_or_path} ({where}) could not be loaded: {error}") from error
    return model.to(device).eval(), processor


def check_device(name: str) -> str:
    """``--device`` as torch parses it, available on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: only cpu, cuda and mps are supported")
    return name


def check_output(path: str, flag: str) -> None:
    """An output file of ``flag`` must be writable where it is named, before any frame is decoded."""
    suffix = OUTPUT_SUFFIXES[flag]
    if os.path.isdir(path):
        example = os.path.join(path, f"{flag.lstrip('-')}{suffix}")
        raise ValueError(f"{flag} {path} is a directory: give a file name ending in {suffix}, e.g. {example}")
    if not path.lower().endswith(suffix):
        raise ValueError(f"{flag} {path}: the file is written as {suffix[1:].upper()}; name it *{suffix}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{flag} {path}: no such directory {directory} (create it first)")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"{flag} {path}: the directory {directory} is not writable")


def check_prompt(prompt: str) -> None:
    """``--prompt`` must be text the tokenizer can read, without video tokens (:func:`check_prompt_text`)."""
    try:
        check_prompt_text([prompt], "text")
    except ValueError as error:
        raise ValueError(str(error).replace("text[0]", "--prompt", 1)) from None


def sampling(args: argparse.Namespace, processor) -> tuple[int | None, float | None]:
    """``(num_frames, fps)``: the command line's, else the processor's recorded training sampling (a note on
    stderr when it records none: every frame is read)."""
    if args.num_frames is not None or args.fps is not None:
        return args.num_frames, args.fps
    num_frames, fps = getattr(processor, "num_frames", None), getattr(processor, "fps", None)
    if num_frames is None and fps is None:
        print(
            "note: the model records no frame sampling from its training; reading every frame "
            "(pass --num-frames N or --fps F)",
            file=sys.stderr,
        )
    return num_frames, fps


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
    num_frames: int | None,
    fps: float | None,
    chunk_frames: int,
    generate: dict,
    keep_frames: bool = False,
    vae=None,
    predict: bool = False,
) -> VideoReading:
    """Stream the sampled frames through the model chunk by chunk and caption it."""
    stream = model.stream(**stream_prompt_inputs(processor, prompt), chunk_frames=chunk_frames)
    fit = stream.frames_that_fit
    duration, count = video_duration(path)
    estimate = sampled_frame_count(duration, count, num_frames, fps)
    if estimate is not None and estimate > fit:
        raise ValueError(_too_long(path, estimate, fit, num_frames, fps, duration))
    reading = VideoReading(caption="")
    if predict:
        reading.predictions.append(stream.initial_prediction.float().cpu())
    warned = estimate is not None and warn_long_read(processor, estimate)
    with tqdm(total=estimate, unit="frame", desc="watching", disable=None, file=sys.stderr) as bar:
        for chunk in decode_video(path, processor, num_frames, fps, chunk_frames):
            seen = int(stream.num_frames[0]) + chunk.pixels.shape[0]
            if seen > fit:
                raise ValueError(_too_long(path, seen, fit, num_frames, fps, duration))
            warned = warned or warn_long_read(processor, seen)
            targets = processor.video_processor.frame_targets(chunk.resized, vae) if predict else None
            step = stream.extend(
                chunk.pixels.unsqueeze(0), targets=None if targets is None else targets.unsqueeze(0)
            )
            if keep_frames:
                reading.frames.append(to_uint8(chunk.resized))
                reading.attention.append(step.attention[0].float().cpu())
            if predict:
                reading.targets.append(targets)
                reading.predictions.append(step.predictions[0].float().cpu())
            bar.update(chunk.pixels.shape[0])
    reading.caption = _decode_caption(processor, stream.caption(**generate))
    return reading


def warn_long_read(processor, count: int) -> bool:
    """A :class:`LongVideoWarning` if ``count`` frames are far more than the model was trained on (a processor
    saved before ``trained_frames`` was recorded has no such number: no warning); True if it warned."""
    message = long_video_message(
        count, getattr(processor, "trained_frames", None), getattr(processor, "long_video_factor", None)
    )
    if message is not None:
        warnings.warn(message, LongVideoWarning, stacklevel=2)
    return message is not None


def caption_dense(
    model, processor, path: str, prompt: str, num_frames: int | None, fps: float | None, generate: dict
) -> str:
    """Dense baseline (many tokens per frame, no queries): one ``generate`` over every sampled frame."""
    inputs = processor(text=prompt, videos=path, num_frames=num_frames, fps=fps).to(model.device)
    return _decode_caption(processor, model.generate(**inputs, **generate)[:, inputs["input_ids"].shape[1] :])


def _decode_caption(processor, new_tokens: torch.Tensor) -> str:
    return processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()


def _too_long(
    path: str, frames: int, fit: int, num_frames: int | None, fps: float | None, duration: float | None
) -> str:
    if num_frames is not None:
        rate = f"{num_frames} frames"
        advice = f"--num-frames {fit} or fewer"
    else:
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
    with atomic_path(path) as temporary:
        images[0].save(
            temporary, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0
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
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")


# ---------------------------------------------------------------------------------------------- main
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _probability(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", help="video file (anything PyAV decodes)")
    parser.add_argument(
        "--model", required=True, help="directory saved by the trainer (D/final) or Hub repo id"
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="instruction placed before the video")
    sampled = parser.add_mutually_exclusive_group()
    sampled.add_argument(
        "--num-frames",
        type=_positive_int,
        default=None,
        help="frames to read, spread uniformly (default: as the model was trained)",
    )
    sampled.add_argument(
        "--fps",
        type=_positive_float,
        default=None,
        help="frames per second to read, the nearest frame to each tick (default: as the model was trained)",
    )
    parser.add_argument("--max-new-tokens", type=_positive_int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=_positive_float, default=None, help="with --sample (default 1)")
    parser.add_argument("--top-p", type=_probability, default=None, help="with --sample (default 1)")
    parser.add_argument("--num-beams", type=_positive_int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--chunk-frames", type=_positive_int, default=DEFAULT_CHUNK_FRAMES, help="frames per encoder pass"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument(
        "--attention", metavar="OUT.gif", help="write the frames with query attention heat maps"
    )
    parser.add_argument("--predictions", metavar="OUT.png", help="write real vs predicted next frames")
    args = parser.parse_args(argv)
    if not args.sample and (args.temperature is not None or args.top_p is not None):
        parser.error("--temperature and --top-p apply to sampling: add --sample")
    args.temperature = 1.0 if args.temperature is None else args.temperature
    args.top_p = 1.0 if args.top_p is None else args.top_p
    return args


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before the model is loaded or a frame decoded (ValueError if not)."""
    check_prompt(args.prompt)
    check_device(args.device)
    for flag, path in (("--attention", args.attention), ("--predictions", args.predictions)):
        if path is not None:
            check_output(path, flag)
    video_duration(args.video)  # a missing or undecodable file fails before the model is loaded
    args.model = check_model_source(args.model)


def run(args: argparse.Namespace) -> str:
    """Caption ``args.video`` and write the requested figures; returns the caption."""
    check_arguments(args)
    torch.manual_seed(args.seed)
    model, processor = load_model(args.model, args.device, resolve_dtype(args.dtype, args.device))
    num_frames, fps = sampling(args, processor)
    generate = generation_kwargs(args)
    if model.config.foveation_mode != "foveated":
        if args.attention or args.predictions:
            raise ValueError("a dense-baseline model has no query attention or streaming predictions")
        return caption_dense(model, processor, args.video, args.prompt, num_frames, fps, generate)
    vae = vae_for(model.config, args.device) if args.predictions else None
    reading = watch_video(
        model,
        processor,
        args.video,
        args.prompt,
        num_frames,
        fps,
        args.chunk_frames,
        generate,
        keep_frames=bool(args.attention),
        vae=vae,
        predict=bool(args.predictions),
    )
    if args.attention:
        write_attention_gif(args.attention, torch.cat(reading.frames), torch.cat(reading.attention), fps)
    if args.predictions:
        real = torch.cat(reading.targets)
        predicted = torch.cat(reading.predictions)[: real.shape[0]]
        write_predictions_png(
            args.predictions,
            processor.video_processor.postprocess_targets(real, vae),
            processor.video_processor.postprocess_targets(predicted, vae),
        )
    return reading.caption


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning on the command line: one ``warning: ...`` line on stderr (no file and line of code)."""
    print(f"warning: {_one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; every failure is one ``error: ...`` line on stderr and a non-zero exit status, every
    warning (a video read far past the trained length, ...) one ``warning: ...`` line."""
    args = parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            caption = run(args)
    except (ValueError, ImportError, OSError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 (a command line prints one line, never a traceback)
        print(f"error: {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    print(caption)
    return 0


if __name__ == "__main__":
    sys.exit(main())
