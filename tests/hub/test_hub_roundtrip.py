"""save_pretrained -> a fresh Python process with only torch and transformers -> Auto classes load it exactly.

The fresh process runs with ``python -S`` on a folder that links torch, transformers and their own requirements
only (``environments.bare_site``): PyAV, PIL and the project itself cannot be imported there, so the classes
must come from the files written by save_pretrained (through trust_remote_code), and those files must pass
transformers' check of their imports without the optional packages.
"""

from __future__ import annotations

import json
import textwrap

import torch
from safetensors.torch import load_file

from ..environments import bare_site, hub_modules, run_isolated

LOADER = textwrap.dedent(
    """
    import importlib, importlib.util, json, sys
    OPTIONAL = ["av", "PIL", "foveated_vlm", "caption_video", *HUB_MODULES]
    importable = [name for name in OPTIONAL if importlib.util.find_spec(name) is not None]
    assert not importable, f"the bare environment can import {importable}"
    import numpy as np, torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    directory, out = sys.argv[1], sys.argv[2]
    config = AutoConfig.from_pretrained(directory, trust_remote_code=True)
    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    also = AutoModelForImageTextToText.from_pretrained(directory, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
    video = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    inputs = processor(text="Describe the video.", videos=video)
    with torch.no_grad():
        logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    # inputs people have, without PIL or PyAV: BGR -> RGB by a negative stride, grayscale, one image
    flipped = processor(text="x", videos=video[..., ::-1].copy()[..., ::-1])["pixel_values_videos"]
    assert torch.equal(flipped, processor(text="x", videos=video)["pixel_values_videos"])
    gray = np.concatenate([video, video])[..., 0]  # [8, H, W] (a 3- or 4-frame one would be ambiguous)
    assert processor(text="x", videos=gray)["pixel_values_videos"].shape[1] == 8
    assert processor(text="x", videos=video[0])["pixel_values_videos"].shape[1] == 1
    with open("clip.mp4", "wb") as handle:
        handle.write(bytes(64))
    try:
        processor(text="x", videos="clip.mp4")
        decode_error = None
    except ImportError as error:
        decode_error = str(error)
    streaming = importlib.import_module(type(model).__module__.rsplit(".", 1)[0] + ".streaming_foveated")
    stream = model.stream(**streaming.stream_prompt_inputs(processor, "Describe the video."))
    for t in range(4):
        stream.step(inputs["pixel_values_videos"][:, t])
    streamed = stream.caption(max_new_tokens=5, do_sample=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # clone: tied weights share memory
    save_file({**state, "__logits__": logits, "__generated__": generated, "__streamed__": streamed}, out)
    print(json.dumps({
        "config": type(config).__name__, "model": type(model).__name__, "also": type(also).__name__,
        "processor": type(processor).__name__, "module": type(model).__module__,
        "lambda_coarse": config.lambda_coarse, "decode_error": decode_error,
    }))
    """
)


def test_saved_directory_loads_in_a_fresh_process_without_the_project(make_model, random_video, tmp_path):
    model, processor = make_model(lambda_coarse=0.25)
    saved = tmp_path / "checkpoint"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    for name in [f"{module}.py" for module in hub_modules()] + ["config.json", "processor_config.json"]:
        assert (saved / name).is_file(), name
    auto_map = json.loads((saved / "config.json").read_text())["auto_map"]
    assert set(auto_map) >= {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = f"HUB_MODULES = {hub_modules()!r}\n" + LOADER
    site = bare_site(tmp_path / "site")
    result = run_isolated(script, str(saved), str(tmp_path / "out.safetensors"), paths=[site], cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"] == report["also"] == "FoveatedVLMForConditionalGeneration"
    assert report["config"] == "FoveatedVLMConfig" and report["processor"] == "FoveatedVLMProcessor"
    assert report["module"].startswith("transformers_modules"), "classes must come from the saved files"
    assert report["lambda_coarse"] == 0.25
    assert "needs PyAV" in report["decode_error"] and "pip install av" in report["decode_error"]

    loaded = load_file(tmp_path / "out.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), f"weight {key} differs after the round trip"
    video = random_video(4)
    inputs = processor(text="Describe the video.", videos=video)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.equal(loaded["__logits__"], logits)
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(loaded["__generated__"], generated)
    assert torch.equal(loaded["__streamed__"], generated[:, inputs["input_ids"].shape[1] :])
