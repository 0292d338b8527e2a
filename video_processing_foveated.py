"""The video processor of the foveated VLM: frames in, normalised pixels, frame masks and next-frame targets out.

:class:`FoveatedVLMVideoProcessor` is transformers' ``BaseVideoProcessor`` for this model (``AutoVideoProcessor``
loads it with ``trust_remote_code``): it decodes and samples any video ``video_foveated`` reads, resizes (shorter
side) and centre-crops each frame to ``image_size`` with torch alone (no torchvision), normalises it, pads a batch
to ``[B, T, 3, S, S]`` with a ``[B, T]`` frame mask, and makes the prediction targets the design asks for: the
frames area-downsampled by ``target_downsample``, SD-VAE latents through a VAE it is given, or precomputed ones.
``processing_foveated.FoveatedVLMProcessor`` composes it with the tokenizer.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import BatchFeature
from transformers.video_processing_utils import BaseVideoProcessor

try:
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


class FoveatedVLMVideoProcessor(BaseVideoProcessor):
    """Decoding, frame sampling, resizing, normalising and next-frame targets of the foveated VLM.

    Args:
        image_size: side of the square frames the encoder reads.
        image_mean, image_std: per-channel normalisation (DINOv3 uses ImageNet's).
        target_downsample: factor between frames and their downsampled-frame targets (8, like the SD-VAE).
        num_frames / fps: default sampling of encoded videos (paths, bytes, files) when a call gives neither;
            the trainer records the sampling the model was trained with. None for both: every frame.
        trained_frames: the most frames of a training clip (the trainer records it; None for a checkpoint saved
            before it was recorded: no warning then).
        long_video_factor: a video read as more than this many times ``trained_frames`` frames gives one
            :class:`LongVideoWarning` per processor, saying how to subsample it (None: never).
    """

    model_input_names = ["pixel_values_videos", "video_frame_mask"]

    def __init__(
        self,
        image_size: int = 256,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        target_downsample: int = 8,
        num_frames: int | None = None,
        fps: float | None = None,
        trained_frames: int | None = None,
        long_video_factor: float | None = 2.0,
        **kwargs,
    ):
        check_sampling(num_frames, fps)
        check_long_video_factor(long_video_factor)
        if trained_frames is not None and (
            isinstance(trained_frames, bool) or not isinstance(trained_frames, int) or trained_frames < 1
        ):
            raise ValueError(f"trained_frames must be an integer >= 1 (or None), got {trained_frames!r}")
        if image_size % target_downsample:
            raise ValueError(
                f"image_size {image_size} is not divisible by target_downsample {target_downsample}"
            )
        super().__init__(**kwargs)
        self.image_size = image_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.target_downsample = target_downsample
        self.num_frames = num_frames
        self.fps = fps
        self.trained_frames = trained_frames
        self.long_video_factor = long_video_factor
        self._warned_long_video = False

    # ------------------------------------------------------------------------------------------ one video
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

    def prepare_video(
        self, video, num_frames: int | None = None, fps: float | None = None, max_frames: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One video (any kind ``video_foveated`` reads) -> normalised pixels and resized frames ``[T, 3, S, S]``.

        Encoded videos with neither ``num_frames`` nor ``fps`` follow this processor's own sampling;
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
            warnings.warn(message, LongVideoWarning, stacklevel=6)  # the caller of the processor

    # ------------------------------------------------------------------------------------------ targets
    def downsampled_targets(self, resized: torch.Tensor) -> torch.Tensor:
        """Area-downsampled frames in [-1, 1]: ``[T, 3, S, S]`` in [0, 1] -> ``[T, 3, S/f, S/f]``."""
        return F.avg_pool2d(resized * 2 - 1, self.target_downsample)

    def frame_targets(self, resized: torch.Tensor, vae=None) -> torch.Tensor:
        """The prediction targets of one clip's resized frames ``[T, 3, S, S]``: VAE latents when ``vae`` is given,
        else the frames area-downsampled (:meth:`downsampled_targets`)."""
        if vae is not None:
            return self.vae_targets(resized, vae)
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

    def targets(self, resized, return_targets: bool, precomputed, vae) -> list[torch.Tensor] | None:
        """Per video ``[T, C, h, w]``: the ``precomputed`` ones (checked against the videos' frame counts), those
        computed from the ``resized`` frames when ``return_targets``, else None."""
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

    @staticmethod
    def pad_frames(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack ``[T_i, ...]`` clips into ``[B, T, ...]`` (zero-padded at the end) and a ``[B, T]`` mask."""
        longest = max(clip.shape[0] for clip in clips)
        padded = clips[0].new_zeros((len(clips), longest, *clips[0].shape[1:]))
        mask = torch.zeros((len(clips), longest), dtype=torch.bool)
        for row, clip in enumerate(clips):
            padded[row, : clip.shape[0]] = clip
            mask[row, : clip.shape[0]] = True
        return padded, mask

    # ------------------------------------------------------------------------------------------ a batch
    def __call__(self, videos, **kwargs) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    def preprocess(
        self,
        videos,
        num_frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        return_targets: bool = False,
        prediction_targets: torch.Tensor | Sequence[torch.Tensor] | None = None,
        vae=None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """One video or a list of them -> ``pixel_values_videos [B, T, 3, S, S]`` (zero-padded),
        ``video_frame_mask [B, T]`` and, on request, ``prediction_targets [B, T, C, h, w]``.

        ``num_frames`` samples that many frames uniformly from any video; ``fps`` applies to encoded videos only;
        with neither, encoded videos follow ``self.num_frames`` / ``self.fps`` and arrays are read whole.
        ``max_frames`` caps each video after sampling (more are subsampled uniformly to this).
        """
        if return_tensors != "pt":
            raise ValueError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        check_sampling(num_frames, fps, max_frames)
        pixels, resized = zip(
            *(self.prepare_video(video, num_frames, fps, max_frames) for video in as_videos(videos))
        )
        batch = {}
        batch["pixel_values_videos"], batch["video_frame_mask"] = self.pad_frames(list(pixels))
        targets = self.targets(resized, return_targets, prediction_targets, vae)
        if targets is not None:
            batch["prediction_targets"], _ = self.pad_frames(targets)
        return BatchFeature(batch, tensor_type=None)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FoveatedVLMVideoProcessor"]

FoveatedVLMVideoProcessor.register_for_auto_class("AutoVideoProcessor")
