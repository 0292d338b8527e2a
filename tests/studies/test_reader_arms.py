"""The readers' ablation arms (studies/readers/arms.yaml) and their cost measurement (studies/readers/costs.py)."""

from __future__ import annotations

import json

import pytest
import torch

from foveated_vlm.training.config import load_config
from foveated_vlm.training.modeling import build_model_and_processor
from readers_foveated import FRAME_READERS
from studies.readers import costs as reader_costs
from studies.runner import load_arms

from ..builders import FIXATION_CROP
from ..environments import REPO

ARMS = REPO / "studies" / "readers" / "arms.yaml"
BASE = REPO / "configs" / "named.yaml"
SUPERVISED = "model.attention_supervision_weight=1.0"
ARM_FRAMES = 2


def _reader(arm) -> str:
    chosen = [o.split("=", 1)[1] for o in arm.overrides if o.startswith("model.frame_reader=")]
    return chosen[0] if chosen else "query"


def test_every_reader_has_an_arm_at_one_and_at_several_tokens_with_and_without_supervision():
    arms = load_arms(ARMS)
    names = {arm.name for arm in arms}
    assert "dense" in names and {"query", "query_supervised"} <= names
    for reader in FRAME_READERS:
        mine = [
            arm
            for arm in arms
            if _reader(arm) == reader and "model.foveation_mode=dense" not in arm.overrides
        ]
        several = [arm for arm in mine if "model.multi_query_output=tokens" in arm.overrides]
        single = [arm for arm in mine if arm not in several]
        for group in (single, several):
            supervised = sorted({SUPERVISED in arm.overrides for arm in group})
            assert supervised == [False, True], (reader, group)


@pytest.mark.parametrize("arm", load_arms(ARMS), ids=lambda arm: arm.name)
def test_every_arm_builds_and_trains_on_the_named_config(arm):
    model, processor = build_model_and_processor(load_config(BASE, arm.overrides))
    assert model.config.frame_reader == _reader(arm)
    size = processor.image_size
    video = torch.randint(0, 256, (ARM_FRAMES, size, size, 3), dtype=torch.uint8)
    batch = processor(
        text=["What does the red object do?"], videos=[video], captions=["it moves."], return_targets=True
    )
    model.train()
    model(**batch).loss.backward()


def test_reader_costs_measure_every_arm_on_the_tiny_model(tmp_path):
    arms = tmp_path / "arms.yaml"
    arms.write_text(
        "arms:\n"
        "  - {name: log_polar, set: [model.frame_reader=log_polar]}\n"
        "  - {name: top_k_tokens, set: [model.frame_reader=top_k, model.top_k_output=tokens,"
        " model.multi_query_output=tokens]}\n"
        f"  - {{name: glimpse_rl, set: [model.frame_reader=glimpse_rl, model.fixation_crop_size={FIXATION_CROP}]}}\n"
    )
    out = tmp_path / "out"
    settings = ["--batch_size", "1", "--num_frames", "2", "--repeats", "1", "--warmup", "0"]
    report = reader_costs.main(["--tiny", "--arms", str(arms), "--out", str(out), *settings])
    saved = json.loads((out / "reader_costs.json").read_text())
    assert saved == json.loads(json.dumps(report))
    polar, tokens, glimpse = saved["arms"]
    assert polar["frame_reader"] == "log_polar" and polar["tokens_per_frame"] == 1
    assert all(polar[measure] > 0 for measure in reader_costs.MEASURES)
    assert tokens["tokens_per_frame"] == 4 and tokens["train_ms_per_frame"] > 0
    assert tokens["stream_ms_per_frame"] is None and "one token a frame" in tokens["stream_skipped"]
    assert glimpse["frame_reader"] == "glimpse_rl" and glimpse["tokens_per_frame"] == 1
    assert all(glimpse[measure] > 0 for measure in reader_costs.MEASURES), "a pixel reader streams too"
    assert "| log_polar | log_polar | 1 |" in (out / "reader_costs.md").read_text()


def test_the_default_cost_arms_are_every_reader_and_the_dense_baseline():
    names = [arm.name for arm in reader_costs.default_arms()]
    assert names == [*FRAME_READERS, "dense"]
    with pytest.raises(ValueError, match="--only names arms that do not exist"):
        reader_costs.main(["--tiny", "--only", "nonsense", "--out", "unused"])


def test_a_failing_arm_is_recorded_and_the_others_are_still_measured(tmp_path, monkeypatch):
    """One arm that raises (e.g. a reader that cannot be captured) must not hide the other arms' costs."""
    arms = tmp_path / "arms.yaml"
    arms.write_text("arms:\n  - {name: broken, set: []}\n  - {name: query, set: []}\n")
    real = reader_costs.measure_arm

    def measure(args, arm, device):
        if arm.name == "broken":
            raise RuntimeError("cannot capture this reader")
        return real(args, arm, device)

    monkeypatch.setattr(reader_costs, "measure_arm", measure)
    settings = ["--batch_size", "1", "--num_frames", "2", "--repeats", "1", "--warmup", "0"]
    report = reader_costs.main(["--tiny", "--arms", str(arms), "--out", str(tmp_path / "out"), *settings])
    broken, query = report["arms"]
    assert broken["error"] == "RuntimeError: cannot capture this reader"
    assert query["train_ms_per_frame"] > 0
    assert "cannot capture this reader" in (tmp_path / "out" / "reader_costs.md").read_text()
