"""Procedural video clips of moving shapes: the project's built-in default data and foveation test bed.

Every clip shows flat-coloured shapes (square, circle, triangle, diamond) on a dark, mildly textured
background. One of them, the *target*, is described by an exact caption built from fixed templates, e.g.
``"the small red square moves from left to right."`` (size, colour, shape, motion). The per-frame box of
every object is known exactly, so evaluation can check whether the gaze lands on the object the text is
about.

Clip ``i`` of split ``s`` is a pure function of ``(config, s, i)``: its random streams are the children of
``numpy.random.SeedSequence([config.seed, split_id, i])`` (one for text, one for layout). Nothing is
stored, so a split can have any size.

Two kinds of clip, chosen by a coin flip (``named_object_fraction``) independent of every attribute:

* *generic*: the target is the only object (it may be static); the prompt is generic ("What happens in
  the video?") and the caption describes the target. Scored: colour, shape, size and motion.
* *named*: the target plus ``num_other_moving`` moving objects and ``num_distractors`` static ones, all
  of distinct colours; the prompt names the target by its colour alone ("What does the red object
  do?"). Scored: shape, size and motion (``SCORED_ATTRIBUTES``); the colour is given by the prompt.

Leak-free by construction: the target's (shape, motion) pair, colour, size, the clip kind and the prompt
template are independent draws (:func:`text_distribution` enumerates their exact joint law through the
sampler's own code), and prompts contain no shape, size or motion word. So within a split, the
distribution of every scored attribute given the prompt equals its marginal: a model that reads blank
frames can do no better than the split's majority answer.

The (shape, motion) pairs are split deterministically (from the seed) into training pairs and held-out
pairs, colour and size staying free; the ``"heldout"`` split's targets only use held-out pairs, which never
occur in ``"train"`` or ``"validation"`` clips, not even on non-target objects (which always use training
pairs). Every shape and motion value still occurs in training: only the combination is new.

The vocabulary and every text template (captions, prompts, QA, MCQ) live in ``procedural_text``, whose
names this module re-exports. Difficulty knobs (see :class:`ProceduralVideoConfig`): object counts, sizes, speeds, background contrast,
dim clutter specks, occluding bars, camera pans, and per-clip lengths (``num_frames_range``).

Geometry conventions: pixel ``(row, col)`` covers ``[col, col + 1] x [row, row + 1]`` in continuous
pixel coordinates; a pixel belongs to an object when its centre lies inside the object's shape.
Boxes are ``[x0, y0, x1, y1]`` in those coordinates (x to the right, y down), clipped to the image.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .procedural_text import (  # noqa: F401 (re-exported: the vocabulary and text are part of this API)
    BOUNCING,
    CAPTION_TEMPLATES,
    COLOURS,
    GENERIC_PROMPTS,
    GENERIC_QA,
    GENERIC_SCORED_ATTRIBUTES,
    GENERIC_SUBJECT,
    LINEAR_MOTIONS,
    MCQ_GENERIC_ATTRIBUTES,
    MCQ_NAMED_ATTRIBUTES,
    MCQ_NUM_OPTIONS,
    MCQ_QUESTIONS,
    MCQ_VOCABULARY,
    MOTION_OPTIONS,
    MOTIONS,
    NAMED_PROMPTS,
    NAMED_QA,
    NAMED_SUBJECT,
    NUMBER_WORDS,
    QA_QUESTIONS,
    SCORED_ATTRIBUTES,
    SHAPES,
    SIZES,
    STATIC,
    WHERE_ANSWERS,
    _check_vocabulary,
    answer_texts,
    caption_for,
    multiple_choice,
    normalize_text,
    parse_caption,
    question_answers,
    scored_attributes,
    subject_for,
    text_inventory,
)

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 100, 235),
    "yellow": (235, 220, 50),
    "purple": (155, 65, 210),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
"""RGB of each colour of ``COLOURS``. Every colour has a channel >= 200, far above ``MAX_BACKGROUND_CHANNEL``."""

SPLIT_IDS: dict[str, int] = {"train": 0, "validation": 1, "heldout": 2, "test": 4}
"""Split name -> the second entry of the clip's SeedSequence. ``"test"`` draws the training pairs, as
``"validation"`` does, from its own stream: clips touched only for final figures, never for choosing a recipe."""
PARTITION_STREAM_ID = 3
"""Second entry of the SeedSequence that partitions (shape, motion) pairs into train / held-out."""

# ----------------------------------------------------------------------------------------------------
# Rendering constants
# ----------------------------------------------------------------------------------------------------

MIN_IMAGE_SIZE = 16
MIN_NUM_FRAMES = 2
MIN_BOUNCE_FRAMES = 3
"""A bounce needs a step towards the wall and one away from it: 3 frames."""
MAX_SIZE_FRACTION = 0.5
MIN_OBJECT_PIXELS = 2.0
"""Smallest object side in pixels, whatever the size fraction."""
MAX_PLACEMENT_TRIES = 20
"""Rejection-sampling attempts to place a static object off the moving objects' paths."""
MAX_PAN_TO_OBJECT_SPEED = 0.5
"""Camera pan speed is capped at this fraction of the slowest linear or bouncing object, so that motion in
the image always goes in the captioned direction."""
BOUNCE_HIT_RANGE: tuple[float, float] = (0.2, 0.6)
"""A bouncing object first hits a wall after this fraction of the clip (clamped to [1, T - 2] frames)."""
MAX_BOUNCE_STEP_FRACTION = 0.5
"""A bouncing object moves at most this fraction of its free room per frame (no aliasing)."""
OCCLUDER_RGB: tuple[int, int, int] = (128, 128, 128)
BACKGROUND_LEVEL = 18
BACKGROUND_BLOTCH_AMPLITUDE = 28
BACKGROUND_GRAIN_AMPLITUDE = 8
BACKGROUND_CELL_PIXELS = 8
"""Size of the cells of the smooth background noise, in pixels."""
BACKGROUND_MIN_TINT = 0.6
MAX_BACKGROUND_CHANNEL = 100
"""No background or clutter pixel has a channel above this; every object colour has one >= 200 and the
occluder is 128, so objects never look like background."""
MAX_BACKGROUND_CONTRAST = (MAX_BACKGROUND_CHANNEL - BACKGROUND_LEVEL) / (
    BACKGROUND_BLOTCH_AMPLITUDE + BACKGROUND_GRAIN_AMPLITUDE
)
CLUTTER_LEVEL_RANGE: tuple[float, float] = (40.0, 90.0)
"""Grey level of a clutter speck (uniform), below ``MAX_BACKGROUND_CHANNEL``."""
CLUTTER_TINT = 0.15
"""Each channel of a speck is its level times a factor in [1 - tint, 1 + tint]: nearly grey."""
CLUTTER_SIZE_RANGE: tuple[float, float] = (0.02, 0.07)
"""Side of a clutter speck as a fraction of image_size (at least one pixel)."""
MAX_CLUTTER = 64
OCCLUDER_LABEL = -2
BACKGROUND_LABEL = -1
SEED_BITS = 32

