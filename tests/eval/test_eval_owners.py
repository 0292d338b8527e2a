"""One owner for each shared piece of evaluation: the mass-in-box computation, the clip subsets, the inference
modes, the timing harness, and every module-level constant of ``eval/`` and ``studies/`` defined once."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import torch

import base_foveated
import configuration_foveated
import streaming_foveated
from eval import captioning, fovea, mcq, probes
from eval.benchmark import streaming as benchmark_streaming
from eval.benchmark import timing
from studies.readers import costs

from ..environments import REPO

CONSTANT_SCOPES = ("eval", "studies")
LITERALS = (ast.Constant, ast.Tuple, ast.List, ast.Dict, ast.Set, ast.UnaryOp)  # a value spelt out in place


def test_mass_in_box_is_the_boxed_attention_and_chance_the_box_area():
    attention = torch.tensor(
        [[0.5, 0.25, 0.125, 0.125], [0.0, 0.0, 0.0, 0.75]]
    )  # [N=2, P=4], rest on the prefix
    coverage = torch.tensor(
        [[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )  # [N, P] covered fraction of each patch
    mass, chance = fovea.mass_in_box(attention, coverage)
    assert mass.dtype == chance.dtype == torch.float64
    assert mass.tolist() == [0.625, 0.75] and chance.tolist() == [0.375, 0.25]
    dense_mass, dense_chance = fovea.mass_in_box(None, coverage)  # a model without a map
    assert all(math.isnan(value) for value in dense_mass.tolist()) and dense_chance.tolist() == [0.375, 0.25]


def test_the_probes_use_the_one_mass_in_box_and_subsets():
    assert probes.mass_in_box is fovea.mass_in_box and probes.target_visible is fovea.target_visible
    assert probes.SUBSETS is fovea.SUBSETS


def test_inference_modes_come_from_the_hub_config():
    modes = configuration_foveated.INFERENCE_MODES
    assert base_foveated.INFERENCE_MODES is modes and streaming_foveated.INFERENCE_MODES is modes
    assert set(streaming_foveated.MODE_PASSES) == set(modes), "the stream knows the passes of every mode"
    assert captioning.INFERENCE_MODES is modes and mcq.MODES == (*modes, mcq.STREAMING)


def test_the_reader_costs_time_through_the_benchmark_harness():
    assert (
        costs.median_ms is timing.median_ms
        and costs.stream_step_times is benchmark_streaming.stream_step_times
    )
    calls = []
    frames = torch.arange(3.0).reshape(3, 1)  # [T=3, B=1]

    class Stream:
        def step(self, frame, targets=None):
            calls.append(float(frame))

    times = benchmark_streaming.stream_step_times(Stream(), frames, torch.device("cpu"), warmup=2, repeats=3)
    assert len(times) == 3 and calls == [0.0, 1.0, 2.0, 0.0, 1.0], "one frame a call, cycling past T"


def module_constants(root: Path = REPO, scopes: tuple[str, ...] = CONSTANT_SCOPES) -> dict[str, list[str]]:
    """``NAME = value`` at module level in ``scopes`` -> where it is defined, keyed by ``NAME = <value source>``."""
    found: dict[str, list[str]] = {}
    for scope in scopes:
        for path in sorted((root / scope).rglob("*.py")):
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target, value = node.targets[0], node.value
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    target, value = node.target, node.value
                else:
                    continue
                if isinstance(target, ast.Name) and target.id.isupper() and isinstance(value, LITERALS):
                    key = f"{target.id} = {ast.unparse(value)}"
                    found.setdefault(key, []).append(str(path.relative_to(root)))
    return found


def test_each_constant_of_eval_and_studies_is_defined_once():
    repeated = {key: paths for key, paths in module_constants().items() if len(paths) > 1}
    assert not repeated, f"constants defined more than once (import them from one owner): {repeated}"


def test_a_copied_constant_is_found(tmp_path):
    copied = 'SUBSETS = {"all": None, "named": True}\n'
    for name, source in (("a", copied + "OTHER = -1\n"), ("b", copied)):
        (tmp_path / "eval").mkdir(exist_ok=True)
        (tmp_path / "eval" / f"{name}.py").write_text(source, encoding="utf-8")
    found = module_constants(tmp_path, ("eval",))
    assert found["SUBSETS = {'all': None, 'named': True}"] == ["eval/a.py", "eval/b.py"]
    assert found["OTHER = -1"] == ["eval/a.py"]
