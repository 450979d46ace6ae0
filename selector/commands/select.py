"""``vlselect select SCORED_DIR --strategy S --budget B --out DIR``: choose a subset of a scored dataset.

Writes a ``save_to_disk`` folder to ``--out`` (the selected rows, or with ``--keep-rejected`` every row plus
``selected``, ``selection_rank`` and ``selection_reason``) and ``manifest.json`` beside it: the resolved options,
seed, budget, columns used, counts per reason, per cluster and per source, and warnings.

Adding a flag: declare it in :func:`add_parser` and turn it into a :func:`selector.selection.select` keyword in
:func:`select_kwargs` (e.g. per-row ``scores`` from a learned selector). ``--budget`` follows the budget rule of
:func:`selector.rows.parse_budget` (``200``, ``200.0``, ``0.3``, ``30%``; 0 or below is an error).
"""

from __future__ import annotations

import argparse
import os


def _strategy_names() -> str:
    from selector.strategies import available_strategies

    return ", ".join([*available_strategies(), "topk:<column>"])


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "select",
        help="choose a subset of a scored dataset with a selection strategy",
        description="Select --budget rows of SCORED_DIR (a folder written by `vlselect score`) with a strategy "
        f"({_strategy_names()}) and write them, with a manifest.json, to --out. Rows with errors are never "
        "selected; NaN scores rank last; ties break by id; the result does not depend on row order.",
    )
    parser.add_argument("scored_dir", metavar="SCORED_DIR", help="save_to_disk folder written by `vlselect score`")
    parser.add_argument("--strategy", required=True, help="strategy name, or topk:<score column>")
    parser.add_argument(
        "--budget", required=True, help="rows to keep: a count (200), a fraction in (0, 1] (0.3) or a percent (30%%)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (save_to_disk + manifest.json)")
    parser.add_argument(
        "--keep-rejected",
        action="store_true",
        help="write every row with selected / selection_rank / selection_reason columns instead of the subset",
    )
    parser.add_argument("--embedding-column", default=None, help="emb_* column (default: the only one, if one)")
    parser.add_argument("--score-column", default=None, help="score_* column to rank by (higher = better)")
    parser.add_argument(
        "--selector",
        default=None,
        metavar="DIR_OR_HUB_ID",
        help="rank by a learned selector (from `vlselect train-selector`, a folder or a Hub model id) "
        "instead of --score-column",
    )
    parser.add_argument("--cluster-column", default=None, help="cluster_* column with precomputed clusters")
    parser.add_argument("--stratify-column", default=None, help="apply quotas per value of this column (e.g. source)")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy option, repeatable (e.g. -o n_clusters=50 -o keep=easy -o eps=0.05); values are YAML",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier result")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    parser.set_defaults(func=run)
    return parser


def parse_budget(text: str) -> int | float:
    """``"200"`` and ``"200.0"`` -> 200, ``"0.3"`` and ``"30%"`` -> 0.3 (the rule of :func:`selector.rows.parse_budget`)."""
    from selector.rows import parse_budget as parse

    return parse(text, name="--budget")


def parse_options(items: list[str]) -> dict:
    """``["n_clusters=50", "keep=easy"]`` -> ``{"n_clusters": 50, "keep": "easy"}`` (values parsed as YAML)."""
    import yaml

    from selector.errors import ConfigError

    options = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--option {item!r} is not KEY=VALUE")
        if key in options:
            raise ConfigError(f"--option {key} given twice")
        try:
            options[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--option {item!r}: the value is not valid YAML ({exc})") from None
    return options


def select_kwargs(args: argparse.Namespace, dataset) -> dict:
    """The keyword arguments of :func:`selector.selection.select` that the flags ask for."""
    from selector.errors import ConfigError

    scores = None
    if getattr(args, "selector", None):
        if args.score_column is not None:
            raise ConfigError("pass either --score-column or --selector, not both")
        from selector.learned import LearnedSelector

        # scores depend on each row only, so scoring the whole pool once equals scoring it inside the strategy.
        scores = LearnedSelector.from_pretrained(args.selector).score_samples(dataset)
    return {
        "embedding_column": args.embedding_column,
        "score_column": args.score_column,
        "scores": scores,
        "cluster_column": args.cluster_column,
        "stratify_column": args.stratify_column,
        "random_state": args.seed,
        **parse_options(args.option),
    }


def _prepare_out(out: str, overwrite: bool) -> None:
    from selector.errors import ConfigError

    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        if not overwrite:
            raise ConfigError(f"--out {out} exists and is not empty; pass --overwrite to replace an earlier result")
        if not (os.path.isdir(out) and os.path.exists(os.path.join(out, "state.json"))):
            raise ConfigError(f"--out {out} does not look like an earlier result (no state.json); not replacing it")


def print_summary(selection, out: str) -> None:
    summary = selection.summary()
    reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items())
    print(f"selected {summary['n_selected']} of {summary['n_rows']} rows with {selection.strategy} ({reasons})")
    for message in selection.warnings:
        print(f"warning: {message}")
    print(f"wrote {out}")


def run(args: argparse.Namespace) -> int:
    from selector.runs import load_scored, write_selection
    from selector.selection import select

    if args.quiet:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    budget = parse_budget(args.budget)
    out = os.path.abspath(args.out)
    _prepare_out(out, args.overwrite)
    dataset = load_scored(args.scored_dir)
    kwargs = select_kwargs(args, dataset)
    selection = select(dataset, budget, args.strategy, **kwargs)
    write_selection(
        dataset,
        selection,
        out,
        scored_dir=args.scored_dir,
        keep_rejected=args.keep_rejected,
        extra={"selector": getattr(args, "selector", None)},
    )
    print_summary(selection, out)
    return 0
