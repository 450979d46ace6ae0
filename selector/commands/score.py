"""``vlselect score SOURCE --metrics length,clip --out DIR``: add metric columns, resumably."""

from __future__ import annotations

import argparse
import contextlib
import os
import time

from selector.commands._common import add_json_argument, add_overwrite_argument, print_json, start_afresh


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "score",
        help="score every row with metric plugins and save the result (resumable)",
        description="Load SOURCE, run the metrics on every row and write a datasets save_to_disk folder with a "
        "manifest.json to --out. An interrupted run resumes where it stopped when started again with the same "
        "arguments. Metrics: --metrics length,clip,... (registry names with default options) and/or "
        "--metric-config FILE (YAML: 'metrics: [{metric: clip, batch_size: 64}, ...]').",
    )
    parser.add_argument("source", help="data file or directory, or a folder written by save_to_disk")
    parser.add_argument("--format", default="auto", help="input format (default: detect)")
    parser.add_argument("--image-root", default=None, help="directory relative image paths refer to")
    parser.add_argument("--split", default=None, help="split of a DatasetDict folder or Hub dataset (default train)")
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read image paths that resolve (after symlinks) outside the image root(s) too; by default they are "
        "row errors",
    )
    parser.add_argument("--metrics", default=None, help="comma-separated metric names, e.g. length,clip")
    parser.add_argument("--metric-config", default=None, metavar="FILE", help="YAML file with metric options")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; resumed if it exists)")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="score only the first N rows and print a time estimate for the whole input",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="rows per map batch (default 32)")
    parser.add_argument("--num-proc", type=int, default=None, help="worker processes (e.g. one per GPU)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="rows per resumable shard (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed recorded in the manifest (default 0)")
    add_overwrite_argument(
        parser,
        "start afresh: replace the earlier scoring run in --out once the new one is complete (without it, that run "
        "resumes)",
    )
    add_json_argument(parser)
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: a Ray cluster, same output (needs vlselect[ray])",
    )
    parser.add_argument(
        "--address", default=None, help="with --engine ray: the Ray cluster ('auto', ray://HOST:10001); default local"
    )
    parser.set_defaults(func=run)
    return parser


def _load(args):
    from selector.errors import DataError

    if os.path.isdir(args.source) and os.path.exists(os.path.join(args.source, "state.json")):
        from datasets import load_from_disk

        try:
            return load_from_disk(args.source)
        except (OSError, ValueError) as exc:
            raise DataError(f"{args.source}: cannot load the saved dataset ({exc})") from exc
    from selector.data import load_instructions

    return load_instructions(
        args.source,
        format=args.format,
        image_root=args.image_root,
        split=args.split,
        allow_outside_root=args.allow_outside_root,
    )


def _ray_source(args):
    """With ``--engine ray`` the Ray workers read the source block by block (:class:`selector.ray_engine.RaySource`);
    a ``save_to_disk`` folder is memory-mapped here as without Ray (it keeps its extra columns)."""
    if os.path.isdir(args.source) and os.path.exists(os.path.join(args.source, "state.json")):
        return _load(args)
    from selector.ray_engine import RaySource

    return RaySource(
        args.source,
        format=args.format,
        image_root=args.image_root,
        split=args.split,
        allow_outside_root=args.allow_outside_root,
    )


def _metric_list(args) -> list:
    from metrics.registry import check_unique_names, get_metric, metrics_from_config, parse_metric_list
    from selector.errors import ConfigError

    if not args.metrics and not args.metric_config:
        raise ConfigError("give --metrics NAME,... and/or --metric-config FILE")
    out = [get_metric(name) for name in parse_metric_list(args.metrics or "")]
    if args.metric_config:
        out += metrics_from_config(args.metric_config)
    check_unique_names(out)
    return out


def _format_seconds(seconds: float) -> str:
    # The judge's "remaining requests" line uses the same format, so equal estimates read the same.
    from metrics.judge import format_duration

    return format_duration(seconds)


def _format_rate(rows_per_second: float) -> str:
    # A slow metric (an LLM judge) does well under one row per second: show seconds per row instead of "0.0".
    if rows_per_second >= 1:
        return f"{rows_per_second:.1f} rows/s"
    return f"{1 / rows_per_second:.1f} s/row"


def _metric_rates(manifest: dict, n_scored: int) -> dict[str, float]:
    """Rows per second of each metric in this run (its wall time, model loading included)."""
    return {entry["name"]: n_scored / entry["seconds"] for entry in manifest["metrics"] if entry.get("seconds", 0) > 0}


def whole_input_estimate(n_rows: int, n_scored: int, elapsed: float, manifest: dict, own: dict) -> dict:
    """Seconds a run over all ``n_rows`` takes, as a sum of per-metric parts (``{"seconds", "parts"}``).

    A metric with its own estimate (the LLM judge: ``own[name]``) counts what that estimate says for the requests
    still to send (cached rows cost nothing) plus its fixed cost in this run (model loading: its wall time here
    less the time spent waiting for answers), so the total and the judge's "remaining requests" line agree by
    construction. When this process sent no request (``--num-proc``: the workers did), the metric's estimate is
    already its wall time per scored row, loading included, and nothing is added. Every other metric scales its
    wall time in this run to ``n_rows`` (errs high: model loading is scaled too), and so does writing the output
    (the run's time outside the metrics).
    """
    scale = n_rows / max(n_scored, 1)
    parts: dict[str, float] = {}
    metric_total = 0.0
    for entry in manifest["metrics"]:
        seconds = float(entry.get("seconds", 0.0))
        metric_total += seconds
        est = own.get(entry["name"])
        if est is not None and est.get("seconds") is not None:
            measured = est.get("this_process", {})
            # Without requests here, est["seconds"] came from this metric's wall time per row: loading is in it.
            fixed = max(seconds - float(measured.get("seconds", 0.0)), 0.0) if measured.get("requests") else 0.0
            parts[entry["name"]] = float(est["seconds"]) + fixed
        else:
            parts[entry["name"]] = seconds * scale
    parts["writing"] = max(elapsed - metric_total, 0.0) * scale
    return {"seconds": sum(parts.values()), "parts": parts}


def run(args: argparse.Namespace) -> int:
    from selector.errors import ConfigError
    from selector.runs import check_no_overlap, read_manifest
    from selector.scoring import score

    engine_options = {}
    if args.address and args.engine != "ray":
        from selector.errors import ConfigError

        raise ConfigError("--address is the Ray cluster's address: it needs --engine ray")
    if args.engine == "ray":
        from selector.ray_engine import require_ray

        require_ray()  # before loading anything: a missing extra is a one-line error
        engine_options = {"engine": "ray", "address": args.address}
    check_no_overlap(args.out, args.source)  # the final save would replace the input's files
    if args.limit is not None and args.limit < 1:
        # before loading: the input's own warnings would bury this one-line error
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    metric_list = _metric_list(args)
    with contextlib.ExitStack() as stack:
        out_dir = args.out
        if args.overwrite and "://" in args.out:  # start_afresh stages and swaps local folders only
            raise ConfigError("--overwrite works on a local --out folder; delete the URI's objects to start afresh")
        if args.overwrite:  # the earlier result stays in place until the new one is complete
            out_dir = stack.enter_context(start_afresh(args.out, source=args.source)).path
        dataset = _ray_source(args) if args.engine == "ray" else _load(args)
        started = time.time()
        scored = score(
            dataset,
            metric_list,
            batch_size=args.batch_size,
            num_proc=args.num_proc,
            out_dir=out_dir,
            shard_size=args.shard_size,
            limit=args.limit,
            seed=args.seed,
            source=args.source,
            progress=not args.quiet,
            **engine_options,
        )
        elapsed = time.time() - started
        manifest = read_manifest(out_dir)
    estimates = {}
    if args.limit:
        # Metrics that call paid or slow services (the LLM judge) estimate requests, tokens and cost themselves.
        rows = dataset
        metric_seconds = {e["name"]: e["seconds"] for e in manifest["metrics"] if e.get("seconds") is not None}
        for metric in metric_list:
            if hasattr(metric, "estimate") and hasattr(metric, "format_estimate"):
                if not hasattr(rows, "select"):  # a source the Ray workers read: the estimate reads all rows here
                    rows = _load(args)
                estimates[metric.name] = (
                    metric,
                    # its own wall time: the whole run's would charge it for the other metrics too (the Ray
                    # engine records no per-metric time: there the whole run's stands in, erring high)
                    metric.estimate(
                        rows, n_scored=len(scored), elapsed=metric_seconds.get(metric.name, manifest["seconds"])
                    ),
                )
    estimate = None
    if args.limit and args.limit < len(dataset):
        estimate = whole_input_estimate(
            len(dataset), len(scored), elapsed, manifest, {name: est for name, (_, est) in estimates.items()}
        )
    if args.json:
        print_json(
            {
                "out": args.out if "://" in args.out else os.path.abspath(args.out),
                "n_rows": len(dataset),
                "n_scored": len(scored),
                "seconds": elapsed,
                "scoring_seconds": manifest["seconds"],
                "n_error_rows": manifest["n_error_rows"],
                "errors_by_kind": manifest["errors_by_kind"],
                "metrics": [
                    {"name": e["name"], "columns": e["columns"], "n_nan": e["n_nan"], "report": e.get("report", {})}
                    for e in manifest["metrics"]
                ],
                "estimated_seconds_all_rows": estimate["seconds"] if estimate else None,
                "estimate_parts": estimate["parts"] if estimate else None,
                "rows_per_second": _metric_rates(manifest, len(scored)),
                "estimates": {name: est for name, (_, est) in estimates.items()},
            }
        )
        return 0
    print(f"scored {len(scored)} of {len(dataset)} rows in {_format_seconds(elapsed)} -> {args.out}")
    if manifest["n_error_rows"]:
        kinds = ", ".join(f"{k}: {v}" for k, v in manifest["errors_by_kind"].items())
        print(f"rows with errors (scored NaN): {manifest['n_error_rows']} ({kinds})")
    for entry in manifest["metrics"]:
        for column in entry["columns"]:
            print(f"  {column}: {entry['n_nan'].get(column, 0)} NaN")
        for key, value in entry.get("report", {}).items():
            print(f"  {entry['name']} {key}: {value}")
    for name, rate in _metric_rates(manifest, len(scored)).items():
        print(f"  {name}: {_format_rate(rate)} (this run, model loading included)")
    if estimate is not None:
        parts = ", ".join(f"{name} {_format_seconds(sec)}" for name, sec in estimate["parts"].items())
        print(f"estimate for all {len(dataset)} rows: about {_format_seconds(estimate['seconds'])} ({parts})")
    for metric, est in estimates.values():
        print(metric.format_estimate(est))
    return 0
