"""Processor of the foveated video-language model: chat-formatted text with one placeholder per frame, frames
resized and normalised without torchvision, and next-frame prediction targets.

What a video may be (one video; a batch is a list of them, or a ``[B, T, H, W, C]`` array):

* an array or tensor ``[T, H, W, C]``: ``C`` = 3 (RGB), 1 (grayscale, repeated to RGB) or 4 (RGBA, alpha dropped
  as PIL's ``convert("RGB")`` does); ``[T, H, W]`` grayscale; ``[H, W, C]`` or ``[H, W]`` a single image, read as
  a one-frame video. A rank-3 array whose first axis is 3 or 4 and last is not is refused as ambiguous
  (a channels-first image or a 3-frame grayscale video?). Negative strides (``frames[..., ::-1]``, the usual BGR
  to RGB step, or ``frames[::-1]``) and other non-contiguous arrays are copied. uint8 is divided by 255; float
  (any precision) must lie in [0, 1]; other integer types, NaN and inf are refused with the fix;
* a list of frames: PIL images (any mode, converted to RGB) or arrays ``[H, W, C]`` / ``[H, W]`` as above;
  frames may differ in size (each is resized and centre-cropped on its own);
* an encoded video decoded with PyAV: a file path, the file's bytes or a binary file object. PyAV is optional:
  it is imported only when an encoded video is given (inside a ``try`` block, so that transformers' import check
  of the Hub files does not require it), and without it decoding says how to install it or what to pass instead.

Frames are resized (shorter side) and centre-cropped to ``image_size``. ``num_frames`` samples every kind of
video uniformly (:func:`sample_frame_indices`); ``fps`` needs timestamps, so it applies to encoded videos only.
The processor's own ``num_frames``/``fps`` (saved with it; the trainer records the sampling it trained with)
are the default for encoded videos. :func:`iter_video` is the one decoding path: :func:`load_video`, the
processor and ``caption_video.py`` all sample the same frames.
"""

from __future__ import annotations

import io
import math
import numbers
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature, PreTrainedConfig
from transformers.processing_utils import ProcessorMixin

try:
    from .layout_foveated import IGNORE_INDEX, VideoLayout
except ImportError:  # imported as a top-level module from a checkout of the repository
    from layout_foveated import IGNORE_INDEX, VideoLayout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FRAME_TOKEN = "<|frame|>"
