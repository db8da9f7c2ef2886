#!/usr/bin/env bash
# The feedback experiment of results/feedback_v2/PLAN.md (issue 16), stage by stage; every stage is skipped when its
# output exists and resumes where it stopped otherwise, so the experiment spans sessions:
#
#   scripts/feedback_experiment.sh demos        # the plain and the recovery demonstrations (about 90 min, 2 cores)
#   scripts/feedback_experiment.sh demos_unseen # 12 demonstrations for the diagnostics, no model's (about 4 min)
#   scripts/feedback_experiment.sh demos_no_delay   # recovery demonstrations without the actuation delay (PLAN
#                                               # item 10, the braking test; about 50 min)
#   scripts/feedback_experiment.sh train        # the eight models, two at a time on one core each (about 4 h)
#   scripts/feedback_experiment.sh train chunk chunk_recovery   # only these, in pairs
#   LONE_CORES=0 LONE_THREADS=1 scripts/feedback_experiment.sh train NAME   # one model on core 0 only
#   scripts/feedback_experiment.sh diagnose     # the corrective gain of each FAS-VLA model trained so far
#   scripts/feedback_experiment.sh evaluate     # every model trained so far, mode and perturbation on the same 50
#                                               # episodes (~2 h for four models; a later run adds the new ones)
#   scripts/feedback_experiment.sh evaluate chunk "fas_recovery anticipatory"   # only these policies
#   scripts/feedback_experiment.sh braking_test # fas_recovery_no_delay nominally, every mode (~10 min)
#   scripts/feedback_experiment.sh objective_test   # the same without the stabilising term (PLAN item 12)
#   scripts/feedback_experiment.sh image_test   # do the models look? image swaps and grasp offsets (PLAN item 13)
#   scripts/feedback_experiment.sh train fas_recovery_no_delay_kfb1 fas_recovery_no_delay_kfb2   # PLAN item 14
#   scripts/feedback_experiment.sh tracking_test    # the kappa 0 model tracking its plan, every perturbation
#                                               # (PLAN items 16-17, ~40 min on 2 cores)
#   scripts/feedback_experiment.sh confirmation_test   # item 17 again on init states 10-29 (PLAN item 18a, 900
#                                               # episodes, ~1.7 h on 2 cores), and the untracked model's open
#                                               # loop on item 17's episodes (item 18c)
#   scripts/feedback_experiment.sh chunk_test   # the chunk baseline on the tracked model's 150 episodes (PLAN
#                                               # item 19(i), after confirmation_test; ~2.5 h on 2 cores)
#   scripts/feedback_experiment.sh tracking_sweep   # the delay sweep of the tracked model and the chunk baseline
#                                               # on the same data, with the delay-trained pair if trained
#                                               # (PLAN item 19(ii), ~1.5-3 h on 2 cores)
#   scripts/feedback_experiment.sh sweep        # the inference-delay sweep, with and without delay training (~1 h)
#   scripts/feedback_experiment.sh realtime     # real time, prefix pipelining on (the default) and off, the
#                                               # tracked model (PLAN item 19(iii), ~30 min)
#
# Outputs under $OUT (default outputs/feedback_v2).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-outputs/feedback_v2}
export HF_HUB_OFFLINE=1 MUJOCO_GL=${MUJOCO_GL:-egl}

DEMOS=(--task_suite_name libero_object --task_ids 0 1 2 3 4 --resolution 128 --num_workers 2 --seed 0)
RECOVERY=(--dart_from_slot 20 --dart_noise 0.3 --dart_delay 2 --dart_push_probability 0.01 --dart_push_force 60
          --dart_push_steps 4)
