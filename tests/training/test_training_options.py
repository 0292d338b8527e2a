"""Training options end to end on the CPU: gradient accumulation, bf16 autocast, non-reentrant gradient
checkpointing, frozen encoder and a constant schedule all train; logging follows log_every."""

from __future__ import annotations

import json
import math

import pytest
import torch

import train_accelerate


def test_accumulation_bf16_checkpointing_frozen_encoder(tmp_path):
    run = tmp_path / "run"
    metrics = train_accelerate.main(
        [
            "--config",
            "configs/smoke.yaml",
            "--max_steps",
            "2",
            "--output_dir",
            str(run),
            "--set",
            "train.grad_accum=2",
            "--set",
            "train.mixed_precision=bf16",
            "--set",
            "train.gradient_checkpointing=true",
            "--set",
            "train.freeze_encoder=true",
            "--set",
            "train.schedule=constant",
            "--set",
            "train.report_to=null",
            "--set",
            "train.log_every=2",
        ]
    )
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if row["split"] == "train"]
    assert [row["step"] for row in train_rows] == [2], "one row per log_every steps"
    assert train_rows[0]["samples"] == 2 * 4 * 2, "grad_accum micro-batches count towards the samples"
    assert all(math.isfinite(value) for value in metrics["train"].values())
    assert metrics["validation"]["loss_fine"] > 0
    assert train_rows[0]["lr_new"] == 3e-3, "constant schedule after warm-up"
    from accelerate.utils import set_seed

    from foveated_vlm.training.config import load_config
    from foveated_vlm.training.modeling import build_model_and_processor
    from modeling_foveated import FoveatedVLMForConditionalGeneration

    final = FoveatedVLMForConditionalGeneration.from_pretrained(run / "final")
    set_seed(0)  # the run's seed: the same initial weights
    initial, _ = build_model_and_processor(load_config("configs/smoke.yaml"))
    for name, weight in initial.model.fovea_encoder.state_dict().items():
        torch.testing.assert_close(
            final.model.fovea_encoder.state_dict()[name], weight, msg=f"frozen {name} moved"
        )
    assert not torch.equal(final.model.fovea_query_head.weight, initial.model.fovea_query_head.weight), (
        "new modules train"
    )


@pytest.mark.slow
def test_full_size_config_trains_a_step_on_cpu(tmp_path):
    """configs/full.yaml builds the full-size model (SmolLM2-135M from the packaged GGUF, random ViT-S/16 since no
    hub is reachable here) and runs one optimizer step with LoRA; frames and sizes are cut down for the CPU."""
    pytest.importorskip("gguf")
    metrics = train_accelerate.main(
        [
            "--config",
            "configs/full.yaml",
            "--max_steps",
            "1",
            "--output_dir",
            str(tmp_path / "run"),
            "--set",
            "model.text_name_or_path=gguf",
            "--set",
            "model.vision_name_or_path=null",
            "--set",
            "data.image_size=64",
            "--set",
            "data.num_frames=3",  # the fewest frames a bounce can be seen in
            "--set",
            "train.batch_size=1",
            "--set",
            "train.grad_accum=1",
            "--set",
            "train.num_workers=0",
            "--set",
            "train.mixed_precision=no",
            "--set",
            "train.lora.enabled=true",
            "--set",
            "train.report_to=null",
            "--set",
            "data.num_clips={train: 4, validation: 1, heldout: 1}",
            "--set",
            "eval.batch_size=1",
        ]
    )
    assert metrics["step"] == 1 and math.isfinite(metrics["train"]["loss"])
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def _smoke_args(run, *settings: str) -> list[str]:
    args = ["--config", "configs/smoke.yaml", "--output_dir", str(run), "--set", "train.report_to=null"]
    for setting in settings:
        args += ["--set", setting]
    return args


@pytest.mark.parametrize(
    "setting",
    ["train.grad_accum=2", "train.gradient_checkpointing=true", "train.mixed_precision=fp16"],
    ids=["accumulation", "checkpointing", "fp16"],
)
def test_cuda_graph_refuses_what_one_captured_step_cannot_hold(tmp_path, setting):
    with pytest.raises(ValueError, match="train.cuda_graph captures one whole optimizer step"):
        train_accelerate.main(_smoke_args(tmp_path / "run", "train.cuda_graph=true", setting))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_graph_needs_a_cuda_device(tmp_path):
    with pytest.raises(ValueError, match="train.cuda_graph needs one CUDA process, got 1 process"):
        train_accelerate.main(_smoke_args(tmp_path / "run", "train.cuda_graph=true", "train.max_steps=1"))


@pytest.mark.gpu
def test_cuda_graph_and_compile_train_like_the_eager_loop(tmp_path):
    """The captured step (and the compiled regions inside it) log the eager loop's losses step by step."""
    common = ("train.max_steps=6", "train.eval_every=6", "train.save_every=6")

    def losses(name: str, *settings: str) -> list[float]:
        train_accelerate.main(_smoke_args(tmp_path / name, *common, *settings))
        rows = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        return [row["loss"] for row in rows if row["split"] == "train"]

    eager = losses("eager")
    assert len(eager) == 6
    torch.testing.assert_close(losses("graph", "train.cuda_graph=true"), eager, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        losses("compiled", "train.cuda_graph=true", "train.compile=true"), eager, rtol=2e-2, atol=1e-3
    )
