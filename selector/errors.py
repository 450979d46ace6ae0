"""Exceptions that carry a one-line, user-facing reason.

The CLI turns any :class:`VLSelectError` into ``error: <message>`` and exit code 2, so raise these (never a
bare ``ValueError``) for mistakes a user can fix: a bad path, a file that does not parse, a missing extra.

Each class also derives from the built-in exception Python and scikit-learn use for the same mistake
(``ValueError`` for bad values, ``TypeError`` for input of the wrong kind, ``ImportError`` for a missing package),
so code written against scikit-learn's estimator contract (``check_estimator``, ``except ValueError``) handles
them as it handles scikit-learn's own errors.
"""

from __future__ import annotations


class VLSelectError(Exception):
    """Base class for errors caused by user input or environment, reported without a traceback."""


class DataError(VLSelectError, ValueError):
    """The input data can't be read as asked (unknown format, unparsable file, empty dataset, ...)."""


class DataTypeError(DataError, TypeError):
    """The input is of a kind that can't be used at all (a dict where a number belongs, ...)."""


class ConfigError(VLSelectError, ValueError):
    """A configuration file or option is invalid (unknown key, wrong type, impossible value)."""


class OutputError(VLSelectError, OSError):
    """An output can't be written: disk full, read-only or not writable folder, or another run holds its lock."""


class MissingDependencyError(VLSelectError, ImportError):
    """An optional package is needed; the message names the pip extra that installs it."""


def require(module: str, extra: str, feature: str) -> None:
    """Fail early, before any heavy import, when ``module`` is not installed.

    Args:
        module: importable module name, e.g. ``"faiss"``.
        extra: the vlselect extra that installs it, e.g. ``"faiss"``.
        feature: what needs it, used in the message, e.g. ``"faiss k-means"``.

    Raises:
        MissingDependencyError: ``Install vlselect[faiss] to use faiss k-means (no module named 'faiss')``.
    """
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"Install vlselect[{extra}] to use {feature} (no module named {module!r})")
