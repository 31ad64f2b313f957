"""Thin command-line entry points: `python -m pipelines VERB ...`.

Each verb is a module here with `add_arguments(parser)` and `main(args) -> int`; it
parses argv, shows progress and calls simulation/ and surrogate/.
"""
