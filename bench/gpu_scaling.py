"""Data generation on 1, 2, 4, 8 GPUs of one machine: simulated seconds per wall second, efficiency.

    python bench/gpu_scaling.py [--simulations 8192] [--duration-ms 1000] [--batch 1024]
                                [--out bench/results/gpu_scaling.json]

The same dataset (configs/neuronio_gpu.toml's solver, SIMULATIONS x DURATION in shards of
BATCH) is made by the real pipeline (simulation.parallel.generate_dataset) on a local cluster
of one dask worker per GPU, for every GPU count up to what the machine has. Each cluster first
makes a small warm-up dataset (the workers build the cell and compile the kernel), then the
timed one. parallel_efficiency(N) = throughput(N) / (N x throughput(1)); the shards of every N
are checked equal to those of 1 GPU. `--backend cpu` runs the same script with CPU-twin
workers (a dry run where there is no GPU; counts then mean workers).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from common.jsonio import write_json  # noqa: E402
from simulation.config import DatasetConfig, InputConfig, ParallelConfig, load_simulation_config  # noqa: E402


def make_config(base, simulations: int, duration_ms: int, batch: int, backend: str, seed: int):
    return dataclasses.replace(
        base,
        solver=dataclasses.replace(base.solver, gpu_backend=backend),
        inputs=InputConfig(duration_ms=duration_ms),
        dataset=DatasetConfig(n_shards=max(1, simulations // batch), simulations_per_shard=min(batch, simulations), seed=seed),
        parallel=ParallelConfig(gpu_batch_size=min(batch, simulations), retries=1),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=8192)
    parser.add_argument("--duration-ms", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--backend", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "configs" / "neuronio_gpu.toml")
    parser.add_argument("--morphology", default=None)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "gpu_scaling.json")
    args = parser.parse_args(argv)

    from simulation.cluster import close_client, make_client, visible_gpus
    from simulation.dataset import read_shard
    from simulation.parallel import generate_dataset
    from simulation.paths import resolve_morphology

    morphology = resolve_morphology(args.morphology)
    devices = visible_gpus() if args.backend == "cuda" else [""] * max(args.counts)
    counts = [n for n in args.counts if n <= len(devices)]
    if not counts:
        raise SystemExit("no GPU visible")
    base = load_simulation_config(args.config)
    config = make_config(base, args.simulations, args.duration_ms, args.batch, args.backend, seed=97)
    warm_up = make_config(base, len(devices), 20, 1, args.backend, seed=98)
    simulated_s = config.dataset.n_shards * config.dataset.simulations_per_shard * args.duration_ms / 1000
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"gpus": len(devices), "backend": args.backend, "cpu_cores": os.cpu_count(),
                          "platform": platform.platform()},
              "workload": {"simulations": config.dataset.n_shards * config.dataset.simulations_per_shard,
                           "duration_ms": args.duration_ms, "gpu_batch_size": config.parallel.gpu_batch_size,
                           "solver": dataclasses.asdict(config.solver)},
              "runs": {}}
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            client = make_client(gpu_devices=devices[:n], retries=1)
            try:
                generate_dataset(warm_up, Path(tmp) / f"warm_{n}", morphology, client)
                started = time.perf_counter()
                paths = generate_dataset(config, Path(tmp) / f"data_{n}", morphology, client)
                wall = time.perf_counter() - started
            finally:
                close_client(client)
            soma = np.concatenate([read_shard(p, inputs=False).soma_voltage for p in paths])
            same = None if reference is None else bool(np.array_equal(soma, reference))
            reference = soma if reference is None else reference
            result["runs"][str(n)] = {"gpus": n, "wall_s": wall, "sim_seconds_per_wall_second": simulated_s / wall,
                                      "same_data_as_1_gpu": same}
            print(f"{n} GPU(s): {simulated_s:.0f} simulated s in {wall:.1f} s = {simulated_s / wall:.1f} sim-s/s"
                  + ("" if same is None else f", same data as 1 GPU: {same}"), flush=True)
    one = result["runs"][str(counts[0])]["sim_seconds_per_wall_second"] / counts[0]
    result["parallel_efficiency"] = {k: v["sim_seconds_per_wall_second"] / (v["gpus"] * one) for k, v in result["runs"].items()}
    result["target"] = "parallel efficiency >= 0.90 at every GPU count measured"
    write_json(args.out, result)
    print("parallel efficiency: " + ", ".join(f"{k} GPU(s) {v:.1%}" for k, v in result["parallel_efficiency"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
