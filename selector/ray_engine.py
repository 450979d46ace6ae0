"""The Ray engine: ``vlselect score --engine ray`` / ``selector.score(..., engine="ray")`` and SemDeDup on Ray.

Scoring on a cluster gives the same output as the local engine (:mod:`selector.scoring`): a ``save_to_disk``
folder with ``manifest.json``, the same ids, the same ``error`` rows, and scores equal within float tolerance
(bit-identical for metrics whose result does not depend on the batch composition). How it runs:

1. Input shards of ``shard_size`` rows under ``OUT/.shards/_input/<key>/``, each followed by a ``.done`` marker.
   From a source (a path or :class:`RaySource`, what ``vlselect score --engine ray`` passes), the driver plans the
   read with the local loader's planner and makes one pass over the rows' ids through the format's adapter (only
   the id field of a table), which counts each file's rows, notes where JSONL blocks start and makes duplicate ids
   unique by the loader's rule (:class:`selector.data.load.UniqueIds`). The first pipeline stage (CPU tasks) then
   reads each block on a worker with the same adapter, reading only its run of each file
   (:class:`selector.data.formats.Piece`), applies the loader's per-row checks
   (:func:`selector.data.load.canonical_row`, images through the safe opener inside the allowed roots), sets the
   unique ids and writes the canonical rows. From an already loaded ``Dataset``, the driver writes the columns
   the row metrics read instead.
2. The same Ray Data pipeline runs a ``map_batches`` stage per row metric, one shard per call. A model
   metric (:class:`metrics.base.ModelMetric`) runs in an actor pool (``concurrency`` actors with ``num_gpus``
   each), so every actor loads its model once; a cheap metric (``length``) runs as plain CPU tasks. Each call
   reads only its shard's columns, scores them in batches of ``batch_size`` with the same ``Metric.__call__``
   ``Dataset.map`` uses, and writes ``OUT/.shards/<metric>/<key>/rows-<start>-<end>.parquet`` then its ``.done``
   marker: the local engine's layout and keys, so either engine resumes the other's run.
3. The driver joins the finished shards onto the input rows (from a source: the input shards copied one at a
   time into a memory-mapped Arrow file), runs the dataset-level metric parts, and writes the folder and
   manifest through the local engine's own code.

Resume: a shard whose data file and marker both exist is never redone, so a re-run after the driver was
interrupted (or the whole job was killed) computes only the missing shards. A worker that dies mid-shard is
restarted by Ray (actors restart, tasks retry, without limit) and the shard is redone; a half-written shard has
no marker. ``OUT`` is a local path (on a filesystem every node sees, for a multi-node cluster) or a URI that
``pyarrow.fs.FileSystem.from_uri`` opens (``s3://bucket/run``, ``gs://...``); the final ``save_to_disk`` to a
URI goes through fsspec (``s3fs`` for ``s3://``).

SemDeDup (:func:`max_previous_similarity` and :func:`centroid_distance` here, chosen with ``engine="ray"`` in
:mod:`selector.prototypes` and the ``semdedup`` strategy): one Ray task per group of clusters, each reading only
its clusters' embeddings from the object store and running the local path's per-cluster function
(:func:`selector.prototypes._cluster_max_previous`) with the same single-threaded BLAS, so the result is the local
one, bit for bit.

Example:
    >>> import selector
    >>> scored = selector.score(ds, "length,clip", engine="ray", out_dir="scored/")               # doctest: +SKIP
    >>> scored = selector.score(ds, "clip", engine="ray", out_dir="s3://bucket/run", address="auto")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from selector.errors import ConfigError, DataError, MissingDependencyError, VLSelectError

logger = logging.getLogger(__name__)

INPUT_DIR = "_input"  # not a valid metric name (those start with a letter or digit), so it never collides
#: SemDeDup tasks take whole clusters until they hold this many rows (small clusters share a task).
ROWS_PER_TASK = 200_000
#: Source rows a reading worker turns into Arrow at a time (the rest of its shard is already Arrow).
_ROWS_PER_CHUNK = 256
#: Part of the input shards' key: bump when the rows read for the same input change.
_READ_VERSION = "1"


def require_ray():
    """Import and return ``ray`` (with Ray Data), or fail in one line naming the extra to install.

    Raises:
        MissingDependencyError: ``Install vlselect[ray] to use the Ray engine ...``.
    """
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data ships separately from ray's core ("ray[data]")
    except ImportError as exc:
        raise MissingDependencyError(
            f"Install vlselect[ray] to use the Ray engine: pip install 'vlselect[ray]' ({exc})"
        ) from None
    return ray


def connect(address: str | None = None):
    """Connect to the Ray cluster at ``address`` (``"auto"``: the one ``ray start`` runs on this machine; None:
    ``RAY_ADDRESS`` if set, else a new in-process local Ray) unless this process is already connected."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    return ray


