#!/usr/bin/env bash
# Issue 8's pooled GPU-engine test set made again from the seeds: the test split (the last shard) of each dataset of
# device runs 23-29, simulated with `simulate --shards -1`, into DIR/seedS/. A shard's content depends on the config,
# the master seed and its index only, so no training data is needed and nothing has to be carried: 768 simulations of
# 6 s. The splits are simulated in one run (`simulate --dataset OVERLAY DIR`, once per split), so that on the GPU they
# share one batch of 768 cells: a batch's time grows slowly with its cells, and one split of 128 leaves the GPU mostly
# idle. On an H100: 103 s for the six in one batch, where one after another took 478 s (device run 42) and six
# processes at once 445 s (device run 43: the GPU runs one process's kernels at a time); bench/results/
# pooled_test_set.json. Prints the --data arguments that pool them:
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

POOL=""; DATASETS=""
for split in $SPLITS; do
  seed=${split%%:*}
  printf '[dataset]\nseed = %d\nn_shards = %d\n' "$seed" "${split##*:}" > "$DIR/seed$seed.toml"
  DATASETS="$DATASETS --dataset $DIR/seed$seed.toml $DIR/seed$seed"
  POOL="$POOL --data $DIR/seed$seed"
done
# the log on stderr (without the progress bar), so that stdout's last line is the pool
"$PY" -m pipelines simulate $CONFIGS $DATASETS --shards -1 2>&1 | tr "\r" "\n" | grep -v "%|" >&2
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || { echo "error: the pooled test set was not simulated (simulate exited with $status, see above)" >&2; exit 1; }
echo "${POOL# }"
