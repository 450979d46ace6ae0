"""Run folders on disk: the ``manifest.json`` beside each output, scored datasets, and selection results.

``vlselect score`` writes a ``save_to_disk`` folder with a manifest (see :mod:`selector.scoring`);
``vlselect select`` reads it with :func:`load_scored` and writes its result with :func:`write_selection`;
:mod:`selector.card` reads both manifests with :func:`read_manifest`.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from typing import Any

from selector.errors import DataError
from selector.fileio import read_json, write_json

MANIFEST = "manifest.json"


def read_manifest(folder: str) -> dict[str, Any]:
    """The ``manifest.json`` of a run folder, or ``{}`` when there is none."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return {}
    return read_json(path)


def load_scored(path: str):
    """Load a ``save_to_disk`` folder as a ``datasets.Dataset``."""
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such folder (expected the --out folder of `vlselect score`)")
    if not os.path.exists(os.path.join(path, "state.json")):
        raise DataError(f"{path}: not a save_to_disk dataset folder (expected the --out folder of `vlselect score`)")
    from datasets import Dataset, load_from_disk

    try:
        ds = load_from_disk(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot load the saved dataset ({exc})") from exc
    if not isinstance(ds, Dataset):
        raise DataError(f"{path}: holds several splits; select works on one dataset")
    return ds


def write_selection(
    dataset,
    selection,
    out: str,
    *,
    scored_dir: str | None = None,
    keep_rejected: bool = False,
    extra: dict | None = None,
) -> dict:
    """Write the selected rows (or every row, with ``keep_rejected``) and ``manifest.json`` to ``out``.

    The folder is written beside ``out`` and renamed into place, so an interrupted write never leaves a
    half-written result. ``extra`` entries are added to the manifest. Returns the manifest.

    The manifest's ``counts.n_clusters`` and ``clusters`` count only real clusters: rows whose cluster id is
    missing (-1, None or NaN) were never selected and belong to no cluster.
    """
    import numpy as np

    from selector import __version__
    from selector.selection import select_dataset

    out = os.path.abspath(out)
    result = select_dataset(dataset, selection, keep_rejected=keep_rejected)
    summary = selection.summary()
    per_source = {}
    if "source" in dataset.column_names:
        sources = np.array(["None" if s is None else str(s) for s in dataset["source"]], dtype=object)
        for value in sorted(set(sources.tolist())):
            rows = sources == value
            per_source[value] = {"rows": int(rows.sum()), "selected": int(selection.mask[rows].sum())}
    input_manifest = read_manifest(scored_dir) if scored_dir else {}
    manifest = {
        "command": "select",
        "vlselect_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "input": os.path.abspath(scored_dir) if scored_dir else None,
        "input_fingerprint": (input_manifest.get("input") or {}).get("fingerprint"),
        "strategy": selection.strategy,
        "budget": selection.budget,
        "n_budget": selection.n_budget,
        "seed": selection.random_state,
        "options": selection.options,
        "columns": selection.columns,
        **(extra or {}),
        "keep_rejected": bool(keep_rejected),
        "counts": {k: v for k, v in summary.items() if k != "clusters"},
        "clusters": summary["clusters"],
        "sources": per_source,
        "strategy_info": selection.info,
        "warnings": selection.warnings,
    }

    parent = os.path.dirname(out) or "."
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".select-", dir=parent)
    try:
        result.save_to_disk(staging)
        write_json(os.path.join(staging, MANIFEST), manifest)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    return manifest
