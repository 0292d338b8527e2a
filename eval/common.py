"""Plumbing shared by the evaluation scripts: loading a model and clips, batched forward passes, reports.

Every script takes a model (``--model DIR``, a ``save_pretrained`` folder, or ``--run_dir RUN`` for
``RUN/final``) and clips described by a training config's ``data`` section: ``--config YAML`` with
``--set data.key=value`` overrides; by default the run's own ``training_config.yaml`` (found next to the
model), else the built-in procedural data at the model's frame size. ``--split`` picks the role
(``train``/``validation``/``heldout``) and ``--num_clips`` how many of its clips to read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from foveated_vlm.data.targets import vae_for
from foveated_vlm.files import atomic_write_text
from foveated_vlm.metrics import bootstrap_ci, token_log_likelihoods
from foveated_vlm.training.config import TrainingConfig, load_config
from foveated_vlm.training.data import build_split
from foveated_vlm.training.figures import save_figure
from foveated_vlm.training.trainer import CONFIG_NAME, FINAL_DIR, LOG_NAME
from modeling_foveated import FoveatedVLMForConditionalGeneration
from processing_foveated import FoveatedVLMProcessor

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
SPLIT_ROLES = ("train", "validation", "heldout", "test")
DEFAULT_SPLIT = "heldout"
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_NEW_TOKENS = 24  # a generated caption's length in every report (captioning, probes, runner)
PASSES = ("fine", "coarse")  # the two readings of a two-pass model, in the order reports list them
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DECIMALS = 4

__all__ = [
    "CONFIG_NAME",
    "FINAL_DIR",
    "LOG_NAME",
    "ClipOutputs",
    "EvalContext",
    "add_data_arguments",
    "add_override_argument",
    "add_model_arguments",
    "default_inference_mode",
    "format_ci",
    "forward_clips",
    "load_context",
    "markdown_table",
    "model_inputs",
    "pyplot",
    "save_figure",
    "script_main",
    "script_parser",
    "summarise",
    "write_report",
]


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def script_parser(description: str, data: bool = True) -> argparse.ArgumentParser:
    """The parser of an evaluation script: model arguments and (``data``) the clip arguments."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    if data:
        add_data_arguments(parser)
    return parser


def script_main(
    run: Callable[[argparse.Namespace], dict[str, Any]],
    build_parser: Callable[[], argparse.ArgumentParser],
    format_markdown: Callable[[dict[str, Any]], str],
) -> Callable[[list[str] | None], dict[str, Any]]:
    """The ``main(argv=None)`` of an evaluation script: parse ``argv`` (the command line when None), ``run`` the
    evaluation, print its Markdown report and return the report."""

    def main(argv: list[str] | None = None) -> dict[str, Any]:
        report = run(build_parser().parse_args(argv))
        print(format_markdown(report))
        return report

    return main


def add_override_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """Repeatable ``--set SECTION.KEY=VALUE`` (into ``args.overrides``), as train_accelerate.py takes it."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=help_text
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--run_dir``, ``--device``, ``--dtype`` and ``--out``."""
    parser.add_argument("--model", help="saved model + processor folder (e.g. RUN/final)")
    parser.add_argument("--run_dir", help=f"training run folder: uses RUN/{FINAL_DIR} and RUN/{CONFIG_NAME}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--out", required=True, help="output folder (report.md, report.json, figures)")


def add_data_arguments(parser: argparse.ArgumentParser, default_split: str = DEFAULT_SPLIT) -> None:
    """``--config``, ``--set``, ``--split``, ``--num_clips``, ``--batch_size``, ``--num_workers``."""
    parser.add_argument(
        "--config", help="training YAML whose data section describes the clips (default: the run's)"
    )
    add_override_argument(parser, "override a config field, e.g. --set data.num_frames=16 (repeatable)")
    parser.add_argument("--split", default=default_split, choices=SPLIT_ROLES, help="which role's clips")
    parser.add_argument(
        "--num_clips", type=int, help="clips of the split to read (default: the config's count)"
    )
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers that decode clips")


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


