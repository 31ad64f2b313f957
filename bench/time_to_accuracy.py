"""Test accuracy against training time: every epoch of one run, scored on the test split (issue 8, deliverable 3).

    python bench/time_to_accuracy.py --run RUN --data DATA [--config configs/neuronio.toml] [--label NAME]
        [--target-auc 0.992] [--target-rmse 0.64] [--device cuda] [--out bench/results/time_to_accuracy.json]
        [--figure FILE.png]

RUN must have been fitted with `[train] epoch_checkpoints = true`, which keeps each epoch's weights as
RUN/epochs/epoch_NNNN.pt. Each is scored with the published protocol (500-ms windows with 150-ms burn-in,
the first 500 ms skipped, 1-ms bins, simulations with more than 24 spike bins left out; spike AUC, soma RMSE
aligned and raw) on the test split of DATA ([data] of the config: the split fit used), and the training time
of that epoch is its metrics row's elapsed_s (training and validation, over all resumptions). The targets
are met at the first epoch whose test scores reach them. The test split only measures here: the model
is still selected on the validation split (checkpoint_best.pt). Prints a table, keeps one row per label
in the JSON (other rows stay) and draws test AUC and RMSE against training time with --figure.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.errors import UserInputError, first_line  # noqa: E402
from common.jsonio import update_json_rows  # noqa: E402
from surrogate.checkpoints import EPOCH_CHECKPOINTS, load_model  # noqa: E402
from surrogate.metrics import fp_label  # noqa: E402


def epoch_checkpoints(run: Path) -> list[Path]:
    paths = sorted((run / EPOCH_CHECKPOINTS).glob("epoch_*.pt"))
    if not paths:
        raise UserInputError(f"no epoch checkpoints in {run / EPOCH_CHECKPOINTS} "
                             "(fit the run with [train] epoch_checkpoints = true)")
    return paths


def score_epochs(run: Path, data: Path, config_paths: list[Path], device: str | None = None,
                 progress=None) -> dict:
    """Every epoch checkpoint of `run` on the test split of `data`: one dict per epoch, plus the test set."""
    import dataclasses

    from surrogate.data import find_shards, split_shards
    from surrogate.devices import resolve_device
    from surrogate.evaluation import (check_not_trained_on, iter_test_blocks, load_evaluation_config, predict_blocks,
                                      read_summary, score_predictions)

    checkpoints = epoch_checkpoints(run)
    data_config, evaluate_config = load_evaluation_config(config_paths)
    if device:
        evaluate_config = dataclasses.replace(evaluate_config, device=device)
    test_shards = split_shards(find_shards(data), data_config)["test"]
    if not test_shards:
        raise UserInputError(f"the test split of {data} is empty")
    check_not_trained_on(read_summary(run), test_shards)
    torch_device = resolve_device(evaluate_config.device)
    blocks = list(iter_test_blocks(test_shards, evaluate_config.batch_size))  # read once, scored for every epoch
    rows, test = [], None
    for path in checkpoints:
        model, info = load_model(path, device=torch_device)
        history = info["extra"]["history"][-1]
        predictions = predict_blocks(model, info["soma_transform"], blocks, data_config, evaluate_config,
                                     torch_device, modes=("windowed",))
        result = score_predictions(predictions, data_config, evaluate_config)[0]["windowed"]
        batch_size = info["extra"].get("batch_size")
        rows.append({
            "epoch": info["epoch"], "step": info["global_step"], "training_time_s": round(history["elapsed_s"], 2),
            "windows_seen": info["global_step"] * batch_size if batch_size else None,
            "valid_auc": history.get("valid_auc"),
            "test_auc": result["spike"]["auc"],
            "test_tp_at_1pct_fp": result["spike"]["tp_at_fp"].get(fp_label(0.01)),
            "test_rmse_aligned_mV": result["soma"]["aligned"]["rmse_mV"],
            "test_rmse_raw_mV": result["soma"]["raw"]["rmse_mV"],
        })
        test = {"shards": [p.name for p in test_shards], "simulations": result["simulations"],
                "simulations_kept": result["simulations_kept"], "spike_bins": result["spike_bins_evaluated"]}
        if progress:
            progress(rows[-1])
    return {"model_kind": info["model_kind"], "num_parameters": info["num_parameters"], "test": test,
            "device": str(torch_device), "epochs": rows}


def time_to_targets(rows: list[dict], target_auc: float, target_rmse: float) -> dict:
    """Training time of the first epoch reaching each target (AUC, aligned RMSE, both); None when none did."""
    def auc_met(row):
        return row["test_auc"] is not None and row["test_auc"] >= target_auc  # None: undefined (no spike kept)

    def rmse_met(row):
        return row["test_rmse_aligned_mV"] is not None and row["test_rmse_aligned_mV"] <= target_rmse

    def first(met):
        return next((row["training_time_s"] for row in rows if met(row)), None)

    return {f"auc_{target_auc:g}": first(auc_met), f"rmse_{target_rmse:g}_mV": first(rmse_met),
            "both": first(lambda row: auc_met(row) and rmse_met(row))}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["epochs"]
    seconds = [row["training_time_s"] for row in rows]
    fig, (ax_auc, ax_rmse) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_auc.plot(seconds, [row["test_auc"] for row in rows], "o-", ms=3, label="test")
    ax_auc.plot(seconds, [row["valid_auc"] for row in rows], "o--", ms=3, alpha=0.6, label="validation")
    ax_auc.axhline(result["target_auc"], color="k", lw=0.8, ls=":", label=f"target {result['target_auc']:g}")
    ax_auc.set(xlabel="training time (s)", ylabel="spike AUC", title="Spike AUC")
    ax_rmse.plot(seconds, [row["test_rmse_aligned_mV"] for row in rows], "o-", ms=3, label="test, aligned")
    ax_rmse.axhline(result["target_rmse_mV"], color="k", lw=0.8, ls=":", label=f"target {result['target_rmse_mV']:g} mV")
    ax_rmse.set(xlabel="training time (s)", ylabel="soma RMSE (mV)", title="Soma RMSE")
    test = result["test"]
    fig.suptitle(f"{result['label']}: {result['num_parameters']:,} parameters; test {test['simulations_kept']} "
                 f"simulations, {test['spike_bins']} spike bins", fontsize=10)
    for ax in (ax_auc, ax_rmse):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="run directory fitted with [train] epoch_checkpoints")
    parser.add_argument("--data", type=Path, required=True, help="the dataset the run was fitted on (its test split)")
    parser.add_argument("--config", type=Path, action="append", default=None,
                        help="configs whose [data] / [evaluate] set the split and protocol (default configs/neuronio.toml)")
    parser.add_argument("--label", default=None, help="the row's name (default: the run directory's)")
    parser.add_argument("--target-auc", type=float, default=0.992, help="issue 8's d_m 20 target")
    parser.add_argument("--target-rmse", type=float, default=0.64, help="mV, aligned")
    parser.add_argument("--device", default=None, help="override [evaluate] device")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "time_to_accuracy.json")
    parser.add_argument("--figure", type=Path, default=None, help="write test AUC / RMSE against training time here")
    args = parser.parse_args(argv)
    if not args.run.is_dir():
        raise UserInputError(f"run directory not found: {args.run}")
    label = args.label or args.run.name

    print(f"{'epoch':>5} {'train s':>8} {'valid AUC':>9} {'test AUC':>9} {'RMSE al.':>9} {'RMSE raw':>9}")

    def show(row):
        valid = f"{row['valid_auc']:.4f}" if row["valid_auc"] is not None else "-"
        print(f"{row['epoch']:>5} {row['training_time_s']:>8.1f} {valid:>9} {row['test_auc']:>9.4f} "
              f"{row['test_rmse_aligned_mV']:>9.3f} {row['test_rmse_raw_mV']:>9.3f}", flush=True)

    result = score_epochs(args.run, args.data, args.config or [ROOT / "configs" / "neuronio.toml"], args.device,
                          progress=show)
    result = {"label": label, "run": str(args.run), "target_auc": args.target_auc,
              "target_rmse_mV": args.target_rmse, **result,
              "time_to_target_s": time_to_targets(result["epochs"], args.target_auc, args.target_rmse),
              "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node()}
    test = result["test"]
    print(f"test split: {test['simulations_kept']} of {test['simulations']} simulations kept, "
          f"{test['spike_bins']} spike bins; time to target: "
          + ", ".join(f"{k} {'not reached' if v is None else f'{v:.0f} s'}" for k, v in result["time_to_target_s"].items()))
    update_json_rows(args.out, "rows", [result], key=lambda row: row["label"], benchmark="time_to_accuracy")
    print(f"-> {args.out}")
    if args.figure:
        plot(result, args.figure)
        print(f"-> {args.figure}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserInputError as err:  # bad input: one line, exit code 2
        print(f"error: {first_line(err)}", file=sys.stderr)
        sys.exit(2)
