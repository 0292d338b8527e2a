"""The speed benchmark runs end to end on the CPU with the tiny config, so it never rots."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from eval import benchmark

pytestmark = pytest.mark.benchmark

FLOP_TOLERANCE = 0.1  # analytic count vs torch's FLOP counter (elementwise work and input grads differ)
AGREEMENT_TOLERANCE = 1e-5  # fast streaming step vs FoveatedStream.step, float32 on the CPU
SUMMARY_ROWS = (
    "query pass vs re-encoding",
    "training, T = 4",
    "streaming, batch 1",
    "caption 40 frames",
    "peak GPU memory of the training step",
)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    report = benchmark.main(
        ["--tiny", "--device", "cpu", "--output", str(out / "BENCHMARKS.md"), "--json", str(out / "b.json")]
    )
    return report, (out / "BENCHMARKS.md").read_text(), json.loads((out / "b.json").read_text())


def test_tiny_run_reports_every_row(tiny_report):
    report, markdown, saved = tiny_report
    assert "errors" not in report, report.get("errors")
    for row in SUMMARY_ROWS:
        assert f"| {row}" in markdown, row
    assert "| training (dense) | + last-position logits only" in markdown
    assert "| data loader |" in markdown
    assert saved["train_foveated"]["text_tokens_per_clip"] == 48
    for mode in ("foveated", "dense"):
        best = saved[f"train_{mode}"]["best"]
        assert best["frames_per_s"] > 0 and torch.isfinite(torch.tensor(best["loss"]))
    assert saved["query"]["best"]["encode_us"] > 0 and saved["query"]["best"]["query_us"] > 0
    assert saved["long"]["new_tokens"] == benchmark.TINY_SETTINGS.new_tokens


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
    assert variants[1:] == list(benchmark.stream_variants(benchmark.TINY_SETTINGS, torch.device("cpu")))
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


def test_dense_long_video_context_verdict():
    fits = {"dense_positions_needed": 100, "context": 512, "dense_frames_that_fit": 118}
    over = {"dense_positions_needed": 230_433, "context": 8192, "dense_frames_that_fit": 126}
    assert benchmark._dense_long_video(fits).startswith("fits")
    assert benchmark._dense_long_video(over).startswith(
        "cannot"
    ) and "126 frames fit" in benchmark._dense_long_video(over)


@pytest.mark.parametrize("mode", ["foveated", "dense"])
def test_training_flops_match_flop_counter(tokenizer, mode):
    config = benchmark.benchmark_config(tokenizer, True, mode)
    batch = benchmark.make_batch(
        benchmark.tiny_processor(config, tokenizer), benchmark.TINY_SETTINGS, torch.device("cpu")
    )
    model = benchmark.build_model(config, torch.device("cpu")).train()
    with (
        sdpa_kernel(SDPBackend.MATH),
        FlopCounterMode(display=False) as counter,
    ):  # math SDPA: attention counted
        model(**batch, logits_to_keep=1).loss.backward()
    counted = counter.get_total_flops()
    assert abs(benchmark.training_step_flops(config, batch, 1) / counted - 1) < FLOP_TOLERANCE


def test_train_variant_filter_keeps_matching_rows_and_refuses_no_match():
    cpu = torch.device("cpu")
    every = benchmark.train_variants(benchmark.TINY_SETTINGS, cpu)
    assert len(every) == 3  # the GPU-only levers are skipped on the CPU
    kept = benchmark.train_variants(
        dataclasses.replace(benchmark.TINY_SETTINGS, train_variants=("video_layout",)), cpu
    )
    assert [variant.name for variant in kept] == [every[-1].name]
    gpu = benchmark.train_variants(benchmark.Settings(), torch.device("cuda"))
    graphed = [variant.cuda_graph for variant in gpu]
    region_graphs = [variant.compile_mode == "reduce-overhead" for variant in gpu]
    assert any(graphed) and any(region_graphs)
    assert max(i for i, g in enumerate(graphed) if g) < region_graphs.index(True)  # whole-step graphs first
    with pytest.raises(ValueError, match="no training variant matches"):
        benchmark.train_variants(dataclasses.replace(benchmark.TINY_SETTINGS, train_variants=("nope",)), cpu)


def test_frozen_encoder_diagnostic_trains_without_encoder_grads_and_is_never_the_headline(monkeypatch):
    frozen = benchmark.TrainVariant("diagnostic: encoder frozen", fused_adamw=False, frozen_encoder=True)
    plain = benchmark.TrainVariant("plain", fused_adamw=False)
    monkeypatch.setattr(benchmark, "train_variants", lambda settings, device: [frozen, plain])
    seen = []
    real_step_fn = benchmark.train_step_fn

    def recording_step_fn(model, optimizer, batch, variant, device):
        step = real_step_fn(model, optimizer, batch, variant, device)
        encoder = list(model.model.fovea_encoder.parameters())

        def step_and_record():
            loss = step()
            seen.append((variant.name, all(not p.requires_grad for p in encoder)))
            return loss

        return step_and_record

    monkeypatch.setattr(benchmark, "train_step_fn", recording_step_fn)
    tokenizer = benchmark.tiny_tokenizer()
    results = benchmark.bench_training(
        "foveated", tokenizer, benchmark.TINY_SETTINGS, torch.device("cpu"), None, None
    )
    assert ("diagnostic: encoder frozen", True) in seen and ("plain", False) in seen
    assert results["variants"]["diagnostic: encoder frozen"]["model_tflops_per_step"] is None
    assert results["variants"]["plain"]["model_tflops_per_step"] > 0
    assert results["best"]["name"] == "plain"
