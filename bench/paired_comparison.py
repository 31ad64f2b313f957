"""Two models on the same test bins: is the AUC (or soma RMSE) difference larger than the test set's own spread?

    python bench/paired_comparison.py --runs EVAL_DIR --pair A:B [--pair C:D ...] [--resamples 200]
                                      [--mode windowed] [--out bench/results/paired_comparison.json]

EVAL_DIR/<name>/ holds what `python -m pipelines evaluate` wrote for each model (evaluation.json,
predictions.h5 with every test simulation under /all). For each pair A:B the AUC of A minus the
AUC of B is computed on the bins both were scored on (the published protocol: windowed
inference, first 500 ms skipped, simulations with more than 24 spike bins left out), with a
bootstrap over the test simulations (surrogate.metrics.paired_auc_difference): a 95 % interval
and the fraction of resamples in which A scores higher; the same for the soma RMSE, raw and aligned
(surrogate.metrics.paired_soma_rmse_difference: the alignment over each resample, as evaluate does over
the test set). Two test splits of 128 simulations can
move one model's AUC by more than the gap between two models (docs/results/README.md), which is
what the paired interval accounts for. Nothing is re-simulated or re-predicted: the numbers come
from the evaluate stage's files.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.errors import DatasetError, UserInputError, first_line  # noqa: E402
from common.jsonio import update_json_rows  # noqa: E402
from surrogate.evaluation import EVALUATION_FILE, PREDICTIONS_FILE  # noqa: E402
from surrogate.metrics import paired_auc_difference, paired_soma_rmse_difference  # noqa: E402


def read_all_predictions(run_dir: Path, mode: str) -> dict:
    """The /all arrays of one evaluation (ground truth, identity of each simulation, the mode's prediction)."""
    path = run_dir / PREDICTIONS_FILE
    if not path.is_file():
        raise DatasetError(f"{path} not found (run `python -m pipelines evaluate` for {run_dir.name} first)")
    with h5py.File(path, "r") as f:
        if "all" not in f or f"all/{mode}/spike_probability" not in f:
            raise DatasetError(f"{path} holds no /all/{mode} predictions (written by an older evaluate: "
                               "evaluate again)")
        return {"shard": list(f["all/shard"].asstr()[()]), "simulation_index": f["all/simulation_index"][()],
                "output_spikes": f["all/output_spikes"][()], "spike_probability": f[f"all/{mode}/spike_probability"][()],
                "soma_voltage_mV": f["all/soma_voltage_mV"][()],
                "predicted_soma_voltage_mV": f[f"all/{mode}/soma_voltage_mV"][()]}


def parse_pair(pair: str) -> tuple[str, str]:
    a_name, sep, b_name = pair.partition(":")
    if not sep or not a_name or not b_name:
        raise UserInputError(f"--pair {pair!r}: expected NAME_A:NAME_B")
    return a_name, b_name


def compare(runs: Path, a_name: str, b_name: str, mode: str, resamples: int, settings: dict) -> dict:
    a, b = read_all_predictions(runs / a_name, mode), read_all_predictions(runs / b_name, mode)
    same = (a["shard"] == b["shard"] and np.array_equal(a["simulation_index"], b["simulation_index"])
            and np.array_equal(a["output_spikes"], b["output_spikes"]))
    if not same:
        raise DatasetError(f"{a_name} and {b_name} were evaluated on different test simulations; "
                           "a paired comparison needs the same ones")
    result = paired_auc_difference(a["output_spikes"], a["spike_probability"], b["spike_probability"],
                                   ignore_first_ms=settings["ignore_first_ms"], max_spike_bins=settings["max_spike_bins"],
                                   resamples=resamples)
    soma = paired_soma_rmse_difference(a["soma_voltage_mV"], a["output_spikes"], a["predicted_soma_voltage_mV"],
                                       b["predicted_soma_voltage_mV"], ignore_first_ms=settings["ignore_first_ms"],
                                       max_spike_bins=settings["max_spike_bins"], soma_cap_mV=settings["voltage_cap_mV"],
                                       soma_bias_mV=settings["voltage_bias_mV"], resamples=resamples)
    return {"a": a_name, "b": b_name, "mode": mode, "test_shards": sorted(set(a["shard"])), **result,
            "soma_rmse": {"raw": soma["raw"], "aligned": soma["aligned"]}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="evaluation directories, one per model (evaluate --runs)")
    parser.add_argument("--pair", action="append", required=True, help="NAME_A:NAME_B (repeat for more pairs)")
    parser.add_argument("--mode", default="windowed", choices=("windowed", "whole"))
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples of the test simulations")
    parser.add_argument("--label", default=None, help="a name for this test set in the output (default: --runs' name)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "paired_comparison.json")
    args = parser.parse_args(argv)
    if args.resamples < 10:
        parser.error(f"--resamples must be at least 10, got {args.resamples}")

    try:
        rows = compare_pairs(args)
    except UserInputError as err:  # a missing evaluation, other test simulations, a one-class test set
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    update_json_rows(args.out, "rows", rows, key=lambda r: (r["test_set"], r["a"], r["b"], r["mode"]),  # notes stay
                     benchmark="paired_comparison", updated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     host=platform.node(),
                     method="AUC of a minus AUC of b on the same bins (published protocol); 95 % interval and "
                            "fraction a higher from a bootstrap over test simulations "
                            "(surrogate.metrics.paired_auc_difference); soma_rmse: the same for the soma RMSE, raw "
                            "and aligned, the alignment redone on each resample (surrogate.metrics."
                            "paired_soma_rmse_difference; rows without it are older)")
    print(f"-> {args.out}")
    return 0


def compare_pairs(args: argparse.Namespace) -> list[dict]:
    """Every --pair compared and printed, in order."""
    rows = []
    for a_name, b_name in [parse_pair(pair) for pair in args.pair]:
        if not (args.runs / a_name / EVALUATION_FILE).is_file():
            raise DatasetError(f"{args.runs / a_name / EVALUATION_FILE} not found")
        evaluation = json.loads((args.runs / a_name / EVALUATION_FILE).read_text())
        row = compare(args.runs, a_name, b_name, args.mode, args.resamples, evaluation["settings"])
        row["test_set"] = args.label or args.runs.name
        rows.append(row)
        low, high = row["interval_95"]
        rmse = row["soma_rmse"]["aligned"]
        rmse_low, rmse_high = rmse["interval_95_mV"]
        print(f"{row['a']} - {row['b']} ({row['test_set']}, {row['simulations']} simulations, {row['spike_bins']} "
              f"spike bins): AUC {row['auc_a']:.4f} - {row['auc_b']:.4f} = {row['difference']:+.4f}, 95 % "
              f"[{low:+.4f}, {high:+.4f}], a higher in {100 * row['fraction_a_higher']:.0f} % of {row['resamples']} "
              f"resamples; soma RMSE aligned {rmse['rmse_a_mV']:.3f} - {rmse['rmse_b_mV']:.3f} = "
              f"{rmse['difference_mV']:+.3f} mV, 95 % [{rmse_low:+.3f}, {rmse_high:+.3f}], a lower in "
              f"{100 * rmse['fraction_a_lower']:.0f} %", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
