"""Shared fixtures. The morphology comes from $L5PC_MORPHOLOGY (CI: ../shared) or data/morphology."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture(scope="session")
def cli_on_a_full_disk():
    """error = run(*args, max_file_bytes=N): `python -m pipelines ARGS` in a subprocess on a "full disk".

    No file the command writes may grow past N bytes (RLIMIT_FSIZE, no privileges needed):
    a write past it fails with EFBIG ("File too large") where a full disk fails with ENOSPC,
    an ordinary OSError for the code under test. Checks that the command failed as a user
    error should (exit code 2, no traceback, one `error:` line) and returns that line.
    """
    def small_disk(limit: int):
        def apply() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return apply

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))

    def run(*args: str, max_file_bytes: int) -> str:
        result = subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=root, env=env, capture_output=True,
                                text=True, timeout=300, preexec_fn=small_disk(max_file_bytes))
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr[-3000:]
        return errors[0]
    return run


@pytest.fixture
def external_dask_cluster(tmp_path):
    """address = start(*worker_options): docs/cluster.md's recipe for real, a `dask scheduler` and one
    `dask worker --nthreads 1 [worker_options]` as subprocesses on 127.0.0.1, both logging to
    tmp_path / "cluster.log"; stopped (terminated, killed if they linger) after the test."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NEURON_MODULE_OPTIONS="-nogui",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    dask_cli = str(Path(sys.executable).parent / "dask")
    processes = []

    def start(*worker_options: str) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        address = f"tcp://127.0.0.1:{port}"
        log = open(tmp_path / "cluster.log", "w")
        processes.append(subprocess.Popen(
            [dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT))
        processes.append(subprocess.Popen(
            [dask_cli, "worker", address, "--nthreads", "1", "--host", "127.0.0.1", *worker_options],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT))
        return address

    yield start
    for process in reversed(processes):
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
