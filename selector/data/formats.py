"""Format adapters: each turns one source format into :class:`RawRow` records.

Two layers:

* **Containers** hold records: a JSON list, JSONL, Parquet, an Arrow file, a ``save_to_disk`` folder (or a
  split of a ``DatasetDict`` folder), or the cached Arrow files of a Hub dataset. :func:`iter_records` reads
  any of them lazily (JSONL line by line, Parquet and Arrow in record batches), so large sources never sit in
  memory. A JSON list is parsed whole; use JSONL or Parquet for data larger than memory.
* **Formats** know a record's structure (LLaVA ``conversations``, chat ``messages``, the canonical schema, ...)
  and turn one record into a :class:`RawRow`. MiniGPT-4's ``filter_cap.json`` is one JSON object, so that
  format reads its file itself.

Everything that is the same for every format (reading and validating images, checking turns and ``<image>``
tokens, repairing non-UTF-8 text, making ids unique) happens once, in :mod:`selector.data.load`.

To add a format, write a :class:`Format` (``sniff`` decides from a :class:`Probe` whether a source is in this
format; ``read`` yields raw rows, usually built with :func:`record_reader`) and add it to :data:`FORMATS`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from selector.data.schema import IMAGE_TOKEN
from selector.errors import DataError

MINIGPT4_INSTRUCTION = "Describe this image in detail."

#: LLaVA ``from`` values (and chat roles) -> canonical roles.
LLAVA_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}

#: Top-level image folders that only ShareGPT4V uses (LLaVA-1.5's mix shares coco/, gqa/, vg/, ...).
SHAREGPT4V_FOLDERS = ("sam", "wikiart", "share_textvqa", "web-celebrity", "web-landmark", "llava")


@dataclass
class RawRow:
    """One record as a format adapter sees it, before the shared checks.

    ``images`` holds image references: a path (relative to an image root, or absolute), raw bytes, a
    ``{"bytes", "path"}`` dict, or None when the record names an image it can't locate. ``errors`` collects
    structural problems the adapter found.

    ``checked`` marks a row read back from a canonical dataset whose ``error`` was set when it was first
    loaded: that error is kept as it is, the conversation checks are not run again (they would describe the
    same problem twice), and a None image (one that could not be read then) stays None.
    """

    id: str | None
    images: list[Any] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    source: str | None = None
    checked: bool = False


@dataclass
class Probe:
    """What auto-detection looks at: the source, its files, and its first records (or top-level object)."""

    path: str
    is_dir: bool
    files: list[str]
    sample: Any = None


@dataclass
class Format:
    name: str
    expects: str  # shown when detection fails: what a source of this format looks like
    sniff: Callable[[Probe], bool]
    # (files, image_roots, piece=None, columns=None) -> rows; a Piece restricts the read to a run of one file's
    # records, `columns` (a hint) to the fields a table read needs (the rows' ids need ID_FIELDS only)
    read: Callable[..., Iterator[RawRow]]
    default_image_root: Callable[[str], list[str]]  # first data file -> image roots, first match wins


# Containers ----------------------------------------------------------------------------------------------------

JSON_SUFFIXES = (".json", ".jsonl")
TABLE_SUFFIXES = (".parquet", ".arrow")
DATA_SUFFIXES = JSON_SUFFIXES + TABLE_SUFFIXES
_BATCH_ROWS = 64  # rows per Arrow batch: small, because one row may hold several images


def _decode(data: bytes) -> str:
    # surrogateescape keeps undecodable bytes as lone surrogates, so one bad byte marks one row instead of
    # failing the whole file; load.py turns them into U+FFFD and an `invalid_utf8` error on that row.
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def read_json(path: str) -> Any:
    """Parse a JSON file; a syntax error becomes a :class:`DataError` naming the file, line and column."""
    with open(path, "rb") as handle:
        data = handle.read()
    if not data.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        return json.loads(_decode(data))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON: nested too deeply to parse") from None


def jsonl_lines(path: str, start: int = 0, first_line: int = 1) -> Iterator[tuple[int, int, bytes]]:
    """``(line_number, byte_offset, line)`` of each non-blank line (a JSONL record) from byte ``start`` on, where
    the line numbered ``first_line`` begins."""
    with open(path, "rb") as handle:
        handle.seek(start)
        position = start
        for number, line in enumerate(handle, start=first_line):
            if line.strip():
                yield number, position, line
            position += len(line)


def iter_jsonl(path: str, start: int = 0, first_line: int = 1) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_number, record, error)`` for each non-blank line; a line that doesn't parse has
    ``record=None`` and an ``invalid_json`` error, so the row is kept and counted instead of lost.

    ``start`` and ``first_line`` begin the read at a byte offset (a line start found by :func:`jsonl_lines`).

    This is the data loader's reader; :func:`selector.fileio.iter_jsonl` (vlselect's own files) fails on a bad
    line instead, because there a bad line means a broken file, not a bad row."""
    for number, _, line in jsonl_lines(path, start, first_line):
        try:
            yield number, json.loads(_decode(line)), None
        except json.JSONDecodeError as exc:
            yield number, None, f"invalid_json: {path} line {number} column {exc.colno}: {exc.msg}"
        except RecursionError:
            yield number, None, f"invalid_json: {path} line {number} is nested too deeply to parse"


