"""A new user's first hour (issue 12), the command line: odd and bad arguments, videos and models.

Each case works or fails with a message naming the problem (``tests.builders``: the battery's world).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import caption_video
from processing_foveated import FRAME_TOKEN

from ..builders import PHOTO, TRAINED_FRAMES, World


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
    CliCase(
        "prompt-not-utf8",
        _cli("--prompt", NOT_UTF8),
        1,
        r"--prompt is not valid Unicode text \(a lone surrogate at character 9",
    ),
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
    CliCase(
        "attention-is-a-directory",
        _cli("--attention", "{tmp}"),
        1,
        r"--attention .* is a directory: give a file name ending in .gif, e.g. .*attention.gif",
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
    assert streamed.shape == expected.shape, (streamed.shape, expected.shape)
    assert torch.equal(streamed, expected), (streamed - expected).abs().max()


def test_cli_unexpected_failure_is_one_line(world, capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(caption_video, "run", broken)
    assert caption_video.main(_cli()(world)) == caption_video.EXIT_ERROR
    assert capsys.readouterr().err == "error: RuntimeError: something nobody foresaw\n"
