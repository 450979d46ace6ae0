"""``vlselect run CONFIG.yaml``: load, check, score, select and write the dataset card in one go.

``vlselect run --example`` prints the recommended configuration (``selector/configs/recommended.yaml``) to start
from.
"""

from __future__ import annotations

import argparse
import time

from selector.commands._common import add_json_argument, add_overwrite_argument, print_json, start_afresh


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run",
        help="run a whole selection from a YAML configuration (checks, scores, filters, dedup, select, card)",
        description="Run the pipeline a YAML file describes. Keys: source, out, format, image_root, "
        "allow_outside_root, checks, "
        "metrics, quality, filters, dedup, strategy, budget, embedding_column, score_column, cluster_column, "
        "stratify_column, options, seed, batch_size, limit, license, source_dataset, split. Re-running resumes "
        "the scoring where it stopped (--overwrite starts afresh). `vlselect run --example` prints the recommended multimodal configuration.",
    )
    parser.add_argument("config", metavar="CONFIG", nargs="?", help="YAML configuration file")
    parser.add_argument(
        "--example",
        action="store_true",
        help="print the recommended configuration (checks, metrics, quality, filters, dedup, quotas) and exit",
    )
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="also read image paths outside the image root (same as allow_outside_root: true in CONFIG)",
    )
    parser.add_argument(
        "--split", default=None, help="split of a DatasetDict folder or Hub dataset (overrides split: in CONFIG)"
    )
    add_overwrite_argument(
        parser,
        "start afresh: replace the earlier run in the config's out folder once the new one is complete (without it, "
        "that run resumes)",
    )
    add_json_argument(parser)
    parser.set_defaults(func=run)
    return parser


def result_json(result: dict, seconds: float) -> dict:
    """The JSON form of :func:`selector.pipeline.run_pipeline`'s result (``--json``)."""
    from selector.commands.select import selection_result

    out = {key: value for key, value in result.items() if key != "selection"}
    if result.get("selection") is not None:
        out["selection"] = selection_result(result["selection"])
    out["seconds"] = seconds
    return out


def report(result: dict) -> None:
    reasons = ", ".join(f"{k} {v}" for k, v in result["reasons"].items())
    print(f"selected {result['n_selected']} of {result['n_rows']} rows ({reasons})")
    selection = result.get("selection")
    if selection is not None and selection.filter_report:
        counts = ", ".join(f"{rule} {n}" for rule, n in selection.filter_report["counts"].items() if n)
        print(f"filtered:     {selection.filter_report['n_filtered']} rows ({counts or 'none failed'})")
    if selection is not None and selection.dedup_report:
        from selector.selection import dedup_summary

        print(f"deduplicated: {dedup_summary(selection.dedup_report)}")
    if result.get("quality"):
        quality = result["quality"]
        if quality.get("source") == "selector":
            print(f"quality:      score_quality from the learned selector {quality['selector']}")
        else:
            parts = ", ".join(f"{c['column']} {c['weight']:g} {c['direction']}" for c in quality["columns"])
            print(f"quality:      score_quality = {parts}")
    for message in getattr(selection, "warnings", None) or []:
        print(f"warning: {message}")
    print(f"scores:       {result['scored']}")
    print(f"subset:       {result['selected']}")
    print(f"dataset card: {result['card']}")
    if result.get("report"):
        print(f"report:       {result['report']}")


def run(args: argparse.Namespace) -> int:
    from selector.errors import ConfigError
    from selector.pipeline import RECOMMENDED_CONFIG, PipelineConfig, run_pipeline

    if args.example:
        if args.config:
            raise ConfigError("pass either CONFIG or --example, not both")
        if args.json:
            raise ConfigError("--example prints YAML; drop --json")
        with open(RECOMMENDED_CONFIG, encoding="utf-8") as handle:
            print(handle.read(), end="")
        return 0
    if not args.config:
        raise ConfigError("vlselect run needs a CONFIG file (vlselect run --example prints one to start from)")
    config = PipelineConfig.from_yaml(args.config)
    if args.allow_outside_root:
        config.allow_outside_root = True
    if args.split is not None:
        config.split = args.split
    started = time.time()
    if args.overwrite:
        with start_afresh(config.out, source=config.source, what="out") as fresh:
            config.out = fresh.path
            result = fresh.final(run_pipeline(config, progress=not args.quiet))
    else:
        result = run_pipeline(config, progress=not args.quiet)
    if args.json:
        print_json(result_json(result, time.time() - started))
        return 0
    report(result)
    return 0
