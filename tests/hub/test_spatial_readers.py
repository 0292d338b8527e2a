"""The spatial frame readers (spatial_readers_foveated.py): what each reads, probe confinement, knobs (shapes,
gradients and padding of every reader: tests/hub/test_reader_integration.py)."""

from __future__ import annotations

import pytest
import torch

from configuration_foveated import FoveatedVLMConfig
from reader_base_foveated import glimpse_location, patch_coordinates
from spatial_readers_foveated import SPATIAL_READERS
from studies.readers.spatial import STUDY_SPATIAL_READERS

from ..builders import SPATIAL_ARMS, TOKENS

ARM_OVERRIDES = [overrides for _, overrides in SPATIAL_ARMS]
LEFT_HALF_COLUMNS = 2  # of the tiny model's 4 x 4 patch grid
FIXATION = (-0.5, 0.4)  # (x, y) in -1..1: left of centre, below it


def _patch_count(model) -> int:
    return model.config.num_patches


def test_every_spatial_reader_is_tested():
    assert {overrides["frame_reader"] for overrides in ARM_OVERRIDES} == set(SPATIAL_READERS) | set(
        STUDY_SPATIAL_READERS
    )


CONFINED_ARMS = [(name, o) for name, o in SPATIAL_ARMS if o.get("top_k_output") != "tokens"]


@pytest.mark.parametrize("overrides", [o for _, o in CONFINED_ARMS], ids=[name for name, _ in CONFINED_ARMS])
def test_a_probe_bias_confines_where_the_reader_looks(make_model, overrides):
    """``-inf`` outside a region (the centre and oracle probes) leaves no patch mass outside it."""
    model, _ = make_model(**overrides)
    frames = 2
    side = round(_patch_count(model) ** 0.5)
    region = torch.zeros(side, side, dtype=torch.bool)
    region[:, :LEFT_HALF_COLUMNS] = True
    bias = torch.zeros(frames, side * side).masked_fill(~region.flatten(), float("-inf"))
    cache = model.encode_frames(torch.randn(frames, 3, 32, 32))
    queries = model.static_queries(frames)
    patches, _ = model.split_attention(model.read_frames(queries, cache, bias)[1])
    assert patches[:, ~region.flatten()].abs().max() == 0
    assert patches[:, region.flatten()].sum(-1).min() > 0
    free, _ = model.split_attention(model.read_frames(queries, cache)[1])
    if torch.allclose(free.sum(-1), torch.ones(frames)):  # a reader that looks at patches only
        torch.testing.assert_close(patches.sum(-1), torch.ones(frames), msg="confined, it keeps all its mass")


def test_log_polar_looks_around_its_fixation(make_model):
    model, _ = make_model(frame_reader="log_polar", log_polar_max_radius=0.3)
    cache = model.encode_frames(torch.randn(1, 3, 32, 32))
    plan = torch.tensor([FIXATION]).atanh()  # the reader bounds its plan by tanh
    _, attention = model.read_frames(plan, cache)
    where = glimpse_location(model.split_attention(attention)[0])[0, :2]
    torch.testing.assert_close(where, torch.tensor(FIXATION), atol=0.1, rtol=0.0)


def test_top_k_tokens_are_the_best_scored_patches(make_model):
    model, _ = make_model(frame_reader="top_k", top_k_output="tokens", multi_query_output="tokens")
    cache = model.encode_frames(torch.randn(2, 3, 32, 32))
    queries = model.static_queries(2)
    visual, attention = model.read_frames(queries, cache)
    prefix = model.model.fovea_encoder.num_prefix_tokens
    states = cache.patch_states[:, prefix:]
    selector = model.model.fovea_reader.selector
    scores = (
        selector.query_projection(model.model.fovea_query_input_projection(queries)).unsqueeze(1) @ states.mT
    )
    best = scores.squeeze(1).topk(model.config.reader_settings.top_k_patches, -1).indices  # (N, K)
    torch.testing.assert_close(
        visual, torch.gather(states, 1, best[..., None].expand(-1, -1, states.shape[-1]))
    )
    assert torch.equal(attention[..., prefix:-1].argmax(-1), best)


