"""Tests of the procedural moving-shapes video data set (foveated_vlm.data.procedural).

The leak tests (nothing scored is predictable from the prompt) are in tests/data/test_procedural_leak.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time

import numpy as np
import pytest

from foveated_vlm.data import (
    CAPTION_TEMPLATES,
    COLOUR_RGB,
    COLOURS,
    GENERIC_PROMPTS,
    MOTIONS,
    NAMED_PROMPTS,
    SCORED_ATTRIBUTES,
    SHAPES,
    SIZES,
    ProceduralVideoConfig,
    ProceduralVideoDataset,
    as_hf_dataset,
    caption_for,
    make_clip,
    pairs_for_split,
    parse_caption,
    procedural,
    render_box_mask,
    render_scene,
    sample_scene,
    scored_attributes,
    split_pairs,
)
from foveated_vlm.data.procedural import (
    BOUNCING,
    GENERIC_QA,
    LINEAR_MOTIONS,
    MAX_BACKGROUND_CHANNEL,
    MAX_BACKGROUND_CONTRAST,
    MCQ_QUESTIONS,
    MOTION_OPTIONS,
    NAMED_QA,
    QA_QUESTIONS,
    STATIC,
    WHERE_ANSWERS,
    clip_num_frames,
    sample_text,
    subject_for,
    text_inventory,
)

CONFIG = ProceduralVideoConfig()


def _target(clip: dict) -> dict:
    return clip["objects"][clip["target_index"]]


def _attributes(obj: dict) -> dict[str, str]:
    return {key: obj[key] for key in ("colour", "shape", "size", "motion")}


def _centres(clip: dict, k: int) -> np.ndarray:
    """Box centres of object k per frame, [T, 2] (x, y)."""
    boxes = clip["boxes"][:, k]
    return (boxes[:, :2] + boxes[:, 2:]) / 2.0


def _colour_mask(clip: dict, colour: str) -> np.ndarray:
    """Pixels of exactly that object colour, bool [T, H, W]."""
    return np.all(clip["frames"] == np.array(COLOUR_RGB[colour], dtype=np.uint8), axis=-1)


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def _outside_boxes(clip: dict) -> np.ndarray:
    """Pixels whose centre lies in no object's box, bool [T, H, W]."""
    t, h, w = clip["frames"].shape[:3]
    cols, rows = np.arange(w) + 0.5, np.arange(h) + 0.5
    inside = np.zeros((t, h, w), dtype=bool)
    for k in range(len(clip["objects"])):
        x0, y0, x1, y1 = (clip["boxes"][:, k, i][:, None, None] for i in range(4))
        inside |= (
            (cols[None, None] >= x0)
            & (cols[None, None] <= x1)
            & (rows[None, :, None] >= y0)
            & (rows[None, :, None] <= y1)
        )
    return ~inside


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
    assert clip["scored_attributes"] == scored_attributes(clip["named"])
    assert clip["reference"] == (_target(clip)["colour"] if clip["named"] else None)
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


def test_generic_clips_hold_the_target_alone_and_named_clips_distinct_colours() -> None:
    kinds = {True: 0, False: 0}
    for index in range(200):
        clip = make_clip(CONFIG, "train", index)
        target, objects = _target(clip), clip["objects"]
        kinds[clip["named"]] += 1
        assert parse_caption(clip["caption"]) == _attributes(target)
        if not clip["named"]:
            assert objects == [target] and clip["prompt"] in GENERIC_PROMPTS
            continue
        colours = [obj["colour"] for obj in objects]
        assert len(set(colours)) == len(colours)
        assert clip["prompt"] in {p.format(colour=target["colour"]) for p in NAMED_PROMPTS}
        others = [obj for k, obj in enumerate(objects) if k != clip["target_index"]]
        moving = sum(obj["motion"] != STATIC for obj in others)
        static = sum(obj["motion"] == STATIC for obj in others)
        assert CONFIG.num_other_moving[0] <= moving <= CONFIG.num_other_moving[1]
        assert CONFIG.num_distractors[0] <= static <= CONFIG.num_distractors[1]
    assert min(kinds.values()) > 60
    assert not any(
        sample_text(ProceduralVideoConfig(named_object_fraction=0.0), "train", i).named for i in range(50)
    )
    assert all(
        sample_text(ProceduralVideoConfig(named_object_fraction=1.0), "train", i).named for i in range(50)
    )


