"""A new user's first hour (issue 12): odd and bad inputs to the processor, the model, the stream and the CLI.

Every case either works (and, where a conversion is involved, gives what the documented conversion says) or
raises an error whose message names the problem and what to do: no traceback, no silent acceptance. The videos
are made from a real photograph (matplotlib's sample ``grace_hopper.jpg``), panned into clips of odd shapes and
written in the common containers. The Hub load in a bare torch + transformers environment is
``test_hub_roundtrip.py``; the packaging of the Hub files ``test_packaging.py``.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from PIL import Image

import caption_video
from foveated_vlm.tiny import tiny_config, tiny_processor
from modeling_foveated import FoveatedVLMForConditionalGeneration
from processing_foveated import FRAME_TOKEN, VIDEO_END_TOKEN, VIDEO_START_TOKEN
from streaming_foveated import stream_prompt_inputs
from video_foveated import load_video, uniform_indices

PHOTO = Path(__import__("matplotlib").get_data_path()) / "sample_data" / "grace_hopper.jpg"
CLIP_FPS = 10
LONG_CLIP_FRAMES = 45  # the clip that the CLI used to read whole ("square square ...")
TRAINED_FRAMES = 4  # the sampling the saved model's processor records


# ------------------------------------------------------------------------------------------------ videos
def photo() -> np.ndarray:
    with Image.open(PHOTO) as image:
        return np.asarray(image.convert("RGB"))


def pan(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``[T, H, W, 3]`` uint8: a window of the photo moving over it (a real image, real motion)."""
    picture = photo()
    rng = np.random.default_rng(seed)
    scale = max(height / picture.shape[0], width / picture.shape[1], 0.25)
    size = (max(width, round(picture.shape[1] * scale * 2)), max(height, round(picture.shape[0] * scale * 2)))
    big = np.asarray(Image.fromarray(picture).resize(size))
    y0 = rng.integers(0, big.shape[0] - height + 1)
    x0 = rng.integers(0, big.shape[1] - width + 1)
    span = max(0, big.shape[1] - width - x0)
    return np.stack(
        [
            big[y0 : y0 + height, x0 + t * span // max(1, frames) : x0 + t * span // max(1, frames) + width]
            for t in range(frames)
        ]
    )


CONTAINERS = {  # name: (suffix, codec, pixel format, shape [T, H, W])
    "mp4-h264": (".mp4", "libx264", "yuv420p", (12, 48, 64)),
    "mov-mpeg4": (".mov", "mpeg4", "yuv420p", (9, 64, 36)),
    "webm-vp9": (".webm", "libvpx-vp9", "yuv420p", (8, 40, 72)),
    "webm-vp8": (".webm", "libvpx", "yuv420p", (6, 32, 32)),
    "avi-mjpeg": (".avi", "mjpeg", "yuvj420p", (7, 48, 48)),
    "mkv-ffv1-odd": (".mkv", "ffv1", "bgr0", (5, 37, 53)),
    "gif-odd": (".gif", "gif", "rgb8", (6, 33, 47)),
}


def encode(path: Path, frames: np.ndarray, codec: str, pix_fmt: str, fps: int = CLIP_FPS) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def encode_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class Unseekable(io.RawIOBase):
    """A pipe-like binary stream: read only, cannot seek."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


# ------------------------------------------------------------------------------------------------ the world
@dataclass
class World:
    model: Any
    processor: Any
    files: dict[str, Path]
    tmp: Path
    model_dir: Path
    bare_model_dir: Path
    long_clip: Path

    def pixels(self, video, **kwargs) -> torch.Tensor:
        return self.processor(text="Describe the video.", videos=video, **kwargs)["pixel_values_videos"]

    def inputs(self, frames: int = 3, **kwargs):
        return self.processor(text="Describe the video.", videos=pan(frames, 32, 32), **kwargs)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer) -> World:
    tmp = tmp_path_factory.mktemp("battery")
    config = tiny_config(tokenizer, text={"initializer_range": 0.2})
    torch.manual_seed(0)
    model = FoveatedVLMForConditionalGeneration(config).eval()
    processor = tiny_processor(config, tokenizer)
    files = {
        name: encode(tmp / f"{name}{suffix}", pan(*shape, seed=i), codec, pix_fmt)
        for i, (name, (suffix, codec, pix_fmt, shape)) in enumerate(CONTAINERS.items())
    }
    files["audio-only"] = encode_audio_only(tmp / "audio.wav")
    (tmp / "text.mp4").write_text("this is not a video\n" * 50)
    files["text"] = tmp / "text.mp4"
    long_clip = encode(tmp / "long.mp4", pan(LONG_CLIP_FRAMES, 48, 64, seed=9), "libx264", "yuv420p")
    model_dir = tmp / "model"
    model.save_pretrained(model_dir)
    recorded = tiny_processor(config, tokenizer)
    recorded.num_frames = TRAINED_FRAMES
    recorded.save_pretrained(model_dir)
    bare_model_dir = tmp / "model-without-sampling"
    model.save_pretrained(bare_model_dir)
    processor.save_pretrained(bare_model_dir)
    return World(model, processor, files, tmp, model_dir, bare_model_dir, long_clip)


def same(expected: Callable[[World], torch.Tensor]) -> Callable[[World, torch.Tensor], None]:
    def check(world: World, got: torch.Tensor) -> None:
        torch.testing.assert_close(got, expected(world))

    return check


def frames_are(count: int) -> Callable[[World, Any], None]:
    def check(world: World, got) -> None:
        pixels = got["pixel_values_videos"] if isinstance(got, dict) or hasattr(got, "keys") else got
        assert pixels.shape[1] == count, pixels.shape

    return check


@dataclass
class Case:
    """``run(world)`` either returns (then ``check(world, result)``, if any) or raises ``error`` (a regex)."""

    id: str
    run: Callable[[World], Any]
    error: str | None = None
    check: Callable[[World, Any], None] | None = None
    exception: type[Exception] = ValueError


V = pan(5, 24, 40, seed=1)  # [5, 24, 40, 3] uint8
ODD = pan(4, 17, 23, seed=2)
PIL_FRAMES = [Image.fromarray(frame) for frame in V]
SIZES = [(24, 40), (31, 17), (64, 64), (9, 90)]
PIL_SIZES = [Image.fromarray(pan(1, h, w, seed=i)[0]) for i, (h, w) in enumerate(SIZES)]


def _alone(world: World, frame) -> torch.Tensor:
    return world.pixels([frame])[0, 0]


def _sizes_check(world: World, got: torch.Tensor) -> None:
    assert got.shape[1] == len(PIL_SIZES)
    for t, frame in enumerate(PIL_SIZES):
        torch.testing.assert_close(got[0, t], _alone(world, frame))


def _file(name: str, **kwargs) -> Callable[[World], torch.Tensor]:
    return lambda world: world.pixels(world.files[name], **kwargs)


def _decoded(name: str, **kwargs) -> Callable[[World], torch.Tensor]:
    return lambda world: world.pixels(load_video(world.files[name], **kwargs))


def _from_handle(world: World, name: str, **kwargs) -> torch.Tensor:
    with open(world.files[name], "rb") as handle:
        return world.pixels(handle, **kwargs)


def _no_av(world: World):
    import sys

    saved = sys.modules.get("av")
    sys.modules["av"] = None  # `import av` raises ImportError, as where PyAV is not installed
    try:
        return world.pixels(world.files["mp4-h264"])
    finally:
        sys.modules["av"] = saved


PROCESSOR_WORKS = [
    Case("rgb-odd-size", lambda w: w.pixels(ODD), check=frames_are(4)),
    Case(
        "bgr-to-rgb-negative-stride",
        lambda w: w.pixels(V[..., ::-1]),
        check=same(lambda w: w.pixels(V[..., ::-1].copy())),
    ),
    Case(
        "reversed-time-negative-stride",
        lambda w: w.pixels(V[::-1]),
        check=same(lambda w: w.pixels(V[::-1].copy())),
    ),
    Case(
        "vertical-flip-negative-stride",
        lambda w: w.pixels(V[:, ::-1]),
        check=same(lambda w: w.pixels(V[:, ::-1].copy())),
    ),
    Case(
        "strided-slice",
        lambda w: w.pixels(V[:, ::2, ::3]),
        check=same(lambda w: w.pixels(V[:, ::2, ::3].copy())),
    ),
    Case("fortran-order", lambda w: w.pixels(np.asfortranarray(V)), check=same(lambda w: w.pixels(V))),
    Case(
        "grayscale-THW",
        lambda w: w.pixels(V[..., 0]),
        check=same(lambda w: w.pixels(np.repeat(V[..., :1], 3, -1))),
    ),
    Case(
        "grayscale-THW1",
        lambda w: w.pixels(V[..., :1]),
        check=same(lambda w: w.pixels(np.repeat(V[..., :1], 3, -1))),
    ),
    Case(
        "rgba-alpha-dropped",
        lambda w: w.pixels(np.concatenate([V, np.zeros_like(V[..., :1])], -1)),
        check=same(lambda w: w.pixels(V)),
    ),
    Case(
        "float32-unit-range",
        lambda w: w.pixels(V.astype(np.float32) / 255),
        check=same(lambda w: w.pixels(V)),
    ),
    Case(
        "float64-unit-range",
        lambda w: w.pixels(V.astype(np.float64) / 255),
        check=same(lambda w: w.pixels(V)),
    ),
    Case("float16-unit-range", lambda w: w.pixels((V / 255).astype(np.float16)), check=frames_are(5)),
    Case("torch-uint8", lambda w: w.pixels(torch.from_numpy(V)), check=same(lambda w: w.pixels(V))),
    Case("torch-bfloat16", lambda w: w.pixels(torch.from_numpy(V).bfloat16() / 255), check=frames_are(5)),
    Case(
        "torch-non-contiguous",
        lambda w: w.pixels(torch.from_numpy(V.transpose(0, 3, 1, 2).copy()).permute(0, 2, 3, 1)),
        check=same(lambda w: w.pixels(V)),
    ),
    Case("one-image-HW3", lambda w: w.pixels(V[0]), check=same(lambda w: w.pixels(V[:1]))),
    Case(
        "one-image-HW4",
        lambda w: w.pixels(np.concatenate([V[0], V[0, ..., :1]], -1)),
        check=same(lambda w: w.pixels(V[:1])),
    ),
    Case(
        "one-grayscale-image-HW",
        lambda w: w.pixels(V[0, ..., 0]),
        check=same(lambda w: w.pixels(V[:1, ..., :1])),
    ),
    Case(
        "one-grayscale-image-HW1",
        lambda w: w.pixels(V[0, ..., :1]),
        check=same(lambda w: w.pixels(V[:1, ..., :1])),
    ),
    Case("pil-frames", lambda w: w.pixels(PIL_FRAMES), check=same(lambda w: w.pixels(V))),
    Case("pil-frames-of-different-sizes", lambda w: w.pixels(PIL_SIZES), check=_sizes_check),
    Case(
        "pil-grayscale-frames", lambda w: w.pixels([f.convert("L") for f in PIL_FRAMES]), check=frames_are(5)
    ),
    Case(
        "pil-rgba-frames",
        lambda w: w.pixels([f.convert("RGBA") for f in PIL_FRAMES]),
        check=same(lambda w: w.pixels(V)),
    ),
    Case("pil-palette-frames", lambda w: w.pixels([f.convert("P") for f in PIL_FRAMES]), check=frames_are(5)),
    Case("one-pil-image", lambda w: w.pixels(PIL_FRAMES[0]), check=same(lambda w: w.pixels(V[:1]))),
    Case("list-of-array-frames", lambda w: w.pixels(list(V)), check=same(lambda w: w.pixels(V))),
    Case(
        "list-of-frames-of-different-sizes",
        lambda w: w.pixels([np.asarray(f) for f in PIL_SIZES]),
        check=_sizes_check,
    ),
    Case(
        "list-of-grayscale-frames",
        lambda w: w.pixels(list(V[..., 0])),
        check=same(lambda w: w.pixels(V[..., 0])),
    ),
    Case(
        "mixed-pil-and-array-frames",
        lambda w: w.pixels([PIL_FRAMES[0], V[1]]),
        check=same(lambda w: w.pixels(V[:2])),
    ),
    Case(
        "batch-of-different-lengths-and-sizes",
        lambda w: w.processor(text=["a", "b"], videos=[V, ODD]),
        check=lambda w, b: b["video_frame_mask"].sum(1).tolist() == [5, 4] or pytest.fail("mask"),
    ),
    Case(
        "batch-array-BTHWC",
        lambda w: w.processor(text=["a", "b"], videos=np.stack([V, V])),
        check=frames_are(5),
    ),
    Case(
        "batch-of-every-kind",
        lambda w: w.processor(text=["a", "b", "c"], videos=[V, PIL_FRAMES, w.files["gif-odd"]]),
        check=frames_are(6),
    ),
    Case("one-pixel-frames", lambda w: w.pixels(V[:, :1, :1]), check=frames_are(5)),
    Case("extreme-aspect-ratio", lambda w: w.pixels(pan(3, 4, 200)), check=frames_are(3)),
    Case(
        "num-frames-samples-an-array",
        lambda w: w.pixels(pan(45, 16, 16), num_frames=8),
        check=same(lambda w: w.pixels(pan(45, 16, 16)[uniform_indices(45, 8)])),
    ),
    Case(
        "num-frames-above-length-keeps-all",
        lambda w: w.pixels(V, num_frames=50),
        check=same(lambda w: w.pixels(V)),
    ),
    Case(
        "num-frames-samples-pil-frames",
        lambda w: w.pixels(PIL_FRAMES, num_frames=2),
        check=same(lambda w: w.pixels(V[[0, 4]])),
    ),
    *[
        Case(f"file-{name}", _file(name, num_frames=4), check=same(_decoded(name, num_frames=4)))
        for name in CONTAINERS
    ],
    Case("file-fps", _file("mp4-h264", fps=5), check=same(_decoded("mp4-h264", fps=5))),
    Case("file-every-frame", _file("mov-mpeg4"), check=frames_are(9)),
    Case(
        "file-pathlib-and-str-agree",
        lambda w: w.pixels(str(w.files["gif-odd"])),
        check=same(_file("gif-odd")),
    ),
    Case(
        "file-bytes",
        lambda w: w.pixels(w.files["webm-vp9"].read_bytes(), num_frames=3),
        check=same(_file("webm-vp9", num_frames=3)),
    ),
    Case(
        "file-bytearray",
        lambda w: w.pixels(bytearray(w.files["avi-mjpeg"].read_bytes())),
        check=same(_file("avi-mjpeg")),
    ),
    Case(
        "file-bytesio",
        lambda w: w.pixels(io.BytesIO(w.files["mp4-h264"].read_bytes()), num_frames=3),
        check=same(_file("mp4-h264", num_frames=3)),
    ),
    Case(
        "file-open-handle",
        lambda w: _from_handle(w, "mkv-ffv1-odd", num_frames=2),
        check=same(_file("mkv-ffv1-odd", num_frames=2)),
    ),
    Case(
        "file-unseekable-stream",
        lambda w: w.pixels(Unseekable(w.files["mp4-h264"].read_bytes()), num_frames=3),
        check=same(_file("mp4-h264", num_frames=3)),
    ),
    Case(
        "file-default-sampling-of-processor",
        lambda w: tiny_like(w, num_frames=3)(text="x", videos=w.files["mp4-h264"]),
        check=frames_are(3),
    ),
    Case(
        "text-none-is-empty-prompt",
        lambda w: w.processor(text=None, videos=V)["input_ids"],
        check=lambda w, ids: (
            torch.equal(ids, w.processor(text="", videos=V)["input_ids"]) or pytest.fail("differs")
        ),
    ),
    Case(
        "unicode-prompt",
        lambda w: w.processor(text="Was passiert? 何が起きた？ 🎬", videos=V),
        check=frames_are(5),
    ),
    Case(
        "caption-none-entry-supervises-nothing",
        lambda w: w.processor(text=["a", "b"], videos=[V, V], captions=["a cat.", None])["labels"],
        check=lambda w, labels: (
            (labels[1] == -100).all() and (labels[0] != -100).any() or pytest.fail("labels")
        ),
    ),
]


def tiny_like(world: World, **overrides):
    """A copy of the world's processor with other attributes (e.g. a recorded sampling)."""
    import copy

    processor = copy.copy(world.processor)
    for name, value in overrides.items():
        setattr(processor, name, value)
    return processor


PROCESSOR_ERRORS = [
    Case(
        "text-list-with-none",
        lambda w: w.processor(text=["a", None], videos=[V, V]),
        r"text\[1\] is None: give one string per video \(''",
    ),
    Case(
        "text-entry-not-a-string",
        lambda w: w.processor(text=[3], videos=V),
        r"text\[0\] is a int: give one string",
    ),
    Case(
        "text-a-dict",
        lambda w: w.processor(text={"a": 1}, videos=V),
        "text must be a string or a list of strings",
    ),
    Case(
        "prompt-with-frame-token",
        lambda w: w.processor(text=f"look {FRAME_TOKEN}", videos=V),
        r"text\[0\] holds the video token '<\|frame\|>'.*remove it",
    ),
    Case(
        "prompt-with-video-start",
        lambda w: w.processor(text=VIDEO_START_TOKEN, videos=V),
        "holds the video token '<\\|video_start\\|>'",
    ),
    Case(
        "caption-with-video-end",
        lambda w: w.processor(text="a", videos=V, captions=f"x{VIDEO_END_TOKEN}"),
        r"captions\[0\] holds the video token",
    ),
    Case(
        "caption-not-a-string",
        lambda w: w.processor(text="a", videos=V, captions=[3.5]),
        r"captions\[0\] is a float",
    ),
    Case("num-frames-zero", lambda w: w.pixels(V, num_frames=0), "num_frames must be an integer >= 1, got 0"),
    Case(
        "num-frames-fraction",
        lambda w: w.pixels(V, num_frames=2.5),
        "num_frames must be an integer >= 1, got 2.5",
    ),
    Case(
        "num-frames-bool",
        lambda w: w.pixels(V, num_frames=True),
        "num_frames must be an integer >= 1, got True",
    ),
    Case(
        "fps-nan",
        lambda w: w.pixels(w.files["mp4-h264"], fps=float("nan")),
        "fps must be a finite number > 0, got nan",
    ),
    Case("fps-negative", lambda w: w.pixels(w.files["mp4-h264"], fps=-1), "fps must be a finite number > 0"),
    Case(
        "fps-inf",
        lambda w: w.pixels(w.files["mp4-h264"], fps=float("inf")),
        "fps must be a finite number > 0, got inf",
    ),
    Case(
        "num-frames-and-fps",
        lambda w: w.pixels(w.files["mp4-h264"], fps=2, num_frames=2),
        "give num_frames or fps, not both",
    ),
    Case("fps-on-an-array", lambda w: w.pixels(V, fps=2), "fps sampling needs timestamps.*pass num_frames"),
    Case("ambiguous-rank-3", lambda w: w.pixels(V[:3, ..., 0]), r"ambiguous: pass \[H, W, 3\] for one image"),
    Case(
        "channels-first-video",
        lambda w: w.pixels(V.transpose(0, 3, 1, 2)),
        r"channels first\? use \[T, H, W, 3\]: permute\(0, 2, 3, 1\)",
    ),
    Case("five-channels", lambda w: w.pixels(np.zeros((2, 8, 8, 5), np.uint8)), "3 channels last"),
    Case(
        "rank-6",
        lambda w: w.pixels(np.zeros((1, 2, 8, 8, 3, 1), np.uint8)),
        r"a video must be \[T, H, W, C\]",
    ),
    Case("zero-frames", lambda w: w.pixels(np.zeros((0, 8, 8, 3), np.uint8)), "video has zero frames"),
    Case("zero-height", lambda w: w.pixels(np.zeros((2, 0, 8, 3), np.uint8)), "video frames are empty"),
    Case(
        "nan-pixels",
        lambda w: w.pixels(np.full((2, 8, 8, 3), np.nan, np.float32)),
        "NaN or inf pixel values: replace them",
    ),
    Case("inf-pixels", lambda w: w.pixels(np.full((2, 8, 8, 3), np.inf, np.float32)), "NaN or inf"),
    Case("float-0-255", lambda w: w.pixels(V.astype(np.float32)), r"must lie in \[0, 1\].*divide by 255"),
    Case(
        "negative-float",
        lambda w: w.pixels(V.astype(np.float32) / 255 - 0.5),
        r"must lie in \[0, 1\], got \[-0.49",
    ),
    Case(
        "int32-pixels",
        lambda w: w.pixels(V.astype(np.int32)),
        r"uint8 \(0-255\) or float in \[0, 1\].*astype\(np.uint8\)",
    ),
    Case("uint16-pixels", lambda w: w.pixels(V.astype(np.uint16) * 257), "16-bit"),
    Case("bool-pixels", lambda w: w.pixels(V > 128), "got dtype torch.bool"),
    Case("string-array", lambda w: w.pixels(np.array([["a"]])), "video arrays must hold numbers"),
    Case("empty-list", lambda w: w.pixels([]), "videos is an empty list"),
    Case("list-of-none", lambda w: w.pixels([None]), "a video must be an array, a list of frames, a path"),
    Case("video-none", lambda w: w.processor(text="a"), "videos are required"),
    Case("frames-mixed-with-videos", lambda w: w.pixels([V[0], V]), "mixes frames .* with whole videos"),
    Case(
        "frame-list-with-a-video-inside",
        lambda w: w.pixels([[V[0], V]]),
        r"frame 1 of the video is a ndarray of shape \(5, 24, 40, 3\)",
    ),
    Case("empty-pil-frame", lambda w: w.pixels([Image.new("RGB", (0, 0))]), "a frame is empty"),
    Case("missing-file", lambda w: w.pixels(w.tmp / "absent.mp4"), "video file not found: .*absent.mp4"),
    Case("directory-as-video", lambda w: w.pixels(w.tmp), "is a directory, not a video file"),
    Case(
        "url", lambda w: w.pixels("https://example.com/clip.mp4"), "URLs are not fetched, download the video"
    ),
    Case(
        "corrupt-bytes",
        lambda w: w.pixels(bytes(range(256)) * 8),
        r"cannot decode video <2048 bytes of video>",
    ),
    Case("empty-bytes", lambda w: w.pixels(b""), r"cannot decode video <0 bytes of video>"),
    Case("text-file-named-mp4", lambda w: w.pixels(w.files["text"]), "cannot decode video .*text.mp4"),
    Case("audio-only-file", lambda w: w.pixels(w.files["audio-only"]), "audio.wav has no video stream"),
    Case(
        "no-pyav",
        _no_av,
        r"needs PyAV, which is not installed: `pip install av`, or decode",
        exception=ImportError,
    ),
    Case(
        "texts-and-videos-differ",
        lambda w: w.processor(text=["a", "b"], videos=V),
        "got 2 text for 1 videos: give one per video",
    ),
    Case(
        "too-many-frames",
        lambda w: w.pixels(np.zeros((600, 4, 4, 3), np.uint8)),
        r"at most \d+ frames fit; subsample the video \(num_frames=",
    ),
    Case(
        "return-tensors-np",
        lambda w: w.processor(text="a", videos=V, return_tensors="np"),
        "only return_tensors='pt'",
    ),
    Case(
        "unknown-argument",
        lambda w: w.processor(text="a", videos=V, frames=3),
        r"unexpected arguments: \['frames'\]",
        exception=TypeError,
    ),
    Case(
        "targets-for-other-videos",
        lambda w: w.processor(text="a", videos=V, prediction_targets=[torch.zeros(2, 3, 4, 4)]),
        "prediction_targets have 2 frames, the video 5",
    ),
    Case(
        "processor-sampling-invalid",
        lambda w: type(w.processor)(tokenizer=w.processor.tokenizer, image_size=32, num_frames=0),
        "num_frames must be an integer >= 1",
    ),
]


# ------------------------------------------------------------------------------------------------ model
def _forward(**changes):
    def run(world: World):
        inputs = dict(world.inputs())
        inputs.update({k: (v(inputs) if callable(v) else v) for k, v in changes.items()})
        with torch.no_grad():
            return world.model(**inputs)

    return run


def _poke(pixels: torch.Tensor, value: float) -> torch.Tensor:
    pixels = pixels.clone()
    pixels[0, -1, 1, 7, 3] = value  # one value of one frame
    return pixels


def _finite_logits(world: World, output) -> None:
    assert torch.isfinite(output.logits).all()


def _padded_garbage(world: World):
    batch = world.processor(text=["a", "b"], videos=[pan(4, 32, 32), pan(2, 32, 32)])
    reference = world.model(**batch).logits
    batch["pixel_values_videos"][1, 2:] = float("nan")
    return reference, world.model(**batch).logits


def _with_layout(world: World, pixels: Callable[[torch.Tensor], torch.Tensor]):
    batch = world.processor(text="a", videos=pan(3, 32, 32), return_video_layout=True)
    batch["pixel_values_videos"] = pixels(batch["pixel_values_videos"])
    return world.model(**batch)


MODEL_CASES = [
    Case("processor-output", _forward(), check=_finite_logits),
    Case(
        "uint8-pixels",
        _forward(
            pixel_values_videos=lambda i: (i["pixel_values_videos"] * 50 + 120).clamp(0, 255).to(torch.uint8)
        ),
        "must be float normalised pixels, got dtype torch.uint8: raw frames go through the processor",
    ),
    Case(
        "int64-pixels",
        _forward(pixel_values_videos=lambda i: i["pixel_values_videos"].long()),
        "got dtype torch.int64",
    ),
    Case(
        "raw-0-255-float-pixels",
        _forward(pixel_values_videos=lambda i: (i["pixel_values_videos"] * 50 + 120).clamp(0, 255)),
        r"beyond the \+-5 of normalised pixels: they look like raw pixel values",
    ),
    Case(
        "nan-pixels",
        _forward(pixel_values_videos=lambda i: _poke(i["pixel_values_videos"], float("nan"))),
        "hold NaN or inf values",
    ),
    Case(
        "inf-pixels",
        _forward(
            pixel_values_videos=lambda i: (
                i["pixel_values_videos"].clone().index_fill_(1, torch.tensor([0]), float("inf"))
            )
        ),
        "hold NaN or inf values",
    ),
    Case(
        "numpy-pixels",
        _forward(pixel_values_videos=lambda i: i["pixel_values_videos"].numpy()),
        "must be a float tensor of normalised pixels, got ndarray",
    ),
    Case(
        "rank-4-pixels",
        _forward(pixel_values_videos=lambda i: i["pixel_values_videos"][0]),
        r"must be \[B, T, C, H, W\]",
    ),
    Case(
        "frame-mask-of-other-shape",
        _forward(video_frame_mask=torch.ones(1, 7, dtype=torch.bool)),
        "video_frame_mask .* does not match",
    ),
    Case(
        "placeholders-for-other-frames",
        _forward(
            pixel_values_videos=lambda i: i["pixel_values_videos"][:, :2],
            video_frame_mask=lambda i: i["video_frame_mask"][:, :2],
        ),
        "frame tokens per sample but the videos need",
    ),
    Case(
        "inputs-embeds",
        _forward(inputs_embeds=torch.zeros(1, 3, 48)),
        "builds its own inputs_embeds; pass input_ids",
    ),
    Case(
        "inference-mode-unknown",
        _forward(inference_mode="fast"),
        "inference_mode must be 'two_pass' or 'coarse'",
    ),
    Case(
        "labels-supervise-nothing",
        _forward(labels=lambda i: torch.full_like(i["input_ids"], -100)),
        "labels supervise no token",
    ),
    Case(
        "garbage-in-padded-frames-ignored",
        _padded_garbage,
        check=lambda w, r: torch.testing.assert_close(r[0], r[1]),
    ),
    Case(
        "uint8-with-layout", lambda w: _with_layout(w, lambda p: p.to(torch.uint8)), "got dtype torch.uint8"
    ),
    Case(
        "generate-processor-output",
        lambda w: w.model.generate(**w.inputs(), max_new_tokens=3, do_sample=False),
        check=lambda w, g: g.shape[1] == w.inputs()["input_ids"].shape[1] + 3 or pytest.fail("length"),
    ),
    Case(
        "generate-raw-pixels",
        lambda w: w.model.generate(
            **{**w.inputs(), "pixel_values_videos": w.inputs()["pixel_values_videos"] * 100}, max_new_tokens=2
        ),
        "look like raw pixel values",
    ),
    Case(
        "generate-uint8",
        lambda w: w.model.generate(
            **{**w.inputs(), "pixel_values_videos": torch.zeros(1, 3, 3, 32, 32, dtype=torch.uint8)},
            max_new_tokens=2,
        ),
        "got dtype torch.uint8",
    ),
]


# ------------------------------------------------------------------------------------------------ stream
def _stream(world: World, **options):
    return world.model.stream(**stream_prompt_inputs(world.processor, "Describe the video."), **options)


def _step(frames: Callable[[torch.Tensor], Any], **options):
    def run(world: World):
        pixels = world.inputs(2)["pixel_values_videos"]
        stream = _stream(world, **options)
        return stream.step(frames(pixels[:, 0]))

    return run


def _stream_then_caption(world: World):
    inputs = world.inputs(3)
    stream = _stream(world)
    for t in range(3):
        stream.step(inputs["pixel_values_videos"][:, t])
    generated = world.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    return stream.caption(max_new_tokens=4, do_sample=False), generated[:, inputs["input_ids"].shape[1] :]


def _fast_path_second_frame(world: World):
    """The fast path checks values on its first frame only: a later raw frame is refused by dtype only."""
    pixels = world.inputs(2)["pixel_values_videos"]
    stream = _stream(world, max_frames=4)
    stream.step(pixels[:, 0])
    return stream.step(pixels[:, 1].to(torch.uint8))


STREAM_CASES = [
    Case(
        "stream-equals-generate",
        _stream_then_caption,
        check=lambda w, r: torch.testing.assert_close(r[0], r[1]),
    ),
    Case(
        "step-uint8",
        _step(lambda p: p.to(torch.uint8)),
        "frames must be float normalised pixels, got dtype torch.uint8",
    ),
    Case("step-raw-0-255", _step(lambda p: p * 100), "look like raw pixel values"),
    Case("step-nan", _step(lambda p: p.masked_fill(p > 1, float("nan"))), "frames hold NaN or inf values"),
    Case("fast-step-uint8", _step(lambda p: p.to(torch.uint8), max_frames=4), "got dtype torch.uint8"),
    Case("fast-step-raw-first-frame", _step(lambda p: p * 100, max_frames=4), "look like raw pixel values"),
    Case("fast-step-uint8-later-frame", _fast_path_second_frame, "got dtype torch.uint8"),
    Case("step-numpy", _step(lambda p: p.numpy()), "frames must be a tensor of normalised pixels"),
    Case("step-wrong-size", _step(lambda p: p[..., :16, :16]), r"frames must be \[B=1, n, 3, 32, 32\]"),
    Case(
        "extend-raw",
        lambda w: _stream(w).extend(w.inputs(2)["pixel_values_videos"] * 100),
        "look like raw pixel values",
    ),
    Case(
        "extend-mask-of-other-shape",
        lambda w: _stream(w).extend(w.inputs(2)["pixel_values_videos"], torch.ones(1, 5)),
        "frame_mask .* does not match",
    ),
    Case(
        "extend-targets-of-other-shape",
        lambda w: _stream(w).extend(w.inputs(2)["pixel_values_videos"], targets=torch.zeros(1, 2, 3, 2, 2)),
        r"targets must be \[1, 2, 3, 4, 4\]",
    ),
    Case(
        "prompt-with-video-token",
        lambda w: stream_prompt_inputs(w.processor, f"{FRAME_TOKEN} hi"),
        r"text\[0\] holds the video token",
    ),
    Case("prompt-none", lambda w: stream_prompt_inputs(w.processor, [None]), r"text\[0\] is None"),
    Case(
        "prompt-empty-list",
        lambda w: stream_prompt_inputs(w.processor, []),
        "text is an empty list of prompts",
    ),
    Case(
        "stream-in-training-mode",
        lambda w: w.model.train() and _stream(w),
        "call model.eval\\(\\) before streaming",
    ),
    Case("max-frames-zero", lambda w: _stream(w, max_frames=0), "max_frames must be >= 1"),
]


@pytest.mark.parametrize(
    "case", PROCESSOR_WORKS + PROCESSOR_ERRORS + MODEL_CASES + STREAM_CASES, ids=lambda case: case.id
)
def test_battery(world, case):
    try:
        if case.error is None:
            result = case.run(world)
            if case.check is not None:
                case.check(world, result)
        else:
            with pytest.raises(case.exception, match=case.error):
                case.run(world)
    finally:
        world.model.eval()


# ------------------------------------------------------------------------------------------------ CLI
@dataclass
class CliCase:
    """``argv(world)`` -> exit status ``status``, stderr matching ``error`` (None: success, caption on stdout).

    ``before_work``: the failure comes before the model is loaded and before any frame is decoded.
    """

    id: str
    argv: Callable[[World], list[str]]
    status: int
    error: str | None = None
    before_work: bool = True


def _cli(*extra: str, video: str = "mp4-h264", model: str | None = None):
    def argv(world: World) -> list[str]:
        source = str(world.files[video]) if video in world.files else video.format(tmp=world.tmp)
        where = str(world.model_dir) if model is None else model.format(tmp=world.tmp, model=world.model_dir)
        return [source, "--model", where, "--device", "cpu", "--max-new-tokens", "3", *extra]

    return argv


NOT_UTF8 = os.fsdecode(b"describe \xff\xfe")  # what Python makes of a prompt given as invalid UTF-8 bytes

CLI_CASES = [
    CliCase("works-with-trained-sampling", _cli(), 0, before_work=False),
    CliCase("works-num-frames", _cli("--num-frames", "2"), 0, before_work=False),
    CliCase("works-fps-on-gif", _cli("--fps", "5", video="gif-odd"), 0, before_work=False),
    CliCase("works-empty-prompt", _cli("--prompt", ""), 0, before_work=False),
    CliCase("works-webm", _cli(video="webm-vp9"), 0, before_work=False),
    CliCase(
        "works-without-recorded-sampling",
        _cli(model="{tmp}/model-without-sampling"),
        0,
        "note: the model records no frame sampling",
        before_work=False,
    ),
    CliCase("fps-nan", _cli("--fps", "nan"), 2, "argument --fps: must be a finite number > 0, got 'nan'"),
    CliCase("fps-inf", _cli("--fps", "inf"), 2, "must be a finite number > 0"),
    CliCase("fps-zero", _cli("--fps", "0"), 2, "must be a finite number > 0"),
    CliCase("fps-negative", _cli("--fps", "-2"), 2, "must be a finite number > 0"),
    CliCase("fps-word", _cli("--fps", "fast"), 2, "expected a number, got 'fast'"),
    CliCase("num-frames-zero", _cli("--num-frames", "0"), 2, "argument --num-frames: must be >= 1"),
    CliCase("num-frames-fraction", _cli("--num-frames", "2.5"), 2, "expected a whole number"),
    CliCase("num-frames-and-fps", _cli("--num-frames", "2", "--fps", "1"), 2, "not allowed with argument"),
    CliCase(
        "max-new-tokens-zero", _cli("--max-new-tokens", "0"), 2, "argument --max-new-tokens: must be >= 1"
    ),
    CliCase("chunk-frames-zero", _cli("--chunk-frames", "0"), 2, "argument --chunk-frames: must be >= 1"),
    CliCase("temperature-without-sample", _cli("--temperature", "0.7"), 2, "apply to sampling: add --sample"),
    CliCase("temperature-zero", _cli("--sample", "--temperature", "0"), 2, "must be a finite number > 0"),
    CliCase("top-p-above-one", _cli("--sample", "--top-p", "1.5"), 2, r"must lie in \(0, 1\]"),
    CliCase(
        "device-cuda-without-cuda",
        _cli("--device", "cuda"),
        1,
        "CUDA is not available on this machine; use --device cpu",
    ),
    CliCase("device-unknown", _cli("--device", "gpu0"), 1, "is not a device: use cpu, cuda or cuda:N"),
    CliCase("device-cuda-index", _cli("--device", "cuda:7"), 1, "--device cuda:7: CUDA is not available"),
    CliCase("prompt-not-utf8", _cli("--prompt", NOT_UTF8), 1, "--prompt is not valid UTF-8 text"),
    CliCase(
        "prompt-with-frame-token",
        _cli("--prompt", f"what {FRAME_TOKEN}"),
        1,
        "--prompt holds the video token",
    ),
    CliCase(
        "model-mistyped-relative-path",
        _cli(model="./runs/demo/fnal"),
        1,
        r"--model ./runs/demo/fnal: no such directory",
    ),
    CliCase(
        "model-mistyped-absolute-path",
        _cli(model="{tmp}/nowhere/final"),
        1,
        "nowhere/final: no such directory",
    ),
    CliCase("model-mistyped-home-path", _cli(model="~/no-such-model-dir"), 1, "no such directory"),
    CliCase(
        "model-directory-without-config",
        _cli(model="{tmp}"),
        1,
        "the directory holds no config.json, so it is no saved model",
    ),
    CliCase(
        "model-is-a-file", _cli(model=str(PHOTO)), 1, "is a file: give the directory the model was saved to"
    ),
    CliCase(
        "model-hub-id-offline",
        _cli(model="someone/no-such-model"),
        1,
        r"--model someone/no-such-model \(no such local directory; as a Hub repo\) could not be loaded",
        before_work=False,
    ),
    CliCase(
        "attention-folder-missing",
        _cli("--attention", "{tmp}/missing/attention.gif"),
        1,
        r"--attention .*attention.gif: no such directory .*missing \(create it first\)",
    ),
    CliCase(
        "predictions-folder-missing",
        _cli("--predictions", "{tmp}/missing/p.png"),
        1,
        "--predictions .*: no such directory",
    ),
    CliCase(
        "attention-wrong-suffix",
        _cli("--attention", "{tmp}/attention.mp4"),
        1,
        r"written as GIF; name it \*.gif",
    ),
    CliCase(
        "predictions-is-a-directory",
        _cli("--predictions", "{tmp}/dir.png"),
        1,
        "is a directory: give a file name",
    ),
    CliCase("video-missing", _cli(video="{tmp}/absent.mp4"), 1, "video file not found"),
    CliCase("video-directory", _cli(video="{tmp}"), 1, "is a directory, not a video file"),
    CliCase("video-corrupt", _cli(video="text"), 1, "cannot decode video .*text.mp4"),
    CliCase("video-audio-only", _cli(video="audio-only"), 1, "has no video stream"),
    CliCase(
        "num-frames-above-the-clip-length",
        _cli("--num-frames", "600", video="{tmp}/long.mp4"),
        0,
        before_work=False,
    ),
]


def _arguments(world: World, case: CliCase) -> list[str]:
    argv = case.argv(world)
    return [part.format(tmp=world.tmp) if "{tmp}" in part else part for part in argv]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda case: case.id)