RECOVERY_NO_DELAY=("${RECOVERY[@]}" --dart_delay 0)  # the braking test (PLAN item 10): noise and pushes only
CONDITIONING=(--center_state --absolute_action_dims 6 --trajectory_origin chunk)
STABILISED=("${CONDITIONING[@]}" --feedback_kappa 4 --kappa_a 4)
DELAY_TRAINING=(--max_observation_delay 8)
# model name -> dataset and objective options
declare -A MODEL_DATA=([chunk]=demos [chunk_recovery]=demos_recovery [fas_v1]=demos [fas_conditioning]=demos
                       [fas_stabilised]=demos [fas_recovery]=demos_recovery [chunk_recovery_delay]=demos_recovery
                       [fas_recovery_delay]=demos_recovery [fas_recovery_no_delay]=demos_recovery_no_delay
                       [fas_recovery_no_delay_kappa0]=demos_recovery_no_delay
                       [fas_recovery_no_delay_kfb0.5]=demos_recovery_no_delay
                       [fas_recovery_no_delay_kfb1]=demos_recovery_no_delay
                       [fas_recovery_no_delay_kfb2]=demos_recovery_no_delay
                       [chunk_recovery_no_delay]=demos_recovery_no_delay
                       [fas_recovery_no_delay_kappa0_obs_delay]=demos_recovery_no_delay
                       [chunk_recovery_no_delay_obs_delay]=demos_recovery_no_delay)
declare -A MODEL_OPTIONS=([chunk]="--objective chunk" [chunk_recovery]="--objective chunk"
                          [fas_v1]="--objective stream_joint"
                          [fas_conditioning]="--objective stream_joint ${CONDITIONING[*]}"
                          [fas_stabilised]="--objective stream_joint ${STABILISED[*]}"
                          [fas_recovery]="--objective stream_joint ${STABILISED[*]}"
                          [chunk_recovery_delay]="--objective chunk ${DELAY_TRAINING[*]}"
                          [fas_recovery_delay]="--objective stream_joint ${STABILISED[*]} ${DELAY_TRAINING[*]}"
                          [fas_recovery_no_delay]="--objective stream_joint ${STABILISED[*]}"
                          [fas_recovery_no_delay_kappa0]="--objective stream_joint ${CONDITIONING[*]}"
                          [fas_recovery_no_delay_kfb0.5]="--objective stream_joint ${CONDITIONING[*]} --feedback_kappa 0.5"
                          [fas_recovery_no_delay_kfb1]="--objective stream_joint ${CONDITIONING[*]} --feedback_kappa 1"
                          [fas_recovery_no_delay_kfb2]="--objective stream_joint ${CONDITIONING[*]} --feedback_kappa 2"
                          [chunk_recovery_no_delay]="--objective chunk"
                          [fas_recovery_no_delay_kappa0_obs_delay]="--objective stream_joint ${CONDITIONING[*]} ${DELAY_TRAINING[*]}"
                          [chunk_recovery_no_delay_obs_delay]="--objective chunk ${DELAY_TRAINING[*]}")
EPISODES=(--task_suite_name libero_object --task_ids 0 1 2 3 4 --first_trial 0 --num_trials_per_task 10
          --resolution 128 --max_episodes_rendered 1)
CONFIRMATION_EPISODES=(--first_trial 10 --num_trials_per_task 20)  # overrides EPISODES' (never 45-49)

wait_all() {  # every background job, failing if any failed
  local status=0
  for pid in $(jobs -p); do wait "$pid" || status=1; done
  return $status
}

demos() {
  local name=$1
  shift
  if [ ! -f "$OUT/$name/dataset/meta/info.json" ]; then  # resumes an interrupted generation
    "$PYTHON" generate_libero_demos.py "${DEMOS[@]}" "$@" --output_dir "$OUT/$name"
  fi
}

