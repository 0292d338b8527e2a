"""The processor: chat format, frame preprocessing, targets, padding, and every bad-input error."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from foveated_vlm.tiny import tiny_config
from processing_foveated import FRAME_TOKEN, VIDEO_END_TOKEN, VIDEO_START_TOKEN, FoveatedVLMProcessor
from video_foveated import load_video, resize_frames, sample_frame_indices

from ..builders import encode_video


@pytest.fixture
def processor(make_model):
    return make_model()[1]


def test_chat_format_puts_text_before_the_video_and_supervises_the_caption(processor, random_video):
    batch = processor(text="Describe it.", videos=random_video(3), captions="the red square stays still.")
    text = processor.decode(batch["input_ids"][0])
    expected_block = VIDEO_START_TOKEN + FRAME_TOKEN * 3 + VIDEO_END_TOKEN
    assert "<|im_start|>system\nYou are a helpful AI assistant named SmolLM" in text
    assert f"<|im_start|>user\nDescribe it.\n{expected_block}<|im_end|>\n<|im_start|>assistant\n" in text
    supervised = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.decode(supervised) == "the red square stays still.<|im_end|>"


def test_system_prompt_is_configurable(make_model, random_video):
    processor = make_model()[1]
    processor.system_prompt = "You watch videos."
    text = processor.decode(processor(text="Hi", videos=random_video(2))["input_ids"][0])
    assert text.startswith("<|im_start|>system\nYou watch videos.<|im_end|>") and "SmolLM" not in text


def test_frames_are_resized_normalised_and_padded(processor, random_video):
    batch = processor(
        text=["a", "b"], videos=[random_video(4, 48, 64), random_video(2, 32, 32)], return_targets=True
    )
    assert batch["pixel_values_videos"].shape == (2, 4, 3, 32, 32)
    assert batch["video_frame_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert batch["prediction_targets"].shape == (2, 4, 3, 4, 4)
    assert batch["pixel_values_videos"][1, 2:].abs().sum() == 0
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].all(), "left padding"
    mean = torch.tensor(processor.video_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.video_processor.image_std).view(3, 1, 1)
    frame = torch.from_numpy(random_video(2, 32, 32)[0]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(batch["pixel_values_videos"][1, 0], (frame - mean) / std)


def test_preprocess_frames_takes_uint8_and_stays_on_the_frames_device(processor, random_video):
    """Decoded uint8 frames are normalised where they live (mean/std follow the device), like float frames."""
    video = torch.from_numpy(random_video(3, 40, 56))
    pixels, resized = processor.video_processor.preprocess_frames(video)
    expected, expected_resized = processor.video_processor.preprocess_frames(video.float() / 255.0)
    torch.testing.assert_close(pixels, expected)
    torch.testing.assert_close(resized, expected_resized)
    assert pixels.shape == (3, 3, 32, 32) and pixels.dtype == torch.float32
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        on_device, _ = processor.video_processor.preprocess_frames(video.to(device))
        assert on_device.device.type == device
        torch.testing.assert_close(on_device.cpu(), expected, rtol=1e-5, atol=1e-5)


def test_downsampled_targets_are_area_means_in_minus_one_one(processor):
    frames = torch.zeros(1, 32, 32, 3)
    frames[:, :8, :8] = 1.0
    targets = processor.video_processor.downsampled_targets(resize_frames(frames, 32))
    assert targets.shape == (1, 3, 4, 4)
    assert targets[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0] and (targets[0, :, 1:, :] == -1).all()
    torch.testing.assert_close(
        processor.video_processor.postprocess_targets(targets)[0, :, 0, 0], torch.ones(3)
    )


def test_resize_keeps_aspect_by_centre_crop():
    frames = torch.zeros(1, 20, 40, 3)
    frames[:, :, 10:30] = 1.0  # the central square
    out = resize_frames(frames, 10)
    assert out.shape == (1, 3, 10, 10)
    inner = out[..., 1:-1]  # the antialiasing filter blends the edge columns with the cropped-away border
    torch.testing.assert_close(inner, torch.ones_like(inner))
    assert out[..., [0, -1]].min() > 0.8


def test_video_inputs_of_every_kind_agree(processor, random_video, tmp_path):
    video = random_video(3)
    as_array = processor(text="x", videos=video)["pixel_values_videos"]
    as_tensor = processor(text="x", videos=torch.from_numpy(video))["pixel_values_videos"]
    as_float = processor(text="x", videos=video.astype(np.float32) / 255)["pixel_values_videos"]
    as_pil = processor(text="x", videos=[Image.fromarray(frame) for frame in video])["pixel_values_videos"]
    for other in (as_tensor, as_float, as_pil):
        torch.testing.assert_close(other, as_array)
    batched = processor(text=["x", "y"], videos=np.stack([video, video]))
    assert batched["pixel_values_videos"].shape[0] == 2


def test_precomputed_targets_pass_through(processor, random_video):
    targets = torch.randn(3, 3, 4, 4)
    batch = processor(text="x", videos=random_video(3), prediction_targets=[targets])
    torch.testing.assert_close(batch["prediction_targets"][0], targets)


def test_video_files_are_decoded_and_sampled(processor, tmp_path):
    path = encode_video(
        tmp_path / "clip.mp4", np.stack([np.full((32, 32, 3), i * 12, np.uint8) for i in range(20)]), 10
    )
    assert load_video(path).shape == (20, 32, 32, 3)
    assert load_video(path, num_frames=5).shape[0] == 5
    assert load_video(path, fps=2).shape[0] == 4
    batch = processor(text="x", videos=str(path), num_frames=4)
    assert batch["video_frame_mask"].sum() == 4
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(ValueError, match="corrupt.mp4"):
        load_video(corrupt)
    with pytest.raises(ValueError, match="not found"):
        load_video(tmp_path / "missing.mp4")
    encoded = path.read_bytes()
    with path.open("rb") as handle:
        from_handle = load_video(handle, num_frames=5)
    np.testing.assert_array_equal(from_handle, load_video(path, num_frames=5))
    np.testing.assert_array_equal(load_video(encoded, fps=2), load_video(path, fps=2))
    from_bytes = processor(text=["x", "y"], videos=[encoded, io.BytesIO(encoded)], num_frames=4)
    torch.testing.assert_close(from_bytes["pixel_values_videos"][0], batch["pixel_values_videos"][0])
    torch.testing.assert_close(from_bytes["pixel_values_videos"][1], batch["pixel_values_videos"][0])
    with pytest.raises(ValueError, match="<1200 bytes of video>"):
        load_video(corrupt.read_bytes())
    with pytest.raises(ValueError, match="takes a path, bytes or a binary file object, got int"):
        load_video(3)


def test_fps_sampling_keeps_the_frame_nearest_to_each_tick_fed_one_timestamp_at_a_time():
    """FrameSampler (what the decoder runs, frame by frame) equals the argmin over all frames of |t - tick|."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        times = np.sort(rng.uniform(0, 4, rng.integers(1, 30)))
        fps = float(rng.choice([0.5, 1, 3, 7.5, 30, 1000]))
        ticks = np.arange(times[0], times[-1] + 1e-6, 1 / fps)
        nearest = sorted(set(np.abs(times[None] - ticks[:, None]).argmin(1).tolist()))
        assert sample_frame_indices(times, None, fps) == nearest
    # equal timestamps: the first of them; a huge rate keeps every frame once, without a tick loop
    assert sample_frame_indices(np.array([0.0, 0.5, 0.5, 1.0]), None, 2) == [0, 1, 3]
    assert sample_frame_indices(np.arange(3600) / 30, None, 1e9) == list(range(3600))
    with pytest.raises(ValueError, match="timestamps go backwards"):
        sample_frame_indices(np.array([0.0, 1.0, 0.5]), None, 2)


