"""Tests of the procedural moving-shapes video data set (foveated_vlm.data.procedural)."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from foveated_vlm.data import (
    CAPTION_TEMPLATES,
    COLOUR_RGB,
    COLOURS,
    GENERIC_PROMPTS,
    MOTIONS,
    SHAPES,
    ProceduralVideoConfig,
    ProceduralVideoDataset,
    as_hf_dataset,
    caption_for,
    make_clip,
    parse_caption,
    procedural,
    render_box_mask,
    split_triples,
)
from foveated_vlm.data.procedural import LINEAR_MOTIONS, MOTION_OPTIONS, STATIC, WHERE_ANSWERS, sample_text

CONFIG = ProceduralVideoConfig()


def _target(clip: dict) -> dict:
    return clip["objects"][clip["target_index"]]


def _triple(obj: dict) -> tuple[str, str, str]:
    return obj["colour"], obj["shape"], obj["motion"]


def _centres(clip: dict, k: int) -> np.ndarray:
    """Box centres of object k per frame, [T, 2] (x, y)."""
    boxes = clip["boxes"][:, k]
    return (boxes[:, :2] + boxes[:, 2:]) / 2.0


def _colour_mask(clip: dict, colour: str) -> np.ndarray:
    """Pixels of exactly that object colour, bool [T, H, W]."""
    return np.all(clip["frames"] == np.array(COLOUR_RGB[colour], dtype=np.uint8), axis=-1)


def _unique_colour_clips(config: ProceduralVideoConfig, split: str, count: int, occlusion: bool):
    """Clips whose target colour no other object has, with or without an occluder."""
    found = []
    for index in itertools.count():
        clip = make_clip(config, split, index)
        colours = [obj["colour"] for obj in clip["objects"]]
        if clip["occlusion"] == occlusion and colours.count(_target(clip)["colour"]) == 1:
            found.append(clip)
        if len(found) == count:
            return found


# ----------------------------------------------------------------------------------------------------
# Structure and determinism
# ----------------------------------------------------------------------------------------------------


def test_clip_keys_shapes_and_dtypes() -> None:
    clip = ProceduralVideoDataset("train", 5)[3]
    t, size = CONFIG.num_frames, CONFIG.image_size
    k = len(clip["objects"])
    assert clip["frames"].shape == (t, size, size, 3) and clip["frames"].dtype == np.uint8
    assert clip["boxes"].shape == (t, k, 4) and clip["boxes"].dtype == np.float32
    assert clip["visible"].shape == (t, k) and clip["visible"].dtype == np.bool_
    assert 0 <= clip["target_index"] < k
    assert clip["clip_id"] == "train-000003"
    assert clip["boxes"].min() >= 0.0 and clip["boxes"].max() <= size
    assert np.all(clip["boxes"][..., 2:] >= clip["boxes"][..., :2])
    assert {"colour", "shape", "size", "motion"} <= set(clip["objects"][0])
    assert isinstance(clip["prompt"], str) and isinstance(clip["caption"], str)
    # dark, textured background: many distinct colours, mostly dark pixels
    assert len(np.unique(clip["frames"][0].reshape(-1, 3), axis=0)) > 20
    assert np.median(clip["frames"]) < 80


def test_same_clip_twice_is_identical_and_indices_differ() -> None:
    first = make_clip(CONFIG, "train", 42)
    second = ProceduralVideoDataset("train", 100, ProceduralVideoConfig())[42]
    assert first.keys() == second.keys()
    for key, value in first.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, second[key])
        else:
            assert value == second[key], key
    other = make_clip(CONFIG, "train", 43)
    assert not np.array_equal(first["frames"], other["frames"])
    assert not np.array_equal(first["frames"], make_clip(CONFIG, "validation", 42)["frames"])
    reseeded = make_clip(ProceduralVideoConfig(seed=1), "train", 42)
    assert not np.array_equal(first["frames"], reseeded["frames"])


def test_objects_have_distinct_colour_shape_pairs() -> None:
    for index in range(150):
        clip = make_clip(CONFIG, "train", index)
        pairs = [(obj["colour"], obj["shape"]) for obj in clip["objects"]]
        assert len(set(pairs)) == len(pairs)


# ----------------------------------------------------------------------------------------------------
# Held-out combinations
# ----------------------------------------------------------------------------------------------------


def test_heldout_triples_are_disjoint_and_cover_every_value() -> None:
    train, heldout = split_triples(CONFIG)
    everything = set(itertools.product(COLOURS, SHAPES, MOTIONS))
    assert set(train) | set(heldout) == everything and not set(train) & set(heldout)
    assert len(heldout) == round(CONFIG.heldout_fraction * len(everything))
    for position, vocabulary in enumerate((COLOURS, SHAPES, MOTIONS)):
        assert {triple[position] for triple in train} == set(vocabulary)

    train_seen = {
        (text.colour, text.shape, text.motion)
        for text in (sample_text(CONFIG, "train", i) for i in range(500))
    }
    validation_seen = {
        (text.colour, text.shape, text.motion)
        for text in (sample_text(CONFIG, "validation", i) for i in range(200))
    }
    heldout_seen = {
        (text.colour, text.shape, text.motion)
        for text in (sample_text(CONFIG, "heldout", i) for i in range(200))
    }
    assert not train_seen & set(heldout)
    assert not validation_seen & set(heldout)
    assert heldout_seen <= set(heldout) and len(heldout_seen) > 1
    for position, vocabulary in enumerate((COLOURS, SHAPES, MOTIONS)):
        assert {triple[position] for triple in train_seen} == set(vocabulary)
    assert split_triples(ProceduralVideoConfig(seed=5))[1] != heldout


def test_heldout_clip_renders_its_heldout_target() -> None:
    heldout = set(split_triples(CONFIG)[1])
    for index in range(20):
        clip = make_clip(CONFIG, "heldout", index)
        assert _triple(_target(clip)) in heldout
        assert clip["clip_id"] == f"heldout-{index:06d}"


# ----------------------------------------------------------------------------------------------------
# Geometry: boxes, motion, visibility
# ----------------------------------------------------------------------------------------------------


def test_target_pixels_lie_inside_its_box() -> None:
    for clip in _unique_colour_clips(CONFIG, "train", 12, occlusion=False):
        k = clip["target_index"]
        mask = _colour_mask(clip, _target(clip)["colour"])
        for t in range(CONFIG.num_frames):
            rows, cols = np.nonzero(mask[t])
            x0, y0, x1, y1 = clip["boxes"][t, k]
            assert np.all((cols + 0.5 >= x0) & (cols + 0.5 <= x1)), clip["clip_id"]
            assert np.all((rows + 0.5 >= y0) & (rows + 0.5 <= y1)), clip["clip_id"]
            if clip["visible"][t, k]:  # the box is tight: pixels reach (nearly) every edge
                assert cols.min() + 0.5 - x0 <= 2.0 and x1 - cols.max() - 0.5 <= 2.0
                assert rows.min() + 0.5 - y0 <= 2.0 and y1 - rows.max() - 0.5 <= 2.0


def test_visibility_flag_follows_occlusion() -> None:
    config = ProceduralVideoConfig(occlusion_probability=1.0, camera_pan_probability=0.0)
    hidden_frames = 0
    for clip in _unique_colour_clips(config, "train", 10, occlusion=True):
        k = clip["target_index"]
        shown = _colour_mask(clip, _target(clip)["colour"]).sum(axis=(1, 2))
        full = shown.max()
        assert np.all(shown[~clip["visible"][:, k]] <= 0.6 * full)
        assert np.all(shown[clip["visible"][:, k]] >= 0.4 * full)
        hidden_frames += int((~clip["visible"][:, k]).sum())
        assert np.any(np.all(clip["frames"] == np.array(procedural.OCCLUDER_RGB, np.uint8), axis=-1))
    assert hidden_frames > 0


@pytest.mark.parametrize("pan", [0.0, 1.0])
def test_linear_motion_goes_in_captioned_direction(pan: float) -> None:
    config = ProceduralVideoConfig(camera_pan_probability=pan)
    checked = {motion: 0 for motion in LINEAR_MOTIONS}
    for index in range(120):
        clip = make_clip(config, "train", index)
        for k, obj in enumerate(clip["objects"]):
            if obj["motion"] not in LINEAR_MOTIONS:
                continue
            axis, sign = LINEAR_MOTIONS[obj["motion"]]
            along = _centres(clip, k)[:, axis] * sign
            assert along[-1] > along[0], (clip["clip_id"], obj)
            assert np.all(np.diff(along) >= 0), (clip["clip_id"], obj)
            checked[obj["motion"]] += 1
        assert parse_caption(clip["caption"])["motion"] == _target(clip)["motion"]
    assert min(checked.values()) > 0


def test_static_and_bouncing_motion() -> None:
    config = ProceduralVideoConfig(camera_pan_probability=0.0)
    bounced = 0
    for index in range(80):
        clip = make_clip(config, "train", index)
        for k, obj in enumerate(clip["objects"]):
            diffs = np.diff(_centres(clip, k), axis=0)
            if obj["motion"] == STATIC:
                assert np.allclose(diffs, 0.0)
            elif obj["motion"] == "bouncing":
                reverses = [np.any(diffs[:, axis] > 0) and np.any(diffs[:, axis] < 0) for axis in (0, 1)]
                assert any(reverses), clip["clip_id"]
                bounced += 1
    assert bounced > 0


def test_camera_pan_shifts_static_objects() -> None:
    clip = next(
        c
        for c in (make_clip(ProceduralVideoConfig(camera_pan_probability=1.0), "train", i) for i in range(20))
        if any(o["motion"] == STATIC for o in c["objects"])
    )
    assert clip["camera_pan"]
    k = next(i for i, obj in enumerate(clip["objects"]) if obj["motion"] == STATIC)
    assert not np.allclose(_centres(clip, k)[0], _centres(clip, k)[-1])


def test_render_box_mask() -> None:
    mask = render_box_mask([8, 16, 24, 40], image_size=64, patch_size=8)
    assert mask.shape == (8, 8)
    expected = np.zeros((8, 8), dtype=np.float32)
    expected[2:5, 1:3] = 1.0
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == pytest.approx(6.0)
    half = render_box_mask(np.array([4.0, 0.0, 12.0, 8.0]), image_size=64, patch_size=8)
    assert half[0, 0] == pytest.approx(0.5) and half[0, 1] == pytest.approx(0.5)
    assert half.sum() == pytest.approx(8 * 8 / 64)
    np.testing.assert_array_equal(render_box_mask([-10, -10, 100, 100], 32, 16), np.ones((2, 2)))
    with pytest.raises(ValueError, match="patch_size"):
        render_box_mask([0, 0, 1, 1], image_size=64, patch_size=7)


def test_rendering_is_fast_and_scales_to_256() -> None:
    make_clip(CONFIG, "train", 0)
    start = time.perf_counter()
    for index in range(50):
        make_clip(CONFIG, "train", index)
    assert (time.perf_counter() - start) / 50 < 0.010
    big = make_clip(ProceduralVideoConfig(image_size=256), "train", 0)
    assert big["frames"].shape == (CONFIG.num_frames, 256, 256, 3)
    assert big["boxes"].max() <= 256 and big["boxes"][:, big["target_index"], 2].max() > 64


# ----------------------------------------------------------------------------------------------------
# Text: captions, prompts, QA, MCQ
# ----------------------------------------------------------------------------------------------------


def _noisy_variants(text: str) -> list[str]:
    return [
        text,
        f"  {text.upper()}  ",
        text.replace(" ", "   \t"),
        "\n" + text.replace(" ", " , ").replace(".", "!!!"),
        f'"{text.capitalize()[:-1]}..."',
        text.replace(" to ", "-to-"),
    ]


@pytest.mark.parametrize("motion", MOTIONS)
def test_caption_round_trip(motion: str) -> None:
    for colour, shape in itertools.product(COLOURS, SHAPES):
        caption = caption_for(colour, shape, motion)
        assert caption == CAPTION_TEMPLATES[motion].format(colour=colour, shape=shape)
        assert caption == caption.lower() and caption.endswith(".")
        for variant in _noisy_variants(caption):
            assert parse_caption(variant) == {"colour": colour, "shape": shape, "motion": motion}, variant


def test_parse_caption_missing_fields_and_bad_attributes() -> None:
    assert parse_caption("") == {"colour": None, "shape": None, "motion": None}
    assert parse_caption("something red happens") == {"colour": "red", "shape": None, "motion": None}
    assert parse_caption("a circle bouncing") == {"colour": None, "shape": "circle", "motion": "bouncing"}
    assert parse_caption("What happens in the video?") == {"colour": None, "shape": None, "motion": None}
    with pytest.raises(ValueError, match="colour"):
        caption_for("pink", "square", STATIC)
    with pytest.raises(ValueError, match="motion"):
        caption_for("red", "square", "spinning")


def test_prompts_naming_an_object_describe_that_object() -> None:
    named_count = 0
    for index in range(200):
        clip = make_clip(CONFIG, "train", index)
        target = _target(clip)
        moving = [obj for obj in clip["objects"] if obj["motion"] != STATIC]
        caption = parse_caption(clip["caption"])
        assert caption == {"colour": target["colour"], "shape": target["shape"], "motion": target["motion"]}
        if clip["named"]:
            named_count += 1
            prompt = parse_caption(clip["prompt"])
            assert (prompt["colour"], prompt["shape"]) == (target["colour"], target["shape"])
            assert len(moving) >= 2 or target["motion"] == STATIC
            assert len(moving) >= 1
        else:
            assert clip["prompt"] in GENERIC_PROMPTS
            assert moving == [target]
    assert 0.3 * 200 < named_count < 0.8 * 200
    all_generic = ProceduralVideoConfig(named_object_fraction=0.0)
    for index in range(40):
        text = sample_text(all_generic, "train", index)
        assert text.named == (text.motion == STATIC)


def test_question_answers_match_the_target() -> None:
    for index in range(60):
        clip = make_clip(CONFIG, "train", index)
        target = _target(clip)
        answers = {pair["question"]: pair["answer"] for pair in clip["qa"]}
        name = f"{target['colour']} {target['shape']}"
        assert answers[f"where does the {name} go?"] == WHERE_ANSWERS[target["motion"]]
        assert answers[f"is the {name} small or large?"] == target["size"]
        if not clip["named"]:
            assert answers["what colour is the moving object?"] == target["colour"]
            assert answers["what shape is the moving object?"] == target["shape"]


def test_mcq_options_distinct_and_answer_correct() -> None:
    attributes = set()
    for index in range(150):
        clip = make_clip(CONFIG, "train", index)
        mcq, target = clip["mcq"], _target(clip)
        assert len(mcq["options"]) == 4 and len(set(mcq["options"])) == 4
        correct = {
            "colour": target["colour"],
            "shape": target["shape"],
            "motion": MOTION_OPTIONS[target["motion"]],
        }[mcq["attribute"]]
        assert mcq["options"][mcq["answer_index"]] == correct
        vocabulary = {"colour": COLOURS, "shape": SHAPES, "motion": tuple(MOTION_OPTIONS.values())}[
            mcq["attribute"]
        ]
        assert set(mcq["options"]) <= set(vocabulary)
        attributes.add(mcq["attribute"])
    assert attributes == {"colour", "shape", "motion"}


# ----------------------------------------------------------------------------------------------------
# Hugging Face datasets view
# ----------------------------------------------------------------------------------------------------


def test_hf_dataset_renders_lazily_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = procedural.render_scene
    monkeypatch.setattr(procedural, "render_scene", lambda *args: calls.append(1) or original(*args))
    hf = as_hf_dataset("validation", 30, CONFIG)
    assert calls == []  # nothing rendered up front
    required = {"clip_id", "split", "index", "prompt", "caption", "colour", "shape", "motion"}
    assert required <= set(hf.column_names) and len(hf) == 30
    reference = ProceduralVideoDataset("validation", 30, CONFIG)
    for index in (0, 17):
        row, clip = hf[index], reference[index]
        assert len(calls) > 0
        for key in ("frames", "boxes", "visible"):
            np.testing.assert_array_equal(np.asarray(row[key]), clip[key])
        for key in ("clip_id", "prompt", "caption", "target_index", "qa", "mcq", "objects"):
            assert row[key] == clip[key], key
        assert (row["colour"], row["shape"], row["motion"]) == _triple(_target(clip))
    batch = hf[3:5]
    np.testing.assert_array_equal(np.asarray(batch["frames"][1]), reference[4]["frames"])
    assert "frames" not in hf.with_format(None)[0]


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"image_size": 8}, "image_size"),
        ({"num_frames": 1}, "num_frames"),
        ({"heldout_fraction": 0.0}, "heldout_fraction"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
        ({"heldout_fraction": 1.5}, "heldout_fraction"),
        ({"occlusion_probability": -0.1}, "occlusion_probability"),
        ({"small_size_range": (0.3, 0.1)}, "small_size_range"),
        ({"large_size_range": (0.3, 0.9)}, "large_size_range"),
        ({"speed_range": (0.0, 0.1)}, "speed_range"),
        ({"num_other_moving": (0, 1)}, "num_other_moving"),
        ({"num_distractors": (0, 40)}, "num_distractors"),
        ({"colours": ("red", "pink")}, "colours"),
        ({"motions": (STATIC,)}, "motions"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_config_raises(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ProceduralVideoConfig(**overrides)


def test_bad_split_index_and_partition_raise() -> None:
    with pytest.raises(ValueError, match="split"):
        ProceduralVideoDataset("test", 10)
    with pytest.raises(ValueError, match="split"):
        make_clip(CONFIG, "bogus", 0)
    with pytest.raises(ValueError, match="split"):
        as_hf_dataset("bogus", 3)
    dataset = ProceduralVideoDataset("train", 10)
    for bad_index in (10, -1):
        with pytest.raises(ValueError, match="out of range"):
            dataset[bad_index]
    assert len(list(dataset)) == 10
    with pytest.raises(ValueError, match="num_clips"):
        ProceduralVideoDataset("train", -5)
    with pytest.raises(ValueError, match="heldout_fraction"):
        ProceduralVideoDataset("train", 10, ProceduralVideoConfig(heldout_fraction=0.99))
