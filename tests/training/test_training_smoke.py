"""A real ``accelerate launch train_accelerate.py`` run on the CPU (2 processes, 2 steps): it writes the
documented output layout, pushes the final model to a local "hub" folder, and that folder reloads with the Auto
classes (custom code) and generates."""

from __future__ import annotations

import json

import pytest
import torch

from ..builders import launch_two_cpu_processes

HUB_REPO = "tester/foveated-smoke"


@pytest.fixture(scope="module")
def launched_run(tmp_path_factory):
    """One two-process, two-step run through ``accelerate launch``, pushed to a local hub folder."""
    run = tmp_path_factory.mktemp("smoke_run")
    hub = tmp_path_factory.mktemp("hub")
    result = launch_two_cpu_processes(
        "train_accelerate.py", "--config", "configs/smoke.yaml", "--max_steps", "2", "--output_dir", str(run),
        "--set", "train.eval_every=2", "--set", "train.save_every=2",
        "--push_to_hub", HUB_REPO, "--hub_local_dir", str(hub),
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return run, hub / HUB_REPO, result


def test_launch_writes_the_documented_layout(launched_run):
    run, _, result = launched_run
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if row["split"] == "train"]
    assert [row["step"] for row in train_rows] == [1, 2]
    for row in train_rows:
        for key in ("loss", "loss_fine", "loss_coarse", "loss_caption", "lr_new", "lr_encoder", "lr_llm"):
            assert isinstance(row[key], float), key
        assert row["samples"] == row["step"] * 4 * 2, "two processes of 4 clips per step"
    validation = [row for row in rows if row["split"] == "validation"]
    assert len(validation) == 1 and validation[0]["step"] == 2
    for key in (
        "loss_fine",
        "loss_coarse",
        "ratio_coarse_fine",
        "loss_caption",
        "attention_entropy_fine",
        "attention_entropy_coarse",
    ):
        assert validation[0][key] > 0, key
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 2 and metrics["num_processes"] == 2
    assert (run / "checkpoints" / "step-2" / "trainer_state.json").is_file()
    assert (run / "checkpoints" / "step-2" / "random_states_1.pkl").is_file(), "each process's RNG is saved"
    assert any((run / "tensorboard").rglob("events.out.tfevents.*")), "TensorBoard tracker wrote events"
    assert '"final_metrics"' in result.stdout


def test_push_to_hub_writes_the_uploadable_folder(launched_run):
    run, hub, _ = launched_run
    pushed = sorted(path.name for path in hub.iterdir())
    assert pushed == sorted(path.name for path in (run / "final").iterdir())
    for name in (
        "config.json",
        "model.safetensors",
        "configuration_foveated.py",
        "modeling_foveated.py",
        "processing_foveated.py",
        "video_foveated.py",
        "processor_config.json",
        "tokenizer.json",
        "README.md",
        "loss_curve.png",
    ):
        assert name in pushed, name
    card = (hub / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and HUB_REPO in card
    assert "ratio_coarse_fine" in card and "## Training configuration" in card and "procedural" in card
    assert json.loads((hub / "config.json").read_text())["auto_map"]["AutoModel"].startswith(
        "modeling_foveated"
    )


def test_pushed_model_reloads_with_auto_classes_and_generates(launched_run, random_video):
    from transformers import AutoModel, AutoProcessor

    _, hub, _ = launched_run
    model = AutoModel.from_pretrained(hub, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(hub, trust_remote_code=True)
    assert type(model).__name__ == "FoveatedVLMForConditionalGeneration"
    assert type(model).__module__ != "modeling_foveated", "loaded from the pushed folder's custom code"
    assert (processor.num_frames, processor.trained_frames) == (4, 4), "configs/smoke.yaml's data.num_frames"
    inputs = processor(text="What happens in the video?", videos=random_video(4))
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
