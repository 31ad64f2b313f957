"""The command line itself (pipelines/__main__.py): what listing the verbs imports, and a missing package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipelines.__main__ import missing_package_message

REPO = Path(__file__).resolve().parents[1]

# runs the command line in a Python that cannot import torch, as on a simulation-only machine
WITHOUT_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch':
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
from pipelines.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_building_the_parser_imports_no_heavy_package():
    # every verb's arguments are defined at start-up: `simulate` must not pay for (or need) torch
    probe = ("import sys; from pipelines.__main__ import build_parser; build_parser(); "
             "print(sorted(m for m in ('torch', 'neuron', 'dask', 'distributed', 'h5py') if m in sys.modules))")
    result = _python("-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_missing_package_is_one_line_and_exit_2(tmp_path):
    result = _python("-c", WITHOUT_TORCH, "fit", "--model", "elm", "--config", "configs/quick.toml",
                     "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the Python package 'torch' cannot be imported")
    assert "make install" in lines[0]
    assert not (tmp_path / "run").exists()


def test_verbs_that_need_no_torch_still_run_without_it():
    result = _python("-c", WITHOUT_TORCH, "simulate", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: python -m pipelines simulate" in result.stdout


def test_our_own_missing_module_is_a_bug_not_an_install_problem():
    assert missing_package_message(ModuleNotFoundError("x", name="surrogate.no_such_module")) is None
    assert missing_package_message(ModuleNotFoundError("x", name=None)) is None
    assert "'h5py'" in missing_package_message(ModuleNotFoundError("x", name="h5py._hl"))
