"""Does a selection remove bad rows? Planted-defect benchmark of a pipeline configuration, offline, on CPU.

For each variant (``--variants A,B``; :mod:`quality_data` writes them: 70% clean rows, 30% planted defects of
eight kinds, labelled per row), the harness

1. runs the pipeline of ``--config`` (a ``vlselect run`` YAML; default ``selector/configs/recommended.yaml``
   with the packaged offline models, :func:`selector.pipeline.offline_values`) with ``source`` set to the variant's
   data and ``budget`` set to the number of clean rows, so a perfect selection keeps exactly the clean rows;
2. takes every numeric ``score_*`` column of the scored rows (plus ``score_quality``: the pipeline's, else the
   default :class:`selector.quality.QualityScore` of the columns present, when there are any) and orients it
   by its metric's documented direction (:func:`selector.quality.metric_direction`; "higher" when unknown);
3. compares, at the same budget, with baselines run in the same process: ``random`` (the ``random`` strategy,
   averaged over ``--seeds`` seeds), ``length`` (``topk`` on ``score_length``), ``score_quality`` (``topk``),
   and a :class:`selector.learned.LearnedSelector` per model in ``--learned`` trained on the other variant's
   per-row labels (1 clean, 0 defect) and scored on this one (A -> B and B -> A), ranked by ``topk``.

Reported per variant and defect kind (rows of one kind; the first row of each duplicate group is clean):

- *removed*: share of that kind's rows not selected (an empty answer is an error row and never selected);
- *exact groups* / *near groups*: share of duplicate groups of which at most one row is kept;
- *clean kept*: share of clean rows selected;
- *AUROC*: for each oriented score, the probability that a clean row scores above a row of the kind (ties
  count half; NaN scores count as the worst, as the selection treats them). 0.5 is chance. For exact
  duplicates every per-row score ties with its clean original, so per-row scores sit near 0.5 by design.

Image-answer mismatches: no image-text model (CLIP family) ships offline; offline, the only signal for them is
the ``pairing`` metric's ``score_image_pair`` (a matching model of image features and answer embeddings that the
pool teaches itself, cross-fitted).

Prints Markdown tables (for the README) and writes ``results.json`` and ``results.md`` to ``--out``.

Usage::

    python benchmarks/bench_quality.py                                 # both variants, 600 rows each
    python benchmarks/bench_quality.py --config my_pipeline.yaml --n 300 --learned ridge --out runs/bq
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
import warnings

import numpy as np
import quality_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_KINDS = ("empty", "truncated", "gibberish", "unrelated", "wrong_language", "image_mismatch")
DUP_KINDS = ("exact_duplicate", "near_duplicate")
SHORT = {
    "empty": "empty/trivial",
    "truncated": "truncated",
    "gibberish": "gibberish",
    "unrelated": "unrelated",
    "wrong_language": "wrong lang.",
    "image_mismatch": "img mismatch*",
    "exact_duplicate": "exact-dup rows",
    "near_duplicate": "near-dup rows",
}
QUALITY = "score_quality"


def load_config(path: str | None, source: str, out: str, budget: int):
    """The pipeline configuration to benchmark, with ``source``, ``out`` and ``budget`` replaced.

    Returns ``(config, description)``.
    """
    from selector.fileio import load_yaml_mapping
    from selector.pipeline import PipelineConfig, offline_values

    if path is None:
        values = offline_values(source=os.path.abspath(source), out=os.path.abspath(out), budget=budget)
        return PipelineConfig.from_dict(values), "recommended.yaml (offline models)"
    values = load_yaml_mapping(path, what="configuration file")
    values.update(source=os.path.abspath(source), out=os.path.abspath(out), budget=budget)
    return PipelineConfig.from_dict(values, base_dir=os.path.dirname(os.path.abspath(path))), os.path.basename(path)


def oriented(values: np.ndarray, column: str) -> tuple[np.ndarray, str]:
    """``values`` with higher = better, and the direction used (the metric's documented one)."""
    try:
        from selector.quality import metric_direction
    except ImportError:  # selector.quality is newer than some checkouts
        direction = None
    else:
        direction = metric_direction(column)
    direction = direction or "higher"
    return (-values if direction == "lower" else values), direction


def auroc(good: np.ndarray, bad: np.ndarray) -> float:
    """P(good > bad) + 0.5 P(tie) (Mann-Whitney); NaN counts as the worst score. NaN when a side is empty."""
    from scipy.stats import rankdata

    if good.size == 0 or bad.size == 0:
        return float("nan")
    values = np.concatenate([good, bad]).astype(np.float64)
    values[np.isnan(values)] = -np.inf
    ranks = rankdata(values)
    return float((ranks[: good.size].sum() - good.size * (good.size + 1) / 2) / (good.size * bad.size))


def outcome(mask: np.ndarray, labels: list[dict]) -> dict[str, float]:
    """Share removed per defect kind, duplicate groups with at most one row kept, share of clean rows kept."""
    defect = np.array([label["defect"] or "clean" for label in labels])
    out = {}
    for kind in (*ROW_KINDS, *DUP_KINDS):
        rows = defect == kind
        out[kind] = float(1 - mask[rows].mean()) if rows.any() else float("nan")
    for prefix in ("exact", "near"):
        groups: dict[str, int] = {}
        for keep, label in zip(mask, labels):
            if (label["group"] or "").startswith(prefix + "-"):
                groups[label["group"]] = groups.get(label["group"], 0) + int(keep)
        out[f"{prefix}_groups"] = float(np.mean([kept <= 1 for kept in groups.values()])) if groups else float("nan")
    out["all_defects"] = float(1 - mask[defect != "clean"].mean())
    out["clean_kept"] = float(mask[defect == "clean"].mean())
    # A duplicate group's clean original and its copies carry the same content (exact copies are identical), and
    # which copy the dedup rule keeps is arbitrary: "clean content kept" counts the original as kept when any row of
    # its group is.
    group_kept: dict[str, bool] = {}
    for keep, label in zip(mask, labels):
        if label["group"]:
            group_kept[label["group"]] = group_kept.get(label["group"], False) or bool(keep)
    content = [bool(keep) or group_kept.get(label["group"] or "", False) for keep, label in zip(mask, labels)]
    out["clean_content_kept"] = float(np.mean([c for c, d in zip(content, defect) if d == "clean"]))
    return out


def aurocs(scores: np.ndarray, labels: list[dict]) -> dict[str, float]:
    defect = np.array([label["defect"] or "clean" for label in labels])
    clean = scores[defect == "clean"]
    out = {kind: auroc(clean, scores[defect == kind]) for kind in (*ROW_KINDS, *DUP_KINDS)}
    out["all_defects"] = auroc(clean, scores[defect != "clean"])
    return out


def score_columns(ds) -> list[str]:
    """Numeric per-row ``score_*`` columns (embeddings and clusters are not scores)."""
    columns = []
    for name, feature in ds.features.items():
        dtype = getattr(feature, "dtype", None)
        if name.startswith("score_") and dtype in ("float16", "float32", "float64", "int32", "int64", "bool"):
            columns.append(name)
    return columns


def column(ds, name: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in ds[name]], dtype=np.float64)


