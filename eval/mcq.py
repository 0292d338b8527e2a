"""Multiple-choice video QA (MVBench / Video-MME layout) scored by answer log-likelihood in each inference mode.

    python -m eval.mcq --run_dir RUN --data MCQ/mcq.jsonl --out OUT [--modes coarse two_pass streaming]

The data set is read with ``datasets.load_dataset``: a local JSON / JSONL / CSV / parquet file, a local data
folder, or a Hub repository id (``--data_split``, ``--data_config``). Columns (renamable by flags): question,
options (a list; "A. text" labels are stripped), answer (an index, a letter such as "B" / "(B)", or the option
text), and either video (a file path, relative to ``--video_root``, default the data file's folder; ``.npy``
frames or any video PyAV decodes) or frames (a ``[T, H, W, 3]`` array or a ``.npy`` path).

Scoring: the prompt is the question followed by the lettered options (``--no_options``: the question alone)
and the video; each option's text plus the end-of-turn token is scored as the assistant's answer. The video
and prompt are read once per question (the KV cache is shared by the options); the predicted option has the
highest **mean** token log-probability (length-normalised, since options differ in length); accuracy of the
summed log-probability is reported too. Modes: ``coarse`` (static query only), ``two_pass`` (coarse plans,
fine reads) and ``streaming`` (``model.stream``: frames fed chunk by chunk, then the answer scored from the
fine stream's cache). Writes ``OUT/report.md``, ``OUT/report.json`` and ``OUT/predictions.jsonl``. The scorer,
:func:`option_scores`, is also the lmms-eval model's (``eval/lmms_model.py``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from configuration_foveated import INFERENCE_MODES
from eval.common import (
    DEFAULT_BATCH_SIZE,
    command_line,
    format_ci,
    load_model,
    markdown_table,
    model_path_of,
    script_main,
    script_parser,
    summarise,
    write_report,
)
from foveated_vlm.files import atomic_write_text
from foveated_vlm.metrics import token_log_likelihoods
from processing_foveated import END_OF_TURN, IGNORE_INDEX
from video_foveated import load_video, sample_frame_indices

STREAMING = "streaming"
MODES = (*INFERENCE_MODES, STREAMING)
"""Readings scored: the model's inference modes (``model(...)``) and the stream (``model.stream``)."""
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LETTER_LABEL = re.compile(r"^\(?([A-Z])[\.\):]\s*")
GROUP_COLUMNS = ("attribute", "task_type", "task", "question_type", "domain")
DATA_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
PREDICTIONS_NAME = "predictions.jsonl"
DEFAULT_NUM_FRAMES = 16


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------


def load_mcq(data: str, split: str = "train", name: str | None = None):
    """A ``datasets.Dataset`` of questions from a local file, a local folder or a Hub repository id."""
    import datasets

    path = Path(data)
    if path.is_file():
        builder = DATA_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"unsupported MCQ file type {path.suffix!r}; use one of {sorted(DATA_BUILDERS)}")
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    return datasets.load_dataset(str(data), name=name, split=split)


def strip_label(option: str) -> str:
    """``"B. a cat"`` / ``"(B) a cat"`` -> ``"a cat"``; other text unchanged."""
    return LETTER_LABEL.sub("", str(option).strip(), count=1)


def answer_index(answer: Any, options: list[str]) -> int:
    """The correct option's index from an index, a letter ("B", "(B)", "B."), or the option text."""
    if isinstance(answer, (int, np.integer)) and not isinstance(answer, bool):
        index = int(answer)
    elif isinstance(answer, str) and answer.strip().isdigit():
        index = int(answer.strip())
    elif isinstance(answer, str) and strip_label(answer) in options:
        index = options.index(strip_label(answer))
    elif isinstance(answer, str) and re.fullmatch(r"\(?([A-Z])[\.\):]?", answer.strip()):
        index = LETTERS.index(re.sub(r"[^A-Z]", "", answer.strip()))
    else:
        raise ValueError(f"cannot read answer {answer!r} for options {options}")
    if not 0 <= index < len(options):
        raise ValueError(f"answer {answer!r} is out of range for {len(options)} options")
    return index


def mcq_prompt(question: str, options: list[str], with_options: bool = True) -> str:
    """The question, then (by default) the options lettered ``(A) ...`` one per line."""
    if not with_options:
        return question
    listed = "\n".join(f"({LETTERS[i]}) {option}" for i, option in enumerate(options))
    return f"{question}\nOptions:\n{listed}"


