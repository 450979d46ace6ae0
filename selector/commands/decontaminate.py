"""``vlselect decontaminate SOURCE --against EVAL [--against ...] --out DIR``: mark rows that repeat eval samples.

Writes a ``save_to_disk`` folder to ``--out`` with every row of SOURCE plus ``check_contaminated_by`` (see
:mod:`selector.decontaminate`), ``decontamination.json`` (the report) and ``manifest.json``: the source's own
manifest when SOURCE is a run folder (e.g. a ``vlselect score`` output, so selection and card still find its
metrics), else a new one, with the report under ``decontamination``. ``--drop`` writes only the rows that matched
nothing (rows with errors are kept: they are never matched). ``--dry-run`` prints the report and writes nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

from selector.commands._common import add_json_argument, print_json


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "decontaminate",
        help="mark training rows that repeat an evaluation sample's question or image",
        description="Match every row of SOURCE against the evaluation sets (--against, any format `vlselect "
        "inspect` reads, local or Hub id): n-gram overlap of the text with the eval questions, exact and "
        "perceptual-hash matches of any image, optionally embedding similarity. Adds check_contaminated_by "
        "(e.g. 'gqa:123 text-13gram'); keep clean rows with --filter check_contaminated_by:is_null=true.",
    )
    parser.add_argument(
        "source", help="training data: file, folder, save_to_disk folder (e.g. a scored run) or Hub id"
    )
    parser.add_argument(
        "--against",
        action="append",
        required=True,
        metavar="[NAME=]SOURCE",
        help="evaluation set, repeatable; NAME prefixes the matched eval id (default: the file name)",
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (required unless --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="print the report, write nothing")
    parser.add_argument("--drop", action="store_true", help="write only the rows that matched nothing")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier result")
    add_json_argument(parser, "the report")
    data = parser.add_argument_group("loading")
    data.add_argument("--format", default="auto", help="format of SOURCE (default: detect)")
    data.add_argument("--image-root", default=None, help="directory SOURCE's relative image paths refer to")
    data.add_argument("--split", default=None, help="split of a DatasetDict folder or Hub dataset (default train)")
    data.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read SOURCE's image paths that resolve outside the image root too; by default they are row errors",
    )
    for flag, what in (("format", "format"), ("image-root", "image root"), ("split", "split")):
        data.add_argument(
            f"--eval-{flag}",
            action="append",
            default=[],
            metavar=f"[NAME=]{flag.upper().replace('-', '_')}",
            help=f"{what} of the eval set NAME (or of every eval set without its own), repeatable",
        )
    text = parser.add_argument_group("text match")
    text.add_argument("--n", type=int, default=13, help="n-gram length for long questions (default 13)")
    text.add_argument(
        "--min-n", type=int, default=8, help="shortest question, in tokens, matched whole by text (default 8)"
    )
    text.add_argument(
        "--max-eval-df",
        type=int,
        default=10,
        metavar="N",
        help="ignore n-grams found in more than N samples of one eval set: templates (default 10)",
    )
    text.add_argument(
        "--text-roles", default="user,assistant", help="training turns searched (default user,assistant)"
    )
    text.add_argument("--eval-roles", default="user", help="eval turns the n-grams come from (default user)")
    text.add_argument("--no-text", action="store_true", help="skip the text match")
    image = parser.add_argument_group("image match")
    image.add_argument("--no-images", action="store_true", help="skip the image matches")
    image.add_argument(
        "--max-hash-distance", type=int, default=4, metavar="BITS", help="perceptual-hash threshold (default 4)"
    )
    image.add_argument("--hash-method", default="auto", choices=("auto", "phash", "dhash"), help="default auto")
    image.add_argument(
        "--embedding-column",
        "--embedding-columns",
        dest="embedding_column",
        default=None,
        metavar="EMB_COLUMN",
        help="also match by cosine of this emb_* column (SOURCE and every eval set must have it)",
    )
    image.add_argument("--min-cosine", type=float, default=0.95, help="embedding match threshold (default 0.95)")
    parser.add_argument("--examples", type=int, default=5, metavar="N", help="examples per eval set (default 5)")
    parser.set_defaults(func=run)
    return parser


def _per_set(items: list[str], flag: str) -> tuple[dict[str, str], str | None]:
    """``["gqa=/data/gqa", "/data/all"]`` -> ``({"gqa": "/data/gqa"}, "/data/all")``."""
    from selector.decontaminate import _split_name
    from selector.errors import ConfigError

    named: dict[str, str] = {}
    default = None
    for item in items:
        name, value = _split_name(item)
        if name is None:
            if default is not None:
                raise ConfigError(f"--eval-{flag} given twice without a NAME=")
            default = value
        elif name in named:
            raise ConfigError(f"--eval-{flag} {name}= given twice")
        else:
            named[name] = value
    return named, default


def eval_sets(args: argparse.Namespace) -> list:
    """The :class:`~selector.decontaminate.EvalSet` list the flags describe."""
    from selector.decontaminate import EvalSet, parse_against
    from selector.errors import ConfigError

    sets = parse_against(args.against)
    options = {
        "format": _per_set(args.eval_format, "format"),
        "image_root": _per_set(args.eval_image_root, "image-root"),
        "split": _per_set(args.eval_split, "split"),
    }
    names = {s.name for s in sets}
    for key, (named, _) in options.items():
        unknown = sorted(set(named) - names)
        if unknown:
            flag = key.replace("_", "-")
            raise ConfigError(f"--eval-{flag} names unknown eval sets: {', '.join(unknown)} (known: {sorted(names)})")
    return [
        EvalSet(
            s.name,
            s.source,
            format=options["format"][0].get(s.name, options["format"][1] or "auto"),
            image_root=options["image_root"][0].get(s.name, options["image_root"][1]),
            split=options["split"][0].get(s.name, options["split"][1]),
        )
        for s in sets
    ]


def _roles(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def run(args: argparse.Namespace) -> int:
    from selector.decontaminate import COLUMN, find_contamination, load_source
    from selector.errors import ConfigError
    from selector.runs import MANIFEST, check_out_folder, read_manifest, write_dataset_folder

    if args.out is None and not args.dry_run:
        raise ConfigError("pass --out DIR (or --dry-run to only print the report)")
    out = None
    if args.out is not None and not args.dry_run:
        out = check_out_folder(args.out, source=args.source, overwrite=args.overwrite)
    against = eval_sets(args)
    dataset = load_source(
        args.source,
        format=args.format,
        image_root=args.image_root,
        split=args.split,
        allow_outside_root=args.allow_outside_root,
    )
    found = find_contamination(
        dataset,
        against,
        n=args.n,
        min_n=args.min_n,
        max_eval_df=args.max_eval_df,
        text_roles=_roles(args.text_roles),
        eval_roles=_roles(args.eval_roles),
        text=not args.no_text,
        images=not args.no_images,
        max_hash_distance=args.max_hash_distance,
        hash_method=args.hash_method,
        embedding_column=args.embedding_column,
        min_cosine=args.min_cosine,
        n_examples=args.examples,
    )
    report = {"source": args.source, **found.report, "dry_run": bool(args.dry_run), "out": out, "drop": args.drop}
    if out is not None:
        from selector import __version__

        marked = found.apply(dataset)
        if args.drop:
            keep = [i for i, value in enumerate(found.column) if value is None]
            marked = marked.select(keep)
        report["n_rows_written"] = len(marked)
        source_manifest = read_manifest(args.source) if os.path.isdir(args.source) else {}
        manifest = dict(source_manifest) or {
            "command": "decontaminate",
            "vlselect_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "input": {"source": args.source, "fingerprint": getattr(dataset, "_fingerprint", None)},
            "n_rows": len(marked),
        }
        manifest["decontamination"] = report
        write_dataset_folder(marked, out, {MANIFEST: manifest, "decontamination.json": report})
    if args.json:
        print_json(report)
    else:
        _print_report(report, COLUMN)
    return 0


def _print_report(report: dict, column: str) -> None:
    n_usable = report["n_rows"] - report["n_error_rows"]
    print(
        f"matched {report['n_matched']} of {report['n_rows']} rows ({n_usable} checked, "
        f"{report['n_error_rows']} with errors never matched)"
    )
    if report["by_kind"]:
        print("by kind:  " + ", ".join(f"{kind} {count}" for kind, count in report["by_kind"].items()))
    for name, entry in report["against"].items():
        kinds = ", ".join(f"{k} {v}" for k, v in entry["by_kind"].items() if v)
        print(f"{name}: {entry['n_matched']} rows matched" + (f" ({kinds})" if kinds else ""))
        print(
            f"  eval set {entry['source']}: {entry['n_rows']} rows, "
            f"{entry.get('n_samples_indexed', '-')} indexed by text ({entry.get('n_grams', 0)} n-grams, "
            f"{entry.get('n_grams_too_common', 0)} too common), {entry.get('n_images', '-')} images"
        )
        for example in entry["examples"]:
            print(f"  e.g. {example['id']} ~ {example['match']}")
            if example.get("instruction") or example.get("eval_instruction"):
                print(f"       train: {json.dumps(example.get('instruction'), ensure_ascii=False)}")
                print(f"       eval:  {json.dumps(example.get('eval_instruction'), ensure_ascii=False)}")
    if report.get("out"):
        print(f"wrote {report['out']} ({report['n_rows_written']} rows; column {column}; decontamination.json)")
    elif report.get("dry_run"):
        print("dry run: nothing written")
