"""Assemble bench/results/surrogate_accuracy.json from the outputs of bench/neuronio_scale.sh.

    python bench/surrogate_accuracy.py --runs RUNS --data DATA [--cvode-runs DIR --cvode-data DIR] --out JSON

RUNS/<model>/ holds what `fit` and `evaluate` wrote (summary.json, metrics.json,
evaluation.json: scored on the test split of DATA, the GPU-engine dataset);
CVODE_RUNS/<model>/evaluation.json the same checkpoints scored on a separate CVode test set
(`evaluate --all-shards --checkpoint RUNS/<model> --runs CVODE_RUNS`). Per model it keeps
the published protocol's numbers (windowed inference: 500-ms windows with 150-ms burn-in,
the first 500 ms of each simulation skipped, 1-ms bins, simulations with more than 24
spike bins left out; soma RMSE raw and aligned), the parameter count, the training wall
time and the time to the best validation AUC, plus the dataset sizes and the device.
Nothing is recomputed: every number is read from a file the pipeline wrote.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.jsonio import write_json  # noqa: E402
from surrogate.evaluation import shard_labels_of  # noqa: E402
from surrogate.metrics import fp_label  # noqa: E402
from surrogate.registry import MODEL_KINDS, sized_name  # noqa: E402
from surrogate.report import PUBLISHED_REFERENCES  # noqa: E402

MODE = "windowed"  # the published protocol (spec 7.3)
# the published models' test AUCs (surrogate.report.PUBLISHED_REFERENCES) and a lower mark: the training wall
# time until the validation AUC first reached each is reported per model (time to accuracy)
VALID_AUC_MARKS = (0.99, *sorted({ref["auc"] for ref in PUBLISHED_REFERENCES}))


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def scores_of(evaluation: dict) -> dict:
    """The published protocol's numbers of one evaluation.json (windowed mode)."""
    result = evaluation[MODE]
    labels = shard_labels_of(evaluation["test"])
    return {
        "test_auc": result["spike"]["auc"],
        "test_tp_at_1pct_fp": result["spike"]["tp_at_fp"].get(fp_label(0.01)),
        "test_rmse_aligned_mV": result["soma"]["aligned"]["rmse_mV"],
        "test_rmse_raw_mV": result["soma"]["raw"]["rmse_mV"],
        "test_simulations": evaluation["test"]["simulations"],
        "test_simulations_kept": result["simulations_kept"],
        "test_spike_bins": result["spike_bins_evaluated"],
        "test_shards": evaluation["test"]["shards"],
        # a test set pooled from several dataset folders (evaluate --data repeated) is named by its shard paths too
        **({"test_shard_paths": labels} if labels != evaluation["test"]["shards"] else {}),
    }


def _master_seed(data_dir: Path, shard_names: list[str]) -> int | None:
    """The master seed the named shards were simulated from (None where the dataset is not on this machine)."""
    from simulation.dataset import read_shard_attrs

    if not all((data_dir / name).is_file() for name in shard_names):
        return None
    seeds = {int(read_shard_attrs(data_dir / name)["master_seed"]) for name in shard_names}
    return seeds.pop() if len(seeds) == 1 else None


def _count_simulations(data_dir: Path, shard_names: list[str]) -> int | None:
    """Simulations in the named shards of `data_dir` (None where the dataset is not on this machine)."""
    import h5py

    if not all((data_dir / name).is_file() for name in shard_names):
        return None
    total = 0
    for name in shard_names:
        with h5py.File(data_dir / name, "r") as f:
            total += int(f["input_spikes"].shape[0])
    return total


