"""save_pretrained -> a fresh Python process elsewhere, without the project -> Auto classes load it exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

# Run in a fresh interpreter: the repository is dropped from sys.path and its modules cannot be imported, so only
# the files written by save_pretrained (loaded through trust_remote_code) can provide the classes.
LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys
    PROJECT = {"configuration_foveated", "modeling_foveated", "processing_foveated", "streaming_foveated",
               "foveated_vlm"}

    class BlockProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in PROJECT:
                raise ImportError(f"the project is not installed here: {name}")

    sys.meta_path.insert(0, BlockProject())
    sys.path = [p for p in sys.path if p not in ("", REPO)]
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
    state = {k: v.clone() for k, v in model.state_dict().items()}  # clone: tied weights share memory
    save_file({**state, "__logits__": logits, "__generated__": generated}, out)
    print(json.dumps({
        "config": type(config).__name__, "model": type(model).__name__, "also": type(also).__name__,
        "processor": type(processor).__name__, "module": type(model).__module__,
        "lambda_coarse": config.lambda_coarse,
    }))
    """
)


def test_saved_directory_loads_in_a_fresh_process_without_the_project(make_model, random_video, tmp_path):
    model, processor = make_model(lambda_coarse=0.25)
    saved = tmp_path / "checkpoint"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    for name in (
        "configuration_foveated.py",
        "modeling_foveated.py",
        "processing_foveated.py",
        "config.json",
    ):
        assert (saved / name).is_file(), name
    auto_map = json.loads((saved / "config.json").read_text())["auto_map"]
    assert set(auto_map) >= {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = f"REPO = {repo!r}\n" + LOADER
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", script, str(saved), str(tmp_path / "out.safetensors")],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"] == report["also"] == "FoveatedVLMForConditionalGeneration"
    assert report["config"] == "FoveatedVLMConfig" and report["processor"] == "FoveatedVLMProcessor"
    assert report["module"].startswith("transformers_modules"), "classes must come from the saved files"
    assert report["lambda_coarse"] == 0.25

    loaded = load_file(tmp_path / "out.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), f"weight {key} differs after the round trip"
    video = random_video(4)
    inputs = processor(text="Describe the video.", videos=video)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.equal(loaded["__logits__"], logits)
    assert torch.equal(loaded["__generated__"], model.generate(**inputs, max_new_tokens=5, do_sample=False))
