"""The remedies of the author's report (seed 004) as config switches: each test fails when its switch is removed."""

from __future__ import annotations

import pytest
import torch

from encoder_foveated import attention_entropy, glimpse_location
from heads_foveated import attention_box_loss
from streaming_foveated import stream_prompt_inputs

from .builders import caption_batch


def _forward(model, processor, random_video, **kwargs):
    return model(**caption_batch(processor), **kwargs)


def _spread_scores(model) -> None:
    """Random-init query scores are near zero; scale them so that sharp and soft attention differ."""
    with torch.no_grad():
        for layer in model.model.fovea_encoder.layers:
            layer.attention.q_proj.weight.mul_(10)


# ----------------------------------------------------------------------------------------------- attention


def test_attention_is_reported_as_part_of_the_full_distribution(make_model, random_video):
    model, processor = make_model()
    out = _forward(model, processor, random_video)
    prefix = 1 + model.config.vision_config.num_register_tokens + 1  # CLS, registers, own key
    for name in ("fine", "coarse"):
        patches, rest = out[f"attention_{name}"], out[f"attention_prefix_{name}"]
        assert rest.shape == (patches.shape[0], prefix)
        torch.testing.assert_close(patches.sum(-1) + rest.sum(-1), torch.ones(patches.shape[0]))
        assert (rest.sum(-1) > 1e-3).all(), "the prefix mass must be reported, not renormalised away"


def test_entropy_loss_counts_the_mass_on_cls(make_model, random_video):
    model, processor = make_model(entropy_loss_weight=1.0, entropy_margin=0.0)
    out = _forward(model, processor, random_video)
    full_fine = attention_entropy(out.attention_fine, out.attention_prefix_fine)
    full_coarse = attention_entropy(out.attention_coarse, out.attention_prefix_coarse)
    torch.testing.assert_close(out.loss_entropy, torch.relu(full_fine - full_coarse).mean())
    renormalised = attention_entropy(out.attention_fine / out.attention_fine.sum(-1, keepdim=True))
    assert not torch.allclose(full_fine, renormalised)


def test_prefix_ignore_puts_all_mass_on_the_top_k_patches(make_model, random_video):
    model, processor = make_model(query_attention_top_k=2, query_attention_prefix="ignore")
    _spread_scores(model)
    with torch.no_grad():
        out = _forward(model, processor, random_video)
    heads = model.config.vision_config.num_attention_heads
    for name in ("fine", "coarse"):
        torch.testing.assert_close(out[f"attention_prefix_{name}"].sum(-1), torch.zeros(out.queries.shape[0]))
        torch.testing.assert_close(out[f"attention_{name}"].sum(-1), torch.ones(out.queries.shape[0]))
        assert ((out[f"attention_{name}"] > 0).sum(-1) <= 2 * heads).all()
    kept, _ = make_model(query_attention_top_k=2)
    _spread_scores(kept)
    with torch.no_grad():
        attended = _forward(kept, processor, random_video)
    assert (attended.attention_prefix_fine.sum(-1) > 1e-3).all(), "'attend' must keep the prefix keys"


@pytest.mark.parametrize("hard", ["straight_through", "gumbel"])
def test_hard_attention_is_one_hot_forward_with_a_soft_gradient(make_model, hard):
    model, _ = make_model(query_attention_hard=hard, gumbel_temperature=0.5)
    encoder = model.model.fovea_encoder
    scores = torch.randn(3, 2, 1, 20, requires_grad=True)
    for training in (False, True):
        encoder.train(training)
        weights = encoder._attention_weights(scores)
        assert torch.equal(weights.detach().max(-1).values, torch.ones(3, 2, 1))
        assert torch.equal((weights.detach() > 0).sum(-1), torch.ones(3, 2, 1, dtype=torch.long))
        (gradient,) = torch.autograd.grad((weights * torch.arange(20.0)).sum(), scores)
        assert gradient.abs().sum() > 0
    encoder.eval()
    evaluated = encoder._attention_weights(scores)
    torch.testing.assert_close(evaluated.argmax(-1), scores.softmax(-1).argmax(-1))


def test_gumbel_noise_only_while_training(make_model):
    model, _ = make_model(query_attention_hard="gumbel")
    encoder = model.model.fovea_encoder.train()
    scores = torch.zeros(64, 1, 1, 20)  # all ties: the noise alone picks the key
    picks = encoder._attention_weights(scores).argmax(-1)
    assert picks.unique().numel() > 1
    encoder.eval()
    assert encoder._attention_weights(scores).argmax(-1).unique().numel() == 1


