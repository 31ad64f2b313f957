"""How fast, and how exact, is each solver setting; how well does the dask pipeline scale?

    python bench/simulation_speed.py [--quick] [--workers N] [--out bench/results/simulation_speed.json]

1. Speed and accuracy. The same NeuronIO-style input rasters (seeded, spec section 5) are
   simulated under every setting: CVode with NEURON's default tolerance (NeuronIO's setting,
   spec 6.1, the reference), fixed steps of 0.025 / 0.05 / 0.1 ms, and CoreNEURON's CPU
   engine at fixed steps when its mechanism build works. Each (setting, simulation) runs in a
   fresh process and only the integration is timed, in CPU seconds of that process, so the
   numbers hold on a shared machine; throughput is simulated seconds per core-second.
   Accuracy against CVode: RMSE of the 1-ms soma voltage clipped at -55 mV (the training
   target, spec 7.2) and, after pairing each CVode spike with the nearest spike of the
   setting within 5 ms, the largest spike-time difference and the unpaired spikes.
2. Parallel efficiency of `generate_dataset` (the real pipeline: dask tasks, shard writes)
   with 1, 2, 4, ... N single-threaded workers, each given the same number of simulations:
   throughput(N) / (N * throughput(1)), wall clock, after one warm-up simulation per worker
   (cells built).

Targets (report against): parallel efficiency >= 90%; the default setting >= 3x CVode's
throughput per core with clipped-soma RMSE <= 0.1 mV and spike times within 1 ms of CVode.
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
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from common.jsonio import write_json  # noqa: E402
from simulation.config import DatasetConfig, InputConfig, ParallelConfig, SimulationConfig, SolverConfig  # noqa: E402
from simulation.fidelity import SOMA_CLIP_MV, pair_spikes  # noqa: E402
TARGETS = {"parallel_efficiency": 0.90, "speedup_vs_cvode": 3.0, "soma_rmse_clipped_mV": 0.1, "spike_time_ms": 1.0}
SEED = 2021

# name -> [solver] table; "cvode" is the reference every other setting is compared with
SETTINGS = {
    "cvode": SolverConfig(method="cvode"),
    "fixed_dt_0.025": SolverConfig(method="fixed", dt_ms=0.025),
    "fixed_dt_0.05": SolverConfig(method="fixed", dt_ms=0.05),
    "fixed_dt_0.1": SolverConfig(method="fixed", dt_ms=0.1),
    "coreneuron_dt_0.025": SolverConfig(method="coreneuron", dt_ms=0.025),
    "coreneuron_dt_0.05": SolverConfig(method="coreneuron", dt_ms=0.05),
}


# --------------------------------------------------------------------------- one simulation, in its own process

def simulate_once(solver: SolverConfig, duration_ms: int, simulation_index: int, morphology: str) -> dict:
    """Build the cell, draw simulation i's inputs, time only the integration (CPU seconds of this process)."""
    from simulation.inputs import generate_input_spikes, simulation_rng
    from simulation.run import get_simulator

    config = SimulationConfig(inputs=InputConfig(duration_ms=duration_ms), solver=solver)
    simulator = get_simulator(config, morphology)
    segments = simulator.segments
    input_spikes = generate_input_spikes(config.inputs, segments.length_um, segments.is_basal,
                                         simulation_rng(SEED, simulation_index))
    started = time.process_time()
    result = simulator.run(input_spikes)
    cpu_seconds = time.process_time() - started
    return {
        "cpu_seconds": cpu_seconds,
        "steps": simulator.last_run_steps,
        "soma_voltage": result.soma_voltage,
        "output_spike_times": result.output_spike_times,
        "input_spikes": int(input_spikes.sum()),
    }


# --------------------------------------------------------------------------- accuracy

