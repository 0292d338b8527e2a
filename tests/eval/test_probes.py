"""eval.probes: every reader reads the same weights the way it says, the numbers match the model's, outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from eval import attributes, probes
from foveated_vlm.data.collate import VideoCaptionCollator
from foveated_vlm.data.procedural import ProceduralVideoConfig, ProceduralVideoDataset
from foveated_vlm.metrics import target_box_coverage
from foveated_vlm.tiny import tiny_config, tiny_processor
from foveated_vlm.training.trainer import CONFIG_NAME, FINAL_DIR
from modeling_foveated import FoveatedVLMForConditionalGeneration

from ..builders import clips_batch

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_FRAMES = 4
NUM_CLIPS = 4
MAX_NEW_TOKENS = 3


@pytest.fixture(scope="module")
def clips() -> list[dict]:
    """Held-out clips at the tiny model's 32 px, named and generic ones among them."""
    dataset = ProceduralVideoDataset(
        "heldout", 4 * NUM_CLIPS, ProceduralVideoConfig(image_size=32, num_frames=NUM_FRAMES)
    )
    named = [item for item in dataset if item["named"]][: NUM_CLIPS // 2]
    generic = [item for item in dataset if not item["named"]][: NUM_CLIPS // 2]
    assert len(named) == len(generic) == NUM_CLIPS // 2
    return [named[0], generic[0], named[1], generic[1]]


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """One tiny model shared by the module's report (what ``make_model()`` builds)."""
    config = tiny_config(tokenizer)
    torch.manual_seed(0)
    return FoveatedVLMForConditionalGeneration(config).eval(), tiny_processor(config, tokenizer)


@pytest.fixture(scope="module")
def report(tiny, clips):
    model, processor = tiny
    torch.set_num_threads(1)
    return probes.run_probes(
        model, processor, clips, batch_size=3, max_new_tokens=MAX_NEW_TOKENS, progress=False
    )


def _batch(model, processor, clips, count=3):
    return probes.prepare_batch(model, processor, clips[:count], list(range(count)))


def _forward(model, batch, reader, seed=0):
    inputs, generate, probe, mode = probes.reader_call(reader, model, batch, seed)
    with torch.no_grad(), model.probe_reading(**probe):
        return model(**inputs, inference_mode=mode), probe, inputs, generate, mode


# ----------------------------------------------------------------------------------------------- readers


def test_every_reader_is_run_and_reported(report):
    assert probes.READERS == (
        "dynamic",
        "static",
        "random",
        "centre",
        "shuffled",
        "oracle",
        "blank",
        "other_clip",
    )
    assert report["readers"] == list(probes.READERS)
    for subset in ("all", "named", "generic"):
        assert set(report["summary"][subset]["readers"]) == set(probes.READERS)
    assert all(set(record["readers"]) == set(probes.READERS) for record in report["clips"])


def test_random_reader_reads_with_seeded_gaussian_queries(make_model, clips):
    model, processor = make_model()
    batch = _batch(model, processor, clips)
    dynamic, *_ = _forward(model, batch, "dynamic")
    out, kwargs, *_ = _forward(model, batch, "random")
    queries = kwargs["queries"]
    torch.testing.assert_close(out.queries, queries)
    assert queries.shape == dynamic.queries.shape and not torch.allclose(queries, dynamic.queries)
    assert not torch.allclose(out.loss_fine, dynamic.loss_fine)
    again = probes.reader_call("random", model, batch, 0)[2]["queries"]
    other = probes.reader_call("random", model, batch, 1)[2]["queries"]
    assert torch.equal(queries, again) and not torch.allclose(queries, other)
    per_clip = probes.random_queries([2, 2], [0, 1], 0, (8,), 1.0)
    assert not torch.allclose(per_clip[:2], per_clip[2:]), "each clip draws its own queries"
    many = probes.random_queries([4000], [0], 0, (8,), model.config.query_init_std)
    assert many.std().item() == pytest.approx(model.config.query_init_std, rel=0.05)


def test_shuffled_reader_permutes_the_planned_queries_within_each_video(make_model, clips):
    model, processor = make_model()
    batch = _batch(model, processor, clips)
    dynamic, *_ = _forward(model, batch, "dynamic")
    out, kwargs, *_ = _forward(model, batch, "shuffled")
    order = probes.shuffled_order(batch.lengths, batch.clip_indices, 0)
    video = torch.arange(len(batch.lengths)).repeat_interleave(torch.tensor(batch.lengths))
    assert torch.equal(video[order], video), "frames stay in their own video"
    assert (order != torch.arange(len(order))).all(), "no frame keeps its own query"
    assert torch.equal(order.sort().values, torch.arange(len(order)))
    torch.testing.assert_close(kwargs["queries"], dynamic.queries[order])
    torch.testing.assert_close(out.queries, dynamic.queries[order])
    assert not torch.allclose(out.loss_fine, dynamic.loss_fine)
    rng = np.random.default_rng(0)
    assert (probes.derangement(5, rng) != np.arange(5)).all()
    assert np.array_equal(probes.derangement(1, rng), [0]), "one frame: nothing to permute"


def test_centre_reader_reads_only_a_centred_region_of_the_boxs_size(make_model, clips):
    model, processor = make_model()
    batch = _batch(model, processor, clips)
    out, kwargs, *_ = _forward(model, batch, "centre")
    region = kwargs["patch_bias"] == 0
    assert torch.equal(region.sum(-1), (batch.coverage > 0).sum(-1).clamp_min(1))
    assert torch.equal(out.attention_fine[~region], torch.zeros(int((~region).sum())))
    assert (out.attention_fine.sum(-1) > 0).all()
    torch.testing.assert_close(out.queries, _forward(model, batch, "dynamic")[0].queries)  # planned queries
    # On the 4 x 4 grid the centred region of 4 patches is the central 2 x 2, of 1 patch one of those.
    grid_4 = probes.centre_bias(torch.ones(1, 16) * torch.tensor([1.0] * 4 + [0.0] * 12))
    assert set((grid_4[0] == 0).nonzero().squeeze(-1).tolist()) == {5, 6, 9, 10}
    assert set(probes.centre_order(4)[:1].tolist()) <= {5, 6, 9, 10}


def test_oracle_reader_puts_all_patch_mass_in_the_box(make_model, clips):
    model, processor = make_model()
    batch = _batch(model, processor, clips)
    out, kwargs, *_ = _forward(model, batch, "oracle")
    in_view = batch.coverage.sum(-1) > 0
    covered = batch.coverage > 0
    outside = ~covered & in_view.unsqueeze(-1)
    assert torch.equal(out.attention_fine[outside], torch.zeros(int(outside.sum())))
    mass = (out.attention_fine * covered).sum(-1)[in_view]
    torch.testing.assert_close(mass, 1 - out.attention_prefix_fine.sum(-1)[in_view])  # ~1 up to prefix mass
    assert (kwargs["patch_bias"][~in_view] == 0).all(), "no confinement where the target is out of view"


def test_blank_reader_reads_constant_frames(make_model, clips):
    model, processor = make_model()
    batch = _batch(model, processor, clips)
    original = batch.inputs["pixel_values_videos"].clone()
    _, _, inputs, generate, _ = _forward(model, batch, "blank")
    for pixels in (inputs["pixel_values_videos"], generate["pixel_values_videos"]):
        assert pixels.shape == original.shape and (pixels == 0).all()  # the mean colour, normalised
    assert torch.equal(batch.inputs["pixel_values_videos"], original), "the shared inputs are untouched"
    assert inputs["input_ids"] is batch.inputs["input_ids"]
    assert original.flatten(2).std(-1).min() > 0, "the real frames are not constant"


def test_static_reader_is_the_coarse_reading(make_model, clips):
    model, processor = make_model()
    batch = _batch(model, processor, clips)
    out, kwargs, _, _, mode = _forward(model, batch, "static")
    assert mode == "coarse" and not kwargs
    with torch.no_grad():
        coarse = model(**batch.inputs, inference_mode="coarse")
    torch.testing.assert_close(out.loss_coarse, coarse.loss_coarse)
    assert out.loss_fine is None and out.attention_fine is None


def test_generation_inputs_are_the_processors_prompt_only_inputs(make_model, clips):
    model, processor = make_model()
    batch = _batch(model, processor, clips)
    expected = VideoCaptionCollator(processor, with_captions=False, with_targets=False, with_layout=False)(
        clips[:3]
    )
    assert set(batch.generate_inputs) == {
        "input_ids",
        "attention_mask",
        "pixel_values_videos",
        "video_frame_mask",
    }
    for key, value in batch.generate_inputs.items():
        assert torch.equal(value, expected[key]), key


# ----------------------------------------------------------------------------------------------- numbers


def test_report_numbers_are_the_models_own(tiny, clips, report):
    model, processor = tiny
    inputs = clips_batch(processor, clips)
    with torch.no_grad():
        dynamic = model(**inputs)
        coarse = model(**inputs, inference_mode="coarse")
        per_clip = [
            model(**processor(text=c["prompt"], videos=c["frames"], captions=c["caption"])).loss_caption
            for c in clips
        ]
    figures = report["summary"]["all"]["readers"]
    # Equal-length clips: the mean of per-clip MSEs is the batch MSE.
    assert figures["dynamic"]["loss_fine"]["estimate"] == pytest.approx(dynamic.loss_fine.item(), rel=1e-4)
    assert figures["static"]["loss_fine"]["estimate"] == pytest.approx(coarse.loss_coarse.item(), rel=1e-4)
    assert figures["dynamic"]["loss_caption"]["estimate"] == pytest.approx(
        torch.stack(per_clip).mean().item(), rel=1e-4
    )
    ratio = report["summary"]["all"]["ratio_loss_static_dynamic"]
    assert ratio["estimate"] == pytest.approx(coarse.loss_coarse.item() / dynamic.loss_fine.item(), rel=1e-4)
    assert ratio["low"] <= ratio["estimate"] <= ratio["high"]
    assert figures["random"]["loss_fine"]["estimate"] != figures["dynamic"]["loss_fine"]["estimate"]
    assert figures["oracle"]["lift"]["estimate"] > figures["dynamic"]["lift"]["estimate"]
    for reader, values in figures.items():
        assert 0 <= values["all_attributes"]["estimate"] <= 1, reader
        assert values["chance"]["estimate"] == pytest.approx(figures["dynamic"]["chance"]["estimate"])
        assert values["lift"]["estimate"] == pytest.approx(
            np.mean([r["readers"][reader]["mass_in_box"] for r in report["clips"]])
            / np.mean([r["readers"][reader]["chance"] for r in report["clips"]])
        )
    # Mass in box: frames 2..T (frame 1 is read by q_init) where the target is in view, fine attention.
    for record, clip, attention in zip(report["clips"], clips, dynamic.attention_fine.split(NUM_FRAMES)):
        coverage = target_box_coverage(clip, 32, 8)
        frames = [t for t in range(1, NUM_FRAMES) if clip["visible"][t, clip["target_index"]]]
        expected = (attention * coverage).sum(-1)[frames].mean().item()
        assert record["readers"]["dynamic"]["mass_in_box"] == pytest.approx(expected, rel=1e-4)
        assert record["readers"]["dynamic"]["chance"] == pytest.approx(
            coverage.mean(-1)[frames].mean().item()
        )
    baseline = report["summary"]["all"]["majority_baseline"]
    scored = [
        clip for clip in clips if "colour" in clip["scored_attributes"]
    ]  # generic clips: the prompt names none
    colours = [attributes.true_attributes(clip)["colour"] for clip in scored]
    assert baseline["colour"] == pytest.approx(max(colours.count(c) for c in colours) / len(scored))
    assert 0 < baseline["all_attributes"] <= baseline["colour"]
    named = report["summary"]["named"]["num_clips"]
    assert named + report["summary"]["generic"]["num_clips"] == NUM_CLIPS


def test_random_and_shuffled_draws_do_not_depend_on_the_batching(tiny, clips, report):
    model, processor = tiny
    single = probes.run_probes(
        model,
        processor,
        clips,
        batch_size=1,
        max_new_tokens=MAX_NEW_TOKENS,
        readers=("random", "shuffled"),
        progress=False,
    )
    for mine, theirs in zip(single["clips"], report["clips"], strict=True):
        for reader in ("random", "shuffled"):
            assert mine["readers"][reader]["loss_fine"] == pytest.approx(
                theirs["readers"][reader]["loss_fine"], rel=1e-4
            )
            assert mine["readers"][reader]["generated"] == theirs["readers"][reader]["generated"]


def test_captions_are_scored_on_the_clips_scored_attributes():
    item = {"caption": "the red square moves from left to right.", "clip_id": "x"}
    assert attributes.score_caption(item, "The RED square moves from left to right!") == {
        "colour": True,
        "shape": True,
        "motion": True,
    }
    assert attributes.score_caption(item, "a blue square bounces") == {
        "colour": False,
        "shape": True,
        "motion": False,
    }
    named = {**item, "scored_attributes": ("shape", "motion"), "named": True}
    assert attributes.score_caption(named, "the blue square moves from left to right") == {
        "shape": True,
        "motion": True,
    }
    with pytest.raises(ValueError, match="unknown attributes"):
        attributes.score_caption({**item, "scored_attributes": ("weight",)}, "")
    sized = {**item, "objects": [{"size": "small"}], "target_index": 0}
    assert attributes.true_attributes(sized)["size"] == "small"


# ----------------------------------------------------------------------------------------------- outputs


def test_bad_arguments_are_refused_clearly(tiny, clips, make_model):
    model, processor = tiny
    cases = [
        ({"readers": ("dynamic", "bogus")}, "readers must be"),
        ({"readers": ()}, "readers must be"),
        ({"readers": ("random", "random")}, "repeat"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            probes.run_probes(model, processor, clips, **{"progress": False, **kwargs})
    with pytest.raises(ValueError, match="no clips"):
        probes.run_probes(model, processor, [], progress=False)
    boxless = [{k: v for k, v in clips[0].items() if k != "boxes"}]
    with pytest.raises(ValueError, match="procedural clips"):
        probes.run_probes(model, processor, boxless, readers=("dynamic",), progress=False)
    dense, dense_processor = make_model(foveation_mode="dense", dense_tokens_per_frame=4)
    with pytest.raises(ValueError, match=r"\['static'\] replace the fine pass's queries: a dense model"):
        probes.run_probes(dense, dense_processor, clips, readers=("dynamic", "static"), progress=False)


def test_a_dense_model_is_probed_by_its_own_reading_and_the_blank_control(clips, make_model):
    dense, processor = make_model(foveation_mode="dense", dense_tokens_per_frame=4)
    report = probes.run_probes(dense.eval(), processor, clips, readers=probes.DENSE_READERS, progress=False)
    readers = report["summary"]["all"]["readers"]
    assert set(readers) == set(probes.DENSE_READERS)
    for reader in probes.DENSE_READERS:
        assert readers[reader]["mass_in_box"] is None, "a dense model has no map"
        assert readers[reader]["loss_caption"] is not None and readers[reader]["all_attributes"] is not None
    assert readers["blank"]["loss_fine"]["estimate"] != readers["dynamic"]["loss_fine"]["estimate"]


def test_cli_writes_json_markdown_and_figure(tokenizer, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(tokenizer)
    torch.manual_seed(0)
    FoveatedVLMForConditionalGeneration(config).save_pretrained(run / FINAL_DIR)
    tiny_processor(config, tokenizer).save_pretrained(run / FINAL_DIR)
    shutil.copy(REPO_ROOT / "configs" / "smoke.yaml", run / CONFIG_NAME)
    out = tmp_path / "out"
    args = ["--run_dir", str(run), "--split", "heldout", "--num_clips", "3", "--out", str(out)]
    probes.main(
        [*args, "--batch_size", "2", "--max_new_tokens", "2", "--readers", "dynamic", "oracle", "blank"]
    )
    report = json.loads((out / probes.JSON_NAME).read_text())
    assert report["num_clips"] == 3 and report["readers"] == ["dynamic", "oracle", "blank"]
    assert report["split"] == "heldout" and report["figure"] == probes.FIGURE_NAME
    assert set(report["summary"]["all"]["readers"]["oracle"]) >= {
        "accuracy",
        "all_attributes",
        "loss_fine",
        "loss_caption",
        "mass_in_box",
        "chance",
        "lift",
    }
    markdown = (out / probes.MARKDOWN_NAME).read_text()
    assert markdown.startswith("# Test-time query probes") and "| oracle |" in markdown
    assert (out / probes.FIGURE_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        probes.main([*args, "--readers", "bogus"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        probes.main([*args, "--max_new_tokens", "0"])
    with pytest.raises(ValueError, match="exactly one of --model"):
        probes.main([*args, "--model", str(run / FINAL_DIR)])


def test_clips_of_different_lengths_keep_their_own_frames(tiny, clips):
    model, processor = tiny
    short = {**clips[1], "clip_id": "short"}
    short.update({key: clips[1][key][:3] for key in ("frames", "boxes", "visible")})
    mixed = [clips[0], short]
    result = probes.run_probes(
        model,
        processor,
        mixed,
        batch_size=2,
        max_new_tokens=2,
        readers=("dynamic", "shuffled"),
        progress=False,
    )
    for clip, record in zip(mixed, result["clips"], strict=True):
        inputs = processor(
            text=clip["prompt"], videos=clip["frames"], captions=clip["caption"], return_targets=True
        )
        with torch.no_grad():
            alone = model(**inputs)
        assert record["readers"]["dynamic"]["loss_fine"] == pytest.approx(alone.loss_fine.item(), rel=1e-4)
        assert record["readers"]["dynamic"]["loss_caption"] == pytest.approx(
            alone.loss_caption.item(), rel=1e-4
        )
