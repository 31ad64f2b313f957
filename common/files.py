"""Files written whole or not at all, and their sha256.

    with atomic_path(path) as tmp: ...   write `tmp` with any library (torch.save, ...); it becomes `path`
    with atomic_hdf5(path) as f: ...     an HDF5 file built in memory, then written atomically
    write_text_atomic(path, text)        the same for text; write_bytes_atomic for bytes
    check_writable(directory)            OutputError unless a file can be created there
    with as_output_error(path): ...      an OSError while writing `path` becomes the one-line OutputError
    with read_hdf5(path, what) as f: ... an HDF5 file to read; missing, truncated or corrupt -> one-line DatasetError
    hdf5_read_failed(err)                whether an exception (one of HDF5_ERRORS) is h5py failing on a damaged file
    temporaries(directory, pattern)      what writers killed mid-write left behind
    sha256_hex(data), file_sha256(path)  hex digests

Why: a reader (a resumed run, the next stage) must never see half a file. A file is written
under a temporary name in the same directory, flushed to disk, then renamed over its final
name (rename is atomic within a file system), and the directory is flushed so the rename
survives a crash. The temporary name is unique to the writer (`.<name>.<pid>-<random>.tmp`),
so two processes writing one file never write into each other's temporary file, and a
glob for the final name (`shard_*.h5`) never matches it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path
from typing import Iterable, Iterator

from .errors import DatasetError, OutputError, first_line

TEMPORARY_SUFFIX = ".tmp"


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh, hidden temporary name beside `path`, unique to this process and call."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}{TEMPORARY_SUFFIX}")


def temporaries(directory: str | os.PathLike, pattern: str) -> list[Path]:
    """Temporary files of writers of `pattern` (e.g. "shard_*.h5") in `directory`.

    Only safe to delete when no writer can be running, e.g. under the directory's lock.
    Also finds `<name>.tmp`, the single shared temporary name of earlier versions.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = set(directory.glob(f".{pattern}.*{TEMPORARY_SUFFIX}")) | set(directory.glob(f"{pattern}{TEMPORARY_SUFFIX}"))
    return sorted(found)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename in `directory` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on any error it is removed.

    The parent directory is created if needed. Errors (a full disk: OSError) propagate after
    the temporary file is removed, and `path` keeps its previous content, if any.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_hdf5(path: str | os.PathLike):
    """Yield a writable h5py.File held in memory; when the block succeeds it is written to `path` atomically.

    Why in memory: HDF5 buffers its writes and meets a full disk only while closing the file,
    where h5py raises RuntimeError and leaves the library in a state that later crashed the
    process (segfault, exit code 139). Built in memory, the file reaches the disk through
    plain file I/O, where a full disk is an ordinary OSError, the temporary file is removed
    and `path` is untouched. The price: the compressed file is held in memory once.
    """
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        yield f
    write_bytes_atomic(path, buffer.getbuffer())


KEPT = "earlier outputs are intact: make room (or fix the permissions) and run the same command again"


HDF5_ERRORS = (OSError, RuntimeError, KeyError)  # what h5py raises on a damaged file; see hdf5_read_failed


def hdf5_read_failed(err: BaseException) -> bool:
    """Whether `err` is HDF5 failing on a damaged file: an OSError (a damaged chunk), or a RuntimeError
    or KeyError raised inside h5py (damaged metadata: a heap, a B-tree, an object header, which
    h5py reports as those). The same kinds raised by the caller's own code are not the file's fault."""
    if isinstance(err, OSError):
        return True
    if not isinstance(err, (RuntimeError, KeyError)):
        return False
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "h5py" in Path(tb.tb_frame.f_code.co_filename).parts


@contextlib.contextmanager
def read_hdf5(path: str | os.PathLike, what: str, hint: str = "", **h5py_options):
    """An HDF5 file open for reading. A missing, truncated or unreadable file, and a damaged chunk
    or damaged metadata (which show only when read), are one-line DatasetErrors naming `path` and
    `what` ("shard", "listops train split"), ending with `hint` (what to run) when given."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}" + (f" ({hint})" if hint else ""))
    tail = f"; {hint}" if hint else ""
    try:
        f = h5py.File(path, "r", **h5py_options)
    except HDF5_ERRORS as err:
        if not hdf5_read_failed(err):
            raise
        raise DatasetError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {first_line(err)}{tail}") from None
    try:
        yield f
    except HDF5_ERRORS as err:
        if not hdf5_read_failed(err):
            raise
        raise DatasetError(f"{path}: cannot read {what} (corrupt?): {first_line(err)}{tail}") from None
    finally:
        f.close()


@contextlib.contextmanager
def as_output_error(path: str | os.PathLike, kept: str = KEPT) -> Iterator[None]:
    """Inside the block, an OSError (a full disk, a revoked permission) becomes OutputError, one line:
    "cannot write PATH: <reason>; <kept>". The entry point prints it and exits with code 2.

    Wrap only the writing of `path` (an atomic writer above: then the file is whole or absent),
    so that a failing read elsewhere is never reported as a failing write.
    """
    try:
        yield
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}; {kept}") from None


def check_writable(directory: str | os.PathLike) -> None:
    """OutputError unless `directory` exists (or can be made) and a file can be created in it."""
    directory = Path(directory)
    probe = temporary_path(directory / "write-probe")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"cannot write to {directory}: {err.strerror or err}") from None


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, written whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def sha256_hex(data: bytes | Iterable[bytes]) -> str:
    """sha256 of bytes, or of a sequence of byte blocks fed in order."""
    digest = hashlib.sha256()
    for block in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    with open(path, "rb") as f:
        return sha256_hex(iter(lambda: f.read(1 << 20), b""))
