"""Every path, ``python -m`` module, script and config file the pages for people name exists in the repository.

The pages: ``README.md``, ``BENCHMARKS.md``, ``docs/*.md`` and every ``studies/**/RESULTS.md``. What counts as a
named repository path, in prose, inline code and code blocks alike:

* a token that starts with one of the repository's top folders (``configs/``, ``docs/``, ``eval/``, ``studies/``,
  ``tests/``, ...), e.g. ``configs/demo.yaml``, ``bash scripts/demo.sh``; a ``*`` in it is a glob that must match;
* a bare file name of a root module or project file (``train_accelerate.py``, ``pyproject.toml``);
* the target of a markdown link or image (``![...](figures/x.png)``), relative to the page;
* ``python -m NAME`` where NAME's top package is the repository's (``eval``, ``studies``, ...): the module file.

Output paths a command writes (``OUT/...``, ``report.md``) start with no repository folder and are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..environments import REPO

TOP_FOLDERS = ("configs", "docs", "eval", "studies", "tests", "scripts", "foveated_vlm", ".ci")
ROOT_FILE_SUFFIXES = (".py", ".toml", ".sh")
"""Bare names with these suffixes are root files; other bare names (``probes.json``, ``B32.md``) are outputs."""
PATH_CHARS = r"[\w.*/-]"
FOLDER_PATH = re.compile(rf"(?<![\w./$-])((?:{'|'.join(map(re.escape, TOP_FOLDERS))})/{PATH_CHARS}*)")
ROOT_FILE = re.compile(rf"(?<![\w./$-])([\w*-]+(?:{'|'.join(map(re.escape, ROOT_FILE_SUFFIXES))}))(?![\w/])")
LINK = re.compile(r"\]\(([^)\s]+)\)")
MODULE = re.compile(r"python -m ([\w.]+)")
TRAILING = ".,;:"


def pages(root: Path = REPO) -> list[Path]:
    """The pages for people: README, BENCHMARKS, docs/*.md, studies/**/RESULTS.md (those that exist)."""
    named = [root / "README.md", root / "BENCHMARKS.md"]
    found = sorted((root / "docs").glob("*.md")) + sorted((root / "studies").rglob("RESULTS.md"))
    return [page for page in named if page.is_file()] + found


def _exists(root: Path, relative: str) -> bool:
    relative = relative.rstrip("/")
    if "*" in relative:
        return any(root.glob(relative))
    return (root / relative).exists()


def _module_exists(root: Path, module: str) -> bool | None:
    """Whether ``python -m module`` finds a file of the repository; None when its top package is not ours."""
    parts = module.split(".")
    top = root / parts[0]
    if not ((top / "__init__.py").is_file() or top.with_suffix(".py").is_file()):
        return None
    path = root.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def missing_names(page: Path, root: Path = REPO) -> list[str]:
    """What ``page`` names that the repository lacks, each as ``kind: name``."""
    text = page.read_text(encoding="utf-8")
    missing = []
    for match in FOLDER_PATH.finditer(text):
        name = match.group(1).rstrip(TRAILING)
        if not _exists(root, name):
            missing.append(f"path: {name}")
    for match in ROOT_FILE.finditer(text):
        if not _exists(root, match.group(1)):
            missing.append(f"root file: {match.group(1)}")
    for match in LINK.finditer(text):
        target = match.group(1).split("#")[0]
        if target and "://" not in target and not (page.parent / target).exists():
            missing.append(f"link: {target}")
    for match in MODULE.finditer(text):
        module = match.group(1).rstrip(TRAILING)
        if _module_exists(root, module) is False:
            missing.append(f"module: python -m {module}")
    return missing


def test_every_page_names_only_what_exists():
    checked = pages()
    assert {"README.md", "BENCHMARKS.md", "RESULTS.md"} <= {page.name for page in checked}
    missing = {str(page.relative_to(REPO)): names for page in checked if (names := missing_names(page))}
    assert not missing, f"pages name what the repository lacks: {missing}"


def test_a_missing_path_module_link_or_root_file_is_reported(tmp_path):
    """The check itself: each kind of stale name is found, and what exists (or is an output) is not."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("x: 1\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "__init__.py").write_text("")
    (tmp_path / "eval" / "probes.py").write_text("")
    (tmp_path / "train_accelerate.py").write_text("")
    page = tmp_path / "README.md"
    page.write_text(
        "Run `python train_accelerate.py --config configs/demo.yaml` then `python -m eval.probes`, not\n"
        "`python -m eval.ablations` or `tests/test_battery.py` or old_foveated.py; outputs: OUT/report.md,\n"
        "probes.json; `python -m pytest` is not ours. ![a figure](figures/missing.png) [site](https://x.org)\n"
        "```bash\nbash scripts/demo.sh --arms configs/*.yaml\n```\n"
    )
    assert missing_names(page, tmp_path) == [
        "path: tests/test_battery.py",
        "path: scripts/demo.sh",
        "root file: old_foveated.py",
        "link: figures/missing.png",
        "module: python -m eval.ablations",
    ]
