"""What the report shows, read from a run folder: the pool, the selection outcome per row, and the samples.

A run folder is what ``vlselect run``/``vlselect demo`` write (``scored/`` and ``selected/`` inside), a ``vlselect
select`` output (its manifest's ``input`` names the scored folder), or a ``vlselect score`` output alone. Every
piece is optional: :class:`RunData` records what is missing, and the report leaves those sections out and says so.

Sampling keeps the file small whatever the pool size: histograms and counts use every row; the embedding map, the
gallery and the per-cluster bars use bounded samples drawn with the run's seed (see the ``MAX_*`` constants), and
the page states what was sampled.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selector.errors import DataError
from selector.rows import MISSING_CLUSTER, cluster_labels, column_array, error_kind, rng, usable_mask
from selector.runs import MANIFEST, load_scored, read_manifest, read_selection_rows

logger = logging.getLogger(__name__)

#: At most this many rows are drawn on the embedding map (each with a thumbnail for the hover box).
MAX_MAP_POINTS = 2000
#: The gallery shows at most this many clusters (the largest), ...
MAX_GALLERY_CLUSTERS = 40
#: ... each with its top selected rows and its nearest rejected rows, ...
GALLERY_SELECTED = 4
GALLERY_REJECTED = 4
#: ... plus up to this many examples of each reason a row was ineligible (error kind, filter rule, dedup, ...).
GALLERY_PER_INELIGIBLE_REASON = 2
#: Per-cluster bars show at most this many clusters (the largest).
MAX_BAR_CLUSTERS = 300
#: Rejected candidates per cluster compared with the cluster's selected rows when looking for the nearest ones.
MAX_NEAREST_CANDIDATES = 500
#: Longest side of a thumbnail in pixels, and the most bytes one may take (re-encoded smaller above it).
THUMB_SIDE = 96
THUMB_MAX_BYTES = 4_000
#: Text kept per row: instruction and answer in the gallery, instruction in the map's hover box.
MAX_INSTRUCTION_CHARS = 1000
MAX_ANSWER_CHARS = 3000
MAX_HOVER_CHARS = 160

#: Reason kinds of rows no strategy saw; the gallery shows a few examples of each such reason.
_INELIGIBLE_KINDS = ("error", "missing", "filter", "dedup")


@dataclass
class RunData:
    """Everything the report draws, as numpy arrays over the pool rows (input order).

    Attributes:
        run_dir: the folder given.
        scored_dir / selected_dir: the resolved folders, None when absent.
        selection_manifest / scoring_manifest: their ``manifest.json`` (``{}`` when absent).
        dataset: the pool as a ``datasets.Dataset`` (the scored rows; the selected rows when only those exist).
        ids, errors: (n,) object arrays; ``errors`` holds each row's error kind or None.
        selected: (n,) bool, or None without a selection.
        reason, rank, cluster: (n,) per-row selection outcome (``reason`` strings, ``rank`` -1 where unranked,
            ``cluster`` -1 where none); None where the run did not record them.
        scores: ``{score column: (n,) float64}``; NaN = missing input, failed model answer or row with an error.
        embedding_column: the ``emb_*`` column the map uses, or None.
        missing: ``{section: why}`` for every section the run can't fill.
        notes: statements about partial data shown at the top of the page.
    """

    run_dir: str
    scored_dir: str | None = None
    selected_dir: str | None = None
    selection_manifest: dict = field(default_factory=dict)
    scoring_manifest: dict = field(default_factory=dict)
    dataset: Any = None
    ids: np.ndarray | None = None
    errors: np.ndarray | None = None
    selected: np.ndarray | None = None
    reason: np.ndarray | None = None
    rank: np.ndarray | None = None
    cluster: np.ndarray | None = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    embedding_column: str | None = None
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return 0 if self.ids is None else int(self.ids.shape[0])

    @property
    def seed(self) -> int:
        seed = self.selection_manifest.get("seed", self.scoring_manifest.get("seed", 0))
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


def resolve_folders(run_dir: str) -> tuple[str | None, str | None]:
    """``(scored_dir, selected_dir)`` of a run folder, a ``vlselect select`` output or a ``vlselect score`` output.

    Raises:
        DataError: ``run_dir`` is not a folder, or holds none of them.
    """
    if not os.path.isdir(run_dir):
        raise DataError(f"{run_dir}: no such folder (expected a run folder with scored/ and selected/)")
    selected_dir = scored_dir = None
    own = read_manifest(run_dir)
    if own.get("command") == "select":
        selected_dir = run_dir
    elif read_manifest(os.path.join(run_dir, "selected")).get("command") == "select":
        selected_dir = os.path.join(run_dir, "selected")
    if own and own.get("command") != "select" and os.path.exists(os.path.join(run_dir, "state.json")):
        scored_dir = run_dir
    elif os.path.exists(os.path.join(run_dir, "scored", "state.json")):
        scored_dir = os.path.join(run_dir, "scored")
    elif selected_dir is not None:
        pointed = read_manifest(selected_dir).get("input")
        if pointed and os.path.exists(os.path.join(pointed, "state.json")):
            scored_dir = pointed
    if scored_dir is None and selected_dir is None:
        raise DataError(
            f"{run_dir}: neither a run folder (scored/, selected/) nor a `vlselect select` or `vlselect score` "
            f"output (no {MANIFEST})"
        )
    return scored_dir, selected_dir


def load_run(run_dir: str, *, embedding_column: str | None = None) -> RunData:
    """Read a run folder into a :class:`RunData`; missing pieces are recorded in ``missing``, never raised.

    Args:
        run_dir: see :func:`resolve_folders`.
        embedding_column: the ``emb_*`` column of the map; default: the selection's embedding column, else its
            first dedup column, else the first ``emb_*`` column of the pool.
    """
    scored_dir, selected_dir = resolve_folders(run_dir)
    run = RunData(run_dir=run_dir, scored_dir=scored_dir, selected_dir=selected_dir)
    run.selection_manifest = read_manifest(selected_dir) if selected_dir else {}
    run.scoring_manifest = read_manifest(scored_dir) if scored_dir else {}
    subset = load_scored(selected_dir) if selected_dir else None
    if scored_dir is not None:
        run.dataset = load_scored(scored_dir)
    else:
        run.dataset = subset
        run.notes.append(
            f"The scored dataset ({run.selection_manifest.get('input') or 'scored/'}) is missing: the report shows "
            "the rows of the selected folder only."
        )
    ds = run.dataset
    n = len(ds)
    run.ids = _strings(ds, "id") if "id" in ds.column_names else np.array([str(i) for i in range(n)], dtype=object)
    run.errors = np.full(n, None, dtype=object)
    if "error" in ds.column_names:
        raw = _strings(ds, "error")
        # Most rows have no error: only the others go through the shared rule, one Python call each.
        flagged = np.flatnonzero(~usable_mask(raw, n)) if n else np.zeros(0, dtype=np.int64)
        run.errors[flagged] = [error_kind(e) for e in raw[flagged]]
    _load_selection(run, subset)
    _load_scores(run)
    _choose_embedding(run, embedding_column)
    return run


def _strings(ds, column: str) -> np.ndarray:
    """A string column as an object array (None kept), read through Arrow: fast for 10^6 rows."""
    import pyarrow as pa

    values = ds.with_format("arrow")[column]
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        return np.array([None if v is None else str(v) for v in values.to_pylist()], dtype=object)
    return values.to_numpy(zero_copy_only=False).astype(object)


def reason_kinds(reasons: np.ndarray) -> np.ndarray:
    """:func:`selector.selection.reason_kind` of every reason (the text before the first space, ``=`` or ``:``),
    vectorised with Arrow for large pools."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(reasons):
        return np.zeros(0, dtype=object)
    try:
        arrow = pa.array(reasons, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        arrow = pa.array([str(r) for r in reasons], type=pa.string())
    return pc.replace_substring_regex(arrow, pattern=r"(?s)[ =:].*", replacement="").to_numpy(zero_copy_only=False)


def reason_keys(reasons: np.ndarray) -> np.ndarray:
    """:func:`reason_key` of every reason, vectorised."""
    reasons = np.asarray(reasons, dtype=object)
    kinds = reason_kinds(reasons).astype(object)
    detailed = np.isin(kinds, ("error", "missing", "filter"))
    return np.where(detailed, reasons.astype(str), kinds).astype(object)


def _load_selection(run: RunData, subset) -> None:
    n = run.n_rows
    if run.selected_dir is None:
        run.missing["selection"] = "no `vlselect select` output in this folder: kept vs rejected is not shown"
        return
    rows = read_selection_rows(run.selected_dir)
    if rows is not None:
        if rows["id"].shape == run.ids.shape and np.array_equal(rows["id"], run.ids):
            where = np.arange(n, dtype=np.int64)
        else:
            position = {row_id: i for i, row_id in enumerate(run.ids)}
            where = np.array([position.get(str(i), -1) for i in rows["id"]], dtype=np.int64)
        found = where >= 0
        if found.sum() < n:
            run.notes.append(f"{n - int(found.sum())} pool rows have no recorded selection outcome.")
        run.selected = np.zeros(n, dtype=bool)
        run.selected[where[found]] = rows["selected"][found]
        run.reason = np.full(n, "not recorded", dtype=object)
        run.reason[where[found]] = rows["reason"][found]
        run.rank = np.full(n, -1, dtype=np.int64)
        run.rank[where[found]] = rows["rank"][found]
        run.cluster = np.full(n, MISSING_CLUSTER, dtype=np.int64)
        run.cluster[where[found]] = rows["cluster"][found]
        if "score" in rows and np.isfinite(rows["score"][found]).any():
            strategy_score = np.full(n, np.nan)
            strategy_score[where[found]] = rows["score"][found]
            run.scores.setdefault("selection score", strategy_score)
        return
    subset_names = subset.column_names if subset is not None else []
    if subset is not None and {"selected", "selection_reason"} <= set(subset_names):
        # `--keep-rejected` output: every pool row with its outcome.
        kept = dict(zip(_strings(subset, "id"), subset["selected"]))
        why = dict(zip(_strings(subset, "id"), subset["selection_reason"]))
        run.selected = np.array([bool(kept.get(i, False)) for i in run.ids])
        run.reason = np.array([why.get(i, "not recorded") for i in run.ids], dtype=object)
    else:
        chosen = set(_strings(subset, "id")) if subset is not None else set()
        if "selected" in subset_names:
            chosen = {i for i, flag in zip(_strings(subset, "id"), subset["selected"]) if flag}
        run.selected = np.array([i in chosen for i in run.ids])
        run.reason = np.array(
            [
                "selected" if s else (f"error {e}" if e else "not_selected (reason not recorded)")
                for s, e in zip(run.selected, run.errors)
            ],
            dtype=object,
        )
        run.notes.append(
            "This run has no per-row selection record (selection_rows.parquet; runs older than the report lack it): "
            "rejection reasons other than errors are unknown."
        )
    cluster_column = (run.selection_manifest.get("columns") or {}).get("clusters")
    if cluster_column and cluster_column in run.dataset.column_names:
        labels, _ = cluster_labels(column_array(run.dataset, cluster_column, dtype=None), n)
        run.cluster = labels


def _load_scores(run: RunData) -> None:
    features = run.dataset.features
    columns = [
        name
        for name, feature in features.items()
        if name.startswith("score_") and getattr(feature, "dtype", None) in _NUMERIC_DTYPES
    ]
    if not columns:
        run.missing["scores"] = "the pool has no score_* columns (was it scored with `vlselect score`?)"
        return
    table = run.dataset.select_columns(columns).with_format("numpy")[:]
    # Score columns first, in the dataset's order; the selection's own score (if any) last.
    strategy_score = run.scores.pop("selection score", None)
    for name in columns:
        run.scores[name] = np.asarray(table[name], dtype=np.float64)
    if strategy_score is not None:
        run.scores["selection score"] = strategy_score


_NUMERIC_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"}


def _choose_embedding(run: RunData, requested: str | None) -> None:
    names = [c for c in run.dataset.column_names if c.startswith("emb_")]
    if requested is not None:
        if requested not in run.dataset.column_names:
            raise DataError(f"no embedding column {requested!r}; available: {', '.join(names) or 'none'}")
        run.embedding_column = requested
        return
    columns = run.selection_manifest.get("columns") or {}
    dedup = columns.get("dedup")
    for candidate in (columns.get("embeddings"), *(dedup if isinstance(dedup, list) else [dedup]), *names):
        if candidate and candidate in names:
            run.embedding_column = candidate
            return
    run.missing["map"] = "the pool has no emb_* column, so there is no embedding to map"


def stable_sample(candidates: np.ndarray, k: int, ids: np.ndarray, seed: int) -> np.ndarray:
    """``k`` of the row indices ``candidates`` drawn at random with ``seed``, independent of the row order.

    The draw runs over the candidates sorted by id, so a permuted pool shows the same rows (sorting 10^6 ids
    costs far less than hashing them). Returns sorted indices; all of them when ``k >= len(candidates)``.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if k >= candidates.size:
        return np.sort(candidates)
    ordered = candidates[np.argsort(ids[candidates].astype(str), kind="stable")]
    return np.sort(ordered[rng(seed).choice(ordered.size, size=k, replace=False)])


def map_sample(
    usable: np.ndarray, selected: np.ndarray | None, ids: np.ndarray, seed: int, max_points: int = MAX_MAP_POINTS
) -> np.ndarray:
    """Row indices drawn on the map: every row with an embedding when they fit, else a sample.

    The sample keeps up to half of ``max_points`` for selected rows (all of them when fewer), so the selection
    stays visible in a large pool, and fills the rest with rejected rows.
    """
    rows = np.flatnonzero(usable)
    if rows.size <= max_points:
        return rows
    if selected is None:
        return stable_sample(rows, max_points, ids, seed)
    chosen = rows[selected[rows]]
    others = rows[~selected[rows]]
    take_selected = min(chosen.size, max(max_points // 2, max_points - others.size))
    picked = stable_sample(chosen, take_selected, ids, seed)
    rest = stable_sample(others, max_points - picked.size, ids, seed + 1)
    return np.sort(np.concatenate([picked, rest]))


def reason_key(reason: str) -> str:
    """The reason a row is grouped under in the gallery's filter: the kind (``selected``, ``quota``, ``budget``,
    ``dedup``, ...), with the detail for errors, filters and missing inputs (``error missing_image``)."""
    from selector.selection import reason_kind

    kind = reason_kind(reason)
    return str(reason) if kind in ("error", "missing", "filter") else kind


@dataclass
class Gallery:
    """The gallery's rows: ``groups`` is ``[(title, [(row, role), ...]), ...]``, role ``selected``, ``rejected``
    or ``row`` (a run without a selection)."""

    groups: list[tuple[str, list[tuple[int, str]]]]
    n_clusters: int
    n_clusters_shown: int


def gallery_rows(run: RunData, embeddings_of=None) -> Gallery:
    """Pick the gallery: for each of the largest clusters, its top selected rows (by selection rank) and the
    rejected rows nearest to them (highest cosine similarity to any selected row of the cluster, via
    ``embeddings_of(rows) -> (len(rows), d)``; by selection rank when there is no embedding), then a few examples
    of every reason that made rows ineligible."""
    n = run.n_rows
    selected = run.selected if run.selected is not None else np.zeros(n, dtype=bool)
    rank = run.rank if run.rank is not None else np.where(selected, 0, -1)
    cluster = run.cluster if run.cluster is not None else np.full(n, MISSING_CLUSTER, dtype=np.int64)
    reason = run.reason if run.reason is not None else np.full(n, "", dtype=object)
    kinds = reason_kinds(reason)
    ineligible = np.isin(kinds, _INELIGIBLE_KINDS) | (run.errors != None)  # noqa: E711 (object array)
    # Unranked rows sort after ranked ones; ties by id so the choice doesn't depend on row order.
    order_key = np.where(rank >= 0, rank, np.iinfo(np.int64).max)
    clustered = (cluster >= 0) & ~ineligible
    groups: list[tuple[str, list[tuple[int, str]]]] = []
    present = np.unique(cluster[clustered])
    sizes = np.bincount(cluster[clustered]) if clustered.any() else np.zeros(0, dtype=np.int64)
    shown = present[np.lexsort((present, -sizes[present]))][:MAX_GALLERY_CLUSTERS] if present.size else present
    buckets = [(f"cluster {c}", clustered & (cluster == c)) for c in shown]
    if not present.size:
        buckets = [("all eligible rows", ~ineligible)]
    per_side = (GALLERY_SELECTED, GALLERY_REJECTED) if present.size else (3 * GALLERY_SELECTED, 3 * GALLERY_REJECTED)
    for title, mask in buckets:
        rows = np.flatnonzero(mask)
        if not rows.size:
            continue
        kept = rows[selected[rows]]
        kept = kept[np.lexsort((run.ids[kept], order_key[kept]))]
        rejected = rows[~selected[rows]]
        rejected = rejected[np.lexsort((run.ids[rejected], order_key[rejected]))][:MAX_NEAREST_CANDIDATES]
        top = kept[: per_side[0]]
        nearest = rejected[: per_side[1]]
        if embeddings_of is not None and kept.size and rejected.size > per_side[1]:
            reference = kept[: max(per_side[0], 20)]
            vectors = embeddings_of(np.concatenate([reference, rejected]))
            if vectors is not None:
                ref, cand = _unit(vectors[: reference.size]), _unit(vectors[reference.size :])
                similarity = np.nan_to_num(cand @ ref.T, nan=-2.0).max(axis=1)
                nearest = rejected[np.argsort(-similarity, kind="stable")[: per_side[1]]]
        other = "rejected" if run.selected is not None else "row"
        groups.append((title, [(int(i), "selected") for i in top] + [(int(i), other) for i in nearest]))
    examples: list[tuple[int, str]] = []
    seen: Counter = Counter()
    candidates = np.flatnonzero(ineligible)[np.lexsort((run.ids[ineligible],))]
    for i, key in zip(candidates, reason_keys(reason[candidates])):
        key = key if reason[i] else f"error {run.errors[i]}"
        if seen[key] < GALLERY_PER_INELIGIBLE_REASON:
            seen[key] += 1
            examples.append((int(i), "rejected" if run.selected is not None else "row"))
    if examples:
        groups.append(("ineligible rows (errors, missing inputs, filters, duplicates)", examples))
    return Gallery(groups=groups, n_clusters=int(present.size), n_clusters_shown=int(shown.size))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.full_like(x, np.nan), where=norm > 0)


def thumbnail(value: Any, side: int = THUMB_SIDE, max_bytes: int = THUMB_MAX_BYTES) -> str | None:
    """A JPEG data URL of at most ``side`` pixels a side and ``max_bytes`` bytes from an image's original bytes
    (a ``{"bytes", "path"}`` dict, bytes or a path), or None when there is no image or it can't be decoded."""
    from PIL import Image, UnidentifiedImageError

    from selector.data.images import decode_rgb

    if value is None or (isinstance(value, dict) and not (value.get("bytes") or value.get("path"))):
        return None
    try:
        # decode_rgb: the safe opener (caps, formats); every decoder failure comes back as ImageError (a ValueError)
        image = decode_rgb(value, "thumbnail", draft=side).copy()
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        logger.debug("no thumbnail: %s", exc)
        return None
    # A busy picture can exceed the byte cap at full size; smaller and coarser tries keep the page's size bounded.
    for quality, scale in ((75, 1.0), (50, 1.0), (40, 0.66), (30, 0.5)):
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        small = image if scale == 1.0 else image.resize(size, Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=quality, optimize=True)
        data = buffer.getvalue()
        if len(data) <= max_bytes:
            return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
    logger.debug("no thumbnail: over %d bytes even at half size", max_bytes)
    return None


