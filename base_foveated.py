"""The base model of the foveated VLM: frames and text in, LLM hidden states of both passes out.

:class:`FoveatedVLMModel` (transformers' base model, ``model`` inside ``FoveatedVLMForConditionalGeneration``)
holds the frame encoder, the reading (static, initial and planned queries), the visual projection, the mode
embeddings and the LLM decoder stack (no LM head). Its forward embeds the sequence and runs the two passes
(proposal §8): pass 1 (coarse) reads every frame with the learned static query and plans the query of the next
frame, pass 2 (fine) reads every frame with those planned queries. It returns the hidden states, the readings'
attention and the visual tokens; the prediction heads, the LM head and every loss live in ``modeling_foveated``.

Shapes use B (batch), T (padded frames per video), N (valid frames in the batch), k (queries a frame), L (sequence
length), S (encoder tokens per frame: CLS + registers + P patches), D (encoder width), H (LLM width), Q (query
width).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast

try:
    from .configuration_foveated import INFERENCE_MODES, FoveatedVLMConfig
    from .encoder_foveated import GLIMPSE_LOCATION_FEATURES, FoveatedEncoder, PatchCache, glimpse_location
    from .layout_foveated import (
        COARSE,
        FINE,
        VideoLayout,
        check_pixel_values,
        check_token_ids,
        check_video_channels,
        gather_positions,
    )
    from .outputs_foveated import FoveatedVLMModelOutput
    from .reader_base_foveated import FrameReader, FrameReading
    from .readers_foveated import build_reader
except ImportError:  # imported as a top-level module from a checkout of the repository
    from configuration_foveated import INFERENCE_MODES, FoveatedVLMConfig
    from encoder_foveated import GLIMPSE_LOCATION_FEATURES, FoveatedEncoder, PatchCache, glimpse_location
    from layout_foveated import (
        COARSE,
        FINE,
        VideoLayout,
        check_pixel_values,
        check_token_ids,
        check_video_channels,
        gather_positions,
    )
    from outputs_foveated import FoveatedVLMModelOutput
    from reader_base_foveated import FrameReader, FrameReading
    from readers_foveated import build_reader

KAIMING_SLOPE = 5**0.5  # torch.nn.Linear's own default initialisation
# LLM attention kernels that attend causally when given no mask (eager and flex would attend both ways)
CAUSAL_WITHOUT_MASK = ("sdpa", "flash_attention_2", "flash_attention_3")
RMS_EPS = 1e-6  # keeps visual_token_norm finite on an all-zero token


class FoveatedVLMPreTrainedModel(PreTrainedModel):
    """Weight initialisation and Hub plumbing shared by the foveated VLM classes."""

    config_class = FoveatedVLMConfig
    config: FoveatedVLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["DINOv3ViTLayer", "LlamaDecoderLayer"]
    _can_compile_fullgraph = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the new modules; the vision and language sub-models initialise themselves."""
        if isinstance(module, (FoveatedVLMPreTrainedModel, FrameReader)):
            module.init_learned_parameters()
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.kaiming_uniform_(module.weight, a=KAIMING_SLOPE)
            if module.bias is not None:
                init.zeros_(module.bias)

    def init_learned_parameters(self) -> None:
        """Initialise the parameters this class holds itself (not in a submodule)."""
        raise NotImplementedError