def accuracy(reference_runs: list[dict], runs: list[dict]) -> dict:
    squared_clipped, squared, count = 0.0, 0.0, 0
    differences, unpaired_reference, unpaired_other = [], 0, 0
    for ref, run in zip(reference_runs, runs):
        v_ref, v = ref["soma_voltage"].astype(np.float64), run["soma_voltage"].astype(np.float64)
        squared_clipped += np.sum((np.minimum(v, SOMA_CLIP_MV) - np.minimum(v_ref, SOMA_CLIP_MV)) ** 2)
        squared += np.sum((v - v_ref) ** 2)
        count += v.size
        d, a, b = pair_spikes(ref["output_spike_times"], run["output_spike_times"])
        differences.append(d)
        unpaired_reference += a
        unpaired_other += b
    differences = np.concatenate(differences) if differences else np.zeros(0)
    return {
        "soma_rmse_clipped_mV": float(np.sqrt(squared_clipped / count)),
        "soma_rmse_mV": float(np.sqrt(squared / count)),
        "spike_time_max_abs_diff_ms": float(np.abs(differences).max()) if differences.size else 0.0,
        "spike_time_mean_abs_diff_ms": float(np.abs(differences).mean()) if differences.size else 0.0,
        "paired_spikes": int(differences.size),
        "unpaired_cvode_spikes": int(unpaired_reference),
        "unpaired_spikes": int(unpaired_other),
        "cvode_spikes": int(sum(len(r["output_spike_times"]) for r in reference_runs)),
        "spikes": int(sum(len(r["output_spike_times"]) for r in runs)),
    }


# --------------------------------------------------------------------------- parts 1 and 2

def coreneuron_available() -> str | None:
    """None if CoreNEURON runs here, else why not."""
    try:
        from simulation.mechanisms import compile_mechanisms

        compile_mechanisms(coreneuron=True)
        from neuron import coreneuron  # noqa: F401
    except Exception as err:  # noqa: BLE001  (any failure means: skip the setting, say why)
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def speed_and_accuracy(settings: dict, n_simulations: int, duration_ms: int, morphology: str, workers: int, log) -> dict:
    jobs = [(name, i) for name in settings for i in range(n_simulations)]
    runs: dict[str, list] = {name: [None] * n_simulations for name in settings}
    # one fresh process per simulation: a process holds one mechanism build and one cell
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {pool.submit(simulate_once, settings[name], duration_ms, i, morphology): (name, i) for name, i in jobs}
        for future in futures:
            name, i = futures[future]
            runs[name][i] = future.result()
            log(f"  {name:<22} simulation {i}: {runs[name][i]['cpu_seconds']:7.1f} CPU s, "
                f"{runs[name][i]['steps']:>9,} steps, {len(runs[name][i]['output_spike_times'])} spikes")
    simulated_seconds = n_simulations * duration_ms / 1000.0
    throughput = {name: simulated_seconds / sum(r["cpu_seconds"] for r in runs[name]) for name in settings}
    return {
        "sim_seconds_per_core_second": throughput,
        "speedup_vs_cvode": {name: throughput[name] / throughput["cvode"] for name in settings},
        "integration_steps_per_simulation": {name: float(np.mean([r["steps"] for r in runs[name]])) for name in settings},
        "accuracy_vs_cvode": {name: accuracy(runs["cvode"], runs[name]) for name in settings if name != "cvode"},
        "input_spikes_per_simulation": float(np.mean([r["input_spikes"] for r in runs["cvode"]])),
    }


def parallel_efficiency(worker_counts: list[int], per_worker: int, duration_ms: int, solver: SolverConfig,
                        morphology: Path, log) -> dict:
    from simulation.parallel import close_client, generate_dataset, make_client

    throughput, utilisation, per_cpu = {}, {}, {}
    for n_workers in worker_counts:
        client = make_client(None, n_workers=n_workers)
        try:
            with tempfile.TemporaryDirectory(prefix="bench_parallel_") as scratch:
                def config(n_shards, seed):
                    return SimulationConfig(inputs=InputConfig(duration_ms=duration_ms), solver=solver,
                                            dataset=DatasetConfig(n_shards=n_shards, simulations_per_shard=per_worker, seed=seed),
                                            parallel=ParallelConfig(workers=n_workers))
                # warm-up: one short simulation per worker builds every worker's cell
                warm = dataclasses.replace(config(1, 1), inputs=InputConfig(duration_ms=50),
                                           dataset=DatasetConfig(n_shards=1, simulations_per_shard=n_workers, seed=1))
                generate_dataset(warm, Path(scratch) / "warm", morphology, client)
                cpu_before = client.run(time.process_time)
                started = time.perf_counter()
                generate_dataset(config(n_workers, SEED), Path(scratch) / "timed", morphology, client)
                seconds = time.perf_counter() - started
                cpu_after = client.run(time.process_time)
        finally:
            close_client(client)
        simulated = n_workers * per_worker * duration_ms / 1000.0
        worker_cpu = sum(cpu_after[w] - cpu_before[w] for w in cpu_after if w in cpu_before)
        throughput[n_workers] = simulated / seconds
        # how much of their cores the workers got: on a shared machine, other jobs take the rest
        utilisation[n_workers] = worker_cpu / (seconds * n_workers)
        per_cpu[n_workers] = simulated / worker_cpu
        log(f"  {n_workers:>3} workers: {n_workers * per_worker} simulations in {seconds:6.1f} s wall, "
            f"{throughput[n_workers]:.3f} simulated s per wall s, workers got {100 * utilisation[n_workers]:.0f}% of their cores")
    base = throughput[worker_counts[0]] / worker_counts[0]
    return {
        "throughput_sim_seconds_per_wall_second": {str(n): t for n, t in throughput.items()},
        "parallel_efficiency": {str(n): t / (n * base) for n, t in throughput.items()},
        # the same ratio in worker CPU seconds: the pipeline's own overhead, whatever else runs on the machine
        "parallel_efficiency_per_worker_cpu_second": {str(n): per_cpu[n] / per_cpu[worker_counts[0]] for n in per_cpu},
        "worker_cpu_utilisation": {str(n): u for n, u in utilisation.items()},
    }


