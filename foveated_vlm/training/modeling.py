"""Model side of training: build model + processor from the config, LoRA, freezing, parameter groups.

Parameter groups (each split into weight-decayed and not-decayed halves):

* ``new``: the ``fovea_*`` modules and parameters (queries, projections, heads, mode embeddings; in the base
  model ``model.fovea_*`` or beside it ``fovea_*``), ``lr_new``;
* ``encoder``: the DINOv3 ViT (``model.fovea_encoder.*``), ``lr_encoder``;
* ``llm``: the language model (``model.language_model.*`` and an untied ``lm_head``, LoRA adapters included),
  ``lr_llm``.

A trainable parameter that matches none of them raises a ``ValueError`` (a silently mis-grouped new module
trained at the backbone's learning rate was one of the peer's bugs). Weight decay applies to the ``weight`` of
linear and convolution layers only, never to biases, norms, embeddings or learned queries.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import nn
from transformers import DINOv3ViTModel

from modeling_foveated import FoveatedVLMForConditionalGeneration
from processing_foveated import FoveatedVLMProcessor

from .config import LoraSection, TrainingConfig

ENCODER_PREFIX = "model.fovea_encoder."
GROUP_PREFIXES = (
    ("encoder", ENCODER_PREFIX),
    ("llm", "model.language_model."),
    ("llm", "lm_head."),
    ("new", "model.fovea_"),
    ("new", "fovea_"),
)
PEFT_PREFIX = re.compile(r"^(base_model\.model\.)+")
FULL_IMAGE_SIZE = 256
RUNTIME_VISION_FIELDS = (
    "image_size",
    "initializer_range",
    "pos_embed_rescale",
    "pos_embed_shift",
    "pos_embed_jitter",
    "drop_path_rate",
)
"""``model.vision`` fields that may differ from a loaded ``model.encoder_checkpoint``'s: they change how the
encoder runs (frame size, RoPE augmentation, stochastic depth) or how it would be initialised, not its weights."""
UNUSED_PARAMETERS = (
    f"{ENCODER_PREFIX}vision_model.embeddings.mask_token",
)  # DINOv3's masked-image pretraining


def build_model_and_processor(config: TrainingConfig) -> tuple[FoveatedVLMForConditionalGeneration, Any]:
    """The model and processor the config describes (random-init tiny, full-size from checkpoints, or saved).

    The processor records the run's frame sampling (:func:`record_sampling`), so that the saved checkpoint reads
    encoded videos as it was trained to.
    """
    model, processor = _build_model_and_processor(config)
    record_sampling(processor, config)
    return model, processor


def record_sampling(processor, config: TrainingConfig) -> None:
    """Make ``data.fps`` (or else ``data.num_frames``) the processor's default sampling of encoded videos, and
    ``data.num_frames`` its ``trained_frames`` (the longest training clip; with ``data.fps`` the clips' lengths
    vary, and the trainer records the longest it read: :func:`record_trained_frames`)."""
    data = config.data
    processor.num_frames, processor.fps = (
        (None, data.fps) if data.fps is not None else (data.num_frames, None)
    )
    processor.trained_frames = None if data.fps is not None else data.num_frames


def record_trained_frames(processor, longest: int) -> None:
    """Raise the processor's ``trained_frames`` to ``longest``, the most frames of a clip the run trained on."""
    if longest > 0:
        processor.trained_frames = max(processor.trained_frames or 0, longest)


def _build_model_and_processor(config: TrainingConfig) -> tuple[FoveatedVLMForConditionalGeneration, Any]:
    section = config.model
    if section.pretrained:
        model = FoveatedVLMForConditionalGeneration.from_pretrained(section.pretrained, **section.overrides)
        return model, FoveatedVLMProcessor.from_pretrained(section.pretrained)
    if section.size in ("tiny", "full_random"):
        return _build_random(config)
    from foveated_vlm.build import build_foveated_vlm  # imported only for full-size models

    shapes = {key: value for key, value in section.vision.items() if key != "image_size"}
    if shapes or section.text:
        raise ValueError(
            "model.vision/model.text shape overrides apply to size=tiny or full_random only (full-size shapes come "
            f"from the checkpoints); got vision={shapes}, text={section.text}"
        )
    image_size = config.data.image_size or section.vision.get("image_size", FULL_IMAGE_SIZE)
    return build_foveated_vlm(
        vision=section.vision_name_or_path,
        text=section.text_name_or_path,
        vae=section.vae_name_or_path,
        image_size=image_size,
        system_prompt=section.system_prompt,
        **section.overrides,
    )


