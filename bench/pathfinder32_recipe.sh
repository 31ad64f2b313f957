#!/usr/bin/env bash
# The Pathfinder-32 recipe of device run 38 (test 70.75 %, the paper's ELM 71.15 %) from scratch, as far as one call
# of TIME_S seconds gets; the same command on the same machine (or a fresh one, with the run.tgz files it sent back
# carried to .carry/chain/) goes on where it stopped:
#   1. `recipe_dropout`: the ELM at d_m 128 with input dropout 0.1 on a 130-epoch cosine from the paper's 2e-4
#      (bench/task_chain_call.sh; about 22 minutes of an H200, so chained over three calls);
#   2. rounds `recipe_round1`, `recipe_round2`, ... (ROUND_EPOCHS, default "40 30 30"): each a new run from the last
#      stage's best weights, without dropout, every training image in a random one of its 8 rotations / reflections,
#      on a fresh cosine from 1e-4 (bench/fine_tune_round.sh; 5-6 minutes each alone on an H100).
#
#   bash bench/pathfinder32_recipe.sh TIME_S
#     BASE_EPOCHS (default 130), ROUND_EPOCHS (default "40 30 30"); LADDER (default /tmp/ladder) where the stages run;
#     CARRY (default .carry/chain): where a fresh machine finds the run.tgz of stages run before, as <label>.tgz;
#     EXTRA: one more --extra-config for every stage (e.g. a CPU overlay); OUT, DATA, PREPARE, PYTHON, DEVICE as
#     task_chain_call.sh. Each stage leaves run.tgz, rows.json and log.txt in $OUT/<label>/.
set -u
[ $# -eq 1 ] || { echo "usage: bash bench/pathfinder32_recipe.sh TIME_S" >&2; exit 2; }
[ -n "${OUT:-}" ] || { echo "error: set OUT, the folder the results are left in" >&2; exit 2; }
HERE=$(dirname "$0"); TIME_S=$1; END=$(( $(date +%s) + TIME_S )); ALL_OUT=$OUT
export LADDER="${LADDER:-/tmp/ladder}"; CARRY="${CARRY:-.carry/chain}"
COMMON=(--extra-config configs/tasks/dm128.toml)
EXTRA_ARGS=(); [ -n "${EXTRA:-}" ] && EXTRA_ARGS=(--extra-config "$EXTRA")

finished() {  # has stage $1 a summary.json saying it finished (on this machine or in its carried run.tgz)?
  local summary="$LADDER/$1/runs/$1/pathfinder32/elm/summary.json"
  if [ ! -f "$summary" ] && [ -f "$CARRY/$1.tgz" ]; then
    mkdir -p "$LADDER/$1" && tar xzf "$CARRY/$1.tgz" -C "$LADDER/$1" || return 1
  fi
  [ -f "$summary" ] && "${PYTHON:-python3}" -c "import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))['finished'] else 1)" "$summary"
}
left() { echo $(( END - $(date +%s) )); }
enough_time() { [ "$(left)" -gt 90 ] || { echo "== $1 next: too little time left in this call; run the same command again"; exit 0; }; }

stage=recipe_dropout
if ! finished $stage; then
  enough_time $stage
  echo "== $stage: ${BASE_EPOCHS:-130} epochs, $(left) s left in this call"
  OUT="$ALL_OUT/$stage" CHAIN="$LADDER/$stage" RUN_TGZ="$CARRY/$stage.tgz" bash "$HERE/task_chain_call.sh" \
    pathfinder32 elm $stage "${BASE_EPOCHS:-130}" "$(left)" "${COMMON[@]}" --extra-config configs/tasks/input_dropout.toml \
    "${EXTRA_ARGS[@]}" || exit $?
  finished $stage || { echo "== $stage not finished: run the same command again to go on"; exit 0; }
fi
source=$stage; round=0
for epochs in ${ROUND_EPOCHS:-40 30 30}; do
  round=$(( round + 1 )); stage=recipe_round${round}
  if ! finished $stage; then
    enough_time $stage
    echo "== $stage from $source: $epochs epochs, $(left) s left in this call"
    OUT="$ALL_OUT/$stage" RUN_TGZ="$CARRY/$stage.tgz" SOURCE_TGZ="$CARRY/$source.tgz" bash "$HERE/fine_tune_round.sh" \
      pathfinder32 elm $source $stage "$epochs" "$(left)" "${COMMON[@]}" --extra-config configs/tasks/fine_tune.toml \
      --extra-config configs/tasks/dihedral.toml "${EXTRA_ARGS[@]}" || exit $?
    finished $stage || { echo "== $stage not finished: run the same command again to go on"; exit 0; }
  fi
  source=$stage
done
echo "== all stages done: $stage is the recipe's result (its rows.json in $ALL_OUT/$stage, or its summary.json)"