def row_details(run: RunData, rows: np.ndarray) -> dict[int, dict[str, Any]]:
    """Thumbnail, instruction and answer of each of ``rows`` (row index -> fields), read in one pass."""
    from datasets import Image

    from selector.data.schema import instruction, response

    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if not rows.size:
        return {}
    ds = run.dataset.select(rows.tolist())
    names = [c for c in ("image", "messages") if c in ds.column_names]
    ds = ds.select_columns(names)
    if "image" in names:
        ds = ds.cast_column("image", Image(decode=False))
    out = {}
    for i, row in zip(rows.tolist(), ds):
        messages = row.get("messages")
        out[i] = {
            "thumb": thumbnail(row.get("image")),
            "instruction": instruction(messages) or "",
            "answer": response(messages) or "",
        }
    return out


def embeddings_reader(run: RunData):
    """``read(rows) -> (len(rows), d) float32`` of the map's embedding column (NaN rows = missing), or None."""
    if run.embedding_column is None:
        return None
    from selector.rows import embedding_matrix

    def read(rows: np.ndarray) -> np.ndarray | None:
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        matrix = embedding_matrix(run.dataset.select(rows[order].tolist()), run.embedding_column)
        if matrix.ndim != 2 or matrix.shape[0] != rows.size:
            return None
        out = np.empty_like(matrix)
        out[order] = matrix
        return out

    return read


