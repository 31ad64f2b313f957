"""Re-simulating given input rasters: `python -m pipelines resimulate INPUT.h5 OUTPUT.h5`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import pipelines.__main__ as dispatcher
from pipelines.resimulate import _config_and_provenance
from simulation.config import SimulationConfig, load_simulation_config
from simulation.dataset import read_shard, validate_shard
from simulation.cluster import close_client, make_client
from simulation.parallel import generate_dataset, resimulate
from test_common import damage_hdf5_groups

PROJECT_ROOT = Path(__file__).resolve().parents[1]

TINY = """
[solver]
method = "fixed"
dt_ms = 0.1

[inputs]
duration_ms = 250

[dataset]
n_shards = 1
simulations_per_shard = 2
seed = 11
"""


@pytest.fixture(scope="module")
def client():
    client = make_client(None, n_workers=2)
    yield client
    close_client(client)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, client, morphology_path):
    """A one-shard dataset of 2 simulations: (config path, shard path)."""
    directory = tmp_path_factory.mktemp("simulated")
    config_path = directory / "tiny.toml"
    config_path.write_text(TINY)
    [shard] = generate_dataset(load_simulation_config(config_path), directory / "data", morphology_path, client)
    return config_path, shard


def write_inputs(path: Path, input_spikes: np.ndarray, name: str = "input_spikes") -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=input_spikes)
    return path


def test_cli_resimulating_a_shard_reproduces_it(simulated, tmp_path):
    _, shard_path = simulated
    out = tmp_path / "again.h5"
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), NEURON_MODULE_OPTIONS="-nogui")
    result = subprocess.run([sys.executable, "-m", "pipelines", "resimulate", str(shard_path), str(out), "--workers", "2"],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    validate_shard(out)
    original, again = read_shard(shard_path), read_shard(out)
    # same inputs, same (stored) config, same cell: the same numbers
    np.testing.assert_array_equal(again.input_spikes, original.input_spikes)
    np.testing.assert_array_equal(again.soma_voltage, original.soma_voltage)
    np.testing.assert_array_equal(again.nexus_voltage, original.nexus_voltage)
    np.testing.assert_array_equal(again.output_spikes, original.output_spikes)
    np.testing.assert_array_equal(again.simulation_index, original.simulation_index)
    assert again.attrs["created_by"] == "resimulate"
    assert again.attrs["master_seed"] == 11 and again.attrs["source_file"] == shard_path.name


def test_resimulate_rasters_from_any_hdf5_file(simulated, client, tmp_path, morphology_path):
    config_path, shard_path = simulated
    original = read_shard(shard_path)
    # a hand-made file: the two rasters in reverse order, as 0/1 integers, cut to 200 ms
    source = write_inputs(tmp_path / "rasters.h5", original.input_spikes[::-1, :, :200].astype(np.uint8))
    args = argparse.Namespace(input=source, config=config_path)
    config, simulation_index, kept = _config_and_provenance(args)
    assert simulation_index is None and kept == {"source_file": "rasters.h5"}

    from simulation.dataset import read_input_spikes

    out = resimulate(config, read_input_spikes(source), tmp_path / "out.h5", morphology_path, client, extra_attrs=kept)
    shard = read_shard(out)
    assert shard.n_simulations == 2 and shard.duration_ms == 200
    np.testing.assert_array_equal(shard.simulation_index, [0, 1])
    assert shard.attrs["master_seed"] == -1 and shard.attrs["config"]["inputs"]["duration_ms"] == 200
    # the first 200 ms do not depend on what comes later: row k equals the original's row 1 - k
    np.testing.assert_array_equal(shard.soma_voltage, original.soma_voltage[::-1, :200])


def test_config_comes_from_the_shard_or_the_defaults(simulated, tmp_path):
    _, shard_path = simulated
    config, simulation_index, kept = _config_and_provenance(argparse.Namespace(input=shard_path, config=None))
    assert config.solver.dt_ms == 0.1 and config.dataset.seed == 11
    np.testing.assert_array_equal(simulation_index, [0, 1])
    raw = write_inputs(tmp_path / "raw.h5", np.zeros((1, 1278, 10), dtype=bool))
    config, _, _ = _config_and_provenance(argparse.Namespace(input=raw, config=None))
    assert config == SimulationConfig()


@pytest.mark.parametrize("make_file, message", [
    (lambda p: write_inputs(p, np.zeros((2, 1000, 50), dtype=bool)), "has shape (2, 1000, 50), expected (n, 1278, T)"),
    (lambda p: write_inputs(p, np.zeros((2, 1278, 50), dtype=bool), name="spikes"), "no dataset 'input_spikes'"),
    (lambda p: write_inputs(p, np.full((1, 1278, 50), 2, dtype=np.uint8)), "must hold 0/1 spikes"),
    (lambda p: p.write_bytes(b"not an HDF5 file"), "not a readable HDF5 file"),
    (lambda p: write_inputs(p, np.zeros((0, 1278, 50), dtype=bool)), "has shape (0, 1278, 50): no simulations"),
    (lambda p: (write_inputs(p, np.zeros((2, 1278, 50), dtype=bool)), damage_hdf5_groups(p)),
     "in.h5: cannot read input file (corrupt?)"),
])
def test_cli_rejects_bad_input_files(tmp_path, capsys, make_file, message):
    source = tmp_path / "in.h5"
    make_file(source)
    code = dispatcher.main(["resimulate", str(source), str(tmp_path / "out.h5")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out.h5").exists()


def test_cli_refuses_to_overwrite_an_existing_file_unless_asked(simulated, tmp_path):
    """Issue 9, defect 9: resimulate replaced any existing OUTPUT.h5 silently, even a dataset's shard."""
    _, shard_path = simulated
    existing = tmp_path / "shard_00000.h5"
    existing.write_bytes(b"a file someone wants to keep")
    command = [sys.executable, "-m", "pipelines", "resimulate", str(shard_path), str(existing), "--workers", "1"]
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), NEURON_MODULE_OPTIONS="-nogui")
    refused = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == f"error: {existing} exists; pass --overwrite to replace it\n"
    assert existing.read_bytes() == b"a file someone wants to keep"
    replaced = subprocess.run(command + ["--overwrite"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
    assert replaced.returncode == 0, replaced.stderr
    np.testing.assert_array_equal(read_shard(existing).soma_voltage, read_shard(shard_path).soma_voltage)


def test_cli_refuses_an_input_too_large_for_memory_before_reading_it(tmp_path, capsys):
    """Issue 9, defect 7: T = 100 million ms needs 119 GiB as a raster; the file holding it is tiny."""
    source = tmp_path / "huge.h5"
    with h5py.File(source, "w") as f:  # never written: HDF5 stores no chunk, the file stays small
        f.create_dataset("input_spikes", shape=(1, 1278, 100_000_000), dtype=bool, chunks=(1, 1278, 10_000),
                         compression="gzip")
    assert source.stat().st_size < 100_000
    code = dispatcher.main(["resimulate", str(source), str(tmp_path / "out.h5")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "has shape (1, 1278, 100000000): reading it needs 119.0 GiB of memory" in err
