"""Shared fixtures. The morphology comes from $L5PC_MORPHOLOGY (CI: ../shared) or data/morphology."""

from __future__ import annotations

import pytest

from simulation.paths import resolve_morphology


@pytest.fixture(scope="session")
def morphology_path():
    return resolve_morphology(None)


@pytest.fixture(scope="session")
def h():
    """NEURON with the project's mechanisms, loaded once per test process."""
    from simulation.mechanisms import load_mechanisms

    load_mechanisms()
    from neuron import h

    h.load_file("stdrun.hoc")
    return h