class FoveatedVLMModel(FoveatedVLMPreTrainedModel):
    """Frame encoder, reading, visual projection, mode embeddings and the LLM decoder stack (see the module doc).

    New modules carry a ``fovea_`` prefix so that PEFT's name matching never confuses them with LLM layers.
    """

    def __init__(self, config: FoveatedVLMConfig):
        super().__init__(config)
        vision_width = config.vision_config.hidden_size
        text_width = config.text_config.hidden_size
        self.fovea_encoder = FoveatedEncoder(config)
        self.language_model = LlamaModel(config.text_config)
        if config.foveation_mode == "dense":
            self.fovea_dense_projection = nn.Linear(vision_width * self._dense_unshuffle**2, text_width)
        else:
            queries, plan_dim = config.num_queries_per_frame, config.plan_dim
            query_shape = (plan_dim,) if queries == 1 else (queries, plan_dim)
            self.fovea_reader = build_reader(config)
            self.fovea_visual_projection = nn.Linear(vision_width, text_width)
            self.fovea_location_projection = (
                nn.Linear(GLIMPSE_LOCATION_FEATURES, text_width) if config.glimpse_location else None
            )
            self.fovea_query_head = nn.Linear(text_width, queries * plan_dim)
            if self.fovea_reader.plan_is_query:
                self.fovea_query_input_projection = nn.Linear(config.query_dim, vision_width, bias=False)
            self.fovea_static_query = nn.Parameter(torch.empty(query_shape))
            self.fovea_initial_query = nn.Parameter(torch.empty(query_shape))
        self.fovea_mode_embeddings = nn.Parameter(torch.empty(2, text_width))
        self.fovea_video_end_embedding = nn.Parameter(torch.empty(text_width))
        self._probe = ReadingProbe()
        self.post_init()

    def init_learned_parameters(self) -> None:
        """Learned queries at ``query_init_std`` (tiny ones give identical attention), token embeddings at the LLM's."""
        text_std = self.config.text_config.initializer_range
        if self.config.foveation_mode == "foveated":
            init.normal_(self.fovea_static_query, std=self.config.query_init_std)
            init.normal_(self.fovea_initial_query, std=self.config.query_init_std)
        init.normal_(self.fovea_mode_embeddings, std=text_std)
        init.normal_(self.fovea_video_end_embedding, std=text_std)

    # ----------------------------------------------------------------------------------------- plumbing
    @property
    def _dense_unshuffle(self) -> int:
        grid = self.config.vision_config.image_size // self.config.vision_config.patch_size
        return grid // round(self.config.dense_tokens_per_frame**0.5)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.fovea_encoder.gradient_checkpointing = enable
        if enable:
            self.language_model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            self.language_model.activation_checkpointing_disable()

    # ----------------------------------------------------------------------------------------- reading
    def encode_frames(self, frames: torch.Tensor) -> PatchCache:
        """Patch pass over valid frames ``[N, 3, H, W]`` (one batched pass, K/V cached; the frames kept in
        ``pixels`` for a reader that reads pixels)."""
        cache = self.fovea_encoder.encode_patches(frames)
        if self.config.foveation_mode == "foveated" and self.fovea_reader.needs_pixels:
            cache.pixels = frames
        return cache

    def read_frames(
        self, queries: torch.Tensor, cache: PatchCache, patch_bias: torch.Tensor | None = None
    ) -> FrameReading:
        """Read frames with plans ``[N, W]`` (or k a frame, ``[N, k, W]``) through the configured reader.

        Returns visual tokens ``[N, D]`` (``[N, m, D]``, m = k * ``tokens_per_plan``) and each token's full attention
        distribution ``[N, S+1]`` (``[N, m, S+1]``) over ``[CLS, registers, patches, own key]``, as a
        :class:`FrameReading` (a pair with the reader's ``extras``); ``patch_bias [N, P]`` confines it (probes).
        Query plans go through ``fovea_query_input_projection`` to encoder width first.
        """
        reader = self.fovea_reader
        inputs = queries
        if reader.plan_is_query:
            projection = self.fovea_query_input_projection
            inputs = projection(queries.to(projection.weight.dtype))
        return reader.read(inputs, cache, self.fovea_encoder, patch_bias)

    def split_attention(self, attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full distributions ``[..., S+1]`` -> patch part ``[..., P]`` and prefix part ``[..., 1 + R + 1]`` (CLS,
        registers, own key); with k queries a frame (``[N, k, S+1]``) both are averaged over the k queries."""
        if attention.dim() == 3:
            attention = attention.mean(1)  # (N, S+1): where the frame's k queries looked, together
        prefix_tokens = self.fovea_encoder.num_prefix_tokens
        patches = attention[..., prefix_tokens:-1]
        prefix = torch.cat([attention[..., :prefix_tokens], attention[..., -1:]], dim=-1)
        return patches, prefix

    def project_visual_tokens(self, visual_tokens: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Encoder outputs ``[N, D]`` (``[N, k, D]``) and their attention ``[N, S+1]`` (``[N, k, S+1]``) -> LLM
        inputs ``[N * tokens_per_frame, H]``.

        k tokens a frame are averaged (``multi_query_output="mean"``) or kept; ``glimpse_location`` adds where
        each token looked.
        """
        if visual_tokens.dim() == 3 and self.config.multi_query_output == "mean":
            visual_tokens, attention = visual_tokens.mean(1), attention.mean(1)  # (N, D), (N, S+1)
        inputs = self.fovea_visual_projection(visual_tokens)
        if self.fovea_location_projection is not None:
            prefix_tokens = self.fovea_encoder.num_prefix_tokens
            where = glimpse_location(attention[..., prefix_tokens:-1])  # (N[, k], 4)
            inputs = inputs + self.fovea_location_projection(where.to(inputs.dtype))
        inputs = self.match_text_scale(inputs)
        return inputs.reshape(-1, inputs.shape[-1])  # (N * tokens_per_frame, H)

    def match_text_scale(self, tokens: torch.Tensor) -> torch.Tensor:
        """Projected visual tokens ``[..., H]`` at the text's scale: with ``visual_token_norm`` each is RMS-normalised
        to the RMS of the input embedding table (no gradient into the table), then times ``visual_token_scale``."""
        if self.config.visual_token_norm:
            table = self.get_input_embeddings().weight.detach()  # (V, H)
            text_rms = torch.linalg.vector_norm(table, dtype=torch.float32) / table.numel() ** 0.5
            own_rms = tokens.float().pow(2).mean(-1, keepdim=True).add(RMS_EPS).sqrt()  # (..., 1)
            tokens = (tokens.float() * (text_rms / own_rms)).to(tokens.dtype)
        return tokens * self.config.visual_token_scale

    def dense_tokens(self, cache: PatchCache) -> torch.Tensor:
        """Dense baseline: patch states pixel-unshuffled to ``[N * dense_tokens_per_frame, H]`` LLM inputs."""
        patches = cache.patch_states[:, self.fovea_encoder.num_prefix_tokens :]  # (N, P, D)
        n, p, d = patches.shape
        grid = int(p**0.5)
        grid_map = patches.transpose(1, 2).reshape(n, d, grid, grid)  # (N, D, grid, grid)
        unshuffled = F.pixel_unshuffle(grid_map, self._dense_unshuffle)  # (N, D * u^2, grid / u, grid / u)
        unshuffled = unshuffled.flatten(2).transpose(1, 2)  # (N, dense_tokens_per_frame, D * u^2)
        tokens = self.match_text_scale(self.fovea_dense_projection(unshuffled))
        return tokens.reshape(-1, tokens.shape[-1])  # (N * dense_tokens_per_frame, H)

    def read_coarse(self, cache: PatchCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Pass-1 reading of ``N`` cached frames: tokens ``[N, D]`` (``[N, k, D]``) and full attention ``[N, S+1]``.

        ``coarse_reading="static_query"`` reads with the learned static query; ``"mean_pool"`` (the proposal's
        ablation) averages the final patch states, i.e. uniform attention over the patches, no spatial selection.
        """
        if self.config.coarse_reading == "mean_pool":
            states = cache.patch_states[:, self.fovea_encoder.num_prefix_tokens :]  # (N, P, D)
            count, patches = states.shape[:2]
            attention = states.new_zeros(count, cache.patch_states.shape[1] + 1, dtype=torch.float32)
            attention[:, self.fovea_encoder.num_prefix_tokens : -1] = 1.0 / patches
            return states.mean(1), attention
        return self.read_frames(self.static_queries(cache.keys[0].shape[0]), cache)

    def static_queries(self, count: int) -> torch.Tensor:
        """The learned static query repeated ``[count, Q]`` (``[count, k, Q]`` with k queries a frame)."""
        return self.fovea_static_query.expand(count, *self.fovea_static_query.shape)

    def initial_queries(self, count: int) -> torch.Tensor:
        """The learned query of every video's first frame, ``[count, Q]`` (``[count, k, Q]``)."""
        return self.fovea_initial_query.expand(count, *self.fovea_initial_query.shape)

    def next_queries(self, hidden: torch.Tensor) -> torch.Tensor:
        """Queries for the next frame from the LLM state at each frame's last token: ``[N, H]`` -> ``[N, Q]``
        (``[N, k, Q]``)."""
        queries = self.fovea_query_head(hidden)
        if self.config.num_queries_per_frame == 1:
            return queries
        return queries.unflatten(-1, (self.config.num_queries_per_frame, self.config.plan_dim))  # (N, k, W)

    def planned_queries(self, hidden: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
        """The query that reads each valid frame ``[N, Q]`` (``[N, k, Q]``), from coarse-pass states ``[B, L, H]``.

        Frame t > 1 is read by the query planned at frame t-1's last token; frame 1 by ``q_init``, or with
        ``plan_first_query`` by the query planned at ``<video_start>`` (after the prompt).
        """
        if self.config.plan_first_query:  # the state just before each frame is that frame's planner
            return self.next_queries(gather_positions(hidden, layout.predictor_index))
        planned = self.next_queries(self.planning_states(hidden, layout.slot_index))
        first = layout.first_frame.view(-1, *([1] * (planned.dim() - 1)))
        return torch.where(
            first, self.initial_queries(planned.shape[0]).to(planned.dtype), planned.roll(1, dims=0)
        )

    def planning_states(self, hidden: torch.Tensor, slot_index: torch.Tensor) -> torch.Tensor:
        """LLM states ``[N, H]`` at the last token of each frame (``slot_index [N * k]``) of ``hidden [B, L, H]``."""
        last_slots = slot_index.view(-1, self.config.tokens_per_frame)[:, -1]  # (N,)
        return gather_positions(hidden, last_slots)

    @contextmanager
    def probe_reading(
        self, queries: torch.Tensor | None = None, patch_bias: torch.Tensor | None = None
    ) -> Iterator[None]:
        """Read the fine pass differently inside the block: the one documented way to probe a reading.

        Args:
            queries: ``[N, Q]`` (``[N, k, Q]``) plans that read the N valid frames of the next forwards instead of
                the planned ones (the static query, random or time-shuffled plans on the same weights).
            patch_bias: ``[N, P]`` added to the fine reading's patch scores in every encoder layer; ``-inf``
                outside a region confines the reading to it (a glimpse at the centre or at the object).

        Probes nest (the inner one wins) and end with the block, also on an error. The coarse pass, the plan it
        makes and the losses are computed as always. Example::

            with model.probe_reading(queries=model.static_queries(num_frames)):
                static_reading = model(**inputs)
        """
        previous, self._probe = self._probe, ReadingProbe(queries, patch_bias)
        try:
            yield
        finally:
            self._probe = previous

    # ----------------------------------------------------------------------------------------- sequence
    def embed_sequence(
        self,
        input_ids: torch.Tensor,
        visual_tokens: torch.Tensor | None,
        mode: int,
        slot_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text embeddings with frame placeholders, mode and end tokens replaced: ``[B, L]`` -> ``[B, L, H]``.

        ``visual_tokens [N * k, H]`` fill the placeholders in order; ``slot_index [N * k]`` (flat positions, from a
        :class:`VideoLayout`) places them without searching ``input_ids`` (no host synchronisation).
        """
        config = self.config
        embeds = self.get_input_embeddings()(input_ids)
        start = (input_ids == config.video_start_token_id).unsqueeze(-1)
        end = (input_ids == config.video_end_token_id).unsqueeze(-1)
        embeds = torch.where(start, self.fovea_mode_embeddings[mode].to(embeds.dtype), embeds)
        embeds = torch.where(end, self.fovea_video_end_embedding.to(embeds.dtype), embeds)
        if visual_tokens is None:
            return embeds
        visual_tokens = visual_tokens.to(embeds.dtype)
        if slot_index is not None:
            return embeds.flatten(0, 1).index_copy(0, slot_index, visual_tokens).view_as(embeds)
        frame_slots = (input_ids == config.frame_token_id).unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(frame_slots, visual_tokens)

    def run_language_model(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache=None,
        use_cache: bool = False,
    ):
        """The LLM's decoder stack (no LM head): returns its ``BaseModelOutputWithPast``.

        Without mask, positions and cache (an unpadded training batch), and with an attention kernel that is causal
        without a mask (``CAUSAL_WITHOUT_MASK``), the layers run directly: the decoder's own mask preparation
        would search the default positions for packed sequences, a host synchronisation in eager mode and a
        materialised ``[B, 1, L, L]`` mask under tracing or capture.
        """
        causal_kernel = self.language_model.config._attn_implementation in CAUSAL_WITHOUT_MASK
        if (
            attention_mask is None
            and position_ids is None
            and cache is None
            and not use_cache
            and causal_kernel
        ):
            return self._run_causal_decoder(inputs_embeds)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
        )

    def _run_causal_decoder(self, inputs_embeds: torch.Tensor) -> BaseModelOutputWithPast:
        """``[B, L, H]`` through every decoder layer with causal attention and positions ``0 .. L-1``."""
        decoder = self.language_model
        positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
        position_embeddings = decoder.rotary_emb(inputs_embeds, positions)
        hidden = inputs_embeds
        for layer in decoder.layers[: decoder.config.num_hidden_layers]:
            hidden = layer(
                hidden, attention_mask=None, position_ids=positions, position_embeddings=position_embeddings
            )
        return BaseModelOutputWithPast(last_hidden_state=decoder.norm(hidden))

    def resolve_video_layout(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        frame_mask: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        layout: VideoLayout | None = None,
    ) -> VideoLayout:
        """Check the video inputs; return ``layout`` (moved to the inputs' device) or the one they imply.

        A given layout is only checked by shape (no host synchronisation); without one it is computed here.
        """
        if pixel_values.dim() != 5:
            raise ValueError(
                f"pixel_values_videos must be [B, T, C, H, W], got shape {tuple(pixel_values.shape)}"
            )
        if frame_mask is not None and frame_mask.shape != pixel_values.shape[:2]:
            raise ValueError(
                f"video_frame_mask {tuple(frame_mask.shape)} does not match pixel_values_videos "
                f"{tuple(pixel_values.shape[:2])}"
            )
        tokens_per_frame = self.config.tokens_per_frame
        if layout is None:
            if frame_mask is None:
                frame_mask = torch.ones(pixel_values.shape[:2], dtype=torch.bool, device=input_ids.device)
            return VideoLayout.from_inputs(
                input_ids, frame_mask, self.config.frame_token_id, tokens_per_frame, attention_mask, labels
            )
        layout.check(pixel_values.shape[0] * pixel_values.shape[1], input_ids.numel(), tokens_per_frame)
        if labels is not None and layout.caption_index is None:
            layout = layout.with_captions(labels)
        return layout.to(input_ids.device, non_blocking=True)

    # ----------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_frame_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        inference_mode: str | None = None,
        video_layout: VideoLayout | None = None,
        **kwargs,
    ) -> FoveatedVLMModelOutput:
        """Both passes (or one, in coarse inference and dense mode) over the sequence: hidden states and readings.

        The arguments are those of ``FoveatedVLMForConditionalGeneration.forward`` (``labels`` only place the
        supervised positions in the layout).
        """
        if inputs_embeds is not None:
            raise ValueError(
                "FoveatedVLMForConditionalGeneration builds its own inputs_embeds; pass input_ids"
            )
        if input_ids is None:
            raise ValueError("input_ids are required")
        mode = inference_mode or self.config.inference_mode
        if mode not in INFERENCE_MODES:
            raise ValueError(f"inference_mode must be one of {INFERENCE_MODES}, got {mode!r}")
        use_cache = bool(use_cache) and not self.training
        prefill = cache is None or cache.get_seq_length() == 0  # the caller's ids, not a decoding step's
        if video_layout is None and prefill:  # one synchronisation, off the training path (see its doc)
            check_token_ids(input_ids, self.get_input_embeddings().num_embeddings)
        if pixel_values_videos is None:
            if position_ids is None:
                position_ids = self.default_position_ids(input_ids, attention_mask, cache)
            embeds = self.embed_sequence(input_ids, None, FINE)
            text = self.run_language_model(embeds, attention_mask, position_ids, cache, use_cache)
            return FoveatedVLMModelOutput(last_hidden_state=text.last_hidden_state, cache=text.cache)

        check_pixel_values(pixel_values_videos, video_frame_mask, values=video_layout is None)  # see its doc
        check_video_channels(pixel_values_videos, self.config.vision_config.num_channels)
        layout = self.resolve_video_layout(
            input_ids, pixel_values_videos, video_frame_mask, attention_mask, labels, video_layout
        )
        patches = self.encode_frames(layout.select_frames(pixel_values_videos))
        if not layout.padded and cache is None and position_ids is None:
            attention_mask = None  # no padding and default positions: purely causal attention, no mask at all
        elif position_ids is None:
            position_ids = self.default_position_ids(input_ids, attention_mask, cache)
        passes = _PassInputs(input_ids, attention_mask, position_ids, cache, use_cache, layout)
        if self.config.foveation_mode == "dense":
            return self._dense_pass(passes, patches)
        return self._foveated_passes(passes, patches, mode == "coarse", self._probe)

    def default_position_ids(self, input_ids, attention_mask, cache) -> torch.Tensor:
        """Positions of ``input_ids [B, L]`` following the (left-padded) attention mask and the cache length."""
        past = 0 if cache is None else cache.get_seq_length()
        if attention_mask is None:
            return torch.arange(past, past + input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return positions[:, -input_ids.shape[1] :]

    def _foveated_passes(
        self, passes: _PassInputs, patches: PatchCache, coarse_only: bool, probe: ReadingProbe
    ) -> FoveatedVLMModelOutput:
        """Pass 1 reads with the static query and plans; pass 2 reads with the planned (or probe) queries."""
        layout = passes.layout
        visual_coarse, attention_coarse = self.read_coarse(patches)
        embeds_coarse = self.embed_sequence(
            passes.input_ids,
            self.project_visual_tokens(visual_coarse, attention_coarse),
            COARSE,
            layout.slot_index,
        )
        coarse = self.run_language_model(
            embeds_coarse,
            passes.attention_mask,
            passes.position_ids,
            passes.cache if coarse_only else None,
            use_cache=passes.use_cache and coarse_only,
        )
        output = FoveatedVLMModelOutput(
            last_hidden_state=coarse.last_hidden_state,
            cache=coarse.cache,
            hidden_coarse=coarse.last_hidden_state,
            visual_tokens_coarse=visual_coarse,
            video_layout=layout,
        )
        output.attention_coarse, output.attention_prefix_coarse = self.split_attention(attention_coarse)
        if coarse_only:
            return output

        queries = probe.queries
        if queries is None:
            queries = self.planned_queries(coarse.last_hidden_state, layout)
        reading = self.read_frames(queries, patches, probe.patch_bias)
        visual_fine, attention_fine = reading
        embeds_fine = self.embed_sequence(
            passes.input_ids,
            self.project_visual_tokens(visual_fine, attention_fine),
            FINE,
            layout.slot_index,
        )
        fine = self.run_language_model(
            embeds_fine, passes.attention_mask, passes.position_ids, passes.cache, passes.use_cache
        )
        output.last_hidden_state, output.cache = fine.last_hidden_state, fine.cache
        output.hidden_fine = fine.last_hidden_state
        output.queries = queries
        output.attention_fine, output.attention_prefix_fine = self.split_attention(attention_fine)
        output.visual_tokens_fine = visual_fine
        output.reader_extras = reading.extras or None
        return output

    def _dense_pass(self, passes: _PassInputs, patches: PatchCache) -> FoveatedVLMModelOutput:
        embeds = self.embed_sequence(
            passes.input_ids, self.dense_tokens(patches), FINE, passes.layout.slot_index
        )
        dense = self.run_language_model(
            embeds, passes.attention_mask, passes.position_ids, passes.cache, passes.use_cache
        )
        return FoveatedVLMModelOutput(
            last_hidden_state=dense.last_hidden_state,
            cache=dense.cache,
            hidden_fine=dense.last_hidden_state,
            video_layout=passes.layout,
        )


@dataclass
class _PassInputs:
    """What both passes of one forward share."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    cache: object | None
    use_cache: bool
    layout: VideoLayout


@dataclass
class ReadingProbe:
    """Test-time replacements for the fine pass's reading (all None in normal use; see
    :meth:`FoveatedVLMModel.probe_reading`)."""

    queries: torch.Tensor | None = None
    patch_bias: torch.Tensor | None = None


__all__ = ["FoveatedVLMModel", "FoveatedVLMPreTrainedModel", "ReadingProbe"]
