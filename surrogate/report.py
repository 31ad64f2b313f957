"""The report: a markdown table of every evaluated model beside the published numbers, and figures.

Reads only what earlier stages wrote: RUNS/<name>/evaluation.json and predictions.h5
(evaluate), metrics.csv (fit), the test shard for one example's input raster (simulate),
and, when present, the published elmneuron eval_results.csv. Writes OUT/report.md and
OUT/{roc,traces,params,training}.png (matplotlib, Agg backend), each atomically: a full disk is
a one-line OutputError, and the files of an earlier report stay whole.
"""

from __future__ import annotations

import csv
import datetime
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from common.files import as_output_error, atomic_path, check_writable, read_hdf5, write_text_atomic
from common.jsonio import read_json, write_json
from simulation.errors import UserInputError
from surrogate.evaluation import EVALUATION_FILE, PREDICTIONS_FILE, shard_labels_of
from surrogate.registry import MODEL_KINDS, sized_name

# Published reference points (NeuronIO test set). TCN: Beniaguev et al. 2021 as quoted by
# Spieler et al. 2024; its parameter count is that of surrogate.tcn.published_tcn_config()
# (7 x 128, kernels 45 then 19). ELM numbers: Spieler et al. 2024 (eval_results.json).
PUBLISHED_REFERENCES = (
    {"name": "TCN 7x128 (Beniaguev 2021)", "kind": "tcn", "num_parameters": 9_232_002,
     "auc": 0.9911, "tp_at_1pct": None, "rmse_mV": 0.71},
    {"name": "Branch-ELM d_m=20 (Spieler 2024)", "kind": "branch-elm", "num_parameters": 8002,
     "auc": 0.992, "tp_at_1pct": 0.744, "rmse_mV": 0.64},
    {"name": "best ELM d_m=100 (Spieler 2024)", "kind": "elm", "num_parameters": 54002,
     "auc": 0.9946, "tp_at_1pct": 0.828, "rmse_mV": 0.56},
    {"name": "LSTM baseline (Spieler 2024)", "kind": "lstm", "num_parameters": 858_000,
     "auc": 0.9925, "tp_at_1pct": None, "rmse_mV": None},
)
KIND_COLOURS = {"elm": "tab:blue", "branch-elm": "tab:orange", "tcn": "tab:green", "lstm": "tab:purple"}
# runs that are not one model kind's own directory (named runs, published weights): each its own colour, as far as
# these go (the palette then repeats); never the target's colour, which a model drawn over it would hide
TARGET_COLOUR = "black"  # the simulated soma voltage and spikes in the traces figure
EXTRA_COLOURS = ("tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "indigo", "gold", "navy",
                 "teal", "magenta", "lime")
FIGURES = ("roc.png", "traces.png", "params.png", "training.png")  # data_efficiency.png too when the runs allow it
DATA_EFFICIENCY_JSON = "data_efficiency.json"


@dataclass
class RunResult:
    """What the report knows about one evaluated model."""

    name: str
    directory: Path
    evaluation: dict
    colour: str = "black"
    rocs: dict = field(default_factory=dict)  # mode -> (fpr, tpr)
    examples: dict | None = None  # arrays of predictions.h5 /examples
    training_curves: dict | None = None  # column -> list of floats, from metrics.csv


# --------------------------------------------------------------------------- reading

def read_metrics_csv(path: Path) -> dict[str, np.ndarray] | None:
    """Per-epoch training curves: every numeric column of metrics.csv (None when absent or empty)."""
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    columns = {}
    for key in rows[0]:
        values = []
        for row in rows:
            try:
                values.append(float(row[key]))
            except (TypeError, ValueError):
                values.append(math.nan)
        if not all(math.isnan(v) for v in values):
            columns[key] = np.asarray(values)
    return columns


