"""One redaction rule for everything vlselect writes or logs: cards, manifests, ``config.json``, logs, errors.

**Secret keys.** A mapping key names a secret when, lower-cased with ``-``, ``.`` and spaces read as ``_``, it
is one of these words or ends with ``_`` + one of them: ``key``, ``apikey``, ``api_key``, ``token``,
``secret``, ``password``, ``passwd``, ``pwd``, ``credential``, ``credentials``, ``authorization``, ``auth``,
``cookie``, ``cookies``, ``bearer``, ``private_key``, ``signature``. So ``api_key``, ``X-Api-Key``,
``hf_token``, ``client_secret``, ``Authorization``, ``credentials``, ``aws_secret_access_key`` and
``private-key`` are secrets; ``api_key_env`` (the *name* of a variable), ``max_new_tokens``, ``tokenizer`` and
``author`` are not. A secret key's value (whatever its type) becomes ``"<redacted>"`` unless it is empty.
A false positive hides a harmless value; a false negative publishes a credential, so the rule leans wide.

**Secrets inside strings** (every string value, recursively, and every log message and error text):

- URL userinfo: ``https://user:key@host/v1`` -> ``https://***@host/v1``;
- URL query parameters with a secret name: ``?api_key=sk-1&x=2`` -> ``?api_key=***&x=2`` (also ``sig=``);
- ``Bearer <token>`` / ``Basic <token>`` -> ``Bearer ***``;
- ``name=value`` / ``name: value`` / ``"name": "value"`` where ``name`` ends with ``api_key``, ``apikey``,
  ``token``, ``secret``, ``password``, ``passwd``, ``credentials``, ``authorization``, ``cookie`` or
  ``private_key`` (``api_key='sk-1'`` -> ``api_key='***'``);
- any value seen under a secret key by :func:`redact` or passed to :func:`register_secret` in this process,
  wherever it reappears (an endpoint that echoes the key in an error body).

**Logs.** :func:`install_log_redaction` makes every log record of vlselect (``selector``, ``metrics``) and of
the HTTP and Hub libraries it drives (``httpx``, ``httpcore``, ``urllib3``, ``huggingface_hub``) carry the
redacted message, whatever handler prints it: httpx logs each request's URL at INFO, userinfo included. It
wraps the log record factory instead of adding a filter to those loggers, because a logger's filters do not see
records that propagate up from its child loggers (``selector.scoring`` -> ``selector``); :class:`RedactFilter`
is the same rule as a ``logging.Filter`` for handlers of your own.

Example:
    >>> redact({"base_url": "https://u:sk-1@api.example.com/v1", "headers": {"X-Api-Key": "sk-2"}})
    {'base_url': 'https://***@api.example.com/v1', 'headers': {'X-Api-Key': '<redacted>'}}
    >>> redact_text("POST https://u:pw@h/v1?token=abc&n=1")
    'POST https://***@h/v1?token=***&n=1'
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

REDACTED = "<redacted>"
MASK = "***"

#: The secret words of the key rule (see the module docstring).
SECRET_WORDS = (
    "key",
    "apikey",
    "api_key",
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "credential",
    "credentials",
    "authorization",
    "auth",
    "cookie",
    "cookies",
    "bearer",
    "private_key",
    "signature",
)
_SECRET_KEY = re.compile(rf"(?:^|_)(?:{'|'.join(SECRET_WORDS)})$")

# Text rules. Userinfo is everything between "scheme://" and the last "@" before the host ends, so a password
# holding an unescaped "@" is masked whole.
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/?#@'\"<>]*(?:@[^\s/?#@'\"<>]*)*@")
_QUERY = re.compile(
    r"([?&;][\w.-]*?(?:api[-_]?key|apikey|key|token|secret|password|passwd|pwd|auth|signature|sig|credentials?)=)"
    r"[^&#\s'\"<>]+",
    re.I,
)
_SCHEME_TOKEN = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=:-]+", re.I)
_ASSIGNMENT = re.compile(
    r"((?<![\w-])[\w-]*?(?:api[-_]?key|apikey|token|secret|password|passwd|credentials?|authorization|cookie|"
    r"private[-_]?key)['\"]?\s*[:=]\s*['\"]?)((?!\*\*\*|<redacted>)[^\s'\",;&)}\]]+)",
    re.I,
)

_known: set[str] = set()
_known_lock = threading.Lock()
_known_pattern: re.Pattern | None = None
# Short values ("1", "yes") would mask unrelated text everywhere; real credentials are longer.
_MIN_KNOWN = 6


def is_secret_key(key: Any) -> bool:
    """True when a mapping key names a secret (see the module docstring for the rule)."""
    normalised = re.sub(r"[-.\s]+", "_", str(key).strip().lower())
    return bool(_SECRET_KEY.search(normalised))


def register_secret(*values: Any) -> None:
    """Remember secret values so :func:`redact_text` masks them wherever they reappear in this process.

    Strings shorter than 6 characters are ignored (they would mask unrelated text); other types are skipped.
    """
    global _known_pattern
    fresh = {v for v in values if isinstance(v, str) and len(v) >= _MIN_KNOWN and v not in _known}
    if not fresh:
        return
    with _known_lock:
        _known.update(fresh)
        # Longest first, so a secret that contains another is masked whole.
        _known_pattern = re.compile("|".join(re.escape(v) for v in sorted(_known, key=len, reverse=True)))


def _collect(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
        if "://" not in value:
            # A "user:password" pair's halves are secrets on their own too.
            yield from (part for part in value.split(":") if part)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _collect(item)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _collect(item)


def redact_text(text: str) -> str:
    """``text`` with URL userinfo, secret query parameters, ``Bearer`` tokens, ``secret=value`` pairs and every
    registered secret value masked as ``***``."""
    if not isinstance(text, str) or not text:
        return text
    pattern = _known_pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if "://" in text:
        for url in _USERINFO.finditer(text):
            register_secret(*_userinfo_parts(url.group(0)))
        text = _USERINFO.sub(rf"\1{MASK}@", text)
    if "=" in text:
        text = _QUERY.sub(rf"\1{MASK}", text)
    text = _SCHEME_TOKEN.sub(rf"\1 {MASK}", text)
    return _ASSIGNMENT.sub(rf"\1{MASK}", text)


def _userinfo_parts(match: str) -> list[str]:
    userinfo = match.split("://", 1)[1][:-1]
    if userinfo == MASK:
        return []
    return [userinfo, *userinfo.split(":", 1)[1:]]


def redact(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists and tuples walked recursively) with every secret key's value replaced
    by ``"<redacted>"`` and every string passed through :func:`redact_text`.

    Values found under secret keys are registered (:func:`register_secret`), so they are masked in logs and
    error messages too.
    """
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if is_secret_key(key) and item not in (None, "", [], {}):
                register_secret(*_collect(item))
                out[key] = REDACTED
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, (list, tuple)):
        items = [redact(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, str):
        return redact_text(value)
    return value


class RedactFilter(logging.Filter):
    """A ``logging.Filter`` that rewrites each record's message (and traceback text) with :func:`redact_text`.

    It never drops a record. :func:`install_log_redaction` applies the same rewrite to every record of the
    listed loggers; use this class on your own handlers for other libraries.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Rewrite ``record`` in place: the formatted message (args merged) and any exception text, redacted."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):  # a bad format string: let logging report it as it normally does
        return record
    clean = redact_text(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not getattr(record, "exc_text", None):
        record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
    elif getattr(record, "exc_text", None):
        record.exc_text = redact_text(record.exc_text)
    return record


#: Loggers whose records :func:`install_log_redaction` rewrites (and their children).
REDACTED_LOGGERS = ("selector", "metrics", "httpx", "httpcore", "urllib3", "huggingface_hub")
_installed = False
_install_lock = threading.Lock()


def install_log_redaction(names: Iterable[str] = REDACTED_LOGGERS) -> None:
    """Redact every log record of the loggers ``names`` (and their children) in this process; idempotent.

    Called by the CLI and by the judge's HTTP backend before its first request.
    """
    global _installed
    prefixes = tuple(names)
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            name = record.name
            if any(name == p or name.startswith(p + ".") for p in prefixes):
                redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        for name in prefixes:
            # Also a filter on the named loggers themselves, for code that replaces the record factory later.
            logger = logging.getLogger(name)
            if not any(isinstance(f, RedactFilter) for f in logger.filters):
                logger.addFilter(RedactFilter())
        _installed = True