def _window(batches: Iterator, skip: int, count: int | None) -> Iterator:
    """The record batches' rows ``skip`` .. ``skip + count - 1`` (to the end when ``count`` is None)."""
    for batch in batches:
        if count is not None and count <= 0:
            return
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        batch = batch.slice(skip) if count is None else batch.slice(skip, count)
        skip = 0
        if count is not None:
            count -= batch.num_rows
        yield batch


def _arrow_batches(path: str, first: int = 0, stop: int | None = None, columns=None) -> Iterator:
    """Record batches of rows ``first`` .. ``stop - 1`` of a Parquet or Arrow file (only the fields of
    ``columns`` the file has, when given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = None if stop is None else stop - first
    try:
        if path.endswith(".parquet"):
            # pre_buffer=False: otherwise pyarrow reads ahead and holds many row groups; this way memory is
            # bounded by one row group.
            parquet = pq.ParquetFile(path, pre_buffer=False)
            names = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
            # only the row groups that hold the wanted rows are read
            groups, skip, position = [], 0, 0
            for index in range(parquet.metadata.num_row_groups):
                n = parquet.metadata.row_group(index).num_rows
                if position + n > first and (stop is None or position < stop):
                    skip = first - position if not groups else skip
                    groups.append(index)
                position += n
            batches = parquet.iter_batches(batch_size=_BATCH_ROWS, row_groups=groups, columns=names)
            yield from _window(batches, skip, count)
            return
        with open(path, "rb") as handle:
            for batch in _window(_ipc_batches(handle), first, count):
                yield batch if columns is None else batch.select([c for c in columns if c in batch.schema.names])
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: can't be read as {os.path.splitext(path)[1][1:]} ({exc})") from None


def _ipc_batches(handle) -> Iterator:
    import pyarrow as pa

    # `datasets` writes the IPC stream format; other tools write the file (random-access) format.
    try:
        reader = pa.ipc.open_stream(handle)
    except pa.ArrowInvalid:
        handle.seek(0)
        file_reader = pa.ipc.open_file(handle)
        for index in range(file_reader.num_record_batches):
            batch = file_reader.get_batch(index)
            yield from pa.Table.from_batches([batch]).to_batches(max_chunksize=_BATCH_ROWS)
        return
    for batch in reader:
        yield from pa.Table.from_batches([batch]).to_batches(max_chunksize=_BATCH_ROWS)


@dataclass(frozen=True)
class Piece:
    """Records ``first`` .. ``stop - 1`` of one data file (0-based; blank JSONL lines are not records): what one
    block of a distributed read covers (the Ray engine). A piece's rows, fallback ids included, are the rows a read
    of the whole source gives at those positions.

    Attributes:
        path: the data file.
        first, stop: the records' range in the file (``stop`` None: to the end).
        offset: records in the source's earlier files that count towards ``row<i>`` labels (see
            :func:`next_offset`).
        byte_start, line_start: JSONL only: where record ``first`` starts (:func:`jsonl_lines`) and its line
            number, so the reader seeks instead of parsing the records before it; None reads from the start.
    """

    path: str
    first: int = 0
    stop: int | None = None
    offset: int = 0
    byte_start: int | None = None
    line_start: int = 1


def next_offset(path: str, offset: int, n_records: int) -> int:
    """The ``row<i>`` label offset after a file of ``n_records`` records: JSON lists and tables count across
    files; JSONL records are labelled by their line instead."""
    return offset if path.endswith(".jsonl") else offset + n_records


def _json_rows(path: str) -> list:
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows, got a JSON {type(data).__name__}")
    return data


def _piece_records(piece: Piece, columns=None) -> Iterator[tuple[str, str, Any, str | None]]:
    path = piece.path
    stem = os.path.splitext(os.path.basename(path))[0]
    count = None if piece.stop is None else piece.stop - piece.first
    if path.endswith(".jsonl"):
        if piece.byte_start is None:
            lines = itertools.islice(iter_jsonl(path), piece.first, piece.stop)
        else:
            lines = itertools.islice(iter_jsonl(path, piece.byte_start, piece.line_start), count)
        for number, record, error in lines:
            yield stem, f"line{number}", record, error
        return
    if path.endswith(TABLE_SUFFIXES):
        batches = _arrow_batches(path, piece.first, piece.stop, columns)
        records = (record for batch in batches for record in batch.to_pylist())
    else:
        records = iter(_json_rows(path)[piece.first : piece.stop])
    for position, record in enumerate(records, start=piece.offset + piece.first):
        yield stem, f"row{position}", record, None


def iter_records(
    files: tuple[str, ...] | list[str], piece: Piece | None = None, columns=None
) -> Iterator[tuple[str, str, Any, str | None]]:
    """Records of one or more data files as ``(file stem, position label, record, error)``, read lazily.

    Position labels are ``row<i>`` (JSON list, Parquet, Arrow; counted over all files) or ``line<n>`` (JSONL).
    ``piece`` reads only that run of one file's records, with the labels a read of all ``files`` gives them;
    ``columns`` reads only those fields of a Parquet or Arrow record (a JSON record is always whole).
    """
    if piece is not None:
        yield from _piece_records(piece, columns)
        return
    offset = 0
    for path in files:
        n_records = 0
        for item in _piece_records(Piece(path, offset=offset), columns):
            n_records += 1
            yield item
        offset = next_offset(path, offset, n_records)


_PROBE_ROWS = 20


def probe_sample(files: tuple[str, ...] | list[str]) -> Any:
    """The parsed top-level object of a single JSON file, else a list of the first parsed records."""
    if len(files) == 1 and files[0].endswith(".json"):
        return read_json(files[0])
    rows = []
    for _, _, record, _ in iter_records(files):
        if record is not None:
            rows.append(record)
        if len(rows) == _PROBE_ROWS:
            break
    return rows


def _sample_rows(probe: Probe) -> list:
    sample = probe.sample
    return sample[:_PROBE_ROWS] if isinstance(sample, list) else [sample]


def record_reader(
    convert: Callable[[Any, str], RawRow],
) -> Callable[[tuple[str, ...], tuple[str, ...]], Iterator[RawRow]]:
    """A format's ``read`` from a function that turns one record (a dict) and its fallback id into a RawRow."""

    def read(files: tuple[str, ...], image_roots: tuple[str, ...], piece=None, columns=None) -> Iterator[RawRow]:
        for stem, position, record, error in iter_records(files, piece, columns):
            fallback = f"{stem}:{position}"
            if error is not None:
                yield RawRow(id=fallback, errors=[error])
            elif not isinstance(record, dict):
                yield RawRow(id=fallback, errors=[f"bad_row: expected an object, got {type(record).__name__}"])
            else:
                yield convert(record, fallback)

    return read


