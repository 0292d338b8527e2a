"""Shared fixtures: one tiny tokenizer per session, tiny configs, processors and models built in code (by
:class:`tests.builders.FoveatedModelTester`), random videos and a manifest of encoded ones."""

from __future__ import annotations

import pytest
import torch

from foveated_vlm.tiny import tiny_tokenizer

from .builders import FoveatedModelTester, World, build_world, random_frames, write_manifest


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


@pytest.fixture(scope="session")
def tester(tokenizer) -> FoveatedModelTester:
    return FoveatedModelTester(tokenizer)


@pytest.fixture
def make_model(tester):
    """Build ``(model, processor)`` from tiny-config overrides, seeded, in eval mode."""
    return tester.model_and_processor


@pytest.fixture
def random_video():
    """``random_video(T, H=32, W=32, seed=0)`` -> uint8 ``[T, H, W, 3]``."""
    return random_frames


@pytest.fixture
def manifest(tmp_path):
    """A JSONL manifest of three good videos and one corrupt file."""
    return write_manifest(tmp_path)


@pytest.fixture(scope="session")
def world(tmp_path_factory, tokenizer) -> World:
    """The first-hour battery's model, processors, encoded clips and saved model folders (built once)."""
    return build_world(tmp_path_factory.mktemp("battery"), tokenizer)
