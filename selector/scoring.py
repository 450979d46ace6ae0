"""Run metric plugins over a dataset: ``selector.score`` and the engine behind ``vlselect score``.

Row metrics run through ``Dataset.map(batched=True, with_rank=True)``; dataset-level parts
(:func:`metrics.base.is_dataset_metric`) run afterwards on whole columns. With ``out_dir`` the run is
resumable: every (metric, shard) result is written to a temporary file and atomically renamed, then a done
marker is written; a re-run skips shards whose marker matches the metric configuration and the input
fingerprint. The finished ``out_dir`` is a ``save_to_disk`` folder (``datasets.load_from_disk(out_dir)``) with
``manifest.json`` inside it; the per-shard work files stay in ``out_dir/.shards`` so adding a metric later
re-uses the finished ones.

Example:
    >>> import selector
    >>> scored = selector.score(ds, ["length", {"metric": "clip", "batch_size": 64}])  # doctest: +SKIP
    >>> scored = selector.score(ds, "length,clip", out_dir="scored/")                  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from typing import Any

import numpy as np

from selector.errors import ConfigError, DataError
from selector.fileio import atomic_open, atomic_write_text, folder_lock, holds_lock, output_errors, write_json
from selector.redact import redact
from selector.rows import column_array, error_kind
from selector.runs import MANIFEST, OWN_MARKER, is_own_folder, mark_own_folder

logger = logging.getLogger(__name__)

SHARD_DIR = ".shards"
DEFAULT_SHARD_SIZE = 10_000
# Canonical columns a metric may ask for but a dataset may lack (a loader without multi-image rows).
_OPTIONAL_INPUTS = ("images", "source")


def resolve_metrics(metrics: Any) -> list:
    """Metric instances from ``"length,clip"``, a list of names / ``{"metric": ..., **params}`` dicts /
    instances, a YAML path's parsed mapping, or a single instance."""
    from metrics.base import BaseMetric
    from metrics.registry import check_unique_names, get_metric, metrics_from_config, parse_metric_list

    if isinstance(metrics, BaseMetric):
        metrics = [metrics]
    elif isinstance(metrics, str):
        metrics = parse_metric_list(metrics)
    elif isinstance(metrics, dict):
        return metrics_from_config(metrics)
    out = []
    for item in metrics or ():
        if isinstance(item, BaseMetric):
            out.append(item)
        elif isinstance(item, str):
            out.append(get_metric(item))
        elif isinstance(item, dict):
            out.extend(metrics_from_config([item]))
        else:
            raise ConfigError(f"cannot make a metric from {item!r}")
    if not out:
        raise ConfigError("no metrics to run")
    check_unique_names(out)
    return out


def check_request(dataset, metrics, batch_size: int, shard_size: int, limit: int | None):
    """The checks every scoring engine makes before any work: metrics resolved, sizes positive, rows present and
    the columns the metrics read; returns ``(metrics, rows in the input, rows to score)``."""
    metric_list = resolve_metrics(metrics)
    if batch_size < 1 or shard_size < 1:
        raise ConfigError("batch_size and shard_size must be >= 1")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    n_total = len(dataset)
    if n_total == 0:
        raise DataError("nothing to score: the dataset has no rows")
    _check_inputs(dataset, metric_list)
    return metric_list, n_total, (min(n_total, limit) if limit else n_total)


