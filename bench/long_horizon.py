"""Long-horizon benchmarks of the ELM paper: the ELM and a same-parameter LSTM trained per task, test accuracy.

    python bench/long_horizon.py --task listops [--task pathfinder32 ...|--task all] --data-dir data/tasks
                                 [--models elm,lstm] [--runs runs/long_horizon] [--device auto]
                                 [--extra-config configs/tasks/smoke.toml] [--epochs N] [--max-time-s S] [--label NAME]
                                 [--init-from RUN_DIR]
                                 [--prepare [--prepare-config FILE]] [--out bench/results/long_horizon.json]
    python bench/long_horizon.py --plot docs/long_horizon.png     # validation accuracy per epoch of --out's rows

For every task and model this runs the real command, `python -m pipelines fit-task --task TASK
--config configs/tasks/<task>.toml [--config EXTRA] --model MODEL --out RUNS/<label>/<task>/<model>`,
and reads its summary.json. fit-task resumes, so re-running the same benchmark after a kill (or
a device time limit) continues every unfinished run from its last epoch and re-reads the
finished ones. The LSTM is sized to the [elm] classifier's parameter count ([lstm] match).
`--prepare` first runs `prepare-task` (also resumable) for tasks whose data are missing.

Rows of bench/results/long_horizon.json (one per task, model and label; a re-run replaces its
own rows): task, model, parameters, test and best validation accuracy, epochs done and planned,
whether the run finished (a run stopped by --max-time-s is scored from its best epoch so far),
steps and examples seen, the validation accuracy after every epoch, wall time of
this invocation and training time of the run (all its resumptions), device, and the paper's
ELM result beside it (Spieler et al. 2024: ListOps 46.77 %, Pathfinder 71.15 %,
Pathfinder-X 77.29 %, SHD-Adding 0.81-0.82 at 2 ms bins). Rows of a run with
--extra-config are labelled with that file's name ("smoke" ...) unless --label says otherwise:
a smoke row is a plumbing check, not a result.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from common.jsonio import update_json_rows  # noqa: E402

TASK_FILES = {"listops": "listops", "pathfinder32": "pathfinder32", "pathfinder128": "pathfinder128",
              "shd-adding": "shd_adding"}
# the paper's ELM test accuracy (Spieler et al., ICLR 2024)
PAPER_ELM = {
    "listops": {"test_accuracy": 0.4677, "note": "ListOps 46.77 %"},
    "pathfinder32": {"test_accuracy": 0.7115, "note": "Pathfinder 71.15 %"},
    "pathfinder128": {"test_accuracy": 0.7729, "note": "Pathfinder-X 77.29 %"},
    "shd-adding": {"test_accuracy": [0.81, 0.82], "note": "SHD-Adding 0.81-0.82 at 2 ms bins"},
}


def run_command(command: list[str]) -> tuple[int, float]:
    """Run a pipelines command in the project root with its output on ours; (exit code, wall seconds)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    code = subprocess.run(command, cwd=PROJECT_ROOT, env=env).returncode
    return code, time.perf_counter() - started


def data_ready(data_dir: Path, task: str) -> bool:
    return all((data_dir / task / f"{split}.h5").is_file() for split in ("train", "valid", "test"))


def paper_text(task: str) -> str:
    value = PAPER_ELM[task]["test_accuracy"]
    return f"{value[0]:.2f}-{value[1]:.2f}" if isinstance(value, list) else f"{value:.4f}"


def print_table(rows: list[dict]) -> None:
    header = f"{'task':<14} {'model':<11} {'label':<8} {'params':>9} {'test acc':>9} {'valid acc':>9} {'epochs':>6} " \
             f"{'train s':>9} {'wall s':>8} {'device':<22} {'paper ELM':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        if row.get("error"):
            print(f"{row['task']:<14} {row['model']:<11} {row['label']:<8} failed: {row['error']}")
            continue
        print(f"{row['task']:<14} {row['model']:<11} {row['label']:<8} {row['num_parameters']:>9,} "
              f"{row['test_accuracy']:>9.4f} {row['best_valid_accuracy']:>9.4f} "
              f"{str(row['epochs_completed']) + ('' if row.get('finished', True) else '*'):>6} "
              f"{row['training_time_s']:>9.1f} {row['wall_time_s']:>8.1f} {row['device_name'][:22]:<22} "
              f"{paper_text(row['task']):>10}")


