"""VideoLayout: precomputed frame/caption positions give the same forward with no host synchronisation."""

from __future__ import annotations

import pytest
import torch

from layout_foveated import VideoLayout, caption_positions

DENSE = {"foveation_mode": "dense", "dense_tokens_per_frame": 4}
LOSSES = ("loss", "loss_fine", "loss_coarse", "loss_caption", "loss_caption_coarse")


SAME_CAPTIONS = ("a red square", "a red square")  # an unpadded batch needs captions of one token length


def _batch(
    processor,
    random_video,
    lengths=(3, 5),
    prompts=("hi", "describe the clip please"),
    captions=("a red square", "it moves"),
):
    videos = [random_video(length, seed=index) for index, length in enumerate(lengths)]
    return processor(
        text=list(prompts),
        videos=videos,
        captions=list(captions),
        return_targets=True,
        return_video_layout=True,
    )


def _forward(model, batch, with_layout: bool):
    inputs = dict(batch)
    layout = inputs.pop("video_layout")
    torch.manual_seed(0)
    return model(**inputs, video_layout=layout if with_layout else None)


@pytest.mark.parametrize("overrides", [{}, DENSE], ids=["foveated", "dense"])
def test_forward_with_layout_equals_forward_without(make_model, random_video, overrides):
    model, processor = make_model(**overrides)
    model.train()
    batch = _batch(processor, random_video)
    assert batch["video_layout"].padded  # prompts and videos of different lengths: left padding
    with_layout = _forward(model, batch, with_layout=True)
    without = _forward(model, batch, with_layout=False)
    for name in LOSSES:
        ours, reference = getattr(with_layout, name), getattr(without, name)
        assert (ours is None) == (reference is None), name
        if ours is not None:
            torch.testing.assert_close(ours, reference, msg=name)
    torch.testing.assert_close(with_layout.predictions_fine, without.predictions_fine)


def test_unpadded_batch_runs_causal_attention_and_matches_the_masked_forward(make_model, random_video):
    model, processor = make_model()
    batch = _batch(processor, random_video, lengths=(4, 4), prompts=("same", "same"), captions=SAME_CAPTIONS)
    layout = batch["video_layout"]
    assert not layout.padded
    masked = model(**{**batch, "video_layout": VideoLayout(**{**vars(layout), "padded": True})})
    causal = model(**batch)
    torch.testing.assert_close(causal.loss, masked.loss)
    torch.testing.assert_close(causal.logits, masked.logits)


def test_layout_indexes_the_same_positions_as_the_masks(make_model, random_video):
    model, processor = make_model()
    batch = _batch(processor, random_video)
    layout = batch["video_layout"]
    mask = batch["video_frame_mask"]
    slots = (batch["input_ids"] == model.config.frame_token_id).flatten()
    assert layout.frame_index.tolist() == mask.flatten().nonzero().flatten().tolist()
    assert layout.slot_index.tolist() == slots.nonzero().flatten().tolist()
    assert (
        layout.predictor_index.tolist() == (layout.slot_index - 1).tolist()
    )  # foveated: one token per frame
    assert layout.first_frame.tolist() == [True, False, False, True, False, False, False, False]
    labels = batch["labels"].flatten()
    assert (labels[layout.caption_index + 1] == layout.caption_targets).all()
    assert layout.caption_targets.numel() == int((batch["labels"] != -100).sum())


def test_layout_moves_and_pins_with_the_batch(make_model, random_video):
    _, processor = make_model()
    layout = _batch(processor, random_video)["video_layout"]
    moved = layout.to("cpu")
    assert moved is not layout and moved.padded == layout.padded
    assert torch.equal(moved.slot_index, layout.slot_index)
    if torch.cuda.is_available():
        assert layout.pin_memory().frame_index.is_pinned()