def summary_of_stopped_run(run_dir: Path) -> dict:
    """summary.json's fields for a run stopped before it wrote one, read from its last checkpoint.

    (fit writes summary.json after every epoch; a run killed during its first epochs by an older
    version, or one whose summary was lost, still has its checkpoints.)
    """
    from surrogate.checkpoints import BEST_CHECKPOINT, LAST_CHECKPOINT, load_model

    name = LAST_CHECKPOINT if (run_dir / LAST_CHECKPOINT).is_file() else BEST_CHECKPOINT
    _, info = load_model(run_dir / name)
    extra = info["extra"]
    history = extra["history"]
    best = next((row for row in history if row["epoch"] == extra["best_epoch"]), None)
    epochs = extra["train_config"]["epochs"]
    return {
        "model_kind": info["model_kind"], "model_config": info["model_config"],
        "num_parameters": info["num_parameters"], "training_time_s": extra["training_time_s"],
        "time_to_best_valid_s": best["elapsed_s"] if best else None, "best_epoch": extra["best_epoch"],
        "best_valid_auc": best["valid_auc"] if best else None, "epochs_completed": info["epoch"],
        "finished": info["epoch"] >= epochs, "epochs_planned": epochs,
        "windows_seen": info["global_step"] * extra["train_config"]["batch_size"],
        "training_simulations": None, "device": extra["device"], "shards": extra["shards"],
        "summary_from": f"{name} (the run stopped before writing summary.json)",
    }


def time_to_valid_auc(history: list[dict], marks=VALID_AUC_MARKS) -> dict[str, float | None]:
    """Training wall time (train + validate, metrics.csv's elapsed_s) until the end of the first epoch whose
    validation AUC reached each mark; None for a mark never reached."""
    return {f"{mark:g}": next((row["elapsed_s"] for row in history
                               if row.get("valid_auc") is not None and row["valid_auc"] >= mark), None)
            for mark in marks}


