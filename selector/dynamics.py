"""The ``dynamics.parquet`` format: per-example training dynamics, one row per ``(id, epoch)``.

The fine-tuning engine (:mod:`selector.training`) writes it and the coreset scores (:mod:`selector.coreset`:
forgetting, EL2N, GraNd, curvature) read it. This module is the one place that knows the columns and their
types, and it needs only numpy and pyarrow, so the selection strategies read the file without torch and without
the ``training`` extra.

Columns (only ``id`` and ``epoch`` are required; a writer may leave any other one out):

- ``id`` (string), ``epoch`` (int64): the key; at most one row per pair.
- ``step`` (int64): global optimizer step when the example was seen (-1 when only measured after the epoch).
- ``loss`` (float32): mean cross-entropy over the example's answer tokens (>= 0, lower = fitted better).
- ``correct`` (bool, nullable): every answer token's argmax equals the target; null when not measured.
- ``accuracy`` (float32): share of the answer tokens whose argmax equals the target, in [0, 1]; higher = better
  fitted. Forgetting events count on it (``accuracy >= threshold``, :func:`selector.coreset.forgetting_events`).
- ``el2n`` (float32): mean over answer tokens of ``||softmax(logits) - onehot(target)||_2`` (0..sqrt(2)).
- ``grad_norm`` (float32): norm of the loss gradient w.r.t. the output-embedding weights (>= 0).
- ``curvature`` (float32): input loss curvature, finite-difference Hutchinson estimate in fp32 (>= 0).
- ``n_tokens`` (int64): answer tokens of the example; 0 makes every measured column NaN/null.

NaN in a float column means "not measured" (the option was off, or the example had no answer token).

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "dynamics.parquet")
    >>> write_dynamics(path, {"id": ["a", "b"], "epoch": [0, 0], "correct": [True, None]})
    >>> table = read_dynamics(path)
    >>> table["id"].tolist(), table["correct"].tolist()
    (['a', 'b'], [True, None])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from selector.errors import DataError

#: every column of the format, in file order
COLUMNS = ("id", "epoch", "step", "loss", "correct", "accuracy", "el2n", "grad_norm", "curvature", "n_tokens")
REQUIRED = ("id", "epoch")
#: column -> pyarrow type name (``pyarrow`` itself is imported only when a file is read or written)
TYPES = {
    "id": "string",
    "epoch": "int64",
    "step": "int64",
    "loss": "float32",
    "correct": "bool_",
    "accuracy": "float32",
    "el2n": "float32",
    "grad_norm": "float32",
    "curvature": "float32",
    "n_tokens": "int64",
}


def _arrow_array(name: str, values: Any):
    import pyarrow as pa

    kind = getattr(pa, TYPES[name])()
    if name in ("id", "correct"):
        # object arrays: None stays null (a NaN `correct` would otherwise be read as True)
        items = values.tolist() if isinstance(values, np.ndarray) else list(values)
        if name == "correct":
            items = [None if v is None or (isinstance(v, float) and v != v) else bool(v) for v in items]
        else:
            items = [str(v) for v in items]
        return pa.array(items, kind)
    return pa.array(np.asarray(values), kind)


def write_dynamics(path: str | os.PathLike, columns: Mapping[str, Any]) -> None:
    """Write ``{column: values}`` as ``dynamics.parquet`` atomically (see :func:`selector.fileio.atomic_open`).

    Args:
        path: file to write.
        columns: ``id`` and ``epoch`` plus any other columns of :data:`COLUMNS`, all of one length.

    Raises:
        DataError: a required column is missing, a column is unknown, lengths differ, or an ``(id, epoch)``
            pair repeats.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from selector.fileio import atomic_open

    missing = [name for name in REQUIRED if name not in columns]
    unknown = sorted(set(columns) - set(COLUMNS))
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unknown {', '.join(unknown)}"] if unknown else []
        raise DataError(f"dynamics table: {'; '.join(problems)} column(s); columns are {', '.join(COLUMNS)}")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"dynamics columns differ in length: {lengths}")
    keys = list(zip(map(str, columns["id"]), map(int, columns["epoch"])))
    if len(set(keys)) != len(keys):
        raise DataError("dynamics table has more than one row for some (id, epoch)")
    table = pa.table({name: _arrow_array(name, columns[name]) for name in COLUMNS if name in columns})
    with atomic_open(path, "wb") as handle:
        pq.write_table(table, handle)


def read_dynamics(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``dynamics.parquet`` into ``{column: numpy array}`` (``correct`` and ``id`` as object arrays).

    Raises:
        DataError: the file is missing or unreadable, or lacks ``id`` or ``epoch``.
    """
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(os.fspath(path))
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"dynamics file {os.fspath(path)}: {exc}") from None
    missing = set(REQUIRED) - set(table.column_names)
    if missing:
        raise DataError(f"dynamics file {os.fspath(path)} lacks column(s) {', '.join(sorted(missing))}")
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


__all__ = ["COLUMNS", "REQUIRED", "TYPES", "read_dynamics", "write_dynamics"]
