"""Shared test builders, in the style of transformers' model testers: the one place tests get tiny configs,
models, processors, batches, saved model folders, tiny VAEs, encoded videos and two-process launches from.

Tests import helpers from here (or take the fixtures of ``conftest.py``), never from another test file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import studies.readers  # noqa: F401  (registers the study readers that READER_ARMS builds)
from foveated_vlm.tiny import tiny_config, tiny_processor
from modeling_foveated import FoveatedVLMForConditionalGeneration
from streaming_foveated import stream_prompt_inputs

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = str(REPO / "configs" / "smoke.yaml")
SMALL_DATA = [
    "--set",
    "train.report_to=none",
    "--set",
    "data.num_clips={train: 16, validation: 4, heldout: 4}",
]
"""``--set`` overrides of a seconds-long smoke run (``SMOKE_CONFIG``) for the eval and study runners' tests."""
CAPTIONS = ("the red square moves from left to right.", "the blue circle bounces around.")
PROMPTS = ("Describe the video.", "What does the blue circle do?")
TINY_VAE_BLOCKS = 4
"""Encoder blocks of the tiny VAE: three 2x downsamplings, the SD-VAE's factor 8 (the target factor)."""
TINY_VAE_CHANNELS = 4
"""Latent channels of the tiny VAE (as the SD-VAE's)."""


class FoveatedModelTester:
    """Builds tiny configs, models, processors and batches around one tokenizer (no hub, no downloads)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def config(self, **overrides):
        """A tiny :class:`FoveatedVLMConfig` (``foveated_vlm.tiny.tiny_config``) with ``overrides``."""
        return tiny_config(self.tokenizer, **overrides)

    def processor(self, config=None):
        """The processor matching ``config`` (the default tiny config when None)."""
        return tiny_processor(config if config is not None else self.config(), self.tokenizer)

    def model_and_processor(self, seed: int = 0, **overrides):
        """``(model, processor)`` of a tiny config with ``overrides``, initialised from ``seed``, in eval mode."""
        config = self.config(**overrides)
        torch.manual_seed(seed)
        return FoveatedVLMForConditionalGeneration(config).eval(), self.processor(config)

    def save_model(self, directory: Path, seed: int = 0, **overrides) -> Path:
        """A tiny random model + processor saved as the trainer saves ``D/final`` (Hub-loadable, remote code)."""
        model, processor = self.model_and_processor(seed, **overrides)
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
        return directory


def random_frames(frames: int, height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 noise ``[T, H, W, 3]``."""
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def caption_batch(processor, lengths: Sequence[int] = (5, 3), **kwargs):
    """A captioned batch with targets: one random video per entry of ``lengths`` (its frame count), at most
    ``len(PROMPTS)`` videos."""
    videos = [random_frames(length, seed=index) for index, length in enumerate(lengths)]
    count = len(lengths)
    return processor(
        text=list(PROMPTS[:count]),
        videos=videos,
        captions=list(CAPTIONS[:count]),
        return_targets=True,
        **kwargs,
    )


def caption_batch_row(processor, row: int, length: int):
    """Row ``row`` of :func:`caption_batch` (a video of ``length`` frames) alone, as a batch of one."""
    return processor(
        text=[PROMPTS[row]],
        videos=[random_frames(length, seed=row)],
        captions=[CAPTIONS[row]],
        return_targets=True,
    )


# ----------------------------------------------------------------------------------------------- streaming
# The streaming tests' clips and comparisons (tests/hub/test_streaming.py, tests/hub/test_reader_integration.py).
STREAM_PROMPTS = ("Describe the video.", "What does the red ball do?")
STREAM_FRAME_COUNTS = (5, 3)  # a batch of streams of different lengths (and prompts of different lengths)
STREAM_CAPTION_TOKENS = 6
# Larger than the tiny default so that random logits are far from ties and greedy captions are not degenerate.
STREAM_TEXT_INIT_STD = 0.2
# Relative tolerances (max |stream - parallel| / max |parallel|). The stream runs the same ops on other shapes
# (one token per LLM call instead of one prefill), so results agree to float rounding: ~1e-6 in fp32. bf16 keeps
# 8 mantissa bits (epsilon 2^-8 = 0.4%); rounding differences pass through the LLM and encoder layers, measured
# at 0.4-1.6% on these clips: 4% leaves margin while still catching any real mismatch (those are O(1)).
STREAM_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 4e-2}


