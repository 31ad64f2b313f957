"""The GPU engine on one GPU machine: fidelity to CVode, throughput, and CPU baselines, in one run.

    python bench/gpu_simulation.py --reference DIR [--cells 2048] [--duration-ms 6000]
                                   [--out bench/results/gpu_simulation.json]

1. Fidelity. Every simulation of the CVode reference dataset DIR (configs/fidelity.toml,
   NeuronIO's own setting) is simulated again, from the same input spikes, by every GPU
   setting of SETTINGS (dt, scheme, precision); the settings run side by side on their own
   CUDA streams. simulation.fidelity gives each setting's figures against CVode: soma RMSE
   per simulation, spike shifts, missed and extra spikes, rate and ISI statistics.
2. Speed of each setting: CELLS cells x SWEEP_MS, alone on the GPU (simulated s per wall s).
3. The chosen setting: the fastest one that meets every fidelity target, else the most
   faithful. Throughput at it: CELLS NeuronIO simulations of DURATION ms drawn from seeds
   (input drawing timed apart, on all cores), peak device memory, and the floor estimate
   (bytes and transcendental functions per cell and step against the device's rates).
4. CPU baselines, on the machine's cores while the GPU runs: one NEURON CVode core, and the
   configs' default CPU setting (SolverConfig()) on all other cores but one; throughput per
   core in simulated seconds per CPU second of each process.

Writes the JSON (sim_seconds_per_wall_second, speedup_vs_cvode_core, speedup_vs_all_cores,
device, fidelity of every setting, ...) and prints a table. `--backend cpu` runs the same
script on the engine's CPU twin with small sizes (a dry run where there is no GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from common.jsonio import write_json  # noqa: E402
from simulation.config import InputConfig, RecordingConfig, SimulationConfig, SolverConfig  # noqa: E402
from simulation.fidelity import TARGETS, compare, meets_targets  # noqa: E402

SETTINGS = {
    "gpu_be_0.025_float64": SolverConfig(method="gpu", dt_ms=0.025, scheme="backward-euler"),
    "gpu_cn_0.025_float64": SolverConfig(method="gpu", dt_ms=0.025, scheme="crank-nicolson"),
    "gpu_cn_0.025_float32": SolverConfig(method="gpu", dt_ms=0.025, scheme="crank-nicolson", gpu_precision="float32"),
    "gpu_cn_0.0125_float64": SolverConfig(method="gpu", dt_ms=0.0125, scheme="crank-nicolson"),
    "gpu_cn_0.0125_float32": SolverConfig(method="gpu", dt_ms=0.0125, scheme="crank-nicolson", gpu_precision="float32"),
    "gpu_cn_0.025_float32_fast": SolverConfig(method="gpu", dt_ms=0.025, scheme="crank-nicolson", gpu_precision="float32",
                                              gpu_math="fast"),
    "gpu_cn_0.0125_float32_fast": SolverConfig(method="gpu", dt_ms=0.0125, scheme="crank-nicolson", gpu_precision="float32",
                                               gpu_math="fast"),
}
# CPU settings timed beside the GPU run: one CVode core (NeuronIO's setting) and NEURON's fixed
# step at the settings item 4 weighs for the CPU default; processes per setting
CPU_SETTINGS = {
    "cvode": (SolverConfig(method="cvode"), 1),
    "fixed_cn_0.025": (SolverConfig(method="fixed", dt_ms=0.025, scheme="crank-nicolson"), 7),
    "fixed_cn_0.0125": (SolverConfig(method="fixed", dt_ms=0.0125, scheme="crank-nicolson"), 6),
}
SWEEP_MS = 100
INPUT_SEED = 777  # the throughput run's master seed (its inputs are NeuronIO draws, not the reference's)
# device rates for the floor estimate: copy bandwidth measured on this kind (KINDS.md), datasheet arithmetic
DEVICE_BANDWIDTH_B_PER_S = 4.3e12
FLOPS = {"float64": 34e12, "float32": 67e12}
FLOPS_PER_TRANSCENDENTAL = {"float64": 20.0, "float32": 8.0}  # exp/log/pow in software, about


# --------------------------------------------------------------------------- the cell

def build_cell(morphology: str):
    from simulation.gpu.export import export_cell
    from simulation.run import L5PCSimulator

    simulator = L5PCSimulator(SimulationConfig(), morphology)
    return simulator, export_cell(simulator)


LAUNCH = {"value": None}  # the kernel's launch shape (backends.LaunchConfig); the run's first measurement picks it
NODE_ARRAYS = {"value": "auto"}  # where the kernel keeps v, rhs, d (backends.NODE_ARRAYS); --node-arrays
LAUNCH_SHAPES = ("4x64/4", "8x32/2", "4x32/4", "8x64/2")  # cells per block x node groups / blocks per multiprocessor


def make_engine(cell, solver: SolverConfig, backend: str, node_arrays: str | None = None, launch=None):
    from simulation.gpu.engine import GPUEngine

    launch = launch or (LAUNCH["value"] if solver.gpu_precision == "float32" else None)  # the sweep runs in float32
    return GPUEngine(cell, solver, RecordingConfig(), backend=backend, cpu_threads=os.cpu_count() or 1,
                     launch=launch, node_arrays=node_arrays or NODE_ARRAYS["value"])


def timed_run(engine, events) -> tuple[list, dict]:
    """Compile and warm up on 5 ms of 64 cells (a small batch is slow per step), then time a run of `events`."""
    engine.run([e.head(5) for e in events[:64]])
    started = time.perf_counter()
    results = engine.run(events)
    seconds = time.perf_counter() - started
    return results, {"cells": len(events), "duration_ms": events[0].duration_ms, "wall_s": seconds,
                     "sim_seconds_per_wall_second": len(events) * events[0].duration_ms / 1000 / seconds}


def launch_sweep(cell, solver: SolverConfig, events, backend: str, shapes, log) -> dict:
    """Every launch shape at one setting on the same cells: speed, and whether the results are bit-identical."""
    from simulation.gpu.backends import LaunchConfig

    out, first = {}, None
    for label in shapes:
        engine = make_engine(cell, solver, backend, launch=LaunchConfig.parse(label))
        results, out[label] = timed_run(engine, events)
        soma = np.stack([r.soma_voltage for r in results])
        first = soma if first is None else first
        out[label] |= {"node_arrays": getattr(engine.backend, "node_arrays", "cpu"),
                       "identical_to_first": bool(np.array_equal(soma, first))}
        log(f"launch {label}: {out[label]['sim_seconds_per_wall_second']:.1f} sim-s/s "
            f"({out[label]['node_arrays']} node arrays; identical to {shapes[0]}: {out[label]['identical_to_first']})")
    return out


def node_arrays_ratio(cell, solver: SolverConfig, events, log) -> dict:
    """The kernel with its node arrays in shared memory against the same kernel with them in device memory."""
    out = {}
    for where in ("global", "shared"):
        _, out[where] = timed_run(make_engine(cell, solver, "cuda", node_arrays=where), events)
        log(f"node arrays in {where} memory: {out[where]['sim_seconds_per_wall_second']:.1f} sim-s/s")
    out["shared_over_global"] = out["shared"]["sim_seconds_per_wall_second"] / out["global"]["sim_seconds_per_wall_second"]
    out["cells"], out["duration_ms"] = len(events), events[0].duration_ms
    return out


# --------------------------------------------------------------------------- 1. fidelity

def load_reference(directory: Path, limit: int | None, duration_ms: int | None = None):
    """Inputs (as events), soma traces and spike times of the CVode dataset; `duration_ms` cuts them (dry runs)."""
    from simulation.dataset import read_shard
    from simulation.gpu.engine import EventList

    events, soma, spikes = [], [], []
    for path in sorted(directory.glob("shard_*.h5")):
        shard = read_shard(path)
        if shard.attrs["config"]["solver"]["method"] != "cvode":
            raise SystemExit(f"{path}: the reference must be simulated with cvode")
        cut = duration_ms or shard.duration_ms
        for k in range(len(shard.soma_voltage)):
            events.append(EventList.from_raster(shard.input_spikes[k][:, :cut]))
            soma.append(shard.soma_voltage[k][:cut])
            times = np.asarray(shard.output_spike_times[k])
            spikes.append(times[times < cut - 1])
            if limit and len(events) >= limit:
                return events, soma, spikes
    if not events:
        raise SystemExit(f"no shards in {directory}")
    return events, soma, spikes


def fidelity(cell, reference, backend: str, log, names) -> dict:
    events, soma, spikes = reference
    engines = {name: make_engine(cell, SETTINGS[name], backend) for name in names}

    def run(name):
        started = time.perf_counter()
        results = engines[name].run(events)
        figures = compare(soma, spikes, [r.soma_voltage for r in results], [r.output_spike_times for r in results])
        figures["wall_s"] = time.perf_counter() - started
        figures["meets_targets"] = meets_targets(figures)
        return name, figures

    started = time.perf_counter()
    if backend == "cuda":  # side by side, each engine on its own stream
        with ThreadPoolExecutor(len(engines)) as pool:
            out = dict(pool.map(run, engines))
    else:
        out = dict(run(name) for name in engines)
    log(f"fidelity: {len(engines)} settings x {len(events)} simulations in {time.perf_counter() - started:.1f} s")
    return out


# --------------------------------------------------------------------------- 2-3. speed

def draw_inputs(simulator, n: int, duration_ms: int, seed: int):
    from simulation.gpu.engine import EventList
    from simulation.inputs import generate_input_spikes, simulation_rng

    config = InputConfig(duration_ms=duration_ms)
    segments = simulator.segments

    def draw(i):
        return EventList.from_raster(generate_input_spikes(config, segments.length_um, segments.is_basal,
                                                           simulation_rng(seed, i)))

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(draw, range(n)))


def speed_sweep(cell, events, backend: str, log) -> dict:
    out = {}
    for name, solver in SETTINGS.items():
        _, out[name] = timed_run(make_engine(cell, solver, backend), events)
        log(f"speed {name}: {out[name]['sim_seconds_per_wall_second']:.1f} sim-s/s ({len(events)} cells x {events[0].duration_ms} ms)")
    return out


def check_against_twin(cell, solver: SolverConfig, events, backend: str) -> dict:
    """The kernel against its CPU twin on a few cells: the largest soma difference, and the spikes."""
    from simulation.gpu.engine import GPUEngine

    gpu = make_engine(cell, solver, backend).run(events)
    twin = GPUEngine(cell, solver, RecordingConfig(), backend="cpu", cpu_threads=os.cpu_count() or 1).run(events)
    difference = max(float(np.max(np.abs(a.soma_voltage - b.soma_voltage))) for a, b in zip(gpu, twin))
    same_spikes = all(np.array_equal(a.output_spike_times, b.output_spike_times) for a, b in zip(gpu, twin))
    return {"cells": len(events), "duration_ms": events[0].duration_ms, "soma_max_abs_difference_mV": difference,
            "same_spike_times": bool(same_spikes), "spikes": int(sum(len(a.output_spike_times) for a in gpu))}


def choose(fidelity_figures: dict, speed: dict) -> tuple[str, str]:
    passing = [n for n, f in fidelity_figures.items() if all(v is not None and v for v in f["meets_targets"].values())]
    if passing:
        best = max(passing, key=lambda n: speed[n]["sim_seconds_per_wall_second"])
        return best, "fastest setting that meets every fidelity target"
    best = min(fidelity_figures, key=lambda n: fidelity_figures[n]["spike_shift_mean_abs_ms"] or 1e9)
    return best, "no setting met every target: the one with the smallest mean spike shift"


def floor_estimate(engine, cells: int, duration_ms: int, wall_s: float) -> dict:
    """Bytes and transcendental functions per cell and step, and the times they would take at the device's rates."""
    values = engine._model_values  # noqa: SLF001  (the bench reads the engine's sizes)
    size = np.dtype(engine.real).itemsize
    slots = values["n_states"] + 4 * values["n_excitatory"] + 2 * values["n_inhibitory"]
    # every state read and written once per step; v / rhs / d of every node too unless they stay in shared memory
    node_arrays_in_memory = getattr(engine.backend, "node_arrays", "global") != "shared"
    bytes_per_cell_step = (slots + 3 * values["n_nodes"] * node_arrays_in_memory) * 2 * size
    inserted = engine.cell.inserted
    per_instance = {"CaDynamics_E2": 3, "Ca_HVA": 6, "Ca_LVAst": 6, "Ih": 3, "Im": 3, "K_Pst": 6, "K_Tst": 6,
                    "NaTa_t": 6, "NaTs2_t": 6, "Nap_Et2": 8, "SK_E2": 3, "SKv3_1": 3}  # rates + cnexp (+ Nernst)
    transcendentals = sum(per_instance[c] * int(inserted[c].sum()) for c in per_instance) + 2 * values["n_excitatory"]
    steps = duration_ms * engine.solver.steps_per_ms
    cell_steps = cells * steps
    precision = engine.precision
    return {
        "bytes_per_cell_step": int(bytes_per_cell_step),
        "transcendentals_per_cell_step": int(transcendentals),
        "state_bytes_per_cell": int((slots + 3 * values["n_nodes"]) * size),
        "memory_floor_s": bytes_per_cell_step * cell_steps / DEVICE_BANDWIDTH_B_PER_S,
        "compute_floor_s": transcendentals * FLOPS_PER_TRANSCENDENTAL[precision] * cell_steps / FLOPS[precision],
        "measured_s": wall_s,
        "assumptions": f"state streamed from device memory every step at {DEVICE_BANDWIDTH_B_PER_S:.2g} B/s; "
                       f"{FLOPS_PER_TRANSCENDENTAL[precision]:g} flops per exp/log/pow at {FLOPS[precision]:.2g} flop/s",
    }


