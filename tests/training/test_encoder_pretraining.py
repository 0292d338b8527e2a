"""The frame encoder's self-supervised pretraining, its checkpoint in the training build, and its report card."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import DINOv3ViTModel

from foveated_vlm.data.frames import (
    NO_OBJECT,
    FrameSource,
    LabelledFrames,
    patch_labels,
    photo_frames,
    pretraining_frames,
    procedural_frames,
)
from foveated_vlm.data.procedural import COLOUR_RGB, COLOURS, MAX_BACKGROUND_CHANNEL
from foveated_vlm.encoder_probe import fit_linear_probe, format_table, probe_encoder
from foveated_vlm.encoder_probe import main as probe_main
from foveated_vlm.pretrain_encoder import (
    RECORD_FILE,
    MaskedContextObjective,
    context_targets,
    load_encoder_config,
    pretrain_encoder,
    save_encoder,
)
from foveated_vlm.pretrain_encoder import (
    main as pretrain_main,
)
from foveated_vlm.training.config import load_config
from foveated_vlm.training.modeling import build_model_and_processor

SHIPPED_ENCODER = "assets/encoder_tiny"
"""The pretrained encoder kept in the repository (studies/encoder/RESULTS.md: its card and the command)."""
SMALL = [
    "vision.hidden_size=32",
    "vision.intermediate_size=64",
    "vision.num_hidden_layers=2",
    "vision.num_attention_heads=2",
    "vision.patch_size=4",
    "frames.image_size=32",
    "frames.procedural.num_distractors=[0, 0]",
    "frames.procedural.num_other_moving=[0, 0]",
    "frames.photo_fraction=0.0",
    "pretrain.num_frames=32",
    "pretrain.batch_size=8",
    "pretrain.warmup_steps=2",
    "pretrain.log_every=1",
    "pretrain.torch_threads=1",
    "probe.num_fit_frames=16",
    "probe.num_test_frames=8",
    "probe.max_iter=20",
]
"""A 2-layer, 32-wide encoder with 4 px patches on 32 px frames of one object 3-4 patches wide: seconds."""


def small_config(*extra: str):
    return load_encoder_config("configs/encoder.yaml", [*SMALL, *extra])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A small encoder pretrained for 30 steps, saved, with its record."""
    config = small_config("pretrain.max_steps=30", "pretrain.lr=3e-3")
    encoder, record = pretrain_encoder(config, progress=False)
    folder = tmp_path_factory.mktemp("encoder")
    save_encoder(encoder, record, str(folder))
    return folder, encoder, record


def test_the_shipped_config_loads_and_keeps_objects_three_patches_wide():
    config = load_encoder_config("configs/encoder.yaml")
    source = config.frame_source()
    assert source.procedural_config().small_size_range[0] * source.image_size >= 3 * source.patch_size
    assert config.vision_config().hidden_size == 64 and config.vision_config().num_hidden_layers == 3


def test_pretraining_lowers_its_loss(pretrained):
    _, _, record = pretrained
    curve = [point["loss"] for point in record["loss_curve"]]
    assert np.mean(curve[-5:]) < 0.9 * np.mean(curve[:3])


def test_latent_target_is_a_switch_and_its_teacher_follows_the_encoder():
    config = small_config("pretrain.max_steps=3", "pretrain.latent_weight=1.0")
    _, record = pretrain_encoder(config, progress=False)
    assert all("latent" in point for point in record["loss_curve"])
    without = small_config("pretrain.max_steps=3", "pretrain.latent_weight=0")
    assert all("latent" not in point for point in pretrain_encoder(without, progress=False)[1]["loss_curve"])
    objective = MaskedContextObjective(DINOv3ViTModel(config.vision_config()), config.pretrain)
    with torch.no_grad():
        for parameter in objective.encoder.parameters():
            parameter.add_(1.0)
    before = [parameter.clone() for parameter in objective.teacher.parameters()]
    objective.update_teacher()
    decay = config.pretrain.ema_decay
    for old, new, student in zip(before, objective.teacher.parameters(), objective.encoder.parameters()):
        assert torch.allclose(new, decay * old + (1 - decay) * student)


