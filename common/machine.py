"""What this process may run on."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may use (its CPU affinity where the OS has one, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1
