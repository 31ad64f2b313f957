#!/usr/bin/env bash
# NeuronIO-scale surrogate accuracy on one GPU machine (issue 8, deliverable 1), in resumable stages:
#   setup       wheels (if .whl/ is there), the NMODL mechanisms
#   simulate    configs/neuronio_gpu.toml with the GPU engine: 48 shards x 128 x 6 s = 6144 simulations,
#               split by shard into 5888 training, 128 validation and 128 test simulations
#   cvode-test  a separate test set of 64 x 6 s simulated with NEURON's CVode (NeuronIO's solver) on the CPU cores
#   fit-MODEL   train each model of $MODELS with configs/neuronio.toml ([train.<model>] recipes), best epoch by
#               validation AUC; FIT_TIME_S bounds one call, and the next call resumes from the last finished epoch.
#               A model is a kind (elm, branch-elm, tcn, lstm) or KIND-VARIANT with configs/models/KIND-VARIANT.toml
#               laid over the config (branch-elm-d100: the released best ELM). Consecutive fit stages run one after
#               another, or all at once on the one GPU with PARALLEL=1
#   fit-branch-elm-nN  Branch-ELM again on the first N training simulations only ([data] max_train_simulations),
#               for each N of $DATA_SIZES: the data-efficiency curve (deliverable 4)
#   evaluate    every model on both test sets with the published protocol (500-ms windows, 150-ms burn-in, first
#               500 ms skipped, 1-ms bins, soma RMSE raw and aligned), and each published checkpoint folder of
#               $PUBLISHED (elmneuron's, e.g. ../shared/pretrained/elmneuron/num_memory_20) on the same two test sets
#   assemble    bench/results/surrogate_accuracy.json (bench/surrogate_accuracy.py), the ELM-family models
#               without training state in bench/results/checkpoints/<kind>-d<memory>/ (to commit under checkpoints/),
#               and the report of every run (bench/results/report/: report.md, figures, data_efficiency.json/png)
# Every stage skips when its outputs exist, and a stage cut short resumes (simulate: finished shards; fit: finished
# epochs). One call runs for at most BUDGET_S seconds (default 570: the device's 10-minute limit per command) and
# stops after the first stage it could not finish, so the same command is re-run until it prints
# "all stages done" (exit 0; exit 3: run it again).
#
#   bench/neuronio_scale.sh [--dry-run] [STAGE ...]       (default: every stage, in order)
#
# --dry-run (or SMALL=1): the same stages, tiny, on the CPU: the GPU engine's CPU twin (gpu_backend = "cpu"),
# 4 shards x 2 simulations x 1.2 s, a 2-simulation CVode test set, one short epoch of small models; its
# results go to $WORK/surrogate_accuracy.json, not bench/results.
# Environment: WORK (default data/neuronio_scale, or data/neuronio_scale_small; ignored by git), MODELS
# (default "elm branch-elm tcn lstm"), DATA_SIZES (training-set sizes of the data-efficiency fits, default "128 512 2048";
# "" skips them), BUDGET_S (one call's time), FIT_TIME_S (one fit call's, default BUDGET_S), PARALLEL (1: the
# fits side by side on the one GPU, and the evaluations), PUBLISHED (published checkpoint folders to score on the
# same test sets), EPOCHS_<RUN> or EPOCHS_<MODEL> (e.g. EPOCHS_BRANCH_ELM_N128=4, EPOCHS_TCN=20: other epochs than
# the recipe's; bench/training_speed.py --budget-s prints them), INIT_<RUN> (fit --init-from: that run starts from
# those weights, e.g. INIT_BRANCH_ELM_D100=checkpoints/branch-elm-d100), RECIPE (configs laid over CONFIG for fit, in order, space-separated, e.g.
# "configs/recipes/one_session.toml configs/recipes/fine_tune.toml"), CVODE_WORKERS
# (processes of the CVode test set, default one per core: fewer leave cores to a GPU stage running beside it),
# EVALUATE_STOPPED (1: fits stopped at FIT_TIME_S are evaluated and assembled from their best epoch so far, marked
# finished: false, instead of waiting for the next call; for the last call of a session), CONFIG / SIM_CONFIG (the training
# and simulation configs; SIM_CONFIG may list overlays, space-separated, e.g. "configs/neuronio_gpu.toml
# configs/datasets/ten_thousand_simulations.toml" for the 9984 training simulations Branch-ELM d_m 100 needs),
# OUT (default bench/results). Needs python3 with torch (CUDA) and h5py; NEURON and dask
# from .whl/ on the GPU machine (bench/README.md); the morphology in $L5PC_MORPHOLOGY (default .carry/cell1.asc,
# else data/morphology/cell1.asc).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY="${PYTHON:-python3}"
SMALL="${SMALL:-0}"
stages=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) SMALL=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "error: unknown option $arg (expected --dry-run)" >&2; exit 2 ;;
    *) stages+=("$arg") ;;
  esac
