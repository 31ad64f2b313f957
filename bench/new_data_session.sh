#!/usr/bin/env bash
# Issue 8: one device session that trains a released surrogate further on a new GPU-engine dataset and scores it
# against its start and the published checkpoints on the pooled held-out test set (the figure of record) and on the
# new dataset's own test split. A call may run 10 minutes and a session holds about 28, so the run is started
# detached in the first call and watched by the next ones, each the very next step after the last (the machine goes
# back after 30 s idle, and the run with it: device run 20). What must come back is small (evaluations, paired
# comparisons, the new checkpoints: $OUT/out.tgz); the data stay on the machine and are made again from their seeds.
#
#   bash bench/new_data_session.sh start WATCH_S TOTAL_S   # call 1: start the run (all done TOTAL_S from now), watch
#   bash bench/new_data_session.sh watch WATCH_S           # calls 2, 3: watch; once the run is done, pack $OUT/out.tgz
#
# The run, each stage bounded by the deadline:
#   1. setup (the carried wheels, the mechanisms) and simulate N_SHARDS shards of master seed SEED (SIM_CONFIG); if
#      the time runs short, fewer: the fits split the shards there (train..., valid, test = the last present);
#      out/shard_written_s.txt says when each shard was written, seconds after the start;
#   2. the six test splits of the pooled figure of record (bench/pooled_test_set.sh: one simulate run, one GPU batch),
#      before the fits (or beside them);
#   3. one fit of START per ARMS entry LABEL:EPOCHS[:OVERLAY], side by side (fit --init-from, the FIT_CONFIGS recipe,
#      then the arm's own config overlay if it names one); START "scratch": new models, trained from their first step;
#   4. evaluate every fit, START, COMPARE and the PUBLISHED folders on the pool and on the new test split, and pair
#      each fit with START and with the first PUBLISHED folder (bench/paired_comparison.py); then the report of every
#      model on the pool (`pipelines report`, out/pooled_report: tables, ROC and traces);
#   5. a fit whose best checkpoint is over SHIP_BYTES (the TCN's: 148 MB with its optimiser state, past the device
#      tool's 16 MB a file) comes back in float16 (bench/half_precision_checkpoint.py, 18.5 MB for the TCN) in 15-MB
#      parts beside out.tgz, $OUT/LABEL-fp16.pt.part-*, its md5 in out/LABEL-fp16.md5:
#      `cat LABEL-fp16.pt.part-* > LABEL-fp16.pt`;
#   6. with NEXT_SEED, a second link of the chain in the same run: steps 1, 3, 4 and 5 again under $R/next (the same
#      layout, so record_new_data_session.py --session .../next records it), on NEXT_SHARDS shards of NEXT_SEED, for
#      the NEXT_ARMS fits from the arm of step 3 with the best validation AUC, scored on the same pool and paired
#      with that arm. The TCN gains from about 2000 batches of a new dataset and over-fits it after (device runs 43,
#      44), so a session's time is better spent on two datasets than on one.
#
#   OUT (required); SEED (2032), N_SHARDS (96), START (checkpoints/branch-elm-d100), MODEL (branch-elm),
#   ARMS (run 29's 12-epoch cycle on all the new data, and on its first 5888 simulations: which of the two set apart
#   runs 27 and 28, which gained nothing, from run 29, which gained), FIT_CONFIGS (the d_m 100 fine-tune of device
#   run 29), COMPARE (checkpoints/branch-elm-d20), PUBLISHED (.carry/published/published-best-elm-d100
#   .carry/published/published-branch-elm-d20: elmneuron folders, copied from ../shared, never committed),
#   RESERVE_S (600: what the simulation leaves for the rest), EVAL_RESERVE_S (200: what the fits leave),
#   WORKERS (4: loader workers per fit; must divide [data] streams), SIM_CONFIG (configs/neuronio_gpu.toml),
#   SHIP_BYTES (12000000), FIT_EXTRA (more fit options, every arm), POOL_FIRST (1: the pool is simulated before the
#   fits start; 0: beside them. Beside the TCN's fit on an H100 the fit's epochs took 36 s instead of 24 (device run
#   41), and in device run 43 the fit, loading 12032 simulations beside six pool processes, had not trained a step
#   after 240 s), MIN_FIT_S (240: what the pool first leaves the fits at least; in device run 42 the pool, then
#   simulated one split after another, took 478 s and would have left the fit none),
#   SPLITS (pooled_test_set.sh's), EVAL_CONFIGS (configs/neuronio.toml), R (/tmp/new_data_session), PYTHON (python3),
#   NEXT_SEED (none: one link), NEXT_SHARDS (48), NEXT_ARMS (next-link:4), NEXT_RESERVE_S (240: what the second
#   link's simulation leaves for its fits and scores; RESERVE_S then covers the first link's rest and all of the
#   second link), REPORT (1: after the first link's scores, `pipelines report` on the pool's evaluations into
#   out/pooled_report, at most 180 s, with the published per-d_m table when eval_results.csv lies beside the
#   PUBLISHED folders, and the fits' training curves; 0: none).
#   A dry run on a CPU: tests/test_new_data_session.py.
set -u
PY="${PYTHON:-python3}"; R="${R:-/tmp/new_data_session}"
SEED="${SEED:-2032}"; N_SHARDS="${N_SHARDS:-96}"; MODEL="${MODEL:-branch-elm}"
START="${START:-checkpoints/branch-elm-d100}"; COMPARE="${COMPARE-checkpoints/branch-elm-d20}"
ARMS="${ARMS:-branch-elm-d100-new:12 branch-elm-d100-new-n5888:12:configs/train_subsets/first_5888.toml}"
FIT_CONFIGS="${FIT_CONFIGS:-configs/neuronio.toml configs/models/branch-elm-d100.toml configs/recipes/one_session.toml
  configs/recipes/fine_tune_new_data.toml configs/recipes/weight_average.toml}"
