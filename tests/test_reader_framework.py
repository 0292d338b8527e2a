"""The frame-reader seam: ``config.frame_reader`` picks a reader; the default is today's query reader, unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import initialization as init
from transformers.dynamic_module_utils import get_relative_imports

import readers_foveated
from configuration_foveated import FoveatedVLMConfig
from reader_base_foveated import FrameReader, FrameReading
from readers_foveated import FRAME_READERS, register_reader

from .builders import caption_batch
from .environments import REPO, hub_modules

PIXEL_READER = "test_pixel_reader"
PIXEL_PLAN_WIDTH = 3
PENALTY_WEIGHT = 0.25
GAIN_INIT = 0.5


class PixelReader(FrameReader):
    """A reader of the frames' mean colour (needs pixels, a non-query plan, an auxiliary loss) for these tests."""

    plan_is_query = False
    needs_pixels = True

    def __init__(self, config):
        super().__init__(config)
        self.colour = nn.Linear(3 + PIXEL_PLAN_WIDTH, config.vision_config.hidden_size)
        self.gain = nn.Parameter(torch.empty(1))

    def init_learned_parameters(self) -> None:
        init.constant_(self.gain, GAIN_INIT)

    @classmethod
    def plan_width(cls, config) -> int:
        return PIXEL_PLAN_WIDTH

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        colour = cache.pixels.float().mean((2, 3))  # (N, 3)
        visual = self.gain * self.colour(torch.cat([colour, inputs.float()], -1))  # (N, D)
        patches = self.patch_states(cache).shape[1]
        uniform = torch.full((visual.shape[0], patches), 1.0 / patches)
        return FrameReading(visual, self.full_distribution(uniform), {"penalty": visual})

    def auxiliary_loss(self, extras, output, targets):
        return extras["penalty"].square().mean()


@pytest.fixture(scope="module", autouse=True)
def pixel_reader():
    register_reader(PIXEL_READER, PixelReader)
    yield
    del FRAME_READERS[PIXEL_READER]


def test_the_default_reader_is_the_query_reader_with_the_same_state_dict(make_model):
    model, _ = make_model()
    states = model.model
    assert model.config.frame_reader == "query" and model.config.plan_dim == model.config.query_dim
    assert not any("fovea_reader" in key for key in model.state_dict()), "the query reader holds no weights"
    assert states.fovea_query_head.out_features == model.config.query_dim
    queries = torch.randn(3, model.config.query_dim)
    cache = model.encode_frames(torch.randn(3, 3, 32, 32))
    assert cache.pixels is None, "the query reader keeps no pixels"
    tokens, attention = model.read_frames(queries, cache)
    expected = states.fovea_encoder.query(states.fovea_query_input_projection(queries), cache)
    assert torch.equal(tokens, expected[0]) and torch.equal(attention, expected[1])


def test_an_unknown_reader_is_refused_with_the_names():
    with pytest.raises(ValueError, match="frame_reader must be one of .*'query'"):
        FoveatedVLMConfig(frame_reader="nonsense")
    with pytest.raises(ValueError, match="reader_loss_weight"):
        FoveatedVLMConfig(reader_loss_weight=-1.0)


def test_register_reader_refuses_duplicates_and_non_readers():
    with pytest.raises(ValueError, match="exists already"):
        register_reader("query", PixelReader)
    with pytest.raises(TypeError, match="FrameReader subclass"):
        register_reader("not_a_reader", nn.Linear)


def test_a_reader_declares_its_plan_width_pixels_and_auxiliary_loss(make_model):
    model, processor = make_model(frame_reader=PIXEL_READER, reader_loss_weight=PENALTY_WEIGHT)
    states = model.model
    assert states.fovea_reader.gain.item() == GAIN_INIT, "the model initialises the reader's own parameters"
    assert states.fovea_static_query.shape == (PIXEL_PLAN_WIDTH,)
    assert states.fovea_query_head.out_features == PIXEL_PLAN_WIDTH
    assert not hasattr(states, "fovea_query_input_projection"), "a non-query plan is not projected"
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.encode_frames(pixels).pixels, pixels)
    model.train()
    out = model(**caption_batch(processor))
    assert out.queries.shape[-1] == PIXEL_PLAN_WIDTH
    torch.testing.assert_close(out.loss_reader, out.visual_tokens_fine.square().mean())
    config = model.config
    expected = (
        config.prediction_loss_weight * (out.loss_fine + config.lambda_coarse * out.loss_coarse)
        + config.caption_loss_weight * (out.loss_caption + config.lambda_coarse * out.loss_caption_coarse)
        + PENALTY_WEIGHT * out.loss_reader
    )
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert states.fovea_reader.colour.weight.grad.abs().sum() > 0
    assert states.fovea_query_head.weight.grad.abs().sum() > 0


def _module_imports(module: str) -> set[str]:
    return set(get_relative_imports(REPO / f"{module}.py"))


def _closure(module: str) -> set[str]:
    """Every Hub file ``module`` imports, directly or through others (itself only through a cycle)."""
    seen: set[str] = set()
    pending = list(_module_imports(module))
    while pending:
        imported = pending.pop()
        if imported not in seen:
            seen.add(imported)
            pending.extend(_module_imports(imported))
    return seen


def test_the_reader_files_import_only_reader_files_without_a_cycle():
    """The config and the model import the registry; the readers never import them back (no cycle)."""
    readers = [module for module in hub_modules() if "reader" in module]
    assert {"reader_base_foveated", "readers_foveated"} <= set(readers)
    assert "readers_foveated" in _module_imports("configuration_foveated"), "the config asks the registry"
    assert "readers_foveated" in _module_imports("base_foveated"), "the states model builds the reader"
    for module in readers:
        reached = _closure(module)
        assert module not in reached, f"{module}.py imports itself through {sorted(reached)}"
        assert reached <= set(readers), f"{module}.py imports {sorted(reached - set(readers))}"


def test_every_family_is_merged_into_the_registry():
    for family in readers_foveated.FAMILIES:
        for name, reader in family.items():
            assert FRAME_READERS[name] is reader