def test_cli_battery(world, case, capsys, monkeypatch):
    (world.tmp / "dir.png").mkdir(exist_ok=True)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here: fail at once
    work = []
    if case.before_work:
        monkeypatch.setattr(caption_video, "load_model", lambda *a, **k: work.append("load") or 1 / 0)
        monkeypatch.setattr(caption_video, "iter_video", lambda *a, **k: work.append("decode") or iter(()))
    try:
        status = caption_video.main(_arguments(world, case))
    except SystemExit as exit_:  # argparse: usage and "error: ..." on stderr
        status = exit_.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert status == case.status, captured.err
    assert not work, f"the model was loaded or frames decoded before the failure: {work}"
    if case.error is not None:
        assert re.search(case.error, captured.err), captured.err
    if status == 0:
        assert captured.out.strip(), "a caption is printed"
    else:
        assert "error: " in captured.err and captured.out == ""
        if status == caption_video.EXIT_ERROR:
            assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, "one line"


def test_cli_reads_the_frames_the_model_was_trained_with_by_default(world, capsys):
    """A 45-frame clip and a model trained on 4 frames: the CLI reads 4 frames, as the processor would."""
    assert caption_video.main([str(world.long_clip), "--model", str(world.model_dir), "--device", "cpu"]) == 0
    caption = capsys.readouterr().out.strip()
    model, processor = caption_video.load_model(str(world.model_dir), "cpu", torch.float32)
    assert processor.num_frames == TRAINED_FRAMES
    inputs = processor(text=caption_video.DEFAULT_PROMPT, videos=world.long_clip)
    assert inputs["pixel_values_videos"].shape[1] == TRAINED_FRAMES
    generated = model.generate(**inputs, max_new_tokens=caption_video.DEFAULT_MAX_NEW_TOKENS, do_sample=False)
    assert caption == processor.decode_generated(generated, inputs)[0].strip()


