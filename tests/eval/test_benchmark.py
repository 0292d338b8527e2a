"""The speed benchmark runs end to end on the CPU with the tiny config, so it never rots."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from eval.benchmark import cli, flops, report, streaming, trainer, training, workload
from eval.benchmark.settings import TINY_SETTINGS, Settings
from foveated_vlm.tiny import tiny_processor, tiny_tokenizer
from foveated_vlm.training.config import load_config

pytestmark = pytest.mark.benchmark

FLOP_TOLERANCE = 0.1  # analytic count vs torch's FLOP counter (elementwise work and input grads differ)
AGREEMENT_TOLERANCE = 1e-5  # fast streaming step vs FoveatedStream.step, float32 on the CPU
SUMMARY_ROWS = (
    "query pass vs re-encoding",
    "training, T = 4",
    "train_accelerate.py end to end vs its step, 2 clips x 4 frames",
    "streaming, batch 1",
    "caption 40 frames",
    "peak GPU memory of the training step",
)
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
FASTEST_TRAINER_LEVERS = "+ regional torch.compile + whole step in one CUDA graph"


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    result = cli.main(
        ["--tiny", "--device", "cpu", "--output", str(out / "BENCHMARKS.md"), "--json", str(out / "b.json")]
    )
    return result, (out / "BENCHMARKS.md").read_text(), json.loads((out / "b.json").read_text())


def test_tiny_run_reports_every_row(tiny_report):
    result, markdown, saved = tiny_report
    assert "errors" not in result, result.get("errors")
    for row in SUMMARY_ROWS:
        assert f"| {row}" in markdown, row
    assert "| training (dense) | + last-position logits only" in markdown
    assert "| data loader |" in markdown
    assert saved["train_foveated"]["text_tokens_per_clip"] == 48
    for mode in ("foveated", "dense"):
        best = saved[f"train_{mode}"]["best"]
        assert best["frames_per_s"] > 0 and torch.isfinite(torch.tensor(best["loss"]))
    assert saved["query"]["best"]["encode_us"] > 0 and saved["query"]["best"]["query_us"] > 0
    assert saved["long"]["new_tokens"] == TINY_SETTINGS.new_tokens


def test_trainer_section_runs_train_accelerate_beside_its_step(tiny_report):
    _, markdown, saved = tiny_report
    run = saved["trainer"]
    variant = training.trainer_variant(TINY_SETTINGS, CPU)
    assert run["variant"] == variant.name and run["levers"] == variant.train_section(CPU)
    assert (run["batch_size"], run["num_frames"]) == (TINY_SETTINGS.batch_size, TINY_SETTINGS.num_frames)
    assert run["steps"] == TINY_SETTINGS.trainer_log_every * (TINY_SETTINGS.trainer_windows + 1)
    assert len(run["window_frames_per_s"]) == TINY_SETTINGS.trainer_windows
    assert run["frames_per_s"] > 0 and run["first_window_frames_per_s"] > 0
    assert not run["step_measured_here"], "the train section measured the same lever set"
    assert run["step_frames_per_s"] == saved["train_foveated"]["variants"][variant.name]["frames_per_s"]
    assert run["ratio"] == pytest.approx(run["frames_per_s"] / run["step_frames_per_s"])
    assert run["command"].startswith("python train_accelerate.py --config configs/benchmark_trainer.yaml")
    assert "| trainer | train_accelerate.py, mixed_precision=no" in markdown
    assert "trainer within 10% of the step" in markdown


def test_fast_stream_step_matches_library(tiny_report):
    _, markdown, saved = tiny_report
    stream = saved["stream"]
    for key in ("agreement_max_relative_error", "agreement_fused_max_relative_error"):
        errors = stream[key]
        assert set(errors) == {"predictions", "queries", "attention", "next_queries"}
        assert max(errors.values()) < AGREEMENT_TOLERANCE, (key, errors)
    assert not stream["errors"], stream["errors"]
    variants = list(stream["variants"])
    assert variants[0].startswith("library FoveatedStream.step (eager")
    assert variants[1:] == list(streaming.stream_variants(TINY_SETTINGS, CPU))
    assert len(variants) == 3 and "fused passes" in variants[2]
    assert all(ms > 0 for ms in stream["variants"].values())
    assert "| streaming | static caches, eager (CPU), fused passes" in markdown


def test_long_video_captions_with_the_static_cache(tiny_report):
    _, markdown, saved = tiny_report
    long_video = saved["long"]
    assert long_video["captions_equal"]  # float32 on the CPU: the static-cache greedy caption is generate's
    assert long_video["caption_seconds"] > 0 and long_video["caption_generate_seconds"] > 0
    assert long_video["seconds"] == pytest.approx(long_video["watch_seconds"] + long_video["caption_seconds"])
    assert "static cache + CUDA graph per token; generate:" in markdown


def test_module_runs_with_python_dash_m(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "eval.benchmark", "--tiny", "--device", "cpu", "--sections", "env"]
        + ["--output", str(tmp_path / "B.md"), "--json", str(tmp_path / "b.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    saved = json.loads((tmp_path / "b.json").read_text())
    assert (
        saved["command"]
        == f"python -m eval.benchmark --tiny --device cpu --sections env --output {tmp_path / 'B.md'} --json {tmp_path / 'b.json'}"
    )
    assert saved["ceilings"] == {"matmul_tflops": None, "copy_tbps": None}
    assert (tmp_path / "B.md").read_text().startswith("# Benchmarks: foveated")


def test_dense_long_video_context_verdict():
    fits = {"dense_positions_needed": 100, "context": 512, "dense_frames_that_fit": 118}
    over = {"dense_positions_needed": 230_433, "context": 8192, "dense_frames_that_fit": 126}
    assert report._dense_long_video(fits).startswith("fits")
    assert report._dense_long_video(over).startswith(
        "cannot"
    ) and "126 frames fit" in report._dense_long_video(over)


@pytest.mark.parametrize("mode", ["foveated", "dense"])
def test_training_flops_match_flop_counter(tokenizer, mode):
    config = workload.benchmark_config(tokenizer, True, mode)
    batch = workload.make_batch(tiny_processor(config, tokenizer), TINY_SETTINGS, CPU)
    model = workload.build_model(config, CPU).train()
    with (
        sdpa_kernel(SDPBackend.MATH),
        FlopCounterMode(display=False) as counter,
    ):  # math SDPA: attention counted
        model(**batch, logits_to_keep=1).loss.backward()
    counted = counter.get_total_flops()
    assert abs(flops.training_step_flops(config, batch, 1) / counted - 1) < FLOP_TOLERANCE


def test_train_variant_filter_keeps_matching_rows_and_refuses_no_match():
    every = training.train_variants(TINY_SETTINGS, CPU)
    assert len(every) == 3  # the GPU-only levers are skipped on the CPU
    kept = training.train_variants(dataclasses.replace(TINY_SETTINGS, train_variants=("video_layout",)), CPU)
    assert [variant.name for variant in kept] == [every[-1].name]
    gpu = training.train_variants(Settings(), CUDA)
    graphed = [variant.cuda_graph for variant in gpu]
    region_graphs = [variant.compile_mode == "reduce-overhead" for variant in gpu]
    assert any(graphed) and any(region_graphs)
    assert max(i for i, g in enumerate(graphed) if g) < region_graphs.index(True)  # whole-step graphs first
    with pytest.raises(ValueError, match="no training variant matches"):
        training.train_variants(dataclasses.replace(TINY_SETTINGS, train_variants=("nope",)), CPU)


def test_frozen_encoder_diagnostic_trains_without_encoder_grads_and_is_never_the_headline(monkeypatch):
    frozen = training.TrainVariant("diagnostic: encoder frozen", fused_adamw=False, frozen_encoder=True)
    plain = training.TrainVariant("plain", fused_adamw=False)
    monkeypatch.setattr(training, "train_variants", lambda settings, device: [frozen, plain])
    seen = []

    class RecordingStep(training.VariantStep):
        def __init__(self, model, batch, variant, settings, device):
            super().__init__(model, batch, variant, settings, device)
            self.name, self.encoder = variant.name, list(model.model.fovea_encoder.parameters())

        def __call__(self):
            super().__call__()
            seen.append((self.name, all(not p.requires_grad for p in self.encoder)))

    monkeypatch.setattr(training, "VariantStep", RecordingStep)
    results = training.bench_training("foveated", tiny_tokenizer(), TINY_SETTINGS, CPU, None, None)
    assert ("diagnostic: encoder frozen", True) in seen and ("plain", False) in seen
    assert results["variants"]["diagnostic: encoder frozen"]["model_tflops_per_step"] is None
    assert results["variants"]["plain"]["model_tflops_per_step"] > 0
    assert results["best"]["name"] == "plain"


def test_trainer_runs_the_fastest_levers_it_supports():
    assert training.trainer_variant(Settings(), CUDA).name == FASTEST_TRAINER_LEVERS
    assert training.trainer_variant(Settings(compile=False), CUDA).name.startswith(
        "+ whole step in one CUDA graph"
    )
    assert (
        training.trainer_variant(Settings(train_variants=("no levers",)), CUDA).name == FASTEST_TRAINER_LEVERS
    )
    assert training.trainer_variant(TINY_SETTINGS, CPU).name.startswith("+ video_layout")
    levers = training.trainer_variant(Settings(), CUDA).train_section(CUDA)
    assert levers == {
        "mixed_precision": "bf16",
        "fused_adamw": True,
        "cuda_graph": True,
        "compile": True,
        "freeze_encoder": False,
    }


def test_trainer_overrides_give_the_steps_batch_frames_and_levers():
    settings = Settings()
    variant = training.trainer_variant(settings, CUDA)
    config = load_config(trainer.TRAINER_CONFIG, trainer.trainer_overrides(variant, settings, CUDA, 256))
    assert config.model.size == "full_random" and config.data.kind == "procedural"
    assert (config.train.batch_size, config.data.num_frames, config.data.image_size) == (16, 16, 256)
    assert config.train.compile and config.train.cuda_graph and config.train.mixed_precision == "bf16"
    assert config.train.max_steps == settings.trainer_log_every * (settings.trainer_windows + 1)
    assert config.train.log_every == settings.trainer_log_every
    assert config.train.eval_every == config.train.save_every == config.train.max_steps  # outside the windows
    assert config.train.num_workers == settings.loader_workers and config.train.grad_accum == 1
    tiny = load_config(
        trainer.TRAINER_CONFIG,
        trainer.trainer_overrides(training.trainer_variant(TINY_SETTINGS, CPU), TINY_SETTINGS, CPU, 32),
    )
    assert tiny.model.size == "tiny" and not tiny.train.cuda_graph and tiny.train.mixed_precision == "no"


def test_trainer_figure_is_the_median_after_the_first_window_and_the_step_is_measured_when_missing(
    monkeypatch,
):
    windows = [1.0, 30.0, 10.0, 20.0]  # the first window holds compilation and capture
    monkeypatch.setattr(trainer, "run_trainer", lambda overrides, device: (windows, 5.0))
    tokenizer = tiny_tokenizer()
    config = workload.benchmark_config(tokenizer, True, "foveated")
    result = trainer.bench_trainer({}, tokenizer, TINY_SETTINGS, CPU, config)
    assert result["step_measured_here"] and result["step_frames_per_s"] > 0
    assert result["frames_per_s"] == 20.0 and result["first_window_frames_per_s"] == 1.0
    assert result["ratio"] == pytest.approx(20.0 / result["step_frames_per_s"])
    monkeypatch.setattr(trainer, "run_trainer", lambda overrides, device: ([1.0], 5.0))
    with pytest.raises(ValueError, match="no steady-state window"):
        trainer.bench_trainer({}, tokenizer, TINY_SETTINGS, CPU, config)


def test_window_frames_per_s_reads_train_rows_of_the_log(tmp_path):
    rows = [
        {"step": 2, "split": "train", "frames_per_second": 3.0},
        {"step": 2, "split": "validation", "loss": 1.0},
        {"step": 4, "split": "train", "frames_per_second": 5.0},
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert trainer.window_frames_per_s(log) == [3.0, 5.0]


def test_each_variant_step_autocasts_as_its_own_config_says(monkeypatch, tokenizer):
    """Variants prepare the same model one after another: each gets its own autocast (or none)."""
    config = workload.benchmark_config(tokenizer, True, "foveated")
    batch = workload.make_batch(tiny_processor(config, tokenizer), TINY_SETTINGS, CPU)
    model = workload.build_model(config, CPU).train()
    autocast = []
    model.model.fovea_query_head.register_forward_hook(
        lambda *_: autocast.append(torch.is_autocast_enabled("cpu"))
    )
    variant = training.trainer_variant(TINY_SETTINGS, CPU)
    real_config = training.step_config

    def config_with(precision: str):
        def make(variant, device):
            config = real_config(variant, device)
            config.train.mixed_precision = precision
            return config

        return make

    for precision in ("bf16", "no", "bf16"):
        monkeypatch.setattr(training, "step_config", config_with(precision))
        step = training.VariantStep(model, batch, variant, TINY_SETTINGS, CPU)
        autocast.clear()
        step()
        step.close()
        assert autocast and all(enabled == (precision == "bf16") for enabled in autocast), precision
