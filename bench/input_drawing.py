"""How fast this machine's cores draw NeuronIO input rasters, as the GPU worker draws them.

    python bench/input_drawing.py [--threads 1 2 16] [--rasters 64] [--smoothing held fft] [--repeats 2] [--out FILE]

Each task is what simulation/gpu/worker.py's draw threads do for one simulation: the doubly
stochastic raster of 1278 x 6000 ms (simulation.inputs.generate_input_spikes, seeded as in a
dataset), its event list for the engine and its bit-packed copy for the shard. Threads share one
process, as in the worker (numpy's generators, FFTs and matrix products release the GIL). A warm-up round
of one raster per thread is not timed. `--smoothing` times each way of computing the rate smoothing
(simulation.inputs.SMOOTHINGS: "held", the default, sums the window over the held pieces; "fft", the spec's
convolution of the expanded rates, the code before it), and `--repeats` alternates all settings that many
times, so that a ratio comes from one run on a noisy host; the rasters are the same bits either way
(tests/test_inputs.py). Prints a table and writes bench/results/input_drawing.json: this host's rows
(`--host`, by default its name, CPU model and cores) replace its earlier ones, other hosts' rows and the
file's other entries stay.
With MALLOC_TRIM_THRESHOLD_=65536 in the environment it draws as a dask worker with dask's default
settings would (simulation/cluster.py starts GPU workers without it). Its matrix products run on one BLAS
thread each, as in every dask worker (dask sets OPENBLAS_NUM_THREADS=1 and the like), unless the environment
says otherwise.
The GPU integrates about 21 cells of 6 s per second on an H200 (docs/gpu_engine.md), so drawing
keeps up when it makes at least that many rasters per second beside the engine.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads its BLAS
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

from common.jsonio import update_json_rows  # noqa: E402
from common.machine import available_cores, cpu_model  # noqa: E402
from simulation.config import load_simulation_config  # noqa: E402
from simulation.gpu.engine import EventList  # noqa: E402
from simulation.inputs import SMOOTHINGS, generate_input_spikes, simulation_rng  # noqa: E402

N_SEGMENTS, N_BASAL = 639, 262  # the L5PC's segment table: 262 basal, then 377 apical (README, "Cell")


def measure(threads: int, rasters: int, config, smoothing: str) -> dict:
    # segment lengths drawn once (the cell's own need NEURON; the cost does not depend on them)
    length_um = np.random.default_rng(0).uniform(5.0, 40.0, N_SEGMENTS)
    is_basal = np.arange(N_SEGMENTS) < N_BASAL

    def draw(i):
        raster = generate_input_spikes(config.inputs, length_um, is_basal, simulation_rng(config.dataset.seed, i),
                                       smoothing)
        return EventList.from_raster(raster), np.packbits(raster, axis=-1)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(draw, range(threads)))
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        list(pool.map(draw, range(threads, threads + rasters)))
        seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return {"threads": threads, "rasters": rasters, "seconds": round(seconds, 3),
            "rasters_per_s": round(rasters / seconds, 2),
            "user_cpu_s": round(after.ru_utime - before.ru_utime, 2),
            "system_cpu_s": round(after.ru_stime - before.ru_stime, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and all cores)")
    parser.add_argument("--rasters", type=int, default=64, help="rasters timed per thread count")
    parser.add_argument("--smoothing", nargs="+", choices=SMOOTHINGS, default=[SMOOTHINGS[0]],
                        help="ways of computing the rate smoothing to time (default: the code's)")
    parser.add_argument("--repeats", type=int, default=1, help="times every setting is timed, alternately")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "neuronio_gpu.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "input_drawing.json")
    parser.add_argument("--host", default=None,
                        help="what to call this machine in the results (default: host name, CPU model and cores)")
    args = parser.parse_args(argv)
    if min([args.rasters, args.repeats, *(args.threads or [1])]) < 1:
        print("error: --threads, --rasters and --repeats must be positive", file=sys.stderr)
        return 2
    config = load_simulation_config(args.config)
    threads = args.threads or sorted({1, available_cores()})
    rows = []
    host = {"host": args.host or f"{platform.node()}: {cpu_model()}, {available_cores()} cores",
            "cores": available_cores()}
    print(f"{'threads':>8} {'smoothing':>10} {'repeat':>6} {'rasters/s':>10} {'user s':>8} {'system s':>9}")
    for repeat in range(1, args.repeats + 1):
        for smoothing in args.smoothing:
            for count in threads:
                row = {**measure(count, args.rasters, config, smoothing), "smoothing": smoothing, "repeat": repeat,
                       **host}
                rows.append(row)
                print(f"{count:8d} {smoothing:>10} {repeat:6d} {row['rasters_per_s']:10.2f} {row['user_cpu_s']:8.1f} "
                      f"{row['system_cpu_s']:9.1f}")
    # this host's rows replace its earlier ones; other hosts' rows and the file's other entries stay
    update_json_rows(args.out, "rows", rows, key=lambda row: row.get("host"), benchmark="input_drawing",
                     config=str(args.config), duration_ms=config.inputs.duration_ms)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
