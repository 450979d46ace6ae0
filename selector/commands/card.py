"""``vlselect card SELECTED_DIR``: render the dataset card of a selected subset."""

from __future__ import annotations

import argparse


def add_card_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--license", default="other", help="Hub licence id for the card (inherit the source's; default other)"
    )
    parser.add_argument(
        "--license-name", default=None, help="with --license other: the licence's name (default same-as-source)"
    )
    parser.add_argument("--license-link", default=None, help="with --license other: URL or file of the licence")
    parser.add_argument("--source-dataset", default=None, help="Hub id or description of the source pool")


def card_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`selector.card.build_card` that :func:`add_card_options` collects."""
    return {
        "license": args.license,
        "license_name": args.license_name,
        "license_link": args.license_link,
        "source_dataset": args.source_dataset,
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
    parser.add_argument("--name", default=None, help="card title (default: the folder name)")
    add_card_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from selector.card import write_card

    path = write_card(args.selected_dir, args.out, pretty_name=args.name, **card_options(args))
    print(f"wrote {path}")
    return 0
