"""studies.readers.report: the readers' table and figure from a sweep folder (training logs, probes) and a cost run."""

from __future__ import annotations

import json
import shutil

import pytest

from studies.readers import report as readers_report

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


def _probes(
    arm_dir, planned: float, static: float, blank: float, split: str = "validation", folder: str = "probes"
) -> None:
    path = arm_dir / "eval" / folder / "probes.json"
    path.parent.mkdir(parents=True)

    def reader(accuracy: float, mass: float | None) -> dict:
        return {"all_attributes": {"estimate": accuracy},
                "accuracy": {"motion": {"estimate": accuracy + 0.1}, "shape": {"estimate": accuracy / 2}},
                "mass_in_box": None if mass is None else {"estimate": mass}, "chance": {"estimate": 0.05}}  # fmt: skip

    readers = {"dynamic": reader(planned, 0.5), "static": reader(static, 0.25), "blank": reader(blank, None)}
    report = {"split": split, "attributes": ["shape", "motion"], "summary": {"all": {"readers": readers}}}
    path.write_text(json.dumps(report))


@pytest.fixture
def sweep(tmp_path):
    (tmp_path / "arms.yaml").write_text(ARMS_YAML)
    _log(tmp_path / "sweep" / "arms" / "query" / "log.jsonl", 0.8, 0.3)
    _log(tmp_path / "sweep" / "arms" / "top_k" / "log.jsonl", 0.2, 0.4)
    _probes(tmp_path / "sweep" / "arms" / "query", 0.7, 0.2, 0.0)
    costs = tmp_path / "costs.json"
    costs.write_text(
        json.dumps({"settings": {"device": "cpu"}, "arms": [{"arm": "query", "train_ms_per_frame": 2.0}]})
    )
    return tmp_path


def _main(sweep, *sweeps: str):
    return readers_report.main(
        ["--sweep", *(str(sweep / name) for name in sweeps), "--arms", str(sweep / "arms.yaml"),
         "--costs", str(sweep / "costs.json"), "--out", str(sweep / "out")]
    )  # fmt: skip


def test_the_report_reads_the_last_validation_row_probes_and_costs(sweep):
    out = sweep / "out"
    report = _main(sweep, "sweep")
    assert list(report["arms"]) == ["query", "top_k"], "arms without a log are left out, in the YAML's order"
    query = report["arms"]["query"]
    (seed,) = query["seeds"].values()
    assert query["steps"] == [10] and seed["validation"]["mass_in_box_fine"] == 0.8
    assert seed["validation"]["ratio_coarse_fine"] == pytest.approx(1.1)
    probes = seed["probes"]["validation"]
    assert probes["all_static"] == 0.2 and probes["motion_dynamic"] == pytest.approx(0.8)
    assert list(seed["probes"]) == ["validation"] and query["costs"]["train_ms_per_frame"] == 2.0
    (top_k,) = report["arms"]["top_k"]["seeds"].values()
    assert top_k["probes"] == {} and report["arms"]["top_k"]["costs"] is None
    assert json.loads((out / "reader_comparison_results.json").read_text()) == json.loads(json.dumps(report))
    table = (out / "reader_comparison.md").read_text()
    row = "| query | 1 | 0.800 | 0.050 | 0.300 | 1.100 | 0.700 | 0.200 | 0.000 | 0.800 | 2.00 | n/a | n/a |"
    assert row in table
    assert "| top_k | 1 | 0.200 | 0.050 | 0.400 | 1.100 | n/a | n/a | n/a | n/a |" in table
    assert (out / "figures" / "reader_comparison_mass_caption.png").stat().st_size > 0


def test_several_seeds_are_averaged_and_each_is_shown(sweep):
    _log(sweep / "seed1" / "arms" / "query" / "log.jsonl", 0.6, 0.5)
    _probes(sweep / "seed1" / "arms" / "query", 0.5, 0.1, 0.0)
    report = _main(sweep, "sweep", "seed1")
    assert len(report["arms"]["query"]["seeds"]) == 2 and len(report["arms"]["top_k"]["seeds"]) == 1
    table = (sweep / "out" / "reader_comparison.md").read_text()
    assert "| query | 2 | 0.700 (0.800 / 0.600) | 0.050 (0.050 / 0.050) | 0.400 (0.300 / 0.500) |" in table
    assert "| 0.600 (0.700 / 0.500) | 0.150 (0.200 / 0.100) |" in table


