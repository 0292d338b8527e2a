"""End-to-end runs of every eval/ script on a tiny trained run, and known-answer checks of their numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_accelerate
from eval import build_mcq, captioning, figures, fovea, intrinsic, mcq
from eval.common import ClipOutputs
from foveated_vlm.data.procedural import ProceduralVideoConfig, ProceduralVideoDataset
from foveated_vlm.metrics import box_patch_masks, crop_boxes, target_box_coverage
from modeling_foveated import FoveatedVLMForConditionalGeneration
from processing_foveated import FoveatedVLMProcessor

from ..builders import SMALL_DATA, SMOKE_CONFIG, clips_batch

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_FRAMES = 4  # configs/smoke.yaml
IMAGE_SIZE = 32
PATCH_SIZE = 8


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny run trained for two steps by train_accelerate.py (final/, log.jsonl, training_config.yaml)."""
    path = tmp_path_factory.mktemp("run")
    train_accelerate.main(
        ["--config", SMOKE_CONFIG, "--output_dir", str(path), "--max_steps", "2", *SMALL_DATA]
    )
    return path


def read_report(out: Path) -> dict:
    assert (out / "report.md").read_text().startswith("#")
    return json.loads((out / "report.json").read_text())


# ----------------------------------------------------------------------------------------------------- intrinsic


