"""Every CPU solver setting against CVode (NeuronIO's setting), on many spikes, with its speed.

    python bench/solver_fidelity.py --reference DIR [--simulations 32] [--workers N]
                                    [--out bench/results/solver_fidelity.json]

DIR is a CVode dataset (configs/fidelity.toml). Its first N simulations are simulated again,
from the same input spikes, under every setting of SETTINGS (NEURON's fixed step and
CoreNEURON, backward Euler and Crank-Nicolson, several dt), each simulation in a worker
process of a pool, timed in CPU seconds of the integration alone. simulation.fidelity gives
the figures against CVode (soma RMSE per simulation, spike shifts, missed and extra spikes,
rate and ISI statistics) and whether each setting meets the targets; the table shows speed
at fidelity: simulated seconds per core-second beside the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from common.jsonio import write_json  # noqa: E402
from simulation.config import InputConfig, RecordingConfig, SimulationConfig, SolverConfig  # noqa: E402
from simulation.fidelity import TARGETS, compare, meets_targets  # noqa: E402

SETTINGS = {
    "fixed_be_0.025": SolverConfig(method="fixed", dt_ms=0.025),
    "fixed_cn_0.025": SolverConfig(method="fixed", dt_ms=0.025, scheme="crank-nicolson"),
    "coreneuron_be_0.05": SolverConfig(method="coreneuron", dt_ms=0.05),
    "coreneuron_be_0.025": SolverConfig(method="coreneuron", dt_ms=0.025),
    "coreneuron_cn_0.025": SolverConfig(method="coreneuron", dt_ms=0.025, scheme="crank-nicolson"),
    "coreneuron_cn_0.05": SolverConfig(method="coreneuron", dt_ms=0.05, scheme="crank-nicolson"),
    # CVode at a 10x tighter tolerance: how far NeuronIO's own setting is from a more exact solution
    "cvode_atol_1e-4": SolverConfig(method="cvode", cvode_atol=1e-4),
    # the GPU engine (on a machine without a GPU: its CPU twin, the same source compiled by g++,
    # checked against the CUDA kernel by tests/test_gpu_engine_cuda.py)
    "gpu_be_0.025_float64": SolverConfig(method="gpu", dt_ms=0.025),
    "gpu_cn_0.025_float64": SolverConfig(method="gpu", dt_ms=0.025, scheme="crank-nicolson"),
    "gpu_cn_0.025_float32": SolverConfig(method="gpu", dt_ms=0.025, scheme="crank-nicolson", gpu_precision="float32"),
    "gpu_cn_0.0125_float64": SolverConfig(method="gpu", dt_ms=0.0125, scheme="crank-nicolson"),
    "gpu_cn_0.0125_float32": SolverConfig(method="gpu", dt_ms=0.0125, scheme="crank-nicolson", gpu_precision="float32"),
    # configs/neuronio_gpu.toml's setting (fast math on CUDA; on the CPU twin the same as exact)
    "gpu_cn_0.0125_float32_fast": SolverConfig(method="gpu", dt_ms=0.0125, scheme="crank-nicolson",
                                               gpu_precision="float32", gpu_math="fast"),
    "gpu_cn_0.01_float32": SolverConfig(method="gpu", dt_ms=0.01, scheme="crank-nicolson", gpu_precision="float32"),
    "gpu_cn_0.00625_float32": SolverConfig(method="gpu", dt_ms=0.00625, scheme="crank-nicolson", gpu_precision="float32"),
}
CPU_DEFAULT_SETTINGS = [name for name in SETTINGS if not name.startswith(("gpu", "cvode"))]


def _simulate(args):
    solver_dict, morphology, packed, duration_ms = args
    from simulation.run import get_simulator

    config = SimulationConfig(solver=SolverConfig(**solver_dict), inputs=InputConfig(duration_ms=duration_ms))
    simulator = get_simulator(config, morphology)
    raster = np.unpackbits(packed, axis=-1, count=duration_ms).astype(bool)
    started = time.process_time()
    result = simulator.run(raster)
    return time.process_time() - started, result.soma_voltage, result.output_spike_times


def gpu_runs(solver: SolverConfig, morphology: str, packed, duration_ms: int, threads: int):
    """The GPU engine on every raster: on CUDA if CuPy sees a GPU, else on its CPU twin."""
    from simulation.gpu.engine import EventList, GPUEngine
    from simulation.gpu.export import export_cell
    from simulation.run import get_simulator

    try:
        import cupy
        backend = "cuda" if cupy.is_available() else "cpu"
    except ImportError:
        backend = "cpu"
    simulator = get_simulator(SimulationConfig(inputs=InputConfig(duration_ms=duration_ms)), morphology)
    engine = GPUEngine(export_cell(simulator), solver, RecordingConfig(), backend=backend, cpu_threads=threads)
    events = [EventList.from_raster(np.unpackbits(p, axis=-1, count=duration_ms).astype(bool)) for p in packed]
    results = engine.run(events)
    seconds = engine.last_run_seconds * (threads if backend == "cpu" else 1) / len(events)
    return [(seconds, r.soma_voltage, r.output_spike_times) for r in results], f"gpu engine on {backend}"


def load_reference(directory: Path, n: int):
    from simulation.dataset import read_shard

    packed, soma, spikes = [], [], []
    for path in sorted(directory.glob("shard_*.h5")):
        shard = read_shard(path)
        if shard.attrs["config"]["solver"]["method"] != "cvode":
            raise SystemExit(f"{path}: the reference must be simulated with cvode")
        for k in range(shard.n_simulations):
            packed.append(np.packbits(shard.input_spikes[k], axis=-1))
            soma.append(shard.soma_voltage[k])
            spikes.append(np.asarray(shard.output_spike_times[k]))
            if len(soma) == n:
                return packed, soma, spikes, shard.duration_ms
    raise SystemExit(f"{directory} holds only {len(soma)} simulations, {n} asked for")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--simulations", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--settings", nargs="*", default=CPU_DEFAULT_SETTINGS, choices=list(SETTINGS))
    parser.add_argument("--morphology", default=None)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "solver_fidelity.json")
    args = parser.parse_args(argv)

    from simulation.mechanisms import compile_mechanisms
    from simulation.paths import resolve_morphology

    morphology = str(resolve_morphology(args.morphology))
    packed, soma, spikes, duration_ms = load_reference(args.reference, args.simulations)
    print(f"reference: {len(soma)} CVode simulations of {duration_ms} ms, {sum(len(s) for s in spikes)} spikes", flush=True)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "workers": args.workers},
        "reference": {"directory": str(args.reference), "simulations": len(soma), "duration_ms": duration_ms,
                      "spikes": int(sum(len(s) for s in spikes)), "solver": "cvode atol 1e-3"},
        "targets": TARGETS,
        "settings": {},
    }
    context = get_context("spawn")  # a fresh NEURON per process: CoreNEURON needs its own mechanism build
    if args.out.is_file():  # a re-run adds to what an earlier run measured
        result["settings"] = json.loads(args.out.read_text()).get("settings", {})
    for name in args.settings:
        solver = SETTINGS[name]
        compile_mechanisms(coreneuron=solver.method == "coreneuron")
        started = time.perf_counter()
        if solver.method == "gpu":
            runs, backend = gpu_runs(solver, morphology, packed, duration_ms, args.workers)
        else:
            with context.Pool(args.workers) as pool:
                runs = pool.map(_simulate, [(dataclasses.asdict(solver), morphology, p, duration_ms) for p in packed], chunksize=1)
            backend = "neuron"
        wall = time.perf_counter() - started
        cpu_seconds = [r[0] for r in runs]
        figures = compare(soma, spikes, [r[1] for r in runs], [r[2] for r in runs])
        figures |= {
            "solver": dataclasses.asdict(solver), "engine": backend,
            "cpu_seconds_per_simulation_median": float(np.median(cpu_seconds)),
            "sim_seconds_per_core_second": duration_ms / 1000 / float(np.median(cpu_seconds)),
            "wall_s": wall,
            "meets_targets": meets_targets(figures),
        }
        result["settings"][name] = figures
        ok = all(v is not False for v in figures["meets_targets"].values())
        print(f"{name:<22} {figures['sim_seconds_per_core_second']:6.3f} sim-s/core-s  RMSE clip median "
              f"{figures['soma_rmse_clipped_median_mV']:.4f} max {figures['soma_rmse_clipped_max_mV']:.3f} mV  "
              f"within 1 ms {figures['spike_fraction_within_1ms']:.3f}  |shift| {figures['spike_shift_mean_abs_ms']:.3f}  "
              f"lag {figures['spike_shift_mean_signed_ms']:+.3f}  max {figures['spike_shift_max_abs_ms']:.2f} ms  "
              f"missed {figures['missed_spikes']} extra {figures['extra_spikes']}  targets {'met' if ok else 'missed'}",
              flush=True)
        write_json(args.out, result)  # after every setting: a long run keeps what it measured
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
