"""The offline foveated tasks' hooks (lmms-eval's task format): documents are rows of ``eval.build_mcq``'s
``mcq.jsonl``; prompts, answers and caption scores come from ``eval.mcq`` and ``eval.captioning``."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import numpy as np

from eval.captioning import attribute_hits
from eval.mcq import LETTERS, mcq_prompt
from foveated_vlm.metrics import caption_metrics

ANSWER_WITH_LETTER = "\nAnswer with the option's letter."
LETTER_ANSWER = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])(?:[.):]|$))")
"""A letter answer: ``(B)``, ``B.``, ``B)``, ``B:`` or ``B`` alone (not the article of "A red square")."""


def doc_to_visual(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any]) -> list[str]:
    """The clip's video file (``video`` is relative to the data folder)."""
    return [str(Path(lmms_eval_specific_kwargs["data_dir"]) / doc["video"])]


def mcq_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """The question and its lettered options, as ``eval.mcq`` prompts."""
    return mcq_prompt(doc["question"], doc["options"])


def mcq_generation_doc_to_text(
    doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None
) -> str:
    """The multiple-choice prompt asking for the option's letter."""
    return mcq_doc_to_text(doc) + ANSWER_WITH_LETTER


def mcq_doc_to_choice(doc: dict[str, Any]) -> list[str]:
    return list(doc["options"])


def log_likelihood_of(result: tuple[float, bool] | str) -> float:
    """The summed log-probability of one ``loglikelihood`` result: ``(total, is_greedy)``, or that tuple's text,
    which is what lmms-eval 0.7 hands ``process_results`` (its output unwrapping turns non-text into ``str``)."""
    total, _ = ast.literal_eval(result) if isinstance(result, str) else result
    return float(total)


def mcq_likelihood_results(doc: dict[str, Any], results: list[tuple[float, bool] | str]) -> dict[str, float]:
    """Hit of the option of highest summed log-probability (``eval.mcq``'s ``sum`` prediction)."""
    return {"accuracy": float(int(np.argmax([log_likelihood_of(r) for r in results])) == doc["answer"])}


def parse_choice(text: str, options: list[str]) -> int | None:
    """The option a generated answer picks: its letter, else the one option whose text it names; else None."""
    letter = LETTER_ANSWER.match(text)
    if letter:
        index = LETTERS.index(letter.group(1) or letter.group(2))
        return index if index < len(options) else None
    named = [
        i for i, option in enumerate(options) if re.search(rf"\b{re.escape(option.lower())}\b", text.lower())
    ]
    return named[0] if len(named) == 1 else None


def mcq_generation_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"accuracy": float(parse_choice(results[0], doc["options"]) == doc["answer"])}


def caption_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """The caption pair for the corpus metrics and the hit of every colour, shape and motion it names."""
    pair = {"reference": doc["caption"], "generated": results[0]}
    return {"bleu": pair, "rouge_l": pair, "cider": pair, "attribute_accuracy": attribute_hits(pair)["all"]}


def _corpus_metric(pairs: list[dict[str, str]], name: str) -> float:
    scores, _ = caption_metrics(
        [pair["generated"] for pair in pairs], [[pair["reference"]] for pair in pairs], backend="builtin"
    )
    return scores[name]


def bleu(pairs: list[dict[str, str]]) -> float:
    return _corpus_metric(pairs, "bleu")


def rouge_l(pairs: list[dict[str, str]]) -> float:
    return _corpus_metric(pairs, "rouge_l")


def cider(pairs: list[dict[str, str]]) -> float:
    return _corpus_metric(pairs, "cider")