def model_entry(run_dir: Path, cvode_dir: Path | None) -> dict:
    """One model: size, training time, and its scores on each test set present."""
    if (run_dir / "summary.json").is_file():
        summary = _read(run_dir / "summary.json")
    else:
        summary = summary_of_stopped_run(run_dir)
    entry = {
        "model_kind": summary["model_kind"],
        "num_parameters": summary["num_parameters"],
        "model_config": summary.get("model_config"),
        "train_wall_s": summary["training_time_s"],  # epochs' wall time, training and validation, over all resumptions
        "time_to_best_valid_s": summary.get("time_to_best_valid_s"),
        "best_epoch": summary["best_epoch"],
        "best_valid_auc": summary["best_valid_auc"],
        "epochs_completed": summary["epochs_completed"],
        "finished": summary["finished"],
        "windows_seen": summary["windows_seen"],
        "training_simulations": summary["training_simulations"],
        "device": summary["device"],
        "amp": summary.get("amp"),
        "test_sets": {},
    }
    started = summary.get("initialized_from")
    if started:  # a fine-tuning run (fit --init-from): the training of the model it started from, beside its own
        entry["initialized_from"] = started
        if started.get("training_time_s") is not None:
            entry["train_wall_s_with_initial"] = entry["train_wall_s"] + started["training_time_s"]
        if started.get("windows_seen") is not None:
            entry["windows_seen_with_initial"] = entry["windows_seen"] + started["windows_seen"]
    if "summary_from" in summary:
        entry |= {"summary_from": summary["summary_from"], "epochs_planned": summary["epochs_planned"],
                  "shards": summary["shards"]}
    history = _read(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else []
    if entry["time_to_best_valid_s"] is None and history:  # a run from before the key
        best = next((row for row in history if row["epoch"] == summary["best_epoch"]), None)
        entry["time_to_best_valid_s"] = best["elapsed_s"] if best else None
    entry["time_to_valid_auc_s"] = time_to_valid_auc(history)
    if (run_dir / "evaluation.json").is_file():
        entry["test_sets"]["gpu_engine"] = scores_of(_read(run_dir / "evaluation.json"))
    if cvode_dir is not None and (cvode_dir / "evaluation.json").is_file():
        entry["test_sets"]["cvode"] = scores_of(_read(cvode_dir / "evaluation.json"))
    return entry


DATA_EFFICIENCY_RUN = re.compile(r"-n\d+$")  # neuronio_scale.sh's MODEL-nN: MODEL on the first N training simulations


def model_runs(runs: Path) -> list[str]:
    """The run directories under `runs` with a summary or a checkpoint, the registry's kinds first; the
    data-efficiency runs (MODEL-nN) are left to the report's data_efficiency.json."""
    names = [p.name for p in runs.iterdir() if p.is_dir() and not DATA_EFFICIENCY_RUN.search(p.name)
             and ((p / "summary.json").is_file() or any(p.glob("checkpoint_*.pt")))] if runs.is_dir() else []
    order = {kind: i for i, kind in enumerate(MODEL_KINDS)}
    return sorted(names, key=lambda name: (order.get(name, len(order)), name))


def assemble(runs: Path, data: Path, cvode_runs: Path | None = None, cvode_data: Path | None = None,
             device: str | None = None) -> dict:
    """The whole result: every model run under `runs` (model_runs), finished or not."""
    entries = {name: model_entry(runs / name, cvode_runs / name if cvode_runs else None) for name in model_runs(runs)}
    summaries = [_read(runs / k / "summary.json") for k in entries if (runs / k / "summary.json").is_file()]
    if not summaries:
        raise SystemExit(f"error: no run with a summary.json under {runs}")
    first = max(summaries, key=lambda summary: summary["training_simulations"] or 0)  # the whole training set
    for entry in entries.values():  # a stopped run on the same shards trained on the same simulations
        if entry["training_simulations"] is None and entry.pop("shards", None) == first["shards"]:
            entry["training_simulations"] = first["training_simulations"]
    shards = first["shards"]
    evaluation = next((_read(runs / k / "evaluation.json") for k in entries if (runs / k / "evaluation.json").is_file()),
                      None)
    datasets = {
        "train": {"simulations": first["training_simulations"], "simulated_ms": first["training_simulated_ms"],
                  "shards": len(shards["train"]), "data_dir": str(data),
                  "master_seed": _master_seed(data, shards["train"])},
        "valid": {"simulations": _count_simulations(data, shards["valid"]), "shards": len(shards["valid"])},
        "test_gpu_engine": {"simulations": _count_simulations(data, shards["test"]), "shards": len(shards["test"])},
    }
    if datasets["test_gpu_engine"]["simulations"] is None and evaluation:  # the data stayed on the GPU machine
        datasets["test_gpu_engine"]["simulations"] = evaluation["test"]["simulations"]
    if datasets["valid"]["simulations"] is None:  # the same: as the fit counted it
        datasets["valid"]["simulations"] = first.get("valid_simulations")
    if cvode_data is not None and cvode_data.is_dir():
        cvode_shards = sorted(p.name for p in cvode_data.glob("shard_*.h5"))
        datasets["test_cvode"] = {"simulations": _count_simulations(cvode_data, cvode_shards),
                                  "shards": len(cvode_shards), "data_dir": str(cvode_data),
                                  "master_seed": _master_seed(cvode_data, cvode_shards)}
    elif cvode_runs is not None:  # the CVode data stayed on the GPU machine: its size as evaluated
        cvode_evaluation = next((_read(cvode_runs / k / "evaluation.json") for k in entries
                                 if (cvode_runs / k / "evaluation.json").is_file()), None)
        if cvode_evaluation:
            datasets["test_cvode"] = {"simulations": cvode_evaluation["test"]["simulations"],
                                      "shards": len(cvode_evaluation["test"]["shards"]), "data_dir": str(cvode_data)}
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device or first.get("device"),
        "python": platform.python_version(),
        "protocol": {
            "mode": MODE,
            "settings": evaluation.get("settings") if evaluation else None,
            "test_sets": "gpu_engine: the test split of the GPU-engine dataset; cvode: a separate dataset "
                         "simulated with NEURON's CVode (NeuronIO's solver)",
        },
        "datasets": datasets,
        "models": entries,
    }


def published_scores(directories: dict[str, Path]) -> dict:
    """The published checkpoints' scores per test set: every DIR/<name>/evaluation.json of published weights,
    for each (test set name, DIR) of `directories`."""
    out = {}
    for test_set, directory in directories.items():
        for path in sorted(directory.glob("*/evaluation.json")):
            evaluation = _read(path)
            if evaluation.get("published"):
                entry = out.setdefault(path.parent.name, {"num_parameters": evaluation["num_parameters"],
                                                          "checkpoint": evaluation["checkpoint"], "test_sets": {}})
                entry["test_sets"][test_set] = scores_of(evaluation)
    return out