def collect_runs(runs_dir: Path) -> list[RunResult]:
    """Every RUNS/<name>/ with an evaluation.json, trained models (elm, branch-elm, tcn) first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserInputError(f"runs directory not found: {runs_dir}")
    found = sorted(p.parent for p in runs_dir.glob(f"*/{EVALUATION_FILE}"))
    if not found:
        raise UserInputError(f"no {EVALUATION_FILE} under {runs_dir}/*/ (run python -m pipelines evaluate first)")
    order = {kind: i for i, kind in enumerate(MODEL_KINDS)}  # the registry's kinds first, in its order
    found.sort(key=lambda p: (order.get(p.name, len(order)), p.name))
    runs, extra = [], itertools.cycle(EXTRA_COLOURS)
    for directory in found:
        evaluation = read_json(directory / EVALUATION_FILE)
        published = evaluation.get("published", False)
        colour = KIND_COLOURS.get(directory.name) if not published else None
        run = RunResult(name=evaluation.get("name", directory.name), directory=directory, evaluation=evaluation,
                        colour=colour or next(extra))
        predictions = directory / PREDICTIONS_FILE
        if predictions.is_file():
            again = f"write it again: python -m pipelines evaluate --runs {runs_dir}"
            with read_hdf5(predictions, "predictions", again) as f:
                for mode in f.get("roc", {}):
                    run.rocs[mode] = (f[f"roc/{mode}/fpr"][()], f[f"roc/{mode}/tpr"][()])
                if "examples" in f:
                    ex = f["examples"]
                    run.examples = {
                        "shard": [s.decode() if isinstance(s, bytes) else str(s) for s in ex["shard"][()]],
                        "simulation_index": ex["simulation_index"][()],
                        "soma_voltage_mV": ex["soma_voltage_mV"][()],
                        "output_spikes": ex["output_spikes"][()],
                        **{mode: {k: ex[f"{mode}/{k}"][()] for k in ex[mode]}
                           for mode in ex if isinstance(ex[mode], h5py.Group)},
                    }
        run.training_curves = read_metrics_csv(directory / "metrics.csv")
        runs.append(run)
    return runs


def read_published_results(published_dir: Path | None) -> list[dict]:
    """Rows of the published elmneuron eval_results.csv (test scores per d_m); [] when absent."""
    if published_dir is None:
        return []
    path = Path(published_dir) / "eval_results.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append({
                    "name": row["Name"],
                    "num_memory": int(row["model_config.num_memory"]),
                    "num_parameters": int(row["model_stats.model_param_count"]),
                    "auc": float(row["test_results.AUC"]),
                    "tp_at_1pct": float(row["test_results.TP @ 0.0100 FP"]),
                    "rmse_mV": float(row["test_results.soma_RMSE"]),
                    "explained_variance_percent": float(row["test_results.soma_explained_variance_percent"]),
                })
            except (KeyError, ValueError):
                continue  # a column layout we do not know: leave the row out rather than guess
    return sorted(rows, key=lambda r: r["num_memory"])


def read_example_inputs(data_dir: Path | None, shard_name: str, index: int) -> np.ndarray | None:
    """(1278, T) input raster of one test simulation from the data stage's shard; None when unavailable."""
    if data_dir is None:
        return None
    path = Path(data_dir) / shard_name
    if not path.is_file():
        return None
    from simulation.dataset import open_shard, validate_shard
    validate_shard(path)  # as every stage: a damaged shard is named, never drawn
    with open_shard(path) as f:
        if index >= f["input_spikes"].shape[0]:
            return None
        return f["input_spikes"][index]


# --------------------------------------------------------------------------- formatting

def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _count(value) -> str:
    if value is None:
        return "–"
    value = int(value)
    if value >= 1_000_000:
        return f"{value / 1e6:.2f} M"
    return f"{value:,}".replace(",", "\u202f")


