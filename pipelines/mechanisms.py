"""`python -m pipelines mechanisms [--coreneuron]`: compile the NMODL mechanisms into the build cache.

Nobody needs to run this by hand (every simulation compiles on first use); it is here to
build ahead of time, e.g. before starting many dask workers, and to show where the build is.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coreneuron",
        action="store_true",
        help="build for CoreNEURON as well (`nrnivmodl -coreneuron`; needs a C++ compiler)",
    )
    parser.add_argument(
        "--cache",
        metavar="DIR",
        default=None,
        help="build cache root (default: $L5PC_MECHANISMS_CACHE, else build/mechanisms/)",
    )


def main(args: argparse.Namespace) -> int:
    import time

    from simulation.mechanisms import build_directory, build_info, compile_mechanisms, is_built

    cached = is_built(build_directory(coreneuron=args.coreneuron, root=args.cache))
    if not cached:
        print("compiling mechanisms with nrnivmodl" + (" -coreneuron" if args.coreneuron else "") + " ...", flush=True)
    started = time.perf_counter()
    build_dir = compile_mechanisms(coreneuron=args.coreneuron, root=args.cache)
    info = build_info(build_dir)
    print(build_dir)
    if cached:
        print(f"cached (built earlier in {info['compile_seconds']:.1f} s; NEURON {info['neuron_version']})")
    else:
        print(f"compiled in {time.perf_counter() - started:.1f} s (NEURON {info['neuron_version']})")
    return 0