@dataclass
class EvalContext:
    """A loaded model with its processor, the clips to evaluate and the VAE that decodes targets (if any)."""

    model: FoveatedVLMForConditionalGeneration
    processor: FoveatedVLMProcessor
    config: TrainingConfig
    dataset: Any
    vae: Any
    model_path: Path
    out_dir: Path

    @property
    def is_procedural(self) -> bool:
        """Clips from the built-in procedural data set (boxes, exact captions, held-out combinations)."""
        return self.config.data.kind == "procedural"


def model_path_of(args: argparse.Namespace) -> Path:
    """The saved model folder from ``--model`` or ``--run_dir``."""
    if bool(args.model) == bool(args.run_dir):
        raise ValueError("give exactly one of --model (a saved model folder) or --run_dir (a training run)")
    path = Path(args.model) if args.model else Path(args.run_dir) / FINAL_DIR
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} holds no saved model (config.json missing)")
    return path


def load_model(path: Path, device: str, dtype: str = "float32"):
    """The model (eval mode, on ``device``) and processor saved in ``path``."""
    model = FoveatedVLMForConditionalGeneration.from_pretrained(path, dtype=DTYPES[dtype]).to(device).eval()
    # A local folder the user points at; without the flag the processor asks on stdin to run its .py files.
    return model, FoveatedVLMProcessor.from_pretrained(path, trust_remote_code=True)


def data_config(args: argparse.Namespace, model_path: Path, out_dir: Path) -> TrainingConfig:
    """The training config whose data section describes the clips (see the module docstring)."""
    config_path = args.config
    if config_path is None and (model_path.parent / CONFIG_NAME).is_file():
        config_path = model_path.parent / CONFIG_NAME
    config = load_config(config_path, list(args.overrides))
    if args.num_clips is not None:
        if args.num_clips < 1:
            raise ValueError(f"--num_clips must be >= 1, got {args.num_clips}")
        config.data.num_clips = {**config.data.num_clips, args.split: args.num_clips}
    if not config.data.num_clips.get(args.split):
        raise ValueError(f"the config reads no {args.split} clips: pass --num_clips")
    config.output_dir = str(out_dir)  # where a procedural VAE target cache goes; never the run's folder
    return config


