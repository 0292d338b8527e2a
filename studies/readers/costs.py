"""What each frame reader costs: training and streaming milliseconds per frame, side by side in one process.

    python -m studies.readers.costs --config configs/named.yaml --out OUT [--arms studies/readers/arms.yaml]
        [--only query top_k] [--batch_size 8] [--num_frames 8] [--repeats 10] [--warmup 3] [--device cuda]
    python -m studies.readers.costs --tiny --out OUT   # the tiny test model on the CPU (seconds)

Every arm (``--set`` overrides on top of the config, as ``studies.runner`` reads them; by default one arm per
registered reader at one token a frame, plus the dense baseline) builds the config's random-init model and times,
on the same frames:

* ``train_ms_per_frame``: one training forward + backward over ``batch_size`` clips of ``num_frames`` frames;
* ``stream_ms_per_frame``: one ``FoveatedStream.step`` of ``batch_size`` streams (the general path);
* ``stream_fast_ms_per_frame``: the same step on the static-cache fast path (``max_frames``; one CUDA graph a step
  on a GPU).

Each is the median over ``repeats`` timed calls after ``warmup`` untimed ones (CUDA events on a GPU, ``perf_counter``
on the CPU), divided by the frames the call reads. Streaming is skipped (``null``, with the reason) for arms that
give the LLM more than one token a frame. Writes ``OUT/reader_costs.json`` and ``OUT/reader_costs.md``.
"""

from __future__ import annotations

import argparse
import functools
import traceback
from typing import Any

import torch

from eval.benchmark.settings import CAPTION, PROMPT, SEED
from eval.benchmark.streaming import stream_step_times
from eval.benchmark.timing import median, median_ms
from eval.common import DEFAULT_BATCH_SIZE, add_override_argument, markdown_table, script_main, write_report
from foveated_vlm.tiny import tiny_config, tiny_processor, tiny_tokenizer
from foveated_vlm.training.config import load_config, parse_yaml
from foveated_vlm.training.modeling import build_model_and_processor
from modeling_foveated import FoveatedVLMForConditionalGeneration
from readers_foveated import FRAME_READERS
from streaming_foveated import stream_prompt_inputs
from studies.runner import Arm, load_arms

REPORT_NAME = "reader_costs"
DEFAULT_NUM_FRAMES = 8
DEFAULT_REPEATS = 10
DEFAULT_WARMUP = 3
ERROR_CHARS = 160  # of an arm's error message in the markdown table (the JSON keeps all of it)
DENSE_ARM = Arm("dense", ["model.foveation_mode=dense", "model.dense_tokens_per_frame=16"], "dense baseline")
MEASURES = ("train_ms_per_frame", "stream_ms_per_frame", "stream_fast_ms_per_frame")


@functools.cache
def _tiny_tokenizer():
    return tiny_tokenizer()


def default_arms() -> list[Arm]:
    """One arm per registered reader at one token a frame, and the dense baseline."""
    readers = [Arm(name, [f"model.frame_reader={name}"], f"{name} reader") for name in FRAME_READERS]
    return [*readers, DENSE_ARM]


def build_arm(args: argparse.Namespace, arm: Arm, device: torch.device):
    """The arm's random-init model (seeded) and processor, on ``device``."""
    torch.manual_seed(SEED)
    if args.tiny:
        tokenizer = _tiny_tokenizer()
        fields = dict(override.removeprefix("model.").split("=", 1) for override in arm.overrides)
        model_config = tiny_config(tokenizer, **{key: parse_yaml(value) for key, value in fields.items()})
        model, processor = (
            FoveatedVLMForConditionalGeneration(model_config),
            tiny_processor(model_config, tokenizer),
        )
    else:
        model, processor = build_model_and_processor(
            load_config(args.config, [*args.overrides, *arm.overrides])
        )
    return model.to(device), processor


def clips(processor, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """A training batch of ``batch_size`` random clips of ``num_frames`` frames (processor inputs)."""
    generator = torch.Generator().manual_seed(SEED)
    size = processor.image_size
    videos = torch.randint(0, 256, (args.batch_size, args.num_frames, size, size, 3), generator=generator)
    return processor(
        text=[PROMPT] * args.batch_size,
        videos=videos.to(torch.uint8),
        captions=[CAPTION] * args.batch_size,
        return_targets=True,
    )


def train_cost(model, batch: dict[str, torch.Tensor], device: torch.device, args) -> float:
    """Milliseconds per frame of one training forward + backward."""
    model.train()

    def step() -> None:
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)

    return median_ms(step, device, args.warmup, args.repeats) / (args.batch_size * args.num_frames)