def stream_clip_batch(processor, rows=slice(None)):
    """Processor inputs of the test clips (the same frames every call); ``rows`` picks some of them."""
    generator = torch.Generator().manual_seed(1)
    videos = [torch.rand(count, 40, 48, 3, generator=generator) for count in STREAM_FRAME_COUNTS]
    return processor(text=list(STREAM_PROMPTS[rows]), videos=videos[rows], return_targets=True)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def step_through(model, processor, inputs, prompts=STREAM_PROMPTS, **stream_kwargs):
    """Drive a batch of streams frame by frame, as a padded batch from the processor is driven."""
    stream = model.stream(**stream_prompt_inputs(processor, list(prompts)), **stream_kwargs)
    steps = [
        stream.step(
            inputs["pixel_values_videos"][:, t],
            inputs["video_frame_mask"][:, t],
            inputs["prediction_targets"][:, t],
        )
        for t in range(inputs["video_frame_mask"].shape[1])
    ]
    stacked = {
        name: torch.stack([step[name] for step in steps], dim=1)
        for name in steps[0].keys()
        if name != "next_queries"
    }
    return stream, stacked


def caption_pair(model, inputs, stream, mode: str, **generate_kwargs):
    """(parallel generate, stream caption) with logits; the same seed before each for sampling."""
    common = {"max_new_tokens": STREAM_CAPTION_TOKENS, "output_logits": True, "return_dict_in_generate": True}
    parallel_inputs = {k: v for k, v in inputs.items() if k != "prediction_targets"}
    torch.manual_seed(2)
    parallel = model.generate(**parallel_inputs, inference_mode=mode, **common, **generate_kwargs)
    torch.manual_seed(2)
    streamed = stream.caption(**common, **generate_kwargs)
    return parallel, streamed


# ----------------------------------------------------------------------------------------------- readers
# The frame readers' test arms (tests/hub/test_spatial_readers.py, tests/studies/test_fixation_readers.py,
# tests/hub/test_reader_integration.py): (test id, config overrides), every reader at one token a frame, and its
# k-token variants.
TOKENS = {"multi_query_output": "tokens"}
SPATIAL_ARMS = [
    ("multi_scale", {"frame_reader": "multi_scale"}),
    ("multi_scale-k2", {"frame_reader": "multi_scale", "num_queries_per_frame": 2, **TOKENS}),
    ("cascade", {"frame_reader": "cascade"}),
    ("cascade-k2", {"frame_reader": "cascade", "num_queries_per_frame": 2, **TOKENS}),
    ("log_polar", {"frame_reader": "log_polar"}),
    ("log_polar-k2", {"frame_reader": "log_polar", "num_queries_per_frame": 2, **TOKENS}),
    ("top_k", {"frame_reader": "top_k"}),
    ("top_k-tokens", {"frame_reader": "top_k", "top_k_output": "tokens", **TOKENS}),
    (
        "top_k-tokens-k2",
        {"frame_reader": "top_k", "top_k_output": "tokens", "num_queries_per_frame": 2, **TOKENS},
    ),
    ("hybrid", {"frame_reader": "hybrid"}),
    ("hybrid-tokens", {"frame_reader": "hybrid", **TOKENS}),
]
FIXATION_CROP = 16  # pixels: 2 x 2 patches of the tiny ViT (a quarter of its 32 px frame)
FIXATION_ARMS = [
    (name, {"fixation_crop_size": FIXATION_CROP, **overrides})
    for name, overrides in (
        ("dual_stream", {"frame_reader": "dual_stream", "fixation_periphery": "fused"}),
        ("dual_stream-tokens", {"frame_reader": "dual_stream", **TOKENS}),
        (
            "dual_stream-periphery_grid",
            {"frame_reader": "dual_stream", "fixation_periphery": "fused", "fixation_periphery_grid": 2},
        ),  # fmt: skip
        ("multi_fixation", {"frame_reader": "multi_fixation"}),
        ("multi_fixation-tokens", {"frame_reader": "multi_fixation", **TOKENS}),
        ("multi_fixation-k2", {"frame_reader": "multi_fixation", "num_queries_per_frame": 2, **TOKENS}),
        ("glimpse_rl", {"frame_reader": "glimpse_rl", "fixation_periphery": "none"}),
        ("glimpse_rl-tokens", {"frame_reader": "glimpse_rl", **TOKENS}),
        ("adaptive_fixation", {"frame_reader": "adaptive_fixation", "fixation_periphery": "fused"}),
        ("adaptive_fixation-tokens", {"frame_reader": "adaptive_fixation", **TOKENS}),
    )
]
READER_ARMS = SPATIAL_ARMS + FIXATION_ARMS
HARD_GLIMPSE_READERS = frozenset({"glimpse_rl"})
"""Readers whose crop is a sampled choice, so their reading has no gradient path to the plan: REINFORCE teaches
the policy, and attention supervision only through the reader's own ``box_loss`` on the policy
(``fixation_box_loss="gaussian"``); with ``"coverage"`` the box loss stays off the plan head (both tested)."""


