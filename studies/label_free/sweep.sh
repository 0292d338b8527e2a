#!/usr/bin/env bash
# One GPU call of the study: train and probe every arm side by side (studies.runner), measure the planner's
# gradient share of each loss on every trained foveated arm, and write the table.
#   bash studies/label_free/sweep.sh ARMS.yaml WORK OUT MAX_STEPS PARALLEL BUDGET_S [--set ...]
# WORK holds the runs (not kept); OUT gets table.md, summary.json and ablations.log.
set -u
arms=$1 work=$2 out=$3 steps=$4 parallel=$5 budget=$6
shift 6
timeout "$budget" python -m studies.runner --config configs/named.yaml --arms "$arms" --out "$work" \
    --max_steps "$steps" --parallel "$parallel" --evaluations probes --eval_split validation --eval_clips 128 \
    --probe_readers dynamic static shuffled other_clip blank --eval_batch_size 64 --device cuda \
    --set train.cuda_graph=true "$@" >"$out/ablations.log" 2>&1
echo "ablations exit $?" >>"$out/ablations.log"
for run in "$work"/arms/*/; do
    if [ -f "$run/final/config.json" ] && ! grep -q '"dense"' "$run/final/config.json"; then
        python -m studies.label_free.grad_share --run_dir "$run" --split validation --num_clips 32 --out "$run" \
            --device cuda >>"$out/ablations.log" 2>&1
    fi
done
python -m studies.label_free.summarise "$work" --json "$out/summary.json" >"$out/table.md" 2>>"$out/ablations.log"
