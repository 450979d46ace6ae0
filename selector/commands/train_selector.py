"""``vlselect train-selector SCORED_DIR --labels FILE --out DIR``: train a learned selector on labelled rows.

SCORED_DIR is a folder written by ``vlselect score``; FILE is JSONL ``{"id", "group", "label"}`` (the schema
``vlselect labels`` writes): with ``group`` on every row the labels are set-level (one quality number per
subset), without it they are per row. The features (standardisation, PCA) are fitted on every usable row
of SCORED_DIR, labelled or not. DIR receives ``config.json``, ``model.safetensors`` and a ``README.md`` model
card; ``vlselect select --strategy instructiongpt4 --selector DIR`` ranks with it.
"""

from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train-selector",
        help="train a learned selector (InstructionGPT-4 network or ridge) on set-level or per-row labels",
        description="Fit a LearnedSelector on SCORED_DIR (written by `vlselect score`) with the labels in FILE "
        '(JSONL {"id", "group", "label"}; higher = better) and save it to DIR (config.json, model.safetensors, '
        "README.md). Rows with `error` set are left out; unlabelled rows still shape the features.",
    )
    parser.add_argument("scored_dir", metavar="SCORED_DIR", help="save_to_disk folder written by `vlselect score`")
    parser.add_argument("--labels", required=True, metavar="FILE", help='JSONL rows {"id", "group", "label"}')
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to save the selector to")
    parser.add_argument("--model", choices=("attention", "ridge"), default="attention", help="default: attention")
    parser.add_argument(
        "--score-columns", nargs="+", default=None, metavar="COL", help="score_* columns (default: all numeric ones)"
    )
    parser.add_argument(
        "--embedding-columns",
        "--embedding-column",
        dest="embedding_columns",
        nargs="+",
        default=None,
        metavar="COL",
        help="emb_* columns (default: all)",
    )
    parser.add_argument("--n-components", type=int, default=6, help="PCA components per embedding (default 6)")
    parser.add_argument("--max-epochs", type=int, default=300, help="network: most epochs (default 300)")
    parser.add_argument("--patience", type=int, default=40, help="network: epochs without improvement (default 40)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="network: groups (or rows) per step (default 16 groups, 256 rows)"
    )
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="network: AdamW rate (default 3e-3)")
    parser.add_argument(
        "--validation-fraction", type=float, default=0.2, help="share of groups held out (default 0.2)"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the network (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a selector already saved in --out")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also upload to this Hub model repo")
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument(
        "--private",
        dest="private",
        action="store_true",
        default=True,
        help="with --push-to-hub: create a private repository (default)",
    )
    visibility.add_argument(
        "--public", dest="private", action="store_false", help="with --push-to-hub: create a public repository"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import os

    from selector.errors import ConfigError
    from selector.learned import CONFIG_NAME, LearnedSelector, align_labels, read_labels
    from selector.runs import check_no_overlap, check_out_folder, load_scored

    out = os.path.abspath(args.out)
    if os.path.exists(os.path.join(out, CONFIG_NAME)) and not args.overwrite:
        raise ConfigError(f"--out {out} already holds a selector; pass --overwrite to replace it")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} exists and is not a folder")
    if not _is_saved_selector(out):  # a selector saved before the marker existed is vlselect's too
        check_out_folder(out, source=[args.scored_dir, args.labels], overwrite=args.overwrite)
    else:
        check_no_overlap(out, [args.scored_dir, args.labels])
    labels = read_labels(args.labels)
    dataset = load_scored(args.scored_dir)
    if "id" not in dataset.column_names:
        raise ConfigError(f"{args.scored_dir} has no `id` column to match the labels against")
    y, groups = align_labels(dataset["id"], labels)
    selector = LearnedSelector(
        model=args.model,
        score_columns=args.score_columns,
        embedding_columns=args.embedding_columns,
        n_components=args.n_components,
        max_epochs=args.max_epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        validation_fraction=args.validation_fraction,
        device=args.device,
        random_state=args.seed,
    ).fit(dataset, y, groups=groups)

    _save(selector, out)
    unit = "groups" if selector.mode_ == "set" else "rows"
    val = selector.validation_
    spearman = "n/a" if val["spearman"] is None else f"{val['spearman']:.3f}"
    held = f"held-out Spearman {spearman} over {val['n']} {unit}" if val["n"] else "no held-out split"
    print(
        f"trained {args.model} selector on {selector.n_train_rows_} rows, {selector.n_units_} {unit} "
        f"({selector.mode_}-level labels); {held}"
    )
    print(f"features: {', '.join(selector.feature_spec_.columns)}")
    print(f"wrote {out}")
    if args.push_to_hub:
        from selector.card import PublishError, network_errors

        try:
            url = selector.push_to_hub(args.push_to_hub, private=args.private)
        except network_errors() as exc:
            # the selector is saved already; say so, in one line, instead of a traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PublishError(f"saved {out} but could not push it to {args.push_to_hub}: {first}") from None
        print(f"pushed to {url}")
    return 0


def _is_saved_selector(folder: str) -> bool:
    """True when ``folder`` holds a learned selector's ``config.json`` (``format: vlselect-learned-selector``) and
    nothing but the files :meth:`~selector.learned.LearnedSelector.save_pretrained` writes (as saved before the
    marker existed): replacing it loses nothing of the user's."""
    from selector.errors import DataError
    from selector.fileio import read_json
    from selector.learned import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
    from selector.runs import OWN_MARKER

    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path) or not set(os.listdir(folder)) <= {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, OWN_MARKER}:
        return False
    try:
        config = read_json(path)
    except (DataError, OSError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(config, dict) and config.get("format") == "vlselect-learned-selector"


def _save(selector, out: str) -> None:
    """Save beside ``out`` and swap it into place: an earlier selector there stays until the new one is complete."""
    import shutil
    import tempfile

    from selector.fileio import folder_lock, output_errors
    from selector.runs import swap_into_place

    parent = os.path.dirname(out)
    with folder_lock(out), output_errors(out):
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.vlselect-staging-{os.getpid()}-", dir=parent)
        try:
            selector.save_pretrained(staging, repo_id=out)  # the card's examples name the folder, not the staging
            swap_into_place(staging, out)
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging)
