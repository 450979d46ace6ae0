"""``load_instructions``: any supported source -> a ``datasets.Dataset`` with the canonical columns.

The checks every format shares live here: images are read and validated, turns and ``<image>`` tokens are
checked, non-UTF-8 text is repaired and flagged, duplicate ids are made unique. A row with a problem is kept
with ``error`` set; nothing is dropped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from selector.data.formats import (
    FORMATS,
    RawRow,
    Source,
    detect_format,
    looks_like_hub_id,
    pick_split,
    resolve_source,
)
from selector.data.images import ImageLimits, hub_cache_roots, load_row_images
from selector.data.schema import IMAGE_TOKEN, error_kind, features
from selector.errors import DataError

logger = logging.getLogger(__name__)

_LOADER_VERSION = "3"  # bump when the rows produced for the same input change, to invalidate datasets' cache


@dataclass
class LoadReport:
    """What happened while loading: the resolved format and the problems found.

    Attributes:
        source: the data file that was read.
        format: the format it was read as.
        image_root: where relative image paths were resolved (several roots joined by ``os.pathsep``).
        image_roots: the same as a list, in the order they are tried.
        split: the split that was read.
        n_rows: rows in the dataset (every input record, bad ones included).
        errors: error kind -> number of rows.
        error_examples: error kind -> up to 5 example ids.
        renamed_ids: ``(original, new)`` pairs for duplicate ids that were made unique.
    """

    source: str
    format: str
    image_root: str
    image_roots: list[str] = field(default_factory=list)
    split: str = "train"
    n_rows: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, list[str]] = field(default_factory=dict)
    renamed_ids: list[tuple[str, str]] = field(default_factory=list)


# Surrogates surrogateescape does not produce: JSON-escaped halves of a pair ("\ud83d"), common in scraped text.
_LONE_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def _repair_text(value: str) -> tuple[str, bool]:
    """Replace lone surrogates with U+FFFD: bytes that were not UTF-8 (kept as U+DC80..U+DCFF by surrogateescape
    decoding) and JSON-escaped lone halves of a surrogate pair (``"\\ud83d"``); report whether any were found."""
    try:
        value.encode("utf-8")
        return value, False
    except UnicodeEncodeError:
        value = _LONE_SURROGATE.sub("\ufffd", value)
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), True


def parse_image_roots(image_root: str | os.PathLike | list | tuple | None) -> list[str] | None:
    """``image_root`` as a list of absolute directories: a list, or one string with roots separated by
    ``os.pathsep`` (``:`` on Linux and macOS). None stays None (use the format's default)."""
    if image_root is None:
        return None
    if isinstance(image_root, (list, tuple)):
        roots = [os.fspath(root) for root in image_root]
    else:
        roots = [part for part in os.fspath(image_root).split(os.pathsep) if part]
    if not roots:
        raise DataError("image root: empty; pass a directory (or several separated by os.pathsep)")
    for root in roots:
        if not os.path.isdir(root):
            raise DataError(f"image root {root}: no such directory")
    return [os.path.abspath(root) for root in roots]


def _unnameable_path(ref: Any) -> str | None:
    """The error for an image path no file can have (a NUL, or a JSON-escaped lone surrogate: the OS refuses
    both with ValueError), else None. Bytes that were not UTF-8 (U+DC80..U+DCFF) can name a file and pass."""
    path = ref.get("path") if isinstance(ref, dict) and not ref.get("bytes") else ref
    if isinstance(path, str) and ("\0" in path or _LONE_SURROGATE.search(path)):
        shown = _repair_text(path.replace("\0", "\ufffd"))[0]
        return f"missing_image: {shown!r} can't name a file (it holds a NUL or half of a surrogate pair)"
    return None


def canonical_row(
    raw: RawRow,
    image_root: str | list[str],
    *,
    allow_outside_root: bool = False,
    image_limits: ImageLimits | None = None,
    trusted_roots: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Apply the shared checks to one adapter row and return the canonical row dict.

    Args:
        raw: the adapter's row.
        image_root: directory (or list of directories, first match wins) that relative image paths refer to; also
            the allowed roots (see :mod:`selector.data.images`).
        allow_outside_root: read image paths that resolve outside ``image_root`` too.
        image_limits: byte and pixel caps (default :meth:`selector.data.images.ImageLimits.from_env`).
        trusted_roots: further folders image paths may resolve into, never searched (a Hub dataset's caches).
    """
    image_roots = [image_root] if isinstance(image_root, (str, os.PathLike)) else list(image_root)
    errors = list(raw.errors)
    bad_text = False
    messages = []
    for turn in raw.messages:
        content, repaired = _repair_text(turn["content"])
        bad_text |= repaired
        messages.append({"role": turn["role"], "content": content})
    row_id, repaired = _repair_text(raw.id or "")  # canonical_id's rule, keeping whether text was repaired
    bad_text |= repaired
    if bad_text:
        errors.append("invalid_utf8: the text had bytes that are not UTF-8; they were replaced by U+FFFD")

    # A None image of a checked row could not be read when first loaded; `error` already says why.
    todo = []
    for k, ref in enumerate(raw.images):
        unusable = _unnameable_path(ref)
        if unusable:
            errors.append(unusable)
        elif not (ref is None and raw.checked):
            todo.append(k)
    resolved, image_errors = load_row_images(
        [raw.images[k] for k in todo],
        image_roots,
        allow_outside_root=allow_outside_root,
        limits=image_limits,
        row_name=f"row {raw.id}",
        trusted_roots=trusted_roots,
    )
    images: list = [None] * len(raw.images)
    for k, image in zip(todo, resolved):
        if image is not None and isinstance(image.get("path"), str):
            # a path kept as the image's name must be valid text for Arrow (lone surrogates become U+FFFD)
            image = {**image, "path": _repair_text(image["path"])[0]}
        images[k] = image
    errors.extend(image_errors)

    skip = raw.checked or any(
        kind in (error_kind(e) for e in errors) for kind in ("missing_conversation", "invalid_json")
    )
    if not skip:
        if not messages:
            errors.append("empty_conversation: the conversation has no turns")
        elif not any(t["role"] == "assistant" and t["content"].strip() for t in messages):
            errors.append("no_assistant_turn: the conversation has no non-empty assistant answer")
        n_tokens = sum(t["content"].count(IMAGE_TOKEN) for t in messages)
        if messages and n_tokens != len(raw.images):
            errors.append(f"image_token_mismatch: {n_tokens} {IMAGE_TOKEN} token(s) for {len(raw.images)} image(s)")
    source = raw.source
    if source is not None:
        source, _ = _repair_text(source)
    # error texts quote the input (paths, values), which may hold the same lone surrogates
    error = _repair_text("; ".join(str(e) for e in errors))[0] if errors else None
    return {
        "id": row_id,
        "image": images[0] if images else None,
        "images": images if len(images) > 1 else [],
        "messages": messages,
        "error": error,
        "source": source,
    }


def canonical_id(raw: RawRow) -> str:
    """The id :func:`canonical_row` gives an adapter row (before duplicates are made unique)."""
    return _repair_text(raw.id or "")[0]


def _id_key(row_id: str) -> bytes:
    # 8-byte digests instead of the ids themselves keep the memory for uniqueness small on huge sources.
    return hashlib.blake2b(row_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()


class UniqueIds:
    """Makes ids unique in reading order, the loader's rule: a repeated ``a`` becomes ``a#1``, then ``a#2``, ...
    (skipping any ``a#k`` already taken). Keeps an 8-byte digest per id, not the ids.

    Example:
        >>> unique = UniqueIds()
        >>> [unique(i) for i in ["a", "b", "a"]]
        ['a', 'b', 'a#1']
    """

    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self._suffixes: Counter[str] = Counter()

    def __call__(self, row_id: str) -> str:
        unique = row_id
        key = _id_key(unique)
        while key in self._seen:
            self._suffixes[row_id] += 1
            unique = f"{row_id}#{self._suffixes[row_id]}"
            key = _id_key(unique)
        self._seen.add(key)
        return unique

    def __len__(self) -> int:
        return len(self._seen)


def _generate(
    files: tuple[str, ...],
    format: str,
    image_roots: tuple[str, ...],
    stamp: str,
    allow_outside_root: bool = False,
    image_limits: ImageLimits | None = None,
    trusted_roots: tuple[str, ...] = (),
) -> Iterator[dict[str, Any]]:
    # `stamp` is unused here; it is part of gen_kwargs so that datasets' cache key changes with the input files.
    # Tuples, not lists: datasets treats list-valued gen_kwargs as shards and would split them.
    from selector.logs import progress

    unique = UniqueIds()
    reader = FORMATS[format].read(files, image_roots)
    name = os.path.basename(files[0]) + (f" (+{len(files) - 1} files)" if len(files) > 1 else "")
    for raw in progress(reader, desc=f"Reading {name}", unit=" rows"):
        row = canonical_row(
            raw,
            list(image_roots),
            allow_outside_root=allow_outside_root,
            image_limits=image_limits,
            trusted_roots=trusted_roots,
        )
        row["id"] = unique(row["id"])
        yield row
    if not unique:
        raise DataError(f"{files[0]}: the dataset has no rows")


def set_progress(enabled: bool) -> None:
    """Turn vlselect's and third-party libraries' (datasets, transformers) progress bars on or off.

    Shorthand for :func:`selector.logs.set_progress_bars` and :func:`selector.logs.set_third_party_progress_bars`.
    """
    from selector import logs

    logs.set_progress_bars(enabled)
    logs.set_third_party_progress_bars(enabled)


def _stamp(*paths: str) -> str:
    parts = [_LOADER_VERSION]
    for path in paths:
        try:
            st = os.stat(path)
            parts.append(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:absent")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _image_stamp(files: tuple[str, ...], format: str, roots: list[str], data_stamp: str) -> str:
    """Hash of the size and modification time of every image file the rows name, in every root that could hold it.

    The data file's stamp alone misses an image fixed (or broken) in place: its folder's mtime does not change, so
    datasets' cache would serve the old bytes and the old ``error``. Listing the referenced paths means reading
    the rows once more; the list is kept under the datasets cache keyed by the data file's stamp, so later loads
    of an unchanged file only ``stat`` the images.
    """
    import datasets.config

    key = hashlib.sha256(f"{data_stamp}:{format}:{os.pathsep.join(roots)}".encode()).hexdigest()[:32]
    listing = os.path.join(datasets.config.HF_DATASETS_CACHE, "vlselect-image-lists", f"{key}.txt")
    paths: list[str] | None = None
    try:
        with open(listing, encoding="utf-8", errors="surrogateescape") as handle:
            paths = handle.read().split("\0")[:-1]
    except OSError:
        pass
    if paths is None:
        found: dict[str, None] = {}
        for raw in FORMATS[format].read(files, tuple(roots)):
            for ref in raw.images:
                if isinstance(ref, dict) and not ref.get("bytes"):
                    ref = ref.get("path")
                # a NUL or a JSON-escaped lone surrogate can't name a file (os.stat raises ValueError on both)
                if not isinstance(ref, str) or not ref or "\0" in ref or _LONE_SURROGATE.search(ref):
                    continue
                for path in [ref] if os.path.isabs(ref) else [os.path.join(root, ref) for root in roots]:
                    found[path] = None
        paths = list(found)
        try:
            os.makedirs(os.path.dirname(listing), exist_ok=True)
            with open(listing + f".tmp-{os.getpid()}", "w", encoding="utf-8", errors="surrogateescape") as handle:
                handle.write("".join(f"{path}\0" for path in paths))
            os.replace(listing + f".tmp-{os.getpid()}", listing)
        except OSError as exc:  # a read-only cache only costs the next load another pass over the rows
            logger.debug("could not keep the image list %s: %s", listing, exc)
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"{path}:absent\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def _load_hub(source: str, split: str | None) -> Source:
    """Load a Hub dataset with ``datasets.load_dataset`` and return its cached Arrow files as a source."""
    import datasets

    wanted = split or "train"
    try:
        loaded = datasets.load_dataset(source, split=wanted)
    except ValueError as exc:
        # An unknown split: say which ones exist (listing them needs only the dataset's metadata).
        if "split" not in str(exc).lower():
            raise DataError(f"{source}: loading it with datasets.load_dataset failed: {exc}") from None
        try:
            available = datasets.get_dataset_split_names(source)
        except Exception as inner:  # noqa: BLE001 - any failure here only loses the list of splits
            logger.debug("could not list the splits of %s: %s", source, inner)
            raise DataError(f"{source}: no split {wanted!r} ({exc})") from None
        pick_split(list(available), split, source)
        raise DataError(f"{source}: loading split {wanted!r} failed: {exc}") from None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (offline, missing repo, auth); all are user-facing
        raise DataError(
            f"{source}: not a local file or directory, and datasets.load_dataset({source!r}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        chosen = pick_split(list(loaded), split, source)
        loaded = loaded[chosen]
    files = tuple(entry["filename"] for entry in getattr(loaded, "cache_files", None) or [])
    if not files or getattr(loaded, "_indices", None) is not None or _arrow_rows(files) != len(loaded):
        # An in-memory or index-mapped dataset has no plain Arrow files to stream: write one.
        import tempfile

        folder = tempfile.mkdtemp(prefix="vlselect-hub-")
        path = os.path.join(folder, "data.parquet")
        loaded.to_parquet(path)
        files = (path,)
    return Source(name=source, files=files, split=wanted, hub=True)


def _arrow_rows(files: tuple[str, ...]) -> int:
    """Rows in datasets' Arrow cache files (memory-mapped, nothing copied)."""
    import pyarrow as pa

    total = 0
    for path in files:
        with pa.memory_map(path) as source:
            total += pa.ipc.open_stream(source).read_all().num_rows
    return total


@dataclass
class _Plan:
    source: Source
    format: str
    image_roots: list[str]
    stamp: str
    fingerprint: str
    allow_outside_root: bool = False
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    trusted_roots: tuple[str, ...] = ()


def _plan(source, format: str, image_root, split: str | None, allow_outside_root: bool = False) -> _Plan:
    source = os.fspath(source)
    if not os.path.exists(source) and looks_like_hub_id(source):
        resolved = _load_hub(source, split)
    else:
        resolved = resolve_source(source, split)
    files = resolved.files
    for path in files:
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: the file is empty")
    if format == "auto":
        format = detect_format(files)
    elif format not in FORMATS:
        raise DataError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)} (or 'auto')")
    roots = parse_image_roots(image_root)
    if roots is None:
        roots = [os.path.abspath(root) for root in FORMATS[format].default_image_root(files[0])]
    stamp = _stamp(*files, *roots)
    stamp = hashlib.sha256(f"{stamp}:{_image_stamp(files, format, roots, stamp)}".encode()).hexdigest()[:32]
    limits = ImageLimits.from_env()
    # The image rules change which rows load, so they are part of the cache key.
    key = f"{stamp}:{format}:{os.pathsep.join(roots)}:{bool(allow_outside_root)}:{limits!r}"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:32]
    # A Hub dataset's image files (an imagefolder repo, say) are paths into the caches they were downloaded to.
    trusted = hub_cache_roots() if resolved.hub else ()
    return _Plan(resolved, format, roots, stamp, fingerprint, bool(allow_outside_root), limits, trusted)


def _gen_kwargs(plan: _Plan) -> dict[str, Any]:
    return {
        "files": tuple(plan.source.files),
        "format": plan.format,
        "image_roots": tuple(plan.image_roots),
        "stamp": plan.stamp,
        "allow_outside_root": plan.allow_outside_root,
        "image_limits": plan.image_limits,
        "trusted_roots": plan.trusted_roots,
    }


def _unwrap(exc: Exception) -> None:
    # datasets wraps errors raised inside the generator; re-raise ours so the user sees the one-line reason.
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, DataError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        raise cause from None


def _report(dataset, plan: _Plan) -> LoadReport:
    """Count errors and renamed ids on the Arrow columns, materialising only the rows concerned."""
    import pyarrow.compute as pc

    table = dataset.data
    report = LoadReport(
        source=plan.source.files[0] if len(plan.source.files) == 1 else plan.source.name,
        format=plan.format,
        image_root=os.pathsep.join(plan.image_roots),
        image_roots=list(plan.image_roots),
        split=plan.source.split,
        n_rows=len(dataset),
    )
    ids = table.column("id")
    renamed = pc.match_substring_regex(ids, r"#[0-9]+$")
    if pc.any(renamed).as_py():
        id_set = set(ids.to_pylist())
        for row_id in pc.filter(ids, renamed).to_pylist():
            base = row_id.rpartition("#")[0]
            if base in id_set:
                report.renamed_ids.append((base, row_id))
    errors = table.column("error")
    has_error = pc.invert(pc.is_null(errors))
    for row_id, error in zip(pc.filter(ids, has_error).to_pylist(), pc.filter(errors, has_error).to_pylist()):
        kind = error_kind(error)
        report.errors[kind] = report.errors.get(kind, 0) + 1
        examples = report.error_examples.setdefault(kind, [])
        if len(examples) < 5:
            examples.append(row_id)
    return report


def load_with_report(
    source,
    format: str = "auto",
    image_root: str | list[str] | None = None,
    split: str | None = None,
    allow_outside_root: bool = False,
):
    """Like :func:`load_instructions`, also returning the :class:`LoadReport`."""
    from datasets import Dataset

    plan = _plan(source, format, image_root, split, allow_outside_root)
    try:
        dataset = Dataset.from_generator(
            _generate, features=features(), gen_kwargs=_gen_kwargs(plan), fingerprint=plan.fingerprint
        )
    except DataError:
        raise
    except Exception as exc:
        _unwrap(exc)
        raise

    report = _report(dataset, plan)
    if report.renamed_ids:
        logger.warning(
            "%s: %d duplicate id(s) made unique, e.g. %s -> %s",
            report.source,
            len(report.renamed_ids),
            *report.renamed_ids[0],
        )
    n_bad = sum(report.errors.values())
    if n_bad:
        summary = ", ".join(f"{kind}: {count}" for kind, count in sorted(report.errors.items()))
        logger.warning(
            "%s: %d of %d rows have errors and will not be selected (%s)", report.source, n_bad, len(dataset), summary
        )
    return dataset, report


def load_instructions(
    source,
    format: str = "auto",
    image_root: str | list[str] | None = None,
    split: str | None = None,
    streaming: bool = False,
    allow_outside_root: bool = False,
):
    """Load image-instruction data into a ``datasets.Dataset`` with the canonical columns.

    Args:
        source: a data file (``.json``, ``.jsonl``, ``.parquet``, ``.arrow``), a directory holding one (or
            Parquet/Arrow shards of one table), a ``save_to_disk`` folder (a ``DatasetDict`` folder too), a
            cc_sbu_align folder with ``filter_cap.json``, or a Hub dataset id (``owner/name``) that is not a
            local path, read through ``datasets.load_dataset(source, split=split)``.
        format: ``"auto"`` (detect) or one of :data:`selector.data.formats.FORMATS`: ``"llava"``,
            ``"sharegpt4v"``, ``"messages"`` (TRL / HF chat), ``"minigpt4"``, ``"canonical"`` (vlselect's own
            columns, e.g. a dataset saved with ``save_to_disk``; it loads back unchanged).
        image_root: directory that relative image paths refer to, or several (a list, or one string separated by
            ``os.pathsep``): the first root where the file exists wins. Default: the data file's directory
            (LLaVA, messages), that directory and its parent (ShareGPT4V), ``<dir>/image`` (MiniGPT-4).
        split: which split of a ``DatasetDict`` folder or Hub dataset to read; default ``"train"``. Single files
            have only ``"train"``.
        streaming: return a ``datasets.IterableDataset`` that reads the source lazily, row by row, with the
            same checks; memory stays bounded however large a JSONL, Parquet or Arrow source is (ids are kept
            as 8-byte digests to make them unique).
        allow_outside_root: also read image paths that resolve (after symlinks) outside the image roots. By
            default such a path is the row error ``image_outside_root: <path>``: the allowed roots are
            ``image_root`` when given, else the format's default above. Every image is also read only from a
            regular file, within byte, pixel and format limits (:mod:`selector.data.images`).

    Returns:
        A ``datasets.Dataset`` (or ``IterableDataset`` when ``streaming``) with columns ``id``, ``image``,
        ``images``, ``messages``, ``error``, ``source`` (see :mod:`selector.data.schema`). Rows that can't be
        used are kept with ``error`` set.

    Raises:
        DataError: the source is missing, empty, doesn't parse (the message names file, line and column), its
            format can't be detected (the message says what was expected and what was seen), or the split does
            not exist (the message lists the available splits).

    Example:
        >>> ds = load_instructions("selector/example_data/llava_mini.json")  # doctest: +SKIP
        >>> ds[0]["messages"][0]["role"]  # doctest: +SKIP
        'user'
    """
    if streaming:
        from datasets import IterableDataset

        plan = _plan(source, format, image_root, split, allow_outside_root)
        return IterableDataset.from_generator(_generate, features=features(), gen_kwargs=_gen_kwargs(plan))
    dataset, _ = load_with_report(
        source, format=format, image_root=image_root, split=split, allow_outside_root=allow_outside_root
    )
    return dataset


__all__ = [
    "LoadReport",
    "UniqueIds",
    "canonical_id",
    "canonical_row",
    "load_instructions",
    "load_with_report",
    "parse_image_roots",
    "set_progress",
]
