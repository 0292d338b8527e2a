"""Pure metric functions of the foveated VLM's evaluation, reusable by training and streaming code.

Image quality (PSNR, SSIM), query attention (entropy, coverage, mass inside an object's box), query collapse
(cosine similarity across frames and between passes), uncertainty (bootstrap confidence intervals), answer
scoring (token log-likelihoods of a continuation) and caption metrics (BLEU, ROUGE-L, CIDEr-D).

Caption metrics: :func:`caption_metrics` first asks the ``evaluate`` library (whose metric scripts come from
the Hub) and falls back, per metric, to the implementations here, which follow the reference code:
BLEU-4 is the corpus BLEU of ``evaluate``'s ``bleu`` (TensorFlow NMT's ``compute_bleu`` on 13a tokens,
no smoothing), ROUGE-L is the ``rouge-score`` package's F-measure (the library ``evaluate`` wraps; written
out here, so it needs no extra package), CIDEr-D is pycocoevalcap's (n = 4, sigma = 6, x10). METEOR needs
WordNet data, not available offline: CIDEr-D replaces it. Every result says which implementation produced it;
a metric that cannot be computed at all is recorded as unavailable (score ``None``, the reason in its
implementation) and the others are still returned.
"""

from __future__ import annotations

import collections
import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from encoder_foveated import attention_entropy
from layout_foveated import IGNORE_INDEX

from .data.boxes import box_patch_masks, crop_boxes, target_box_coverage

logger = logging.getLogger(__name__)

COVERAGE_MASS = 0.9
"""Attention coverage: the fraction of patches that together hold this much of the mass."""
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
BLEU_MAX_ORDER = 4
CIDER_MAX_ORDER = 4
CIDER_SIGMA = 6.0
CIDER_SCALE = 10.0
CAPTION_METRICS = ("bleu", "rouge_l", "cider")
EVALUATE_NAMES = {"bleu": "bleu", "rouge_l": "rouge"}
FIRST_SCORED_FRAME = 1
"""Masses in a box are averaged from this frame index on: frame 0 of a video is read before any frame was seen
(by ``q_init``, or planned from the prompt alone), so "where the plan looks" starts at frame 2."""


