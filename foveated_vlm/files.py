"""Atomic writes: every file and folder the project writes appears whole or not at all.

A file is written to a hidden temporary sibling (same folder, so the final ``os.replace`` is atomic; same
suffix, so writers that read the format from the name, like matplotlib, PIL or PyAV, still work) and moved onto
its path only once written. A folder (a saved model, a checkpoint) is written under a temporary name and then
moved onto its path by :func:`replace_directory`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_sibling(path: str | os.PathLike) -> Path:
    """``folder/.name.tmp-<pid>.suffix`` beside ``path``: where :func:`atomic_path` writes it first."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write the file ``path`` to; it becomes ``path`` when the block ends without
    error, and is removed if the block raises. A missing parent folder is created; a ``path`` that is a folder is
    a ValueError (before anything is written), not an error of the final move."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a directory: give the path of a file to write (e.g. {path / 'out'}{path.suffix})"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def replace_directory(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Move the finished folder ``source`` onto ``destination`` (an earlier folder there is removed first;
    its parent is created if missing)."""
    destination = Path(destination)
    if destination.exists():
        shutil.rmtree(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, destination)


__all__ = ["atomic_path", "atomic_write_text", "replace_directory", "temporary_sibling"]
