"""The one training step (``TrainStep``: accumulation, clipping, update), the optimizer's kernels, the
full-size random model, and the trainer's throughput log (frames/s over the steps between two train rows)."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import torch

import train_accelerate
from foveated_vlm.training import trainer
from foveated_vlm.training.config import load_config
from foveated_vlm.training.modeling import build_model_and_processor, build_optimizer
from foveated_vlm.training.step import LOSS_KEYS, TrainStep, step_losses
from processing_foveated import FRAME_TOKEN

SMOKE = "configs/smoke.yaml"
SMOKE_FRAMES = 4  # data.num_frames of the smoke config: every procedural clip has them all
CLOCK_JUMP_S = 100.0  # what the fake clock adds during each validation and checkpoint save


class RecordingAccelerator:
    """What ``TrainStep`` asks of Accelerate, done by torch, with every call recorded."""

    def __init__(self):
        self.calls: list[str] = []

    def backward(self, loss: torch.Tensor) -> None:
        self.calls.append("backward")
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        self.calls.append("clip")
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    @contextlib.contextmanager
    def no_sync(self, model):
        self.calls.append("no_sync")
        yield


def _model_and_batches(random_video, count: int):
    config = load_config(SMOKE)
    torch.manual_seed(0)
    model, processor = build_model_and_processor(config)
    batches = [
        processor(
            text=["describe"],
            videos=[random_video(SMOKE_FRAMES, seed=seed)],
            captions=["a red square"],
            return_targets=True,
            return_video_layout=True,
        )
        for seed in range(count)
    ]
    return model.train(), config, batches


def test_accumulated_step_syncs_on_the_last_micro_batch_and_sums_their_losses(random_video):
    model, config, batches = _model_and_batches(random_video, 2)
    with torch.no_grad():
        expected = sum(step_losses(model(**batch, logits_to_keep=1)) for batch in batches)
    accelerator = RecordingAccelerator()
    optimizer = build_optimizer(model, config)
    before = [p.detach().clone() for p in model.parameters()]
    step = TrainStep(model, optimizer, accelerator, torch.device("cpu"), clip_grad=1.0, grad_accum=2)
    losses = torch.zeros(len(LOSS_KEYS))
    step(iter(batches), losses)
    assert accelerator.calls == ["no_sync", "backward", "backward", "clip"]
    torch.testing.assert_close(losses[:4], expected[:4])  # the fifth term (attention loss) is not computed
    assert all(p.grad is None for p in model.parameters()), "gradients freed after the update"
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before)), "the update ran"


def test_unclipped_step_with_region_graphs_marks_each_micro_batch(random_video, monkeypatch):
    model, config, batches = _model_and_batches(random_video, 2)
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    accelerator = RecordingAccelerator()
    step = TrainStep(
        model,
        build_optimizer(model, config),
        accelerator,
        "cpu",
        clip_grad=0.0,
        grad_accum=2,
        region_graphs=True,
    )
    step(iter(batches), torch.zeros(len(LOSS_KEYS)))
    assert len(marks) == 2 and "clip" not in accelerator.calls


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"grad_accum": 0}, "grad_accum must be a positive int"),
        ({"grad_accum": 2, "cuda_graph": True}, "one micro-batch"),
    ],
)
def test_step_refuses_what_it_cannot_run(options, message):
    with pytest.raises(ValueError, match=message):
        TrainStep(torch.nn.Linear(1, 1), None, RecordingAccelerator(), "cpu", clip_grad=1.0, **options)


def test_optimizer_for_a_graph_is_capturable_with_tensor_learning_rates():
    config = load_config(SMOKE, ["train.cuda_graph=true"])
    model, _ = build_model_and_processor(config)
    optimizer = build_optimizer(model, config)
    assert optimizer.defaults["capturable"] and not optimizer.defaults["fused"]  # fused only on a GPU
    assert all(isinstance(group["lr"], torch.Tensor) for group in optimizer.param_groups)
    plain = build_optimizer(model, load_config(SMOKE))
    assert not plain.defaults["capturable"] and isinstance(plain.param_groups[0]["lr"], float)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [True, False])
def test_fused_adamw_knob_picks_the_kernels_on_a_gpu(fused):
    config = load_config(SMOKE, [f"train.fused_adamw={str(fused).lower()}"])
    model, _ = build_model_and_processor(config)
    optimizer = build_optimizer(model.to("cuda"), config)
    assert bool(optimizer.defaults["fused"]) is fused


def test_full_random_size_builds_the_full_shapes_without_a_checkpoint():
    config = load_config(SMOKE, ["model.size=full_random", "data.image_size=256"])
    with torch.device("meta"):
        model, processor = build_model_and_processor(config)
    vision, text = model.config.vision_config, model.config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size) == (384, 12, 256)
    assert (text.hidden_size, text.num_hidden_layers) == (576, 30)
    assert processor.image_size == 256
    assert model.config.frame_token_id == processor.tokenizer.convert_tokens_to_ids(FRAME_TOKEN)


def _train_rows(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [row for row in rows if row["split"] == "train"]


def test_log_gives_frames_per_second_of_each_window_without_validation_and_saving(tmp_path, monkeypatch):
    offset = [0.0]

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            return time.perf_counter() + offset[0]

    def slow(real):
        def call(*args, **kwargs):
            offset[0] += CLOCK_JUMP_S
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(trainer, "time", Clock)
    monkeypatch.setattr(trainer, "save_checkpoint", slow(trainer.save_checkpoint))
    monkeypatch.setattr(trainer, "_log_validation", slow(trainer._log_validation))
    run = tmp_path / "run"
    train_accelerate.main(
        ["--config", SMOKE, "--output_dir", str(run), "--max_steps", "4"]
        + ["--set", "train.report_to=null", "--set", "train.log_every=2", "--set", "train.eval_every=2"]
        + ["--set", "train.save_every=2"]
    )
    rows = _train_rows(run)
    assert [row["step"] for row in rows] == [2, 4]
    for row in rows:
        assert row["frames_per_second"] == pytest.approx(row["samples_per_second"] * SMOKE_FRAMES)
    seconds = 2 * 4 / rows[1]["samples_per_second"]  # two steps of four clips
    assert seconds < CLOCK_JUMP_S, "the second window does not hold step 2's validation and checkpoint"
