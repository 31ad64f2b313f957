"""`python -m pipelines VERB [options]`: dispatch to pipelines/<verb>.py.

Errors caused by the user's input (common.errors.UserInputError) are printed on
one line as `error: ...` and exit with code 2, as is a third-party package that this
Python cannot import (an install problem, not a bug); anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# our own top-level packages: a module of these that cannot be imported is a bug and keeps its traceback
OWN_PACKAGES = ("common", "simulation", "surrogate", "pipelines")

# verb -> (module, one-line help)
VERBS = {
    "morphology": ("pipelines.morphology", "put the L5PC morphology at data/morphology/cell1.asc"),
    "mechanisms": ("pipelines.mechanisms", "compile the NMODL mechanisms (cached)"),
    "simulate": ("pipelines.simulate", "simulate a dataset of HDF5 shards in parallel with dask"),
    "resimulate": ("pipelines.resimulate", "simulate the cell on given input_spikes"),
    "inspect": ("pipelines.inspect", "summarise a dataset (shards, rates, ISI stats)"),
    "import-neuronio": ("pipelines.import_neuronio", "convert original NeuronIO pickles into HDF5 shards"),
    "fit": ("pipelines.fit", "train a surrogate (elm, branch-elm, tcn, lstm)"),
    "fit-task": ("pipelines.fit_task", "train ELM / Branch-ELM / LSTM on a long-horizon task (ListOps, Pathfinder, SHD-Adding)"),
    "evaluate": ("pipelines.evaluate", "score checkpoints on the test split, write JSON"),
    "predict": ("pipelines.predict", "run a checkpoint on input_spikes, write predictions"),
    "validate": ("pipelines.validate", "score the published ELM checkpoints on fresh simulations"),
    "report": ("pipelines.report", "write reports/report.md and figures"),
    "evaluate-task": ("pipelines.evaluate_task", "score fit-task checkpoints on a long-horizon task's split, write JSON"),
    "prepare-task": ("pipelines.prepare_task", "make a long-horizon task's data (listops, pathfinder32/128, shd-adding)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (module_name, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # argument definitions are cheap; import lazily so `simulate` never imports torch
        importlib.import_module(module_name).add_arguments(p)
    return parser


def missing_package_message(err: ModuleNotFoundError) -> str | None:
    """One line naming a missing third-party package and how to install it; None for our own modules."""
    package = (err.name or "").split(".")[0]
    if not package or package in OWN_PACKAGES:
        return None
    return (f"the Python package '{package}' cannot be imported by {sys.executable}; install the project's "
            f"dependencies: `make install`, then `source .venv/bin/activate`")


def main(argv: list[str] | None = None) -> int:
    from common.errors import UserInputError

    try:
        args = build_parser().parse_args(argv)
        module = importlib.import_module(args._module)
        return int(module.main(args) or 0)
    except ModuleNotFoundError as err:
        message = missing_package_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished shards and checkpoints are kept, re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
