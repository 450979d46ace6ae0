"""``vlselect prune-images SOURCE --budget B --strategy S --out DIR``: prune an image-classification dataset."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    from selector.commands.select import add_option_argument
    from selector.images import DEFAULT_EMBEDDING_MODEL

    parser = subparsers.add_parser(
        "prune-images",
        help="keep a budget of an image-classification dataset (image folder, HF dataset), same layout out",
        description="Load SOURCE (an ImageFolder-style folder ROOT/<class>/<image>, a save_to_disk folder, Parquet, "
        "or a Hub dataset id with image + label columns), embed every image (resumable), select --budget images "
        "with --strategy per class, and write the kept images to --out in the same layout, with manifest.json, "
        "selection_rows.parquet (every image's reason) and a README.md card. Broken images are kept out and "
        "reported.",
    )
    parser.add_argument("source", help="image folder, save_to_disk folder, .parquet file/folder, or Hub dataset id")
    parser.add_argument("--budget", required=True, help="images to keep: a count, a fraction (0.3) or 30%%")
    parser.add_argument("--strategy", default="ccs", help="selection strategy (default ccs; e.g. ssl_prototypes)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (same layout as the input)")
    parser.add_argument("--keep-rejected", action="store_true", help="also record the rejected images and reasons")
    parser.add_argument(
        "--embedding-model",
        default=DEFAULT_EMBEDDING_MODEL,
        help=f"embedding model: Hub id or path (default {DEFAULT_EMBEDDING_MODEL}), efficientnet-lite0 "
        "(packaged, offline), or 'pixels' (no model)",
    )
    parser.add_argument(
        "--per-class",
        choices=["uniform", "proportional", "none"],
        default="uniform",
        help="per-class budgets: uniform (equal, capped by class size; default), proportional, or none",
    )
    parser.add_argument("--split", default="train", help="split of a DatasetDict folder or Hub dataset")
    parser.add_argument("--image-column", default="image", help="image column of a HF dataset (default image)")
    parser.add_argument("--label-column", default="label", help="label column of a HF dataset (default label)")
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read image files that resolve (after symlinks) outside SOURCE's folder too; by default they are "
        "row errors",
    )
    parser.add_argument("--work-dir", default=None, help="resumable embedding shards (default OUT.embeddings)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    add_option_argument(parser, "-o n_clusters=50 -o beta=0.1 -o keep=auto")
    parser.add_argument("--license", default="other", help="licence id for the card (default other)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from selector.commands.select import parse_options
    from selector.images import prune_images
    from selector.rows import parse_budget

    result = prune_images(
        args.source,
        parse_budget(args.budget),
        args.out,
        strategy=args.strategy,
        embedding_model=args.embedding_model,
        split=args.split,
        image_column=args.image_column,
        label_column=args.label_column,
        stratify_quota=None if args.per_class == "none" else args.per_class,
        keep_rejected=args.keep_rejected,
        work_dir=args.work_dir,
        batch_size=args.batch_size,
        device=args.device,
        random_state=args.seed,
        overwrite=args.overwrite,
        license=args.license,
        progress=not args.quiet,
        allow_outside_root=args.allow_outside_root,
        **parse_options(args.option),
    )
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(result.errors.items()))
    print(
        f"kept {result.n_selected} of {result.n_rows} images ({result.layout}) -> {result.out_dir}"
        + (f"; {sum(result.errors.values())} broken images kept out ({errors})" if result.errors else "")
    )
    return 0