def test_target_is_not_always_drawn_on_top() -> None:
    on_top = [
        scene.target.layer == max(obj.layer for obj in scene.objects)
        for scene in (sample_scene(CONFIG, "train", i) for i in range(200))
        if scene.text.named
    ]
    assert 0.2 < np.mean(on_top) < 0.6


# ----------------------------------------------------------------------------------------------------
# Held-out combinations
# ----------------------------------------------------------------------------------------------------


def test_heldout_pairs_are_disjoint_and_cover_every_value() -> None:
    train, heldout = split_pairs(CONFIG)
    everything = set(itertools.product(SHAPES, MOTIONS))
    assert set(train) | set(heldout) == everything and not set(train) & set(heldout)
    assert len(heldout) == round(CONFIG.heldout_fraction * len(everything))
    for position, vocabulary in enumerate((SHAPES, MOTIONS)):
        assert {pair[position] for pair in train} == set(vocabulary)
    assert pairs_for_split(CONFIG, "validation") == train and pairs_for_split(CONFIG, "heldout") == heldout
    assert split_pairs(ProceduralVideoConfig(seed=5))[1] != heldout
    assert split_pairs(ProceduralVideoConfig(seed=5)) == split_pairs(ProceduralVideoConfig(seed=5))


def test_heldout_pairs_never_appear_outside_the_heldout_split() -> None:
    """Not as targets, and not as any other object either (those always use training pairs)."""
    train, heldout = (set(pairs) for pairs in split_pairs(CONFIG))
    seen = {"train": set(), "validation": set(), "heldout_targets": set(), "heldout_others": set()}
    for split, count in (("train", 300), ("validation", 150), ("heldout", 150)):
        for index in range(count):
            scene = sample_scene(CONFIG, split, index)
            for k, obj in enumerate(scene.objects):
                pair = (obj.shape, obj.motion)
                if split != "heldout":
                    seen[split].add(pair)
                else:
                    seen["heldout_targets" if k == scene.target_index else "heldout_others"].add(pair)
    assert seen["train"] <= train and seen["validation"] <= train and seen["heldout_others"] <= train
    assert seen["heldout_targets"] == heldout
    assert {shape for shape, _ in seen["train"]} == set(SHAPES)
    assert {motion for _, motion in seen["train"]} == set(MOTIONS)
    colours = {sample_text(CONFIG, "heldout", i).colour for i in range(150)}
    sizes = {sample_text(CONFIG, "heldout", i).size for i in range(150)}
    assert colours == set(COLOURS) and sizes == set(SIZES)  # colour and size stay free in every split


# ----------------------------------------------------------------------------------------------------
# Geometry: boxes, motion, visibility
# ----------------------------------------------------------------------------------------------------


def test_object_pixels_lie_inside_their_boxes() -> None:
    config = ProceduralVideoConfig(occlusion_probability=0.0)
    for index in range(12):
        clip = make_clip(config, "train", index)
        for k, obj in enumerate(clip["objects"]):
            mask = _colour_mask(clip, obj["colour"])
            for t in range(clip["frames"].shape[0]):
                rows, cols = np.nonzero(mask[t])
                x0, y0, x1, y1 = clip["boxes"][t, k]
                assert np.all((cols + 0.5 >= x0) & (cols + 0.5 <= x1)), clip["clip_id"]
                assert np.all((rows + 0.5 >= y0) & (rows + 0.5 <= y1)), clip["clip_id"]
                boxes = clip["boxes"][t]
                alone = not any(_overlap(boxes[k], boxes[j]) for j in range(len(clip["objects"])) if j != k)
                if clip["visible"][t, k] and alone:  # the box is tight: pixels reach (nearly) every edge
                    assert cols.min() + 0.5 - x0 <= 2.0 and x1 - cols.max() - 0.5 <= 2.0
                    assert rows.min() + 0.5 - y0 <= 2.0 and y1 - rows.max() - 0.5 <= 2.0


