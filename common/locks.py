"""An exclusive lock on a directory, for a run that writes into it.

    with DirectoryLock(out_dir, "simulate") as lock:   # DirectoryLocked if another run holds it
        ...                                              # lock.stale: the owner of a lock left by a killed run

Why: two runs writing into one dataset directory would mix their shards. The lock is a file
`.lock` in the directory holding its owner (command, host, pid, start time), so a refusal
can say who holds it. Holding is decided by the kernel (flock on that file): the lock goes
when its process ends, however it ends, so a run killed with SIGKILL leaves only a file
with its owner's details, which the next run finds free and reports as stale. On file
systems without flock (some Lustre and NFS mounts) the owner's host and pid decide instead:
a lock of a process that no longer runs on this host is stale; one of another host is
refused (delete the file by hand once that run is gone).

A process may take the same directory's lock again while it holds it (the command line
takes it around the whole run, the library again around its writes); it is released when
the outermost holder releases it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import OutputError, UserInputError

LOCK_FILE = ".lock"

# directory -> [lock file descriptor, how many holders in this process]
_held: dict[Path, list] = {}


class DirectoryLocked(UserInputError):
    """Another run holds the directory's lock."""


def _process_start(pid: int) -> str | None:
    """The start time of a process (Linux /proc), to tell a live owner from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _this_owner(purpose: str) -> dict:
    return {"purpose": purpose, "host": socket.gethostname(), "pid": os.getpid(),
            "process_start": _process_start(os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:200]}


def describe_owner(owner: dict) -> str:
    return (f"{owner.get('purpose', '?')} (pid {owner.get('pid', '?')} on {owner.get('host', '?')}, "
            f"since {owner.get('since', '?')})")


def _is_running(owner: dict) -> bool:
    """Whether the owner may still run: certain only on this host."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    started = _process_start(int(owner["pid"]))
    return started is None or owner.get("process_start") in (None, started)


def _read_owner(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        return {"purpose": f"unreadable lock content {text[:40]!r}"}
    return owner if isinstance(owner, dict) else {"purpose": f"unreadable lock content {text[:40]!r}"}


class DirectoryLock:
    """Exclusive lock on `directory` (created if missing) for `purpose`, e.g. "simulate"."""

    def __init__(self, directory: str | os.PathLike, purpose: str):
        self.directory = Path(directory)
        self.purpose = purpose
        self.path = self.directory / LOCK_FILE
        self.stale: dict | None = None  # the owner of a lock left behind by a run that ended without releasing it

    def acquire(self) -> "DirectoryLock":
        key = self.directory.resolve()
        if key in _held:  # this process holds it already
            _held[key][1] += 1
            return self
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputError(f"cannot write to {self.directory}: {err.strerror or err}") from None
        try:
            kernel_lock = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd) or {}
                raise DirectoryLocked(self._refusal(owner)) from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                kernel_lock = False  # a file system without flock: judge the owner by host and pid
            previous = _read_owner(fd)
            if previous is not None and not kernel_lock and previous.get("pid") != os.getpid() and _is_running(previous):
                raise DirectoryLocked(self._refusal(previous))
            self.stale = previous  # we got the lock, so whoever wrote this file is gone
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(_this_owner(self.purpose)) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        _held[key] = [fd, 1]
        return self

    def _refusal(self, owner: dict) -> str:
        return (f"{self.directory} is in use by {describe_owner(owner)}; two runs writing into one directory would "
                f"mix their output. Wait for it to end or use another directory (if that run is gone, delete {self.path})")

    def release(self) -> None:
        key = self.directory.resolve()
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[key]
        fd = entry[0]
        try:
            os.ftruncate(fd, 0)  # empty: free (the file stays, so no run can lock a file being deleted)
        except OSError:
            pass
        os.close(fd)  # releases the flock

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
