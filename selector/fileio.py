"""Small file helpers used everywhere: atomic writes, strict JSON, YAML mappings, JSONL.

One home for each so the rules stay the same in every module:

- an atomic write goes to a temporary file beside the target, is flushed and fsynced, then renamed over the
  target (``os.replace``), so a reader (or a resumed run after ``kill -9``) sees the old file or the new one,
  never half of one; the temporary file is removed when writing fails;
- JSON written by vlselect is strict: NaN and infinities become ``null``, numpy scalars become Python ones;
- a YAML config is a mapping read with ``yaml.safe_load``; a missing file, invalid YAML or another top-level
  type is a one-line ``ConfigError``;
- JSONL is read line by line; a line that does not parse is a ``DataError`` naming file and line.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.json")
    >>> write_json(path, {"x": float("nan"), "n": 3})
    >>> open(path).read()
    '{\\n  "x": null,\\n  "n": 3\\n}\\n'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from selector.errors import ConfigError, DataError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    kwargs = {} if "b" in mode else {"encoding": encoding}
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf -> None and numpy scalars/arrays -> Python values, so it dumps as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return json_safe(value.item())
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps_json(data: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``data`` (see :func:`json_safe`); unknown objects are written with ``str``."""
    return json.dumps(json_safe(data), indent=indent, allow_nan=False, default=str)


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` as strict JSON to ``path`` atomically, with a final newline."""
    atomic_write_text(path, dumps_json(data, indent=indent) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a file that does not parse is a ``DataError`` naming line and column."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{os.fspath(path)}: no such file") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{os.fspath(path)}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


def load_yaml_mapping(path: str | os.PathLike, *, what: str = "config file") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (an empty file is ``{}``), with ``yaml.safe_load``.

    Args:
        path: the file.
        what: how the file is named in errors (``"metric config"``, ``"judge prompt"``).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"cannot read {what} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"cannot read {what} {path}: is a directory, expected a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: not UTF-8 text ({exc.reason})") from None
    return parse_yaml_mapping(text, source=path, what=what)


def parse_yaml_mapping(text: str, *, source: str, what: str = "config file") -> dict[str, Any]:
    """Parse YAML text that must hold a mapping (empty text is ``{}``); ``source`` names it in errors."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {source} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {source} must be a YAML mapping of key: value, got {type(data).__name__}")
    return data


def iter_jsonl(path: str | os.PathLike) -> Iterator[Any]:
    """Yield the parsed object of every non-blank line of a JSONL file."""
    for _, obj in iter_jsonl_lines(path):
        yield obj


def iter_jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed object)`` for every non-blank line, for readers that name lines in errors."""
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{os.fspath(path)}: invalid JSON on line {lineno}: {exc.msg}") from None
            yield lineno, obj


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Every object of a JSONL file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path))


def write_jsonl(path: str | os.PathLike, rows: Any) -> None:
    """Write one strict-JSON object per line to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        for row in rows:
            handle.write(dumps_json(row, indent=None) + "\n")