def scored_frames_mask(frame_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` valid-frame mask -> ``[N]`` bool over the valid frames in (video, time) order: True from each
    video's ``FIRST_SCORED_FRAME``-th valid frame on (frames 2..T)."""
    frame_mask = frame_mask.bool()
    return (frame_mask.long().cumsum(1) > FIRST_SCORED_FRAME)[frame_mask]


BACKENDS = ("auto", "evaluate", "builtin")

__all__ = [
    "BACKENDS",
    "CAPTION_METRICS",
    "COVERAGE_MASS",
    "FIRST_SCORED_FRAME",
    "attention_coverage",
    "attention_entropy",
    "attention_mass_in_box",
    "bleu",
    "bootstrap_ci",
    "box_patch_masks",
    "caption_metrics",
    "cider_d",
    "cosine_similarity_across_frames",
    "crop_boxes",
    "psnr",
    "ratio_of_means",
    "rouge_l",
    "rouge_l_fmeasure",
    "scored_frames_mask",
    "ssim",
    "target_box_coverage",
    "token_log_likelihoods",
    "tokenize_13a",
    "tokenize_rouge",
]


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------


def _check_pair(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
        )
    if prediction.dim() < 2:
        raise ValueError(f"images must be [N, ...], got shape {tuple(prediction.shape)}")


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: ``[N, ...]`` pairs -> ``[N]`` (``inf`` where identical).

    ``10 log10(data_range^2 / MSE)``, the MSE taken over every value of the image.
    """
    _check_pair(prediction, target)
    mse = (prediction.double() - target.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    """Normalised 2-D Gaussian ``[channels, 1, size, size]`` for a depthwise convolution."""
    coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(coordinates**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return torch.outer(kernel, kernel).expand(channels, 1, size, size).contiguous()


def ssim(
    prediction: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image: ``[N, C, H, W]`` pairs -> ``[N]`` (1 where identical).

    Gaussian window (11 x 11, sigma 1.5; shrunk to the largest odd size that fits small images, such as 4 x 4
    downsampled targets), statistics per channel, valid positions only, mean over channels and positions.
    """
    _check_pair(prediction, target)
    if prediction.dim() != 4:
        raise ValueError(f"ssim needs [N, C, H, W] images, got shape {tuple(prediction.shape)}")
    size = min(window_size, *prediction.shape[-2:])
    size -= 1 - size % 2
    window = _gaussian_window(size, sigma, prediction.shape[1])
    x, y = prediction.double(), target.double()

    def blur(values: torch.Tensor) -> torch.Tensor:
        return F.conv2d(values, window, groups=values.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    covariance = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return index.flatten(1).mean(1).float()


# ----------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------


def attention_coverage(attention: torch.Tensor, mass: float = COVERAGE_MASS) -> torch.Tensor:
    """Fraction of patches that hold ``mass`` of each attention map: ``[..., P]`` -> ``[...]``.

    The smallest k such that the k largest weights sum to at least ``mass``, divided by P: 1/P for a one-hot
    map, ``ceil(mass * P) / P`` for a uniform one.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must lie in (0, 1], got {mass}")
    ordered = attention.double().sort(dim=-1, descending=True).values
    cumulative = ordered.cumsum(-1) / ordered.sum(-1, keepdim=True)
    needed = (cumulative < mass - 1e-9).sum(-1) + 1
    return (needed.double() / attention.shape[-1]).float()


def attention_mass_in_box(attention: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """Attention mass inside a box: ``[N, P]`` maps and ``[N, P]`` patch coverage fractions -> ``[N]``.

    The maps are the patch part of the query's full attention distribution (the model's ``attention_fine``), not
    renormalised: mass on CLS, registers or the query's own key counts as outside the box. A patch the box covers
    partly counts with its covered fraction. The chance level (the mass a uniform map over the patches puts in the
    box) is ``box_masks.mean(-1)``, the box's area fraction.
    """
    if attention.shape != box_masks.shape:
        raise ValueError(f"attention {tuple(attention.shape)} and box masks {tuple(box_masks.shape)} differ")
    return (attention.double() * box_masks.double()).sum(-1).float()


# ----------------------------------------------------------------------------------------------------
# Query collapse
# ----------------------------------------------------------------------------------------------------


def cosine_similarity_across_frames(vectors: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct frames of one clip: ``[T, D]`` -> float (nan if T < 2).

    Near 1 means the queries (or visual tokens) hardly change from frame to frame: the collapse symptom.
    """
    if vectors.dim() != 2:
        raise ValueError(f"vectors must be [T, D], got shape {tuple(vectors.shape)}")
    count = vectors.shape[0]
    if count < 2:
        return float("nan")
    unit = F.normalize(vectors.double(), dim=-1)
    similarity = unit @ unit.T
    off_diagonal = similarity.sum() - similarity.diagonal().sum()
    return float(off_diagonal / (count * (count - 1)))


# ----------------------------------------------------------------------------------------------------
# Uncertainty
# ----------------------------------------------------------------------------------------------------


def ratio_of_means(samples: np.ndarray) -> float:
    """Statistic for paired samples ``[n, 2]``: ``mean(column 0) / mean(column 1)``."""
    return float(samples[:, 0].mean() / samples[:, 1].mean())


def _mean_of_rows(samples: np.ndarray) -> float:
    return float(np.mean(samples))


def bootstrap_ci(
    samples: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = _mean_of_rows,
    num_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap confidence interval of ``statistic`` over independent rows of ``samples``.

    Args:
        samples: ``[n]`` values or ``[n, k]`` paired rows (e.g. per-clip (loss_coarse, loss_fine) with
            :func:`ratio_of_means`); rows are resampled with replacement.
        statistic: maps a resampled ``[n, ...]`` array to a float (default: the mean).

    Returns:
        ``{"estimate": statistic(samples), "low", "high", "confidence", "n"}``.
    """
    values = np.asarray(samples, dtype=np.float64)
    if values.ndim == 0 or len(values) == 0:
        raise ValueError("bootstrap_ci needs at least one sample")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(values), size=(num_resamples, len(values)))
    replicates = np.array([statistic(values[index]) for index in rows])
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(replicates, [tail, 100 - tail])
    return {
        "estimate": statistic(values),
        "low": float(low),
        "high": float(high),
        "confidence": confidence,
        "n": len(values),
    }


# ----------------------------------------------------------------------------------------------------
# Answer scoring
# ----------------------------------------------------------------------------------------------------


def token_log_likelihoods(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood of the supervised tokens of each row under next-token ``logits``.

    Args:
        logits: ``[B, L, V]``; position i predicts token i + 1.
        labels: ``[B, L]`` token ids, ``-100`` for tokens that are not scored.

    Returns:
        ``(sum [B], count [B])``: the summed log-probabilities of the scored tokens and how many there are
        (the mean is ``sum / count``; the caption cross-entropy is ``-sum / count``).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    log_probs = logits[:, :-1].float().log_softmax(-1)
    picked = log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * scored).sum(1), scored.sum(1)


# ----------------------------------------------------------------------------------------------------
# Caption metrics
# ----------------------------------------------------------------------------------------------------

_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)
_HTML_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))


def tokenize_13a(text: str) -> list[str]:
    """The 13a tokenizer of mteval-v13a.pl (SacreBLEU's default and ``evaluate``'s BLEU): punctuation apart."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, character in _HTML_ENTITIES:
        text = text.replace(entity, character)
    text = f" {text} "
    for pattern, replacement in _13A_RULES:
        text = pattern.sub(replacement, text)
    return text.split()


def _ngrams(tokens: Sequence[str], max_order: int) -> collections.Counter:
    return collections.Counter(
        tuple(tokens[i : i + order])
        for order in range(1, max_order + 1)
        for i in range(len(tokens) - order + 1)
    )


def _check_corpus(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"need one reference list per prediction, got {len(predictions)} and {len(references)}"
        )
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not r for r in refs):
        raise ValueError("every prediction needs at least one reference")
    return refs


def bleu(
    predictions: Sequence[str], references: Sequence[Sequence[str] | str], max_order: int = BLEU_MAX_ORDER
):
    """Corpus BLEU exactly as ``evaluate``'s ``bleu`` (TensorFlow NMT ``compute_bleu``, 13a, no smoothing).

    Returns ``{"bleu", "precisions", "brevity_penalty", "length_ratio", "translation_length",
    "reference_length"}``; the reference length of a prediction is its shortest reference's, as there.
    """
    refs = _check_corpus(predictions, references)
    matches = [0] * max_order
    possible = [0] * max_order
    reference_length = translation_length = 0
    for prediction, candidates in zip(predictions, refs):
        tokens = tokenize_13a(prediction)
        ref_tokens = [tokenize_13a(r) for r in candidates]
        reference_length += min(len(r) for r in ref_tokens)
        translation_length += len(tokens)
        merged: collections.Counter = collections.Counter()
        for ref in ref_tokens:
            merged |= _ngrams(ref, max_order)
        for ngram, count in (_ngrams(tokens, max_order) & merged).items():
            matches[len(ngram) - 1] += count
        for order in range(1, max_order + 1):
            possible[order - 1] += max(0, len(tokens) - order + 1)
    precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible)]
    geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order) if min(precisions) > 0 else 0.0
    ratio = translation_length / reference_length if reference_length else 0.0
    penalty = 1.0 if ratio > 1.0 else (math.exp(1 - 1 / ratio) if ratio > 0 else 0.0)
    return {
        "bleu": geo_mean * penalty,
        "precisions": precisions,
        "brevity_penalty": penalty,
        "length_ratio": ratio,
        "translation_length": translation_length,
        "reference_length": reference_length,
    }


_ROUGE_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def tokenize_rouge(text: str) -> list[str]:
    """``rouge-score``'s default tokenizer without stemming: lower case, runs of ``[a-z0-9]`` (all else splits)."""
    return _ROUGE_NON_ALPHANUMERIC.sub(" ", text.lower()).split()


def _lcs_length(reference: Sequence[str], candidate: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, one row kept)."""
    previous = [0] * (len(candidate) + 1)
    for token in reference:
        current = [0]
        for j, other in enumerate(candidate):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_fmeasure(reference: str, prediction: str) -> float:
    """ROUGE-L F-measure of one pair as ``rouge-score``'s ``_score_lcs``: 0 if either side has no tokens."""
    ref_tokens, pred_tokens = tokenize_rouge(reference), tokenize_rouge(prediction)
    if not ref_tokens or not pred_tokens:
        return 0.0
    lcs = _lcs_length(ref_tokens, pred_tokens)
    precision, recall = lcs / len(pred_tokens), lcs / len(ref_tokens)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str] | str]) -> dict[str, float]:
    """Mean ROUGE-L F-measure, as ``rouge-score``'s ``RougeScorer(["rougeL"]).score_multi`` (no stemming; the
    best reference per prediction), without needing that package: ``{"rouge_l"}``."""
    refs = _check_corpus(predictions, references)
    scores = [
        max(rouge_l_fmeasure(reference, prediction) for reference in candidates)
        for prediction, candidates in zip(predictions, refs)
    ]
    return {"rouge_l": float(np.mean(scores))}


def _cider_tokens(text: str) -> list[str]:
    """Lower-cased words without punctuation (what the COCO PTB tokenizer leaves)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def cider_d(
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
    max_order: int = CIDER_MAX_ORDER,
    sigma: float = CIDER_SIGMA,
) -> dict[str, Any]:
    """CIDEr-D as pycocoevalcap's ``CiderScorer``: TF-IDF n-gram cosine, clipped, Gaussian length penalty, x10.

    Document frequencies come from the references of this corpus (so a corpus of one clip scores 0, as
    there). Faithful to the reference code including its length: the number of bigrams (its ``n == 1``).

    Returns ``{"cider": corpus mean, "per_caption": [...]}``.
    """
    refs = _check_corpus(predictions, references)
    hypotheses = [_ngrams(_cider_tokens(p), max_order) for p in predictions]
    reference_counts = [[_ngrams(_cider_tokens(r), max_order) for r in candidates] for candidates in refs]
    document_frequency: collections.Counter = collections.Counter()
    for counts in reference_counts:
        document_frequency.update({ngram for count in counts for ngram in count})
    log_corpus = math.log(len(refs))

    def vectorise(counts: collections.Counter):
        vectors = [dict() for _ in range(max_order)]
        norms = [0.0] * max_order
        length = 0
        for ngram, frequency in counts.items():
            order = len(ngram) - 1
            value = frequency * (log_corpus - math.log(max(1.0, document_frequency[ngram])))
            vectors[order][ngram] = value
            norms[order] += value**2
            if order == 1:
                length += frequency
        return vectors, [math.sqrt(n) for n in norms], length

    def similarity(hypothesis, reference) -> np.ndarray:
        (vec_h, norm_h, len_h), (vec_r, norm_r, len_r) = hypothesis, reference
        penalty = math.exp(-((len_h - len_r) ** 2) / (2 * sigma**2))
        values = np.zeros(max_order)
        for order in range(max_order):
            for ngram, value in vec_h[order].items():
                ref_value = vec_r[order].get(ngram, 0.0)
                values[order] += min(value, ref_value) * ref_value
            if norm_h[order] and norm_r[order]:
                values[order] /= norm_h[order] * norm_r[order]
            values[order] *= penalty
        return values

    scores = []
    for hypothesis, candidates in zip(hypotheses, reference_counts):
        vector = vectorise(hypothesis)
        total = sum(similarity(vector, vectorise(ref)) for ref in candidates)
        scores.append(float(np.mean(total) / len(candidates) * CIDER_SCALE))
    return {"cider": float(np.mean(scores)), "per_caption": scores}


_BUILTIN: dict[str, tuple[Callable[..., dict[str, Any]], str]] = {
    "bleu": (bleu, "bleu"),
    "rouge_l": (rouge_l, "rouge_l"),
    "cider": (cider_d, "cider"),
}
"""Metric -> (built-in function, key of its result)."""
_EVALUATE_RESULT_KEYS = {"bleu": "bleu", "rouge_l": "rougeL"}
_evaluate_cache: dict[str, Any] = {}


def _evaluate_metric(name: str):
    """``evaluate.load(name)`` once per process; the exception if it cannot be loaded (offline, no script)."""
    if name not in _evaluate_cache:
        try:
            import evaluate

            _evaluate_cache[name] = evaluate.load(name)
        except Exception as error:  # noqa: BLE001 (any failure to load means: use the built-in one)
            _evaluate_cache[name] = error
    return _evaluate_cache[name]


UNAVAILABLE = "unavailable"
"""Prefix of the implementation recorded for a metric that could not be computed (its score is ``None``)."""


def caption_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str] | str], backend: str = "auto"
) -> tuple[dict[str, float | None], dict[str, str]]:
    """BLEU-4, ROUGE-L and CIDEr-D of generated captions against references.

    Args:
        backend: ``"auto"`` tries ``evaluate`` (bleu, rouge: load and compute) and falls back to the built-in
            code with a one-line notice; ``"evaluate"`` fails if it cannot; ``"builtin"`` skips ``evaluate``.
            CIDEr-D always uses the built-in code (``evaluate`` ships no CIDEr).

    Returns:
        ``(scores, implementations)``: ``{"bleu", "rouge_l", "cider"}`` and, per metric, which code made it.
        A metric whose every implementation fails is ``None``, its implementation ``"unavailable (reason)"``
        (logged as a warning); the other metrics are still computed, so a report can always be written.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    refs = _check_corpus(predictions, references)
    scores: dict[str, float | None] = {}
    implementations: dict[str, str] = {}
    for name in CAPTION_METRICS:
        function, key = _BUILTIN[name]
        if backend != "builtin" and name in EVALUATE_NAMES:
            evaluate_name = EVALUATE_NAMES[name]
            loaded = _evaluate_metric(evaluate_name)
            try:
                if isinstance(loaded, Exception):
                    raise loaded
                result = loaded.compute(predictions=list(predictions), references=refs)
                scores[name] = float(result[_EVALUATE_RESULT_KEYS[name]])
                implementations[name] = f"evaluate.load({evaluate_name!r})"
                continue
            except Exception as error:  # noqa: BLE001 (offline, no script, a missing package: use ours)
                if backend == "evaluate":
                    raise ValueError(f"evaluate.load({evaluate_name!r}) failed: {error}") from error
                logger.warning(
                    "%s: evaluate.load(%r) is unavailable (%s); using foveated_vlm.metrics.%s",
                    name,
                    evaluate_name,
                    type(error).__name__,
                    function.__name__,
                )
        try:
            scores[name] = float(function(predictions, refs)[key])
            implementations[name] = f"foveated_vlm.metrics.{function.__name__}"
        except Exception as error:  # noqa: BLE001 (one metric failing must not lose the others)
            reason = f"{type(error).__name__}: {error}"
            logger.warning("%s could not be computed and is recorded as unavailable (%s)", name, reason)
            scores[name] = None
            implementations[name] = f"{UNAVAILABLE} ({reason})"
    return scores, implementations