#: The fields of a record its id depends on (with its position, for the fallback id): a read for ids only needs
#: these (the Ray engine's driver reads only them of a Parquet or Arrow source).
ID_FIELDS = ("id",)


def _record_id(record: dict, fallback: str) -> str:
    value = record.get("id")
    return fallback if value is None or value == "" else str(value)


def _data_dir(path: str) -> list[str]:
    return [os.path.dirname(os.path.abspath(path))]


# LLaVA: [{"id", "image": str | [str] | absent, "conversations": [{"from", "value"}]}] ---------------------------


def _sniff_llava(probe: Probe) -> bool:
    # One row may lack the field (it becomes a row error); the format shows in the others.
    return any(isinstance(row, dict) and "conversations" in row for row in _sample_rows(probe))


def _convert_llava(record: dict, fallback: str) -> RawRow:
    row = RawRow(id=_record_id(record, fallback))
    image = record.get("image")
    if image is None or image == "":
        row.images = []
    elif isinstance(image, str):
        row.images = [image]
    elif isinstance(image, list) and all(isinstance(item, str) for item in image):
        row.images = list(image)
    else:
        row.errors.append(f"bad_row: 'image' must be a path or a list of paths, got {type(image).__name__}")
    row.source = record.get("source") if isinstance(record.get("source"), str) else None
    conversations = record.get("conversations")
    if "conversations" not in record or conversations is None:
        row.errors.append("missing_conversation: the row has no 'conversations'")
    elif not isinstance(conversations, list):
        row.errors.append(f"bad_row: 'conversations' must be a list, got {type(conversations).__name__}")
    else:
        for turn_index, turn in enumerate(conversations):
            if not isinstance(turn, dict):
                row.errors.append(f"bad_turn: turn {turn_index} is not an object")
                continue
            role = LLAVA_ROLES.get(str(turn.get("from", "")).lower())
            value = turn.get("value")
            if role is None:
                row.errors.append(f"bad_turn: turn {turn_index} has unknown role {turn.get('from')!r}")
                continue
            if not isinstance(value, str):
                row.errors.append(f"bad_turn: turn {turn_index} has no string 'value'")
                continue
            row.messages.append({"role": role, "content": value})
    return row


