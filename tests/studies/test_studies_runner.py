"""The studies' shared arms runner (``studies.runner``): trains and evaluates each arm, reuses finished work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import train_accelerate
from eval import probes
from studies import runner as ablations

from ..builders import REPO, SMALL_DATA, SMOKE_CONFIG


def test_ablation_runner_trains_and_evaluates_each_arm(tmp_path):
    arms_file = tmp_path / "arms.yaml"
    arms_file.write_text(
        "arms:\n"
        "  - {name: two_pass, set: [], description: both passes}\n"
        "  - {name: static_only, set: [model.inference_mode=coarse], description: static query only}\n"
        "  - {name: needs_a_switch, set: [model.no_such_switch=1]}\n"
    )
    calls = []

    def trainer(argv: list[str], log_path: Path) -> None:
        calls.append(argv)
        train_accelerate.main(argv)

    out = tmp_path / "ablations"
    common = [
        "--config",
        SMOKE_CONFIG,
        *SMALL_DATA,
        "--arms",
        str(arms_file),
        "--out",
        str(out),
        "--max_steps",
        "2",
    ]
    quick = ["--eval_clips", "2", "--max_new_tokens", "2", "--metrics_backend", "builtin"]
    report = ablations.main([*common, "--seed", "3", *quick], trainer=trainer)
    statuses = {record["arm"]["name"]: record for record in report["arms"]}
    assert statuses["two_pass"]["status"] == "ok" and statuses["static_only"]["status"] == "ok"
    assert (
        statuses["needs_a_switch"]["status"] == "unavailable"
        and "no_such_switch" in statuses["needs_a_switch"]["reason"]
    )
    assert len(calls) == 2 and all(call[call.index("--seed") + 1] == "3" for call in calls)
    assert all(statuses[name]["steps"] == 2 for name in ("two_pass", "static_only"))
    assert statuses["static_only"]["trained_passes"] == "coarse"
    static_modes = statuses["static_only"]["evaluation"]["captioning"]["modes"]
    assert set(static_modes) == {"coarse"}  # a coarse-only arm is never read with an untrained fine pass
    assert statuses["static_only"]["evaluation"]["intrinsic"]["metrics"].get("loss_fine") is None
    table = (out / "ablations.md").read_text()
    assert "| two_pass | ok" in table and "unavailable" in table
    assert json.loads((out / "ablations.json").read_text())["max_steps"] == 2
    again = ablations.main([*common, "--only", "two_pass", *quick], trainer=trainer)
    assert len(calls) == 2 and again["arms"][0]["reused"]  # a trained arm is not trained again
    assert again["arms"][0]["evaluation"]["intrinsic"] == statuses["two_pass"]["evaluation"]["intrinsic"]


def test_ablation_runner_reuses_finished_evaluations_and_runs_arms_in_parallel(tmp_path, monkeypatch):
    arms_file = tmp_path / "arms.yaml"
    arms_file.write_text("arms:\n  - {name: a, set: []}\n  - {name: b, set: [model.lambda_coarse=0.5]}\n")
    launched = []

    def fake_parallel(argv, arms, out_dir, workers):
        launched.append((argv, [arm.name for arm in arms], workers))

    monkeypatch.setattr(ablations, "run_in_parallel", fake_parallel)
    argv = [
        "--config", SMOKE_CONFIG, *SMALL_DATA, "--arms", str(arms_file), "--out", str(tmp_path / "out"),
        "--max_steps", "2", "--eval_clips", "2", "--evaluations", "intrinsic", "--parallel", "2",
    ]  # fmt: skip
    report = ablations.main(argv, trainer=lambda args, log: train_accelerate.main(args))
    assert launched == [(argv[:-2], ["a", "b"], 2)]  # each child names its own arm
    replicate = ablations.Arm("b_seed1", ["train.seed=1"])
    assert "--seed" not in ablations.training_arguments(
        ablations.build_parser().parse_args(argv), replicate, tmp_path
    )
    assert [record["status"] for record in report["arms"]] == ["ok", "ok"]
    assert set(report["arms"][0]["evaluation"]) == {"intrinsic"}

    def no_rerun(*args, **kwargs):
        raise AssertionError("a finished evaluation must be read back, not run again")

    monkeypatch.setattr(ablations.intrinsic, "run", no_rerun)
    again = ablations.main([*argv[:-2], "--only", "a"])
    assert again["arms"][0]["evaluation"]["intrinsic"] == report["arms"][0]["evaluation"]["intrinsic"]


def test_probe_readers_pick_the_readers_of_a_two_pass_arm_and_never_a_static_only_arm(tmp_path):
    argv = ["--out", str(tmp_path), "--max_steps", "1", "--probe_readers", "dynamic", "blank"]
    args = ablations.build_parser().parse_args(argv)

    def readers(parsed, coarse_only: bool = False, dense: bool = False) -> list[str] | None:
        chosen = ablations.arm_probe_readers(parsed, coarse_only, dense)
        probe_argv = ablations._evaluation_argv(parsed, tmp_path, "probes", chosen)
        return probe_argv[probe_argv.index("--readers") + 1 :] if "--readers" in probe_argv else None

    assert readers(args) == ["dynamic", "blank"]
    assert readers(args, coarse_only=True) == list(ablations.COARSE_ONLY_READERS)
    every = ablations.build_parser().parse_args(argv[:4])
    assert readers(every) is None, "all readers: the probes' default"
    assert readers(every, dense=True) == list(probes.DENSE_READERS)
    static = ablations.build_parser().parse_args([*argv[:4], "--probe_readers", "dynamic", "static"])
    assert readers(static, dense=True) == ["dynamic"], "a dense arm runs only the readers it can"
    with pytest.raises(SystemExit):
        ablations.build_parser().parse_args([*argv[:4], "--probe_readers", "psychic"])


def test_subprocess_trainer_reports_a_failed_run(tmp_path):
    failing = ablations.subprocess_trainer(
        f"{sys.executable} -c 'import sys; print(sys.argv[1:]); sys.exit(3)'"
    )
    with pytest.raises(RuntimeError, match="status 3"):
        failing(["--max_steps", "1"], tmp_path / "train.log")
    assert "--max_steps" in (tmp_path / "train.log").read_text()


@pytest.mark.parametrize("study", ["named_object", "readers", "label_free"])
def test_every_study_arms_file_loads_with_the_runner(study):
    arms = ablations.load_arms(REPO / "studies" / study / "arms.yaml")
    assert arms and all(arm.name for arm in arms)
    for arm in arms:
        sections = {override.split("=", 1)[0].split(".", 1)[0] for override in arm.overrides}
        assert sections <= {"model", "data", "train"}, f"{study}/{arm.name}: overrides {arm.overrides}"
