"""The LLM judge's answer cache: one SQLite file, keyed by what changes an answer.

A cache key is the sha256 of (prompt version and text hash, model identity, backend settings that change what
the judge writes, row content hash); the row id is not part of it, so the same content under another id is a hit.
One file serves every judge configuration; WAL mode lets several scoring processes (``Dataset.map(num_proc=n)``)
read and write it at once. Failed requests are not stored (a re-run retries them); answers that did not parse
are (the judge said it; the parser runs again on every read, so a fixed pattern applies without new requests).

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
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from metrics.judge_backends import JudgeAnswer


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


class AnswerCache:
    """Judge answers in SQLite, keyed by :func:`cache_key`.

    The connection opens on first use and belongs to the process that opened it (``pid``); a forked worker
    opens its own.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.pid = os.getpid()
        self._conn = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=60.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, prompt TEXT, model TEXT, row_hash TEXT,"
                " answer TEXT, created REAL)"
            )
            conn.commit()
            self._conn = conn
        return self._conn

    def get_many(self, keys: list[str]) -> dict[str, JudgeAnswer]:
        """The cached answers of ``keys`` that are present (``attempts=0``: no request was sent)."""
        conn = self._connect()
        found: dict[str, JudgeAnswer] = {}
        # SQLite caps bound parameters per statement; 500 stays below every build's limit.
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, answer in conn.execute(f"SELECT key, answer FROM answers WHERE key IN ({marks})", chunk):
                found[key] = JudgeAnswer.from_cache(json.loads(answer))
        return found

    def put_many(self, entries: list[tuple[str, str, str, str, JudgeAnswer]]) -> None:
        """Store ``(key, prompt key, model identity, row hash, answer)`` entries in one transaction."""
        conn = self._connect()
        now = time.time()
        with conn:
            conn.executemany(
                "INSERT OR REPLACE INTO answers (key, prompt, model, row_hash, answer, created) VALUES (?, ?, ?, ?, ?, ?)",
                [(key, prompt, model, row, json.dumps(a.to_cache()), now) for key, prompt, model, row, a in entries],
            )

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        """Close the connection (it reopens on the next use)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
