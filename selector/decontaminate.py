"""Decontamination: find training rows that repeat an evaluation sample's question or image.

A model fine-tuned on a subset that contains benchmark samples (ScienceQA, GQA, VQAv2, TextVQA, MMBench, POPE,
...) reports inflated results on those benchmarks. :func:`decontaminate` marks such rows; nothing is dropped.

Column (string, None when the row matched nothing, and always None for rows with ``error`` set):

``check_contaminated_by``
    ``"<eval set>:<eval id> <how>"``, e.g. ``"gqa:12345 text-13gram"``, ``"pope:88 image-exact"``,
    ``"vqav2:7 image-phash d=3"``, ``"mmbench:12 image-emb cos=0.973"``. When a row matches several evaluation
    samples, the strongest kind wins (``image-exact``, then ``text``, then ``image-phash``/``image-dhash``, then
    ``image-emb``), then the earlier ``--against`` set, then the eval sample with most shared n-grams / the
    smallest distance / the highest cosine. Keep the clean rows with the filter
    ``check_contaminated_by:is_null=true``.

Kinds of match:

- **text** (``text-<k>gram``): the row's turns (user and assistant by default) share a ``k``-token n-gram with an
  evaluation question (the eval set's user turns). Text is normalised first: ``<image>`` removed, lowercased
  (Unicode), apostrophes dropped, other punctuation replaced by spaces, whitespace collapsed; n-grams never cross
  turns. Template text is removed from the questions first: a ``min_n``-token window found in more than
  ``max_eval_df`` distinct samples of one eval set (``"answer the question using a single word or phrase"``,
  ``"please answer yes or no"``, an MMBench instruction) says nothing about which sample leaked (see
  :func:`_segments` for how the words next to a template are kept). What remains of a question, run by run: a
  run of at least ``n`` tokens (13, as in the GPT-3 and Llama 2 contamination analyses) contributes all its
  ``n``-grams; a shorter run of at least ``min_n`` tokens (a short VQA question) contributes itself whole (a
  ``k``-gram, ``min_n <= k < n``); shorter runs ("what color is the car") are too generic to match by text, and
  such questions match through their image only. An n-gram still found in more than ``max_eval_df`` samples (the
  same question asked of many images) is not used either.
  Matching goes through 64-bit hashes (SipHash of each token, a polynomial rolling hash over the window), a
  bitmap pre-filter and a sorted-array lookup, in numpy; collisions (about 2^-64 per pair) are ignored.
- **image-exact**: SHA-256 of the encoded bytes of any image of the row equals one of an eval image's.
- **image-phash** / **image-dhash** (``d=<bits>``): the perceptual hash of any image of the row is within
  ``max_hash_distance`` bits of an eval image's (the hash and band search of :mod:`selector.checks`); catches
  re-encoded, resized and lightly edited copies. A ``check_image_hash`` column from :func:`selector.checks.
  near_duplicates` with the same method and size is reused for single-image rows instead of decoding again.
- **image-emb** (``cos=<cosine>``, optional): with ``embedding_column``, cosine similarity between the row's and
  an eval sample's ``emb_*`` vectors at or above ``min_cosine``; catches crops and heavier edits that move the
  perceptual hash. The eval sets need the same column (score them with the same embedding metric). faiss
  (``IndexFlatIP``, exact) when installed, else exact blocked products.

Evaluation rows are used whatever their ``error`` (a test split without answers loads with
``no_assistant_turn``); only their readable text and images count.

Example:
    >>> from selector.decontaminate import decontaminate
    >>> clean = decontaminate(train, against=[("gqa", "gqa_testdev.jsonl")])  # doctest: +SKIP
    >>> clean.filter(lambda r: r["check_contaminated_by"] is None)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selector.checks import _image_bytes, _images, _progress, _rows, hash_image, nearest_in, resolve_hash_method
from selector.errors import ConfigError, DataError
from selector.rows import column_array, embedding_matrix, usable_mask

logger = logging.getLogger(__name__)

COLUMN = "check_contaminated_by"
#: Kinds of match, strongest first (the order that decides which match the column names).
KIND_ORDER = ("image-exact", "text", "image-hash", "image-emb")
_EVAL_KEYS = ("name", "source", "format", "image_root", "split")
_BATCH_ROWS = 20_000
# Odd multiplier of the polynomial rolling hash over token hashes (arithmetic wraps modulo 2**64).
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_SNIPPET = 120


@dataclass
class EvalSet:
    """One evaluation set to check against.

    Attributes:
        name: short name written before the eval id in ``check_contaminated_by`` (``gqa``, ``pope``).
        source: anything :func:`selector.load_instructions` reads (file, folder, ``save_to_disk`` folder, Hub id),
            or an already loaded canonical ``datasets.Dataset``.
        format, image_root, split: passed to the loader.
    """

    name: str
    source: Any
    format: str = "auto"
    image_root: str | list[str] | None = None
    split: str | None = None

    def load(self):
        """The evaluation rows as a canonical ``datasets.Dataset``."""
        from datasets import Dataset

        if isinstance(self.source, Dataset):
            return self.source
        return load_source(self.source, format=self.format, image_root=self.image_root, split=self.split)

    def describe(self) -> str:
        from datasets import Dataset

        return "<in-memory dataset>" if isinstance(self.source, Dataset) else str(self.source)


def load_source(
    source: str, format: str = "auto", image_root=None, split: str | None = None, allow_outside_root: bool = False
):
    """Load a dataset: a ``save_to_disk`` folder as it is (score, check and ``emb_*`` columns kept), anything else
    through :func:`selector.load_instructions` (``allow_outside_root`` is passed on)."""
    if isinstance(source, (str, os.PathLike)) and os.path.exists(os.path.join(source, "state.json")):
        from selector.runs import load_scored

        return load_scored(os.fspath(source))
    from selector.data import load_instructions

    return load_instructions(
        source, format=format, image_root=image_root, split=split, allow_outside_root=allow_outside_root
    )


def default_name(source: Any, position: int) -> str:
    """The eval-set name used when none is given: the file or folder name without extension, or the Hub name."""
    if isinstance(source, (str, os.PathLike)):
        base = os.path.basename(os.path.normpath(os.fspath(source)))
        stem = base.split(".")[0] if not base.startswith(".") else base
        if stem:
            return stem
    return f"eval{position}"


def parse_against(items: Sequence[Any]) -> list[EvalSet]:
    """Evaluation sets from a list of ``EvalSet``, ``"source"``, ``"name=source"``, ``(name, source)``, mappings
    with keys ``name``/``source``/``format``/``image_root``/``split``, or ``datasets.Dataset`` objects.

    Raises:
        ConfigError: no set, an unknown mapping key, a bad name, or two sets with the same name.
    """
    if isinstance(items, (str, Mapping, EvalSet)) or not isinstance(items, Sequence):
        items = [items]
    sets: list[EvalSet] = []
    for position, item in enumerate(items):
        if isinstance(item, EvalSet):
            sets.append(item)
        elif isinstance(item, tuple) and len(item) == 2:
            sets.append(EvalSet(str(item[0]), item[1]))
        elif isinstance(item, Mapping):
            unknown = sorted(set(item) - set(_EVAL_KEYS))
            if unknown or "source" not in item:
                raise ConfigError(
                    f"evaluation set {dict(item)!r}: keys are {', '.join(_EVAL_KEYS)} (source required)"
                    + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                )
            name = item.get("name") or default_name(item["source"], position)
            sets.append(EvalSet(str(name), **{k: v for k, v in item.items() if k != "name"}))
        elif isinstance(item, (str, os.PathLike)):
            name, source = _split_name(os.fspath(item))
            sets.append(EvalSet(name or default_name(source, position), source))
        else:
            sets.append(EvalSet(default_name(item, position), item))
    if not sets:
        raise ConfigError("decontamination needs at least one evaluation set (--against)")
    names = [s.name for s in sets]
    for s in sets:
        if not s.name or any(c.isspace() or c == ":" for c in s.name):
            raise ConfigError(f"evaluation set name {s.name!r}: use a short name without spaces or ':'")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"evaluation set names must be unique; repeated: {', '.join(duplicates)} (use NAME=SOURCE)")
    return sets


def _split_name(text: str) -> tuple[str | None, str]:
    """``"gqa=path"`` -> ``("gqa", "path")``; a string that exists as a path, or whose part before ``=`` is not a
    plain name, is a source without a name."""
    name, sep, rest = text.partition("=")
    if not sep or os.path.exists(text) or not name or not all(c.isalnum() or c in "_-." for c in name):
        return None, text
    return name, rest


# Text -----------------------------------------------------------------------------------------------------------


def _normalize(texts):
    """Arrow string array -> normalised strings (the rule in the module docstring)."""
    import pyarrow.compute as pc

    from selector.data.schema import IMAGE_TOKEN

    texts = pc.replace_substring(texts, IMAGE_TOKEN, " ")
    texts = pc.utf8_lower(texts)
    texts = pc.replace_substring_regex(texts, r"['\x{2019}`]", "")
    texts = pc.replace_substring_regex(texts, r"[^\p{L}\p{N}\s]+", " ")
    return pc.utf8_trim_whitespace(texts)


def normalize_text(text: str | Sequence[str]) -> str | list[str]:
    """The normalised form n-grams are taken from: ``"What's in the <image> picture?!"`` -> ``"whats in the
    picture"``. A list of strings is normalised in one vectorised call (much faster than one call each)."""
    import pyarrow as pa

    single = isinstance(text, str)
    values = _normalize(pa.array([text] if single else list(text), pa.string())).to_pylist()
    out = [None if v is None else " ".join(v.split()) for v in values]
    return out[0] if single else out


