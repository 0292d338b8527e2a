"""The foveated VLM as an lmms-eval model: video benchmarks (MVBench, Video-MME, MLVU, EgoSchema, ...) the way
the field runs them.

    python -m lmms_eval --model foveated_vlm --model_args pretrained=PATH,inference_mode=coarse \\
        --tasks mvbench --batch_size 8 --output_path OUT

lmms-eval finds the model through the ``lmms_eval.models`` entry point that ``pyproject.toml`` declares
(:func:`manifest`); run it from the repository root, where ``eval`` imports. Model arguments (``--model_args``):

- ``pretrained``: a saved model folder (``RUN/final``) or a Hub id.
- ``inference_mode``: ``two_pass`` (the planned reading: coarse plans, fine reads; the default) or ``coarse``
  (the static query alone), so planned against static is one flag on any benchmark.
- ``max_frames`` / ``fps``: how frames are sampled from each video (at most ``max_frames`` spread uniformly, or
  ``fps`` per second); neither: the sampling the processor recorded in training (the trained frame count).
- ``device`` (default ``cuda`` when there is one), ``dtype`` (``float32``, ``bfloat16``, ``float16``),
  ``batch_size`` (questions per forward pass; lmms-eval's ``--batch_size`` sets it too).

``loglikelihood`` scores each continuation as the assistant's whole answer (leading whitespace, a task's target
delimiter, dropped), closed by the end-of-turn token, through :func:`eval.mcq.option_scores` (the scorer
``eval.mcq`` uses): the requests of one question share one reading of its prompt and video. It returns the summed
log-probability (lmms-eval's contract) and whether greedy decoding writes exactly that answer. ``generate_until`` decodes greedily (sampling when a task asks for it) and
cuts the text at the task's stop strings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

from eval.captioning import DEFAULT_MAX_NEW_TOKENS
from eval.common import DTYPES, load_model
from eval.mcq import option_scores
from video_foveated import check_sampling

MODEL_ID = "foveated_vlm"
"""The name lmms-eval knows this model by (``--model foveated_vlm``)."""
READINGS = ("two_pass", "coarse")
"""The two readings ``inference_mode`` selects: planned (``two_pass``) and static (``coarse``)."""
DEFAULT_BATCH_SIZE = 1
"""Questions per forward pass unless ``batch_size`` says otherwise (lmms-eval's own default)."""


def manifest() -> ModelManifest:
    """The ``lmms_eval.models`` entry point: registers :class:`FoveatedVLM` as ``foveated_vlm``."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.{FoveatedVLM.__name__}")


def sampling_of(processor, max_frames: int | None, fps: float | None) -> dict[str, int | float]:
    """The processor's ``num_frames`` / ``fps`` arguments: the model arguments', else the processor's recorded
    sampling; a ValueError naming the model arguments when neither says how to sample."""
    check_sampling(max_frames, fps)
    if max_frames is not None:
        return {"num_frames": max_frames}
    if fps is not None:
        return {"fps": fps}
    if processor.num_frames is not None:
        return {"num_frames": processor.num_frames}
    if processor.fps is not None:
        return {"fps": processor.fps}
    raise ValueError(
        "the saved processor records no frame sampling: pass max_frames=N or fps=F in --model_args"
    )


def video_of(visuals: Any, doc_id: int) -> Any:
    """The one video a document shows: a file path (a one-element list of it too) or a list of frames."""
    if isinstance(visuals, (list, tuple)) and len(visuals) == 1:
        visuals = visuals[0]
    if visuals is None or (isinstance(visuals, (list, tuple)) and not visuals):
        raise ValueError(f"document {doc_id} has no video: foveated_vlm reads one video per question")
    if isinstance(visuals, (list, tuple)) and any(isinstance(v, str) for v in visuals):
        raise ValueError(
            f"document {doc_id} gives {len(visuals)} videos: foveated_vlm reads one per question"
        )
    return visuals


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first of the stop strings ``until``."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def chunks(items: list, size: int) -> list[list]:
    """``items`` in consecutive lists of at most ``size``."""
    return [items[start : start + size] for start in range(0, len(items), size)]


class FoveatedVLM(lmms):
    """lmms-eval's simple-model interface over a saved foveated VLM (see the module docstring)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        inference_mode: str = "two_pass",
        max_frames: int | None = None,
        fps: float | None = None,
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int | str = DEFAULT_BATCH_SIZE,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            raise ValueError(f"unknown model arguments {sorted(unused)}; see eval/lmms_model.py")
        if inference_mode not in READINGS:
            raise ValueError(f"inference_mode must be one of {READINGS}, got {inference_mode!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.processor = load_model(pretrained, device, dtype)
        self.inference_mode = inference_mode
        self.sampling = sampling_of(self.processor, max_frames, fps)
        self.batch_size = int(batch_size)

    def _video(self, request: Instance) -> Any:
        """The video of a request's document (its ``doc_to_visual``)."""
        *_, doc_to_visual, doc_id, task, split = request.args
        return video_of(doc_to_visual(self.task_dict[task][split][doc_id]), doc_id)

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(summed log-probability, is greedy)`` of each request's continuation after its context and video."""
        questions: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            context, _, _, doc_id, task, split = request.args
            questions.setdefault((task, split, doc_id, context), []).append(index)
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for batch in chunks(list(questions.items()), self.batch_size):
            scores = option_scores(
                self.model,
                self.processor,
                [key[-1] for key, _ in batch],
                [self._video(requests[indices[0]]) for _, indices in batch],
                [[requests[i].args[1].lstrip() for i in indices] for _, indices in batch],
                self.inference_mode,
                **self.sampling,
            )
            for (_, indices), question_scores in zip(batch, scores, strict=True):
                for index, score in zip(indices, question_scores, strict=True):
                    results[index] = (score.total, score.greedy)
        return results

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Each request's answer to its context and video, decoded under the task's generation arguments."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        results = [""] * len(requests)
        for indices in groups.values():
            generation = dict(requests[indices[0]].args[1])
            until = generation.pop("until", [])
            until = [until] if isinstance(until, str) else list(until)
            for batch in chunks(indices, self.batch_size):
                texts = self._generate([requests[i] for i in batch], generation)
                for index, text in zip(batch, texts, strict=True):
                    results[index] = cut_at_stops(text, until).strip()
        return results

    def _generate(self, requests: list[Instance], generation: dict[str, Any]) -> list[str]:
        """Decoded answers of one batch of requests that share their generation arguments."""
        inputs = self.processor(
            text=[request.args[0] for request in requests],
            videos=[self._video(request) for request in requests],
            **self.sampling,
        ).to(self.model.device)
        do_sample = bool(generation.get("do_sample", False)) and float(generation.get("temperature", 0)) > 0
        sampling = {
            key: generation[key] for key in ("temperature", "top_p") if do_sample and key in generation
        }
        generated = self.model.generate(
            **inputs,
            max_new_tokens=int(generation.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
            do_sample=do_sample,
            inference_mode=self.inference_mode,
            **sampling,
        )
        return self.processor.decode_generated(generated, inputs)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "foveated_vlm answers one turn per video: multi-round tasks are not supported"
        )
