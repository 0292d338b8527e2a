"""Processor of the foveated video-language model: the tokenizer (chat-formatted text with one placeholder per
frame, captions as labels) composed with the video processor (frames, masks and next-frame targets).

Videos of every kind (arrays, lists of frames, encoded files) are read by the video processor
(``video_processing_foveated.FoveatedVLMVideoProcessor``, through ``video_foveated``: decoding, frame sampling,
conversion and resizing; its docstring lists what a video may be). Its ``num_frames``/``fps`` (saved with it; the
trainer records the sampling it trained with) are the default for encoded videos.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import BatchFeature, PreTrainedConfig
from transformers.processing_utils import ProcessorMixin

try:
    from .layout_foveated import IGNORE_INDEX, VideoLayout
    from .video_foveated import as_videos, check_sampling
    from .video_processing_foveated import FoveatedVLMVideoProcessor
except ImportError:  # imported as a top-level module from a checkout of the repository
    from layout_foveated import IGNORE_INDEX, VideoLayout
    from video_foveated import as_videos, check_sampling
    from video_processing_foveated import FoveatedVLMVideoProcessor

VIDEO_PROCESSOR_KEYS = tuple(
    name
    for name in inspect.signature(FoveatedVLMVideoProcessor.__init__).parameters
    if name not in ("self", "kwargs")
)
"""The video processor's settings (its ``__init__`` arguments), which a processor saved before it had one kept in
its own config."""
FRAME_TOKEN = "<|frame|>"
VIDEO_START_TOKEN = "<|video_start|>"
VIDEO_END_TOKEN = "<|video_end|>"
VIDEO_TOKENS = (FRAME_TOKEN, VIDEO_START_TOKEN, VIDEO_END_TOKEN)
END_OF_TURN = "<|im_end|>"
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
    """Tokenizer + video processor for :class:`FoveatedVLMForConditionalGeneration`.

    Args:
        video_processor: the :class:`FoveatedVLMVideoProcessor` (frame size, normalisation, target factor, default
            sampling); :meth:`from_model_config` builds the one that matches a model config.
        tokenizer: SmolLM2's tokenizer; the video tokens are added if missing.
        tokens_per_frame: placeholders per frame (1 foveated; ``dense_tokens_per_frame`` for the dense baseline).
        max_sequence_length: the LLM's context; longer inputs raise a ``ValueError`` saying how many frames fit.
        system_prompt: system message of the chat template; None keeps the template's default.
    """

    def __init__(
        self,
        video_processor: FoveatedVLMVideoProcessor | None = None,
        tokenizer=None,
        tokens_per_frame: int = 1,
        max_sequence_length: int = 8192,
        system_prompt: str | None = None,
        chat_template: str | None = None,
    ):
        self.tokens_per_frame = tokens_per_frame
        self.max_sequence_length = max_sequence_length
        self.system_prompt = system_prompt
        super().__init__(
            video_processor or FoveatedVLMVideoProcessor(),
            tokenizer,
            chat_template=chat_template or getattr(tokenizer, "chat_template", None),
        )
        self.video_token_ids = add_video_tokens(tokenizer)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    @classmethod
    def from_model_config(cls, tokenizer, config, **kwargs) -> FoveatedVLMProcessor:
        """The processor matching a :class:`FoveatedVLMConfig`: frame size, target factor, tokens per frame and
        context length. ``kwargs`` set the other arguments: the video processor's (``num_frames``, ``fps``,
        ``image_mean``, ``image_std``) and this class's (``system_prompt``, ``chat_template``)."""
        video_kwargs = {key: kwargs.pop(key) for key in VIDEO_PROCESSOR_KEYS if key in kwargs}
        video_processor = FoveatedVLMVideoProcessor(
            image_size=config.vision_config.image_size,
            target_downsample=config.target_downsample,
            **video_kwargs,
        )
        return cls(
            video_processor=video_processor,
            tokenizer=tokenizer,
            tokens_per_frame=config.tokens_per_frame,
            max_sequence_length=config.text_config.max_position_embeddings,
            **kwargs,
        )

    @classmethod
    def _resolve_subprocessors(cls, pretrained_model_name_or_path, processor_dict, **kwargs):
        """Build the video processor from the saved config without an Auto class lookup (no torchvision needed);
        a processor saved before the video processor existed kept its settings in its own config: read them."""
        if kwargs.get("video_processor") is None:
            saved = processor_dict.get("video_processor")
            if not isinstance(saved, dict):
                saved = {
                    key: processor_dict.pop(key) for key in VIDEO_PROCESSOR_KEYS if key in processor_dict
                }
            kwargs["video_processor"] = FoveatedVLMVideoProcessor.from_dict(saved)
        return super()._resolve_subprocessors(pretrained_model_name_or_path, processor_dict, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        """Save as transformers does, plus the video processor's own ``video_preprocessor_config.json`` (what
        ``AutoVideoProcessor`` reads; transformers needs torchvision for that Auto class, this processor does not)."""
        saved = super().save_pretrained(save_directory, **kwargs)
        self.video_processor.save_pretrained(save_directory)
        return saved

    def check_argument_for_proper_class(self, argument_name, argument):
        """The video processor is checked against its own class: transformers' check looks its base class up in
        the video-processor registry, which is unavailable without torchvision (not needed here)."""
        if argument_name != "video_processor":
            return super().check_argument_for_proper_class(argument_name, argument)
        if not isinstance(argument, FoveatedVLMVideoProcessor):
            raise TypeError(
                f"video_processor must be a FoveatedVLMVideoProcessor, got {type(argument).__name__}"
            )
        return FoveatedVLMVideoProcessor

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

    # ------------------------------------------------------------------------------------------ video settings
    @property
    def image_size(self) -> int:
        """Side of the square frames the encoder reads (the video processor's)."""
        return self.video_processor.image_size

    @property
    def num_frames(self) -> int | None:
        """Default frame count of encoded videos (the video processor's)."""
        return self.video_processor.num_frames

    @num_frames.setter
    def num_frames(self, value: int | None) -> None:
        self.video_processor.num_frames = value

    @property
    def fps(self) -> float | None:
        """Default frame rate of encoded videos (the video processor's)."""
        return self.video_processor.fps

    @fps.setter
    def fps(self, value: float | None) -> None:
        self.video_processor.fps = value

    @property
    def trained_frames(self) -> int | None:
        """The most frames of a training clip, which the trainer records (the video processor's)."""
        return self.video_processor.trained_frames

    @trained_frames.setter
    def trained_frames(self, value: int | None) -> None:
        self.video_processor.trained_frames = value

    @property
    def long_video_factor(self) -> float | None:
        """How far past ``trained_frames`` a read may go before it warns (the video processor's)."""
        return self.video_processor.long_video_factor

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
        check_sampling(num_frames, fps)
        videos = as_videos(videos)
        prompts = self._as_text_list(text, len(videos), "text", default="")
        answers = self._as_text_list(captions, len(videos), "captions", default=None)
        check_prompt_text(prompts, "text")
        check_prompt_text(answers, "captions", allow_none=True)
        frames = self.video_processor(
            videos,
            num_frames=num_frames,
            fps=fps,
            max_frames=max_frames,
            return_targets=return_targets,
            prediction_targets=prediction_targets,
            vae=vae,
        )
        lengths = frames["video_frame_mask"].sum(1).tolist()
        samples = [self._tokenize_sample(p, n, a) for p, n, a in zip(prompts, lengths, answers)]
        batch = self._pad_text(samples, with_labels=captions is not None)
        batch.update(frames)
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


__all__ = ["FoveatedVLMProcessor", "add_video_tokens", "check_prompt_text"]

FoveatedVLMProcessor.register_for_auto_class()