def score(
    dataset,
    metrics,
    *,
    batch_size: int = 32,
    num_proc: int | None = None,
    out_dir: str | os.PathLike | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    limit: int | None = None,
    seed: int = 0,
    source: str | None = None,
    progress: bool = True,
    engine: str = "local",
    **engine_options,
):
    """Score ``dataset`` with ``metrics`` and return it with the metrics' columns added.

    Args:
        dataset: a ``datasets.Dataset`` in the canonical schema (:mod:`selector.data.schema`).
        metrics: metric instances, registry names (``"length,clip"``), or ``{"metric": name, **params}``
            dicts (the YAML form).
        batch_size: rows per ``Dataset.map`` batch (a model metric's own ``batch_size`` splits it further).
        num_proc: worker processes for ``Dataset.map``; each loads the model once, on ``cuda:{rank % n}``.
        out_dir: when given, write a resumable run there (see the module docstring) and return the dataset
            loaded back from it.
        shard_size: rows per resumable shard.
        limit: score only the first ``limit`` rows.
        seed: recorded in the manifest and used to seed torch (no built-in metric is random).
        source: where the data came from, for the manifest (``input.source``; ``input.hub`` says whether it was a
            Hub dataset id, see :func:`loaded_from_hub`).
        progress: show a progress bar over shards.
        engine: ``"local"`` (``Dataset.map`` in this process) or ``"ray"`` (a Ray cluster, same result; needs
            ``out_dir``; :func:`selector.ray_engine.score` documents it and its ``engine_options``: ``address``,
            ``concurrency``, ``num_gpus``, ``cpus_per_actor``).

    Returns:
        The input rows (the first ``limit`` when set) with ``score_*`` / ``emb_*`` columns appended, in the
        input order. Existing columns of the same name are replaced (with a warning).

    Raises:
        DataError: the dataset is empty or lacks a column a metric needs.
        ConfigError: bad metric specification, or ``out_dir`` holds something that is not a scoring run.
    """
    from metrics.base import is_dataset_metric, is_row_metric

    if out_dir is not None and "://" not in os.fspath(out_dir) and not holds_lock(out_dir):
        # One writer per folder: a second run would delete this one's shards as stale. A full disk or an
        # unwritable folder is one line, and the finished shards resume once it is fixed.
        with folder_lock(out_dir, command="score"), output_errors(out_dir):
            return score(
                dataset, metrics, batch_size=batch_size, num_proc=num_proc, out_dir=out_dir, shard_size=shard_size,
                limit=limit, seed=seed, source=source, progress=progress, engine=engine, **engine_options,
            )  # fmt: skip
    if engine == "ray":
        from selector import ray_engine

        return ray_engine.score(
            dataset, metrics, out_dir=out_dir, batch_size=batch_size, num_proc=num_proc, shard_size=shard_size,
            limit=limit, seed=seed, source=source, progress=progress, **engine_options,
        )  # fmt: skip
    if engine != "local" or engine_options:
        bad = f"engine {engine!r}" if engine != "local" else f"option(s) {', '.join(engine_options)}"
        raise ConfigError(f"{bad}: expected engine 'local' or 'ray' (options only with engine='ray')")
    metric_list, n_total, n = check_request(dataset, metrics, batch_size, shard_size, limit)
    _seed_everything(seed, load_torch=any(hasattr(m, "_ensure_loaded") for m in metric_list))

    input_fingerprint = getattr(dataset, "_fingerprint", None)
    base = dataset if n == n_total else dataset.select(range(n))
    replaced = [c for m in metric_list for c in m.output_columns() if c in base.column_names]
    if replaced:
        logger.warning("replacing existing column(s) %s with new scores", ", ".join(replaced))
        base = base.remove_columns(replaced)

    store = _ShardStore(out_dir, input_fingerprint) if out_dir is not None else None
    started = time.time()
    metric_seconds: dict[str, float] = {}
    row_parts = []
    for metric in metric_list:
        if not is_row_metric(metric):
            continue
        metric_started = time.time()
        row_parts.append(_score_metric(dataset, metric, n, batch_size, num_proc, shard_size, store, progress=progress))
        metric_seconds[metric.name] = time.time() - metric_started
        metric.release()

    from datasets import concatenate_datasets

    scored = concatenate_datasets([base, *row_parts], axis=1) if row_parts else base
    for metric in metric_list:
        if is_dataset_metric(metric):
            metric_started = time.time()
            scored = _run_dataset_part(scored, metric)
            metric_seconds[metric.name] = time.time() - metric_started
    elapsed = time.time() - started

    if store is None:
        return scored
    manifest = build_manifest(
        scored,
        metric_list,
        config={
            "batch_size": batch_size,
            "num_proc": num_proc,
            "shard_size": shard_size,
            "limit": limit,
            "seed": seed,
        },
        input_info={
            "source": source,
            "hub": loaded_from_hub(source),
            "fingerprint": input_fingerprint,
            "n_rows": n_total,
            "n_scored": n,
        },
        seconds=elapsed,
        metric_seconds=metric_seconds,
    )
    return store.finish(scored, manifest)


