"""The contract every registered metric keeps, checked for each name in ``available_metrics()``.

Adding a metric that needs a model: write a session fixture that returns its tiny-model constructor
parameters (a dict, or a list of dicts for several variants) in ``tests/fixtures_models.py`` (or any module
the test session loads as a plugin) and add one line ``"<metric>": "<fixture name>"`` to ``METRIC_PARAMS``
below. Metrics without an entry are built with their defaults, which must then work offline.

Keys starting with ``_`` in a params dict are options of this test, not constructor arguments:

- ``_may_nan``: ids of rows (see ``metric_rows.ROW_KINDS``) where NaN is acceptable besides the rows the
  contract requires to be NaN, or ``"all"`` (e.g. a judge whose tiny model writes unparsable answers).
- ``_atol``: tolerance for standalone == batch == ``Dataset.map`` (default 1e-5; batching pads inputs).
- ``_image_columns``: for a metric that reads images for some columns only (``relevance`` with a CLIP model),
  the columns that must be NaN on rows without a decodable image; the others are text columns.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from metric_rows import contract_dataset

from metrics.base import BaseMetric, DatasetMetric, is_dataset_metric, is_row_metric
from metrics.registry import available_metrics, get_metric, metric_class

# session fixtures of the tiny offline models (tiny_clip_path, clip_metric_params, ...)

#: metric name -> fixture returning tiny-model params (dict or list of dicts). Extend with one line.
METRIC_PARAMS = {
    "clip": "clip_metric_params",
    "reward": "reward_metric_params",
    "embedding": "embedding_metric_params",
    "judge": "judge_metric_params",
    "relevance": "relevance_metric_params",
    "perplexity": "perplexity_metric_params",
}

ALL_ROWS = "all"


def _variants(request, name: str) -> list[dict]:
    fixture = METRIC_PARAMS.get(name)
    params = request.getfixturevalue(fixture) if fixture else {}
    return [dict(p) for p in (params if isinstance(params, list) else [params])]


def _split(params: dict) -> tuple[dict, dict]:
    options = {k: params.pop(k) for k in list(params) if k.startswith("_")}
    return params, options


def _undecoded(ds):
    from datasets import Image, List

    return ds.cast_column("image", Image(decode=False)).cast_column("images", List(Image(decode=False)))


def _rows_nan(values: np.ndarray) -> np.ndarray:
    return np.isnan(values) if values.ndim == 1 else np.isnan(values).all(axis=1)


def _expected_nan(metric, ids: list[str], column: str | None = None, image_columns=None) -> tuple[set, set]:
    """(rows that must be NaN, rows that may be NaN) in ``column`` from the metric's declared inputs."""
    required = set(metric.required_columns())
    must = {"error-row"}
    may = {"no-answer"}  # a text metric reading the response has no input there; one reading the instruction has
    if "image" in required and (image_columns is None or column in image_columns):
        must |= {"text-only", "corrupt"}
    return must, may


@pytest.mark.parametrize("name", available_metrics())
def test_constructible_without_arguments_and_without_loading(name):
    metric = metric_class(name)()
    assert isinstance(metric, BaseMetric)
    assert not [key for key in metric.__dict__ if key.startswith("_")], "constructor must not load anything"
    assert type(metric)(**metric.get_params()) == metric
    assert get_metric(name).name == name
    renamed = get_metric(name, name="other")
    assert all(col.split("_", 1)[1].startswith("other") for col in renamed.output_columns())


