"""The label-free study's mechanisms (issue 21): visual tokens at the text's scale, a next-frame loss kept off the
planner, the planner's gradient share of each loss, the other-clip null, selectivity and the test split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval import controls, probes
from foveated_vlm.data.procedural import (
    COLOUR_RGB,
    ProceduralVideoConfig,
    ProceduralVideoDataset,
    make_clip,
    pairs_for_split,
    sample_text,
)
from studies.label_free.grad_share import planner_gradient_norms, weighted_terms

from ..builders import caption_batch

NUM_FRAMES = 4


@pytest.fixture(scope="module")
def clips() -> list[dict]:
    return [
        item
        for item in ProceduralVideoDataset(
            "validation", 3, ProceduralVideoConfig(image_size=32, num_frames=NUM_FRAMES)
        )
    ]


def _attention(model, count: int) -> torch.Tensor:
    width = model.model.fovea_encoder.num_prefix_tokens + model.config.num_patches + 1
    return torch.softmax(torch.randn(count, width), -1)


def test_visual_token_norm_puts_tokens_at_the_text_embeddings_rms(make_model):
    model, _ = make_model(visual_token_norm=True, glimpse_location=True)
    table = model.get_input_embeddings().weight
    text_rms = table.pow(2).mean().sqrt()
    tokens = torch.randn(3, model.config.vision_config.hidden_size) * 50
    attention = _attention(model, 3)
    projected = model.project_visual_tokens(tokens, attention)
    torch.testing.assert_close(projected.pow(2).mean(-1).sqrt(), text_rms.expand(3), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        model.model.fovea_visual_projection.weight.mul_(10)
        model.model.fovea_location_projection.weight.mul_(10)
        model.model.fovea_visual_projection.bias.mul_(10)
        model.model.fovea_location_projection.bias.mul_(10)
    torch.testing.assert_close(
        model.project_visual_tokens(tokens, attention), projected, rtol=1e-4, atol=1e-6
    )


def test_visual_token_norm_follows_the_table_and_keeps_the_scale_factor(make_model):
    model, _ = make_model(visual_token_norm=True, visual_token_scale=2.0)
    tokens = torch.randn(2, model.config.vision_config.hidden_size)
    before = model.project_visual_tokens(tokens, _attention(model, 2))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(3)
    torch.testing.assert_close(model.project_visual_tokens(tokens, _attention(model, 2)), 3 * before)
    text_rms = model.get_input_embeddings().weight.pow(2).mean().sqrt()
    torch.testing.assert_close(
        before.pow(2).mean(-1).sqrt(), 2 * text_rms.expand(2) / 3, rtol=1e-4, atol=1e-6
    )


def test_visual_token_norm_reaches_the_dense_tokens(make_model, random_video):
    model, processor = make_model(foveation_mode="dense", dense_tokens_per_frame=4, visual_token_norm=True)
    cache = model.encode_frames(torch.randn(2, 3, 32, 32))
    tokens = model.model.dense_tokens(cache)
    text_rms = model.get_input_embeddings().weight.pow(2).mean().sqrt()
    torch.testing.assert_close(tokens.pow(2).mean(-1).sqrt(), text_rms.expand(8), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("field", "value"), [("visual_token_norm", "yes"), ("prediction_passes", "fine")])
def test_bad_values_are_refused_by_name(make_model, field, value):
    with pytest.raises(ValueError, match=field):
        make_model(**{field: value})


def _probe(model, processor, clips, readers, **kwargs):
    """A small probe report of ``clips`` (two clips a batch, two caption tokens)."""
    return probes.run_probes(
        model, processor, clips, batch_size=2, max_new_tokens=2, readers=readers, progress=False, **kwargs
    )


def _inputs(processor):
    return caption_batch(processor, lengths=(4, 3))


def test_coarse_prediction_pass_keeps_the_next_frame_loss_off_the_planner(make_model):
    model, processor = make_model(
        plan_first_query=True, prediction_passes="coarse", prediction_loss_weight=2.0
    )
    inputs = _inputs(processor)
    model.train()
    output = model(**inputs)
    expected = 2.0 * output.loss_coarse + output.loss_caption + output.loss_caption_coarse
    torch.testing.assert_close(output.loss, expected)
    assert output.loss_fine is not None, "the fine pass's prediction is still reported"
    shares = planner_gradient_norms(model, inputs)
    assert "loss_fine" not in shares and shares["loss_coarse"]["norm"] == 0.0
    assert shares["loss_caption"]["norm"] > 0


def test_both_passes_send_the_next_frame_loss_to_the_planner(make_model):
    model, processor = make_model(plan_first_query=True, prediction_loss_weight=30.0)
    inputs = _inputs(processor)
    shares = planner_gradient_norms(model, inputs)
    assert shares["loss_fine"]["norm"] > 0 and shares["loss_coarse"]["norm"] == 0.0
    assert sum(term["share"] for term in shares.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("passes", ["both", "coarse"])
def test_weighted_terms_sum_to_the_total_loss(make_model, passes):
    model, processor = make_model(prediction_passes=passes, prediction_loss_weight=3.0, lambda_coarse=0.5)
    output = model(**_inputs(processor))
    torch.testing.assert_close(
        torch.stack(list(weighted_terms(model.config, output).values())).sum(), output.loss
    )


def test_other_clip_reader_reads_another_clips_frames(make_model, clips):
    model, processor = make_model()
    batch = probes.prepare_batch(model, processor, clips[:2], [0, 1], null_items=clips[1:3])
    inputs, generate, _, _ = probes.reader_call("other_clip", model, batch)
    own = probes.prepare_batch(model, processor, clips[1:3], [1, 2])
    for pixels in (inputs["pixel_values_videos"], generate["pixel_values_videos"]):
        torch.testing.assert_close(pixels, own.inputs["pixel_values_videos"])
    assert inputs["input_ids"] is batch.inputs["input_ids"], "the prompt and caption stay the clip's own"
    with pytest.raises(ValueError, match="null_items"):
        probes.reader_call("other_clip", model, probes.prepare_batch(model, processor, clips[:2], [0, 1]))


def test_report_gives_the_null_and_the_selectivity(make_model, clips):
    model, processor = make_model()
    report = _probe(model, processor, clips, ("dynamic", "other_clip"))
    dynamic = report["summary"]["all"]["readers"]["dynamic"]
    assert "other_clip" in report["summary"]["all"]["readers"]
    rows = [clip["readers"]["dynamic"] for clip in report["clips"]]
    pairs = np.asarray([[row["mass_in_box"], row["mass_other"]] for row in rows], dtype=float)
    pairs = pairs[np.isfinite(pairs).all(1)]
    assert dynamic["selectivity"]["estimate"] == pytest.approx(pairs[:, 0].mean() / pairs[:, 1].mean())


def test_largest_other_mass_picks_the_most_attended_visible_object():
    attention = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.8, 0.0]])
    others = torch.tensor(
        [[[1.0, 0, 0, 0], [1.0, 0, 0, 0]], [[0, 0, 1.0, 0], [0, 0, 0, 0]]]
    )  # object 0 everywhere, object 1 in view in frame 0 only
    assert controls.largest_other_mass(attention, others, torch.tensor([0, 1])) == pytest.approx(0.3)
    assert controls.largest_other_mass(attention, others, torch.tensor([1])) == pytest.approx(0.1)


def test_test_split_is_its_own_in_distribution_stream():
    config = ProceduralVideoConfig(image_size=32, num_frames=NUM_FRAMES)
    assert pairs_for_split(config, "test") == pairs_for_split(config, "validation")
    test = ProceduralVideoDataset("test", 2, config)[0]
    validation = ProceduralVideoDataset("validation", 2, config)[0]
    assert not np.array_equal(test["frames"], validation["frames"])


def test_summarise_reads_an_ablations_folder(make_model, clips, tmp_path):
    from eval.common import write_report
    from studies.label_free import summarise

    model, processor = make_model()
    report = probes.run_probes(
        model, processor, clips, batch_size=2, max_new_tokens=2, readers=("dynamic", "static"), progress=False
    )
    write_report(
        tmp_path / "arms" / "arm_a" / "eval" / "probes", report, "", probes.JSON_NAME, probes.MARKDOWN_NAME
    )
    arms = summarise.summarise(tmp_path)
    dynamic = report["summary"]["all"]["readers"]["dynamic"]
    assert arms["arm_a"]["readers"]["dynamic"]["mass_in_box"] == dynamic["mass_in_box"]["estimate"]
    assert "| arm_a |" in summarise.table(arms)


def test_grad_share_cli_measures_a_fresh_model_of_a_config(tmp_path):
    from studies.label_free import grad_share

    report = grad_share.main(
        [
            "--at_init",
            "--config",
            "configs/named.yaml",
            "--set",
            "model.plan_first_query=true",
            "--set",
            "model.prediction_passes=coarse",
            "--split",
            "validation",
            "--num_clips",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ]
    )
    assert (tmp_path / grad_share.JSON_NAME).is_file()
    assert set(report["terms"]) == {"loss_coarse", "loss_caption", "loss_caption_coarse"}
    assert report["terms"]["loss_caption"]["share"] == 1.0


def test_mass_by_layer_at_the_map_layer_is_the_dynamic_readings_mass(make_model, clips):
    model, processor = make_model(attention_map_layer=0)
    report = _probe(model, processor, clips, ("dynamic", "static"), by_layer=True)
    layers = len(model.model.fovea_encoder.layers)
    for clip in report["clips"]:
        by_layer = clip["mass_by_layer"]
        assert len(by_layer["planned"]) == len(by_layer["static"]) == layers
        for name, reader in (("planned", "dynamic"), ("static", "static")):
            own = clip["readers"][reader]["mass_in_box"]
            assert by_layer[name][0] == pytest.approx(own, rel=1e-4) or (
                np.isnan(own) and np.isnan(by_layer[name][0])
            )
        assert by_layer["planned"][1] != pytest.approx(by_layer["planned"][0]), "another layer, another map"
    assert model.config.attention_map_layer == 0, "the configured layer is restored"
    assert len(report["summary"]["all"]["mass_by_layer"]["planned"]) == layers


LOOKAHEAD = {
    "image_size": 64,
    "num_frames": 6,
    "named_object_fraction": 1.0,
    "occlusion_probability": 0.0,
    "camera_pan_probability": 0.0,
}


def _colour_present(frame: np.ndarray, colour: str) -> bool:
    return bool((frame == np.asarray(COLOUR_RGB[colour], dtype=np.uint8)).all(-1).any())


def test_lookahead_task_shows_identities_only_in_the_cue_frames():
    config = ProceduralVideoConfig(identity_cue_frames=1, **LOOKAHEAD)
    for index in range(4):
        clip = make_clip(config, "train", index)
        target = clip["objects"][clip["target_index"]]
        others = [obj for k, obj in enumerate(clip["objects"]) if k != clip["target_index"]]
        moving = [obj for obj in others if obj["motion"] != "static"]
        assert moving and all(
            (obj["shape"], obj["size"]) == (target["shape"], target["size"]) for obj in moving
        )
        frames = clip["frames"]
        assert all(_colour_present(frames[0], obj["colour"]) for obj in clip["objects"] if obj is not target)
        for frame in frames[1:]:
            assert not any(_colour_present(frame, obj["colour"]) for obj in others)
            assert _colour_present(frame, target["colour"])
        assert sample_text(config, "train", index) == sample_text(
            ProceduralVideoConfig(**LOOKAHEAD), "train", index
        )


def test_without_the_cue_every_object_keeps_its_colour():
    clip = make_clip(ProceduralVideoConfig(**LOOKAHEAD), "train", 0)
    for frame in clip["frames"]:
        assert (
            sum(_colour_present(frame, obj["colour"]) for obj in clip["objects"]) >= len(clip["objects"]) - 1
        )


@pytest.mark.parametrize("value", [6, -1, 1.5])
def test_identity_cue_frames_is_validated(value):
    with pytest.raises(ValueError, match="identity_cue_frames"):
        ProceduralVideoConfig(identity_cue_frames=value, **LOOKAHEAD)


def test_every_reader_has_a_description_a_colour_and_the_table_a_selectivity(make_model, clips):
    from eval.probe_report import READER_COLOURS, READER_DESCRIPTIONS, format_markdown

    assert set(probes.READERS) <= set(READER_COLOURS) and set(probes.READERS) <= set(READER_DESCRIPTIONS)
    model, processor = make_model()
    report = _probe(model, processor, clips, ("dynamic", "other_clip"))
    assert "selectivity" in format_markdown(report) and "other_clip" in format_markdown(report)


def test_scored_frames_start_at_each_videos_second_valid_frame():
    from foveated_vlm.metrics import scored_frames_mask

    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert scored_frames_mask(mask).tolist() == [False, True, True, False, True]


def test_trainers_validation_mass_leaves_out_the_first_frame():
    from foveated_vlm.training.trainer import _mass_in_box

    mask = torch.tensor([[True, True]])
    coverage = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # (B, T, P): the box on patch 0 in both frames
    attention = torch.tensor([[0.0, 1.0], [0.5, 0.5]])  # (N, P): frame 1 misses it, frame 2 half in it
    batch = {"attention_targets": coverage, "video_frame_mask": mask}
    assert float(_mass_in_box(attention, batch)) == pytest.approx(0.5)
