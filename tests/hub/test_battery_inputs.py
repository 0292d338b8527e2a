"""A new user's first hour (issue 12), inputs: odd and bad videos, texts and sampling given to the processor.

Each case works or fails with a message naming the problem (``tests.builders``: the battery's world).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from processing_foveated import FRAME_TOKEN, VIDEO_END_TOKEN, VIDEO_START_TOKEN
from video_foveated import load_video, uniform_indices

from ..builders import CONTAINERS, Case, World, pan, run_case


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


def same(expected: Callable[[World], torch.Tensor]) -> Callable[[World, torch.Tensor], None]:
    def check(world: World, got: torch.Tensor) -> None:
        torch.testing.assert_close(got, expected(world))

    return check


def frames_are(count: int) -> Callable[[World, Any], None]:
    def check(world: World, got) -> None:
        pixels = got["pixel_values_videos"] if isinstance(got, dict) or hasattr(got, "keys") else got
        assert pixels.shape[1] == count, pixels.shape

    return check


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


def _text_mode(world: World, name: str):
    with open(world.files[name]) as handle:  # noqa: PLW1514 (text mode is the point)
        return world.pixels(handle)


LONE_SURROGATE = "describe \udcff"  # what Python makes of undecodable bytes (errors="surrogateescape")


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
    processor.video_processor = copy.copy(
        world.processor.video_processor
    )  # sampling is the video processor's
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
    # an argument of the wrong kind: one sentence naming the argument and the fix (issue 22)
    Case(
        "file-opened-in-text-mode",
        lambda w: _text_mode(w, "mp4-h264"),
        r"the video file object .*mp4-h264.mp4 is open in text mode: open it in binary mode \(open\(path, 'rb'\)\)",
    ),
    Case(
        "text-stream",
        lambda w: w.pixels(io.StringIO("not a video")),
        r"the video file object <file object> is open in text mode",
    ),
    Case(
        "text-mode-file-to-load-video",
        lambda w: load_video(io.StringIO("not a video")),
        "is open in text mode: open it in binary mode",
    ),
    Case(
        "prompt-lone-surrogate",
        lambda w: w.processor(text=LONE_SURROGATE, videos=V),
        r"text\[0\] is not valid Unicode text \(a lone surrogate at character 9.*decode the bytes as UTF-8",
    ),
    Case(
        "caption-lone-surrogate",
        lambda w: w.processor(text="a", videos=V, captions=["\ud800"]),
        r"captions\[0\] is not valid Unicode text",
    ),
    Case(
        "preprocess-frames-channels-first",
        lambda w: w.processor.video_processor.preprocess_frames(torch.rand(2, 3, 16, 16)),
        r"frames must be \[T, H, W, 3\] RGB, got shape \(2, 3, 16, 16\): convert other videos",
    ),
    Case(
        "max-frames-zero",
        lambda w: w.processor(text="a", videos=V, max_frames=0),
        r"max_frames must be an integer >= 1 \(or None for no cap\)",
    ),
    Case(
        "processor-trained-frames-invalid",
        lambda w: type(w.processor.video_processor)(image_size=32, trained_frames=0),
        "trained_frames must be an integer >= 1",
    ),
    Case(
        "processor-long-video-factor-invalid",
        lambda w: type(w.processor.video_processor)(image_size=32, long_video_factor=0.5),
        "long_video_factor must be a finite number >= 1",
    ),
    Case(
        "processor-sampling-invalid",
        lambda w: type(w.processor.video_processor)(image_size=32, num_frames=0),
        "num_frames must be an integer >= 1",
    ),
]


@pytest.mark.parametrize("case", PROCESSOR_WORKS + PROCESSOR_ERRORS, ids=lambda case: case.id)
def test_processor_battery(world, case):
    run_case(world, case)
