"""The frame-reader seam: ``config.frame_reader`` picks a reader; the default is today's query reader, unchanged."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.dynamic_module_utils import get_relative_imports

import reader_config_foveated
from configuration_foveated import FoveatedVLMConfig
from heads_foveated import clip_caption_losses
from reader_base_foveated import FrameReader, FrameReading
from reader_config_foveated import READER_CONFIGS, ReaderConfig
from readers_foveated import FRAME_READERS, register_reader
from spatial_readers_foveated import SPATIAL_READERS

from ..builders import caption_batch, caption_batch_row
from ..environments import REPO, hub_modules

PIXEL_READER = "test_pixel_reader"
CLIP_REWARD_READER = "test_clip_reward_reader"
PIXEL_PLAN_WIDTH = 3
PENALTY_WEIGHT = 0.25
GAIN_INIT = 0.5


@dataclass
class PixelReaderConfig(ReaderConfig):
    """The test reader's knobs: its plan width and the weight of its auxiliary loss."""

    reader_loss_weight: float = 1.0
    """Weight of the penalty (``loss_reader``)."""

    def validate(self, config) -> None:
        self.check(config.frame_reader, {"reader_loss_weight": (self.reader_loss_weight >= 0, ">= 0")})

    def plan_width(self, config) -> int:
        return PIXEL_PLAN_WIDTH


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

    @property
    def auxiliary_loss_weight(self) -> float:
        return self.settings.reader_loss_weight

    def read(self, inputs, cache, encoder, patch_bias=None) -> FrameReading:
        colour = cache.pixels.float().mean((2, 3))  # (N, 3)
        visual = self.gain * self.colour(torch.cat([colour, inputs.float()], -1))  # (N, D)
        patches = self.patch_states(cache).shape[1]
        uniform = torch.full((visual.shape[0], patches), 1.0 / patches)
        return FrameReading(visual, self.full_distribution(uniform), {"penalty": visual})

    def auxiliary_loss(self, extras, output, targets):
        return extras["penalty"].square().mean()


class ClipRewardReader(PixelReader):
    """A pixel reader whose auxiliary loss needs each frame's clip's caption loss (a per-clip reward)."""

    needs_frame_caption_losses = True

    def auxiliary_loss(self, extras, output, targets):
        if output.caption_loss_frames is None:
            return None
        return (output.caption_loss_frames * extras["penalty"].mean(-1)).mean()


@pytest.fixture(scope="module", autouse=True)
def pixel_reader():
    register_reader(PIXEL_READER, PixelReader, PixelReaderConfig)
    register_reader(CLIP_REWARD_READER, ClipRewardReader, PixelReaderConfig)
    yield
    del FRAME_READERS[PIXEL_READER], FRAME_READERS[CLIP_REWARD_READER]
    del READER_CONFIGS[PIXEL_READER], READER_CONFIGS[CLIP_REWARD_READER]


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
    with pytest.raises(ValueError, match=r"reader_config\['reader_loss_weight'\] must be >= 0"):
        FoveatedVLMConfig(frame_reader=PIXEL_READER, reader_config={"reader_loss_weight": -1.0})


def test_register_reader_refuses_duplicates_and_non_readers():
    with pytest.raises(ValueError, match="exists already"):
        register_reader("query", PixelReader)
    with pytest.raises(TypeError, match="FrameReader subclass"):
        register_reader("not_a_reader", nn.Linear)
    with pytest.raises(TypeError, match="ReaderConfig subclass"):
        register_reader("not_a_config", PixelReader, dict)
    assert "not_a_reader" not in READER_CONFIGS and "not_a_config" not in FRAME_READERS


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


