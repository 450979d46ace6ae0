"""``export_instructions``: a canonical dataset -> LLaVA JSON, Parquet, chat ``messages`` or MiniGPT-4 files.

Rows are written as they are: image bytes are copied, never re-encoded, and text is never rewritten. LLaVA,
Parquet and ``messages`` round-trip exactly (``load_instructions(export(ds))`` gives the same ids, messages,
errors, sources and image bytes). What a target can't hold is reported row by row in the
:class:`ExportReport`, never mangled:

* ``llava``, ``messages`` and ``minigpt4`` skip rows whose ``error`` is set (their images may be missing, so
  the row can't be written back as it was read); ``parquet`` keeps every row, errors included.
* ``minigpt4`` (cc_sbu_align: one image, MiniGPT-4's fixed instruction, one caption) also skips text-only,
  multi-image, multi-turn and system-prompt rows, and rows whose instruction is not the fixed one.

Every export reads the dataset in Arrow batches (or row by row for an ``IterableDataset``) and writes as it
goes, so a streamed source converts in bounded memory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from selector.data.formats import IMAGE_SUFFIXES, MINIGPT4_INSTRUCTION
from selector.data.schema import IMAGE_TOKEN, error_kind, instruction
from selector.errors import DataError
from selector.fileio import atomic_open
from selector.rows import is_usable_error

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("llava", "parquet", "messages", "minigpt4")
_REQUIRED = ("id", "image", "images", "messages", "error")
_LLAVA_FROM = {"user": "human", "assistant": "gpt", "system": "system"}
_BATCH_ROWS = 64


@dataclass
class ExportReport:
    """What an export wrote and what it left out.

    Attributes:
        path: the file (or, for ``minigpt4``, the folder) written.
        format: the target format.
        n_written: rows written.
        n_images: image files written (0 for Parquet, which embeds the bytes).
        skipped: ``(id, reason)`` for every row the target can't represent; reasons start with a kind
            (``error``, ``text_only``, ``multi_image``, ``multi_turn``, ``system_prompt``, ``custom_instruction``).
    """

    path: str
    format: str
    n_written: int = 0
    n_images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skipped_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, reason in self.skipped:
            kind = reason.split(":", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
        return counts


def _storage_rows(dataset) -> Iterator[dict[str, Any]]:
    """Rows with images as ``{"bytes", "path"}`` dicts (never decoded), for Dataset and IterableDataset."""
    from datasets import IterableDataset

    columns = dataset.column_names or []
    missing = [c for c in _REQUIRED if c not in columns] if columns else []
    if missing:
        raise DataError(
            f"export needs vlselect's canonical columns; missing {', '.join(missing)} (load the data with "
            "load_instructions first)"
        )
    if isinstance(dataset, IterableDataset):
        yield from dataset.decode(False)
        return
    keep = [c for c in (*_REQUIRED, "source") if c in columns]
    for table in dataset.select_columns(keep).with_format("arrow").iter(batch_size=_BATCH_ROWS):
        yield from table.to_pylist()


def _image_bytes(image: dict | None) -> bytes | None:
    if image is None:
        return None
    if image.get("bytes"):
        return image["bytes"]
    path = image.get("path")
    if path and os.path.isfile(path):
        with open(path, "rb") as handle:
            return handle.read()
    return None


def _all_images(row: dict) -> list[dict | None]:
    images = row.get("images") or []
    if images:
        return list(images)
    return [row["image"]] if row.get("image") is not None else []


_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


def _extension(data: bytes) -> str:
    from selector.data.images import open_image

    with open_image(data) as img:
        return _EXT.get(img.format or "", f".{(img.format or 'bin').lower()}")


class _ImageFiles:
    """Writes image files under ``base`` and returns their paths relative to it.

    The original relative path is kept when it is safe (relative, no ``..``, not ``.``, not the export file itself
    or its temporary file: ``reserved``), so exported data looks like the source; otherwise, or when that path
    already holds different bytes or a folder, the file is named by its content hash. Existing files are never
    overwritten.
    """

    def __init__(self, base: str, subdir: str = "images", reserved: str | None = None) -> None:
        self.base = base
        self.subdir = subdir
        self.reserved = reserved  # the export file's name: an image named like it would be overwritten by it
        self.written: dict[str, str] = {}  # relative path -> sha256 of what is there
        self.n_files = 0

    def _safe(self, path: Any) -> str | None:
        """``path`` normalised when it can name a file under ``base``, else None (then the hash name is used)."""
        if not isinstance(path, str) or not path or os.path.isabs(path):
            return None
        parts = path.replace("\\", "/").split("/")
        rel = os.path.normpath(path)
        if ".." in parts or rel in (".", "") or rel.startswith(".."):
            return None
        if self.reserved and rel.split(os.sep, 1)[0].startswith(self.reserved):
            return None
        return rel

    def _holds(self, rel: str, digest: str) -> bool | None:
        """True: ``rel`` already holds these bytes; False: other bytes (or a folder, or a file on its way); None:
        free."""
        if rel in self.written:
            return self.written[rel] == digest
        target = os.path.join(self.base, rel)
        if not os.path.lexists(target):
            return None
        if not os.path.isfile(target) or os.path.islink(target):
            return False
        with open(target, "rb") as handle:
            same = hashlib.sha256(handle.read()).hexdigest() == digest
        if same:
            self.written[rel] = digest
        return same

    def write(self, image: dict) -> str:
        data = _image_bytes(image)
        digest = hashlib.sha256(data).hexdigest()
        safe = self._safe(image.get("path"))
        candidates = [safe] if safe else []
        candidates.append(os.path.join(self.subdir, digest[:20] + _extension(data)))
        for rel in candidates:
            state = self._holds(rel, digest)
            if state is True:
                return rel
            if state is None:
                target = os.path.join(self.base, rel)
                try:
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    # "x": never replace a file that appeared since _holds looked
                    with open(target, "xb") as handle:
                        handle.write(data)
                except (FileExistsError, NotADirectoryError):
                    continue  # a parent on the path is a file, or the name was taken: try the hash name
                except OSError as exc:
                    if exc.errno != errno.ENAMETOOLONG:
                        raise
                    continue
                self.written[rel] = digest
                self.n_files += 1
                return rel
        raise DataError(f"{os.path.join(self.base, candidates[-1])} exists with other bytes; export to a new folder")


class _JsonWriter:
    """Writes a JSON list (``.json``) or JSON lines (``.jsonl``) row by row."""

    def __init__(self, handle, jsonl: bool) -> None:
        self.handle = handle
        self.jsonl = jsonl
        self.n = 0

    def __enter__(self):
        if not self.jsonl:
            self.handle.write("[\n")
        return self

    def add(self, row: dict) -> None:
        text = json.dumps(row, ensure_ascii=False)
        if self.jsonl:
            self.handle.write(text + "\n")
        else:
            self.handle.write(("" if self.n == 0 else ",\n") + text)
        self.n += 1

    def __exit__(self, *exc) -> None:
        if not self.jsonl:
            self.handle.write("\n]\n")


def _unusable(row: dict) -> str | None:
    if not is_usable_error(row.get("error")):
        return f"error: the row has error {error_kind(row['error'])!r} and may have lost images; fix or drop it"
    if any(_image_bytes(image) is None for image in _all_images(row)):
        return "error: an image of the row has no bytes and no readable path"
    return None


def _with_source(out: dict, row: dict) -> dict:
    if row.get("source") is not None:
        out["source"] = row["source"]
    return out


def _check_target(path: str, overwrite: bool) -> None:
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder; a {os.path.splitext(path)[1]} export is a file")
    if os.path.exists(path) and not overwrite:
        raise DataError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _export_json_rows(rows, path: str, convert, report: ExportReport, overwrite: bool) -> None:
    """Write ``convert(row, files)`` of each usable row to a ``.json`` list or ``.jsonl`` file, atomically.

    Unusable rows (see :func:`_unusable`) go to ``report.skipped`` instead; ``files`` writes a row's images
    next to ``path`` and returns their relative references. The row's ``source`` is added to each record.
    """
    _check_target(path, overwrite)
    files = _ImageFiles(os.path.dirname(os.path.abspath(path)), reserved=os.path.basename(path))
    with atomic_open(path, "w") as handle, _JsonWriter(handle, path.endswith(".jsonl")) as out:
        for row in rows:
            reason = _unusable(row)
            if reason:
                report.skipped.append((row["id"], reason))
                continue
            out.add(_with_source(convert(row, files), row))
    report.n_written = out.n
    report.n_images = files.n_files


def _export_llava(rows, path: str, report: ExportReport, overwrite: bool) -> None:
    if not path.endswith((".json", ".jsonl")):
        raise DataError(f"{path}: a llava export is a .json or .jsonl file")

    def convert(row: dict, files: _ImageFiles) -> dict:
        refs = [files.write(image) for image in _all_images(row)]
        record: dict[str, Any] = {"id": row["id"]}
        if refs:
            record["image"] = refs[0] if len(refs) == 1 else refs
        record["conversations"] = [
            {"from": _LLAVA_FROM[turn["role"]], "value": turn["content"]} for turn in row["messages"]
        ]
        return record

    _export_json_rows(rows, path, convert, report, overwrite)


def _parts(content: str) -> list[dict[str, Any]]:
    """``"<image>\\nWhat?"`` -> ``[{"type": "image"}, {"type": "text", "text": "\\nWhat?"}]``: all text kept,
    so joining the parts back gives the same string."""
    parts: list[dict[str, Any]] = []
    for index, piece in enumerate(content.split(IMAGE_TOKEN)):
        if index:
            parts.append({"type": "image", "text": None})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def _messages_features():
    from datasets import Features, Image, List, Value

    return Features(
        {
            "id": Value("string"),
            "messages": List(
                {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
            ),
            "images": List(Image()),
            "source": Value("string"),
        }
    )


class _ParquetWriter:
    """Writes rows in ``datasets`` storage form to Parquet in batches, with the features in the metadata so
    ``datasets`` decodes images when it reads the file back."""

    def __init__(self, where, features) -> None:
        import pyarrow.parquet as pq

        self.features = features
        self.schema = features.arrow_schema
        self.writer = pq.ParquetWriter(where, self.schema)  # a path or an open binary file
        self.pending: list[dict] = []
        self.n = 0

    def add(self, row: dict) -> None:
        self.pending.append(row)
        if len(self.pending) >= _BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            self.writer.write_table(pa.Table.from_pylist(self.pending, schema=self.schema))
            self.n += len(self.pending)
            self.pending = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _export_parquet_rows(rows, path: str, features, convert, report: ExportReport, overwrite: bool) -> None:
    _check_target(path, overwrite)
    with atomic_open(path, "wb") as handle:
        writer = _ParquetWriter(handle, features)
        try:
            for row in rows:
                out = convert(row)
                if out is not None:
                    writer.add(out)
        except BaseException:
            # close pyarrow's writer now: collected later, it would write its footer into the closed file.
            writer.writer.close()
            raise
        writer.close()
    report.n_written = writer.n


def _export_parquet(rows, path: str, report: ExportReport, overwrite: bool) -> None:
    from selector.data.schema import features

    if not path.endswith(".parquet"):
        raise DataError(f"{path}: a parquet export is a .parquet file")

    def convert(row: dict) -> dict:
        images = row.get("images") or []
        return {
            "id": row["id"],
            "image": _embedded(row.get("image")),
            "images": [_embedded(image) for image in images],
            "messages": row["messages"],
            "error": row.get("error"),
            "source": row.get("source"),
        }

    _export_parquet_rows(rows, path, features(), convert, report, overwrite)


def _embedded(image: dict | None) -> dict | None:
    if image is None:
        return None
    return {"bytes": _image_bytes(image), "path": image.get("path")}


def _export_messages(rows, path: str, report: ExportReport, overwrite: bool) -> None:
    if path.endswith(".parquet"):

        def convert(row: dict) -> dict | None:
            reason = _unusable(row)
            if reason:
                report.skipped.append((row["id"], reason))
                return None
            return {
                "id": row["id"],
                "messages": [{"role": t["role"], "content": _parts(t["content"])} for t in row["messages"]],
                "images": [_embedded(image) for image in _all_images(row)],
                "source": row.get("source"),
            }

        _export_parquet_rows(rows, path, _messages_features(), convert, report, overwrite)
        return
    if not path.endswith((".json", ".jsonl")):
        raise DataError(f"{path}: a messages export is a .parquet, .json or .jsonl file")

    def convert_json(row: dict, files: _ImageFiles) -> dict:
        messages = [
            {
                "role": t["role"],
                "content": [{k: v for k, v in p.items() if v is not None} for p in _parts(t["content"])],
            }
            for t in row["messages"]
        ]
        return {"id": row["id"], "messages": messages, "images": [files.write(i) for i in _all_images(row)]}

    _export_json_rows(rows, path, convert_json, report, overwrite)


_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_\-]")
_MAX_NAME = 120  # characters of an id kept in a minigpt4 image file name


def _minigpt4_problem(row: dict) -> str | None:
    reason = _unusable(row)
    if reason:
        return reason
    images = _all_images(row)
    if not images:
        return "text_only: MiniGPT-4 rows have exactly one image"
    if len(images) > 1:
        return f"multi_image: the row has {len(images)} images; MiniGPT-4 rows have one"
    roles = [turn["role"] for turn in row["messages"]]
    if "system" in roles:
        return "system_prompt: MiniGPT-4 has no system prompt"
    if roles != ["user", "assistant"]:
        return f"multi_turn: the row has {len(roles)} turns; MiniGPT-4 rows are one instruction and one caption"
    user = row["messages"][0]["content"]
    if user.count(IMAGE_TOKEN) != 1 or instruction(row["messages"]) != MINIGPT4_INSTRUCTION:
        return (
            f"custom_instruction: the instruction {instruction(row['messages'])!r} would become MiniGPT-4's fixed "
            f"{MINIGPT4_INSTRUCTION!r}"
        )[:300]
    return None


def _export_minigpt4(rows, path: str, report: ExportReport, overwrite: bool) -> None:
    if path.endswith((".json", ".jsonl", ".parquet")):
        raise DataError(f"{path}: a minigpt4 export is a folder (it gets filter_cap.json and image/)")
    from selector.runs import check_out_folder, swap_into_place

    if os.path.lexists(path) and not os.path.isdir(path):
        raise DataError(f"{path} exists and is not a folder; a minigpt4 export is a folder")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise DataError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    # only a folder vlselect wrote is replaced, and only once the new one is complete (written beside, then swapped)
    path = check_out_folder(path, overwrite=overwrite, what="output")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = tempfile.mkdtemp(prefix=".vlselect-export-", dir=os.path.dirname(path))
    try:
        os.makedirs(os.path.join(temp, "image"))
        annotations = []
        used: set[str] = set()
        for row in rows:
            problem = _minigpt4_problem(row)
            if problem:
                report.skipped.append((row["id"], problem))
                continue
            data = _image_bytes(_all_images(row)[0])
            ext = _extension(data)
            # image_id names the file; ids with other characters are made file-safe (and unique).
            base = _UNSAFE_ID.sub("_", row["id"]) or "row"
            if len(base) > _MAX_NAME:
                # file names are limited (255 bytes on most file systems): keep a prefix, made unique by a hash
                digest = hashlib.sha256(row["id"].encode("utf-8", "replace")).hexdigest()[:16]
                base = f"{base[: _MAX_NAME - 17]}_{digest}"
            name, n = base, 0
            while name in used:
                n += 1
                name = f"{base}_{n}"
            used.add(name)
            with open(os.path.join(temp, "image", name + ext), "wb") as handle:
                handle.write(data)
            image_id = name if ext in IMAGE_SUFFIXES else name + ext  # the reader only guesses these suffixes
            if name != row["id"]:
                logger.info("minigpt4 export: id %r written as image_id %r", row["id"], image_id)
            annotations.append({"image_id": image_id, "caption": row["messages"][1]["content"]})
        with open(os.path.join(temp, "filter_cap.json"), "w", encoding="utf-8") as handle:
            json.dump({"annotations": annotations}, handle, ensure_ascii=False, indent=1)
        swap_into_place(temp, path)
    finally:
        if os.path.exists(temp):
            shutil.rmtree(temp)
    report.n_written = len(annotations)
    report.n_images = len(annotations)


def export_instructions(dataset, path, format: str = "parquet", overwrite: bool = False) -> ExportReport:
    """Write a canonical dataset (from :func:`~selector.data.load_instructions`) in another format.

    Args:
        dataset: a ``datasets.Dataset`` or ``IterableDataset`` with the canonical columns; extra columns (scores,
            embeddings) are not exported.
        path: ``llava``: a ``.json`` or ``.jsonl`` file, images copied beside it (original relative paths kept
            when safe, else ``images/<hash>.<ext>``); ``parquet``: a ``.parquet`` file with the canonical columns
            and image bytes embedded; ``messages``: TRL / HF chat rows (``messages`` with typed content parts,
            ``images``) as ``.parquet`` (bytes embedded) or ``.json``/``.jsonl`` (image files beside it);
            ``minigpt4``: a folder that gets ``filter_cap.json`` and ``image/<image_id>.<ext>``.
        format: ``"llava"``, ``"parquet"``, ``"messages"`` or ``"minigpt4"``.
        overwrite: replace an existing output file, or a ``minigpt4`` folder that vlselect wrote (see
            :func:`selector.runs.is_own_folder`; the new folder is written beside it and swapped in, so a failed
            export leaves the old one as it was). Existing image files are never overwritten.

    Returns:
        An :class:`ExportReport`; ``skipped`` lists every row the target can't represent, with the reason.

    Raises:
        DataError: unknown format, wrong suffix for the format, the output exists, or the dataset lacks the
            canonical columns.
        ConfigError: ``overwrite`` names a ``minigpt4`` folder that vlselect did not write.

    Example:
        >>> ds = load_instructions("selector/example_data/llava_mini.json")  # doctest: +SKIP
        >>> export_instructions(ds, "out/train.parquet", format="parquet").n_written  # doctest: +SKIP
        52
    """
    path = os.fspath(path)
    writers = {
        "llava": _export_llava,
        "parquet": _export_parquet,
        "messages": _export_messages,
        "minigpt4": _export_minigpt4,
    }
    if format not in writers:
        raise DataError(f"unknown export format {format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    report = ExportReport(path=path, format=format)
    writers[format](_storage_rows(dataset), path, report, overwrite)
    if report.skipped:
        kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(report.skipped_by_kind().items()))
        logger.warning(
            "%s: %d row(s) can't be written as %s and were left out (%s), e.g. %s",
            path,
            len(report.skipped),
            format,
            kinds,
            report.skipped[0][0],
        )
    return report


__all__ = ["EXPORT_FORMATS", "ExportReport", "export_instructions"]
