"""The small default's simulate stage: its solver (the GPU engine's CPU twin) against NeuronIO's CVode, in one run.

    python bench/quick_simulate.py [--simulations 4] [--repeats 2] [--duration-ms 6000]
                                   [--out bench/results/quick_simulate.json]

Each repeat runs `python -m pipelines simulate` twice on the same simulations (same seed): configs/quick.toml
as it is (one worker integrating on every core) and with [solver] method = "cvode" and one single-threaded
worker per core, alternating, so that the host's load falls on both alike. It times the whole command,
start-up included, as `make all` pays it, and scores the first quick dataset against the first CVode one
with bench/solver_fidelity.py's figures (simulation.fidelity.compare: soma RMSE, spike shifts, missed and
extra spikes). This stage is most of `make all`'s time (README.md, "On the small default").
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from common.jsonio import write_json  # noqa: E402
from common.machine import available_cores  # noqa: E402
from simulation.config import load_simulation_config  # noqa: E402
from simulation.dataset import list_shards, read_shard  # noqa: E402
from simulation.fidelity import compare  # noqa: E402

QUICK = PROJECT_ROOT / "configs" / "quick.toml"
SEED = 7
# the two settings, as overlays on configs/quick.toml
SETTINGS = {
    "quick": "",
    "cvode": '[solver]\nmethod = "cvode"\n[parallel]\nworkers = 0\n',
}


def simulate(overlays: list[Path], out_dir: Path) -> float:
    """Wall seconds of one `python -m pipelines simulate` (raises with its last line if it fails)."""
    command = [sys.executable, "-m", "pipelines", "simulate", "--config", str(QUICK)]
    for overlay in overlays:
        command += ["--config", str(overlay)]
    started = time.perf_counter()
    done = subprocess.run(command + ["--out", str(out_dir)], cwd=PROJECT_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"simulate failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return seconds


def soma_and_spikes(out_dir: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every simulation's soma trace (1 ms) and output spike times, in shard order."""
    shards = [read_shard(path, inputs=False, segment_voltages=False) for path in list_shards(out_dir)]
    return ([v for shard in shards for v in shard.soma_voltage],
            [np.asarray(t, dtype=float) for shard in shards for t in shard.output_spike_times])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=4, help="simulations per run (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated pairs of runs (default 2)")
    parser.add_argument("--duration-ms", type=int, default=None, help="default: quick.toml's")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "quick_simulate.json")
    args = parser.parse_args(argv)
    if args.simulations < 1 or args.repeats < 1:
        parser.error("--simulations and --repeats must be at least 1")
    quick = load_simulation_config(QUICK)
    duration_ms = args.duration_ms or quick.inputs.duration_ms
    load_at_start = list(os.getloadavg())

    walls: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="quick_simulate_") as scratch:
        scratch = Path(scratch)
        size = scratch / "size.toml"
        size.write_text(f"[dataset]\nn_shards = 1\nsimulations_per_shard = {args.simulations}\nseed = {SEED}\n"
                        f"[inputs]\nduration_ms = {duration_ms}\n")
        for name, table in SETTINGS.items():
            (scratch / f"{name}.toml").write_text(table)
        for repeat in range(args.repeats):
            for name in SETTINGS:
                out_dir = scratch / f"{name}_{repeat}"
                walls[name].append(simulate([size, scratch / f"{name}.toml"], out_dir))
                print(f"repeat {repeat + 1}: {name:<6} {args.simulations} x {duration_ms} ms in {walls[name][-1]:6.1f} s",
                      flush=True)
        # the fidelity figures of bench/solver_fidelity.py (simulation.fidelity.compare), on these few simulations
        agreement = compare(*soma_and_spikes(scratch / "cvode_0"), *soma_and_spikes(scratch / "quick_0"))
    ratios = [c / q for q, c in zip(walls["quick"], walls["cvode"])]

    solver = quick.solver
    result = {
        "benchmark": "quick_simulate",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": available_cores(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_start": load_at_start, "load_average_at_end": list(os.getloadavg())},
        "simulations": args.simulations, "duration_ms": duration_ms, "seed": SEED, "repeats": args.repeats,
        "settings": {"quick": f"configs/quick.toml: {solver.method} ({solver.gpu_backend}), {solver.scheme} dt "
                              f"{solver.dt_ms} ms, {solver.gpu_precision}; one worker on every core",
                     "cvode": "configs/quick.toml with [solver] method = \"cvode\", one single-threaded worker per core"},
        "wall_s": walls,
        "cvode_over_quick_wall": ratios,
        "fidelity_against_cvode": agreement,
    }
    write_json(args.out, result)
    print(f"\n{'setting':<8} {'wall s per run':>24}   CVode / quick")
    for name in SETTINGS:
        print(f"{name:<8} {', '.join(f'{w:.1f}' for w in walls[name]):>24}")
    print(f"CVode takes {min(ratios):.2f}-{max(ratios):.2f}x the quick setting's wall time "
          f"({args.repeats} alternated pairs of {args.simulations} x {duration_ms} ms)")
    within = agreement["spike_fraction_within_1ms"]
    print(f"spikes: {agreement['paired_spikes']} of {agreement['reference_spikes']} CVode spikes paired "
          f"({agreement['missed_spikes']} missed, {agreement['extra_spikes']} extra)"
          + (f", {100 * within:.1f} % within 1 ms" if within is not None else "")
          + f" (a sanity check: bench/results/solver_fidelity.json scores the fidelity)  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
