"""Procedural video clips of moving shapes: the project's built-in default data and foveation test bed.

Every clip shows a few flat-coloured shapes (square, circle, triangle, diamond) on a dark, mildly
textured background. One of them, the *target*, is described by an exact caption built from fixed
templates, e.g. ``"the red square moves from left to right."``. The per-frame box of every object is
known exactly, so evaluation can check whether the model's gaze lands on the object the text is about.

Clip ``i`` of split ``s`` is a pure function of ``(config, s, i)``: its random stream is
``numpy.random.default_rng(numpy.random.SeedSequence([config.seed, split_id, i]))``. Nothing is
stored, so a split can have any size.

Two kinds of clip:

* *generic*: exactly one object (the target) moves, the others are static distractors, and the
  prompt is generic ("What happens in the video?").
* *named*: several objects move and the prompt names the target ("Describe the blue circle."), so
  where to look depends on the text. A static target is always named (it would be ambiguous among
  static distractors otherwise).

The ``(colour, shape, motion)`` triples of the target are split deterministically (from the seed)
into training triples and held-out triples; the ``"heldout"`` split only uses held-out triples, which
never occur as targets in ``"train"`` or ``"validation"``. Every single colour, shape and motion value
still occurs in training: only the combination is new.

Geometry conventions: pixel ``(row, col)`` covers ``[col, col + 1] x [row, row + 1]`` in continuous
pixel coordinates; a pixel belongs to an object when its centre lies inside the object's shape.
Boxes are ``[x0, y0, x1, y1]`` in those coordinates (x to the right, y down), clipped to the image.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 100, 235),
    "yellow": (235, 220, 50),
    "purple": (155, 65, 210),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
"""RGB of each object colour. Every colour has a channel far above the background's maximum."""

COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
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

SPLIT_IDS: dict[str, int] = {"train": 0, "validation": 1, "heldout": 2}
"""Split name -> the second entry of the clip's SeedSequence."""
PARTITION_STREAM_ID = len(SPLIT_IDS)
"""Second entry of the SeedSequence that partitions triples into train / held-out."""

# ----------------------------------------------------------------------------------------------------
# Text templates
# ----------------------------------------------------------------------------------------------------

CAPTION_TEMPLATES: dict[str, str] = {
    "left to right": "the {colour} {shape} moves from left to right.",
    "right to left": "the {colour} {shape} moves from right to left.",
    "top to bottom": "the {colour} {shape} moves from top to bottom.",
    "bottom to top": "the {colour} {shape} moves from bottom to top.",
    BOUNCING: "the {colour} {shape} bounces around.",
    STATIC: "the {colour} {shape} stays still.",
}
GENERIC_PROMPTS: tuple[str, ...] = (
    "What happens in the video?",
    "Describe what happens in the video.",
    "What is going on in this clip?",
    "Describe the motion in the video.",
    "What does the moving object do?",
)
NAMED_PROMPTS: tuple[str, ...] = (
    "Describe the {colour} {shape}.",
    "What does the {colour} {shape} do?",
    "How does the {colour} {shape} move?",
    "Tell me what the {colour} {shape} is doing.",
)
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
MCQ_NUM_OPTIONS = 4
MCQ_GENERIC_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "motion")

_MOTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    *((motion, re.compile(rf"\b{motion}\b")) for motion in LINEAR_MOTIONS),
    (BOUNCING, re.compile(r"\bbounc(?:e|es|ed|ing)\b")),
    (STATIC, re.compile(r"\b(?:(?:stays|stands|is|remains|keeps) still|static|stationary|does not move)\b")),
)

# ----------------------------------------------------------------------------------------------------
# Rendering constants
# ----------------------------------------------------------------------------------------------------