def add_default_quality(ds, notes: list[str]):
    """``ds`` with ``score_quality`` from :class:`selector.quality.QualityScore`'s defaults, when it can be made."""
    try:
        from selector.quality import QualityScore, add_quality_column
    except ImportError:
        notes.append("score_quality: selector.quality is not available in this checkout")
        return ds
    from selector.errors import VLSelectError

    try:
        return add_quality_column(ds, QualityScore().fit(ds))
    except VLSelectError as exc:
        notes.append(f"score_quality: not computed ({exc})")
        return ds


def run_variant(variant: str, args, notes: list[str]) -> dict:
    """Generate, run the pipeline, and collect the per-method selections and oriented scores of one variant."""
    from datasets import load_from_disk

    import selector
    from selector.fileio import read_jsonl
    from selector.pipeline import run_pipeline

    started = time.perf_counter()
    data_dir = os.path.join(args.out, "data", variant)
    summary = quality_data.generate(data_dir, variant, args.n)
    labels = read_jsonl(summary["labels"])
    budget = summary["counts"]["clean"]
    generated = time.perf_counter()

    config, description = load_config(args.config, summary["data"], os.path.join(args.out, "runs", variant), budget)
    result = run_pipeline(config, progress=not args.quiet)
    ds = load_from_disk(result["scored"])
    piped = time.perf_counter()
    if [label["id"] for label in labels] != list(ds["id"]):
        raise RuntimeError("the scored rows are not the generated rows in order")
    if "score_length" not in ds.column_names:
        ds = selector.score(ds, ["length"], progress=False)  # the length-only baseline needs it
    if QUALITY not in ds.column_names:
        # the scored folder holds the metrics; the pipeline adds score_quality at selection time, so rebuild the
        # same combination here for the AUROC and top-k rows.
        if config.quality:
            from selector.pipeline import add_quality

            ds = add_quality(ds, config.quality)[0]
        else:
            ds = add_default_quality(ds, notes)

    selections = {f"pipeline: {description}": result["selection"].mask}
    from selector.pipeline import select_scored

    for name, variant_config in pipeline_variants(config).items():
        selections[name] = select_scored(ds, variant_config, budget=budget).mask
    sweep = budget_sweep(ds, config, labels, args.seeds)
    random_masks = [selector.select(ds, budget, "random", random_state=seed).mask for seed in range(args.seeds)]
    scores, directions = {}, {}
    for name in score_columns(ds):
        scores[name], directions[name] = oriented(column(ds, name), name)
    return {
        "variant": variant,
        "ds": ds,
        "labels": labels,
        "budget": budget,
        "counts": summary["counts"],
        "groups": {k: summary["groups"][k] for k in ("exact", "near")},
        "config": config.to_dict(),
        "selections": selections,
        "sweep": sweep,
        "random": random_masks,
        "scores": scores,
        "directions": directions,
        "seconds": {"generate": generated - started, "pipeline": piped - generated},
    }