class _Files:
    """The run's files under ``root``, a local folder or a URI, through a pyarrow filesystem.

    A local write goes to a temporary file renamed into place (:func:`selector.fileio.atomic_write_bytes`); on an
    object store a single PUT is already all-or-nothing. Rebuilt from ``root`` in each worker (cheap), so
    workers never receive credentials pickled on the driver.
    """

    def __init__(self, root: str):
        from pyarrow import fs

        if "://" in root and not root.startswith("file://"):
            self.fs, self.root = fs.FileSystem.from_uri(root)
            self.local = False
        else:
            self.fs = fs.LocalFileSystem()
            self.root = os.path.abspath(root.removeprefix("file://"))
            self.local = True

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self, path: str) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(path).type != fs.FileType.NotFound

    def write_bytes(self, path: str, data: bytes) -> None:
        if self.local:
            from selector.fileio import atomic_write_bytes

            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_bytes(path, data)
        else:
            with self.fs.open_output_stream(path) as handle:
                handle.write(data)

    def write_table(self, path: str, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(path, sink.getvalue().to_pybytes())

    def read_table(self, path: str, columns: list[str] | None = None):
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=columns, filesystem=self.fs)

    def listdir(self, path: str) -> list[str]:
        from pyarrow import fs

        if not self.exists(path):
            return []
        return [info.base_name for info in self.fs.get_file_info(fs.FileSelector(path))]

    def remove_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def mkdir(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)


def _stem(start: int, end: int) -> str:
    # the local engine's shard names (selector.scoring._ShardStore), so one engine resumes the other's run
    return f"rows-{start:010d}-{end:010d}"


def _is_done(files: _Files, stem: str, start: int, end: int) -> bool:
    if not (files.exists(stem + ".parquet") and files.exists(stem + ".done")):
        return False
    with files.fs.open_input_stream(stem + ".done") as handle:
        marker = json.loads(handle.read().decode())
    return marker.get("rows") == [start, end]


def _mark_done(files: _Files, stem: str, start: int, end: int, key: str) -> None:
    files.write_bytes(stem + ".done", json.dumps({"rows": [start, end], "key": key}).encode())


def _to_table(arrays: dict[str, np.ndarray]):
    """Metric outputs as Arrow: float32 columns, and list<float32> for embeddings (as ``Dataset.map`` stores them)."""
    import pyarrow as pa

    columns = {}
    for name, values in arrays.items():
        values = np.asarray(values, dtype=np.float32)
        if values.ndim == 1:
            columns[name] = pa.array(values, type=pa.float32())
        else:
            n, d = values.shape
            offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
            columns[name] = pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=pa.float32()))
    return pa.table(columns)


def _score_shard(metric, root: str, shard: dict, out_stem: str, key: str, columns, batch_size: int, rank) -> None:
    """Score one input shard with ``metric`` and write its output shard and marker (skipped when already done)."""
    files = _Files(root)
    start, end = shard["start"], shard["end"]
    if _is_done(files, out_stem, start, end):
        return  # a retried call after the first attempt finished writing
    table = files.read_table(shard["input"], columns=columns)
    parts = []
    for offset in range(0, table.num_rows, batch_size):
        # struct columns come back as dicts, i.e. images stay undecoded {"bytes", "path"} as in the local engine
        parts.append(metric(table.slice(offset, batch_size).to_pydict(), rank))
    arrays = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    for values in arrays.values():
        if len(values) != end - start:
            raise DataError(f"metric {metric.name!r} returned {len(values)} values for {end - start} rows")
    files.write_table(out_stem + ".parquet", _to_table(arrays))
    _mark_done(files, out_stem, start, end, key)


def _rows(batch: dict) -> list[dict]:
    """Ray Data's numpy batch as a list of shard descriptors with plain Python values."""
    names = list(batch)
    return [
        {name: (batch[name][i].item() if hasattr(batch[name][i], "item") else batch[name][i]) for name in names}
        for i in range(len(batch[names[0]]))
    ]


def _run_stage(batch: dict, flag: str, work) -> dict:
    """Run ``work`` on each shard of ``batch`` that this stage still has to do (``shard[flag]``); a user-facing
    error is passed on in the batch's ``failed``/``message`` fields (the error's class name and message) instead
    of raised."""
    rows = _rows(batch)
    for shard in rows:
        if shard[flag] and not shard["failed"]:
            try:
                work(shard)
            except VLSelectError as exc:
                shard["failed"], shard["message"] = type(exc).__name__, str(exc)
    # new arrays: Ray Data's batch arrays may be read-only views, and fixed-width strings would truncate
    return {
        **batch,
        **{name: np.array([shard[name] for shard in rows], dtype=object) for name in ("failed", "message")},
    }


def _task_stage(batch: dict, *, metric, index: int, root: str, key: str, columns, batch_size: int) -> dict:
    return _run_stage(
        batch,
        f"todo{index}",
        lambda shard: _score_shard(metric, root, shard, shard[f"out{index}"], key, columns, batch_size, None),
    )


