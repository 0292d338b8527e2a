"""Packaging: the one list of Hub files, their imports, and a built wheel that installs and imports elsewhere."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

from transformers.dynamic_module_utils import get_imports, get_relative_imports

from ..environments import REPO, _top_level_entries, hub_modules, requirement_closure, run_isolated

COPY_IGNORED = shutil.ignore_patterns(
    ".git",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    "outputs",
    "runs",
    ".pytest_cache",
    ".ruff_cache",
    "tests",
)


def test_the_hub_file_list_is_every_root_hub_file_and_closed_under_their_imports():
    modules = hub_modules()
    assert sorted(modules) == sorted(path.stem for path in REPO.glob("*_foveated.py"))
    for module in modules:
        for relative in get_relative_imports(REPO / f"{module}.py"):
            assert relative in modules, f"{module}.py imports .{relative}, which pyproject.toml does not ship"


def test_hub_files_import_nothing_outside_torch_transformers_and_their_requirements():
    """What transformers' ``check_imports`` asks of a Hub file, without starting a process."""
    available = set(sys.stdlib_module_names)
    for distribution in requirement_closure():
        available |= {Path(entry).stem.split(".")[0] for entry in _top_level_entries(distribution)}
    for module in hub_modules():
        missing = set(get_imports(REPO / f"{module}.py")) - available
        assert not missing, (
            f"{module}.py imports {sorted(missing)}: not there in a bare torch + transformers install"
        )


IMPORTER = textwrap.dedent(
    """
    import importlib, json, sys
    target = sys.argv[1]
    names = sys.argv[2].split(",")
    files = {name: importlib.import_module(name).__file__ for name in names}
    outside = {name: path for name, path in files.items() if not path.startswith(target)}
    assert not outside, f"imported from outside the installed wheel: {outside}"
    from processing_foveated import FoveatedVLMProcessor
    from modeling_foveated import FoveatedVLMForConditionalGeneration
    print(json.dumps(sorted(files)))
    """
)


def test_a_built_wheel_installs_and_imports_in_a_fresh_environment(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=COPY_IGNORED)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300, cwd=tmp_path)
    (wheel,) = wheels.glob("foveated_vlm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {
            name.split("/")[0] for name in archive.namelist() if not name.split("/")[0].endswith(".dist-info")
        }
    assert top == {f"{module}.py" for module in hub_modules()} | {"foveated_vlm"}

    target = tmp_path / "installed"
    install = [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    names = [*hub_modules(), "foveated_vlm", "foveated_vlm.metrics", "foveated_vlm.training.trainer"]
    # -S: the site-packages of this environment supply the wheel's dependencies but not its .pth files, so the
    # project's editable install (and the repository) are out of reach
    paths = [target, Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"])]
    result = run_isolated(IMPORTER, str(target), ",".join(names), paths=paths, cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == sorted(names)


def test_the_data_package_imports_nothing_of_training():
    """``foveated_vlm.data`` owns what it needs (the sharding too): no ``data`` <-> ``training`` import cycle."""
    script = (
        "import sys, foveated_vlm.data; print(sorted(m for m in sys.modules if 'foveated_vlm.training' in m))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


CORE_DEPENDENCIES = {"torch", "transformers", "numpy", "pillow"}
"""What installing the package alone brings: the Hub files' needs, plus arrays and images."""
EXTRAS = {"video", "train", "eval", "gguf", "metrics", "dev", "lmms", "all"}


def test_core_dependencies_are_the_model_s_and_the_rest_are_extras():
    """Training, evaluation and decoding packages are extras (``pip install foveated-vlm[train]``); the README's
    set-up installs ``all`` of them."""
    import re

    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[; ]", requirement)[0].lower() for requirement in project["dependencies"]}
    assert names == CORE_DEPENDENCIES
    assert set(project["optional-dependencies"]) == EXTRAS
    bundled = project["optional-dependencies"]["all"][0]
    assert all(extra in bundled for extra in EXTRAS - {"all"})
    assert ".[all]" in (REPO / "scripts" / "setup.sh").read_text()