def test_cascade_narrows_its_second_glimpse_around_the_first(make_model):
    model, _ = make_model(frame_reader="cascade", cascade_sigma=0.2)
    cache = model.encode_frames(torch.randn(2, 3, 32, 32))
    queries = model.static_queries(2)
    tokens = model.model.fovea_query_input_projection(queries)
    _, first = model.model.fovea_encoder.query(tokens, cache)
    _, second = model.read_frames(queries, cache)
    first_where = glimpse_location(model.split_attention(first)[0])
    second_where = glimpse_location(model.split_attention(second)[0])
    assert (second_where[:, 2:] < first_where[:, 2:]).all(), "the second glimpse is narrower"
    bias = model.model.fovea_reader.narrowing_bias(first.unsqueeze(1)).squeeze(1)  # (N, P)
    centre = patch_coordinates(round(_patch_count(model) ** 0.5), bias.device)[bias.argmax(-1)]
    assert ((centre - first_where[:, :2]).abs() <= 2.0 / 3).all(), "the bias peaks at the nearest patch"


def test_multi_scale_mixes_the_scales_by_learned_weights(make_model):
    model, _ = make_model(frame_reader="multi_scale", multi_scale_factors=[1, 4])
    cache = model.encode_frames(torch.randn(2, 3, 32, 32))
    queries = model.static_queries(2)
    reader = model.model.fovea_reader
    assert torch.equal(reader.scale_logits, torch.zeros(2)), "the scales start equal"
    with torch.no_grad():
        reader.scale_logits.copy_(torch.tensor([-30.0, 30.0]))  # all weight on the whole-frame pool
    visual, attention = model.read_frames(queries, cache)
    patches = cache.patch_states[:, model.model.fovea_encoder.num_prefix_tokens :]
    torch.testing.assert_close(visual, patches.mean(1), atol=1e-5, rtol=1e-4)
    uniform = torch.full((2, _patch_count(model)), 1.0 / _patch_count(model))
    torch.testing.assert_close(model.split_attention(attention)[0], uniform)


BAD_KNOBS = [
    ({"frame_reader": "multi_scale", "multi_scale_factors": [3]}, "multi_scale_factors"),
    ({"frame_reader": "multi_scale", "multi_scale_factors": [1, 1]}, "multi_scale_factors"),
    ({"frame_reader": "multi_scale", "multi_scale_factors": []}, "multi_scale_factors"),
    ({"frame_reader": "cascade", "cascade_steps": 1}, "cascade_steps"),
    ({"frame_reader": "cascade", "cascade_sigma": 0.0}, "cascade_sigma"),
    ({"frame_reader": "cascade", "cascade_hidden_dim": 0}, "cascade_hidden_dim"),
    ({"frame_reader": "log_polar", "log_polar_rings": 0}, "log_polar_rings"),
    ({"frame_reader": "log_polar", "log_polar_wedges": 0}, "log_polar_wedges"),
    ({"frame_reader": "log_polar", "log_polar_min_radius": 0.0}, "log_polar_min_radius"),
    ({"frame_reader": "hybrid", "log_polar_max_radius": 0.05}, "log_polar_max_radius"),
    ({"frame_reader": "top_k", "top_k_patches": 0}, "top_k_patches"),
    ({"frame_reader": "hybrid", "top_k_patches": 10_000}, "top_k_patches"),
    ({"frame_reader": "top_k", "top_k_output": "sum"}, "top_k_output"),
]


@pytest.mark.parametrize(("overrides", "knob"), BAD_KNOBS, ids=[knob for _, knob in BAD_KNOBS])
def test_bad_reader_knobs_are_refused_by_name(overrides, knob):
    with pytest.raises(ValueError, match=rf"reader_config\['{knob}'\] must be"):
        FoveatedVLMConfig(**overrides)


def test_the_readers_declare_their_plans_and_tokens():
    plans = {
        name: FoveatedVLMConfig(frame_reader=name) for name in [*SPATIAL_READERS, *STUDY_SPATIAL_READERS]
    }
    assert {name: config.plan_dim for name, config in plans.items()} == {
        "multi_scale": 384,
        "cascade": 384,
        "log_polar": 2,
        "top_k": 384,
        "hybrid": 384,
    }
    assert {name: config.tokens_per_plan for name, config in plans.items()} == {
        "multi_scale": 1,
        "cascade": 1,
        "log_polar": 1,
        "top_k": 1,
        "hybrid": 2,
    }
    tokens = FoveatedVLMConfig(frame_reader="hybrid", top_k_output="tokens", top_k_patches=3, **TOKENS)
    assert tokens.tokens_per_plan == 4 and tokens.tokens_per_frame == 4
    assert FoveatedVLMConfig(frame_reader="hybrid").tokens_per_frame == 1, "averaged into one LLM token"
