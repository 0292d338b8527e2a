"""Video input of the foveated VLM: decoding (PyAV), frame sampling and the conversion of arrays and frames.

The one owner of these steps: the processor, ``caption_video.py`` and the folder data sets
(``foveated_vlm.data.video_folder``) all decode and sample through :func:`iter_video` / :func:`video_to_frames`.

What a video may be (one video; a batch is a list of them, or a ``[B, T, H, W, C]`` array):

* an array or tensor ``[T, H, W, C]``: ``C`` = 3 (RGB), 1 (grayscale, repeated to RGB) or 4 (RGBA, alpha dropped
  as PIL's ``convert("RGB")`` does); ``[T, H, W]`` grayscale; ``[H, W, C]`` or ``[H, W]`` a single image, read as
  a one-frame video. A rank-3 array whose first axis is 3 or 4 and last is not is refused as ambiguous
  (a channels-first image or a 3-frame grayscale video?). Negative strides (``frames[..., ::-1]``, the usual BGR
  to RGB step, or ``frames[::-1]``) and other non-contiguous arrays are copied. uint8 is divided by 255; float
  (any precision) must lie in [0, 1]; other integer types, NaN and inf are refused with the fix;
* a list of frames: PIL images (any mode, converted to RGB) or arrays ``[H, W, C]`` / ``[H, W]`` as above;
  frames may differ in size (each is resized and centre-cropped on its own);
* an encoded video decoded with PyAV: a file path, the file's bytes or a binary file object (one opened in text
  mode is refused with the fix). PyAV is optional:
  it is imported only when an encoded video is given (inside a ``try`` block, so that transformers' import check
  of the Hub files does not require it), and without it decoding says how to install it or what to pass instead.

Frames are resized (shorter side) and centre-cropped to a square (:func:`resize_frames`). ``num_frames`` samples
every kind of video uniformly (:func:`sample_frame_indices`); ``fps`` needs timestamps, so it applies to encoded
videos only; ``max_frames`` caps the count after either (:func:`video_to_frames`). A model's processor warns
when a video is read far past its trained length (:func:`long_video_message`). :func:`iter_video` is the one
decoding path: :func:`load_video`, the processor and
``caption_video.py`` all sample the same frames.
"""

from __future__ import annotations

import io
import math
import numbers
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F


def is_encoded_video(video) -> bool:
    """True for a video still to decode: a file path, encoded bytes or a binary file object (has ``read``)."""
    return isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(video, "read")