def test_soft_attention_is_not_one_hot(make_model, random_video):
    model, processor = make_model(query_attention_hard="straight_through")
    with torch.no_grad():
        hard = _forward(model, processor, random_video).attention_fine
    soft_model, _ = make_model()
    with torch.no_grad():
        soft = _forward(soft_model, processor, random_video).attention_fine
    heads = model.config.vision_config.num_attention_heads
    assert ((hard > 0).sum(-1) <= heads).all()  # one key per head
    assert ((soft > 0).sum(-1) > heads).all()


# ----------------------------------------------------------------------------------------------- multi-query


@pytest.mark.parametrize("output", ["mean", "tokens"])
def test_multi_query_reads_k_queries_through_one_cache(make_model, random_video, output):
    model, processor = make_model(num_queries_per_frame=3, multi_query_output=output)
    batch = caption_batch(processor)
    frames = int(batch["video_frame_mask"].sum())
    slots = int((batch["input_ids"] == model.config.frame_token_id).sum())
    assert slots == frames * (3 if output == "tokens" else 1)
    model.train()
    out = model(**batch)
    assert out.queries.shape == (frames, 3, model.config.query_dim)
    assert out.visual_tokens_fine.shape == (frames, 3, model.config.vision_config.hidden_size)
    (gradient,) = torch.autograd.grad(out.loss, model.model.fovea_static_query)
    assert gradient.shape == (3, model.config.query_dim)
    assert (gradient.abs().sum(-1) > 0).all(), "every one of the k static queries must learn"
    model.eval()
    with torch.no_grad():
        patches = model.encode_frames(torch.randn(2, 3, 32, 32))
        queries = torch.randn(2, 3, model.config.query_dim)
        together, _ = model.read_frames(queries, patches)
        for index in range(3):
            alone, _ = model.read_frames(queries[:, index], patches)
            torch.testing.assert_close(together[:, index], alone, atol=1e-5, rtol=1e-4)


def test_multi_query_generates_and_refuses_streaming(make_model, random_video):
    model, processor = make_model(num_queries_per_frame=2, multi_query_output="tokens")
    inputs = processor(text="Describe the video.", videos=random_video(3))
    generated = model.generate(**inputs, max_new_tokens=3)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
    with pytest.raises(ValueError, match="num_queries_per_frame=2"):
        model.stream(**stream_prompt_inputs(processor, "Describe the video."))


# ----------------------------------------------------------------------------------------------- where


