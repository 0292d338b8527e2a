"""Speed levers of the training step: batch signatures, static copies, and the captured step (GPU)."""

from __future__ import annotations

import pytest
import torch

from foveated_vlm.training.speed import GraphedTrainStep, batch_signature, clone_to, compile_regions
from layout_foveated import VideoLayout


def _layout(frames: int, padded: bool = False) -> VideoLayout:
    index = torch.arange(frames)
    return VideoLayout(index, index == 0, index + 3, index + 2, padded=padded)


def _batch(frames: int = 4, padded: bool = False) -> dict:
    return {
        "input_ids": torch.zeros(1, frames + 5, dtype=torch.long),
        "video_layout": _layout(frames, padded),
    }


def test_signature_changes_with_shapes_dtypes_and_flags_only():
    assert batch_signature(_batch()) == batch_signature(_batch())
    assert batch_signature(_batch()) != batch_signature(_batch(frames=5))
    assert batch_signature(_batch()) != batch_signature(_batch(padded=True))
    half = {**_batch(), "input_ids": torch.zeros(1, 9, dtype=torch.int32)}
    assert batch_signature(_batch()) != batch_signature(half)


def test_clone_to_copies_every_tensor_including_the_layout():
    batch = _batch()
    copy = clone_to(batch, torch.device("cpu"))
    assert copy["input_ids"] is not batch["input_ids"]
    assert copy["video_layout"].slot_index.data_ptr() != batch["video_layout"].slot_index.data_ptr()
    assert torch.equal(copy["video_layout"].slot_index, batch["video_layout"].slot_index)
    assert copy["video_layout"].padded is False


def test_graphed_step_refuses_the_cpu():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        GraphedTrainStep(lambda batch: torch.zeros(()), torch.device("cpu"))


@pytest.mark.gpu
def test_graphed_training_steps_equal_eager_steps(make_model, random_video):
    """Same weights after the same steps, whether replayed from a CUDA graph or run eagerly."""
    device = torch.device("cuda")

    def train(graphed: bool) -> tuple[list[float], torch.Tensor]:
        model, processor = make_model()
        model.to(device).train()
        assert model.config.previous_target_dropout == 0.0  # the tiny config draws no random numbers
        assert model.config.vision_config.pos_embed_rescale is None
        parameters = list(model.parameters())
        optimizer = torch.optim.AdamW(
            parameters, lr=torch.tensor(1e-3, device=device), capturable=True, fused=True
        )
        batch = processor(
            text=["describe"],
            videos=[random_video(4)],
            captions=["a square"],
            return_targets=True,
            return_video_layout=True,
        )
        batch = {name: value.to(device) for name, value in batch.items()}

        def step(inputs):
            optimizer.zero_grad(set_to_none=False)
            output = model(**inputs)
            output.loss.backward()
            optimizer.step()
            return output.loss.detach()

        runner = GraphedTrainStep(step, device, warmup_steps=2) if graphed else step
        losses = [float(runner(batch)) for _ in range(6)]  # 2 eager, 1 captured, 3 replayed when graphed
        return losses, torch.cat([p.detach().flatten() for p in parameters])

    eager_losses, eager_weights = train(graphed=False)
    graphed_losses, graphed_weights = train(graphed=True)
    torch.testing.assert_close(graphed_losses, eager_losses, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(graphed_weights, eager_weights, rtol=1e-4, atol=1e-5)


def test_compile_regions_installs_the_declared_regions_and_undoes_them(make_model, random_video, monkeypatch):
    """The encoder's patch and query layers, every decoder layer and the heads run compiled until undo()."""
    model, processor = make_model()
    compiled, calls = [], []

    def fake_compile(fn, **kwargs):
        assert kwargs["dynamic"] is False and kwargs["mode"] == "max-autotune"
        compiled.append(fn)

        def wrapped(*args, **kw):
            calls.append(fn)
            return fn(*args, **kw)

        return wrapped

    inputs = processor(text="Describe the video.", videos=random_video(3), return_targets=True)
    with torch.no_grad():
        reference = model(**inputs).loss
    monkeypatch.setattr(torch, "compile", fake_compile)
    wrapper = type("Wrapped", (), {"get_base_model": lambda self: model})()  # what PEFT's wrapper offers
    undo = compile_regions(wrapper, mode="max-autotune")
    modules = [
        *model.model.language_model.layers,
        model.fovea_prediction_head,
    ]
    assert len(compiled) == 2 + len(modules)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).loss, reference)
    assert {getattr(fn, "__name__", None) for fn in calls} >= {"_patch_layer", "_query_layer"}
    assert sum(getattr(fn, "__name__", None) == "_call_impl" for fn in set(calls)) == len(modules)
    undo()
    assert model.model.fovea_encoder.use_regions({}) == {}, "the encoder runs its eager layers again"
    assert all(module._compiled_call_impl is None for module in modules)
    calls.clear()
    with torch.no_grad():
        model(**inputs)
    assert not calls
    with pytest.raises(ValueError, match=r"no regions \['attention'\]"):
        model.model.fovea_encoder.use_regions({"attention": print})
