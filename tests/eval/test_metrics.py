"""Known-answer tests of foveated_vlm.metrics (image quality, attention, bootstrap, scoring, caption metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nltk.translate.bleu_score import corpus_bleu

from foveated_vlm import metrics
from foveated_vlm.data.procedural import render_box_mask

P = 16  # patches of a 4 x 4 grid
GRID = 4


# ----------------------------------------------------------------------------------------------------- images


def test_psnr_of_identical_images_is_infinite():
    images = torch.rand(3, 3, 8, 8)
    assert torch.isinf(metrics.psnr(images, images.clone())).all()


def test_psnr_matches_the_formula_for_a_known_noise_level():
    target = torch.full((2, 3, 8, 8), 0.5)
    prediction = target + 0.1  # MSE = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert torch.allclose(metrics.psnr(prediction, target), torch.tensor([20.0, 20.0]), atol=1e-4)
    noisy = target + 0.05 * torch.randn_like(target)
    mse = (noisy - target).pow(2).flatten(1).mean(1)
    assert torch.allclose(metrics.psnr(noisy, target), 10 * torch.log10(1 / mse), atol=1e-4)
    assert torch.allclose(
        metrics.psnr(prediction * 255, target * 255, data_range=255.0), torch.tensor([20.0] * 2)
    )


def test_ssim_known_values():
    images = torch.rand(2, 3, 16, 16)
    assert torch.allclose(metrics.ssim(images, images.clone()), torch.ones(2), atol=1e-6)
    # Constant images a, b: variances and covariance vanish, SSIM = (2ab + c1) / (a^2 + b^2 + c1).
    a, b = 0.2, 0.7
    c1 = (metrics.SSIM_K1 * 1.0) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    value = metrics.ssim(
        torch.full((1, 3, 4, 4), a), torch.full((1, 3, 4, 4), b)
    )  # 4 x 4: the window shrinks
    assert value.item() == pytest.approx(expected, rel=1e-5)
    noisy = (images + 0.3 * torch.randn_like(images)).clamp(0, 1)
    assert (metrics.ssim(noisy, images) < 0.9).all()
    assert torch.allclose(metrics.ssim(noisy, images), metrics.ssim(images, noisy), atol=1e-6)


def test_image_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        metrics.ssim(torch.zeros(2, 8), torch.zeros(2, 8))


# ----------------------------------------------------------------------------------------------------- attention


def one_hot(index: int, size: int = P) -> torch.Tensor:
    attention = torch.zeros(size)
    attention[index] = 1.0
    return attention


def test_entropy_of_one_hot_is_zero_and_of_uniform_is_log_p():
    assert metrics.attention_entropy(one_hot(3)).item() == pytest.approx(0.0, abs=1e-6)
    assert metrics.attention_entropy(torch.full((P,), 1 / P)).item() == pytest.approx(math.log(P), rel=1e-6)


def test_coverage_counts_the_patches_that_hold_the_mass():
    assert metrics.attention_coverage(one_hot(5)).item() == pytest.approx(1 / P)
    assert metrics.attention_coverage(torch.full((P,), 1 / P)).item() == pytest.approx(math.ceil(0.9 * P) / P)
    halves = torch.zeros(P)
    halves[[2, 9]] = 0.5
    assert metrics.attention_coverage(halves).item() == pytest.approx(2 / P)
    batch = torch.stack([one_hot(0), torch.full((P,), 1 / P)])
    assert metrics.attention_coverage(batch).shape == (2,)
    with pytest.raises(ValueError, match="mass"):
        metrics.attention_coverage(halves, mass=1.5)


def test_box_masks_and_mass_in_box():
    image_size, patch = 32, 8
    box = np.array([[8.0, 16.0, 16.0, 24.0]])  # exactly the patch at row 2, column 1
    mask = metrics.box_patch_masks(box, image_size, patch)
    assert mask.shape == (1, P)
    assert mask[0].argmax().item() == 2 * GRID + 1 and mask.sum().item() == pytest.approx(1.0)
    inside = one_hot(2 * GRID + 1)[None]
    assert metrics.attention_mass_in_box(inside, mask).item() == pytest.approx(1.0)
    assert metrics.attention_mass_in_box(one_hot(0)[None], mask).item() == pytest.approx(0.0)
    uniform = torch.full((1, P), 1 / P)
    chance = mask.mean(-1)
    assert metrics.attention_mass_in_box(uniform, mask).item() == pytest.approx(chance.item())
    half_box = np.array([[4.0, 0.0, 12.0, 8.0]])  # half of patch 0 and half of patch 1
    half_mask = metrics.box_patch_masks(half_box, image_size, patch)
    assert np.allclose(
        half_mask[0, :2].numpy(), render_box_mask(half_box[0], image_size, patch).reshape(-1)[:2]
    )
    assert metrics.attention_mass_in_box(one_hot(0)[None], half_mask).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ"):
        metrics.attention_mass_in_box(uniform, half_mask[:, :4])


def test_crop_boxes_follows_the_processors_resize_and_centre_crop():
    box = np.array([10.0, 20.0, 30.0, 40.0])
    assert np.allclose(metrics.crop_boxes(box, 64, 64, 32), box / 2)
    # 40 x 80 frame -> shorter side 32: scale 0.8 to 32 x 64, then 16 px cropped on the left.
    assert np.allclose(
        metrics.crop_boxes(np.array([20.0, 0.0, 40.0, 40.0]), 40, 80, 32), [0.0, 0.0, 16.0, 32.0]
    )


def test_cosine_similarity_across_frames():
    same = torch.tensor([[1.0, 2.0, 3.0]]).repeat(4, 1)
    assert metrics.cosine_similarity_across_frames(same) == pytest.approx(1.0)
    assert metrics.cosine_similarity_across_frames(torch.eye(3)) == pytest.approx(0.0)
    assert math.isnan(metrics.cosine_similarity_across_frames(torch.ones(1, 3)))


# ----------------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, 20)
    large = rng.normal(1.0, 1.0, 2000)
    ci_small, ci_large = metrics.bootstrap_ci(small), metrics.bootstrap_ci(large)
    for values, ci in ((small, ci_small), (large, ci_large)):
        assert ci["estimate"] == pytest.approx(values.mean())
        assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert ci_large["high"] - ci_large["low"] < (ci_small["high"] - ci_small["low"]) / 4
    assert ci_large["low"] < 1.0 < ci_large["high"]


def test_bootstrap_of_a_paired_ratio():
    pairs = np.stack([np.full(10, 3.0), np.full(10, 2.0)], axis=1)
    ci = metrics.bootstrap_ci(pairs, metrics.ratio_of_means)
    assert ci["estimate"] == ci["low"] == ci["high"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="at least one"):
        metrics.bootstrap_ci([])


# ----------------------------------------------------------------------------------------------------- scoring


def test_token_log_likelihoods_with_known_logits():
    vocab = 5
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, 3, 4]])
    uniform = torch.zeros(2, 4, vocab)
    total, count = metrics.token_log_likelihoods(uniform, labels)
    assert count.tolist() == [2, 2]
    assert torch.allclose(total, torch.full((2,), -2 * math.log(vocab)))
    planted = torch.zeros(2, 4, vocab)
    planted[0, 0, 1] = planted[0, 1, 2] = 50.0  # position i predicts label i + 1
    total, _ = metrics.token_log_likelihoods(planted, labels)
    assert total[0].item() == pytest.approx(0.0, abs=1e-6) and total[1].item() < -1


# ----------------------------------------------------------------------------------------------------- captions

PREDICTIONS = [
    "the red square moves from left to right.",
    "the blue circle bounces around.",
    "a green star stays still",
]
REFERENCES = [
    "the red square moves from right to left.",
    "the blue circle bounces around.",
    "the green star stays still.",
]


def test_bleu_matches_nltk_and_a_hand_computed_value():
    ours = metrics.bleu(PREDICTIONS, REFERENCES)["bleu"]
    theirs = corpus_bleu(
        [[metrics.tokenize_13a(r)] for r in REFERENCES], [metrics.tokenize_13a(p) for p in PREDICTIONS]
    )
    assert ours == pytest.approx(theirs, rel=1e-9)
    # p1..p4 = 4/5, 3/4, 2/3, 1/2 and equal lengths: BLEU = (0.2) ** 0.25.
    assert metrics.bleu(["a b c d e"], ["a b c d f"])["bleu"] == pytest.approx(0.2**0.25)
    assert metrics.bleu(["x y z w v"], [["x y z w v", "other words"]])["bleu"] == pytest.approx(1.0)
    # 13a splits punctuation but keeps hyphenated words (a dash is split only after a digit).
    assert metrics.tokenize_13a("moves, left-to-right (A) 3-4.") == [
        "moves",
        ",",
        "left-to-right",
        "(",
        "A",
        ")",
        "3",
        "-",
        "4",
        ".",
    ]


def test_rouge_l_hand_computed():
    # LCS("the red square moves", "the red circle moves") = 3 of 4 words each: P = R = F = 0.75.
    assert metrics.rouge_l(["the red square moves"], ["the red circle moves"])["rouge_l"] == pytest.approx(
        0.75
    )
    assert metrics.rouge_l(["a b"], [["c d", "a b"]])["rouge_l"] == pytest.approx(1.0)


ROUGE_TEXTS = [
    ("The red square moves left.", "the red circle moves to the LEFT"),
    ("a blue star, bouncing (fast) 3-4 times!", "blue star bounces 3 times"),
    ("naïve café: über-cool 42x", "cafe uber cool 42x naive"),
    ("", "anything at all"),
    ("...", "---"),
    ("same same same", "same"),
    ("the green triangle stays still", "the green triangle stays still"),
]


def test_rouge_l_needs_no_rouge_score_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rouge_score", None)  # `import rouge_score` now raises ImportError
    monkeypatch.setitem(sys.modules, "rouge_score.rouge_scorer", None)
    assert metrics.rouge_l(["the red square moves"], ["the red circle moves"])["rouge_l"] == pytest.approx(
        0.75
    )
    assert metrics.tokenize_rouge("Moves, LEFT-to-right 3.5!") == ["moves", "left", "to", "right", "3", "5"]


def test_rouge_l_matches_rouge_score_on_ordinary_text():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for reference, prediction in ROUGE_TEXTS:
        theirs = scorer.score(reference, prediction)["rougeL"].fmeasure
        assert metrics.rouge_l_fmeasure(reference, prediction) == pytest.approx(theirs, abs=1e-12)
    predictions = [p for _, p in ROUGE_TEXTS]
    references = [[r, "the red square moves"] for r, _ in ROUGE_TEXTS]
    theirs = np.mean([scorer.score_multi(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)])
    assert metrics.rouge_l(predictions, references)["rouge_l"] == pytest.approx(theirs, abs=1e-12)


def test_cider_d_hand_computed():
    # Two images, references "a b" and "c d"; every n-gram occurs in one image: idf = log 2 for all.
    # Image 1 repeats its reference: cosine 1 for orders 1 and 2, none of orders 3-4 -> 10 * 2 / 4 = 5.
    # Image 2 says "a d": unigram cosine (log2)^2 / (sqrt2 log2)^2 = 0.5, no bigram -> 10 * 0.5 / 4 = 1.25.
    result = metrics.cider_d(["a b", "a d"], ["a b", "c d"])
    assert result["per_caption"] == pytest.approx([5.0, 1.25])
    assert result["cider"] == pytest.approx(3.125)
    assert metrics.cider_d(["x y"], ["x y"])["cider"] == 0.0  # one image: every idf is 0, as in pycocoevalcap


def test_caption_metrics_fall_back_to_the_builtin_code(monkeypatch):
    monkeypatch.setattr(
        metrics, "_evaluate_metric", lambda name: FileNotFoundError(f"no {name} script offline")
    )
    scores, implementations = metrics.caption_metrics(PREDICTIONS, REFERENCES, backend="auto")
    assert scores["bleu"] == pytest.approx(metrics.bleu(PREDICTIONS, REFERENCES)["bleu"])
    assert implementations == {
        "bleu": "foveated_vlm.metrics.bleu",
        "rouge_l": "foveated_vlm.metrics.rouge_l",
        "cider": "foveated_vlm.metrics.cider_d",
    }
    with pytest.raises(ValueError, match="evaluate.load"):
        metrics.caption_metrics(PREDICTIONS, REFERENCES, backend="evaluate")
    with pytest.raises(ValueError, match="backend"):
        metrics.caption_metrics(PREDICTIONS, REFERENCES, backend="nope")
    with pytest.raises(ValueError, match="one reference list per prediction"):
        metrics.caption_metrics(PREDICTIONS, REFERENCES[:2], backend="builtin")


def test_a_metric_that_cannot_be_computed_is_recorded_as_unavailable(monkeypatch):
    def broken(predictions, references):
        raise ImportError("No module named 'rouge_score'")

    monkeypatch.setitem(metrics._BUILTIN, "rouge_l", (broken, "rouge_l"))
    scores, implementations = metrics.caption_metrics(PREDICTIONS, REFERENCES, backend="builtin")
    assert scores["rouge_l"] is None
    assert (
        implementations["rouge_l"].startswith(metrics.UNAVAILABLE)
        and "rouge_score" in implementations["rouge_l"]
    )
    assert scores["bleu"] == pytest.approx(metrics.bleu(PREDICTIONS, REFERENCES)["bleu"])
    assert scores["cider"] == pytest.approx(metrics.cider_d(PREDICTIONS, REFERENCES)["cider"])


def test_evaluate_that_loads_but_cannot_compute_falls_back(monkeypatch):
    class NeedsMissingPackage:
        def compute(self, predictions, references):
            raise ImportError("No module named 'rouge_score'")

    monkeypatch.setattr(metrics, "_evaluate_metric", lambda name: NeedsMissingPackage())
    scores, implementations = metrics.caption_metrics(PREDICTIONS, REFERENCES, backend="auto")
    assert implementations["rouge_l"] == "foveated_vlm.metrics.rouge_l"
    assert scores["rouge_l"] == pytest.approx(metrics.rouge_l(PREDICTIONS, REFERENCES)["rouge_l"])
    with pytest.raises(ValueError, match="evaluate.load"):
        metrics.caption_metrics(PREDICTIONS, REFERENCES, backend="evaluate")
