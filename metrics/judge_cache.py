"""The LLM judge's answer cache: one SQLite file, keyed by what changes an answer.

A cache key is the sha256 of (prompt version and text hash, model identity, backend settings that change what
the judge writes, the endpoint for the ``openai`` backend, row content hash); the row id is not part of it, so
the same content under another id is a hit. One file serves every judge configuration. Failed requests are not
stored (a re-run retries them); answers that did not parse are (the judge said it; the parser runs again on
every read, so a fixed pattern applies without new requests).

Concurrency: several scoring processes (``Dataset.map(num_proc=n)``, two runs at once) read and write the file
together. Each process opens its own connection (one inherited over ``fork`` is abandoned, never used or
closed: closing it in the child could drop the child's own POSIX locks on the file); the file is in WAL mode
(readers never block the writer); every connection waits up to :data:`BUSY_TIMEOUT_S` for a lock; writes take
the write lock up front (``BEGIN IMMEDIATE``, so a transaction never has to upgrade a read lock, which SQLite
refuses without waiting); and an operation that still meets "database is locked" is retried with jittered
exponential back-off (:data:`LOCK_RETRIES` attempts).

The default file is ``$VLSELECT_CACHE/judge/answers.sqlite``, else ``$XDG_CACHE_HOME/vlselect/...``, else
``~/.cache/vlselect/...``.

Example:
    >>> import tempfile
    >>> from metrics.judge_backends import JudgeAnswer
    >>> cache = AnswerCache(cache_file(tempfile.mkdtemp()))
    >>> key = cache_key("rubric5@v1", "0" * 64, "my-model", {"backend": "openai"}, row_hash("Q?", "A.", []))
    >>> cache.put_many([(key, "rubric5@v1", "my-model", "h", JudgeAnswer("Rating: 4"))])
    >>> cache.get_many([key])[key].text
    'Rating: 4'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from metrics.judge_backends import JudgeAnswer

logger = logging.getLogger(__name__)

#: Seconds a connection waits for another process's lock before SQLite reports "database is locked".
BUSY_TIMEOUT_S = 30.0
#: Attempts of one cache operation that keeps meeting a lock (back-off from 0.05 s, doubling, capped at 2 s).
LOCK_RETRIES = 8
# Connections inherited over fork: kept referenced so they are never closed (nor used) in the child.
_ABANDONED: list[sqlite3.Connection] = []
_T = TypeVar("_T")


def cache_file(cache_dir: str | os.PathLike | None = None) -> Path:
    """The SQLite file of the cache under ``cache_dir`` (None: the default folder, see the module docstring)."""
    root = cache_dir or os.environ.get("VLSELECT_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vlselect")
    return Path(root) / "judge" / "answers.sqlite"


def row_hash(instruction: str, response: str, image_urls: list[str]) -> str:
    """sha256 of a row's judged content: instruction, response and the hashes of its image data URLs."""
    blob = json.dumps(
        {
            "instruction": instruction,
            "response": response,
            "images": [hashlib.sha256(u.encode("ascii")).hexdigest() for u in image_urls],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def cache_key(prompt_key: str, prompt_sha256: str, model_identity: str, settings: dict[str, Any], row: str) -> str:
    """The cache key of one row's answer (see the module docstring for what it covers)."""
    blob = json.dumps([prompt_key, prompt_sha256, model_identity, settings, row], sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class AnswerCache:
    """Judge answers in SQLite, keyed by :func:`cache_key`; safe to share between processes.

    The connection opens on first use and belongs to the process that opened it (``pid``); after a fork the
    child opens its own (see the module docstring for the locking rules).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.pid = os.getpid()
        self._conn = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self.pid != os.getpid():
            _ABANDONED.append(self._conn)
            self._conn = None
        if self._conn is None:
            self.pid = os.getpid()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are opened explicitly, with the lock they need.
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
                # Switching to WAL needs an exclusive lock: skip it once any process has switched the file.
                if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, prompt TEXT, model TEXT,"
                    " row_hash TEXT, answer TEXT, created REAL)"
                )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _retry(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``operation(connection)``, retrying "database is locked" with jittered exponential back-off."""
        for attempt in range(LOCK_RETRIES):
            try:
                return operation(self._connect())
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc) or attempt == LOCK_RETRIES - 1:
                    raise
                delay = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
                logger.debug("judge cache %s: %s; retry %d in %.2f s", self.path, exc, attempt + 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def get_many(self, keys: list[str]) -> dict[str, JudgeAnswer]:
        """The cached answers of ``keys`` that are present (``attempts=0``: no request was sent)."""

        def read(conn: sqlite3.Connection) -> dict[str, JudgeAnswer]:
            found: dict[str, JudgeAnswer] = {}
            # SQLite caps bound parameters per statement; 500 stays below every build's limit.
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, answer in conn.execute(f"SELECT key, answer FROM answers WHERE key IN ({marks})", chunk):
                    found[key] = JudgeAnswer.from_cache(json.loads(answer))
            return found

        return self._retry(read) if keys else {}

    def put_many(self, entries: list[tuple[str, str, str, str, JudgeAnswer]]) -> None:
        """Store ``(key, prompt key, model identity, row hash, answer)`` entries in one transaction."""
        now = time.time()
        rows = [(key, prompt, model, row, json.dumps(a.to_cache()), now) for key, prompt, model, row, a in entries]
        if not rows:
            return

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO answers (key, prompt, model, row_hash, answer, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        self._retry(write)

    def __len__(self) -> int:
        return self._retry(lambda conn: conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        """Close the connection (it reopens on the next use); one inherited over fork is only dropped."""
        if self._conn is not None:
            if self.pid == os.getpid():
                self._conn.close()
            else:
                _ABANDONED.append(self._conn)
            self._conn = None