done
MODELS="${MODELS:-elm branch-elm tcn lstm}"
if [ "$SMALL" = 1 ]; then DATA_SIZES="${DATA_SIZES-2}"; else DATA_SIZES="${DATA_SIZES-128 512 2048}"; fi
EFFICIENCY_RUNS=""
for n in $DATA_SIZES; do EFFICIENCY_RUNS+=" branch-elm-n$n"; done
all_stages=(setup simulate cvode-test)
for m in $MODELS $EFFICIENCY_RUNS; do all_stages+=("fit-$m"); done
all_stages+=(evaluate assemble)
[ ${#stages[@]} -eq 0 ] && stages=("${all_stages[@]}")
for s in "${stages[@]}"; do
  case " ${all_stages[*]} " in *" $s "*) ;; *) echo "error: unknown stage $s (stages: ${all_stages[*]})" >&2; exit 2 ;; esac
done

if [ "$SMALL" = 1 ]; then
  WORK="${WORK:-data/neuronio_scale_small}"
  OUT="${OUT:-$WORK}"
  BUDGET_S="${BUDGET_S:-1800}"
else
  WORK="${WORK:-data/neuronio_scale}"
  OUT="${OUT:-bench/results}"
  BUDGET_S="${BUDGET_S:-570}"
fi
FIT_TIME_S="${FIT_TIME_S:-$BUDGET_S}"
remaining() { echo $((BUDGET_S - SECONDS)); }  # SECONDS counts from the start of this call
mkdir -p "$WORK" "$OUT"
WORK=$(cd "$WORK" && pwd)
export PYTHONUNBUFFERED=1 NEURON_MODULE_OPTIONS="${NEURON_MODULE_OPTIONS:--nogui}"
if [ -z "${L5PC_MORPHOLOGY:-}" ]; then
  if [ -f .carry/cell1.asc ]; then export L5PC_MORPHOLOGY=$REPO/.carry/cell1.asc; fi
fi

# ---------------------------------------------------------------- configs
if [ "$SMALL" = 1 ]; then
  mkdir -p "$WORK/configs"
  SIM_CONFIG="${SIM_CONFIG:-$WORK/configs/simulate.toml}"
  CVODE_CONFIG="${CVODE_CONFIG:-$WORK/configs/cvode_test.toml}"
  CONFIG="${CONFIG:-$WORK/configs/train.toml}"
  cat > "$WORK/configs/simulate.toml" <<'TOML'
[solver]
method = "gpu"
gpu_backend = "cpu"          # the GPU engine's CPU twin: the same numerics, no GPU
scheme = "crank-nicolson"
dt_ms = 0.025
[inputs]
duration_ms = 1200
[dataset]
n_shards = 4                 # train, train, valid, test
simulations_per_shard = 2
seed = 2021
[parallel]
workers = 1
gpu_batch_size = 4
TOML
  cat > "$WORK/configs/cvode_test.toml" <<'TOML'
[solver]
method = "cvode"
[inputs]
duration_ms = 1200
[dataset]
n_shards = 1
simulations_per_shard = 2
seed = 4242
[parallel]
workers = 1
TOML
  cat > "$WORK/configs/train.toml" <<'TOML'
[data]
valid_shards = 1
test_shards = 1
simulations_per_load = 4
[train]
batch_size = 2
epochs = 1
batches_per_epoch = 2
learning_rate = 0.005
valid_simulations = 2
device = "cpu"
num_threads = 1
[train.tcn]
optimizer = "nadam"
lr_schedule = "step"
lr_steps = [[1, 1.0e-3]]
loss_weight_steps = [[1, 1.0, 2.0]]
[elm]
num_memory = 2
[branch_elm]
num_memory = 2
[tcn]
depth = 2
width = 4
first_kernel_size = 5
kernel_size = 3
[lstm]
hidden_size = 4
[evaluate]
device = "cpu"
TOML
else
  SIM_CONFIG="${SIM_CONFIG:-configs/neuronio_gpu.toml}"
  CVODE_CONFIG="${CVODE_CONFIG:-$WORK/cvode_test.toml}"
  CONFIG="${CONFIG:-configs/neuronio.toml}"
  if [ ! -f "$CVODE_CONFIG" ]; then
    cat > "$CVODE_CONFIG" <<TOML
