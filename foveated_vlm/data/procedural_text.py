"""Vocabulary and text of the procedural moving-shapes data: attribute words, caption, prompt, QA and MCQ
templates, caption building and parsing, QA and MCQ construction. The sampling and rendering live in ``procedural.py``, which
re-exports every name here.

Captions read ``"the {size} {colour} {shape} <motion phrase>."``. Prompts and questions never contain a
shape, size or motion word, so they reveal nothing a caption is scored on (see ``procedural.py``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white")
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
STATIC = "static"
BOUNCING = "bouncing"
LINEAR_MOTIONS: dict[str, tuple[int, int]] = {
    # motion -> (axis of motion: 0 = x, 1 = y; sign of the velocity in image coordinates)
    "left to right": (0, 1),
    "right to left": (0, -1),
    "top to bottom": (1, 1),
    "bottom to top": (1, -1),
}
MOTIONS: tuple[str, ...] = (*LINEAR_MOTIONS, BOUNCING, STATIC)

SCORED_ATTRIBUTES: tuple[str, ...] = ("shape", "size", "motion")
"""Attributes a named clip's caption is scored on (its prompt gives the colour)."""
GENERIC_SCORED_ATTRIBUTES: tuple[str, ...] = ("colour", *SCORED_ATTRIBUTES)
"""Attributes a generic clip's caption is scored on."""

# ----------------------------------------------------------------------------------------------------
# Text templates. No prompt or question may contain a shape, size or motion word (tests/ check it).
# ----------------------------------------------------------------------------------------------------

CAPTION_TEMPLATES: dict[str, str] = {
    "left to right": "the {size} {colour} {shape} moves from left to right.",
    "right to left": "the {size} {colour} {shape} moves from right to left.",
    "top to bottom": "the {size} {colour} {shape} moves from top to bottom.",
    "bottom to top": "the {size} {colour} {shape} moves from bottom to top.",
    BOUNCING: "the {size} {colour} {shape} bounces around.",
    STATIC: "the {size} {colour} {shape} stays still.",
}
GENERIC_PROMPTS: tuple[str, ...] = (
    "What happens in the video?",
    "Describe what happens in the video.",
    "What is going on in this clip?",
    "Describe the video.",
    "What do you see in the video?",
)
NAMED_PROMPTS: tuple[str, ...] = (
    "What does the {colour} object do?",
    "Describe the {colour} object.",
    "Tell me about the {colour} object.",
    "What is the {colour} object doing?",
)
GENERIC_SUBJECT = "the object"
NAMED_SUBJECT = "the {colour} object"
QA_QUESTIONS: dict[str, str] = {
    "colour": "what colour is {subject}?",
    "shape": "what shape is {subject}?",
    "size": "is {subject} small or large?",
    "where": "where does {subject} go?",
    "moves": "does {subject} move?",
    "count": "how many objects are there?",
    "count_moving": "how many objects move?",
}
"""Short-answer question templates; ``{subject}`` is ``GENERIC_SUBJECT`` or the filled ``NAMED_SUBJECT``."""
GENERIC_QA: tuple[str, ...] = ("colour", "shape", "size", "where", "moves")
NAMED_QA: tuple[str, ...] = ("shape", "size", "where", "moves", "count", "count_moving")
"""Generic clips have one object, so their counts would be constant: only named clips count."""
WHERE_ANSWERS: dict[str, str] = {
    "left to right": "to the right",
    "right to left": "to the left",
    "top to bottom": "down",
    "bottom to top": "up",
    BOUNCING: "it bounces around",
    STATIC: "nowhere, it stays still",
}
MOTION_OPTIONS: dict[str, str] = {
    "left to right": "it moves from left to right",
    "right to left": "it moves from right to left",
    "top to bottom": "it moves from top to bottom",
    "bottom to top": "it moves from bottom to top",
    BOUNCING: "it bounces around",
    STATIC: "it stays still",
}
NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
)
MCQ_QUESTIONS: dict[str, str] = {
    "colour": "What colour is {subject}?",
    "shape": "What shape is {subject}?",
    "size": "Is {subject} small or large?",
    "motion": "What does {subject} do?",
}
MCQ_NUM_OPTIONS = 4
"""Options per multiple-choice question, or fewer when the attribute has fewer values (size: 2)."""
MCQ_GENERIC_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "motion")
MCQ_NAMED_ATTRIBUTES: tuple[str, ...] = ("shape", "size", "motion")
MCQ_VOCABULARY: dict[str, tuple[str, ...]] = {
    "colour": COLOURS,
    "shape": SHAPES,
    "size": SIZES,
    "motion": tuple(MOTION_OPTIONS[m] for m in MOTIONS),
}

_MOTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    *((motion, re.compile(rf"\b{motion}\b")) for motion in LINEAR_MOTIONS),
    (BOUNCING, re.compile(r"\bbounc(?:e|es|ed|ing)\b")),
    (STATIC, re.compile(r"\b(?:(?:stays|stands|is|remains|keeps) still|static|stationary|does not move)\b")),
)


def _check_vocabulary(name: str, values: tuple[str, ...], known: tuple[str, ...]) -> None:
    """Raise ValueError unless ``values`` is a non-empty tuple of distinct known words."""
    if not isinstance(values, tuple) or not values or len(set(values)) != len(values):
        raise ValueError(f"{name} must be a non-empty tuple of distinct values, got {values!r}")
    unknown = [value for value in values if value not in known]
    if unknown:
        raise ValueError(f"{name} contains unknown values {unknown}; known: {list(known)}")


# ----------------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------------