def examples_before(row: dict, rows: list[dict]) -> float:
    """Training examples the row's weights had seen before its first epoch: 0 for a run from scratch; for a run started
    from another run's weights (fit-task --init-from RUNS/<label>/<task>/<model>, this script's layout) the source
    row's examples up to the epoch it gave, its own source's included, so that a fine-tune's curve goes on from its
    source's. A source with no row here counts as 0."""
    seen, visited = 0.0, set()
    while (source := row.get("initialized_from")) and len(Path(source["source"]).parts) >= 3:
        key = (row["task"], row["model"], Path(source["source"]).parts[-3])
        parent = next((r for r in rows if (r["task"], r["model"], r["label"]) == key), None)
        if parent is None or key in visited:
            break
        visited.add(key)
        seen += source["global_step"] * parent["train_config"]["batch_size"]
        row = parent
    return seen


def plot_rows(rows: list[dict], path: Path) -> None:
    """Validation accuracy after every epoch, one panel per task, one line per (model, label) (a fine-tune's from where
    its source left off), the paper's ELM dashed;
    where a row has it, the training accuracy dotted in the same colour (the gap between the two shows over-fitting);
    each model's best row on a task at its full size drawn thicker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("valid_accuracy_by_epoch")]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    # a row of panels, and under each its legend in a blank axes of its own, so that no legend hides a curve; the
    # legends' row as tall as the longest legend (a line per row, another for its training accuracy, the paper's)
    legend_lines = max(sum(1 + (len(r.get("train_accuracy_by_epoch") or []) == len(r["valid_accuracy_by_epoch"]))
                           for r in rows if r["task"] == task) + 1 for task in tasks)
    legend_height = 0.3 + 0.125 * legend_lines
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.2 * len(tasks), 3.6 + legend_height), squeeze=False,
                             gridspec_kw={"height_ratios": [3.6, legend_height]})
    for ax, legend_ax, task in zip(axes[0], axes[1], tasks):
        # up to 20 rows a task without two sharing a colour: tab20's ten strong colours first, then its pale ones
        ax.set_prop_cycle(color=plt.cm.tab20.colors[0::2] + plt.cm.tab20.colors[1::2])
        task_rows = [r for r in rows if r["task"] == task]
        # each model's best test accuracy on the task at its full size (the largest test split; smaller ones are the
        # short or easy checks) drawn thicker: the result among the explorations
        full_size = max(r["test_examples"] for r in task_rows)
        best = {}
        for r in task_rows:
            if r["test_examples"] == full_size:
                best[r["model"]] = max(best.get(r["model"], 0.0), r["test_accuracy"])
        for r in task_rows:
            history = r["valid_accuracy_by_epoch"]
            start = examples_before(r, rows)
            seen = [(start + r["examples_seen"] * (i + 1) / len(history)) / 1e6 for i in range(len(history))]
            thick = r["test_examples"] == full_size and r["test_accuracy"] == best[r["model"]]
            (line,) = ax.plot(seen, history, marker="." if len(history) < 20 else None, lw=2.4 if thick else 1.2,
                              label=f"{r['model']} {r['label']} (test {r['test_accuracy']:.3f}, n {r['test_examples']})")
            if len(r.get("train_accuracy_by_epoch") or []) == len(history):
                ax.plot(seen, r["train_accuracy_by_epoch"], ls=":", lw=1, color=line.get_color(),
                        label=f"{r['model']} {r['label']}: training accuracy")
        paper = PAPER_ELM[task]["test_accuracy"]
        ax.axhline(paper[0] if isinstance(paper, list) else paper, color="k", ls="--", lw=0.8, label="paper's ELM (test)")
        ax.set(title=task, xlabel="training examples seen (millions)", ylabel="accuracy (validation; training dotted)")
        legend_ax.axis("off")
        legend_ax.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="upper center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def profile_memory(task: str, configs: list[Path], lengths: list[int], batch: int, device_name: str | None,
                   model: str = "elm") -> list[dict]:
    """Forward + backward of the task's model at several T: autograd's saved bytes, peak memory, time per step."""
    import torch

    from surrogate.devices import resolve_device
    from surrogate.elm import num_parameters
    from surrogate.sequence import build_sequence_model, saved_activation_bytes
    from surrogate.sequence_train import load_task_config, task_spec

    spec = task_spec(task)
    config = load_task_config(configs, spec, model)
    device = resolve_device(device_name or config.train.device)
    torch.manual_seed(0)
    net = build_sequence_model(config.kind, spec.input_kind, spec.input_size, spec.num_classes, config.model,
                               config.core, config.budget_core).to(device)
    rows = []
    for steps in lengths:
        if spec.input_kind == "spikes":
            x = (torch.rand(batch, steps, spec.input_size, device=device) < 0.02).float()
        else:
            x = torch.randint(1, spec.input_size, (batch, steps), device=device)
        labels = torch.randint(0, spec.num_classes, (batch,), device=device)
        saved = saved_activation_bytes(net, x, recurrence=config.train.recurrence)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        times = []
        for _ in range(2):  # the first call compiles the kernel
            net.zero_grad(set_to_none=True)
            started = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net(x, recurrence=config.train.recurrence), labels)
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
        rows.append({"task": task, "model": model, "device": str(device),
                     "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "recurrence": config.train.recurrence, "num_parameters": num_parameters(net),
                     "num_memory": getattr(config.core, "num_memory", None), "batch": batch, "steps": steps,
                     "saved_bytes": saved, "saved_bytes_per_step_per_sequence": saved / (batch * steps),
                     "peak_bytes": peak, "peak_bytes_per_step_per_sequence": None if peak is None else peak / (batch * steps),
                     "forward_backward_s": times[-1], "grad_finite": all(torch.isfinite(p.grad).all().item()
                                                                         for p in net.parameters() if p.grad is not None)})
        print(f"{task} {model} T={steps:>6} B={batch}: saved {saved / 2**20:8.1f} MiB "
              f"({saved / (batch * steps):6.0f} B/step/seq), peak {'-' if peak is None else f'{peak / 2**20:8.1f} MiB'}, "
              f"forward+backward {times[-1]:.3f} s", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", choices=[*TASK_FILES, "all"],
                        help="task to run (repeat, or 'all'; required unless --plot)")
    parser.add_argument("--data-dir", type=Path, help="where prepare-task put (or puts) the task data")
    parser.add_argument("--models", default="elm,lstm", help="comma-separated: elm, branch-elm, lstm (default elm,lstm)")
    parser.add_argument("--runs", type=Path, default=PROJECT_ROOT / "runs" / "long_horizon", help="run directories go here")
    parser.add_argument("--config-dir", type=Path, default=PROJECT_ROOT / "configs" / "tasks")
    parser.add_argument("--extra-config", type=Path, action="append", default=[],
                        help="task config layered over configs/tasks/<task>.toml (e.g. configs/tasks/smoke.toml)")
    parser.add_argument("--device", default=None, help="fit-task --device")
    parser.add_argument("--epochs", type=int, default=None, help="fit-task --epochs")
    parser.add_argument("--max-time-s", type=float, default=None,
                        help="fit-task --max-time-s: a run stops before an epoch it expects to end past this many "
                             "seconds, is scored from its best epoch (finished: false) and resumes when re-run")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="fit-task --init-from: start each new run from these weights (a run directory of the same model)")
    parser.add_argument("--label", default=None, help="row label (default: 'full', or the extra config's name)")
    parser.add_argument("--prepare", action="store_true", help="run prepare-task first for tasks without data")
    parser.add_argument("--prepare-config", type=Path, default=None, help="prepare-task --config ([tasks.<task>] settings)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "long_horizon.json")
    parser.add_argument("--profile-memory", action="store_true",
                        help="instead of training: forward + backward of each task's model at --profile-lengths, "
                             "saved activations and peak memory (rows under 'memory' in --out)")
    parser.add_argument("--profile-lengths", default="1024,4096,16384")
    parser.add_argument("--profile-batch", type=int, default=8)
    parser.add_argument("--plot", type=Path, default=None,
                        help="instead of training: plot the validation accuracy per epoch of --out's rows to this PNG")
    args = parser.parse_args(argv)
    if args.plot:
        if not args.out.is_file():
            parser.error(f"--plot reads the rows of --out, and {args.out} does not exist")
        rows = json.loads(args.out.read_text()).get("rows", [])
        if not any(r.get("valid_accuracy_by_epoch") for r in rows):
            parser.error(f"no row of {args.out} has a per-epoch validation history (valid_accuracy_by_epoch) to plot")
        plot_rows(rows, args.plot)
        print(f"-> {args.plot}")
        return 0
    if not args.task or (not args.profile_memory and not args.data_dir):
        parser.error("--task and --data-dir are required (or --plot)")

    tasks = list(TASK_FILES) if "all" in args.task else list(dict.fromkeys(args.task))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in ("elm", "branch-elm", "lstm")]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (expected elm, branch-elm, lstm)")
    label = args.label or (args.extra_config[-1].stem if args.extra_config else "full")
    if args.profile_memory:
        lengths = [int(n) for n in args.profile_lengths.split(",")]
        memory = []
        for task in tasks:
            configs = [args.config_dir / f"{TASK_FILES[task]}.toml", *args.extra_config]
            for model in models:
                memory += [{**row, "label": label} for row in
                           profile_memory(task, configs, lengths, args.profile_batch, args.device, model)]
        update_json_rows(args.out, "memory", memory,
                         key=lambda r: (r["task"], r["model"], r["device_name"], r["steps"], r["label"]),
                         benchmark="long_horizon")
        print(f"-> {args.out}")
        return 0
    python = sys.executable
    rows, failed = [], False
    for task in tasks:
        if args.prepare and not data_ready(args.data_dir, task):
            command = [python, "-m", "pipelines", "prepare-task", "--task", task, "--data-dir", str(args.data_dir)]
            if args.prepare_config:
                command += ["--config", str(args.prepare_config)]
            code, _ = run_command(command)
            if code != 0:
                rows.append({"task": task, "model": "-", "label": label, "error": f"prepare-task exit code {code}"})
                failed = True
                continue
        configs = [args.config_dir / f"{TASK_FILES[task]}.toml", *args.extra_config]
        for model in models:
            out = args.runs / label / task / model
            command = [python, "-m", "pipelines", "fit-task", "--task", task, "--data-dir", str(args.data_dir),
                       "--out", str(out), "--model", model]
            for config in configs:
                command += ["--config", str(config)]
            if args.device:
                command += ["--device", args.device]
            if args.epochs is not None:
                command += ["--epochs", str(args.epochs)]
            if args.max_time_s is not None:
                command += ["--max-time-s", str(args.max_time_s)]
            if args.init_from is not None:
                command += ["--init-from", str(args.init_from)]
            print(f"\n== {task} / {model}: {' '.join(command[1:])}", flush=True)
            code, wall = run_command(command)
            row = {"task": task, "model": model, "label": label}
            if code != 0 or not (out / "summary.json").is_file():
                rows.append({**row, "error": f"fit-task exit code {code}"})
                failed = True
                continue
            summary = json.loads((out / "summary.json").read_text())
            history = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else []
            rows.append({
                **row,
                "num_parameters": summary["num_parameters"],
                "test_accuracy": summary["test_accuracy"],
                "test_examples": summary["test_examples"],
                "best_valid_accuracy": summary["best_valid_accuracy"],
                "best_epoch": summary["best_epoch"],
                "epochs_completed": summary["epochs_completed"],
                "epochs_planned": summary["train_config"]["epochs"],
                "finished": summary["finished"],
                "global_step": summary["global_step"],
                "train_examples": summary["train_examples"],
                "examples_seen": summary["global_step"] * summary["train_config"]["batch_size"],
                "valid_accuracy_by_epoch": [round(h["valid_accuracy"], 4) for h in history],
                "train_accuracy_by_epoch": [round(h["train_accuracy"], 4) for h in history],
                "wall_time_s": wall,
                "training_time_s": summary["training_time_s"],
                "resumed_at_epochs": summary["resumed_at_epochs"],
                "initialized_from": summary.get("initialized_from"),
                "device": summary["device"],
                "device_name": summary["device_name"],
                "model_config": summary["model"],
                "train_config": summary["train_config"],
                "configs": [str(c) for c in configs],
                "run_dir": str(out),
                "paper_elm_test_accuracy": PAPER_ELM[task]["test_accuracy"],
                "paper_elm": PAPER_ELM[task]["note"],
            })

    print()
    print_table(rows)
    if any(not row.get("finished", True) for row in rows if not row.get("error")):
        print("* stopped at --max-time-s before its last epoch: scored from its best epoch so far; re-run to continue")
    update_json_rows(args.out, "rows", rows, key=lambda r: (r["task"], r["model"], r["label"]),  # "memory" stays
                     benchmark="long_horizon",
                     updated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     host=platform.node(), python=platform.python_version(),
                     paper="Spieler et al., ICLR 2024 (ELM test accuracy per task)")
    print(f"\n-> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
