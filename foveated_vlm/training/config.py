"""Training configuration: four YAML sections (``model``, ``data``, ``train``, ``eval``), overridable from the CLI.

A config file holds any subset of the fields below; ``--set section.key=value`` (repeatable, the value parsed as
YAML) overrides one field, nested keys included (``--set train.lora.r=16``, ``--set model.text.hidden_size=96``).
Unknown keys raise a ``ValueError`` naming them. The ``model`` section also takes any
:class:`FoveatedVLMConfig` field (``--set model.lambda_coarse=0.5``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from configuration_foveated import FoveatedVLMConfig
from processing_foveated import DEFAULT_PROMPT

MODEL_SIZES = ("tiny", "full", "full_random")
DATA_KINDS = ("procedural", "folder", "manifest", "hub")
SCHEDULES = ("cosine", "constant")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
FRAME_SAMPLINGS = ("uniform", "fps")
DEFAULT_LORA_TARGETS = r"model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
FLOAT_PATTERN = re.compile(
    r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
)


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``; everybody writes ``1e-3``)."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_PATTERN, list("-+0123456789."))


def parse_yaml(text: str):
    """Parse YAML text with :class:`_YamlLoader`."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader subclass)


@dataclass
class ModelSection:
    """Which model to build.

    ``size: tiny`` builds :mod:`foveated_vlm.tiny` parts (random init, the tiny tokenizer; ``vision``/``text``
    override their shapes); ``size: full_random`` the full-size shapes the same way (random init of DINOv3
    ViT-S/16 + SmolLM2-135M, the tiny tokenizer, no checkpoint read: the speed benchmark's model); ``size: full``
    calls ``foveated_vlm.build.build_foveated_vlm`` with the three checkpoints below. ``pretrained`` loads a saved foveated model (e.g. a previous run's ``final/``) instead.
    ``encoder_checkpoint`` (size tiny or full_random): a ``save_pretrained`` DINOv3 ViT folder, e.g. the one
    ``python -m foveated_vlm.pretrain_encoder`` writes; the frame encoder starts from its weights and shapes
    (``vision`` may then set only run-time fields such as ``image_size``, or shapes equal to the checkpoint's).
    ``system_prompt`` is the chat template's system message (None keeps SmolLM2's default; "" a short empty one).
    ``overrides`` holds every other key of the section: :class:`FoveatedVLMConfig` fields.
    """

    size: str = "tiny"
    pretrained: str | None = None
    vision_name_or_path: str | None = "facebook/dinov3-vits16-pretrain-lvd1689m"
    text_name_or_path: str | None = "HuggingFaceTB/SmolLM2-135M-Instruct"
    vae_name_or_path: str | None = None
    encoder_checkpoint: str | None = None
    system_prompt: str | None = None
    plugins: list[str] = field(default_factory=list)
    """Python modules imported before the model is built or loaded: extensions that register themselves, such as
    the repository's ``studies.readers`` (the study frame readers). A run that names one saves it in its config, so
    its evaluation imports it again."""
    vision: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """Where clips come from and how they are sampled.

    kinds: ``procedural`` (built-in moving shapes; ``procedural`` holds extra ``ProceduralVideoConfig``
    fields), ``folder`` (``path``: videos with same-name ``.txt`` captions), ``manifest`` (``path``: a CSV or
    JSONL file with ``video_column``/``caption_column`` and optional ``prompt``/``split`` columns), ``hub``
    (``path``: a ``datasets`` repository id, a local data directory or a ``save_to_disk`` directory).
    ``splits`` maps the roles ``train``/``validation``/``heldout`` to split names; for real data a role whose
    split does not exist is carved from ``train`` (``validation_fraction``, deterministic from ``seed``).
    ``drop_prompt`` empties every clip's prompt in every role (the "no text conditioning" ablation).
    """

    kind: str = "procedural"
    path: str | None = None
    num_frames: int = 8
    fps: float | None = None
    image_size: int | None = None
    num_clips: dict[str, int] = field(
        default_factory=lambda: {"train": 20000, "validation": 256, "heldout": 256}
    )
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "validation": "validation", "heldout": "heldout"}
    )
    validation_fraction: float = 0.05
    video_column: str = "video"
    caption_column: str = "caption"
    prompt_column: str = "prompt"
    prompt: str = DEFAULT_PROMPT
    drop_prompt: bool = False
    seed: int = 0
    procedural: dict[str, Any] = field(default_factory=dict)
    target_cache: bool | None = None
    cache_dir: str | None = None


