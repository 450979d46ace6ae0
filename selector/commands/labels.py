"""``vlselect labels SCORED_DIR --n-subsets 30 --recipe CONFIG --val VAL... --out DIR``: genuine quality labels.

Splits the scored pool into equal-size k-means subsets, fine-tunes a proxy model on each with the installed
training engine (:mod:`selector.training`; ``CONFIG`` is a YAML path or a shipped config's name),
evaluates it on the validation sets and writes ``DIR/labels.jsonl`` (``{"id", "group", "label"}``, higher =
better) for ``vlselect train-selector``. Each finished subset is cached in ``DIR/subsets/``; re-running the same
command resumes at the first unfinished subset. See :mod:`selector.labels`.
"""

from __future__ import annotations

import argparse
import sys

from selector.commands._common import add_set_argument


def _override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def add_parser(subparsers) -> argparse.ArgumentParser:
    from selector.training.evaluation import EVAL_SCORES  # light: no torch until a fine-tune runs

    parser = subparsers.add_parser(
        "labels",
        help="label k-means subsets of a scored pool by proxy fine-tunes (labels for train-selector)",
        description="Split SCORED_DIR (written by `vlselect score`) into equal-size k-means subsets, fine-tune a "
        "proxy model on each with the recipe, evaluate it on the validation sets and write DIR/labels.jsonl "
        '({"id", "group", "label"}; higher = better). Finished subsets are cached: re-run to resume.',
    )
    parser.add_argument("scored_dir", metavar="SCORED_DIR", help="save_to_disk folder written by `vlselect score`")
    parser.add_argument("--n-subsets", type=int, default=30, help="number of equal-size subsets (default 30)")
    parser.add_argument(
        "--recipe",
        required=True,
        metavar="CONFIG",
        help="training config: a YAML path (e.g. recipes/configs/X.yaml) or a shipped config's name "
        "(proxy_smolvlm_256m, tiny_cpu, ...)",
    )
    # deprecated: the engine is installed (selector.training); kept so old commands still run, with a warning
    parser.add_argument("--recipe-script", default=None, help=argparse.SUPPRESS)
    add_set_argument(
        parser,
        "override a recipe option",
        "--set model_name_or_path=HuggingFaceTB/SmolVLM-256M-Instruct",
        dest="overrides",
        type=_override,
    )
    parser.add_argument(
        "--val",
        required=True,
        nargs="+",
        metavar="VAL_SOURCE",
        help="validation sets: PATH or NAME=PATH (data file/folder or save_to_disk folder)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (also the cache for resuming)")
    parser.add_argument(
        "--eval-score",
        choices=tuple(EVAL_SCORES),
        default=None,
        help="evaluation score per validation set (default eval_loss; lower loss = better, the label is -loss)",
    )
    # deprecated spelling of --eval-score ("metric" names the scoring plugins); hidden, warns when used
    parser.add_argument("--metric", dest="metric_deprecated", choices=tuple(EVAL_SCORES), help=argparse.SUPPRESS)
    parser.add_argument(
        "--combine",
        choices=("mean", "zscore"),
        default="mean",
        help="validation sets -> label: weighted mean of the scores, or of their z-scores across subsets "
        "(default mean)",
    )
    parser.add_argument(
        "--weights", type=float, nargs="+", default=None, metavar="W", help="one weight per --val (default equal)"
    )
    parser.add_argument(
        "--embedding-columns",
        "--embedding-column",
        dest="embedding_columns",
        nargs="+",
        default=None,
        metavar="COL",
        help="emb_* columns to cluster on (default all)",
    )
    parser.add_argument("--max-eval-samples", type=int, default=None, help="evaluate on at most N rows per set")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length for accuracy scores")
    parser.add_argument("--keep-models", action="store_true", help="keep every proxy's weights (default: deleted)")
    parser.add_argument("--backend", choices=("auto", "faiss", "sklearn"), default="auto", help="k-means backend")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    parser.add_argument(
        "--overwrite", action="store_true", help="redo cached subsets made with other settings instead of failing"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import os

    from selector.errors import ConfigError
    from selector.labels import generate_labels

    if args.n_subsets < 1:
        raise ConfigError(f"--n-subsets must be >= 1, got {args.n_subsets}")
    eval_score = args.eval_score
    if args.metric_deprecated is not None:
        if eval_score is not None and eval_score != args.metric_deprecated:
            raise ConfigError(
                f"--metric {args.metric_deprecated} contradicts --eval-score {eval_score}; drop --metric"
            )
        print("warning: --metric is deprecated; use --eval-score", file=sys.stderr)
        eval_score = args.metric_deprecated
    eval_score = eval_score or "eval_loss"
    if args.recipe_script is not None:
        print(
            "warning: --recipe-script is deprecated and ignored; the installed engine selector.training runs the "
            "fine-tunes",
            file=sys.stderr,
        )
    overrides = dict(args.overrides)
    result = generate_labels(
        args.scored_dir,
        args.recipe,
        args.val,
        args.out,
        n_subsets=args.n_subsets,
        eval_score=eval_score,
        combine=args.combine,
        weights=args.weights,
        embedding_columns=args.embedding_columns,
        recipe_overrides=overrides,
        max_eval_samples=args.max_eval_samples,
        max_new_tokens=args.max_new_tokens,
        keep_models=args.keep_models,
        backend=args.backend,
        random_state=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    part = result.partition
    dropped = part.dropped_counts()
    n_dropped = sum(dropped.values())
    print(
        f"{part.n_subsets} subsets of {part.subset_size} rows; dropped {n_dropped} row(s)"
        + (f" ({', '.join(f'{k}: {v}' for k, v in dropped.items() if v)})" if n_dropped else "")
    )
    print(f"fine-tuned {result.n_finetuned} proxy model(s), {result.n_cached} subset(s) from the cache")
    finite = [v for v in result.labels.values() if v == v]
    if finite:
        print(f"labels ({eval_score}, {args.combine}): min {min(finite):.4g}, max {max(finite):.4g}")
    print(f"wrote {result.labels_path} ({result.n_labelled_rows} rows) and {result.summary_path}")
    labels_arg = os.path.join(args.out, os.path.basename(result.labels_path))
    print(f"next: vlselect train-selector {args.scored_dir} --labels {labels_arg} --out SEL_DIR")
    return 0