# --------------------------------------------------------------------------- 4. CPU baselines

def _cpu_job(args):
    solver_dict, duration_ms, seed, index, morphology = args
    from simulation.inputs import generate_input_spikes, simulation_rng
    from simulation.run import get_simulator

    config = SimulationConfig(solver=SolverConfig(**solver_dict), inputs=InputConfig(duration_ms=duration_ms))
    simulator = get_simulator(config, morphology)
    segments = simulator.segments
    raster = generate_input_spikes(config.inputs, segments.length_um, segments.is_basal, simulation_rng(seed, index))
    started = time.process_time()
    simulator.run(raster)
    return time.process_time() - started


def cpu_baselines(morphology: str, duration_ms: int):
    """Start CPU_SETTINGS' jobs in fresh processes (all at once); returns a function that waits for them."""
    from simulation.mechanisms import compile_mechanisms

    compile_mechanisms(coreneuron=False)
    context = get_context("spawn")
    pools, jobs = {}, {}
    started = time.perf_counter()
    for name, (solver, processes) in CPU_SETTINGS.items():
        pools[name] = context.Pool(processes)
        jobs[name] = pools[name].map_async(_cpu_job, [(dataclasses.asdict(solver), duration_ms, INPUT_SEED, i, morphology)
                                                     for i in range(processes)])

    def wait() -> dict:
        out = {"duration_ms": duration_ms, "settings": {}}
        for name, (solver, processes) in CPU_SETTINGS.items():
            seconds = jobs[name].get()
            pools[name].close()
            per_core = duration_ms / 1000 / float(np.median(seconds))
            out["settings"][name] = {"solver": dataclasses.asdict(solver), "processes": processes, "cpu_seconds": seconds,
                                     "sim_seconds_per_core_second": per_core,
                                     "sim_seconds_per_second_all_cores": per_core * (os.cpu_count() or 1)}
        out["wall_s"] = time.perf_counter() - started
        out["note"] = ("all jobs ran at once, beside the GPU run, so the per-core figures are under full-machine load; "
                       "all-cores throughput = per-core throughput x the machine's cores")
        return out
    return wait


