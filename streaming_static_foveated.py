"""The fast path of streaming (``FoveatedStream(max_frames=...)``): static KV caches and fixed buffers.

:class:`StaticStepper` reads one frame per stream without allocating or synchronising: the caches are transformers
``StaticCache``s of prompt + max_frames columns, and the attention mask, positions, next query, frame and target
live in fixed buffers, so that on CUDA the whole frame (patch pass, query passes, LLM steps, head) is one replayed
CUDA graph (``acceleration_foveated.GraphedRun``). :class:`StaticDecoder` decodes a caption greedily over a static
cache, one graph replay per token. Both are driven by ``streaming_foveated.FoveatedStream``, which owns the
stream's dynamic state (:class:`DynamicState`): the stepper copies it in (:meth:`StaticStepper.load`) and hands an
updated copy back (:meth:`StaticStepper.export`). The stream also lends it two buffers that both paths advance in
place (the next queries and the frame counts, whose addresses a captured graph holds).

Shapes: B (streams), R (LLM rows: B, or 2B when both passes run as one batch), L (columns), S (encoder tokens a
frame), D (encoder width), H (LLM width), Q (query width), C x h x w (a target).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache

try:
    from .acceleration_foveated import CompiledRegions, GraphedRun, compile_static
    from .layout_foveated import COARSE, FINE
except ImportError:  # imported as a top-level module from a checkout of the repository
    from acceleration_foveated import CompiledRegions, GraphedRun, compile_static
    from layout_foveated import COARSE, FINE

STEP_OUTPUTS = ("queries", "attention", "attention_coarse", "frame_mask", "next_queries")
"""What every fast step returns (``predictions`` too when it is given targets)."""


@dataclass
class DynamicState:
    """The general path's state of a stream: one ``DynamicCache`` per pass and the ids / mask they hold ``[B, L]``."""

    caches: dict[int, DynamicCache]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