train_one() {  # train_one NAME CORES THREADS
  local name=$1 cores=$2 threads=$3
  if [ -f "$OUT/runs/$name/model/config.json" ]; then return; fi
  # shellcheck disable=SC2086  # the options are words
  OMP_NUM_THREADS=$threads taskset -c "$cores" "$PYTHON" train_accelerate.py \
    --dataset "$OUT/${MODEL_DATA[$name]}/dataset" --preset small --freeze full ${MODEL_OPTIONS[$name]} \
    --output_dir "$OUT/runs/$name" --steps 6000 \
    --batch_size 32 --lr 3e-4 --warmup_steps 300 --checkpoint_every 250 --eval_every 500 --log_every 50 \
    --num_workers 0 --report_to none --seed 0 --resume_from_checkpoint latest > "$OUT/runs/$name.log" 2>&1
}

trained() {  # trained NAME...: NAME=FOLDER for each model whose training finished, here or in an earlier session
  # (a finished model is committed under results/feedback_v2/models, PLAN item 11)
  for name in "$@"; do
    if [ -f "$OUT/runs/$name/model/config.json" ]; then echo "$name=$OUT/runs/$name/model"
    elif [ -f "results/feedback_v2/models/$name/config.json" ]; then echo "$name=results/feedback_v2/models/$name"
    fi
  done
}