PUBLISHED="${PUBLISHED-.carry/published/published-best-elm-d100 .carry/published/published-branch-elm-d20}"
EVAL_CONFIGS="${EVAL_CONFIGS:-configs/neuronio.toml}"
RESERVE_S="${RESERVE_S:-600}"; EVAL_RESERVE_S="${EVAL_RESERVE_S:-200}"; WORKERS="${WORKERS:-4}"
SHIP_BYTES="${SHIP_BYTES:-12000000}"; POOL_FIRST="${POOL_FIRST:-1}"; MIN_FIT_S="${MIN_FIT_S:-240}"
NEXT_SEED="${NEXT_SEED:-}"; NEXT_SHARDS="${NEXT_SHARDS:-48}"; NEXT_ARMS="${NEXT_ARMS:-next-link:4}"
NEXT_RESERVE_S="${NEXT_RESERVE_S:-240}"; REPORT="${REPORT:-1}"
W=$R/work

usage() { echo "usage: bash bench/new_data_session.sh start WATCH_S TOTAL_S | watch WATCH_S" >&2; exit 2; }
stamp() { echo "[T0+$(( $(date +%s) - $(cat "$R/t0") )) s] $*"; }
left() { echo $(( $(cat "$R/deadline") - $(date +%s) )); }
configs() { local c; for c in $1; do printf -- '--config %s ' "$c"; done; }

small_checkpoints() {  # the fits' best checkpoints of at most SHIP_BYTES, relative to $R (both links)
  local f
  for f in "$R"/runs/*/checkpoint_best.pt "$R"/next/runs/*/checkpoint_best.pt; do
    [ -f "$f" ] && [ "$(stat -c %s "$f")" -le "$SHIP_BYTES" ] && echo "${f#"$R"/}"
  done
}

