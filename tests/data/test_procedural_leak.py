"""The leak tests: no attribute a caption is scored on can be predicted from the prompt alone.

(a) exact: from the sampler's own enumerated law (``text_distribution``), the law of the scored attributes
    given the prompt (named colour and template) equals its marginal, in every split;
(b) empirical: the best prompt-only predictor (majority answer per exact prompt string) fitted on sampled
    training clips scores no better on validation clips than the prompt-free majority baseline;
(c) the clip kind (named or generic) is as frequent for static targets as for moving ones;
(d) no prompt or question contains a shape, size or motion word, and only named ones a colour.

Each of them fails when the old behaviour is put back (static targets always named; prompts naming the
shape as well as the colour).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from foveated_vlm.data.procedural import (
    COLOURS,
    GENERIC_PROMPTS,
    GENERIC_SCORED_ATTRIBUTES,
    MCQ_QUESTIONS,
    MOTIONS,
    NAMED_PROMPTS,
    QA_QUESTIONS,
    SHAPES,
    SIZES,
    STATIC,
    ProceduralVideoConfig,
    attribute_marginals,
    parse_caption,
    sample_text,
    scored_attributes,
    subject_for,
    text_distribution,
)

CONFIGS = {
    "default": ProceduralVideoConfig(),
    "few_named": ProceduralVideoConfig(named_object_fraction=0.3, seed=3),
    "small_vocabulary": ProceduralVideoConfig(
        colours=("red", "blue", "green", "white"),
        shapes=("square", "circle", "triangle"),
        motions=("left to right", "top to bottom", "bouncing", STATIC),
        num_other_moving=(1, 1),
        num_distractors=(0, 2),
        heldout_fraction=0.3,
        seed=11,
    ),
}
SPLITS = ("train", "validation", "heldout")
TOLERANCE = 1e-9
NUM_SAMPLES = 12_000
MAX_GAIN = 0.02
SHAPE_OR_SIZE_WORDS = {*SHAPES, *SIZES, "big", "tiny", "little", "huge"}
MOTION_STEMS = (
    "mov",
    "motion",
    "still",
    "static",
    "stationar",
    "bounc",
    "left",
    "right",
    "top",
    "bottom",
    "up",
    "down",
    "direction",
    "speed",
    "fast",
    "slow",
)


def _law(outcomes, attributes: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Normalised law of the values of ``attributes`` over ``[(probability, draw)]``."""
    law: dict[tuple[str, ...], float] = defaultdict(float)
    total = sum(p for p, _ in outcomes)
    for probability, draw in outcomes:
        law[tuple(getattr(draw, key) for key in attributes)] += probability / total
    return dict(law)


def _assert_same_law(law: dict, reference: dict, context: str) -> None:
    assert law.keys() == reference.keys(), context
    for key, value in reference.items():
        assert abs(law[key] - value) < TOLERANCE, (context, key, law[key], value)


# ----------------------------------------------------------------------------------------------------
# (a) exact
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("split", SPLITS)
def test_exact_law_of_scored_attributes_given_the_prompt_is_the_marginal(name: str, split: str) -> None:
    config = CONFIGS[name]
    outcomes = text_distribution(config, split)
    assert abs(sum(p for p, _ in outcomes) - 1.0) < TOLERANCE
    by_prompt = defaultdict(list)
    for probability, draw in outcomes:
        by_prompt[draw.prompt].append((probability, draw))
    # the prompt string is the (kind, template, named colour) triple: one string per combination
    assert len(by_prompt) == len(GENERIC_PROMPTS) + len(NAMED_PROMPTS) * len(config.colours)
    for prompt, given in by_prompt.items():
        attributes = scored_attributes(given[0][1].named)
        marginal = _law(outcomes, attributes)  # over the whole split, both kinds
        _assert_same_law(_law(given, attributes), marginal, f"{name}/{split}: {prompt!r}")
    for colour in config.colours:  # every colour has the same law of (shape, size, motion), in each kind
        for named in (True, False):
            given = [(p, d) for p, d in outcomes if d.colour == colour and d.named == named]
            _assert_same_law(
                _law(given, ("shape", "size", "motion")),
                _law(outcomes, ("shape", "size", "motion")),
                f"{name}/{split}: colour {colour}, named {named}",
            )


@pytest.mark.parametrize("name", CONFIGS)
def test_exact_kind_rate_is_the_same_for_every_target_motion(name: str) -> None:
    config = CONFIGS[name]
    for split in SPLITS:
        outcomes = text_distribution(config, split)
        for motion in {d.motion for _, d in outcomes}:
            given = [(p, d) for p, d in outcomes if d.motion == motion]
            rate = sum(p for p, d in given if d.named) / sum(p for p, _ in given)
            assert abs(rate - config.named_object_fraction) < TOLERANCE, (split, motion, rate)


