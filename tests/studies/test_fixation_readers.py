"""The fixation study readers (studies/readers/fixation.py): windows, crops, coverage, probes' gates, REINFORCE, the
glimpse budget, every knob (shapes, gradients and padding of every reader: tests/hub/test_reader_integration.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import studies.readers.fixation as fixation
from configuration_foveated import FoveatedVLMConfig
from readers_foveated import FRAME_READERS
from studies.readers.fixation import STUDY_FIXATION_READERS, crop_windows, fixation_windows, window_coverage

from ..builders import (
    FIXATION_ARMS,
    FIXATION_CROP,
    TOKENS,
    caption_batch,
    caption_batch_row,
)

CROP = FIXATION_CROP
FAR = 30.0  # a plan number far into tanh / sigmoid saturation


@pytest.fixture
def build(make_model):
    def make(**overrides):
        return make_model(**{"fixation_crop_size": CROP, **overrides})

    return make


def _read(model, plans, frames=None, patch_bias=None):
    frames = torch.randn(plans.shape[0], 3, 32, 32) if frames is None else frames
    return model.read_frames(plans, model.encode_frames(frames), patch_bias)


def _fixation(x: float, y: float, scale: float) -> torch.Tensor:
    return torch.tensor([x, y, scale])


def test_every_fixation_reader_is_registered_and_tested():
    assert {overrides["frame_reader"] for _, overrides in FIXATION_ARMS} == set(STUDY_FIXATION_READERS)
    for name, (reader, _) in STUDY_FIXATION_READERS.items():
        assert FRAME_READERS[name] is reader and reader.needs_pixels and not reader.plan_is_query


def test_the_crop_is_differentiable_in_the_fixation(build):
    model, _ = build(frame_reader="dual_stream")
    plans = torch.zeros(2, 3, requires_grad=True)
    visual, attention = _read(model, plans)
    (visual.square().sum() + attention.square().sum()).backward()
    assert (plans.grad.abs().sum(0) > 0).all(), "x, y and scale all move the reading"


# ----------------------------------------------------------------------------------------------------
# Windows and crops
# ----------------------------------------------------------------------------------------------------


def test_a_crop_of_the_whole_frame_is_the_frame_and_a_corner_window_its_corner():
    pixels = torch.randn(1, 3, 16, 16)
    whole = crop_windows(pixels, torch.zeros(1, 2), torch.ones(1), 16)
    torch.testing.assert_close(whole, pixels)
    corner = crop_windows(pixels, torch.tensor([[-0.5, -0.5]]), torch.tensor([0.5]), 8)
    torch.testing.assert_close(corner, pixels[..., :8, :8])
    two = crop_windows(pixels, torch.tensor([[[-0.5, -0.5], [0.5, 0.5]]]), torch.tensor([[0.5, 0.5]]), 8)
    torch.testing.assert_close(two, torch.cat([pixels[..., :8, :8], pixels[..., 8:, 8:]]))


def test_window_coverage_is_the_windows_area_on_each_patch():
    quadrant = window_coverage(torch.tensor([-0.5, -0.5]), torch.tensor(0.5), 4).view(4, 4)
    expected = torch.zeros(4, 4)
    expected[:2, :2] = 0.25
    torch.testing.assert_close(quadrant, expected)
    half_out = window_coverage(torch.tensor([-1.0, 0.0]), torch.tensor(0.5), 4)
    torch.testing.assert_close(half_out.sum(), torch.tensor(0.5)), "half of the window is off the frame"


def test_patch_centres_are_the_patches_centres_in_frame_edge_coordinates():
    centres = fixation.patch_centres(4, torch.device("cpu"))
    assert centres.shape == (16, 2)
    torch.testing.assert_close(centres[0], torch.tensor([-0.75, -0.75]))
    torch.testing.assert_close(centres[1], torch.tensor([-0.25, -0.75])), "row-major: x moves first"
    torch.testing.assert_close(centres[-1], torch.tensor([0.75, 0.75]))


def _corner_box(side: int = 4) -> torch.Tensor:
    box = torch.zeros(1, side * side)
    box[0, 0] = 1.0  # the top-left patch
    return box


def test_the_gaussian_box_loss_is_minus_log_the_footprints_mass_in_the_box():
    centres, half = torch.tensor([[[[0.1, -0.3]]]]), torch.tensor([[[0.4]]])
    boxes = torch.zeros(1, 16)
    boxes[0, :2] = torch.tensor([1.0, 0.5])
    loss = fixation.gaussian_box_loss(centres, half, boxes, sigma=1.5)
    distance = (fixation.patch_centres(4, torch.device("cpu")) - centres[0, 0, 0]).square().sum(-1)
    weights = torch.softmax(-distance / (2 * (1.5 * 0.4) ** 2), -1)
    torch.testing.assert_close(loss, -(weights * boxes[0]).sum().log())


def test_the_gaussian_box_loss_pulls_a_window_far_from_the_box_where_the_coverage_is_flat():
    box = _corner_box()
    far = torch.tensor([[[[0.75, 0.75]]]], requires_grad=True)  # the opposite corner
    half = torch.tensor([[[0.125]]])
    loss = fixation.gaussian_box_loss(far, half, box, sigma=1.0)
    (gradient,) = torch.autograd.grad(loss, far)
    assert loss.isfinite() and loss > 50, "far away, yet finite: computed in log space"
    assert (gradient[0, 0, 0] > 0).all(), "descending it moves the centre up and left, to the box"
    coverage = window_coverage(far, half, 4)
    exact = -(coverage * box).sum().clamp_min(torch.finfo(torch.float32).tiny).log()
    (flat,) = torch.autograd.grad(exact, far)
    assert (flat == 0).all(), "the exact coverage has no gradient while the window misses the box"
    near = fixation.gaussian_box_loss(torch.tensor([[[[-0.75, -0.75]]]]), half, box, sigma=1.0)
    assert near < 1e-3 < loss


def test_the_box_losses_average_only_the_frames_where_the_box_is_in_view():
    boxes = torch.cat([_corner_box(), torch.zeros(1, 16)])  # frame 2: the object is out of view
    centres, half = torch.zeros(2, 1, 1, 2), torch.full((2, 1, 1), 0.5)
    both = fixation.gaussian_box_loss(centres, half, boxes, sigma=1.0)
    torch.testing.assert_close(both, fixation.gaussian_box_loss(centres[:1], half[:1], boxes[:1], sigma=1.0))
    log_policy = torch.full((2, 1, 4), 0.25).log()
    torch.testing.assert_close(
        fixation.policy_box_loss(log_policy, boxes), fixation.policy_box_loss(log_policy[:1], boxes[:1])
    )


def test_the_policy_box_loss_is_minus_log_the_policys_mass_on_the_boxs_cells():
    boxes = _corner_box()
    boxes[0, 1] = 1.0  # the top two patches of the top-left 2 x 2 cell: half of the cell
    logits = torch.tensor([[[2.0, 0.0, -1.0, 0.5]]], requires_grad=True)  # a 2 x 2 glimpse grid
    loss = fixation.policy_box_loss(logits.log_softmax(-1), boxes)
    torch.testing.assert_close(loss, -(0.5 * logits.softmax(-1)[0, 0, 0]).log())
    (gradient,) = torch.autograd.grad(loss, logits)
    assert gradient[0, 0, 0] < 0 and (gradient[0, 0, 1:] > 0).all(), "descending it raises the box's cell"


@pytest.mark.parametrize("reader", sorted(STUDY_FIXATION_READERS))
@pytest.mark.parametrize("box_loss", ["gaussian", "coverage"])
def test_fixation_box_loss_picks_the_readers_supervision(build, reader, box_loss):
    model, processor = build(
        frame_reader=reader, attention_supervision_weight=1.0, fixation_box_loss=box_loss
    )
    model.train()
    batch = caption_batch(processor)
    boxes = torch.zeros(*batch["video_frame_mask"].shape, model.config.num_patches)
    boxes[..., 0] = 1.0
    out = model(**batch, attention_targets=boxes)
    own = model.model.fovea_reader.box_loss(out.reader_extras, boxes[batch["video_frame_mask"]])
    assert (own is None) == (box_loss == "coverage")
    if own is not None:
        torch.testing.assert_close(out.loss_attention, own)


def test_fixation_box_sigma_widens_the_footprint():
    far, half, box = torch.tensor([[[[0.75, 0.75]]]]), torch.tensor([[[0.25]]]), _corner_box()
    narrow = fixation.gaussian_box_loss(far, half, box, sigma=0.5)
    wide = fixation.gaussian_box_loss(far, half, box, sigma=2.0)
    assert wide < narrow


def test_a_probes_patch_bias_gates_the_pixels_the_coverage_and_the_periphery(build):
    model, _ = build(frame_reader="dual_stream", **TOKENS)
    frames = torch.randn(1, 3, 32, 32)
    plans = _fixation(0.0, 0.0, FAR).view(1, 3)  # the whole-frame half window: every patch
    bias = torch.full((1, 16), float("-inf"))
    bias[0, 0] = 0.0  # only the top-left patch stays
    visual, attention = _read(model, plans, frames, bias)
    patches = attention[0, :, 1 + model.config.vision_config.num_register_tokens : -1]  # (2, P)
    assert (patches[:, 1:] == 0).all() and patches[1, 0] == 1.0, "the periphery is the kept patch alone"
    kept = frames.clone()
    kept[..., 8:, :] = 0.0
    kept[..., :, 8:] = 0.0
    gated_fovea = _read(model, plans, kept)[0][0, 0]
    torch.testing.assert_close(visual[0, 0], gated_fovea, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------
# Knobs
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"fixation_crop_size": 12}, "fixation_crop_size"),
        ({"fixation_crop_size": 0}, "fixation_crop_size"),
        ({"fixation_token": "register"}, "fixation_token"),
        ({"fixation_periphery": "both"}, "fixation_periphery"),
        ({"fixation_min_scale": 0.0}, "fixation_min_scale"),
        ({"fixation_min_scale": 0.6, "fixation_max_scale": 0.5}, "fixation_max_scale"),
        ({"fixation_max_scale": 1.5}, "fixation_max_scale"),
        ({"fixation_centre_range": 0.0}, "fixation_centre_range"),
        ({"fixation_centre_range": 1.5}, "fixation_centre_range"),
        ({"frame_reader": "multi_fixation", "num_fixations": 0}, "num_fixations"),
        ({"fixation_periphery": "none"}, "fixation_periphery"),
        ({"frame_reader": "glimpse_rl", "glimpse_grid": 0}, "glimpse_grid"),
        ({"frame_reader": "glimpse_rl", "glimpse_window": 0.0}, "glimpse_window"),
        ({"frame_reader": "glimpse_rl", "glimpse_entropy_weight": -1.0}, "glimpse_entropy_weight"),
        ({"frame_reader": "glimpse_rl", "glimpse_baseline_hidden_dim": 0}, "glimpse_baseline_hidden_dim"),
        ({"frame_reader": "adaptive_fixation", "glimpse_budget_levels": [2, 1]}, "glimpse_budget_levels"),
        ({"frame_reader": "adaptive_fixation", "glimpse_budget_levels": [0, 1]}, "glimpse_budget_levels"),
        ({"frame_reader": "adaptive_fixation", "glimpse_budget_levels": []}, "glimpse_budget_levels"),
        (
            {"frame_reader": "adaptive_fixation", "glimpse_budget_temperature": 0.0},
            "glimpse_budget_temperature",
        ),
        ({"frame_reader": "adaptive_fixation", "glimpse_cost": -0.1}, "glimpse_cost"),
        ({"fixation_periphery_grid": 0}, "fixation_periphery_grid"),
        ({"fixation_periphery_grid": 64}, "fixation_periphery_grid"),
        (
            {"frame_reader": "multi_fixation", "fixation_periphery": "none", "fixation_periphery_grid": 2},
            "fixation_periphery_grid",
        ),  # fmt: skip
        ({"fixation_box_loss": "soft"}, "fixation_box_loss"),
        ({"fixation_box_sigma": 0.0}, "fixation_box_sigma"),
    ],
)
def test_bad_knobs_raise_naming_the_knob(overrides, field):
    overrides = {"frame_reader": "dual_stream", **overrides}
    with pytest.raises(ValueError, match=rf"reader_config\['{field}'\] must be"):
        FoveatedVLMConfig(**overrides)


def test_the_knobs_round_trip_through_the_config_dict():
    config = FoveatedVLMConfig(
        frame_reader="adaptive_fixation", glimpse_budget_levels=(1, 3), glimpse_cost=0.5
    )
    again = FoveatedVLMConfig(**config.to_dict())
    assert again.to_dict() == config.to_dict() and again.reader_settings.glimpse_budget_levels == [1, 3]


def test_fixation_crop_size_is_the_side_the_vit_reads(build, monkeypatch):
    model, _ = build(frame_reader="dual_stream", fixation_crop_size=24)
    sizes = []
    encode = model.model.fovea_encoder.encode_patches

    def recording(pixels):
        sizes.append(tuple(pixels.shape[-2:]))
        return encode(pixels)

    monkeypatch.setattr(model.model.fovea_encoder, "encode_patches", recording)
    _read(model, model.static_queries(2))
    assert sizes == [(32, 32), (24, 24)], "the frame's patch pass, then the crop's"


@pytest.mark.parametrize("token", ["cls", "mean"])
def test_fixation_token_picks_the_crops_cls_or_mean_patch_state(build, token):
    model, _ = build(
        frame_reader="multi_fixation", num_fixations=1, fixation_periphery="none", fixation_token=token
    )
    frames, plans = torch.randn(2, 3, 32, 32), torch.randn(2, 3)
    visual, _ = _read(model, plans, frames)
    centres, half = fixation_windows(plans, model.config)
    states = model.model.fovea_encoder.encode_patches(crop_windows(frames, centres, half, CROP)).patch_states
    prefix = 1 + model.config.vision_config.num_register_tokens
    expected = states[:, 0] if token == "cls" else states[:, prefix:].mean(1)
    torch.testing.assert_close(visual, expected)


def test_scale_and_centre_knobs_bound_the_window():
    config = FoveatedVLMConfig(
        frame_reader="dual_stream", fixation_min_scale=0.2, fixation_max_scale=0.4, fixation_centre_range=0.5
    )
    fixations = torch.tensor([[FAR, -FAR, -FAR], [-FAR, FAR, FAR]])
    centres, half = fixation_windows(fixations, config)
    torch.testing.assert_close(centres, torch.tensor([[0.5, -0.5], [-0.5, 0.5]]))
    torch.testing.assert_close(half, torch.tensor([0.2, 0.4]))


def test_the_window_scale_sets_how_many_patches_the_fovea_covers(build):
    model, _ = build(frame_reader="dual_stream", fixation_min_scale=0.25, fixation_max_scale=1.0, **TOKENS)
    plans = torch.stack([_fixation(0.0, 0.0, -FAR), _fixation(0.0, 0.0, FAR)])
    _, attention = _read(model, plans)
    fovea = attention[:, 0, 1 + model.config.vision_config.num_register_tokens : -1]
    assert (fovea > 0).sum(-1).tolist() == [4, 16], (
        "a 1/4-side window at the centre touches the 4 middle patches"
    )


@pytest.mark.parametrize(
    ("periphery", "tokens"), [("none", 2), ("token", 3), ("fused", 1)], ids=["none", "token", "fused"]
)
def test_fixation_periphery_and_num_fixations_set_the_tokens(build, periphery, tokens):
    model, _ = build(frame_reader="multi_fixation", num_fixations=2, fixation_periphery=periphery, **TOKENS)
    config = model.config
    assert config.plan_dim == 6 and config.tokens_per_plan == tokens == config.tokens_per_frame
    frames = torch.randn(2, 3, 32, 32)
    visual, _ = _read(model, torch.randn(2, 6), frames)
    assert visual.shape[:2] == (2, tokens) if tokens > 1 else visual.dim() == 2
    if periphery == "token":
        states = model.encode_frames(frames).patch_states[:, 1 + config.vision_config.num_register_tokens :]
        torch.testing.assert_close(visual[:, -1], states.mean(1))
    assert (model.model.fovea_reader.fovea_fusion is not None) == (periphery == "fused")


def test_dual_stream_is_a_fovea_and_a_periphery(build):
    model, _ = build(frame_reader="dual_stream", **TOKENS)
    assert model.config.plan_dim == 3 and model.config.tokens_per_frame == 2


def _periphery(model, states: torch.Tensor, gate=None) -> torch.Tensor:
    """The periphery token ``[N, D]`` of one plan over final patch states ``[N, P, D]`` (a cache without prefix)."""
    reader = model.model.fovea_reader
    prefix = states.new_zeros(states.shape[0], reader.num_prefix_tokens, states.shape[-1])
    cache = fixation.PatchCache(patch_states=torch.cat([prefix, states], 1))
    return reader.periphery(cache, gate, 1)[0][:, 0]


def test_a_periphery_grid_keeps_where_things_are_and_the_plain_periphery_does_not(build):
    plain, _ = build(frame_reader="dual_stream")
    gridded, _ = build(frame_reader="dual_stream", fixation_periphery_grid=2)
    assert plain.model.fovea_reader.periphery_projection is None
    side, width = plain.model.fovea_reader.grid_side, plain.config.vision_config.hidden_size
    states = torch.randn(1, side * side, width)
    swapped = (
        states.view(1, side, side, width).flip(1, 2).reshape(1, side * side, width)
    )  # top-left <-> bottom-right
    torch.testing.assert_close(_periphery(plain, states), _periphery(plain, swapped)), "a mean forgets where"
    assert not torch.allclose(_periphery(gridded, states), _periphery(gridded, swapped)), "the cells keep it"
    torch.testing.assert_close(_periphery(plain, states), states.mean(1))


def test_the_periphery_grid_is_the_cells_means_mapped_to_one_token_over_the_kept_patches(build):
    model, _ = build(frame_reader="dual_stream", fixation_periphery_grid=2)
    reader = model.model.fovea_reader
    side, width = reader.grid_side, model.config.vision_config.hidden_size
    states = torch.randn(1, side * side, width)
    gate = torch.ones(1, 1, side * side)
    gate[0, 0, 0] = 0.0  # the probe removes the top-left patch
    grid = states.view(side, side, width)
    half = side // 2
    kept = gate.view(side, side, 1)
    cells = [
        (grid[r : r + half, c : c + half] * kept[r : r + half, c : c + half]).sum((0, 1))
        / kept[r : r + half, c : c + half].sum()
        for r in (0, half)
        for c in (0, half)
    ]  # row-major cells, each (D,)
    flat = torch.stack(cells, -1).reshape(1, -1)  # (1, D * 4): channel-major, as the cells are flattened
    torch.testing.assert_close(_periphery(model, states, gate), reader.periphery_projection(flat))


# ----------------------------------------------------------------------------------------------------
# glimpse_rl
# ----------------------------------------------------------------------------------------------------


def test_glimpse_grid_and_window_place_the_glimpse_on_the_chosen_cell(build):
    model, _ = build(frame_reader="glimpse_rl", glimpse_grid=2, fixation_periphery="none")
    assert model.config.plan_dim == 4
    logits = torch.full((1, 4), -FAR)
    logits[0, 1] = FAR  # row 0, column 1: the top-right quadrant
    _, attention = _read(model, logits)
    patches = attention[0, 1 + model.config.vision_config.num_register_tokens : -1].view(4, 4)
    expected = torch.zeros(4, 4)
    expected[:2, 2:] = 0.25
    torch.testing.assert_close(patches, expected)
    wide, _ = build(frame_reader="glimpse_rl", glimpse_grid=2, glimpse_window=2.0, fixation_periphery="none")
    patches = _read(wide, logits)[1][0, 1 + model.config.vision_config.num_register_tokens : -1]
    assert patches.sum() == pytest.approx(0.75**2), "a window two cells wide: 3/4 of each side in the frame"


def test_glimpse_rl_samples_while_training_and_takes_the_argmax_in_eval(build):
    model, _ = build(frame_reader="glimpse_rl", fixation_periphery="none")
    logits = torch.zeros(64, 16)
    logits[:, 5] = 1.0
    cache = model.encode_frames(torch.randn(64, 3, 32, 32))
    evaluated = model.model.fovea_reader.read(logits, cache, model.model.fovea_encoder).extras["cells"]
    assert (evaluated == 5).all()
    model.train()
    torch.manual_seed(0)
    sampled = model.model.fovea_reader.read(logits, cache, model.model.fovea_encoder).extras["cells"]
    assert len(sampled.unique()) > 1


def test_the_policy_gradient_is_the_only_path_to_the_plan_head(build):
    for weight, reaches in ((1.0, True), (0.0, False)):
        model, processor = build(frame_reader="glimpse_rl", reader_loss_weight=weight)
        model.train()
        out = model(**caption_batch(processor))
        assert out.loss_reader is not None and out.loss_reader.isfinite()
        out.loss.backward()
        grad = model.model.fovea_query_head.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == reaches, weight


def test_glimpse_rewards_are_minus_the_weighted_fine_losses_the_glimpse_informs(build):
    model, processor = build(frame_reader="glimpse_rl", prediction_loss_weight=2.0, caption_loss_weight=0.5)
    batch = caption_batch(processor)
    out = model(**batch)
    targets = batch["prediction_targets"][batch["video_frame_mask"]]
    rewards = fixation.glimpse_rewards(out, targets, model.config)
    errors = (out.predictions_fine - targets).square().flatten(1).mean(1)
    torch.testing.assert_close(rewards, -(2.0 * errors.roll(-1, 0) + 0.5 * out.caption_loss_frames))
    assert fixation.glimpse_rewards(out.__class__(), None, model.config) is None


def test_the_caption_reward_of_a_glimpse_is_its_own_clips_caption_loss(build):
    """Each frame's caption reward is the fine caption loss of its own clip, not the batch's."""
    model, processor = build(frame_reader="glimpse_rl")
    lengths = (5, 3)
    out = model(**caption_batch(processor, lengths=lengths))
    alone = [
        model(**caption_batch_row(processor, row, length)).loss_caption for row, length in enumerate(lengths)
    ]
    expected = torch.cat([loss.expand(length) for loss, length in zip(alone, lengths)])
    torch.testing.assert_close(out.caption_loss_frames, expected, atol=1e-5, rtol=1e-4)
    rewards = fixation.glimpse_rewards(out, None, model.config)
    first, second = rewards.split(lengths)
    assert (first == first[0]).all() and (second == second[0]).all() and first[0] != second[0]


def test_rewards_are_standardised_against_the_other_rewards():
    rewards = torch.tensor([[3.0], [1.0], [2.0]])
    expected = (rewards - torch.tensor([[1.5], [2.5], [2.0]])) / rewards.std()
    torch.testing.assert_close(fixation.standardised_rewards(rewards), expected)
    assert (fixation.standardised_rewards(torch.full((4, 1), 5.0)) == 0).all()
    torch.testing.assert_close(fixation.standardised_rewards(100 * rewards), expected)


def test_reinforce_loss_terms_and_the_entropy_weight():
    log_prob = torch.tensor([[-1.0], [-2.0]], requires_grad=True)
    extras = {
        "log_prob": log_prob,
        "baseline": torch.tensor([[0.5], [0.0]]),
        "entropy": torch.tensor([[1.0], [3.0]]),
    }
    rewards = torch.tensor([1.0, -1.0])
    scores = fixation.standardised_rewards(rewards.unsqueeze(1))  # (2 / sqrt 2) * (+1, -1)
    advantage = scores - extras["baseline"]
    without = fixation.reinforce_loss(extras, rewards, 0.0)
    expected = -(advantage * log_prob).mean() + advantage.square().mean()
    torch.testing.assert_close(without, expected)
    torch.testing.assert_close(fixation.reinforce_loss(extras, rewards, 0.1), without - 0.1 * 2.0)
    without.backward()
    torch.testing.assert_close(log_prob.grad, -advantage / 2)


def test_glimpse_baseline_hidden_dim_sizes_the_baseline(build):
    model, _ = build(frame_reader="glimpse_rl", glimpse_baseline_hidden_dim=7)
    assert model.model.fovea_reader.fovea_baseline[0].out_features == 7
    plans = torch.randn(2, model.config.plan_dim, requires_grad=True)
    _read(model, plans).extras["baseline"].sum().backward()
    assert plans.grad is None, "the baseline reads the plan detached: its loss never moves the policy"


def test_a_bandit_moves_the_policy_to_the_rewarded_cell(build):
    """Reward 1 at one cell, 0 elsewhere: a few REINFORCE steps put most of the policy's mass there."""
    model, _ = build(frame_reader="glimpse_rl", fixation_periphery="none")
    reader, rewarded = model.model.fovea_reader.train(), 6
    cache = model.encode_frames(torch.randn(32, 3, 32, 32))
    logits = torch.zeros(16, requires_grad=True)
    optimiser = torch.optim.Adam([logits, *reader.fovea_baseline.parameters()], lr=0.3)
    torch.manual_seed(0)
    for _ in range(30):
        extras = reader.read(logits.expand(32, -1), cache, model.model.fovea_encoder).extras
        rewards = (extras["cells"][:, 0] == rewarded).float()
        optimiser.zero_grad()
        fixation.reinforce_loss(extras, rewards, 0.0).backward()
        optimiser.step()
    assert logits.softmax(-1)[rewarded] > 0.9