# 64 x 6 s under CVode (NeuronIO's solver), inputs from another master seed than the training data
[cell]
biophysics = "neuronio"
celsius = 6.3
[solver]
method = "cvode"
[inputs]
duration_ms = 6000
[dataset]
n_shards = 2
simulations_per_shard = 32
seed = 4242
[parallel]
workers = ${CVODE_WORKERS:-0}                  # 0: one per core
TOML
  fi
fi
DATA=$WORK/data
CVODE_DATA=$WORK/cvode_test
RUNS=$WORK/runs
CVODE_RUNS=$WORK/eval_cvode
PUBLISHED_RUNS=$WORK/eval_published
PUBLISHED_CVODE_RUNS=$WORK/eval_published_cvode
PARALLEL="${PARALLEL:-0}"
EVALUATE_STOPPED="${EVALUATE_STOPPED:-0}"

log() { echo "[$(date -u +%H:%M:%S)] $*"; }
progress_filter() { tr '\r' '\n' | grep -E --line-buffered "^(training|resuming|epoch [0-9]+/|[a-z-]+: best|test split|  [a-z-]+ \[|error|.*shards x)" || true; }
dataset_done() {  # all shards of the config (a file, or files layered, space-separated) present in the directory
  [ -d "$2" ] && "$PY" - "$1" "$2" <<'PY'
import sys
from pathlib import Path
from simulation.config import load_simulation_config
config = load_simulation_config(sys.argv[1].split())
sys.exit(0 if len(list(Path(sys.argv[2]).glob("shard_*.h5"))) >= config.dataset.n_shards else 1)
PY
}
fit_done() { [ -f "$RUNS/$1/summary.json" ] && "$PY" -c "import json,sys; sys.exit(0 if json.load(open('$RUNS/$1/summary.json'))['finished'] else 1)"; }
fit_scorable() {  # finished, or stopped with a best epoch when EVALUATE_STOPPED=1
  fit_done "$1" || { [ "$EVALUATE_STOPPED" = 1 ] && [ -f "$RUNS/$1/checkpoint_best.pt" ] && [ -f "$RUNS/$1/summary.json" ]; }
}
unfinished=0

stage_setup() {
  if [ -d .whl ] && ! "$PY" -c "import neuron, dask, distributed" 2>/dev/null; then  # the bare GPU machine
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
  fi
  "$PY" -m pipelines mechanisms | tail -n 1
  if [ "$SMALL" != 1 ]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$WORK/device.txt"
  else
    echo "cpu ($(nproc) cores; dry run)" > "$WORK/device.txt"
  fi
  log "device: $(cat "$WORK/device.txt")"
}
if [ -d /tmp/site ]; then export PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"; fi

simulate_into() {  # simulate CONFIG into DIR within this call's time; finished shards stay for the next call
  local name=$1 config=$2 dir=$3 left code
  if dataset_done "$config" "$dir"; then log "$name: $dir complete, skipped"; return; fi
  left=$(remaining)
  if [ "$left" -lt 60 ]; then log "$name: not started (${left} s left in this call)"; unfinished=1; return; fi
  log "$name: $config -> $dir (this call: at most ${left} s)"
  local start=$SECONDS
  set +e
  local layers=() layer
  for layer in $config; do layers+=(--config "$layer"); done  # SIM_CONFIG may be a base and overlays
  timeout --signal=TERM "$left" "$PY" -m pipelines simulate "${layers[@]}" --out "$dir" 2>&1 | progress_filter
  code=${PIPESTATUS[0]}
  set -e
  echo "$name $((SECONDS - start))" >> "$WORK/simulate_wall_s.txt"
  if dataset_done "$config" "$dir"; then return; fi
  if [ "$code" = 124 ]; then log "$name: stopped at the time limit; the next call continues"; unfinished=1; return; fi
  echo "error: $name failed (exit $code)" >&2; exit 1
}
stage_simulate() { simulate_into simulate "$SIM_CONFIG" "$DATA"; }
stage_cvode_test() { simulate_into cvode-test "$CVODE_CONFIG" "$CVODE_DATA"; }

