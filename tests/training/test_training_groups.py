"""Every trainable parameter lands in the intended optimizer group (new modules / encoder / LLM), with and
without LoRA and with the encoder frozen; schedules warm up and decay as configured."""

from __future__ import annotations

import pytest
import torch

from foveated_vlm.training.config import load_config
from foveated_vlm.training.modeling import (
    build_model_and_processor,
    build_optimizer,
    build_scheduler,
    export_model,
    freeze_unused_parameters,
    parameter_group_name,
    parameter_groups,
    prepare_for_training,
)

SMOKE = "configs/smoke.yaml"


def _expected_group(name: str) -> str:
    """Independent statement of the grouping rule, from the module tree of the model."""
    bare = name.replace("base_model.model.", "")
    if bare.startswith("model.fovea_encoder.vision_model."):
        return "encoder"
    if bare.startswith(("model.language_model.", "lm_head.")):
        return "llm"
    assert bare.startswith(("model.fovea_", "fovea_")), name
    return "new"


def _grouping(model, config) -> dict[str, tuple[str, float, float]]:
    """Parameter name -> (group name, lr, weight decay), checking each parameter is in exactly one group."""
    ids = {id(p): name for name, p in model.named_parameters()}
    where: dict[str, tuple[str, float, float]] = {}
    for group in parameter_groups(model, config):
        for parameter in group["params"]:
            name = ids[id(parameter)]
            assert name not in where, f"{name} is in two groups"
            where[name] = (group["name"], group["lr"], group["weight_decay"])
    return where


def _build(*overrides: str):
    config = load_config(
        SMOKE,
        [
            "train.lr_new=0.003",
            "train.lr_encoder=0.0002",
            "train.lr_llm=0.0001",
            "train.weight_decay=0.05",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    model, _ = build_model_and_processor(config)
    return prepare_for_training(model, config), config


def test_full_fine_tune_groups_every_parameter():
    model, config = _build()
    where = _grouping(model, config)
    rates = {"new": 0.003, "encoder": 0.0002, "llm": 0.0001}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(where) == trainable == {name for name, _ in model.named_parameters()}
    for name, (group, lr, decay) in where.items():
        expected = _expected_group(name)
        assert group.removesuffix("_no_decay") == expected, name
        assert lr == rates[expected], name
        assert (decay == 0.0) == group.endswith("_no_decay"), name
    # spot checks of the decay rule: projections decay, queries, biases, norms and embeddings do not
    assert where["model.fovea_visual_projection.weight"][2] == pytest.approx(0.05)
    assert where["fovea_prediction_head.film.0.weight"][2] == pytest.approx(0.05)
    for name in (
        "model.fovea_static_query",
        "model.fovea_visual_projection.bias",
        "model.fovea_mode_embeddings",
        "fovea_initial_target",
        "model.language_model.embed_tokens.weight",
        "model.language_model.norm.weight",
    ):
        assert where[name][2] == 0.0, name
    assert {group for group, _, _ in where.values()} == {
        "new",
        "new_no_decay",
        "encoder",
        "encoder_no_decay",
        "llm",
        "llm_no_decay",
    }


def test_frozen_encoder_leaves_the_optimizer():
    model, config = _build("train.freeze_encoder=true")
    where = _grouping(model, config)
    assert not any(name.startswith("model.fovea_encoder.") for name in where)
    assert all(
        not p.requires_grad for n, p in model.named_parameters() if n.startswith("model.fovea_encoder.")
    )
    assert any(name.startswith("model.fovea_query_head") for name in where), "new modules keep training"
    assert any(name.startswith("fovea_prediction_head") for name in where), "heads keep training"


def test_lora_trains_adapters_and_new_modules_only():
    model, config = _build("train.lora.enabled=true", "train.lora.r=4", "train.freeze_encoder=true")
    where = _grouping(model, config)
    lora = [name for name in where if "lora_" in name]
    assert lora and all(where[name][0].removesuffix("_no_decay") == "llm" for name in lora)
    assert all(".language_model." in name for name in lora), "LoRA must stay inside the LLM"
    base_llm = [n for n, p in model.named_parameters() if ".language_model." in n and "lora_" not in n]
    assert base_llm and not any(n in where for n in base_llm), "LLM base weights are frozen under LoRA"
    new = [n for n, p in model.named_parameters() if _expected_group(n) == "new"]
    assert new and all(n in where and where[n][0].startswith("new") for n in new)
    assert not any("fovea_encoder" in name for name in where)
    # the LoRA adapters merge back into a plain model that keeps every new module
    exported = export_model(model)
    assert not any("lora_" in name for name, _ in exported.named_parameters())
    assert hasattr(exported.model, "fovea_query_head")


def test_unknown_parameter_raises():
    with pytest.raises(ValueError, match="belongs to no parameter group"):
        parameter_group_name("some_other_module.weight")


@pytest.mark.parametrize(("schedule", "end_ratio"), [("cosine", 0.0), ("constant", 1.0)])
def test_schedules_warm_up_then_follow_their_shape(schedule, end_ratio):
    model, config = _build(f"train.schedule={schedule}", "train.warmup_steps=2", "train.max_steps=10")
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    rates = []
    for _ in range(config.train.max_steps):
        rates.append(optimizer.param_groups[0]["lr"] / config.train.lr_encoder)
        optimizer.step()
        scheduler.step()
    rates.append(optimizer.param_groups[0]["lr"] / config.train.lr_encoder)
    assert rates[0] == 0.0 and rates[2] == pytest.approx(1.0)
    assert rates[-1] == pytest.approx(end_ratio, abs=1e-9)


@pytest.mark.parametrize("lora", [False, True])
def test_freeze_unused_parameters_freezes_the_encoders_mask_token_only(lora):
    """FSDP's optimizer state must cover every trainable parameter: the never-used mask token is frozen, by name."""
    model, _ = _build(*(["train.lora.enabled=true", "train.lora.r=4"] if lora else []))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    freeze_unused_parameters(model)
    frozen = trainable - {name for name, p in model.named_parameters() if p.requires_grad}
    assert [name.replace("base_model.model.", "") for name in frozen] == [
        "model.fovea_encoder.vision_model.embeddings.mask_token"
    ]
    with pytest.raises(ValueError, match="mask_token"):
        freeze_unused_parameters(torch.nn.Linear(2, 2))
