"""Compare a folder before and after a run that must leave it untouched."""

from __future__ import annotations

import hashlib
import os


def file_digests(folder) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256 of its bytes)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return out