VIDEO_START_TOKEN = "<|video_start|>"
VIDEO_END_TOKEN = "<|video_end|>"
VIDEO_TOKENS = (FRAME_TOKEN, VIDEO_START_TOKEN, VIDEO_END_TOKEN)
END_OF_TURN = "<|im_end|>"
PROCESSOR_TARGET_SOURCES = ("downsampled_frames", "motion")
MOTION_ZERO_PREFERENCE = 1e-3
"""Matching cost added per pixel of displacement: ties (flat regions) resolve to no motion."""
# SmolLM2-Instruct's ChatML template (used when the tokenizer carries none); its default system prompt names it.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def add_video_tokens(tokenizer) -> dict[str, int]:
    """Add the frame, video-start and video-end tokens to ``tokenizer`` (idempotent); returns their ids."""
    missing = [token for token in VIDEO_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    return {token: tokenizer.convert_tokens_to_ids(token) for token in VIDEO_TOKENS}


def check_prompt_text(texts: Sequence, name: str, allow_none: bool = False) -> None:
    """ValueError unless every entry of ``texts`` is a string free of the video tokens (None allowed if asked).

    The processor writes the video block itself; a ``<|frame|>`` typed into a prompt or caption would become a
    frame slot with no frame (or a second video start), so it is refused here rather than read as garbage.
    """
    for index, entry in enumerate(texts):
        if entry is None and allow_none:
            continue
        if not isinstance(entry, str):
            what = "None" if entry is None else f"a {type(entry).__name__}"
            fix = " ('' for no prompt)" if name == "text" else " (or None for a video without one)"
            raise ValueError(f"{name}[{index}] is {what}: give one string per video{fix}")
        for token in VIDEO_TOKENS:
            if token in entry:
                raise ValueError(
                    f"{name}[{index}] holds the video token {token!r}: the processor writes the video block "
                    "itself (frames come from videos=...); remove it from the text"
                )


def is_encoded_video(video) -> bool:
    """True for a video still to decode: a file path, encoded bytes or a binary file object (has ``read``)."""
    return isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(video, "read")


def _video_name(source) -> str:
    """How errors name an encoded video: its path, its file object's name, or its size in bytes."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of video>"
    return str(getattr(source, "name", "<binary file object>"))


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


def check_sampling(num_frames, fps) -> None:
    """ValueError unless ``num_frames`` is None or an int >= 1, ``fps`` None or finite and > 0, not both."""
    if num_frames is not None and fps is not None:
        raise ValueError("give num_frames or fps, not both")
    if num_frames is not None and (
        isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral) or num_frames < 1
    ):
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    if fps is not None and (
        isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0
    ):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")


def _reopenable(source):
    """``(source, origin)``: the source in a form that can be decoded more than once, and where a seekable file
    object starts (it is rewound there before each pass; one that cannot seek is read into memory)."""
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
    source: str | os.PathLike | bytes | BinaryIO, num_frames: int | None = None, fps: float | None = None
) -> np.ndarray:
    """Decode a video (file path, encoded bytes or binary file object) with PyAV into ``[T, H, W, 3]`` uint8.

    Args:
        num_frames: sample this many frames uniformly over the whole video.
        fps: sample at this rate (the frames nearest to ``t0 + k / fps`` seconds). Exclusive with ``num_frames``.
        With neither, every frame is returned. The frames are :func:`iter_video`'s.
    """
    if not is_encoded_video(source):
        raise ValueError(
            f"load_video takes a path, bytes or a binary file object, got {type(source).__name__}"
        )
    return np.stack(list(iter_video(source, num_frames=num_frames, fps=fps)))


# ------------------------------------------------------------------------------------------------- arrays
IMAGE_CHANNELS = (1, 3, 4)
"""Channel counts of a frame: grayscale, RGB, RGBA (alpha dropped)."""


def _is_pil(value) -> bool:
    return hasattr(value, "convert") and hasattr(value, "size") and hasattr(value, "mode")


def _is_array(value) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))


def _is_frame(value) -> bool:
    """One image: a PIL image, or an array ``[H, W]`` / ``[H, W, C]`` with C in (1, 3, 4)."""
    if _is_pil(value):
        return True
    if not _is_array(value):
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
        return tensor.float() / 255.0
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


def video_to_frames(video, num_frames: int | None = None, fps: float | None = None) -> list[torch.Tensor]:
    """Any one video (see the module docstring) -> runs of equally sized frames ``[n, H, W, 3]`` float in [0, 1].

    One run unless the frames of a list differ in size. ``num_frames`` samples every kind of video uniformly;
    ``fps`` applies to encoded videos only (arrays and frames carry no timestamps).
    """
    check_sampling(num_frames, fps)
    if is_encoded_video(video):
        return [_array_video(load_video(video, num_frames=num_frames, fps=fps))]
    if fps is not None:
        raise ValueError(
            "fps sampling needs timestamps, which arrays and lists of frames do not carry: pass num_frames=..., "
            "or subsample the frames yourself (e.g. frames[::step])"
        )
    if _is_frame(video):
        video = [video]
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError("video is an empty list of frames")
        bad = next((i for i, frame in enumerate(video) if not _is_frame(frame)), None)
        if bad is not None:
            raise ValueError(
                f"frame {bad} of the video is a {_describe(video[bad])}: a list of frames holds PIL images or "
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
    if not _is_array(video):
        raise ValueError(
            f"a video must be an array, a list of frames, a path, bytes or a file, got {_describe(video)}"
        )
    frames = _array_video(video)
    if num_frames is not None:
        frames = frames[uniform_indices(frames.shape[0], num_frames)]
    return [frames]


def video_to_array(video, num_frames: int | None = None, fps: float | None = None) -> torch.Tensor:
    """Any one video -> ``[T, H, W, 3]`` float tensor in [0, 1], validated (frames must share one size)."""
    runs = video_to_frames(video, num_frames=num_frames, fps=fps)
    if len(runs) > 1:
        sizes = sorted({tuple(run.shape[1:3]) for run in runs})
        raise ValueError(
            f"the frames differ in size {sizes}: the processor resizes each frame on its own; here, resize them "
            "to one size first"
        )
    return runs[0]


def _describe(value) -> str:
    if _is_array(value):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    return type(value).__name__


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``[T, H, W, 3]`` in [0, 1] -> ``[T, 3, size, size]``: shorter side to ``size`` (antialiased), centre crop."""
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


class FoveatedVLMProcessor(ProcessorMixin):
    """Tokenizer + frame preprocessing + prediction targets for :class:`FoveatedVLMForConditionalGeneration`.

    Args:
        tokenizer: SmolLM2's tokenizer; the video tokens are added if missing.
        image_size: side of the square frames the encoder reads.
        image_mean, image_std: per-channel normalisation (DINOv3 uses ImageNet's).
        target_downsample: factor between frames and their downsampled-frame targets (8, like the SD-VAE).
        target_source: what ``return_targets`` computes without a VAE: ``"downsampled_frames"`` or ``"motion"``
            (block-matched displacement from the previous frame, :func:`block_motion`).
        motion_search_radius: largest displacement in pixels, per axis, that ``"motion"`` targets search.
        tokens_per_frame: placeholders per frame (1 foveated; ``dense_tokens_per_frame`` for the dense baseline).
        max_sequence_length: the LLM's context; longer inputs raise a ``ValueError`` saying how many frames fit.
        system_prompt: system message of the chat template; None keeps the template's default.
        num_frames / fps: default sampling of encoded videos (paths, bytes, files) when a call gives neither;
            the trainer records the sampling the model was trained with. None for both: every frame.
    """

    def __init__(
        self,
        tokenizer=None,
        image_size: int = 256,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        target_downsample: int = 8,
        target_source: str = "downsampled_frames",
        motion_search_radius: int = 8,
        tokens_per_frame: int = 1,
        max_sequence_length: int = 8192,
        system_prompt: str | None = None,
        chat_template: str | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
    ):
        check_sampling(num_frames, fps)
        self.num_frames = num_frames
        self.fps = fps
        self.image_size = image_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.target_downsample = target_downsample
        if target_source not in PROCESSOR_TARGET_SOURCES:
            raise ValueError(
                f"target_source must be one of {PROCESSOR_TARGET_SOURCES}, got {target_source!r}"
            )
        self.target_source = target_source
        self.motion_search_radius = motion_search_radius
        self.tokens_per_frame = tokens_per_frame
        self.max_sequence_length = max_sequence_length
        self.system_prompt = system_prompt
        if image_size % target_downsample:
            raise ValueError(
                f"image_size {image_size} is not divisible by target_downsample {target_downsample}"
            )
        super().__init__(tokenizer, chat_template=chat_template or getattr(tokenizer, "chat_template", None))
        self.video_token_ids = add_video_tokens(tokenizer)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    @classmethod
    def _load_tokenizer_from_pretrained(cls, sub_processor_type, pretrained_model_name_or_path, **kwargs):
        """The tokenizer, named by its own ``tokenizer_config.json``, without reading the model's config.

        Given no config, ``AutoTokenizer`` reads ``config.json`` through ``AutoConfig``, which asks whether to run
        the directory's custom code (this processor is that code) and warns about the unknown model type. An
        empty config skips that; no code from the directory runs.
        """
        kwargs.setdefault("config", PreTrainedConfig())
        return super()._load_tokenizer_from_pretrained(
            sub_processor_type, pretrained_model_name_or_path, **kwargs
        )

    # ------------------------------------------------------------------------------------------ frames
    def preprocess_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[T, H, W, 3]`` in [0, 1] (or uint8) -> normalised pixels ``[T, 3, S, S]`` and resized frames in [0, 1].

        Runs on the frames' device: decoded uint8 frames moved to a GPU are resized and normalised there.
        """
        if frames.dtype == torch.uint8:
            frames = frames.float() / 255.0
        elif not frames.is_floating_point():
            raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {frames.dtype}")
        resized = resize_frames(frames, self.image_size)
        mean = torch.tensor(self.image_mean, dtype=resized.dtype, device=resized.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, dtype=resized.dtype, device=resized.device).view(1, 3, 1, 1)
        return (resized - mean) / std, resized

    def downsampled_targets(self, resized: torch.Tensor) -> torch.Tensor:
        """Area-downsampled frames in [-1, 1]: ``[T, 3, S, S]`` in [0, 1] -> ``[T, 3, S/f, S/f]``."""
        return F.avg_pool2d(resized * 2 - 1, self.target_downsample)

    def motion_targets(self, resized: torch.Tensor) -> torch.Tensor:
        """Motion targets: ``[T, 3, S, S]`` in [0, 1] -> ``[T, 2, S/f, S/f]`` displacement (x, y) of each target
        cell's content since the previous frame, in target cells (zero for the first frame)."""
        return block_motion(resized.mean(1), self.target_downsample, self.motion_search_radius)

    def frame_targets(self, resized: torch.Tensor, vae=None) -> torch.Tensor:
        """The prediction targets of one clip's resized frames ``[T, 3, S, S]``: VAE latents when ``vae`` is given,
        else per ``target_source``."""
        if vae is not None:
            return self.vae_targets(resized, vae)
        if self.target_source == "motion":
            return self.motion_targets(resized)
        return self.downsampled_targets(resized)

    @torch.no_grad()
    def vae_targets(self, resized: torch.Tensor, vae, batch_size: int = 16) -> torch.Tensor:
        """SD-VAE latents ``latent_dist.mean * scaling_factor`` of ``[T, 3, S, S]`` frames in [0, 1]."""
        parameter = next(vae.parameters())
        latents = []
        for chunk in resized.split(batch_size):
            pixels = (chunk * 2 - 1).to(device=parameter.device, dtype=parameter.dtype)
            latents.append(vae.encode(pixels).latent_dist.mean.float().cpu() * vae.config.scaling_factor)
        return torch.cat(latents)

    def postprocess_targets(self, targets: torch.Tensor, vae=None) -> torch.Tensor:
        """Targets ``[..., C, h, w]`` back to images in [0, 1] ``[..., 3, H', W']`` (VAE decode if given)."""
        if vae is None:
            return ((targets + 1) / 2).clamp(0, 1)
        parameter = next(vae.parameters())
        flat = targets.reshape(-1, *targets.shape[-3:]).to(device=parameter.device, dtype=parameter.dtype)
        with torch.no_grad():
            images = vae.decode(flat / vae.config.scaling_factor).sample.float().cpu()
        return ((images + 1) / 2).clamp(0, 1).reshape(*targets.shape[:-3], *images.shape[-3:])

    # ------------------------------------------------------------------------------------------ text
    def video_block(self, num_frames: int) -> str:
        """``<video_start>`` + one placeholder run per frame + ``<video_end>``."""
        return VIDEO_START_TOKEN + FRAME_TOKEN * (num_frames * self.tokens_per_frame) + VIDEO_END_TOKEN

    def format_prompt(self, prompt: str, num_frames: int) -> str:
        """Chat-formatted user turn: the text first, then the video, then the assistant's turn opens.

        Raises:
            ValueError: if ``prompt`` is not a string or holds a video token (see :func:`check_prompt_text`).
        """
        check_prompt_text([prompt], "text")
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": f"{prompt}\n{self.video_block(num_frames)}"})
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=True,
            chat_template=self.chat_template or CHATML_TEMPLATE,
        )

    def frames_that_fit(self, prompt_tokens: int) -> int:
        """How many frames fit in the context after ``prompt_tokens`` text tokens."""
        return max(0, (self.max_sequence_length - prompt_tokens) // self.tokens_per_frame)

    def _tokenize_sample(
        self, prompt: str, num_frames: int, caption: str | None
    ) -> tuple[list[int], list[int]]:
        prompt_ids = self.tokenizer(self.format_prompt(prompt, num_frames), add_special_tokens=False)[
            "input_ids"
        ]
        labels = [IGNORE_INDEX] * len(prompt_ids)
        if caption is not None:
            caption_ids = self.tokenizer(caption + END_OF_TURN, add_special_tokens=False)["input_ids"]
            prompt_ids = prompt_ids + caption_ids
            labels = labels + caption_ids
        if len(prompt_ids) > self.max_sequence_length:
            text_tokens = len(prompt_ids) - num_frames * self.tokens_per_frame
            raise ValueError(
                f"{num_frames} frames and {text_tokens} text tokens need {len(prompt_ids)} positions but the "
                f"context holds {self.max_sequence_length}: at most {self.frames_that_fit(text_tokens)} frames fit; "
                "subsample the video (num_frames=... or fps=...)"
            )
        return prompt_ids, labels

    # ------------------------------------------------------------------------------------------ call
    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        videos=None,
        captions: str | Sequence[str] | None = None,
        return_targets: bool = False,
        prediction_targets: torch.Tensor | Sequence[torch.Tensor] | None = None,
        vae=None,
        num_frames: int | None = None,
        fps: float | None = None,
        return_video_layout: bool = False,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Prepare a batch.

        Args:
            text: one prompt per video (the question or instruction, placed before the video).
            videos: one video or a list of videos (see module docstring); lengths may differ (padded + masked).
            text, captions: strings without the video tokens (the processor writes the video block; a prompt
                or caption holding one is refused). ``text=None`` is the empty prompt; a ``None`` entry of
                ``captions`` is a video without a caption (its row supervises nothing).
            captions: optional answer per video; returned as ``labels`` (caption and end-of-turn supervised).
            return_targets: compute next-frame targets (VAE latents with ``vae``, else downsampled frames).
            prediction_targets: precomputed targets ``[T, C, h, w]`` per video instead.
            num_frames / fps: sampling. ``num_frames`` picks that many frames uniformly from any video (arrays
                and frame lists too); ``fps`` applies to encoded videos only (arrays carry no timestamps). With
                neither, encoded videos follow the processor's own ``num_frames``/``fps`` and arrays are read
                whole.
            return_video_layout: add ``video_layout``, the batch's frame and caption positions as index tensors
                (:class:`VideoLayout`), so that the training forward runs without host synchronisation. Leave it
                off for ``generate`` (it does not expand the layout for beams).

        Returns:
            ``input_ids``, ``attention_mask`` ``[B, L]`` (left-padded), ``pixel_values_videos [B, T, 3, S, S]``,
            ``video_frame_mask [B, T]``, and ``labels`` / ``prediction_targets [B, T, C, h, w]`` /
            ``video_layout`` on request.
        """
        if return_tensors != "pt":
            raise ValueError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        if videos is None:
            raise ValueError("videos are required (use the tokenizer directly for text only)")
        check_sampling(num_frames, fps)
        videos = self._as_video_list(videos)
        prompts = self._as_text_list(text, len(videos), "text", default="")
        answers = self._as_text_list(captions, len(videos), "captions", default=None)
        check_prompt_text(prompts, "text")
        check_prompt_text(answers, "captions", allow_none=True)
        pixels, resized = zip(*(self.prepare_video(video, num_frames, fps) for video in videos))
        samples = [self._tokenize_sample(p, len(clip), a) for p, clip, a in zip(prompts, pixels, answers)]
        batch = self._pad_text(samples, with_labels=captions is not None)
        batch["pixel_values_videos"], batch["video_frame_mask"] = self._pad_frames(list(pixels))
        targets = self._targets(resized, return_targets, prediction_targets, vae)
        if targets is not None:
            batch["prediction_targets"], _ = self._pad_frames(targets)
        if return_video_layout:
            batch["video_layout"] = VideoLayout.from_inputs(
                batch["input_ids"],
                batch["video_frame_mask"],
                self.video_token_ids[FRAME_TOKEN],
                self.tokens_per_frame,
                batch["attention_mask"],
                batch.get("labels"),
            )
        return BatchFeature(batch, tensor_type=None)

    def prepare_video(
        self, video, num_frames: int | None = None, fps: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One video (any kind of the module docstring) -> normalised pixels and resized frames ``[T, 3, S, S]``.

        Encoded videos with neither ``num_frames`` nor ``fps`` follow the processor's own sampling.
        """
        if is_encoded_video(video) and num_frames is None and fps is None:
            num_frames, fps = self.num_frames, self.fps
        runs = [self.preprocess_frames(run) for run in video_to_frames(video, num_frames=num_frames, fps=fps)]
        if len(runs) == 1:
            return runs[0]
        return torch.cat([pixels for pixels, _ in runs]), torch.cat([resized for _, resized in runs])

    @staticmethod
    def _as_video_list(videos) -> list:
        """One video -> ``[video]``; a batch (list of videos, ``[B, T, H, W, C]`` array) -> its videos."""
        if is_encoded_video(videos) or _is_frame(videos):
            return [videos]
        if _is_array(videos):
            if videos.ndim == 5:
                return list(videos)
            return [videos]
        if isinstance(videos, (list, tuple)):
            if not videos:
                raise ValueError("videos is an empty list")
            frames = [_is_frame(video) for video in videos]
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
            f"{_describe(videos)}"
        )

    @staticmethod
    def _as_text_list(text, count: int, name: str, default) -> list:
        if text is None:
            return [default] * count
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, (list, tuple)):
            texts = list(text)
        else:
            raise ValueError(f"{name} must be a string or a list of strings, got {type(text).__name__}")
        if len(texts) != count:
            raise ValueError(f"got {len(texts)} {name} for {count} videos: give one per video")
        return texts

    def _targets(self, resized, return_targets: bool, precomputed, vae) -> list[torch.Tensor] | None:
        if precomputed is not None:
            targets = (
                [precomputed]
                if isinstance(precomputed, torch.Tensor) and precomputed.dim() == 4
                else precomputed
            )
            if len(targets) != len(resized):
                raise ValueError(f"got prediction_targets for {len(targets)} videos, expected {len(resized)}")
            for target, clip in zip(targets, resized):
                if target.shape[0] != clip.shape[0]:
                    raise ValueError(
                        f"prediction_targets have {target.shape[0]} frames, the video {clip.shape[0]}"
                    )
            return [torch.as_tensor(t).float() for t in targets]
        if not return_targets:
            return None
        return [self.frame_targets(clip, vae) for clip in resized]

    def _pad_text(
        self, samples: list[tuple[list[int], list[int]]], with_labels: bool
    ) -> dict[str, torch.Tensor]:
        """Left-pad token ids (and labels) to the longest sample."""
        length = max(len(ids) for ids, _ in samples)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(samples), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, sample_labels) in enumerate(samples):
            input_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention_mask[row, length - len(ids) :] = 1
            labels[row, length - len(ids) :] = torch.tensor(sample_labels)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if with_labels:
            batch["labels"] = labels
        return batch

    @staticmethod
    def _pad_frames(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack ``[T_i, ...]`` clips into ``[B, T, ...]`` (zero-padded at the end) and a ``[B, T]`` mask."""
        longest = max(clip.shape[0] for clip in clips)
        padded = clips[0].new_zeros((len(clips), longest, *clips[0].shape[1:]))
        mask = torch.zeros((len(clips), longest), dtype=torch.bool)
        for row, clip in enumerate(clips):
            padded[row, : clip.shape[0]] = clip
            mask[row, : clip.shape[0]] = True
        return padded, mask

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def decode_generated(self, generated: torch.Tensor, inputs: BatchFeature) -> list[str]:
        """Text written after the prompt by ``model.generate(**inputs)``, special tokens removed."""
        return self.tokenizer.batch_decode(
            generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids",
            "attention_mask",
            "pixel_values_videos",
            "video_frame_mask",
            "prediction_targets",
            "video_layout",
        ]


def block_motion(grey: torch.Tensor, block: int, radius: int) -> torch.Tensor:
    """Block-matching motion of grey frames ``[T, S, S]``: ``[T, 2, S/block, S/block]`` (x, y), in blocks.

    Each ``block x block`` cell of frame t is matched against the previous frame shifted by every displacement
    up to ``radius`` pixels per axis (mean absolute difference, plus ``MOTION_ZERO_PREFERENCE`` per pixel of
    displacement so that flat regions read as still); the best displacement, divided by ``block``, is the cell's
    motion. Frame 1 has none. Works on any video, with no object annotations.
    """
    count, height, width = grey.shape
    motion = grey.new_zeros(count, 2, height // block, width // block)
    if count < 2:
        return motion
    previous = F.pad(grey[:-1].unsqueeze(1), (radius,) * 4, mode="replicate").squeeze(1)  # (T-1, S+2r, S+2r)
    current = grey[1:]
    best_cost = torch.full_like(motion[1:, 0], float("inf"))  # (T-1, h, w)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            # content now at (y, x) was at (y - dy, x - dx) in the previous frame
            source = previous[:, radius - dy : radius - dy + height, radius - dx : radius - dx + width]
            difference = (current - source).abs().unsqueeze(1)  # (T-1, 1, S, S)
            cost = F.avg_pool2d(difference, block).squeeze(1) + MOTION_ZERO_PREFERENCE * (abs(dx) + abs(dy))
            better = cost < best_cost
            best_cost = torch.where(better, cost, best_cost)
            motion[1:, 0] = torch.where(better, dx / block, motion[1:, 0])
            motion[1:, 1] = torch.where(better, dy / block, motion[1:, 1])
    return motion


__all__ = [
    "FrameSampler",
    "FoveatedVLMProcessor",
    "add_video_tokens",
    "check_prompt_text",
    "check_sampling",
    "is_encoded_video",
    "iter_video",
    "load_video",
    "open_video",
    "sample_frame_indices",
    "uniform_indices",
    "video_to_array",
    "video_to_frames",
]

FoveatedVLMProcessor.register_for_auto_class()