def test_visibility_flag_follows_occlusion() -> None:
    """visible == (shown pixels >= min_visible_fraction x the object's pixels when drawn alone)."""
    config = ProceduralVideoConfig(occlusion_probability=1.0, camera_pan_probability=0.0)
    hidden = {"target": 0, "other": 0}
    for index in range(30):
        scene = sample_scene(config, "train", index)
        frames, _, visible = render_scene(scene, config)
        if scene.occluder is None:
            assert all(obj.motion == STATIC for obj in scene.objects)
            continue
        assert np.any(np.all(frames == np.array(procedural.OCCLUDER_RGB, np.uint8), axis=-1))
        for k, obj in enumerate(scene.objects):
            alone = dataclasses.replace(scene, objects=(obj,), target_index=0, occluder=None, clutter=())
            full = _colour_mask({"frames": render_scene(alone, config)[0]}, obj.colour).sum(axis=(1, 2))
            shown = _colour_mask({"frames": frames}, obj.colour).sum(axis=(1, 2))
            np.testing.assert_array_equal(visible[:, k], shown >= config.min_visible_fraction * full)
            hidden["target" if k == scene.target_index else "other"] += int((~visible[:, k]).sum())
    assert hidden["target"] > 0 and hidden["other"] > 0  # the bar crosses targets and non-targets


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


def _assert_bounce_seen(centres: np.ndarray) -> None:
    diffs = np.diff(centres, axis=0)
    assert any(np.any(diffs[:, axis] > 0) and np.any(diffs[:, axis] < 0) for axis in (0, 1))


def test_static_and_bouncing_motion() -> None:
    config = ProceduralVideoConfig(camera_pan_probability=0.0)
    bounced = 0
    for index in range(80):
        clip = make_clip(config, "train", index)
        for k, obj in enumerate(clip["objects"]):
            if obj["motion"] == STATIC:
                assert np.allclose(np.diff(_centres(clip, k), axis=0), 0.0)
            elif obj["motion"] == BOUNCING:
                _assert_bounce_seen(_centres(clip, k))
                bounced += 1
    assert bounced > 0


def test_camera_pan_shifts_static_objects() -> None:
    config = ProceduralVideoConfig(camera_pan_probability=1.0)
    clip = next(
        c
        for c in (make_clip(config, "train", i) for i in range(40))
        if any(o["motion"] == STATIC for o in c["objects"])
    )
    assert clip["camera_pan"]
    k = next(i for i, obj in enumerate(clip["objects"]) if obj["motion"] == STATIC)
    assert not np.allclose(_centres(clip, k)[0], _centres(clip, k)[-1])


def test_linear_path_survives_float_rounding_of_the_speed_cap() -> None:
    """The old ``_linear_path`` crashed ("high - low < 0") when ``room / steps * steps`` rounded above
    ``room``, e.g. a 6-pixel object in a 64-pixel, 8-frame clip at the speed cap."""
    rng = np.random.default_rng(0)
    for image_size, num_frames, side in ((64, 8, 6.0), (16, 4, 3.6), (16, 12, 3.2), (16, 10, 5.92)):
        room = image_size - side
        for motion in LINEAR_MOTIONS:
            path = procedural._linear_path(rng, (1.0, 1.0), image_size, num_frames, motion, room)
            axis, sign = LINEAR_MOTIONS[motion]
            assert path.shape == (num_frames, 2) and path.min() >= 0.0 and path.max() <= room
            assert np.all(np.diff(path[:, axis]) * sign > 0)