def subsample(frames: np.ndarray, num_frames: int | None) -> np.ndarray:
    """``num_frames`` frames sampled uniformly (all of them when None)."""
    return frames[sample_frame_indices(np.arange(len(frames), dtype=np.float64), num_frames, None)]


def frame_source(row: dict[str, Any], args: argparse.Namespace, video_root: Path) -> Path | np.ndarray:
    """Where a question's frames come from: a file path (relative ones start at ``video_root``) or an array."""
    source = row.get(args.frames_column)
    if source is None:
        video = row.get(args.video_column)
        if video is None:
            raise ValueError(
                f"row {row.get('id')!r} has neither {args.video_column!r} nor {args.frames_column!r}"
            )
        return video_root / f"{video}{args.video_extension}"
    if isinstance(source, str):
        return video_root / source
    return np.asarray(source, dtype=np.uint8)


def read_frames(row: dict[str, Any], args: argparse.Namespace, video_root: Path) -> np.ndarray:
    """The question's frames, uint8 ``[T, H, W, 3]`` (``--num_frames`` of them, or ``--fps`` for video files)."""
    source = frame_source(row, args, video_root)
    if isinstance(source, Path) and source.suffix != ".npy":
        return load_video(source, num_frames=args.num_frames if args.fps is None else None, fps=args.fps)
    if isinstance(source, Path):
        if not source.is_file():
            raise ValueError(f"frames file not found: {source}")
        source = np.load(source)
    return subsample(source, args.num_frames)


def prepare_question(row: dict[str, Any], args: argparse.Namespace, video_root: Path) -> dict[str, Any]:
    """A row -> ``{"prompt", "options", "answer", "frames", "group", "id"}`` (options without letter labels)."""
    options = [strip_label(option) for option in row[args.options_column]]
    if len(options) < 2:
        raise ValueError(f"row {row.get('id')!r} has {len(options)} options; need at least 2")
    group_column = args.group_column or next((c for c in GROUP_COLUMNS if c in row), None)
    return {
        "id": row.get("id"),
        "prompt": mcq_prompt(row[args.question_column], options, args.with_options),
        "options": options,
        "answer": answer_index(row[args.answer_column], options),
        "frames": read_frames(row, args, video_root),
        "group": row.get(group_column) if group_column else None,
    }


# ----------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------


class OptionScore(NamedTuple):
    """One option's score: summed log-probability of its tokens (text + end of turn), their count, and whether
    greedy decoding would write exactly them."""

    total: float
    count: int
    greedy: bool

    @property
    def mean(self) -> float:
        """Mean token log-probability (length-normalised)."""
        return self.total / max(self.count, 1)