def _duration(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _is_fine_tune(evaluation: dict) -> bool:
    """A model of ours fitted with --init-from: its training record covers its last fit alone."""
    return bool((evaluation.get("training") or {}).get("initialized_from")) and not evaluation.get("published")


def _training_data(evaluation: dict) -> str:
    """The training set size from summary.json, e.g. '9 sims (54 s)'."""
    training = evaluation.get("training") or {}
    simulations = training.get("training_simulations")
    if not isinstance(simulations, (int, float)):
        return "–"
    text = f"{int(simulations)} sims"
    simulated_ms = training.get("training_simulated_ms")
    if isinstance(simulated_ms, (int, float)):
        text += f" ({simulated_ms / 1000:.0f} s)"
    if _is_fine_tune(evaluation):
        text += ", fine-tune"
    return text


def _fp_key(metrics: dict, fp_rate: float) -> float | None:
    for key, value in metrics.items():
        if abs(float(key) - fp_rate) < 1e-9:
            return value
    return None


def scores_table(runs: list[RunResult], mode: str) -> list[str]:
    header = ("| Model | Kind | Params | Spike AUC | TP @ 0.25% FP | TP @ 1% FP | AUC @ 1% FP "
              "| Soma RMSE raw (mV) | Soma RMSE aligned (mV) | Soma MAE aligned (mV) | Expl. var. aligned (%) "
              "| Training time | Training data |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for run in runs:
        e = run.evaluation
        r = e.get(mode)
        if r is None:
            continue
        spike, raw, aligned = r["spike"], r["soma"]["raw"], r["soma"]["aligned"]
        published = " (published weights)" if e.get("published") else ""
        lines.append(
            f"| {run.name}{published} | {e.get('model_kind', '?')} | {_count(e.get('num_parameters'))} "
            f"| {_number(spike['auc'])} | {_number(_fp_key(spike['tp_at_fp'], 0.0025), 3)} "
            f"| {_number(_fp_key(spike['tp_at_fp'], 0.01), 3)} | {_number(_fp_key(spike['auc_at_fp'], 0.01), 3)} "
            f"| {_number(raw['rmse_mV'], 3)} | {_number(aligned['rmse_mV'], 3)} | {_number(aligned['mae_mV'], 3)} "
            f"| {_number(aligned['explained_variance_percent'], 1)} "
            f"| {_duration(e.get('training_time_s'))} | {_training_data(e) if not e.get('published') else 'NeuronIO'} |")
    if any(_is_fine_tune(run.evaluation) and run.evaluation.get(mode) for run in runs):
        lines += ["", "*fine-tune*: the training time and data are those of the model's last fit alone, which started "
                      "from an already trained model (`fit --init-from`)."]
    return lines


def published_table(published_rows: list[dict]) -> list[str]:
    lines = ["| Model | Params | Spike AUC | TP @ 1% FP | Soma RMSE aligned (mV) | Expl. var. aligned (%) |",
             "|---|---|---|---|---|---|"]
    for ref in PUBLISHED_REFERENCES:
        lines.append(f"| {ref['name']} | {_count(ref['num_parameters'])} | {_number(ref['auc'])} "
                     f"| {_number(ref['tp_at_1pct'], 3)} | {_number(ref['rmse_mV'], 2)} | – |")
    for row in published_rows:
        lines.append(f"| Branch-ELM d_m={row['num_memory']} ({row['name']}) | {_count(row['num_parameters'])} "
                     f"| {_number(row['auc'])} | {_number(row['tp_at_1pct'], 3)} | {_number(row['rmse_mV'], 3)} "
                     f"| {_number(row['explained_variance_percent'], 1)} |")
    return lines


# --------------------------------------------------------------------------- figures

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> None:
    """Write `fig` to `path` as a PNG, atomically (OutputError naming `path` on a full disk), and close it."""
    try:
        with as_output_error(path), atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=130)  # the temporary name does not end in .png
    finally:
        _pyplot().close(fig)


def plot_roc(runs: list[RunResult], path: Path) -> bool:
    """ROC curves on a linear and a log FPR axis; solid: windowed (as published), dotted: whole simulation."""
    def curve(run, mode):  # (fpr, tpr, auc), or None where the test split has no spike (or only spikes)
        if mode not in run.rocs:
            return None
        fpr, tpr = run.rocs[mode]
        auc = run.evaluation[mode]["spike"]["auc"]
        if auc is None or np.isnan(auc) or np.isnan(fpr).any() or np.isnan(tpr).any():
            return None
        return fpr, tpr, auc

    drawable = [r for r in runs if any(curve(r, mode) for mode in r.rocs)]
    if not drawable:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for run in drawable:
        for mode, style in (("windowed", "-"), ("whole", ":")):
            drawn = curve(run, mode)
            if drawn is None:
                continue
            fpr, tpr, auc = drawn
            label = f"{run.name}, {mode} (AUC {auc:.4f})"
            axes[0].plot(fpr, tpr, style, color=run.colour, lw=1.6, label=label)
            positive = fpr > 0
            axes[1].plot(fpr[positive], tpr[positive], style, color=run.colour, lw=1.6)
    axes[0].plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--", label="chance")
    axes[0].set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="true-positive rate",
                title="Output spikes: ROC (test split)")
    axes[1].set_xscale("log")
    axes[1].set(xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="false-positive rate (log scale)",
                ylabel="true-positive rate", title="Low false-positive range")
    for f in (0.0025, 0.01):
        axes[1].axvline(f, color="0.6", lw=0.8, ls="--")
        axes[1].text(f, 0.02, f" {f * 100:g}% FP", rotation=90, va="bottom", ha="right", fontsize=8, color="0.4")
    axes[0].legend(fontsize=8, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def _busiest_window(spikes: np.ndarray, start: int, length: int) -> tuple[int, int]:
    """[a, a + length) within [start, T) holding the most spike bins (earliest on ties)."""
    total = spikes.shape[0]
    if total - start <= length:
        return start, total
    counts = np.convolve(spikes[start:].astype(int), np.ones(length, int), mode="valid")
    a = start + int(np.argmax(counts))
    return a, a + length


def plot_traces(runs: list[RunResult], data_dir: Path | None, path: Path, window_ms: int = 2000,
                ignore_first_ms: int = 500) -> tuple[bool, str | None]:
    """One test simulation: input raster, true vs predicted soma voltage, spike probability with true spikes.

    Returns (drawn, note); note says why the raster is missing, if it is.
    """
    with_examples = [r for r in runs if r.examples and len(r.examples["shard"])]
    if not with_examples:
        return False, "no example traces in predictions.h5"
    reference = with_examples[0].examples
    # the example with the most spike bins; every model stored the same examples (same split, same rule)
    counts = reference["output_spikes"].sum(axis=1)
    k = int(np.argmax(counts))
    shard, index = reference["shard"][k], int(reference["simulation_index"][k])
    matching = []
    for run in with_examples:
        ex = run.examples
        hits = [j for j in range(len(ex["shard"])) if ex["shard"][j] == shard and int(ex["simulation_index"][j]) == index]
        if hits:
            matching.append((run, hits[0]))
    soma_true = reference["soma_voltage_mV"][k]
    spikes_true = reference["output_spikes"][k].astype(bool)
    duration = soma_true.shape[0]
    a, b = _busiest_window(spikes_true, min(ignore_first_ms, max(duration - 1, 0)), window_ms)
    t = np.arange(duration)

    inputs = read_example_inputs(data_dir, shard, index)
    where = f"{shard} not found in {data_dir}" if data_dir is not None else f"no --data holding {shard}"
    note = None if inputs is not None else f"input raster not drawn: {where}"
    plt = _pyplot()
    rows = 3 if inputs is not None else 2
    heights = [1.3, 1.2, 0.8][-rows:]
    fig, axes = plt.subplots(rows, 1, figsize=(12, 2.3 * rows + 0.7), sharex=True,
                             gridspec_kw={"height_ratios": heights})
    axes = list(np.atleast_1d(axes))
    legend = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "frameon": False}
    title = f"Test simulation {shard} #{index}: {int(spikes_true.sum())} output spike bins, showing {a}-{b} ms"
    if inputs is not None:
        ax = axes.pop(0)
        n_exc = inputs.shape[0] // 2
        for first, colour, label in ((0, "tab:red", "excitatory\n(AMPA+NMDA)"), (n_exc, "tab:blue", "inhibitory\n(GABA_A)")):
            synapse, time = np.nonzero(inputs[first:first + n_exc, a:b])
            ax.scatter(time + a, synapse + first, s=1.0, color=colour, marker=".", linewidths=0,
                       rasterized=True, label=label)
        ax.set(ylim=(0, inputs.shape[0]), ylabel="input (synapse)", title=title)
        ax.set_yticks([0, n_exc, inputs.shape[0]])
        ax.legend(markerscale=8, **legend)
    else:
        title += f" ({note})"
    ax_v, ax_p = axes
    # the target on top of the models, so that it stays visible however many are drawn
    ax_v.plot(t[a:b], np.minimum(soma_true[a:b], -55.0), color=TARGET_COLOUR, lw=1.2, zorder=3,
              label="simulated, clipped\nat -55 mV (target)")
    for run, j in matching:
        if "windowed" in run.examples:
            ax_v.plot(t[a:b], run.examples["windowed"]["soma_voltage_mV"][j, a:b], color=run.colour, lw=1.0,
                      label=run.name)
            ax_p.plot(t[a:b], run.examples["windowed"]["spike_probability"][j, a:b], color=run.colour, lw=1.0,
                      label=run.name)
    ax_v.set(ylabel="soma voltage (mV)")
    if inputs is None:
        ax_v.set_title(title)
    ax_v.legend(**legend)
    spike_times = np.flatnonzero(spikes_true[a:b]) + a
    for s in spike_times:
        ax_p.axvline(s, color=TARGET_COLOUR, lw=0.8, ls="--", alpha=0.7)
    if len(spike_times):
        ax_p.plot([], [], color=TARGET_COLOUR, ls="--", lw=0.8, label="simulated spike")
    ax_p.set(ylim=(-0.02, 1.02), ylabel="spike probability", xlabel="time (ms)")
    ax_p.legend(**legend)
    ax_p.set_xlim(a, b)
    fig.tight_layout()
    save_figure(fig, path)
    return True, note


