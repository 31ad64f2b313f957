#!/usr/bin/env bash
# One self-contained GPU-machine call of a long-horizon run chained over calls (issue 10): continue one fit-task run
# of bench/long_horizon.py for at most TIME_S seconds, score its best epoch on the test split, and leave in $OUT the
# run directory (run.tgz: checkpoints, metrics, summary), the results row (rows.json) and the log's tail.
#
# A run on the paper's schedule (Pathfinder-32: 300 epochs) outlasts a 10-minute call, and a machine can be lost
# between two calls (device run 30 lost three), so every call sends back what the next one resumes from. The next
# call resumes from $CHAIN (on the same machine) or, on a fresh machine, from the carried run.tgz of the last call.
#
#   bash bench/task_chain_call.sh TASK MODEL LABEL EPOCHS TIME_S [--extra-config F ...]
#     EPOCHS: the whole run's schedule (the cosine decay is fixed by it, so every call of a chain passes the same)
#     DATA (default .carry/tasks): prepared task data, DATA/TASK/{train,valid,test}.h5 (prepare-task, carried)
#     PREPARE: where DATA lacks the task, draw it on the machine into $CHAIN/data first (seeded: every machine draws the
#       same data), with prepare-task --config PREPARE ("default": the task's defaults); for data too large to carry
#     RUN_TGZ (default .carry/chain/LABEL.tgz): the run directory the last call sent back (absent: a fresh run)
#     CHAIN (default /tmp/chain): where the run lives on the machine; PYTHON (default python3); DEVICE: fit-task --device
#     MAX_TIME_S (default: what is left of TIME_S less 60 s): the fit's --max-time-s, the rest for the test split and packing
#   e.g. bash bench/task_chain_call.sh pathfinder32 elm dm128_dropout 130 575 \
#          --extra-config configs/tasks/dm128.toml --extra-config configs/tasks/input_dropout.toml
set -u
[ $# -ge 5 ] || { echo "usage: bash bench/task_chain_call.sh TASK MODEL LABEL EPOCHS TIME_S [--extra-config F ...]" >&2; exit 2; }
[ -n "${OUT:-}" ] || { echo "error: set OUT, the folder the results are left in" >&2; exit 2; }
TASK=$1; MODEL=$2; LABEL=$3; EPOCHS=$4; TIME_S=$5; shift 5
PY="${PYTHON:-python3}"; DATA="${DATA:-.carry/tasks}"; CHAIN="${CHAIN:-/tmp/chain}"
RUN_TGZ="${RUN_TGZ:-.carry/chain/$LABEL.tgz}"; RUN="$CHAIN/runs/$LABEL/$TASK/$MODEL"
T0=$(date +%s); END=$(( T0 + TIME_S ))
stamp() { echo "[T0+$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( END - $(date +%s) )); }
if [ ! -f "$DATA/$TASK/test.h5" ] && [ -z "${PREPARE:-}" ]; then
  echo "error: no prepared $TASK data in $DATA/$TASK (run prepare-task and carry it, or set PREPARE)" >&2; exit 2
fi
mkdir -p "$CHAIN" "$OUT"
pack() {
  [ -d "$RUN" ] && tar czf "$OUT/run.tgz" -C "$CHAIN" "runs/$LABEL"
  [ -f "$CHAIN/rows-$LABEL.json" ] && cp "$CHAIN/rows-$LABEL.json" "$OUT/rows.json"
  [ -f "$CHAIN/log-$LABEL.txt" ] && tail -c 200000 "$CHAIN/log-$LABEL.txt" > "$OUT/log.txt"
  ls -la "$OUT" | tail -n +4
}
trap pack EXIT

if [ -f "$RUN/checkpoint_last.pt" ]; then stamp "resume from this machine's $RUN"
elif [ -f "$RUN_TGZ" ]; then tar xzf "$RUN_TGZ" -C "$CHAIN" || exit 1; stamp "resume from the carried $RUN_TGZ"
else stamp "a fresh run"; fi

export PYTHONUNBUFFERED=1
if [ ! -f "$DATA/$TASK/test.h5" ]; then
  DATA="$CHAIN/data"; [ "$PREPARE" = default ] && PREP_ARGS="" || PREP_ARGS="--config $PREPARE"
  case $TASK in shd-adding) ;; *) PREP_ARGS="$PREP_ARGS --workers $(nproc)";; esac   # the same data for any count
  stamp "draw the $TASK data on this machine"
  "$PY" -m pipelines prepare-task --task "$TASK" --data-dir "$DATA" $PREP_ARGS 2>&1 | tr '\r' '\n' \
    | grep -v "%|" | tail -n 2
  [ -f "$DATA/$TASK/test.h5" ] || { echo "error: prepare-task did not finish the $TASK data" >&2; exit 1; }
fi
timeout --signal=TERM $(( $(left) - 10 )) "$PY" bench/long_horizon.py --task "$TASK" --models "$MODEL" --label "$LABEL" \
  --data-dir "$DATA" --runs "$CHAIN/runs" --epochs "$EPOCHS" --max-time-s "${MAX_TIME_S:-$(( $(left) - 60 ))}" \
  --out "$CHAIN/rows-$LABEL.json" ${DEVICE:+--device "$DEVICE"} "$@" 2>&1 | tr '\r' '\n' \
  | grep -v -E "it/s\]|s/it\]" >> "$CHAIN/log-$LABEL.txt"
code=${PIPESTATUS[0]}
grep -E "^(epoch|error)|Error|test accuracy" "$CHAIN/log-$LABEL.txt" | tail -n 8 | cut -c1-200
stamp "long_horizon.py exit code $code"
exit "$code"