model_of() {  # the model kind (elm, branch-elm, tcn, lstm) of a model of $MODELS: KIND-VARIANT has a config file
  if [ -f "configs/models/$1.toml" ]; then echo "${1%-*}"; else echo "$1"; fi
}

fit_run() {  # train one run of $MODELS or $EFFICIENCY_RUNS; returns 0 (finished), 3 (stopped at the time limit) or 1
  local run=$1 base=$1 sized="" extra=() recipe
  if [[ "$run" =~ ^(.+)-n([0-9]+)$ ]]; then  # MODEL-nN: MODEL on the first N training simulations
    base=${BASH_REMATCH[1]}
    sized="$WORK/configs/train_n${BASH_REMATCH[2]}.toml"
    mkdir -p "$WORK/configs"
    printf '[data]\nmax_train_simulations = %s\n' "${BASH_REMATCH[2]}" > "$sized"
  fi
  local model
  model=$(model_of "$base")
  # KIND-VARIANT (e.g. branch-elm-d100): the model table of configs/models/KIND-VARIANT.toml over CONFIG
  if [ "$base" != "$model" ]; then extra+=(--config "configs/models/$base.toml"); fi
  for recipe in ${RECIPE:-}; do extra+=(--config "$recipe"); done
  if [ -n "$sized" ]; then extra+=(--config "$sized"); fi
  # EPOCHS_<RUN> (e.g. EPOCHS_BRANCH_ELM_N128, EPOCHS_BRANCH_ELM_D100), else EPOCHS_<MODEL>: other epochs than the recipe's
  local name var epochs=()
  for name in "$run" "$base" "$model"; do
    var="EPOCHS_$(echo "$name" | tr 'a-z-' 'A-Z_')"
    if [ -n "${!var:-}" ]; then epochs=(--epochs "${!var}"); break; fi
  done
  # INIT_<RUN> (e.g. INIT_BRANCH_ELM_D100=checkpoints/branch-elm-d100; that run only, not its -nN runs): a new run
  # starts from those weights (fit --init-from: training a released model further in a later session)
  local init=()
  var="INIT_$(echo "$run" | tr 'a-z-' 'A-Z_')"
  if [ -n "${!var:-}" ]; then init=(--init-from "${!var}"); fi
  local limit left code
  left=$(remaining)
  limit=$(( FIT_TIME_S < left ? FIT_TIME_S : left ))
  if [ "$limit" -lt 60 ]; then log "fit-$run: not started (${left} s left in this call)"; return 3; fi
  log "fit-$run: --model $model --config $CONFIG ${extra[*]} ${epochs[*]} ${init[*]} (this call: at most ${limit} s)"
  set +e
  timeout --signal=TERM "$limit" "$PY" -m pipelines fit --model "$model" --config "$CONFIG" "${extra[@]}" \
    --data "$DATA" --out "$RUNS/$run" "${epochs[@]}" "${init[@]}" 2>&1 | progress_filter | sed -u "s/^/[$run] /"
  code=${PIPESTATUS[0]}
  set -e
  if fit_done "$run"; then return 0; fi
  if [ "$code" = 124 ]; then
    log "fit-$run: stopped after ${limit} s; the next call continues from the last finished epoch"
    return 3
  fi
  echo "error: fit-$run failed (exit $code)" >&2
  return 1
}

stopped() {  # a fit stopped at its time limit: the next call resumes it, or (EVALUATE_STOPPED=1) it is scored as it is
  if fit_scorable "$1"; then log "fit-$1: stopped; scored from its best epoch so far (EVALUATE_STOPPED=1)"; else unfinished=1; fi
}

