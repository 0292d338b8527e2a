"""The foveated video-language model: one visual token per frame, the LLM decides where to look next.

A DINOv3 ViT encodes each frame's patches once and keeps every layer's patch keys/values. A query token is then
pushed through all encoder layers against those cached keys/values (it sees the patches and itself; the patches
never see it), and its output is the frame's single visual token. Training runs two passes over the LLM
(SmolLM2): pass 1 reads every frame with a learned static query and predicts the query for the next frame;
pass 2 reads every frame with those predicted queries. Both passes predict the next frame's target through a
FiLM head and learn to caption the video after ``<video_end>``.

Shapes use B (batch), T (padded frames per video), N (valid frames in the batch), L (sequence length),
S (encoder tokens per frame: CLS + registers + P patches), D (encoder width), H (LLM width), Q (query width).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import DINOv3ViTModel, GenerationMixin, LlamaForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput
from transformers.models.dinov3_vit.modeling_dinov3_vit import apply_rotary_pos_emb
from transformers.utils.deprecation import deprecate_kwarg

try:
    from .configuration_foveated import FoveatedVLMConfig
    from .layout_foveated import VideoLayout, caption_positions, check_pixel_values
except ImportError:  # imported as a top-level module from a checkout of the repository
    from configuration_foveated import FoveatedVLMConfig
    from layout_foveated import VideoLayout, caption_positions, check_pixel_values

COARSE, FINE = 0, 1  # rows of the learned mode embeddings
GLIMPSE_LOCATION_FEATURES = 4  # mean x, mean y, std x, std y of a query's attention over the patch grid
KAIMING_SLOPE = 5**0.5  # torch.nn.Linear's own default initialisation
# LLM attention kernels that attend causally when given no mask (eager and flex would attend both ways)
CAUSAL_WITHOUT_MASK = ("sdpa", "flash_attention_2", "flash_attention_3")
# Auto classes that resolve to this model when loaded with trust_remote_code.
AUTO_MAP = {
    "AutoConfig": "configuration_foveated.FoveatedVLMConfig",
    "AutoModel": "modeling_foveated.FoveatedVLMForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_foveated.FoveatedVLMForConditionalGeneration",
}


@dataclass
class PatchCache(ModelOutput):
    """Per-layer patch keys/values of a batch of frames, computed once by the patch pass.

    Args:
        keys: one ``[N, heads, S, D/heads]`` tensor per encoder layer (RoPE already applied to the patches).
        values: one ``[N, heads, S, D/heads]`` tensor per encoder layer.
        patch_states: ``[N, S, D]`` final (normed) encoder states of CLS, registers and patches.
    """

    keys: list[torch.Tensor] | None = None
    values: list[torch.Tensor] | None = None
    patch_states: torch.Tensor | None = None


@dataclass
class FoveatedVLMOutput(ModelOutput):
    """Output of :meth:`FoveatedVLMForConditionalGeneration.forward`.

    Args:
        loss: weighted total of the terms below (present when targets or labels are given).
        loss_fine: next-frame prediction MSE of the fine (dynamic-query) pass.
        loss_coarse: next-frame prediction MSE of the coarse (static-query) pass.
        loss_caption: caption cross-entropy of the fine pass (tokens after ``<video_end>``).
        loss_caption_coarse: caption cross-entropy of the coarse pass.
        loss_contrastive, loss_entropy, loss_delta_l1: remedy terms (present when their weights are non-zero).
        logits: ``[B, L', V]`` next-token logits of the pass that feeds the cache (``L'`` per ``logits_to_keep``).
        cache: the LLM cache (fine stream, or coarse stream in coarse inference).
        predictions_fine / predictions_coarse: ``[N, C, h, w]`` predicted next-frame targets of the valid frames.
        queries: ``[N, Q]`` (``[N, k, Q]``) queries that read each valid frame in the fine pass (``q_init`` for
            first frames).
        attention_fine / attention_coarse: ``[N, P]`` the query's attention over the patches (mean over heads and
            over the k queries) as part of its full distribution: it sums to 1 minus the prefix mass.
        attention_prefix_fine / attention_prefix_coarse: ``[N, 1 + R + 1]`` the rest of that distribution, on CLS,
            the R registers and the query's own key.
        visual_tokens_fine / visual_tokens_coarse: ``[N, D]`` (``[N, k, D]``) encoder outputs of the queries.
        loss_attention: ``-log`` mass of the fine attention in the box of the object the text is about.
    """

    loss: torch.Tensor | None = None
    loss_fine: torch.Tensor | None = None
    loss_coarse: torch.Tensor | None = None
    loss_caption: torch.Tensor | None = None
    loss_caption_coarse: torch.Tensor | None = None
    loss_contrastive: torch.Tensor | None = None
    loss_entropy: torch.Tensor | None = None
    loss_delta_l1: torch.Tensor | None = None
    loss_attention: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: object | None = None
    predictions_fine: torch.Tensor | None = None
    predictions_coarse: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    attention_fine: torch.Tensor | None = None
    attention_coarse: torch.Tensor | None = None
    attention_prefix_fine: torch.Tensor | None = None
    attention_prefix_coarse: torch.Tensor | None = None
    visual_tokens_fine: torch.Tensor | None = None
    visual_tokens_coarse: torch.Tensor | None = None


def attention_entropy(attention: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy in nats of attention distributions ``[..., P]`` -> ``[...]``.

    With ``prefix [..., R']`` (the mass on CLS, registers and the query's own key) the entropy is that of the full
    distribution ``[patches, prefix]``, so mass parked on CLS is counted where it is.
    """
    if prefix is not None:
        attention = torch.cat([attention, prefix.to(attention.dtype)], dim=-1)
    return -(attention * attention.clamp_min(torch.finfo(attention.dtype).tiny).log()).sum(-1)


