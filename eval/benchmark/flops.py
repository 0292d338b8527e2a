"""Analytic model FLOPs: the patch pass, the query pass, the LLM, the prediction head and a whole training step."""

from __future__ import annotations

import torch

from configuration_foveated import FoveatedVLMConfig


def encoder_frame_flops(config: FoveatedVLMConfig) -> float:
    """Forward FLOPs of the patch pass over one frame (patch embedding, every layer's linears and attention)."""
    vision = config.vision_config
    width, tokens = vision.hidden_size, config.num_patches + 1 + vision.num_register_tokens
    layer_weights = 4 * width * width + 2 * width * vision.intermediate_size
    embed = 2 * config.num_patches * vision.num_channels * vision.patch_size**2 * width
    return embed + vision.num_hidden_layers * (2 * tokens * layer_weights + 4 * tokens * tokens * width)


def query_frame_flops(config: FoveatedVLMConfig) -> float:
    """Forward FLOPs of one query token through every encoder layer against a frame's cached K/V (+ projections)."""
    vision = config.vision_config
    width, tokens = vision.hidden_size, config.num_patches + 1 + vision.num_register_tokens
    layer_weights = 4 * width * width + 2 * width * vision.intermediate_size
    projections = 2 * config.query_dim * width + 2 * width * config.text_config.hidden_size
    return projections + vision.num_hidden_layers * (2 * layer_weights + 4 * (tokens + 1) * width)


def llm_token_flops(config: FoveatedVLMConfig, context: int) -> float:
    """Forward FLOPs of one LLM token attending to ``context`` positions (full-square attention convention)."""
    text = config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    attention_width = text.num_attention_heads * head_dim
    kv_width = 2 * text.num_key_value_heads * head_dim
    weights = (
        text.hidden_size * (2 * attention_width + kv_width) + 3 * text.hidden_size * text.intermediate_size
    )
    return text.num_hidden_layers * (2 * weights + 4 * context * attention_width)


def prediction_head_flops(config: FoveatedVLMConfig) -> float:
    """Forward FLOPs of the FiLM prediction head for one frame (MLP + conv encoder and decoder at target size)."""
    channels = [config.target_channels, *config.film_channels]
    _, height, width = config.target_shape
    convs = sum(2 * height * width * 9 * c_in * c_out for c_in, c_out in zip(channels[:-1], channels[1:]))
    film = 2 * (
        config.text_config.hidden_size * config.film_hidden_dim + config.film_hidden_dim * 2 * channels[-1]
    )
    return 2 * convs + film


def training_step_flops(
    config: FoveatedVLMConfig, batch: dict[str, torch.Tensor], logits_to_keep: int
) -> float:
    """Model FLOPs of one training step on ``batch``: 3x the forward of every trained part (forward + backward).

    Counts the patch pass, the query passes (two when foveated), the LLM over every sequence (two passes when
    foveated), the dense projection, the LM head on supervised tokens, the prediction head, and the forward-only
    logits of the last ``logits_to_keep`` positions. Elementwise work is not counted.
    """
    frames = int(batch["video_frame_mask"].sum())
    passes = 2 if config.foveation_mode == "foveated" else 1
    lengths = batch["attention_mask"].sum(1).tolist()
    text = config.text_config
    supervised = int((batch["labels"][:, 1:] != -100).sum()) if "labels" in batch else 0
    forward = frames * encoder_frame_flops(config)
    if config.foveation_mode == "foveated":
        forward += passes * frames * query_frame_flops(config)
    else:
        unshuffled = config.vision_config.hidden_size * config.num_patches // config.dense_tokens_per_frame
        forward += frames * config.dense_tokens_per_frame * 2 * unshuffled * text.hidden_size
    forward += passes * sum(length * llm_token_flops(config, length) for length in lengths)
    forward += passes * supervised * 2 * text.hidden_size * text.vocab_size
    if "prediction_targets" in batch:
        forward += passes * frames * prediction_head_flops(config)
    keep = max(lengths) if logits_to_keep == 0 else logits_to_keep
    return 3 * forward + len(lengths) * keep * 2 * text.hidden_size * text.vocab_size
