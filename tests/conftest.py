"""Shared fixtures: one tiny tokenizer per session, tiny configs, processors and models built in code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foveated_vlm.tiny import tiny_config, tiny_processor, tiny_tokenizer
from modeling_foveated import FoveatedVLMForConditionalGeneration


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads; on a loaded 2-core machine two threads are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def make_model(tokenizer):
    """Build ``(model, processor)`` from tiny-config overrides, seeded, in eval mode."""

    def build(seed: int = 0, **overrides):
        config = tiny_config(tokenizer, **overrides)
        torch.manual_seed(seed)
        model = FoveatedVLMForConditionalGeneration(config).eval()
        return model, tiny_processor(config, tokenizer)

    return build


@pytest.fixture
def random_video():
    """``random_video(T, H=32, W=32, seed=0)`` -> uint8 ``[T, H, W, 3]``."""

    def make(frames: int, height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)

    return make
