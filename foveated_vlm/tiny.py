"""Tiny, self-contained model parts for tests, the CPU demo and the CPU benchmark (no hub, no downloads).

``tiny_tokenizer()`` trains a small byte-level BPE on an embedded corpus, with SmolLM2's special tokens at the
same ids (0 ``<|endoftext|>``, 1 ``<|im_start|>``, 2 ``<|im_end|>``) and its chat template, so that every code
path that works with it works with SmolLM2's real tokenizer.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from configuration_foveated import FoveatedVLMConfig
from foveated_vlm.data.procedural import text_inventory
from processing_foveated import (
    CHAT_ROLES,
    CHATML_TEMPLATE,
    DEFAULT_PROMPT,
    SMOLLM2_SYSTEM_PROMPT,
    VIDEO_TOKENS,
    FoveatedVLMProcessor,
    add_video_tokens,
)

SMOLLM2_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_VOCAB_SIZE = 544
"""More than the corpus's ~520 learnable tokens, so BPE learns every merge: each word of the procedural data and
of the system prompt is one token (512 left some of them split)."""
EXTRA_TEXT = (DEFAULT_PROMPT, SMOLLM2_SYSTEM_PROMPT, *CHAT_ROLES, "\n")
"""Text the tokenizer should know besides the procedural data's (which it takes from ``procedural_text``)."""


def _corpus() -> list[str]:
    """Every caption, prompt, question, answer and option the procedural data can produce (from its own
    vocabulary and templates), then ``EXTRA_TEXT``, so that every word the data emits gets whole-word tokens."""
    return [*text_inventory(), *EXTRA_TEXT]


TINY_VISION: dict[str, object] = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_register_tokens": 2,
    "layerscale_value": 1.0,
    "pos_embed_rescale": None,  # DINOv3's random RoPE rescaling is a pretraining augmentation
}
"""The tiny DINOv3 ViT's ``DINOv3ViTConfig`` fields (configs override the shapes); the frame encoder's
pretraining (:mod:`foveated_vlm.pretrain_encoder`) starts from them too."""


def tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer with SmolLM2's special tokens, chat template and the video tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SMOLLM2_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    wrapped.chat_template = CHATML_TEMPLATE
    add_video_tokens(wrapped)
    return wrapped


def tiny_config(tokenizer: PreTrainedTokenizerFast | None = None, **overrides) -> FoveatedVLMConfig:
    """A FoveatedVLMConfig of the real structure at toy size (32 px frames, 2-layer ViT and LLM).

    ``overrides`` are FoveatedVLMConfig fields; ``vision``/``text`` dicts override the sub-config shapes. The
    tiny encoder trains from scratch, so DINOv3's pretraining-time RoPE augmentation (random rescaling) is off:
    a training step then draws no random numbers unless a dropout is configured.
    """
    tokenizer = tokenizer or tiny_tokenizer()
    vision = dict(TINY_VISION)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "initializer_range": 0.02,
    }
    vision.update(overrides.pop("vision", {}))
    text.update(overrides.pop("text", {}))
    settings = {
        "query_dim": 24,
        "film_hidden_dim": 32,
        "film_channels": [8, 16],
        "target_downsample": 8,
        **video_token_ids(tokenizer),
    }
    settings.update(overrides)
    return FoveatedVLMConfig(vision_config=vision, text_config=text, **settings)


def full_size_config(tokenizer: PreTrainedTokenizerFast | None = None, **overrides) -> FoveatedVLMConfig:
    """The full-size FoveatedVLMConfig (its defaults: DINOv3 ViT-S/16 at 256 px, SmolLM2-135M) for the tiny
    tokenizer's video tokens: random init of the real shapes without reading a checkpoint (speed measurements).

    ``overrides`` are FoveatedVLMConfig fields; ``vision``/``text`` dicts override the sub-config shapes.
    """
    tokenizer = tokenizer or tiny_tokenizer()
    vision, text = overrides.pop("vision", {}), overrides.pop("text", {})
    settings = {**video_token_ids(tokenizer), **overrides}
    return FoveatedVLMConfig(vision_config=dict(vision), text_config=dict(text), **settings)


def video_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """``frame_token_id``, ``video_start_token_id`` and ``video_end_token_id`` of ``tokenizer``."""
    names = ("frame_token_id", "video_start_token_id", "video_end_token_id")
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in zip(names, VIDEO_TOKENS)}


def tiny_processor(
    config: FoveatedVLMConfig, tokenizer: PreTrainedTokenizerFast | None = None
) -> FoveatedVLMProcessor:
    """The processor matching ``config`` (:meth:`FoveatedVLMProcessor.from_model_config`), tiny tokenizer."""
    return FoveatedVLMProcessor.from_model_config(tokenizer or tiny_tokenizer(), config)