def load_context(args: argparse.Namespace) -> EvalContext:
    """Model, processor, config and clips of the split the arguments name."""
    model_path = model_path_of(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = data_config(args, model_path, out_dir)  # first: it imports the run's plugins (e.g. its reader)
    model, processor = load_model(model_path, args.device, args.dtype)
    vae = vae_for(model.config, args.device, config.model.vae_name_or_path)
    dataset = build_split(config, args.split, processor, model.config.target_source, vae=vae)
    return EvalContext(model, processor, config, dataset, vae, model_path, out_dir)


@contextlib.contextmanager
def default_inference_mode(model, mode: str | None) -> Iterator[None]:
    """Temporarily make ``mode`` (``"two_pass"``/``"coarse"``) the model's default reading (None: unchanged).

    ``forward`` reads ``config.inference_mode`` when called without one, as ``generate`` calls it.
    """
    previous = model.config.inference_mode
    if mode is not None:
        model.config.inference_mode = mode
    try:
        yield
    finally:
        model.config.inference_mode = previous


# ----------------------------------------------------------------------------------------------------
# Forward passes
# ----------------------------------------------------------------------------------------------------


def model_inputs(processor, items: Sequence[dict[str, Any]], vae=None, captions: bool = True):
    """Processor inputs of clip items (frames, prompt, caption, optional cached ``prediction_targets``)."""
    kwargs: dict[str, Any] = {"captions": [item["caption"] for item in items]} if captions else {}
    if all("prediction_targets" in item for item in items):
        kwargs["prediction_targets"] = [torch.as_tensor(item["prediction_targets"]) for item in items]
    else:
        kwargs.update(return_targets=True, vae=vae)
    return processor(
        text=[item["prompt"] for item in items], videos=[item["frames"] for item in items], **kwargs
    )


@dataclass
class ClipOutputs:
    """What one forward pass says about one clip (CPU float tensors; None where the pass did not run).

    Args:
        targets: ``[T, C, h, w]`` next-frame targets (row t is the target of frame t).
        predictions_fine / predictions_coarse: ``[T, C, h, w]``; row t predicts target t from frames < t.
        attention_fine / attention_coarse: ``[T, P]`` query attention over the patches.
        queries: ``[T, Q]`` queries that read each frame in the fine pass (``q_init`` for frame 1).
        visual_fine / visual_coarse: ``[T, D]`` visual tokens of each pass.
        caption_log_likelihood: summed log-probability of the caption tokens and their count.
    """

    targets: torch.Tensor
    predictions_fine: torch.Tensor | None
    predictions_coarse: torch.Tensor | None
    attention_fine: torch.Tensor | None
    attention_coarse: torch.Tensor | None
    queries: torch.Tensor | None
    visual_fine: torch.Tensor | None
    visual_coarse: torch.Tensor | None
    caption_log_likelihood: tuple[float, int]


def _as_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def _split_frames(value: torch.Tensor | None, lengths: list[int]) -> list[torch.Tensor | None]:
    if value is None:
        return [None] * len(lengths)
    return list(value.detach().float().cpu().split(lengths))


@torch.no_grad()
def forward_clips(
    context: EvalContext,
    inference_mode: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int = 0,
    indices: Sequence[int] | None = None,
) -> Iterator[tuple[dict[str, Any], ClipOutputs]]:
    """Run the model over the clips (all, or those at ``indices``) in batches; yield ``(item, ClipOutputs)``."""
    from tqdm.auto import tqdm

    model, processor = context.model, context.processor
    dataset = context.dataset
    indices = range(len(dataset)) if indices is None else list(indices)
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        collate_fn=_as_list,
        num_workers=num_workers,
    )
    for items in tqdm(loader, desc="clips", unit="batch"):
        batch = model_inputs(processor, items, context.vae).to(model.device)
        output = model(**batch, inference_mode=inference_mode)
        lengths = batch["video_frame_mask"].sum(1).tolist()
        targets = batch["prediction_targets"][batch["video_frame_mask"]]
        log_likelihood, counts = token_log_likelihoods(output.logits, batch["labels"])
        fields = [
            _split_frames(value, lengths)
            for value in (
                targets,
                output.predictions_fine,
                output.predictions_coarse,
                output.attention_fine,
                output.attention_coarse,
                output.queries,
                output.visual_tokens_fine,
                output.visual_tokens_coarse,
            )
        ]
        for row, item in enumerate(items):
            yield (
                item,
                ClipOutputs(
                    *(values[row] for values in fields),
                    caption_log_likelihood=(float(log_likelihood[row]), int(counts[row])),
                ),
            )


# ----------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------


def summarise(values: Sequence[float] | np.ndarray, seed: int = 0) -> dict[str, float] | None:
    """Mean with a 95% bootstrap confidence interval of finite values (None when there are none)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    return bootstrap_ci(finite, seed=seed)


def format_ci(summary: dict[str, float] | None, decimals: int = DECIMALS) -> str:
    """``"0.1234 [0.1000, 0.1400]"`` from a :func:`bootstrap_ci` result ("n/a" for None)."""
    if summary is None:
        return "n/a"
    return (
        f"{summary['estimate']:.{decimals}f} [{summary['low']:.{decimals}f}, {summary['high']:.{decimals}f}]"
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats printed with four decimals."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.{DECIMALS}f}" if math.isfinite(value) else str(value)
        return "n/a" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """Numbers as JSON numbers, non-finite floats as strings ("inf", "nan"), numpy and paths converted."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(
    out_dir: str | os.PathLike,
    report: dict[str, Any],
    markdown: str,
    json_name: str = REPORT_JSON,
    markdown_name: str = REPORT_MARKDOWN,
) -> None:
    """Write ``OUT/report.json`` and ``OUT/report.md`` (or ``json_name`` / ``markdown_name``) atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / json_name, json.dumps(_json_safe(report), indent=2))
    atomic_write_text(out_dir / markdown_name, markdown.rstrip() + "\n")


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def command_line() -> str:
    """The command that is running (for the report's header)."""
    return " ".join([Path(sys.executable).name, *sys.argv])
