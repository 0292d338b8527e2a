"""Self-supervised pretraining of the frame encoder (the tiny DINOv3 ViT) on frames without labels.

    python -m foveated_vlm.pretrain_encoder --config configs/encoder.yaml --output_dir outputs/encoder

writes a ``save_pretrained`` ``DINOv3ViTModel`` folder (plus ``pretraining.json``: settings, loss curve, time)
that a training config loads with ``--set model.encoder_checkpoint=outputs/encoder``. The report card is
:mod:`foveated_vlm.encoder_probe`.

Frames (:mod:`foveated_vlm.data.frames`): procedural frames with a textured background, clutter and 2-4 objects
at least 3 patches wide, plus crops of real photographs; no label is read.

Method: masked patch prediction through DINOv3's own ``mask_token`` (SimMIM-style: the encoder sees every
position, masked ones as the mask token, so it runs at train time exactly as the foveated model runs it), with
two additions chosen for a tiny ViT that must tell shape and colour apart at every patch:

* a **context** target: each position predicts the pixels of the ``context`` x ``context`` patches around it
  (at ``1 / context_downsample`` resolution), not only its own. A patch inside a flat-coloured object looks
  the same whatever the object's shape; predicting the neighbourhood forces its feature to hold the outline
  (the shape), and the prediction head is linear, so what it holds is linearly readable. Raw normalised pixels
  are the target (no per-patch normalisation), so colour stays in the feature.
* a **latent** target (data2vec / iBOT's masked distillation without prototypes): masked positions also
  regress the layer-averaged, layer-normalised patch features of an EMA teacher that sees the unmasked frame,
  which pulls features towards what the whole object looks like rather than towards raw texture. The pixel
  term anchors it (no collapse); ``latent_weight: 0`` turns it off (measured: 1.2 points of shape lost).

Why not DINO/iBOT with prototypes or MAE with a deep decoder: the budget is minutes on two CPU cores; the
prototype methods need long schedules and centering/sharpening to avoid collapse, and an MAE decoder would
take the shape inference away from the encoder whose features are probed (a linear head keeps it there).
The measured figures are in ``studies/encoder/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from foveated_vlm.data.frames import FrameSource, pretraining_frames
from foveated_vlm.tiny import TINY_VISION
from foveated_vlm.training.config import _build_section, read_config_values
from video_processing_foveated import IMAGENET_MEAN, IMAGENET_STD

RECORD_FILE = "pretraining.json"
"""What the pretraining run records beside the weights: settings, loss curve, wall time."""


@dataclass
class PretrainSection:
    """How the encoder is pretrained.

    Attributes:
        num_frames: size of the frame pool rendered once before training (``frames.photo_fraction`` photos).
        max_steps, batch_size: optimizer steps and frames per step.
        lr, min_lr_ratio, weight_decay, warmup_steps: AdamW with linear warmup then cosine decay to
            ``lr * min_lr_ratio``.
        mask_ratio: share of patch positions replaced by the mask token, in [0, 1).
        visible_weight: weight of the visible positions' pixel loss against 1 for the masked ones (>= 0).
        context: odd side, in patches, of the neighbourhood each position predicts (1: its own patch).
        context_downsample: the neighbourhood's pixels are average-pooled by this factor (divides the patch).
        latent_weight: weight of the EMA-teacher latent target on masked positions (0: off).
        ema_decay: the teacher's EMA decay per step, in [0, 1).
        clip_grad: gradient norm clip (0: off).
        seed, device, torch_threads, log_every: the usual.
    """

    num_frames: int = 8000
    max_steps: int = 2000
    batch_size: int = 64
    lr: float = 2.0e-3
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    warmup_steps: int = 100
    mask_ratio: float = 0.5
    visible_weight: float = 1.0
    context: int = 3
    context_downsample: int = 2
    latent_weight: float = 1.0
    ema_decay: float = 0.996
    clip_grad: float = 1.0
    seed: int = 0
    device: str = "cpu"
    torch_threads: int | None = None
    log_every: int = 50

    def validate(self, patch_size: int) -> None:
        """Raise ValueError naming the first bad field."""
        for name in ("num_frames", "max_steps", "batch_size", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"pretrain.{name} must be a positive int, got {getattr(self, name)!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"pretrain.mask_ratio must lie in [0, 1), got {self.mask_ratio!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"pretrain.ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if self.context < 1 or self.context % 2 == 0:
            raise ValueError(f"pretrain.context must be an odd positive int, got {self.context!r}")
        if self.context_downsample < 1 or patch_size % self.context_downsample:
            raise ValueError(
                f"pretrain.context_downsample ({self.context_downsample}) must divide the patch size ({patch_size})"
            )
        if min(self.visible_weight, self.latent_weight, self.lr, self.clip_grad, self.warmup_steps) < 0:
            raise ValueError(
                "pretrain.visible_weight, latent_weight, lr, clip_grad and warmup_steps must be >= 0"
            )
        if self.mask_ratio == 0 and self.visible_weight == 0:
            raise ValueError("pretrain.mask_ratio 0 with visible_weight 0 leaves no loss: raise either")


@dataclass
class ProbeSection:
    """The report card's linear probe (:mod:`foveated_vlm.encoder_probe`).

    Attributes:
        num_fit_frames, num_test_frames: procedural frames of the validation split the probe is fitted on, and
            the next ones, never fitted on, that it is scored on (neither split is seen in pretraining).
        min_coverage: a patch is labelled with the object covering at least this share of it (in [0.5, 1]).
        max_iter, weight_decay: L-BFGS iterations and L2 penalty of the multinomial logistic regression.
        random_init_ranges: ``initializer_range`` of each random-init encoder of the same shapes to compare with.
        procedural: ``ProceduralVideoConfig`` fields over ``frames.procedural`` for the probe's frames.
        batch_size: frames per encoder forward when extracting features.
    """

    num_fit_frames: int = 1024
    num_test_frames: int = 512
    min_coverage: float = 0.5
    max_iter: int = 500
    weight_decay: float = 1.0e-4
    random_init_ranges: list[float] = field(default_factory=lambda: [0.02, 0.2])
    procedural: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 256


@dataclass
class EncoderPretrainConfig:
    """configs/encoder.yaml: ``vision`` (``DINOv3ViTConfig`` fields over ``foveated_vlm.tiny.TINY_VISION``),
    ``frames`` (:class:`FrameSource` fields; ``patch_size`` comes from ``vision``), ``pretrain``, ``probe``."""

    vision: dict[str, Any] = field(default_factory=dict)
    frames: dict[str, Any] = field(default_factory=dict)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    probe: ProbeSection = field(default_factory=ProbeSection)
    output_dir: str = "outputs/encoder"

    def vision_config(self) -> DINOv3ViTConfig:
        """The encoder's config: tiny defaults, then ``vision``, at the frames' size."""
        image_size = self.frames.get("image_size", FrameSource.image_size)
        return DINOv3ViTConfig(**{**TINY_VISION, "image_size": image_size, **self.vision})

    def frame_source(self, procedural: dict[str, Any] | None = None) -> FrameSource:
        """The frames' :class:`FrameSource` (``procedural`` fields over the section's, e.g. the probe's)."""
        values = {
            key: tuple(value) if isinstance(value, list) else value for key, value in self.frames.items()
        }
        if procedural:
            values["procedural"] = {**FrameSource().procedural, **values.get("procedural", {}), **procedural}
        return FrameSource(**{**values, "patch_size": self.vision_config().patch_size})


