"""``vlselect report RUN_DIR [--out report.html]``: one self-contained HTML page showing what a run kept and why."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run: scores, embedding map, clusters, image gallery",
        description="Write one HTML file (no network: plotly.js, styles and thumbnails inlined) showing RUN_DIR: "
        "summary counts, score distributions of kept vs rejected rows, a 2-D map of the embedding by cluster, "
        "per-cluster quotas, and a gallery of selected and nearest rejected rows with their reasons. RUN_DIR is a "
        "`vlselect run`/`demo` folder, a `vlselect select` output or a `vlselect score` output. Needs "
        "`pip install vlselect[report]`.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (scored/ + selected/) or a select/score output")
    parser.add_argument(
        "--out", default=None, help="HTML file (default: RUN_DIR/selected/report.html, beside the card)"
    )
    parser.add_argument(
        "--projection",
        choices=("auto", "umap", "pca"),
        default="auto",
        help="2-D map of the embedding: UMAP when umap-learn is installed (auto), else PCA",
    )
    parser.add_argument(
        "--embedding-column",
        "--embedding-columns",
        dest="embedding_column",
        default=None,
        help="emb_* column to map (default: the selection's)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import os

    from selector.report import write_report

    path = write_report(args.run_dir, args.out, projection=args.projection, embedding_column=args.embedding_column)
    print(f"report: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return 0