# ShareGPT4V: LLaVA rows whose images live under several dataset folders (coco/, sam/, wikiart/, ...) ------------


def _image_folders(rows: list) -> set[str]:
    folders = set()
    for row in rows:
        image = row.get("image") if isinstance(row, dict) else None
        for path in [image] if isinstance(image, str) else image if isinstance(image, list) else []:
            if isinstance(path, str) and "/" in path:
                folders.add(path.split("/", 1)[0])
    return folders


def _sniff_sharegpt4v(probe: Probe) -> bool:
    rows = _sample_rows(probe)
    return _sniff_llava(probe) and bool(_image_folders(rows) & set(SHAREGPT4V_FOLDERS))


def _convert_sharegpt4v(record: dict, fallback: str) -> RawRow:
    row = _convert_llava(record, fallback)
    # The first folder of the image path names the sub-dataset (coco, sam, wikiart, ...): a useful `source`
    # for stratified selection when the row doesn't name one.
    if row.source is None and row.images and isinstance(row.images[0], str) and "/" in row.images[0]:
        row.source = row.images[0].split("/", 1)[0]
    return row


def _sharegpt4v_image_roots(path: str) -> list[str]:
    # ShareGPT4V keeps its JSON in data/sharegpt4v/ and the image folders in data/: try both.
    here = os.path.dirname(os.path.abspath(path))
    return [here, os.path.dirname(here)]


# Chat messages (TRL / HF): {"messages": [{"role", "content": str | [{"type": "image"|"text", ...}]}], "images"}


def _sniff_messages(probe: Probe) -> bool:
    return any(
        isinstance(row, dict) and isinstance(row.get("messages"), list) and "conversations" not in row
        for row in _sample_rows(probe)
    )