def loaded_from_hub(source) -> bool | None:
    """Whether ``source`` names a Hub dataset the loader read by id (the loader's rule: no local path of that
    name, and it reads as ``owner/name`` or ``name``); None when no source string was given. Recorded as the
    manifest's ``input.hub``, so a card can tell a Hub id from a local folder named like one."""
    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source).strip():
        return None
    from selector.data.formats import looks_like_hub_id

    source = os.fspath(source)
    return not os.path.exists(source) and looks_like_hub_id(source)


def _seed_everything(seed: int, load_torch: bool) -> None:
    import random
    import sys

    random.seed(seed)
    np.random.seed(seed)
    # Importing torch costs seconds; only model metrics need it seeded.
    if load_torch or "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def _check_inputs(dataset, metric_list) -> None:
    from metrics.base import is_row_metric

    missing = {}
    for metric in metric_list:
        if not is_row_metric(metric):
            continue
        for column in metric.required_columns():
            if column not in dataset.column_names and column not in _OPTIONAL_INPUTS:
                missing.setdefault(column, []).append(metric.name)
    if missing:
        detail = "; ".join(f"{col!r} (needed by {', '.join(names)})" for col, names in missing.items())
        raise DataError(f"the dataset lacks column(s) {detail}; load it with selector.load_instructions")


def _inputs_view(dataset, metric):
    """Only the columns the metric reads, with images left undecoded (the metric decodes them per row,
    so a corrupt image becomes NaN for that row instead of an exception for the batch)."""
    from datasets import Dataset, Image, List

    columns = [c for c in metric.required_columns() if c in dataset.column_names]
    view = dataset.select_columns(columns)
    features = view.features.copy()
    for column, feature in view.features.items():
        if isinstance(feature, Image) and feature.decode:
            features[column] = Image(decode=False)
        elif isinstance(feature, List) and isinstance(feature.feature, Image) and feature.feature.decode:
            features[column] = List(Image(decode=False))
    if features == view.features:
        return view
    # The decode flag is not part of the Arrow type, so the same table serves with new features: no copy,
    # unlike ``cast_column`` on a list of images, which rewrites the whole table.
    info = view.info.copy()
    info.features = features
    return Dataset(view.data, info=info, indices_table=view._indices, fingerprint=f"{view._fingerprint}-undecoded")


def _map_metric(view, metric, batch_size, num_proc, desc):
    num_proc = num_proc if num_proc and num_proc > 1 and len(view) > 1 else None
    if num_proc is None and getattr(metric, "uses_decode_workers", lambda: False)():
        # Image metrics with decode workers read the whole shard through a DataLoader (metrics.image_loader).
        return metric.score_dataset(view)
    with _workers_never_fork_torch(num_proc):
        return view.map(
            metric,
            batched=True,
            with_rank=True,
            batch_size=batch_size,
            num_proc=num_proc,
            remove_columns=view.column_names,
            keep_in_memory=True,
            desc=desc,
        )


@contextlib.contextmanager
def _workers_never_fork_torch(num_proc: int | None):
    """Start ``Dataset.map``'s worker processes with ``spawn`` while torch is loaded in this process.

    A process forked after torch has run keeps its OpenMP / intra-op thread pools' state but not their threads;
    the child's first parallel region can wait forever on a barrier (libgomp). ``datasets`` forks its workers
    by default (``multiprocess.Pool``), so the start method is switched for the duration of the call and put
    back after. Spawned workers import what they need and load the model themselves (a metric pickles without
    weights anyway); the price is a slower start per worker.
    """
    import sys

    if not num_proc or "torch" not in sys.modules:
        yield
        return
    import multiprocess

    previous = multiprocess.get_start_method(allow_none=True)
    if previous == "spawn":
        yield
        return
    multiprocess.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocess.set_start_method(previous, force=True)


