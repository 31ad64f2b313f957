"""`python -m pipelines inspect PATH`: summarise a shard or a dataset directory of shards.

Prints the number of simulations, output firing (rate, silent simulations, ISI statistics),
the soma voltage and the input volume as a table, or as JSON with --json. Each shard's
schema is checked first, so a truncated or foreign file is reported by name, and shards
of different datasets in one directory (another config, seed, mechanisms or morphology)
are an error that names them.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("path", type=Path, metavar="PATH", help="a shard file (shard_00000.h5) or a directory of shards")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-inputs", action="store_true",
                        help="skip the input rasters (faster: they are the bulk of each shard)")


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def format_summary(summary: dict) -> str:
    """The summary as an aligned two-column table."""
    rows = [
        ("shards", _number(summary["shards"])),
        ("simulations", _number(summary["simulations"])),
        ("duration per simulation", f"{_number(summary['duration_ms'])} ms"),
        ("total simulated time", f"{_number(summary['total_seconds'], 1)} s"),
        ("created by", ", ".join(summary["created_by"])),
        ("", ""),
        ("output spikes", _number(summary["output_spikes"])),
        ("output rate (mean +- std)", f"{_number(summary['output_rate_hz_mean'])} +- {_number(summary['output_rate_hz_std'])} Hz"),
        ("simulations without spikes", f"{100 * summary['fraction_without_spikes']:.1f} %"),
        ("ISIs", _number(summary["isi_count"])),
        ("ISI mean", f"{_number(summary['isi_mean_ms'])} ms"),
        ("ISI CV", _number(summary["isi_cv"])),
        ("ISI min", f"{_number(summary['isi_min_ms'])} ms"),
        ("soma voltage (mean +- std)", f"{_number(summary['soma_voltage_mean_mV'], 2)} +- {_number(summary['soma_voltage_std_mV'], 2)} mV"),
    ]
    if "excitatory_spikes_per_simulation" in summary:
        rows += [
            ("", ""),
            ("excitatory input spikes / simulation", _number(summary["excitatory_spikes_per_simulation"], 1)),
            ("inhibitory input spikes / simulation", _number(summary["inhibitory_spikes_per_simulation"], 1)),
            ("excitatory rate per synapse", f"{_number(summary['excitatory_rate_hz_per_synapse'])} Hz"),
            ("inhibitory rate per synapse", f"{_number(summary['inhibitory_rate_hz_per_synapse'])} Hz"),
        ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" if name else "" for name, value in rows)


def main(args) -> int:
    from tqdm import tqdm

    from common.jsonio import dumps_json
    from simulation.dataset import resolve_shards, summarise, validate_shard
    from simulation.errors import DatasetError
    from simulation.plan import foreign_shards

    paths = resolve_shards(args.path)
    for path in paths:
        validate_shard(path)
    foreign = foreign_shards(paths)  # e.g. two simulate runs with different seeds into one directory
    if foreign:
        listed = "; ".join(f"{name}: {difference}" for name, difference in foreign.items())
        raise DatasetError(f"{args.path} mixes shards of different datasets ({listed})")
    with tqdm(total=len(paths), unit="shard", desc="inspect", disable=args.json or len(paths) < 2, leave=False) as bar:
        summary = summarise(paths, inputs=not args.no_inputs, progress=lambda _: bar.update())
    if args.json:
        print(dumps_json(summary))  # strict JSON: a NaN statistic prints as null
    else:
        print(f"{args.path}")
        print(format_summary(summary))
    return 0
