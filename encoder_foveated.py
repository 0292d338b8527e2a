"""The frame encoder of the foveated VLM: a DINOv3 ViT read by query tokens through cached patch keys/values.

The patch pass (:meth:`FoveatedEncoder.encode_patches`) runs each frame through the ViT once and keeps every layer's
keys/values (:class:`PatchCache`). The query pass (:meth:`FoveatedEncoder.query`) pushes query tokens through the
same layers against those cached keys/values: each token sees the frame's tokens and itself, the frame's tokens
never see it. :func:`attention_entropy` and :func:`glimpse_location` (``reader_base_foveated``'s, as is :class:`PatchCache`)
describe where a query's attention went.

Shapes: N (frames), k (query tokens a frame), S (encoder tokens a frame: CLS + R registers + P patches), D (encoder
width), hd (D / heads).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import DINOv3ViTModel
from transformers.models.dinov3_vit.modeling_dinov3_vit import apply_rotary_pos_emb

try:
    from .configuration_foveated import FoveatedVLMConfig
    from .reader_base_foveated import PatchCache, glimpse_location
except ImportError:  # imported as a top-level module from a checkout of the repository
    from configuration_foveated import FoveatedVLMConfig
    from reader_base_foveated import PatchCache, glimpse_location

GLIMPSE_LOCATION_FEATURES = 4  # mean x, mean y, std x, std y of a query's attention over the patch grid


def attention_entropy(attention: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy in nats of attention distributions ``[..., P]`` -> ``[...]``.

    With ``prefix [..., R']`` (the mass on CLS, registers and the query's own key) the entropy is that of the full
    distribution ``[patches, prefix]``, so mass parked on CLS is counted where it is.
    """
    if prefix is not None:
        attention = torch.cat([attention, prefix.to(attention.dtype)], dim=-1)
    return -(attention * attention.clamp_min(torch.finfo(attention.dtype).tiny).log()).sum(-1)


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
        self._regions: dict[str, Callable] = {}  # compiled versions of compile_regions() while installed

    @property
    def layers(self) -> nn.ModuleList:
        return self.vision_model.model.layer

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        """``[N, S, D]`` -> ``[N, heads, S, D/heads]``."""
        n, s, _ = states.shape
        heads = states.view(n, s, self.num_heads, self.head_dim)  # (N, S, heads, hd)
        return heads.transpose(1, 2)  # (N, heads, S, hd)

    def _merge_heads(self, states: torch.Tensor) -> torch.Tensor:
        """``[N, heads, S, D/heads]`` -> ``[N, S, D]``."""
        n, _, s, _ = states.shape
        heads = states.transpose(1, 2)  # (N, S, heads, hd)
        return heads.reshape(n, s, self.num_heads * self.head_dim)  # (N, S, D)

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
        query = self._split_heads(attention.q_proj(normed))  # (N, heads, S, hd)
        key = self._split_heads(attention.k_proj(normed))  # (N, heads, S, hd)
        value = self._split_heads(attention.v_proj(normed))  # (N, heads, S, hd)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        attended = F.scaled_dot_product_attention(query, key, value, scale=attention.scaling)
        return self._feed_forward(layer, states, self._merge_heads(attended)), key, value

    def compile_regions(self) -> dict[str, Callable]:
        """The blocks that repeat once per layer (the layer is an argument, so one compiled graph serves them all):
        the patch layer and the query layer, by name (``acceleration_foveated.CompiledRegions`` compiles them)."""
        return {"patch_layer": self._patch_layer, "query_layer": self._query_layer}

    def use_regions(self, functions: Mapping[str, Callable]) -> dict[str, Callable]:
        """Run ``functions`` (compiled versions of :meth:`compile_regions`, by name) instead of the eager layers; an
        empty mapping restores the eager ones. Returns the mapping it replaced."""
        unknown = set(functions) - set(self.compile_regions())
        if unknown:
            raise ValueError(
                f"the encoder has no regions {sorted(unknown)}; it has {sorted(self.compile_regions())}"
            )
        previous, self._regions = self._regions, dict(functions)
        return previous

    def encode_patches(self, pixel_values: torch.Tensor) -> PatchCache:
        """Patch pass over ``[N, C, H, W]`` frames; caches every layer's keys/values (computed once)."""
        vit = self.vision_model
        pixel_values = pixel_values.to(vit.embeddings.patch_embeddings.weight.dtype)
        states = vit.embeddings(pixel_values)  # (N, S, D)
        cos, sin = vit.rope_embeddings(pixel_values)
        patch_layer = self._regions.get("patch_layer", self._patch_layer)
        keys, values = [], []
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                states, key, value = checkpoint(patch_layer, layer, states, cos, sin, use_reentrant=False)
            else:
                states, key, value = patch_layer(layer, states, cos, sin)
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

        Key order is ``[CLS, registers, patches, own key]``; ``patch_bias [N, k, P]`` is added to the patch scores
        (a probe's mask).
        """
        cached = torch.matmul(query, cached_key.transpose(-1, -2)) * scale  # (N, heads, k, S)
        own = (query * own_key).sum(-1, keepdim=True) * scale  # (N, heads, k, 1)
        if patch_bias is not None:
            prefix, patches = cached.split(
                [self.num_prefix_tokens, cached.shape[-1] - self.num_prefix_tokens], -1
            )  # (N, heads, k, 1 + R), (N, heads, k, P)
            bias = patch_bias.unsqueeze(1).to(patches.dtype)  # (N, 1, k, P): the same for every head
            patches = (patches + bias).clamp_min(torch.finfo(cached.dtype).min)
            cached = torch.cat([prefix, patches], dim=-1)
        return torch.cat([cached, own], dim=-1)  # (N, heads, k, S+1)

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
        query = self._split_heads(attention.q_proj(normed))  # (N, heads, k, hd)
        own_key = self._split_heads(attention.k_proj(normed))  # (N, heads, k, hd)
        own_value = self._split_heads(attention.v_proj(normed))  # (N, heads, k, hd)
        scores = self._query_scores(query, cached_key, own_key, attention.scaling, patch_bias)
        weights = scores.float().softmax(-1).to(query.dtype)  # (N, heads, k, S+1)
        attended = (
            torch.matmul(weights[..., :-1], cached_value) + weights[..., -1:] * own_value
        )  # (N, heads, k, hd)
        return self._feed_forward(layer, states, self._merge_heads(attended)), weights  # (N, k, D), ...

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
        states = (query_tokens.unsqueeze(1) if one_token else query_tokens).to(
            cache.keys[0].dtype
        )  # (N, k, D)
        if patch_bias is not None and patch_bias.dim() == 2:
            patch_bias = patch_bias.unsqueeze(1)  # (N, 1, P): the same region for every token of a frame
        map_layers = self.attention_map_layers()
        query_layer = self._regions.get("query_layer", self._query_layer)
        attention_map = 0.0
        for index, layer in enumerate(self.layers):
            states, weights = query_layer(layer, states, cache.keys[index], cache.values[index], patch_bias)
            if index in map_layers:
                attention_map = attention_map + weights.float().mean(1) / len(map_layers)  # (N, k, S+1)
        visual_tokens = self.vision_model.norm(states)  # (N, k, D)
        if one_token:
            return visual_tokens.squeeze(1), attention_map.squeeze(1)  # (N, D), (N, S+1)
        return visual_tokens, attention_map


__all__ = [
    "GLIMPSE_LOCATION_FEATURES",
    "FoveatedEncoder",
    "PatchCache",
    "attention_entropy",
    "glimpse_location",
]
