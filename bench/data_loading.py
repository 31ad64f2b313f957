"""How fast the training loader produces windows, against how fast a model consumes them.

    python bench/data_loading.py [--data DIR] [--workers 0 2 4 8] [--batch-size 32] [--batches 200]

Measures surrogate.data.TrainingWindows through its DataLoader (batches of 500-ms windows,
bool inputs, pinned memory on CUDA) for several worker counts, the cost of decompressing
one simulation, the bit-packing of one simulation's inputs against np.packbits along the
stored axis, the time to load every simulation of the shards into DeviceWindows (what `fit`
does before its first step with [data] windows_on_device; --device-windows-workers), and,
where CUDA is present, one training step (forward + backward + Adam) of each model at the
same batch, so the rates can be compared. Without --data it writes a synthetic dataset
(random rasters, timing only) to a temporary directory. Prints a table and writes
bench/results/data_loading.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.jsonio import write_json  # noqa: E402
import surrogate.data  # noqa: E402
from simulation.dataset import open_shard, shard_path, write_shard  # noqa: E402
from surrogate.config import DataConfig  # noqa: E402
from surrogate.data import (DeviceWindows, SimulationCache, TrainingWindows, catalog_simulations,  # noqa: E402
                            find_shards, pack_input_spikes, training_loader, unpack_input_spikes)

N_SEGMENTS = 639


def write_timing_dataset(directory: Path, n_shards: int, simulations_per_shard: int, duration_ms: int,
                         density: float = 0.004) -> None:
    """Random input rasters (about NeuronIO's spike density) and flat traces: for timing only."""
    rng = np.random.default_rng(0)
    segments = {"index": np.arange(N_SEGMENTS), "section": np.array(["dend[0]"] * N_SEGMENTS),
                "x": np.full(N_SEGMENTS, 0.5), "region": np.array(["basal"] * N_SEGMENTS),
                "distance_um": np.zeros(N_SEGMENTS), "length_um": np.ones(N_SEGMENTS)}
    for shard in range(n_shards):
        n = simulations_per_shard
        inputs = rng.random((n, 2 * N_SEGMENTS, duration_ms), dtype=np.float32) < density
        soma = np.full((n, duration_ms), -70.0, dtype=np.float32)
        write_shard(shard_path(directory, shard), input_spikes=inputs, soma_voltage=soma,
                    output_spikes=np.zeros((n, duration_ms), bool), output_spike_times=[np.zeros(0)] * n,
                    nexus_voltage=soma, simulation_index=np.arange(n) + shard * n, segments=segments,
                    attrs={"config": {"timing_only": True}, "master_seed": 0, "shard_index": shard,
                           "created_by": "simulate", "neuron_version": "none", "mechanisms_sha256": "-",
                           "morphology_sha256": "-"})


def time_decompression(paths, data: DataConfig, count: int) -> float:
    """Seconds to read and decompress one simulation into a time-major in-memory array."""
    refs = catalog_simulations(paths)[:count]
    cache = SimulationCache(data, capacity_bytes=0)
    start = time.perf_counter()
    for i, ref in enumerate(refs):
        cache.load(i, [ref])
        cache.release(i)
    seconds = (time.perf_counter() - start) / len(refs)
    cache.close()
    return seconds


def packbits_axis0(raster: np.ndarray) -> np.ndarray:
    """The reference packing: np.packbits along the stored (strided) input axis; the same bytes as pack_input_spikes."""
    return np.ascontiguousarray(np.packbits(raster, axis=0).T)


PACKINGS = {"pack_input_spikes": pack_input_spikes, "np_packbits_axis0": packbits_axis0}


def time_packing(paths, count: int) -> dict:
    """ms to bit-pack one stored (inputs, T) raster, per packing of PACKINGS."""
    ref = catalog_simulations(paths)[0]
    with open_shard(ref.shard) as f:
        raster = f["input_spikes"][ref.index]
    if not np.array_equal(pack_input_spikes(raster), packbits_axis0(raster)):
        raise SystemExit("pack_input_spikes differs from np.packbits")
    timings = {}
    for name, pack in PACKINGS.items():
        pack(raster)
        start = time.perf_counter()
        for _ in range(count):
            pack(raster)
        timings[name] = 1000 * (time.perf_counter() - start) / count
    return timings


def time_device_windows(paths, data: DataConfig, device: torch.device, packing: str) -> dict:
    """Seconds to read, decompress and pack every simulation of `paths` into DeviceWindows, with the
    library's packing or, for comparison in the same run, the reference one (swapped in for the call;
    forked loader workers inherit it)."""
    library_pack = surrogate.data.pack_input_spikes
    surrogate.data.pack_input_spikes = PACKINGS[packing]
    try:
        start = time.perf_counter()
        windows = DeviceWindows(paths, data, batch_size=1, batches_per_epoch=1, seed=0, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    finally:
        surrogate.data.pack_input_spikes = library_pack
    n = windows.num_simulations
    windows.close()
    return {"packing": packing, "workers": data.loader_workers, "simulations": n, "load_s": seconds,
            "simulations_per_s": n / seconds}


def time_loader(paths, data: DataConfig, batch_size: int, batches: int, device: torch.device) -> dict:
    """Windows/s while the caches fill (cold: the first `batches`) and once they hold the data (warm: the next)."""
    dataset = TrainingWindows(paths, data, batch_size, 2 * batches + 1, seed=0)
    loader = iter(training_loader(dataset, pin_memory=device.type == "cuda"))
    marks = [time.perf_counter()]
    for i in range(2 * batches + 1):
        packed, spikes, soma = next(loader)
        inputs = unpack_input_spikes(packed.to(device, non_blocking=True), dataset.num_inputs)
        if i in (0, batches, 2 * batches):
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks.append(time.perf_counter())
    del loader
    cold, warm = marks[2] - marks[1], marks[3] - marks[2]
    return {"workers": data.loader_workers, "streams": data.streams, "first_batch_s": marks[1] - marks[0],
            "cold_windows_per_s": batches * batch_size / cold, "warm_windows_per_s": batches * batch_size / warm,
            "warm_ms_per_batch": 1000 * warm / batches}


def time_model_steps(batch_size: int, window_ms: int, device: torch.device, steps: int = 20) -> list[dict]:
    """One Adam step (forward, [ELM] loss, backward) per batch of random windows, per model."""
    from surrogate.registry import build_model
    from surrogate.config import TrainConfig
    from surrogate.train import resolve_amp, surrogate_loss

    models = [("elm", {"num_memory": 100, "mlp_activation": "silu"}),
              ("branch-elm", {"num_memory": 20}),
              ("tcn", {})]  # published 7 x 128
    train = TrainConfig()
    results = []
    x = (torch.rand(batch_size, window_ms, 2 * N_SEGMENTS, device=device) < 0.004).float()
    spikes = (torch.rand(batch_size, window_ms, device=device) < 0.01).float()
    soma = torch.randn(batch_size, window_ms, device=device)
    for kind, config in models:
        model = build_model(kind, config).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        amp = resolve_amp("auto", kind, device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")
        for i in range(steps + 3):
            if i == 3:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            with autocast:
                output = model(x)
            loss = surrogate_loss(output, spikes, soma, train)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = 1000 * (time.perf_counter() - start) / steps
        results.append({"model": kind, "config": config, "amp": amp, "ms_per_step": ms,
                        "windows_per_s": batch_size * 1000 / ms})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset directory (default: a synthetic one, timing only)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4, 8])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=300, help="batches timed cold, then as many warm")
    parser.add_argument("--simulations-per-load", type=int, default=16)
    parser.add_argument("--device-windows-workers", type=int, nargs="*", default=[],
                        help="time loading every simulation of --data into DeviceWindows with these worker counts")
    parser.add_argument("--no-model-steps", action="store_true", help="skip the model-step timings")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "data_loading.json")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data
        if data_dir is None:
            data_dir = Path(tmp)
            write_timing_dataset(data_dir, n_shards=4, simulations_per_shard=16, duration_ms=6000)
        paths = find_shards(data_dir)
        base = dict(streams=args.streams, simulations_per_load=args.simulations_per_load, load_fraction=0.5)
        decompress_s = time_decompression(paths, DataConfig(**base), count=8)
        pack_ms = time_packing(paths, count=20)
        device_windows = [time_device_windows(paths, DataConfig(**base, loader_workers=w), device, packing)
                          for w in args.device_windows_workers if args.streams % max(w, 1) == 0
                          for packing in PACKINGS]
        loader = []
        for workers in args.workers:
            if args.streams % max(workers, 1):
                continue
            data = DataConfig(**base, loader_workers=workers)
            loader.append(time_loader(paths, data, args.batch_size, args.batches, device))
            print(f"workers {workers}: {loader[-1]['cold_windows_per_s']:.0f} windows/s cold, "
                  f"{loader[-1]['warm_windows_per_s']:.0f} warm", flush=True)

    steps = [] if args.no_model_steps or device.type != "cuda" else time_model_steps(args.batch_size, 500, device)

    print(f"\none simulation (1278 x 6000, gzip) read + decompressed + transposed: {1000 * decompress_s:.1f} ms")
    print(f"bit-packing its inputs: pack_input_spikes {pack_ms['pack_input_spikes']:.2f} ms, np.packbits along "
          f"axis 0 {pack_ms['np_packbits_axis0']:.2f} ms ({pack_ms['np_packbits_axis0'] / pack_ms['pack_input_spikes']:.1f}x)")
    for row in device_windows:
        print(f"DeviceWindows load, {row['workers']} workers, {row['packing']}: {row['simulations']} simulations in "
              f"{row['load_s']:.1f} s ({row['simulations_per_s']:.1f}/s)")
    print(f"\nloader, batch {args.batch_size} x 500 ms, {args.streams} streams, "
          f"{args.simulations_per_load} simulations per load, device {device}")
    print("cold: caches filling (each simulation decompressed on first use); warm: all cached")
    print(f"{'workers':>8} {'cold windows/s':>15} {'warm windows/s':>15} {'warm ms/batch':>14} {'first batch s':>14}")
    for row in loader:
        print(f"{row['workers']:>8} {row['cold_windows_per_s']:>15.0f} {row['warm_windows_per_s']:>15.0f} "
              f"{row['warm_ms_per_batch']:>14.2f} {row['first_batch_s']:>14.2f}")
    if steps:
        print(f"\none training step on {torch.cuda.get_device_name()}, batch {args.batch_size} x 500 ms")
        print(f"{'model':>12} {'amp':>5} {'ms/step':>8} {'windows/s':>10}")
        for row in steps:
            print(f"{row['model']:>12} {row['amp']:>5} {row['ms_per_step']:>8.2f} {row['windows_per_s']:>10.0f}")

    result = {
        "batch_size": args.batch_size, "window_ms": 500, "streams": args.streams,
        "simulations_per_load": args.simulations_per_load, "data": str(args.data or "synthetic (timing only)"),
        "device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "cpu_count": __import__("os").cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
        "decompress_one_simulation_ms": 1000 * decompress_s, "pack_ms": pack_ms, "device_windows_load": device_windows,
        "loader": loader, "model_steps": steps,
    }
    write_json(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
