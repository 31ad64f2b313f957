"""`python -m pipelines predict`: run a checkpoint on input_spikes, write predictions to HDF5.

    python -m pipelines predict --checkpoint runs/quick/branch-elm --inputs shard_00000.h5 --out pred.h5

--checkpoint takes a checkpoint file, a run directory (its best checkpoint) or a published
elmneuron folder. --inputs is any HDF5 file with `input_spikes` (n, 1278, T) or (1278, T)
bool, e.g. a shard. The output holds `spike_probability` and `soma_voltage` (mV, decoded
with the checkpoint's own soma transform), each (n, T) float32, written atomically: a full
disk is a one-line error (exit code 2) and leaves no partial file. An existing --out is never
replaced (it may be a dataset's shard) unless --overwrite is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="checkpoint .pt, run directory, or published elmneuron folder")
    parser.add_argument("--inputs", required=True, type=Path, help="HDF5 file with input_spikes (n, 1278, T)")
    parser.add_argument("--out", required=True, type=Path, help="predictions HDF5 file to write (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="simulations per forward pass (windows per pass with --windowed: x17)")
    parser.add_argument("--windowed", action="store_true",
                        help="the [ELM] evaluation protocol: 500 ms windows with 150 ms burn-in (spec 7.3) "
                             "instead of one causal pass over each whole simulation")
    parser.add_argument("--window-ms", type=int, default=500, help="window length with --windowed")
    parser.add_argument("--burn-in-ms", type=int, default=150, help="burn-in with --windowed")


def main(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from common.files import as_output_error, atomic_hdf5, check_writable
    from simulation.dataset import read_input_spikes
    from simulation.errors import UserInputError
    from surrogate.checkpoints import load_model
    from surrogate.devices import resolve_device
    from surrogate.inference import predict_whole, predict_windowed, window_starts

    out = Path(args.out)
    if out.resolve() == Path(args.inputs).resolve():  # --overwrite would replace the inputs by their predictions
        raise UserInputError(f"--out must differ from --inputs ({args.inputs})")
    if out.exists() and not args.overwrite:  # checked before any work: it may be a dataset's shard
        what = "a directory" if out.is_dir() else "a file"
        raise UserInputError(f"--out {out} exists ({what}); choose another path, or give --overwrite to replace it")
    if out.is_dir():
        raise UserInputError(f"--out {out} is a directory; give the path of a file to write")
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.windowed and not 0 <= args.burn_in_ms < args.window_ms:
        raise UserInputError(f"need 0 <= --burn-in-ms < --window-ms, got {args.burn_in_ms}, {args.window_ms}")
    try:
        device = resolve_device(args.device)
    except UserInputError as err:
        raise UserInputError(f"--device: {err}") from None
    check_writable(out.parent)  # before the computing, not after it

    model, info = load_model(args.checkpoint, device=device)
    input_spikes = read_input_spikes(args.inputs)
    n, num_input, steps = input_spikes.shape
    transform = info["soma_transform"]
    print(f"{info['model_kind']} ({info['num_parameters']:,} parameters) from {info['source']}; "
          f"{n} simulations x {steps} ms on {device}")

    with tqdm(total=n, unit="sim", desc="predict", disable=n < 2) as bar:
        if args.windowed:
            windows_per_batch = args.batch_size * len(window_starts(steps, args.window_ms, args.burn_in_ms))
            spike_probability, soma_voltage = predict_windowed(
                model, input_spikes, transform, window_ms=args.window_ms, burn_in_ms=args.burn_in_ms,
                batch_size=windows_per_batch, device=device, progress=bar.update,
                simulations_per_read=args.batch_size,
            )
        else:
            spike_probability, soma_voltage = predict_whole(
                model, input_spikes, transform, batch_size=args.batch_size, device=device, progress=bar.update,
            )

    with as_output_error(out), atomic_hdf5(out) as f:
        f.create_dataset("spike_probability", data=spike_probability, compression="gzip", shuffle=True)
        f.create_dataset("soma_voltage", data=soma_voltage, compression="gzip", shuffle=True)
        f["soma_voltage"].attrs["units"] = "mV"
        f["soma_voltage"].attrs["soma_transform"] = json.dumps(transform.as_dict())
        f.attrs["checkpoint"] = info["source"]
        f.attrs["model_kind"] = info["model_kind"]
        f.attrs["num_parameters"] = int(info["num_parameters"])
        f.attrs["inputs"] = str(args.inputs)
        f.attrs["mode"] = (f"windowed {args.window_ms} ms, burn-in {args.burn_in_ms} ms"
                           if args.windowed else "whole simulation, one causal pass")
    print(f"wrote {out}: spike_probability, soma_voltage ({n}, {steps})")
    return 0
