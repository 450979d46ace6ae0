"""Flags and output rules every ``vlselect`` command shares (not a command: ``selector.cli`` skips ``_`` modules).

- ``--quiet`` and ``-v/--verbose`` are global: :func:`add_global_flags` puts them on the main parser and on each
  command, so they work before or after the command name.
- ``--json``: the command's result as one JSON object on stdout; whatever else would reach stdout (a library's
  ``print``) goes to stderr while the command runs (:func:`json_stdout`), so stdout always parses.
- ``--overwrite``: replace an earlier result of vlselect in the output folder; a folder vlselect did not write is
  never replaced (:func:`selector.runs.check_out_folder`). Commands that resume (``score``, ``run``, ``demo``)
  continue their own earlier run without it and start afresh with it.
- ``--set KEY=VALUE`` (aliases ``-o``, ``--option``): a strategy or recipe option, repeatable.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

QUIET_HELP = "show only warnings on stderr: no progress bars (also of transformers and datasets), no INFO lines"
VERBOSE_HELP = "log vlselect's debug messages (other libraries stay at WARNING)"
JSON_HELP = "print the result as one JSON object on stdout, nothing else"
SET_FLAGS = ("--set", "-o", "--option")

# The real stdout while a --json command runs; print() goes to stderr meanwhile.
_json_out = None


def add_global_flags(parser: argparse.ArgumentParser, *, default: Any = argparse.SUPPRESS) -> None:
    """Add ``-v/--verbose`` and ``--quiet``. On the commands the default is SUPPRESS, so a flag given before the
    command name is not reset by the command's parser (argparse copies only what the subparser set)."""
    group = parser.add_argument_group("output")
    for flags, dest, help in (
        (("-v", "--verbose"), "verbose", VERBOSE_HELP),
        (("-q", "--quiet"), "quiet", QUIET_HELP),
    ):
        try:
            group.add_argument(*flags, action="store_true", default=default, help=help)
        except argparse.ArgumentError:
            # the command declares the flag itself: keep its spelling, but let the global value through
            parser.set_defaults(**{dest: default})


def add_json_argument(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    """Add ``--json`` (print :func:`print_json`'s object instead of the text summary)."""
    parser.add_argument("--json", action="store_true", help=JSON_HELP.replace("the result", what))


def add_overwrite_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=help)


def add_set_argument(parser: argparse.ArgumentParser, what: str, example: str, **kwargs: Any) -> None:
    """Add the repeatable ``--set KEY=VALUE`` flag with its aliases ``-o`` and ``--option``."""
    kwargs.setdefault("dest", "option")
    kwargs.setdefault("default", [])
    parser.add_argument(
        *SET_FLAGS,
        action="append",
        metavar="KEY=VALUE",
        help=f"{what}, repeatable (e.g. {example})",
        **kwargs,
    )


@contextlib.contextmanager
def json_stdout(enabled: bool) -> Iterator[None]:
    """While a ``--json`` command runs, send ``print`` output to stderr; :func:`print_json` writes to stdout."""
    global _json_out
    if not enabled:
        yield
        return
    _json_out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_out = None


def print_json(result: Any) -> None:
    """Write ``result`` as strict JSON (NaN -> null) to stdout, even inside :func:`json_stdout`."""
    import json

    from selector.fileio import json_safe

    stream = _json_out or sys.stdout
    stream.write(json.dumps(json_safe(result), indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n")
    stream.flush()


def start_afresh(out: str, *, source: Any = None, what: str = "--out") -> None:
    """``--overwrite`` on a command that resumes: delete the earlier result in ``out`` so the run starts over.

    Raises:
        ConfigError: ``out`` overlaps the source, or holds something vlselect did not write.
    """
    import shutil

    from selector.runs import check_out_folder

    out = check_out_folder(out, source=source, overwrite=True, what=what)
    if os.path.isdir(out):
        shutil.rmtree(out)