def _score_metric(dataset, metric, n, batch_size, num_proc, shard_size, store, *, progress):
    """Row-metric columns for the first ``n`` rows, as a Dataset with only those columns."""
    from datasets import Dataset, concatenate_datasets

    view = _inputs_view(dataset, metric)
    if store is None:
        part = _map_metric(
            view.select(range(n)) if n < len(view) else view, metric, batch_size, num_proc, f"score {metric.name}"
        )
        return _ensure_float32(part)
    from selector.logs import progress as progress_bar

    key = store.metric_key(metric)
    ranges = [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]
    parts = []
    skipped = 0
    for start, end in progress_bar(ranges, desc=f"score {metric.name}", unit="shard", disable=not progress):
        table = store.load(metric.name, key, start, end)
        if table is None:
            part = _map_metric(
                view.select(range(start, end)), metric, batch_size, num_proc, f"{metric.name} rows {start}-{end}"
            )
            part = _ensure_float32(part)
            store.save(metric.name, key, start, end, part)
            parts.append(part)
        else:
            skipped += 1
            parts.append(Dataset(table))
    if skipped:
        logger.info("metric %r: %d of %d shard(s) already done, skipped", metric.name, skipped, len(ranges))
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _ensure_float32(part):
    """Pin score columns to float32 and embeddings to list<float32> whatever the worker returned."""
    from datasets import List, Value

    features = part.features.copy()
    changed = False
    for column, feature in part.features.items():
        if isinstance(feature, Value) and feature.dtype != "float32":
            features[column] = Value("float32")
            changed = True
        elif isinstance(feature, List) and isinstance(feature.feature, Value) and feature.feature.dtype != "float32":
            features[column] = List(Value("float32"))
            changed = True
    return part.cast(features) if changed else part


def _run_dataset_part(scored, metric):
    columns = {}
    for name in metric.fit_columns():
        if name not in scored.column_names:
            raise DataError(f"metric {metric.name!r} needs column {name!r}, which no metric produced")
        columns[name] = column_array(scored, name, dtype=None)
    out = metric.fit_transform(columns)
    for column, values in out.items():
        values = np.asarray(values)
        if len(values) != len(scored):
            raise DataError(f"metric {metric.name!r} returned {len(values)} values for {len(scored)} rows")
        if column in scored.column_names:
            scored = scored.remove_columns(column)
        scored = scored.add_column(column, _column_values(values), feature=_feature_for(values))
    return scored


def _feature_for(values: np.ndarray):
    from datasets import List, Value

    if values.dtype.kind == "f":
        return Value("float32") if values.ndim == 1 else List(Value("float32"))
    if values.dtype.kind in "iu":
        return Value("int64") if values.ndim == 1 else List(Value("int64"))
    if values.dtype.kind == "b":
        return Value("bool")
    return Value("string")


def _column_values(values: np.ndarray):
    if values.dtype.kind == "f":
        values = values.astype(np.float32)
    if values.ndim > 1:
        return list(values)
    return values if values.dtype.kind in "fiub" else values.tolist()


def shard_key(input_fingerprint: str, metric) -> str:
    """Folder name of a metric's shards: changes with the input, the metric's configuration and the model it
    resolves to (:func:`model_stamp`), so new weights under the same name are scored again."""
    from datasets.fingerprint import Hasher

    stamp = model_stamp(metric)
    blob = f"{input_fingerprint}|{Hasher.hash(metric)}" + (f"|{json.dumps(stamp, sort_keys=True)}" if stamp else "")
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: Files whose size and modification time stand for a local model's weights in :func:`model_stamp`.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".msgpack", ".h5", ".ckpt")


