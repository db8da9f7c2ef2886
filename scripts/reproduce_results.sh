#!/usr/bin/env bash
# Reproduces RESULTS.md from nothing: scripted LIBERO demonstrations -> a small FAS-VLA and its chunk baseline
# trained on them -> the feedback comparison on held-out init states. About 3 hours on a 2-core CPU; every stage
# resumes where it stopped when run again.
#
#   scripts/reproduce_results.sh [PYTHON]        (default .venv/bin/python; LIBERO from scripts/setup_libero.sh)
set -euo pipefail
PYTHON=${1:-.venv/bin/python}
OUT=${OUT:-outputs/results}
export HF_HUB_OFFLINE=1 MUJOCO_GL=${MUJOCO_GL:-egl}

wait_all() {  # every background job, failing if any failed (a bare `wait` would not)
  local status=0
  for pid in $(jobs -p); do wait "$pid" || status=1; done
  return $status
}

# 1. 20 demonstrations per task from init states 0-39 (40-49 stay held out), 128 px, 20 min
if [ ! -f "$OUT/demos/dataset/meta/info.json" ]; then
  "$PYTHON" generate_libero_demos.py --task_suite_name libero_object --task_ids 0 1 2 --init_states 0-39 \
    --demos_per_task 20 --resolution 128 --num_workers 2 --seed 0 --output_dir "$OUT/demos"
fi

# 2. the two models, same data, same budget, one core each, about an hour
core=0
for objective in stream_joint chunk; do
  if [ ! -f "$OUT/runs/$objective/model/config.json" ]; then
    OMP_NUM_THREADS=1 taskset -c $core "$PYTHON" train_accelerate.py --dataset "$OUT/demos/dataset" --preset small \
      --freeze full --objective $objective --output_dir "$OUT/runs/$objective" --steps 6000 --batch_size 32 \
      --lr 3e-4 --warmup_steps 300 --checkpoint_every 250 --eval_every 500 --log_every 50 --num_workers 0 \
      --report_to none --seed 0 --resume_from_checkpoint latest &
  fi
  core=$((core + 1))
done
wait_all

# 3. four policies x four perturbations on held-out init states 40-44 of each task, one process per core; the
#    last call only assembles comparison.md from the finished conditions
compare() {  # compare CORES OUTPUT_NAME [compare_libero.py arguments]
  local cores=$1 name=$2
  shift 2
  OMP_NUM_THREADS=1 taskset -c "$cores" "$PYTHON" compare_libero.py --stream_model "$OUT/runs/stream_joint/model" \
    --chunk_model "$OUT/runs/chunk/model" --output_dir "$OUT/$name" --task_suite_name libero_object \
    --task_ids 0 1 2 --first_trial 40 --resolution 128 "$@"
}
compare 0 comparison --num_trials_per_task 5 --perturbations nominal "action delay" &
compare 1 comparison --num_trials_per_task 5 --perturbations push "action noise" &
wait_all
compare 0-1 comparison --num_trials_per_task 5

# 4. what synchronous feedback costs when time is real: the streaming policies under the real-time runner (50 ms
#    ticks on a simulated clock, measured compute, states 10 ms late, no prefix pipelining: each observation is
#    taken at its chunk boundary; a tick with no action ready holds the arm)
real_time=(--real_time --state_latency_ms 10 --prefix_lead 0 --perturbations nominal --num_trials_per_task 5)
compare 0 comparison_real_time "${real_time[@]}" --policies "stream synchronous" &
compare 1 comparison_real_time "${real_time[@]}" --policies "stream open loop" "stream anticipatory" &
wait_all
compare 0-1 comparison_real_time "${real_time[@]}" --policies "stream open loop" "stream synchronous" \
  "stream anticipatory"