@torch.no_grad()
def read_prefix(model, processor, prompts: list[str], videos: list, mode: str, **sampling):
    """Read prompt + video + the tokens that open the answer, in one inference mode.

    Args:
        videos: one video per prompt, anything the processor reads (``[T, H, W, 3]`` arrays, file paths, ...).
        sampling: ``num_frames`` / ``fps`` for the processor (none: its own sampling of encoded videos).

    Returns:
        ``(cache, attention_mask [B, L0], last_logits [B, V])``: the LLM cache of the reading stream, the mask of
        everything it holds, and the logits that predict the answer's first token.
    """
    inputs = processor(text=prompts, videos=videos, **sampling).to(model.device)
    if mode != STREAMING:
        output = model(**inputs, use_cache=True, logits_to_keep=1, inference_mode=mode)
        return output.cache, inputs["attention_mask"], output.logits[:, -1]
    try:
        from streaming_foveated import stream_prompt_inputs
    except ImportError as error:
        raise ValueError("streaming needs streaming_foveated.py next to modeling_foveated.py") from error
    stream = model.stream(**stream_prompt_inputs(processor, prompts).to(model.device))
    stream.extend(inputs["pixel_values_videos"], inputs["video_frame_mask"])
    suffix = stream.suffix_ids.expand(len(prompts), -1)
    mask = torch.cat([stream.attention_mask, torch.ones_like(suffix)], dim=1)
    cache = stream.caches[stream.reading_mode]
    output = model(input_ids=suffix, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
    return output.cache, mask, output.logits[:, -1]


@torch.no_grad()
def score_options(
    model, tokenizer, cache, prefix_mask: torch.Tensor, last_logits: torch.Tensor, options: list[list[str]]
) -> list[list[OptionScore]]:
    """The :class:`OptionScore` of each option (text + end of turn) after each prefix.

    The prefix cache row of question b is repeated once per option of b (``cache`` is consumed).
    """
    device = prefix_mask.device
    rows = torch.tensor([b for b, choices in enumerate(options) for _ in choices], device=device)
    answers = [
        tokenizer(option + END_OF_TURN, add_special_tokens=False)["input_ids"]
        for choices in options
        for option in choices
    ]
    longest = max(len(ids) for ids in answers)
    input_ids = torch.full((len(answers), longest), tokenizer.pad_token_id, dtype=torch.long, device=device)
    labels = torch.full((len(answers), longest + 1), IGNORE_INDEX, dtype=torch.long, device=device)
    for row, ids in enumerate(answers):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, 1 : len(ids) + 1] = torch.tensor(ids)
    answer_mask = (labels[:, 1:] != IGNORE_INDEX).long()
    cache.batch_select_indices(rows)
    output = model(
        input_ids=input_ids,
        attention_mask=torch.cat([prefix_mask[rows], answer_mask], dim=1),
        cache=cache,
        use_cache=True,
    )
    logits = torch.cat([last_logits[rows].unsqueeze(1), output.logits.to(last_logits.dtype)], dim=1)
    totals, counts = token_log_likelihoods(logits, labels)  # [N], [N]
    scored = labels[:, 1:] != IGNORE_INDEX  # [N, longest]
    greedy = ((logits[:, :-1].argmax(-1) == labels[:, 1:]) | ~scored).all(1)  # [N]
    flat = [OptionScore(*row) for row in zip(totals.tolist(), counts.tolist(), greedy.tolist())]
    sizes = [len(choices) for choices in options]
    return [flat[sum(sizes[:b]) : sum(sizes[: b + 1])] for b in range(len(options))]


def option_scores(
    model, processor, prompts: list[str], videos: list, options: list[list[str]], mode: str, **sampling
) -> list[list[OptionScore]]:
    """The one MCQ likelihood scorer (``eval.mcq`` and the lmms-eval model both call it): the
    :class:`OptionScore` of every option of every question, each prompt + video read once in ``mode``.

    Args:
        prompts, videos, options: one entry per question (videos as :func:`read_prefix` takes them).
        mode: one of :data:`MODES`.
        sampling: ``num_frames`` / ``fps`` for the processor.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    prefix = read_prefix(model, processor, prompts, videos, mode, **sampling)
    return score_options(model, processor.tokenizer, *prefix, options)


def choose(scores: list[OptionScore]) -> dict[str, int]:
    """Predicted option by mean and by summed log-probability."""
    return {
        "mean": int(np.argmax([score.mean for score in scores])),
        "sum": int(np.argmax([score.total for score in scores])),
    }


def evaluate_mode(model, processor, questions: list[dict[str, Any]], mode: str, batch_size: int):
    """Predictions of every question in one mode: ``[{"id", "answer", "mean", "sum", "scores", "group"}]``."""
    from tqdm.auto import tqdm

    predictions = []
    for start in tqdm(range(0, len(questions), batch_size), desc=f"mcq {mode}", unit="batch"):
        batch = questions[start : start + batch_size]
        scores = option_scores(
            model,
            processor,
            [q["prompt"] for q in batch],
            [q["frames"] for q in batch],
            [q["options"] for q in batch],
            mode,
        )
        for question, question_scores in zip(batch, scores):
            predictions.append(
                {
                    "id": question["id"],
                    "answer": question["answer"],
                    "group": question["group"],
                    "num_options": len(question["options"]),
                    **choose(question_scores),
                    "scores": [score.mean for score in question_scores],
                    "totals": [score.total for score in question_scores],
                }
            )
    return predictions


def summarise_mode(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (mean and sum scoring) with CI, chance level, and accuracy per group."""
    hits = np.array([p["mean"] == p["answer"] for p in predictions], dtype=np.float64)
    groups: dict[str, list[float]] = {}
    for prediction, hit in zip(predictions, hits):
        if prediction["group"] is not None:
            groups.setdefault(str(prediction["group"]), []).append(hit)
    return {
        "accuracy": summarise(hits),
        "accuracy_sum": float(np.mean([p["sum"] == p["answer"] for p in predictions])),
        "chance": float(np.mean([1 / p["num_options"] for p in predictions])),
        "groups": {group: summarise(values) for group, values in sorted(groups.items())},
    }