@dataclass
class LoraSection:
    """PEFT LoRA on the LLM (the new ``fovea_*`` modules stay fully trainable)."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = DEFAULT_LORA_TARGETS


@dataclass
class TrainSection:
    """Optimisation, precision, checkpoints and logging."""

    lr_new: float = 1.0e-3
    lr_encoder: float = 1.0e-5
    lr_llm: float = 5.0e-5
    weight_decay: float = 0.01
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    clip_grad: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    compile: bool = False
    """Regional ``torch.compile`` of the encoder layers, LLM decoder layers and prediction heads."""
    fused_adamw: bool = True
    """AdamW's fused kernels on a GPU (off: its foreach kernels; the CPU always runs the plain loop)."""
    cuda_graph: bool = False
    """Replay each optimizer step as one CUDA graph per batch shape (CUDA, one process, ``grad_accum`` 1, no
    gradient checkpointing, no fp16 loss scaling); needs static batch shapes to pay off (fixed ``data.num_frames``)."""
    caption_bucket: int = 64
    """Round each batch's count of supervised caption tokens up to a multiple of this (ignored padding: the loss
    is unchanged), so that batches with captions of different lengths share one shape and one CUDA graph."""
    freeze_encoder: bool = False
    lora: LoraSection = field(default_factory=LoraSection)
    eval_every: int = 200
    save_every: int = 500
    log_every: int = 10
    keep_checkpoints: int = 3
    num_workers: int = 0
    seed: int = 0
    torch_threads: int | None = None
    ddp_find_unused_parameters: bool = True
    report_to: str | list[str] | None = "tensorboard"


@dataclass
class EvalSection:
    """Held-out captioning after training (``demo_report``) and validation during it."""

    num_heldout_clips: int = 128
    num_validation_batches: int | None = None
    max_new_tokens: int = 24
    batch_size: int = 32


@dataclass
class TrainingConfig:
    """The whole training configuration."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output_dir: str = "outputs/run"

    def validate(self) -> TrainingConfig:
        """Raise ``ValueError`` naming the first bad field; return self."""
        if self.train.mixed_precision is False:  # YAML 1.1 reads an unquoted ``no`` as false
            self.train.mixed_precision = "no"
        choices = {
            "model.size": (self.model.size, MODEL_SIZES),
            "data.kind": (self.data.kind, DATA_KINDS),
            "train.schedule": (self.train.schedule, SCHEDULES),
            "train.mixed_precision": (self.train.mixed_precision, MIXED_PRECISIONS),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        positive = {
            "train.max_steps": self.train.max_steps,
            "train.batch_size": self.train.batch_size,
            "train.grad_accum": self.train.grad_accum,
            "train.log_every": self.train.log_every,
            "train.eval_every": self.train.eval_every,
            "train.save_every": self.train.save_every,
            "train.caption_bucket": self.train.caption_bucket,
            "data.num_frames": self.data.num_frames,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.train.warmup_steps < 0 or self.train.num_workers < 0 or self.train.clip_grad < 0:
            raise ValueError("train.warmup_steps, train.num_workers and train.clip_grad must be >= 0")
        uncapturable = (
            self.train.grad_accum != 1
            or self.train.gradient_checkpointing
            or self.train.mixed_precision == "fp16"  # the loss scaler reads its overflow flag on the host
        )
        if self.train.cuda_graph and uncapturable:
            raise ValueError(
                "train.cuda_graph captures one whole optimizer step: it needs train.grad_accum 1, "
                "train.gradient_checkpointing off and train.mixed_precision no or bf16"
            )
        if self.model.encoder_checkpoint and (self.model.pretrained or self.model.size == "full"):
            raise ValueError(
                "model.encoder_checkpoint applies to size=tiny or full_random without model.pretrained; "
                "for size=full pass the encoder folder as model.vision_name_or_path"
            )
        if self.data.kind != "procedural" and not self.data.path:
            raise ValueError(f"data.path is required for data.kind={self.data.kind!r}")
        if self.data.fps is not None and self.data.fps <= 0:
            raise ValueError(f"data.fps must be positive, got {self.data.fps!r}")
        unknown = sorted(set(self.model.overrides) - set(_config_fields()))
        if unknown:
            raise ValueError(f"model section: unknown keys {unknown} (not FoveatedVLMConfig fields either)")
        if not set(self.data.splits) <= {"train", "validation", "heldout", "test"}:
            raise ValueError(
                f"data.splits keys must be train/validation/heldout/test, got {sorted(self.data.splits)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (the inverse of :func:`config_from_dict`); model overrides are flattened back."""
        result = dataclasses.asdict(self)
        result["model"].update(result["model"].pop("overrides"))
        return result