stage_fits() {  # the fit stages given, one after another, or all at once on the one GPU with PARALLEL=1
  local run pending=() pids=() code failed=0
  for run in "$@"; do
    if fit_done "$run"; then log "fit-$run: finished, skipped"; else pending+=("$run"); fi
  done
  [ ${#pending[@]} -eq 0 ] && return
  if [ "$PARALLEL" = 1 ] && [ ${#pending[@]} -gt 1 ]; then
    log "fits side by side: ${pending[*]}"
    for run in "${pending[@]}"; do fit_run "$run" & pids+=($!); done
    for i in "${!pids[@]}"; do
      set +e; wait "${pids[$i]}"; code=$?; set -e
      if [ "$code" = 3 ]; then stopped "${pending[$i]}"; elif [ "$code" != 0 ]; then failed=1; fi
    done
  else
    for run in "${pending[@]}"; do
      code=0; fit_run "$run" || code=$?  # (not set +e: fit_run turns errexit back on before it returns)
      if [ "$code" = 3 ]; then stopped "$run"; [ "$unfinished" = 1 ] && return; elif [ "$code" != 0 ]; then exit 1; fi
    done
  fi
  if [ "$failed" = 1 ]; then exit 1; fi
}

evaluate_on_both() {  # SOURCE (a run directory or a published folder) on both test sets, as DIR/<its name>/:
  # the GPU-engine test split into GPU_DIR, the CVode test set into CVODE_DIR; skipped where an evaluation
  # exists and is newer than STAMP (a run's summary.json; "" for published weights, which never change)
  local source=$1 gpu_dir=$2 cvode_dir=$3 stamp=$4 name
  name=$(basename "$source")
  stale() { [ ! -f "$1/evaluation.json" ] || { [ -n "$stamp" ] && [ "$1/evaluation.json" -ot "$stamp" ]; }; }
  if stale "$gpu_dir/$name"; then
    log "evaluate: $name on the GPU-engine test split"
    "$PY" -m pipelines evaluate --config "$CONFIG" --data "$DATA" --runs "$gpu_dir" --checkpoint "$source" \
      2>&1 | progress_filter
  fi
  if stale "$cvode_dir/$name"; then
    log "evaluate: $name on the CVode test set"
    "$PY" -m pipelines evaluate --config "$CONFIG" --data "$CVODE_DATA" --all-shards --runs "$cvode_dir" \
      --checkpoint "$source" 2>&1 | progress_filter
  fi
}

stage_evaluate() {  # every finished run, and each folder of $PUBLISHED; side by side with PARALLEL=1
  local model folder pids=()
  for model in $MODELS $EFFICIENCY_RUNS; do
    if ! fit_scorable "$model"; then log "evaluate: $model not trained to the end yet, skipped"; unfinished=1; continue; fi
    local args=("$RUNS/$model" "$RUNS" "$CVODE_RUNS" "$RUNS/$model/summary.json")
    if [ "$PARALLEL" = 1 ]; then evaluate_on_both "${args[@]}" & pids+=($!); else evaluate_on_both "${args[@]}"; fi
  done
  for folder in ${PUBLISHED:-}; do
    local args=("$folder" "$PUBLISHED_RUNS" "$PUBLISHED_CVODE_RUNS" "")
    if [ "$PARALLEL" = 1 ]; then evaluate_on_both "${args[@]}" & pids+=($!); else evaluate_on_both "${args[@]}"; fi
  done
  for pid in "${pids[@]}"; do wait "$pid" || { echo "error: an evaluation failed" >&2; exit 1; }; done
}

stage_assemble() {
  if [ "$unfinished" = 1 ]; then log "assemble: waiting for the stages above"; return; fi
  local published=()
  if [ -n "${PUBLISHED:-}" ]; then published=(--published "$PUBLISHED_RUNS" --published-cvode "$PUBLISHED_CVODE_RUNS"); fi
  "$PY" bench/surrogate_accuracy.py --runs "$RUNS" --data "$DATA" --cvode-runs "$CVODE_RUNS" \
    --cvode-data "$CVODE_DATA" --device "$(cat "$WORK/device.txt" 2>/dev/null || echo unknown)" \
    --out "$OUT/surrogate_accuracy.json" --release "$OUT/checkpoints" "${published[@]}"
  log "assemble: the report of every run -> $OUT/report"
  "$PY" -m pipelines report --runs "$RUNS" --data "$DATA" --out "$OUT/report" 2>&1 | tail -n 2
}

fits=()  # consecutive fit stages, run together (stage_fits)
for s in "${stages[@]}" end; do
  if [[ "$s" == fit-* ]]; then fits+=("${s#fit-}"); continue; fi
  if [ ${#fits[@]} -gt 0 ]; then
    stage_fits "${fits[@]}"; fits=()
    if [ "$unfinished" = 1 ]; then log "not finished: run the same command again"; exit 3; fi
  fi
  case "$s" in
    setup) stage_setup ;;
    simulate) stage_simulate ;;
    cvode-test) stage_cvode_test ;;
    evaluate) stage_evaluate ;;
    assemble) stage_assemble ;;
  esac
  if [ "$unfinished" = 1 ]; then log "not finished: run the same command again"; exit 3; fi
done
if [ "$unfinished" = 1 ]; then log "not finished: run the same command again"; exit 3; fi
log "all stages done"