def test_paths_fit_for_every_length_size_and_speed() -> None:
    """Property test: random valid configs (T up to 64, objects up to half the frame, speeds up to a
    frame per step) never crash, keep every path in the world frame and show every captioned motion."""
    rng = np.random.default_rng(1234)
    for trial in range(60):
        image_size = int(rng.choice([16, 24, 32, 64, 100]))
        small_high = float(rng.uniform(0.15, 0.25))
        low = int(rng.integers(3, 40))
        config = ProceduralVideoConfig(
            image_size=image_size,
            num_frames_range=(low, int(rng.integers(low, 65))),
            small_size_range=(0.05, small_high),
            large_size_range=(small_high + 0.1, float(rng.uniform(small_high + 0.1, 0.5))),
            speed_range=(0.01, float(rng.uniform(0.02, 1.0))),
            bounce_speed_range=(0.05, float(rng.uniform(0.1, 1.5))),
            camera_pan_probability=0.0,
            named_object_fraction=1.0,
            num_other_moving=(2, 3),
            num_distractors=(0, 2),
            seed=trial,
        )
        for index in range(8):
            scene = sample_scene(config, "train", index)
            assert low <= scene.num_frames <= config.num_frames_range[1]
            for obj in scene.objects:
                room = image_size - obj.side
                assert obj.path.shape == (scene.num_frames, 2)
                assert obj.path.min() >= 0.0 and obj.path.max() <= room + 1e-9
                if obj.motion in LINEAR_MOTIONS:
                    axis, sign = LINEAR_MOTIONS[obj.motion]
                    assert np.all(np.diff(obj.path[:, axis]) * sign > 0)
                    assert np.allclose(np.diff(obj.path[:, 1 - axis]), 0.0)
                elif obj.motion == BOUNCING:
                    _assert_bounce_seen(obj.path)
                    assert np.abs(np.diff(obj.path, axis=0)).max() <= room / 2 + 1e-9
                else:
                    assert np.allclose(np.diff(obj.path, axis=0), 0.0)
        clip = make_clip(config, "train", 0)
        assert clip["frames"].shape[0] == clip["boxes"].shape[0] == clip["visible"].shape[0]


def test_num_frames_range_gives_each_clip_its_own_length() -> None:
    config = ProceduralVideoConfig(num_frames_range=(3, 12), num_frames=5)
    lengths = [clip_num_frames(config, "train", i) for i in range(60)]
    assert set(lengths) == set(range(3, 13))  # num_frames is ignored when the range is set
    for index in (0, 1, 2):
        clip = make_clip(config, "train", index)
        t = lengths[index]
        assert clip["frames"].shape[0] == t and clip["boxes"].shape[0] == t and clip["visible"].shape[0] == t
        assert sample_scene(config, "train", index).num_frames == t
        np.testing.assert_array_equal(clip["frames"], make_clip(config, "train", index)["frames"])
    # the text stream is untouched by the length draw
    assert sample_text(config, "train", 7) == sample_text(ProceduralVideoConfig(), "train", 7)
    assert {clip_num_frames(CONFIG, "train", i) for i in range(10)} == {CONFIG.num_frames}


# ----------------------------------------------------------------------------------------------------
# Background contrast and clutter
# ----------------------------------------------------------------------------------------------------


def test_background_contrast_scales_the_texture() -> None:
    spreads = []
    for contrast in (0.0, 1.0, MAX_BACKGROUND_CONTRAST):
        config = ProceduralVideoConfig(background_contrast=contrast, occlusion_probability=0.0)
        clip = make_clip(config, "train", 3)
        background = clip["frames"][_outside_boxes(clip)]
        assert background.max() <= MAX_BACKGROUND_CHANNEL
        spreads.append(float(background.astype(np.float64).std()))
        if contrast == 0.0:
            assert np.all(background == procedural.BACKGROUND_LEVEL)
    assert spreads[0] == 0.0 < spreads[1] < spreads[2]
    assert min(max(rgb) for rgb in COLOUR_RGB.values()) >= MAX_BACKGROUND_CHANNEL + 100