SHAPE_FUNCTIONS = {
    # (u, v) are pixel-centre coordinates relative to the object's box, in [0, 1]; broadcast to 2-D.
    "square": lambda u, v: (u >= 0.0) & (v >= 0.0),
    "circle": lambda u, v: (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25,
    "triangle": lambda u, v: np.abs(u - 0.5) <= v / 2.0,
    "diamond": lambda u, v: np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5,
}

Pair = tuple[str, str]
"""A (shape, motion) pair: the unit of the train / held-out partition."""


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProceduralVideoConfig:
    """Everything that defines the procedural data set. Frozen and hashable.

    Attributes:
        image_size: side of the square frames in pixels (>= 16).
        num_frames: frames per clip T (>= 2; >= 3 when ``motions`` holds "bouncing"). Ignored when
            ``num_frames_range`` is set.
        num_frames_range: None (every clip has ``num_frames`` frames), or inclusive (min, max): each clip
            draws its own T uniformly from it, first thing from its layout stream (min >= 2, or >= 3 with
            bouncing). Paths, boxes and visibility then have that clip's T; batch with a padding collate.
        num_distractors: inclusive (min, max) number of static objects in a named clip (>= 0).
        num_other_moving: inclusive (min, max) number of moving objects besides the target in a named
            clip (>= 0). Generic clips hold the target alone. Named clips need distinct colours:
            ``1 + num_other_moving[1] + num_distractors[1] <= len(colours)``.
        num_clutter: inclusive (min, max) number of clutter specks per clip (0..64): small, dim, nearly
            grey blobs painted on the background (moving with it). They are never objects, never
            described, never boxed, and no channel exceeds ``MAX_BACKGROUND_CHANNEL``.
        small_size_range: (min, max) side of a "small" object as a fraction of image_size.
        large_size_range: (min, max) side of a "large" object as a fraction of image_size (max <= 0.5).
            Every small side (after the ``MIN_OBJECT_PIXELS`` floor) must lie below every large side.
        speed_range: (min, max) speed of linear motion, fraction of image_size per frame (> 0). Capped per
            clip so the whole path fits in the (world) frame for that clip's T and object size.
        bounce_speed_range: (min, max) speed of bouncing objects, fraction of image_size per frame (> 0).
            Capped at half the object's free room per frame.
        background_contrast: factor (in [0, ~2.28]) on the background's blotch and grain amplitudes:
            0 is a flat background, 1 the default texture, higher is busier. Bounded so that no
            background channel exceeds ``MAX_BACKGROUND_CHANNEL`` (objects stay far brighter).
        occlusion_probability: chance that a grey bar, drawn on top of everything, crosses the path of
            one moving object, chosen uniformly among the moving ones (so the bar does not point at the
            target of a named clip).
        occluder_width_fraction: width of that bar as a fraction of image_size.
        camera_pan_probability: chance that the camera pans (background and all objects shift).
        camera_pan_speed_range: (min, max) pan speed, fraction of image_size per frame (capped at half
            the slowest linear or bouncing object's speed).
        named_object_fraction: probability that a clip is named (prompt names the target's colour among
            several objects); drawn independently of every attribute.
        heldout_fraction: fraction of (shape, motion) target pairs held out, in (0, 1).
        min_visible_fraction: an object counts as visible in a frame when at least this fraction of its
            pixels is shown (not covered by the bar or a later-drawn object, not off-frame).
        colours, shapes, motions: the vocabulary targets and other objects are drawn from.
        seed: global seed (>= 0) of the pair partition and of every clip.
        identity_cue_frames: 0 (off), or the look-ahead task for named clips: the other moving objects take
            the target's shape and size (a training pair of that shape, where one exists), and every object
            shows its own colour in the first ``identity_cue_frames`` frames only, then the target's. The
            prompt's colour singles the target out at the start; afterwards the moving objects look alike and
            only continuity over frames keeps a reader on the target (the shuffled-in-time probe must hurt).
            Text draws are unchanged, so the task is as leak-free as the named one. Below the shortest clip.
    """

    image_size: int = 64
    num_frames: int = 8
    num_frames_range: tuple[int, int] | None = None
    num_distractors: tuple[int, int] = (1, 3)
    num_other_moving: tuple[int, int] = (1, 2)
    num_clutter: tuple[int, int] = (0, 0)
    small_size_range: tuple[float, float] = (0.12, 0.18)
    large_size_range: tuple[float, float] = (0.24, 0.32)
    speed_range: tuple[float, float] = (0.05, 0.10)
    bounce_speed_range: tuple[float, float] = (0.15, 0.30)
    background_contrast: float = 1.0
    occlusion_probability: float = 0.25
    occluder_width_fraction: float = 0.12
    camera_pan_probability: float = 0.25
    camera_pan_speed_range: tuple[float, float] = (0.01, 0.03)
    named_object_fraction: float = 0.5
    heldout_fraction: float = 0.2
    min_visible_fraction: float = 0.5
    colours: tuple[str, ...] = COLOURS
    shapes: tuple[str, ...] = SHAPES
    motions: tuple[str, ...] = MOTIONS
    seed: int = 0
    identity_cue_frames: int = 0

    def __post_init__(self) -> None:
        """Validate every field; raise ValueError naming the offending one."""
        if not _is_int(self.image_size) or self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {self.image_size!r}")
        if not _is_int(self.num_frames) or self.num_frames < MIN_NUM_FRAMES:
            raise ValueError(f"num_frames must be an int >= {MIN_NUM_FRAMES}, got {self.num_frames!r}")
        if self.num_frames_range is not None:
            _check_int_range("num_frames_range", self.num_frames_range, low=MIN_NUM_FRAMES)
        _check_int_range("num_distractors", self.num_distractors, low=0)
        _check_int_range("num_other_moving", self.num_other_moving, low=0)
        _check_int_range("num_clutter", self.num_clutter, low=0, high=MAX_CLUTTER)
        for name in ("small_size_range", "large_size_range"):
            _check_range(name, getattr(self, name), low=0.0, high=MAX_SIZE_FRACTION, open_low=True)
        largest_small = max(MIN_OBJECT_PIXELS, self.small_size_range[1] * self.image_size)
        if largest_small >= self.large_size_range[0] * self.image_size:
            raise ValueError(
                f"small_size_range {self.small_size_range} must lie below large_size_range "
                f"{self.large_size_range} (sides of {MIN_OBJECT_PIXELS} px at least) at image_size "
                f"{self.image_size}, or small and large objects could not be told apart"
            )
        for name in ("speed_range", "bounce_speed_range", "camera_pan_speed_range"):
            _check_range(name, getattr(self, name), low=0.0, open_low=True)
        if not isinstance(self.background_contrast, (int, float)) or not (
            0.0 <= self.background_contrast <= MAX_BACKGROUND_CONTRAST
        ):
            raise ValueError(
                f"background_contrast must lie in [0, {MAX_BACKGROUND_CONTRAST:.3f}] (so the background "
                f"stays below {MAX_BACKGROUND_CHANNEL}, far darker than any object), "
                f"got {self.background_contrast!r}"
            )
        for name in ("occlusion_probability", "camera_pan_probability", "named_object_fraction"):
            _check_fraction(name, getattr(self, name), open_low=False, open_high=False)
        _check_fraction("heldout_fraction", self.heldout_fraction, open_low=True, open_high=True)
        _check_fraction("min_visible_fraction", self.min_visible_fraction, open_low=True, open_high=False)
        _check_fraction(
            "occluder_width_fraction", self.occluder_width_fraction, open_low=True, open_high=False
        )
        _check_vocabulary("colours", self.colours, COLOURS)
        _check_vocabulary("shapes", self.shapes, SHAPES)
        _check_vocabulary("motions", self.motions, MOTIONS)
        if all(motion == STATIC for motion in self.motions):
            raise ValueError("motions must contain at least one moving (non-static) motion")
        self._check_frames_and_counts()
        if not _is_int(self.identity_cue_frames) or not 0 <= self.identity_cue_frames < self.min_frames:
            raise ValueError(
                f"identity_cue_frames must be an int in [0, {self.min_frames}) (0: off; below the shortest "
                f"clip, or the objects never look alike), got {self.identity_cue_frames!r}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")

    def _check_frames_and_counts(self) -> None:
        """Bouncing needs 3 frames; a named clip's objects need distinct colours and number words."""
        if BOUNCING in self.motions and self.min_frames < MIN_BOUNCE_FRAMES:
            name = "num_frames_range" if self.num_frames_range is not None else "num_frames"
            raise ValueError(
                f"{name} allows {self.min_frames}-frame clips, but a bounce needs {MIN_BOUNCE_FRAMES} "
                f"frames to be seen; raise {name} or drop {BOUNCING!r} from motions"
            )
        max_objects = 1 + self.num_other_moving[1] + self.num_distractors[1]
        if max_objects > min(len(self.colours), len(NUMBER_WORDS) - 1):
            raise ValueError(
                f"num_distractors/num_other_moving allow {max_objects} objects in a named clip, more than "
                f"the {len(self.colours)} colours (every object of a named clip has its own colour)"
            )

    @property
    def min_frames(self) -> int:
        """The fewest frames a clip can have."""
        return self.num_frames_range[0] if self.num_frames_range is not None else self.num_frames


def _is_int(value: Any) -> bool:
    """An int (numpy ints too) that is not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_range(
    name: str, value: Any, low: float, high: float | None = None, open_low: bool = False
) -> None:
    """Raise ValueError unless ``value`` is a (min, max) pair with low <= min <= max <= high."""
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"{name} must be a (min, max) tuple, got {value!r}")
    lo, hi = value
    too_low = lo <= low if open_low else lo < low
    if too_low or hi < lo or (high is not None and hi > high):
        bound = f"{'(' if open_low else '['}{low}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name} must satisfy min <= max within {bound}, got {value!r}")


def _check_int_range(name: str, value: Any, low: int, high: int | None = None) -> None:
    """Raise ValueError unless ``value`` is a (min, max) pair of ints with low <= min <= max <= high."""
    if not isinstance(value, tuple) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise ValueError(f"{name} must be a (min, max) tuple of ints, got {value!r}")
    _check_range(name, value, low, high)


def _check_fraction(name: str, value: float, open_low: bool, open_high: bool) -> None:
    """Raise ValueError unless ``value`` lies in the unit interval (open or closed at each end)."""
    bad_low = value <= 0.0 if open_low else value < 0.0
    bad_high = value >= 1.0 if open_high else value > 1.0
    if bad_low or bad_high:
        interval = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")


# ----------------------------------------------------------------------------------------------------
# Train / held-out partition of target (shape, motion) pairs
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def split_pairs(config: ProceduralVideoConfig) -> tuple[tuple[Pair, ...], tuple[Pair, ...]]:
    """Partition all (shape, motion) pairs into (train pairs, held-out pairs).

    Colour and size are not part of the partition: they are drawn independently of the pair in every
    split, so for every colour the law of (shape, size, motion) is the same within a split. Deterministic
    from ``config.seed``; ``round(heldout_fraction * n)`` (at least 1) pairs are held out, greedily in a
    seeded random order, skipping any pair whose removal would leave its shape or its motion without a
    training pair. Raises ValueError when that is impossible.
    """
    pairs = list(itertools.product(config.shapes, config.motions))
    num_heldout = max(1, round(config.heldout_fraction * len(pairs)))
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, PARTITION_STREAM_ID]))
    remaining = [Counter(pair[position] for pair in pairs) for position in range(2)]
    heldout: set[Pair] = set()
    for order_index in rng.permutation(len(pairs)):
        if len(heldout) == num_heldout:
            break
        pair = pairs[order_index]
        if all(remaining[position][value] > 1 for position, value in enumerate(pair)):
            heldout.add(pair)
            for position, value in enumerate(pair):
                remaining[position][value] -= 1
    if len(heldout) < num_heldout:
        raise ValueError(
            f"heldout_fraction={config.heldout_fraction} is too large: only {len(heldout)} of "
            f"{len(pairs)} (shape, motion) pairs can be held out while every value stays in training"
        )
    train = tuple(pair for pair in pairs if pair not in heldout)
    return train, tuple(pair for pair in pairs if pair in heldout)


def pairs_for_split(config: ProceduralVideoConfig, split: str) -> tuple[Pair, ...]:
    """Target (shape, motion) pairs a split draws from: held-out pairs for "heldout", else the train pairs."""
    split_id = _split_id(split)
    train, heldout = split_pairs(config)
    return heldout if split_id == SPLIT_IDS["heldout"] else train


def _split_id(split: str) -> int:
    """Integer id of a split name; ValueError for an unknown one."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_IDS)}")
    return SPLIT_IDS[split]