@dataclass
class _Tokens:
    """The tokens of a batch of rows: one 64-bit hash per token, the turn of each token, the row of each turn."""

    hashes: np.ndarray  # uint64 (n_tokens,)
    turn: np.ndarray  # int64 (n_tokens,) index into the kept turns
    turn_row: np.ndarray  # int64 (n_turns,) row index within the batch
    turn_start: np.ndarray  # int64 (n_turns,) first token of each turn
    turn_len: np.ndarray  # int64 (n_turns,)


def _tokens(messages, roles: Sequence[str], keep_rows: np.ndarray | None = None) -> _Tokens:
    """Tokenise an Arrow ``list<struct<role, content>>`` array (turns of ``roles`` only, rows in ``keep_rows``)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks() if messages.num_chunks else pa.array([], messages.type)
    turn_row = pc.list_parent_indices(messages).to_numpy().astype(np.int64)
    turns = pc.list_flatten(messages)
    keep = pc.and_(
        pc.is_in(turns.field("role"), value_set=pa.array(list(roles), pa.string())),
        pc.is_valid(turns.field("content")),
    )
    keep = keep.to_numpy(zero_copy_only=False).astype(bool, copy=False)
    if keep_rows is not None:
        keep &= keep_rows[turn_row]
    contents = turns.field("content").filter(pa.array(keep))
    turn_row = turn_row[keep]
    split = pc.utf8_split_whitespace(_normalize(contents))
    token_turn = pc.list_parent_indices(split).to_numpy().astype(np.int64)
    flat = pc.list_flatten(split)
    if len(flat):
        encoded = flat.dictionary_encode()
        words = encoded.dictionary.to_numpy(zero_copy_only=False)
        # SipHash of each distinct word (pandas' fixed key: the same word hashes the same in every run).
        hashes = pd.util.hash_array(words, categorize=False)[encoded.indices.to_numpy()]
    else:
        hashes = np.zeros(0, dtype=np.uint64)
    turn_len = np.bincount(token_turn, minlength=len(turn_row)).astype(np.int64)
    turn_start = np.concatenate([[0], np.cumsum(turn_len)[:-1]]).astype(np.int64) if len(turn_len) else turn_len
    return _Tokens(hashes.astype(np.uint64, copy=False), token_turn, turn_row, turn_start, turn_len)


def _ngrams(tokens: _Tokens, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every ``k``-token window inside one turn, and each window's first token position."""
    n = len(tokens.hashes)
    if n < k:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    m = n - k + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(k):  # Horner's rule, wrapping modulo 2**64
            h = h * _MULTIPLIER + tokens.hashes[i : i + m]
    valid = tokens.turn[:m] == tokens.turn[k - 1 :]
    return h[valid], np.flatnonzero(valid)