MIN_IMAGE_SIZE = 16
MIN_NUM_FRAMES = 2
MAX_SIZE_FRACTION = 0.5
MIN_OBJECT_PIXELS = 2.0
"""Smallest object side in pixels, whatever the size fraction."""
MAX_PLACEMENT_TRIES = 20
"""Rejection-sampling attempts to place a static distractor off the target's path."""
MAX_PAN_TO_OBJECT_SPEED = 0.5
"""Camera pan speed is capped at this fraction of the slowest linear object, so that linear motion in
the image always goes in the captioned direction."""
BOUNCE_HIT_RANGE: tuple[float, float] = (0.2, 0.6)
"""A bouncing object hits a wall after this fraction of its clip-long travel (so a bounce is seen)."""
OCCLUDER_RGB: tuple[int, int, int] = (128, 128, 128)
BACKGROUND_LEVEL = 18
BACKGROUND_BLOTCH_AMPLITUDE = 28
BACKGROUND_GRAIN_AMPLITUDE = 8
BACKGROUND_CELL_PIXELS = 8
"""Size of the cells of the smooth background noise, in pixels."""
BACKGROUND_MIN_TINT = 0.6
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

Triple = tuple[str, str, str]


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProceduralVideoConfig:
    """Everything that defines the procedural data set. Frozen and hashable.

    Attributes:
        image_size: side of the square frames in pixels (>= 16).
        num_frames: frames per clip T (>= 2).
        num_distractors: inclusive (min, max) number of static distractor objects per clip.
        num_other_moving: inclusive (min, max) number of moving objects besides the target in a clip
            with a named-object prompt (min >= 1: the target is one among several moving objects).
        small_size_range: (min, max) side of a "small" object as a fraction of image_size.
        large_size_range: (min, max) side of a "large" object as a fraction of image_size (max <= 0.5).
        speed_range: (min, max) speed of linear motion, fraction of image_size per frame. Capped so the
            whole path stays inside the (world) frame.
        bounce_speed_range: (min, max) speed of bouncing objects, fraction of image_size per frame.
        occlusion_probability: chance that a grey bar, drawn on top of everything, crosses the moving
            target's path.
        occluder_width_fraction: width of that bar as a fraction of image_size.
        camera_pan_probability: chance that the camera pans (background and all objects shift).
        camera_pan_speed_range: (min, max) pan speed, fraction of image_size per frame (capped at half
            the slowest linear object's speed).
        named_object_fraction: fraction of clips whose prompt names the target among several moving
            objects (the rest have one moving object and a generic prompt).
        heldout_fraction: fraction of (colour, shape, motion) target triples held out, in (0, 1).
        min_visible_fraction: an object counts as visible in a frame when at least this fraction of its
            pixels is shown (not covered by the bar or a later-drawn object, not off-frame).
        colours, shapes, motions: the vocabulary targets and distractors are drawn from.
        seed: global seed (>= 0) of the triple partition and of every clip.
    """

    image_size: int = 64
    num_frames: int = 8
    num_distractors: tuple[int, int] = (1, 3)
    num_other_moving: tuple[int, int] = (1, 2)
    small_size_range: tuple[float, float] = (0.12, 0.18)
    large_size_range: tuple[float, float] = (0.24, 0.32)
    speed_range: tuple[float, float] = (0.05, 0.10)
    bounce_speed_range: tuple[float, float] = (0.15, 0.30)
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

    def __post_init__(self) -> None:
        """Validate every field; raise ValueError naming the offending one."""
        if not isinstance(self.image_size, int) or self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {self.image_size!r}")
        if not isinstance(self.num_frames, int) or self.num_frames < MIN_NUM_FRAMES:
            raise ValueError(f"num_frames must be an int >= {MIN_NUM_FRAMES}, got {self.num_frames!r}")
        _check_range("num_distractors", self.num_distractors, low=0)
        _check_range("num_other_moving", self.num_other_moving, low=1)
        for name in ("small_size_range", "large_size_range"):
            _check_range(name, getattr(self, name), low=0.0, high=MAX_SIZE_FRACTION, open_low=True)
        for name in ("speed_range", "bounce_speed_range", "camera_pan_speed_range"):
            _check_range(name, getattr(self, name), low=0.0, open_low=True)
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
        max_objects = 1 + self.num_other_moving[1] + self.num_distractors[1]
        max_pairs = len(self.colours) * len(self.shapes)
        if max_objects > min(max_pairs, len(NUMBER_WORDS) - 1):
            raise ValueError(
                f"num_distractors/num_other_moving allow {max_objects} objects per clip, more than "
                f"min({max_pairs} distinct (colour, shape) pairs, {len(NUMBER_WORDS) - 1})"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")


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


def _check_fraction(name: str, value: float, open_low: bool, open_high: bool) -> None:
    """Raise ValueError unless ``value`` lies in the unit interval (open or closed at each end)."""
    bad_low = value <= 0.0 if open_low else value < 0.0
    bad_high = value >= 1.0 if open_high else value > 1.0
    if bad_low or bad_high:
        interval = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")


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


def caption_for(colour: str, shape: str, motion: str) -> str:
    """The exact caption of a target, e.g. ``caption_for("red", "square", "left to right")`` ->
    ``"the red square moves from left to right."``. Raises ValueError for unknown attributes."""
    _check_vocabulary("colour", (colour,), COLOURS)
    _check_vocabulary("shape", (shape,), SHAPES)
    _check_vocabulary("motion", (motion,), MOTIONS)
    return CAPTION_TEMPLATES[motion].format(colour=colour, shape=shape)


def normalize_text(text: str) -> str:
    """Lower-case, turn every run of non-letters into one space, strip."""
    return re.sub(r"[^a-z]+", " ", text.lower()).strip()


def parse_caption(text: str) -> dict[str, str | None]:
    """Recover ``{"colour", "shape", "motion"}`` from a caption (or prompt, or generated text).

    Tolerates case, extra whitespace and punctuation ("The  RED square moves from left-to-right!!").
    Each field is the first value mentioned in the text, or None when none is.
    """
    normalized = f" {normalize_text(text)} "
    words = normalized.split()
    colour = next((word for word in words if word in COLOUR_RGB), None)
    shape = next((word for word in words if word in SHAPES), None)
    hits = [
        (match.start(), motion)
        for motion, pattern in _MOTION_PATTERNS
        if (match := pattern.search(normalized)) is not None
    ]
    motion = min(hits)[1] if hits else None
    return {"colour": colour, "shape": shape, "motion": motion}


# ----------------------------------------------------------------------------------------------------
# Train / held-out partition of target triples
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def split_triples(config: ProceduralVideoConfig) -> tuple[tuple[Triple, ...], tuple[Triple, ...]]:
    """Partition all (colour, shape, motion) triples into (train triples, held-out triples).

    Deterministic from ``config.seed``; ``round(heldout_fraction * n)`` (at least 1) triples are held
    out, greedily in a seeded random order, skipping any triple whose removal would leave one of its
    colour, shape or motion values without a training triple. Raises ValueError when that is impossible.
    """
    triples = list(itertools.product(config.colours, config.shapes, config.motions))
    num_heldout = max(1, round(config.heldout_fraction * len(triples)))
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, PARTITION_STREAM_ID]))
    remaining = [Counter(triple[position] for triple in triples) for position in range(3)]
    heldout: set[Triple] = set()
    for order_index in rng.permutation(len(triples)):
        if len(heldout) == num_heldout:
            break
        triple = triples[order_index]
        if all(remaining[position][value] > 1 for position, value in enumerate(triple)):
            heldout.add(triple)
            for position, value in enumerate(triple):
                remaining[position][value] -= 1
    if len(heldout) < num_heldout:
        raise ValueError(
            f"heldout_fraction={config.heldout_fraction} is too large: only {len(heldout)} of "
            f"{len(triples)} triples can be held out while every value stays in training"
        )
    train = tuple(triple for triple in triples if triple not in heldout)
    return train, tuple(triple for triple in triples if triple in heldout)