RELEASED_KINDS = ("elm", "branch-elm")  # small enough to commit (issue 8, deliverable 5)


def release(runs: Path, result: dict, directory: Path) -> list[Path]:
    """Each ELM-family model's best checkpoint, without training state, as DIR/<kind>-d<memory>/."""
    from surrogate.checkpoints import BEST_CHECKPOINT, inference_checkpoint

    folders = []
    for name, entry in result["models"].items():
        kind = entry["model_kind"]
        if kind not in RELEASED_KINDS or not (runs / name / BEST_CHECKPOINT).is_file():
            continue
        folder = directory / sized_name(kind, entry["model_config"])
        provenance = {key: entry[key] for key in ("num_parameters", "best_epoch", "epochs_completed", "finished",
                                                  "windows_seen", "training_simulations", "train_wall_s")}
        provenance |= {key: entry[key] for key in ("initialized_from", "train_wall_s_with_initial",
                                                   "windows_seen_with_initial") if key in entry}
        provenance |= {"test_sets": entry["test_sets"], "datasets": result["datasets"], "device": result["device"],
                       "date": result["date"], "notes": result.get("notes", [])}
        inference_checkpoint(runs / name / BEST_CHECKPOINT, folder / BEST_CHECKPOINT, extra=provenance)
        write_json(folder / "scores.json", provenance)
        folders.append(folder)
    return folders


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="run directories RUNS/<model>/ (fit + evaluate)")
    parser.add_argument("--data", type=Path, required=True, help="the training dataset (GPU engine)")
    parser.add_argument("--cvode-runs", type=Path, default=None, help="evaluations on the CVode test set, DIR/<model>/")
    parser.add_argument("--cvode-data", type=Path, default=None, help="the CVode test set")
    parser.add_argument("--device", default=None, help="the device, in words (default: the runs' device)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "surrogate_accuracy.json")
    parser.add_argument("--note", action="append", default=[], help="a sentence on the run, kept in the JSON (repeatable)")
    parser.add_argument("--release", type=Path, default=None,
                        help="also write each ELM-family model, inference only, to DIR/<kind>-d<memory>/ "
                             "(checkpoint_best.pt with its scores), the form committed under checkpoints/")
    parser.add_argument("--published", type=Path, default=None, metavar="DIR",
                        help="evaluations of published checkpoints on the same GPU-engine test split, "
                             "DIR/<name>/evaluation.json (`evaluate --checkpoint PUBLISHED_FOLDER --runs DIR`)")
    parser.add_argument("--published-cvode", type=Path, default=None, metavar="DIR",
                        help="evaluations of published checkpoints on the same CVode test set, DIR/<name>/evaluation.json "
                             "(`evaluate --all-shards --checkpoint PUBLISHED_FOLDER --runs DIR`)")
    args = parser.parse_args(argv)
    result = assemble(args.runs, args.data, args.cvode_runs, args.cvode_data, args.device)
    published = {name: path for name, path in (("gpu_engine", args.published), ("cvode", args.published_cvode)) if path}
    if published:
        result["published_checkpoints"] = published_scores(published)
    if args.note:
        result["notes"] = args.note
    write_json(args.out, result)
    if args.release:
        for folder in release(args.runs, result, args.release):
            print(f"released {folder}")
    def number(value, spec):  # NaN metrics (a test set without spikes) are null in the JSON
        return "n/a" if value is None else format(value, spec)

    print(f"{'model':<16} {'params':>9} {'train s':>8} {'to best s':>9} | test set   AUC     TP@1%FP  RMSE aligned / raw (mV)")
    for run, entry in result["models"].items():
        for name, scores in entry["test_sets"].items():
            print(f"{run:<16} {entry['num_parameters']:>9,} {number(entry['train_wall_s'], '8.0f')} "
                  f"{number(entry['time_to_best_valid_s'], '9.0f')} | {name:<10} {number(scores['test_auc'], '.4f')}  "
                  f"{number(scores['test_tp_at_1pct_fp'], '.3f')}    {number(scores['test_rmse_aligned_mV'], '.3f')} / "
                  f"{number(scores['test_rmse_raw_mV'], '.3f')}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