def test_glimpse_location_reads_the_attended_place():
    corner = torch.zeros(4, 16)
    corner[0, 0], corner[1, 15], corner[2, 3] = 1.0, 1.0, 1.0
    corner[3] = 1.0 / 16
    where = glimpse_location(corner)
    torch.testing.assert_close(where[0, :2], torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(where[1, :2], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(where[2, :2], torch.tensor([1.0, -1.0]))  # top right
    torch.testing.assert_close(where[3, :2], torch.zeros(2), atol=1e-6, rtol=0)
    assert (where[:3, 2:] < 1e-2).all() and (where[3, 2:] > 0.5).all()
    torch.testing.assert_close(glimpse_location(0.3 * corner), where)  # renormalised over the patches


def test_a_map_that_looked_nowhere_reads_as_the_centre_and_passes_no_gradient():
    maps = torch.zeros(2, 16)
    maps[1, 5] = 1.0
    maps.requires_grad_(True)
    where = glimpse_location(maps)
    torch.testing.assert_close(where[0, :2], torch.zeros(2))
    assert (where[0, 2:] < 1e-2).all()
    (gradient,) = torch.autograd.grad(where.sum(), maps)
    assert (gradient[0] == 0).all() and gradient.isfinite().all(), "no 1 / tiny-mass gain from an empty map"


def test_unused_glimpse_slots_keep_the_gradient_norm_of_a_used_one(make_model):
    """Regression: an unused ``adaptive_fixation`` slot (coverage 0) fed ``glimpse_location`` a 1e12 gain."""
    norms = {}
    for output in ("mean", "tokens"):
        model, processor = make_model(
            frame_reader="adaptive_fixation",
            multi_query_output=output,
            glimpse_location=True,
            fixation_crop_size=16,
        )
        model.train()
        torch.manual_seed(0)
        model(**caption_batch(processor)).loss.backward()
        norms[output] = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()
    assert norms["tokens"] < 100 * norms["mean"], norms


def test_glimpse_location_tells_the_llm_where_the_query_looked(make_model):
    tokens = torch.randn(2, 32)
    prefix_and_patches = 3 + 16
    left, right = torch.zeros(2, prefix_and_patches + 1), torch.zeros(2, prefix_and_patches + 1)
    left[:, 3], right[:, 3 + 15] = 1.0, 1.0
    with_where, _ = make_model(glimpse_location=True)
    assert not torch.allclose(
        with_where.project_visual_tokens(tokens, left), with_where.project_visual_tokens(tokens, right)
    )
    without, _ = make_model()
    torch.testing.assert_close(
        without.project_visual_tokens(tokens, left), without.project_visual_tokens(tokens, right)
    )


# ----------------------------------------------------------------------------------------------- supervision


def _box_targets(batch, patches: int) -> torch.Tensor:
    targets = torch.zeros(*batch["video_frame_mask"].shape, patches)
    targets[..., 5] = 1.0  # the object covers patch 5 in every frame
    return targets


def test_attention_supervision_pulls_the_planned_queries_to_the_box(make_model, random_video):
    model, processor = make_model(attention_supervision_weight=2.0)
    model.train()
    batch = caption_batch(processor)
    boxes = _box_targets(batch, model.config.num_patches)
    out = model(**batch, attention_targets=boxes)
    torch.testing.assert_close(out.loss_attention, -out.attention_fine[:, 5].log().mean())
    base = out.loss_fine + out.loss_coarse + out.loss_caption + out.loss_caption_coarse
    torch.testing.assert_close(out.loss, base + 2.0 * out.loss_attention)
    (gradient,) = torch.autograd.grad(out.loss_attention, model.model.fovea_query_head.weight)
    assert gradient.abs().sum() > 0, "the box loss must reach the LLM's query head"
    unsupervised, _ = make_model()
    assert unsupervised(**batch, attention_targets=boxes).loss_attention is None


def test_box_loss_ignores_frames_without_the_object():
    attention = torch.full((3, 4), 0.25)
    coverage = torch.zeros(3, 4)
    coverage[0, 1] = 1.0
    coverage[1, 2] = 0.5
    expected = -(torch.tensor([0.25, 0.125]).log()).mean()
    torch.testing.assert_close(attention_box_loss(attention, coverage), expected)


# ----------------------------------------------------------------------------------------------- probes


def test_fine_probes_replace_the_queries_and_confine_the_reading(make_model, random_video):
    model, processor = make_model()
    batch = caption_batch(processor)
    frames = int(batch["video_frame_mask"].sum())
    queries = torch.randn(frames, model.config.query_dim)
    bias = torch.full((frames, model.config.num_patches), float("-inf"))
    bias[:, :4] = 0.0  # the top row of patches only
    with torch.no_grad():
        out = model(**batch, fine_queries=queries, fine_patch_bias=bias)
        planned = model(**batch)
    torch.testing.assert_close(out.queries, queries)
    assert torch.equal(out.attention_fine[:, 4:], torch.zeros(frames, model.config.num_patches - 4))
    assert (out.attention_fine[:, :4].sum(-1) > 0).all()
    assert not torch.allclose(out.loss_fine, planned.loss_fine)
    torch.testing.assert_close(out.loss_coarse, planned.loss_coarse)  # the static reading is untouched


# ----------------------------------------------------------------------------------------------- heads


def test_predict_delta_adds_the_clean_previous_target_despite_dropout(make_model, random_video):
    model, processor = make_model(predict_delta=True, previous_target_dropout=0.9)
    with torch.no_grad():
        decoder = model.fovea_prediction_head.target_decoder[-1]
        decoder.weight.zero_()
        decoder.bias.zero_()  # the head predicts no change
    batch = caption_batch(processor)
    model.train()
    with torch.no_grad():
        out = model(**batch)
        mask = batch["video_frame_mask"]
        previous = model.previous_targets(batch["prediction_targets"][mask], (mask.cumsum(1) == 1)[mask])
    torch.testing.assert_close(out.predictions_fine, previous)
    torch.testing.assert_close(out.predictions_coarse, previous)


def test_predict_delta_l1_penalises_the_predicted_change(make_model, random_video):
    model, processor = make_model(predict_delta=True, delta_l1_weight=0.5)
    batch = caption_batch(processor)
    with torch.no_grad():
        out = model(**batch)
        mask = batch["video_frame_mask"]
        previous = model.previous_targets(batch["prediction_targets"][mask], (mask.cumsum(1) == 1)[mask])
    change = (out.predictions_fine - previous).abs().mean()
    change_coarse = (out.predictions_coarse - previous).abs().mean()
    torch.testing.assert_close(out.loss_delta_l1, (change + change_coarse) / 2)


def test_separate_heads_keep_the_coarse_loss_off_the_fine_head(make_model, random_video):
    for separate in (False, True):
        model, processor = make_model(separate_prediction_heads=separate)
        model.train()
        out = _forward(model, processor, random_video)
        fine_head = list(model.fovea_prediction_head.parameters())
        gradients = torch.autograd.grad(out.loss_coarse, fine_head, allow_unused=True)
        reaches_fine_head = any(g is not None and g.abs().sum() > 0 for g in gradients)
        assert reaches_fine_head is not separate
        if separate:
            coarse = torch.autograd.grad(
                out.loss_coarse, list(model.fovea_coarse_prediction_head.parameters())
            )
            assert all(g.abs().sum() > 0 for g in coarse if g is not None)


def test_query_skip_makes_the_prediction_depend_on_where_the_query_looked(make_model):
    for skip in (False, True):
        model, _ = make_model(query_skip_to_head=skip)
        head = model.fovea_prediction_head
        states = torch.randn(2, model.config.text_config.hidden_size)
        previous = torch.randn(2, *model.config.target_shape)
        with torch.no_grad():
            first = model.predict_next_targets(head, states, previous, torch.randn(2, model.config.query_dim))
            second = model.predict_next_targets(
                head, states, previous, torch.randn(2, model.config.query_dim)
            )
        assert torch.allclose(first, second) is not skip


def test_previous_target_dropout_only_in_training(make_model, random_video):
    model, processor = make_model(previous_target_dropout=0.9)
    batch = caption_batch(processor)
    with torch.no_grad():
        evaluated = [model(**batch).predictions_fine for _ in range(2)]
        model.train()
        trained = [model(**batch).predictions_fine for _ in range(2)]
    torch.testing.assert_close(evaluated[0], evaluated[1])
    assert not torch.allclose(trained[0], trained[1])


# ----------------------------------------------------------------------------------------------- motion


def test_motion_targets_follow_a_moving_square(make_model):
    from foveated_vlm.tiny import tiny_processor

    model, processor = make_model(target_source="motion", target_channels=2, motion_search_radius=6)
    assert processor.target_source == "motion"
    frames = torch.zeros(3, 32, 32, 3)
    for t, left in enumerate((4, 8, 12)):  # 4 px a frame to the right
        frames[t, 8:16, left : left + 8] = 1.0
    targets = processor(text="x", videos=[frames], return_targets=True)["prediction_targets"][0]
    assert targets.shape == (3, 2, 4, 4)
    torch.testing.assert_close(targets[0], torch.zeros(2, 4, 4))
    on_square = (
        torch.nn.functional.avg_pool2d(frames[1:, :, :, 0].unsqueeze(1), 8).squeeze(1) >= 0.5
    )  # (T-1, 4, 4)
    assert on_square.sum() >= 2
    motion = targets[1:].permute(0, 2, 3, 1)[on_square]  # (cells, 2): where the square is now
    torch.testing.assert_close(motion, torch.tensor([0.5, 0.0]).expand_as(motion))  # 4 px right = half a cell
    assert (targets[1:, :, 0] == 0).all(), "the still top row reads as still"
    assert tiny_processor(model.config).target_source == "motion"
    batch = processor(text=["x"], videos=[frames], captions=["the red square moves."], return_targets=True)
    out = model(**batch)
    assert out.predictions_fine.shape == (3, 2, 4, 4) and torch.isfinite(out.loss_fine)


def test_motion_target_needs_two_channels():
    from configuration_foveated import FoveatedVLMConfig

    with pytest.raises(ValueError, match="target_channels for target_source='motion'"):
        FoveatedVLMConfig(target_source="motion")


# ----------------------------------------------------------------------------------------------- planning


def test_plan_first_query_reads_frame_one_with_a_query_from_the_prompt(make_model, random_video):
    video = random_video(3)
    for planned in (False, True):
        model, processor = make_model(plan_first_query=planned)
        batch = processor(
            text=["Describe the red object.", "What does the blue object do?"], videos=[video, video]
        )
        with torch.no_grad():
            out = model(**batch)
        first = out.queries[[0, 3]]  # frame 1 of each video
        assert torch.allclose(first[0], first[1]) is not planned, "frame 1's query must depend on the prompt"
        if not planned:
            torch.testing.assert_close(first, model.model.fovea_initial_query.expand(2, -1))


def test_attention_map_layer_none_averages_every_layer(make_model, random_video):
    maps = []
    for layer in (0, 1, None):
        model, processor = make_model(attention_map_layer=layer)
        with torch.no_grad():
            maps.append(_forward(model, processor, random_video).attention_fine)
    assert not torch.allclose(maps[0], maps[1])
    torch.testing.assert_close(maps[2], (maps[0] + maps[1]) / 2)


def test_remedy_switches_survive_a_save_and_load(make_model, random_video, tmp_path):
    from modeling_foveated import FoveatedVLMForConditionalGeneration

    model, processor = make_model(
        plan_first_query=True, glimpse_location=True, num_queries_per_frame=2, multi_query_output="tokens"
    )
    model.save_pretrained(tmp_path)
    loaded = FoveatedVLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.num_queries_per_frame == 2 and loaded.model.fovea_location_projection is not None
    batch = caption_batch(processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