# ----------------------------------------------------------------------------------------------------
# Text sampling: target attributes, clip kind, prompt (exactly enumerable)
# ----------------------------------------------------------------------------------------------------

Chooser = Callable[..., Any]
"""``choose(values, weights=None)`` -> one of ``values`` (uniform unless weights are given)."""


@dataclass(frozen=True)
class TextDraw:
    """The target's attributes, the clip kind and the prompt: everything a prompt could leak about."""

    colour: str
    shape: str
    size: str
    motion: str
    named: bool
    prompt: str


def _draw_text(choose: Chooser, config: ProceduralVideoConfig, split: str) -> TextDraw:
    """The text draws of a clip, in order, through ``choose``; every draw is independent of the others."""
    shape, motion = choose(pairs_for_split(config, split))
    colour = choose(config.colours)
    size = choose(SIZES)
    fraction = config.named_object_fraction
    named = choose((True, False), (fraction, 1.0 - fraction))
    prompt = choose(NAMED_PROMPTS).format(colour=colour) if named else choose(GENERIC_PROMPTS)
    return TextDraw(colour=colour, shape=shape, size=size, motion=motion, named=named, prompt=prompt)


class _RandomChooser:
    """``choose`` from a numpy Generator: ``integers`` when uniform, one ``random()`` when weighted."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def __call__(self, values: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
        if weights is None:
            return values[int(self.rng.integers(len(values)))]
        index = int(np.searchsorted(np.cumsum(weights), self.rng.random(), side="right"))
        return values[min(index, len(values) - 1)]


class _ReplayChooser:
    """``choose`` that replays a prefix of option indices, then takes option 0; records every draw."""

    def __init__(self, prefix: tuple[int, ...]) -> None:
        self.prefix = prefix
        self.path: list[int] = []
        self.sizes: list[int] = []
        self.probability = 1.0

    def __call__(self, values: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
        depth = len(self.path)
        index = self.prefix[depth] if depth < len(self.prefix) else 0
        self.probability *= 1.0 / len(values) if weights is None else float(weights[index])
        self.path.append(index)
        self.sizes.append(len(values))
        return values[index]


def text_distribution(config: ProceduralVideoConfig, split: str) -> tuple[tuple[float, TextDraw], ...]:
    """The exact law of a clip's :class:`TextDraw` in ``split``: ``((probability, draw), ...)``.

    Enumerates every outcome of the sampler's own code (``_draw_text``, the function ``sample_text``
    runs), depth first; outcomes of probability 0 are left out. Probabilities sum to 1.
    """
    _split_id(split)
    outcomes = []
    stack: list[tuple[int, ...]] = [()]
    while stack:
        prefix = stack.pop()
        chooser = _ReplayChooser(prefix)
        draw = _draw_text(chooser, config, split)
        for depth in range(len(prefix), len(chooser.path)):
            stack.extend((*chooser.path[:depth], j) for j in range(1, chooser.sizes[depth]))
        if chooser.probability > 0.0:
            outcomes.append((chooser.probability, draw))
    return tuple(outcomes)


def attribute_marginals(
    config: ProceduralVideoConfig, split: str, named: bool | None = None
) -> dict[str, dict[str, float]]:
    """Exact law of each target attribute (colour, shape, size, motion) in ``split``, over all clips or
    one kind. Its max is the prompt-free majority baseline of that attribute."""
    laws: dict[str, dict[str, float]] = {key: defaultdict(float) for key in GENERIC_SCORED_ATTRIBUTES}
    kept = [(p, d) for p, d in text_distribution(config, split) if named is None or d.named == named]
    total = sum(p for p, _ in kept)
    for probability, draw in kept:
        for key in laws:
            laws[key][getattr(draw, key)] += probability / total
    return {key: dict(law) for key, law in laws.items()}


# ----------------------------------------------------------------------------------------------------
# Scene sampling (cheap: no pixels)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One object of a clip. ``path`` is its box's top-left corner per frame in world pixel coordinates,
    shape [T, 2] as (x, y); ``layer`` is its drawing order (higher is drawn later, on top)."""

    colour: str
    shape: str
    size: str
    motion: str
    side: float
    path: np.ndarray
    layer: int

    def as_dict(self) -> dict[str, Any]:
        """Public description: colour, shape, size ("small"/"large"), motion, side in pixels."""
        return {
            "colour": self.colour,
            "shape": self.shape,
            "size": self.size,
            "motion": self.motion,
            "side": float(self.side),
        }


