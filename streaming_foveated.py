"""Streaming inference of the foveated VLM: frame by frame (or chunk by chunk) with one KV cache per stream.

A :class:`FoveatedStream` is opened on a prompt that ends with ``<video_start>``; the text is run through the
LLM once and its cache copied into both streams before each stream reads its own mode embedding at
``<video_start>``. Then every frame costs one encoder patch pass (its per-layer K/V, kept only while the frame
is read), two query passes through those K/V and one LLM step in each stream:

* coarse stream (planning): the static query reads frame t, the LLM state at frame t gives the query q_t that
  will read frame t+1;
* fine stream (reading): q_{t-1} (``q_init`` for frame 1) reads frame t, the LLM state at frame t and frame t's
  target predict the target of frame t+1.

Each cache grows by exactly one position per frame: nothing is re-scattered and no earlier frame is recomputed.
Because the LLM is causal, this is the parallel two-pass forward of training computed step by step (proposal
§8.3): the same queries, predictions and caption logits up to float rounding. ``caption()`` appends
``<video_end>`` and the template tokens that follow it and hands the fine cache to ``model.generate``, so the
decoding is ``generate``'s own (greedy, sampling, beam search, every generation argument).

Batches of streams: row b of a batch is one stream. Prompts of different lengths are left padded.
``step(frames, active)`` / ``extend(frames, frame_mask)`` advance every cache by one column per frame slot; a
row whose slot is inactive (its video has ended, or has not started) gets a masked placeholder there, which takes
no position and is never attended to, so the row does not advance. A padded batch from the processor is driven
by ``extend(pixel_values_videos, video_frame_mask)`` or by ``step(pixel_values_videos[:, t],
video_frame_mask[:, t])`` for t = 0, 1, ...

Long videos: at one token per frame an hour at 1 fps is 3,600 positions. ``extend`` runs the frames in chunks of
``chunk_frames``: one patch pass per chunk (the only per-frame K/V ever held: chunk_frames x layers x S x D),
the static reads, one coarse LLM prefill of the chunk against the coarse cache, the fine reads with the queries
that prefill planned (frame t needs q_{t-1}, which only depends on frames <= t-1, so the chunk's own patch K/V
serve both passes), and one fine LLM prefill of the chunk. Compared with one parallel forward over the whole
video this holds the encoder K/V of one chunk instead of all frames (17 GB in bf16 for 3,600 frames of ViT-S
at 256 px) and runs the patch pass once per frame instead of twice (a coarse prefill over all frames would need
the patch K/V again for the fine reads); the LLM work is the same, split into chunk-sized prefills.

Fast path (``max_frames``, ``streaming_static_foveated.py``): ``model.stream(..., max_frames=N)`` reserves static
KV caches of prompt + N positions (transformers ``StaticCache``) and keeps the attention mask, positions, next
query, frame and target in fixed buffers, so that :meth:`FoveatedStream.step` does the same work without allocating or synchronising: on CUDA the
whole frame (patch pass, query passes, LLM steps, head) is one replayed CUDA graph (``cuda_graph``, on by default
there), on the CPU it runs eagerly. By default (``fuse_passes``) the static and the planned query read the frame
as one query pass of two tokens per frame (each token sees the cached patch K/V and its own key only, so this is
the two separate passes), and the coarse and fine LLM steps run as one batch-2 call over one cache (row block 0
coarse, 1 fine): both depend on frame t and the previous state only. ``torch_compile=True`` compiles the
encoder's patch and query layers and the whole LLM decoder inside that graph. Results equal the general path
(the tests check float32 to 1e-5). ``extend``, ``caption`` and the ``caches``/``input_ids``/``attention_mask``
attributes see the static state (converted back on demand), and ``step`` after ``extend`` reloads it; reading
more than ``max_frames`` frames raises a ``ValueError``. ``caption(static_cache=True)`` decodes greedily over a
static cache, one CUDA graph replay per token, instead of ``generate``'s eager loop.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import BatchFeature, DynamicCache
from transformers.modeling_outputs import ModelOutput
from transformers.utils import logging

try:
    from .configuration_foveated import INFERENCE_MODES
    from .layout_foveated import COARSE, FINE, check_pixel_values, check_token_ids
    from .processing_foveated import VIDEO_START_TOKEN, check_prompt_text
    from .streaming_static_foveated import DynamicState, SharedBuffers, StaticDecoder, StaticStepper
except ImportError:  # imported as a top-level module from a checkout of the repository
    from configuration_foveated import INFERENCE_MODES
    from layout_foveated import COARSE, FINE, check_pixel_values, check_token_ids
    from processing_foveated import VIDEO_START_TOKEN, check_prompt_text
    from streaming_static_foveated import DynamicState, SharedBuffers, StaticDecoder, StaticStepper

DEFAULT_CHUNK_FRAMES = 128  # frames per encoder pass in extend(): bounds the patch K/V held at once
DEFAULT_MAX_NEW_TOKENS = 64
MODE_PASSES = {"two_pass": (COARSE, FINE), "coarse": (COARSE,)}  # the passes each of INFERENCE_MODES runs


@dataclass
class StreamStep(ModelOutput):
    """What a stream read and predicted in one ``extend`` (shapes ``[B, n, ...]``) or ``step`` (``[B, ...]``).

    Entries whose ``frame_mask`` is False (inactive streams) hold zeros.

    Args:
        predictions: ``[B, n, C, h, w]`` predicted target of the frame after each frame (only with targets).
        queries: ``[B, n, Q]`` query that read each frame in the reading stream (``q_init``/planned queries in
            two-pass mode, the static query in coarse mode).
        next_queries: ``[B, Q]`` query that will read each stream's next frame.
        attention: ``[B, n, P]`` attention over patches of the query that read each frame (mean over heads).
        attention_coarse: ``[B, n, P]`` attention of the static query (the coarse stream's reading).
        frame_mask: ``[B, n]`` True where a frame was read.
    """

    predictions: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    next_queries: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    attention_coarse: torch.Tensor | None = None
    frame_mask: torch.Tensor | None = None


def stream_prompt_inputs(processor, text: str | Sequence[str]) -> BatchFeature:
    """Inputs of :class:`FoveatedStream` for prompts formatted exactly as the processor formats them.

    The processor's chat text for a video is ``prefix + frames + suffix``; the prefix ends with
    ``<video_start>`` and the suffix is ``<video_end>`` plus the template tokens that open the answer.

    Returns:
        ``input_ids``, ``attention_mask`` ``[B, L0]`` (prefixes, left padded) and ``suffix_ids`` ``[S]``, ready for
        ``model.stream(**inputs)``.
    """
    prompts = [text] if isinstance(text, str) else list(text)
    if not prompts:
        raise ValueError("text is an empty list of prompts")
    check_prompt_text(prompts, "text")
    parts = [processor.format_prompt(prompt, 0).partition(VIDEO_START_TOKEN) for prompt in prompts]
    suffixes = {suffix for _, _, suffix in parts}
    if len(suffixes) != 1:
        raise ValueError(f"the prompts end their video blocks differently: {sorted(suffixes)}")
    tokenizer = processor.tokenizer
    prefixes = tokenizer(
        [head + start for head, start, _ in parts],
        add_special_tokens=False,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    suffix_ids = tokenizer(suffixes.pop(), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    return BatchFeature(
        {
            "input_ids": prefixes["input_ids"],
            "attention_mask": prefixes["attention_mask"],
            "suffix_ids": suffix_ids,
        }
    )


class FoveatedStream:
    """A frame-by-frame session of :class:`FoveatedVLMForConditionalGeneration` (see the module docstring).

    Args:
        model: a foveated (not dense) model in eval mode.
        input_ids: ``[B, L0]`` prompt ids ending with ``<video_start>`` in every row (left padded), e.g. from
            :func:`stream_prompt_inputs`.
        attention_mask: ``[B, L0]`` 1 for tokens, 0 for left padding (default all ones).
        suffix_ids: ``[S]`` ids that follow the last frame before the answer (``<video_end>`` first); needed by
            :meth:`caption`.
        inference_mode: ``"two_pass"`` (coarse plans, fine reads) or ``"coarse"`` (one stream, static query);
            defaults to ``config.inference_mode``.
        chunk_frames: frames per encoder pass in :meth:`extend`.
        max_frames: reserve static KV caches for this many frame slots (``step`` and ``extend`` together) and
            run :meth:`step` on the fast path (see the module docstring). ``None``: growing ``DynamicCache``s.
        cuda_graph: replay each fast step as one CUDA graph (needs ``max_frames``); default: when the model is on
            CUDA. The first step captures it (3 eager warm-up runs, state rewound); a step with and one without
            ``targets`` each get their own graph.
        torch_compile: ``torch.compile`` the encoder's patch and query layers and the whole LLM decoder used by the
            fast step (needs ``max_frames``; off by default: compiling takes tens of seconds). The model itself is
            left as it was.
        fuse_passes: on the fast path, read with both queries in one query pass and run both LLM steps as one
            batch-2 call (same results, fewer and larger kernels).

    Attributes:
        input_ids, attention_mask: ``[B, L]`` everything the caches hold (frame placeholders included).
        caches: ``{COARSE: DynamicCache, FINE: DynamicCache}`` (only COARSE in coarse mode).
        next_queries: ``[B, Q]`` query that will read each stream's next frame.
        initial_prediction: ``[B, C, h, w]`` predicted target of frame 1 (from the ``<video_start>`` state).
        num_frames: ``[B]`` frames read so far per stream.

    Example:
        >>> stream = model.stream(**stream_prompt_inputs(processor, "Describe the video."))
        >>> for pixels, target in zip(inputs["pixel_values_videos"][0], inputs["prediction_targets"][0]):
        ...     step = stream.step(pixels[None], targets=target[None])  # step.predictions: next frame's target
        >>> processor.batch_decode(stream.caption(max_new_tokens=32), skip_special_tokens=True)
        >>> fast = model.stream(**stream_prompt_inputs(processor, "Describe the video."), max_frames=600)
        >>> step = fast.step(pixels[None], targets=target[None])  # static caches, one CUDA graph per frame
        >>> fast.caption(max_new_tokens=64, static_cache=True)  # greedy, one CUDA graph per token
    """

    def __init__(
        self,
        model,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        suffix_ids: torch.Tensor | Sequence[int] | None = None,
        inference_mode: str | None = None,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        max_frames: int | None = None,
        cuda_graph: bool | None = None,
        torch_compile: bool = False,
        fuse_passes: bool = True,
    ):
        config = model.config
        if config.foveation_mode != "foveated":
            raise ValueError(
                f"streaming reads one query token per frame; foveation_mode={config.foveation_mode!r} has no queries: "
                "use model.generate(**processor(text=..., videos=...))"
            )
        if config.num_queries_per_frame != 1:
            raise ValueError(
                f"streaming reads one query per frame; num_queries_per_frame={config.num_queries_per_frame} runs "
                "through model(...) and model.generate(...)"
            )
        if config.tokens_per_frame != 1:
            raise ValueError(
                f"streaming gives the LLM one token per frame; frame_reader={config.frame_reader!r} gives "
                f"{config.tokens_per_frame}: run it through model(...) and model.generate(...)"
            )
        if model.training:
            raise ValueError(
                "call model.eval() before streaming (training mode rescales the ViT's RoPE at random)"
            )
        mode = inference_mode or config.inference_mode
        if mode not in INFERENCE_MODES:
            raise ValueError(f"inference_mode must be one of {INFERENCE_MODES}, got {mode!r}")
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        if max_frames is None and (cuda_graph or torch_compile):
            raise ValueError("cuda_graph and torch_compile apply to the fast step: pass max_frames too")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if cuda_graph and model.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the model on a CUDA device, it is on {model.device}")
        self.model = model
        self.modes = MODE_PASSES[mode]
        self.chunk_frames = chunk_frames
        device = model.device
        input_ids = torch.as_tensor(input_ids, device=device)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        self._input_ids = input_ids
        self._attention_mask = torch.as_tensor(attention_mask, device=device).long()
        self._validate_prompt()
        self.suffix_ids = None if suffix_ids is None else self._validate_suffix(suffix_ids)
        batch = input_ids.shape[0]
        # updated in place by both paths (the fast step's graph holds their addresses)
        self.num_frames = torch.zeros(batch, dtype=torch.long, device=device)
        self.next_queries = self._start_queries(batch).detach().clone()
        self._static: StaticStepper | None = None
        self._first_frame_checked = False  # the fast step checks pixel values on its first frame only
        if max_frames is not None:
            try:
                self._check_context(torch.full_like(self.num_frames, max_frames))
            except ValueError as error:
                raise ValueError(f"max_frames={max_frames} does not fit: {error}") from None
            self._static = StaticStepper(
                model,
                self.modes,
                input_ids.shape[1],
                max_frames,
                SharedBuffers(self.next_queries, self.num_frames),
                self._predict,
                cuda_graph=device.type == "cuda" if cuda_graph is None else cuda_graph,
                torch_compile=torch_compile,
                fuse_passes=fuse_passes,
            )
        self.initial_prediction = self._open_streams()

    @property
    def reading_mode(self) -> int:
        """The stream whose cache captions and whose states predict targets (fine, or coarse in coarse mode)."""
        return self.modes[-1]

    @property
    def batch_size(self) -> int:
        return self._input_ids.shape[0]

    @property
    def frames_that_fit(self) -> int:
        """How many more frames every stream can read before prompt + frames + suffix exceed the context.

        After fast steps it reads the static state (positions per row, columns) instead of exporting the caches.
        """
        if self._static is not None and self._static.ahead:
            used, columns = self._static.context_used()
        else:
            used, columns = self._attention_mask.sum(1), self._attention_mask.shape[1]
        free = self._max_positions - used - self._suffix_length
        fit = max(0, int(free.min()) // self.model.config.tokens_per_frame)
        if self._static is not None:
            fit = min(fit, self._static.total - columns)
        return fit

    # ---------------------------------------------------------------------------- state (both paths)
    @property
    def caches(self) -> dict[int, DynamicCache]:
        self._sync_dynamic()
        return self._caches

    @property
    def input_ids(self) -> torch.Tensor:
        self._sync_dynamic()
        return self._input_ids

    @property
    def attention_mask(self) -> torch.Tensor:
        self._sync_dynamic()
        return self._attention_mask

    def _sync_dynamic(self) -> None:
        """Bring the dynamic caches, ids and mask up to date after fast steps (a copy; the fast state stays)."""
        if self._static is not None and self._static.ahead:
            state = self._static.export(self._dynamic_state())
            self._caches, self._input_ids, self._attention_mask = (
                state.caches,
                state.input_ids,
                state.attention_mask,
            )

    def _dynamic_state(self) -> DynamicState:
        return DynamicState(self._caches, self._input_ids, self._attention_mask)

    # ------------------------------------------------------------------------------------------ set-up
    @property
    def _max_positions(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    @property
    def _suffix_length(self) -> int:
        return 0 if self.suffix_ids is None else self.suffix_ids.numel()

    def _validate_prompt(self) -> None:
        config = self.model.config
        ids, mask = self._input_ids, self._attention_mask
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, L] with L >= 1, got shape {tuple(ids.shape)}")
        if mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}"
            )
        check_token_ids(ids, self.model.get_input_embeddings().num_embeddings)
        if not (ids[:, -1] == config.video_start_token_id).all() or not mask[:, -1].bool().all():
            raise ValueError(
                "every prompt must end with <video_start> (id "
                f"{config.video_start_token_id}) in its last column (left padding): use stream_prompt_inputs()"
            )
        video_tokens = (config.frame_token_id, config.video_start_token_id, config.video_end_token_id)
        if (
            torch.isin(ids[:, :-1], torch.tensor(video_tokens, device=ids.device))
            .logical_and(mask[:, :-1].bool())
            .any()
        ):
            raise ValueError(
                "the prompt before <video_start> must not hold video tokens (frames come from step())"
            )

    def _validate_suffix(self, suffix_ids) -> torch.Tensor:
        suffix = torch.as_tensor(suffix_ids, device=self._input_ids.device).flatten().long()
        check_token_ids(suffix, self.model.get_input_embeddings().num_embeddings, "suffix_ids")
        if suffix.numel() == 0 or suffix[0] != self.model.config.video_end_token_id:
            raise ValueError(
                f"suffix_ids must start with <video_end> (id {self.model.config.video_end_token_id})"
            )
        return suffix

    def _start_queries(self, count: int) -> torch.Tensor:
        """``[count, Q]`` query that reads frame 1: ``q_init`` in two-pass mode, the static query in coarse mode."""
        if self.reading_mode == COARSE:
            return self.model.model.static_queries(count)
        return self.model.model.initial_queries(count)

    @torch.no_grad()
    def _open_streams(self) -> torch.Tensor:
        """Run the text once, copy its cache into each stream, then ``<video_start>`` with each mode embedding.

        Returns the reading stream's prediction of frame 1 ``[B, C, h, w]``.
        """
        self._caches = {self.reading_mode: DynamicCache(config=self.model.config.text_config)}
        if self._input_ids.shape[1] > 1:
            self._run_llm(self.reading_mode, self._input_ids[:, :-1], None)
        for mode in self.modes[:-1]:
            self._caches[mode] = copy.deepcopy(self._caches[self.reading_mode])
        hidden = {mode: self._run_llm(mode, self._input_ids[:, -1:], None)[:, -1] for mode in self.modes}
        if (
            self.reading_mode == FINE and self.model.config.plan_first_query
        ):  # frame 1's query reads the prompt
            self.next_queries.copy_(self.model.model.next_queries(hidden[COARSE]))
        initial = self.model.fovea_initial_target.unsqueeze(0).expand(self.batch_size, -1, -1, -1)
        return self._predict(hidden[self.reading_mode], initial)

    # ------------------------------------------------------------------------------------------ frames
    def step(
        self, frames: torch.Tensor, active: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> StreamStep:
        """Read one frame per stream.

        With ``max_frames`` this is the fast path (static caches, fixed buffers, one CUDA graph on CUDA): it never
        synchronises with the host, and its outputs are copies (valid after later steps).

        Args:
            frames: ``[B, 3, H, W]`` normalised float frames (``pixel_values_videos[:, t]``); inactive rows are
                ignored. uint8 or other non-float frames are refused; on the fast path (``max_frames``) the values
                (NaN, raw 0-255 range) are checked on the first frame only, so that later steps never synchronise.
            active: ``[B]`` bool, False for streams that do not advance (default all True).
            targets: ``[B, C, h, w]`` targets of these frames; with them ``predictions`` holds the next frame's.

        Returns:
            :class:`StreamStep` without the frame axis (``attention [B, P]``, ``predictions [B, C, h, w]``, ...).
        """
        _require_tensor(frames)
        active = None if active is None else torch.as_tensor(active).unsqueeze(1)
        if self._static is not None:
            self._validate_frames(
                frames.unsqueeze(1),
                active,
                None if targets is None else targets.unsqueeze(1),
                values=not self._first_frame_checked,
            )
            self._first_frame_checked = True
            if not self._static.current:
                self._sync_dynamic()
                self._static.load(self._dynamic_state())
            return StreamStep(**self._static.step(frames, None if active is None else active[:, 0], targets))
        output = self.extend(frames.unsqueeze(1), active, None if targets is None else targets.unsqueeze(1))
        for name, value in output.items():
            if name != "next_queries":
                output[name] = value.squeeze(1)
        return output

    @torch.no_grad()
    def extend(
        self,
        frames: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        progress: bool = False,
    ) -> StreamStep:
        """Read ``n`` frames per stream, ``chunk_frames`` at a time (see the module docstring).

        Args:
            frames: ``[B, n, 3, H, W]`` normalised frames; may live on the CPU (moved chunk by chunk).
            frame_mask: ``[B, n]`` bool, True for real frames (default all True). A False slot does not advance
                its stream.
            targets: ``[B, n, C, h, w]`` targets of these frames; enables ``predictions``.
            progress: show a progress bar over the chunks.
        """
        frame_mask = self._validate_frames(frames, frame_mask, targets)
        self._sync_dynamic()
        self._check_context(frame_mask.sum(1).to(self._attention_mask.device))
        if self._static is not None:
            self._static.check_capacity(self._attention_mask.shape[1] + frames.shape[1])
            self._static.invalidate()  # the dynamic caches move on: the next fast step reloads
        steps = []
        starts = range(0, frames.shape[1], self.chunk_frames)
        for start in logging.tqdm(starts, desc="frames", unit="chunk", disable=not progress):
            chunk = slice(start, start + self.chunk_frames)
            chunk_targets = None if targets is None else targets[:, chunk]
            steps.append(self._extend_chunk(frames[:, chunk], frame_mask[:, chunk], chunk_targets))
        merged = {name: torch.cat([step[name] for step in steps], dim=1) for name in steps[0].keys()}
        return StreamStep(**merged, next_queries=self.next_queries.clone())

    def _validate_frames(self, frames, frame_mask, targets, values: bool = True) -> torch.Tensor:
        """Shapes, and the pixels as :func:`check_pixel_values` (their values only with ``values``)."""
        config = self.model.config
        size = config.vision_config.image_size
        _require_tensor(frames)
        if (
            frames.dim() != 5
            or frames.shape[0] != self.batch_size
            or tuple(frames.shape[2:]) != (3, size, size)
        ):
            raise ValueError(
                f"frames must be [B={self.batch_size}, n, 3, {size}, {size}], got shape {tuple(frames.shape)}"
            )
        if frames.shape[1] == 0:
            raise ValueError("frames hold zero frames")
        if frame_mask is None:
            frame_mask = torch.ones(frames.shape[:2], dtype=torch.bool)
        frame_mask = torch.as_tensor(frame_mask).bool()
        if frame_mask.shape != frames.shape[:2]:
            raise ValueError(
                f"frame_mask {tuple(frame_mask.shape)} does not match frames {tuple(frames.shape[:2])}"
            )
        if targets is not None and tuple(targets.shape) != (*frames.shape[:2], *config.target_shape):
            raise ValueError(
                f"targets must be [{frames.shape[0]}, {frames.shape[1]}, {', '.join(map(str, config.target_shape))}], "
                f"got shape {tuple(targets.shape)}"
            )
        check_pixel_values(frames, frame_mask.to(frames.device), values=values, name="frames")
        return frame_mask

    def _check_context(self, new_frames: torch.Tensor, suffix_length: int | None = None) -> None:
        """ValueError if ``new_frames [B]`` more frames (and the caption suffix) overflow any stream's context."""
        suffix_length = self._suffix_length if suffix_length is None else suffix_length
        used = self._attention_mask.sum(1)
        needed = used + new_frames * self.model.config.tokens_per_frame + suffix_length
        over = (needed > self._max_positions).nonzero().flatten().tolist()
        if over:
            row = over[0]
            fit = max(
                0,
                (self._max_positions - int(used[row]) - suffix_length) // self.model.config.tokens_per_frame,
            )
            raise ValueError(
                f"stream {row}: {int(new_frames[row])} more frames need {int(needed[row])} positions but the LLM's "
                f"context holds {self._max_positions} (text_config.max_position_embeddings) and {int(used[row])} are "
                f"used, {suffix_length} kept for the caption suffix: at most {fit} more frames fit; subsample the "
                "video (a lower fps or fewer frames)"
            )

    def _extend_chunk(self, frames, frame_mask, targets) -> dict[str, torch.Tensor]:
        """One encoder pass over a chunk's frames ``[B, c, 3, H, W]`` and one LLM prefill in each stream."""
        config, states = self.model.config, self.model.model
        device = self._input_ids.device
        valid = frame_mask.to(device)  # (B, c)
        pixels = frames.to(device)[valid]  # (M, 3, H, W): the chunk's valid frames
        new_ids = torch.where(valid, config.frame_token_id, config.text_config.pad_token_id)  # (B, c)
        self._input_ids = torch.cat([self._input_ids, new_ids], dim=1)
        self._attention_mask = torch.cat([self._attention_mask, valid.long()], dim=1)
        self.num_frames += valid.sum(1)

        patches = states.encode_frames(pixels)
        static = states.static_queries(pixels.shape[0])  # (M, Q)
        visual_coarse, attention_coarse = states.read_coarse(patches)
        coarse_tokens = states.project_visual_tokens(visual_coarse, attention_coarse)  # (M, H)
        hidden = self._run_llm(COARSE, new_ids, coarse_tokens)[valid]  # (M, H)
        queries, attention, next_queries = static, attention_coarse, static
        if self.reading_mode == FINE:
            next_queries = states.next_queries(hidden)  # (M, Q)
            rows = torch.arange(self.batch_size, device=device).unsqueeze(1).expand_as(valid)[valid]  # (M,)
            first = (valid.cumsum(1) == 1)[valid].unsqueeze(-1)  # (M, 1)
            queries = torch.where(
                first, self.next_queries[rows].to(next_queries.dtype), next_queries.roll(1, 0)
            )
            visual_fine, attention = states.read_frames(queries, patches)
            fine_tokens = states.project_visual_tokens(visual_fine, attention)  # (M, H)
            hidden = self._run_llm(FINE, new_ids, fine_tokens)[valid]
        last = (valid & (valid.cumsum(1) == valid.sum(1, keepdim=True)))[valid]  # (M,)
        self.next_queries[valid.any(1)] = next_queries[last].to(self.next_queries.dtype)

        outputs = {
            "queries": queries,
            "attention": states.split_attention(attention)[0],  # (M, P)
            "attention_coarse": states.split_attention(attention_coarse)[0],
        }
        if targets is not None:
            current = targets.to(device)[valid]  # (M, C, h, w)
            outputs["predictions"] = self._predict(hidden, current)
        scattered = {name: _scatter(value, valid) for name, value in outputs.items()}  # (B, c, ...)
        return {**scattered, "frame_mask": valid}

    def _run_llm(self, mode: int, ids: torch.Tensor, visual_tokens: torch.Tensor | None) -> torch.Tensor:
        """Append ``ids [B, n]`` (frame slots filled with ``visual_tokens [M, H]``) to one stream: ``[B, n, H]``."""
        cache = self._caches[mode]
        mask = self._attention_mask[:, : cache.get_seq_length() + ids.shape[1]]
        states = self.model.model
        positions = states.default_position_ids(ids, mask, cache)
        embeds = states.embed_sequence(ids, visual_tokens, mode)
        return states.run_language_model(embeds, mask, positions, cache, use_cache=True).last_hidden_state

    def _predict(self, hidden: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Next target from reading-stream states ``[M, H]`` and current targets ``[M, C, h, w]``."""
        return self.model.predict_next_targets(hidden, current)

    # ------------------------------------------------------------------------------------------ caption
    @torch.no_grad()
    def caption(
        self,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        suffix_ids: torch.Tensor | None = None,
        static_cache: bool = False,
        **generate_kwargs,
    ):
        """Continue the reading stream after ``<video_end>`` with ``model.generate`` (greedy, sampling, beams).

        The stream itself is left as it was: a copy of its cache is extended, so it can read more frames and
        caption again.

        Args:
            max_new_tokens: tokens to generate at most.
            suffix_ids: override of the ids that close the video and open the answer (default: the stream's).
            static_cache: greedy decoding over a static KV cache instead of ``generate``: the suffix is one
                prefill, then every token is one replayed CUDA graph on CUDA (eager elsewhere). The same tokens
                as ``generate(do_sample=False)``; only ``min_new_tokens`` is accepted besides.
            generate_kwargs: any ``generate`` argument (``do_sample``, ``temperature``, ``num_beams``, ...).

        Returns:
            what ``generate`` returns, with ``sequences`` holding only the new tokens ``[B', new]``
            (``static_cache``: the new tokens ``[B, new]``).
        """
        suffix = self.suffix_ids if suffix_ids is None else self._validate_suffix(suffix_ids)
        if suffix is None:
            raise ValueError(
                "caption() needs suffix_ids: open the stream with stream_prompt_inputs() or pass them"
            )
        self._sync_dynamic()
        self._check_context(torch.zeros_like(self.num_frames), suffix.numel())
        if static_cache:
            return self._greedy_static(suffix, max_new_tokens, **generate_kwargs)
        input_ids = torch.cat([self._input_ids, suffix.expand(self.batch_size, -1)], dim=1)
        attention_mask = torch.cat(
            [self._attention_mask, torch.ones_like(input_ids[:, self._input_ids.shape[1] :])], 1
        )
        cache = copy.deepcopy(self._caches[self.reading_mode])
        expansion = self._generation_expansion(generate_kwargs)
        if expansion > 1:
            cache.batch_repeat_interleave(expansion)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache,
            max_new_tokens=max_new_tokens,
            **generate_kwargs,
        )
        if isinstance(output, torch.Tensor):
            return output[:, input_ids.shape[1] :]
        output.sequences = output.sequences[:, input_ids.shape[1] :]
        return output

    def _generation_expansion(self, generate_kwargs: dict) -> int:
        """Rows per stream in ``generate`` (beams / returned sequences): the cache must be expanded to match."""
        config = generate_kwargs.get("generation_config") or self.model.generation_config
        beams = generate_kwargs.get("num_beams", config.num_beams) or 1
        sequences = generate_kwargs.get("num_return_sequences", config.num_return_sequences) or 1
        return max(beams, sequences)

    def _greedy_static(
        self, suffix: torch.Tensor, max_new_tokens: int, min_new_tokens: int = 0, **unsupported
    ) -> torch.Tensor:
        """``caption(static_cache=True)``: greedy tokens ``[B, new]``, as ``generate`` pads and stops them."""
        if unsupported.pop("do_sample", False) or unsupported.pop("num_beams", 1) != 1 or unsupported:
            raise ValueError(
                "caption(static_cache=True) decodes greedily and takes only max_new_tokens, min_new_tokens and "
                f"suffix_ids; drop static_cache for {sorted(unsupported) or 'sampling or beams'}"
            )
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        config = self.model.generation_config
        eos = (
            config.eos_token_id
            if config.eos_token_id is not None
            else self.model.config.text_config.eos_token_id
        )
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=suffix.device)
        pad = (
            config.pad_token_id if config.pad_token_id is not None else (eos[0].item() if eos.numel() else 0)
        )
        cache = self._caches[self.reading_mode]
        decoder = StaticDecoder(
            self.model, cache, self._attention_mask, suffix, max_new_tokens, min_new_tokens, eos
        )
        tokens = decoder.run()
        if not eos.numel():
            return tokens
        ended = torch.isin(tokens, eos).long().cumsum(1)
        tokens = tokens.masked_fill((ended - torch.isin(tokens, eos).long()) > 0, pad)  # after each row's end
        if bool((ended[:, -1] > 0).all()):  # generate stops when every row has ended
            tokens = tokens[:, : int((ended == 0).sum(1).max()) + 1]
        return tokens


def _require_tensor(frames) -> None:
    if not isinstance(frames, torch.Tensor):
        raise ValueError(
            f"frames must be a tensor of normalised pixels, got {type(frames).__name__}: use "
            "processor(videos=...)['pixel_values_videos'] (or processor.video_processor.preprocess_frames for raw frames)"
        )


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entries ``[M, ...]`` of the True slots of ``mask [B, n]`` -> ``[B, n, ...]`` (zeros elsewhere)."""
    full = values.new_zeros((*mask.shape, *values.shape[1:]))
    full[mask] = values
    return full


__all__ = ["DEFAULT_CHUNK_FRAMES", "FoveatedStream", "StreamStep", "stream_prompt_inputs"]
