"""`python -m pipelines morphology`: put the L5PC morphology (cell1.asc) at data/morphology/.

Source, in this order: the file named by $L5PC_MORPHOLOGY, else a local copy beside the project
(--local-copy, default ../shared/morphologies/cell1.asc) if there is one, else a download of the
public ModelDB copy (--url). The content is checked against the known sha256 after normalising
CRLF line endings to LF (published copies differ only in line endings), and written
atomically; a wrong hash writes nothing. A destination that already holds the right file
is left alone; one that holds anything else (a directory, another file) is refused, not replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.files import sha256_hex, write_bytes_atomic

# Hay et al. (2011) cell1.asc, ModelDB 139653 (also the NeuronIO morphology)
MORPHOLOGY_URL = "https://raw.githubusercontent.com/ModelDBRepository/139653/master/morphologies/cell1.asc"
MORPHOLOGY_SHA256 = "293d0aa92af8d03dbdcc40a711ba3923522615c3a65df485906538a1de986e23"  # LF line endings
DOWNLOAD_TIMEOUT_S = 30


def add_arguments(parser) -> None:
    parser.add_argument("--url", default=MORPHOLOGY_URL, help="where to download cell1.asc when neither $L5PC_MORPHOLOGY nor the local copy is there")
    parser.add_argument("--local-copy", type=Path, default=None,
                        help="cell1.asc to copy when $L5PC_MORPHOLOGY is not set and the file exists "
                             "(default: ../shared/morphologies/cell1.asc beside the project)")
    parser.add_argument("--dest", type=Path, default=None, help="destination file (default: data/morphology/cell1.asc)")


def normalise_line_endings(content: bytes) -> bytes:
    return content.replace(b"\r\n", b"\n")


def sha256_of(content: bytes) -> str:
    """The morphology's identity: sha256 of its content with LF line endings."""
    return sha256_hex(normalise_line_endings(content))


def _download(url: str, dest: Path) -> bytes:
    import urllib.error
    import urllib.request

    from simulation.errors import MorphologyError
    from simulation.paths import MORPHOLOGY_ENV

    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise MorphologyError(
            f"cannot download the morphology from {url} ({reason}); set {MORPHOLOGY_ENV}=/path/to/cell1.asc "
            f"or copy cell1.asc to {dest}"
        ) from None


def main(args) -> int:
    from simulation.errors import MorphologyError
    from simulation.paths import DEFAULT_MORPHOLOGY, MORPHOLOGY_ENV, SHARED_MORPHOLOGY

    dest = Path(args.dest) if args.dest else DEFAULT_MORPHOLOGY
    if dest.is_file() and sha256_of(dest.read_bytes()) == MORPHOLOGY_SHA256:
        print(f"morphology already in place: {dest}")
        return 0
    if dest.exists():  # a typo in --dest must not replace someone's file by cell1.asc
        what = "a directory" if dest.is_dir() else "a file that is not the Hay et al. cell1.asc"
        raise MorphologyError(f"--dest {dest} exists and is {what}; remove it or choose another --dest")

    source = os.environ.get(MORPHOLOGY_ENV)
    local_copy = Path(args.local_copy) if args.local_copy else SHARED_MORPHOLOGY
    if source:
        path = Path(source)
        if not path.is_file():
            raise MorphologyError(f"${MORPHOLOGY_ENV} names {path}, which is not a file")
        content, origin = path.read_bytes(), str(path)
    elif local_copy.is_file():
        content, origin = local_copy.read_bytes(), str(local_copy)
    else:
        content, origin = _download(args.url, dest), args.url

    digest = sha256_of(content)
    if digest != MORPHOLOGY_SHA256:
        raise MorphologyError(
            f"{origin} is not the Hay et al. cell1.asc: sha256 {digest} (LF line endings), expected {MORPHOLOGY_SHA256}; "
            "nothing written"
        )
    write_bytes_atomic(dest, normalise_line_endings(content))
    print(f"morphology written: {dest} (from {origin}, sha256 {digest})")
    return 0