def test_frame_sampling_indices():
    times = np.arange(10) / 10.0
    assert sample_frame_indices(times, 4, None) == [0, 3, 6, 9]
    assert sample_frame_indices(times, 20, None) == list(range(10))
    assert sample_frame_indices(times, None, 5) == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_indices(times, 0, None)
    with pytest.raises(ValueError, match="fps"):
        sample_frame_indices(times, None, -1)


@pytest.mark.parametrize(
    ("video", "message"),
    [
        (np.zeros((3, 32, 32), np.uint8), "ambiguous"),
        (np.zeros((2, 3, 32, 32, 3, 1), np.uint8), r"a video must be \[T, H, W, C\]"),
        (np.zeros((3, 32, 32, 5), np.uint8), "3 channels"),
        (np.zeros((3, 3, 32, 32), np.uint8), "channels first"),
        (np.zeros((0, 32, 32, 3), np.uint8), "zero frames"),
        (np.zeros((2, 0, 32, 3), np.uint8), "frames are empty"),
        (np.full((2, 32, 32, 3), np.nan, np.float32), "NaN or inf"),
        (np.full((2, 32, 32, 3), 2.0, np.float32), r"\[0, 1\]"),
        (np.zeros((2, 32, 32, 3), np.int32), r"uint8 \(0-255\) or float"),
        ([], "empty list"),
    ],
)
def test_bad_videos_raise_clear_errors(processor, video, message):
    with pytest.raises(ValueError, match=message):
        processor(text="x", videos=video)