def _video_name(source) -> str:
    """How errors name an encoded video: its path, its file object's name, or its size in bytes."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of video>"
    return str(getattr(source, "name", "<file object>"))


def _import_av():
    """PyAV, imported only to decode encoded videos; a clear ImportError without it."""
    try:  # inside try: transformers' check of the Hub files' imports skips it (PyAV is optional)
        import av
    except ImportError as error:
        raise ImportError(
            "decoding a video file, bytes or file object needs PyAV, which is not installed: `pip install av`, "
            "or decode the video yourself and pass its frames ([T, H, W, 3] uint8 or a list of PIL images)"
        ) from error
    return av


def _is_count(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= 1


def check_sampling(num_frames, fps, max_frames=None) -> None:
    """ValueError unless ``num_frames`` and ``max_frames`` are None or ints >= 1, ``fps`` None or finite and
    > 0, and not both ``num_frames`` and ``fps`` are given."""
    if num_frames is not None and fps is not None:
        raise ValueError("give num_frames or fps, not both")
    if num_frames is not None and not _is_count(num_frames):
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    if max_frames is not None and not _is_count(max_frames):
        raise ValueError(f"max_frames must be an integer >= 1 (or None for no cap), got {max_frames!r}")
    if fps is not None and (
        isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0
    ):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")


def check_binary_file(source) -> None:
    """ValueError for a file object opened in text mode (it reads ``str``, not the video's bytes)."""
    mode = getattr(source, "mode", None)
    if isinstance(source, io.TextIOBase) or (isinstance(mode, str) and "b" not in mode):
        raise ValueError(
            f"the video file object {_video_name(source)} is open in text mode: open it in binary mode "
            "(open(path, 'rb')) or pass its path"
        )


def _reopenable(source):
    """``(source, origin)``: the source in a form that can be decoded more than once, and where a seekable file
    object starts (it is rewound there before each pass; one that cannot seek is read into memory)."""
    check_binary_file(source)
    if isinstance(source, (bytearray, memoryview)):
        return bytes(source), None
    if not hasattr(source, "read"):
        return source, None
    seekable = getattr(source, "seekable", None)
    if seekable is not None and seekable():
        return source, source.tell()
    return source.read(), None


@contextmanager
def open_video(source):
    """``(container, first video stream)`` of an encoded video; ValueError if it is missing or undecodable.

    Errors of FFmpeg while the caller decodes inside the ``with`` block become ValueErrors that name the video.
    """
    if not is_encoded_video(source):
        raise ValueError(
            f"an encoded video is a path, bytes or a binary file object, got {type(source).__name__}"
        )
    name = _video_name(source)
    check_binary_file(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if "://" in str(path):
            raise ValueError(f"{name}: URLs are not fetched, download the video and pass its path")
        if os.path.isdir(path):
            raise ValueError(f"{name} is a directory, not a video file")
        if not os.path.isfile(path):
            raise ValueError(f"video file not found: {name}")
        source = path
    av = _import_av()
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        container = av.open(source)
    except av.error.FFmpegError as error:
        raise ValueError(f"cannot decode video {name}: {error}") from error
    with container:
        if not container.streams.video:
            raise ValueError(f"{name} has no video stream")
        try:
            yield container, container.streams.video[0]
        except av.error.FFmpegError as error:
            raise ValueError(f"cannot decode video {name}: {error}") from error


def _decode(source, origin: int | None = None) -> Iterator:
    """Every decoded frame of the first video stream with its time in seconds (None if unknown)."""
    if origin is not None:
        source.seek(origin)
    with open_video(source) as (container, stream):
        rate = stream.average_rate
        for index, frame in enumerate(container.decode(stream)):
            time = float(frame.time) if frame.time is not None else (index / float(rate) if rate else None)
            yield frame, time


TICK_TOLERANCE = 1e-6
"""Seconds: a tick this far after the last frame's time still takes that frame."""


class FrameSampler:
    """The frame selection of :func:`sample_frame_indices`, fed one timestamp at a time (a streaming decoder).

    ``push(time)`` returns the indices of the frames (this one or the one before) that are now chosen,
    ``finish()`` those chosen after the last frame. With ``fps``, each tick ``t0 + k / fps`` (``t0`` the first
    frame's time, ticks up to the last frame's time) takes the frame nearest to it, the earlier one on a tie
    (the earlier of two frames takes the ticks up to their midpoint); each frame is kept once. Without ``fps``
    every frame is kept. Timestamps come in decode order and must not decrease.
    """

    def __init__(self, fps: float | None = None):
        self.fps = fps
        self.count = 0  # frames pushed
        self._ticks = 0  # ticks resolved
        self._start: float | None = None
        self._before: tuple[int, float] | None = None  # first frame of the latest time, before the next tick
        self._last_emitted = -1

    @property
    def candidate(self) -> int | None:
        """The only earlier frame a later tick may still choose (None without ``fps``)."""
        return None if self._before is None else self._before[0]

    def _tick(self, k: int) -> float:
        return self._start + k / self.fps

    def _last_tick(self, limit: float) -> int:
        """The largest ``k >= resolved`` whose tick is ``<= limit`` (``resolved - 1`` if none)."""
        k = max(self._ticks - 1, math.floor((limit - self._start) * self.fps))
        while self._tick(k + 1) <= limit:
            k += 1
        while k >= self._ticks and self._tick(k) > limit:
            k -= 1
        return k

    def _emit(self, index: int, chosen: list[int]) -> None:
        if index != self._last_emitted:
            chosen.append(index)
            self._last_emitted = index

    def push(self, time: float | None) -> list[int]:
        index, chosen = self.count, []
        self.count += 1
        if self.fps is None:
            return [index]
        if time is None or not math.isfinite(time):
            raise ValueError(
                "the video's frames carry no timestamps: sample it with num_frames instead of fps"
            )
        if self._start is None:
            self._start = time
        if self._before is not None and time < self._before[1]:
            raise ValueError(
                "the video's frame timestamps go backwards: sample it with num_frames instead of fps"
            )
        if self._before is not None:  # ticks up to the midpoint of the previous frame and this one
            last = self._last_tick((self._before[1] + time) / 2)
            if last >= self._ticks:
                self._emit(self._before[0], chosen)
                self._ticks = last + 1
        last = self._last_tick(time)  # the rest, up to this frame's time
        if last >= self._ticks:
            self._emit(index, chosen)
            self._ticks = last + 1
        if self._before is None or time > self._before[1]:
            self._before = (index, time)
        return chosen

    def finish(self) -> list[int]:
        """Indices chosen by the ticks just after the last frame's time (within ``TICK_TOLERANCE``)."""
        chosen: list[int] = []
        if self.fps is not None and self._before is not None:
            if self._last_tick(self._before[1] + TICK_TOLERANCE) >= self._ticks:
                self._emit(self._before[0], chosen)
        return chosen


def sample_frame_indices(times, num_frames: int | None, fps: float | None) -> list[int]:
    """Indices of the frames to keep, given each frame's time in seconds ``[F]`` (decode order).

    ``num_frames``: that many frames spread uniformly over all of them (``linspace``, rounded; every frame if
    there are fewer). ``fps``: the frame nearest to each tick ``t0 + k / fps`` (:class:`FrameSampler`).
    Neither: every frame.
    """
    check_sampling(num_frames, fps)
    count = len(times)
    if num_frames is not None:
        return uniform_indices(count, num_frames)
    sampler = FrameSampler(fps)
    chosen = [index for time in times for index in sampler.push(float(time))]
    return chosen + sampler.finish()


def uniform_indices(count: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over ``count`` frames (all of them if there are fewer)."""
    if count == 0:
        return []
    return np.linspace(0, count - 1, min(num_frames, count)).round().astype(int).tolist()


def iter_video(
    source: str | os.PathLike | bytes | BinaryIO, num_frames: int | None = None, fps: float | None = None
) -> Iterator[np.ndarray]:
    """Decode an encoded video and yield its sampled frames one at a time, ``[H, W, 3]`` uint8 RGB.

    The one decoding path of the project (:func:`load_video`, the processor and ``caption_video.py``): frames are
    chosen by :func:`sample_frame_indices`' rule and converted to RGB only when kept. ``fps`` (or every frame)
    decodes once, streaming; ``num_frames`` needs the frame count first, so it decodes twice (the first pass
    only counts). Memory holds one frame at a time.

    Raises:
        ValueError: for a missing, undecodable or empty video (the message names it) or bad sampling arguments.
        ImportError: if PyAV is not installed (the message says what to do).
    """
    check_sampling(num_frames, fps)
    name = _video_name(source)
    source, origin = _reopenable(source)
    kept = 0
    if num_frames is not None:
        wanted = uniform_indices(sum(1 for _ in _decode(source, origin)), num_frames)
        for index, (frame, _) in enumerate(_decode(source, origin)):
            if kept < len(wanted) and index == wanted[kept]:
                kept += 1
                yield frame.to_ndarray(format="rgb24")
            if kept == len(wanted):
                break
    else:
        sampler = FrameSampler(fps)
        held: dict = {}  # the frames a later tick may still choose: the sampler's candidate
        for frame, time in _decode(source, origin):
            held[sampler.count] = frame
            for index in sampler.push(time):
                kept += 1
                yield held[index].to_ndarray(format="rgb24")
            held = {index: held[index] for index in held if index == sampler.candidate}
        for index in sampler.finish():
            kept += 1
            yield held[index].to_ndarray(format="rgb24")
    if not kept:
        raise ValueError(f"video {name} holds no decodable frame")


def load_video(
    source: str | os.PathLike | bytes | BinaryIO,
    num_frames: int | None = None,
    fps: float | None = None,
    image_size: int | None = None,
) -> np.ndarray:
    """Decode a video (file path, encoded bytes or binary file object) with PyAV into ``[T, H, W, 3]`` uint8.

    Args:
        num_frames: sample this many frames uniformly over the whole video.
        fps: sample at this rate (the frames nearest to ``t0 + k / fps`` seconds). Exclusive with ``num_frames``.
            With neither, every frame is returned. The frames are :func:`iter_video`'s.
        image_size: resize (shorter side) and centre-crop the frames to ``[T, S, S, 3]`` (:func:`resize_frames`,
            rounded back to uint8); None keeps them as decoded.
    """
    if not is_encoded_video(source):
        raise ValueError(
            f"load_video takes a path, bytes or a binary file object, got {type(source).__name__}"
        )
    frames = np.stack(list(iter_video(source, num_frames=num_frames, fps=fps)))  # [T, H, W, 3]
    if image_size is None:
        return frames
    resized = resize_frames(_to_unit_range(torch.from_numpy(frames)), image_size)  # [T, 3, S, S]
    return to_uint8(resized.permute(0, 2, 3, 1)).numpy()  # [T, S, S, 3]


def video_duration(path: str) -> tuple[float | None, int | None]:
    """Duration in seconds and frame count of ``path``'s first video stream from its metadata (None if unknown).

    Raises ValueError for a missing or undecodable file (:func:`open_video`).
    """
    with open_video(path) as (container, stream):
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base), stream.frames or None
        duration = None if container.duration is None else container.duration / 1_000_000  # AV_TIME_BASE
        return duration, stream.frames or None


def sampled_frame_count(
    duration: float | None, count: int | None, num_frames: int | None, fps: float | None
) -> int | None:
    """Frames that sampling a video of ``duration`` seconds (``count`` frames) gives, if known (None if not).

    ``fps`` sampling takes one frame per tick ``t0 + k / fps`` up to the last frame's time (:class:`FrameSampler`).
    """
    if num_frames is not None:
        return num_frames if count is None else min(num_frames, count)
    if fps is None:
        return count
    return None if duration is None else math.floor(duration * fps) + 1


# ------------------------------------------------------------------------------------------------- length
class LongVideoWarning(UserWarning):
    """A video read with far more frames than the model was trained on (it captions such videos poorly)."""


def long_video_message(count: int, trained_frames: int | None, factor: float | None) -> str | None:
    """What to tell a caller who reads ``count`` frames with a model trained on ``trained_frames``-frame clips:
    None unless ``count > factor * trained_frames`` (None for either disables the check)."""
    if trained_frames is None or factor is None or count <= factor * trained_frames:
        return None
    return (
        f"the video is read as {count} frames, more than {factor:g}x the {trained_frames} frames of the clips the "
        f"model was trained on: such long reads give degenerate captions (repeated or dropped words); subsample "
        f"it with num_frames={trained_frames} or a lower fps (--num-frames / --fps on the command line), or cap "
        "it with the processor's max_frames=N"
    )


def check_long_video_factor(factor) -> None:
    """ValueError unless ``factor`` is None (no warning) or a finite number >= 1."""
    if factor is not None and (
        isinstance(factor, bool)
        or not isinstance(factor, numbers.Real)
        or not math.isfinite(factor)
        or factor < 1
    ):
        raise ValueError(
            f"long_video_factor must be a finite number >= 1 (or None for no warning), got {factor!r}"
        )


# ------------------------------------------------------------------------------------------------- arrays
UINT8_MAX = 255
IMAGE_CHANNELS = (1, 3, 4)
"""Channel counts of a frame: grayscale, RGB, RGBA (alpha dropped)."""


def _is_pil(value) -> bool:
    return hasattr(value, "convert") and hasattr(value, "size") and hasattr(value, "mode")


def is_array(value) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))


def is_frame(value) -> bool:
    """One image: a PIL image, or an array ``[H, W]`` / ``[H, W, C]`` with C in (1, 3, 4)."""
    if _is_pil(value):
        return True
    if not is_array(value):
        return False
    return value.ndim == 2 or (value.ndim == 3 and value.shape[-1] in IMAGE_CHANNELS)


def _as_tensor(array) -> torch.Tensor:
    """A numpy array or tensor as a tensor (negative strides and other layouts copied as needed)."""
    if isinstance(array, torch.Tensor):
        return array
    array = np.asarray(array)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"video arrays must hold numbers, got dtype {array.dtype}")
    if (
        any(stride < 0 for stride in array.strides)
        or not array.flags.c_contiguous
        or not array.flags.writeable
    ):
        array = np.array(array, order="C")  # torch takes neither negative strides nor read-only memory
    return torch.from_numpy(array)


def _to_unit_range(tensor: torch.Tensor) -> torch.Tensor:
    """uint8 or float pixels ``[..., 3]`` -> float32 in [0, 1]; ValueError (saying the fix) for anything else."""
    if tensor.dtype == torch.uint8:
        return tensor.float() / UINT8_MAX
    if tensor.dtype == torch.bool or not tensor.is_floating_point():
        raise ValueError(
            f"video pixels must be uint8 (0-255) or float in [0, 1], got dtype {tensor.dtype}: convert them, e.g. "
            "frames.astype(np.uint8) for 0-255 values or frames / 65535.0 for 16-bit ones"
        )
    values = tensor.float()
    if not torch.isfinite(values).all():
        raise ValueError("video holds NaN or inf pixel values: replace them (e.g. np.nan_to_num) first")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        hint = " (they look like 0-255 values: divide by 255)" if high > 1 and low >= 0 else ""
        raise ValueError(f"float video pixels must lie in [0, 1], got [{low:g}, {high:g}]{hint}")
    return values


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] (any shape) -> uint8 0-255, rounded to the nearest value."""
    return (pixels * UINT8_MAX).round().to(torch.uint8)


def _to_rgb(tensor: torch.Tensor) -> torch.Tensor:
    """``[..., C]`` with C in (1, 3, 4) -> ``[..., 3]``: grayscale repeated, alpha dropped."""
    channels = tensor.shape[-1]
    if channels == 1:
        return tensor.expand(*tensor.shape[:-1], 3)
    if channels == 4:
        return tensor[..., :3]
    return tensor


def _frame_tensor(frame) -> torch.Tensor:
    """One frame (PIL image or ``[H, W(, C)]`` array) -> ``[1, H, W, 3]`` float in [0, 1]."""
    if _is_pil(frame):
        tensor = torch.from_numpy(np.array(frame.convert("RGB")))
    else:
        tensor = _as_tensor(frame)
        if tensor.dim() == 2:
            tensor = tensor.unsqueeze(-1)
        if tensor.dim() != 3 or tensor.shape[-1] not in IMAGE_CHANNELS:
            raise ValueError(
                f"a frame must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {tuple(tensor.shape)}"
            )
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"a frame is empty, shape {tuple(tensor.shape)}")
    return _to_unit_range(_to_rgb(tensor)).unsqueeze(0)


def _array_video(video) -> torch.Tensor:
    """An array video (see the module docstring) -> ``[T, H, W, 3]`` float in [0, 1]."""
    tensor = _as_tensor(video)
    shape = tuple(tensor.shape)
    if tensor.dim() == 3:
        if shape[0] in (3, 4) and shape[-1] not in IMAGE_CHANNELS:
            raise ValueError(
                f"a rank-3 video array {shape} is ambiguous: pass [H, W, 3] for one image (permute(1, 2, 0) "
                "a channels-first one) or [T, H, W, 1] for a grayscale video"
            )
        tensor = tensor.unsqueeze(-1)  # [T, H, W] grayscale
    if tensor.dim() != 4:
        raise ValueError(
            f"a video must be [T, H, W, C] (or [T, H, W] grayscale, [H, W, C] one image), got shape {shape}"
        )
    if tensor.shape[-1] not in IMAGE_CHANNELS:
        hint = (
            " (channels first? use [T, H, W, 3]: permute(0, 2, 3, 1))" if shape[1] in IMAGE_CHANNELS else ""
        )
        raise ValueError(
            f"a video must have 3 channels last [T, H, W, 3] (or 1 grayscale, 4 RGBA), got shape {shape}{hint}"
        )
    if shape[0] == 0:
        raise ValueError("video has zero frames")
    if shape[1] == 0 or shape[2] == 0:
        raise ValueError(f"video frames are empty, shape {shape}")
    return _to_unit_range(_to_rgb(tensor))


def video_to_frames(
    video, num_frames: int | None = None, fps: float | None = None, max_frames: int | None = None
) -> list[torch.Tensor]:
    """Any one video (see the module docstring) -> runs of equally sized frames ``[n, H, W, 3]`` float in [0, 1].

    One run unless the frames of a list differ in size. ``num_frames`` samples every kind of video uniformly;
    ``fps`` applies to encoded videos only (arrays and frames carry no timestamps). ``max_frames`` caps the
    count after either: a video that would give more frames gives ``max_frames`` of them, spread uniformly.
    """
    check_sampling(num_frames, fps, max_frames)
    if max_frames is not None and fps is None:  # uniform sampling is already a cap: sample at most max_frames
        num_frames = max_frames if num_frames is None else min(num_frames, max_frames)
    if is_encoded_video(video):
        frames = load_video(video, num_frames=num_frames, fps=fps)  # [T, H, W, 3]
        if max_frames is not None:
            frames = frames[uniform_indices(len(frames), max_frames)]
        return [_array_video(frames)]
    if fps is not None:
        raise ValueError(
            "fps sampling needs timestamps, which arrays and lists of frames do not carry: pass num_frames=..., "
            "or subsample the frames yourself (e.g. frames[::step])"
        )
    if is_frame(video):
        video = [video]
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError("video is an empty list of frames")
        bad = next((i for i, frame in enumerate(video) if not is_frame(frame)), None)
        if bad is not None:
            raise ValueError(
                f"frame {bad} of the video is a {describe_input(video[bad])}: a list of frames holds PIL images or "
                "arrays [H, W] / [H, W, C] (a batch of videos is a list of videos, each [T, H, W, C] or a path)"
            )
        if num_frames is not None:
            video = [video[i] for i in uniform_indices(len(video), num_frames)]
        runs: list[torch.Tensor] = []
        for frame in map(_frame_tensor, video):
            if runs and runs[-1].shape[1:] == frame.shape[1:]:
                runs[-1] = torch.cat([runs[-1], frame])
            else:
                runs.append(frame)
        return runs
    if not is_array(video):
        raise ValueError(
            f"a video must be an array, a list of frames, a path, bytes or a file, got {describe_input(video)}"
        )
    frames = _array_video(video)
    if num_frames is not None:
        frames = frames[uniform_indices(frames.shape[0], num_frames)]
    return [frames]


def video_to_array(
    video, num_frames: int | None = None, fps: float | None = None, max_frames: int | None = None
) -> torch.Tensor:
    """Any one video -> ``[T, H, W, 3]`` float tensor in [0, 1], validated (frames must share one size)."""
    runs = video_to_frames(video, num_frames=num_frames, fps=fps, max_frames=max_frames)
    if len(runs) > 1:
        sizes = sorted({tuple(run.shape[1:3]) for run in runs})
        raise ValueError(
            f"the frames differ in size {sizes}: the processor resizes each frame on its own; here, resize them "
            "to one size first"
        )
    return runs[0]


def describe_input(value) -> str:
    if is_array(value):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    return type(value).__name__


def as_videos(videos) -> list:
    """One video -> ``[video]``; a batch (list of videos, ``[B, T, H, W, C]`` array) -> its videos."""
    if is_encoded_video(videos) or is_frame(videos):
        return [videos]
    if is_array(videos):
        if videos.ndim == 5:
            return list(videos)
        return [videos]
    if isinstance(videos, (list, tuple)):
        if not videos:
            raise ValueError("videos is an empty list")
        frames = [is_frame(video) for video in videos]
        if all(frames):
            return [videos]  # a list of frames is one video
        if any(frames):
            index = frames.index(True)
            raise ValueError(
                f"videos mixes frames (entry {index} is one image) with whole videos: give one video as a list "
                "of frames, or a batch as a list of videos (each [T, H, W, C], a list of frames or a path)"
            )
        return list(videos)
    raise ValueError(
        f"videos must be a video or a list of videos (arrays, lists of frames, paths, bytes or files), got "
        f"{describe_input(videos)}"
    )


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``[T, H, W, 3]`` in [0, 1] -> ``[T, 3, size, size]``: shorter side to ``size`` (antialiased), centre crop."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be [T, H, W, 3] RGB, got shape {tuple(frames.shape)}: convert other videos with "
            "video_foveated.video_to_array (or pass them to the processor, which converts every kind)"
        )
    frames = frames.permute(0, 3, 1, 2)
    height, width = frames.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        frames = F.interpolate(
            frames, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return frames[..., top : top + size, left : left + size].clamp(0, 1)


__all__ = [
    "FrameSampler",
    "LongVideoWarning",
    "as_videos",
    "check_binary_file",
    "check_long_video_factor",
    "check_sampling",
    "describe_input",
    "is_array",
    "is_encoded_video",
    "is_frame",
    "iter_video",
    "load_video",
    "long_video_message",
    "open_video",
    "resize_frames",
    "sample_frame_indices",
    "sampled_frame_count",
    "to_uint8",
    "uniform_indices",
    "video_duration",
    "video_to_array",
    "video_to_frames",
]