#: The pipeline's own filters, dedup and quality score, with top-k by score_quality in place of the quotas.
FLAT = "same pipeline, top-k instead of quotas"
#: The same, with the paper's strict quotas in place of the pipeline's loosened ones (``balance: 1``).
STRICT = "same pipeline, strict quotas (balance 1)"


def pipeline_variants(config) -> dict:
    """The pipeline's selection stage with another rule, on the same scored rows, filters, dedup and score column:
    :data:`FLAT` (top-k by the score) when the pipeline uses clusters and a quality score, and :data:`STRICT`
    when its InstructionGPT-4 quotas are loosened by a ``balance`` other than 1."""
    import dataclasses

    variants = {}
    if config.strategy != "topk" and config.quality:
        variants[FLAT] = dataclasses.replace(config, strategy="topk", options={}, cluster_column=None)
    if config.strategy == "instructiongpt4" and (config.options or {}).get("balance", 1) != 1:
        variants[STRICT] = dataclasses.replace(config, options={**config.options, "balance": 1})
    return variants


#: Budgets (fractions of the pool) of the small-budget tables: small budgets are where selection is used in
#: practice (InstructionGPT-4 keeps 6%; recommended.yaml 30%).
SWEEP = (0.05, 0.1, 0.3, 0.5)


def contents(labels: list[dict]) -> np.ndarray:
    """Each row's image content (the topic without its question kind: ``"easy-vqa:circle-red"``, ``"photo:cat"``);
    an empty string for labels written before topics were."""
    return np.array([(label.get("topic") or "").split("/")[0] for label in labels], dtype=object)


def coverage(mask: np.ndarray, labels: list[dict]) -> float:
    """Share of the clean rows' image contents with at least one clean row selected (higher is better): what a
    quota rule is for, so that a small budget does not spend itself on a few kinds of image."""
    clean = np.array([label["defect"] is None for label in labels])
    content = contents(labels)
    everything = {c for c in content[clean] if c}
    return len({c for c in content[clean & mask] if c}) / len(everything) if everything else float("nan")