@dataclass
class SharedBuffers:
    """Buffers the stream owns and both paths advance in place: ``next_queries [B, Q]``, ``num_frames [B]``."""

    next_queries: torch.Tensor
    num_frames: torch.Tensor


Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(reading states [B, H], current targets [B, C, h, w]) -> next targets [B, C, h, w]``."""


class StaticStepper:
    """The fast per-frame path of a stream (``max_frames``): static caches, fixed buffers, one graph per frame.

    ``total`` columns (prompt + max_frames) are reserved. With ``fuse_passes`` and two streams, one cache of 2B rows
    holds both (rows ``[0, B)`` coarse, ``[B, 2B)`` fine) and the mask and positions have 2B rows.

    Args:
        model: the ``FoveatedVLMForConditionalGeneration`` (eval mode).
        modes: the passes the stream runs (``(COARSE, FINE)`` or ``(COARSE,)``); the last one reads.
        prompt_length: columns of the prompt (``<video_start>`` included).
        max_frames: frame slots reserved.
        buffers: the stream's buffers the steps advance in place.
        predict: the stream's next-target prediction from the reading states.
        cuda_graph: replay each step as one CUDA graph.
        torch_compile: compile the encoder's layers and the whole LLM decoder for the steps.
        fuse_passes: read with both queries in one query pass and run both LLM steps as one batch-2 call.
    """

    def __init__(
        self,
        model,
        modes: Sequence[int],
        prompt_length: int,
        max_frames: int,
        buffers: SharedBuffers,
        predict: Predict,
        cuda_graph: bool,
        torch_compile: bool,
        fuse_passes: bool,
    ):
        config = model.config
        self.model, self.states = model, model.model
        self.modes = tuple(modes)
        self.buffers, self.predict = buffers, predict
        self.max_frames = max_frames
        self.total = prompt_length + max_frames
        batch = buffers.num_frames.shape[0]
        self.batch = batch
        device = model.device
        self.two_pass = self.modes[-1] == FINE
        self.fuse = fuse_passes and self.two_pass
        # the static and the planned plan read as one call of two plans a frame, where the reader allows it
        self.fused_read = (
            self.fuse
            and config.coarse_reading == "static_query"
            and self.states.fovea_reader.fuses_plans
            and config.tokens_per_plan == 1
        )
        self.rows = batch * len(self.modes) if self.fuse else batch
        if self.fuse:
            cache = _static_cache(model, self.rows, self.total)
            self.caches = {mode: cache for mode in self.modes}
            self.cache_rows = {COARSE: slice(0, batch), FINE: slice(batch, 2 * batch)}
        else:
            self.caches = {mode: _static_cache(model, batch, self.total) for mode in self.modes}
            self.cache_rows = {mode: slice(None) for mode in self.modes}
        self.mask = torch.zeros(self.rows, 1, 1, self.total, dtype=model.dtype, device=device)
        self.position = torch.zeros(self.rows, 1, dtype=torch.long, device=device)
        self.column = torch.zeros(1, dtype=torch.long, device=device)
        self.active = torch.ones(batch, dtype=torch.bool, device=device)
        size = config.vision_config.image_size
        self.frame = torch.zeros(batch, 3, size, size, dtype=model.dtype, device=device)
        self.target: torch.Tensor | None = None  # allocated at the first step with targets, in their dtype
        self.outputs: dict[str, torch.Tensor] = {}
        self.columns = 0  # host copy of ``column``: steps never read the device
        self.current = False  # True while the static caches hold the stream's latest state
        self.ahead = False  # True while the stream's dynamic state lags behind the static one
        self.decoder = self.states.language_model
        self.regions = CompiledRegions([self.states.fovea_encoder] if torch_compile else [])
        if torch_compile:
            self.decoder = compile_static(self.decoder)
        distinct = {id(cache): cache for cache in self.caches.values()}.values()
        lengths = [layer.cumulative_length for cache in distinct for layer in cache.layers]
        state = [self.mask, self.position, self.column, buffers.next_queries, buffers.num_frames, *lengths]
        pool = torch.cuda.graph_pool_handle() if cuda_graph else None
        self.runs = {
            with_targets: GraphedRun(lambda t=with_targets: self._frame(t), state, cuda_graph, pool)
            for with_targets in (False, True)
        }

    # ---------------------------------------------------------------------------------- state transfer
    def check_capacity(self, columns: int) -> None:
        """ValueError (nothing consumed) if the stream would need more than the reserved ``total`` columns."""
        if columns > self.total:
            raise ValueError(
                f"the stream was opened with max_frames={self.max_frames}: its static caches hold {self.total} "
                f"columns (prompt + max_frames) and {columns} would be needed; open it with a larger max_frames "
                "(frames_that_fit says how many more frames fit now)"
            )

    def context_used(self) -> tuple[torch.Tensor, int]:
        """Positions used per stream ``[B]`` and columns used, read from the static state (no export)."""
        return self.position[: self.batch, 0], self.columns

    def invalidate(self) -> None:
        """The stream's dynamic state moved on (``extend``): the next step reloads it."""
        self.current = False

    def load(self, state: DynamicState) -> None:
        """Copy the stream's dynamic state into the static buffers (after ``extend`` or at the first step)."""
        mask = state.attention_mask
        length = mask.shape[1]
        for mode, cache in self.caches.items():
            _load_cache(cache, state.caches[mode], self.cache_rows[mode])
        repeat = self.rows // self.batch
        self.mask.fill_(torch.finfo(self.mask.dtype).min)
        self.mask[:, 0, 0, :length] = _additive(mask.bool().repeat(repeat, 1), self.mask.dtype)
        self.position.copy_(mask.sum(1, keepdim=True).repeat(repeat, 1))
        self.column.fill_(length)
        self.columns = length
        self.current = True

    def export(self, state: DynamicState) -> DynamicState:
        """The stream's dynamic state ``state`` brought up to the static one (a copy; the static state stays)."""
        text = self.model.config.text_config
        caches = {
            mode: _dynamic_copy(cache, self.cache_rows[mode], self.columns, text)
            for mode, cache in self.caches.items()
        }
        old = state.attention_mask.shape[1]
        new = (self.mask[: self.batch, 0, 0, old : self.columns] == 0).long()  # (B, new columns)
        frame_id, pad_id = self.model.config.frame_token_id, text.pad_token_id
        attention_mask = torch.cat([state.attention_mask, new], dim=1)
        input_ids = torch.cat([state.input_ids, torch.where(new.bool(), frame_id, pad_id)], dim=1)
        self.ahead = False
        return DynamicState(caches, input_ids, attention_mask)

    # ---------------------------------------------------------------------------------- the step
    @torch.no_grad()
    def step(
        self, frames: torch.Tensor, active: torch.Tensor | None, targets: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Read ``frames [B, 3, H, W]`` (rows ``active [B]``; ``targets [B, C, h, w]``): copies of the outputs.

        The static state must be current (:meth:`load`).
        """
        self.check_capacity(self.columns + 1)
        self.frame.copy_(frames)
        if active is None:
            self.active.fill_(True)
        else:
            self.active.copy_(active)
        if targets is not None:
            if self.target is None:
                self.target = torch.empty(targets.shape, dtype=targets.dtype, device=self.frame.device)
            self.target.copy_(targets)
        with self.regions:
            self.runs[targets is not None]()
        self.columns += 1
        self.ahead = True
        names = ("predictions", *STEP_OUTPUTS) if targets is not None else STEP_OUTPUTS
        return {name: self.outputs[name].clone() for name in names}

    def _llm(self, cache: StaticCache, visual: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """One position per row from visual tokens ``[R, D]`` and their attention ``[R, S+1]``: states ``[R, H]``."""
        states = self.states
        embeds = states.project_visual_tokens(visual, attention).unsqueeze(1)  # (R, 1, H)
        embeds = embeds.to(states.get_input_embeddings().weight.dtype)
        output = self.decoder(
            inputs_embeds=embeds,
            attention_mask=self.mask,  # (R, 1, 1, L)
            position_ids=self.position,  # (R, 1)
            cache=cache,
            use_cache=True,
        )
        return output.last_hidden_state[:, -1]  # (R, H)

    def _frame(self, with_targets: bool) -> None:
        """Read ``self.frame``: the stream's per-frame work, written into ``self.outputs`` and the state buffers."""
        states, batch = self.states, self.batch
        active = self.active  # (B,)
        row_active = active.repeat(self.rows // batch)  # (R,)
        self.mask.index_copy_(3, self.column, _additive(row_active, self.mask.dtype).view(-1, 1, 1, 1))
        patches = states.encode_frames(self.frame)
        static = states.static_queries(batch)  # (B, Q)
        query = self.buffers.next_queries  # (B, Q)
        if self.fused_read:
            both = torch.stack([static, query.to(static.dtype)], dim=1)  # (B, 2, Q)
            visual, attention = states.read_frames(both, patches)  # one pass, two tokens a frame
            (visual_coarse, visual_fine), (attention_coarse, attention_fine) = (
                visual.unbind(1),  # (B, D) each
                attention.unbind(1),  # (B, S+1) each
            )
        else:
            visual_coarse, attention_coarse = states.read_coarse(patches)
            if self.two_pass:
                visual_fine, attention_fine = states.read_frames(query, patches)
        if self.fuse:
            hidden_coarse, hidden_fine = self._llm(
                self.caches[COARSE],
                torch.cat([visual_coarse, visual_fine]),  # (2B, D)
                torch.cat([attention_coarse, attention_fine]),  # (2B, S+1)
            ).chunk(2)  # (B, H) each
        else:
            hidden_coarse = self._llm(self.caches[COARSE], visual_coarse, attention_coarse)
            if self.two_pass:
                hidden_fine = self._llm(self.caches[FINE], visual_fine, attention_fine)
        if self.two_pass:
            planned = states.next_queries(hidden_coarse)  # (B, Q)
            values = {"queries": query.to(planned.dtype), "attention": attention_fine, "hidden": hidden_fine}
        else:
            planned = static
            values = {"queries": static, "attention": attention_coarse, "hidden": hidden_coarse}
        values["attention"] = states.split_attention(values["attention"])[0]  # (B, P)
        values["attention_coarse"] = states.split_attention(attention_coarse)[0]  # (B, P)
        if with_targets:
            values["predictions"] = self.predict(values["hidden"], self.target)
        del values["hidden"]
        values = {
            name: torch.where(
                active.view(-1, *[1] * (value.dim() - 1)),  # (B, 1, ...)
                value,
                torch.zeros((), dtype=value.dtype, device=value.device),
            )
            for name, value in values.items()
        }
        query.copy_(torch.where(active.unsqueeze(1), planned.to(query.dtype), query))
        self.buffers.num_frames.add_(active)
        self.position.add_(row_active.unsqueeze(1))
        self.column.add_(1)
        values["next_queries"] = query
        values["frame_mask"] = active
        for name, value in values.items():
            if name in self.outputs:
                self.outputs[name].copy_(value)
            else:
                self.outputs[name] = value.clone()


class StaticDecoder:
    """Greedy caption over a static cache: the suffix as one prefill, then one graph replay per token.

    Args:
        model: the ``FoveatedVLMForConditionalGeneration``.
        cache: the reading pass's ``DynamicCache`` (copied, left as it is).
        attention_mask: ``[B, L]`` what the cache holds.
        suffix: ``[S]`` ids that close the video and open the answer.
        max_new_tokens, min_new_tokens: as ``generate``'s.
        eos: ``[E]`` end-of-sequence ids (held back until ``min_new_tokens``).
    """

    def __init__(
        self,
        model,
        cache: DynamicCache,
        attention_mask: torch.Tensor,
        suffix: torch.Tensor,
        max_new_tokens: int,
        min_new_tokens: int,
        eos: torch.Tensor,
    ):
        self.model, self.states = model, model.model
        self.max_new_tokens, self.min_new_tokens, self.eos = max_new_tokens, min_new_tokens, eos
        mask = attention_mask
        batch, length = mask.shape
        count = suffix.numel()
        self.total = length + count + max_new_tokens
        self.cache = _static_cache(model, batch, self.total)
        _load_cache(self.cache, cache, slice(None))
        device = mask.device
        columns = torch.arange(self.total, device=device)
        self.suffix_ids = suffix.expand(batch, -1)  # (B, S)
        # prefill: each suffix token sees the stream's columns and the suffix up to itself
        allowed = torch.cat(
            [mask.bool(), torch.ones(batch, self.total - length, dtype=torch.bool, device=device)], 1
        )  # (B, total)
        causal = columns.view(1, -1) <= (length + torch.arange(count, device=device)).view(
            -1, 1
        )  # (S, total)
        self.prefill_mask = _additive(
            allowed[:, None, None, :] & causal[None, None], model.dtype
        )  # (B, 1, S, total)
        self.prefill_positions = mask.sum(1, keepdim=True) + torch.arange(count, device=device)  # (B, S)
        # decoding buffers
        self.mask = _additive(allowed & (columns < length + count), model.dtype)[:, None, None, :].clone()
        self.position = self.prefill_positions[:, -1:] + 1  # (B, 1)
        self.column = torch.tensor([length + count], device=device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.tokens = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=device)
        state = [self.mask, self.position, self.column, self.index, self.token, self.tokens]
        state += [layer.cumulative_length for layer in self.cache.layers]
        self.graph = GraphedRun(self._token, state, cuda_graph=device.type == "cuda")

    def _next(self, hidden: torch.Tensor) -> None:
        """Greedy token from the last states ``[B, H]`` into ``token`` and ``tokens[:, index]``."""
        logits = self.model.lm_head(hidden).float()  # (B, V)
        if self.min_new_tokens and self.eos.numel():
            early = self.index < self.min_new_tokens
            logits[:, self.eos] = logits[:, self.eos].masked_fill(early, float("-inf"))
        token = logits.argmax(-1, keepdim=True)  # (B, 1)
        self.token.copy_(token)
        self.tokens.index_copy_(1, self.index, token)
        self.index.add_(1)

    def _token(self) -> None:
        states = self.states
        self.mask.index_fill_(3, self.column, 0.0)
        embeds = states.embed_sequence(self.token, None, FINE)  # (B, 1, H)
        output = states.run_language_model(embeds, self.mask, self.position, self.cache, use_cache=True)
        self._next(output.last_hidden_state[:, -1])
        self.position.add_(1)
        self.column.add_(1)

    @torch.no_grad()
    def run(self) -> torch.Tensor:
        """The greedy tokens ``[B, max_new_tokens]`` (not yet cut at the end of sequence)."""
        states = self.states
        embeds = states.embed_sequence(self.suffix_ids, None, FINE)  # (B, S, H)
        output = states.run_language_model(
            embeds, self.prefill_mask, self.prefill_positions, self.cache, use_cache=True
        )
        self._next(output.last_hidden_state[:, -1])
        for _ in range(self.max_new_tokens - 1):
            self.graph()
        return self.tokens.clone()


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask -> additive float mask (0 where allowed, the dtype's minimum elsewhere); SDPA and eager take it."""
    return torch.zeros((), dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _static_cache(model, batch: int, length: int) -> StaticCache:
    """An allocated ``StaticCache`` of ``length`` positions for ``batch`` rows of the model's LLM."""
    text = model.config.text_config
    cache = StaticCache(config=text, max_cache_len=length)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    cache.early_initialization(batch, text.num_key_value_heads, head_dim, model.dtype, model.device)
    return cache


def _load_cache(static: StaticCache, dynamic: DynamicCache, rows: slice) -> None:
    """Copy ``dynamic``'s columns into rows ``rows`` of ``static`` (in place) and point it after them."""
    for target, source in zip(static.layers, dynamic.layers):
        length = source.keys.shape[-2]
        target.keys[rows, :, :length].copy_(source.keys)  # (rows, kv heads, length, hd)
        target.values[rows, :, :length].copy_(source.values)
        target.cumulative_length.fill_(length)


def _dynamic_copy(static: StaticCache, rows: slice, length: int, text_config) -> DynamicCache:
    """A ``DynamicCache`` holding the first ``length`` columns of rows ``rows`` of ``static``."""
    dynamic = DynamicCache(config=text_config)
    for index, layer in enumerate(static.layers):
        dynamic.update(layer.keys[rows, :, :length].clone(), layer.values[rows, :, :length].clone(), index)
    return dynamic


__all__ = ["STEP_OUTPUTS", "DynamicState", "SharedBuffers", "StaticDecoder", "StaticStepper"]
