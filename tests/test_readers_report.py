"""eval.readers_report: the readers' table and figure from a sweep folder (training logs, probes) and a cost run."""

from __future__ import annotations

import json

import pytest

from eval import readers_report

ARMS_YAML = "arms:\n  - {name: query, set: []}\n  - {name: top_k, set: [model.frame_reader=top_k]}\n  - {name: absent, set: []}\n"


def _log(path, mass_fine: float, caption: float) -> None:
    rows = [
        {"step": 5, "split": "train", "loss": 3.0},
        {"step": 5, "split": "validation", "mass_in_box_fine": 0.1, "loss_caption": 9.0},
        {"step": 10, "split": "validation", "mass_in_box_fine": mass_fine, "mass_in_box_coarse": 0.05,
         "loss_caption": caption, "loss_fine": 0.5, "loss_coarse": 0.55},
    ]  # fmt: skip
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def sweep(tmp_path):
    (tmp_path / "arms.yaml").write_text(ARMS_YAML)
    _log(tmp_path / "sweep" / "arms" / "query" / "log.jsonl", 0.8, 0.3)
    _log(tmp_path / "sweep" / "arms" / "top_k" / "log.jsonl", 0.2, 0.4)
    probes = tmp_path / "sweep" / "arms" / "query" / "eval" / "probes" / "probes.json"
    probes.parent.mkdir(parents=True)
    estimate = {"estimate": 0.7}
    dynamic = {"all_attributes": estimate, "accuracy": {"motion": {"estimate": 0.9}}, "mass_in_box": estimate,
               "chance": {"estimate": 0.05}}  # fmt: skip
    probes.write_text(json.dumps({"summary": {"all": {"readers": {"dynamic": dynamic, "static": {}}}}}))
    costs = tmp_path / "costs.json"
    costs.write_text(
        json.dumps({"settings": {"device": "cpu"}, "arms": [{"arm": "query", "train_ms_per_frame": 2.0}]})
    )
    return tmp_path


def test_the_report_reads_the_last_validation_row_probes_and_costs(sweep):
    out = sweep / "out"
    report = readers_report.main(
        ["--sweep", str(sweep / "sweep"), "--arms", str(sweep / "arms.yaml"), "--costs", str(sweep / "costs.json"),
         "--out", str(out)]
    )  # fmt: skip
    assert list(report["arms"]) == ["query", "top_k"], "arms without a log are left out, in the YAML's order"
    query = report["arms"]["query"]
    assert query["step"] == 10 and query["validation"]["mass_in_box_fine"] == 0.8
    assert query["validation"]["ratio_coarse_fine"] == pytest.approx(1.1)
    assert query["heldout_probes"]["motion"] == 0.9 and query["costs"]["train_ms_per_frame"] == 2.0
    assert report["arms"]["top_k"]["heldout_probes"] is None and report["arms"]["top_k"]["costs"] is None
    assert json.loads((out / "reader_comparison_results.json").read_text()) == json.loads(json.dumps(report))
    table = (out / "reader_comparison.md").read_text()
    assert "| query | 0.800 | 0.050 | 0.300 | 1.100 | 0.700 / 0.900 | 2.00 | n/a | n/a |" in table
    assert (out / "figures" / "reader_comparison_mass_caption.png").stat().st_size > 0


def test_an_arm_that_never_validated_is_refused_by_name(sweep):
    log = sweep / "sweep" / "arms" / "top_k" / "log.jsonl"
    log.write_text(json.dumps({"step": 1, "split": "train"}) + "\n")
    with pytest.raises(ValueError, match="top_k/log.jsonl has no validation row"):
        readers_report.collect(sweep / "sweep", str(sweep / "arms.yaml"), None)
    with pytest.raises(ValueError, match="no arm of"):
        readers_report.collect(sweep / "nothing", str(sweep / "arms.yaml"), None)
