"""The speed benchmark runs end to end on the CPU with the tiny config, so it never rots."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from eval import benchmark

FLOP_TOLERANCE = 0.1  # analytic count vs torch's FLOP counter (elementwise work and input grads differ)
AGREEMENT_TOLERANCE = 1e-4  # graphed streaming step vs FoveatedStream.step, float32 on the CPU
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


def test_graphed_stream_step_matches_library(tiny_report):
    _, _, saved = tiny_report
    errors = saved["stream"]["agreement_max_relative_error"]
    assert set(errors) == {"predictions", "queries", "attention", "next_queries"}
    assert max(errors.values()) < AGREEMENT_TOLERANCE, errors


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


def test_preprocess_on_device_matches_processor(tokenizer):
    processor = benchmark.tiny_processor(benchmark.benchmark_config(tokenizer, True, "foveated"), tokenizer)
    frames = torch.randint(0, 256, (3, 40, 56, 3), dtype=torch.uint8)
    expected, _ = processor.preprocess_frames(frames.float() / 255.0)
    torch.testing.assert_close(benchmark.preprocess_on_device(processor, frames), expected)