def test_context_targets_hold_each_patch_neighbourhood():
    pixels = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(
        2, 3, 16, 16
    )  # [B, 3, H, W], 2x2 patches
    own = context_targets(pixels, patch_size=8, context=1, downsample=1)  # [B, 4, 3 * 8 * 8]
    assert own.shape == (2, 4, 192)
    assert torch.equal(own[0, 1].reshape(3, 8, 8), pixels[0, :, 0:8, 8:16])  # row-major: patch 1 is top right
    around = context_targets(pixels, patch_size=8, context=3, downsample=2)  # [B, 4, 3 * 12 * 12]
    assert around.shape == (2, 4, 3 * 12 * 12)
    window = around[0, 0].reshape(3, 12, 12)  # top-left patch: its 3x3 neighbourhood at 4 px a patch
    assert torch.all(window[:, :4, :] == 0) and torch.all(window[:, :, :4] == 0)  # outside the frame
    pooled = torch.nn.functional.avg_pool2d(pixels, 2)
    assert torch.equal(window[:, 4:, 4:], pooled[0, :, :8, :8])


def test_checkpoint_round_trips_into_the_training_build(pretrained, tmp_path):
    folder, encoder, _ = pretrained
    assert (folder / "model.safetensors").is_file() and (folder / RECORD_FILE).is_file()
    config = load_config(
        "configs/demo.yaml",
        [
            f"model.encoder_checkpoint={folder}",
            "model.vision={image_size: 48, initializer_range: 0.2, pos_embed_rescale: null}",
            "data.image_size=48",
        ],
    )
    model, _ = build_model_and_processor(config)
    vision = model.model.fovea_encoder.vision_model
    assert vision.config.hidden_size == 32 and vision.config.image_size == 48
    loaded, saved = vision.state_dict(), encoder.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)
    plain, _ = build_model_and_processor(load_config("configs/demo.yaml"))
    assert (
        plain.model.fovea_encoder.vision_model.config.hidden_size == 64
    )  # no checkpoint: the config's shapes


def test_the_shipped_encoder_loads_into_the_demo_model():
    config = load_config("configs/demo.yaml", [f"model.encoder_checkpoint={SHIPPED_ENCODER}"])
    model, _ = build_model_and_processor(config)
    shipped = DINOv3ViTModel.from_pretrained(SHIPPED_ENCODER).state_dict()
    loaded = model.model.fovea_encoder.vision_model.state_dict()
    assert all(torch.equal(loaded[key], shipped[key]) for key in shipped)
    assert model.model.fovea_encoder.vision_model.config.image_size == config.data.image_size


def test_checkpoint_refuses_clashing_shapes_and_missing_folders(pretrained, tmp_path):
    folder, _, _ = pretrained
    clash = load_config("configs/demo.yaml", [f"model.encoder_checkpoint={folder}"])  # demo's ViT is 64 wide
    with pytest.raises(ValueError, match=r"hidden_size=64 \(checkpoint: 32\).*drop those keys"):
        build_model_and_processor(clash)
    missing = load_config("configs/demo.yaml", [f"model.encoder_checkpoint={tmp_path / 'nothing'}"])
    with pytest.raises(ValueError, match="not a saved encoder folder.*pretrain_encoder"):
        build_model_and_processor(missing)
    with pytest.raises(
        ValueError, match="for size=full pass the encoder folder as model.vision_name_or_path"
    ):
        load_config("configs/demo.yaml", ["model.size=full", f"model.encoder_checkpoint={folder}"])


def test_cli_writes_a_loadable_folder_and_the_card(tmp_path, capsys):
    small = [arg for item in SMALL for arg in ("--set", item)]
    out, card_dir = tmp_path / "encoder", tmp_path / "card"
    pretrain_main(
        [
            "--config",
            "configs/encoder.yaml",
            "--output_dir",
            str(out),
            *small,
            "--set",
            "pretrain.max_steps=2",
        ]
    )
    assert f"train with --set model.encoder_checkpoint={out}" in capsys.readouterr().out
    probe_main(["--config", "configs/encoder.yaml", "--encoder", str(out), "--out", str(card_dir), *small])
    card = json.loads((card_dir / "card.json").read_text())
    assert set(card["rows"]) == {"pretrained", "random init 0.02", "random init 0.2", "majority answer"}
    assert (card_dir / "card.png").stat().st_size > 0
    assert format_table(card) in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a saved encoder folder"):
        probe_main(["--encoder", str(tmp_path / "nothing"), "--out", str(card_dir)])


