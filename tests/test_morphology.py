"""Morphology files: `python -m pipelines morphology` (copy with a sha256 check, or a clear error offline),
and the checks that keep malformed files and non-ASCII paths away from NEURON (simulation/morphology.py)."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import pipelines.__main__ as dispatcher
from pipelines import morphology
from simulation.cell import L5PCCell
from simulation.errors import MorphologyError
from simulation.morphology import check_morphology
from simulation.paths import MORPHOLOGY_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def parse(argv):
    parser = argparse.ArgumentParser()
    morphology.add_arguments(parser)
    return parser.parse_args(argv)


def unused_localhost_url():
    """A URL on a localhost port nobody listens on: the download fails at once, as offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cell1.asc"


def test_copy_with_right_hash_then_idempotent(morphology_path, tmp_path, monkeypatch):
    # the published CRLF copies must pass too: hash after normalising line endings
    crlf_copy = tmp_path / "crlf_cell1.asc"
    crlf_copy.write_bytes(morphology_path.read_bytes().replace(b"\n", b"\r\n"))
    dest = tmp_path / "data" / "morphology" / "cell1.asc"
    monkeypatch.setenv(MORPHOLOGY_ENV, str(crlf_copy))
    assert morphology.main(parse(["--dest", str(dest)])) == 0
    assert dest.read_bytes() == morphology_path.read_bytes().replace(b"\r\n", b"\n")
    assert morphology.sha256_of(dest.read_bytes()) == morphology.MORPHOLOGY_SHA256
    assert [p.name for p in dest.parent.iterdir()] == ["cell1.asc"]  # no temp file left behind

    # already in place: nothing is read from the source (which no longer exists)
    mtime = dest.stat().st_mtime_ns
    crlf_copy.unlink()
    assert morphology.main(parse(["--dest", str(dest)])) == 0
    assert dest.stat().st_mtime_ns == mtime


def test_wrong_hash_is_refused_and_nothing_written(morphology_path, tmp_path, monkeypatch):
    tampered = tmp_path / "tampered.asc"
    tampered.write_bytes(morphology_path.read_bytes().replace(b"CellBody", b"Cellbody", 1))
    dest = tmp_path / "out" / "cell1.asc"
    monkeypatch.setenv(MORPHOLOGY_ENV, str(tampered))
    with pytest.raises(MorphologyError, match="sha256"):
        morphology.main(parse(["--dest", str(dest)]))
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_a_dest_holding_anything_else_is_refused_and_kept(morphology_path, tmp_path, monkeypatch, capsys):
    """--dest naming a directory ended with a traceback, and naming another file replaced it by cell1.asc."""
    monkeypatch.setenv(MORPHOLOGY_ENV, str(morphology_path))
    other = tmp_path / "notes.txt"
    other.write_text("someone's notes\n")
    for dest, what in ((tmp_path, "a directory"), (other, "a file that is not the Hay et al. cell1.asc")):
        assert dispatcher.main(["morphology", "--dest", str(dest)]) == 2
        assert capsys.readouterr().err == f"error: --dest {dest} exists and is {what}; remove it or choose another --dest\n"
    assert other.read_text() == "someone's notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no temporary left


def test_offline_without_source_gives_a_clear_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv(MORPHOLOGY_ENV, raising=False)
    dest = tmp_path / "cell1.asc"
    with pytest.raises(MorphologyError) as info:
        morphology.main(parse(["--url", unused_localhost_url(), "--dest", str(dest),
                               "--local-copy", str(tmp_path / "no_such_copy.asc")]))
    message = str(info.value)
    assert "\n" not in message
    assert MORPHOLOGY_ENV in message and str(dest) in message
    assert not dest.exists()


def test_a_copy_beside_the_project_is_used_before_any_download(morphology_path, tmp_path, monkeypatch):
    # a fresh clone with ../shared beside it and no network: `make all` needs no variable set
    monkeypatch.delenv(MORPHOLOGY_ENV, raising=False)
    dest = tmp_path / "cell1.asc"
    assert morphology.main(parse(["--url", unused_localhost_url(), "--dest", str(dest),
                                  "--local-copy", str(morphology_path)])) == 0
    assert morphology.sha256_of(dest.read_bytes()) == morphology.MORPHOLOGY_SHA256


# --------------------------------------------------------------------------- malformed files never reach NEURON

SWC = """# id type x y z radius parent
1 1 0 0 0 10 -1
2 1 0 -10 0 10 1
3 3 0 10 0 1 1
4 3 0 20 0 1 3
5 4 10 0 0 1 1
6 4 20 0 0 1 5
"""


def cli_simulate(tmp_path, morphology_file, capsys):
    """`simulate` with a tiny config: (exit code, stderr); a bad morphology must stop it before any worker."""
    config = tmp_path / "tiny.toml"
    config.write_text("[inputs]\nduration_ms = 100\n\n[dataset]\nn_shards = 1\nsimulations_per_shard = 1\n")
    code = dispatcher.main(["simulate", "--config", str(config), "--out", str(tmp_path / "data"),
                            "--morphology", str(morphology_file), "--workers", "1"])
    captured = capsys.readouterr()
    assert "local cluster" not in captured.out  # refused before starting workers
    return code, captured.err