def triples_for_split(config: ProceduralVideoConfig, split: str) -> tuple[Triple, ...]:
    """Target triples a split draws from: train triples for "train"/"validation", else held-out."""
    split_id = _split_id(split)
    train, heldout = split_triples(config)
    return heldout if split_id == SPLIT_IDS["heldout"] else train


def _split_id(split: str) -> int:
    """Integer id of a split name; ValueError for an unknown one."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_IDS)}")
    return SPLIT_IDS[split]


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
    background_seed: int

    @property
    def target(self) -> SceneObject:
        """The object the caption describes."""
        return self.objects[self.target_index]


def clip_streams(config: ProceduralVideoConfig, split: str, index: int) -> tuple[np.random.Generator, ...]:
    """The (text, layout) random streams of clip ``index`` of ``split``: the two children of
    ``SeedSequence([config.seed, split_id, index])``."""
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"clip index must be a non-negative int, got {index!r}")
    children = np.random.SeedSequence([config.seed, _split_id(split), int(index)]).spawn(2)
    return tuple(np.random.default_rng(child) for child in children)


def sample_text(config: ProceduralVideoConfig, split: str, index: int) -> ClipText:
    """Target triple and size, prompt kind, prompt, caption and MCQ of a clip (no layout; ~30 us)."""
    rng = clip_streams(config, split, index)[0]
    triples = triples_for_split(config, split)
    colour, shape, motion = triples[int(rng.integers(len(triples)))]
    named = motion == STATIC or bool(rng.random() < config.named_object_fraction)
    return ClipText(
        split=split,
        index=int(index),
        colour=colour,
        shape=shape,
        motion=motion,
        size=_pick(rng, SIZES),
        named=named,
        prompt=_sample_prompt(rng, named, colour, shape),
        caption=caption_for(colour, shape, motion),
        mcq=_multiple_choice(rng, colour, shape, motion, named),
    )


def sample_scene(config: ProceduralVideoConfig, split: str, index: int) -> Scene:
    """Sample the text, layout and motion of clip ``index`` of ``split`` (no rendering; < 1 ms)."""
    text = sample_text(config, split, index)
    rng = clip_streams(config, split, index)[1]
    num_distractors = int(rng.integers(config.num_distractors[0], config.num_distractors[1] + 1))
    num_other = (
        int(rng.integers(config.num_other_moving[0], config.num_other_moving[1] + 1)) if text.named else 0
    )
    pairs = _sample_pairs(rng, config, (text.colour, text.shape), num_distractors + num_other)
    moving_motions = [m for m in config.motions if m != STATIC]

    target = _make_object(
        rng, config, text.colour, text.shape, text.motion, layer=num_distractors + num_other, size=text.size
    )
    others = [
        _make_object(rng, config, c, s, _pick(rng, moving_motions), layer=num_distractors + i)
        for i, (c, s) in enumerate(pairs[num_distractors:])
    ]
    statics = _place_statics(rng, config, pairs[:num_distractors], avoid=[_swept_box(target)])
    objects = [*statics, *others, target]
    order = rng.permutation(len(objects))
    objects = [objects[i] for i in order]
    target_index = int(np.flatnonzero(order == len(order) - 1)[0])
    return Scene(
        text=text,
        objects=tuple(objects),
        target_index=target_index,
        qa=_question_answers(target, objects, text.named),
        occluder=_sample_occluder(rng, config, target),
        camera=_sample_camera(rng, config, objects),
        background_seed=int(rng.integers(2**SEED_BITS)),
    )


def _pick(rng: np.random.Generator, values: tuple[str, ...] | list[str]) -> str:
    """A uniformly random element of a short sequence of strings."""
    return values[int(rng.integers(len(values)))]


def _sample_pairs(
    rng: np.random.Generator, config: ProceduralVideoConfig, target_pair: tuple[str, str], count: int
) -> list[tuple[str, str]]:
    """``count`` distinct (colour, shape) pairs, none equal to the target's."""
    pairs = [pair for pair in itertools.product(config.colours, config.shapes) if pair != target_pair]
    chosen = rng.choice(len(pairs), size=count, replace=False)
    return [pairs[i] for i in chosen]