def clips_batch(processor, clips: Sequence[dict]):
    """A captioned batch with targets of data set items (``prompt``, ``frames``, ``caption``)."""
    return processor(
        text=[clip["prompt"] for clip in clips],
        videos=[clip["frames"] for clip in clips],
        captions=[clip["caption"] for clip in clips],
        return_targets=True,
    )


def save_tiny_vae(directory: Path) -> Path:
    """A tiny random ``diffusers.AutoencoderKL`` (factor 8, ``TINY_VAE_CHANNELS`` latents) saved to ``directory``."""
    from diffusers import AutoencoderKL

    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * TINY_VAE_BLOCKS,
        up_block_types=("UpDecoderBlock2D",) * TINY_VAE_BLOCKS,
        block_out_channels=(8,) * TINY_VAE_BLOCKS,
        latent_channels=TINY_VAE_CHANNELS,
        norm_num_groups=4,
        layers_per_block=1,
    ).save_pretrained(directory)
    return directory


def encode_video(
    path: Path, frames: np.ndarray, fps: int, codec: str = "mpeg4", pix_fmt: str = "yuv420p"
) -> Path:
    """uint8 ``[T, H, W, 3]`` frames -> an encoded video file at ``path`` (PyAV)."""
    av = pytest.importorskip("av")  # the GPU image has no PyAV; CI installs it (scripts/setup.sh)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


RAMP_FRAMES, RAMP_SIZE, RAMP_RATE = 12, 40, 12
"""The grey-ramp video of :func:`write_video`: frames, height (width is 8 more) and frame rate."""
PIXEL_NOISE = 3  # grey levels of noise added to the ramp (exclusive bound)
RAMP_STEP = 20  # grey levels between consecutive frames of the ramp


def write_video(path, num_frames: int = RAMP_FRAMES, size: int = RAMP_SIZE, seed: int = 0) -> np.ndarray:
    """Write a small mpeg4 video whose frame t is uniformly grey level 20 * t (plus noise); returns frames."""
    rng = np.random.default_rng(seed)
    frames = np.stack([np.full((size, size + 8, 3), RAMP_STEP * t, np.uint8) for t in range(num_frames)])
    frames = np.clip(frames + rng.integers(0, PIXEL_NOISE, frames.shape), 0, 255).astype(np.uint8)
    encode_video(Path(path), frames, fps=RAMP_RATE)
    return frames