def test_clutter_is_dim_never_an_object_and_never_boxed() -> None:
    plain = ProceduralVideoConfig(occlusion_probability=0.0)
    cluttered = ProceduralVideoConfig(occlusion_probability=0.0, num_clutter=(12, 12))
    bright = 0
    for index in range(10):
        a, b = make_clip(plain, "train", index), make_clip(cluttered, "train", index)
        assert len(sample_scene(cluttered, "train", index).clutter) == 12
        for key in ("objects", "target_index", "caption", "prompt", "qa", "mcq"):
            assert a[key] == b[key], key
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        np.testing.assert_array_equal(a["visible"], b["visible"])
        for obj in b["objects"]:  # specks never take an object's colour, nor cover one
            np.testing.assert_array_equal(_colour_mask(a, obj["colour"]), _colour_mask(b, obj["colour"]))
        background = b["frames"][_outside_boxes(b)]
        assert background.max() <= MAX_BACKGROUND_CHANNEL
        spread = background.astype(int).max(axis=-1) - background.astype(int).min(axis=-1)
        assert spread.max() <= 40  # nearly grey
        bright += int((background.max(axis=-1) > 60).sum())  # above any default-contrast background
    assert bright > 0


# ----------------------------------------------------------------------------------------------------
# Rendering helpers and speed
# ----------------------------------------------------------------------------------------------------


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
# Text: captions, prompts, QA, MCQ, tokenizer coverage
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
    for colour, shape, size in itertools.product(COLOURS, SHAPES, SIZES):
        caption = caption_for(colour, shape, motion, size)
        assert caption == CAPTION_TEMPLATES[motion].format(size=size, colour=colour, shape=shape)
        assert caption.startswith(f"the {size} {colour} {shape} ")
        assert caption == caption.lower() and caption.endswith(".")
        expected = {"colour": colour, "shape": shape, "size": size, "motion": motion}
        for variant in _noisy_variants(caption):
            assert parse_caption(variant) == expected, variant


def test_parse_caption_missing_fields_and_bad_attributes() -> None:
    none = {"colour": None, "shape": None, "size": None, "motion": None}
    assert parse_caption("") == none
    assert parse_caption("something red happens") == {**none, "colour": "red"}
    assert parse_caption("a circle bouncing") == {**none, "shape": "circle", "motion": "bouncing"}
    assert parse_caption("a LARGE thing, then a small one") == {**none, "size": "large"}
    assert parse_caption("What happens in the video?") == none
    with pytest.raises(ValueError, match="colour"):
        caption_for("pink", "square", STATIC, "small")
    with pytest.raises(ValueError, match="motion"):
        caption_for("red", "square", "spinning", "small")
    with pytest.raises(ValueError, match="size"):
        caption_for("red", "square", STATIC, "medium")


def test_scored_attributes_by_kind() -> None:
    assert scored_attributes(True) == SCORED_ATTRIBUTES == ("shape", "size", "motion")
    assert scored_attributes(False) == ("colour", "shape", "size", "motion")


