"""Who is right where a setting and the CVode reference disagree: CVode again, at tighter tolerances.

    python bench/fidelity_recheck.py --reference DIR --simulations 13 40 \
        [--setting gpu_cn_0.0125_float32] [--atol 1e-4 1e-5] [--out bench/results/fidelity_recheck.json]

The reference of bench/solver_fidelity.py is CVode at NeuronIO's tolerance (atol 1e-3), not an
exact solution: a near-threshold event can tip either way under it too, and in a bursting
simulation one tipped event moves every spike of the next few hundred ms. solver_fidelity.py
lists, per setting, the simulations that hold its spikes beyond 1 ms (`outlier_simulations`);
this script simulates those again, from the same inputs, under the setting and under CVode at
each tighter `--atol`, and scores three pairs per simulation: the setting against the
reference, the setting against the tightest CVode, and the reference against the tightest
CVode. Where the tight CVode sides with the setting, the spikes beyond 1 ms are the
reference's own error, not the setting's.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
from multiprocessing import get_context
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from common.jsonio import write_json  # noqa: E402
from simulation.config import SolverConfig  # noqa: E402
from simulation.fidelity import compare  # noqa: E402
from solver_fidelity import SETTINGS, _simulate, gpu_runs, load_reference  # noqa: E402

PAIRS = ("setting_vs_reference", "setting_vs_tight", "reference_vs_tight")


def scored(reference_soma, reference_spikes, soma, spikes) -> dict:
    figures = compare([reference_soma], [reference_spikes], [soma], [spikes])
    beyond = figures["outlier_simulations"][0]["beyond_1ms"] if figures["outlier_simulations"] else 0
    return {"reference_spikes": figures["reference_spikes"], "beyond_1ms": beyond,
            "missed": figures["missed_spikes"], "extra": figures["extra_spikes"],
            "spike_shift_mean_signed_ms": figures["spike_shift_mean_signed_ms"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--simulations", type=int, nargs="+", required=True, help="indices into the reference")
    parser.add_argument("--setting", default="gpu_cn_0.0125_float32", choices=list(SETTINGS))
    parser.add_argument("--atol", type=float, nargs="+", default=[1e-4, 1e-5])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--morphology", default=None)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "fidelity_recheck.json")
    args = parser.parse_args(argv)

    from simulation.mechanisms import compile_mechanisms
    from simulation.paths import resolve_morphology

    compile_mechanisms()
    morphology = str(resolve_morphology(args.morphology))
    packed, soma, spikes, duration_ms = load_reference(args.reference, max(args.simulations) + 1)
    chosen = sorted(set(args.simulations))
    packed = [packed[i] for i in chosen]
    solver = SETTINGS[args.setting]
    if solver.method == "gpu":
        runs, engine = gpu_runs(solver, morphology, packed, duration_ms, args.workers)
    else:
        raise SystemExit("--setting: only the GPU engine's settings are rechecked here")
    tight = {}
    with get_context("spawn").Pool(args.workers) as pool:
        for atol in args.atol:
            cvode = dataclasses.asdict(SolverConfig(method="cvode", cvode_atol=atol))
            tight[atol] = pool.map(_simulate, [(cvode, morphology, p, duration_ms) for p in packed], chunksize=1)
    tightest = min(args.atol)
    rows = []
    print(f"{args.setting} against CVode atol 1e-3 (the reference) and CVode atol {tightest:g}; spikes beyond 1 ms:")
    print(f"{'simulation':>10} {'spikes':>6} {'setting vs ref':>15} {'setting vs tight':>17} {'ref vs tight':>13}")
    for k, index in enumerate(chosen):
        _, t_soma, t_spikes = tight[tightest][k]
        row = {
            "simulation": index,
            "spike_times": {"reference": spikes[index].tolist(), args.setting: np.asarray(runs[k][2]).tolist(),
                            **{f"cvode_atol_{atol:g}": np.asarray(tight[atol][k][2]).tolist() for atol in args.atol}},
            "setting_vs_reference": scored(soma[index], spikes[index], runs[k][1], runs[k][2]),
            "setting_vs_tight": scored(t_soma, t_spikes, runs[k][1], runs[k][2]),
            "reference_vs_tight": scored(t_soma, t_spikes, soma[index], spikes[index]),
        }
        rows.append(row)
        print(f"{index:>10} {len(spikes[index]):>6} " + " ".join(
            f"{row[p]['beyond_1ms']:>{w}}" for p, w in zip(PAIRS, (15, 17, 13))), flush=True)
    totals = {p: int(sum(r[p]["beyond_1ms"] for r in rows)) for p in PAIRS}
    print(f"{'total':>10} {sum(len(spikes[i]) for i in chosen):>6} " + " ".join(
        f"{totals[p]:>{w}}" for p, w in zip(PAIRS, (15, 17, 13))))
    write_json(args.out, {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "reference": {"directory": str(args.reference), "solver": "cvode atol 1e-3"},
        "setting": args.setting, "engine": engine, "tight_atol": args.atol,
        "simulations": rows, "beyond_1ms_totals": totals,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
