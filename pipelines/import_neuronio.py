"""`python -m pipelines import-neuronio SRC DST`: convert original NeuronIO pickles into HDF5 shards.

SRC is one NeuronIO pickle or a directory of them (*.p, *.pkl); each becomes
DST/shard_NNNNN.h5 (in sorted file order) with created_by = "import-neuronio". Pickles are
read with a restricted unpickler that refuses anything but containers and numpy arrays.
Re-running the same command skips the shards already converted.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("source", type=Path, metavar="SRC", help="a NeuronIO pickle file or a directory of them")
    parser.add_argument("destination", type=Path, metavar="DST", help="output directory for the shards")
    parser.add_argument("--compression-level", type=int, default=4, choices=range(10), metavar="0-9",
                        help="gzip level of input_spikes and segment_voltages (default 4)")
    parser.add_argument("--no-segment-voltages", action="store_true",
                        help="drop the 639 dendritic voltage traces (they dominate the shard size)")


def main(args) -> int:
    from tqdm import tqdm

    from simulation.neuronio_import import find_neuronio_pickles, import_neuronio

    files = find_neuronio_pickles(args.source)
    counts = {"written": 0, "skipped": 0}
    with tqdm(total=len(files), unit="file", desc="import-neuronio") as bar:
        def progress(source, shard, status):
            counts[status] += 1
            bar.set_postfix_str(f"{source.name} -> {shard.name} ({status})")
            bar.update()

        import_neuronio(
            args.source,
            args.destination,
            compression_level=args.compression_level,
            keep_segment_voltages=not args.no_segment_voltages,
            progress=progress,
        )
    print(f"{counts['written']} shard(s) written, {counts['skipped']} already present, in {args.destination}")
    return 0
