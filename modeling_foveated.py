"""The foveated video-language model: one visual token per frame, the LLM decides where to look next.

A DINOv3 ViT encodes each frame's patches once and keeps every layer's patch keys/values. A query token is then
pushed through all encoder layers against those cached keys/values (it sees the patches and itself; the patches
never see it), and its output is the frame's single visual token. Training runs two passes over the LLM
(SmolLM2): pass 1 reads every frame with a learned static query and predicts the query for the next frame;
pass 2 reads every frame with those predicted queries. Both passes predict the next frame's target through a
FiLM head and learn to caption the video after ``<video_end>``.

The classes are split as transformers splits SmolVLM: ``base_foveated.FoveatedVLMModel`` (``self.model``) runs
the encoder, the reading and the LLM decoder and returns hidden states; :class:`FoveatedVLMForConditionalGeneration`
adds the LM head, the prediction heads, every loss, ``generate`` and :meth:`~FoveatedVLMForConditionalGeneration.stream`.
``AutoModel`` resolves to the conditional-generation class (the base model is ``model.model``). Checkpoints keep
the key layout of the unsplit model (``PREVIOUS_LAYOUT_KEYS``): transformers renames them on load and back on save,
so checkpoints written before the split load, and new ones load in older code.

Shapes use B (batch), T (padded frames per video), N (valid frames in the batch), L (sequence length),
S (encoder tokens per frame: CLS + registers + P patches), D (encoder width), H (LLM width), Q (query width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.utils.deprecation import deprecate_kwarg

try:
    from .acceleration_foveated import CompiledRegions
    from .base_foveated import FoveatedVLMModel, FoveatedVLMPreTrainedModel
    from .configuration_foveated import FoveatedVLMConfig
    from .encoder_foveated import PatchCache
    from .heads_foveated import (
        FiLMPredictionHead,
        caption_loss,
        clip_caption_losses,
        reading_losses,
    )
    from .layout_foveated import VideoLayout, caption_positions, gather_positions
    from .outputs_foveated import READING_FIELDS, FoveatedVLMModelOutput, FoveatedVLMOutput
    from .reader_base_foveated import FrameReading
except ImportError:  # imported as a top-level module from a checkout of the repository
    from acceleration_foveated import CompiledRegions
    from base_foveated import FoveatedVLMModel, FoveatedVLMPreTrainedModel
    from configuration_foveated import FoveatedVLMConfig
    from encoder_foveated import PatchCache
    from heads_foveated import (
        FiLMPredictionHead,
        caption_loss,
        clip_caption_losses,
        reading_losses,
    )
    from layout_foveated import VideoLayout, caption_positions, gather_positions
    from outputs_foveated import READING_FIELDS, FoveatedVLMModelOutput, FoveatedVLMOutput
    from reader_base_foveated import FrameReading

# Auto classes that resolve to this model when loaded with trust_remote_code.
AUTO_MAP = {
    "AutoConfig": "configuration_foveated.FoveatedVLMConfig",
    "AutoModel": "modeling_foveated.FoveatedVLMForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_foveated.FoveatedVLMForConditionalGeneration",
}
# Checkpoint keys of the unsplit model (before ``self.model``) -> keys of this one. Registered with transformers,
# which applies them on load and reverses them on save: the checkpoint format stays the unsplit model's.
PREVIOUS_LAYOUT_KEYS = {
    r"^language_model\.lm_head": "lm_head",
    r"^language_model\.model": "model.language_model",
    **{
        rf"^{name}": f"model.{name}"
        for name in (
            "fovea_encoder",
            "fovea_dense_projection",
            "fovea_visual_projection",
            "fovea_location_projection",
            "fovea_query_head",
            "fovea_query_input_projection",
            "fovea_reader",
            "fovea_static_query",
            "fovea_initial_query",
            "fovea_mode_embeddings",
            "fovea_video_end_embedding",
        )
    },
}


class FoveatedVLMForConditionalGeneration(FoveatedVLMPreTrainedModel, GenerationMixin):
    """Foveated video-language model with next-frame prediction and captioning.

    Inputs come from :class:`FoveatedVLMProcessor`: ``input_ids`` hold one ``frame_token_id`` per valid frame
    (``dense_tokens_per_frame`` in dense mode) between ``video_start_token_id`` and ``video_end_token_id``;
    ``pixel_values_videos [B, T, 3, H, W]`` with ``video_frame_mask [B, T]`` hold the frames. ``self.model`` is the
    :class:`FoveatedVLMModel`; the frame-reading methods below forward to it.
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: FoveatedVLMConfig):
        super().__init__(config)
        config.auto_map = {**(getattr(config, "auto_map", None) or {}), **AUTO_MAP}
        text = config.text_config
        self.model = FoveatedVLMModel(config)
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        self.fovea_initial_target = nn.Parameter(torch.empty(config.target_shape))
        self.fovea_prediction_head = FiLMPredictionHead(config)
        self.post_init()

    def init_learned_parameters(self) -> None:
        """The target that conditions every video's first prediction starts at zero."""
        init.zeros_(self.fovea_initial_target)

    # ----------------------------------------------------------------------------------------- plumbing
    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.model._set_gradient_checkpointing(enable)

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs=None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Non-reentrant checkpointing of every encoder and LLM layer (reentrant + compile gives NaN).

        The layout is fixed: ``activation_checkpointing_kwargs`` other than ``use_reentrant=False``,
        ``every_n_layers != 1`` and ``offload`` are refused rather than ignored.
        """
        kwargs = dict(activation_checkpointing_kwargs or {})
        if kwargs.pop("use_reentrant", False) or kwargs or every_n_layers != 1 or offload:
            raise ValueError(
                "FoveatedVLM checkpoints every encoder and LLM layer, non-reentrant, on the device; got "
                f"activation_checkpointing_kwargs={activation_checkpointing_kwargs}, "
                f"every_n_layers={every_n_layers}, offload={offload}"
            )
        self._set_gradient_checkpointing(True)

    def activation_checkpointing_disable(self) -> None:
        self._set_gradient_checkpointing(False)

    def regional_compile(self, mode: str = "default") -> CompiledRegions:
        """The blocks of a training step that repeat, compiled with static shapes (installed by the caller):
        the encoder's patch and query layers, every LLM decoder layer and the prediction heads (training has no
        KV cache, so the decoder layers share one graph)."""
        layers = list(self.model.language_model.layers)
        return CompiledRegions([self.model.fovea_encoder], [*layers, self.fovea_prediction_head], mode)

    def stream(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Open a frame-by-frame streaming session over a prompt (see ``streaming_foveated.FoveatedStream``)."""
        try:
            from .streaming_foveated import FoveatedStream
        except ImportError:  # imported as a top-level module from a checkout of the repository
            from streaming_foveated import FoveatedStream
        return FoveatedStream(self, input_ids, attention_mask, **kwargs)

    # ------------------------------------------------------------------ frame reading (FoveatedVLMModel's)
    @property
    def fovea_static_query(self) -> nn.Parameter:
        """The learned static query (``model.fovea_static_query``)."""
        return self.model.fovea_static_query

    def encode_frames(self, frames: torch.Tensor) -> PatchCache:
        return self.model.encode_frames(frames)

    def read_frames(
        self, queries: torch.Tensor, cache: PatchCache, patch_bias: torch.Tensor | None = None
    ) -> FrameReading:
        return self.model.read_frames(queries, cache, patch_bias)

    def read_coarse(self, cache: PatchCache) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.read_coarse(cache)

    def split_attention(self, attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.split_attention(attention)

    def project_visual_tokens(self, visual_tokens: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return self.model.project_visual_tokens(visual_tokens, attention)

    def static_queries(self, count: int) -> torch.Tensor:
        return self.model.static_queries(count)

    def initial_queries(self, count: int) -> torch.Tensor:
        return self.model.initial_queries(count)

    def next_queries(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.next_queries(hidden)

    def planned_queries(self, hidden: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
        return self.model.planned_queries(hidden, layout)

    def probe_reading(self, queries: torch.Tensor | None = None, patch_bias: torch.Tensor | None = None):
        """Read the fine pass with other ``queries`` and/or a ``patch_bias`` inside a ``with`` block (test-time
        probes; ``FoveatedVLMModel.probe_reading``)."""
        return self.model.probe_reading(queries, patch_bias)

    # ----------------------------------------------------------------------------------------- forward
    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_frame_mask: torch.Tensor | None = None,
        prediction_targets: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        inference_mode: str | None = None,
        video_layout: VideoLayout | None = None,
        attention_targets: torch.Tensor | None = None,
        **kwargs,
    ) -> FoveatedVLMOutput:
        """Two-pass forward (or one pass in coarse or dense mode).

        Args:
            input_ids: ``[B, L]`` token ids with frame placeholders (from the processor).
            attention_mask: ``[B, L]`` 1 for real tokens, 0 for padding.
            cache: the LLM's KV cache (transformers' ``Cache``; ``past_key_values`` is its deprecated name).
            pixel_values_videos: ``[B, T, 3, H, W]`` normalised float frames (padded frames ignored); uint8 or
                other non-float pixels are refused, and without ``video_layout`` so are NaN/inf and raw-range
                values (``layout_foveated.check_pixel_values``).
            video_frame_mask: ``[B, T]`` bool, True for real frames. Defaults to all True.
            prediction_targets: ``[B, T, C, h, w]`` next-frame targets of every frame (VAE latents or
                downsampled frames); enables the prediction losses.
            labels: ``[B, L]`` caption token ids, -100 elsewhere; enables the caption losses.
            logits_to_keep: compute logits for the last this-many positions only (0 = all).
            inference_mode: ``"two_pass"`` or ``"coarse"``; defaults to ``config.inference_mode``. Training
                always runs both passes.
            video_layout: the batch's frame and caption positions (``processor(..., return_video_layout=True)``);
                with it the forward needs no host synchronisation (computed from the inputs otherwise).
            attention_targets: ``[B, T, P]`` patch coverage (0..1) of the box of the object the text is about;
                enables ``loss_attention`` when ``attention_supervision_weight > 0``.
        """
        states = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values_videos=pixel_values_videos,
            video_frame_mask=video_frame_mask,
            labels=labels,
            use_cache=use_cache,
            inference_mode=inference_mode,
            video_layout=video_layout,
        )
        if pixel_values_videos is None:
            return self._text_output(states, labels, logits_to_keep)
        layout = states.video_layout
        targets = None if prediction_targets is None else layout.select_frames(prediction_targets)
        output = FoveatedVLMOutput(**{name: getattr(states, name) for name in READING_FIELDS})
        if targets is not None and states.hidden_coarse is not None:
            output.predictions_coarse = self._predict(states.hidden_coarse, layout, targets)
        if targets is not None and states.hidden_fine is not None:
            output.predictions_fine = self._predict(states.hidden_fine, layout, targets)
        boxes = None if attention_targets is None else layout.select_frames(attention_targets)
        return self._finish(output, states, targets, labels, logits_to_keep, boxes)

    def previous_targets(self, targets: torch.Tensor, first_frame: torch.Tensor) -> torch.Tensor:
        """Conditioning of each prediction: ``[z_init, target_1 .. target_{T-1}]`` per video, ``[N, C, h, w]``."""
        initial = self.fovea_initial_target.to(targets.dtype).expand_as(targets)
        return torch.where(first_frame[:, None, None, None], initial, targets.roll(1, dims=0))

    def _predict(self, hidden: torch.Tensor, layout: VideoLayout, targets: torch.Tensor) -> torch.Tensor:
        """Next-frame predictions ``[N, C, h, w]`` of one pass from its states ``[B, L, H]``."""
        states = gather_positions(hidden, layout.predictor_index)  # (N, H)
        previous = self.previous_targets(targets, layout.first_frame)
        if self.training and self.config.previous_target_dropout:
            previous = F.dropout(previous, p=self.config.previous_target_dropout)
        return self.predict_next_targets(states, previous)

    def predict_next_targets(self, states: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Next-frame targets ``[N, C, h, w]`` from LLM states ``[N, H]`` and the previous targets (as the head
        sees them) ``[N, C, h, w]``."""
        return self.fovea_prediction_head(states, previous)

    # ----------------------------------------------------------------------------------------- losses
    def _logits(self, hidden: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
        """LM-head logits ``[B, L', V]`` of ``hidden [B, L, H]`` (the last ``logits_to_keep`` positions; 0: all)."""
        return self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)

    def _finish(
        self,
        output: FoveatedVLMOutput,
        states: FoveatedVLMModelOutput,
        targets: torch.Tensor | None,
        labels: torch.Tensor | None,
        logits_to_keep: int,
        boxes: torch.Tensor | None = None,
    ) -> FoveatedVLMOutput:
        """Logits of the pass that feeds the cache, every loss term, and their weighted total (``boxes [N, P]``:
        the patch coverage of the box the text is about, for ``loss_attention``)."""
        config = self.config
        layout = states.video_layout
        output.cache = states.cache
        output.logits = self._logits(states.last_hidden_state, logits_to_keep)
        terms: list[torch.Tensor] = []
        if targets is not None:
            if output.predictions_fine is not None:
                output.loss_fine = F.mse_loss(output.predictions_fine.float(), targets.float())
                if config.prediction_passes == "both":  # "coarse": reported, kept away from the planner
                    terms.append(config.prediction_loss_weight * output.loss_fine)
            if output.predictions_coarse is not None:
                output.loss_coarse = F.mse_loss(output.predictions_coarse.float(), targets.float())
                terms.append(config.prediction_loss_weight * config.lambda_coarse * output.loss_coarse)
        if labels is not None:
            captions = (layout.caption_index, layout.caption_targets)
            if states.hidden_fine is not None:
                output.loss_caption = caption_loss(self.lm_head, states.hidden_fine, *captions)
                terms.append(config.caption_loss_weight * output.loss_caption)
                if output.reader_extras is not None and self.model.fovea_reader.needs_frame_caption_losses:
                    output.caption_loss_frames = self._frame_caption_losses(states)
            if states.hidden_coarse is not None:
                output.loss_caption_coarse = caption_loss(self.lm_head, states.hidden_coarse, *captions)
                terms.append(config.caption_loss_weight * config.lambda_coarse * output.loss_caption_coarse)
        extras = output.reader_extras  # None without a reader (dense) or when it carries none
        reader_box_loss = (
            None if extras is None else (lambda coverage: self.model.fovea_reader.box_loss(extras, coverage))
        )
        for name, (weight, loss) in reading_losses(config, output, boxes, reader_box_loss).items():
            setattr(output, name, loss)
            terms.append(weight * loss)
        if output.reader_extras is not None:
            reader = self.model.fovea_reader
            output.loss_reader = reader.auxiliary_loss(output.reader_extras, output, targets)
            if output.loss_reader is not None:
                terms.append(reader.auxiliary_loss_weight * output.loss_reader)
        if terms:
            output.loss = torch.stack(terms).sum()
        return output

    @torch.no_grad()
    def _frame_caption_losses(self, states: FoveatedVLMModelOutput) -> torch.Tensor:
        """The fine pass's caption loss of each valid frame's clip ``[N]`` (a reward for readers that ask, no
        gradient): ``clip_caption_losses`` picked by the clip of each frame's predictor position."""
        layout, hidden = states.video_layout, states.hidden_fine
        clips = clip_caption_losses(
            self.lm_head, hidden, layout.caption_index, layout.caption_targets
        )  # (B,)
        frame_clips = layout.predictor_index.div(hidden.shape[1], rounding_mode="floor")  # (N,)
        return clips.index_select(0, frame_clips)  # (N,)

    def _text_output(
        self, states: FoveatedVLMModelOutput, labels: torch.Tensor | None, logits_to_keep: int
    ) -> FoveatedVLMOutput:
        hidden = states.last_hidden_state
        output = FoveatedVLMOutput(logits=self._logits(hidden, logits_to_keep), cache=states.cache)
        if labels is not None:
            output.loss_caption = caption_loss(self.lm_head, hidden, *caption_positions(labels))
            output.loss = self.config.caption_loss_weight * output.loss_caption
        return output


register_checkpoint_conversion_mapping(
    FoveatedVLMForConditionalGeneration.__name__,
    [WeightRenaming(source, target) for source, target in PREVIOUS_LAYOUT_KEYS.items()],
    overwrite=True,  # this file may be imported twice (from a checkout and as transformers' dynamic module)
)

__all__ = [
    "FoveatedVLMForConditionalGeneration",
    "FoveatedVLMOutput",
    "PREVIOUS_LAYOUT_KEYS",
]

FoveatedVLMConfig.register_for_auto_class()
FoveatedVLMForConditionalGeneration.register_for_auto_class("AutoModel")