@pytest.mark.parametrize(("num_frames", "fps"), [(None, None), (5, None), (None, 3.0), (None, 7.0)])
def test_cli_and_processor_see_the_same_frames(world, num_frames, fps):
    """One decoding path: the CLI's chunks are the processor's frames (the CLI used to take the first frame at or
    after each tick, the processor the nearest)."""
    chunks = caption_video.decode_video(
        str(world.long_clip), world.processor, num_frames, fps, chunk_frames=4
    )
    streamed = torch.cat([chunk.pixels for chunk in chunks])
    expected = world.pixels(world.long_clip, num_frames=num_frames, fps=fps)[0]
    assert torch.equal(streamed, expected)


def test_cli_unexpected_failure_is_one_line(world, capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(caption_video, "run", broken)
    assert caption_video.main(_cli()(world)) == caption_video.EXIT_ERROR
    assert capsys.readouterr().err == "error: RuntimeError: something nobody foresaw\n"


def test_pixels_scaled_to_unit_range_but_not_normalised_warn(world):
    """[0, 1] frames never normalised cannot be refused for sure (an all-mid-grey video normalises into [0, 1]),
    so they warn; the processor's own output never does."""
    import warnings

    from layout_foveated import UnnormalisedPixelsWarning

    frames = torch.from_numpy(pan(3, 32, 32)).permute(0, 3, 1, 2).float().div(255).unsqueeze(0)
    inputs = world.inputs(3)
    with pytest.warns(
        UnnormalisedPixelsWarning, match=r"all lie in \[0, 1\].*pass the videos through the processor"
    ):
        world.model(**{**inputs, "pixel_values_videos": frames})
    stream = _stream(world)
    with pytest.warns(UnnormalisedPixelsWarning):
        stream.step(frames[:, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        world.model(**inputs)
        _stream(world).step(inputs["pixel_values_videos"][:, 0])