def _make_object(
    rng: np.random.Generator,
    config: ProceduralVideoConfig,
    colour: str,
    shape: str,
    motion: str,
    layer: int,
    size: str | None = None,
) -> SceneObject:
    """An object with the given (else a random) size and a path that realises ``motion``."""
    size = size if size is not None else _pick(rng, SIZES)
    side = _sample_side(rng, config, size)
    path = _sample_path(rng, config, motion, side)
    return SceneObject(
        colour=colour, shape=shape, size=size, motion=motion, side=side, path=path, layer=layer
    )


def _sample_side(rng: np.random.Generator, config: ProceduralVideoConfig, size: str) -> float:
    """Side in pixels of a "small" or "large" object."""
    low, high = config.small_size_range if size == "small" else config.large_size_range
    return max(MIN_OBJECT_PIXELS, float(rng.uniform(low, high)) * config.image_size)


def _sample_path(
    rng: np.random.Generator, config: ProceduralVideoConfig, motion: str, side: float
) -> np.ndarray:
    """Top-left corner per frame, shape [T, 2] (x, y), inside the world frame [0, image_size - side]."""
    if motion in LINEAR_MOTIONS:
        return _linear_path(rng, config, motion, side)
    if motion == BOUNCING:
        return _bouncing_path(rng, config, side)
    room = config.image_size - side
    return np.repeat(rng.uniform(0.0, room, size=(1, 2)), config.num_frames, axis=0)


