"""``scripts/setup.sh`` (the README's first step) is quiet and says how to use a virtual environment (issue 22).

It runs here against a stand-in ``python`` that records each call and its environment (no network, nothing
installed): every pip call is ``--quiet`` with pip's root warning and version check off, and the only output is
the one-line note that no virtual environment is active (none inside one).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$PIP_ROOT_USER_ACTION $PIP_DISABLE_PIP_VERSION_CHECK $*" >> "{log}"
if [[ "$1" == "-c" && "$2" == *base_prefix* ]]; then exit {in_venv}; fi
if [[ "$1" == "-c" && "$2" == *print* ]]; then echo /usr/local; fi
exit 0
"""


def _run_setup(tmp_path: Path, in_venv: bool) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON.format(log=log, in_venv=int(in_venv)))
    python.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("CONDA_PREFIX", None)
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    return result, log.read_text().splitlines()


@pytest.mark.parametrize("in_venv", [False, True], ids=["no-venv", "venv"])
def test_setup_is_quiet_and_names_the_virtual_environment(tmp_path, in_venv):
    result, calls = _run_setup(tmp_path, in_venv)
    assert result.returncode == 0, result.stderr
    pip_calls = [call for call in calls if " -m pip install " in f" {call}"]
    assert len(pip_calls) >= 3
    for call in pip_calls:
        assert call.startswith("ignore 1 ") and "--quiet" in call, call
    assert result.stdout == ""
    if in_venv:
        assert result.stderr == ""
    else:
        assert result.stderr.count("\n") == 1 and "no virtual environment is active" in result.stderr
        assert "python -m venv .venv && source .venv/bin/activate" in result.stderr
