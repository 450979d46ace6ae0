"""``vlselect card SELECTED_DIR``: render the dataset card of a selected subset."""

from __future__ import annotations

import argparse
import os

from selector.commands._common import add_json_argument, print_json


def add_card_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--license", default="other", help="Hub licence id for the card (inherit the source's; default other)"
    )
    parser.add_argument(
        "--license-name", default=None, help="with --license other: the licence's name (default same-as-source)"
    )
    parser.add_argument("--license-link", default=None, help="with --license other: URL or file of the licence")
    parser.add_argument(
        "--source-dataset", default=None, help="Hub id or description of the source pool (default: the scored input)"
    )
    parser.add_argument("--name", default=None, help="card title / pretty_name (default: named from the source)")
    parser.add_argument(
        "--language",
        default=None,
        metavar="CODE[,CODE]",
        help="ISO 639-1 language code(s) (default: the scoring run's text_quality language, else en)",
    )
    parser.add_argument(
        "--drop-columns",
        default=None,
        metavar="GLOB[,GLOB]",
        help="leave these columns out of the published files (fnmatch globs, e.g. 'score_judge*,check_*'); "
        "emb_* embedding columns are left out as well unless --keep-embeddings",
    )
    parser.add_argument("--keep-embeddings", action="store_true", help="publish the emb_* embedding columns too")
    parser.add_argument(
        "--layout",
        choices=("vlselect", "trl"),
        default="vlselect",
        help="row layout: vlselect (string content, <image> marks an image; default) or trl (TRL's typed content "
        "parts, what its vision SFT expects)",
    )


def card_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`selector.card.build_card` that :func:`add_card_options` collects."""
    return {
        "license": args.license,
        "license_name": args.license_name,
        "license_link": args.license_link,
        "source_dataset": args.source_dataset,
        "pretty_name": args.name,
        "language": args.language,
        "drop_columns": args.drop_columns,
        "keep_embeddings": args.keep_embeddings,
        "layout": args.layout,
    }


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "card",
        help="write the dataset card of a `vlselect select` output",
        description="Render a dataset card (Markdown + Hub metadata) from the selection's and the scoring run's "
        "manifests and the subset itself, and write it to --out (default SELECTED_DIR/README.md).",
    )
    parser.add_argument("selected_dir", metavar="SELECTED_DIR", help="folder written by `vlselect select`")
    parser.add_argument("--out", default=None, metavar="FILE", help="where to write the card")
    add_card_options(parser)
    add_json_argument(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from selector.card import write_card

    path = write_card(args.selected_dir, args.out, **card_options(args))
    if args.json:
        print_json({"selected_dir": os.path.abspath(args.selected_dir), "card": os.path.abspath(path)})
        return 0
    print(f"wrote {path}")
    return 0