@dataclass(frozen=True)
class Speck:
    """A clutter speck painted on the background: world top-left ``corner`` (x, y), ``side`` in pixels."""

    shape: str
    corner: np.ndarray
    side: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class ClipText:
    """The target's attributes and all text of a clip: the cheap part, sampled from its own stream."""

    split: str
    index: int
    colour: str
    shape: str
    motion: str
    size: str
    named: bool
    prompt: str
    caption: str
    mcq: dict[str, Any]

    @property
    def clip_id(self) -> str:
        """``"<split>-<index:06d>"``, e.g. ``"train-000042"``."""
        return f"{self.split}-{self.index:06d}"

    @property
    def reference(self) -> str | None:
        """The colour the prompt names (named clips), else None."""
        return self.colour if self.named else None

    @property
    def scored_attributes(self) -> tuple[str, ...]:
        """What the caption is scored on (see :func:`scored_attributes`)."""
        return scored_attributes(self.named)


@dataclass(frozen=True)
class Scene:
    """Everything about a clip except its pixels.

    ``camera`` is the camera offset per frame, shape [T, 2] (x, y) in pixels: an object at world
    position p appears at p - camera[t]. ``occluder`` is the grey bar's world box [x0, y0, x1, y1] or None.
    """

    text: ClipText
    objects: tuple[SceneObject, ...]
    target_index: int
    qa: tuple[dict[str, str], ...]
    occluder: np.ndarray | None
    camera: np.ndarray
    clutter: tuple[Speck, ...]
    background_seed: int

    @property
    def target(self) -> SceneObject:
        """The object the caption describes."""
        return self.objects[self.target_index]

    @property
    def num_frames(self) -> int:
        """This clip's T."""
        return int(self.camera.shape[0])


def clip_streams(config: ProceduralVideoConfig, split: str, index: int) -> tuple[np.random.Generator, ...]:
    """The (text, layout) random streams of clip ``index`` of ``split``: the two children of
    ``SeedSequence([config.seed, split_id, index])``."""
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"clip index must be a non-negative int, got {index!r}")
    children = np.random.SeedSequence([config.seed, _split_id(split), int(index)]).spawn(2)
    return tuple(np.random.default_rng(child) for child in children)


def sample_text(config: ProceduralVideoConfig, split: str, index: int) -> ClipText:
    """Target attributes, clip kind, prompt, caption and MCQ of a clip (no layout; ~30 us)."""
    rng = clip_streams(config, split, index)[0]
    draw = _draw_text(_RandomChooser(rng), config, split)
    return ClipText(
        split=split,
        index=int(index),
        colour=draw.colour,
        shape=draw.shape,
        motion=draw.motion,
        size=draw.size,
        named=draw.named,
        prompt=draw.prompt,
        caption=caption_for(draw.colour, draw.shape, draw.motion, draw.size),
        mcq=multiple_choice(rng, draw.named, _attributes(draw)),
    )


def _sample_num_frames(rng: np.random.Generator, config: ProceduralVideoConfig) -> int:
    """The clip's T: ``num_frames``, or uniform in ``num_frames_range`` (the layout stream's first draw)."""
    if config.num_frames_range is None:
        return config.num_frames
    low, high = config.num_frames_range
    return int(rng.integers(low, high + 1))


