"""Fresh Python environments for the tests, built offline from what is installed here.

* :func:`bare_site` links torch, transformers and their own requirements (the closure of their declared
  dependencies, no extras) into one folder: run with ``python -S`` and ``PYTHONPATH`` set to it, a process can import
  those and the standard library and nothing else (no PyAV, no PIL, not the project), as in a fresh environment where
  only ``pip install torch transformers`` ran.
* :func:`hub_modules` is the one list of the Hub files: ``[tool.setuptools] py-modules`` of ``pyproject.toml``.
* :func:`run_isolated` runs a script in such a process, away from the repository.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
BARE_ROOTS = ("torch", "transformers")


def pyproject() -> dict:
    """The parsed ``pyproject.toml``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(REPO / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def hub_modules() -> list[str]:
    """The Hub files' module names, as ``pyproject.toml`` lists them for packaging (the single list)."""
    return list(pyproject()["tool"]["setuptools"]["py-modules"])


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(roots: tuple[str, ...] = BARE_ROOTS) -> list[metadata.Distribution]:
    """The installed distributions ``roots`` need: their requirements (markers evaluated, no extras), recursively."""
    seen: dict[str, metadata.Distribution] = {}
    pending = list(roots)
    while pending:
        name = _normalise(pending.pop())
        if name in seen:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement not installed here cannot be imported there either
        seen[name] = distribution
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(seen.values())


def _top_level_entries(distribution: metadata.Distribution) -> set[str]:
    """Names directly under site-packages that a distribution installed (packages, modules, its .dist-info)."""
    entries = set()
    for file in distribution.files or []:
        parts = Path(file).parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth"):
            continue
        entries.add(parts[0])
    return entries


def bare_site(destination: Path) -> Path:
    """A folder holding links to torch, transformers and their requirement closure only; returns it."""
    destination.mkdir(parents=True, exist_ok=True)
    for distribution in requirement_closure():
        for entry in _top_level_entries(distribution):
            source = Path(distribution.locate_file(entry))
            link = destination / entry
            if source.exists() and not link.exists():
                link.symlink_to(source, target_is_directory=source.is_dir())
    return destination


def run_isolated(
    script: str,
    *args: str,
    paths: list[Path],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    """``python -S -c script args`` with only ``paths`` (and the standard library) importable, in ``cwd``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_"))}
    base.update(
        PYTHONPATH=os.pathsep.join(str(path) for path in paths),
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(cwd / "hf_home"),
        HF_MODULES_CACHE=str(cwd / "hf_modules"),
        OMP_NUM_THREADS="1",
        **(env or {}),
    )
    return subprocess.run(
        [sys.executable, "-S", "-c", script, *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
