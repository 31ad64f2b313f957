#!/usr/bin/env bash
# One self-contained GPU-machine call of issue 8's TCN fine-tunes: simulate N_SHARDS of new data (master seed SEED)
# with the GPU engine, fine-tune the TCN START on them (tcn_new_data.toml + weight_average.toml), score it and its start
# on the new test shard (the last) with a paired comparison, and leave in $OUT: the new weights in fp16 and the test
# shard (unless TEST_PARTS=0), each in 15-MB parts (the device tool's limit per file), and progress.tgz (logs, scores, paired.json, md5s).
#
# Nothing lives across calls, so a machine lost between two calls loses one call, not the session (device run 30
# lost a run detached across calls three times). Calls on the same machine chain: START is read from /tmp/weights
# (left there by an earlier call) when there, else from $CARRY/START-fp16.pt; NEW is written to /tmp/weights.
# START "scratch": a new TCN trained from scratch (the recipe without tcn_new_data.toml: device run 25's, whose best
# epoch came after 117 s of training), the first link of a new chain; scored alone, no paired comparison.
#
#   bash bench/tcn_fine_tune_call.sh SEED N_SHARDS TIME_S START NEW
#     TIME_S: the whole call's seconds (the simulation gets all but 150 s of it, the fit all but 60 s of what is left)
#     CARRY (default .carry/tcn): START-fp16.pt, and cell1.asc where L5PC_MORPHOLOGY is unset
#     TEST_PARTS=0: the test shard stays on the machine (its md5 and scores come back; 4 files fewer of the device's 8,
#       for a call that runs another job beside this one)
#     SIM_BASE (default configs/neuronio_gpu.toml), FIT_EXTRA (more fit options), SMALL=1: a dry run on a CPU machine:
#     SMALL=1 OUT=/tmp/out SIM_BASE=configs/quick.toml FIT_EXTRA="--config TINY.toml --device cpu" bash bench/tcn_fine_tune_call.sh 7 3 800 tcn-run29 tcn-dry
#   On the GPU machine, about 48 shards (5888 training simulations) fit one 10-minute call: 375 s of simulation.
set -u
[ $# -eq 5 ] || { echo "usage: bash bench/tcn_fine_tune_call.sh SEED N_SHARDS TIME_S START NEW" >&2; exit 2; }
[ -n "${OUT:-}" ] || { echo "error: set OUT, the folder the results are left in" >&2; exit 2; }
SEED=$1; NS=$2; TIME_S=$3; START=$4; NEW=$5
PY="${PYTHON:-python3}"; CARRY="${CARRY:-.carry/tcn}"; K=/tmp/weights
T0=$(date +%s); END=$(( T0 + TIME_S )); R=/tmp/run-$SEED; W=$R/work
mkdir -p "$R/out" "$R/logs" "$R/eval" "$K" "$OUT"
stamp() { echo "[T0+$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( END - $(date +%s) )); }
pack() {
  tar czf "$OUT/progress.tgz" -C "$R" out logs $(cd "$R" && ls eval/*/*.json eval/*/*.txt work/runs/*/metrics.csv \
    work/runs/*/summary.json 2>/dev/null)
  ls -la "$OUT" | tail -n +4
}
trap pack EXIT
export L5PC_MORPHOLOGY="${L5PC_MORPHOLOGY:-$PWD/$CARRY/cell1.asc}" PYTHONUNBUFFERED=1 NEURON_MODULE_OPTIONS=-nogui
TEST=$(printf 'shard_%05d.h5' $(( NS - 1 )))
printf '[dataset]\nseed = %d\nn_shards = %d\n' "$SEED" "$NS" > "$R/out/seed.toml"
printf '[data]\nloader_workers = 8\n' > "$R/workers.toml"   # one fit on 16 cores; must divide [data] streams (8)
TCNCFG="--config configs/neuronio.toml --config configs/recipes/one_session.toml --config configs/recipes/tcn_small_batch.toml"
if [ "$START" = scratch ]; then INIT=""; STARTS=""
else
  mkdir -p "$R/ck/$START"
  if [ -f "$K/$START-fp16.pt" ]; then cp "$K/$START-fp16.pt" "$R/ck/$START/checkpoint_best.pt"
  else cp "$CARRY/$START-fp16.pt" "$R/ck/$START/checkpoint_best.pt" || exit 1; fi
  INIT="--init-from $R/ck/$START"; STARTS="$R/ck/$START"
  TCNCFG="$TCNCFG --config configs/recipes/tcn_new_data.toml"
fi
TCNCFG="$TCNCFG --config configs/recipes/weight_average.toml"

stamp "simulate $NS shards, seed $SEED"
WORK=$W SIM_CONFIG="${SIM_BASE:-configs/neuronio_gpu.toml} $R/out/seed.toml" BUDGET_S=$(( $(left) - 150 )) OUT=$R/out \
  PYTHON="$PY" bench/neuronio_scale.sh setup simulate 2>&1 | grep -vE "it/s|s/it" | tail -n 5
stamp "simulated: $(ls "$W/data" | wc -l) shards"
# neuronio_scale.sh's setup installs the carried wheels into /tmp/site on the bare GPU machine; the fit needs them too
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site:$PWD" PATH="/tmp/site/bin:$PATH"
md5sum "$W/data/$TEST" > "$R/out/test_shard.md5"
[ "${TEST_PARTS:-1}" = 0 ] || split -b 15M "$W/data/$TEST" "$OUT/$TEST.part-"

FIT=$(( $(left) - 60 ))
stamp "fit: at most $FIT s"
timeout --signal=TERM $FIT "$PY" -m pipelines fit --model tcn $TCNCFG --config "$R/workers.toml" --data "$W/data" \
  --out "$W/runs/$NEW" $INIT ${FIT_EXTRA:-} 2>&1 | tr '\r' '\n' \
  | grep -E --line-buffered "^(training|epoch [0-9]+/|error|Traceback)|Error"
stamp "fit ended"

for src in "$W/runs/$NEW" $STARTS; do
  "$PY" -m pipelines evaluate --config configs/neuronio.toml --data "$W/data" --runs "$R/eval" --checkpoint "$src" \
    > "$R/logs/eval-$(basename "$src").log" 2>&1 &
done; wait
grep -h -E "\[whole\]|error" "$R"/logs/eval-*.log | cut -c1-200
[ -n "$STARTS" ] && "$PY" bench/paired_comparison.py --runs "$R/eval" --label "gpu_engine_seed$SEED" --pair "$NEW:$START" \
  --out "$R/out/paired.json" 2>&1 | tail -n 3

# fp16 weights (half the bytes, so two 15-MB parts), the training copy of the weights left out
"$PY" bench/half_precision_checkpoint.py "$W/runs/$NEW" "$K/$NEW-fp16.pt" || exit 1
md5sum "$K/$NEW-fp16.pt" > "$R/out/$NEW.md5" && split -b 15M "$K/$NEW-fp16.pt" "$OUT/$NEW-fp16.pt.part-" || exit 1
stamp "done"
