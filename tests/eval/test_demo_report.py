"""The main job (issue 11, item 6): ``configs/demo.yaml`` is the named-object task with the recipe that makes the
fovea look where the prompt points, and ``demo_report`` reports every figure of it on a tiny trained run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import train_accelerate
from eval import demo_report
from foveated_vlm.training.config import load_config
from foveated_vlm.training.data import procedural_config
from foveated_vlm.training.modeling import build_model_and_processor

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
NAMED_RECIPE = [
    "data.procedural.named_object_fraction=1.0",
    "data.procedural.num_other_moving=[1, 1]",
    "data.procedural.num_distractors=[1, 1]",
    "model.plan_first_query=true",
    "model.glimpse_location=true",
    "model.visual_token_norm=true",
    "model.prediction_passes=coarse",
    "model.attention_map_layer=0",
]


def test_demo_config_is_the_named_object_task_with_the_recipe():
    config = load_config(DEMO_CONFIG)
    model, processor = build_model_and_processor(config)
    data = procedural_config(config, processor.image_size)
    assert data.named_object_fraction == 1.0, "every demo clip names its target by colour"
    assert data.num_other_moving[0] >= 1 and data.num_distractors[0] >= 1, "the named object has company"
    assert data.camera_pan_probability == 0.0 and data.occlusion_probability == 0.0
    vision, fovea = model.config.vision_config, model.config
    assert fovea.plan_first_query and fovea.glimpse_location, "the first query is planned from the prompt"
    assert fovea.attention_supervision_weight == 0, "label-free: no box labels"
    assert fovea.visual_token_norm and fovea.prediction_passes == "coarse", "the label-free recipe"
    assert fovea.attention_map_layer == 0
    assert fovea.prediction_loss_weight == 30.0 and fovea.previous_target_dropout == 0.9
    assert vision.initializer_range == 0.2 and vision.pos_embed_rescale is None
    assert fovea.foveation_mode != "dense"
    assert config.data.image_size == vision.image_size and vision.image_size % vision.patch_size == 0
    assert config.eval.num_heldout_clips <= 256, "the report's evaluation stays within two minutes"
    script = (REPO / "scripts" / "demo.sh").read_text()
    assert "--config configs/demo.yaml" in script and "eval.demo_report" in script


@pytest.fixture(scope="module")
def tiny_named_run(tmp_path_factory):
    """Four steps of the smoke config on named clips with the demo's recipe, then the demo report."""
    run = tmp_path_factory.mktemp("demo_run")
    overrides = [item for assignment in NAMED_RECIPE for item in ("--set", assignment)]
    train_accelerate.main(
        ["--config", "configs/smoke.yaml", "--output_dir", str(run), "--max_steps", "4", *overrides]
    )
    report = demo_report.run_report(run, num_clips=6, batch_size=6, progress=False)
    return run, report


def _is_ci(figure) -> bool:
    return (
        isinstance(figure, dict)
        and figure["low"] <= figure["estimate"] <= figure["high"]
        and all(math.isfinite(figure[key]) for key in ("estimate", "low", "high"))
    )


def test_report_has_every_figure_of_the_main_job(tiny_named_run):
    run, report = tiny_named_run
    assert report["subset"] == "all" and report["num_named"] == report["num_clips"] == 6
    assert report["attributes"] == ["shape", "size", "motion"], (
        "named clips score what the prompt does not give"
    )
    for reader in ("dynamic", "static", "blank"):
        accuracy = report["accuracy"][reader]
        assert set(accuracy) == {"all_attributes", "shape", "size", "motion"}
        assert all(_is_ci(accuracy[key]) for key in accuracy), reader
    for reader in ("dynamic", "static"):
        figures = report["mass_in_box"][reader]
        assert _is_ci(figures["mass_in_box"]) and _is_ci(figures["lift"]), reader
        assert 0 <= figures["mass_in_box"]["estimate"] <= 1
    assert _is_ci(report["chance"]) and 0 < report["chance"]["estimate"] < 1
    assert _is_ci(report["ratio_loss_static_dynamic"])
    assert _is_ci(report["loss_fine"]["dynamic"]) and _is_ci(report["loss_fine"]["static"])
    saved = json.loads((run / demo_report.REPORT_NAME).read_text())
    assert saved["ratio_loss_static_dynamic"] == report["ratio_loss_static_dynamic"]

    text = demo_report.format_report(report)
    for phrase in (
        "held-out named-object clips: 6",
        "What the held-out split tests: whether each attribute is read from the video",
        "dynamic (planned queries)",
        "static (static query, same weights)",
        "blank (zero-frame control)",
        "majority answer",
        "Attention mass in the named object's box",
        "chance (box area share)",
        "lift",
        "coarse / fine = static / dynamic ratio",
        "validation named-object clips: 6",
        demo_report.FOVEA_FIGURE,
    ):
        assert phrase in text, phrase


def test_the_report_says_whether_box_labels_trained_the_fovea(tiny_named_run):
    """The demo's recipe is label-free and its report says so; a run trained with attention supervision says that
    instead."""
    run, report = tiny_named_run
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["attention_supervision_weight"] == 0 and report["box_labels"] is False
    assert demo_report.NO_BOX_LABELS in demo_report.format_report(report)
    supervised = demo_report.format_report({**report, "box_labels": True})
    assert demo_report.BOX_LABELS_USED in supervised and demo_report.NO_BOX_LABELS not in supervised


def test_the_fovea_figure_is_written(tiny_named_run):
    run, report = tiny_named_run
    path = run / demo_report.FOVEA_FIGURE
    assert report["figures"]["fovea"] == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert (run / demo_report.PROBES_FIGURE).is_file() and (run / demo_report.LOSS_FIGURE).is_file()


def test_the_figure_shows_the_attention_the_probes_measure(tiny_named_run):
    """The heat maps are the probes' own readings: their mass in the named box is the probes' mass in box."""
    import numpy as np

    from foveated_vlm.training.data import build_split
    from modeling_foveated import FoveatedVLMForConditionalGeneration
    from processing_foveated import FoveatedVLMProcessor

    run, report = tiny_named_run
    model = FoveatedVLMForConditionalGeneration.from_pretrained(run / "final").eval()
    processor = FoveatedVLMProcessor.from_pretrained(run / "final")
    config = load_config(run / "training_config.yaml")
    config.data.num_clips["heldout"] = 2
    items = list(build_split(config, "heldout", processor))
    patch = model.config.vision_config.patch_size
    compared = 0
    for reader in ("dynamic", "static"):
        maps = demo_report.reader_attention(model, processor, items, reader)
        for item, attention, record in zip(items, maps, report["probes"]["clips"], strict=False):
            boxes = demo_report.target_boxes(item)
            masses = []
            for t in range(1, len(attention)):
                if not np.isfinite(boxes[t]).all():
                    continue
                x0, y0, x1, y1 = boxes[t]
                rows, cols = np.indices(attention[t].shape)
                # a patch's share of the box: the box's overlap with it over the patch's area
                overlap_x = np.clip(
                    np.minimum(x1, (cols + 1) * patch) - np.maximum(x0, cols * patch), 0, None
                )
                overlap_y = np.clip(
                    np.minimum(y1, (rows + 1) * patch) - np.maximum(y0, rows * patch), 0, None
                )
                masses.append(float((attention[t] * overlap_x * overlap_y / patch**2).sum()))
            expected = record["readers"][reader]["mass_in_box"]
            if masses:
                assert np.mean(masses) == pytest.approx(expected, abs=1e-4), reader
                compared += 1
    assert compared >= 2