def test_bad_batches_raise_clear_errors(processor, random_video):
    with pytest.raises(ValueError, match="got 2 text for 1 videos"):
        processor(text=["a", "b"], videos=random_video(2))
    with pytest.raises(ValueError, match="got 1 captions for 2 videos"):
        processor(text=["a", "b"], videos=[random_video(2), random_video(2)], captions=["c"])
    with pytest.raises(ValueError, match="videos are required"):
        processor(text="a")
    with pytest.raises(ValueError, match="prediction_targets have 2 frames"):
        processor(text="a", videos=random_video(3), prediction_targets=[torch.zeros(2, 3, 4, 4)])


def test_too_many_frames_says_how_many_fit(processor, random_video):
    with pytest.raises(ValueError, match=r"at most \d+ frames fit; subsample") as error:
        processor(text="x", videos=random_video(600, 8, 8))
    fit = int(str(error.value).split("at most ")[1].split()[0])
    assert processor(text="x", videos=random_video(fit, 8, 8))["input_ids"].shape[1] <= 512


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"target_downsample": 4},
        {"text": {"max_position_embeddings": 64}},
    ],
)
def test_the_processor_of_a_model_config_reads_its_frames_targets_and_context(tokenizer, overrides):
    config = tiny_config(tokenizer, **overrides)
    processor = FoveatedVLMProcessor.from_model_config(tokenizer, config, system_prompt="You watch.")
    assert processor.image_size == config.vision_config.image_size
    assert processor.video_processor.target_downsample == config.target_downsample
    assert processor.tokens_per_frame == config.tokens_per_frame
    assert processor.max_sequence_length == config.text_config.max_position_embeddings
    assert processor.system_prompt == "You watch."


def test_the_video_processor_is_a_transformers_video_processor_saved_with_the_processor(tokenizer, tmp_path):
    """The frames half is a ``BaseVideoProcessor`` of its own: it pads, masks and makes targets alone, and saving
    the processor saves it (frame size, normalisation, target factor, sampling), so both load back equal."""
    from transformers.video_processing_utils import BaseVideoProcessor

    config = tiny_config(tokenizer)
    processor = FoveatedVLMProcessor.from_model_config(tokenizer, config, num_frames=3)
    video_processor = processor.video_processor
    assert isinstance(video_processor, BaseVideoProcessor)
    frames = video_processor(
        [np.zeros((4, 20, 30, 3), np.uint8), np.zeros((2, 8, 8, 3), np.uint8)], return_targets=True
    )
    side = config.vision_config.image_size
    assert frames["pixel_values_videos"].shape == (2, 4, 3, side, side)
    assert frames["video_frame_mask"].sum(1).tolist() == [4, 2]
    assert frames["prediction_targets"].shape[:2] == (2, 4)
    processor.save_pretrained(tmp_path)
    loaded = FoveatedVLMProcessor.from_pretrained(tmp_path)
    assert loaded.video_processor.to_dict() == video_processor.to_dict()
    assert loaded.num_frames == 3 and loaded.image_size == side


def test_a_processor_saved_before_the_video_processor_loads_its_frame_settings(tokenizer, tmp_path):
    """A processor saved by the code before the split kept image size, normalisation, target factor and sampling
    in its own ``processor_config.json``: they become its video processor's."""
    import json

    FoveatedVLMProcessor.from_model_config(tokenizer, tiny_config(tokenizer)).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    saved.pop("video_processor", None)
    legacy = {"image_size": 48, "image_mean": [0.5] * 3, "image_std": [0.25] * 3, "target_downsample": 4}
    (tmp_path / "processor_config.json").write_text(json.dumps({**saved, **legacy, "num_frames": 6}))
    loaded = FoveatedVLMProcessor.from_pretrained(tmp_path)
    assert loaded.image_size == 48 and loaded.num_frames == 6
    assert loaded.video_processor.image_mean == [0.5] * 3 and loaded.video_processor.target_downsample == 4


def test_the_saved_video_processor_has_its_own_config_for_auto_video_processor(tokenizer, tmp_path):
    """``AutoVideoProcessor`` reads ``video_preprocessor_config.json`` and finds the class through its auto map."""
    import json

    FoveatedVLMProcessor.from_model_config(tokenizer, tiny_config(tokenizer), num_frames=5).save_pretrained(
        tmp_path
    )
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["auto_map"]["AutoVideoProcessor"] == "video_processing_foveated.FoveatedVLMVideoProcessor"
    assert saved["num_frames"] == 5 and (tmp_path / "video_processing_foveated.py").is_file()


@pytest.mark.gpu
def test_auto_video_processor_loads_the_video_processor(tokenizer, tmp_path):
    """Where torchvision is installed (the GPU image; transformers asks it of every ``AutoVideoProcessor``)."""
    from transformers import AutoVideoProcessor

    FoveatedVLMProcessor.from_model_config(tokenizer, tiny_config(tokenizer), num_frames=5).save_pretrained(
        tmp_path
    )
    loaded = AutoVideoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "FoveatedVLMVideoProcessor" and loaded.num_frames == 5
