"""The lmms-eval model (``eval/lmms_model.py``) and the offline task (``eval/lmms_tasks/foveated_offline``):
lmms-eval's own evaluator, finding the model through the entry point ``pyproject.toml`` declares, scores a tiny
model on procedural clips written as mp4 files, and its multiple-choice answers are ``eval.mcq``'s."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lmms_eval import evaluator as lmms_evaluator
from lmms_eval.models import MODEL_REGISTRY_V2
from lmms_eval.tasks import TaskManager

from eval import build_mcq, mcq
from eval.lmms_model import MODEL_ID, READINGS, FoveatedVLM, cut_at_stops, sampling_of, video_of

from ..builders import REPO, FoveatedModelTester
from ..environments import pyproject

TASKS_DIR = REPO / "eval" / "lmms_tasks"
DATA_DIR = Path("outputs/lmms_offline")
"""Where the task YAML reads the clips, relative to the folder lmms-eval runs in."""
NUM_CLIPS = 6
NUM_FRAMES = 4
TASKS = ("foveated_offline_mcq", "foveated_offline_mcq_gen", "foveated_offline_caption")


def load_task_utils():
    """The task folder's ``utils.py``, loaded as lmms-eval loads it (by file path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "foveated_offline_utils", TASKS_DIR / "foveated_offline/utils.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer):
    """A folder holding a saved tiny model and, under ``DATA_DIR``, the offline clips (mp4) and their index."""
    root = tmp_path_factory.mktemp("lmms")
    FoveatedModelTester(tokenizer).save_model(root / "model", text={"initializer_range": 0.2})
    build_mcq.main(
        ["--out", str(root / DATA_DIR), "--num_clips", str(NUM_CLIPS), "--image_size", "32"]
        + ["--num_frames", str(NUM_FRAMES)]
    )
    return root


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """lmms-eval's entry-point discovery over a distribution that declares exactly ``pyproject.toml``'s
    ``lmms_eval.models`` entry points (the installed metadata may predate them)."""
    declared = pyproject()["project"]["entry-points"]["lmms_eval.models"]
    site = tmp_path_factory.mktemp("site")
    dist = site / "foveated_vlm_entry_points-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: foveated-vlm-entry-points\nVersion: 0\n")
    lines = [f"{name} = {value}" for name, value in declared.items()]
    (dist / "entry_points.txt").write_text("[lmms_eval.models]\n" + "\n".join(lines) + "\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        MODEL_REGISTRY_V2.load_entrypoint_manifests(overwrite=True)
    assert MODEL_REGISTRY_V2.get_model_class(MODEL_ID) is FoveatedVLM
    return MODEL_ID


def evaluate(workdir: Path, model: str, mode: str, monkeypatch) -> dict:
    """lmms-eval's ``simple_evaluate`` on the offline group in the reading ``mode``, samples logged."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(workdir / "datasets_cache"))
    return lmms_evaluator.simple_evaluate(
        model=model,
        model_args=f"pretrained={workdir / 'model'},inference_mode={mode},max_frames={NUM_FRAMES},device=cpu",
        tasks=["foveated_offline"],
        batch_size=4,
        log_samples=True,
        bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(TASKS_DIR)),
    )


def mcq_predictions(workdir: Path, mode: str) -> tuple[dict, list[dict]]:
    """``eval.mcq``'s report and predictions on the same clips, in the reading ``mode``."""
    out = workdir / f"mcq_{mode}"
    report = mcq.main(
        ["--model", str(workdir / "model"), "--data", str(workdir / DATA_DIR / build_mcq.MCQ_NAME)]
        + ["--out", str(out), "--modes", mode, "--num_frames", str(NUM_FRAMES), "--batch_size", "3"]
    )
    predictions = [json.loads(line) for line in (out / mcq.PREDICTIONS_NAME).read_text().splitlines()]
    return report, predictions


def direct_generation(workdir: Path, mode: str) -> list[str]:
    """Greedy answers to the generation task's prompts, by ``model.generate`` itself."""
    from eval.common import load_model

    model, processor = load_model(workdir / "model", "cpu")
    utils = load_task_utils()
    rows = [json.loads(line) for line in (workdir / DATA_DIR / build_mcq.MCQ_NAME).read_text().splitlines()]
    inputs = processor(
        text=[utils.mcq_generation_doc_to_text(row) for row in rows],
        videos=[str(workdir / DATA_DIR / row["video"]) for row in rows],
        num_frames=NUM_FRAMES,
    )
    generated = model.generate(**inputs, max_new_tokens=16, do_sample=False, inference_mode=mode)
    return [cut_at_stops(text, ["\n"]).strip() for text in processor.decode_generated(generated, inputs)]


def test_lmms_eval_scores_the_offline_task_as_eval_mcq_does_in_both_readings(
    workdir, registered, monkeypatch
):
    log_likelihoods = {}
    for mode in READINGS:
        output = evaluate(workdir, registered, mode, monkeypatch)
        results, samples = output["results"], output["samples"]
        report, predictions = mcq_predictions(workdir, mode)
        rows = sorted(samples["foveated_offline_mcq"], key=lambda sample: sample["doc_id"])
        totals = [[ast.literal_eval(r)[0] for r in row["filtered_resps"]] for row in rows]
        assert len(totals) == NUM_CLIPS
        # The same option scores, hence the same answers and the same accuracy, as eval.mcq (sum scoring).
        for row_totals, prediction in zip(totals, predictions, strict=True):
            np.testing.assert_allclose(row_totals, prediction["totals"], rtol=1e-4, atol=1e-4)
            assert int(np.argmax(row_totals)) == prediction["sum"]
        accuracy = results["foveated_offline_mcq"]["accuracy,none"]
        assert accuracy == pytest.approx(report["modes"][mode]["accuracy_sum"])
        log_likelihoods[mode] = np.concatenate(totals)
        # Generation: the answers model.generate writes, scored by the task.
        generated = sorted(samples["foveated_offline_mcq_gen"], key=lambda sample: sample["doc_id"])
        assert [sample["filtered_resps"][0] for sample in generated] == direct_generation(workdir, mode)
        assert 0 <= results["foveated_offline_mcq_gen"]["accuracy,none"] <= 1
        captions = results["foveated_offline_caption"]
        for metric in ("bleu", "rouge_l", "cider", "attribute_accuracy"):
            assert captions[f"{metric},none"] >= 0
        assert len(samples["foveated_offline_caption"]) == NUM_CLIPS
    # inference_mode reaches the model: the planned and the static readings score differently.
    assert not np.allclose(log_likelihoods["two_pass"], log_likelihoods["coarse"], atol=1e-4)


# ------------------------------------------------------------------------------------------------ model arguments


class FakeProcessor:
    def __init__(self, num_frames=None, fps=None):
        self.num_frames, self.fps = num_frames, fps


def test_frame_sampling_follows_the_model_arguments_else_the_trained_sampling():
    assert sampling_of(FakeProcessor(num_frames=8), None, None) == {"num_frames": 8}
    assert sampling_of(FakeProcessor(fps=2.0), None, None) == {"fps": 2.0}
    assert sampling_of(FakeProcessor(num_frames=8), 4, None) == {"num_frames": 4}
    assert sampling_of(FakeProcessor(num_frames=8), None, 1.5) == {"fps": 1.5}
    with pytest.raises(ValueError, match="max_frames=N or fps=F"):
        sampling_of(FakeProcessor(), None, None)
    with pytest.raises(ValueError, match="not both"):
        sampling_of(FakeProcessor(), 4, 1.0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"inference_mode": "streaming"}, "inference_mode must be one of"),
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"batch_size": "auto"}, "batch_size must be an integer"),
        ({"num_frames": 4}, r"unknown model arguments \['num_frames'\]"),
    ],
)
def test_bad_model_arguments_are_refused_by_name(arguments, message):
    with pytest.raises(ValueError, match=message):
        FoveatedVLM(pretrained="unused", **arguments)