# ----------------------------------------------------------------------------------------------------
# adaptive_fixation
# ----------------------------------------------------------------------------------------------------


def _budget_plans(config, level: int) -> torch.Tensor:
    """Plans of two frames whose level logits pick ``glimpse_budget_levels[level]``."""
    levels = len(config.reader_settings.glimpse_budget_levels)
    plans = torch.randn(2, config.plan_dim)
    plans[:, -levels:] = -FAR
    plans[:, config.plan_dim - levels + level] = FAR
    return plans


@pytest.mark.parametrize("level", [0, 1])
def test_the_chosen_budget_reads_that_many_glimpses_and_fills_the_rest(build, level):
    model, _ = build(
        frame_reader="adaptive_fixation", glimpse_budget_levels=[1, 3], fixation_periphery="none", **TOKENS
    )
    config = model.config
    assert config.plan_dim == 3 * 3 + 2 and config.tokens_per_frame == 3
    with torch.no_grad():
        model.model.fovea_reader.fovea_no_glimpse.fill_(7.0)
    reading = _read(model, _budget_plans(config, level))
    visual, attention = reading
    used = config.reader_settings.glimpse_budget_levels[level]
    assert (visual[:, used:] == 7.0).all() and not (visual[:, :used] == 7.0).any()
    assert (attention[:, used:, -1] == 1.0).all(), "an unused slot looked nowhere"
    assert (reading.extras["glimpses"] == used).all() and reading.extras["mean_glimpses"] == used


def test_the_budget_is_straight_through_and_costs_glimpse_cost_per_glimpse(build, monkeypatch):
    temperatures = []
    gumbel = F.gumbel_softmax

    def spy(logits, tau, hard):
        temperatures.append(tau)
        return gumbel(logits, tau=tau, hard=hard)

    monkeypatch.setattr(F, "gumbel_softmax", spy)
    model, processor = build(
        frame_reader="adaptive_fixation",
        glimpse_cost=0.5,
        glimpse_budget_temperature=0.3,
        reader_loss_weight=1.0,
    )
    model.train()
    out = model(**caption_batch(processor))
    assert temperatures and set(temperatures) == {0.3}
    torch.testing.assert_close(out.loss_reader, 0.5 * out.reader_extras["glimpses"].mean())
    out.loss_reader.backward()
    levels = len(model.config.reader_settings.glimpse_budget_levels)
    grad = model.model.fovea_query_head.weight.grad
    assert grad[-levels:].abs().sum() > 0, (
        "the cost reaches the level logits through the straight-through choice"
    )
    free, _ = build(frame_reader="adaptive_fixation", glimpse_cost=0.0)
    free.train()
    assert free(**caption_batch(processor)).loss_reader == 0