def test_layout_of_another_batch_is_refused(make_model, random_video):
    model, processor = make_model()
    batch = _batch(processor, random_video)
    other = _batch(processor, random_video, lengths=(6, 6))["video_layout"]
    with pytest.raises(ValueError, match="video_layout indexes 12 frames"):
        model(**{**batch, "video_layout": other})
    broken = VideoLayout(
        **{**vars(batch["video_layout"]), "predictor_index": torch.zeros(2, dtype=torch.long)}
    )
    with pytest.raises(ValueError, match="predictor_index has 2 entries, expected 8"):
        model(**{**batch, "video_layout": broken})


def test_layout_rejects_mismatched_placeholders_and_unsupervised_labels(make_model, random_video):
    model, processor = make_model()
    batch = _batch(processor, random_video)
    with pytest.raises(ValueError, match="frame tokens per sample"):
        VideoLayout.from_inputs(
            batch["input_ids"], batch["video_frame_mask"][:, :2], model.config.frame_token_id, 1
        )
    with pytest.raises(ValueError, match="supervise no token"):
        caption_positions(torch.full((2, 5), -100))


@pytest.mark.parametrize(
    ("overrides", "lengths"),
    [({}, (3, 5)), (DENSE, (3, 5)), ({}, (4, 4))],
    ids=["foveated-padded", "dense-padded", "foveated-unpadded"],
)
def test_training_forward_with_layout_traces_as_one_graph(make_model, random_video, overrides, lengths):
    """``fullgraph=True`` fails on any host synchronisation (``.item()``, boolean-mask indexing, ``nonzero``)."""
    model, processor = make_model(**overrides)
    model.train()
    if lengths[0] == lengths[1]:
        batch = _batch(processor, random_video, lengths, ("same", "same"), SAME_CAPTIONS)
    else:
        batch = _batch(processor, random_video, lengths)
    assert batch["video_layout"].padded == (lengths[0] != lengths[1])
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    compiled(**batch).loss.backward()
    assert model.model.fovea_encoder.vision_model.embeddings.patch_embeddings.weight.grad is not None
    torch._dynamo.reset()
    with pytest.raises((torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError)):  # it synchronises
        torch.compile(model, backend="eager", fullgraph=True)(**{**batch, "video_layout": None})
    torch._dynamo.reset()


@pytest.mark.parametrize("bucket", [1, 7, 64])
def test_caption_bucket_pads_the_positions_to_a_multiple_and_keeps_the_caption_loss(make_model, bucket):
    """Padded positions point at state 0 with target -100: the count is a multiple of the bucket, one shape for
    captions of different lengths, and the training forward's caption loss is exactly that of no padding."""
    model, processor = make_model()
    batch = processor(
        text=["a", "b"], videos=[torch.rand(3, 32, 32, 3)] * 2, captions=["red", "the small blue square moves"],
        return_video_layout=True, caption_bucket=bucket,
    )  # fmt: skip
    layout = batch["video_layout"]
    unpadded, targets = caption_positions(batch["labels"])
    assert layout.caption_index.numel() % bucket == 0 and layout.caption_index.numel() >= unpadded.numel()
    assert torch.equal(layout.caption_index[: unpadded.numel()], unpadded)
    assert torch.equal(layout.caption_targets[: targets.numel()], targets)
    assert (layout.caption_targets[targets.numel() :] == -100).all()
    with torch.no_grad():
        padded_loss = model(**batch).loss_caption
        plain_loss = model(**{**batch, "video_layout": layout.with_captions(batch["labels"])}).loss_caption
    torch.testing.assert_close(padded_loss, plain_loss)
    if bucket == 64:  # a batch with one short caption has the same shape: one CUDA graph for both
        assert caption_positions(batch["labels"][:1], bucket)[0].shape == layout.caption_index.shape


@pytest.mark.parametrize("bucket", [0, -2, 1.5, True])
def test_caption_bucket_must_be_a_positive_integer(bucket):
    with pytest.raises(ValueError, match="caption bucket must be a positive integer"):
        caption_positions(torch.tensor([[-100, 5, 6]]), bucket)