@pytest.mark.parametrize("name", available_metrics())
def test_row_metric_contract(name, request):
    if not is_row_metric(metric_class(name)()):
        pytest.skip("dataset-level metric: see test_dataset_level_contract")
    ds = _undecoded(contract_dataset())
    batch = ds[:]
    ids = batch["id"]
    n = len(ids)
    for params in _variants(request, name):
        params, options = _split(params)
        metric = get_metric(name, **params)
        twin = get_metric(name, **params)
        from datasets.fingerprint import Hasher

        fingerprint = Hasher.hash(metric)
        assert Hasher.hash(twin) == fingerprint

        out = metric.score_batch(batch)
        prefix = "emb_" if metric.kind == "embedding" else "score_"
        assert metric.column() in out and metric.column().startswith(prefix + metric.name)
        assert set(out) <= set(metric.output_columns())
        for column, values in out.items():
            must, may = _expected_nan(metric, ids, column, options.get("_image_columns"))
            if options.get("_may_nan") == ALL_ROWS:
                may = set(ids)
            else:
                may |= set(options.get("_may_nan", ()))
            assert isinstance(values, np.ndarray) and values.dtype == np.float32, column
            assert values.shape[0] == n and values.ndim == (
                2 if metric.kind == "embedding" and column == metric.column() else 1
            )
            nan_rows = {ids[i] for i in np.flatnonzero(_rows_nan(values))}
            assert must <= nan_rows, f"{column}: expected NaN on {sorted(must - nan_rows)}"
            assert nan_rows <= must | may, f"{column}: unexpected NaN on {sorted(nan_rows - must - may)}"
            if values.ndim == 2:
                ok = ~_rows_nan(values)
                assert not np.isnan(values[ok]).any(), "embedding rows are all-NaN or all-finite"
                np.testing.assert_allclose(np.linalg.norm(values[ok], axis=1), 1.0, atol=1e-4)

        atol = options.get("_atol", 1e-5)
        # standalone (row by row) == one batch, on one row of each NaN/finite kind (all ten cost time, not coverage)
        for i in [
            ids.index(k) for k in ("img-short", "text-only", "error-row", "multi-image", "corrupt", "no-answer")
        ]:
            single = metric.score_batch(ds[i : i + 1])
            for column, values in out.items():
                np.testing.assert_allclose(single[column][0], values[i], rtol=1e-4, atol=atol, equal_nan=True)
        # == Dataset.map(batched=True, with_rank=True) with uneven batches
        mapped = ds.map(metric, batched=True, with_rank=True, batch_size=3, remove_columns=ds.column_names)
        for column, values in out.items():
            got = mapped.select_columns([column]).with_format("numpy")[:][column]
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, values, rtol=1e-4, atol=atol, equal_nan=True)

        # the loaded metric fingerprints and pickles as the unloaded one did, without weights
        assert Hasher.hash(metric) == fingerprint == Hasher.hash(twin)
        blob = pickle.dumps(metric)
        assert len(blob) < 4096, f"pickled metric is {len(blob)} bytes: run-time state leaked into __getstate__"
        restored = pickle.loads(blob)
        assert restored == metric
        again = restored.score_batch(batch)
        for column, values in out.items():
            np.testing.assert_allclose(again[column], values, rtol=1e-5, atol=atol, equal_nan=True)
        one = ds.select([0])
        fp1 = one.map(metric, batched=True, with_rank=True, keep_in_memory=True)._fingerprint
        fp2 = one.map(twin, batched=True, with_rank=True, keep_in_memory=True)._fingerprint
        assert fp1 == fp2

        if is_dataset_metric(metric):
            _check_pool_part(metric, out, ids, batch["error"])


def _check_pool_part(metric, row_out: dict, ids: list, errors: list) -> None:
    columns = {}
    for name in metric.fit_columns():
        if name == "id":
            columns[name] = np.asarray(ids, dtype=object)
        elif name == "error":
            columns[name] = np.asarray(errors, dtype=object)
        else:
            columns[name] = row_out[name]
    pool = metric.fit_transform(columns)
    assert set(pool) | set(row_out) == set(metric.output_columns())
    for column, values in pool.items():
        values = np.asarray(values)
        assert values.shape[0] == len(ids) and values.dtype == np.float32, column
        error_rows = np.array([e is not None for e in errors])
        assert _rows_nan(values)[error_rows].all()
    again = metric.fit_transform(columns)
    for column in pool:
        np.testing.assert_array_equal(again[column], pool[column])


def _synthetic_pool(metric: DatasetMetric, n: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    errors = np.array([None if i % 9 else "missing_image: x" for i in range(n)], dtype=object)
    columns = {}
    for name in metric.fit_columns():
        if name == "id":
            columns[name] = np.array([f"row-{i}" for i in range(n)], dtype=object)
        elif name == "error":
            columns[name] = errors
        elif name.startswith("emb_"):
            x = rng.normal(size=(n, 8)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            x[errors != None] = np.nan  # noqa: E711 (elementwise)
            columns[name] = x
        else:
            x = rng.normal(size=n).astype(np.float32)
            x[errors != None] = np.nan  # noqa: E711
            columns[name] = x
    return columns


@pytest.mark.parametrize("name", available_metrics())
def test_dataset_level_contract(name, request):
    probe = metric_class(name)()
    if is_row_metric(probe):
        pytest.skip("row metric (its pool part, if any, is checked in test_row_metric_contract)")
    for params in _variants(request, name):
        params, _ = _split(params)
        metric = get_metric(name, **params)
        columns = _synthetic_pool(metric)
        n = len(next(iter(columns.values())))
        out = metric.fit_transform(columns)
        assert set(out) == set(metric.output_columns())
        error_rows = np.array([e is not None for e in columns.get("error", [None] * n)])
        for column, values in out.items():
            values = np.asarray(values)
            assert values.shape[0] == n, column
            if values.dtype.kind == "f":
                assert values.dtype == np.float32, column
                assert _rows_nan(values)[error_rows].all(), f"{column}: rows with error must be NaN"
        again = get_metric(name, **params).fit_transform(columns)
        for column in out:
            np.testing.assert_array_equal(np.asarray(again[column]), np.asarray(out[column]))
        blob = pickle.dumps(metric)
        assert pickle.loads(blob).get_params() == metric.get_params()
