"""Score a trained surrogate on the test shards (spec section 7) and keep what the report needs.

Two ways of running a model over a 6-s simulation are scored side by side:
- "windowed": 500-ms windows with 150-ms burn-in, as the published evaluation (spec 7.3);
- "whole": one pass over the whole simulation (a recurrent model's natural use).

Outputs, in the run directory (atomic writes; a full disk is a one-line OutputError that
leaves the files of an earlier evaluation as they were):
- evaluation.json: model, parameters, training time and data size (from summary.json), the
  test shards, and for each mode the metrics of surrogate.metrics.evaluate_predictions;
- predictions.h5: the ROC points of each mode and the predicted traces of a few example test
  simulations, so that the report reads evaluation outputs only.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np
import torch

from common.files import as_output_error, atomic_hdf5, check_writable
from common.jsonio import read_json, write_json
from simulation.errors import DatasetError, UserInputError
from surrogate import metrics
from surrogate.config import DataConfig
from surrogate.targets import SomaTransform
from surrogate.devices import resolve_device

EVALUATION_FILE = "evaluation.json"
PREDICTIONS_FILE = "predictions.h5"
SUMMARY_FILE = "summary.json"
MODES = ("windowed", "whole")
ROC_MAX_POINTS = 4000  # ROC points kept in predictions.h5 for plotting (metrics use the full curve)


@dataclass(frozen=True)
class EvaluateConfig:
    """[evaluate]: how the test split is run through a model and scored."""

    batch_size: int = 8  # simulations read at a time and run together in one pass ("whole")
    window_batch_size: int = 64  # 500-ms windows per forward pass ("windowed")
    device: str = "auto"  # "auto" (CUDA if present), "cpu", "cuda", "cuda:N"
    max_spike_bins: int = 24  # spec 7.4: keep simulations with 0..24 spike bins
    fp_rates: tuple[float, ...] = metrics.DEFAULT_FP_RATES  # spec 7.5
    example_simulations: int = 3  # test simulations whose predicted traces go into predictions.h5
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default (1: the ELMs' small steps, or a shared CPU)

    def __post_init__(self):
        if self.batch_size < 1 or self.window_batch_size < 1:
            raise ValueError(f"batch_size and window_batch_size must be >= 1, got {self.batch_size}, {self.window_batch_size}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.max_spike_bins < 0:
            raise ValueError(f"max_spike_bins must be >= 0, got {self.max_spike_bins}")
        if not all(0.0 <= f <= 1.0 for f in self.fp_rates):
            raise ValueError(f"fp_rates must lie in [0, 1], got {self.fp_rates}")
        if self.example_simulations < 0:
            raise ValueError(f"example_simulations must be >= 0, got {self.example_simulations}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0 (0: torch's default), got {self.num_threads}")


def load_evaluation_config(path: str | Path | Sequence[str | Path]) -> tuple[DataConfig, EvaluateConfig]:
    """[data] and [evaluate] of a config file, or of several layered (both optional; defaults as published)."""
    from common.config import from_table, read_toml_layers

    raw, where = read_toml_layers(path)
    return (from_table(DataConfig, raw.get("data"), f"{where} [data]"),
            from_table(EvaluateConfig, raw.get("evaluate"), f"{where} [evaluate]"))


# --------------------------------------------------------------------------- predictions

@dataclass
class TestPredictions:
    """Ground truth and predictions of every evaluated simulation, in shard order (arrays (n, T))."""

    shard_names: list[str]  # shard file name of each simulation
    simulation_index: np.ndarray  # index of each simulation within its shard
    soma_voltage: np.ndarray  # simulated soma voltage, mV
    output_spikes: np.ndarray  # simulated spike bins, bool
    soma_prediction: dict[str, np.ndarray]  # mode -> predicted soma voltage, mV
    spike_probability: dict[str, np.ndarray]  # mode -> predicted spike probability
    prediction_time_s: dict[str, float]


@dataclass(frozen=True)
class TestBlock:
    """Up to [evaluate] batch_size consecutive simulations of one test shard (one decompressed HDF5 chunk)."""

    shard_name: str
    simulation_index: np.ndarray  # (b,) index within the shard
    input_spikes: np.ndarray  # (b, 1278, T) bool
    soma_voltage: np.ndarray  # (b, T) mV
    output_spikes: np.ndarray  # (b, T) bool


def iter_test_blocks(shard_paths: Sequence[Path], batch_size: int) -> Iterator[TestBlock]:
    """The simulations of `shard_paths` in shard order, `batch_size` at a time, read as they are needed.

    list() of it holds the whole split in memory, for scoring many models on one read
    (bench/time_to_accuracy.py: every epoch of a run)."""
    from simulation.dataset import open_shard

    for path in shard_paths:
        with open_shard(path) as f:
            n = f["input_spikes"].shape[0]
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                yield TestBlock(Path(path).name, np.arange(start, stop), f["input_spikes"][start:stop],
                                np.asarray(f["soma_voltage"][start:stop], dtype=np.float32),
                                np.asarray(f["output_spikes"][start:stop], dtype=bool))


def predict_blocks(model: torch.nn.Module, transform: SomaTransform, blocks: Iterable[TestBlock],
                   data_config: DataConfig, evaluate_config: EvaluateConfig, device: torch.device,
                   modes: Sequence[str] = MODES, progress: Callable[[int], None] | None = None) -> TestPredictions:
    """Run `model` over every simulation of `blocks` in each mode; `progress(k)` after k more simulations.

    `transform` decodes the model's soma channel: its own, from load_model's info. Every mode
    runs on a block before the next one is read.
    """
    from surrogate.inference import predict_whole, predict_windowed

    names, index, soma, spikes = [], [], [], []
    soma_hat = {m: [] for m in modes}
    prob_hat = {m: [] for m in modes}
    elapsed = {m: 0.0 for m in modes}
    for block in blocks:
        for mode in modes:
            t0 = time.perf_counter()
            if mode == "windowed":
                prob, volt = predict_windowed(model, block.input_spikes, transform, window_ms=data_config.window_ms,
                                              burn_in_ms=data_config.burn_in_ms,
                                              batch_size=evaluate_config.window_batch_size, device=device)
            elif mode == "whole":
                prob, volt = predict_whole(model, block.input_spikes, transform, batch_size=evaluate_config.batch_size,
                                           device=device)
            else:
                raise ValueError(f"unknown prediction mode {mode!r}")
            elapsed[mode] += time.perf_counter() - t0
            prob_hat[mode].append(np.asarray(prob, dtype=np.float32))
            soma_hat[mode].append(np.asarray(volt, dtype=np.float32))
        names += [block.shard_name] * len(block.simulation_index)
        index.append(block.simulation_index)
        soma.append(block.soma_voltage)
        spikes.append(block.output_spikes)
        if progress is not None:
            progress(len(block.simulation_index))
    if not names:
        raise DatasetError("the test split is empty: no simulations to evaluate")
    durations = {a.shape[1] for a in soma}
    if len(durations) != 1:
        raise DatasetError(f"test simulations of different durations ({sorted(durations)} ms) cannot be scored together")
    return TestPredictions(
        shard_names=names, simulation_index=np.concatenate(index),
        soma_voltage=np.concatenate(soma), output_spikes=np.concatenate(spikes),
        soma_prediction={m: np.concatenate(v) for m, v in soma_hat.items()},
        spike_probability={m: np.concatenate(v) for m, v in prob_hat.items()},
        prediction_time_s=elapsed,
    )


def predict_shards(model: torch.nn.Module, transform: SomaTransform, shard_paths: Sequence[Path],
                   data_config: DataConfig, evaluate_config: EvaluateConfig, device: torch.device,
                   modes: Sequence[str] = MODES, progress: Callable[[int], None] | None = None) -> TestPredictions:
    """predict_blocks over `shard_paths`, read [evaluate] batch_size simulations at a time."""
    return predict_blocks(model, transform, iter_test_blocks(shard_paths, evaluate_config.batch_size), data_config,
                          evaluate_config, device, modes=modes, progress=progress)


def score_predictions(predictions: TestPredictions, data_config: DataConfig, evaluate_config: EvaluateConfig
                      ) -> tuple[dict[str, dict], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Section-7 metrics of every mode: ({mode: metrics}, {mode: (fpr, tpr)})."""
    if predictions.soma_voltage.shape[1] <= data_config.ignore_first_ms:
        raise DatasetError(f"test simulations last {predictions.soma_voltage.shape[1]} ms, "
                           f"no longer than ignore_first_ms = {data_config.ignore_first_ms}")
    results, rocs = {}, {}
    for mode in predictions.soma_prediction:
        result, roc = metrics.evaluate_predictions(
            predictions.soma_voltage, predictions.output_spikes,
            predictions.soma_prediction[mode], predictions.spike_probability[mode],
            ignore_first_ms=data_config.ignore_first_ms, max_spike_bins=evaluate_config.max_spike_bins,
            fp_rates=evaluate_config.fp_rates, soma_cap_mV=data_config.voltage_cap_mV,
            soma_bias_mV=data_config.voltage_bias_mV, return_roc=True)
        result["prediction_time_s"] = round(predictions.prediction_time_s[mode], 3)
        results[mode], rocs[mode] = result, roc
    return results, rocs