def clip_num_frames(config: ProceduralVideoConfig, split: str, index: int) -> int:
    """T of clip ``index`` of ``split`` without sampling anything else (a few microseconds)."""
    return _sample_num_frames(clip_streams(config, split, index)[1], config)


def sample_scene(config: ProceduralVideoConfig, split: str, index: int) -> Scene:
    """Sample the text, layout and motion of clip ``index`` of ``split`` (no rendering; < 1 ms).

    Non-target objects (named clips only) get distinct colours other than the target's and (shape,
    motion) pairs from the training pairs, so no held-out combination is ever seen outside "heldout".
    Drawing order (layers) is random, so the target is not always on top; static objects avoid the paths
    of all moving objects alike, so free space does not point at the target either.
    """
    text = sample_text(config, split, index)
    rng = clip_streams(config, split, index)[1]
    num_frames = _sample_num_frames(rng, config)
    num_other = _draw_count(rng, config.num_other_moving) if text.named else 0
    num_static = _draw_count(rng, config.num_distractors) if text.named else 0
    free = [colour for colour in config.colours if colour != text.colour]
    colours = [free[i] for i in rng.choice(len(free), size=num_other + num_static, replace=False)]
    layers = rng.permutation(1 + num_other + num_static)
    target = _make_object(rng, config, num_frames, text.colour, text.shape, text.motion, layers[0], text.size)
    moving_pairs, static_shapes = _non_target_choices(config)
    lookalike = config.identity_cue_frames > 0
    if lookalike:  # the look-ahead task: moving objects like the target (training pairs only, as always)
        moving_pairs = tuple(pair for pair in moving_pairs if pair[0] == text.shape) or moving_pairs
    others = []
    for colour, layer in zip(colours[:num_other], layers[1 : 1 + num_other], strict=True):
        shape, motion = moving_pairs[int(rng.integers(len(moving_pairs)))]
        size = text.size if lookalike else None
        others.append(_make_object(rng, config, num_frames, colour, shape, motion, layer, size))
    specs = [(colour, _pick(rng, static_shapes)) for colour in colours[num_other:]]
    paths = [_swept_box(obj) for obj in (target, *others)]  # statics avoid every moving path alike
    statics = _place_statics(rng, config, num_frames, specs, layers[1 + num_other :], paths)
    objects = [target, *others, *statics]
    order = rng.permutation(len(objects))
    objects = [objects[i] for i in order]
    return Scene(
        text=text,
        objects=tuple(objects),
        target_index=int(np.flatnonzero(order == 0)[0]),
        qa=question_answers(
            _attributes(target), text.named, len(objects), sum(obj.motion != STATIC for obj in objects)
        ),
        occluder=_sample_occluder(rng, config, objects),
        camera=_sample_camera(rng, config, num_frames, objects),
        clutter=_sample_clutter(rng, config),
        background_seed=int(rng.integers(2**SEED_BITS)),
    )


def _attributes(thing: TextDraw | SceneObject) -> dict[str, str]:
    """``{"colour", "shape", "size", "motion"}`` of a target."""
    return {key: getattr(thing, key) for key in GENERIC_SCORED_ATTRIBUTES}