@dataclass
class _GramIndex:
    """The usable n-grams of one eval set for one length ``k``: sorted unique hashes and the first eval row of each."""

    k: int
    keys: np.ndarray
    rows: np.ndarray


@dataclass
class _Bitmap:
    """A one-hash bitmap over all eval n-gram hashes: most training n-grams are rejected with one memory read."""

    bits: np.ndarray
    mask: np.uint64

    @classmethod
    def build(cls, keys: np.ndarray) -> _Bitmap:
        size = 1 << int(np.clip(np.ceil(np.log2(max(len(keys), 1) * 16)), 16, 28))
        bits = np.zeros(size, dtype=bool)
        mask = np.uint64(size - 1)
        bits[(keys & mask).astype(np.int64)] = True
        return cls(bits, mask)

    def maybe(self, hashes: np.ndarray) -> np.ndarray:
        return self.bits[(hashes & self.mask).astype(np.int64)]


def _concat(parts: list[_Tokens], row_offsets: list[int]) -> _Tokens:
    """One :class:`_Tokens` for several batches (rows renumbered by ``row_offsets``)."""
    token_offsets = np.cumsum([0] + [len(p.hashes) for p in parts])
    turn_offsets = np.cumsum([0] + [len(p.turn_row) for p in parts])
    return _Tokens(
        np.concatenate([p.hashes for p in parts]).astype(np.uint64, copy=False),
        np.concatenate([p.turn + o for p, o in zip(parts, turn_offsets)]).astype(np.int64),
        np.concatenate([p.turn_row + o for p, o in zip(parts, row_offsets)]).astype(np.int64),
        np.concatenate([p.turn_start + o for p, o in zip(parts, token_offsets)]).astype(np.int64),
        np.concatenate([p.turn_len for p in parts]).astype(np.int64),
    )