def _content_text(content: Any, turn_index: int, images: list, row: RawRow) -> str | None:
    """A turn's content as one string with ``<image>`` where image parts were; None (and an error) if bad.

    Parts are joined with nothing in between, so exporting a canonical string back to parts (split at each
    ``<image>``) and reading it again gives the same string.
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        row.errors.append(f"bad_turn: turn {turn_index} content must be a string or a list of parts")
        return None
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            pieces.append(IMAGE_TOKEN)
            # Some datasets carry the image inside the part instead of in an `images` column.
            if part.get("image") is not None:
                images.append(part["image"])
        elif kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        else:
            row.errors.append(
                f"bad_turn: turn {turn_index} has a part that is neither an image nor text: {part!r}"[:200]
            )
            return None
    return "".join(pieces)


def _convert_messages(record: dict, fallback: str) -> RawRow:
    row = RawRow(id=_record_id(record, fallback))
    row.source = record.get("source") if isinstance(record.get("source"), str) else None
    images = record.get("images")
    if images is None or (isinstance(images, list) and not images):
        single = record.get("image")
        refs = [] if single is None or single == "" else [single]
    elif isinstance(images, list):
        refs = list(images)
    elif isinstance(images, (str, bytes, dict)):
        refs = [images]
    else:
        refs = []
        row.errors.append(f"bad_row: 'images' must be a list of images, got {type(images).__name__}")
    part_images: list = []
    messages = record.get("messages")
    if not isinstance(messages, list):
        row.errors.append(f"bad_row: 'messages' must be a list, got {type(messages).__name__}")
    else:
        for turn_index, turn in enumerate(messages):
            if not isinstance(turn, dict):
                row.errors.append(f"bad_turn: turn {turn_index} is not an object")
                continue
            role = LLAVA_ROLES.get(str(turn.get("role", "")).lower())
            if role is None:
                row.errors.append(f"bad_turn: turn {turn_index} has unknown role {turn.get('role')!r}")
                continue
            text = _content_text(turn.get("content"), turn_index, part_images, row)
            if text is not None:
                row.messages.append({"role": role, "content": text})
    row.images = refs or part_images
    return row


# Canonical: what load_instructions returns, saved with save_to_disk / to_parquet ---------------------------------

_CANONICAL_KEYS = frozenset({"id", "image", "images", "messages", "error"})


def _sniff_canonical(probe: Probe) -> bool:
    rows = _sample_rows(probe)
    return bool(rows) and all(isinstance(row, dict) and _CANONICAL_KEYS <= set(row) for row in rows)


def _convert_canonical(record: dict, fallback: str) -> RawRow:
    row = _convert_messages({k: v for k, v in record.items() if k not in ("images", "image")}, fallback)
    images = record.get("images")
    if isinstance(images, list) and images:
        row.images = list(images)
    elif images is None or images == []:
        row.images = [record["image"]] if record.get("image") is not None else []
    else:
        row.errors.append(f"bad_row: 'images' must be a list of images, got {type(images).__name__}")
    error = record.get("error")
    if isinstance(error, str) and error:
        row.errors.insert(0, error)
        row.checked = True
    elif error is not None and error != "" and not (isinstance(error, float) and math.isnan(error)):
        # None, NaN and "" mean usable (selector.rows.is_usable_error); anything else is not a canonical error
        row.errors.insert(0, f"bad_row: 'error' must be a string or null, got {type(error).__name__}")
    return row


# MiniGPT-4 cc_sbu_align: filter_cap.json {"annotations": [{"image_id", "caption"}]} + image/<image_id>.jpg -------


def _sniff_minigpt4(probe: Probe) -> bool:
    sample = probe.sample
    if not isinstance(sample, dict) or not isinstance(sample.get("annotations"), list):
        return False
    first = next(iter(sample["annotations"]), None)
    return first is None or (isinstance(first, dict) and "image_id" in first and "caption" in first)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def _read_minigpt4(
    files: tuple[str, ...], image_roots: tuple[str, ...], piece: Piece | None = None, columns=None
) -> Iterator[RawRow]:
    # `columns` is only a hint for tables; filter_cap.json is read whole
    path = files[0] if piece is None else piece.path
    data = read_json(path)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise DataError(f"{path}: expected an object with an 'annotations' list (MiniGPT-4 filter_cap.json)")
    roots = image_roots or tuple(_minigpt4_image_root(path))
    first, stop = (0, None) if piece is None else (piece.first, piece.stop)
    for index, item in enumerate(annotations[first:stop], start=first):
        if not isinstance(item, dict) or item.get("image_id") in (None, ""):
            yield RawRow(id=f"annotation{index}", errors=["bad_row: annotation without an 'image_id'"])
            continue
        image_id = str(item["image_id"])
        row = RawRow(id=image_id)
        candidates = [image_id] if os.path.splitext(image_id)[1] else [image_id + s for s in IMAGE_SUFFIXES]
        found = next(
            (c for c in candidates if any(os.path.exists(os.path.join(root, c)) for root in roots)), candidates[0]
        )
        row.images = [found]
        caption = item.get("caption")
        row.messages = [{"role": "user", "content": f"{IMAGE_TOKEN}\n{MINIGPT4_INSTRUCTION}"}]
        if isinstance(caption, str) and caption.strip():
            row.messages.append({"role": "assistant", "content": caption})
        elif caption is not None and not isinstance(caption, str):
            row.errors.append(f"bad_row: caption must be a string, got {type(caption).__name__}")
        yield row


def _minigpt4_image_root(path: str) -> list[str]:
    return [os.path.join(os.path.dirname(os.path.abspath(path)), "image")]


# Detection order matters: a canonical row also has `messages`, a ShareGPT4V row is also a LLaVA row.
FORMATS: dict[str, Format] = {
    "canonical": Format(
        name="canonical",
        expects="canonical (vlselect's own columns id, image, images, messages, error; a save_to_disk folder or "
        "parquet written by vlselect)",
        sniff=_sniff_canonical,
        read=record_reader(_convert_canonical),
        default_image_root=_data_dir,
    ),
    "sharegpt4v": Format(
        name="sharegpt4v",
        expects="sharegpt4v (LLaVA rows whose images sit under coco/, sam/, wikiart/, llava/, ... folders)",
        sniff=_sniff_sharegpt4v,
        read=record_reader(_convert_sharegpt4v),
        default_image_root=_sharegpt4v_image_roots,
    ),
    "llava": Format(
        name="llava",
        expects="llava (a JSON list or JSONL of rows with 'conversations' [{'from', 'value'}] and optional 'image')",
        sniff=_sniff_llava,
        read=record_reader(_convert_llava),
        default_image_root=_data_dir,
    ),
    "messages": Format(
        name="messages",
        expects="messages (TRL / HF chat rows: 'messages' [{'role', 'content': str or [{'type': 'image'|'text'}]}] "
        "and 'images')",
        sniff=_sniff_messages,
        read=record_reader(_convert_messages),
        default_image_root=_data_dir,
    ),
    "minigpt4": Format(
        name="minigpt4",
        expects="minigpt4 (cc_sbu_align: filter_cap.json with 'annotations' [{'image_id', 'caption'}] + image/)",
        sniff=_sniff_minigpt4,
        read=_read_minigpt4,
        default_image_root=_minigpt4_image_root,
    ),
}


# Sources -------------------------------------------------------------------------------------------------------


@dataclass
class Source:
    """A resolved source: what the user named, and the data files to read in order."""

    name: str
    files: tuple[str, ...]
    split: str = "train"
    hub: bool = False


def _saved_dataset_files(folder: str) -> list[str]:
    state = read_json(os.path.join(folder, "state.json"))
    entries = state.get("_data_files") if isinstance(state, dict) else None
    names = [e.get("filename") for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    if not names or not all(isinstance(name, str) and name for name in names):
        raise DataError(f"{folder}: state.json lists no data files (expected '_data_files': [{{'filename': ...}}])")
    for name in names:
        # a data file named outside the folder is not part of this saved dataset
        if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise DataError(f"{folder}: state.json names a data file outside the folder: {name!r}")
    return [os.path.join(folder, name) for name in names]


def _split_name(name: Any) -> bool:
    """A split name that is a plain folder name (no path separator, not ``.`` or ``..``)."""
    return isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def pick_split(available: list[str], split: str | None, where: str) -> str:
    wanted = split or "train"
    if wanted not in available:
        hint = "" if split else " (no split given, so 'train' was tried)"
        raise DataError(f"{where}: no split {wanted!r}{hint}; available splits: {', '.join(available)}")
    return wanted


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` or ``name``: no path separators beyond one slash, no data-file suffix, not absolute."""
    if os.path.isabs(source) or source.startswith(".") or source.endswith(DATA_SUFFIXES) or "\\" in source:
        return False
    parts = source.split("/")
    return 1 <= len(parts) <= 2 and all(part and not part.startswith(".") for part in parts)