class _ActorStage:
    """One actor of a model metric's pool: the metric loads its model on the first shard and keeps it."""

    def __init__(self, *, metric, index: int, root: str, key: str, columns, batch_size: int, rank):
        self.metric, self.index, self.root, self.key = metric, index, root, key
        self.columns, self.batch_size, self.rank = columns, batch_size, rank

    def __call__(self, batch: dict) -> dict:
        return _run_stage(batch, f"todo{self.index}", self._score)

    def _score(self, shard: dict) -> None:
        out = shard[f"out{self.index}"]
        _score_shard(self.metric, self.root, shard, out, self.key, self.columns, self.batch_size, self.rank)


class RaySource:
    """A data source the Ray engine reads block by block on its workers, with the local loader's rules.

    What :func:`selector.load_instructions` accepts (a JSON, JSONL, Parquet or Arrow file, a folder of Parquet or
    Arrow shards, a cc_sbu_align folder with its images, a ``save_to_disk`` folder read as the canonical format, a
    Hub id), with the same ``format``, ``image_root``, ``split`` and ``allow_outside_root``. The driver plans the
    read as the local loader does (:func:`selector.data.load._plan`: the files, the format, the image roots and the
    input fingerprint) and :meth:`index` makes one pass over the rows' ids; the rows themselves are read on the
    workers. ``len()`` is the number of rows; ``column_names`` are the canonical columns.

    Example:
        >>> source = RaySource("data/train.jsonl", image_root="data/images")  # doctest: +SKIP
        >>> scored = selector.score(source, "length,clip", engine="ray", out_dir="s3://bucket/run")  # doctest: +SKIP
    """

    def __init__(
        self,
        source: str | os.PathLike,
        format: str = "auto",
        image_root: str | list[str] | None = None,
        split: str | None = None,
        allow_outside_root: bool = False,
    ):
        self.source = os.fspath(source)
        self.format = format
        self.image_root = image_root
        self.split = split
        self.allow_outside_root = allow_outside_root
        self.shard_size = 10_000  # the engine sets it: JSONL line offsets are kept at shard starts only
        self._plan = None
        self._index = None

    def plan(self):
        """The local loader's plan of the read (files, format, image roots, fingerprint, image limits)."""
        if self._plan is None:
            from selector.data.load import _plan

            self._plan = _plan(self.source, self.format, self.image_root, self.split, self.allow_outside_root)
        return self._plan

    @property
    def column_names(self) -> list[str]:
        from selector.data.schema import features

        return list(features())

    @property
    def _fingerprint(self) -> str:
        # the local loader's fingerprint, so shard keys match and either engine resumes the other's run
        return self.plan().fingerprint

    def __len__(self) -> int:
        return self.index().n_rows

    def index(self) -> _SourceIndex:
        """The driver's one pass: each file's record count and the unique ids (see :class:`_SourceIndex`)."""
        if self._index is None or self._index.shard_size != self.shard_size:
            self._index = _index_source(self.plan(), self.shard_size)
        return self._index


@dataclass
class _FileIndex:
    path: str
    base: int  # the file's first record's row number in the source
    n_rows: int
    offset: int  # the file's ``row<i>`` label offset (formats.next_offset)
    starts: dict[int, tuple[int, int]]  # JSONL: record number in the file -> (byte offset, line), at shard starts


