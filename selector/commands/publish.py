"""``vlselect publish SELECTED_DIR REPO_ID``: push a selected subset and its dataset card to the Hub."""

from __future__ import annotations

import argparse

from selector.commands.card import add_card_options, card_options


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "publish",
        help="push a selected subset with its dataset card to the Hugging Face Hub",
        description="Push the rows of SELECTED_DIR (a `vlselect select` output) to the Hub dataset REPO_ID and "
        "replace its README with the rendered dataset card; SELECTED_DIR/report.html (`vlselect report`), when "
        "present, is uploaded beside the card, which links to it. Uses your Hub login (HF_TOKEN or "
        "`huggingface-cli login`). With --dry-run, only write the card locally.",
    )
    parser.add_argument("selected_dir", metavar="SELECTED_DIR", help="folder written by `vlselect select`")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub dataset id, e.g. user/llava-selected-200")
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=True, help="(default)")
    visibility.add_argument("--public", dest="private", action="store_false", help="create a public dataset")
    parser.add_argument("--dry-run", action="store_true", help="write SELECTED_DIR/README.md, push nothing")
    add_card_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import os

    from selector.card import REPORT, publish, write_card

    if args.dry_run:
        path = write_card(args.selected_dir, repo_id=args.repo_id, **card_options(args))
        print(f"dry run: wrote {path}; nothing pushed to {args.repo_id}")
        return 0
    url = publish(args.selected_dir, args.repo_id, private=args.private, **card_options(args))
    print(f"published {url}")
    if os.path.exists(os.path.join(args.selected_dir, REPORT)):
        print(f"report:    {url}/blob/main/{REPORT}")
    return 0
