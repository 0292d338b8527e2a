"""Publishing a trained model: a generated model card and ``--push_to_hub REPO``.

``OUTPUT/final`` already holds everything a Hub repository needs: weights and config (``save_pretrained``,
with ``configuration_foveated.py`` and ``modeling_foveated.py`` copied in and ``auto_map`` written), the
processor with ``processing_foveated.py`` and ``video_foveated.py``, the loss curve and ``README.md`` (the
model card). Pushing uploads that folder as it is with ``huggingface_hub``. With a local directory (``--hub_local_dir DIR`` or the
``FOVEATED_HUB_LOCAL_DIR`` variable) the same files are written to ``DIR/<owner>/<name>/`` instead, which is
how the push is tested where no hub is reachable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from foveated_vlm.files import atomic_write_text, replace_directory, temporary_sibling

from .config import TrainingConfig

HUB_LOCAL_DIR_ENV = "FOVEATED_HUB_LOCAL_DIR"
CARD_NAME = "README.md"
CARD_TAGS = ("foveated-vlm", "video-text-to-text", "custom_code", "video-captioning")
FIGURE_FORMAT = "{:.4f}"


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = ["| split | figure | value |", "| --- | --- | --- |"]
    for split in ("train", "validation"):
        for key, value in sorted(metrics.get(split, {}).items()):
            rows.append(f"| {split} | {key} | {FIGURE_FORMAT.format(value)} |")
    return "\n".join(rows)


def _data_description(config: TrainingConfig, metrics: dict[str, Any]) -> str:
    data = config.data
    if data.kind == "procedural":
        source = (
            "the built-in procedural moving-shapes videos (`foveated_vlm.data.procedural`): flat-coloured "
            "shapes moving on a textured background, captioned exactly, with held-out shape x motion "
            f"combinations; extra settings {data.procedural or 'none'}"
        )
    else:
        source = f"{data.kind} data from `{data.path}` (captions from `{data.caption_column}`)"
    sampling = (
        f"{data.num_frames} frames sampled uniformly"
        if data.fps is None
        else f"frames sampled at {data.fps} fps"
    )
    return (
        f"Trained on {source}: {metrics.get('num_train_clips', '?')} training clips, "
        f"{metrics.get('num_validation_clips', '?')} validation clips, {sampling}."
    )


def model_card(
    config: TrainingConfig,
    metrics: dict[str, Any],
    model_config=None,
    has_curve: bool = False,
    repo_id: str = "path/to/final",
) -> str:
    """The README.md of a trained model: metadata, architecture, data, training settings, figures, usage."""
    train = config.train
    header = {
        "library_name": "transformers",
        "pipeline_tag": "video-text-to-text",
        "tags": list(CARD_TAGS),
        "license": "apache-2.0",
    }
    architecture = ""
    if model_config is not None:
        vision, text = model_config.vision_config, model_config.text_config
        architecture = (
            f"- Vision encoder: DINOv3 ViT, {vision.num_hidden_layers} layers, width {vision.hidden_size}, "
            f"patch {vision.patch_size}, {vision.image_size} px frames\n"
            f"- Language model: Llama (SmolLM2 family), {text.num_hidden_layers} layers, width {text.hidden_size}\n"
            f"- Foveation: `{model_config.foveation_mode}`, {model_config.tokens_per_frame} visual token(s) per frame, "
            f"targets `{model_config.target_source}` {list(model_config.target_shape)}\n"
        )
    lora = (
        f"LoRA r={train.lora.r} on `{train.lora.target_modules}`" if train.lora.enabled else "full fine-tune"
    )
    training = (
        f"- {metrics.get('step', train.max_steps)} steps of {metrics.get('samples_per_step', '?')} clips, {lora}, "
        f"encoder {'frozen' if train.freeze_encoder else 'trained'}\n"
        f"- learning rates: new modules {train.lr_new}, encoder {train.lr_encoder}, LLM {train.lr_llm}; "
        f"{train.schedule} schedule, {train.warmup_steps} warm-up steps; precision {train.mixed_precision}\n"
        f"- wall time {metrics.get('wall_seconds', 0.0):.0f} s on {metrics.get('num_processes', 1)} process(es)\n"
    )
    curve = "\n![loss curve](loss_curve.png)\n" if has_curve else ""
    usage = (
        "```python\n"
        "from transformers import AutoModel, AutoProcessor\n\n"
        f'model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)\n'
        f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)\n'
        'inputs = processor(text="Describe the video.", videos="clip.mp4", num_frames=8)\n'
        "print(processor.decode_generated(model.generate(**inputs, max_new_tokens=32), inputs))\n"
        "```\n"
    )
    return (
        f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n"
        "# Foveated VLM\n\n"
        "A video-language model that reads **one visual token per frame**: the language model predicts where "
        "to look in the next frame (a query read through cached DINOv3 patch keys/values), predicts the next "
        "frame, and captions the video.\n\n"
        f"## Architecture\n\n{architecture}\n"
        f"## Data\n\n{_data_description(config, metrics)}\n\n"
        f"## Training\n\n{training}\n"
        f"## Figures\n\n{_metrics_table(metrics)}\n{curve}\n"
        "`ratio_coarse_fine` is loss_coarse / loss_fine: above 1 when the predicted queries read more useful "
        "information than the static one.\n\n"
        f"## Usage\n\n{usage}\n"
        f"## Training configuration\n\n```yaml\n{yaml.safe_dump(config.to_dict(), sort_keys=False)}```\n"
    )


def write_model_card(
    directory: str | os.PathLike, config: TrainingConfig, metrics: dict[str, Any], repo_id: str | None = None
) -> Path:
    """Write ``README.md`` into a saved model folder (reads the saved config for the architecture)."""
    from configuration_foveated import FoveatedVLMConfig

    directory = Path(directory)
    model_config = (
        FoveatedVLMConfig.from_pretrained(directory) if (directory / "config.json").is_file() else None
    )
    card = model_card(
        config,
        metrics,
        model_config,
        (directory / "loss_curve.png").is_file(),
        repo_id or str(Path(config.output_dir) / "final"),
    )
    path = directory / CARD_NAME
    atomic_write_text(path, card)
    return path


def push_to_hub(
    folder: str | os.PathLike, repo_id: str, local_dir: str | None = None, private: bool = False
) -> str:
    """Upload a saved model folder to the Hub repository ``repo_id``; returns its URL or local path.

    With ``local_dir`` (or ``$FOVEATED_HUB_LOCAL_DIR``) the files that would be uploaded are written to
    ``local_dir/repo_id`` instead (replacing an earlier copy atomically).
    """
    folder = Path(folder)
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"--push_to_hub expects a repository id like 'owner/name', got {repo_id!r}")
    local_dir = local_dir or os.environ.get(HUB_LOCAL_DIR_ENV)
    if local_dir:
        destination = Path(local_dir) / repo_id
        temporary = temporary_sibling(destination)
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.copytree(folder, temporary)
        replace_directory(temporary, destination)
        return str(destination)
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message="Upload foveated VLM trained with train_accelerate.py",
    )
    return str(url)


__all__ = ["HUB_LOCAL_DIR_ENV", "model_card", "push_to_hub", "write_model_card"]
