"""``vlselect publish SELECTED_DIR REPO_ID``: push a selected subset and its dataset card to the Hub."""

from __future__ import annotations

import argparse
import os
import time

from selector.commands._common import add_json_argument, print_json
from selector.commands.card import add_card_options, card_options


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "publish",
        help="push a selected subset with its dataset card to the Hugging Face Hub",
        description="Push the rows of SELECTED_DIR (a `vlselect select` output) to the Hub dataset REPO_ID "
        "(private unless --public; emb_* columns and --drop-columns left out) and merge the rendered dataset card "
        "into the README that push_to_hub wrote, keeping its dataset_info and configs (the dataset viewer reads "
        "them); SELECTED_DIR/report.html (`vlselect report`), when present, is uploaded beside the card, which "
        "links to it. Uses your Hub login (HF_TOKEN or `hf auth login`). With --dry-run, only write the card "
        "locally. Offline or on a Hub error it prints one line and exits 2.",
    )
    parser.add_argument("selected_dir", metavar="SELECTED_DIR", help="folder written by `vlselect select`")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub dataset id, e.g. user/llava-selected-200")
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument(
        "--private", dest="private", action="store_true", default=True, help="create a private dataset (default)"
    )
    visibility.add_argument("--public", dest="private", action="store_false", help="create a public dataset")
    parser.add_argument("--dry-run", action="store_true", help="write SELECTED_DIR/README.md, push nothing")
    add_card_options(parser)
    add_json_argument(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from selector.card import REPORT, publish, write_card

    started = time.time()
    result = {"repo_id": args.repo_id, "private": args.private, "dry_run": bool(args.dry_run)}
    if args.dry_run:
        path = write_card(args.selected_dir, repo_id=args.repo_id, **card_options(args))
        if args.json:
            print_json({**result, "card": os.path.abspath(path), "seconds": time.time() - started})
            return 0
        print(f"dry run: wrote {path}; nothing pushed to {args.repo_id}")
        return 0
    url = publish(args.selected_dir, args.repo_id, private=args.private, **card_options(args))
    report_url = f"{url}/blob/main/{REPORT}" if os.path.exists(os.path.join(args.selected_dir, REPORT)) else None
    if args.json:
        print_json({**result, "url": url, "report_url": report_url, "seconds": time.time() - started})
        return 0
    print(f"published {url}")
    if report_url:
        print(f"report:    {report_url}")
    return 0