@pytest.mark.timeout(120)
def test_truncated_asc_is_an_error_not_a_hang(morphology_path, tmp_path, capsys):
    """Issue 9, defect 2: `head -c 194954 cell1.asc` made NEURON's Import3d loop forever."""
    truncated = tmp_path / "t.asc"
    truncated.write_bytes(morphology_path.read_bytes()[:194954])
    with pytest.raises(MorphologyError, match=r"t.asc: 9 parentheses not closed, the outermost opened on line 2955"):
        check_morphology(truncated)
    with pytest.raises(MorphologyError, match="truncated file"):
        L5PCCell(truncated)  # the library checks too, before NEURON reads a byte
    code, err = cli_simulate(tmp_path, truncated, capsys)
    assert code == 2 and err.startswith("error: morphology") and "not closed" in err and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()


def test_asc_without_dendrites_or_with_a_stray_parenthesis_is_refused(morphology_path, tmp_path):
    text = morphology_path.read_text(encoding="latin-1")
    assert check_morphology(morphology_path) == morphology_path
    cases = {
        "no dendrites": text.replace("(Dendrite)", "(Marker)").replace("(Apical)", "(Marker)"),
        "no cell body": text.replace("(CellBody)", "(Marker)"),
        "closes nothing": text + "\n)\n",
    }
    for expected, content in cases.items():
        path = tmp_path / "case.asc"
        path.write_text(content, encoding="latin-1")
        with pytest.raises(MorphologyError, match=expected):
            check_morphology(path)
    # parentheses inside comments and strings do not count
    path.write_text(text + '\n; a comment with ( unbalanced\n("a string with ( too" (Marker))\n', encoding="latin-1")
    assert check_morphology(path) == path


@pytest.mark.parametrize("change, expected", [
    ("6 4 20 0 0 1 5", "line 7: sample 6 has parent 99, which does not exist"),
    ("5 4 10 0 0 1 1", "is its own ancestor"),
    ("1 1 0 0 0 10 -1", "defined twice"),
    ("3 3 0 10 0 1 1", "not numbers"),
])
def test_swc_topology_is_checked_before_neuron(tmp_path, change, expected):
    """Issue 9, defect 5: a missing parent segfaulted the worker (the user saw KilledWorker)."""
    good = tmp_path / "good.swc"
    good.write_text(SWC)
    assert check_morphology(good) == good
    broken = {"6 4 20 0 0 1 5": "6 4 20 0 0 1 99",  # parent 99 is not a sample
              "5 4 10 0 0 1 1": "5 4 10 0 0 1 6",  # 5 -> 6 -> 5: a cycle without a root
              "1 1 0 0 0 10 -1": "1 1 0 0 0 10 -1\n2 3 1 1 1 1 1",  # id 2 twice
              "3 3 0 10 0 1 1": "3 3 0 ten 0 1 1"}[change]
    bad = tmp_path / "bad.swc"
    bad.write_text(SWC.replace(change, broken))
    with pytest.raises(MorphologyError, match=expected):
        check_morphology(bad)


def test_swc_with_a_missing_parent_stops_simulate_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.swc"
    bad.write_text(SWC.replace("6 4 20 0 0 1 5", "6 4 20 0 0 1 99"))
    code, err = cli_simulate(tmp_path, bad, capsys)
    assert code == 2 and "sample 6 has parent 99, which does not exist" in err and err.count("\n") == 1, err


# --------------------------------------------------------------------------- paths NEURON cannot take

def test_a_morphology_under_a_non_ascii_path_builds_the_cell(morphology_path, tmp_path):
    """Issue 9, defect 7: NEURON's hoc strings are ASCII; the cell is read through an ASCII-named copy."""
    directory = tmp_path / "mörphologie"
    directory.mkdir()
    copy = directory / "cellüle1.asc"
    shutil.copyfile(morphology_path, copy)
    code = f"from simulation.cell import L5PCCell; print(L5PCCell({str(copy)!r}).segments.n_segments)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "NEURON_MODULE_OPTIONS": "-nogui"})
    assert result.returncode == 0 and result.stdout.strip().endswith("639"), result.stderr[-2000:]


def test_a_project_under_a_non_ascii_path_loads_its_mechanisms(tmp_path):
    """Issue 9, defect 7: the build under build/mechanisms/ could not be loaded from a non-ASCII project path.

    The project is copied to a non-ASCII directory; its builds then live in ~/.cache (an ASCII
    HOME here, holding a copy of the build made for this checkout, so nothing is compiled).
    """
    from simulation.mechanisms import compile_mechanisms

    project = tmp_path / "prøjekt"
    for package in ("common", "simulation", "pipelines"):
        shutil.copytree(PROJECT_ROOT / package, project / package, ignore=shutil.ignore_patterns("__pycache__", "gpu"))
    home = tmp_path / "home"
    build = compile_mechanisms()
    shutil.copytree(build, home / ".cache" / "l5pc-surrogate" / "mechanisms" / build.name)
    env = {**os.environ, "PYTHONPATH": str(project), "HOME": str(home), "NEURON_MODULE_OPTIONS": "-nogui"}
    env.pop("L5PC_MECHANISMS_CACHE", None)
    code = ("import simulation.mechanisms as m; m.load_mechanisms(); from neuron import h; "
            "print(m.loaded_build(), hasattr(h, 'AmpaNmda'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith(f"{home}/.cache/l5pc-surrogate/mechanisms/{build.name} True"), result.stdout

    env["L5PC_MECHANISMS_CACHE"] = str(tmp_path / "cäche")  # a cache named explicitly must be ASCII: one line, exit 2
    result = subprocess.run([sys.executable, "-m", "pipelines", "mechanisms"], cwd=project, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 2 and result.stderr.startswith("error: $L5PC_MECHANISMS_CACHE"), result.stderr
    assert "not an ASCII path" in result.stderr and result.stderr.count("\n") == 1
