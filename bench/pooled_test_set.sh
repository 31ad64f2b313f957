#!/usr/bin/env bash
# Issue 8's pooled GPU-engine test set made again from the seeds: the test split (the last shard) of each dataset of
# device runs 23-29, each simulated alone with `simulate --shards -1`, into DIR/seedS/. A shard's content depends on
# the config, the master seed and its index only, so no training data is needed and nothing has to be carried: 768
# simulations of 6 s. The splits are simulated at once, each in its own process: one split of 128 cells leaves the GPU
# mostly idle (on an H100 in device run 42, 76 s a split one after another, 478 s for the six, where the 9472
# simulations of that run's training set took 729 s). Prints the --data arguments that pool them:
#
#   bash bench/pooled_test_set.sh DIR
#   python -m pipelines evaluate --config configs/neuronio.toml --all-shards $(bash bench/pooled_test_set.sh DIR | tail -n 1) \
#       --runs EVAL --checkpoint checkpoints/branch-elm-d100 ...
#
#   SPLITS (default: the six of the figure of record): "SEED:N_SHARDS ..." (the test split is shard N_SHARDS - 1)
#   SIM_CONFIG (default configs/neuronio_gpu.toml, the datasets' config): more configs may follow, space-separated
#   JOBS (default: all the splits): how many splits are simulated at once
#   PYTHON (default python3); the simulate verb's environment (NEURON, dask; on the GPU machine neuronio_scale.sh setup)
set -u
[ $# -eq 1 ] || { echo "usage: bash bench/pooled_test_set.sh DIR" >&2; exit 2; }
DIR=$1; PY="${PYTHON:-python3}"
SPLITS="${SPLITS:-2025:48 2026:80 2027:80 2029:48 2030:48 2031:96}"   # seed 2028's split (run 26) was not pooled
CONFIGS=""; for c in ${SIM_CONFIG:-configs/neuronio_gpu.toml}; do CONFIGS="$CONFIGS --config $c"; done
set -- $SPLITS
JOBS="${JOBS:-$#}"
mkdir -p "$DIR"

simulate_split() {  # SEED N_SHARDS: that dataset's last shard; its log in DIR/seedSEED.log; returns simulate's status
  printf '[dataset]\nseed = %d\nn_shards = %d\n' "$1" "$2" > "$DIR/seed$1.toml"
  "$PY" -m pipelines simulate $CONFIGS --config "$DIR/seed$1.toml" --out "$DIR/seed$1" --shards -1 2>&1 \
    | tr "\r" "\n" | grep -v "%|" > "$DIR/seed$1.log"
  return "${PIPESTATUS[0]}"
}

POOL=""; pids=(); seeds=()
for split in $SPLITS; do
  seed=${split%%:*}
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  simulate_split "$seed" "${split##*:}" & pids+=($!); seeds+=("$seed")
  POOL="$POOL --data $DIR/seed$seed"
done
failed=""
for i in "${!pids[@]}"; do  # the logs on stderr, in order, so that stdout's last line is the pool
  wait "${pids[$i]}"; status=$?
  cat "$DIR/seed${seeds[$i]}.log" >&2
  [ "$status" -eq 0 ] || failed="$failed ${seeds[$i]}"
done
[ -z "$failed" ] || { echo "error: the test split of seed(s)$failed was not simulated (see above)" >&2; exit 1; }
echo "${POOL# }"
