"""The ``dynamics.parquet`` format (selector.dynamics): round trip, strict writer, reader errors, no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from selector.dynamics import COLUMNS, read_dynamics, write_dynamics
from selector.errors import DataError


def test_round_trip_keeps_types_nulls_and_nans(tmp_path):
    path = tmp_path / "dynamics.parquet"
    columns = {
        "id": ["a", "b", "a"],
        "epoch": [0, 0, 1],
        "step": [1, 1, -1],
        "loss": np.array([0.5, np.nan, 0.25]),
        "correct": np.array([True, None, False], dtype=object),
        "accuracy": [1.0, np.nan, 0.5],
        "el2n": [0.1, 0.2, 0.3],
        "grad_norm": [np.nan, np.nan, np.nan],
        "curvature": [1.0, 2.0, 3.0],
        "n_tokens": [3, 0, 3],
    }
    write_dynamics(path, columns)
    table = read_dynamics(path)
    assert list(table) == list(COLUMNS)
    assert table["id"].tolist() == ["a", "b", "a"] and table["epoch"].dtype == np.int64
    assert table["correct"].tolist() == [True, None, False]  # null stays null, not False
    assert table["loss"].dtype == np.float32 and np.isnan(table["loss"][1]) and table["loss"][2] == 0.25
    assert table["n_tokens"].tolist() == [3, 0, 3]
    assert not list(tmp_path.glob("*.tmp-*"))  # written atomically


def test_a_float_nan_correct_is_written_as_null(tmp_path):
    # the training recorder keeps "not measured" as NaN; a truthy NaN must not turn into True
    write_dynamics(tmp_path / "d.parquet", {"id": ["x"], "epoch": [0], "correct": [float("nan")]})
    assert read_dynamics(tmp_path / "d.parquet")["correct"].tolist() == [None]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"id": ["a"]}, "missing epoch"),
        ({"id": ["a"], "epoch": [0], "token_acc": [1.0]}, "unknown token_acc"),
        ({"id": ["a", "b"], "epoch": [0]}, "differ in length"),
        ({"id": ["a", "a"], "epoch": [0, 0]}, "more than one row"),
    ],
)
def test_writer_refuses_what_readers_would_misread(tmp_path, columns, message):
    with pytest.raises(DataError, match=message):
        write_dynamics(tmp_path / "d.parquet", columns)
    assert not (tmp_path / "d.parquet").exists()


def test_reader_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(DataError, match="dynamics file .*missing.parquet"):
        read_dynamics(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "no_epoch.parquet")
    with pytest.raises(DataError, match="lacks column\\(s\\) epoch"):
        read_dynamics(tmp_path / "no_epoch.parquet")


def test_format_module_works_without_torch(tmp_path):
    """The coreset strategies read the file where the training extra (and torch) are not installed."""
    code = f"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "accelerate", "peft"):
            raise ImportError(f"blocked: {{name}}")
        return None

sys.meta_path.insert(0, Block())
from selector.dynamics import read_dynamics, write_dynamics
from selector.coreset import dynamics_scores
write_dynamics({str(tmp_path / "d.parquet")!r}, {{"id": ["a", "a"], "epoch": [0, 1], "correct": [True, False]}})
print(dynamics_scores(read_dynamics({str(tmp_path / "d.parquet")!r}), "forgetting")[1].tolist())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1.0]"