def _distinct_df(hashes: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct hashes, the first (smallest) row of each, and in how many distinct rows each occurs."""
    order = np.lexsort((rows, hashes))
    hashes, rows = hashes[order], rows[order]
    first_pair = np.ones(len(hashes), dtype=bool)
    first_pair[1:] = (hashes[1:] != hashes[:-1]) | (rows[1:] != rows[:-1])
    hashes, rows = hashes[first_pair], rows[first_pair]
    keys, start, df = np.unique(hashes, return_index=True, return_counts=True)
    return keys, rows[start], df


def _segments(tokens: _Tokens, min_n: int, max_eval_df: int) -> tuple[_Tokens, int]:
    """Drop template tokens: those of a *dominant* common ``min_n``-token window.

    A window is common when it occurs in more than ``max_eval_df`` samples, and dominant when it is at least half
    as common as the windows one token to its left and right. Dominance keeps the words next to a template: in
    ``"... red kite answer the question using a single word or phrase"`` the window ``"kite answer ... word"`` is
    common (``kite`` is a common word) but far rarer than ``"answer ... word"``, so ``kite`` stays a question word.

    Returns the remaining tokens with each maximal run inside one turn as a "turn" of its own, and the number of
    template tokens dropped.
    """
    n_tokens = len(tokens.hashes)
    token_row = tokens.turn_row[tokens.turn]
    h, pos = _ngrams(tokens, min_n)
    template = np.zeros(n_tokens, dtype=bool)
    if len(h):
        keys, _, df = _distinct_df(h, token_row[pos])
        window_df = np.zeros(n_tokens + 2, dtype=np.int64)  # df of the window starting at token i - 1; 0: none
        window_df[pos + 1] = df[np.searchsorted(keys, h)]
        here, left, right = window_df[pos + 1], window_df[pos], window_df[pos + 2]
        dominant = (here > max_eval_df) & (2 * here >= left) & (2 * here >= right)
        cover = np.zeros(n_tokens + 1, dtype=np.int64)
        np.add.at(cover, pos[dominant], 1)
        np.add.at(cover, pos[dominant] + min_n, -1)
        template = np.cumsum(cover[:-1]) > 0
    boundary = np.ones(n_tokens, dtype=bool)
    boundary[1:] = (tokens.turn[1:] != tokens.turn[:-1]) | (template[1:] != template[:-1])
    keep = ~template
    seg_turn_index = np.flatnonzero(boundary & keep)  # first token of every kept run
    new_turn = np.searchsorted(seg_turn_index, np.flatnonzero(keep), side="right") - 1
    seg_len = np.bincount(new_turn, minlength=len(seg_turn_index)).astype(np.int64)
    seg_start = np.concatenate([[0], np.cumsum(seg_len)[:-1]]).astype(np.int64) if len(seg_len) else seg_len
    seg_row = token_row[seg_turn_index]
    return _Tokens(tokens.hashes[keep], new_turn.astype(np.int64), seg_row, seg_start, seg_len), int(template.sum())


def _eval_text_index(dataset, roles, n: int, min_n: int, max_eval_df: int) -> tuple[list[_GramIndex], dict]:
    """Index an eval set's questions: template tokens dropped, then per n-gram length the grams of at most
    ``max_eval_df`` samples (see the module docstring)."""
    parts, offsets, offset = [], [], 0
    view = dataset.select_columns(["messages"]).with_format("arrow")
    for table in view.iter(batch_size=_BATCH_ROWS):
        parts.append(_tokens(table.column("messages"), roles))
        offsets.append(offset)
        offset += table.num_rows
    stats: dict[str, int] = {"n_questions": 0, "n_template_tokens": 0, "n_samples_indexed": 0}
    if not parts:
        return [], {**stats, "n_grams": 0, "n_grams_too_common": 0}
    tokens = _concat(parts, offsets)
    stats["n_questions"] = int((tokens.turn_len > 0).sum())
    segments, stats["n_template_tokens"] = _segments(tokens, min_n, max_eval_df)
    token_row = segments.turn_row[segments.turn] if len(segments.turn) else segments.turn
    grams: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    h, pos = _ngrams(segments, n)
    grams[n] = (h, token_row[pos])
    # A segment shorter than n (a short VQA question) is one k-gram: the window at its first token.
    for k in range(min_n, n):
        whole = segments.turn_len == k
        if whole.any():
            h, pos = _ngrams(segments, k)
            at = np.searchsorted(pos, segments.turn_start[whole])
            grams[k] = (h[at], token_row[pos[at]])
    indexed_rows: list[np.ndarray] = []
    indexes = []
    n_grams = n_dropped = 0
    for k in sorted(grams):
        h, r = grams[k]
        if not len(h):
            continue
        keys, first_row, df = _distinct_df(h, r)
        usable = df <= max_eval_df
        n_grams += int(usable.sum())
        n_dropped += int((~usable).sum())
        indexes.append(_GramIndex(k, keys[usable], first_row[usable]))
        indexed_rows.append(r[np.isin(h, keys[usable])])
    stats["n_samples_indexed"] = int(len(np.unique(np.concatenate(indexed_rows)))) if indexed_rows else 0
    stats["n_grams"] = n_grams
    stats["n_grams_too_common"] = n_dropped
    return indexes, stats


def _text_matches(dataset, usable: np.ndarray, roles, eval_indexes: list[list[_GramIndex]]):
    """Per eval set: (best eval row or -1, n-gram length, shared n-grams) for every training row."""
    n_rows = len(dataset)
    n_sets = len(eval_indexes)
    best_row = np.full((n_sets, n_rows), -1, dtype=np.int64)
    best_k = np.zeros((n_sets, n_rows), dtype=np.int64)
    best_hits = np.zeros((n_sets, n_rows), dtype=np.int64)
    lengths = sorted({g.k for indexes in eval_indexes for g in indexes})
    all_keys = [g.keys for indexes in eval_indexes for g in indexes]
    if not lengths or not sum(len(k) for k in all_keys):
        return best_row, best_k, best_hits
    bitmap = _Bitmap.build(np.concatenate(all_keys))
    offset = 0
    view = dataset.select_columns(["messages"]).with_format("arrow")
    batches = view.iter(batch_size=_BATCH_ROWS)
    for table in _progress(batches, -(-n_rows // _BATCH_ROWS), "Text n-grams"):
        size = table.num_rows
        tokens = _tokens(table.column("messages"), roles, keep_rows=usable[offset : offset + size])
        token_row = tokens.turn_row[tokens.turn] if len(tokens.turn) else tokens.turn
        for k in lengths:
            h, pos = _ngrams(tokens, k)
            maybe = bitmap.maybe(h)
            h, pos = h[maybe], pos[maybe]
            for s, indexes in enumerate(eval_indexes):
                for gram in indexes:
                    if gram.k != k or not len(gram.keys):
                        continue
                    at = np.minimum(np.searchsorted(gram.keys, h), len(gram.keys) - 1)
                    hit = gram.keys[at] == h
                    if hit.any():
                        _keep_best(
                            best_row[s], best_k[s], best_hits[s], token_row[pos[hit]] + offset, gram.rows[at[hit]], k
                        )
        offset += size
    return best_row, best_k, best_hits


def _keep_best(best_row, best_k, best_hits, train_rows, eval_rows, k: int) -> None:
    """Fold hits of length ``k`` into the per-row best: most shared n-grams with one eval sample; ties: the
    longer n-gram, then the smaller eval row (lengths are visited in increasing order)."""
    n_eval = int(eval_rows.max()) + 1
    pairs, counts = np.unique(train_rows * n_eval + eval_rows, return_counts=True)
    rows, evals = pairs // n_eval, pairs % n_eval
    # Per training row: the eval row with most hits, the smallest eval row among ties.
    order = np.lexsort((evals, -counts, rows))
    rows, evals, counts = rows[order], evals[order], counts[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    rows, evals, counts = rows[first], evals[first], counts[first]
    better = counts >= best_hits[rows]
    rows, evals, counts = rows[better], evals[better], counts[better]
    best_row[rows], best_k[rows], best_hits[rows] = evals, k, counts


# Images ---------------------------------------------------------------------------------------------------------


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _eval_image_index(dataset, method: str, hash_size: int) -> tuple[dict, list, list, dict]:
    """SHA-256 -> first eval row, and the flat perceptual hashes with their eval rows."""
    exact: dict[bytes, int] = {}
    hashes: list[int | None] = []
    owners: list[int] = []
    n_images = n_failed = 0
    rows = _rows(dataset, ("id", "image", "images"))
    for index, row in enumerate(_progress(rows, len(dataset), "Eval image hashes")):
        for image in _images(row):
            data = _image_bytes(image)
            if not data:
                continue
            n_images += 1
            exact.setdefault(_digest(data), index)
            try:
                hashes.append(hash_image(data, method, hash_size))
            except (OSError, ValueError, SyntaxError) as exc:
                logger.warning("eval row %s: the image could not be decoded for hashing (%s)", row["id"], exc)
                n_failed += 1
                continue
            owners.append(index)
    return exact, hashes, owners, {"n_images": n_images, "n_images_undecodable": n_failed}


def _cached_hashes(dataset, method: str, hash_size: int) -> list | None:
    """The ``check_image_hash`` column as ints when it was written with this method and size, else None."""
    if "check_image_hash" not in dataset.column_names:
        return None
    values = column_array(dataset, "check_image_hash", dtype=None).tolist()
    width = (hash_size * hash_size + 3) // 4
    prefix = f"{method}:"
    present = [v for v in values if v]
    if not present or not all(v.startswith(prefix) and len(v) == len(prefix) + width for v in present[:100]):
        return None
    return [int(v[len(prefix) :], 16) if v else None for v in values]


def _image_matches(dataset, usable, eval_images, method: str, hash_size: int, max_distance: int):
    """Per eval set: exact (eval row or -1) and near (eval row or -1, distance) over every image of each row."""
    n_rows, n_sets = len(dataset), len(eval_images)
    exact_row = np.full((n_sets, n_rows), -1, dtype=np.int64)
    near_row = np.full((n_sets, n_rows), -1, dtype=np.int64)
    near_d = np.full((n_sets, n_rows), np.iinfo(np.int64).max, dtype=np.int64)
    cached = _cached_hashes(dataset, method, hash_size)
    query_hashes: list[int] = []
    query_rows: list[int] = []
    n_failed = n_cached = 0
    seen: dict[bytes, int | None] = {}  # SHA-256 -> perceptual hash of the images decoded so far
    rows = _rows(dataset, ("id", "image", "images", "error"))
    for index, row in enumerate(_progress(rows, n_rows, f"Image hashes ({method})")):
        if not usable[index]:
            continue
        images = _images(row)
        for position, image in enumerate(images):
            data = _image_bytes(image)
            if not data:
                continue
            digest = _digest(data)
            n_found = 0
            for s, (exact, _, _) in enumerate(eval_images):
                match = exact.get(digest)
                if match is not None:
                    n_found += 1
                    if exact_row[s, index] < 0 or match < exact_row[s, index]:
                        exact_row[s, index] = match
            if n_found == n_sets:
                continue  # the same image is in every eval set: no need to decode it for the perceptual hash
            if cached is not None and len(images) == 1 and cached[index] is not None:
                value = cached[index]
                n_cached += 1
            elif digest in seen:
                # The same image in several rows (common: one COCO image, many questions) is decoded once.
                value = seen[digest]
                n_cached += 1
            else:
                try:
                    value = seen[digest] = hash_image(data, method, hash_size)
                except (OSError, ValueError, SyntaxError) as exc:
                    logger.warning("row %s: image %d could not be decoded for hashing (%s)", row["id"], position, exc)
                    seen[digest] = None
                    n_failed += 1
                    continue
            if value is not None:
                query_hashes.append(value)
                query_rows.append(index)
    n_bits = hash_size * hash_size
    rows_arr = np.asarray(query_rows, dtype=np.int64)
    for s, (_, hashes, owners) in enumerate(eval_images):
        if not hashes or not query_hashes:
            continue
        for q, found in enumerate(nearest_in(hashes, query_hashes, max_distance, n_bits)):
            if found is None:
                continue
            row, (ref, distance) = rows_arr[q], found
            owner = owners[ref]
            if (distance, owner) < (near_d[s, row], near_row[s, row] if near_row[s, row] >= 0 else 1 << 62):
                near_row[s, row], near_d[s, row] = owner, distance
    stats = {"n_images_hashed": len(query_hashes), "n_images_undecodable": n_failed, "n_hashes_reused": n_cached}
    return exact_row, near_row, near_d, stats


# Embeddings -----------------------------------------------------------------------------------------------------


def _unit_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a finite, non-zero vector, L2-normalised, and their indices."""
    ok = np.isfinite(matrix).all(axis=1) & (np.abs(matrix).sum(axis=1) > 0) if matrix.size else np.zeros(0, bool)
    rows = np.flatnonzero(ok)
    kept = matrix[rows].astype(np.float32)
    kept /= np.linalg.norm(kept, axis=1, keepdims=True)
    return np.ascontiguousarray(kept), rows


def _nearest_cosine(queries: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index into ``base`` and cosine of the most similar base row for each query (unit rows, exact search)."""
    import importlib.util

    if importlib.util.find_spec("faiss") is not None:
        import faiss

        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        cos, idx = index.search(queries, 1)
        return idx[:, 0].astype(np.int64), cos[:, 0]
    from selector.knn import _block_knn

    idx, sq = _block_knn(queries, base, 1)
    # Unit vectors: |q - b|^2 = 2 - 2 cos.
    return idx[:, 0], 1.0 - sq[:, 0] / 2.0


def _embedding_matches(dataset, usable, eval_sets, eval_data, column: str, min_cosine: float):
    n_sets, n_rows = len(eval_sets), len(dataset)
    emb_row = np.full((n_sets, n_rows), -1, dtype=np.int64)
    emb_cos = np.full((n_sets, n_rows), np.nan, dtype=np.float32)
    train, train_rows = _unit_rows(embedding_matrix(dataset, column))
    keep = usable[train_rows]
    train, train_rows = train[keep], train_rows[keep]
    for s, (spec, data) in enumerate(zip(eval_sets, eval_data)):
        if column not in data.column_names:
            raise DataError(
                f"evaluation set {spec.name!r} has no column {column!r}; score it with the same embedding metric "
                "(vlselect score) and pass the scored folder"
            )
        base, base_rows = _unit_rows(embedding_matrix(data, column))
        if not len(base) or not len(train):
            continue
        if base.shape[1] != train.shape[1]:
            raise DataError(
                f"{column}: training vectors have {train.shape[1]} dimensions, {spec.name!r} has {base.shape[1]}"
            )
        idx, cos = _nearest_cosine(train, base)
        hit = cos >= min_cosine
        emb_row[s, train_rows[hit]] = base_rows[idx[hit]]
        emb_cos[s, train_rows[hit]] = cos[hit]
    return emb_row, emb_cos


# The result -----------------------------------------------------------------------------------------------------


@dataclass
class Contamination:
    """What :func:`find_contamination` found.

    Attributes:
        column: the ``check_contaminated_by`` value of every training row (None: no match).
        report: JSON-serialisable counts: rows matched overall, by eval set and by kind (a row matching several
            kinds or sets counts under each), examples, the eval sets' statistics and the settings.
    """

    column: list[str | None]
    report: dict[str, Any] = field(default_factory=dict)

    def apply(self, dataset):
        """``dataset`` with the ``check_contaminated_by`` column (replaced when present)."""
        from datasets import Value

        if COLUMN in dataset.column_names:
            dataset = dataset.remove_columns([COLUMN])
        return dataset.add_column(COLUMN, self.column, feature=Value("string"))


def find_contamination(
    dataset,
    against,
    *,
    n: int = 13,
    min_n: int = 8,
    max_eval_df: int = 10,
    text_roles: Sequence[str] = ("user", "assistant"),
    eval_roles: Sequence[str] = ("user",),
    text: bool = True,
    images: bool = True,
    max_hash_distance: int = 4,
    hash_method: str = "auto",
    hash_size: int = 8,
    embedding_column: str | None = None,
    min_cosine: float = 0.95,
    n_examples: int = 5,
) -> Contamination:
    """Match every training row against the evaluation sets (see the module docstring for the rules).

    Args:
        dataset: the training rows, a canonical ``datasets.Dataset``.
        against: evaluation sets (see :func:`parse_against`): sources, ``"name=source"``, ``(name, source)``,
            mappings, :class:`EvalSet` objects or loaded datasets.
        n: n-gram length for questions of at least ``n`` tokens (13 as in GPT-3 / Llama 2).
        min_n: shortest question (in tokens, templates removed) matched by text, whole; shorter ones match by
            image only. Also the window length that finds template text.
        max_eval_df: windows and n-grams found in more eval samples of one set than this are templates and are
            ignored.
        text_roles: training turns searched for eval n-grams.
        eval_roles: eval turns the n-grams are taken from (the questions).
        text, images: turn the text / image matching off.
        max_hash_distance: largest perceptual-hash Hamming distance, in bits, that counts as a near copy.
        hash_method: ``"auto"``, ``"phash"`` or ``"dhash"`` (see :func:`selector.checks.resolve_hash_method`).
        hash_size: perceptual hash side (``hash_size**2`` bits).
        embedding_column: an ``emb_*`` column present in the training rows and every eval set; None: off.
        min_cosine: cosine similarity, in [-1, 1], at or above which an embedding pair matches.
        n_examples: examples per eval set in the report.

    Raises:
        ConfigError: bad settings or evaluation-set specs.
        DataError: a dataset without the canonical columns, or an eval set without ``embedding_column``.
    """
    start = time.perf_counter()
    _check_settings(n, min_n, max_eval_df, max_hash_distance, hash_size, min_cosine, text_roles, eval_roles)
    method = resolve_hash_method(hash_method) if images else None
    missing = [c for c in ("id", "messages", "error") if c not in dataset.column_names]
    if missing:
        raise DataError(f"decontamination needs vlselect's canonical columns; missing {', '.join(missing)}")
    if embedding_column is not None and embedding_column not in dataset.column_names:
        raise DataError(f"no column {embedding_column!r}; available: {', '.join(dataset.column_names)}")
    eval_sets = parse_against(against)
    eval_data = [spec.load() for spec in eval_sets]
    # column_array reads a column in one go; iterating dataset["error"] decodes it row by row (10 s per 10^6 rows)
    usable = usable_mask(column_array(dataset, "error", dtype=None), len(dataset))
    n_rows = len(dataset)
    timings: dict[str, float] = {}
    eval_stats: list[dict[str, Any]] = []
    for spec, data in zip(eval_sets, eval_data):
        ok = usable_mask(column_array(data, "error", dtype=None)) if len(data) else np.zeros(0, bool)
        eval_stats.append({"source": spec.describe(), "n_rows": len(data), "n_error_rows": int((~ok).sum())})

    # kind -> ((n_sets, n_rows) matched eval row or -1, how(set, row) -> the text after the eval id)
    kinds: dict[str, tuple[np.ndarray, Callable[[int, int], str]]] = {}
    if text:
        t0 = time.perf_counter()
        indexes = []
        for stats, data in zip(eval_stats, eval_data):
            index, text_stats = _eval_text_index(data, eval_roles, n, min_n, max_eval_df)
            indexes.append(index)
            stats.update(text_stats)
        row, k, hits = _text_matches(dataset, usable, text_roles, indexes)
        kinds["text"] = (row, lambda s, i, k=k: f"text-{k[s, i]}gram")
        timings["text"] = time.perf_counter() - t0
    if images:
        t0 = time.perf_counter()
        eval_images = []
        for stats, data in zip(eval_stats, eval_data):
            exact, hashes, owners, image_stats = _eval_image_index(data, method, hash_size)
            eval_images.append((exact, hashes, owners))
            stats.update(image_stats)
        exact_row, near_row, near_d, train_image_stats = _image_matches(
            dataset, usable, eval_images, method, hash_size, max_hash_distance
        )
        kinds["image-exact"] = (exact_row, lambda s, i: "image-exact")
        kinds["image-hash"] = (near_row, lambda s, i, d=near_d: f"image-{method} d={d[s, i]}")
        timings["images"] = time.perf_counter() - t0
    if embedding_column is not None:
        t0 = time.perf_counter()
        emb_row, emb_cos = _embedding_matches(dataset, usable, eval_sets, eval_data, embedding_column, min_cosine)
        kinds["image-emb"] = (emb_row, lambda s, i, c=emb_cos: f"image-emb cos={c[s, i]:.3f}")
        timings["embeddings"] = time.perf_counter() - t0

    eval_ids = [column_array(data, "id", dtype=None) if len(data) else np.zeros(0, object) for data in eval_data]
    column = _label(kinds, eval_sets, eval_ids, n_rows)
    settings = {
        "n": n,
        "min_n": min_n,
        "max_eval_df": max_eval_df,
        "text_roles": list(text_roles),
        "eval_roles": list(eval_roles),
        "text": text,
        "images": images,
        "hash_method": method,
        "hash_size": hash_size,
        "max_hash_distance": max_hash_distance,
        "embedding_column": embedding_column,
        "min_cosine": min_cosine if embedding_column else None,
    }
    report = _report(dataset, column, kinds, eval_sets, eval_ids, eval_data, eval_stats, usable, n_examples)
    report["settings"] = settings
    if images:
        report["images"] = train_image_stats
    report["seconds"] = {
        **{k: round(v, 3) for k, v in timings.items()},
        "total": round(time.perf_counter() - start, 3),
    }
    return Contamination(column, report)


def decontaminate(dataset, against, **options):
    """``dataset`` with a ``check_contaminated_by`` column naming the evaluation sample each row repeats.

    Rows are marked, never dropped; rows with ``error`` are never matched. Options are those of
    :func:`find_contamination` (which also returns the report).

    Example:
        >>> marked = decontaminate(train, against=["gqa=gqa_testdev.jsonl", "pope=pope.jsonl"])  # doctest: +SKIP
        >>> from selector.filters import apply_filters
        >>> clean_mask = apply_filters(marked, ["check_contaminated_by:is_null=true"]).passed  # doctest: +SKIP
    """
    return find_contamination(dataset, against, **options).apply(dataset)


def _check_settings(n, min_n, max_eval_df, max_hash_distance, hash_size, min_cosine, text_roles, eval_roles):
    if not (isinstance(n, int) and isinstance(min_n, int) and 1 <= min_n <= n):
        raise ConfigError(f"n-gram lengths must be integers with 1 <= min_n <= n; got n={n!r}, min_n={min_n!r}")
    if not isinstance(max_eval_df, int) or max_eval_df < 1:
        raise ConfigError(f"max_eval_df must be an integer >= 1, got {max_eval_df!r}")
    if not isinstance(max_hash_distance, int) or max_hash_distance < 0:
        raise ConfigError(f"max_hash_distance must be an integer >= 0, got {max_hash_distance!r}")
    if not isinstance(hash_size, int) or hash_size < 2:
        raise ConfigError(f"hash_size must be an integer >= 2, got {hash_size!r}")
    if not -1.0 <= float(min_cosine) <= 1.0:
        raise ConfigError(f"min_cosine must be in [-1, 1], got {min_cosine!r}")
    from selector.data.schema import ROLES

    for name, roles in (("text_roles", text_roles), ("eval_roles", eval_roles)):
        bad = [r for r in roles if r not in ROLES]
        if isinstance(roles, str) or not roles or bad:
            raise ConfigError(f"{name} must be a non-empty list of {', '.join(ROLES)}; got {roles!r}")


def _label(kinds, eval_sets, eval_ids, n_rows) -> list[str | None]:
    """The column value of every row: the strongest kind, then the earliest eval set (see the module docstring)."""
    chosen_kind = np.full(n_rows, -1, dtype=np.int64)
    chosen_set = np.full(n_rows, -1, dtype=np.int64)
    present = [kind for kind in KIND_ORDER if kind in kinds]
    for position, kind in enumerate(present):
        rows = kinds[kind][0]
        for s in range(len(eval_sets)):
            take = (rows[s] >= 0) & (chosen_kind < 0)
            chosen_kind[take], chosen_set[take] = position, s
    column: list[str | None] = [None] * n_rows
    for i in np.flatnonzero(chosen_kind >= 0):
        rows, how = kinds[present[chosen_kind[i]]]
        s = int(chosen_set[i])
        column[i] = f"{eval_sets[s].name}:{eval_ids[s][rows[s, i]]} {how(s, int(i))}"
    return column


def _snippet(messages) -> str | None:
    from selector.data.schema import instruction

    text = instruction(messages)
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "..."


def _report(dataset, column, kinds, eval_sets, eval_ids, eval_data, eval_stats, usable, n_examples) -> dict:
    n_rows = len(dataset)
    present = [kind for kind in KIND_ORDER if kind in kinds]
    ids = column_array(dataset, "id", dtype=None)
    messages = dataset.select_columns(["messages"])
    against: dict[str, Any] = {}
    for s, spec in enumerate(eval_sets):
        any_kind = np.zeros(n_rows, dtype=bool)
        for kind in present:
            any_kind |= kinds[kind][0][s] >= 0
        examples = []
        for i in np.flatnonzero(any_kind)[:n_examples]:
            i = int(i)
            kind = next(k for k in present if kinds[k][0][s, i] >= 0)
            rows, how = kinds[kind]
            eval_row = int(rows[s, i])
            examples.append(
                {
                    "id": ids[i],
                    "match": f"{spec.name}:{eval_ids[s][eval_row]} {how(s, i)}",
                    "instruction": _snippet(messages[i]["messages"]),
                    "eval_instruction": _snippet(eval_data[s].select_columns(["messages"])[eval_row]["messages"]),
                }
            )
        against[spec.name] = {
            **eval_stats[s],
            "n_matched": int(any_kind.sum()),
            "by_kind": {kind: int((kinds[kind][0][s] >= 0).sum()) for kind in present},
            "examples": examples,
        }
    matched = np.flatnonzero([c is not None for c in column])
    return {
        "column": COLUMN,
        "n_rows": n_rows,
        "n_error_rows": int((~usable).sum()),
        "n_matched": int(len(matched)),
        "by_kind": {kind: int((kinds[kind][0] >= 0).any(axis=0).sum()) for kind in present},
        "against": against,
        "examples": [{"id": ids[int(i)], "match": column[i]} for i in matched[:n_examples]],
    }


__all__ = [
    "COLUMN",
    "Contamination",
    "EvalSet",
    "KIND_ORDER",
    "decontaminate",
    "find_contamination",
    "load_source",
    "normalize_text",
    "parse_against",
]