# --------------------------------------------------------------------------- what the report needs

def choose_examples(output_spikes: np.ndarray, count: int, max_spike_bins: int = 24) -> np.ndarray:
    """Indices of `count` example simulations: kept by the spec 7.4 filter, most spike bins first (ties: earliest)."""
    counts = output_spikes.sum(axis=1)
    kept = np.flatnonzero(counts <= max_spike_bins)
    order = kept[np.argsort(-counts[kept], kind="stable")]
    return np.sort(order[:count])


def thin_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int = ROC_MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """A subset of the ROC's own vertices that still draws it on linear and log FPR axes."""
    if len(fpr) <= max_points or np.isnan(fpr).any():
        return fpr, tpr
    grid = np.unique(np.r_[np.logspace(-6, 0, max_points // 2), np.linspace(0, 1, max_points // 4)])
    at = np.searchsorted(fpr, grid, side="left")
    keep = np.unique(np.clip(np.r_[0, at - 1, at, len(fpr) - 1], 0, len(fpr) - 1))
    return fpr[keep], tpr[keep]


def write_predictions_file(path: Path, predictions: TestPredictions, rocs: dict, examples: np.ndarray,
                           attrs: dict[str, Any]) -> None:
    """predictions.h5: /roc/<mode>/{fpr,tpr}; /examples/{shard,simulation_index,soma_voltage_mV,output_spikes};
    /examples/<mode>/{soma_voltage_mV,spike_probability}; and the same for every test simulation under /all
    (compressed), so that later stages can compare models on the same bins. Written atomically (common.files)."""
    with atomic_hdf5(path) as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        for mode, (fpr, tpr) in rocs.items():
            fpr, tpr = thin_roc(fpr, tpr)
            group = f.create_group(f"roc/{mode}")
            group["fpr"], group["tpr"] = fpr.astype(np.float64), tpr.astype(np.float64)
        ex = f.create_group("examples")
        ex["shard"] = np.array([predictions.shard_names[i] for i in examples], dtype=h5py.string_dtype())
        ex["simulation_index"] = predictions.simulation_index[examples].astype(np.int64)
        ex["soma_voltage_mV"] = predictions.soma_voltage[examples].astype(np.float32)
        ex["output_spikes"] = predictions.output_spikes[examples]
        for mode in predictions.soma_prediction:
            ex[f"{mode}/soma_voltage_mV"] = predictions.soma_prediction[mode][examples].astype(np.float32)
            ex[f"{mode}/spike_probability"] = predictions.spike_probability[mode][examples].astype(np.float32)
        every = f.create_group("all")
        packed = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        every["shard"] = np.array(predictions.shard_names, dtype=h5py.string_dtype())
        every["simulation_index"] = predictions.simulation_index.astype(np.int64)
        every.create_dataset("soma_voltage_mV", data=predictions.soma_voltage.astype(np.float32), **packed)
        every.create_dataset("output_spikes", data=predictions.output_spikes, **packed)
        for mode in predictions.soma_prediction:
            every.create_dataset(f"{mode}/soma_voltage_mV", data=predictions.soma_prediction[mode].astype(np.float32),
                                 **packed)
            every.create_dataset(f"{mode}/spike_probability",
                                 data=predictions.spike_probability[mode].astype(np.float32), **packed)


def shard_labels_of(test: dict) -> list[str]:
    """How to name the shards of an evaluation.json's "test": by file name, or by path when the test set was pooled
    from several dataset folders (evaluate --data repeated), whose shard names repeat."""
    paths = test.get("shard_paths", [])
    return list(paths) if len({str(Path(p).parent) for p in paths}) > 1 else list(test.get("shards", []))


def read_summary(run_dir: Path) -> dict:
    """The training summary.json of a run (empty when the run has none, e.g. a published folder)."""
    path = run_dir / SUMMARY_FILE
    return read_json(path) if path.is_file() else {}


def check_not_trained_on(summary: dict, test_shards: Sequence[Path]) -> None:
    """Refuse to score a run on shards it was trained or validated on (a [data] split differing from fit's)."""
    used = summary.get("shards") or {}
    data_dir = summary.get("data_dir")
    if not used or not data_dir or not test_shards:
        return
    # compared as resolved files, shard by shard: a pooled test set may mix datasets, or link to a training shard
    seen = {(Path(data_dir) / name).resolve() for name in [*used.get("train", []), *used.get("valid", [])]}
    overlap = sorted(Path(p).name for p in test_shards if Path(p).resolve() in seen)
    if overlap:
        raise UserInputError(f"test shard {overlap[0]} was used to train or validate this run; "
                             f"evaluate with the [data] split the run was fitted with (its test shards: "
                             f"{', '.join(used.get('test', [])) or 'none'})")


# --------------------------------------------------------------------------- one run

def evaluate_model(checkpoint: str | Path, out_dir: str | Path, test_shards: Sequence[Path],
                   data_config: DataConfig, evaluate_config: EvaluateConfig, name: str | None = None,
                   modes: Sequence[str] = MODES, progress: Callable[[int], None] | None = None) -> dict:
    """Load a checkpoint (file, run directory or published folder), score it on `test_shards`,
    write out_dir/evaluation.json and out_dir/predictions.h5; return the evaluation dict."""
    from surrogate.checkpoints import load_model, run_dir_of

    from simulation.dataset import validate_shard

    out_dir, checkpoint = Path(out_dir), Path(checkpoint)
    if not test_shards:
        raise DatasetError("the test split is empty: no test shards to evaluate on")
    for path in test_shards:
        validate_shard(path)
    summary = read_summary(run_dir_of(checkpoint))
    check_not_trained_on(summary, test_shards)
    check_writable(out_dir)  # before the computing, not after it
    device = resolve_device(evaluate_config.device)
    model, info = load_model(checkpoint, device=device)
    threads_before = torch.get_num_threads()
    if evaluate_config.num_threads:
        torch.set_num_threads(evaluate_config.num_threads)
    try:
        predictions = predict_shards(model, info["soma_transform"], test_shards, data_config, evaluate_config, device,
                                     modes=modes, progress=progress)
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves the process as it found it
    results, rocs = score_predictions(predictions, data_config, evaluate_config)

    training = {k: v for k, v in summary.items() if k not in ("model_kind", "num_parameters", "model_config")}
    evaluation = {
        "name": name or out_dir.name,
        "model_kind": info["model_kind"],
        "num_parameters": int(info["num_parameters"]),
        "published": bool(info.get("published", False)),
        "checkpoint": str(info.get("source", checkpoint)),
        "model_config": info.get("model_config", {}),
        "training_time_s": summary.get("training_time_s"),
        "training": training,
        "test": {
            "shards": sorted({Path(p).name for p in test_shards}),
            "shard_paths": [str(p) for p in test_shards],
            "simulations": int(len(predictions.shard_names)),
            "spike_bins": int(predictions.output_spikes.sum()),
            "duration_ms": int(predictions.soma_voltage.shape[1]),
        },
        "settings": {
            "window_ms": data_config.window_ms, "burn_in_ms": data_config.burn_in_ms,
            "ignore_first_ms": data_config.ignore_first_ms, "max_spike_bins": evaluate_config.max_spike_bins,
            "voltage_cap_mV": data_config.voltage_cap_mV, "voltage_bias_mV": data_config.voltage_bias_mV,
            "fp_rates": list(evaluate_config.fp_rates), "device": str(device),
            "model_soma_transform": info["soma_transform"].as_dict(),
            "soma_metrics": "raw: the model's voltage; aligned: z-scored and rescaled to the ground truth (spec 7.3, as published)",
        },
        **results,
    }
    examples = choose_examples(predictions.output_spikes, evaluate_config.example_simulations,
                               evaluate_config.max_spike_bins)
    with as_output_error(out_dir / PREDICTIONS_FILE):
        write_predictions_file(out_dir / PREDICTIONS_FILE, predictions, rocs, examples,
                               {"name": evaluation["name"], "model_kind": info["model_kind"],
                                "num_parameters": int(info["num_parameters"])})
    with as_output_error(out_dir / EVALUATION_FILE):
        write_json(out_dir / EVALUATION_FILE, evaluation)
    return evaluation


# --------------------------------------------------------------------------- published checkpoints

PUBLISHED_ENV = "ELMNEURON_CHECKPOINTS"


def published_checkpoint_dir(cli_path: str | os.PathLike | None = None) -> Path:
    """Where the published elmneuron checkpoints are: the given path, else $ELMNEURON_CHECKPOINTS,
    else ../shared/pretrained/elmneuron beside the project root (it may not exist)."""
    from simulation.paths import PROJECT_ROOT

    if cli_path:
        return Path(cli_path)
    if os.environ.get(PUBLISHED_ENV):
        return Path(os.environ[PUBLISHED_ENV])
    return PROJECT_ROOT.parent / "shared" / "pretrained" / "elmneuron"


def find_published_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The published elmneuron model folders in `directory` (num_memory_N by d_m, then best_elm_neuron)."""
    from surrogate.checkpoints import PUBLISHED_CONFIG, PUBLISHED_STATE, published_config

    directory = Path(directory)
    if not directory.is_dir():
        raise UserInputError(f"published checkpoint folder not found: {directory} "
                             f"(pass --checkpoints PATH or set ${PUBLISHED_ENV})")
    folders = [p for p in directory.iterdir()
               if p.is_dir() and (p / PUBLISHED_CONFIG).is_file() and (p / PUBLISHED_STATE).is_file()]
    if not folders:
        raise UserInputError(f"no published model folders ({PUBLISHED_CONFIG} + {PUBLISHED_STATE}) in {directory}")

    def order(path: Path):
        config = published_config(path)  # a damaged one is refused here, before validate simulates
        return (path.name.startswith("best"), int(config.get("num_memory", 0)), path.name)
    return sorted(folders, key=order)


def score_published_checkpoints(folders: Sequence[Path], shard_paths: Sequence[Path], data_config: DataConfig,
                                evaluate_config: EvaluateConfig,
                                progress: Callable[[int], None] | None = None) -> list[dict]:
    """Score published elmneuron folders on `shard_paths` as published (windowed inference, aligned soma).

    One row per folder: our metrics beside the folder's own eval_results.json test scores.
    Every shard is validated first.
    """
    from simulation.dataset import validate_shard
    from surrogate.checkpoints import load_model

    for path in shard_paths:
        validate_shard(path)
    device = resolve_device(evaluate_config.device)
    rows = []
    for folder in folders:
        model, info = load_model(folder, device=device)
        predictions = predict_shards(model, info["soma_transform"], shard_paths, data_config, evaluate_config,
                                     device, modes=("windowed",), progress=progress)
        result = score_predictions(predictions, data_config, evaluate_config)[0]["windowed"]
        published = {}
        results_file = Path(folder) / "eval_results.json"
        if results_file.is_file():
            published = read_json(results_file).get("test_results", {})
        rows.append({
            "model": Path(folder).name,
            "model_kind": info["model_kind"],
            "num_memory": int(info["model_config"]["num_memory"]),
            "num_parameters": int(info["num_parameters"]),
            "ours": result,
            "published_test": {
                "auc": published.get("AUC"),
                "tp_at_fp": {metrics.fp_label(f): published.get(f"TP @ {metrics.fp_label(f)} FP")
                             for f in evaluate_config.fp_rates},
                "soma_rmse_mV": published.get("soma_RMSE"),
                "soma_mae_mV": published.get("soma_MAE"),
                "soma_explained_variance_percent": published.get("soma_explained_variance_percent"),
            },
        })
    return rows