def plot_params(runs: list[RunResult], published_rows: list[dict], path: Path) -> bool:
    """Spike AUC and aligned soma RMSE against parameter count, ours beside the published points."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, key, ylabel in ((axes[0], "auc", "spike AUC"), (axes[1], "rmse_mV", "soma RMSE, aligned (mV)")):
        if published_rows:
            ax.plot([r["num_parameters"] for r in published_rows], [r[key] for r in published_rows],
                    "o-", color="0.6", ms=4, lw=1, label="Branch-ELM, published (NeuronIO test, d_m = 1..100)")
        for ref, marker in zip(PUBLISHED_REFERENCES, ("s", "D", "*", "^")):
            if ref[key] is None:
                continue
            ax.plot(ref["num_parameters"], ref[key], marker, color="0.25", ms=8 if marker != "*" else 12,
                    mfc="white", label=ref["name"])
        for run in runs:
            r = run.evaluation.get("windowed")
            if r is None:
                continue
            value = r["spike"]["auc"] if key == "auc" else r["soma"]["aligned"]["rmse_mV"]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            whose = "published weights, scored here" if run.evaluation.get("published") else "ours"
            ax.plot(run.evaluation["num_parameters"], value, "o", color=run.colour, ms=9, mec="black",
                    label=f"{run.name} ({whose}, windowed)")
        ax.set_xscale("log")
        ax.set(xlabel="trainable parameters", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("Spike prediction vs model size")
    axes[1].set_title("Soma voltage error vs model size")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    save_figure(fig, path)
    return True


def _column(curves: dict, exact: str, *needles: str, exclude: tuple[str, ...] = ()) -> tuple[str, np.ndarray] | None:
    """metrics.csv column `exact` (as surrogate.train writes it), else the first whose name holds every needle."""
    if exact in curves:
        return exact, curves[exact]
    for key, values in curves.items():
        low = key.lower()
        if all(n in low for n in needles) and not any(x in low for x in exclude):
            return key, values
    return None


def plot_training(runs: list[RunResult], path: Path) -> bool:
    """Loss (train solid, valid dashed), validation AUC and validation soma RMSE per epoch, from metrics.csv."""
    with_curves = [r for r in runs if r.training_curves]
    if not with_curves:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for run in with_curves:
        curves = run.training_curves
        epoch = curves.get("epoch", np.arange(1, len(next(iter(curves.values()))) + 1))
        train = _column(curves, "train_loss", "train", "loss", exclude=("spike", "soma"))
        valid = _column(curves, "valid_loss", "valid", "loss", exclude=("spike", "soma"))
        auc = _column(curves, "valid_auc", "valid", "auc")
        rmse = _column(curves, "valid_soma_rmse_mV", "valid", "rmse")
        if train:
            axes[0].plot(epoch, train[1], "-", color=run.colour, label=f"{run.name} train")
        if valid:
            axes[0].plot(epoch, valid[1], "--", color=run.colour, label=f"{run.name} valid")
        if auc:
            axes[1].plot(epoch, auc[1], "o-", color=run.colour, ms=3, label=run.name)
        if rmse:
            axes[2].plot(epoch, rmse[1], "o-", color=run.colour, ms=3, label=run.name)
    axes[0].set(xlabel="epoch", ylabel="loss (weighted spike BCE + soma MSE)", title="Training and validation loss")
    axes[1].set(xlabel="epoch", ylabel="spike AUC", title="Validation spike AUC")
    axes[2].set(xlabel="epoch", ylabel="soma RMSE (mV)", title="Validation soma RMSE")
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return True


# --------------------------------------------------------------------------- data efficiency

def data_efficiency(runs: list[RunResult]) -> dict[str, list[dict]]:
    """Per model (kind and size: "branch-elm-d20") with runs on two or more training-set sizes: test scores
    (windowed) against the number of training simulations (summary.json's, through evaluation.json), sorted by it.

    Runs that differ in [data] max_train_simulations (or in dataset) give the points; {} when no model has two sizes.
    A fine-tune (fit --init-from) is no point: its training set leaves out all that its start learnt from.
    """
    points: dict[str, list[dict]] = {}
    for run in runs:
        e = run.evaluation
        training = e.get("training") or {}
        n, windowed = training.get("training_simulations"), e.get("windowed")
        if e.get("published") or _is_fine_tune(e) or not n or not windowed:
            continue
        model = sized_name(e["model_kind"], e.get("model_config"))  # d_m 20 and d_m 100 are two curves
        points.setdefault(model, []).append({
            "model_kind": e["model_kind"],
            "run": run.name,
            "training_simulations": int(n),
            "training_simulated_ms": training.get("training_simulated_ms"),
            "test_auc": windowed["spike"]["auc"],
            "test_tp_at_1pct_fp": windowed["spike"]["tp_at_fp"].get("0.0100"),
            "test_rmse_aligned_mV": windowed["soma"]["aligned"]["rmse_mV"],
            "test_rmse_raw_mV": windowed["soma"]["raw"]["rmse_mV"],
            "training_time_s": e.get("training_time_s"),
        })
    return {kind: sorted(rows, key=lambda r: (r["training_simulations"], r["run"]))
            for kind, rows in points.items() if len({r["training_simulations"] for r in rows}) >= 2}


def plot_data_efficiency(curves: dict[str, list[dict]], path: Path) -> bool:
    """Test AUC and aligned soma RMSE against training simulations, one line per model."""
    if not curves:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = sorted({r["training_simulations"] for rows in curves.values() for r in rows})
    for model, rows in curves.items():
        n = [r["training_simulations"] for r in rows]
        for ax, key in ((axes[0], "test_auc"), (axes[1], "test_rmse_aligned_mV")):
            ax.plot(n, [math.nan if r[key] is None else r[key] for r in rows], "o-",
                    color=KIND_COLOURS.get(rows[0]["model_kind"], "black"), label=model)
    for ax, ylabel in ((axes[0], "test spike AUC"), (axes[1], "test soma RMSE, aligned (mV)")):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])  # the sizes trained, not log-axis minor labels
        ax.minorticks_off()
        ax.set(xlabel="training simulations", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_title("Spike prediction vs training data")
    axes[1].set_title("Soma voltage error vs training data")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def data_efficiency_table(curves: dict[str, list[dict]]) -> list[str]:
    lines = ["| Model | Run | Training simulations | Spike AUC | TP @ 1% FP | Soma RMSE aligned (mV) | raw (mV) |",
             "|---|---|---|---|---|---|---|"]
    for model, rows in curves.items():
        for r in rows:
            lines.append(f"| {model} | {r['run']} | {r['training_simulations']} | {_number(r['test_auc'])} "
                         f"| {_number(r['test_tp_at_1pct_fp'], 3)} | {_number(r['test_rmse_aligned_mV'], 3)} "
                         f"| {_number(r['test_rmse_raw_mV'], 3)} |")
    return lines


# --------------------------------------------------------------------------- the report

def write_report(runs_dir: Path, data_dir: Path | None, out_dir: Path, published_dir: Path | None = None) -> dict:
    """Write out_dir/report.md and its figures; returns {"report": path, "figures": [...], "notes": [...]}."""
    runs = collect_runs(runs_dir)
    published_rows = read_published_results(published_dir)
    out_dir = Path(out_dir)
    check_writable(out_dir)
    notes, figures = [], []

    if plot_roc(runs, out_dir / "roc.png"):
        figures.append(("roc.png", "ROC curves of the output-spike prediction on the test split (left: linear; "
                                   "right: log false-positive rate). Solid: 500-ms windows with 150-ms burn-in as "
                                   "published; dotted: one pass over each whole simulation."))
    elif not any(run.rocs for run in runs):
        notes.append(f"ROC figure skipped: no run directory holds {PREDICTIONS_FILE} (evaluate writes it beside "
                     f"{EVALUATION_FILE}; only the scores were kept)")
    else:
        notes.append("ROC figure skipped: no model has a defined ROC (the test split has no spike or no non-spike bin)")
    drawn, note = plot_traces(runs, data_dir, out_dir / "traces.png")
    if drawn:
        figures.append(("traces.png", "One test simulation (the stored example with the most spike bins): "
                                      "input raster, simulated vs predicted soma voltage, predicted spike "
                                      "probability with the simulated spikes (windowed predictions)."))
    if note:
        notes.append(note)
    if plot_params(runs, published_rows, out_dir / "params.png"):
        figures.append(("params.png", "Spike AUC and aligned soma RMSE against trainable parameters: our models "
                                      "(windowed evaluation, our test split) beside the published NeuronIO points."))
    if plot_training(runs, out_dir / "training.png"):
        figures.append(("training.png", "Training curves from each run's metrics.csv."))
    else:
        notes.append("training-curve figure skipped: no run has a metrics.csv")
    efficiency = data_efficiency(runs)
    if plot_data_efficiency(efficiency, out_dir / "data_efficiency.png"):
        figures.append(("data_efficiency.png", "Test spike AUC and aligned soma RMSE (windowed) against the number "
                                               "of training simulations, per model kind (data_efficiency.json)."))
        with as_output_error(out_dir / DATA_EFFICIENCY_JSON):
            write_json(out_dir / DATA_EFFICIENCY_JSON, efficiency)

    first = runs[0].evaluation
    test = first.get("test", {})
    settings = first.get("settings", {})
    windowed = first.get("windowed", {})
    shards = shard_labels_of(test)
    lines = [
        "# Surrogate evaluation report",
        "",
        f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} from `{runs_dir}`"
        + (f" (data: `{data_dir}`)." if data_dir else "."),
        "",
        "## Test-set scores (500-ms windows, 150-ms burn-in: the published protocol)",
        "",
        f"Test split: {len(shards)} shard(s) ({', '.join(shards)}), "
        f"{test.get('simulations', '?')} simulations of {test.get('duration_ms', '?')} ms; "
        f"{windowed.get('simulations_kept', '?')} kept by the filter of 0-{settings.get('max_spike_bins', 24)} "
        f"spike bins, first {settings.get('ignore_first_ms', 500)} ms ignored: "
        f"{windowed.get('bins_evaluated', '?')} bins of which {windowed.get('spike_bins_evaluated', '?')} spike bins "
        "(spec 7.4).",
        "",
        "Metrics follow spec section 7: ROC as scikit-learn's `roc_curve`, TP @ FP at the ROC point closest to "
        "the FP rate, soma voltage clipped at -55 mV. *raw*: the model's own voltage; *aligned*: the prediction "
        "z-scored over the whole test array and rescaled to the ground truth's mean and std, as the published "
        "numbers are.",
        "",
        *scores_table(runs, "windowed"),
        "",
        "## Test-set scores, one pass over each whole simulation",
        "",
        *scores_table(runs, "whole"),
        "",
        "## Published reference points (NeuronIO test set; aligned RMSE)",
        "",
        *published_table(published_rows),
        "",
        "Published numbers come from a different test set (NeuronIO's), so they are a scale, not a paired "
        "comparison; with a small test split AUC and TP @ FP are noisy.",
        "",
    ]
    if efficiency:
        lines += ["## Data efficiency (test split, windowed)", "", *data_efficiency_table(efficiency), ""]
    if not published_rows:
        lines += ["(The per-d_m published Branch-ELM table was not found: set $ELMNEURON_CHECKPOINTS or place "
                  "the elmneuron folder at ../shared/pretrained/elmneuron.)", ""]
    if figures:
        lines += ["## Figures", ""]
        for name, caption in figures:
            lines += [f"![{name}]({name})", "", caption, ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    report = out_dir / "report.md"
    with as_output_error(report):
        write_text_atomic(report, "\n".join(lines))
    return {"report": report, "figures": [out_dir / name for name, _ in figures], "notes": notes}
