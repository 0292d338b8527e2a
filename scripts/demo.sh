#!/usr/bin/env bash
# The main job: train the built-in demo (configs/demo.yaml: the named-object task, where the prompt names one of
# 3-4 objects by its colour and the caption must give that object's size, shape and motion) on the CPU, then
# read held-out clips with eval.probes and report, separately: caption accuracy (all attributes and each one) of
# the dynamic reading, the static reading of the same weights and the zero-frame (blank) control; the attention
# mass in the named object's box, dynamic vs static vs chance; the static/dynamic (coarse/fine) prediction-loss
# ratio with its 95% interval; and the figure of the fovea on the named object beside the static query.
#   bash scripts/demo.sh [OUTPUT_DIR] [extra train_accelerate.py flags, e.g. --seed 1 or --set train.max_steps=500]
# Run scripts/setup.sh first on a fresh machine (the README's first command does both). The printed report is
# also written to OUTPUT_DIR/report.txt (numbers in OUTPUT_DIR/report.json).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=outputs/demo
if [[ $# -gt 0 && "$1" != -* ]]; then
  OUT="$1"
  shift
fi
START=$(date +%s)
accelerate launch --cpu --num_processes 1 --num_machines 1 --num_cpu_threads_per_process 2 --mixed_precision no --dynamo_backend no \
  train_accelerate.py --config configs/demo.yaml --output_dir "$OUT" "$@"
TRAINED=$(date +%s)
python -m eval.demo_report --run_dir "$OUT" | tee "$OUT/report.txt"
END=$(date +%s)
echo "wall time: training $((TRAINED - START)) s, evaluation $((END - TRAINED)) s, total $((END - START)) s" \
  | tee -a "$OUT/report.txt"