def _linear_path(
    rng: np.random.Generator, config: ProceduralVideoConfig, motion: str, side: float
) -> np.ndarray:
    """Constant-velocity path along one axis in the motion's direction; shape [T, 2]."""
    axis, sign = LINEAR_MOTIONS[motion]
    steps = config.num_frames - 1
    room = config.image_size - side
    speed = min(float(rng.uniform(*config.speed_range)) * config.image_size, room / steps)
    travel = speed * steps
    start = float(rng.uniform(0.0, room - travel))
    along = start + speed * np.arange(config.num_frames)
    path = np.empty((config.num_frames, 2))
    path[:, axis] = along if sign > 0 else room - along
    path[:, 1 - axis] = rng.uniform(0.0, room)
    return path


def _bouncing_path(rng: np.random.Generator, config: ProceduralVideoConfig, side: float) -> np.ndarray:
    """Straight flight reflected off the world walls; hits a wall mid-clip. Shape [T, 2]."""
    room = config.image_size - side
    speed = float(rng.uniform(*config.bounce_speed_range)) * config.image_size
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    velocity = speed * np.array([math.cos(angle), math.sin(angle)])
    start = rng.uniform(0.0, room, size=2)
    dominant = int(np.argmax(np.abs(velocity)))
    travel = abs(velocity[dominant]) * (config.num_frames - 1)
    to_wall = min(room, float(rng.uniform(*BOUNCE_HIT_RANGE)) * travel)
    start[dominant] = room - to_wall if velocity[dominant] > 0 else to_wall
    raw = start[None, :] + np.arange(config.num_frames)[:, None] * velocity[None, :]
    folded = np.mod(raw, 2.0 * room)
    return np.where(folded > room, 2.0 * room - folded, folded)


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
    pairs: list[tuple[str, str]],
    avoid: list[np.ndarray],
) -> list[SceneObject]:
    """Static distractors, placed (best effort) off the target's path and off each other."""
    occupied = list(avoid)
    objects = []
    for layer, (colour, shape) in enumerate(pairs):
        for _ in range(MAX_PLACEMENT_TRIES):
            obj = _make_object(rng, config, colour, shape, STATIC, layer=layer)
            box = _swept_box(obj)
            if not any(_boxes_overlap(box, other) for other in occupied):
                break
        occupied.append(box)
        objects.append(obj)
    return objects