def format_markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    modes = report["modes"]
    rows = [
        [
            mode,
            format_ci(figures.get("accuracy"), 3),
            f"{figures['accuracy_sum']:.3f}",
            f"{figures['chance']:.3f}",
        ]
        for mode, figures in modes.items()
        if "accuracy" in figures
    ]
    groups = sorted({group for figures in modes.values() for group in figures.get("groups", {})})
    lines = [
        "# Multiple-choice video QA",
        "",
        f"`{report['command']}`",
        "",
        f"Model `{report['model']}`, {report['num_questions']} questions from `{report['data']}`. Options scored by "
        "mean token log-probability of option text + end of turn (accuracy by summed log-probability beside it); "
        "accuracy with 95% bootstrap CI.",
        "",
        markdown_table(["mode", "accuracy (mean log-prob)", "accuracy (sum)", "chance"], rows),
    ]
    lines += [
        f"- {mode}: skipped ({figures['skipped']})" for mode, figures in modes.items() if "skipped" in figures
    ]
    if groups:
        lines += [
            "",
            "## Per group",
            "",
            markdown_table(
                ["group", *(mode for mode in modes if "groups" in modes[mode])],
                [
                    [
                        group,
                        *(format_ci(modes[m]["groups"].get(group), 3) for m in modes if "groups" in modes[m]),
                    ]
                    for group in groups
                ],
            ),
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Score every mode, write the reports, return the report."""
    model_path = model_path_of(args)
    model, processor = load_model(model_path, args.device, args.dtype)
    dataset = load_mcq(args.data, args.data_split, args.data_config)
    if args.limit is not None:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    data_path = Path(args.data)
    video_root = (
        Path(args.video_root) if args.video_root else (data_path.parent if data_path.is_file() else data_path)
    )
    questions = [prepare_question(row, args, video_root) for row in dataset]
    if not questions:
        raise ValueError(f"{args.data} holds no questions")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": command_line(),
        "model": str(model_path),
        "data": args.data,
        "num_questions": len(questions),
        "with_options": args.with_options,
        "modes": {},
    }
    lines = []
    for mode in args.modes:
        if mode != "coarse" and model.config.foveation_mode == "dense":
            report["modes"][mode] = {"skipped": "a dense model has one reading only: use coarse"}
            continue
        predictions = evaluate_mode(model, processor, questions, mode, args.batch_size)
        report["modes"][mode] = summarise_mode(predictions)
        lines += [json.dumps({"mode": mode, **prediction}) + "\n" for prediction in predictions]
    atomic_write_text(out_dir / PREDICTIONS_NAME, "".join(lines))
    write_report(out_dir, report, format_markdown(report))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__, data=False)
    parser.add_argument(
        "--data", required=True, help="MCQ file (json/jsonl/csv/parquet), data folder or Hub id"
    )
    parser.add_argument("--data_split", default="test", help="split of a folder or Hub data set")
    parser.add_argument("--data_config", help="configuration name of a Hub data set (e.g. an MVBench task)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="questions per forward pass"
    )
    parser.add_argument("--num_frames", type=int, default=DEFAULT_NUM_FRAMES, help="frames sampled per video")
    parser.add_argument("--fps", type=float, help="sample video files at this rate instead of --num_frames")
    parser.add_argument("--limit", type=int, help="score only the first N questions")
    parser.add_argument(
        "--no_options",
        dest="with_options",
        action="store_false",
        help="prompt with the question alone (not the lettered options)",
    )
    parser.add_argument(
        "--video_root", help="folder that relative video paths start from (default: the data's)"
    )
    parser.add_argument("--video_extension", default="", help="appended to the video column (e.g. .mp4)")
    for column in ("question", "options", "answer", "video", "frames"):
        parser.add_argument(f"--{column}_column", default=column)
    parser.add_argument(
        "--group_column", help=f"accuracy per value of this column (default: first of {GROUP_COLUMNS})"
    )
    return parser


main = script_main(run, build_parser, format_markdown)

if __name__ == "__main__":
    main()
