"""Every knob of FoveatedVLMConfig is documented, validated, and changes what it says it changes."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch

import configuration_foveated
from configuration_foveated import FoveatedVLMConfig

from ..builders import caption_batch

MAX_TOP_LEVEL_FIELDS = 35


def _declared_fields() -> dict[str, bool]:
    """Annotated fields of the config class -> whether a docstring follows each one."""
    tree = ast.parse(inspect.getsource(configuration_foveated))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FoveatedVLMConfig").body
    fields = {}
    for index, node in enumerate(body):
        if isinstance(node, ast.AnnAssign):
            following = body[index + 1] if index + 1 < len(body) else None
            documented = isinstance(following, ast.Expr) and isinstance(
                getattr(following, "value", None), ast.Constant
            )
            fields[node.target.id] = documented
    return fields


def test_every_knob_has_a_docstring():
    fields = _declared_fields()
    assert len(fields) > 20
    assert [name for name, documented in fields.items() if not documented] == []


def test_the_config_has_at_most_35_top_level_fields_and_imports_no_model_module():
    """The architecture and the recipe, as transformers configs hold them: reader knobs live in ``reader_config``
    and the config never imports a module of the model (an ``nn.Module``)."""
    assert len(_declared_fields()) <= MAX_TOP_LEVEL_FIELDS
    tree = ast.parse(inspect.getsource(configuration_foveated))
    imported = {
        (node.module or "").lstrip(".") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    model_modules = {
        "readers_foveated",
        "reader_base_foveated",
        "spatial_readers_foveated",
        "encoder_foveated",
    }
    assert not imported & model_modules, imported & model_modules
    assert "torch" not in imported


def test_reader_knobs_are_validated_by_the_reader_config():
    config = FoveatedVLMConfig(frame_reader="multi_scale", reader_config={"multi_scale_factors": [1, 2]})
    assert config.reader_settings.multi_scale_factors == [1, 2]
    assert FoveatedVLMConfig(frame_reader="cascade").reader_settings.cascade_steps == 2  # the default
    with pytest.raises(ValueError, match=r"reader_config\['multi_scale_factors'\].*multi_scale"):
        FoveatedVLMConfig(frame_reader="multi_scale", reader_config={"multi_scale_factors": [3]})
    with pytest.raises(ValueError, match=r"cascade_steps.*frame_reader='query' does not take"):
        FoveatedVLMConfig(reader_config={"cascade_steps": 3})
    with pytest.raises(ValueError, match="frame_reader must be one of"):
        FoveatedVLMConfig(frame_reader="telescope")


def test_top_level_reader_knobs_of_older_configs_move_into_reader_config():
    """A config written before ``reader_config`` holds every reader's knobs at the top level: the configured
    reader's join ``reader_config``; another reader's at its old default are dropped (they never acted), at any
    other value refused (they would be lost)."""
    config = FoveatedVLMConfig(frame_reader="cascade", cascade_steps=3, multi_scale_factors=(1, 2, 4))
    assert config.reader_config == {"cascade_steps": 3}
    assert "multi_scale_factors" not in config.to_dict() and "cascade_steps" not in config.to_dict()
    with pytest.raises(ValueError, match="multi_scale_factors.*not a knob of frame_reader='cascade'"):
        FoveatedVLMConfig(frame_reader="cascade", multi_scale_factors=[1, 2])


@pytest.mark.parametrize(("switch", "value"), [("predict_delta", True), ("query_attention_top_k", 4)])
def test_removed_switches_load_at_their_inert_value_and_are_refused_otherwise(switch, value):
    inert = configuration_foveated.REMOVED_SWITCHES[switch]
    assert switch not in FoveatedVLMConfig(**{switch: inert}).to_dict()
    with pytest.raises(ValueError, match=rf"{switch} was removed.*studies/named_object/RESULTS.md"):
        FoveatedVLMConfig(**{switch: value})
    with pytest.raises(ValueError, match="target_source='motion'.*removed"):
        FoveatedVLMConfig(target_source="motion")


def test_defaults_are_the_full_size_model():
    config = FoveatedVLMConfig()
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (
        384,
        12,
        16,
        256,
    )
    assert vision.num_register_tokens == 4
    assert (text.hidden_size, text.num_hidden_layers, text.max_position_embeddings) == (576, 30, 8192)
    assert config.target_shape == (3, 32, 32) and config.num_patches == 256 and config.tokens_per_frame == 1
    assert config.query_init_std == 1.0


def test_partial_sub_config_overrides_keep_the_other_defaults():
    config = FoveatedVLMConfig(vision_config={"image_size": 128})
    assert config.vision_config.image_size == 128 and config.vision_config.num_register_tokens == 4
    assert config.target_shape == (3, 16, 16)


def test_config_round_trips_through_dict():
    config = FoveatedVLMConfig(
        lambda_coarse=0.3, film_channels=[8, 16], frame_reader="cascade", reader_config={"cascade_sigma": 0.2}
    )
    again = FoveatedVLMConfig(**config.to_dict())
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("foveation_mode", "sparse"),
        ("inference_mode", "fine"),
        ("target_source", "flow"),
        ("query_dim", 0),
        ("query_init_std", 0.0),
        ("target_channels", 0),
        ("film_channels", []),
        ("previous_target_dropout", 1.0),
        ("lambda_coarse", -1.0),
        ("target_downsample", 0),
        ("coarse_reading", "max_pool"),
    ],
)
def test_bad_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FoveatedVLMConfig(**{field: value})


def test_bad_dense_grid_and_target_factor_raise():
    with pytest.raises(ValueError, match="dense_tokens_per_frame"):
        FoveatedVLMConfig(foveation_mode="dense", dense_tokens_per_frame=50)
    with pytest.raises(ValueError, match="target_downsample"):
        FoveatedVLMConfig(target_downsample=7)


def _run(make_model, random_video, seed=0, **overrides):
    model, processor = make_model(seed=seed, **overrides)
    with torch.no_grad():
        return model, model(**caption_batch(processor))


def test_query_init_std_sets_the_scale_of_learned_queries(make_model):
    for std in (1.0, 0.1):
        model, _ = make_model(query_init_std=std, query_dim=512)
        assert abs(model.model.fovea_static_query.std().item() - std) < 0.15 * std


def test_attention_map_layer_selects_the_layer(make_model, random_video):
    first = _run(make_model, random_video, attention_map_layer=0)[1].attention_coarse
    last = _run(make_model, random_video, attention_map_layer=-1)[1].attention_coarse
    assert not torch.allclose(first, last)


def test_lambda_and_loss_weights_combine_the_terms(make_model, random_video):
    _, out = _run(
        make_model, random_video, lambda_coarse=0.5, prediction_loss_weight=2.0, caption_loss_weight=3.0
    )
    expected = 2.0 * (out.loss_fine + 0.5 * out.loss_coarse) + 3.0 * (
        out.loss_caption + 0.5 * out.loss_caption_coarse
    )
    torch.testing.assert_close(out.loss, expected)


def test_visual_token_scale_multiplies_the_projection(make_model):
    model, _ = make_model(visual_token_scale=3.0)
    tokens = torch.randn(2, model.config.vision_config.hidden_size)
    attention = torch.softmax(
        torch.randn(2, model.model.fovea_encoder.num_prefix_tokens + model.config.num_patches + 1), -1
    )
    torch.testing.assert_close(
        model.project_visual_tokens(tokens, attention), 3.0 * model.model.fovea_visual_projection(tokens)
    )


def test_film_widths_shape_the_head(make_model):
    model, _ = make_model(film_channels=[4, 8, 12], film_hidden_dim=20)
    head = model.fovea_prediction_head
    assert head.film[0].out_features == 20 and head.film[-1].out_features == 2 * 12
    assert [m.out_channels for m in head.target_encoder if isinstance(m, torch.nn.Conv2d)] == [4, 8, 12]


def test_target_channels_and_downsample_set_the_target_shape(make_model):
    model, _ = make_model(target_channels=4, target_downsample=4)
    assert model.config.target_shape == (4, 8, 8)
    assert model.fovea_initial_target.shape == (4, 8, 8)


def test_inference_mode_coarse_reads_only_with_the_static_query(make_model, random_video):
    model, processor = make_model(inference_mode="coarse")
    inputs = processor(text="x", videos=random_video(3))
    with torch.no_grad():
        out = model(**inputs)
        two_pass = model(**inputs, inference_mode="two_pass")
    assert out.queries is None and out.attention_fine is None and two_pass.queries is not None
    assert not torch.allclose(out.logits, two_pass.logits)


def test_dense_mode_feeds_pooled_patch_tokens(make_model, random_video):
    model, processor = make_model(foveation_mode="dense", dense_tokens_per_frame=4)
    assert processor.tokens_per_frame == 4 and not hasattr(model.model, "fovea_query_head")
    batch = caption_batch(processor)
    assert (batch["input_ids"] == model.config.frame_token_id).sum() == 4 * 8
    with torch.no_grad():
        out = model(**batch)
    assert out.predictions_fine.shape == (8, *model.config.target_shape) and out.loss_coarse is None
    generated = model.generate(
        **processor(text="x", videos=random_video(2)), max_new_tokens=3, do_sample=False
    )
    assert generated.shape[1] > 3


def test_special_token_ids_are_used(make_model, random_video):
    model, processor = make_model()
    batch = processor(text="x", videos=random_video(2))
    ids = batch["input_ids"][0].tolist()
    config = model.config
    assert ids.count(config.frame_token_id) == 2
    assert ids.count(config.video_start_token_id) == 1 and ids.count(config.video_end_token_id) == 1
    with torch.no_grad():
        embeds = model.model.embed_sequence(batch["input_ids"], torch.zeros(2, 48), mode=0)
    start = ids.index(config.video_start_token_id)
    torch.testing.assert_close(embeds[0, start], model.model.fovea_mode_embeddings[0])
    torch.testing.assert_close(
        embeds[0, ids.index(config.video_end_token_id)], model.model.fovea_video_end_embedding
    )


def test_mean_pool_coarse_reading_averages_the_patch_states(make_model, random_video):
    model, processor = make_model(coarse_reading="mean_pool")
    batch = caption_batch(processor)
    with torch.no_grad():
        out = model(**batch)
        frames = batch["pixel_values_videos"][batch["video_frame_mask"]]
        patches = model.encode_frames(frames).patch_states[:, model.model.fovea_encoder.num_prefix_tokens :]
    torch.testing.assert_close(out.visual_tokens_coarse, patches.mean(1))
    torch.testing.assert_close(
        out.attention_coarse, torch.full_like(out.attention_coarse, 1 / patches.shape[1])
    )
    _, static = _run(make_model, random_video)
    assert not torch.allclose(static.visual_tokens_coarse, out.visual_tokens_coarse)


def test_transformers_older_than_the_cache_rename_is_refused_by_name(monkeypatch):
    import importlib.util
    from pathlib import Path

    import transformers

    monkeypatch.setattr(transformers, "__version__", "5.23.0")
    path = Path(__file__).resolve().parents[2] / "configuration_foveated.py"
    spec = importlib.util.spec_from_file_location("configuration_foveated_under_old_transformers", path)
    with pytest.raises(ImportError, match=r"needs transformers >= 5\.24\.0, found 5\.23\.0"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