@dataclass
class _SourceIndex:
    files: list[_FileIndex]
    n_rows: int
    # shard number -> {row number (a string, as in JSON): unique id}, for the rows whose id was already taken
    renames: dict[int, dict[str, str]]
    shard_size: int

    def read_spec(self, start: int, end: int) -> str:
        """What a worker reads for rows ``start`` .. ``end - 1`` (JSON: the file pieces and the renamed ids)."""
        pieces = []
        for entry in self.files:
            low, high = max(start, entry.base), min(end, entry.base + entry.n_rows)
            if low >= high:
                continue
            first = low - entry.base
            byte_start, line_start = entry.starts.get(first, (None, 1))
            pieces.append(
                {
                    "path": entry.path,
                    "first": first,
                    "stop": high - entry.base,
                    "offset": entry.offset,
                    "byte_start": byte_start,
                    "line_start": line_start,
                }
            )
        renames = {row: new for row, new in self.renames.get(start // self.shard_size, {}).items() if int(row) < end}
        return json.dumps({"pieces": pieces, "renames": renames})


def _index_source(plan, shard_size: int) -> _SourceIndex:
    """One pass over the source on the driver: the rows' ids through the format's own adapter (for a Parquet or
    Arrow file only the id field is read), made unique in reading order by the local loader's rule
    (:class:`selector.data.load.UniqueIds`), and where each file's records start."""
    from selector.data.formats import FORMATS, ID_FIELDS, Piece, jsonl_lines, next_offset
    from selector.data.load import UniqueIds, canonical_id

    read = FORMATS[plan.format].read
    roots = tuple(plan.image_roots)
    unique = UniqueIds()
    entries, renames = [], {}
    base = offset = 0
    for path in plan.source.files:
        n_rows = 0
        for raw in read((path,), roots, Piece(path, offset=offset), ID_FIELDS):
            row_id = canonical_id(raw)
            new = unique(row_id)
            if new != row_id:
                row = base + n_rows
                renames.setdefault(row // shard_size, {})[str(row)] = new
            n_rows += 1
        starts = {}
        if path.endswith(".jsonl"):
            for k, (line, byte, _) in enumerate(jsonl_lines(path)):
                if (base + k) % shard_size == 0:
                    starts[k] = (byte, line)
        entries.append(_FileIndex(path, base, n_rows, offset, starts))
        base += n_rows
        offset = next_offset(path, offset, n_rows)
    if base == 0:
        raise DataError(f"{plan.source.files[0]}: the dataset has no rows")
    if renames:
        n_renamed = sum(len(shard) for shard in renames.values())
        example = next(iter(renames[min(renames)].values()))
        logger.warning("%s: %d duplicate id(s) made unique, e.g. %s", plan.source.name, n_renamed, example)
    return _SourceIndex(entries, base, renames, shard_size)


def _read_shard(root: str, shard: dict, options: dict) -> None:
    """Read rows ``start`` .. ``end - 1`` of the source with the format's adapter and the loader's per-row checks
    (:func:`selector.data.load.canonical_row`: images opened with the safe opener inside the allowed roots), give
    them their unique ids, and write them as the canonical input shard and its marker (skipped when done)."""
    import pyarrow as pa
    from datasets import Dataset

    from selector.data.formats import FORMATS, Piece
    from selector.data.load import canonical_row
    from selector.data.schema import features

    files = _Files(root)
    start, end = shard["start"], shard["end"]
    stem = shard["input"].removesuffix(".parquet")
    if _is_done(files, stem, start, end):
        return
    spec = json.loads(shard["read"])
    read = FORMATS[options["format"]].read
    roots = list(options["image_roots"])
    schema = features()
    tables, rows, n_rows = [], [], 0

    def flush() -> None:
        if rows:
            tables.append(Dataset.from_list(rows, features=schema).data.table)
            rows.clear()

    for piece in spec["pieces"]:
        for raw in read((piece["path"],), tuple(roots), Piece(**piece)):
            row = canonical_row(
                raw,
                roots,
                allow_outside_root=options["allow_outside_root"],
                image_limits=options["image_limits"],
                trusted_roots=options["trusted_roots"],
            )
            row["id"] = spec["renames"].get(str(start + n_rows), row["id"])
            rows.append(row)
            n_rows += 1
            if len(rows) == _ROWS_PER_CHUNK:
                flush()  # rows as Arrow in chunks: images are held once, not also as Python objects
    flush()
    if n_rows != end - start:
        raise DataError(
            f"{options['source']}: rows {start}-{end - 1} changed while the run read them ({n_rows} rows instead of "
            f"{end - start}); run again"
        )
    files.write_table(stem + ".parquet", pa.concat_tables(tables))
    _mark_done(files, stem, start, end, shard["input_key"])


def _read_stage(batch: dict, *, root: str, options: dict) -> dict:
    return _run_stage(batch, "todo_read", lambda shard: _read_shard(root, shard, options))


def _rows_dataset(files: _Files, stems: list[str], folder: str):
    """The canonical rows of all input shards as one memory-mapped ``datasets.Dataset``: the shards are copied
    one at a time into an Arrow file under ``folder`` (so the driver never holds more than one shard)."""
    import pyarrow as pa
    from datasets import Dataset

    from selector.data.schema import features

    schema = features().arrow_schema
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "rows.arrow")
    with open(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for stem in stems:
            writer.write_table(files.read_table(stem + ".parquet").cast(schema))
    return Dataset.from_file(path)


def _clear_stale(files: _Files, metric_dir: str, key: str, name: str) -> None:
    for stale in files.listdir(metric_dir):
        if stale != key:
            logger.info("metric %r: configuration or input changed, removing old shards %s", name, stale)
            files.remove_dir(f"{metric_dir}/{stale}")


def _input_columns(dataset, row_metrics) -> list[str]:
    wanted = []
    for metric in row_metrics:
        for column in metric.required_columns():
            if column in dataset.column_names and column not in wanted:
                wanted.append(column)
    return wanted


def score(
    dataset,
    metrics,
    *,
    out_dir: str | os.PathLike,
    batch_size: int = 32,
    num_proc: int | None = None,
    shard_size: int = 10_000,
    limit: int | None = None,
    seed: int = 0,
    source: str | None = None,
    progress: bool = True,
    address: str | None = None,
    concurrency: int | dict[str, int] | None = None,
    num_gpus: float | dict[str, float] | None = None,
    cpus_per_actor: float = 1,
):
    """Score ``dataset`` on Ray; same arguments and result as :func:`selector.scoring.score` (see the module
    docstring for how the work is split), reached through ``selector.score(..., engine="ray")``.

    Args:
        dataset: a ``datasets.Dataset`` in the canonical schema (as for the local engine), or a source the workers
            read block by block: a path (read as :func:`selector.load_instructions` reads it with its defaults) or
            a :class:`RaySource` (with the loader's options).
        metrics, batch_size, shard_size, limit, seed, source, progress: as for the local engine (``source``
            defaults to the path read).
        out_dir: required: the resumable shards live there (a local folder, or a URI such as ``s3://bucket/run``).
        num_proc: default for ``concurrency`` on a cluster without GPUs.
        address: the Ray cluster (``"auto"``, ``"ray://head:10001"``); None: ``RAY_ADDRESS``, else a local Ray
            started in this process. Ignored when this process is already connected.
        concurrency: actors per model metric, one number or ``{metric name: n}``. Default: the cluster's GPUs
            split between the model metrics that use GPUs (``num_gpus`` each), or ``num_proc`` (else 1) without.
        num_gpus: GPUs per model-metric actor, one number or ``{metric name: gpus}`` (``{"judge": 0}`` for a judge
            that calls a server); default 1 when the cluster has GPUs, else 0. Ray sets ``CUDA_VISIBLE_DEVICES``
            per actor, so the metric loads on ``cuda:0`` of its own GPU.
        cpus_per_actor: CPUs reserved per model-metric actor (torch threads follow it).

    Returns:
        The scored dataset loaded back from ``out_dir``, as the local engine returns it.

    Raises:
        MissingDependencyError: Ray is not installed.
        ConfigError, DataError: as the local engine.
    """
    from datasets import concatenate_datasets

    from metrics.base import ModelMetric, is_dataset_metric, is_row_metric
    from selector import scoring

    if out_dir is None:
        raise ConfigError("the Ray engine writes resumable shards: give out_dir (a folder or an s3:// URI)")
    if "://" in os.fspath(out_dir) and "?" in os.fspath(out_dir):
        # pyarrow would take them (from_uri), but the final save_to_disk goes through fsspec, which does not
        raise ConfigError(
            f"out_dir {os.fspath(out_dir)}: put the object store's options in the environment, not the URI (for an "
            "S3-compatible server: AWS_ENDPOINT_URL=http://HOST:PORT, on every node)"
        )
    ray = require_ray()
    if isinstance(dataset, (str, os.PathLike)):
        dataset = RaySource(dataset)
    reading = isinstance(dataset, RaySource)
    if reading:
        dataset.shard_size = shard_size
        source = dataset.source if source is None else source
    metric_list, n_total, n = scoring.check_request(dataset, metrics, batch_size, shard_size, limit)
    scoring._seed_everything(seed, load_torch=False)

    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None:
        logger.warning("the input has no fingerprint; finished shards will be recomputed on a re-run")
        fingerprint = f"unfingerprinted-{time.time_ns()}"
    base = None  # read from the workers' input shards at the end
    if not reading:
        base = dataset if n == n_total else dataset.select(range(n))
        replaced = [c for m in metric_list for c in m.output_columns() if c in base.column_names]
        if replaced:
            logger.warning("replacing existing column(s) %s with new scores", ", ".join(replaced))
            base = base.remove_columns(replaced)

    root = os.fspath(out_dir)
    files = _Files(root)
    store = scoring._ShardStore(files.root, fingerprint) if files.local else None  # checks --out, marks it ours
    started = time.time()
    row_metrics = [m for m in metric_list if is_row_metric(m)]
    ranges = [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]
    columns = _input_columns(dataset, row_metrics)
    # the workers' shards hold every canonical column, the driver's only those the metrics read
    what = f"rows{_READ_VERSION}" if reading else ",".join(columns)
    input_key = hashlib.sha256(f"{fingerprint}|{what}".encode()).hexdigest()[:16]
    input_dir = files.path(scoring.SHARD_DIR, INPUT_DIR)
    input_stems = [f"{input_dir}/{input_key}/{_stem(a, b)}" for a, b in ranges]
    keys, todo = [], []
    for metric in row_metrics:
        key = scoring.shard_key(fingerprint, metric)
        metric_dir = files.path(scoring.SHARD_DIR, metric.name)
        _clear_stale(files, metric_dir, key, metric.name)
        files.mkdir(f"{metric_dir}/{key}")
        keys.append(key)
        todo.append([not _is_done(files, f"{metric_dir}/{key}/{_stem(a, b)}", a, b) for a, b in ranges])
    # reading: every shard's rows are needed for the final folder, even where all metrics are done (say, shards
    # the local engine wrote)
    to_read = [reading and not _is_done(files, stem, a, b) for stem, (a, b) in zip(input_stems, ranges)]
    shards_todo = [i for i in range(len(ranges)) if to_read[i] or any(flags[i] for flags in todo)]
    n_reused = sum(len(ranges) - sum(flags) for flags in todo)
    if n_reused:
        logger.info("%d of %d metric shard(s) already done, skipped", n_reused, len(ranges) * len(row_metrics))

    if shards_todo:
        _clear_stale(files, input_dir, input_key, "input")
        files.mkdir(f"{input_dir}/{input_key}")
        view = None if reading else dataset.select_columns(columns).with_format("arrow")
        index_of_rows = dataset.index() if reading else None
        descriptors = []
        for i in shards_todo:
            start, end = ranges[i]
            stem = input_stems[i]
            if not reading and not _is_done(files, stem, start, end):
                files.write_table(stem + ".parquet", view[start:end])
                _mark_done(files, stem, start, end, input_key)
            shard = {"start": start, "end": end, "input": stem + ".parquet", "failed": "", "message": ""}
            shard["input_key"], shard["todo_read"] = input_key, to_read[i]
            shard["read"] = index_of_rows.read_spec(start, end) if to_read[i] else ""
            for index, metric in enumerate(row_metrics):
                shard[f"todo{index}"] = todo[index][i]
                shard[f"out{index}"] = files.path(scoring.SHARD_DIR, metric.name, keys[index], _stem(start, end))
            descriptors.append(shard)
        connect(address)
        _run_pipeline(
            ray,
            descriptors,
            row_metrics,
            keys=keys,
            root=files.root if files.local else root,
            columns_of=lambda m: [c for c in m.required_columns() if c in columns],
            batch_size=batch_size,
            concurrency=concurrency,
            num_proc=num_proc,
            num_gpus=num_gpus,
            cpus_per_actor=cpus_per_actor,
            is_model=lambda m: isinstance(m, ModelMetric),
            progress=progress,
            read_options=_read_options(dataset) if any(to_read) else None,
        )

    row_parts = [_read_metric(files, metric, key, ranges) for metric, key in zip(row_metrics, keys)]
    scratch = None
    if reading:
        for stem, (start, end) in zip(input_stems, ranges):
            if not _is_done(files, stem, start, end):
                raise DataError(f"input shard {stem} is missing after the run")
        # beside the input shards when local (the same disk as the output), else a local temporary folder
        scratch = files.path(scoring.SHARD_DIR, INPUT_DIR, input_key, "all") if files.local else tempfile.mkdtemp()
    try:
        if reading:
            base = _rows_dataset(files, input_stems, scratch)
        scored = concatenate_datasets([base, *row_parts], axis=1) if row_parts else base
        for metric in metric_list:
            if is_dataset_metric(metric):
                scored = scoring._run_dataset_part(scored, metric)
        elapsed = time.time() - started
        manifest = scoring.build_manifest(
            scored,
            metric_list,
            config={
                "batch_size": batch_size,
                "num_proc": num_proc,
                "shard_size": shard_size,
                "limit": limit,
                "seed": seed,
                "engine": "ray",
            },
            input_info={
                "source": source,
                "hub": scoring.loaded_from_hub(source),
                "fingerprint": getattr(dataset, "_fingerprint", None),
                "n_rows": n_total,
                "n_scored": n,
            },
            seconds=elapsed,
        )
        manifest["ray"] = {
            "n_shards": len(ranges) * len(row_metrics),
            "n_shards_reused": n_reused,
            "n_shards_computed": len(ranges) * len(row_metrics) - n_reused,
        }
        if reading:
            manifest["ray"]["n_input_shards_read"] = sum(to_read)
        return _finish(files, root, store, scored, manifest)
    finally:
        if scratch is not None:  # the returned dataset is the saved folder, not this copy of the rows
            shutil.rmtree(scratch, ignore_errors=True)


def _read_options(source: RaySource) -> dict:
    """What every reading worker needs besides its shard: the plan's format, image roots and image rules."""
    plan = source.plan()
    return {
        "source": plan.source.name,
        "format": plan.format,
        "image_roots": tuple(plan.image_roots),
        "allow_outside_root": plan.allow_outside_root,
        "image_limits": plan.image_limits,
        "trusted_roots": tuple(plan.trusted_roots),
    }


def _run_pipeline(
    ray,
    descriptors,
    row_metrics,
    *,
    keys,
    root,
    columns_of,
    batch_size,
    concurrency,
    num_proc,
    num_gpus,
    cpus_per_actor,
    is_model,
    progress,
    read_options=None,
) -> None:
    """One streaming Ray Data pipeline over the shards: a reading stage (CPU tasks) when the rows come from a
    source, then one ``map_batches`` stage per row metric."""
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = progress
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
    model_metrics = [metric for metric in row_metrics if is_model(metric)]
    names = {metric.name for metric in model_metrics}
    for option, value in (("num_gpus", num_gpus), ("concurrency", concurrency)):
        unknown = sorted(set(value) - names) if isinstance(value, dict) else []
        if unknown:
            raise ConfigError(f"{option} names {', '.join(unknown)}, not a model metric of this run")
    gpus = {m.name: float(_pick(num_gpus, m.name, 1.0 if cluster_gpus else 0.0)) for m in model_metrics}
    n_gpu_metrics = max(1, sum(1 for value in gpus.values() if value > 0))
    actors = {}
    for name, per_actor in gpus.items():
        # every model metric's pool lives for the whole pipeline, so the GPUs are split between the pools
        default = max(1, int(cluster_gpus // (per_actor * n_gpu_metrics))) if per_actor else max(1, num_proc or 1)
        actors[name] = int(_pick(concurrency, name, default))
        if actors[name] < 1:
            raise ConfigError(f"concurrency must be >= 1, got {actors[name]} for {name!r}")
    # actors hold their CPUs and GPUs until the pipeline ends: a pool that can't start, or cheap metrics' tasks
    # without a free CPU, would wait forever
    need_gpus = sum(actors[name] * gpus[name] for name in gpus)
    if need_gpus > cluster_gpus:
        raise ConfigError(
            f"the model metrics' actors need {need_gpus:g} GPUs, more than the cluster's {cluster_gpus:g} GPUs; "
            "lower concurrency or num_gpus (e.g. num_gpus={'judge': 0} for a metric that calls a server)"
        )
    cheap = len(model_metrics) < len(row_metrics)
    actor_cpus = sum(actors.values()) * cpus_per_actor
    if actor_cpus + (1 if cheap or read_options else 0) > cluster_cpus:
        kinds = [what for what, used in (("reading", read_options), ("the cheap metrics'", cheap)) if used]
        tasks = f" + 1 for {' and '.join(kinds)} tasks" if kinds else ""
        raise ConfigError(
            f"the model metrics' actors need {actor_cpus:g} CPUs{tasks}, more than the cluster's {cluster_cpus:g} "
            "CPUs; lower concurrency or cpus_per_actor"
        )
    pipeline = ray.data.from_items(descriptors, override_num_blocks=len(descriptors))
    if read_options is not None:
        pipeline = pipeline.map_batches(
            _read_stage, fn_kwargs={"root": root, "options": read_options}, batch_size=1, num_cpus=1
        )
    for index, metric in enumerate(row_metrics):
        options = {
            "metric": metric,
            "index": index,
            "root": root,
            "key": keys[index],
            "columns": columns_of(metric),
            "batch_size": batch_size,
        }
        if is_model(metric):
            pipeline = pipeline.map_batches(
                _ActorStage,
                fn_constructor_kwargs={**options, "rank": 0 if gpus[metric.name] else None},
                batch_size=1,
                compute=ActorPoolStrategy(size=actors[metric.name]),
                num_gpus=gpus[metric.name],
                num_cpus=cpus_per_actor,
            )
        else:
            pipeline = pipeline.map_batches(_task_stage, fn_kwargs=options, batch_size=1, num_cpus=1)
    # Each stage writes its own output shards; the driver only counts the descriptors coming back.
    n_done = 0
    for row in pipeline.iter_rows():
        if row["failed"]:
            # a user-facing error raised in a worker: the same class and one line here (leaving the loop stops
            # the pipeline); Ray itself would re-raise it as a RayTaskError with the remote traceback
            import selector.errors

            raise getattr(selector.errors, row["failed"], VLSelectError)(row["message"])
        n_done += 1
    if n_done != len(descriptors):
        raise DataError(f"the Ray pipeline returned {n_done} of {len(descriptors)} shards")


def _pick(value, name: str, default):
    """A per-metric option: one value for every model metric, or ``{metric name: value}`` (others: default)."""
    if value is None:
        return default
    if isinstance(value, dict):
        return value.get(name, default)
    return value


def _read_metric(files: _Files, metric, key: str, ranges):
    """The metric's columns for all rows, from its finished output shards, as a ``datasets.Dataset``."""
    import pyarrow as pa
    from datasets import Dataset

    from selector import scoring

    tables = []
    for start, end in ranges:
        stem = files.path(scoring.SHARD_DIR, metric.name, key, _stem(start, end))
        if not _is_done(files, stem, start, end):
            raise DataError(f"shard {stem} of metric {metric.name!r} is missing after the run")
        tables.append(files.read_table(stem + ".parquet"))
    return scoring._ensure_float32(Dataset(pa.concat_tables(tables)))


def _finish(files: _Files, root: str, store, scored, manifest: dict):
    if store is not None:
        return store.finish(scored, manifest)
    from datasets import load_from_disk

    from selector.fileio import dumps_json
    from selector.runs import MANIFEST

    scored.save_to_disk(root)
    files.write_bytes(files.path(MANIFEST), dumps_json(manifest).encode())
    return load_from_disk(root)


def _cluster_groups(order: np.ndarray, sorted_labels: np.ndarray, min_rows: int) -> list[tuple[int, int]]:
    """Spans of ``order`` (each a run of whole clusters) holding at least ``min_rows`` rows or one cluster."""
    n = order.shape[0]
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(sorted_labels)) + 1, [n]])
    groups, start = [], 0
    for end in bounds[1:]:
        if end - start >= min_rows:
            groups.append((start, int(end)))
            start = int(end)
    if start < n:
        groups.append((start, n))
    return groups


def _max_previous_task(X_group: np.ndarray, cluster_bounds: list[tuple[int, int]], block_size: int):
    """Per-cluster SemDeDup of one group: the local path's function on each cluster, single-threaded BLAS."""
    from threadpoolctl import threadpool_limits

    from selector.cluster import l2_normalize
    from selector.prototypes import _cluster_max_previous

    m = X_group.shape[0]
    best = np.full(m, -np.inf, dtype=np.float32)
    nearest = np.full(m, -1, dtype=np.int64)
    with threadpool_limits(limits=1, user_api="blas"):
        for a, b in cluster_bounds:
            if b - a >= 2:
                _cluster_max_previous(l2_normalize(X_group[a:b]), np.arange(a, b), best, nearest, block_size)
    return best, nearest


def max_previous_similarity(X, labels, order, *, block_size: int, rows_per_task: int | None = None):
    """:func:`selector.prototypes.max_previous_similarity` with one Ray task per group of clusters.

    Each task receives only its clusters' rows (in keep order) through the object store. Same result as the
    local function (same per-cluster code, same single-threaded BLAS).

    Returns:
        ``(max_similarity, nearest)``: (n,) float32 in [-1, 1] (``-inf`` for a cluster's first row) and (n,)
        int64 row indices into ``X`` (-1 for none).
    """
    ray = connect()
    X = np.asarray(X)
    n = X.shape[0]
    best = np.full(n, -np.inf, dtype=np.float32)
    nearest = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return best, nearest
    sorted_labels = labels[order]
    remote = ray.remote(num_cpus=1)(_max_previous_task)

    def submit(start: int, end: int):
        rows = order[start:end]
        local = sorted_labels[start:end]
        inner = np.concatenate([[0], np.flatnonzero(np.diff(local)) + 1, [end - start]])
        bounds = [(int(a), int(b)) for a, b in zip(inner[:-1], inner[1:])]
        return rows, remote.remote(ray.put(X[rows]), bounds, block_size)

    for rows, (group_best, group_nearest) in _bounded(
        ray, submit, _cluster_groups(order, sorted_labels, rows_per_task or ROWS_PER_TASK)
    ):
        best[rows] = group_best
        nearest[rows] = np.where(group_nearest >= 0, rows[np.maximum(group_nearest, 0)], -1)
    return best, nearest


def _bounded(ray, submit, groups):
    """Submit one task per group, at most twice the cluster's CPUs at a time, and yield ``(rows, result)``.

    Bounding what is in flight bounds what sits in the object store, so ``X`` may be a memory-mapped array far
    larger than this machine's memory: each group's rows are read only when its task is submitted.
    """
    limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending = {}
    groups = list(groups)
    position = 0
    while position < len(groups) or pending:
        while position < len(groups) and len(pending) < limit:
            rows, future = submit(*groups[position])
            pending[future] = rows
            position += 1
        (done,), _ = ray.wait(list(pending), num_returns=1)
        yield pending.pop(done), ray.get(done)


def _centroid_distance_task(X_group: np.ndarray, centers: np.ndarray, local_labels: np.ndarray) -> np.ndarray:
    from selector.prototypes import centroid_distance as local_centroid_distance

    return local_centroid_distance(X_group, centers, local_labels)


def centroid_distance(X, centers, labels, *, rows_per_task: int | None = None) -> np.ndarray:
    """:func:`selector.prototypes.centroid_distance` with one Ray task per group of clusters, each reading only
    its clusters' rows and centroids. Returns (n,) float32 cosine distance in [0, 2] (higher = less typical)."""
    ray = connect()
    X = np.asarray(X)
    labels = np.asarray(labels, dtype=np.int64)
    centers = np.asarray(centers)
    out = np.empty(X.shape[0], dtype=np.float32)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    remote = ray.remote(num_cpus=1)(_centroid_distance_task)

    def submit(start: int, end: int):
        rows = order[start:end]
        present, local = np.unique(sorted_labels[start:end], return_inverse=True)
        return rows, remote.remote(ray.put(X[rows]), centers[present], local)

    for rows, distance in _bounded(ray, submit, _cluster_groups(order, sorted_labels, rows_per_task or ROWS_PER_TASK)):
        out[rows] = distance
    return out


__all__ = ["RaySource", "centroid_distance", "connect", "max_previous_similarity", "require_ray", "score"]