model_arguments() {  # model_arguments STREAMING CHUNK [MODE...]: sets models to the compare_libero.py options of
  # those models trained so far; with MODEs, only those modes of the streaming ones
  local streaming chunk_names name mode
  mapfile -t streaming < <(trained $1)
  mapfile -t chunk_names < <(trained $2)
  shift 2
  models=()
  [ ${#streaming[@]} -eq 0 ] || models+=(--stream_model "${streaming[@]}")
  [ ${#chunk_names[@]} -eq 0 ] || models+=(--chunk_model "${chunk_names[@]}")
  [ $# -gt 0 ] || return 0
  models+=(--policies "${chunk_names[@]%%=*}")
  for name in "${streaming[@]%%=*}"; do
    for mode in "$@"; do models+=("$name $mode"); done
  done
}

compare() {  # compare FOLDER CORES [compare_libero.py arguments]: pinned to CORES, into $OUT/FOLDER
  local folder=$1 cores=$2
  shift 2
  OMP_NUM_THREADS=1 taskset -c "$cores" "$PYTHON" compare_libero.py "${EPISODES[@]}" --output_dir "$OUT/$folder" \
    "$@" >> "$OUT/${folder}_$cores.log" 2>&1
}

case "${1:-}" in
  demos)
    demos demos --demos_per_task 20
    demos demos_recovery --demos_per_task 40 "${RECOVERY[@]}"
    ;;
  demos_unseen)  # the diagnostics' held-out demonstrations: other seeds than any training set's
    demos demos_unseen --task_ids 0 1 2 --demos_per_task 4 --seed 100
    ;;
  demos_no_delay)
    demos demos_recovery_no_delay --demos_per_task 40 "${RECOVERY_NO_DELAY[@]}"
    ;;
  train)
    mkdir -p "$OUT/runs"
    pgrep -f keep_run_weights.sh > /dev/null || (scripts/keep_run_weights.sh "$OUT" > /dev/null 2>&1 &)
    shift
    # the method's two full versions first (their diagnostics come before any simulation), then the baselines
    names=("$@")
    [ ${#names[@]} -gt 0 ] || names=(fas_stabilised fas_recovery chunk chunk_recovery fas_v1 fas_conditioning
                                     chunk_recovery_delay fas_recovery_delay)
    for ((i = 0; i < ${#names[@]}; i += 2)); do
      if [ -z "${names[i + 1]:-}" ]; then  # a model alone gets both cores, unless LONE_CORES says otherwise
        train_one "${names[i]}" "${LONE_CORES:-0-1}" "${LONE_THREADS:-2}" &
      else
        train_one "${names[i]}" 0 1 &
        train_one "${names[i + 1]}" 1 1 &
      fi
      wait_all
    done
    sleep 61  # the weights keeper's last pass
    pkill -f keep_run_weights.sh || true
    ;;
  diagnose)
    for name in fas_stabilised fas_recovery fas_v1 fas_conditioning fas_recovery_delay fas_recovery_no_delay \
                fas_recovery_no_delay_kappa0 fas_recovery_no_delay_kfb0.5 fas_recovery_no_delay_kfb1 \
                fas_recovery_no_delay_kfb2; do
      [ -f "$OUT/runs/$name/model/config.json" ] || continue
      sensitivity=(benchmarks/feedback_sensitivity.py --model "$OUT/runs/$name/model"
                   --dataset "$OUT/${MODEL_DATA[$name]}/dataset")
      [ -f "$OUT/sensitivity_$name.json" ] || \
        "$PYTHON" "${sensitivity[@]}" --frames 256 --output "$OUT/sensitivity_$name.json"
      unseen=("$OUT/demos_unseen/dataset" --unseen_dataset)  # 12 demonstrations no model saw (PLAN item 1)
      if [ -f "$OUT/demos_unseen/dataset/meta/info.json" ]; then
        [ -f "$OUT/sensitivity_${name}_unseen.json" ] || "$PYTHON" benchmarks/feedback_sensitivity.py \
          --model "$OUT/runs/$name/model" --dataset "${unseen[@]}" --frames 256 \
          --output "$OUT/sensitivity_${name}_unseen.json"
        [ -f "$OUT/action_scale_${name}_unseen.json" ] || "$PYTHON" benchmarks/action_scale.py \
          --model "$OUT/runs/$name/model" --dataset "${unseen[@]}" --output "$OUT/action_scale_${name}_unseen.json"
      fi
      for weights in "$OUT/runs/$name"/weights/step_*.safetensors; do  # along training (keep_weights.sh)
        [ -f "$weights" ] || continue
        step=$(basename "$weights" .safetensors)
        [ -f "$OUT/sensitivity_${name}_$step.json" ] || "$PYTHON" "${sensitivity[@]}" --weights "$weights" \
          --frames 128 --output "$OUT/sensitivity_${name}_$step.json"
        [ ! -f "$OUT/demos_unseen/dataset/meta/info.json" ] || [ -f "$OUT/action_scale_${name}_${step}_unseen.json" ] ||
          "$PYTHON" benchmarks/action_scale.py --model "$OUT/runs/$name/model" --weights "$weights" \
            --dataset "${unseen[@]}" --output "$OUT/action_scale_${name}_${step}_unseen.json"
      done
    done
    ;;
  evaluate)
    shift
    model_arguments "fas_v1 fas_conditioning fas_stabilised fas_recovery" "chunk chunk_recovery"
    [ $# -eq 0 ] || models+=(--policies "$@")
    perturbed=(--action_noise 0.1 --action_delay 2 --push 40 0 60 0 4)
    compare evaluation 0 "${models[@]}" "${perturbed[@]}" --perturbations nominal "action delay" &
    compare evaluation 1 "${models[@]}" "${perturbed[@]}" --perturbations push "action noise" &
    wait_all
    compare evaluation 0-1 "${models[@]}" "${perturbed[@]}"
    ;;
  tracking_test)  # the kappa 0 model tracking its own plan (PLAN items 16-17), a core for each half
    kappa0=$(trained fas_recovery_no_delay_kappa0 | cut -d= -f2)
    G_from=$(trained fas_recovery_no_delay | cut -d= -f2)
    full="$OUT/models/fas_recovery_no_delay_kappa0_track4" position="$OUT/models/fas_recovery_no_delay_kappa0_track4_position"
    [ -f "$full/config.json" ] || "$PYTHON" scripts/add_tracking.py --tracking_kappa 4 --output "$full" \
      --model "$kappa0" --matrix_from "$G_from"
    [ -f "$position/config.json" ] || "$PYTHON" scripts/add_tracking.py --tracking_kappa 4 --state_dims 0 1 2 \
      --output "$position" --model "$kappa0" --matrix_from "$G_from"
    models=(--stream_model "fas_recovery_no_delay_kappa0_track4=$full"
            "fas_recovery_no_delay_kappa0_track4_position=$position")
    perturbed=(--action_noise 0.1 --action_delay 2 --push 40 0 60 0 4)
    # item 16 ran the full G's three modes under noise and delay, then stopped (item 17); open loop is the same
    # policy for both (tracking changes nothing there), so the position variant runs the fed-back modes only
    policies=(--policies "fas_recovery_no_delay_kappa0_track4 open loop"
              "fas_recovery_no_delay_kappa0_track4_position synchronous"
              "fas_recovery_no_delay_kappa0_track4_position anticipatory")
    compare tracking_test 0 "${models[@]}" "${perturbed[@]}" "${policies[@]}" --perturbations "action noise" push &
    compare tracking_test 1 "${models[@]}" "${perturbed[@]}" "${policies[@]}" --perturbations "action delay" \
      nominal &
    wait_all
    pairs=()
    for mode in synchronous anticipatory; do
      pairs+=(--pair "fas_recovery_no_delay_kappa0_track4_position $mode" "fas_recovery_no_delay_kappa0_track4 open loop")
    done
    compare tracking_test 0-1 "${models[@]}" "${perturbed[@]}" "${policies[@]}" "${pairs[@]}" --report_only
    ;;
  confirmation_test)  # PLAN item 18: (a) item 17's policies on new episodes, (c) open loop without tracking
    position="$OUT/models/fas_recovery_no_delay_kappa0_track4_position"
    [ -f "$position/config.json" ] || { echo "run tracking_test first: it builds $position" >&2; exit 1; }
    name=fas_recovery_no_delay_kappa0_track4_position
    models=(--stream_model "$name=$position")
    perturbed=(--action_noise 0.1 --action_delay 2 --push 40 0 60 0 4)
    confirm() {  # confirm CORES PERTURBATION MODE...
      local cores=$1 perturbation=$2 policies=()
      shift 2
      for mode in "$@"; do policies+=("$name $mode"); done
      compare confirmation_test "$cores" "${models[@]}" "${perturbed[@]}" "${CONFIRMATION_EPISODES[@]}" \
        --perturbations "$perturbation" --policies "${policies[@]}"
    }
    # 450 and 500 episodes a core: the reproduction check first, on the item-17 episodes (EPISODES' init states)
    { compare reproduction_check 0 --stream_model "$(trained fas_recovery_no_delay_kappa0)" --perturbations nominal \
        --policies "fas_recovery_no_delay_kappa0 open loop"
      confirm 0 "action noise" "open loop" synchronous anticipatory
      confirm 0 push "open loop"; } &
    { confirm 1 "action delay" "open loop" synchronous anticipatory
      confirm 1 push synchronous anticipatory; } &
    wait_all
    compare confirmation_test 0-1 "${models[@]}" "${perturbed[@]}" "${CONFIRMATION_EPISODES[@]}" \
      --perturbations "action noise" "action delay" push --report_only
    ;;
  chunk_test)  # PLAN item 19(i): chunk_recovery_no_delay on init states 0-29, the tracked anticipatory's episodes
    chunk=$(trained chunk_recovery_no_delay)
    [ -n "$chunk" ] || { echo "train chunk_recovery_no_delay first" >&2; exit 1; }
    name=fas_recovery_no_delay_kappa0_track4_position
    tracked=(--stream_model "$name=$OUT/models/$name")
    perturbed=(--action_noise 0.1 --action_delay 2 --push 40 0 60 0 4)
    # the confirmation's nominal cell on 10-29 (its own stage has none; run 2026-12-03, so it resumes as finished)
    compare confirmation_test 0-1 "${tracked[@]}" "${perturbed[@]}" "${CONFIRMATION_EPISODES[@]}" \
      --perturbations nominal --policies "$name open loop" "$name anticipatory" --num_workers 2
    compare confirmation_test 0-1 "${tracked[@]}" "${perturbed[@]}" "${CONFIRMATION_EPISODES[@]}" --report_only \
      --perturbations nominal "action noise" "action delay" push
    # anticipatory's 50 + 100 episodes as one condition of 150 (tracking_test: init states 0-9)
    for perturbation in nominal action_noise action_delay push; do
      merged="$OUT/chunk_test/$perturbation/${name}_anticipatory"
      parts=()
      for folder in tracking_test confirmation_test; do  # run here, or shipped (with its settings)
        part="$folder/$perturbation/${name}_anticipatory"
        if [ -f "$OUT/$part/results.json" ]; then parts+=("$OUT/$part"); else parts+=("results/feedback_v2/$part"); fi
      done
      [ -d "$merged" ] || "$PYTHON" scripts/merge_conditions.py --output "$merged" "${parts[@]}"
    done
    models=("${tracked[@]}" --chunk_model "$chunk")
    union=(--first_trial 0 --num_trials_per_task 30)
    policies=(--policies chunk_recovery_no_delay "$name anticipatory")
    compare chunk_test 0 "${models[@]}" "${perturbed[@]}" "${union[@]}" "${policies[@]}" \
      --perturbations "action noise" nominal &
    compare chunk_test 1 "${models[@]}" "${perturbed[@]}" "${union[@]}" "${policies[@]}" \
      --perturbations "action delay" push &
    wait_all
    compare chunk_test 0-1 "${models[@]}" "${perturbed[@]}" "${union[@]}" "${policies[@]}" --report_only \
      --perturbations nominal "action noise" "action delay" push
    ;;
  tracking_sweep)  # PLAN item 19(ii): issue 17's sweep on the tracked model and its chunk baseline
    G_from=$(trained fas_recovery_no_delay | cut -d= -f2)
    names=(fas_recovery_no_delay_kappa0_track4_position)
    streaming=(--stream_model "${names[0]}=$OUT/models/${names[0]}")
    delay_trained=$(trained fas_recovery_no_delay_kappa0_obs_delay | cut -d= -f2)
    if [ -n "$delay_trained" ]; then  # tracked as item 17's model is: kappa_t 4 on the position, the same G
      tracked="$OUT/models/fas_recovery_no_delay_kappa0_obs_delay_track4_position"
      [ -f "$tracked/config.json" ] || "$PYTHON" scripts/add_tracking.py --tracking_kappa 4 --state_dims 0 1 2 \
        --output "$tracked" --model "$delay_trained" --matrix_from "$G_from"
      streaming+=("fas_recovery_no_delay_kappa0_obs_delay_track4_position=$tracked")
      names+=(fas_recovery_no_delay_kappa0_obs_delay_track4_position)
    fi
    mapfile -t chunks < <(trained chunk_recovery_no_delay chunk_recovery_no_delay_obs_delay)
    [ ${#chunks[@]} -gt 0 ] || { echo "train chunk_recovery_no_delay first" >&2; exit 1; }
    models=("${streaming[@]}" --chunk_model "${chunks[@]}" --policies "${chunks[@]%%=*}")
    for name in "${names[@]}"; do models+=("$name open loop" "$name anticipatory"); done
    # a long delay lengthens the failing episodes: D = 0 and 8 on one core, 1, 2 and 4 on the other
    compare tracking_sweep 0 "${models[@]}" --perturbations nominal --inference_delays 8 &
    compare tracking_sweep 1 "${models[@]}" --perturbations --inference_delays 1 2 4 &
    wait_all
    # the pairs include each anticipatory against every chunk baseline (the target) and each policy against D = 0
    compare tracking_sweep 0-1 "${models[@]}" --perturbations nominal --inference_delays 0 1 2 4 8 --report_only
    ;;
  braking_test)
    compare braking_test 0-1 --stream_model "$(trained fas_recovery_no_delay)" --perturbations nominal
    ;;
  objective_test)  # the braking test's model without the stabilising term, next to it (PLAN item 12)
    mkdir -p "$OUT/braking_test"
    cp -rn results/feedback_v2/braking_test/nominal "$OUT/braking_test/"  # the braking test's finished episodes
    compare braking_test 0-1 --stream_model "$(trained fas_recovery_no_delay_kappa0)" --perturbations nominal \
      --num_workers 2  # an environment process a core (what is recorded and how fast, never an outcome)
    pairs=()
    for mode in "open loop" synchronous anticipatory; do
      pairs+=(--pair "fas_recovery_no_delay_kappa0 $mode" "fas_recovery_no_delay $mode")
    done
    # shellcheck disable=SC2046  # one word a model
    compare braking_test 0-1 --stream_model $(trained fas_recovery_no_delay fas_recovery_no_delay_kappa0) \
      --perturbations nominal "${pairs[@]}" --report_only
    ;;
  image_test)  # PLAN item 13: the planned actions' error with each frame's own cameras and another episode's
    # shellcheck disable=SC2046  # one word a model
    for pair in shipped_fasvla=results/libero_object/models/fasvla-small-libero-object \
                shipped_chunk=results/libero_object/models/chunk-small-libero-object \
                $(trained fas_recovery_no_delay fas_recovery_no_delay_kappa0 fas_recovery_no_delay_kfb0.5 \
                          fas_recovery_no_delay_kfb1 fas_recovery_no_delay_kfb2); do
      name=${pair%%=*} model=${pair#*=}
      for swap in "" --swap_images; do
        out=$OUT/action_error_$name${swap:+_swapped}.json
        [ -f "$out" ] || "$PYTHON" benchmarks/action_scale.py --model "$model" --dataset "$OUT/demos_unseen/dataset" \
          --unseen_dataset --chunks 6 $swap --output "$out"
      done
    done
    # where open loop closes the gripper, against the expert from the same init states (tasks 0-4, states 0-1)
    demos expert_init01 --demos_per_task 2 --init_states 0-1
    for name in fas_recovery_no_delay fas_recovery_no_delay_kappa0; do
      model=$(trained $name)
      [ -n "$model" ] && [ ! -f "$OUT/grasp_offset_$name.json" ] || continue
      OMP_NUM_THREADS=1 "$PYTHON" eval_libero.py --model "${model#*=}" --feedback_mode open_loop \
        --task_suite_name libero_object --task_ids 0 1 2 3 4 --first_trial 0 --num_trials_per_task 2 \
        --resolution 128 --max_episodes_rendered 0 --output_dir "$OUT/rollouts_$name" > "$OUT/rollouts_$name.log" 2>&1
      "$PYTHON" benchmarks/grasp_offset.py --expert "$OUT/expert_init01/dataset" --rollouts "$OUT/rollouts_$name" \
        --output "$OUT/grasp_offset_$name.json"
    done
    ;;
  sweep)
    model_arguments "fas_stabilised fas_recovery fas_recovery_delay" "chunk chunk_recovery chunk_recovery_delay" \
      "open loop" anticipatory
    compare sweep 0 "${models[@]}" --perturbations nominal --inference_delays 1 2 &
    compare sweep 1 "${models[@]}" --perturbations --inference_delays 4 8 &
    wait_all
    compare sweep 0-1 "${models[@]}" --perturbations nominal --inference_delays 0 1 2 4 8
    ;;
  realtime)  # PLAN item 19(iii): the tracked model (fas_recovery's weights are lost, item 11), nothing else running
    name=fas_recovery_no_delay_kappa0_track4_position
    for lead in 0 1; do
      compare "realtime_lead_$lead" "$lead" --stream_model "$name=$OUT/models/$name" \
        --policies "$name open loop" "$name anticipatory" --perturbations nominal --real_time \
        --state_latency_ms 10 --prefix_lead "$lead" &
    done
    wait_all
    ;;
  *)
    echo "usage: $0 STAGE [ARGUMENTS], the stages listed at the top of this script" >&2
    exit 2
    ;;
esac
