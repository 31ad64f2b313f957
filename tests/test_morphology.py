"""`python -m pipelines morphology`: copy from $L5PC_MORPHOLOGY with a sha256 check, or a clear error offline."""

from __future__ import annotations

import argparse
import socket

import pytest

from pipelines import morphology
from simulation.errors import MorphologyError
from simulation.paths import MORPHOLOGY_ENV


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


def test_offline_without_source_gives_a_clear_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv(MORPHOLOGY_ENV, raising=False)
    dest = tmp_path / "cell1.asc"
    with pytest.raises(MorphologyError) as info:
        morphology.main(parse(["--url", unused_localhost_url(), "--dest", str(dest)]))
    message = str(info.value)
    assert "\n" not in message
    assert MORPHOLOGY_ENV in message and str(dest) in message
    assert not dest.exists()