def budget_sweep(ds, config, labels: list[dict], seeds: int) -> dict[str, dict[str, dict[str, float]]]:
    """At each :data:`SWEEP` budget, for the pipeline's selection stage re-run on the same scored rows, its
    :func:`pipeline_variants`, random choice (mean of ``seeds``), top-k by ``score_quality`` and top-k by length:
    ``{"defects": share of defect rows among the selected rows (lower is better), "coverage": :func:`coverage`}``.
    """
    import selector
    from selector.pipeline import select_scored

    defect = np.array([label["defect"] is not None for label in labels])

    def measure(masks: list[np.ndarray]) -> dict[str, float]:
        shares = [float(defect[m].mean()) if m.any() else float("nan") for m in masks]
        return {"defects": float(np.mean(shares)), "coverage": float(np.mean([coverage(m, labels) for m in masks]))}

    variants = pipeline_variants(config)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for fraction in SWEEP:
        budget = max(1, round(fraction * len(labels)))
        key = f"{100 * fraction:.0f}%"
        table[key] = {"pipeline": measure([select_scored(ds, config, budget=budget).mask])}
        for name, variant_config in variants.items():
            table[key][name] = measure([select_scored(ds, variant_config, budget=budget).mask])
        randoms = [selector.select(ds, budget, "random", random_state=s).mask for s in range(seeds)]
        table[key][f"random (mean of {seeds} seeds)"] = measure(randoms)
        table[key]["topk score_quality"] = measure([topk(ds, budget, column(ds, QUALITY))])
        table[key]["length only (topk score_length)"] = measure([topk(ds, budget, column(ds, "score_length"))])
    return table


def topk(ds, budget: int, scores: np.ndarray) -> np.ndarray:
    import selector

    return selector.select(ds, budget, "topk", scores=scores).mask


def learned_scores(train: dict, test: dict, model: str) -> np.ndarray:
    """A LearnedSelector fitted on ``train``'s per-row labels (1 clean, 0 defect), scored on ``test``."""
    import selector

    features = [c for c in train["scores"] if c != QUALITY and c in test["scores"]]
    embeddings = [c for c in train["ds"].column_names if c.startswith("emb_") and c in test["ds"].column_names]
    y = np.array([0.0 if label["defect"] else 1.0 for label in train["labels"]])
    est = selector.LearnedSelector(model=model, score_columns=features, embedding_columns=embeddings, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(train["ds"], y)
    return est.score_samples(test["ds"])


def evaluate(runs: dict[str, dict], args) -> dict:
    """Per variant: outcome of every selection method and AUROC of every score."""
    results = {}
    for variant, run in runs.items():
        started = time.perf_counter()
        ds, labels, budget = run["ds"], run["labels"], run["budget"]
        scores = dict(run["scores"])
        others = [v for v in runs if v != variant]
        for model in args.learned:
            if others:
                scores[f"learned:{model} (trained on {others[0]})"] = learned_scores(runs[others[0]], run, model)
        methods = {name: outcome(mask, labels) for name, mask in run["selections"].items()}
        random_outcomes = [outcome(mask, labels) for mask in run["random"]]
        methods[f"random (mean of {len(random_outcomes)} seeds)"] = {
            key: float(np.mean([o[key] for o in random_outcomes])) for key in random_outcomes[0]
        }
        methods["length only (topk score_length)"] = outcome(topk(ds, budget, scores["score_length"]), labels)
        for name in scores:
            if name == QUALITY or name.startswith("learned:"):
                methods[f"topk {name}"] = outcome(topk(ds, budget, scores[name]), labels)
        results[variant] = {
            "n_rows": len(labels),
            "budget": budget,
            "counts": run["counts"],
            "groups": run["groups"],
            "config": run["config"],
            "directions": run["directions"],
            "methods": methods,
            "sweep": run["sweep"],
            "auroc": {name: aurocs(values, labels) for name, values in scores.items()},
            "seconds": {**run["seconds"], "evaluate": time.perf_counter() - started},
        }
    return results


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.0f}%"