def stream_cost(model, processor, batch, device: torch.device, args, fast: bool) -> float:
    """Milliseconds per frame of one ``FoveatedStream.step`` over ``batch_size`` streams."""
    model.eval()
    steps = args.warmup + args.repeats
    prompt = stream_prompt_inputs(processor, [PROMPT] * args.batch_size)
    stream = model.stream(**prompt, max_frames=steps if fast else None)
    frames = batch["pixel_values_videos"].transpose(0, 1)  # [B, T, C, S, S] -> [T, B, C, S, S]
    with torch.no_grad():
        times = stream_step_times(stream, frames, device, args.warmup, args.repeats)
    return median(times) / args.batch_size


def measure_arm(args: argparse.Namespace, arm: Arm, device: torch.device) -> dict[str, Any]:
    model, processor = build_arm(args, arm, device)
    config = model.config
    batch = {name: value.to(device) for name, value in clips(processor, args).items()}
    row: dict[str, Any] = {
        "arm": arm.name,
        "description": arm.description,
        "frame_reader": config.frame_reader if config.foveation_mode == "foveated" else "dense",
        "tokens_per_frame": config.tokens_per_frame,
        "train_ms_per_frame": train_cost(model, batch, device, args),
        "stream_ms_per_frame": None,
        "stream_fast_ms_per_frame": None,
        "stream_skipped": None,
    }
    if config.foveation_mode != "foveated" or config.tokens_per_frame != 1:
        row["stream_skipped"] = "streams read one token a frame"
        return row
    row["stream_ms_per_frame"] = stream_cost(model, processor, batch, device, args, fast=False)
    row["stream_fast_ms_per_frame"] = stream_cost(model, processor, batch, device, args, fast=True)
    return row


def measure_or_record(args: argparse.Namespace, arm: Arm, device: torch.device) -> dict[str, Any]:
    """:func:`measure_arm`, or the arm's error (traceback printed): one failing arm must not hide the others."""
    try:
        return measure_arm(args, arm, device)
    except Exception as error:  # noqa: BLE001 - reported in the row, the run goes on
        traceback.print_exc()
        return {"arm": arm.name, "description": arm.description, "error": f"{type(error).__name__}: {error}"}


def format_markdown(report: dict[str, Any]) -> str:
    headers = ["arm", "reader", "tokens/frame", *MEASURES]
    rows = [
        [row["arm"], row["frame_reader"], row["tokens_per_frame"], *(row[m] for m in MEASURES)]
        if "error" not in row
        else [row["arm"], "error", "", row["error"][:ERROR_CHARS], *([""] * (len(MEASURES) - 1))]
        for row in report["arms"]
    ]
    settings = report["settings"]
    return "\n".join(
        [
            "# Frame reader costs",
            "",
            f"Device {settings['device']}; {settings['batch_size']} clips x {settings['num_frames']} frames; median of "
            f"{settings['repeats']} calls after {settings['warmup']}. Milliseconds per frame.",
            "",
            markdown_table(headers, rows),
            "",
        ]
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    arms = load_arms(args.arms) if args.arms else default_arms()
    if args.only:
        unknown = sorted(set(args.only) - {arm.name for arm in arms})
        if unknown:
            raise ValueError(f"--only names arms that do not exist: {unknown}")
        arms = [arm for arm in arms if arm.name in args.only]
    settings = {
        key: getattr(args, key) for key in ("config", "tiny", "batch_size", "num_frames", "repeats", "warmup")
    }
    report = {
        "settings": {**settings, "device": str(device)},
        "arms": [measure_or_record(args, arm, device) for arm in arms],
    }
    write_report(args.out, report, format_markdown(report), f"{REPORT_NAME}.json", f"{REPORT_NAME}.md")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="training YAML whose model is measured (e.g. configs/named.yaml)")
    source.add_argument("--tiny", action="store_true", help="the tiny test model instead of a config")
    parser.add_argument("--arms", help="arms YAML (studies.runner format); default: one per reader + dense")
    parser.add_argument("--only", nargs="+", help="measure only these arms")
    add_override_argument(parser, "config override applied before each arm's own")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--num_frames", type=int, default=DEFAULT_NUM_FRAMES)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--out", required=True)
    return parser


main = script_main(run, build_parser, format_markdown)


if __name__ == "__main__":
    main()
