"""``vlselect select SCORED_DIR --strategy S --budget B --out DIR``: choose a subset of a scored dataset.

Writes a ``save_to_disk`` folder to ``--out`` (the selected rows, or with ``--keep-rejected`` every row plus
``selected``, ``selection_rank`` and ``selection_reason``) and ``manifest.json`` beside it: the resolved options,
seed, budget, columns used, counts per reason, per cluster and per source, per filter rule, the dedup and quality
reports, and warnings.

Before the strategy: ``--quality`` (or ``--selector``) adds ``score_quality`` (stored in the output) and makes it
the default ``--score-column``; ``--filter`` rules make failing rows ineligible (``filter:<rule>``); and
``--dedup-column`` removes near-duplicates, keeping the best-scored copy (``dedup:dup_of=<id> cos=...``);
``--dedup-group`` does the same for rows that share a group id (``check_copy_group``; ``dedup:dup_of=<id> group=...``).

Adding a flag: declare it in :func:`add_parser` and turn it into a :func:`selector.selection.select` keyword in
:func:`select_kwargs` (e.g. per-row ``scores`` from a learned selector). ``--budget`` follows the budget rule of
:func:`selector.rows.parse_budget` (``200``, ``200.0``, ``0.3``, ``30%``; 0 or below is an error).
"""

from __future__ import annotations

import argparse
import os
import time

from selector.commands._common import add_json_argument, print_json


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
    parser.add_argument(
        "--embedding-column",
        "--embedding-columns",
        dest="embedding_column",
        default=None,
        help="emb_* column (default: the only one, if one)",
    )
    parser.add_argument("--score-column", default=None, help="score_* column to rank by (higher = better)")
    parser.add_argument(
        "--selector",
        default=None,
        metavar="DIR_OR_HUB_ID",
        help="rank by a learned selector (from `vlselect train-selector`, a folder or a Hub model id): its scores "
        "become score_quality (percentile ranks, same order) instead of --score-column",
    )
    parser.add_argument(
        "--quality",
        default=None,
        metavar="SPEC",
        help="add score_quality, the weighted mean of percentile ranks of score columns, and rank by it: 'default' "
        "(the quality metrics present) or COL[:WEIGHT][:higher|lower],... (e.g. "
        "score_relevance:2,score_perplexity:lower)",
    )
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        dest="filters",
        metavar="RULE",
        help="hard rule a kept row satisfies, repeatable: COLUMN:KEY=VALUE[,KEY=VALUE] with keys min, max, "
        "min_quantile, max_quantile, is_null (e.g. score_relevance:min=0.3, check_exact_dup_of:is_null=true); "
        "NaN fails min and max",
    )
    parser.add_argument(
        "--dedup-column",
        action="append",
        default=[],
        dest="dedup_columns",
        metavar="EMB_COLUMN",
        help="remove near-duplicates in this emb_* column before the strategy (repeat for several: a pair must be "
        "similar in all of them); the copy with the best score is kept",
    )
    parser.add_argument(
        "--dedup-group",
        action="append",
        default=[],
        dest="dedup_groups",
        metavar="COLUMN",
        help="rows with the same non-null value in this column repeat each other (e.g. check_copy_group); of each "
        "group's rows that pass the filters the best-scored is kept (repeatable)",
    )
    parser.add_argument(
        "--dedup-eps",
        type=float,
        default=0.05,
        help="near-duplicate threshold: cosine similarity above 1 - eps (default 0.05)",
    )
    parser.add_argument(
        "--dedup-n-clusters",
        type=int,
        default=None,
        metavar="K",
        help="compare rows only inside K spherical k-means clusters (for large pools; default: all pairs)",
    )
    parser.add_argument(
        "--dedup-engine",
        choices=("local", "ray"),
        default="local",
        help="ray: run the dedup comparisons as Ray tasks on the cluster RAY_ADDRESS names (else a local Ray); "
        "same result (default local)",
    )
    parser.add_argument("--cluster-column", default=None, help="cluster_* column with precomputed clusters")
    parser.add_argument("--stratify-column", default=None, help="apply quotas per value of this column (e.g. source)")
    add_option_argument(parser, "--set n_clusters=50 -o keep=easy")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier result")
    add_json_argument(parser)
    parser.set_defaults(func=run)
    return parser


def parse_budget(text: str) -> int | float:
    """``"200"`` and ``"200.0"`` -> 200, ``"0.3"`` and ``"30%"`` -> 0.3 (the rule of :func:`selector.rows.parse_budget`)."""
    from selector.rows import parse_budget as parse

    return parse(text, name="--budget")


def add_option_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """Add the repeatable ``--set KEY=VALUE`` strategy flag, aliases ``-o``/``--option`` (read back with
    :func:`parse_options`)."""
    from selector.commands._common import add_set_argument

    add_set_argument(parser, "strategy option; values are YAML", example)


