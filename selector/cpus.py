"""How many CPUs this process may use, and the ``n_jobs`` rule every threaded step follows."""

from __future__ import annotations

import os

import numpy as np

from selector.errors import ConfigError


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``), >= 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_n_jobs(n_jobs) -> int:
    """``n_jobs`` as a thread count: None = :func:`usable_cpus`; else a positive int (ConfigError otherwise)."""
    if n_jobs is None:
        return usable_cpus()
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1:
        raise ConfigError(f"n_jobs must be a positive integer or None, got {n_jobs!r}")
    return int(n_jobs)