def test_a_reader_that_asks_gets_each_frames_clip_caption_loss(make_model):
    lengths = (5, 3)
    model, processor = make_model(frame_reader=CLIP_REWARD_READER)
    out = model(**caption_batch(processor, lengths=lengths))
    alone = []
    for row, length in enumerate(lengths):
        single = caption_batch_row(processor, row, length)
        alone.append(model(**single).loss_caption.expand(length))
    torch.testing.assert_close(out.caption_loss_frames, torch.cat(alone), atol=1e-5, rtol=1e-4)
    assert not out.caption_loss_frames.requires_grad, "a reward, not a loss"
    torch.testing.assert_close(
        out.loss_reader, (out.caption_loss_frames * out.visual_tokens_fine.mean(-1)).mean()
    )
    no_labels = caption_batch(processor, lengths=lengths)
    del no_labels["labels"]
    assert model(**no_labels).caption_loss_frames is None, "without labels there is no caption loss"
    plain, _ = make_model(frame_reader=PIXEL_READER)
    assert plain(**caption_batch(processor, lengths=lengths)).caption_loss_frames is None, "only when asked"


def test_clip_caption_losses_average_each_clips_own_positions():
    hidden = torch.randn(2, 4, 3)  # (B, L, H)
    head = nn.Linear(3, 5)
    index, targets = torch.tensor([0, 2, 5]), torch.tensor([1, 4, 0])  # positions 0, 2 of clip 0; 1 of clip 1
    tokens = F.cross_entropy(head(hidden.flatten(0, 1)[index]), targets, reduction="none")
    expected = torch.stack([tokens[:2].mean(), tokens[2]])
    torch.testing.assert_close(clip_caption_losses(head, hidden, index, targets), expected)
    lonely = clip_caption_losses(head, hidden, index[:2], targets[:2])
    assert lonely[1] == 0, "a clip without supervised tokens has loss 0"


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
    """The model imports the registry, the config only the readers' configs (plain configuration, no torch); the
    readers never import the model or its config back (no cycle)."""
    readers = [module for module in hub_modules() if "reader" in module]
    assert {"reader_base_foveated", "readers_foveated", "reader_config_foveated"} <= set(readers)
    assert _module_imports("configuration_foveated") == {"reader_config_foveated"}
    assert _closure("reader_config_foveated") == set(), "the readers' configs import no Hub file"
    assert "readers_foveated" in _module_imports("base_foveated"), "the states model builds the reader"
    for module in readers:
        reached = _closure(module)
        assert module not in reached, f"{module}.py imports itself through {sorted(reached)}"
        assert reached <= set(readers), f"{module}.py imports {sorted(reached - set(readers))}"


def test_every_hub_reader_has_a_config_and_every_study_reader_is_named_as_one():
    """The registry holds the Hub readers, each with its config; the study readers are named in the Hub files
    (so an error can say where they live) and register themselves from ``studies.readers``."""
    import studies.readers

    assert {"query", *SPATIAL_READERS} <= set(FRAME_READERS)
    assert all(name in READER_CONFIGS for name in FRAME_READERS)
    assert set(studies.readers.STUDY_READERS) == set(reader_config_foveated.STUDY_READER_NAMES)
    for name, (reader, config) in studies.readers.STUDY_READERS.items():
        assert FRAME_READERS[name] is reader and READER_CONFIGS[name] is config


def test_the_legacy_defaults_are_the_readers_own_defaults():
    """``LEGACY_READER_KNOBS`` repeats the old top-level defaults so that the model's files can drop a study
    reader's knobs from an old config without importing the study; they must stay the readers' own defaults."""
    import dataclasses

    import studies.readers

    configs = [READER_CONFIGS[name] for name in ("multi_scale", "cascade")]
    configs += [config for _, config in studies.readers.STUDY_READERS.values()]
    seen = set()
    for config in configs:
        defaults = dataclasses.asdict(config())
        for name, value in defaults.items():
            assert reader_config_foveated.LEGACY_READER_KNOBS[name] == value, (config.__name__, name)
            seen.add(name)
    assert seen == set(reader_config_foveated.LEGACY_READER_KNOBS)