def _build_random(config: TrainingConfig):
    """The tiny (or full-size) shapes with random weights and the tiny tokenizer: no checkpoint is read."""
    from foveated_vlm.tiny import full_size_config, tiny_config, tiny_processor, tiny_tokenizer

    section = config.model
    tokenizer = tiny_tokenizer()
    vision = dict(section.vision)
    if config.data.image_size:
        vision["image_size"] = config.data.image_size
    overrides = dict(section.overrides)
    if section.vae_name_or_path:
        overrides.setdefault("vae_name_or_path", section.vae_name_or_path)
    encoder = load_encoder_checkpoint(section.encoder_checkpoint) if section.encoder_checkpoint else None
    if encoder is not None:
        vision = pretrained_vision_fields(encoder, vision)
    make_config = tiny_config if section.size == "tiny" else full_size_config
    model_config = make_config(tokenizer, vision=vision, text=dict(section.text), **overrides)
    processor = tiny_processor(model_config, tokenizer)
    processor.system_prompt = section.system_prompt
    model = FoveatedVLMForConditionalGeneration(model_config)
    if encoder is not None:
        model.model.fovea_encoder.vision_model.load_state_dict(encoder.state_dict())
    return model, processor


def load_encoder_checkpoint(path: str) -> DINOv3ViTModel:
    """The DINOv3 ViT saved (``save_pretrained``) in the folder ``model.encoder_checkpoint`` names."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(
            f"model.encoder_checkpoint={path!r} is not a saved encoder folder (no config.json); write one with "
            "python -m foveated_vlm.pretrain_encoder --config configs/encoder.yaml --output_dir DIR"
        )
    return DINOv3ViTModel.from_pretrained(path)


def pretrained_vision_fields(encoder: DINOv3ViTModel, vision: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``DINOv3ViTConfig`` fields with the run-time ones of ``model.vision`` on top.

    A shape field of ``model.vision`` (anything outside :data:`RUNTIME_VISION_FIELDS`) must equal the
    checkpoint's: the weights are loaded as they are.
    """
    saved = encoder.config.to_dict()
    clashes = {
        key: (value, saved.get(key))
        for key, value in vision.items()
        if key not in RUNTIME_VISION_FIELDS and saved.get(key) != value
    }
    if clashes:
        details = ", ".join(
            f"{key}={mine!r} (checkpoint: {theirs!r})" for key, (mine, theirs) in clashes.items()
        )
        raise ValueError(
            f"model.vision sets {details}, which the weights of model.encoder_checkpoint cannot take: "
            "drop those keys (the checkpoint's shapes are used) or pretrain an encoder of those shapes"
        )
    return {**saved, **{key: value for key, value in vision.items() if key in RUNTIME_VISION_FIELDS}}


def apply_lora(model: nn.Module, lora: LoraSection) -> nn.Module:
    """Wrap ``model`` with PEFT LoRA on the LLM modules matched by ``lora.target_modules``.

    PEFT freezes every base weight; the new ``fovea_*`` parameters are made trainable again (they are not part
    of any pretrained model). The encoder stays as PEFT leaves it (frozen) unless the caller unfreezes it.
    """
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
    )
    wrapped = get_peft_model(model, peft_config)
    adapted = [name for name, _ in wrapped.named_parameters() if "lora_" in name]
    if not adapted:
        raise ValueError(f"train.lora.target_modules={lora.target_modules!r} matched no module of the model")
    for name, parameter in wrapped.named_parameters():
        if parameter_group_name(name) == "new":
            parameter.requires_grad_(True)
    return wrapped