def write_corrupt(path) -> None:
    """A file named like a video that holds no decodable video."""
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a decodable video")


def write_manifest(directory: Path) -> Path:
    """A JSONL manifest in ``directory`` of three good videos and one corrupt file (the second row)."""
    (directory / "clips").mkdir()
    rows = []
    for index in range(3):
        write_video(directory / "clips" / f"good{index}.mp4", seed=index)
        rows.append({"video": f"clips/good{index}.mp4", "caption": f"clip number {index}", "split": "train"})
    write_corrupt(directory / "clips" / "broken.mp4")
    rows.insert(1, {"video": "clips/broken.mp4", "caption": "never decoded", "split": "train"})
    path = directory / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_cpu_processes(
    *args: str, timeout: int = 240, distributed: tuple[str, ...] = ("--multi_gpu",)
) -> subprocess.CompletedProcess:
    """``accelerate launch`` with 2 processes on the CPU (torchrun with no GPU gives a gloo group).

    ``distributed`` selects the mode: DDP by default, or e.g. ``("--config_file", "configs/accelerate/fsdp.yaml")``.
    """
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *distributed, "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------ battery
# The first-hour battery (issue 12, tests/hub/test_battery_*.py and tests/eval/test_battery_cli.py): odd and bad inputs to the processor, the model, the
# stream and the CLI. Every case either works (and, where a conversion is involved, gives what the documented
# conversion says) or raises an error whose message names the problem and what to do: no traceback, no silent
# acceptance. The videos are made from a real photograph (matplotlib's sample ``grace_hopper.jpg``), panned into
# clips of odd shapes and written in the common containers. The Hub load in a bare torch + transformers
# environment is ``test_hub_roundtrip.py``; the packaging of the Hub files ``test_packaging.py``.
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


def encode_audio_only(path: Path) -> Path:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


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


def build_world(tmp: Path, tokenizer) -> World:
    """The battery's model, processors, encoded clips (every container of ``CONTAINERS``, an audio-only file, a
    text file named .mp4, a long clip) and saved model folders (with and without a recorded sampling and trained
    length)."""
    config = tiny_config(tokenizer, text={"initializer_range": 0.2})
    torch.manual_seed(0)
    model = FoveatedVLMForConditionalGeneration(config).eval()
    processor = tiny_processor(config, tokenizer)
    files = {
        name: encode_video(tmp / f"{name}{suffix}", pan(*shape, seed=i), CLIP_FPS, codec, pix_fmt)
        for i, (name, (suffix, codec, pix_fmt, shape)) in enumerate(CONTAINERS.items())
    }
    files["audio-only"] = encode_audio_only(tmp / "audio.wav")
    (tmp / "text.mp4").write_text("this is not a video\n" * 50)
    files["text"] = tmp / "text.mp4"
    long_clip = encode_video(tmp / "long.mp4", pan(LONG_CLIP_FRAMES, 48, 64, seed=9), CLIP_FPS, "libx264")
    model_dir = tmp / "model"
    model.save_pretrained(model_dir)
    recorded = tiny_processor(config, tokenizer)
    recorded.num_frames = recorded.trained_frames = TRAINED_FRAMES
    recorded.save_pretrained(model_dir)
    bare_model_dir = tmp / "model-without-sampling"
    model.save_pretrained(bare_model_dir)
    processor.save_pretrained(bare_model_dir)
    return World(model, processor, files, tmp, model_dir, bare_model_dir, long_clip)


@dataclass
class Case:
    """``run(world)`` either returns (then ``check(world, result)``, if any) or raises ``error`` (a regex)."""

    id: str
    run: Callable[[World], Any]
    error: str | None = None
    check: Callable[[World, Any], None] | None = None
    exception: type[Exception] = ValueError


def run_case(world: World, case: Case) -> None:
    """Run one battery case: it returns (and passes its check) or raises its error; the model ends in eval mode."""
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
