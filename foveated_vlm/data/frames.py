"""Still frames without labels for the frame encoder's self-supervised pretraining, and labelled patches for
its report card.

Two sources, both rendered once into memory as uint8 ``[N, H, W, 3]``:

* procedural frames: the first frame of procedural clips (:mod:`.procedural`'s own sampler and renderer) with
  objects at least ``MIN_OBJECT_PATCHES`` patches wide, a busier background and clutter specks
  (:class:`FrameSource` holds the ``ProceduralVideoConfig`` fields);
* real photographs: random square crops of the photographs that ship inside scikit-image's wheel
  (:data:`PHOTOS`, no download), resized with antialiasing; grey ones are repeated over three channels.

Pretraining sees pixels only. The report card also needs what each patch shows: :func:`patch_labels` gives
the object covering at least ``min_coverage`` of a patch (its shape and colour indices), or
``NO_OBJECT``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .procedural import (
    COLOURS,
    SHAPES,
    ProceduralVideoConfig,
    render_labelled_scene,
    sample_scene,
)

MIN_OBJECT_PATCHES = 3
"""The smallest object side, in patches, of the frames the encoder is pretrained and probed on (issue 21)."""
NO_OBJECT = -1
"""Patch label of a patch that no single object covers enough."""
PHOTOS: tuple[str, ...] = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "grass",
    "gravel",
    "brick",
    "moon",
    "page",
    "text",
    "clock",
    "coins",
    "hubble_deep_field",
)
"""Loader names in ``skimage.data`` of photographs stored inside the wheel (none needs a download)."""
PHOTO_INSTALL_HINT = "pip install scikit-image (or pip install -e '.[train]')"
SPLIT_SEED_OFFSET = 1_000_003
"""Photo crops of different splits draw from ``seed + split_index * SPLIT_SEED_OFFSET`` (disjoint streams)."""
PHOTO_SPLITS = ("train", "validation", "heldout")


def _default_procedural() -> dict[str, Any]:
    """Frames for a 64 px, 8 px patch encoder: 2-4 objects 3-4 patches wide on a busy, cluttered background."""
    return {
        "num_frames": 2,
        "named_object_fraction": 1.0,
        "num_other_moving": (0, 1),
        "num_distractors": (1, 2),
        "num_clutter": (2, 8),
        "background_contrast": 2.0,
        "small_size_range": (0.375, 0.42),
        "large_size_range": (0.44, 0.5),
        "occlusion_probability": 0.0,
        "camera_pan_probability": 0.0,
        "motions": ("static", "left to right", "right to left", "top to bottom", "bottom to top"),
    }


@dataclass(frozen=True)
class FrameSource:
    """Where pretraining and probing frames come from.

    Attributes:
        image_size: frame side in pixels; a multiple of ``patch_size``.
        patch_size: the encoder's patch side, to check that objects are at least ``MIN_OBJECT_PATCHES`` wide.
        photo_fraction: share of photographs among the frames of :func:`pretraining_frames` (in [0, 1]).
        photo_crop_range: (min, max) side of a photo crop as a fraction of the photo's shorter side.
        procedural: ``ProceduralVideoConfig`` fields (``image_size`` comes from above).
        seed: seed of the procedural clips and of the photo crops.
    """

    image_size: int = 64
    patch_size: int = 8
    photo_fraction: float = 0.25
    photo_crop_range: tuple[float, float] = (0.15, 1.0)
    procedural: dict[str, Any] = field(default_factory=_default_procedural)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if not 0.0 <= self.photo_fraction <= 1.0:
            raise ValueError(f"photo_fraction must lie in [0, 1], got {self.photo_fraction!r}")
        low, high = self.photo_crop_range
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(
                f"photo_crop_range must satisfy 0 < min <= max <= 1, got {self.photo_crop_range!r}"
            )
        smallest = self.procedural_config().small_size_range[0] * self.image_size
        if smallest < MIN_OBJECT_PATCHES * self.patch_size:
            raise ValueError(
                f"procedural.small_size_range starts at {smallest:.1f} px, below {MIN_OBJECT_PATCHES} patches "
                f"of {self.patch_size} px: raise it to >= {MIN_OBJECT_PATCHES * self.patch_size / self.image_size:.3f}"
            )

    def procedural_config(self) -> ProceduralVideoConfig:
        """The ``ProceduralVideoConfig`` of the procedural frames (lists given in YAML become tuples)."""
        values = {
            key: tuple(value) if isinstance(value, list) else value for key, value in self.procedural.items()
        }
        return ProceduralVideoConfig(**{**values, "image_size": self.image_size, "seed": self.seed})


@dataclass(frozen=True)
class LabelledFrames:
    """Procedural frames and what each pixel shows.

    Attributes:
        frames: uint8 [N, H, W, 3].
        shape_map, colour_map: int64 [N, H, W]: index into ``SHAPES`` / ``COLOURS`` of the object drawn at the
            pixel, or ``NO_OBJECT``.
    """

    frames: np.ndarray
    shape_map: np.ndarray
    colour_map: np.ndarray


def procedural_frames(source: FrameSource, split: str, count: int, start: int = 0) -> LabelledFrames:
    """The first frame of clips ``start .. start + count - 1`` of ``split`` (a pure function of its arguments)."""
    config = source.procedural_config()
    frames, shapes, colours = [], [], []
    for index in range(start, start + count):
        scene = sample_scene(config, split, index)
        pixels, _, _, labels = render_labelled_scene(scene, config)  # [T, H, W, 3], [T, H, W]
        shape_ids = np.array([SHAPES.index(obj.shape) for obj in scene.objects] + [NO_OBJECT])
        colour_ids = np.array([COLOURS.index(obj.colour) for obj in scene.objects] + [NO_OBJECT])
        objects = np.where(labels[0] >= 0, labels[0], len(scene.objects))  # background/occluder -> last entry
        frames.append(pixels[0])
        shapes.append(shape_ids[objects])
        colours.append(colour_ids[objects])
    return LabelledFrames(np.stack(frames), np.stack(shapes), np.stack(colours))


def patch_labels(pixel_map: np.ndarray, patch_size: int, min_coverage: float) -> np.ndarray:
    """Per patch, the label covering at least ``min_coverage`` of its pixels, else ``NO_OBJECT``.

    Args:
        pixel_map: int [N, H, W] with labels >= 0 or ``NO_OBJECT``; H and W multiples of ``patch_size``.
        min_coverage: in [0.5, 1]: at most one label covers more than half a patch (a tie at exactly half
            goes to the smaller label).
    Returns:
        int64 [N, H / p, W / p].
    """
    if not 0.5 <= min_coverage <= 1.0:
        raise ValueError(f"min_coverage must lie in [0.5, 1] (one label per patch), got {min_coverage!r}")
    num, height, width = pixel_map.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"frame sides ({height}, {width}) must be multiples of patch_size {patch_size}")
    patches = pixel_map.reshape(num, height // patch_size, patch_size, width // patch_size, patch_size)
    patches = patches.transpose(0, 1, 3, 2, 4).reshape(num, height // patch_size, width // patch_size, -1)
    num_labels = int(pixel_map.max()) + 1
    counts = np.stack([(patches == label).sum(-1) for label in range(num_labels)], axis=-1)  # [N, h, w, L]
    best = counts.argmax(-1)
    covered = counts.max(-1) >= min_coverage * patch_size**2
    return np.where(covered, best, NO_OBJECT).astype(np.int64)


def photo_frames(source: FrameSource, split: str, count: int) -> np.ndarray:
    """``count`` random square crops of :data:`PHOTOS`, resized to ``image_size``: uint8 [count, S, S, 3]."""
    try:
        from skimage import data as photo_data
    except ImportError as error:
        raise ImportError(f"real photographs need scikit-image: {PHOTO_INSTALL_HINT}") from error
    if split not in PHOTO_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {PHOTO_SPLITS}")
    rng = np.random.default_rng(source.seed + PHOTO_SPLITS.index(split) * SPLIT_SEED_OFFSET)
    photos = [_as_rgb(getattr(photo_data, name)()) for name in PHOTOS]
    crops = [_random_crop(photos[rng.integers(len(photos))], source, rng) for _ in range(count)]
    return np.stack(crops) if crops else np.zeros((0, source.image_size, source.image_size, 3), np.uint8)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W] or [H, W, 3|4] -> uint8 [H, W, 3]."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3].astype(np.uint8)


def _random_crop(photo: np.ndarray, source: FrameSource, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of ``photo`` [H, W, 3], mirrored half the time, resized to [S, S, 3] uint8."""
    height, width = photo.shape[:2]
    side = max(source.patch_size, int(rng.uniform(*source.photo_crop_range) * min(height, width)))
    top, left = rng.integers(height - side + 1), rng.integers(width - side + 1)
    crop = photo[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    tensor = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float()  # [1, 3, side, side]
    size = (source.image_size, source.image_size)
    resized = F.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def pretraining_frames(source: FrameSource, count: int) -> np.ndarray:
    """``count`` unlabelled training frames, ``photo_fraction`` of them photographs: uint8 [count, S, S, 3]."""
    if count < 1:
        raise ValueError(f"the number of pretraining frames must be positive, got {count!r}")
    num_photos = round(source.photo_fraction * count)
    procedural = procedural_frames(source, "train", count - num_photos).frames
    return np.concatenate([procedural, photo_frames(source, "train", num_photos)])


__all__ = [
    "MIN_OBJECT_PATCHES",
    "NO_OBJECT",
    "PHOTOS",
    "FrameSource",
    "LabelledFrames",
    "patch_labels",
    "photo_frames",
    "pretraining_frames",
    "procedural_frames",
]
