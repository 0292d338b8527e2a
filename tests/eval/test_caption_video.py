"""The caption_video.py command line on small mp4 files written here with PyAV."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import caption_video

from ..builders import TINY_VAE_CHANNELS, FoveatedModelTester, encode_video, save_tiny_vae

REPO = Path(__file__).resolve().parents[2]
VIDEO_FRAMES, VIDEO_FPS, READ_FPS = 20, 10, 5  # a 2 s clip read at 5 fps: 10 frames
FRAMES_READ = 10
HEIGHT, WIDTH = 48, 64
CAPTION_TOKENS = 8
TEXT_INIT_STD = 0.2  # random logits far from ties: greedy captions are not degenerate
SMALL_CONTEXT = 40  # positions: the prompt and suffix take ~36, so only a few frames fit
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def moving_square() -> np.ndarray:
    """A red square moving right over a blue background, ``[T, H, W, 3]`` uint8."""
    frames = np.zeros((VIDEO_FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    frames[..., 2] = 60
    for t in range(VIDEO_FRAMES):
        frames[t, 18:30, 4 + 2 * t : 16 + 2 * t] = (255, 40, 40)
    return frames


def save_tiny_model(directory: Path, tokenizer, **overrides) -> Path:
    """A tiny random model + processor saved as the trainer saves ``D/final`` (Hub-loadable, remote code)."""
    text = {"initializer_range": TEXT_INIT_STD, **overrides.pop("text", {})}
    return FoveatedModelTester(tokenizer).save_model(directory, text=text, **overrides)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("videos") / "square.mp4"
    encode_video(path, moving_square(), fps=VIDEO_FPS)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"), tokenizer)


def cli_args(video: Path, model_dir: Path | str, *extra: str) -> list[str]:
    """Arguments reading ``video`` at ``READ_FPS`` on the CPU (expected captions are computed there in fp32)."""
    return [str(video), "--model", str(model_dir), "--fps", str(READ_FPS), "--device", "cpu", *extra]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter."""
    command = [sys.executable, str(REPO / "caption_video.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=SUBPROCESS_ENV, timeout=300)


def expected_caption(model_dir: Path, video: Path, prompt: str = caption_video.DEFAULT_PROMPT) -> str:
    """The caption of ``model.generate(**processor(text, frames))`` on the frames the CLI decodes (greedy)."""
    model, processor = caption_video.load_model(str(model_dir), "cpu", torch.float32)
    chunks = caption_video.decode_video(str(video), processor, None, READ_FPS, chunk_frames=4)
    frames = torch.cat([chunk.resized for chunk in chunks]).permute(0, 2, 3, 1)
    assert frames.shape[0] == FRAMES_READ
    inputs = processor(text=prompt, videos=frames)
    generated = model.generate(**inputs, max_new_tokens=CAPTION_TOKENS, do_sample=False)
    return processor.decode_generated(generated, inputs)[0].strip()


def test_cli_captions_and_draws(model_dir, video, tmp_path):
    gif, png = tmp_path / "attention.gif", tmp_path / "predictions.png"
    extra = ["--max-new-tokens", str(CAPTION_TOKENS), "--chunk-frames", "4"]
    extra += ["--attention", str(gif), "--predictions", str(png)]
    result = run_cli(*cli_args(video, model_dir, *extra))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected_caption(model_dir, video)
    with Image.open(gif) as animation:
        assert animation.n_frames == FRAMES_READ
        assert animation.size == (caption_video.DISPLAY_SIZE, caption_video.DISPLAY_SIZE)
    with Image.open(png) as figure:
        assert figure.format == "PNG" and figure.size[0] > figure.size[1]
    assert not list(tmp_path.glob(".tmp-*"))  # atomic writes left no temporary file


def test_cli_corrupt_file_fails_clearly(model_dir, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    result = run_cli(*cli_args(corrupt, model_dir))
    assert result.returncode == caption_video.EXIT_ERROR
    assert "error: cannot decode video" in result.stderr and str(corrupt) in result.stderr
    assert result.stdout == ""


def test_missing_file_and_too_many_frames_fail_clearly(tokenizer, video, tmp_path, capsys):
    assert caption_video.main(cli_args(tmp_path / "absent.mp4", "unused")) == caption_video.EXIT_ERROR
    assert "video file not found" in capsys.readouterr().err
    small = save_tiny_model(tmp_path / "small", tokenizer, text={"max_position_embeddings": SMALL_CONTEXT})
    assert caption_video.main(cli_args(video, small)) == caption_video.EXIT_ERROR
    error = capsys.readouterr().err
    assert "the model's context fits" in error and "subsample the video with --fps" in error


def test_frames_are_sampled_at_the_requested_rate(model_dir, video):
    _, processor = caption_video.load_model(str(model_dir), "cpu", torch.float32)
    every = list(caption_video.decode_video(str(video), processor, None, None, chunk_frames=8))
    sampled = list(caption_video.decode_video(str(video), processor, None, READ_FPS, chunk_frames=8))
    assert [chunk.pixels.shape[0] for chunk in every] == [8, 8, 4]
    assert [chunk.pixels.shape[0] for chunk in sampled] == [8, 2]
    assert torch.equal(sampled[0].resized[1], every[0].resized[VIDEO_FPS // READ_FPS])


def test_dense_model_is_captioned_with_generate(tokenizer, video, tmp_path, capsys):
    dense = save_tiny_model(tmp_path / "dense", tokenizer, foveation_mode="dense", dense_tokens_per_frame=4)
    args = cli_args(video, dense, "--max-new-tokens", str(CAPTION_TOKENS))
    assert caption_video.main(args) == 0
    assert capsys.readouterr().out.strip() == expected_caption(dense, video)
    assert caption_video.main([*args, "--attention", str(tmp_path / "a.gif")]) == caption_video.EXIT_ERROR
    assert "no query attention" in capsys.readouterr().err


def test_vae_targets_are_decoded_for_the_figure(tokenizer, video, tmp_path):
    """A VAE-target model: targets are made and the predictions decoded through its (tiny, random) VAE."""
    model_dir = save_tiny_model(
        tmp_path / "model",
        tokenizer,
        target_source="vae",
        target_channels=TINY_VAE_CHANNELS,
        vae_name_or_path=str(save_tiny_vae(tmp_path / "vae")),
    )
    png = tmp_path / "predictions.png"
    args = cli_args(video, model_dir, "--max-new-tokens", "2", "--predictions", str(png))
    assert caption_video.main(args) == 0
    with Image.open(png) as figure:
        assert figure.format == "PNG"
