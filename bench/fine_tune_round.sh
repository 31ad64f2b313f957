#!/usr/bin/env bash
# One round of a fine-tune ladder (issue 10, device run 38: Pathfinder-32 from 64.49 % to 70.75 % in three rounds): a
# new run of bench/task_chain_call.sh that starts from the best weights of the last round (fit-task --init-from) on a
# cosine schedule of its own, so every round restarts the learning rate.
#
#   bash bench/fine_tune_round.sh TASK MODEL SOURCE LABEL EPOCHS TIME_S [--extra-config F ...]
#     SOURCE: the last round's label. Its run is read from $LADDER/SOURCE/runs/SOURCE/TASK/MODEL, where the round that
#       made it ran on this machine, or where this script unpacks SOURCE_TGZ (default .carry/chain/SOURCE.tgz, the
#       run.tgz that round sent back) on a fresh machine: the same absolute path on every machine, so that a round
#       resumed on a fresh machine finds the source it recorded.
#     LADDER (default /tmp/ladder): the round runs in $LADDER/LABEL (task_chain_call.sh's CHAIN) and, like any chained
#       run, resumes from there or from .carry/chain/LABEL.tgz (RUN_TGZ). OUT and the rest as task_chain_call.sh.
#   e.g. OUT=$OUT/ft4_dihedral bash bench/fine_tune_round.sh pathfinder32 elm ft3_dihedral ft4_dihedral 30 540 \
#          --extra-config configs/tasks/dm128.toml --extra-config configs/tasks/fine_tune.toml \
#          --extra-config configs/tasks/dihedral.toml
set -u
[ $# -ge 6 ] || { echo "usage: bash bench/fine_tune_round.sh TASK MODEL SOURCE LABEL EPOCHS TIME_S [--extra-config F ...]" >&2; exit 2; }
[ -n "${OUT:-}" ] || { echo "error: set OUT, the folder the results are left in" >&2; exit 2; }
TASK=$1; MODEL=$2; SOURCE=$3; LABEL=$4; shift 4
LADDER="${LADDER:-/tmp/ladder}"; SOURCE_TGZ="${SOURCE_TGZ:-.carry/chain/$SOURCE.tgz}"
SOURCE_RUN="$LADDER/$SOURCE/runs/$SOURCE/$TASK/$MODEL"
if [ ! -f "$SOURCE_RUN/checkpoint_best.pt" ]; then
  [ -f "$SOURCE_TGZ" ] || { echo "error: no run $SOURCE on this machine ($SOURCE_RUN) and no $SOURCE_TGZ to unpack" >&2; exit 2; }
  mkdir -p "$LADDER/$SOURCE" && tar xzf "$SOURCE_TGZ" -C "$LADDER/$SOURCE" || exit 1
  [ -f "$SOURCE_RUN/checkpoint_best.pt" ] || { echo "error: $SOURCE_TGZ holds no run runs/$SOURCE/$TASK/$MODEL" >&2; exit 2; }
fi
CHAIN="$LADDER/$LABEL" exec bash "$(dirname "$0")/task_chain_call.sh" "$TASK" "$MODEL" "$LABEL" "$@" --init-from "$SOURCE_RUN"