# --------------------------------------------------------------------------- report

def device_info(backend: str) -> dict:
    info = {"backend": backend, "cpu_cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    if backend == "cuda":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        info |= {"gpu": props["name"].decode(), "gpu_memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
                 "multiprocessors": props["multiProcessorCount"], "cupy": cupy.__version__}
    return info


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict) -> None:
    print(f"\nfidelity against CVode ({result['fidelity_reference']['simulations']} simulations, "
          f"{result['fidelity_reference']['spikes']} CVode spikes)")
    print(f"{'setting':<28}{'sim-s/s':>10}{'RMSE clip med/max':>20}{'within 1ms':>12}{'|shift|':>9}{'lag':>8}{'max':>7}{'miss/extra':>12}{'targets':>9}")
    for name, f in result["fidelity"].items():
        speed = result["speed"][name]["sim_seconds_per_wall_second"]
        ok = "yes" if all(v is not False for v in f["meets_targets"].values()) else "no"
        print(f"{name:<28}{speed:>10.1f}{_f(f['soma_rmse_clipped_median_mV'], '>10.4f')}/{_f(f['soma_rmse_clipped_max_mV'], '<9.3f')}"
              f"{_f(f['spike_fraction_within_1ms'], '>12.3f')}{_f(f['spike_shift_mean_abs_ms'], '>9.3f')}"
              f"{_f(f['spike_shift_mean_signed_ms'], '>8.3f')}{_f(f['spike_shift_max_abs_ms'], '>7.2f')}"
              f"{f['missed_spikes']:>6}/{f['extra_spikes']:<5}{ok:>9}")
    t = result["throughput"]
    print(f"\nchosen: {result['setting']} ({result['setting_reason']})")
    print(f"throughput: {t['cells']} x {t['duration_ms']} ms in {t['gpu_wall_s']:.1f} s on the GPU "
          f"(+{t['input_drawing_s']:.1f} s drawing inputs): {result['sim_seconds_per_wall_second']:.1f} sim-s/s")
    launch = result["launch"]
    print(f"\nlaunch shapes at {launch['setting']} ({launch['cells']} cells x {launch['duration_ms']} ms): " + ", ".join(
        f"{label} {v['sim_seconds_per_wall_second']:.1f}{'' if v['identical_to_first'] else ' (DIFFERENT RESULTS)'}"
        for label, v in launch["shapes"].items()) + f"; chosen {launch['chosen']}")
    ratio = result["node_arrays"]["ratio"]
    if ratio:
        print(f"node arrays in shared memory: {ratio['shared_over_global']:.2f}x the kernel with them in device memory "
              f"({ratio['cells']} cells x {ratio['duration_ms']} ms)")
    if "cpu" in result:
        for name, v in result["cpu"]["settings"].items():
            print(f"CPU {name:<16} {v['sim_seconds_per_core_second']:.3f} sim-s per core-s ({v['processes']} processes at once)")
        print(f"GPU = {result['speedup_vs_cvode_core']:.0f}x one CVode core, {result['speedup_vs_all_cores']:.2f}x all "
              f"{os.cpu_count()} cores at the CPU default ({result['cpu']['cpu_default']})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="CVode dataset (configs/fidelity.toml)")
    parser.add_argument("--reference-limit", type=int, default=0, help="use at most this many reference simulations")
    parser.add_argument("--reference-ms", type=int, default=0, help="use only the first ms of each (dry runs)")
    parser.add_argument("--cells", type=int, default=2048)
    parser.add_argument("--duration-ms", type=int, default=6000)
    parser.add_argument("--sweep-ms", type=int, default=SWEEP_MS)
    parser.add_argument("--check-ms", type=int, default=300, help="duration of the kernel-vs-twin check (16 cells)")
    parser.add_argument("--cpu-duration-ms", type=int, default=6000, help="duration of each CPU baseline simulation")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU baselines")
    parser.add_argument("--launch", nargs="+", default=list(LAUNCH_SHAPES),
                        help="kernel launch shapes to try at the chosen setting, CELLSxGROUPS/BLOCKS (cells per block x "
                             "node groups / blocks per multiprocessor); the fastest runs the rest")
    parser.add_argument("--node-arrays", choices=("auto", "shared", "global"), default="auto",
                        help="where the kernel keeps v, rhs and d (auto: shared memory where two blocks fit a multiprocessor)")
    parser.add_argument("--fidelity-budget-s", type=float, default=150.0, help="skip fidelity settings slower than this")
    parser.add_argument("--fidelity-settings", nargs="+", choices=list(SETTINGS), default=None,
                        help="run the fidelity comparison for these settings only (default: every one within the budget)")
    parser.add_argument("--throughput-budget-s", type=float, default=150.0, help="shorten the throughput run to fit this")
    parser.add_argument("--backend", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--setting", choices=list(SETTINGS), default=None,
                        help="measure throughput at this setting (default: chosen by the fidelity figures)")
    parser.add_argument("--morphology", default=None)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "gpu_simulation.json")
    args = parser.parse_args(argv)

    from simulation.paths import resolve_morphology

    morphology = str(resolve_morphology(args.morphology))
    t0 = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - t0:7.1f} s] {message}", flush=True)

    NODE_ARRAYS["value"] = args.node_arrays
    simulator, cell = build_cell(morphology)
    reference = load_reference(args.reference, args.reference_limit or None, args.reference_ms or None)
    reference_ms = reference[0][0].duration_ms
    log(f"cell exported ({cell.n_nodes} nodes); reference: {len(reference[0])} simulations of {reference_ms} ms, "
        f"{sum(len(s) for s in reference[2])} spikes")

    # speed first: the launch shape (at the setting measured for throughput) and what fits in the time budget
    sweep_events = draw_inputs(simulator, args.cells, args.sweep_ms, INPUT_SEED)
    sweep_setting = args.setting or "gpu_cn_0.0125_float32"
    launches = launch_sweep(cell, SETTINGS[sweep_setting], sweep_events, args.backend, args.launch, log)
    from simulation.gpu.backends import LaunchConfig
    LAUNCH["value"] = LaunchConfig.parse(max(launches, key=lambda k: launches[k]["sim_seconds_per_wall_second"]))
    log(f"launch shape: {LAUNCH['value'].label}")
    speed = speed_sweep(cell, sweep_events, args.backend, log)

    def seconds_for(name, duration_ms):  # a batch of up to args.cells cells runs in about the sweep's time per ms
        return speed[name]["wall_s"] * duration_ms / args.sweep_ms

    def throughput_duration(setting):  # the run's duration: args.duration_ms, shortened to fit the budget
        if seconds_for(setting, args.duration_ms) <= args.throughput_budget_s:
            return args.duration_ms
        return max(args.sweep_ms, int(args.throughput_budget_s / seconds_for(setting, 1)) // 100 * 100)

    def timed_draw(n, duration_ms):
        started = time.perf_counter()
        return draw_inputs(simulator, n, duration_ms, INPUT_SEED), time.perf_counter() - started

    # with --setting the throughput run's inputs are drawn on the CPUs while the GPU runs the fidelity
    drawing = ThreadPoolExecutor(1).submit(timed_draw, args.cells, throughput_duration(args.setting)) if args.setting else None

    # fidelity: every setting whose run fits the budget (they run side by side)
    fits = [n for n in (args.fidelity_settings or SETTINGS) if seconds_for(n, reference_ms) <= args.fidelity_budget_s]
    log(f"fidelity settings within {args.fidelity_budget_s:.0f} s: {fits}")
    fidelity_figures = fidelity(cell, reference, args.backend, log, fits) if fits else {}
    if args.setting:
        setting, reason = args.setting, "given with --setting"
    else:
        setting, reason = choose(fidelity_figures, speed) if fidelity_figures else (
            "gpu_cn_0.025_float64", "no setting's fidelity run fitted the time budget")
    log(f"chosen: {setting} ({reason})")

    arrays_ratio = node_arrays_ratio(cell, SETTINGS[setting], sweep_events, log) if args.backend == "cuda" else None

    check_events = draw_inputs(simulator, 16, args.check_ms, INPUT_SEED + 1)
    checks = {name: check_against_twin(cell, SETTINGS[name], check_events, args.backend)
              for name in dict.fromkeys([setting, "gpu_cn_0.025_float64"])}
    for name, check in checks.items():
        log(f"kernel vs CPU twin, {name}: max |soma difference| {check['soma_max_abs_difference_mV']:.2e} mV, "
            f"same spike times: {check['same_spike_times']} ({check['spikes']} spikes)")

    duration_ms = throughput_duration(setting)
    if duration_ms < args.duration_ms:
        log(f"throughput run shortened to {duration_ms} ms to fit {args.throughput_budget_s:.0f} s")
    events, drawing_s = drawing.result() if drawing else timed_draw(args.cells, duration_ms)
    log(f"drew {args.cells} x {duration_ms} ms inputs in {drawing_s:.1f} s" + (" (beside the fidelity runs)" if drawing else ""))

    engine = make_engine(cell, SETTINGS[setting], args.backend)
    engine.run([e.head(10) for e in events[:64]])  # compile and warm up: 10 ms, not the whole duration
    wait_cpu = None if args.no_cpu else cpu_baselines(morphology, args.cpu_duration_ms)
    peak = {"bytes": 0}
    if args.backend == "cuda":
        import cupy

        pool = cupy.get_default_memory_pool()
        stop = threading.Event()

        def watch():
            while not stop.wait(0.05):
                peak["bytes"] = max(peak["bytes"], pool.total_bytes())
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    started = time.perf_counter()
    results = engine.run(events, progress=lambda done, total: log(f"  {done}/{total} ms") if done % 1000 == 0 else None)
    gpu_wall = time.perf_counter() - started
    if args.backend == "cuda":
        stop.set()
        peak["bytes"] = max(peak["bytes"], cupy.get_default_memory_pool().total_bytes())
    simulated_s = args.cells * duration_ms / 1000
    log(f"GPU: {args.cells} x {duration_ms} ms in {gpu_wall:.1f} s")

    spikes = sum(len(r.output_spike_times) for r in results)
    chosen = fidelity_figures.get(setting, {})
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(args.backend),
        "setting": setting, "setting_reason": reason, "solver": dataclasses.asdict(SETTINGS[setting]),
        "sim_seconds_per_wall_second": simulated_s / gpu_wall,
        "launch": {"chosen": LAUNCH["value"].label, "setting": sweep_setting, "cells": args.cells,
                   "duration_ms": args.sweep_ms, "shapes": launches},
        "node_arrays": {"chosen": engine.backend.node_arrays if args.backend == "cuda" else "cpu", "ratio": arrays_ratio},
        "kernel_vs_cpu_twin": checks,
        "throughput": {"cells": args.cells, "duration_ms": duration_ms, "gpu_wall_s": gpu_wall,
                       "input_drawing_s": drawing_s, "end_to_end_sim_seconds_per_wall_second": simulated_s / (gpu_wall + drawing_s),
                       "output_rate_hz": spikes / simulated_s, "peak_device_memory_bytes": peak["bytes"] or None,
                       "batch_device_bytes": engine.last_run_device_bytes,
                       "floor": floor_estimate(engine, args.cells, duration_ms, gpu_wall)},
        "accuracy": {k: v for k, v in chosen.items()},
        "fidelity_targets": TARGETS,
        "fidelity_reference": {"directory": str(args.reference), "simulations": len(reference[0]),
                               "spikes": int(sum(len(s) for s in reference[2])), "solver": "cvode atol 1e-3"},
        "fidelity": fidelity_figures,
        "speed": speed,
    }
    if wait_cpu is not None:
        cpu = wait_cpu()
        result["cpu"] = cpu
        settings = cpu["settings"]
        default = next((n for n, (solver, _) in CPU_SETTINGS.items() if solver == SolverConfig()), "cvode")
        cpu["cpu_default"] = default
        result["speedup_vs_cvode_core"] = result["sim_seconds_per_wall_second"] / settings["cvode"]["sim_seconds_per_core_second"]
        result["speedup_vs_all_cores"] = result["sim_seconds_per_wall_second"] / settings[default]["sim_seconds_per_second_all_cores"]
        result["speedup_vs_all_cores_each_setting"] = {n: result["sim_seconds_per_wall_second"] / v["sim_seconds_per_second_all_cores"]
                                                       for n, v in settings.items()}
    write_json(args.out, result)
    print_table(result)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