def glimpse_location(patch_attention: torch.Tensor) -> torch.Tensor:
    """Where attention over a square patch grid looked: ``[..., P]`` -> ``[..., 4]`` (mean x, mean y, std x, std y).

    Coordinates run from -1 (left, top) to 1 (right, bottom); the map is renormalised over the patches first.
    """
    side = round(patch_attention.shape[-1] ** 0.5)
    weights = patch_attention.float() / patch_attention.float().sum(-1, keepdim=True).clamp_min(1e-12)
    weights = weights.unflatten(-1, (side, side))  # (..., rows, cols)
    axis = torch.linspace(-1.0, 1.0, side, device=weights.device)
    marginal_x, marginal_y = weights.sum(-2), weights.sum(-1)  # (..., cols), (..., rows)
    mean_x, mean_y = (marginal_x * axis).sum(-1), (marginal_y * axis).sum(-1)
    var_x = (marginal_x * axis.square()).sum(-1) - mean_x.square()
    var_y = (marginal_y * axis.square()).sum(-1) - mean_y.square()
    spread = torch.stack([var_x, var_y], -1).clamp_min(0.0).add(1e-6).sqrt()
    return torch.cat([torch.stack([mean_x, mean_y], -1), spread], -1)


class FoveatedEncoder(nn.Module):
    """DINOv3 ViT read by one query token per frame through cached patch keys/values.

    The patch pass is the ViT's own forward, written out so that each layer's keys/values are captured as they
    are computed (once). The query pass pushes one token per frame through the same layers; at every layer it
    attends to that frame's cached keys/values plus its own, which equals running the ViT on
    ``[CLS, registers, query, patches]`` with a mask that hides the query from every other token.
    """

    def __init__(self, config: FoveatedVLMConfig):
        super().__init__()
        self.config = config
        self.vision_model = DINOv3ViTModel(config.vision_config)
        vision = config.vision_config
        self.num_heads = vision.num_attention_heads
        self.head_dim = vision.hidden_size // vision.num_attention_heads
        self.num_prefix_tokens = 1 + vision.num_register_tokens
        self.gradient_checkpointing = False

    @property
    def layers(self) -> nn.ModuleList:
        return self.vision_model.model.layer

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        """``[N, S, D]`` -> ``[N, heads, S, D/heads]``."""
        n, s, _ = states.shape
        return states.view(n, s, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, states: torch.Tensor) -> torch.Tensor:
        """``[N, heads, S, D/heads]`` -> ``[N, S, D]``."""
        n, _, s, _ = states.shape
        return states.transpose(1, 2).reshape(n, s, self.num_heads * self.head_dim)

    @staticmethod
    def _feed_forward(layer: nn.Module, states: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residual attention output then residual MLP of one ViT layer."""
        states = states + layer.drop_path(layer.layer_scale1(layer.attention.o_proj(attended)))
        return states + layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(states))))

    def _patch_layer(
        self, layer: nn.Module, states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One ViT layer over ``[N, S, D]`` frame tokens; returns new states and this layer's keys/values."""
        attention = layer.attention
        normed = layer.norm1(states)
        query = self._split_heads(attention.q_proj(normed))
        key = self._split_heads(attention.k_proj(normed))
        value = self._split_heads(attention.v_proj(normed))
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        attended = F.scaled_dot_product_attention(query, key, value, scale=attention.scaling)
        return self._feed_forward(layer, states, self._merge_heads(attended)), key, value

    def encode_patches(self, pixel_values: torch.Tensor) -> PatchCache:
        """Patch pass over ``[N, C, H, W]`` frames; caches every layer's keys/values (computed once)."""
        vit = self.vision_model
        pixel_values = pixel_values.to(vit.embeddings.patch_embeddings.weight.dtype)
        states = vit.embeddings(pixel_values)
        cos, sin = vit.rope_embeddings(pixel_values)
        keys, values = [], []
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                states, key, value = checkpoint(
                    self._patch_layer, layer, states, cos, sin, use_reentrant=False
                )
            else:
                states, key, value = self._patch_layer(layer, states, cos, sin)
            keys.append(key)
            values.append(value)
        return PatchCache(keys=keys, values=values, patch_states=vit.norm(states))

    def _query_scores(
        self,
        query: torch.Tensor,
        cached_key: torch.Tensor,
        own_key: torch.Tensor,
        scale: float,
        patch_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """Scores of query tokens ``[N, heads, k, d]`` over cached keys and their own key -> ``[N, heads, k, S+1]``.

        Key order is ``[CLS, registers, patches, own key]``. ``patch_bias [N, k, P]`` is added to the patch scores
        (a probe's mask); top-k keeps the k best patches; ``query_attention_prefix="ignore"`` removes CLS, the
        registers and the own key.
        """
        config = self.config
        cached = torch.matmul(query, cached_key.transpose(-1, -2)) * scale  # (N, heads, k, S)
        own = (query * own_key).sum(-1, keepdim=True) * scale  # (N, heads, k, 1)
        prefix, patches = cached.split(
            [self.num_prefix_tokens, cached.shape[-1] - self.num_prefix_tokens], -1
        )
        blocked = torch.finfo(cached.dtype).min
        if patch_bias is not None:
            patches = (patches + patch_bias.unsqueeze(1).to(patches.dtype)).clamp_min(blocked)
        if config.query_attention_top_k:
            top_k = min(config.query_attention_top_k, patches.shape[-1])
            threshold = patches.topk(top_k, dim=-1).values[..., -1:]
            patches = patches.masked_fill(patches < threshold, blocked)
        if config.query_attention_prefix == "ignore":
            prefix, own = prefix.new_full(prefix.shape, blocked), own.new_full(own.shape, blocked)
        return torch.cat([prefix, patches, own], dim=-1)

    def _attention_weights(self, scores: torch.Tensor) -> torch.Tensor:
        """Softmax of scores ``[..., S+1]``, made one-hot per head in the forward for hard attention.

        ``straight_through`` keeps the softmax's gradient under the argmax; ``gumbel`` perturbs the scores with
        Gumbel noise while training (the Gumbel-softmax estimator at ``gumbel_temperature``).
        """
        config = self.config
        scores = scores.float()
        if config.query_attention_hard == "gumbel" and self.training:
            uniform = torch.rand_like(scores).clamp(
                torch.finfo(scores.dtype).tiny, 1.0 - torch.finfo(scores.dtype).eps
            )
            scores = (scores - (-uniform.log()).log()) / config.gumbel_temperature
        soft = scores.softmax(-1)
        if config.query_attention_hard == "soft":
            return soft
        hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
        return hard + (soft - soft.detach())  # exactly one-hot forward, the softmax gradient backward

    def _query_layer(
        self,
        layer: nn.Module,
        states: torch.Tensor,
        cached_key: torch.Tensor,
        cached_value: torch.Tensor,
        patch_bias: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ViT layer for query tokens ``[N, k, D]``; returns new states and weights ``[N, heads, k, S+1]``.

        Each of the k tokens attends to the cached patch K/V and to its own key only (never to the other tokens).
        """
        attention = layer.attention
        normed = layer.norm1(states)
        query = self._split_heads(attention.q_proj(normed))  # (N, heads, k, d)
        own_key = self._split_heads(attention.k_proj(normed))
        own_value = self._split_heads(attention.v_proj(normed))
        scale = attention.scaling / self.config.query_attention_temperature
        scores = self._query_scores(query, cached_key, own_key, scale, patch_bias)
        weights = self._attention_weights(scores).to(query.dtype)  # (N, heads, k, S+1)
        attended = torch.matmul(weights[..., :-1], cached_value) + weights[..., -1:] * own_value
        return self._feed_forward(layer, states, self._merge_heads(attended)), weights

    def attention_map_layers(self) -> tuple[int, ...]:
        """Encoder layers whose query attention is reported (``attention_map_layer``; None: all of them)."""
        layer = self.config.attention_map_layer
        return tuple(range(len(self.layers))) if layer is None else (layer % len(self.layers),)

    def query(
        self, query_tokens: torch.Tensor, cache: PatchCache, patch_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Query pass: query tokens ``[N, D]`` (or ``[N, k, D]``) through all layers against the frames' cached K/V.

        With k tokens per frame each one sees the patches and itself only, so one pass equals k separate passes
        while each layer's K/V are read once. ``patch_bias`` (``[N, P]``, or ``[N, k, P]``) is added to every
        layer's patch scores: ``-inf`` outside a region confines the reading to it (test-time probes).

        Returns:
            visual tokens ``[N, D]`` (``[N, k, D]``): the normed encoder output at each query, and each query's full
            attention distribution ``[N, S+1]`` (``[N, k, S+1]``) over ``[CLS, registers, patches, own key]`` at
            ``config.attention_map_layer`` (mean over heads, and over layers when it is None; sums to 1;
            ``split_attention`` separates it).
        """
        one_token = query_tokens.dim() == 2
        states = (query_tokens.unsqueeze(1) if one_token else query_tokens).to(cache.keys[0].dtype)
        if patch_bias is not None and patch_bias.dim() == 2:
            patch_bias = patch_bias.unsqueeze(1)  # (N, 1, P): the same region for every token of a frame
        map_layers = self.attention_map_layers()
        attention_map = 0.0
        for index, layer in enumerate(self.layers):
            states, weights = self._query_layer(
                layer, states, cache.keys[index], cache.values[index], patch_bias
            )
            if index in map_layers:
                attention_map = attention_map + weights.float().mean(1) / len(map_layers)  # (N, k, S+1)
        visual_tokens = self.vision_model.norm(states)
        if one_token:
            return visual_tokens.squeeze(1), attention_map.squeeze(1)
        return visual_tokens, attention_map


class FiLMPredictionHead(nn.Module):
    """Predicts the next frame's target from an LLM state and the previous target (FiLM conditioning).

    The previous target ``[N, C, h, w]`` is encoded by convolutions, scaled and shifted channel-wise by values
    computed from the LLM state ``[N, H]``, and decoded back to a full (non-residual) target ``[N, C, h, w]``.
    """

    def __init__(self, config: FoveatedVLMConfig):
        super().__init__()
        channels = [config.target_channels, *config.film_channels]
        width = channels[-1]
        self.film = nn.Sequential(
            nn.Linear(config.text_config.hidden_size, config.film_hidden_dim),
            nn.GELU(),
            nn.Linear(config.film_hidden_dim, 2 * width),
        )
        self.target_encoder = self._conv_stack(channels)
        self.target_decoder = self._conv_stack(channels[::-1])
        self.query_skip = (
            nn.Linear(config.query_dim, width, bias=False) if config.query_skip_to_head else None
        )

    @staticmethod
    def _conv_stack(channels: list[int]) -> nn.Sequential:
        modules: list[nn.Module] = []
        for index, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            modules.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
            if index < len(channels) - 2:
                modules.append(nn.GELU())
        return nn.Sequential(*modules)

    def forward(
        self, hidden: torch.Tensor, previous_target: torch.Tensor, query: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``hidden [N, H]``, ``previous_target [N, C, h, w]``, optional ``query [N, Q]`` -> ``[N, C, h, w]``.

        The convolutions run channels-last (the layout cuDNN's bf16 kernels use: no layout conversion of the
        wide intermediate features); the prediction comes back contiguous.
        """
        previous = previous_target.to(hidden.dtype, memory_format=torch.channels_last)
        features = self.target_encoder(previous)
        scale, shift = self.film(hidden).chunk(2, dim=-1)
        features = features * scale[..., None, None] + shift[..., None, None]
        if self.query_skip is not None and query is not None:
            features = features + self.query_skip(query.to(hidden.dtype))[..., None, None]
        return self.target_decoder(features).contiguous()


class FoveatedVLMPreTrainedModel(PreTrainedModel):
    """Weight initialisation and Hub plumbing shared by the foveated VLM classes."""

    config_class = FoveatedVLMConfig
    config: FoveatedVLMConfig
    base_model_prefix = "foveated"
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
        if isinstance(module, FoveatedVLMForConditionalGeneration):
            text_std = self.config.text_config.initializer_range
            if self.config.foveation_mode == "foveated":
                init.normal_(module.fovea_static_query, std=self.config.query_init_std)
                init.normal_(module.fovea_initial_query, std=self.config.query_init_std)
            init.normal_(module.fovea_mode_embeddings, std=text_std)
            init.normal_(module.fovea_video_end_embedding, std=text_std)
            init.zeros_(module.fovea_initial_target)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.kaiming_uniform_(module.weight, a=KAIMING_SLOPE)
            if module.bias is not None:
                init.zeros_(module.bias)


class FoveatedVLMForConditionalGeneration(FoveatedVLMPreTrainedModel, GenerationMixin):
    """Foveated video-language model with next-frame prediction and captioning.

    Inputs come from :class:`FoveatedVLMProcessor`: ``input_ids`` hold one ``frame_token_id`` per valid frame
    (``dense_tokens_per_frame`` in dense mode) between ``video_start_token_id`` and ``video_end_token_id``;
    ``pixel_values_videos [B, T, 3, H, W]`` with ``video_frame_mask [B, T]`` hold the frames.
    New modules carry a ``fovea_`` prefix so that PEFT's name matching never confuses them with LLM layers.
    """

    _tied_weights_keys = {"language_model.lm_head.weight": "language_model.model.embed_tokens.weight"}

    def __init__(self, config: FoveatedVLMConfig):
        super().__init__(config)
        config.auto_map = {**(getattr(config, "auto_map", None) or {}), **AUTO_MAP}
        vision_width = config.vision_config.hidden_size
        text_width = config.text_config.hidden_size
        self.fovea_encoder = FoveatedEncoder(config)
        self.language_model = LlamaForCausalLM(config.text_config)
        if config.foveation_mode == "dense":
            self.fovea_dense_projection = nn.Linear(vision_width * self._dense_unshuffle**2, text_width)
        else:
            queries = config.num_queries_per_frame
            query_shape = (config.query_dim,) if queries == 1 else (queries, config.query_dim)
            self.fovea_visual_projection = nn.Linear(vision_width, text_width)
            self.fovea_location_projection = (
                nn.Linear(GLIMPSE_LOCATION_FEATURES, text_width) if config.glimpse_location else None
            )
            self.fovea_query_head = nn.Linear(text_width, queries * config.query_dim)
            self.fovea_query_input_projection = nn.Linear(config.query_dim, vision_width, bias=False)
            self.fovea_static_query = nn.Parameter(torch.empty(query_shape))
            self.fovea_initial_query = nn.Parameter(torch.empty(query_shape))
        self.fovea_mode_embeddings = nn.Parameter(torch.empty(2, text_width))
        self.fovea_video_end_embedding = nn.Parameter(torch.empty(text_width))
        self.fovea_initial_target = nn.Parameter(torch.empty(config.target_shape))
        self.fovea_prediction_head = FiLMPredictionHead(config)
        self.fovea_coarse_prediction_head = (
            FiLMPredictionHead(config) if config.separate_prediction_heads else None
        )
        self.post_init()

    # ----------------------------------------------------------------------------------------- plumbing
    @property
    def _dense_unshuffle(self) -> int:
        grid = self.config.vision_config.image_size // self.config.vision_config.patch_size
        return grid // round(self.config.dense_tokens_per_frame**0.5)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.fovea_encoder.gradient_checkpointing = enable
        if enable:
            self.language_model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            self.language_model.activation_checkpointing_disable()

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

    def stream(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Open a frame-by-frame streaming session over a prompt (see ``streaming_foveated.FoveatedStream``)."""
        try:
            from .streaming_foveated import FoveatedStream
        except ImportError:  # imported as a top-level module from a checkout of the repository
            from streaming_foveated import FoveatedStream
        return FoveatedStream(self, input_ids, attention_mask, **kwargs)

    # ----------------------------------------------------------------------------------------- vision
    def encode_frames(self, frames: torch.Tensor) -> PatchCache:
        """Patch pass over valid frames ``[N, 3, H, W]`` (one batched pass, K/V cached)."""
        return self.fovea_encoder.encode_patches(frames)

    def read_frames(
        self, queries: torch.Tensor, cache: PatchCache, patch_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Read frames with queries ``[N, Q]`` (or k a frame, ``[N, k, Q]``, in one pass).

        Returns visual tokens ``[N, D]`` (``[N, k, D]``) and each query's full attention distribution ``[N, S+1]``
        (``[N, k, S+1]``) over ``[CLS, registers, patches, own key]``; ``patch_bias [N, P]`` confines it (probes).
        """
        query_tokens = self.fovea_query_input_projection(
            queries.to(self.fovea_query_input_projection.weight.dtype)
        )
        return self.fovea_encoder.query(query_tokens, cache, patch_bias)

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
        inputs = inputs * self.config.visual_token_scale
        return inputs.reshape(-1, inputs.shape[-1])  # (N * tokens_per_frame, H)

    def dense_tokens(self, cache: PatchCache) -> torch.Tensor:
        """Dense baseline: patch states pixel-unshuffled to ``[N * dense_tokens_per_frame, H]`` LLM inputs."""
        patches = cache.patch_states[:, self.fovea_encoder.num_prefix_tokens :]
        n, p, d = patches.shape
        grid = int(p**0.5)
        grid_map = patches.transpose(1, 2).reshape(n, d, grid, grid)
        unshuffled = F.pixel_unshuffle(grid_map, self._dense_unshuffle).flatten(2).transpose(1, 2)
        tokens = self.fovea_dense_projection(unshuffled) * self.config.visual_token_scale
        return tokens.reshape(-1, tokens.shape[-1])

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
        return queries.unflatten(-1, (self.config.num_queries_per_frame, self.config.query_dim))

    def planned_queries(self, hidden: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
        """The query that reads each valid frame ``[N, Q]`` (``[N, k, Q]``), from coarse-pass states ``[B, L, H]``.

        Frame t > 1 is read by the query planned at frame t-1's last token; frame 1 by ``q_init``, or with
        ``plan_first_query`` by the query planned at ``<video_start>`` (after the prompt).
        """
        if self.config.plan_first_query:  # the state just before each frame is that frame's planner
            return self.next_queries(_gather_positions(hidden, layout.predictor_index))
        planned = self.next_queries(self.planning_states(hidden, layout.slot_index))
        first = layout.first_frame.view(-1, *([1] * (planned.dim() - 1)))
        return torch.where(
            first, self.initial_queries(planned.shape[0]).to(planned.dtype), planned.roll(1, dims=0)
        )

    def planning_states(self, hidden: torch.Tensor, slot_index: torch.Tensor) -> torch.Tensor:
        """LLM states ``[N, H]`` at the last token of each frame (``slot_index [N * k]``) of ``hidden [B, L, H]``."""
        last_slots = slot_index.view(-1, self.config.tokens_per_frame)[:, -1]
        return _gather_positions(hidden, last_slots)

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
        return self.language_model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
        )

    def _run_causal_decoder(self, inputs_embeds: torch.Tensor) -> BaseModelOutputWithPast:
        """``[B, L, H]`` through every decoder layer with causal attention and positions ``0 .. L-1``."""
        decoder = self.language_model.model
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
            caption_index, caption_targets = caption_positions(labels)
            layout = replace(layout, caption_index=caption_index, caption_targets=caption_targets)
        return layout.to(input_ids.device, non_blocking=True)

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
        fine_queries: torch.Tensor | None = None,
        fine_patch_bias: torch.Tensor | None = None,
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
            fine_queries: ``[N, Q]`` (``[N, k, Q]``) queries that read the valid frames in the fine pass instead of
                the planned ones (test-time probes: static, random, shuffled queries on the same weights).
            fine_patch_bias: ``[N, P]`` added to the fine queries' patch scores in every encoder layer; ``-inf``
                outside a region confines the reading to it (probes: a glimpse at the centre or at the object).
        """
        if inputs_embeds is not None:
            raise ValueError(
                "FoveatedVLMForConditionalGeneration builds its own inputs_embeds; pass input_ids"
            )
        if input_ids is None:
            raise ValueError("input_ids are required")
        mode = inference_mode or self.config.inference_mode
        if mode not in ("two_pass", "coarse"):
            raise ValueError(f"inference_mode must be 'two_pass' or 'coarse', got {mode!r}")
        use_cache = bool(use_cache) and not self.training
        if pixel_values_videos is None:
            if position_ids is None:
                position_ids = self.default_position_ids(input_ids, attention_mask, cache)
            hidden = self.run_language_model(
                self.embed_sequence(input_ids, None, FINE),
                attention_mask,
                position_ids,
                cache,
                use_cache,
            )
            return self._text_output(hidden, labels, logits_to_keep)

        check_pixel_values(pixel_values_videos, video_frame_mask, values=video_layout is None)  # see its doc
        layout = self.resolve_video_layout(
            input_ids, pixel_values_videos, video_frame_mask, attention_mask, labels, video_layout
        )
        patches = self.encode_frames(_select_frames(pixel_values_videos, layout.frame_index))
        targets = (
            None if prediction_targets is None else _select_frames(prediction_targets, layout.frame_index)
        )
        boxes = None if attention_targets is None else _select_frames(attention_targets, layout.frame_index)
        if not layout.padded and cache is None and position_ids is None:
            attention_mask = None  # no padding and default positions: purely causal attention, no mask at all
        elif position_ids is None:
            position_ids = self.default_position_ids(input_ids, attention_mask, cache)
        passes = _PassInputs(input_ids, attention_mask, position_ids, cache, use_cache, layout)

        if self.config.foveation_mode == "dense":
            return self._dense_forward(passes, patches, targets, labels, logits_to_keep)
        probe = _FineProbe(fine_queries, fine_patch_bias)
        return self._foveated_forward(
            passes, patches, targets, labels, logits_to_keep, mode == "coarse", boxes, probe
        )

    def default_position_ids(self, input_ids, attention_mask, cache) -> torch.Tensor:
        """Positions of ``input_ids [B, L]`` following the (left-padded) attention mask and the cache length."""
        past = 0 if cache is None else cache.get_seq_length()
        if attention_mask is None:
            return torch.arange(past, past + input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return positions[:, -input_ids.shape[1] :]

    def _foveated_forward(
        self, passes, patches, targets, labels, logits_to_keep, coarse_only: bool, boxes, probe: _FineProbe
    ):
        static = self.static_queries(patches.keys[0].shape[0])
        visual_coarse, attention_coarse = self.read_coarse(patches)
        embeds_coarse = self.embed_sequence(
            passes.input_ids,
            self.project_visual_tokens(visual_coarse, attention_coarse),
            COARSE,
            passes.layout.slot_index,
        )
        coarse = self.run_language_model(
            embeds_coarse,
            passes.attention_mask,
            passes.position_ids,
            passes.cache if coarse_only else None,
            use_cache=passes.use_cache and coarse_only,
        )
        coarse_head = self.fovea_coarse_prediction_head or self.fovea_prediction_head
        patch_coarse, prefix_coarse = self.split_attention(attention_coarse)
        output = FoveatedVLMOutput(
            attention_coarse=patch_coarse,
            attention_prefix_coarse=prefix_coarse,
            visual_tokens_coarse=visual_coarse,
            predictions_coarse=self._predict(coarse_head, coarse.last_hidden_state, passes, targets, static),
        )
        if coarse_only:
            return self._finish(output, coarse, passes, targets, labels, logits_to_keep, hidden_coarse=coarse)

        layout = passes.layout
        queries = probe.queries
        if queries is None:
            queries = self.planned_queries(coarse.last_hidden_state, layout)
        visual_fine, attention_fine = self.read_frames(queries, patches, probe.patch_bias)
        embeds_fine = self.embed_sequence(
            passes.input_ids,
            self.project_visual_tokens(visual_fine, attention_fine),
            FINE,
            layout.slot_index,
        )
        fine = self.run_language_model(
            embeds_fine, passes.attention_mask, passes.position_ids, passes.cache, passes.use_cache
        )
        output.queries = queries
        output.attention_fine, output.attention_prefix_fine = self.split_attention(attention_fine)
        output.visual_tokens_fine = visual_fine
        output.predictions_fine = self._predict(
            self.fovea_prediction_head, fine.last_hidden_state, passes, targets, queries
        )
        if boxes is not None and self.config.attention_supervision_weight:
            output.loss_attention = attention_box_loss(output.attention_fine, boxes)
        return self._finish(
            output, fine, passes, targets, labels, logits_to_keep, hidden_fine=fine, hidden_coarse=coarse
        )

    def _dense_forward(self, passes, patches, targets, labels, logits_to_keep):
        embeds = self.embed_sequence(
            passes.input_ids, self.dense_tokens(patches), FINE, passes.layout.slot_index
        )
        dense = self.run_language_model(
            embeds, passes.attention_mask, passes.position_ids, passes.cache, passes.use_cache
        )
        output = FoveatedVLMOutput(
            predictions_fine=self._predict(
                self.fovea_prediction_head, dense.last_hidden_state, passes, targets
            )
        )
        return self._finish(output, dense, passes, targets, labels, logits_to_keep, hidden_fine=dense)

    def previous_targets(self, targets: torch.Tensor, first_frame: torch.Tensor) -> torch.Tensor:
        """Conditioning of each prediction: ``[z_init, target_1 .. target_{T-1}]`` per video, ``[N, C, h, w]``."""
        initial = self.fovea_initial_target.to(targets.dtype).expand_as(targets)
        return torch.where(first_frame[:, None, None, None], initial, targets.roll(1, dims=0))

    def _predict(self, head, hidden, passes, targets, queries=None) -> torch.Tensor | None:
        if targets is None:
            return None
        states = _gather_positions(hidden, passes.layout.predictor_index)
        previous = self.previous_targets(targets, passes.layout.first_frame)
        conditioning = previous
        if self.training and self.config.previous_target_dropout:
            conditioning = F.dropout(previous, p=self.config.previous_target_dropout)
        return self.predict_next_targets(head, states, previous, queries, conditioning)

    def predict_next_targets(
        self,
        head: FiLMPredictionHead,
        states: torch.Tensor,
        previous: torch.Tensor,
        queries: torch.Tensor | None,
        conditioning: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-frame targets ``[N, C, h, w]`` from LLM states ``[N, H]`` and previous targets ``[N, C, h, w]``.

        The head sees ``conditioning`` (the previous targets after ``previous_target_dropout``; the previous
        targets themselves by default); with ``predict_delta`` its output is a change added to the clean previous
        target, so the dropout never leaks back through the residual. k queries a frame are averaged for the
        head's query skip.
        """
        if queries is not None and queries.dim() == 3:
            queries = queries.mean(1)  # (N, Q)
        prediction = head(states, previous if conditioning is None else conditioning, queries)
        return prediction + previous if self.config.predict_delta else prediction

    # ----------------------------------------------------------------------------------------- losses
    def _finish(
        self,
        output,
        cached_pass,
        passes,
        targets,
        labels,
        logits_to_keep,
        hidden_fine=None,
        hidden_coarse=None,
    ) -> FoveatedVLMOutput:
        """Logits of the pass that feeds the cache, every loss term, and their weighted total."""
        config = self.config
        states = cached_pass.last_hidden_state
        output.cache = cached_pass.cache
        output.logits = self.language_model.lm_head(states[:, -logits_to_keep:] if logits_to_keep else states)
        terms: list[torch.Tensor] = []
        if targets is not None:
            if output.predictions_fine is not None:
                output.loss_fine = F.mse_loss(output.predictions_fine.float(), targets.float())
                terms.append(config.prediction_loss_weight * output.loss_fine)
            if output.predictions_coarse is not None:
                output.loss_coarse = F.mse_loss(output.predictions_coarse.float(), targets.float())
                terms.append(config.prediction_loss_weight * config.lambda_coarse * output.loss_coarse)
            if config.predict_delta and config.delta_l1_weight:
                output.loss_delta_l1 = self._delta_l1(output, targets, passes.layout.first_frame)
                terms.append(config.delta_l1_weight * output.loss_delta_l1)
        if labels is not None:
            captions = (passes.layout.caption_index, passes.layout.caption_targets)
            if hidden_fine is not None:
                output.loss_caption = self._caption_loss(hidden_fine.last_hidden_state, *captions)
                terms.append(config.caption_loss_weight * output.loss_caption)
            if hidden_coarse is not None:
                output.loss_caption_coarse = self._caption_loss(hidden_coarse.last_hidden_state, *captions)
                terms.append(config.caption_loss_weight * config.lambda_coarse * output.loss_caption_coarse)
        if output.visual_tokens_fine is not None and config.contrastive_loss_weight:
            output.loss_contrastive = F.cosine_similarity(
                output.visual_tokens_fine.float(), output.visual_tokens_coarse.float(), dim=-1
            ).mean()
            terms.append(config.contrastive_loss_weight * output.loss_contrastive)
        if output.attention_fine is not None and config.entropy_loss_weight:
            gap = attention_entropy(output.attention_fine, output.attention_prefix_fine) - attention_entropy(
                output.attention_coarse, output.attention_prefix_coarse
            )
            output.loss_entropy = F.relu(gap + config.entropy_margin).mean()
            terms.append(config.entropy_loss_weight * output.loss_entropy)
        if output.loss_attention is not None:
            terms.append(config.attention_supervision_weight * output.loss_attention)
        if terms:
            output.loss = torch.stack(terms).sum()
        return output

    def _delta_l1(
        self, output: FoveatedVLMOutput, targets: torch.Tensor, first_frame: torch.Tensor
    ) -> torch.Tensor:
        previous = self.previous_targets(targets, first_frame)
        predictions = [p for p in (output.predictions_fine, output.predictions_coarse) if p is not None]
        return torch.stack([(p.float() - previous.float()).abs().mean() for p in predictions]).mean()

    def _caption_loss(
        self, hidden: torch.Tensor, caption_index: torch.Tensor, caption_targets: torch.Tensor
    ) -> torch.Tensor:
        """Next-token cross-entropy on the supervised positions ``[M]`` of ``hidden [B, L, H]`` (LM head on those)."""
        logits = self.language_model.lm_head(_gather_positions(hidden, caption_index)).float()
        return F.cross_entropy(logits, caption_targets)

    def _text_output(self, hidden, labels, logits_to_keep) -> FoveatedVLMOutput:
        states = hidden.last_hidden_state
        output = FoveatedVLMOutput(
            logits=self.language_model.lm_head(states[:, -logits_to_keep:] if logits_to_keep else states),
            cache=hidden.cache,
        )
        if labels is not None:
            output.loss_caption = self._caption_loss(states, *caption_positions(labels))
            output.loss = self.config.caption_loss_weight * output.loss_caption
        return output


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
class _FineProbe:
    """Test-time replacements for the fine pass's reading (all None in normal use)."""

    queries: torch.Tensor | None = None
    patch_bias: torch.Tensor | None = None


def attention_box_loss(patch_attention: torch.Tensor, box_coverage: torch.Tensor) -> torch.Tensor:
    """``-log`` attention mass inside a box, mean over the frames where the box is in view.

    ``patch_attention [N, P]`` is the patch part of the full distribution (mass on CLS, registers or the query's
    own key counts as outside); ``box_coverage [N, P]`` is the fraction of each patch the box covers.
    """
    coverage = box_coverage.to(patch_attention.dtype)
    mass = (patch_attention.float() * coverage.float()).sum(-1)
    in_view = (coverage.sum(-1) > 0).float()
    nll = -mass.clamp_min(torch.finfo(torch.float32).tiny).log()
    return (nll * in_view).sum() / in_view.sum().clamp_min(1.0)


def _select_frames(frames: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
    """Valid frames ``[N, ...]`` of ``frames [B, T, ...]`` at flat indices ``frame_index [N]``."""
    return frames.flatten(0, 1).index_select(0, frame_index)


def _gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows ``[M, H]`` of ``hidden [B, L, H]`` at flat positions ``positions [M]``."""
    return hidden.flatten(0, 1).index_select(0, positions)


__all__ = [
    "FiLMPredictionHead",
    "FoveatedEncoder",
    "FoveatedVLMForConditionalGeneration",
    "FoveatedVLMOutput",
    "FoveatedVLMPreTrainedModel",
    "PatchCache",
    "attention_box_loss",
    "attention_entropy",
    "glimpse_location",
]

FoveatedVLMConfig.register_for_auto_class()
FoveatedVLMForConditionalGeneration.register_for_auto_class("AutoModel")
