"""Atomic writes (foveated_vlm.files): a file or folder appears whole or not at all, never half-written."""

from __future__ import annotations

import pytest

from foveated_vlm.files import atomic_path, atomic_write_text, replace_directory, temporary_sibling


def test_a_text_file_is_written_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    atomic_write_text(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]


def test_the_temporary_is_a_hidden_sibling_with_the_same_suffix(tmp_path):
    """Writers that read the format from the name (matplotlib, PIL, PyAV) see the real suffix."""
    temporary = temporary_sibling(tmp_path / "clip.mp4")
    assert (
        temporary.parent == tmp_path
        and temporary.name.startswith(".clip.tmp-")
        and temporary.suffix == ".mp4"
    )


def test_a_finished_folder_replaces_an_earlier_one(tmp_path):
    destination = tmp_path / "runs" / "final"
    replace_directory(_folder(tmp_path / "first", "a"), destination)
    assert (destination / "a").is_file(), "the parent folder is created"
    replace_directory(_folder(tmp_path / "second", "b"), destination)
    assert sorted(p.name for p in destination.iterdir()) == ["b"]
    assert not (tmp_path / "second").exists()


def _folder(path, name: str):
    path.mkdir()
    (path / name).write_text(name)
    return path


def test_a_file_in_a_missing_folder_is_written_with_its_folders(tmp_path):
    path = tmp_path / "new" / "deeper" / "report.md"
    atomic_write_text(path, "whole")
    assert path.read_text() == "whole" and sorted(p.name for p in path.parent.iterdir()) == ["report.md"]


def test_a_path_that_is_a_folder_is_refused_before_anything_is_written(tmp_path):
    """An output path that names a folder (issue 22): one sentence saying so, not the final move's IsADirectoryError."""
    folder = tmp_path / "figures.png"
    folder.mkdir()
    with pytest.raises(
        ValueError, match=r"figures.png is a directory: give the path of a file to write \(e.g. "
    ):
        atomic_write_text(folder, "text")
    assert list(tmp_path.iterdir()) == [folder] and not list(folder.iterdir())