pack() {  # what comes back: small files, and the large checkpoints in float16 parts (next/: the second link's)
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT"
  local f
  tar czf "$OUT/out.tgz" -C "$R" out logs $(small_checkpoints) $(cd "$R" && ls -d {,next/}runs/*/metrics.csv \
    {,next/}runs/*/summary.json {,next/}eval_*/*/evaluation.json next/out next/logs 2>/dev/null)
  for f in "$R"/ship/*-fp16.pt "$R"/next/ship/*-fp16.pt; do
    [ -f "$f" ] && rm -f "$OUT/$(basename "$f").part-"* && split -b 15M "$f" "$OUT/$(basename "$f").part-"
  done
  ls -la "$OUT" | tail -n +4
}

watch() {  # until the run is done or WATCH_S have passed; the log's new lines as they come
  local until=$(( $(date +%s) + $1 )) shown=0 n
  while :; do
    n=$(wc -l < "$R/logs/run.log")
    [ "$n" -gt "$shown" ] && sed -n "$((shown + 1)),${n}p" "$R/logs/run.log"; shown=$n
    if [ -f "$R/done" ]; then pack; return 0; fi
    if [ "$(date +%s)" -ge "$until" ]; then
      echo "(watching stopped; the run goes on: call watch again at once)"; pack; return 0
    fi
    sleep 5
  done
}

run() {
  exec > "$R/logs/run.log" 2>&1
  trap 'stamp "run ended"; touch "$R/done"' EXIT
  link
  if [ -n "$NEXT_SEED" ]; then next_link; fi
}

best_arm() {  # the arm of this link with the best validation AUC (the test sets play no part in the choice)
  "$PY" - "$R/runs" $ARMS <<'PY'
import json, sys
from pathlib import Path
scores = {}
for label in (arm.split(":")[0] for arm in sys.argv[2:]):
    summary = Path(sys.argv[1]) / label / "summary.json"
    auc = json.loads(summary.read_text()).get("best_valid_auc") if summary.is_file() else None
    if auc is not None:
        scores[label] = auc
if not scores:
    sys.exit(1)
print(max(scores, key=scores.get))
PY
}

next_link() {  # a second link in the same run: NEXT_ARMS from this link's best arm, on NEXT_SEED's data, the same pool
  local best pool start next=$R/next
  best=$(best_arm) || { stamp "no next link: no arm of this link finished an epoch"; return 0; }
  pool=$(tail -n 1 "$R/out/pool.txt" 2>/dev/null)
  [ -n "$pool" ] || { stamp "no next link: no pooled test set"; return 0; }
  # a link needs one GPU batch of new data (about 150 s with its inputs drawn: device run 44's last call) and its rest
  [ "$(left)" -gt $(( NEXT_RESERVE_S + 150 )) ] || { stamp "no next link: only $(left) s left"; return 0; }
  start=$R/runs/$best
  stamp "next link: seed $NEXT_SEED from $best (the best validation AUC of this link's arms), into $next"
  mkdir -p "$next/logs" && cp "$R/t0" "$R/deadline" "$next/"
  R=$next SEED=$NEXT_SEED N_SHARDS=$NEXT_SHARDS START=$start ARMS=$NEXT_ARMS COMPARE="" RESERVE_S=$NEXT_RESERVE_S \
    POOL=$pool NEXT_SEED="" bash "$0" link
}

link() {  # one link: simulate SEED, fit every arm from START, ship, evaluate, pair
  local sim_s fit_s arm label epochs overlay test pool src pairs=() first_published="" table_dir="" init="--init-from $START"
  [ "$START" = scratch ] && init=""
  mkdir -p "$R/out" "$R/runs" "$R/split"
  # the carried morphology (never committed) where none is set: the simulate verb of every stage needs it
  [ -z "${L5PC_MORPHOLOGY:-}" ] && [ -f .carry/cell1.asc ] && export L5PC_MORPHOLOGY=$PWD/.carry/cell1.asc
  printf '[dataset]\nseed = %d\nn_shards = %d\n' "$SEED" "$N_SHARDS" > "$R/out/seed.toml"
  printf '[data]\nloader_workers = %d\n' "$WORKERS" > "$R/out/workers.toml"
  sim_s=$(( $(left) - RESERVE_S ))
  stamp "setup, then simulate $N_SHARDS shards of seed $SEED (at most $sim_s s)"
  WORK=$W SIM_CONFIG="${SIM_CONFIG:-configs/neuronio_gpu.toml} $R/out/seed.toml" BUDGET_S=$sim_s OUT=$R/out \
    PYTHON="$PY" bash bench/neuronio_scale.sh setup simulate 2>&1 | grep -vE "it/s|s/it" | tail -n 6
  # neuronio_scale.sh installed the carried wheels into /tmp/site on the bare GPU machine; the rest needs them too
  [ -d /tmp/site ] && export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
  ls "$W/data"/shard_*.h5 > "$R/out/shards.txt" 2>/dev/null
  # when each shard was written (seconds after T0): the GPU batches' pace, to plan the next session's time by
  local t0; t0=$(cat "$R/t0")
  while read -r f; do echo "$(basename "$f") $(( $(stat -c %Y "$f") - t0 ))"; done < "$R/out/shards.txt" \
    > "$R/out/shard_written_s.txt"
  [ "$(wc -l < "$R/out/shards.txt")" -ge 3 ] || { stamp "error: fewer than 3 shards simulated"; exit 1; }
  test=$(tail -n 1 "$R/out/shards.txt"); ln -sf "$test" "$R/split/"; md5sum "$test" > "$R/out/test_shard.md5"
  stamp "simulated $(wc -l < "$R/out/shards.txt") shards; test split $(basename "$test")"

  local pool_pid="" pool_status=""
  if [ -n "${POOL:-}" ]; then  # a later link scores on the pool its first link made
    echo "$POOL" > "$R/out/pool.txt"; pool_status=0
  else
    SIM_CONFIG="${SIM_CONFIG:-configs/neuronio_gpu.toml}" PYTHON="$PY" bash bench/pooled_test_set.sh "$R/pool" \
      > "$R/out/pool.txt" 2> "$R/logs/pool.log" &
    pool_pid=$!
  fi
  # the pool first, but never into the fits' MIN_FIT_S: past that it goes on beside them
  if [ "$POOL_FIRST" = 1 ] && [ -n "$pool_pid" ]; then
    stamp "the pooled test set first"
    while kill -0 "$pool_pid" 2>/dev/null && [ "$(left)" -gt $(( EVAL_RESERVE_S + MIN_FIT_S )) ]; do sleep 2; done
    if kill -0 "$pool_pid" 2>/dev/null; then stamp "the pooled test set goes on beside the fits"
    else wait "$pool_pid"; pool_status=$?; fi
  fi
  fit_s=$(( $(left) - EVAL_RESERVE_S ))
  stamp "fits from $START, side by side: $ARMS (at most $fit_s s)"
  for arm in $ARMS; do
    label=${arm%%:*}; epochs=${arm#*:}; overlay=""
    [ "${epochs#*:}" != "$epochs" ] && overlay="--config ${epochs#*:}" && epochs=${epochs%%:*}
    PYTHONUNBUFFERED=1 timeout --signal=TERM "$fit_s" "$PY" -m pipelines fit --model "$MODEL" $(configs "$FIT_CONFIGS") $overlay \
      --config "$R/out/workers.toml" --epochs "$epochs" $init --data "$W/data" --out "$R/runs/$label" \
      ${FIT_EXTRA:-} > "$R/logs/fit-$label.log" 2>&1 &
  done
  wait $(jobs -p | grep -vx "$pool_pid")
  for arm in $ARMS; do
    label=${arm%%:*}
    tr '\r' '\n' < "$R/logs/fit-$label.log" | grep -E "^(training|epoch [0-9]+/|error)|Error" | tail -n 4 \
      | sed "s/^/[$label] /"
  done
  mkdir -p "$R/ship"
  for arm in $ARMS; do  # before the evaluations: weights that come back even if the time runs out there
    label=${arm%%:*}; src="$R/runs/$label/checkpoint_best.pt"
    [ -f "$src" ] && [ "$(stat -c %s "$src")" -gt "$SHIP_BYTES" ] || continue
    "$PY" bench/half_precision_checkpoint.py "$src" "$R/ship/$label-fp16.pt" \
      && (cd "$R/ship" && md5sum "$label-fp16.pt") > "$R/out/$label-fp16.md5"
  done
  [ -n "$pool_status" ] || { wait "$pool_pid"; pool_status=$?; }
  [ "$pool_status" = 0 ] || { stamp "error: the pooled test set was not made (logs/pool.log)"; tail -n 3 "$R/logs/pool.log"; }
  pool=$(tail -n 1 "$R/out/pool.txt" 2>/dev/null)
  stamp "evaluate (pool: ${pool:-none})"

  local sources=()
  for arm in $ARMS; do [ -f "$R/runs/${arm%%:*}/checkpoint_best.pt" ] && sources+=("$R/runs/${arm%%:*}"); done
  [ -n "$init" ] && sources+=("$START")
  sources+=($COMPARE $PUBLISHED)
  for which in split pool; do
    local data_args="--data $R/split"; [ $which = pool ] && data_args=$pool
    [ -n "$data_args" ] || continue
    for src in "${sources[@]}"; do
      "$PY" -m pipelines evaluate $(configs "$EVAL_CONFIGS") --all-shards $data_args --runs "$R/eval_$which" \
        --checkpoint "$src" > "$R/logs/eval-$which-$(basename "$src").log" 2>&1 &
    done
    wait
    grep -h -E "\[windowed\]|error" "$R"/logs/eval-$which-*.log | cut -c1-160 | sed "s/^/[$which] /"
  done
  # the first PUBLISHED folder: the fits' anchor in the pairs; its parent may hold the published per-d_m table
  for p in $PUBLISHED; do first_published=$(basename "$p"); table_dir=$(dirname "$p"); break; done
  for arm in $ARMS; do
    label=${arm%%:*}
    [ -f "$R/runs/$label/checkpoint_best.pt" ] || continue
    [ -n "$init" ] && pairs+=(--pair "$label:$(basename "$START")")
    [ -n "$first_published" ] && pairs+=(--pair "$label:$first_published")
  done
  [ -n "$init" ] && [ -n "$first_published" ] && pairs+=(--pair "$(basename "$START"):$first_published")
  # the test sets' record names (bench/record_new_data_session.py): the new split by its seed, the pool by its splits
  local -A labels=([split]="gpu_engine_seed$SEED" [pool]="gpu_engine_pooled$(( $(wc -w <<< "$pool") / 2 ))")
  for which in split pool; do
    [ -d "$R/eval_$which" ] && [ ${#pairs[@]} -gt 0 ] || continue
    "$PY" bench/paired_comparison.py --runs "$R/eval_$which" --label "${labels[$which]}" "${pairs[@]}" \
      --out "$R/out/paired_$which.json" 2>&1 | tail -n $(( ${#pairs[@]} / 2 + 2 ))
  done
  # the report of every model on the pool this link made (tables, ROC, traces: docs/results/pooled), last, since
  # the pairs matter more; the traces' raster comes from the pool's first split, the published per-d_m table from
  # eval_results.csv beside the PUBLISHED folders (carried with them), the training curves from each fit's
  # metrics.csv, copied beside its scores
  local report_s=$(( $(left) - 10 )); [ "$report_s" -gt 180 ] && report_s=180
  if [ "$REPORT" = 1 ] && [ -z "${POOL:-}" ] && [ -d "$R/eval_pool" ] && [ "$report_s" -gt 0 ]; then
    for arm in $ARMS; do
      label=${arm%%:*}
      [ -f "$R/runs/$label/metrics.csv" ] && [ -d "$R/eval_pool/$label" ] \
        && cp "$R/runs/$label/metrics.csv" "$R/eval_pool/$label/"
    done
    timeout "$report_s" "$PY" -m pipelines report --runs "$R/eval_pool" --data "$(awk '{print $2}' <<< "$pool")" \
      ${table_dir:+--published "$table_dir"} --out "$R/out/pooled_report" > "$R/logs/report.log" 2>&1 \
      && stamp "pooled report: out/pooled_report/report.md" || stamp "no pooled report (logs/report.log)"
  fi
}

case "${1:-}" in
  start)
    [ $# -eq 3 ] || usage
    [ -n "${OUT:-}" ] || { echo "error: set OUT, the folder the results are left in" >&2; exit 2; }
    if [ -f "$R/t0" ]; then echo "error: a run was started on this machine already ($R/t0): call watch" >&2; exit 2; fi
    mkdir -p "$R/logs"; date +%s > "$R/t0"; echo $(( $(cat "$R/t0") + $3 )) > "$R/deadline"; : > "$R/logs/run.log"
    setsid nohup bash "$0" run < /dev/null > /dev/null 2>&1 &
    watch "$2" ;;
  watch)
    [ $# -eq 2 ] || usage
    # a fresh machine (the last one went back) answers at once instead of watching nothing
    [ -f "$R/t0" ] || { echo "error: no run on this machine ($R/t0 missing): the machine was replaced" >&2; exit 1; }
    watch "$2" ;;
  run) run ;;
  link) link ;;
  *) usage ;;
esac