def parse_options(items: list[str]) -> dict:
    """``["n_clusters=50", "keep=easy"]`` -> ``{"n_clusters": 50, "keep": "easy"}`` (values parsed as YAML)."""
    import yaml

    from selector.errors import ConfigError

    options = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE")
        if key in options:
            raise ConfigError(f"--set {key} given twice")
        try:
            options[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
    return options


def quality_spec(args: argparse.Namespace) -> dict | None:
    """The :func:`selector.pipeline.parse_quality` spec that ``--quality`` / ``--selector`` ask for (None: off)."""
    from selector.errors import ConfigError
    from selector.pipeline import parse_quality, parse_quality_arg

    quality, selector = getattr(args, "quality", None), getattr(args, "selector", None)
    if quality and selector:
        raise ConfigError("pass either --quality or --selector, not both (both make score_quality)")
    if selector:
        if args.score_column not in (None, "score_quality"):
            raise ConfigError("pass either --score-column or --selector, not both")
        return parse_quality({"selector": selector})
    return parse_quality_arg(quality) if quality else None


def select_kwargs(args: argparse.Namespace, dataset) -> dict:
    """The keyword arguments of :func:`selector.selection.select` that the flags ask for.

    ``dataset`` must already hold ``score_quality`` when ``--quality``/``--selector`` is given (see :func:`run`);
    it then is the score column unless ``--score-column`` or a ``topk:<column>`` strategy names another.
    """
    from selector.strategies import parse_strategy

    score_column = args.score_column
    if (
        quality_spec(args) is not None
        and score_column is None
        and parse_strategy(getattr(args, "strategy", None) or "random")[1] is None
    ):
        score_column = "score_quality"
    dedup_columns = list(getattr(args, "dedup_columns", None) or [])
    return {
        "embedding_column": args.embedding_column,
        "score_column": score_column,
        "cluster_column": args.cluster_column,
        "stratify_column": args.stratify_column,
        "filters": list(getattr(args, "filters", None) or []) or None,
        "dedup_column": dedup_columns or None,
        "dedup_eps": getattr(args, "dedup_eps", 0.05),
        "dedup_n_clusters": getattr(args, "dedup_n_clusters", None),
        "dedup_engine": getattr(args, "dedup_engine", "local"),
        "dedup_group": list(getattr(args, "dedup_groups", None) or []) or None,
        "random_state": args.seed,
        **parse_options(args.option),
    }


def selection_result(selection) -> dict:
    """The JSON form of a selection's outcome (``--json``): counts, reasons, filter and dedup counts, warnings."""
    result = {"strategy": selection.strategy, **selection.summary()}
    if selection.filter_report:
        result["filtered"] = {
            "n_filtered": selection.filter_report["n_filtered"],
            "counts": selection.filter_report["counts"],
        }
    if selection.dedup_report:
        keys = ("n_duplicates", "n_compared", "columns", "groups")
        result["dedup"] = {key: selection.dedup_report.get(key) for key in keys}
    result["warnings"] = list(selection.warnings)
    return result


def print_summary(selection, out: str) -> None:
    summary = selection.summary()
    reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items())
    print(f"selected {summary['n_selected']} of {summary['n_rows']} rows with {selection.strategy} ({reasons})")
    if selection.filter_report:
        counts = ", ".join(f"{rule} {n}" for rule, n in selection.filter_report["counts"].items())
        print(f"filtered {selection.filter_report['n_filtered']} rows ({counts})")
    if selection.dedup_report:
        from selector.selection import dedup_summary

        print(f"removed {dedup_summary(selection.dedup_report)}")
    for message in selection.warnings:
        print(f"warning: {message}")
    print(f"wrote {out}")


def run(args: argparse.Namespace) -> int:
    from selector.runs import check_out_folder, load_scored, write_selection
    from selector.selection import select

    started = time.time()
    budget = parse_budget(args.budget)
    out = os.path.abspath(args.out)
    check_out_folder(out, source=args.scored_dir, overwrite=args.overwrite)
    dataset = load_scored(args.scored_dir)
    # flags are checked before the quality score loads a selector or reads columns.
    spec = quality_spec(args)
    kwargs = select_kwargs(args, dataset)
    quality_report = None
    if spec is not None:
        from selector.pipeline import add_quality

        dataset, quality_report = add_quality(dataset, spec)
    selection = select(dataset, budget, args.strategy, **kwargs)
    write_selection(
        dataset,
        selection,
        out,
        scored_dir=args.scored_dir,
        keep_rejected=args.keep_rejected,
        extra={"selector": getattr(args, "selector", None), "quality": quality_report},
    )
    if args.json:
        print_json({"out": out, **selection_result(selection), "seconds": time.time() - started})
        return 0
    print_summary(selection, out)
    return 0
