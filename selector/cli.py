"""The ``vlselect`` command line (also ``python -m selector``).

Exit codes: 0 success, 1 unexpected internal error, 2 usage or input error (one line on stderr), 130 interrupted.
``--quiet`` and ``-v`` work before or after the command name (:mod:`selector.commands._common`); logging and
progress bars are set up by :func:`selector.logs.cli_logging`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from selector import commands, logs
from selector.commands._common import add_global_flags, json_stdout
from selector.errors import VLSelectError
from selector.redact import install_log_redaction, redact_text


def build_parser() -> argparse.ArgumentParser:
    from selector import __version__

    parser = argparse.ArgumentParser(
        prog="vlselect",
        description="Choose the vision-language instructions worth fine-tuning on.",
    )
    parser.add_argument("--version", action="version", version=f"vlselect {__version__}")
    add_global_flags(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"selector.commands.{info.name}")
        add_global_flags(module.add_parser(subparsers))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # No credential reaches a log line (httpx logs request URLs, userinfo included) or an error line.
    install_log_redaction()
    if args.quiet and args.verbose:
        parser.error("pass either --quiet or -v, not both")
    as_json = getattr(args, "json", False)
    try:
        # --json: stdout holds the JSON object only, so no bars either (they would fill a captured stderr).
        with logs.cli_logging(quiet=args.quiet, verbose=args.verbose, progress_bars=not as_json), json_stdout(as_json):
            return int(args.func(args) or 0)
    except VLSelectError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