def set_encoder_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze the DINOv3 ViT (queries still flow through it; only its weights stop learning)."""
    for name, parameter in model.named_parameters():
        if _strip_peft(name).startswith(ENCODER_PREFIX):
            parameter.requires_grad_(trainable)


def freeze_unused_parameters(model: nn.Module) -> None:
    """Freeze the parameters no forward uses (:data:`UNUSED_PARAMETERS`: the foveated encoder never masks
    patches). They get no gradient, hence no optimizer state, and FSDP's sharded optimizer state refuses to
    load with a trainable parameter missing from it."""
    found = set()
    for name, parameter in model.named_parameters():
        if _strip_peft(name) in UNUSED_PARAMETERS:
            parameter.requires_grad_(False)
            found.add(_strip_peft(name))
    if missing := set(UNUSED_PARAMETERS) - found:
        raise ValueError(f"freeze_unused_parameters: the model has no parameter {sorted(missing)}")


def prepare_for_training(model: nn.Module, config: TrainingConfig) -> nn.Module:
    """LoRA, encoder freezing and gradient checkpointing as configured; returns the (maybe wrapped) model."""
    train = config.train
    if train.gradient_checkpointing:
        model.activation_checkpointing_enable()
    if train.lora.enabled:
        model = apply_lora(model, train.lora)
    set_encoder_trainable(model, not train.freeze_encoder)
    return model


def _strip_peft(name: str) -> str:
    return PEFT_PREFIX.sub("", name)


def parameter_group_name(name: str) -> str:
    """``"new"``, ``"encoder"`` or ``"llm"`` for a parameter name (PEFT prefixes ignored)."""
    bare = _strip_peft(name)
    for group, prefix in GROUP_PREFIXES:
        if bare.startswith(prefix):
            return group
    raise ValueError(
        f"parameter {name!r} belongs to no parameter group (expected a prefix of {GROUP_PREFIXES})"
    )


def uses_weight_decay(name: str, parameter: torch.Tensor) -> bool:
    """Decay linear/conv weights only (not biases, norms, token embeddings, learned queries or tokens)."""
    return parameter.ndim >= 2 and name.endswith(".weight") and "embed_tokens" not in name


def parameter_groups(model: nn.Module, config: TrainingConfig) -> list[dict[str, Any]]:
    """Optimizer groups of the trainable parameters: ``{"name", "params", "lr", "weight_decay"}`` each."""
    train = config.train
    rates = {"new": train.lr_new, "encoder": train.lr_encoder, "llm": train.lr_llm}
    buckets: dict[tuple[str, bool], list[torch.Tensor]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = (parameter_group_name(name), uses_weight_decay(name, parameter))
            buckets.setdefault(key, []).append(parameter)
    return [
        {
            "name": f"{group}{'' if decay else '_no_decay'}",
            "params": params,
            "lr": rates[group],
            "weight_decay": train.weight_decay if decay else 0.0,
        }
        for (group, decay), params in sorted(buckets.items())
    ]


def build_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`parameter_groups`: fused on a GPU (``train.fused_adamw``; else the foreach kernels);
    capturable with tensor learning rates for CUDA graphs (``train.cuda_graph``)."""
    groups = parameter_groups(model, config)
    if not groups:
        raise ValueError("the model has no trainable parameter")
    device = groups[0]["params"][0].device
    fused = config.train.fused_adamw and device.type == "cuda"
    if config.train.cuda_graph:
        for group in groups:
            group["lr"] = torch.tensor(group["lr"], device=device)
        return torch.optim.AdamW(groups, fused=fused, capturable=True)
    return torch.optim.AdamW(groups, fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig):
    """Linear warm-up then cosine decay (to ``min_lr_ratio``) or constant, over ``max_steps``."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    train = config.train
    if train.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, train.warmup_steps)
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, train.warmup_steps, train.max_steps, min_lr_rate=train.min_lr_ratio
    )


def export_model(model: nn.Module) -> FoveatedVLMForConditionalGeneration:
    """The plain model to save: LoRA merged into the LLM weights when present."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


__all__ = [
    "apply_lora",
    "build_model_and_processor",
    "record_sampling",
    "build_optimizer",
    "build_scheduler",
    "export_model",
    "freeze_unused_parameters",
    "parameter_group_name",
    "parameter_groups",
    "prepare_for_training",
    "set_encoder_trainable",
    "uses_weight_decay",
]
