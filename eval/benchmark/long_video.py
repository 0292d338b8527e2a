"""Section ``long``: captioning a long video end to end from decoded frames, and what the dense baseline fits."""

from __future__ import annotations

import sys
import time

import torch

from streaming_foveated import stream_prompt_inputs

from .settings import PROMPT, SEED, Settings
from .timing import sync


@torch.no_grad()
def bench_long_video(model, processor, dense_processor, settings: Settings, device: torch.device) -> dict:
    """Caption a ``long_video_frames`` video from decoded uint8 frames, end to end; and what the dense baseline fits.

    Watching: decoded frames go to the device chunk by chunk, are resized and normalised there
    (``processor.video_processor.preprocess_frames`` runs on the frames' device) and read by ``stream.extend``. Captioning: greedy
    over a static cache, one CUDA graph per token (``caption(static_cache=True)``, the timed path), then the same
    stream captioned by ``generate`` for comparison.
    """
    generator = torch.Generator().manual_seed(SEED)
    distinct = min(settings.long_video_frames, settings.chunk_frames)
    pool = torch.randint(
        0, 256, (distinct, *settings.decoded_size, 3), dtype=torch.uint8, generator=generator
    )
    decoded = pool[torch.arange(settings.long_video_frames) % distinct]  # decoded frames, held in host memory
    if device.type == "cuda":
        decoded = decoded.pin_memory()
    sync(device)
    start = time.perf_counter()
    stream = model.stream(**stream_prompt_inputs(processor, PROMPT), chunk_frames=settings.chunk_frames)
    for begin in range(0, settings.long_video_frames, settings.chunk_frames):
        chunk = decoded[begin : begin + settings.chunk_frames].to(device, non_blocking=True)
        pixels, _ = processor.video_processor.preprocess_frames(chunk)
        stream.extend(pixels.to(model.dtype).unsqueeze(0))
    sync(device)
    watched = time.perf_counter()
    print(f"[benchmark] long video watched in {watched - start:.2f} s", file=sys.stderr, flush=True)
    tokens = settings.new_tokens
    caption = stream.caption(max_new_tokens=tokens, min_new_tokens=tokens, static_cache=True)
    sync(device)
    done = time.perf_counter()
    print(f"[benchmark] static-cache caption in {done - watched:.2f} s", file=sys.stderr, flush=True)
    generated = stream.caption(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    sync(device)
    generate_seconds = time.perf_counter() - done
    prompt_tokens = len(
        processor.tokenizer(processor.format_prompt(PROMPT, 0), add_special_tokens=False)["input_ids"]
    )
    return {
        "frames": settings.long_video_frames,
        "decoded_size": list(settings.decoded_size),
        "chunk_frames": settings.chunk_frames,
        "new_tokens": int(caption.shape[-1]),
        "seconds": done - start,
        "watch_seconds": watched - start,
        "caption_seconds": done - watched,
        "caption_generate_seconds": generate_seconds,
        "captions_equal": bool(torch.equal(caption, generated)),
        "positions": int(stream.attention_mask.sum()) + stream.suffix_ids.numel() + settings.new_tokens,
        "dense_positions_needed": prompt_tokens
        + settings.long_video_frames * dense_processor.tokens_per_frame,
        "dense_frames_that_fit": dense_processor.frames_that_fit(prompt_tokens + settings.new_tokens),
        "context": dense_processor.max_sequence_length,
    }