# --------------------------------------------------------------------------- report

def machine_info() -> dict:
    import neuron

    from common.machine import available_cores, cpu_model

    return {
        "cpu_model": cpu_model(),
        "cores": available_cores(),
        "python": platform.python_version(),
        "neuron_version": neuron.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def verdicts(result: dict) -> dict:
    """Which settings meet the speed and accuracy targets, and which of them to make the default."""
    meets = {}
    for name, acc in result["accuracy_vs_cvode"].items():
        speedup = result["speedup_vs_cvode"][name]
        meets[name] = {
            "speedup_ok": speedup >= TARGETS["speedup_vs_cvode"],
            "soma_rmse_ok": acc["soma_rmse_clipped_mV"] <= TARGETS["soma_rmse_clipped_mV"],
            "spike_times_ok": acc["spike_time_max_abs_diff_ms"] <= TARGETS["spike_time_ms"]
            and acc["unpaired_cvode_spikes"] == 0 and acc["unpaired_spikes"] == 0,
        }
        meets[name]["all"] = all(meets[name].values())
    passing = [name for name in meets if meets[name]["all"]]
    # among the settings that pass, the most accurate one that is still fast enough; else the fastest accurate one
    accurate = [name for name in meets if meets[name]["soma_rmse_ok"] and meets[name]["spike_times_ok"]]
    if passing:
        # the most accurate passing setting; among equally accurate ones (the same step on NEURON
        # and CoreNEURON gives the same numbers), the fastest
        rmse = {n: round(result["accuracy_vs_cvode"][n]["soma_rmse_clipped_mV"], 3) for n in passing}
        best = min(rmse.values())
        recommended = max((n for n in passing if rmse[n] == best), key=lambda n: result["speedup_vs_cvode"][n])
    elif accurate:
        recommended = max(accurate, key=lambda n: result["speedup_vs_cvode"][n])
    else:
        recommended = "cvode"
    return {"meets_targets": meets, "recommended_default": recommended}


def print_table(result: dict) -> None:
    print()
    print(f"{'setting':<22} {'sim s / core s':>14} {'vs cvode':>9} {'steps/sim':>11} "
          f"{'soma RMSE':>10} {'max |dt|':>9} {'unpaired':>9} {'targets':>8}")
    print(f"{'':<22} {'':>14} {'':>9} {'':>11} {'(clip,mV)':>10} {'(ms)':>9} {'(cv/set)':>9} {'':>8}")
    for name, throughput in result["sim_seconds_per_core_second"].items():
        acc = result["accuracy_vs_cvode"].get(name)
        meets = result["meets_targets"].get(name)
        row = (f"{name:<22} {throughput:14.4f} {result['speedup_vs_cvode'][name]:8.2f}x "
               f"{result['integration_steps_per_simulation'][name]:11,.0f} ")
        if acc is None:
            row += f"{'reference':>10}"
        else:
            row += (f"{acc['soma_rmse_clipped_mV']:10.4f} {acc['spike_time_max_abs_diff_ms']:9.3f} "
                    f"{acc['unpaired_cvode_spikes']:>4}/{acc['unpaired_spikes']:<4} {'yes' if meets['all'] else 'no':>8}")
        print(row)
    if result.get("skipped_settings"):
        for name, why in result["skipped_settings"].items():
            print(f"{name:<22} skipped: {why}")
    print()
    for n, efficiency in result["parallel_efficiency"].items():
        print(f"{n:>3} workers: {result['throughput_sim_seconds_per_wall_second'][n]:.3f} simulated s per wall s, "
              f"efficiency {100 * efficiency:5.1f}% (per worker CPU second "
              f"{100 * result['parallel_efficiency_per_worker_cpu_second'][n]:5.1f}%; "
              f"workers got {100 * result['worker_cpu_utilisation'][n]:.0f}% of their cores)")
    print(f"\nrecommended default: {result['recommended_default']}")


def main(argv=None) -> int:
    from simulation.paths import resolve_morphology
    from common.machine import available_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 simulations of 2 s; efficiency with 1-s simulations")
    parser.add_argument("--workers", type=int, default=available_cores(), help="largest worker count (default: cores)")
    parser.add_argument("--simulations", type=int, default=None, help="simulations per setting (default 3, quick 2)")
    parser.add_argument("--duration-ms", type=int, default=None, help="per simulation (default 6000, quick 2000)")
    parser.add_argument("--per-worker", type=int, default=None, help="simulations per worker for the efficiency (default 3, quick 2)")
    parser.add_argument("--efficiency-duration-ms", type=int, default=None, help="default 2000, quick 1000")
    parser.add_argument("--efficiency-setting", default="fixed_dt_0.025", choices=sorted(SETTINGS))
    parser.add_argument("--settings", nargs="+", default=None, choices=sorted(SETTINGS), help="default: all")
    parser.add_argument("--skip-efficiency", action="store_true")
    parser.add_argument("--morphology", default=None)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "simulation_speed.json")
    args = parser.parse_args(argv)

    n_simulations = args.simulations or (2 if args.quick else 3)
    duration_ms = args.duration_ms or (2000 if args.quick else 6000)
    per_worker = args.per_worker or (2 if args.quick else 3)
    efficiency_ms = args.efficiency_duration_ms or (1000 if args.quick else 2000)
    morphology = resolve_morphology(args.morphology)
    os.environ.setdefault("NEURON_MODULE_OPTIONS", "-nogui")

    def log(message: str) -> None:
        print(message, flush=True)

    from simulation.mechanisms import compile_mechanisms

    compile_mechanisms()  # once, before any worker process starts
    names = args.settings or list(SETTINGS)
    if "cvode" not in names:
        names = ["cvode", *names]
    skipped = {}
    if any(SETTINGS[n].method == "coreneuron" for n in names):
        why = coreneuron_available()
        if why:
            skipped = {n: why for n in names if SETTINGS[n].method == "coreneuron"}
            names = [n for n in names if n not in skipped]
    settings = {name: SETTINGS[name] for name in names}

    started = time.perf_counter()
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info()}
    result["inputs"] = {"simulations_per_setting": n_simulations, "duration_ms": duration_ms, "seed": SEED,
                        "seed_rule": "SeedSequence([seed, simulation_index])"}
    result["settings"] = {name: dataclasses.asdict(s) for name, s in settings.items()}
    result["skipped_settings"] = skipped
    log(f"1. speed and accuracy: {len(settings)} settings x {n_simulations} simulations x {duration_ms} ms, "
        f"{min(args.workers, available_cores())} processes at a time")
    result |= speed_and_accuracy(settings, n_simulations, duration_ms, str(morphology), min(args.workers, available_cores()), log)
    result |= verdicts(result)

    if not args.skip_efficiency:
        counts = sorted({1, *[2 ** k for k in range(1, 10) if 2 ** k < args.workers], args.workers})
        log(f"2. parallel efficiency ({args.efficiency_setting}, {per_worker} x {efficiency_ms} ms simulations per worker): "
            f"{counts} workers")
        result["parallel_setting"] = args.efficiency_setting
        result |= parallel_efficiency(counts, per_worker, efficiency_ms, SETTINGS[args.efficiency_setting], morphology, log)
    else:
        for key in ("parallel_efficiency", "throughput_sim_seconds_per_wall_second",
                    "parallel_efficiency_per_worker_cpu_second", "worker_cpu_utilisation"):
            result[key] = {}
    result["targets"] = TARGETS
    result["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["bench_wall_seconds"] = time.perf_counter() - started

    print_table(result)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