def _sample_occluder(
    rng: np.random.Generator, config: ProceduralVideoConfig, target: SceneObject
) -> np.ndarray | None:
    """With occlusion_probability, a full-length grey bar across the middle of a moving target's path:
    vertical for horizontal or bouncing motion, horizontal for vertical motion. World [x0, y0, x1, y1]."""
    if target.motion == STATIC or rng.random() >= config.occlusion_probability:
        return None
    axis = LINEAR_MOTIONS[target.motion][0] if target.motion in LINEAR_MOTIONS else 0
    centre = float(target.path[:, axis].mean()) + target.side / 2.0
    half_width = config.occluder_width_fraction * config.image_size / 2.0
    box = np.array([-np.inf, -np.inf, np.inf, np.inf])
    box[axis], box[axis + 2] = centre - half_width, centre + half_width
    return box


def _sample_camera(
    rng: np.random.Generator, config: ProceduralVideoConfig, objects: list[SceneObject]
) -> np.ndarray:
    """Camera offset per frame, shape [T, 2]: zero, or a constant-velocity pan in a random direction."""
    camera = np.zeros((config.num_frames, 2))
    if rng.random() >= config.camera_pan_probability:
        return camera
    speed = float(rng.uniform(*config.camera_pan_speed_range)) * config.image_size
    linear_speeds = [
        np.abs(np.diff(obj.path, axis=0)).max() for obj in objects if obj.motion in LINEAR_MOTIONS
    ]
    if linear_speeds:
        speed = min(speed, MAX_PAN_TO_OBJECT_SPEED * float(min(linear_speeds)))
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    velocity = speed * np.array([math.cos(angle), math.sin(angle)])
    return np.arange(config.num_frames)[:, None] * velocity[None, :]


def _sample_prompt(rng: np.random.Generator, named: bool, colour: str, shape: str) -> str:
    """A generic prompt, or one naming the target."""
    if not named:
        return _pick(rng, GENERIC_PROMPTS)
    return _pick(rng, NAMED_PROMPTS).format(colour=colour, shape=shape)


def _question_answers(
    target: SceneObject, objects: list[SceneObject], named: bool
) -> tuple[dict[str, str], ...]:
    """Short-answer questions about the clip, each {"question", "answer"} (lower case)."""
    name = f"{target.colour} {target.shape}"
    num_moving = sum(obj.motion != STATIC for obj in objects)
    qa = [
        {"question": f"where does the {name} go?", "answer": WHERE_ANSWERS[target.motion]},
        {"question": f"does the {name} move?", "answer": "no" if target.motion == STATIC else "yes"},
        {"question": f"is the {name} small or large?", "answer": target.size},
        {"question": "how many objects are there?", "answer": NUMBER_WORDS[len(objects)]},
        {"question": "how many objects move?", "answer": NUMBER_WORDS[num_moving]},
    ]
    if not named:
        qa = [
            {"question": "what colour is the moving object?", "answer": target.colour},
            {"question": "what shape is the moving object?", "answer": target.shape},
            *qa,
        ]
    return tuple(qa)


