"""Training configuration: YAML sections, --set overrides, validation, and the CLI's flag precedence."""

from __future__ import annotations

import sys

import pytest
import yaml

import train_accelerate
from foveated_vlm.training.config import apply_override, config_from_dict, flat_config, load_config

CONFIGS = ("configs/demo.yaml", "configs/full.yaml", "configs/smoke.yaml", "configs/benchmark_trainer.yaml")


def test_defaults_and_sections():
    config = config_from_dict({})
    assert config.model.size == "tiny" and config.data.kind == "procedural"
    assert config.train.schedule == "cosine" and not config.train.lora.enabled


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.train.max_steps > 0
    assert config.to_dict()["train"]["lora"]["r"] == config.train.lora.r


def test_set_overrides_are_yaml_typed_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr_new": 0.1, "lora": {"r": 4}}}))
    config = load_config(
        path,
        [
            "train.lr_new=2e-3",
            "train.lora.enabled=true",
            "train.lora.r=8",
            "model.lambda_coarse=0.5",
            "model.text.hidden_size=96",
            "data.num_clips={train: 10, validation: 2}",
        ],
    )
    assert config.train.lr_new == pytest.approx(2e-3)
    assert config.train.lora.enabled is True and config.train.lora.r == 8
    assert config.model.overrides == {"lambda_coarse": 0.5}
    assert config.model.text == {"hidden_size": 96}
    assert config.data.num_clips == {"train": 10, "validation": 2}


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("train.not_a_field=1", "unknown keys in config section 'train'"),
        ("model.not_a_config_field=1", "not FoveatedVLMConfig fields"),
        ("train.schedule=linear", "train.schedule must be one of"),
        ("train.batch_size=0", "train.batch_size must be a positive int"),
        ("train.caption_bucket=0", "train.caption_bucket must be a positive int"),
        ("data.kind=folder", "data.path is required"),
        ("nosection=1", "unknown config sections"),
        ("train..lr_new=1", "--set key must look like section.key"),
    ],
)
def test_bad_values_name_the_field(assignment, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [assignment])


def test_apply_override_rejects_missing_equals():
    with pytest.raises(ValueError, match="section.key=value"):
        apply_override({}, "train.lr_new")


def test_flat_config_has_scalars_only():
    flat = flat_config(config_from_dict({"data": {"procedural": {"speed_range": [0.1, 0.2]}}}))
    assert flat["train.lr_new"] == pytest.approx(1e-3)
    assert all(isinstance(value, (int, float, str, bool)) for value in flat.values())


def test_cli_flags_override_the_file(monkeypatch):
    captured = {}

    def fake_run(config, resume, push_to_hub_repo, hub_local_dir):
        captured.update(config=config, resume=resume, repo=push_to_hub_repo, local=hub_local_dir)
        return {"ok": True}

    monkeypatch.setattr(train_accelerate, "run_training", fake_run)
    result = train_accelerate.main(
        [
            "--config",
            "configs/smoke.yaml",
            "--max_steps",
            "7",
            "--seed",
            "3",
            "--output_dir",
            "/tmp/x",
            "--set",
            "train.max_steps=99",
            "--resume",
            "latest",
            "--push_to_hub",
            "me/model",
            "--hub_local_dir",
            "/tmp/h",
        ]
    )
    config = captured["config"]
    assert result == {"ok": True}
    assert config.train.max_steps == 7, "--max_steps wins over --set and the file"
    assert config.train.seed == 3 and config.output_dir == "/tmp/x"
    assert (captured["resume"], captured["repo"], captured["local"]) == ("latest", "me/model", "/tmp/h")


def test_model_plugins_are_imported_before_the_model_and_a_missing_one_is_named(tmp_path, monkeypatch):
    """``model.plugins`` imports extensions (e.g. ``studies.readers``) so a config can name what they register."""
    (tmp_path / "my_reader_plugin.py").write_text("import sys\nsys.modules[__name__].LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = config_from_dict({"model": {"plugins": ["my_reader_plugin"]}})
    assert config.model.plugins == ["my_reader_plugin"]
    assert sys.modules["my_reader_plugin"].LOADED
    with pytest.raises(ValueError, match="model.plugins: cannot import 'no_such_plugin'"):
        config_from_dict({"model": {"plugins": ["no_such_plugin"]}})
    study = config_from_dict({"model": {"plugins": ["studies.readers"], "frame_reader": "dual_stream"}})
    assert study.model.overrides["frame_reader"] == "dual_stream"
