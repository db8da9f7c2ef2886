#!/usr/bin/env bash
# Keeps the weights of every 1000th checkpoint of each run (the runs keep only their 2 newest checkpoints), so that
# the corrective gain can be measured along training with the finished model's config
cd "${1:-outputs/feedback_v2}/runs"
while true; do
  for checkpoint in */checkpoints/step_*000; do
    [ -f "$checkpoint/COMPLETE" ] || continue
    run=${checkpoint%%/*}; step=${checkpoint##*step_}
    mkdir -p "$run/weights"
    [ -f "$run/weights/step_$step.safetensors" ] || cp "$checkpoint/model.safetensors" "$run/weights/step_$step.safetensors"
  done
  sleep 60
done