def test_question_answers_match_the_target_and_questions_hold_no_answer() -> None:
    for index in range(80):
        clip = make_clip(CONFIG, "train", index)
        target = _target(clip)
        subject = subject_for(clip["reference"])
        keys = NAMED_QA if clip["named"] else GENERIC_QA
        # the questions are a function of the kind and the named colour only
        assert [pair["question"] for pair in clip["qa"]] == [
            QA_QUESTIONS[k].format(subject=subject) for k in keys
        ]
        answers = dict(zip(keys, (pair["answer"] for pair in clip["qa"]), strict=True))
        assert answers["shape"] == target["shape"] and answers["size"] == target["size"]
        assert answers["where"] == WHERE_ANSWERS[target["motion"]]
        assert answers["moves"] == ("no" if target["motion"] == STATIC else "yes")
        if clip["named"]:
            assert subject == f"the {target['colour']} object"
            assert answers["count"] == procedural.NUMBER_WORDS[len(clip["objects"])]
            num_moving = sum(obj["motion"] != STATIC for obj in clip["objects"])
            assert answers["count_moving"] == procedural.NUMBER_WORDS[num_moving]
        else:
            assert subject == "the object" and answers["colour"] == target["colour"]


def test_mcq_options_distinct_and_answer_correct() -> None:
    attributes = {True: set(), False: set()}
    for index in range(200):
        clip = make_clip(CONFIG, "train", index)
        mcq, target = clip["mcq"], _target(clip)
        attribute = mcq["attribute"]
        vocabulary = {
            "colour": COLOURS,
            "shape": SHAPES,
            "size": SIZES,
            "motion": tuple(MOTION_OPTIONS.values()),
        }
        assert len(mcq["options"]) == min(4, len(vocabulary[attribute]))
        assert len(set(mcq["options"])) == len(mcq["options"])
        correct = MOTION_OPTIONS[target["motion"]] if attribute == "motion" else target[attribute]
        assert mcq["options"][mcq["answer_index"]] == correct
        assert set(mcq["options"]) <= set(vocabulary[attribute])
        assert mcq["question"] == MCQ_QUESTIONS[attribute].format(subject=subject_for(clip["reference"]))
        attributes[clip["named"]].add(attribute)
    assert attributes == {True: {"shape", "size", "motion"}, False: {"colour", "shape", "motion"}}


def test_text_inventory_holds_every_text_a_clip_produces() -> None:
    inventory = set(text_inventory())
    for index in range(100):
        clip = make_clip(CONFIG, "train", index)
        texts = [clip["prompt"], clip["caption"], clip["mcq"]["question"], *clip["mcq"]["options"]]
        texts += [text for pair in clip["qa"] for text in pair.values()]
        assert set(texts) <= inventory, set(texts) - inventory


def test_tiny_tokenizer_reads_every_data_word_as_one_token() -> None:
    from foveated_vlm.tiny import EXTRA_TEXT, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    for line in (*text_inventory(), *(text for text in EXTRA_TEXT if text.strip())):
        pieces = [tokenizer.decode([i]) for i in tokenizer(line, add_special_tokens=False)["input_ids"]]
        assert pieces == re.findall(r" ?[A-Za-z]+|[^A-Za-z ]+", line), line


# ----------------------------------------------------------------------------------------------------
# Hugging Face datasets view
# ----------------------------------------------------------------------------------------------------


