"""Processor of the foveated video-language model: chat-formatted text with one placeholder per frame, frames
resized and normalised without torchvision, and next-frame prediction targets.

Videos of every kind (arrays, lists of frames, encoded files) are read by ``video_foveated`` (decoding, frame
sampling, conversion and resizing; its docstring lists what a video may be). The processor's own
``num_frames``/``fps`` (saved with it; the trainer records the sampling it trained with) are the default for
encoded videos.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import BatchFeature, PreTrainedConfig
from transformers.processing_utils import ProcessorMixin

try:
    from .layout_foveated import IGNORE_INDEX, VideoLayout
    from .video_foveated import (
        LongVideoWarning,
        as_videos,
        check_long_video_factor,
        check_sampling,
        is_encoded_video,
        long_video_message,
        resize_frames,
        video_to_frames,
    )
except ImportError:  # imported as a top-level module from a checkout of the repository
    from layout_foveated import IGNORE_INDEX, VideoLayout
    from video_foveated import (
        LongVideoWarning,
        as_videos,
        check_long_video_factor,
        check_sampling,
        is_encoded_video,
        long_video_message,
        resize_frames,
        video_to_frames,
    )

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FRAME_TOKEN = "<|frame|>"
VIDEO_START_TOKEN = "<|video_start|>"
VIDEO_END_TOKEN = "<|video_end|>"
VIDEO_TOKENS = (FRAME_TOKEN, VIDEO_START_TOKEN, VIDEO_END_TOKEN)
END_OF_TURN = "<|im_end|>"
PROCESSOR_TARGET_SOURCES = ("downsampled_frames", "motion")
MOTION_ZERO_PREFERENCE = 1e-3
"""Matching cost added per pixel of displacement: ties (flat regions) resolve to no motion."""
DEFAULT_PROMPT = "Describe the video."
"""The instruction of training, of the data sets' clips without one and of ``caption_video.py`` by default."""
SMOLLM2_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_ROLES = ("system", "user", "assistant")
# SmolLM2-Instruct's ChatML template (used when the tokenizer carries none); its default system prompt names it.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOLLM2_SYSTEM_PROMPT + "<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def add_video_tokens(tokenizer) -> dict[str, int]:
    """Add the frame, video-start and video-end tokens to ``tokenizer`` (idempotent); returns their ids."""
    missing = [token for token in VIDEO_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    return {token: tokenizer.convert_tokens_to_ids(token) for token in VIDEO_TOKENS}


def check_prompt_text(texts: Sequence, name: str, allow_none: bool = False) -> None:
    """ValueError unless every entry of ``texts`` is encodable text (no lone surrogates) free of the video tokens
    (None allowed if asked).

    The processor writes the video block itself; a ``<|frame|>`` typed into a prompt or caption would become a
    frame slot with no frame (or a second video start), so it is refused here rather than read as garbage.
    """
    for index, entry in enumerate(texts):
        if entry is None and allow_none:
            continue
        if not isinstance(entry, str):
            what = "None" if entry is None else f"a {type(entry).__name__}"
            fix = " ('' for no prompt)" if name == "text" else " (or None for a video without one)"
            raise ValueError(f"{name}[{index}] is {what}: give one string per video{fix}")
        try:
            entry.encode("utf-8")
        except UnicodeEncodeError as error:  # lone surrogates: the tokenizer would fail with a TypeError
            raise ValueError(
                f"{name}[{index}] is not valid Unicode text (a lone surrogate at character {error.start}, as "
                "bytes decoded with errors='surrogateescape' leave): decode the bytes as UTF-8, or drop them with "
                "text.encode('utf-8', 'replace').decode()"
            ) from None
        for token in VIDEO_TOKENS:
            if token in entry:
                raise ValueError(
                    f"{name}[{index}] holds the video token {token!r}: the processor writes the video block "
                    "itself (frames come from videos=...); remove it from the text"
                )


class FoveatedVLMProcessor(ProcessorMixin):
    """Tokenizer + frame preprocessing + prediction targets for :class:`FoveatedVLMForConditionalGeneration`.

    Args:
        tokenizer: SmolLM2's tokenizer; the video tokens are added if missing.
        image_size: side of the square frames the encoder reads.
        image_mean, image_std: per-channel normalisation (DINOv3 uses ImageNet's).
        target_downsample: factor between frames and their downsampled-frame targets (8, like the SD-VAE).
        target_source: what ``return_targets`` computes without a VAE: ``"downsampled_frames"`` or ``"motion"``
            (block-matched displacement from the previous frame, :func:`block_motion`).
        motion_search_radius: largest displacement in pixels, per axis, that ``"motion"`` targets search.
        tokens_per_frame: placeholders per frame (1 foveated; ``dense_tokens_per_frame`` for the dense baseline).
        max_sequence_length: the LLM's context; longer inputs raise a ``ValueError`` saying how many frames fit.
        system_prompt: system message of the chat template; None keeps the template's default.
        num_frames / fps: default sampling of encoded videos (paths, bytes, files) when a call gives neither;
            the trainer records the sampling the model was trained with. None for both: every frame.
        trained_frames: the most frames of a training clip (the trainer records it; None for a checkpoint saved
            before it was recorded: no warning then).
        long_video_factor: a video read as more than this many times ``trained_frames`` frames gives one
            :class:`LongVideoWarning` per processor, saying how to subsample it (None: never).
    """

    def __init__(
        self,
        tokenizer=None,
        image_size: int = 256,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        target_downsample: int = 8,
        target_source: str = "downsampled_frames",
        motion_search_radius: int = 8,
        tokens_per_frame: int = 1,
        max_sequence_length: int = 8192,
        system_prompt: str | None = None,
        chat_template: str | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
        trained_frames: int | None = None,
        long_video_factor: float | None = 2.0,
    ):
        check_sampling(num_frames, fps)
        check_long_video_factor(long_video_factor)
        if trained_frames is not None and (
            isinstance(trained_frames, bool) or not isinstance(trained_frames, int) or trained_frames < 1
        ):
            raise ValueError(f"trained_frames must be an integer >= 1 (or None), got {trained_frames!r}")
        self.num_frames = num_frames
        self.fps = fps
        self.trained_frames = trained_frames
        self.long_video_factor = long_video_factor
        self._warned_long_video = False
        self.image_size = image_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.target_downsample = target_downsample
        if target_source not in PROCESSOR_TARGET_SOURCES:
            raise ValueError(
                f"target_source must be one of {PROCESSOR_TARGET_SOURCES}, got {target_source!r}"
            )
        self.target_source = target_source
        self.motion_search_radius = motion_search_radius
        self.tokens_per_frame = tokens_per_frame
        self.max_sequence_length = max_sequence_length
        self.system_prompt = system_prompt
        if image_size % target_downsample:
            raise ValueError(
                f"image_size {image_size} is not divisible by target_downsample {target_downsample}"
            )
        super().__init__(tokenizer, chat_template=chat_template or getattr(tokenizer, "chat_template", None))
        self.video_token_ids = add_video_tokens(tokenizer)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    @classmethod
    def from_model_config(cls, tokenizer, config, **kwargs) -> FoveatedVLMProcessor:
        """The processor matching a :class:`FoveatedVLMConfig`: frame size, target factor and source, motion
        search radius, tokens per frame and context length; ``kwargs`` set the other arguments
        (``system_prompt``, ``num_frames``, ...)."""
        return cls(
            tokenizer=tokenizer,
            image_size=config.vision_config.image_size,
            target_downsample=config.target_downsample,
            target_source="motion" if config.target_source == "motion" else "downsampled_frames",
            motion_search_radius=config.motion_search_radius,
            tokens_per_frame=config.tokens_per_frame,
            max_sequence_length=config.text_config.max_position_embeddings,
            **kwargs,
        )

    @classmethod
    def _load_tokenizer_from_pretrained(cls, sub_processor_type, pretrained_model_name_or_path, **kwargs):
        """The tokenizer, named by its own ``tokenizer_config.json``, without reading the model's config.

        Given no config, ``AutoTokenizer`` reads ``config.json`` through ``AutoConfig``, which asks whether to run
        the directory's custom code (this processor is that code) and warns about the unknown model type. An
        empty config skips that; no code from the directory runs.
        """
        kwargs.setdefault("config", PreTrainedConfig())
        return super()._load_tokenizer_from_pretrained(
            sub_processor_type, pretrained_model_name_or_path, **kwargs
        )

    # ------------------------------------------------------------------------------------------ frames
    def preprocess_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[T, H, W, 3]`` in [0, 1] (or uint8) -> normalised pixels ``[T, 3, S, S]`` and resized frames in [0, 1].

        Runs on the frames' device: decoded uint8 frames moved to a GPU are resized and normalised there.
        """
        if frames.dtype == torch.uint8:
            frames = frames.float() / 255.0
        elif not frames.is_floating_point():
            raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {frames.dtype}")
        resized = resize_frames(frames, self.image_size)
        mean = torch.tensor(self.image_mean, dtype=resized.dtype, device=resized.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, dtype=resized.dtype, device=resized.device).view(1, 3, 1, 1)
        return (resized - mean) / std, resized

    def downsampled_targets(self, resized: torch.Tensor) -> torch.Tensor:
        """Area-downsampled frames in [-1, 1]: ``[T, 3, S, S]`` in [0, 1] -> ``[T, 3, S/f, S/f]``."""
        return F.avg_pool2d(resized * 2 - 1, self.target_downsample)

    def motion_targets(self, resized: torch.Tensor) -> torch.Tensor:
        """Motion targets: ``[T, 3, S, S]`` in [0, 1] -> ``[T, 2, S/f, S/f]`` displacement (x, y) of each target
        cell's content since the previous frame, in target cells (zero for the first frame)."""
        return block_motion(resized.mean(1), self.target_downsample, self.motion_search_radius)

    def frame_targets(self, resized: torch.Tensor, vae=None) -> torch.Tensor:
        """The prediction targets of one clip's resized frames ``[T, 3, S, S]``: VAE latents when ``vae`` is given,
        else per ``target_source``."""
        if vae is not None:
            return self.vae_targets(resized, vae)
        if self.target_source == "motion":
            return self.motion_targets(resized)
        return self.downsampled_targets(resized)

    @torch.no_grad()
    def vae_targets(self, resized: torch.Tensor, vae, batch_size: int = 16) -> torch.Tensor:
        """SD-VAE latents ``latent_dist.mean * scaling_factor`` of ``[T, 3, S, S]`` frames in [0, 1]."""
        parameter = next(vae.parameters())
        latents = []
        for chunk in resized.split(batch_size):
            pixels = (chunk * 2 - 1).to(device=parameter.device, dtype=parameter.dtype)
            latents.append(vae.encode(pixels).latent_dist.mean.float().cpu() * vae.config.scaling_factor)
        return torch.cat(latents)

    def postprocess_targets(self, targets: torch.Tensor, vae=None) -> torch.Tensor:
        """Targets ``[..., C, h, w]`` back to images in [0, 1] ``[..., 3, H', W']`` (VAE decode if given)."""
        if vae is None:
            return ((targets + 1) / 2).clamp(0, 1)
        parameter = next(vae.parameters())
        flat = targets.reshape(-1, *targets.shape[-3:]).to(device=parameter.device, dtype=parameter.dtype)
        with torch.no_grad():
            images = vae.decode(flat / vae.config.scaling_factor).sample.float().cpu()
        return ((images + 1) / 2).clamp(0, 1).reshape(*targets.shape[:-3], *images.shape[-3:])

    # ------------------------------------------------------------------------------------------ text
    def video_block(self, num_frames: int) -> str:
        """``<video_start>`` + one placeholder run per frame + ``<video_end>``."""
        return VIDEO_START_TOKEN + FRAME_TOKEN * (num_frames * self.tokens_per_frame) + VIDEO_END_TOKEN

    def format_prompt(self, prompt: str, num_frames: int) -> str:
        """Chat-formatted user turn: the text first, then the video, then the assistant's turn opens.

        Raises:
            ValueError: if ``prompt`` is not a string or holds a video token (see :func:`check_prompt_text`).
        """
        check_prompt_text([prompt], "text")
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": f"{prompt}\n{self.video_block(num_frames)}"})
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=True,
            chat_template=self.chat_template or CHATML_TEMPLATE,
        )

    def frames_that_fit(self, prompt_tokens: int) -> int:
        """How many frames fit in the context after ``prompt_tokens`` text tokens."""
        return max(0, (self.max_sequence_length - prompt_tokens) // self.tokens_per_frame)

    def _tokenize_sample(
        self, prompt: str, num_frames: int, caption: str | None
    ) -> tuple[list[int], list[int]]:
        prompt_ids = self.tokenizer(self.format_prompt(prompt, num_frames), add_special_tokens=False)[
            "input_ids"
        ]
        labels = [IGNORE_INDEX] * len(prompt_ids)
        if caption is not None:
            caption_ids = self.tokenizer(caption + END_OF_TURN, add_special_tokens=False)["input_ids"]
            prompt_ids = prompt_ids + caption_ids
            labels = labels + caption_ids
        if len(prompt_ids) > self.max_sequence_length:
            text_tokens = len(prompt_ids) - num_frames * self.tokens_per_frame
            raise ValueError(
                f"{num_frames} frames and {text_tokens} text tokens need {len(prompt_ids)} positions but the "
                f"context holds {self.max_sequence_length}: at most {self.frames_that_fit(text_tokens)} frames fit; "
                "subsample the video (num_frames=... or fps=...)"
            )
        return prompt_ids, labels

    # ------------------------------------------------------------------------------------------ call
    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        videos=None,
        captions: str | Sequence[str] | None = None,
        return_targets: bool = False,
        prediction_targets: torch.Tensor | Sequence[torch.Tensor] | None = None,
        vae=None,
        num_frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        return_video_layout: bool = False,
        caption_bucket: int = 1,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Prepare a batch.

        Args:
            text: one prompt per video (the question or instruction, placed before the video).
            videos: one video or a list of videos (see ``video_foveated``); lengths may differ (padded + masked).
            text, captions: strings without the video tokens (the processor writes the video block; a prompt
                or caption holding one is refused). ``text=None`` is the empty prompt; a ``None`` entry of
                ``captions`` is a video without a caption (its row supervises nothing).
            captions: optional answer per video; returned as ``labels`` (caption and end-of-turn supervised).
            return_targets: compute next-frame targets (VAE latents with ``vae``, else downsampled frames).
            prediction_targets: precomputed targets ``[T, C, h, w]`` per video instead.
            num_frames / fps: sampling. ``num_frames`` picks that many frames uniformly from any video (arrays
                and frame lists too); ``fps`` applies to encoded videos only (arrays carry no timestamps). With
                neither, encoded videos follow the processor's own ``num_frames``/``fps`` and arrays are read
                whole. A video read far beyond ``trained_frames`` warns once (``long_video_factor``).
            max_frames: cap on the frames of each video after sampling (more are subsampled uniformly to this).
            return_video_layout: add ``video_layout``, the batch's frame and caption positions as index tensors
                (:class:`VideoLayout`), so that the training forward runs without host synchronisation. Leave it
                off for ``generate`` (it does not expand the layout for beams).
            caption_bucket: round the layout's count of supervised caption positions up to a multiple of this
                (ignored padding, same loss), so that batches share shapes for CUDA-graph replay.

        Returns:
            ``input_ids``, ``attention_mask`` ``[B, L]`` (left-padded), ``pixel_values_videos [B, T, 3, S, S]``,
            ``video_frame_mask [B, T]``, and ``labels`` / ``prediction_targets [B, T, C, h, w]`` /
            ``video_layout`` on request.
        """
        if return_tensors != "pt":
            raise ValueError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        if videos is None:
            raise ValueError("videos are required (use the tokenizer directly for text only)")
        check_sampling(num_frames, fps, max_frames)
        videos = as_videos(videos)
        prompts = self._as_text_list(text, len(videos), "text", default="")
        answers = self._as_text_list(captions, len(videos), "captions", default=None)
        check_prompt_text(prompts, "text")
        check_prompt_text(answers, "captions", allow_none=True)
        pixels, resized = zip(*(self.prepare_video(video, num_frames, fps, max_frames) for video in videos))
        samples = [self._tokenize_sample(p, len(clip), a) for p, clip, a in zip(prompts, pixels, answers)]
        batch = self._pad_text(samples, with_labels=captions is not None)
        batch["pixel_values_videos"], batch["video_frame_mask"] = self._pad_frames(list(pixels))
        targets = self._targets(resized, return_targets, prediction_targets, vae)
        if targets is not None:
            batch["prediction_targets"], _ = self._pad_frames(targets)
        if return_video_layout:
            batch["video_layout"] = VideoLayout.from_inputs(
                batch["input_ids"],
                batch["video_frame_mask"],
                self.video_token_ids[FRAME_TOKEN],
                self.tokens_per_frame,
                batch["attention_mask"],
                batch.get("labels"),
                caption_bucket,
            )
        return BatchFeature(batch, tensor_type=None)

    def prepare_video(
        self, video, num_frames: int | None = None, fps: float | None = None, max_frames: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One video (any kind ``video_foveated`` reads) -> normalised pixels and resized frames ``[T, 3, S, S]``.

        Encoded videos with neither ``num_frames`` nor ``fps`` follow the processor's own sampling;
        ``max_frames`` caps the count (:func:`video_to_frames`); a long read warns (:meth:`warn_long_video`).
        """
        if is_encoded_video(video) and num_frames is None and fps is None:
            num_frames, fps = self.num_frames, self.fps
        frames = video_to_frames(video, num_frames=num_frames, fps=fps, max_frames=max_frames)
        self.warn_long_video(sum(run.shape[0] for run in frames))
        runs = [self.preprocess_frames(run) for run in frames]
        if len(runs) == 1:
            return runs[0]
        return torch.cat([pixels for pixels, _ in runs]), torch.cat([resized for _, resized in runs])

    def warn_long_video(self, count: int) -> None:
        """One :class:`LongVideoWarning` per processor when ``count`` frames are far more than it was trained on
        (``long_video_factor`` x ``trained_frames``); the message gives the trained length and how to subsample."""
        message = long_video_message(count, self.trained_frames, self.long_video_factor)
        if message is not None and not self._warned_long_video:
            self._warned_long_video = True
            warnings.warn(message, LongVideoWarning, stacklevel=5)  # the caller of __call__

    @staticmethod
    def _as_text_list(text, count: int, name: str, default) -> list:
        if text is None:
            return [default] * count
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, (list, tuple)):
            texts = list(text)
        else:
            raise ValueError(f"{name} must be a string or a list of strings, got {type(text).__name__}")
        if len(texts) != count:
            raise ValueError(f"got {len(texts)} {name} for {count} videos: give one per video")
        return texts

    def _targets(self, resized, return_targets: bool, precomputed, vae) -> list[torch.Tensor] | None:
        if precomputed is not None:
            targets = (
                [precomputed]
                if isinstance(precomputed, torch.Tensor) and precomputed.dim() == 4
                else precomputed
            )
            if len(targets) != len(resized):
                raise ValueError(f"got prediction_targets for {len(targets)} videos, expected {len(resized)}")
            for target, clip in zip(targets, resized):
                if target.shape[0] != clip.shape[0]:
                    raise ValueError(
                        f"prediction_targets have {target.shape[0]} frames, the video {clip.shape[0]}"
                    )
            return [torch.as_tensor(t).float() for t in targets]
        if not return_targets:
            return None
        return [self.frame_targets(clip, vae) for clip in resized]

    def _pad_text(
        self, samples: list[tuple[list[int], list[int]]], with_labels: bool
    ) -> dict[str, torch.Tensor]:
        """Left-pad token ids (and labels) to the longest sample."""
        length = max(len(ids) for ids, _ in samples)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(samples), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, sample_labels) in enumerate(samples):
            input_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention_mask[row, length - len(ids) :] = 1
            labels[row, length - len(ids) :] = torch.tensor(sample_labels)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if with_labels:
            batch["labels"] = labels
        return batch

    @staticmethod
    def _pad_frames(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack ``[T_i, ...]`` clips into ``[B, T, ...]`` (zero-padded at the end) and a ``[B, T]`` mask."""
        longest = max(clip.shape[0] for clip in clips)
        padded = clips[0].new_zeros((len(clips), longest, *clips[0].shape[1:]))
        mask = torch.zeros((len(clips), longest), dtype=torch.bool)
        for row, clip in enumerate(clips):
            padded[row, : clip.shape[0]] = clip
            mask[row, : clip.shape[0]] = True
        return padded, mask

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def decode_generated(self, generated: torch.Tensor, inputs: BatchFeature) -> list[str]:
        """Text written after the prompt by ``model.generate(**inputs)``, special tokens removed."""
        return self.tokenizer.batch_decode(
            generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids",
            "attention_mask",
            "pixel_values_videos",
            "video_frame_mask",
            "prediction_targets",
            "video_layout",
        ]


def block_motion(grey: torch.Tensor, block: int, radius: int) -> torch.Tensor:
    """Block-matching motion of grey frames ``[T, S, S]``: ``[T, 2, S/block, S/block]`` (x, y), in blocks.

    Each ``block x block`` cell of frame t is matched against the previous frame shifted by every displacement
    up to ``radius`` pixels per axis (mean absolute difference, plus ``MOTION_ZERO_PREFERENCE`` per pixel of
    displacement so that flat regions read as still); the best displacement, divided by ``block``, is the cell's
    motion. Frame 1 has none. Works on any video, with no object annotations.
    """
    count, height, width = grey.shape
    motion = grey.new_zeros(count, 2, height // block, width // block)
    if count < 2:
        return motion
    previous = F.pad(grey[:-1].unsqueeze(1), (radius,) * 4, mode="replicate").squeeze(1)  # (T-1, S+2r, S+2r)
    current = grey[1:]
    best_cost = torch.full_like(motion[1:, 0], float("inf"))  # (T-1, h, w)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            # content now at (y, x) was at (y - dy, x - dx) in the previous frame
            source = previous[:, radius - dy : radius - dy + height, radius - dx : radius - dx + width]
            difference = (current - source).abs().unsqueeze(1)  # (T-1, 1, S, S)
            cost = F.avg_pool2d(difference, block).squeeze(1) + MOTION_ZERO_PREFERENCE * (abs(dx) + abs(dy))
            better = cost < best_cost
            best_cost = torch.where(better, cost, best_cost)
            motion[1:, 0] = torch.where(better, dx / block, motion[1:, 0])
            motion[1:, 1] = torch.where(better, dy / block, motion[1:, 1])
    return motion


__all__ = ["FoveatedVLMProcessor", "add_video_tokens", "block_motion", "check_prompt_text"]

FoveatedVLMProcessor.register_for_auto_class()
