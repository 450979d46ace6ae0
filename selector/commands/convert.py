"""``vlselect convert SOURCE OUT --to FORMAT``: rewrite a dataset in another format, streaming."""

from __future__ import annotations

import argparse

from selector.commands._common import add_json_argument, print_json

FORMATS = ("llava", "parquet", "messages", "minigpt4")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert",
        help="convert a dataset to llava JSON, canonical parquet, chat messages or MiniGPT-4 files",
        description="Load SOURCE (any supported format) with the usual checks and write it to OUT in another "
        "format. Rows the target can't represent are listed, never mangled. The source is read lazily, so "
        "large JSONL or Parquet inputs convert in bounded memory.",
    )
    parser.add_argument("source", help="data file, directory, save_to_disk folder or Hub dataset id")
    parser.add_argument(
        "out",
        help="output: .json/.jsonl (llava, messages), .parquet (parquet, messages) or a folder (minigpt4)",
    )
    parser.add_argument("--to", required=True, choices=FORMATS, help="target format")
    parser.add_argument("--format", default="auto", help="input format (default: detect)")
    parser.add_argument(
        "--image-root",
        default=None,
        help="directory relative image paths refer to; several separated by ':' (first match wins)",
    )
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read image paths that resolve (after symlinks) outside the image root(s) too; by default they are "
        "row errors",
    )
    parser.add_argument("--split", default=None, help="split of a DatasetDict folder or Hub dataset (default train)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it exists (a folder only if vlselect wrote it)"
    )
    add_json_argument(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from selector.data import export_instructions, load_instructions
    from selector.runs import check_no_overlap

    # the source is read while the output is written: never write over it, into it, or around it
    check_no_overlap(args.out, args.source, what="OUT")
    dataset = load_instructions(
        args.source,
        format=args.format,
        image_root=args.image_root,
        split=args.split,
        streaming=True,
        allow_outside_root=args.allow_outside_root,
    )
    report = export_instructions(dataset, args.out, format=args.to, overwrite=args.overwrite)
    result = {
        "out": report.path,
        "format": report.format,
        "n_written": report.n_written,
        "n_images": report.n_images,
        "n_skipped": len(report.skipped),
        "skipped_by_kind": report.skipped_by_kind(),
        "skipped": [list(pair) for pair in report.skipped],
    }
    if args.json:
        print_json(result)
        return 0
    print(
        f"wrote {report.n_written} rows as {report.format} to {report.path}"
        + (f" ({report.n_images} image files)" if report.n_images else "")
    )
    if report.skipped:
        kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(result["skipped_by_kind"].items()))
        print(f"left out {len(report.skipped)} rows the format can't represent ({kinds}):")
        for row_id, reason in report.skipped:
            print(f"  {row_id}: {reason}")
    return 0