def test_one_video_per_document():
    assert video_of(["clip.mp4"], 0) == "clip.mp4"
    frames = [np.zeros((4, 4, 3), np.uint8)] * 3
    assert video_of(frames, 0) is frames
    with pytest.raises(ValueError, match="document 3 has no video"):
        video_of([], 3)
    with pytest.raises(ValueError, match="gives 2 videos"):
        video_of(["a.mp4", "b.mp4"], 0)


def test_generated_answers_are_read_as_the_option_they_pick():
    parse = load_task_utils().parse_choice
    options = ["red", "blue", "green"]
    assert [parse(text, options) for text in ("B", "(C) green", "A.", "b", "C)")] == [1, 2, 0, None, 2]
    assert parse("A red square moves.", options) == 0  # not the letter A: the one colour it names
    assert parse("the blue circle and the red square", options) is None
    assert parse("D", options) is None
    assert cut_at_stops("yes\nno", ["\n"]) == "yes"


def test_an_option_is_greedy_when_every_token_is_the_argmax(make_model, random_video):
    model, processor = make_model()
    end_of_turn = processor.tokenizer.convert_tokens_to_ids(mcq.END_OF_TURN)
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[end_of_turn] = 30.0

    class EndOfTurnHead(torch.nn.Module):
        def forward(self, hidden):
            return bias.expand(*hidden.shape[:-1], -1)

    model.lm_head = EndOfTurnHead()
    scores = mcq.option_scores(
        model, processor, ["Say nothing."], [random_video(3)], [["", "blue"]], "coarse"
    )
    assert [score.greedy for score in scores[0]] == [True, False]
    assert scores[0][0].count == 1 and scores[0][0].total == pytest.approx(0.0, abs=1e-6)