def has_embedding(run: RunData) -> np.ndarray:
    """(n,) bool: rows whose map embedding is present (no error; the vector is neither null, empty nor NaN)."""
    if run.embedding_column is None:
        return np.zeros(run.n_rows, dtype=bool)
    import pyarrow as pa

    # Arrow, not Python lists: only each vector's first value is read, so a 10^6-row pool costs little memory.
    column = run.dataset.with_format("arrow")[run.embedding_column]
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    present = []
    for chunk in chunks:
        flat = chunk.flatten().to_numpy(zero_copy_only=False)
        if pa.types.is_fixed_size_list(chunk.type):
            lengths = np.full(len(chunk), chunk.type.list_size)
        else:
            offsets = chunk.offsets.to_numpy()
            lengths = np.diff(offsets)
        # flatten() skips null vectors, so a row's first value sits at the sum of the earlier rows' lengths.
        valid = np.asarray(chunk.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        lengths = np.where(valid, lengths, 0)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        ok = valid & (lengths > 0)
        first = np.full(ok.shape[0], np.nan)
        first[ok] = flat[starts[ok]]
        present.append(ok & np.isfinite(first))
    present = np.concatenate(present) if present else np.zeros(0, dtype=bool)
    return present & (run.errors == None)  # noqa: E711 (errors holds error kinds, None = usable)
