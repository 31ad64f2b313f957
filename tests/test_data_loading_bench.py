"""bench/data_loading.py: packs stored rasters both ways to the same bytes and times DeviceWindows with each."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from surrogate.config import DataConfig
from surrogate.data import find_shards

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("data_loading_bench", ROOT / "bench" / "data_loading.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_device_windows_load_is_timed_with_each_packing_and_the_library_one_restored(tmp_path):
    bench.write_timing_dataset(tmp_path, n_shards=2, simulations_per_shard=3, duration_ms=1200)
    paths = find_shards(tmp_path)
    timings = bench.time_packing(paths, count=2)  # exits if the two packings differ
    assert set(timings) == {"pack_input_spikes", "np_packbits_axis0"} and all(ms > 0 for ms in timings.values())
    data = DataConfig(streams=2, loader_workers=0)
    rows = [bench.time_device_windows(paths, data, torch.device("cpu"), packing) for packing in bench.PACKINGS]
    assert [(row["packing"], row["simulations"]) for row in rows] == [("pack_input_spikes", 6), ("np_packbits_axis0", 6)]
    assert bench.surrogate.data.pack_input_spikes is bench.pack_input_spikes  # the library's packing is back


def test_pack_input_spikes_matches_numpy_packbits_on_a_stored_raster(tmp_path):
    bench.write_timing_dataset(tmp_path, n_shards=1, simulations_per_shard=1, duration_ms=300)
    with bench.open_shard(find_shards(tmp_path)[0]) as f:
        raster = f["input_spikes"][0]
    assert raster.any()
    np.testing.assert_array_equal(bench.pack_input_spikes(raster), bench.packbits_axis0(raster))
