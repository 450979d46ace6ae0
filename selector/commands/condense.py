"""``vlselect condense SOURCE --method dm --ipc 10 --out DIR``: learn a synthetic image-classification set."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    from selector.commands._common import add_json_argument, add_set_argument

    parser = subparsers.add_parser(
        "condense",
        help="learn a few synthetic training images per class (dataset condensation: DC, DSA, DM, CAFE, IDM)",
        description="Load SOURCE (an ImageFolder-style folder ROOT/<class>/<image>, a save_to_disk folder, Parquet, "
        "or a Hub dataset id with image + label columns), learn --ipc synthetic images per class with --method "
        "(dc: gradient matching; dsa: DC with differentiable Siamese augmentation; dm: distribution matching; "
        "cafe: layer-wise feature alignment + discrimination + dynamic bi-level optimisation; idm: DM with "
        "partitioned images, a queue of partly trained models and class-aware regularisation), "
        "and write them to --out as PNGs + labels.csv, a datasets folder, float tensors (safetensors), "
        "manifest.json and a README.md card with the ConvNet test accuracy measured on the saved PNGs. "
        "Defaults are the papers' settings; checkpoints in --work-dir let an interrupted run resume.",
    )
    parser.add_argument("source", help="image folder, save_to_disk folder, .parquet file/folder, or Hub dataset id")
    parser.add_argument("--method", default="dm", help="dc, dsa, dm, cafe or idm (default dm)")
    parser.add_argument("--ipc", type=int, default=10, help="synthetic images per class (default 10)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="outer iterations (default: the paper's, 1000 DC/DSA, 2000 CAFE, 20000 DM/IDM)",
    )
    parser.add_argument("--lr-img", type=float, default=None, help="learning rate of the images (0.1 DC/DSA, 1.0 DM)")
    parser.add_argument("--lr-net", type=float, default=None, help="DC/DSA inner-loop network learning rate (0.01)")
    parser.add_argument("--batch-real", type=int, default=None, help="real images per class and step (256)")
    parser.add_argument("--batch-train", type=int, default=None, help="DC/DSA inner-loop batch size (256)")
    parser.add_argument(
        "--outer-loop", type=int, default=None, help="DC/DSA outer loop (default from ipc: 1, 10, ...)"
    )
    parser.add_argument(
        "--inner-loop", type=int, default=None, help="DC/DSA inner loop (default from ipc: 1, 50, ...)"
    )
    parser.add_argument("--init", choices=["real", "noise"], default=None, help="start from real images or noise")
    add_set_argument(
        parser,
        "any other option of the method, VALUE read as YAML",
        "cafe: bilevel=fixed, lambda_1=0.04; idm: queue_size=100, ce_weight=0.5, partition=false",
    )
    parser.add_argument("--width", type=int, default=128, help="ConvNet width (default 128)")
    parser.add_argument("--depth", type=int, default=3, help="ConvNet depth (default 3)")
    parser.add_argument("--image-size", type=int, default=None, help="resize to this side (default: native if <=64)")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=None, help="1 grey, 3 RGB (default auto)")
    parser.add_argument("--eval-source", default=None, help="test set with the same classes (default: hold out)")
    parser.add_argument("--eval-split", default=None, help="split of SOURCE to test on (e.g. test)")
    parser.add_argument(
        "--holdout", type=float, default=0.1, help="fraction per class held out for testing (default 0.1)"
    )
    parser.add_argument("--eval-runs", type=int, default=5, help="networks trained on the saved PNGs (default 5)")
    parser.add_argument("--eval-epochs", type=int, default=None, help="epochs per network (default 300 DC, 1000)")
    parser.add_argument("--split", default="train", help="split of a DatasetDict folder or Hub dataset")
    parser.add_argument("--image-column", default="image", help="image column of a HF dataset (default image)")
    parser.add_argument("--label-column", default="label", help="label column of a HF dataset (default label)")
    parser.add_argument("--work-dir", default=None, help="checkpoints for resume (default OUT.condense-work)")
    parser.add_argument("--checkpoint-every", type=int, default=50, help="iterations between checkpoints")
    parser.add_argument("--license", default="other", help="licence id for the card (default other)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier result in --out")
    add_json_argument(parser, "the result (method, ipc, images, accuracy, output folder)")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from selector.condense import condense_dataset
    from selector.condense.methods import METHODS
    from selector.errors import ConfigError

    method = args.method.lower()
    if method not in METHODS:
        raise ConfigError(f"unknown --method {args.method!r}; choose one of {', '.join(METHODS)}")
    given = {
        "lr_img": args.lr_img,
        "lr_net": args.lr_net,
        "batch_real": args.batch_real,
        "batch_train": args.batch_train,
        "outer_loop": args.outer_loop,
        "inner_loop": args.inner_loop,
        "init": args.init,
    }
    allowed = METHODS[method].defaults
    wrong = [k for k, v in given.items() if v is not None and k not in allowed]
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise ConfigError(f"{flags} do(es) not apply to --method {method}")
    import yaml

    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option takes KEY=VALUE, got {item!r}")
        # unknown keys are refused by the method itself, with the list of its options
        given[key.strip()] = yaml.safe_load(value)
    result = condense_dataset(
        args.source,
        args.out,
        method=method,
        ipc=args.ipc,
        iterations=args.iterations,
        split=args.split,
        image_column=args.image_column,
        label_column=args.label_column,
        image_size=args.image_size,
        channels=args.channels,
        eval_source=args.eval_source,
        eval_split=args.eval_split,
        holdout=args.holdout,
        eval_runs=args.eval_runs,
        eval_epochs=args.eval_epochs,
        net={"width": args.width, "depth": args.depth},
        seed=args.seed,
        work_dir=args.work_dir,
        checkpoint_every=args.checkpoint_every,
        overwrite=args.overwrite,
        license=args.license,
        progress=not getattr(args, "quiet", False),
        **{k: v for k, v in given.items() if v is not None},
    )
    syn = result.synthetic
    if getattr(args, "json", False):
        from selector.commands._common import print_json

        print_json(
            {
                "method": syn.method,
                "ipc": syn.ipc,
                "n_images": int(syn.labels.numel()),
                "iterations": syn.iterations_done,
                "out_dir": result.out_dir,
                "evaluation": result.evaluation.to_dict() if result.evaluation is not None else None,
                "errors_by_kind": result.errors,
            }
        )
        return 0
    line = f"{syn.method}: {syn.labels.numel()} synthetic images ({syn.ipc} per class) -> {result.out_dir}"
    if result.evaluation is not None:
        ev = result.evaluation
        line += (
            f"; test accuracy on the saved PNGs {100 * ev.mean:.2f} ± {100 * ev.std:.2f} % ({len(ev.accuracies)} runs)"
        )
    if result.errors:
        line += f"; {sum(result.errors.values())} unusable source images left out"
    print(line)
    return 0
