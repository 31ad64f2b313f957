"""`python -m pipelines resimulate INPUT.h5 OUTPUT.h5`: simulate the cell on given input rasters.

INPUT.h5 is any HDF5 file with a dataset `input_spikes` of shape (n, 1278, T) (or (1278, T)):
a shard of this project, an imported NeuronIO shard, or rasters written by hand. Each raster
is simulated in parallel and OUTPUT.h5 is one shard of the usual schema (created_by
"resimulate"). The config is --config, else the one stored in INPUT.h5 if it is a shard,
else the defaults; its duration is replaced by T. If INPUT.h5 is a shard, its simulation
indices and master seed are kept, so rows can be compared one to one. An existing OUTPUT.h5
is replaced only with --overwrite; an input too large for this machine's memory is refused
before it is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.common import ProgressBar, add_cluster_arguments, start_cluster


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, metavar="INPUT.h5", help="HDF5 file with input_spikes (n, 1278, T)")
    parser.add_argument("output", type=Path, metavar="OUTPUT.h5", help="shard to write")
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML config (default: the config stored in INPUT.h5, else the defaults)")
    parser.add_argument("--morphology", type=Path, default=None,
                        help="cell1.asc (default: $L5PC_MORPHOLOGY, else data/morphology/cell1.asc)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT.h5 if it exists")
    add_cluster_arguments(parser)


def _config_and_provenance(args):
    """The config to simulate with, and what of INPUT.h5 to keep (indices, seed, source)."""
    import numpy as np

    from common.files import read_hdf5
    from simulation.config import SimulationConfig, load_simulation_config
    from simulation.dataset import read_attrs

    stored, kept = None, {"source_file": args.input.name}
    simulation_index = None
    with read_hdf5(args.input, "input file") as f:  # read whole by read_input_spikes already: damage here is metadata
        attrs = read_attrs(f) if "schema_version" in f.attrs else {}
        if isinstance(attrs.get("config"), dict):
            stored = attrs["config"]
        if "master_seed" in attrs:
            kept["master_seed"] = int(attrs["master_seed"])
        if "simulation_index" in f and f["simulation_index"].ndim == 1:
            simulation_index = np.asarray(f["simulation_index"][()], dtype=np.int64)
    if args.config is not None:
        config = load_simulation_config(args.config)
    elif stored is not None:
        config = SimulationConfig.from_dict(stored, where=f"{args.input} (stored config)")
    else:
        config = SimulationConfig()
    return config, simulation_index, kept


def main(args: argparse.Namespace) -> int:
    import time

    from common.errors import OutputError
    from simulation.cluster import close_client
    from simulation.dataset import read_input_spikes
    from simulation.errors import UserInputError
    from simulation.parallel import SimulationsFailed, resimulate
    from simulation.paths import resolve_morphology

    if args.output.resolve() == args.input.resolve():
        raise UserInputError(f"OUTPUT.h5 must differ from INPUT.h5 ({args.input})")
    if args.output.is_dir():
        raise OutputError(f"OUTPUT.h5 {args.output} is a directory")
    if args.output.exists() and not args.overwrite:  # before any work: it may be a dataset's shard
        raise OutputError(f"{args.output} exists; pass --overwrite to replace it")
    input_spikes = read_input_spikes(args.input)  # InputShapeError unless (n, 1278, T) 0/1
    config, simulation_index, kept = _config_and_provenance(args)
    if simulation_index is not None and simulation_index.shape != (len(input_spikes),):
        simulation_index = None
    morphology = resolve_morphology(args.morphology)
    n, _, duration = input_spikes.shape
    print(f"{args.input}: {n} input rasters x {duration} ms -> {args.output}")

    client, where = start_cluster(args, config)
    print(where, flush=True)
    started = time.perf_counter()
    try:
        with ProgressBar("resimulate") as progress:
            path = resimulate(config, input_spikes, args.output, morphology, client, progress=progress,
                              simulation_index=simulation_index, extra_attrs=kept)
    except SimulationsFailed as err:
        print(str(err), file=sys.stderr)
        print(f"nothing was written to {args.output}", file=sys.stderr)
        return 1
    finally:
        close_client(client)
    print(f"wrote {path}: {n} simulations in {time.perf_counter() - started:,.1f} s wall time")
    return 0