def caption_for(colour: str, shape: str, motion: str, size: str) -> str:
    """The exact caption of a target, e.g. ``caption_for("red", "square", "left to right", "small")`` ->
    ``"the small red square moves from left to right."``. Raises ValueError for unknown attributes."""
    _check_vocabulary("colour", (colour,), COLOURS)
    _check_vocabulary("shape", (shape,), SHAPES)
    _check_vocabulary("motion", (motion,), MOTIONS)
    _check_vocabulary("size", (size,), SIZES)
    return CAPTION_TEMPLATES[motion].format(size=size, colour=colour, shape=shape)


def normalize_text(text: str) -> str:
    """Lower-case, turn every run of non-letters into one space, strip."""
    return re.sub(r"[^a-z]+", " ", text.lower()).strip()


def parse_caption(text: str) -> dict[str, str | None]:
    """Recover ``{"colour", "shape", "size", "motion"}`` from a caption (or prompt, or generated text).

    Tolerates case, extra whitespace and punctuation ("The  SMALL red square moves from left-to-right!!").
    Each field is the first value mentioned in the text, or None when none is.
    """
    normalized = f" {normalize_text(text)} "
    words = normalized.split()
    colour = next((word for word in words if word in COLOURS), None)
    shape = next((word for word in words if word in SHAPES), None)
    size = next((word for word in words if word in SIZES), None)
    hits = [
        (match.start(), motion)
        for motion, pattern in _MOTION_PATTERNS
        if (match := pattern.search(normalized)) is not None
    ]
    motion = min(hits)[1] if hits else None
    return {"colour": colour, "shape": shape, "size": size, "motion": motion}


def scored_attributes(named: bool) -> tuple[str, ...]:
    """Attributes a clip's caption is scored on: shape, size, motion (named: the prompt gives the colour),
    plus colour for generic clips. "All-three accuracy" on named clips = all of ``SCORED_ATTRIBUTES``."""
    return SCORED_ATTRIBUTES if named else GENERIC_SCORED_ATTRIBUTES


def subject_for(reference: str | None) -> str:
    """How questions refer to the target: ``"the red object"`` (named, by colour) or ``"the object"``."""
    return GENERIC_SUBJECT if reference is None else NAMED_SUBJECT.format(colour=reference)


def answer_texts() -> tuple[str, ...]:
    """Every short QA answer and MCQ option the data can produce."""
    values = [*COLOURS, *SHAPES, *SIZES, *WHERE_ANSWERS.values(), *MOTION_OPTIONS.values()]
    return tuple(dict.fromkeys([*values, "yes", "no", *NUMBER_WORDS]))


def text_inventory() -> tuple[str, ...]:
    """Every caption, prompt, QA question / answer and MCQ question / option the data can produce, once
    each (for tokenizer corpora: every word the data can emit occurs here, in every position it takes)."""
    captions = [caption_for(*values) for values in itertools.product(COLOURS, SHAPES, MOTIONS, SIZES)]
    named = [template.format(colour=colour) for template in NAMED_PROMPTS for colour in COLOURS]
    subjects = [subject_for(None), *(subject_for(colour) for colour in COLOURS)]
    questions = [
        q.format(subject=s) for q in (*QA_QUESTIONS.values(), *MCQ_QUESTIONS.values()) for s in subjects
    ]
    return tuple(dict.fromkeys([*captions, *GENERIC_PROMPTS, *named, *questions, *answer_texts()]))


def question_answers(
    target: Mapping[str, str], named: bool, num_objects: int, num_moving: int
) -> tuple[dict[str, str], ...]:
    """Short-answer questions about a clip, each {"question", "answer"} (lower case), from the target's
    colour / shape / size / motion and the object counts. The question text depends only on the kind and
    the named colour, never on an answer."""
    subject = subject_for(target["colour"] if named else None)
    answers = {
        **{key: target[key] for key in ("colour", "shape", "size")},
        "where": WHERE_ANSWERS[target["motion"]],
        "moves": "no" if target["motion"] == STATIC else "yes",
        "count": NUMBER_WORDS[num_objects],
        "count_moving": NUMBER_WORDS[num_moving],
    }
    keys = NAMED_QA if named else GENERIC_QA
    return tuple(
        {"question": QA_QUESTIONS[key].format(subject=subject), "answer": answers[key]} for key in keys
    )


def multiple_choice(rng: np.random.Generator, named: bool, target: Mapping[str, str]) -> dict[str, Any]:
    """One MVBench-style question: {"question", "options" (distinct), "answer_index", "attribute"}.

    Named clips ask about the named object's shape, size or motion; generic clips about the object's
    colour, shape or motion. Options: the answer plus ``MCQ_NUM_OPTIONS - 1`` other values of the attribute
    (all values when fewer: size has 2), in random order. The question text never holds an answer.
    """
    attributes = MCQ_NAMED_ATTRIBUTES if named else MCQ_GENERIC_ATTRIBUTES
    attribute = attributes[int(rng.integers(len(attributes)))]
    question = MCQ_QUESTIONS[attribute].format(subject=subject_for(target["colour"] if named else None))
    vocabulary = MCQ_VOCABULARY[attribute]
    correct = MOTION_OPTIONS[target["motion"]] if attribute == "motion" else target[attribute]
    wrong = [value for value in vocabulary if value != correct]
    num_options = min(MCQ_NUM_OPTIONS, len(vocabulary))
    options = [correct, *(wrong[i] for i in rng.choice(len(wrong), size=num_options - 1, replace=False))]
    order = rng.permutation(num_options)
    return {
        "question": question,
        "options": [options[i] for i in order],
        "answer_index": int(np.flatnonzero(order == 0)[0]),
        "attribute": attribute,
    }
