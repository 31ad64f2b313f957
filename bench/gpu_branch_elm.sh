#!/usr/bin/env bash
# Issue 4, item 5, on the GPU machine (16 cores + one H100), in one call:
#   1. simulate configs/gpu_branch_elm.toml (128 x 6 s) with one dask worker per core;
#   2. train Branch-ELM d_m = 20 on the GPU (fused recurrence), best checkpoint on validation AUC;
#   3. evaluate it on the test shard;
#   4. write bench/results/gpu_branch_elm.json: simulation throughput, time to the best validation AUC, test scores.
# Needs: python with torch + triton; NEURON/dask wheels in .whl/ (see bench/README.md); the morphology in
# $L5PC_MORPHOLOGY (default .carry/cell1.asc); OUT (results folder, default bench/results).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
WORK="${WORK:-/tmp/gpu_branch_elm}"
CONFIG=configs/gpu_branch_elm.toml
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
fi
export L5PC_MORPHOLOGY="${L5PC_MORPHOLOGY:-$PWD/.carry/cell1.asc}" PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$WORK/gpu.txt"

start=$SECONDS
python3 -m pipelines simulate --config $CONFIG --out "$WORK/data" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tail -n 5
simulate_s=$((SECONDS - start))

start=$SECONDS
python3 -m pipelines fit --model branch-elm --config $CONFIG --data "$WORK/data" --out "$WORK/runs/branch-elm" 2>&1 \
  | tr '\r' '\n' | grep -E "^(training|epoch [0-9]+/|finished|error)" || true
fit_s=$((SECONDS - start))

python3 -m pipelines evaluate --config $CONFIG --data "$WORK/data" --runs "$WORK/runs" --models branch-elm 2>&1 | tail -n 3
python3 -m pipelines inspect "$WORK/data" --no-inputs --json > "$WORK/inspect.json"

python3 - "$WORK" "$OUT" "$simulate_s" "$fit_s" <<'PY'
import json, os, platform, sys
work, out, simulate_s, fit_s = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
run = os.path.join(work, "runs", "branch-elm")
summary = json.load(open(os.path.join(run, "summary.json")))
history = json.load(open(os.path.join(run, "metrics.json")))
history = history["history"] if isinstance(history, dict) else history
evaluation = json.load(open(os.path.join(run, "evaluation.json")))
dataset = json.load(open(os.path.join(work, "inspect.json")))
best = max(history, key=lambda row: row["valid_auc"] if row["valid_auc"] is not None else -1)
simulated_s = dataset["simulations"] * dataset["duration_ms"] / 1000
result = {
    "machine": {"gpu": open(os.path.join(work, "gpu.txt")).read().strip(), "cpu_cores": os.cpu_count(),
                "python": platform.python_version()},
    "dataset": {"simulations": dataset["simulations"], "duration_ms": dataset["duration_ms"],
                "simulate_wall_s": simulate_s, "simulated_seconds_per_wall_second": simulated_s / simulate_s,
                "output_rate_hz": dataset.get("output_rate_hz_mean")},
    "model": {"kind": "branch-elm", "num_parameters": summary["num_parameters"],
              "config": summary.get("model_config")},
    "training": {"device": summary.get("device"), "epochs": len(history), "fit_wall_s": fit_s,
                 "training_time_s": summary["training_time_s"], "best_epoch": best["epoch"],
                 "best_valid_auc": best["valid_auc"], "time_to_best_valid_auc_s": best["elapsed_s"],
                 "windows_per_s": [row.get("windows_per_s") for row in history], "history": history},
    "test": {k: evaluation[k] for k in ("windowed", "whole") if k in evaluation},
}
for path in (os.path.join(out, "gpu_branch_elm.json"),):
    json.dump(result, open(path, "w"), indent=1, default=str)
t = result["training"]
print(f"simulated {dataset['simulations']} x {dataset['duration_ms']} ms in {simulate_s:.0f} s on {os.cpu_count()} cores; "
      f"Branch-ELM ({summary['num_parameters']} params) best valid AUC {t['best_valid_auc']:.4f} at epoch {t['best_epoch']} "
      f"after {t['time_to_best_valid_auc_s']:.0f} s of training ({t['training_time_s']:.0f} s in all)")
print("test:", json.dumps(result["test"].get("windowed", {}).get("spike", {})), json.dumps(result["test"].get("windowed", {}).get("soma", {})))
PY