def _config_fields() -> set[str]:
    """Names a ``model`` section may set on :class:`FoveatedVLMConfig`."""
    names: set[str] = set()
    for klass in FoveatedVLMConfig.__mro__:
        names.update(getattr(klass, "__annotations__", {}))
    return names - {"vision_config", "text_config", "sub_configs_defaults", "model_type"}


def _build_section(klass: type, values: dict[str, Any], section: str):
    """Instantiate a section dataclass from a dict, recursing into nested dataclass fields."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {section!r} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(klass)}
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            extra[key] = value
            continue
        nested = (
            fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        )
        if nested is not None and dataclasses.is_dataclass(nested):
            value = _build_section(nested, value or {}, f"{section}.{key}")
        kwargs[key] = value
    if extra and "overrides" in fields:
        kwargs["overrides"] = {**kwargs.get("overrides", {}), **extra}
    elif extra:
        raise ValueError(f"unknown keys in config section {section!r}: {sorted(extra)}")
    return klass(**kwargs)


def config_from_dict(values: dict[str, Any]) -> TrainingConfig:
    """Build and validate a :class:`TrainingConfig` from a nested dict (e.g. a parsed YAML file)."""
    values = copy.deepcopy(values or {})
    sections = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(values) - set(sections))
    if unknown:
        raise ValueError(f"unknown config sections {unknown}; expected {sorted(sections)}")
    kwargs = {}
    for name, spec in sections.items():
        if name not in values:
            continue
        factory = spec.default_factory
        kwargs[name] = (
            _build_section(factory, values[name], name) if dataclasses.is_dataclass(factory) else values[name]
        )
    config = TrainingConfig(**kwargs)
    import_plugins(config.model.plugins)
    return config.validate()


def import_plugins(modules: list[str]) -> None:
    """Import each of ``model.plugins``; a ``ValueError`` naming a module that cannot be imported."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"model.plugins: cannot import {module!r} ({error})") from error


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key[.sub]=value`` (or top-level ``output_dir=...``) assignment to a nested dict in place.

    The value is parsed as YAML (``1e-3`` included).
    """
    if "=" not in assignment:
        raise ValueError(f"--set expects section.key=value, got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ValueError(f"--set key must look like section.key (or output_dir), got {dotted!r}")
    node = values
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = parse_yaml(raw)


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainingConfig:
    """Read a YAML config (or start from the defaults), apply ``--set`` overrides, validate."""
    return config_from_dict(read_config_values(path, overrides))


def read_config_values(
    path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """The nested dict of a YAML config file (empty without one) with ``--set`` overrides applied."""
    values: dict[str, Any] = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ValueError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as handle:
            values = parse_yaml(handle.read()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a mapping of sections")
    for assignment in overrides:
        apply_override(values, assignment)
    return values


def flat_config(config: TrainingConfig) -> dict[str, Any]:
    """``{"train.lr_new": 1e-3, ...}`` with scalar values only (for trackers' hyper-parameter tables)."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                visit(f"{prefix}.{key}" if prefix else str(key), value)
        elif isinstance(node, (int, float, str, bool)):
            flat[prefix] = node
        else:
            flat[prefix] = str(node)

    visit("", config.to_dict())
    return flat


__all__ = [
    "DATA_KINDS",
    "DEFAULT_LORA_TARGETS",
    "DataSection",
    "EvalSection",
    "LoraSection",
    "ModelSection",
    "TrainSection",
    "TrainingConfig",
    "apply_override",
    "config_from_dict",
    "flat_config",
    "load_config",
    "read_config_values",
]
