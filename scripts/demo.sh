#!/usr/bin/env bash
# The main job: train the built-in demo (configs/demo.yaml) on the procedural clips on the CPU, then caption
# held-out clips and report attribute accuracy, loss_fine vs loss_coarse and two figures.
#   bash scripts/demo.sh [OUTPUT_DIR] [extra train_accelerate.py flags, e.g. --set train.max_steps=500]
# Run scripts/setup.sh first on a fresh machine (the README's first command does both).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-outputs/demo}"
shift || true
START=$(date +%s)
accelerate launch --cpu --num_processes 1 --num_machines 1 --num_cpu_threads_per_process 2 --mixed_precision no --dynamo_backend no \
  train_accelerate.py --config configs/demo.yaml --output_dir "$OUT" "$@"
TRAINED=$(date +%s)
python -m foveated_vlm.training.demo_report --run_dir "$OUT"
END=$(date +%s)
echo "wall time: training $((TRAINED - START)) s, evaluation $((END - TRAINED)) s, total $((END - START)) s"
