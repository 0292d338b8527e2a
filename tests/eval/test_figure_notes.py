"""Figures a newcomer can read (issue 22): every plot says what its bars or lines mean and what chance or the
majority answer is; the probe figure of held-out clips says why bars can fall under the majority line."""

from __future__ import annotations

import json

import pytest

import eval.figures
import eval.probe_report
import foveated_vlm.training.figures as training_figures


def _ci(value: float) -> dict[str, float]:
    return {"estimate": value, "low": max(0.0, value - 0.05), "high": value + 0.05}


def _summary(all_right: float) -> dict:
    reader = {
        "all_attributes": _ci(all_right),
        "accuracy": {"shape": _ci(0.0), "size": _ci(0.87), "motion": _ci(0.59)},
        "mass_in_box": _ci(0.79),
        "chance": _ci(0.07),
    }
    return {
        "num_clips": 128,
        "readers": {"dynamic": reader, "static": {**reader, "mass_in_box": _ci(0.13)}},
        "majority_baseline": {"all_attributes": 0.156, "shape": 0.3, "size": 0.5, "motion": 0.37},
    }


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the patched modules save: its note under the plots and its title."""
    saved: list[str] = []

    def capture(figure, path) -> None:
        texts = [figure._supxlabel, figure._suptitle] + [axis.title for axis in figure.axes]
        saved.append(" ".join(text.get_text().replace("\n", " ") for text in texts if text is not None))

    for module in (eval.probe_report, eval.figures, training_figures):
        monkeypatch.setattr(module, "save_figure", capture)
    return saved


def test_the_probe_figure_says_what_the_bars_and_lines_mean(drawn, tmp_path):
    eval.probe_report.plot_probes(_summary(0.4), tmp_path / "p.png", split="validation")
    (text,) = drawn
    for phrase in (
        "fraction of clips whose caption gets every scored attribute",
        "95% bootstrap CI",
        "majority answer (always giving these clips' most common value",
        "chance (the box's share",
    ):
        assert phrase in text, phrase
    assert "Held-out clips" not in text and "under the majority line" not in text


def test_zero_bars_under_the_majority_line_of_held_out_clips_are_explained(drawn, tmp_path):
    eval.probe_report.plot_probes(_summary(0.0), tmp_path / "p.png", split="heldout")
    (text,) = drawn
    assert "of split heldout" in text
    assert "Held-out clips pair a shape with a motion never seen together in training" in text
    assert "Bars under the majority line (dynamic, static)" in text
    assert "weakest attribute is shape (shape 0.00, size 0.87, motion 0.59 for dynamic)" in text


def test_loss_figures_say_what_the_curves_mean(drawn, tmp_path):
    log = tmp_path / "log.jsonl"
    rows = [{"step": step, "split": split, "loss_fine": 0.5, "loss_coarse": 0.6, "loss_caption": 2.0}
            for step in (1, 2) for split in ("train", "validation")]  # fmt: skip
    log.write_text("\n".join(json.dumps(row) for row in rows))
    training_figures.plot_loss_curve(log, tmp_path / "loss.png")
    eval.figures.plot_loss_curves(log, tmp_path / "curves.png")
    for text in drawn:
        assert "read with the planned queries / the static query" in text and "lower is better" in text
    assert "1 (dotted) where planning gives no gain" in drawn[1]