def _multiple_choice(
    rng: np.random.Generator, colour: str, shape: str, motion: str, named: bool
) -> dict[str, Any]:
    """One MVBench-style question: {"question", "options" (4 distinct), "answer_index", "attribute"}.

    Generic clips ask about the moving object's colour, shape or motion; named clips about the named
    object's motion. Distractor options are other values of the same attribute.
    """
    attribute = _pick(rng, MCQ_GENERIC_ATTRIBUTES) if not named else "motion"
    if attribute == "colour":
        question, vocabulary, correct = "What colour is the moving object?", list(COLOURS), colour
    elif attribute == "shape":
        question, vocabulary, correct = "What shape is the moving object?", list(SHAPES), shape
    else:
        question = f"What does the {colour} {shape} do?"
        vocabulary, correct = [MOTION_OPTIONS[m] for m in MOTIONS], MOTION_OPTIONS[motion]
    wrong = [value for value in vocabulary if value != correct]
    options = [correct, *(wrong[i] for i in rng.choice(len(wrong), size=MCQ_NUM_OPTIONS - 1, replace=False))]
    order = rng.permutation(MCQ_NUM_OPTIONS)
    options = [options[i] for i in order]
    return {
        "question": question,
        "options": options,
        "answer_index": int(np.flatnonzero(order == 0)[0]),
        "attribute": attribute,
    }


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------