def model_stamp(metric) -> dict[str, str] | None:
    """The resolved model revisions of a metric, for the shard key (None for metrics without a model).

    Per model path in :meth:`model_ids` (``model_name_or_path``, ``clip_model_name_or_path``, ...): the commit
    hash of the cached Hub snapshot, or for a local folder or file a hash of its weight files' names, sizes and
    modification times (new weights saved under the same folder name change the key), or ``"unresolved"``.
    """
    if not hasattr(metric, "model_ids"):
        return None
    ids = metric.model_ids() or {}
    out = {}
    for key, value in sorted(ids.items()):
        if not (key.endswith("model_name_or_path") and isinstance(value, str) and value):
            continue
        resolved = ids.get(key.replace("model_name_or_path", "resolved_revision"))
        if resolved:
            out[key] = str(resolved)
        elif os.path.exists(value):
            out[key] = "local:" + _local_weights_hash(value)
        else:
            out[key] = "unresolved"
    return out or None


def _local_weights_hash(path: str) -> str:
    entries = []
    if os.path.isfile(path):
        files = [path]
    else:
        files = [
            os.path.join(root, name)
            for root, _, names in os.walk(path)
            for name in names
            if name.endswith(_WEIGHT_SUFFIXES) or name == "config.json"
        ]
    for file in sorted(files):
        try:
            st = os.stat(file)
        except OSError:
            continue
        entries.append(f"{os.path.relpath(file, path) if file != path else ''}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(entries).encode()).hexdigest()[:16]


_STAGING = re.compile(r"\.staging-[0-9]+")
_TMP_FILE = re.compile(r"\.tmp-[0-9]+$")


class _ShardStore:
    """Per (metric, shard) results under ``out_dir/.shards/<metric>/<key>/``: parquet written to a temporary
    name and renamed atomically, then a ``.done`` marker; both must exist for a shard to count as done."""

    def __init__(self, out_dir, input_fingerprint: str | None):
        self.out_dir = os.fspath(out_dir)
        self.input_fingerprint = input_fingerprint
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise ConfigError(f"--out {self.out_dir} exists and is not a directory")
        if os.path.isdir(self.out_dir) and os.listdir(self.out_dir):
            # a foreign manifest.json is not enough: only a folder vlselect wrote (marker or its manifest) is reused
            ours = os.path.isdir(os.path.join(self.out_dir, SHARD_DIR)) or is_own_folder(self.out_dir)
            if not ours:
                raise ConfigError(
                    f"--out {self.out_dir} is not empty and is not a vlselect score output; choose a new folder"
                )
        if input_fingerprint is None:
            logger.warning("the input has no fingerprint; finished shards will be recomputed on a re-run")
        os.makedirs(os.path.join(self.out_dir, SHARD_DIR), exist_ok=True)
        if not os.path.exists(os.path.join(self.out_dir, OWN_MARKER)):
            mark_own_folder(self.out_dir)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Delete what a killed run left behind: ``.staging-<pid>`` copies of an interrupted final save and
        ``*.tmp-<pid>`` files of interrupted shard writes. The caller holds the folder's lock, so no live run
        owns them (a run in another process would hold the lock)."""
        for name in os.listdir(self.out_dir):
            if _STAGING.fullmatch(name) and int(name.rsplit("-", 1)[1]) != os.getpid():
                logger.info("removing %s, left by an interrupted run", os.path.join(self.out_dir, name))
                shutil.rmtree(os.path.join(self.out_dir, name), ignore_errors=True)
            elif _TMP_FILE.search(name) and os.path.isfile(os.path.join(self.out_dir, name)):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.out_dir, name))
        for root, _, names in os.walk(os.path.join(self.out_dir, SHARD_DIR)):
            for name in names:
                if _TMP_FILE.search(name):
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(root, name))

    def metric_key(self, metric) -> str:
        key = shard_key(self.input_fingerprint or f"unfingerprinted-{time.time_ns()}", metric)
        metric_dir = os.path.join(self.out_dir, SHARD_DIR, metric.name)
        if os.path.isdir(metric_dir):
            for stale in os.listdir(metric_dir):
                if stale != key:
                    logger.info(
                        "metric %r: configuration or input changed, removing old shards %s", metric.name, stale
                    )
                    shutil.rmtree(os.path.join(metric_dir, stale), ignore_errors=True)
        os.makedirs(os.path.join(metric_dir, key), exist_ok=True)
        return key

    def _paths(self, name: str, key: str, start: int, end: int) -> tuple[str, str]:
        stem = os.path.join(self.out_dir, SHARD_DIR, name, key, f"rows-{start:010d}-{end:010d}")
        return stem + ".parquet", stem + ".done"

    def load(self, name: str, key: str, start: int, end: int):
        import pyarrow.parquet as pq

        data, done = self._paths(name, key, start, end)
        if not (os.path.exists(data) and os.path.exists(done)):
            return None
        table = pq.read_table(data)
        if table.num_rows != end - start:
            logger.warning("shard %s has %d rows instead of %d; recomputing", data, table.num_rows, end - start)
            return None
        return table

    def save(self, name: str, key: str, start: int, end: int, part) -> None:
        import pyarrow.parquet as pq

        data, done = self._paths(name, key, start, end)
        with atomic_open(data, "wb") as handle:
            pq.write_table(part.data.table, handle)
        atomic_write_text(done, json.dumps({"rows": [start, end], "key": key}))

    def finish(self, scored, manifest: dict):
        """Write the final ``save_to_disk`` folder and the manifest; return the dataset loaded from it."""
        from datasets import load_from_disk

        staging = os.path.join(self.out_dir, f".staging-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        scored.save_to_disk(staging)
        new_files = set(os.listdir(staging))
        for old in os.listdir(self.out_dir):
            if old.startswith("data-") and old.endswith(".arrow") and old not in new_files:
                os.remove(os.path.join(self.out_dir, old))
        for name in sorted(new_files, key=lambda f: f == "state.json"):  # state.json last: it names the files
            os.replace(os.path.join(staging, name), os.path.join(self.out_dir, name))
        os.rmdir(staging)
        write_json(os.path.join(self.out_dir, MANIFEST), redact(manifest))
        return load_from_disk(self.out_dir)


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that change scores."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("vlselect", "numpy", "torch", "transformers", "datasets", "sentence-transformers", "pillow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def build_manifest(
    scored, metric_list, *, config: dict, input_info: dict, seconds: float, metric_seconds: dict | None = None
) -> dict:
    """The manifest written beside a scoring run: resolved configuration, versions, model ids and resolved
    revisions, input fingerprint, seed, and row / NaN counts per metric."""
    from metrics.registry import registry_name

    errors = scored["error"] if "error" in scored.column_names else [None] * len(scored)
    error_counts = Counter(kind for kind in map(error_kind, errors) if kind is not None)
    metric_entries = []
    for metric in metric_list:
        columns = [c for c in metric.output_columns() if c in scored.column_names]
        nan_counts = {}
        arrays = {}
        for column in columns:
            values = arrays[column] = column_array(scored, column, dtype=None)
            if values.dtype.kind != "f":
                continue
            bad = np.isnan(values) if values.ndim == 1 else np.isnan(values).all(axis=1)
            nan_counts[column] = int(bad.sum())
        entry = {
            "metric": registry_name(metric),
            "name": metric.name,
            "class": f"{type(metric).__module__}:{type(metric).__qualname__}",
            "params": metric.get_params(),
            "higher_is_better": type(metric).higher_is_better,
            "columns": columns,
            "n_nan": nan_counts,
        }
        if metric_seconds and metric.name in metric_seconds:
            # This run's wall time for the metric (model loading included; 0 for shards resumed from disk).
            entry["seconds"] = round(metric_seconds[metric.name], 3)
        if hasattr(metric, "model_ids"):
            entry["model"] = metric.model_ids()
        report = metric.report(arrays)
        if report:
            entry["report"] = report
        metric_entries.append(entry)
    return {
        "vlselect_manifest": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {**config, "metrics": [{"metric": e["metric"], **e["params"]} for e in metric_entries]},
        "packages": package_versions(),
        "input": input_info,
        "seed": config.get("seed"),
        "n_rows": len(scored),
        "n_error_rows": sum(error_counts.values()),
        "errors_by_kind": dict(sorted(error_counts.items())),
        "metrics": metric_entries,
        "seconds": round(seconds, 3),
    }
