"""How long writing one shard takes: the input raster deflated by HDF5's filter, one chunk after
another, against simulation.dataset's threads (zlib releases the GIL), on this machine's cores.

    python bench/shard_writing.py [--simulations 128] [--duration-ms 6000] [--level 4] [--repeats 3]

The GPU engine delivers thousands of simulations at once, and the client then writes their
shards one after the other, so writing sits on the pipeline's critical path (gpu_simulation.json,
pipeline_end_to_end). Random rasters at NeuronIO's input density; the best of --repeats.
Prints a table and writes bench/results/shard_writing.json.
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from common.jsonio import write_json  # noqa: E402
from common.machine import available_cores  # noqa: E402
from simulation.dataset import N_INPUT_ROWS, _write_deflated_rows  # noqa: E402

DENSITY = 0.011  # input spikes per row and ms in NeuronIO-like rasters (data/quick: about 1%)


def hdf5_filter(raster: np.ndarray, level: int) -> float:
    started = time.perf_counter()
    with h5py.File(io.BytesIO(), "w") as f:
        f.create_dataset("input_spikes", data=raster, chunks=(1,) + raster.shape[1:], compression="gzip",
                         compression_opts=level, shuffle=True)
    return time.perf_counter() - started


def threads(raster: np.ndarray, level: int) -> float:
    started = time.perf_counter()
    with h5py.File(io.BytesIO(), "w") as f:
        dataset = f.create_dataset("input_spikes", shape=raster.shape, dtype=bool, chunks=(1,) + raster.shape[1:],
                                   compression="gzip", compression_opts=level, shuffle=True)
        _write_deflated_rows(dataset, raster, level)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=128)
    parser.add_argument("--duration-ms", type=int, default=6000)
    parser.add_argument("--level", type=int, default=4, help="gzip level ([dataset] compression_level)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shard_writing.json")
    args = parser.parse_args(argv)

    raster = np.random.default_rng(0).random((args.simulations, N_INPUT_ROWS, args.duration_ms)) < DENSITY
    times = {"hdf5_filter": [], "threads": []}
    for _ in range(args.repeats):  # alternated, so that a noisy neighbour hits both
        times["hdf5_filter"].append(hdf5_filter(raster, args.level))
        times["threads"].append(threads(raster, args.level))
    best = {name: min(values) for name, values in times.items()}
    cores = available_cores()
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cores": cores},
        "shard": {"simulations": args.simulations, "duration_ms": args.duration_ms, "raster_bytes": int(raster.nbytes),
                  "gzip_level": args.level, "density": DENSITY},
        "seconds": times, "best_s": best, "speedup": best["hdf5_filter"] / best["threads"],
    }
    print(f"one shard of {args.simulations} x {args.duration_ms} ms ({raster.nbytes / 1e9:.2f} GB raster), gzip {args.level}, "
          f"{cores} cores")
    print(f"{'writer':<14}{'best s':>8}{'GB/s':>8}")
    for name, seconds in best.items():
        print(f"{name:<14}{seconds:>8.2f}{raster.nbytes / seconds / 1e9:>8.2f}")
    print(f"threads: {result['speedup']:.2f}x the HDF5 filter")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
