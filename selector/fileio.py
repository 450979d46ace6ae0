"""Small file helpers used everywhere: atomic writes, strict JSON, YAML mappings, JSONL.

One home for each so the rules stay the same in every module:

- an atomic write goes to a temporary file beside the target, is flushed and fsynced, then renamed over the
  target (``os.replace``), so a reader (or a resumed run after ``kill -9``) sees the old file or the new one,
  never half of one; the temporary file is removed when writing fails;
- JSON written by vlselect is strict: NaN and infinities become ``null``, numpy scalars become Python ones;
- a YAML config is a mapping read with ``yaml.safe_load``; a missing file, invalid YAML or another top-level
  type is a one-line ``ConfigError``;
- JSONL is read line by line; a line that does not parse is a ``DataError`` naming file and line;
- an output folder has one writer at a time (:func:`folder_lock`, a lock file beside it), and a full disk or an
  unwritable folder is one :class:`~selector.errors.OutputError` line (:func:`output_errors`).

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.json")
    >>> write_json(path, {"x": float("nan"), "n": 3})
    >>> open(path).read()
    '{\\n  "x": null,\\n  "n": 3\\n}\\n'
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from selector.errors import ConfigError, DataError, OutputError

logger = logging.getLogger(__name__)


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
    except RecursionError:
        raise DataError(f"{os.fspath(path)}: invalid JSON: nested too deeply to parse") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{os.fspath(path)}: not UTF-8 text ({exc.reason})") from None


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
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except json.JSONDecodeError as exc:
                raise DataError(f"{os.fspath(path)}: invalid JSON on line {lineno}: {exc.msg}") from None
            except RecursionError:
                raise DataError(f"{os.fspath(path)}: line {lineno} is nested too deeply to parse") from None
            except UnicodeDecodeError as exc:
                raise DataError(f"{os.fspath(path)}: line {lineno} is not UTF-8 text ({exc.reason})") from None
            yield lineno, obj


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Every object of a JSONL file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path))


def write_jsonl(path: str | os.PathLike, rows: Any) -> None:
    """Write one strict-JSON object per line to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        for row in rows:
            handle.write(dumps_json(row, indent=None) + "\n")


#: Suffix of the lock file written beside an output folder (``runs/.scored.vlselect-lock`` for ``runs/scored``).
LOCK_SUFFIX = ".vlselect-lock"
_OUTPUT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]")
_held: dict[str, list] = {}  # lock path -> [fd, depth]: locks are re-entrant within a process
_held_lock = threading.Lock()


def lock_path(folder: str | os.PathLike) -> str:
    """The lock file of an output folder: a hidden file beside it (the folder itself may be swapped whole)."""
    folder = os.path.abspath(os.fspath(folder)).rstrip(os.sep) or os.sep
    parent, name = os.path.split(folder)
    return os.path.join(parent, f".{name}{LOCK_SUFFIX}")


def _owner(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        owner = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _describe(owner: dict[str, Any]) -> str:
    command = f"`vlselect {owner['command']}`, " if owner.get("command") else ""
    return f"{command}pid {owner.get('pid')} on host {owner.get('host')}, since {owner.get('started')}"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, command: str | None = None, what: str = "--out") -> Iterator[str]:
    """Hold the writer lock of an output folder for the ``with`` block; yields the lock file's path.

    The lock is :func:`lock_path`: a file beside ``folder`` holding the owner's pid, host, command and start
    time, locked with ``flock`` for as long as the owner runs (the kernel drops it when the process dies, even
    after ``kill -9``). A second process asking for the same folder gets an :class:`OutputError` naming the
    owner. A lock file left by a process that is gone (same host, dead pid) is taken over with a warning; one
    recorded by another host is refused (its pid can't be checked from here): delete the file when no run is
    active there. Re-entrant within a process (``vlselect run`` locks its folder and the scoring run inside).

    Raises:
        OutputError: another run holds the folder, or the lock file can't be written (see :func:`output_errors`).
    """
    import fcntl
    import socket

    path = lock_path(folder)
    with _held_lock:
        if path in _held:
            _held[path][1] += 1
            depth_only = True
        else:
            depth_only = False
    if depth_only:
        try:
            yield path
        finally:
            with _held_lock:
                _held[path][1] -= 1
        return
    host = socket.gethostname()
    with output_errors(folder, what=what):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(fd)
                os.close(fd)
                raise OutputError(
                    f"{what} {os.fspath(folder)} is being written by another vlselect run ({_describe(owner)}); "
                    "wait for it to finish or choose another folder"
                ) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            # The previous owner removed the file between our open and our flock: lock the new one instead.
            os.close(fd)
        try:
            owner = _owner(fd)
            if owner.get("pid") is not None:
                if owner.get("host") != host:
                    raise OutputError(
                        f"{what} {os.fspath(folder)} is locked by a run on another host ({_describe(owner)}); if no "
                        f"run is active there, delete {path}"
                    )
                if owner.get("pid") != os.getpid():
                    state = "still runs but does not hold the lock" if _pid_alive(owner["pid"]) else "is gone"
                    logger.warning(
                        "%s: taking over the stale lock of pid %s (the process %s)", path, owner["pid"], state
                    )
            info = {
                "pid": os.getpid(),
                "host": host,
                "command": command,
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        except BaseException:
            os.close(fd)
            raise
    with _held_lock:
        _held[path] = [fd, 1]
    try:
        yield path
    finally:
        with _held_lock:
            _held.pop(path, None)
        # Remove the file while still holding the lock: a waiter that opened it re-checks the inode and retries.
        with contextlib.suppress(OSError):
            os.remove(path)
        os.close(fd)


@contextlib.contextmanager
def output_errors(folder: str | os.PathLike, *, what: str = "--out") -> Iterator[None]:
    """Turn a full disk or an unwritable output into one :class:`OutputError` line (CLI exit code 2).

    ``ENOSPC``/``EDQUOT``/``EROFS`` always count (only writes meet them); ``EACCES``/``EPERM`` count when the
    failing path is the output folder, inside it or beside it (a refused read elsewhere is another problem and
    keeps its own exception). Finished shards stay on disk, so the same command resumes once space is freed.
    """
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        code = exc.errno
        if code is None:
            found = _ERRNO_TEXT.search(str(exc))
            code = int(found.group(1)) if found else None
        if code not in _OUTPUT_ERRNOS:
            raise
        folder = os.path.abspath(os.fspath(folder))
        filename = os.fspath(exc.filename) if isinstance(exc.filename, (str, os.PathLike)) else None
        if code in (errno.EACCES, errno.EPERM) and filename is not None:
            target = os.path.abspath(filename)
            if not (target == folder or target.startswith(os.path.dirname(folder).rstrip(os.sep) + os.sep)):
                raise
        if code in (errno.ENOSPC, errno.EDQUOT):
            hint = "free some space and run the same command again: finished work is kept and resumes"
        else:
            hint = "make it writable or choose another folder"
        where = f" ({filename})" if filename else ""
        raise OutputError(f"cannot write {what} {folder}: {_OUTPUT_ERRNOS[code]}{where}; {hint}") from None


def holds_lock(folder: str | os.PathLike) -> bool:
    """True when this process holds the :func:`folder_lock` of ``folder``."""
    with _held_lock:
        return lock_path(folder) in _held
