"""Training steps per second of each surrogate, per batch size, with the batches already on the device.

    python bench/training_speed.py --config configs/neuronio.toml [--config OVERLAY ...] \
        --models branch-elm tcn [--batch-sizes 32 64 128 256] [--steps 20] [--out FILE] \
        [--budget-s S --label RUN] [--ema-update fit|torch]

One optimiser step as `fit` takes it with `[data] windows_on_device = true`: bit-packed windows
unpacked on the device, forward (bf16 autocast where the recipe says "auto" for the model),
the [ELM] loss, backward, the recipe's optimiser, and with [train] ema_decay the weight average's
update (--ema-update torch: torch's AveragedModel update instead of fit's, to compare the two).
Random inputs at about NeuronIO's spike density (timing only). This is what sizes a recipe to a
time budget: windows/s x seconds = windows seen. Without --batch-sizes each model runs at its
recipe's batch size; with --budget-s it also prints `EPOCHS_<RUN>=N`, the epochs of the
recipe's size that fit S seconds of the GPU alone (bench/neuronio_scale.sh reads such
variables). Prints a table and writes JSON (default bench/results/training_speed.json).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.jsonio import write_json  # noqa: E402
from surrogate.config import load_training_config  # noqa: E402
from surrogate.data import pack_input_spikes, unpack_input_spikes  # noqa: E402
from surrogate.elm import num_parameters  # noqa: E402
from surrogate.registry import build_model  # noqa: E402
from surrogate.train import WeightAverage, make_optimizer, resolve_amp, surrogate_loss  # noqa: E402
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: E402

N_INPUTS = 1278
INPUT_DENSITY = 0.004  # input spikes per ms per input, about NeuronIO's mean


def weight_average(model: torch.nn.Module, decay: float, update: str):
    """None without averaging; else fit's WeightAverage or torch's own moving average ("torch")."""
    if decay <= 0:
        return None
    if update == "torch":
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    return WeightAverage(model, decay)


def time_steps(kind: str, config_paths: list[Path], batch_size: int | None, steps: int, device: torch.device,
               ema_update: str = "fit") -> dict:
    cfg = load_training_config(config_paths, kind)
    batch_size = batch_size or cfg.train.batch_size
    window = cfg.data.window_ms
    model = build_model(kind, cfg.model).to(device)
    optimizer = make_optimizer(model.parameters(), cfg.train)
    average = weight_average(model, cfg.train.ema_decay, ema_update)
    amp = resolve_amp(cfg.train.amp, kind, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")
    rng = np.random.default_rng(0)
    packed = torch.from_numpy(np.stack([pack_input_spikes(rng.random((N_INPUTS, window)) < INPUT_DENSITY)
                                        for _ in range(batch_size)])).to(device)  # (B, W, 160), as DeviceWindows yields
    spikes = (torch.rand(batch_size, window, device=device) < 0.01).float()
    soma = torch.randn(batch_size, window, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(steps + 3):  # 3 warm-up steps (kernel compilation, cuDNN autotuning)
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        x = unpack_input_spikes(packed, N_INPUTS)
        with autocast:
            output = model(x)
        loss = surrogate_loss(output, spikes, soma, cfg.train, 1)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    return {"model": kind, "num_parameters": num_parameters(model), "batch_size": batch_size, "amp": amp,
            "ema_decay": cfg.train.ema_decay, "ema_update": ema_update if average is not None else None,
            "batches_per_epoch": cfg.train.batches_per_epoch, "recipe_epochs": cfg.train.epochs,
            "ms_per_step": 1000 * seconds, "windows_per_s": batch_size / seconds,
            "peak_memory_GiB": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, action="append", required=True, help="config files, layered in order")
    parser.add_argument("--models", nargs="+", default=["branch-elm"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[None],
                        help="batch sizes to time (default: the recipe's)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="print EPOCHS_<RUN>=N: the recipe's epochs that fit this many seconds of the GPU")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--label", default="", help="a name for this configuration in the table (e.g. branch-elm-d100)")
    parser.add_argument("--ema-update", choices=["fit", "torch"], default="fit",
                        help="with [train] ema_decay: fit's weight average (default) or torch's AveragedModel update")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "training_speed.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    print(f"{'model':<18} {'params':>8} {'batch':>6} {'ms/step':>9} {'windows/s':>10} {'peak GiB':>9}")
    for kind in args.models:
        for batch_size in args.batch_sizes:
            row = {"label": args.label or kind, **time_steps(kind, args.config, batch_size, args.steps, device, args.ema_update)}
            rows.append(row)
            peak = f"{row['peak_memory_GiB']:.2f}" if row["peak_memory_GiB"] is not None else "-"
            print(f"{row['label']:<18} {row['num_parameters']:>8} {row['batch_size']:>6} {row['ms_per_step']:>9.2f} "
                  f"{row['windows_per_s']:>10.0f} {peak:>9}", flush=True)
            if args.budget_s:
                epoch_s = row["batches_per_epoch"] * row["ms_per_step"] / 1000
                row["budget_s"], row["epochs_in_budget"] = args.budget_s, max(1, int(args.budget_s // epoch_s))
    for row in rows:
        if args.budget_s:
            print(f"EPOCHS_{row['label'].upper().replace('-', '_')}={row['epochs_in_budget']}")
    write_json(args.out, {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                          "torch": torch.__version__, "configs": [str(p) for p in args.config],
                          "steps_timed": args.steps, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