def test_intrinsic_end_to_end_matches_the_models_own_losses(run_dir, tmp_path):
    report = intrinsic.main(["--run_dir", str(run_dir), "--out", str(tmp_path), "--batch_size", "4"])
    metrics = read_report(tmp_path)["metrics"]
    assert report["num_clips"] == 4 and report["inference_mode"] == "two_pass"
    rows = [json.loads(line) for line in (tmp_path / "per_clip.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    # Equal-length clips: the mean of per-clip MSEs is the model's own loss over the batch.
    model = FoveatedVLMForConditionalGeneration.from_pretrained(run_dir / "final").eval()
    processor = FoveatedVLMProcessor.from_pretrained(run_dir / "final", trust_remote_code=True)
    clips = ProceduralVideoDataset(
        "heldout", 4, ProceduralVideoConfig(image_size=IMAGE_SIZE, num_frames=NUM_FRAMES)
    )
    batch = clips_batch(processor, clips)
    with torch.no_grad():
        output = model(**batch)
    assert metrics["loss_fine"]["estimate"] == pytest.approx(output.loss_fine.item(), rel=1e-4)
    assert metrics["loss_coarse"]["estimate"] == pytest.approx(output.loss_coarse.item(), rel=1e-4)
    ratio = metrics["ratio_loss_coarse_fine"]
    assert ratio["low"] <= ratio["estimate"] <= ratio["high"]
    assert ratio["estimate"] == pytest.approx(output.loss_coarse.item() / output.loss_fine.item(), rel=1e-4)
    with torch.no_grad():  # the caption NLL is a mean over clips of each clip's per-token mean
        per_clip = [
            model(**processor(text=c["prompt"], videos=c["frames"], captions=c["caption"])).loss_caption
            for c in clips
        ]
    assert metrics["caption_nll"]["estimate"] == pytest.approx(torch.stack(per_clip).mean().item(), rel=1e-4)
    assert 0 < metrics["entropy_fine"]["estimate"] <= metrics["uniform_entropy"] + 1e-6
    assert 0 < metrics["coverage_coarse"]["estimate"] <= 1


def test_prediction_and_attention_metrics_known_answers(make_model):
    _, processor = make_model()
    targets = torch.rand(NUM_FRAMES, 3, 4, 4) * 2 - 1
    one_hot = torch.zeros(NUM_FRAMES, 16)
    one_hot[:, 5] = 1
    outputs = ClipOutputs(
        targets=targets,
        predictions_fine=targets.clone(),
        predictions_coarse=targets + 0.2,
        attention_fine=one_hot,
        attention_coarse=torch.full((NUM_FRAMES, 16), 1 / 16),
        queries=None,
        visual_fine=None,
        visual_coarse=None,
        caption_log_likelihood=(-6.0, 3),
    )
    values = intrinsic.clip_metrics(outputs, processor.video_processor.postprocess_targets, None)
    assert values["loss_fine"] == 0 and values["psnr_fine"] == float("inf")
    assert values["ssim_fine"] == pytest.approx(1.0)
    assert values["loss_coarse"] == pytest.approx(0.04, rel=1e-5)
    assert values["caption_nll"] == pytest.approx(2.0)
    assert values["entropy_fine"] == pytest.approx(0.0, abs=1e-6)
    assert values["coverage_fine"] == pytest.approx(1 / 16) and values["coverage_coarse"] == pytest.approx(
        15 / 16
    )
    assert values["attention_overlap_passes"] == pytest.approx(1 / 16)


# ----------------------------------------------------------------------------------------------------- fovea


def test_mass_in_box_of_planted_attention_maps():
    clip = ProceduralVideoDataset(
        "validation", 1, ProceduralVideoConfig(image_size=64, num_frames=NUM_FRAMES)
    )[0]
    # The model reads 32 px frames: boxes are halved, 4 x 4 grid of 8 px patches.
    masks = target_box_coverage(clip, IMAGE_SIZE, PATCH_SIZE)
    boxes = crop_boxes(clip["boxes"][:, clip["target_index"]], 64, 64, IMAGE_SIZE)
    assert torch.allclose(masks, box_patch_masks(boxes, IMAGE_SIZE, PATCH_SIZE))
    inside = masks / masks.sum(-1, keepdim=True)  # all mass on patches the box covers
    outside = (masks == 0).float() / (masks == 0).float().sum(-1, keepdim=True)
    outputs = ClipOutputs(
        targets=None,
        predictions_fine=None,
        predictions_coarse=None,
        attention_fine=inside,
        attention_coarse=outside,
        queries=None,
        visual_fine=None,
        visual_coarse=None,
        caption_log_likelihood=(0.0, 0),
    )
    record = fovea.clip_record(clip, outputs, IMAGE_SIZE, PATCH_SIZE)
    full = (masks == 1).any(-1).numpy()  # frames where some patch lies fully inside the box
    assert np.allclose(record["mass_fine"][full], 1.0) and (record["mass_fine"] > record["chance"]).all()
    assert np.allclose(record["mass_coarse"], 0.0)
    assert np.allclose(record["chance"], masks.mean(-1).numpy())
    assert record["peak_fine"].all() and not record["peak_coarse"].any()


def test_fovea_end_to_end(run_dir, tmp_path):
    fovea.main(["--run_dir", str(run_dir), "--out", str(tmp_path), "--batch_size", "4"])
    report = read_report(tmp_path)
    summary = report["summary"]["all"]["frames_2_to_T"]
    assert summary["num_clips"] == 4
    assert 0 < summary["chance"]["estimate"] < 1 and 0 <= summary["mass_fine"]["estimate"] <= 1
    assert len(report["over_time"]["mass_coarse"]) == NUM_FRAMES
    assert (tmp_path / fovea.FIGURE_NAME).stat().st_size > 0


# ----------------------------------------------------------------------------------------------------- captions


def test_captioning_end_to_end(run_dir, tmp_path):
    captioning.main(
        [
            "--run_dir",
            str(run_dir),
            "--out",
            str(tmp_path),
            "--max_new_tokens",
            "3",
            "--metrics_backend",
            "builtin",
            "--batch_size",
            "4",
        ]
    )
    report = read_report(tmp_path)
    assert set(report["modes"]) == {"two_pass", "coarse"}
    for figures_of_mode in report["modes"].values():
        assert set(figures_of_mode["metrics"]) == {"bleu", "rouge_l", "cider"}
        assert figures_of_mode["implementations"]["cider"] == "foveated_vlm.metrics.cider_d"
        assert 0 <= figures_of_mode["attribute_accuracy"]["all"]["estimate"] <= 1
    assert len((tmp_path / captioning.CAPTIONS_NAME).read_text().splitlines()) == 8


def test_captioning_scores_attributes_with_the_probes_recipe():
    """One recipe (eval.attributes.score_caption): exact colour, shape and motion of the generated text."""
    reference = "the small red square moves from left to right."
    right = captioning.attribute_hits(
        {"reference": reference, "generated": "The RED square moves from left to right!"}
    )
    assert right == {"colour": 1.0, "shape": 1.0, "motion": 1.0, "all": 1.0}
    wrong = captioning.attribute_hits({"reference": reference, "generated": "a red circle"})
    assert wrong == {"colour": 1.0, "shape": 0.0, "motion": 0.0, "all": 0.0}


def test_caption_report_is_written_when_a_metric_is_unavailable(monkeypatch):
    from foveated_vlm import metrics

    def broken(predictions, references):
        raise ImportError("No module named 'rouge_score'")

    monkeypatch.setitem(metrics._BUILTIN, "rouge_l", (broken, "rouge_l"))
    results = [{"prompt": "p", "reference": "a red square moves left", "generated": "a red square moves"}] * 2
    figures = captioning.score_captions(results, procedural=False, backend="builtin")
    assert figures["metrics"]["rouge_l"] is None and figures["metrics"]["bleu"] is not None
    report = {
        "command": "c",
        "model": "m",
        "split": "s",
        "data_kind": "folder",
        "num_clips": 2,
        "max_new_tokens": 3,
        "modes": {"coarse": {**figures, "examples": results}},
    }
    text = captioning.format_markdown(report)
    assert "| rouge_l | n/a |" in text and "unavailable (ImportError" in text


# ----------------------------------------------------------------------------------------------------- MCQ


def test_answer_parsing():
    options = ["red", "green", "blue"]
    assert [mcq.answer_index(a, options) for a in (2, "2", "C", "(C)", "C.", "blue", "C. blue")] == [2] * 7
    assert mcq.strip_label("(B) a cat") == "a cat" and mcq.strip_label("B. a cat") == "a cat"
    assert mcq.strip_label("a cat") == "a cat"
    for bad in (3, "D", "purple"):
        with pytest.raises(ValueError):
            mcq.answer_index(bad, options)


def questions_of(clips, options: list[str], answer: int) -> list[dict]:
    return [
        {
            "id": c["clip_id"],
            "prompt": mcq.mcq_prompt("What colour is the moving object?", options),
            "options": options,
            "answer": answer,
            "frames": c["frames"],
            "group": "colour",
        }
        for c in clips
    ]


def test_mcq_scoring_finds_a_planted_answer_in_every_mode(make_model):
    model, processor = make_model()
    tokenizer = processor.tokenizer
    options, answer = ["red", "green", "blue", "yellow"], 2
    planted = set(tokenizer("blue" + mcq.END_OF_TURN, add_special_tokens=False)["input_ids"])
    for wrong in options[:answer] + options[answer + 1 :]:
        assert set(tokenizer(wrong, add_special_tokens=False)["input_ids"]) - planted
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[list(planted)] = 30.0

    class PlantedHead(torch.nn.Module):
        def forward(self, hidden):
            return bias.expand(*hidden.shape[:-1], -1)

    model.lm_head = PlantedHead()
    clips = ProceduralVideoDataset("heldout", 3, ProceduralVideoConfig(image_size=IMAGE_SIZE, num_frames=3))
    questions = questions_of(clips, options, answer)
    questions[1]["frames"] = questions[1]["frames"][:2]  # a shorter video in the batch (padding + masks)
    for mode in mcq.MODES:
        predictions = mcq.evaluate_mode(model, processor, questions, mode, batch_size=2)
        assert [p["mean"] for p in predictions] == [answer] * 3, mode
        assert mcq.summarise_mode(predictions)["accuracy"]["estimate"] == 1.0


def test_mcq_streaming_scores_equal_two_pass_scores(make_model):
    model, processor = make_model(text={"initializer_range": 0.2})
    clips = ProceduralVideoDataset("heldout", 2, ProceduralVideoConfig(image_size=IMAGE_SIZE, num_frames=3))
    questions = questions_of(clips, ["it moves", "it stays still", "a red ball bounces around"], 1)
    questions[0]["frames"] = questions[0]["frames"][:2]
    scores = {mode: mcq.evaluate_mode(model, processor, questions, mode, batch_size=2) for mode in mcq.MODES}
    for streamed, parallel in zip(scores["streaming"], scores["two_pass"]):
        assert np.allclose(streamed["scores"], parallel["scores"], rtol=1e-4, atol=1e-4)
    assert not np.allclose(scores["coarse"][0]["scores"], scores["two_pass"][0]["scores"], atol=1e-4)


@pytest.mark.parametrize("video_format", ["npy", "mp4"])
def test_mcq_end_to_end_from_a_built_set(run_dir, tmp_path, video_format):
    data = build_mcq.main(
        [
            "--out",
            str(tmp_path / "set"),
            "--num_clips",
            "3",
            "--image_size",
            "32",
            "--num_frames",
            "4",
            "--format",
            video_format,
        ]
    )
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(rows) == 3 and all((data.parent / row["video"]).is_file() for row in rows)
    report = mcq.main(
        [
            "--run_dir",
            str(run_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "out"),
            "--batch_size",
            "2",
            "--num_frames",
            "4",
        ]
    )
    assert set(report["modes"]) == set(mcq.MODES)
    for figures_of_mode in report["modes"].values():
        chance = np.mean([1 / len(row["options"]) for row in rows])  # 4 options, 2 for size questions
        assert 0 <= figures_of_mode["accuracy"]["estimate"] <= 1
        assert figures_of_mode["chance"] == pytest.approx(chance)
    predictions = (tmp_path / "out" / mcq.PREDICTIONS_NAME).read_text().splitlines()
    assert len(predictions) == 3 * len(mcq.MODES)
    assert read_report(tmp_path / "out")["num_questions"] == 3


def test_build_mcq_runs_as_a_module(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eval.build_mcq",
            "--out",
            str(tmp_path),
            "--num_clips",
            "2",
            "--image_size",
            "32",
            "--num_frames",
            "3",
            "--format",
            "npy",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / build_mcq.MCQ_NAME).read_text().splitlines()) == 2


# ----------------------------------------------------------------------------------------------------- figures


def test_figures_end_to_end(run_dir, tmp_path):
    from PIL import Image

    report = figures.main(["--run_dir", str(run_dir), "--out", str(tmp_path), "--clips", "0", "2"])
    assert report["loss_curves"]["step"] == 2
    assert Image.open(tmp_path / "loss_curves.png").size[0] > 0
    for clip in (0, 2):
        for name in ("attention", "next_frames"):
            assert Image.open(tmp_path / f"{name}_clip{clip}.png").size[0] > 0
            gif = Image.open(tmp_path / f"{name}_clip{clip}.gif")
            assert gif.n_frames == NUM_FRAMES
    assert "attention_clip2.gif" in (tmp_path / "report.md").read_text()