def test_hf_dataset_renders_lazily_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = procedural.render_scene
    monkeypatch.setattr(procedural, "render_scene", lambda *args: calls.append(1) or original(*args))
    config = ProceduralVideoConfig(num_frames_range=(3, 9))
    hf = as_hf_dataset("validation", 30, config)
    assert calls == []  # nothing rendered up front
    required = {"clip_id", "split", "index", "prompt", "caption", "colour", "shape", "motion", "size"}
    assert required | {"named", "reference", "num_frames"} <= set(hf.column_names) and len(hf) == 30
    reference = ProceduralVideoDataset("validation", 30, config)
    for index in (0, 17):
        row, clip = hf[index], reference[index]
        assert len(calls) > 0
        for key in ("frames", "boxes", "visible"):
            np.testing.assert_array_equal(np.asarray(row[key]), clip[key])
        for key in ("clip_id", "prompt", "caption", "target_index", "qa", "mcq", "objects", "named"):
            assert row[key] == clip[key], key
        assert (
            row["reference"] == clip["reference"]
            and tuple(row["scored_attributes"]) == clip["scored_attributes"]
        )
        assert {k: row[k] for k in ("colour", "shape", "size", "motion")} == _attributes(_target(clip))
        assert row["num_frames"] == clip["frames"].shape[0]
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
        ({"num_frames": 2}, "num_frames"),  # bouncing needs 3 frames
        ({"num_frames_range": (1, 8)}, "num_frames_range"),
        ({"num_frames_range": (2, 8)}, "num_frames_range"),  # bouncing needs 3 frames
        ({"num_frames_range": (8, 4)}, "num_frames_range"),
        ({"num_frames_range": (4.0, 8.0)}, "num_frames_range"),
        ({"num_frames_range": 8}, "num_frames_range"),
        ({"heldout_fraction": 0.0}, "heldout_fraction"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
        ({"heldout_fraction": 1.5}, "heldout_fraction"),
        ({"occlusion_probability": -0.1}, "occlusion_probability"),
        ({"named_object_fraction": 1.1}, "named_object_fraction"),
        ({"small_size_range": (0.3, 0.1)}, "small_size_range"),
        ({"small_size_range": (0.1, 0.26)}, "small_size_range"),  # overlaps the large range
        ({"large_size_range": (0.3, 0.9)}, "large_size_range"),
        ({"speed_range": (0.0, 0.1)}, "speed_range"),
        ({"bounce_speed_range": (0.2, 0.1)}, "bounce_speed_range"),
        ({"camera_pan_speed_range": (-0.1, 0.1)}, "camera_pan_speed_range"),
        ({"num_other_moving": (-1, 1)}, "num_other_moving"),
        ({"num_other_moving": (1.0, 2.0)}, "num_other_moving"),
        ({"num_distractors": (0, 40)}, "num_distractors"),
        ({"num_distractors": (0, 5)}, "num_distractors"),  # 1 + 2 + 5 objects > 7 distinct colours
        (
            {"num_other_moving": (1, 1), "num_distractors": (1, 2), "colours": ("red", "blue", "green")},
            "colours",
        ),
        ({"num_clutter": (-1, 3)}, "num_clutter"),
        ({"num_clutter": (0, 65)}, "num_clutter"),
        ({"background_contrast": -0.1}, "background_contrast"),
        ({"background_contrast": MAX_BACKGROUND_CONTRAST + 0.01}, "background_contrast"),
        ({"colours": ("red", "pink")}, "colours"),
        ({"motions": (STATIC,)}, "motions"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_config_raises(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ProceduralVideoConfig(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_frames": 2, "motions": ("left to right", STATIC)},  # 2 frames are fine without bouncing
        {"num_frames_range": (3, 3)},
        {"num_other_moving": (0, 0), "num_distractors": (0, 0), "named_object_fraction": 1.0},
        {"num_other_moving": (2, 2), "num_distractors": (4, 4), "named_object_fraction": 1.0},
        {"background_contrast": 0.0},
        {"background_contrast": MAX_BACKGROUND_CONTRAST, "num_clutter": (64, 64)},
        {"image_size": 16, "small_size_range": (0.05, 0.1), "large_size_range": (0.45, 0.5)},
        {
            "motions": (BOUNCING, "top to bottom"),
            "num_distractors": (2, 2),
            "num_other_moving": (1, 1),
            "named_object_fraction": 1.0,
        },
    ],
)
def test_edge_configs_render(overrides: dict) -> None:
    config = ProceduralVideoConfig(**overrides)
    for index in range(4):
        clip = make_clip(config, "train", index)
        assert clip["frames"].shape[0] == clip["boxes"].shape[0]
        if config.named_object_fraction == 1.0:
            expected = 1 + config.num_other_moving[0] + config.num_distractors[0]
            assert len(clip["objects"]) == expected
        make_clip(config, "heldout", index)


def test_bad_split_index_and_partition_raise() -> None:
    with pytest.raises(ValueError, match="split"):
        ProceduralVideoDataset("testing", 10)
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
