"""Flags and output rules every ``vlselect`` command shares (not a command: ``selector.cli`` skips ``_`` modules).

- ``--quiet`` and ``-v/--verbose`` are global: :func:`add_global_flags` puts them on the main parser and on each
  command, so they work before or after the command name.
- ``--json``: the command's result as one JSON object on stdout; whatever else would reach stdout (a library's
  ``print``) goes to stderr while the command runs (:func:`json_stdout`), so stdout always parses.
- ``--overwrite``: replace an earlier result of vlselect in the output folder; a folder vlselect did not write is
  never replaced (:func:`selector.runs.check_out_folder`). Commands that resume (``score``, ``run``, ``demo``)
  continue their own earlier run without it and start afresh with it (:func:`start_afresh`: the new run is
  written beside the old one, which is replaced only once the new one is complete).
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


class FreshOutput:
    """Where an ``--overwrite`` run writes (:func:`start_afresh`).

    Attributes:
        out: the output folder the user named (absolute).
        path: the folder the command writes to: ``out`` itself when it is new or empty, otherwise a staging
            folder beside it that replaces ``out`` once the command has finished.
    """

    def __init__(self, out: str, path: str) -> None:
        self.out = out
        self.path = path

    def final(self, value: Any) -> Any:
        """``value`` (a path, or a dict/list holding paths) as it reads once the staging folder is in place."""
        if self.path == self.out:
            return value
        if isinstance(value, str):
            for staged in {self.path, os.path.realpath(self.path)}:
                if value == staged or value.startswith(staged + os.sep):
                    return self.out + value[len(staged) :]
            return value
        if isinstance(value, dict):
            return {key: self.final(item) for key, item in value.items()}
        if type(value) in (list, tuple):
            return type(value)(self.final(item) for item in value)
        return value


#: Text files of a run folder that may name the folder itself (resolved config, manifests, report, card).
_PATH_FILES = (".json", ".html", ".md", ".yaml", ".txt")


def _repoint_files(staging: str, out: str) -> None:
    """Rewrite the staging folder's path to ``out`` in the small text files the command wrote (``config.json``'s
    ``out``, the selection manifest's ``input``, the report's footer), so the swapped folder names itself."""
    import html
    import json

    from selector.fileio import atomic_write_text

    pairs = []
    for staged in dict.fromkeys([staging, os.path.realpath(staging)]):
        pairs.append((staged, out))
        for ascii_only in (True, False):  # as JSON spells the path: escaped characters, non-ASCII escaped or not
            pairs.append(
                (json.dumps(staged, ensure_ascii=ascii_only)[1:-1], json.dumps(out, ensure_ascii=ascii_only)[1:-1])
            )
        pairs.append((html.escape(staged), html.escape(out)))
    for root, _, names in os.walk(staging):
        for name in names:
            path = os.path.join(root, name)
            if not name.endswith(_PATH_FILES) or os.path.islink(path) or os.path.getsize(path) > 64 << 20:
                continue
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
            except UnicodeDecodeError:
                continue
            new = text
            for old_text, new_text in pairs:
                new = new.replace(old_text, new_text)
            if new != text:
                atomic_write_text(path, new)


@contextlib.contextmanager
def start_afresh(out: str, *, source: Any = None, what: str = "--out") -> Iterator[FreshOutput]:
    """``--overwrite`` on a command that resumes: run the command afresh, replacing the earlier result in ``out``
    only once the new one is complete.

    The ``with`` block writes to ``fresh.path``: ``out`` itself when it is new or empty; otherwise a staging folder
    beside ``out``, which is swapped into place (:func:`selector.runs.swap_into_place`) when the block ends without
    an exception. An error, Ctrl-C or ``kill -9`` before that leaves the earlier result untouched; a later
    ``--overwrite`` removes the staging folder a killed run left. The lock of ``out`` is held throughout, so no
    other run resumes ``out`` meanwhile. Paths the command recorded (``config.json``, manifests, the report) and
    returned (map them with ``fresh.final``) name ``out``, not the staging folder.

    Raises:
        ConfigError: ``out`` overlaps the source, or holds something vlselect did not write.
    """
    import shutil
    import tempfile

    from selector.fileio import folder_lock, output_errors
    from selector.runs import check_out_folder, swap_into_place

    final = os.path.abspath(out)
    check_out_folder(final, source=source, overwrite=True, what=what)
    if not os.path.isdir(final) or not os.listdir(final):
        yield FreshOutput(final, final)
        return
    parent, name = os.path.split(final)
    prefix = f".{name}.vlselect-fresh-"
    with folder_lock(final, what=what):
        with output_errors(final, what=what):
            for leftover in os.listdir(parent):  # a killed earlier --overwrite (we hold the lock: it is gone)
                if leftover.startswith(prefix) and not leftover.startswith(f"{prefix}{os.getpid()}-"):
                    shutil.rmtree(os.path.join(parent, leftover), ignore_errors=True)
            staging = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
        try:
            yield FreshOutput(final, staging)
            with output_errors(final, what=what):
                _repoint_files(staging, final)
                swap_into_place(staging, final)
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging, ignore_errors=True)