def markdown(results: dict) -> str:
    """The tables: selections (rows = methods) and AUROCs (rows = scores), one pair per variant."""
    lines = []
    removed_cols = [*ROW_KINDS, *DUP_KINDS]
    for variant, res in results.items():
        counts = res["counts"]
        lines.append(
            f"**Variant {variant}**: {res['n_rows']} rows, budget {res['budget']} (the clean rows); "
            + ", ".join(f"{SHORT[k]} {counts[k]}" for k in removed_cols)
            + f"; {res['groups']['exact']} exact and {res['groups']['near']} near-duplicate groups."
        )
        lines.append("")
        header = ["method", *(f"{SHORT[k]} removed" for k in removed_cols)]
        header += ["exact groups deduped", "near groups deduped", "all defects removed", "clean kept"]
        header += ["clean content kept"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for name, out in res["methods"].items():
            keys = [*removed_cols, "exact_groups", "near_groups", "all_defects", "clean_kept", "clean_content_kept"]
            lines.append("| " + " | ".join([name, *(_fmt(out[k]) for k in keys)]) + " |")
        lines.append("")
        budgets = list(res["sweep"])
        defect_share = 100 * sum(counts[k] for k in removed_cols) / res["n_rows"]
        for key, title in (
            (
                "defects",
                f"Share of defects among the selected rows (lower is better; the pool holds "
                f"{defect_share:.0f}% defect rows)",
            ),
            (
                "coverage",
                "Image contents covered: share of the clean rows' image contents (easy-VQA shape and "
                "colour, photo) with at least one clean row selected (higher is better)",
            ),
        ):
            lines.append(f"{title}, at smaller budgets, variant {variant}:")
            lines.append("")
            lines.append("| method | " + " | ".join(f"budget {b}" for b in budgets) + " |")
            lines.append("|" + "---|" * (len(budgets) + 1))
            for name in res["sweep"][budgets[0]]:
                cells = [_fmt(res["sweep"][b][name][key]) for b in budgets]
                lines.append("| " + " | ".join([name, *cells]) + " |")
            lines.append("")
        header = ["score (direction)", *(SHORT[k] for k in removed_cols), "all defects"]
        lines.append(f"AUROC clean vs defect kind, variant {variant}:")
        lines.append("")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for name, values in res["auroc"].items():
            direction = res["directions"].get(name, "higher")
            cells = [f"{values[k]:.2f}" if values[k] == values[k] else "n/a" for k in (*removed_cols, "all_defects")]
            lines.append("| " + " | ".join([f"{name} ({direction})", *cells]) + " |")
        lines.append("")
    lines.append(
        "\\* Image-answer mismatch: no image-text model (CLIP family) ships offline; offline, only the pairing "
        "metric sees it (score_image_pair: a matching model of EfficientNet-Lite0 image features and MiniLM answer "
        "embeddings that the pool teaches itself)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", default=None, help="pipeline YAML (default selector/configs/recommended.yaml)")
    parser.add_argument("--n", type=int, default=600, help="rows per variant (default 600)")
    parser.add_argument("--variants", default="A,B", help="comma-separated variants (default A,B)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the random baseline (default 5)")
    parser.add_argument(
        "--learned",
        default="ridge,attention",
        help="LearnedSelector models trained on the other variant, comma-separated, or 'none'",
    )
    parser.add_argument("--out", default=os.path.join("runs", "bench_quality"), help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    args.learned = [] if args.learned in ("", "none") else args.learned.split(",")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(quality_data.VARIANTS))
    if unknown or not variants:
        parser.error(f"--variants: choose from {','.join(quality_data.VARIANTS)}")
    if args.learned and len(variants) < 2:
        parser.error("--learned trains on one variant and scores the other: give two variants or --learned none")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quiet:
        logging.disable(logging.WARNING)
    from selector.data import set_progress

    set_progress(not args.quiet)

    started = time.perf_counter()
    notes: list[str] = []
    runs = {variant: run_variant(variant, args, notes) for variant in variants}
    results = evaluate(runs, args)
    seconds = time.perf_counter() - started
    command = "python benchmarks/bench_quality.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    table = markdown(results)
    text = f"`{command.strip()}` ({seconds:.0f} s)\n\n{table}\n"
    if notes:
        text += "\n" + "\n".join(f"- {note}" for note in dict.fromkeys(notes)) + "\n"
    print(text)

    from selector.fileio import atomic_write_text, write_json

    os.makedirs(args.out, exist_ok=True)
    write_json(
        os.path.join(args.out, "results.json"),
        {"command": command.strip(), "seconds": seconds, "notes": list(dict.fromkeys(notes)), "variants": results},
    )
    atomic_write_text(os.path.join(args.out, "results.md"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