def test_enumerated_law_is_the_law_of_the_sampler() -> None:
    """``text_distribution`` runs the sampler's code; sampled clips follow it (within 5 standard errors)."""
    config = CONFIGS["default"]
    outcomes = text_distribution(config, "train")
    exact = {(d.colour, d.shape, d.size, d.motion, d.named, d.prompt): p for p, d in outcomes}
    samples = [sample_text(config, "train", i) for i in range(4000)]
    keys = [(t.colour, t.shape, t.size, t.motion, t.named, t.prompt) for t in samples]
    assert set(keys) <= exact.keys()
    for position in range(6):
        law = defaultdict(float)
        for key, probability in exact.items():
            law[key[position]] += probability
        counts = Counter(key[position] for key in keys)
        for value, probability in law.items():
            error = np.sqrt(probability * (1 - probability) / len(keys))
            assert abs(counts[value] / len(keys) - probability) < 5 * error + 1e-12, (position, value)
    marginals = attribute_marginals(config, "train")
    assert abs(sum(marginals["motion"].values()) - 1.0) < TOLERANCE
    assert set(marginals["colour"]) == set(COLOURS) and set(marginals["motion"]) == set(MOTIONS)


# ----------------------------------------------------------------------------------------------------
# (b) empirical: the best prompt-only predictor, fitted on train, scored on validation
# ----------------------------------------------------------------------------------------------------


def _majority(values: list[str]) -> str:
    return Counter(values).most_common(1)[0][0]


@pytest.mark.parametrize("name", ["default", "small_vocabulary"])
def test_prompt_only_predictor_does_not_beat_the_majority_baseline(name: str) -> None:
    config = CONFIGS[name]
    train = [sample_text(config, "train", i) for i in range(NUM_SAMPLES)]
    validation = [sample_text(config, "validation", i) for i in range(NUM_SAMPLES)]
    for attribute in GENERIC_SCORED_ATTRIBUTES:
        fit = [t for t in train if attribute in t.scored_attributes]
        test = [t for t in validation if attribute in t.scored_attributes]
        baseline = _majority([getattr(t, attribute) for t in fit])
        by_prompt = defaultdict(list)
        for t in fit:
            by_prompt[t.prompt].append(getattr(t, attribute))
        predictor = {prompt: _majority(values) for prompt, values in by_prompt.items()}
        truth = np.array([getattr(t, attribute) for t in test])
        baseline_accuracy = float(np.mean(truth == baseline))
        prompt_accuracy = float(np.mean(truth == np.array([predictor.get(t.prompt, baseline) for t in test])))
        assert prompt_accuracy <= baseline_accuracy + MAX_GAIN, (
            attribute,
            prompt_accuracy,
            baseline_accuracy,
        )


# ----------------------------------------------------------------------------------------------------
# (c) empirical: kind rate for static and moving targets
# ----------------------------------------------------------------------------------------------------


def test_kind_rate_is_the_same_for_static_and_moving_targets() -> None:
    config = CONFIGS["default"]
    texts = [sample_text(config, "train", i) for i in range(NUM_SAMPLES)]
    static = np.array([t.named for t in texts if t.motion == STATIC])
    moving = np.array([t.named for t in texts if t.motion != STATIC])
    rate = float(np.mean([t.named for t in texts]))
    error = np.sqrt(rate * (1 - rate) * (1 / len(static) + 1 / len(moving)))
    assert abs(static.mean() - moving.mean()) < 4 * error, (static.mean(), moving.mean())
    assert len(static) > 500


# ----------------------------------------------------------------------------------------------------
# (d) no prompt or question holds a scored word
# ----------------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _assert_no_shape_size_or_motion_word(text: str, motion_stems: tuple[str, ...] = MOTION_STEMS) -> None:
    """No shape or motion is named (parsed, or by word stem); size words are checked by the callers."""
    parsed = parse_caption(text)
    assert parsed["shape"] is None and parsed["motion"] is None, text
    words = _words(text)
    assert not (SHAPE_OR_SIZE_WORDS - set(SIZES)) & set(words), text
    assert not [w for w in words if w.startswith(motion_stems)], text


@pytest.mark.parametrize("name", CONFIGS)
def test_no_prompt_holds_a_shape_size_or_motion_word(name: str) -> None:
    config = CONFIGS[name]
    for split in SPLITS:
        for _, draw in text_distribution(config, split):  # every prompt the sampler can produce
            _assert_no_shape_size_or_motion_word(draw.prompt)
            parsed = parse_caption(draw.prompt)
            assert parsed["size"] is None, draw.prompt
            assert parsed["colour"] == (draw.colour if draw.named else None), draw.prompt
            colours = [w for w in _words(draw.prompt) if w in COLOURS]
            assert colours == ([draw.colour] if draw.named else []), draw.prompt


def test_no_question_holds_an_answer() -> None:
    """QA and MCQ questions: no shape or motion word (a yes / no "does it move?" is allowed), size words
    only as the whole "small or large" choice, and the named colour only in a named question."""
    stems = tuple(stem for stem in MOTION_STEMS if stem != "mov")
    for reference in (None, *COLOURS):
        for template in (*QA_QUESTIONS.values(), *MCQ_QUESTIONS.values()):
            question = template.format(subject=subject_for(reference))
            _assert_no_shape_size_or_motion_word(question, stems)
            assert {w for w in _words(question) if w in SIZES} in (set(), set(SIZES)), question
            expected = [reference] if reference is not None and "{subject}" in template else []
            assert [w for w in _words(question) if w in COLOURS] == expected, question
