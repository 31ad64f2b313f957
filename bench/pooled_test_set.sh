#!/usr/bin/env bash
# Issue 8's pooled GPU-engine test set made again from the seeds: the test split (the last shard) of each dataset of
# device runs 23-29, each simulated alone with `simulate --shards -1`, into DIR/seedS/. A shard's content depends on
# the config, the master seed and its index only, so no training data is needed and nothing has to be carried: 768
# simulations of 6 s, about a minute of the GPU engine on one H200. Prints the --data arguments that pool them:
#
#   bash bench/pooled_test_set.sh DIR
#   python -m pipelines evaluate --config configs/neuronio.toml --all-shards $(bash bench/pooled_test_set.sh DIR | tail -n 1) \
#       --runs EVAL --checkpoint checkpoints/branch-elm-d100 ...
#
#   SPLITS (default: the six of the figure of record): "SEED:N_SHARDS ..." (the test split is shard N_SHARDS - 1)
#   SIM_CONFIG (default configs/neuronio_gpu.toml, the datasets' config): more configs may follow, space-separated
#   PYTHON (default python3); the simulate verb's environment (NEURON, dask; on the GPU machine neuronio_scale.sh setup)
set -u
[ $# -eq 1 ] || { echo "usage: bash bench/pooled_test_set.sh DIR" >&2; exit 2; }
DIR=$1; PY="${PYTHON:-python3}"
SPLITS="${SPLITS:-2025:48 2026:80 2027:80 2029:48 2030:48 2031:96}"   # seed 2028's split (run 26) was not pooled
CONFIGS=""; for c in ${SIM_CONFIG:-configs/neuronio_gpu.toml}; do CONFIGS="$CONFIGS --config $c"; done
mkdir -p "$DIR"
POOL=""
for split in $SPLITS; do
  seed=${split%%:*}; n=${split##*:}
  printf '[dataset]\nseed = %d\nn_shards = %d\n' "$seed" "$n" > "$DIR/seed$seed.toml"
  # >&2: progress and summaries on stderr, so that stdout's last line is the pool
  "$PY" -m pipelines simulate $CONFIGS --config "$DIR/seed$seed.toml" --out "$DIR/seed$seed" --shards -1 2>&1 \
    | tr "\r" "\n" | grep -v "%|" >&2
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "error: the test split of seed $seed was not simulated (see above)" >&2; exit 1; }
  POOL="$POOL --data $DIR/seed$seed"
done
echo "${POOL# }"