def load_encoder_config(
    path: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> EncoderPretrainConfig:
    """Read a YAML file (or start from the defaults), apply ``--set section.key=value`` overrides, validate."""
    values = read_config_values(path, overrides)
    config = _build_section(EncoderPretrainConfig, values, "encoder config")
    config.pretrain.validate(config.vision_config().patch_size)
    config.frame_source()  # validates the frames section
    return config


# ------------------------------------------------------------------------------------------------ objective


def normalise_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> ImageNet-normalised float ``[B, 3, H, W]`` (the processor's defaults)."""
    pixels = frames.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def context_targets(pixels: torch.Tensor, patch_size: int, context: int, downsample: int) -> torch.Tensor:
    """Per patch, the pixels of the ``context`` x ``context`` patches around it (zero outside the frame).

    Args:
        pixels: ``[B, 3, H, W]``.
    Returns:
        ``[B, N, 3 * (context * patch_size / downsample) ** 2]``, N = (H / p) * (W / p) in row-major order.
    """
    pooled = F.avg_pool2d(pixels, downsample) if downsample > 1 else pixels  # [B, 3, H/d, W/d]
    side = patch_size // downsample
    margin = side * (context // 2)
    padded = F.pad(pooled, (margin, margin, margin, margin))
    return F.unfold(padded, kernel_size=context * side, stride=side).transpose(1, 2)  # [B, N, 3 * (c*side)^2]


class MaskedContextObjective(nn.Module):
    """Masked context prediction (plus the optional EMA latent target) around a ``DINOv3ViTModel``.

    ``forward(pixels [B, 3, H, W], mask [B, N] bool)`` returns the scalar loss and its parts.
    """

    def __init__(self, encoder: DINOv3ViTModel, settings: PretrainSection) -> None:
        super().__init__()
        config = encoder.config
        self.encoder = encoder
        self.settings = settings
        self.patch_size = config.patch_size
        self.num_prefix = 1 + config.num_register_tokens
        target_side = settings.context * config.patch_size // settings.context_downsample
        self.pixel_head = nn.Linear(config.hidden_size, 3 * target_side**2)
        self.teacher: DINOv3ViTModel | None = None
        if settings.latent_weight > 0:
            self.teacher = copy.deepcopy(encoder).requires_grad_(False).eval()
            self.latent_head = nn.Sequential(
                nn.Linear(config.hidden_size, config.intermediate_size),
                nn.GELU(),
                nn.Linear(config.intermediate_size, config.hidden_size),
            )

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        settings = self.settings
        states = self.encoder(pixels, bool_masked_pos=mask).last_hidden_state[
            :, self.num_prefix :
        ]  # [B, N, D]
        targets = context_targets(pixels, self.patch_size, settings.context, settings.context_downsample)
        error = (self.pixel_head(states) - targets).abs().mean(-1)  # [B, N]
        weights = mask.float() + settings.visible_weight * (~mask).float()
        parts = {"pixel": (error * weights).sum() / weights.sum().clamp_min(1.0)}
        loss = parts["pixel"]
        if self.teacher is not None:
            parts["latent"] = self._latent_loss(pixels, states, mask)
            loss = loss + settings.latent_weight * parts["latent"]
        return {"loss": loss, **parts}

    def _latent_loss(self, pixels: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error, over masked positions, to the teacher's normalised features averaged over every
        layer (data2vec averages the top K; this ViT has 3)."""
        with torch.no_grad():
            layers = self.teacher(pixels, output_hidden_states=True).hidden_states[1:]  # each [B, 1+R+N, D]
            width = states.shape[-1]
            target = torch.stack([F.layer_norm(h[:, self.num_prefix :], (width,)) for h in layers]).mean(0)
        error = (self.latent_head(states) - target).pow(2).mean(-1)  # [B, N]
        return (error * mask).sum() / mask.sum().clamp_min(1)

    @torch.no_grad()
    def update_teacher(self) -> None:
        """One EMA step of the teacher towards the encoder (no-op without a latent target)."""
        if self.teacher is None:
            return
        for teacher, student in zip(self.teacher.parameters(), self.encoder.parameters(), strict=True):
            teacher.lerp_(student, 1.0 - self.settings.ema_decay)


# ------------------------------------------------------------------------------------------------ training


def learning_rate(step: int, settings: PretrainSection) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.max_steps - settings.warmup_steps)
    floor = settings.lr * settings.min_lr_ratio
    return floor + (settings.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pretrain_encoder(
    config: EncoderPretrainConfig, progress: bool = True
) -> tuple[DINOv3ViTModel, dict[str, Any]]:
    """Pretrain a fresh encoder as ``config`` says; return it (eval mode) and the run's record."""
    settings = config.pretrain
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    torch.manual_seed(settings.seed)
    device = torch.device(settings.device)
    started = time.perf_counter()
    pool = torch.from_numpy(pretraining_frames(config.frame_source(), settings.num_frames)).to(device)
    render_seconds = time.perf_counter() - started
    encoder = DINOv3ViTModel(config.vision_config())
    objective = MaskedContextObjective(encoder, settings).to(device).train()
    trainable = [parameter for parameter in objective.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    num_patches = (pool.shape[1] // objective.patch_size) * (pool.shape[2] // objective.patch_size)
    curve: list[dict[str, float]] = []
    bar = tqdm(range(settings.max_steps), desc="pretraining the encoder", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        pixels, mask = _batch(pool, settings, num_patches, generator)
        parts = objective(pixels, mask)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if settings.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(trainable, settings.clip_grad)
        optimizer.step()
        objective.update_teacher()
        if step % settings.log_every == 0 or step == settings.max_steps - 1:
            curve.append({"step": step, **{key: round(value.item(), 5) for key, value in parts.items()}})
            bar.set_postfix(loss=f"{curve[-1]['loss']:.4f}")
    record = {
        "config": dataclasses.asdict(config),
        "loss_curve": curve,
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(time.perf_counter() - started - render_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    return encoder.eval().cpu(), record


def _batch(
    pool: torch.Tensor, settings: PretrainSection, num_patches: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of the uint8 pool ``[P, H, W, 3]``, mirrored half the time: pixels ``[B, 3, H, W]`` and
    the mask ``[B, N]`` (True: replaced by the mask token)."""
    device = pool.device
    index = torch.randint(len(pool), (settings.batch_size,), generator=generator, device=device)
    pixels = normalise_frames(pool[index])
    flip = torch.rand(settings.batch_size, generator=generator, device=device) < 0.5
    pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
    mask = (
        torch.rand(settings.batch_size, num_patches, generator=generator, device=device) < settings.mask_ratio
    )
    return pixels, mask


def save_encoder(encoder: DINOv3ViTModel, record: dict[str, Any], output_dir: str) -> None:
    """``save_pretrained`` the encoder (safetensors) and write the run's record beside it."""
    encoder.save_pretrained(output_dir)
    with open(os.path.join(output_dir, RECORD_FILE), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML file (configs/encoder.yaml)")
    parser.add_argument(
        "--output_dir", default=None, help="folder of the saved encoder (default: the config's)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    args = parser.parse_args(argv)
    config = load_encoder_config(args.config, args.overrides)
    config.output_dir = output_dir = args.output_dir or config.output_dir
    encoder, record = pretrain_encoder(config)
    save_encoder(encoder, record, output_dir)
    first, last = record["loss_curve"][0]["loss"], record["loss_curve"][-1]["loss"]
    print(
        f"encoder saved to {output_dir}: loss {first:.4f} -> {last:.4f} in {config.pretrain.max_steps} steps, "
        f"{record['train_seconds']} s training + {record['render_seconds']} s rendering frames; "
        f"train with --set model.encoder_checkpoint={output_dir}"
    )


if __name__ == "__main__":
    main()
