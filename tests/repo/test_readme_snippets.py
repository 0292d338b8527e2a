"""The README's Python snippets run as written on the model its own command trains (issue 22).

``bash scripts/demo.sh`` writes ``outputs/demo/final``: here a random-init model of the demo's size and
processor (``configs/demo.yaml``, built as the trainer builds it, with its recorded sampling) is saved to
``outputs/demo/final`` under a temporary directory, beside a ``clip.mp4``, and every ```python block of the README
runs there in order, in one namespace (later blocks use earlier names). A block preceded by a
``<!-- readme-snippet: not run ... -->`` comment says why it cannot run here (the Hub, a GPU) and is skipped.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from foveated_vlm.training.config import load_config
from foveated_vlm.training.modeling import build_model_and_processor

from ..builders import encode_video, pan

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
NOT_RUN = "<!-- readme-snippet: not run"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.DOTALL)
CLIP_FRAMES, CLIP_SIZE, CLIP_FPS = 12, 64, 10


def readme_snippets() -> list[tuple[str, bool]]:
    """``(code, runs)`` of every ```python block of the README, in order."""
    return [
        (match["code"], not match["before"].startswith(NOT_RUN))
        for match in BLOCK.finditer(README.read_text(encoding="utf-8"))
    ]


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    """A folder holding ``outputs/demo/final`` (the demo-sized model, untrained) and ``clip.mp4``."""
    folder = tmp_path_factory.mktemp("readme")
    config = load_config(REPO / "configs" / "demo.yaml")
    model, processor = build_model_and_processor(config)
    final = folder / "outputs" / "demo" / "final"
    model.save_pretrained(final)
    processor.save_pretrained(final)
    encode_video(folder / "clip.mp4", pan(CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE), CLIP_FPS, "libx264")
    return folder


def test_the_readme_has_runnable_snippets_and_says_why_the_others_do_not_run():
    snippets = readme_snippets()
    assert sum(runs for _, runs in snippets) >= 2, "the Use and streaming snippets run"
    assert any(not runs for _, runs in snippets), "the full-size snippets are marked"


def test_the_readme_snippets_run_on_the_demo_model(demo_folder, monkeypatch, capsys):
    monkeypatch.chdir(demo_folder)
    monkeypatch.setattr(sys, "path", [str(REPO), *sys.path])  # the snippets import this repository's files
    namespace: dict = {"__name__": "readme"}
    for index, (code, runs) in enumerate(readme_snippets()):
        if runs:
            exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out.splitlines()
    assert namespace["out"].loss is not None and namespace["out"].attention_fine is not None
    read = namespace["frames"].shape[1]
    assert read == 6, "clip.mp4 is read as the demo was trained (data.num_frames)"
    fit = namespace["stream"].frames_that_fit + read  # printed before the frames were read
    assert str(fit) in printed, "the streaming snippet prints how many frames fit"
    assert 470 <= fit <= 490, "the README's '~480 frames fit' in the demo's 512-position context"


def test_the_full_size_streaming_snippet_is_refused_on_the_demo_model_saying_what_fits(
    demo_folder, monkeypatch
):
    """The README says so: ``max_frames=3600`` needs a full-size model's context."""
    from transformers import AutoModel, AutoProcessor

    from streaming_foveated import stream_prompt_inputs

    final = demo_folder / "outputs" / "demo" / "final"
    model = AutoModel.from_pretrained(final, trust_remote_code=True).eval()
    prompt = stream_prompt_inputs(
        AutoProcessor.from_pretrained(final, trust_remote_code=True), "Describe it."
    )
    with pytest.raises(
        ValueError, match=r"max_frames=3600 does not fit: .*context holds 512.*at most 4\d\d more frames fit"
    ):
        model.stream(**prompt, max_frames=3600)
