"""A new user's first hour (issue 12), the model: odd and bad inputs to the forward pass and the stream.

Each case works or fails with a message naming the problem (``tests.builders``: the battery's world).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from processing_foveated import FRAME_TOKEN
from streaming_foveated import stream_prompt_inputs

from ..builders import Case, World, pan, run_case


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


def _poke_id(input_ids: torch.Tensor, value: int) -> torch.Tensor:
    input_ids = input_ids.clone()
    input_ids[0, 1] = value  # one token of the chat prefix
    return input_ids


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
        "four-channel-pixels",
        _forward(pixel_values_videos=lambda i: torch.cat([i["pixel_values_videos"]] * 2, 2)[:, :, :4]),
        r"must be \[B, T, 3, H, W\] with 3 colour channels, got shape \(1, 3, 4, 32, 32\)",
    ),
    Case(
        "channels-last-pixels-hint",
        _forward(pixel_values_videos=lambda i: i["pixel_values_videos"].permute(0, 1, 3, 4, 2)),
        r"channels last\? permute\(0, 1, 4, 2, 3\)",
    ),
    Case(
        "one-channel-pixels",
        _forward(pixel_values_videos=lambda i: i["pixel_values_videos"][:, :, :1]),
        r"must be \[B, T, 3, H, W\] with 3 colour channels.*pass the videos through the processor",
    ),
    Case(
        "one-channel-pixels-with-layout",
        lambda w: _with_layout(w, lambda p: p[:, :, :1]),
        r"with 3 colour channels",
    ),
    Case(
        "token-id-beyond-the-vocabulary",
        _forward(input_ids=lambda i: _poke_id(i["input_ids"], 10**6)),
        r"input_ids hold the token id 1000000, outside the model's vocabulary of \d+ \(ids 0-\d+\): build them",
    ),
    Case(
        "token-id-negative",
        _forward(input_ids=lambda i: _poke_id(i["input_ids"], -100)),
        r"token id -100, outside .*labels' -100 belongs in labels, not in input_ids",
    ),
    Case(
        "float-token-ids",
        _forward(input_ids=lambda i: i["input_ids"].float()),
        r"input_ids must be integer token ids, got dtype torch.float32: .*or convert them with .long\(\)",
    ),
    Case(
        "token-id-beyond-the-vocabulary-text-only",
        lambda w: w.model(input_ids=torch.tensor([[1, 10**6]])),
        "outside the model's vocabulary",
    ),
    Case(
        "generate-token-id-beyond-the-vocabulary",
        lambda w: w.model.generate(
            **{**w.inputs(), "input_ids": _poke_id(w.inputs()["input_ids"], 10**6)}, max_new_tokens=2
        ),
        "outside the model's vocabulary",
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
        "inference_mode must be one of",
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
        "prompt-lone-surrogate",
        lambda w: stream_prompt_inputs(w.processor, "describe \udcff"),
        r"text\[0\] is not valid Unicode text",
    ),
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
    Case(
        "stream-prompt-token-beyond-the-vocabulary",
        lambda w: w.model.stream(
            **{
                **stream_prompt_inputs(w.processor, "hi"),
                "input_ids": _poke_id(stream_prompt_inputs(w.processor, "hi")["input_ids"], 10**6),
            }
        ),
        "input_ids hold the token id 1000000, outside the model's vocabulary",
    ),
    Case(
        "stream-suffix-token-beyond-the-vocabulary",
        lambda w: w.model.stream(
            **{
                **stream_prompt_inputs(w.processor, "hi"),
                "suffix_ids": [w.model.config.video_end_token_id, 10**6],
            }
        ),
        "suffix_ids hold the token id 1000000",
    ),
    Case(
        "step-channels-last",
        _step(lambda p: p.permute(0, 2, 3, 1)),
        r"frames must be \[B=1, n, 3, 32, 32\]",
    ),
]


@pytest.mark.parametrize("case", MODEL_CASES + STREAM_CASES, ids=lambda case: case.id)
def test_model_battery(world, case):
    run_case(world, case)


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