def test_an_arm_that_never_validated_is_refused_by_name(sweep):
    log = sweep / "sweep" / "arms" / "top_k" / "log.jsonl"
    log.write_text(json.dumps({"step": 1, "split": "train"}) + "\n")
    with pytest.raises(ValueError, match="top_k/log.jsonl has no validation row"):
        readers_report.collect([sweep / "sweep"], str(sweep / "arms.yaml"), None)
    with pytest.raises(ValueError, match="no arm of"):
        readers_report.collect([sweep / "nothing"], str(sweep / "arms.yaml"), None)


def test_the_attribute_table_gives_each_attribute_of_the_three_readings_on_each_probed_split(sweep):
    _log(sweep / "seed1" / "arms" / "query" / "log.jsonl", 0.6, 0.5)
    _probes(sweep / "seed1" / "arms" / "query", 0.5, 0.1, 0.0)
    _probes(sweep / "seed1" / "arms" / "query", 0.3, 0.1, 0.0, split="heldout", folder="probes_heldout")
    report = _main(sweep, "sweep", "seed1")
    seed0, seed1 = report["arms"]["query"]["seeds"].values()
    assert list(seed0["probes"]) == ["validation"] and sorted(seed1["probes"]) == ["heldout", "validation"]
    assert (
        seed1["probes"]["heldout"]["shape_dynamic"] == 0.15
        and seed1["probes"]["heldout"]["mass_blank"] is None
    )
    table = (sweep / "out" / "reader_comparison.md").read_text()
    assert readers_report.ATTRIBUTE_TABLE_TITLE in table
    assert "| arm | seeds | split | mass (planned) | mass (static) | all | shape | motion |" in table
    # heldout: seed 1 only; validation: the mean of (0.7, 0.5), shape half of it, motion 0.1 above
    assert "| query | 1 | heldout | 0.500 | 0.250 | 0.300 / 0.100 / 0.000 | 0.150 / 0.050 / 0.000 |" in table
    row = "| query | 2 | validation | 0.500 | 0.250 | 0.600 / 0.150 / 0.000 | 0.300 / 0.075 / 0.000 | 0.700 / 0.250 / 0.100 |"
    assert row in table
    assert table.count("| top_k |") == 1, "an arm without probes has no row in the attribute table"
    main_row = "| query | 2 | 0.700 (0.800 / 0.600) | 0.050 (0.050 / 0.050) | 0.400 (0.300 / 0.500) | 1.100 (1.100 / 1.100) | 0.600 (0.700 / 0.500) |"
    assert main_row in table, "the main table shows the validation split by default"
    readers_report.main(
        ["--sweep", str(sweep / "sweep"), str(sweep / "seed1"), "--arms", str(sweep / "arms.yaml"),
         "--out", str(sweep / "heldout"), "--split", "heldout"]
    )  # fmt: skip
    heldout_table = (sweep / "heldout" / "reader_comparison.md").read_text()
    assert "| 1.100 (1.100 / 1.100) | 0.300 | 0.100 | 0.000 | 0.400 |" in heldout_table


def test_two_probe_reports_of_one_split_are_refused_by_name(sweep):
    _probes(sweep / "sweep" / "arms" / "query", 0.1, 0.1, 0.0, folder="probes_again")
    with pytest.raises(ValueError, match="probes_again/probes.json both probe the 'validation' split"):
        readers_report.collect([sweep / "sweep"], str(sweep / "arms.yaml"), None)


def test_a_sweep_without_probes_writes_no_attribute_table(sweep):
    for probes in (sweep / "sweep" / "arms").glob("*/eval"):
        shutil.rmtree(probes)
    _main(sweep, "sweep")
    assert readers_report.ATTRIBUTE_TABLE_TITLE not in (sweep / "out" / "reader_comparison.md").read_text()