def _draw_count(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """Uniform integer in the inclusive range ``bounds``."""
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _pick(rng: np.random.Generator, values: Sequence[str]) -> str:
    """A uniformly random element of a short sequence of strings."""
    return values[int(rng.integers(len(values)))]


@functools.lru_cache(maxsize=64)
def _non_target_choices(config: ProceduralVideoConfig) -> tuple[tuple[Pair, ...], tuple[str, ...]]:
    """(moving training pairs, shapes of static training pairs) for non-target objects. Without "static"
    in the motions no static pair exists to hold out, and static objects may take any shape."""
    train = split_pairs(config)[0]
    moving = tuple(pair for pair in train if pair[1] != STATIC)
    static_shapes = tuple(shape for shape, motion in train if motion == STATIC) or config.shapes
    return moving, static_shapes


def _make_object(
    rng: np.random.Generator,
    config: ProceduralVideoConfig,
    num_frames: int,
    colour: str,
    shape: str,
    motion: str,
    layer: int,
    size: str | None = None,
) -> SceneObject:
    """An object with the given (else a random) size and a T-frame path that realises ``motion``."""
    size = size if size is not None else _pick(rng, SIZES)
    side = _sample_side(rng, config, size)
    path = _sample_path(rng, config, num_frames, motion, side)
    return SceneObject(
        colour=colour, shape=shape, size=size, motion=motion, side=side, path=path, layer=int(layer)
    )


def _sample_side(rng: np.random.Generator, config: ProceduralVideoConfig, size: str) -> float:
    """Side in pixels of a "small" or "large" object."""
    low, high = config.small_size_range if size == "small" else config.large_size_range
    return max(MIN_OBJECT_PIXELS, float(rng.uniform(low, high)) * config.image_size)


def _sample_path(
    rng: np.random.Generator, config: ProceduralVideoConfig, num_frames: int, motion: str, side: float
) -> np.ndarray:
    """Top-left corner per frame, shape [T, 2] (x, y), inside the world frame [0, image_size - side]."""
    room = config.image_size - side
    if motion in LINEAR_MOTIONS:
        return _linear_path(rng, config.speed_range, config.image_size, num_frames, motion, room)
    if motion == BOUNCING:
        return _bouncing_path(rng, config.bounce_speed_range, config.image_size, num_frames, room)
    return np.repeat(rng.uniform(0.0, room, size=(1, 2)), num_frames, axis=0)


def _linear_path(
    rng: np.random.Generator,
    speed_range: tuple[float, float],
    image_size: int,
    num_frames: int,
    motion: str,
    room: float,
) -> np.ndarray:
    """Constant-velocity path along one axis in the motion's direction, within [0, room]; shape [T, 2].

    The speed is capped so the travel fits in ``room`` for this T (so long clips are slower); the start
    range is clamped at 0, so rounding can never make it negative.
    """
    axis, sign = LINEAR_MOTIONS[motion]
    steps = num_frames - 1
    travel = min(float(rng.uniform(*speed_range)) * image_size * steps, room)
    start = float(rng.uniform(0.0, max(room - travel, 0.0)))
    along = np.minimum(start + travel * np.arange(num_frames) / steps, room)
    path = np.empty((num_frames, 2))
    path[:, axis] = along if sign > 0 else room - along
    path[:, 1 - axis] = rng.uniform(0.0, room)
    return path


def _bouncing_path(
    rng: np.random.Generator, speed_range: tuple[float, float], image_size: int, num_frames: int, room: float
) -> np.ndarray:
    """Straight flight reflected off the world walls; shape [T, 2], within [0, room].

    The speed is capped at ``MAX_BOUNCE_STEP_FRACTION * room`` per frame; the first wall hit along the
    dominant axis happens at a frame time in [1, T - 2], so frames 0 -> 1 head for the wall and the frames
    after the hit leave it: the bounce is always seen (needs T >= 3).
    """
    speed = min(float(rng.uniform(*speed_range)) * image_size, MAX_BOUNCE_STEP_FRACTION * room)
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    velocity = speed * np.array([math.cos(angle), math.sin(angle)])
    start = rng.uniform(0.0, room, size=2)
    dominant = int(np.argmax(np.abs(velocity)))
    steps = num_frames - 1
    hit = float(np.clip(rng.uniform(*BOUNCE_HIT_RANGE) * steps, 1.0, steps - 1.0))
    to_wall = min(hit * abs(velocity[dominant]), room)
    start[dominant] = room - to_wall if velocity[dominant] > 0 else to_wall
    raw = start[None, :] + np.arange(num_frames)[:, None] * velocity[None, :]
    folded = np.mod(raw, 2.0 * room)
    return np.clip(np.where(folded > room, 2.0 * room - folded, folded), 0.0, room)


def _swept_box(obj: SceneObject) -> np.ndarray:
    """World box [x0, y0, x1, y1] covering the object over the whole clip."""
    low = obj.path.min(axis=0)
    high = obj.path.max(axis=0) + obj.side
    return np.concatenate([low, high])


def _boxes_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two [x0, y0, x1, y1] boxes intersect."""
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def _place_statics(
    rng: np.random.Generator,
    config: ProceduralVideoConfig,
    num_frames: int,
    specs: list[tuple[str, str]],
    layers: Sequence[int],
    avoid: list[np.ndarray],
) -> list[SceneObject]:
    """Static objects of the given (colour, shape), placed (best effort) off ``avoid`` and off each other."""
    occupied = list(avoid)
    objects = []
    for (colour, shape), layer in zip(specs, layers, strict=True):
        for _ in range(MAX_PLACEMENT_TRIES):
            obj = _make_object(rng, config, num_frames, colour, shape, STATIC, layer)
            box = _swept_box(obj)
            if not any(_boxes_overlap(box, other) for other in occupied):
                break
        occupied.append(box)
        objects.append(obj)
    return objects


def _sample_occluder(
    rng: np.random.Generator, config: ProceduralVideoConfig, objects: list[SceneObject]
) -> np.ndarray | None:
    """With occlusion_probability, a full-length grey bar across the middle of the path of one moving
    object (uniform among the moving ones): vertical for horizontal or bouncing motion, horizontal for
    vertical motion. World [x0, y0, x1, y1], or None."""
    moving = [obj for obj in objects if obj.motion != STATIC]
    if not moving or rng.random() >= config.occlusion_probability:
        return None
    crossed = moving[int(rng.integers(len(moving)))]
    axis = LINEAR_MOTIONS[crossed.motion][0] if crossed.motion in LINEAR_MOTIONS else 0
    centre = float(crossed.path[:, axis].mean()) + crossed.side / 2.0
    half_width = config.occluder_width_fraction * config.image_size / 2.0
    box = np.array([-np.inf, -np.inf, np.inf, np.inf])
    box[axis], box[axis + 2] = centre - half_width, centre + half_width
    return box


def _sample_camera(
    rng: np.random.Generator, config: ProceduralVideoConfig, num_frames: int, objects: list[SceneObject]
) -> np.ndarray:
    """Camera offset per frame, shape [T, 2]: zero, or a constant-velocity pan in a random direction."""
    camera = np.zeros((num_frames, 2))
    if rng.random() >= config.camera_pan_probability:
        return camera
    speed = float(rng.uniform(*config.camera_pan_speed_range)) * config.image_size
    object_speeds = [np.abs(np.diff(obj.path, axis=0)).max() for obj in objects if obj.motion != STATIC]
    if object_speeds:
        speed = min(speed, MAX_PAN_TO_OBJECT_SPEED * float(min(object_speeds)))
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    velocity = speed * np.array([math.cos(angle), math.sin(angle)])
    return np.arange(num_frames)[:, None] * velocity[None, :]


def _sample_clutter(rng: np.random.Generator, config: ProceduralVideoConfig) -> tuple[Speck, ...]:
    """``num_clutter`` dim, nearly grey specks at uniform world positions."""
    specks = []
    for _ in range(_draw_count(rng, config.num_clutter)):
        side = max(1.0, float(rng.uniform(*CLUTTER_SIZE_RANGE)) * config.image_size)
        level = float(rng.uniform(*CLUTTER_LEVEL_RANGE))
        tint = rng.uniform(1.0 - CLUTTER_TINT, 1.0 + CLUTTER_TINT, size=3)
        rgb = tuple(int(v) for v in np.clip(np.rint(level * tint), 0, MAX_BACKGROUND_CHANNEL))
        corner = rng.uniform(0.0, config.image_size - side, size=2)
        specks.append(Speck(shape=_pick(rng, SHAPES), corner=corner, side=side, rgb=rgb))
    return tuple(specks)


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------


def render_scene(scene: Scene, config: ProceduralVideoConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a scene: background, clutter specks, objects (by layer), then the occluding bar.

    Returns:
        frames: uint8 [T, H, W, 3]; boxes: float32 [T, K, 4] ([x0, y0, x1, y1] clipped to the image);
        visible: bool [T, K] (at least ``min_visible_fraction`` of the object's pixels shown).
    """
    frames, boxes, visible, _ = render_labelled_scene(scene, config)
    return frames, boxes, visible


def render_labelled_scene(
    scene: Scene, config: ProceduralVideoConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`render_scene` plus what each pixel shows: labels int16 [T, H, W], the index k of the object
    (into ``scene.objects``) drawn last there, ``BACKGROUND_LABEL`` (background and clutter) or
    ``OCCLUDER_LABEL``."""
    size = config.image_size
    frames = _background_frames(scene.background_seed, scene.camera, size, config.background_contrast)
    labels = np.full(frames.shape[:3], BACKGROUND_LABEL, dtype=np.int16)
    for speck in scene.clutter:
        corners = speck.corner[None, :] - scene.camera
        _draw_object(frames, labels, speck.shape, corners, speck.side, speck.rgb, BACKGROUND_LABEL)
    corners = np.stack([obj.path for obj in scene.objects], axis=1) - scene.camera[:, None, :]  # [T, K, 2]
    drawn = {}
    for k in sorted(range(len(scene.objects)), key=lambda i: scene.objects[i].layer):
        obj = scene.objects[k]
        rgb = _object_colours(scene, config, obj)
        drawn[k] = _draw_object(frames, labels, obj.shape, corners[:, k], obj.side, rgb, k)
    if scene.occluder is not None:
        _draw_occluder(frames, labels, scene.occluder, scene.camera)
    visible = np.zeros(labels.shape[:1] + (len(scene.objects),), dtype=np.bool_)
    for k, (pixels, full_area) in drawn.items():
        shown = _count_shown(labels, pixels, k)
        visible[:, k] = (full_area > 0) & (shown >= config.min_visible_fraction * full_area)
    sides = np.array([obj.side for obj in scene.objects])[None, :, None]
    boxes = np.clip(np.concatenate([corners, corners + sides], axis=-1), 0.0, size).astype(np.float32)
    return frames, boxes, visible, labels


def _object_colours(scene: Scene, config: ProceduralVideoConfig, obj: SceneObject) -> np.ndarray:
    """RGB of ``obj`` in every frame ``[T, 3]``: its own colour, or with ``identity_cue_frames`` (named clips)
    its own in the cue frames and the target's after them."""
    rgb = np.tile(np.asarray(COLOUR_RGB[obj.colour], dtype=np.uint8), (scene.num_frames, 1))  # (T, 3)
    if config.identity_cue_frames and scene.text.named:
        rgb[config.identity_cue_frames :] = COLOUR_RGB[scene.target.colour]
    return rgb


def _draw_object(
    frames: np.ndarray,
    labels: np.ndarray,
    shape: str,
    corners: np.ndarray,
    side: float,
    rgb: tuple[int, int, int] | np.ndarray,
    label: int,
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Paint one object in every frame at once.

    Args:
        frames: uint8 [T, H, W, 3] and labels: int16 [T, H, W], both painted in place.
        corners: [T, 2] top-left (x, y) of the object's box in image pixels; side: box side in pixels.
        rgb: one colour, or one per frame ``[T, 3]``.
    Returns:
        (t, row, col) index arrays of the in-frame pixels painted, and the object's pixel count per frame
        [T] as if the image were unbounded (for the visible fraction).
    """
    num_frames, height, width = labels.shape
    window = math.ceil(side) + 1
    start = np.ceil(corners - 0.5).astype(np.int64)  # first pixel whose centre is inside, [T, 2]
    offsets = np.arange(window)
    cols = start[:, 0, None] + offsets  # [T, n]
    rows = start[:, 1, None] + offsets
    u = ((cols + 0.5 - corners[:, 0, None]) / side)[:, None, :]  # [T, 1, n]
    v = ((rows + 0.5 - corners[:, 1, None]) / side)[:, :, None]  # [T, n, 1]
    mask = (u <= 1.0) & (v <= 1.0) & (u >= 0.0) & (v >= 0.0) & SHAPE_FUNCTIONS[shape](u, v)  # [T, n, n]
    full_area = mask.sum(axis=(1, 2))
    in_frame = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    t_index, r_index, c_index = np.nonzero(mask & in_frame)
    pixels = (t_index, rows[t_index, r_index], cols[t_index, c_index])
    colours = np.asarray(rgb, dtype=np.uint8)
    frames[pixels] = colours[t_index] if colours.ndim == 2 else colours
    labels[pixels] = label
    return pixels, full_area


def _draw_occluder(frames: np.ndarray, labels: np.ndarray, occluder: np.ndarray, camera: np.ndarray) -> None:
    """Paint the grey bar (world box ``occluder``) on top of every frame."""
    height, width = labels.shape[1:]
    for t in range(frames.shape[0]):
        x0, y0 = occluder[:2] - camera[t]
        x1, y1 = occluder[2:] - camera[t]
        r0, r1 = (max(v, 0) for v in _pixel_span(max(y0, -1.0), min(y1, height + 1.0)))
        c0, c1 = (max(v, 0) for v in _pixel_span(max(x0, -1.0), min(x1, width + 1.0)))
        frames[t, r0:r1, c0:c1] = OCCLUDER_RGB
        labels[t, r0:r1, c0:c1] = OCCLUDER_LABEL


def _pixel_span(low: float, high: float) -> tuple[int, int]:
    """Half-open range of pixel indices whose centres (i + 0.5) lie in [low, high]."""
    return math.ceil(low - 0.5), math.floor(high - 0.5) + 1


def _count_shown(labels: np.ndarray, pixels: tuple[np.ndarray, ...], label: int) -> np.ndarray:
    """Per frame, how many of an object's painted pixels still show it after all drawing: [T]."""
    still_shown = labels[pixels] == label
    return np.bincount(pixels[0][still_shown], minlength=labels.shape[0])


def _background_frames(seed: int, camera: np.ndarray, size: int, contrast: float) -> np.ndarray:
    """Per-frame crops of one dark textured background that shifts with the (rounded) camera: [T, H, W, 3]."""
    offsets = np.rint(camera).astype(np.int64)
    offsets -= offsets.min(axis=0)
    extent = offsets.max(axis=0)
    rng = np.random.default_rng(seed)
    texture = _background_texture(rng, size + int(extent[1]), size + int(extent[0]), contrast)
    return np.stack([texture[oy : oy + size, ox : ox + size] for ox, oy in offsets])


def _background_texture(rng: np.random.Generator, height: int, width: int, contrast: float) -> np.ndarray:
    """Smooth tinted blotches plus grain, both scaled by ``contrast``; every channel at most
    ``BACKGROUND_LEVEL + contrast * (blotch + grain amplitude)`` <= MAX_BACKGROUND_CHANNEL: uint8 [h, w, 3]."""
    cell = BACKGROUND_CELL_PIXELS
    coarse = rng.random((height // cell + 2, width // cell + 2))
    smooth = _bilinear_upsample(coarse, height, width, cell)
    tint = rng.uniform(BACKGROUND_MIN_TINT, 1.0, size=3)
    grain = rng.integers(0, BACKGROUND_GRAIN_AMPLITUDE + 1, size=(height, width, 3))
    value = BACKGROUND_LEVEL + contrast * (BACKGROUND_BLOTCH_AMPLITUDE * smooth[..., None] * tint + grain)
    return np.minimum(value, MAX_BACKGROUND_CHANNEL).astype(np.uint8)


def _bilinear_upsample(coarse: np.ndarray, height: int, width: int, cell: int) -> np.ndarray:
    """Bilinearly interpolate a coarse grid (one node every ``cell`` pixels) to [height, width]."""
    ys, xs = np.arange(height) / cell, np.arange(width) / cell
    iy, ix = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - iy)[:, None], (xs - ix)[None, :]
    top = coarse[iy][:, ix] * (1 - fx) + coarse[iy][:, ix + 1] * fx
    bottom = coarse[iy + 1][:, ix] * (1 - fx) + coarse[iy + 1][:, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def render_box_mask(box: np.ndarray | list[float], image_size: int, patch_size: int) -> np.ndarray:
    """Fraction of each patch covered by a box: float32 [image_size // p, image_size // p].

    ``box`` is [x0, y0, x1, y1] in pixel coordinates (clipped to the image). The mask sums to the box's
    (clipped) area divided by ``patch_size ** 2``. Raises ValueError unless p divides image_size.
    """
    if patch_size <= 0 or image_size <= 0 or image_size % patch_size != 0:
        raise ValueError(f"patch_size ({patch_size}) must be positive and divide image_size ({image_size})")
    x0, y0, x1, y1 = np.clip(np.asarray(box, dtype=np.float64), 0.0, image_size)
    edges = np.arange(image_size // patch_size + 1) * patch_size
    cover_x = np.clip(np.minimum(x1, edges[1:]) - np.maximum(x0, edges[:-1]), 0.0, patch_size) / patch_size
    cover_y = np.clip(np.minimum(y1, edges[1:]) - np.maximum(y0, edges[:-1]), 0.0, patch_size) / patch_size
    return np.outer(cover_y, cover_x).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Public clip / data set API
# ----------------------------------------------------------------------------------------------------


def make_clip(config: ProceduralVideoConfig, split: str, index: int) -> dict[str, Any]:
    """Clip ``index`` of ``split``, fully rendered (a pure function of its arguments).

    Returns a dict: frames uint8 [T, H, W, 3]; boxes float32 [T, K, 4]; visible bool [T, K];
    target_index int; objects (list of K dicts colour/shape/size/motion/side); prompt; caption;
    qa (list of {"question", "answer"}); mcq ({"question", "options", "answer_index", "attribute"});
    clip_id ("train-000042"); split; index; named (bool: prompt names the target); reference (the colour
    the prompt names, or None); scored_attributes (what the caption is scored on, see
    :func:`scored_attributes`); occlusion (a bar is drawn); camera_pan. T is the clip's own length when
    ``config.num_frames_range`` is set.
    """
    scene = sample_scene(config, split, index)
    frames, boxes, visible = render_scene(scene, config)
    return {
        "frames": frames,
        "boxes": boxes,
        "visible": visible,
        "target_index": scene.target_index,
        "objects": [obj.as_dict() for obj in scene.objects],
        "prompt": scene.text.prompt,
        "caption": scene.text.caption,
        "qa": [dict(pair) for pair in scene.qa],
        "mcq": {**scene.text.mcq, "options": list(scene.text.mcq["options"])},
        "clip_id": scene.text.clip_id,
        "split": split,
        "index": scene.text.index,
        "named": scene.text.named,
        "reference": scene.text.reference,
        "scored_attributes": scene.text.scored_attributes,
        "occlusion": scene.occluder is not None,
        "camera_pan": bool(np.any(scene.camera != 0)),
    }


class ClipIndexError(IndexError, ValueError):
    """Index out of range: a ValueError (as documented) that also ends Python's legacy iteration."""


class ProceduralVideoDataset:
    """Map-style data set of ``num_clips`` procedural clips of one split (rendered on access).

    ``dataset[i]`` is ``make_clip(config, split, i)`` (see there for keys and shapes). Works with a torch
    DataLoader; note K (objects per clip), and T with ``num_frames_range``, vary, so batch with a custom
    collate (``VideoCaptionCollator`` pads frames).
    """

    def __init__(
        self, split: str = "train", num_clips: int = 1000, config: ProceduralVideoConfig | None = None
    ) -> None:
        _split_id(split)
        if not isinstance(num_clips, int) or num_clips < 0:
            raise ValueError(f"num_clips must be a non-negative int, got {num_clips!r}")
        self.split = split
        self.num_clips = num_clips
        self.config = config if config is not None else ProceduralVideoConfig()
        split_pairs(self.config)  # fail early on an impossible partition

    def __len__(self) -> int:
        return self.num_clips

    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.num_clips:
            raise ClipIndexError(
                f"clip index {index!r} out of range for {self.split} split of {self.num_clips}"
            )
        return int(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return make_clip(self.config, self.split, self._check_index(index))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(self.num_clips))

    def scene(self, index: int) -> Scene:
        """The clip's scene (text, attributes, paths) without rendering pixels."""
        return sample_scene(self.config, self.split, self._check_index(index))


HF_METADATA_COLUMNS: dict[str, str] = {
    "clip_id": "string",
    "split": "string",
    "index": "int64",
    "prompt": "string",
    "caption": "string",
    "colour": "string",
    "shape": "string",
    "motion": "string",
    "size": "string",
    "named": "bool",
    "reference": "string",
    "num_frames": "int64",
}
"""Stored columns of ``as_hf_dataset`` and their ``datasets.Value`` dtypes."""


def _metadata_row(text: ClipText, num_frames: int) -> dict[str, Any]:
    """The stored (non-pixel) columns of one clip in ``as_hf_dataset`` (all but T are ``ClipText`` fields)."""
    return {
        **{key: getattr(text, key) for key in HF_METADATA_COLUMNS if key != "num_frames"},
        "num_frames": num_frames,
    }


def _render_batch(batch: dict[str, list[Any]], config: ProceduralVideoConfig) -> dict[str, list[Any]]:
    """``with_transform`` hook: add the rendered fields of every clip in a batch of metadata rows."""
    clips = [
        make_clip(config, split, int(index))
        for split, index in zip(batch["split"], batch["index"], strict=True)
    ]
    rendered = {
        key: [clip[key] for clip in clips]
        for key in ("frames", "boxes", "visible", "target_index", "objects", "qa", "mcq", "scored_attributes")
    }
    return {**batch, **rendered}


def as_hf_dataset(split: str, num_clips: int, config: ProceduralVideoConfig | None = None):
    """A ``datasets.Dataset`` of ``num_clips`` clips of ``split``, rendered lazily.

    Stored columns (computed up front from each clip's text stream and first layout draw, tens of
    microseconds per clip, no pixels): clip_id, split, index, prompt, caption, colour, shape, motion, size
    (of the target), named, reference (the named colour, or None), num_frames (the clip's T, e.g. for
    length bucketing). Through ``Dataset.with_transform``, every access (``ds[i]``, ``ds[a:b]``,
    iteration) also returns frames (uint8 [T, H, W, 3] numpy arrays), boxes (float32 [T, K, 4]), visible
    (bool [T, K]), target_index, objects, qa, mcq and scored_attributes, identical to
    ``ProceduralVideoDataset(split, num_clips, config)[i]``.
    ``ds.with_format`` / ``ds.set_format`` replace the transform (``ds.with_format(None)`` gives the
    metadata columns alone).
    """
    import datasets  # imported lazily: the rest of this module does not need it

    config = config if config is not None else ProceduralVideoConfig()
    _split_id(split)
    if not isinstance(num_clips, int) or num_clips < 0:
        raise ValueError(f"num_clips must be a non-negative int, got {num_clips!r}")
    rows = [
        _metadata_row(sample_text(config, split, i), clip_num_frames(config, split, i))
        for i in range(num_clips)
    ]
    columns = {key: [row[key] for row in rows] for key in HF_METADATA_COLUMNS}
    features = datasets.Features({key: datasets.Value(dtype) for key, dtype in HF_METADATA_COLUMNS.items()})
    dataset = datasets.Dataset.from_dict(columns, features=features)
    return dataset.with_transform(functools.partial(_render_batch, config=config))
