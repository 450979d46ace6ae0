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
from selector.fileio import folder_lock, output_errors, read_json, write_json
from selector.redact import redact

MANIFEST = "manifest.json"
#: Per-row outcome of a selection (id, selected, rank, cluster, reason, score) for every pool row, beside the
#: manifest: the subset alone cannot tell why a rejected row was rejected (the report reads it).
SELECTION_ROWS = "selection_rows.parquet"


def read_manifest(folder: str) -> dict[str, Any]:
    """The ``manifest.json`` of a run folder, or ``{}`` when there is none. ``folder`` may be a URI
    (``s3://bucket/run``, read through fsspec), where the Ray engine writes."""
    if "://" in os.fspath(folder):
        import json

        import fsspec

        try:
            with fsspec.open(f"{os.fspath(folder).rstrip('/')}/{MANIFEST}", "rb") as handle:
                return json.loads(handle.read())
        except FileNotFoundError:
            return {}
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return {}
    return read_json(path)


def write_selection_rows(path: str, selection) -> None:
    """Write one row per pool row: ``id``, ``selected``, ``rank``, ``cluster`` (-1 = none), ``reason``, ``score``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array([str(i) for i in selection.ids], type=pa.string()),
            "selected": pa.array(selection.mask, type=pa.bool_()),
            "rank": pa.array(selection.rank, type=pa.int64()),
            "cluster": pa.array(selection.cluster, type=pa.int64()),
            "reason": pa.array([str(r) for r in selection.reason], type=pa.string()),
            "score": pa.array(selection.score, type=pa.float64()),
        }
    )
    pq.write_table(table, path)


def read_selection_rows(folder: str) -> dict[str, Any] | None:
    """The columns :func:`write_selection_rows` wrote in ``folder`` as numpy arrays, or None for older runs."""
    path = os.path.join(folder, SELECTION_ROWS)
    if not os.path.exists(path):
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def load_scored(path: str):
    """Load a ``save_to_disk`` folder (or a URI such as ``s3://bucket/run``, read through fsspec) as a
    ``datasets.Dataset``."""
    remote = "://" in path  # where the Ray engine may write; load_from_disk names what is missing there
    if not remote and not os.path.isdir(path):
        raise DataError(f"{path}: no such folder (expected the --out folder of `vlselect score`)")
    if not remote and not os.path.exists(os.path.join(path, "state.json")):
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
    """Write the selected rows (or every row, with ``keep_rejected``), ``manifest.json`` and
    :data:`SELECTION_ROWS` (every pool row's outcome) to ``out``.

    The folder is written beside ``out`` and renamed into place, so an interrupted write never leaves a
    half-written result. ``extra`` entries are added to the manifest. Returns the manifest.

    The manifest's ``counts.n_clusters`` and ``clusters`` count only real clusters: rows whose cluster id is
    missing (-1, None or NaN) were never selected and belong to no cluster. ``filters`` (the rules, rows failing
    each, ``counts`` keyed by rule) and ``dedup`` (columns, eps, rows compared, ``n_duplicates``) are the
    selection's :attr:`~selector.selection.Selection.filter_report` and ``dedup_report`` (None when off); the
    quality combination, when one was computed, comes in ``extra`` as ``quality``.
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
        "input": (scored_dir if "://" in scored_dir else os.path.abspath(scored_dir)) if scored_dir else None,
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
        "filters": getattr(selection, "filter_report", None),
        "dedup": getattr(selection, "dedup_report", None),
        "strategy_info": selection.info,
        "warnings": selection.warnings,
    }

    write_dataset_folder(
        result, out, {SELECTION_ROWS: lambda path: write_selection_rows(path, selection), MANIFEST: manifest}
    )
    return manifest


#: Marker file in every folder vlselect writes (score, select, run, export, prune-images, decontaminate): only a
#: folder holding it (or, for folders written before the marker existed, a vlselect ``manifest.json``) is ever
#: replaced with ``--overwrite``, so a typo in ``--out`` can't delete the user's own data.
OWN_MARKER = ".vlselect-output"


def is_own_folder(folder: str) -> bool:
    """True when ``folder`` was written by vlselect: it holds :data:`OWN_MARKER`, or a ``manifest.json`` that
    vlselect wrote (a JSON object with ``vlselect_version`` or ``vlselect_manifest``; earlier versions)."""
    if not os.path.isdir(folder):
        return False
    if os.path.isfile(os.path.join(folder, OWN_MARKER)):
        return True
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return False
    try:
        manifest = read_json(path)
    except (DataError, OSError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(manifest, dict) and ("vlselect_version" in manifest or "vlselect_manifest" in manifest)


def is_earlier_run(folder: str) -> bool:
    """True when ``folder`` is a ``vlselect run`` folder an earlier version wrote: no marker at the top, but a
    ``scored/`` or ``selected/`` subfolder that vlselect wrote (:func:`is_own_folder`)."""
    return any(is_own_folder(os.path.join(folder, sub)) for sub in ("scored", "selected"))


def mark_own_folder(folder: str) -> None:
    """Write :data:`OWN_MARKER` into ``folder`` (see :func:`is_own_folder`)."""
    from selector import __version__

    write_json(os.path.join(folder, OWN_MARKER), {"written_by": "vlselect", "version": __version__})


def check_no_overlap(out: str, sources, *, what: str = "--out") -> None:
    """Refuse an output path that is, contains or is inside one of ``sources`` (paths that don't exist, and
    None, are ignored): writing there would replace or mix with the input.

    Raises:
        ConfigError: ``out`` overlaps a source.
    """
    from selector.errors import ConfigError

    if sources is None or isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out = os.path.realpath(out)
    for source in sources:
        if source is None or not os.path.exists(source):
            continue
        src = os.path.realpath(source)
        if out == src or out.startswith(src.rstrip(os.sep) + os.sep) or src.startswith(out.rstrip(os.sep) + os.sep):
            raise ConfigError(f"{what} {out} overlaps the source {src}; write the result to another folder")


def check_out_folder(out: str, *, source=None, overwrite: bool = False, what: str = "--out") -> str:
    """Refuse an output folder that would lose data; return it as an absolute path.

    ``out`` may not be the source, inside a source folder, or a folder holding the source (``source``: one path or
    several; replacing it would delete the input). An existing non-empty ``out`` is replaced only with
    ``overwrite`` and only when vlselect wrote it (:func:`is_own_folder`, or a run folder of an earlier version:
    :func:`is_earlier_run`).

    Raises:
        ConfigError: one of the cases above.
    """
    from selector.errors import ConfigError

    out = os.path.realpath(out)
    check_no_overlap(out, source, what=what)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        if not overwrite:
            raise ConfigError(f"{what} {out} exists and is not empty; pass --overwrite to replace an earlier result")
        if not (is_own_folder(out) or is_earlier_run(out)):
            raise ConfigError(
                f"{what} {out} does not look like an earlier result (not written by vlselect: no {OWN_MARKER} or "
                f"vlselect {MANIFEST}); not replacing it: choose another folder or delete it yourself"
            )
    return out


def write_dataset_folder(dataset, out: str, files: dict[str, Any]) -> None:
    """Write ``dataset`` (``save_to_disk``) and ``files`` into ``out`` atomically.

    ``files`` maps a file name to JSON data, or to a callable that writes the file given its path (e.g. Parquet).

    Everything is written to a folder beside ``out`` and renamed into place, so an interrupted write never leaves
    a half-written result; an existing ``out`` is replaced (check it first with :func:`check_out_folder`).
    """
    out = os.path.abspath(out)
    parent = os.path.dirname(out) or "."
    # One writer per folder; a full disk or an unwritable folder is one line. JSON files are manifests and
    # reports: they pass through the redaction rule (selector.redact) like every manifest vlselect writes.
    with folder_lock(out), output_errors(out):
        os.makedirs(parent, exist_ok=True)
        prefix = f".{os.path.basename(out)}.vlselect-staging-"
        for name in os.listdir(parent):  # staging copies of a killed earlier write (we hold the lock)
            if name.startswith(prefix) and not name.startswith(f"{prefix}{os.getpid()}-"):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        staging = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
        try:
            dataset.save_to_disk(staging)
            for name, data in files.items():
                if callable(data):
                    data(os.path.join(staging, name))
                else:
                    write_json(os.path.join(staging, name), redact(data))
            swap_into_place(staging, out)
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging)


def swap_into_place(staging: str, out: str) -> None:
    """Move the complete folder ``staging`` to ``out``; an earlier ``out`` is moved aside first and deleted only
    once the new one is in place (an interruption leaves the old result or the new one, never neither).

    ``staging`` gets :data:`OWN_MARKER` first, so a later ``--overwrite`` recognises the folder as vlselect's.
    """
    if not os.path.exists(os.path.join(staging, OWN_MARKER)):
        mark_own_folder(staging)
    old = None
    if os.path.lexists(out):
        old = tempfile.mkdtemp(prefix=".vlselect-old-", dir=os.path.dirname(out) or ".")
        os.rmdir(old)
        os.replace(out, old)
    os.replace(staging, out)
    if old is None:
        return
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old)
    else:
        os.remove(old)