def resolve_source(source: str, split: str | None = None) -> Source:
    """Map a path to its data files (a folder to the file(s) inside it) and check that they exist.

    Raises:
        DataError: the path is missing, a folder holds no or several kinds of data file, or ``split`` names a
            split the source doesn't have (the message lists the available ones).
    """
    if not os.path.exists(source):
        raise DataError(f"{source}: no such file or directory")
    if not os.path.isdir(source):
        if split not in (None, "train"):
            raise DataError(f"{source}: a single data file has one split, 'train'; got split={split!r}")
        return Source(name=source, files=(source,))
    dict_file = os.path.join(source, "dataset_dict.json")
    if os.path.exists(dict_file):
        info = read_json(dict_file)
        splits = info.get("splits") if isinstance(info, dict) else None
        # a string would be read as its letters ("train" -> t, r, a, i, n)
        if not isinstance(splits, list) or not splits or not all(_split_name(s) for s in splits):
            raise DataError(f"{dict_file}: 'splits' must be a non-empty list of split names, got {splits!r}"[:300])
        chosen = pick_split(list(splits), split, source)
        return Source(name=source, files=tuple(_saved_dataset_files(os.path.join(source, chosen))), split=chosen)
    if split not in (None, "train"):
        raise DataError(f"{source}: this folder holds a single split, 'train'; got split={split!r}")
    if os.path.exists(os.path.join(source, "state.json")):
        return Source(name=source, files=tuple(_saved_dataset_files(source)))
    if os.path.exists(os.path.join(source, "filter_cap.json")):
        return Source(name=source, files=(os.path.join(source, "filter_cap.json"),))
    files = sorted(f for f in os.listdir(source) if f.endswith(DATA_SUFFIXES))
    if not files:
        raise DataError(
            f"{source}: the directory holds no .json, .jsonl, .parquet or .arrow file (nor a filter_cap.json or a "
            "save_to_disk dataset)"
        )
    suffixes = {os.path.splitext(f)[1] for f in files}
    # Shards of one table (train-00000-of-00002.parquet, ...) are read as one source; JSON files are not shards.
    if len(files) == 1 or (len(suffixes) == 1 and suffixes <= set(TABLE_SUFFIXES)):
        return Source(name=source, files=tuple(os.path.join(source, f) for f in files))
    raise DataError(f"{source}: the directory holds several data files ({', '.join(files)}); pass one of them")


def _describe(sample: Any) -> str:
    if isinstance(sample, list):
        first = next((item for item in sample if isinstance(item, dict)), None)
        if first is None:
            return f"a JSON list of {len(sample)} items with no objects" if sample else "no records"
        return f"a list of objects with keys {sorted(first)}"
    if isinstance(sample, dict):
        return f"keys {sorted(sample)}"
    return f"a JSON {type(sample).__name__}" if sample is not None else "no records"


def detect_format(files: str | tuple[str, ...] | list[str]) -> str:
    """Name the format of a data file (or of several shards), or raise a :class:`DataError` that says what was
    expected and what was seen."""
    files = (files,) if isinstance(files, str) else tuple(files)
    probe = Probe(path=files[0], is_dir=False, files=list(files), sample=probe_sample(files))
    for name, fmt in FORMATS.items():
        if fmt.sniff(probe):
            return name
    expected = "; ".join(
        FORMATS[name].expects for name in ("llava", "minigpt4", "sharegpt4v", "messages", "canonical")
    )
    raise DataError(
        f"could not detect format of {files[0]}: expected one of {expected}; saw {_describe(probe.sample)}. "
        "Pass --format to choose one."
    )