def test_linear_probe_separates_a_separable_case():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    features = torch.randn(300, 8, generator=generator) * 0.1
    features[torch.arange(300), labels] += 5.0  # class c lifts feature c
    probe = fit_linear_probe(features, labels, num_classes=3, max_iter=50, weight_decay=1e-4)
    assert (probe(features).argmax(-1) == labels).float().mean() == 1.0
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        fit_linear_probe(features, labels + 1, num_classes=3, max_iter=5, weight_decay=0.0)
    with pytest.raises(ValueError, match="features must be"):
        fit_linear_probe(features[:, 0], labels, num_classes=3, max_iter=5, weight_decay=0.0)


def test_probe_reads_colour_that_the_features_carry():
    """An 'encoder' whose patch features are the patch's mean colour gets colour right: the probe path works."""

    class MeanColour(torch.nn.Module):
        config = type("Config", (), {"patch_size": 4, "num_register_tokens": 0})()

        def forward(self, pixels):  # [B, 3, H, W] -> [B, 1 + N, 3]
            pooled = torch.nn.functional.avg_pool2d(pixels, 4).flatten(2).transpose(1, 2)
            output = torch.cat([pooled[:, :1], pooled], dim=1)
            return type("Output", (), {"last_hidden_state": output})()

    config = small_config()
    source = config.frame_source()
    fit, test = (
        procedural_frames(source, "validation", 24),
        procedural_frames(source, "validation", 12, start=24),
    )
    scores = probe_encoder(MeanColour(), fit, test, config)
    assert scores["colour"] >= 0.95


def test_patch_labels_take_the_covering_object():
    pixel_map = np.full((1, 16, 16), NO_OBJECT)
    pixel_map[0, :8, :8] = 2  # top-left patch fully object 2
    pixel_map[0, :8, 8:11] = 1  # top-right patch 3/8 covered
    labels = patch_labels(pixel_map, patch_size=8, min_coverage=0.5)
    assert labels.tolist() == [[[2, NO_OBJECT], [NO_OBJECT, NO_OBJECT]]]
    with pytest.raises(ValueError, match="min_coverage must lie in"):
        patch_labels(pixel_map, 8, 0.3)


def test_frames_are_deterministic_and_labelled():
    source = small_config().frame_source()
    first, again = procedural_frames(source, "train", 4), procedural_frames(source, "train", 4)
    assert np.array_equal(first.frames, again.frames) and first.frames.shape == (4, 32, 32, 3)
    assert isinstance(first, LabelledFrames)
    assert (first.shape_map >= 0).any() and (first.colour_map >= 0).sum() == (first.shape_map >= 0).sum()
    for index, colour in enumerate(COLOURS):  # a pixel labelled with an object shows that object's colour
        assert np.all(first.frames[first.colour_map == index] == COLOUR_RGB[colour])
    assert np.all(first.frames[first.colour_map == NO_OBJECT].max(-1) <= MAX_BACKGROUND_CHANNEL)


def test_photographs_come_from_scikit_image():
    source = FrameSource(image_size=32, patch_size=4)
    crops = photo_frames(source, "train", 3)
    assert crops.shape == (3, 32, 32, 3) and crops.dtype == np.uint8 and crops.std() > 0
    assert np.array_equal(crops, photo_frames(source, "train", 3))
    assert not np.array_equal(crops, photo_frames(source, "validation", 3))
    mixed = pretraining_frames(FrameSource(**{**source.__dict__, "photo_fraction": 0.5}), 4)
    assert mixed.shape == (4, 32, 32, 3)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("frames.procedural.small_size_range=[0.2, 0.25]", "below 3 patches"),
        ("frames.image_size=36", "multiple of patch_size"),
        ("frames.photo_fraction=2", "photo_fraction must lie in"),
        ("pretrain.mask_ratio=1.0", r"pretrain.mask_ratio must lie in \[0, 1\)"),
        ("pretrain.context=2", "pretrain.context must be an odd positive int"),
        ("pretrain.context_downsample=3", "must divide the patch size"),
        ("pretrain.max_steps=0", "pretrain.max_steps must be a positive int"),
        ("pretrain.not_a_field=1", "unknown keys in config section 'encoder config.pretrain'"),
    ],
)
def test_bad_settings_name_the_field(assignment, message):
    with pytest.raises(ValueError, match=message):
        load_encoder_config("configs/encoder.yaml", [assignment])