def render_scene(scene: Scene, config: ProceduralVideoConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a scene.

    Returns:
        frames: uint8 [T, H, W, 3]; boxes: float32 [T, K, 4] ([x0, y0, x1, y1] clipped to the image);
        visible: bool [T, K] (at least ``min_visible_fraction`` of the object's pixels shown).
    """
    size = config.image_size
    frames = _background_frames(scene.background_seed, scene.camera, size)
    labels = np.full(frames.shape[:3], BACKGROUND_LABEL, dtype=np.int16)
    corners = np.stack([obj.path for obj in scene.objects], axis=1) - scene.camera[:, None, :]  # [T, K, 2]
    drawn = {}
    for k in sorted(range(len(scene.objects)), key=lambda i: scene.objects[i].layer):
        obj = scene.objects[k]
        drawn[k] = _draw_object(frames, labels, obj.shape, corners[:, k], obj.side, COLOUR_RGB[obj.colour], k)
    if scene.occluder is not None:
        _draw_occluder(frames, labels, scene.occluder, scene.camera)
    visible = np.zeros(labels.shape[:1] + (len(scene.objects),), dtype=np.bool_)
    for k, (pixels, full_area) in drawn.items():
        shown = _count_shown(labels, pixels, k)
        visible[:, k] = (full_area > 0) & (shown >= config.min_visible_fraction * full_area)
    sides = np.array([obj.side for obj in scene.objects])[None, :, None]
    boxes = np.clip(np.concatenate([corners, corners + sides], axis=-1), 0.0, size).astype(np.float32)
    return frames, boxes, visible


def _draw_object(
    frames: np.ndarray,
    labels: np.ndarray,
    shape: str,
    corners: np.ndarray,
    side: float,
    rgb: tuple[int, int, int],
    label: int,
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Paint one object in every frame at once.

    Args:
        frames: uint8 [T, H, W, 3] and labels: int16 [T, H, W], both painted in place.
        corners: [T, 2] top-left (x, y) of the object's box in image pixels; side: box side in pixels.
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
    frames[pixels] = rgb
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


def _background_frames(seed: int, camera: np.ndarray, size: int) -> np.ndarray:
    """Per-frame crops of one dark textured background that shifts with the (rounded) camera: [T, H, W, 3]."""
    offsets = np.rint(camera).astype(np.int64)
    offsets -= offsets.min(axis=0)
    extent = offsets.max(axis=0)
    texture = _background_texture(np.random.default_rng(seed), size + int(extent[1]), size + int(extent[0]))
    return np.stack([texture[oy : oy + size, ox : ox + size] for ox, oy in offsets])


def _background_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth tinted blotches plus grain, all dark (max channel < 60): uint8 [height, width, 3]."""
    cell = BACKGROUND_CELL_PIXELS
    coarse = rng.random((height // cell + 2, width // cell + 2))
    smooth = _bilinear_upsample(coarse, height, width, cell)
    tint = rng.uniform(BACKGROUND_MIN_TINT, 1.0, size=3)
    grain = rng.integers(0, BACKGROUND_GRAIN_AMPLITUDE + 1, size=(height, width, 3))
    value = BACKGROUND_LEVEL + BACKGROUND_BLOTCH_AMPLITUDE * smooth[..., None] * tint + grain
    return value.astype(np.uint8)


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
    clip_id ("train-000042"); split; index; named (bool: prompt names the target); occlusion; camera_pan.
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
        "occlusion": scene.occluder is not None,
        "camera_pan": bool(np.any(scene.camera != 0)),
    }


class ClipIndexError(IndexError, ValueError):
    """Index out of range: a ValueError (as documented) that also ends Python's legacy iteration."""


class ProceduralVideoDataset:
    """Map-style data set of ``num_clips`` procedural clips of one split (rendered on access).

    ``dataset[i]`` is ``make_clip(config, split, i)`` (see there for keys and shapes). Works with a torch
    DataLoader; note K (objects per clip) varies, so batch ``boxes``/``visible`` with a custom collate.
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
        split_triples(self.config)  # fail early on an impossible partition

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
}
"""Stored columns of ``as_hf_dataset`` and their ``datasets.Value`` dtypes."""


def _metadata_row(text: ClipText) -> dict[str, Any]:
    """The stored (non-pixel) columns of one clip in ``as_hf_dataset``."""
    return {
        "clip_id": text.clip_id,
        "split": text.split,
        "index": text.index,
        "prompt": text.prompt,
        "caption": text.caption,
        "colour": text.colour,
        "shape": text.shape,
        "motion": text.motion,
        "size": text.size,
        "named": text.named,
    }


def _render_batch(batch: dict[str, list[Any]], config: ProceduralVideoConfig) -> dict[str, list[Any]]:
    """``with_transform`` hook: add the rendered fields of every clip in a batch of metadata rows."""
    clips = [
        make_clip(config, split, int(index))
        for split, index in zip(batch["split"], batch["index"], strict=True)
    ]
    rendered = {
        key: [clip[key] for clip in clips]
        for key in ("frames", "boxes", "visible", "target_index", "objects", "qa", "mcq")
    }
    return {**batch, **rendered}


def as_hf_dataset(split: str, num_clips: int, config: ProceduralVideoConfig | None = None):
    """A ``datasets.Dataset`` of ``num_clips`` clips of ``split``, rendered lazily.

    Stored columns (computed up front from each clip's text stream only, tens of microseconds per clip,
    no layout or pixels): clip_id, split, index, prompt, caption, colour, shape, motion, size (of the
    target), named. Through
    ``Dataset.with_transform``, every access (``ds[i]``, ``ds[a:b]``, iteration) also returns frames
    (uint8 [T, H, W, 3] numpy arrays), boxes (float32 [T, K, 4]), visible (bool [T, K]), target_index,
    objects, qa and mcq, identical to ``ProceduralVideoDataset(split, num_clips, config)[i]``.
    ``ds.with_format`` / ``ds.set_format`` replace the transform (``ds.with_format(None)`` gives the
    metadata columns alone).
    """
    import datasets  # imported lazily: the rest of this module does not need it

    config = config if config is not None else ProceduralVideoConfig()
    _split_id(split)
    if not isinstance(num_clips, int) or num_clips < 0:
        raise ValueError(f"num_clips must be a non-negative int, got {num_clips!r}")
    rows = [_metadata_row(sample_text(config, split, i)) for i in range(num_clips)]
    columns = {key: [row[key] for row in rows] for key in HF_METADATA_COLUMNS}
    features = datasets.Features({key: datasets.Value(dtype) for key, dtype in HF_METADATA_COLUMNS.items()})
    dataset = datasets.Dataset.from_dict(columns, features=features)
    return dataset.with_transform(functools.partial(_render_batch, config=config))
