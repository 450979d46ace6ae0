"""Genuine quality labels: proxy fine-tunes on equal-size k-means subsets of the pool (InstructionGPT-4).

The learned selector needs to know which data is good. InstructionGPT-4 measures it directly: split the pool
into subsets of equal size by k-means, fine-tune a proxy model on each subset, evaluate every proxy on held-out
validation sets, and give each subset its evaluation score as a set-level label. :func:`generate_labels` does
this with the installed training engine (:mod:`selector.training`, the ``training`` extra) and writes
``labels.jsonl`` (``{"id", "group", "label"}`` rows, higher = better) for ``vlselect train-selector``.

Steps and policies:

- **Partition** (:func:`partition_pool`, :class:`BalancedKMeans`): rows with ``error`` set and rows without any
  embedding are left out; the rest are ordered by a stable hash of ``id`` (so the partition does not depend on
  the input order), clustered by spherical k-means into ``n_subsets`` clusters, and balanced to exactly
  ``n // n_subsets`` rows each. InstructionGPT-4 moves the excess of over-full clusters to under-full ones in
  file order and truncates the remainder; here the ``n mod n_subsets`` rows farthest from every centroid are
  dropped and every other row goes to its nearest centroid that still has room (closest rows first). Every
  dropped row is reported with its reason (``error``, ``no_embedding``, ``balance``).
- **Proxy fine-tune**: :func:`selector.training.train` runs once per subset with the training config (a YAML
  path or a shipped config's name such as ``proxy_smolvlm_256m``) on ``train_ids_file`` = that subset's ids,
  from the same base model and with the same seed, so subsets differ only by their data.
- **Evaluation**: each proxy is scored on every validation set with one ``eval_score`` (:data:`EVAL_SCORES`):
  ``eval_loss`` (answer cross-entropy, >= 0, lower = better; the default because it is continuous and defined
  for any answer), ``exact_match`` or ``contains_answer`` (0..1, higher = better; need short reference answers).
- **Label**: the score is oriented so that higher = better (``label = -eval_loss`` for the loss, the accuracy
  as it is), then the validation sets are combined (:func:`combine_scores`): ``combine="mean"`` is the
  (``weights``-weighted) mean of the oriented scores; ``combine="zscore"`` first standardises each validation
  set's oriented scores across subsets (mean 0, std 1; a set on which all subsets tie contributes 0) so a set
  whose scores vary more does not dominate. A subset whose score is NaN on some validation set gets no label
  and is left out of ``labels.jsonl`` with a warning.
- **Cache and resume**: ``OUT/partition.json`` keeps the partition; each finished subset writes
  ``OUT/subsets/subset_XXX.json`` atomically with its raw scores and a fingerprint of everything that made
  them (rows, resolved training config, validation sets, eval score). A re-run reuses finished subsets and continues
  at the first unfinished one; the fine-tune of an interrupted subset continues from its latest checkpoint when
  the config saves checkpoints (``save_steps``). ``combine`` and ``weights`` are applied at the end from the
  cached raw scores, so changing them re-labels without any fine-tune. Results made with other settings are an
  error unless ``overwrite=True``.

Example:
    >>> from selector.labels import generate_labels
    >>> result = generate_labels(  # doctest: +SKIP
    ...     "scored/", "proxy_smolvlm_256m", ["val_vqa.json"], "labels_out/", n_subsets=30
    ... )
    >>> result.labels_path  # doctest: +SKIP
    'labels_out/labels.jsonl'
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selector import logs
from selector.cluster import BalancedKMeans
from selector.errors import ConfigError, DataError
from selector.fileio import json_safe, read_json, write_json, write_jsonl
from selector.rows import embedding_matrix, hash_order, is_usable_error, pool_digest
from selector.runs import OWN_MARKER, check_no_overlap, mark_own_folder
from selector.training.data import column_list
from selector.training.evaluation import EVAL_SCORES  # score -> +1/-1 (higher/lower is better); label = sign * score

logger = logging.getLogger(__name__)

COMBINES = ("mean", "zscore")
DROP_REASONS = ("error", "no_embedding", "balance")
PARTITION_FILE = "partition.json"
LABELS_FILE = "labels.jsonl"
SUMMARY_FILE = "summary.json"
SUBSETS_DIR = "subsets"
# training options vlselect labels sets itself for every subset; a training config that sets them is overridden.
_MANAGED = ("dataset_name", "output_dir", "train_ids_file", "save_model", "resume_from_checkpoint")


# ---------------------------------------------------------------------------------------------------- partition


@dataclass
class Partition:
    """Equal-size subsets of a pool and the rows left out.

    Attributes:
        subsets: one list of ids per subset (sorted), all of length ``subset_size``.
        dropped: ``{id: reason}`` for every pool row in no subset; reasons: ``error`` (the row has ``error``
            set), ``no_embedding`` (every embedding column is NaN), ``balance`` (the ``n mod n_subsets``
            remainder, farthest from every centroid).
        subset_size: rows per subset.
        settings: what made the partition (n_subsets, embedding columns, backend, random_state, pool ids hash).
    """

    subsets: list[list[str]]
    dropped: dict[str, str]
    subset_size: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_subsets(self) -> int:
        return len(self.subsets)

    def group_names(self) -> list[str]:
        width = max(3, len(str(len(self.subsets) - 1)))
        return [f"subset_{j:0{width}d}" for j in range(len(self.subsets))]

    def dropped_counts(self) -> dict[str, int]:
        """``{reason: count}`` of the dropped rows, every reason listed."""
        counts = Counter(self.dropped.values())
        return {reason: int(counts.get(reason, 0)) for reason in DROP_REASONS}

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "subset_size": self.subset_size,
            "dropped_counts": self.dropped_counts(),
            "subsets": dict(zip(self.group_names(), self.subsets)),
            "dropped": [{"id": i, "reason": r} for i, r in sorted(self.dropped.items())],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Partition:
        """Read :meth:`to_json`'s form back; anything else (a hand-edited file) is a ``DataError``."""
        try:
            return cls(
                subsets=[list(v) for v in data["subsets"].values()],
                dropped={row["id"]: row["reason"] for row in data["dropped"]},
                subset_size=int(data["subset_size"]),
                settings=dict(data["settings"]),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise DataError(
                f"the saved partition is malformed ({type(exc).__name__}: {exc}); delete it to redo"
            ) from None


def embedding_columns_of(dataset, columns: Sequence[str] | None = None) -> list[str]:
    """The ``emb_*`` columns to cluster on: ``columns`` checked against ``dataset``, or all of them sorted.

    Raises:
        DataError: a named column is missing, or the dataset has no ``emb_*`` column.
    """
    names = list(dataset.column_names)
    if columns:
        missing = [c for c in columns if c not in names]
        if missing:
            have = ", ".join(c for c in names if c.startswith("emb_")) or "none"
            raise DataError(f"embedding column(s) {', '.join(missing)} not in the dataset (emb_* columns: {have})")
        return list(columns)
    found = sorted(c for c in names if c.startswith("emb_"))
    if not found:
        raise DataError(
            "the dataset has no emb_* column to cluster on; score it with an embedding metric first "
            "(vlselect score ... with `embedding`), or name the columns"
        )
    return found


def partition_settings(
    dataset,
    n_subsets: int,
    *,
    embedding_columns: Sequence[str] | None = None,
    random_state: int | None = 0,
) -> dict[str, Any]:
    """What determines a partition (besides the k-means backend), checked without clustering.

    Returns:
        ``{"n_subsets", "embedding_columns", "random_state", "pool_ids_sha256", "n_pool"}``.

    Raises:
        ConfigError: ``n_subsets`` < 1.
        DataError: no ``id`` column, duplicate ids, or no (or a missing) embedding column.
    """
    if isinstance(n_subsets, bool) or not isinstance(n_subsets, (int, np.integer)) or n_subsets < 1:
        raise ConfigError(f"n_subsets must be a positive integer, got {n_subsets!r}")
    if "id" not in dataset.column_names:
        raise DataError("the dataset has no `id` column")
    ids = [str(i) for i in column_list(dataset, "id")]
    if len(set(ids)) != len(ids):
        raise DataError("ids are not unique; subsets and labels are keyed by id")
    return {
        "n_subsets": int(n_subsets),
        "embedding_columns": embedding_columns_of(dataset, embedding_columns),
        "random_state": random_state,
        "pool_ids_sha256": pool_digest(ids),
        "n_pool": len(ids),
    }


def partition_pool(
    dataset,
    n_subsets: int = 30,
    *,
    embedding_columns: Sequence[str] | None = None,
    backend: str = "auto",
    random_state: int | None = 0,
) -> Partition:
    """Split the usable rows of a scored dataset into ``n_subsets`` equal-size k-means subsets.

    Several embedding columns are each L2-normalised and concatenated (a missing block, such as the image
    embedding of a text-only row, is zeros), so every modality weighs the same.

    Args:
        dataset: a ``datasets.Dataset`` with ``id``, optional ``error``, and ``emb_*`` columns.
        n_subsets: number of subsets.
        embedding_columns: columns to cluster on (default: every ``emb_*`` column).
        backend: k-means backend (see :class:`selector.cluster.KMeans`).
        random_state: k-means seed.

    Returns:
        A :class:`Partition`.

    Raises:
        ConfigError: ``n_subsets`` < 1.
        DataError: no ``id`` column, duplicate ids, no embedding column, or fewer usable rows than subsets.
    """
    from selector.cluster import l2_normalize

    settings = partition_settings(dataset, n_subsets, embedding_columns=embedding_columns, random_state=random_state)
    ids = [str(i) for i in column_list(dataset, "id")]
    columns = settings["embedding_columns"]
    n = len(ids)
    dropped: dict[str, str] = {}
    errors = column_list(dataset, "error") if "error" in dataset.column_names else [None] * n
    blocks = []
    present = np.zeros(n, dtype=bool)
    for column in columns:
        matrix = embedding_matrix(dataset, column)
        finite = np.isfinite(matrix).all(axis=1)
        present |= finite
        block = np.zeros_like(matrix)
        block[finite] = l2_normalize(matrix[finite])
        blocks.append(block)
    for i in range(n):
        if not is_usable_error(errors[i]):
            dropped[ids[i]] = "error"
        elif not present[i]:
            dropped[ids[i]] = "no_embedding"
    usable = np.array([i for i in range(n) if ids[i] not in dropped], dtype=np.int64)
    if usable.size < n_subsets:
        raise DataError(
            f"{usable.size} usable row(s) (of {n}; {len(dropped)} with an error or no embedding) "
            f"can't fill {n_subsets} subsets; lower --n-subsets"
        )
    usable_ids = np.array([ids[i] for i in usable], dtype=object)
    order = usable[hash_order(usable_ids)]
    X = np.concatenate(blocks, axis=1)[order]
    bkm = BalancedKMeans(n_clusters=int(n_subsets), backend=backend, random_state=random_state).fit(X)
    subsets: list[list[str]] = [[] for _ in range(n_subsets)]
    for row, label in zip(order, bkm.labels_):
        if label < 0:
            dropped[ids[row]] = "balance"
        else:
            subsets[label].append(ids[row])
    settings = {**settings, "backend": backend}
    part = Partition([sorted(s) for s in subsets], dropped, bkm.subset_size_, settings)
    counts = part.dropped_counts()
    logger.info(
        "partitioned %d rows into %d subsets of %d (%d moved from a full nearest cluster); dropped %s",
        n,
        n_subsets,
        bkm.subset_size_,
        bkm.n_moved_,
        ", ".join(f"{v} {k}" for k, v in counts.items()) or "none",
    )
    if counts["balance"]:
        logger.warning(
            "dropped %d row(s) so that every subset has %d rows (the rows farthest from every centroid)",
            counts["balance"],
            bkm.subset_size_,
        )
    return part


# ------------------------------------------------------------------------------------------------------ labels


def combine_scores(
    scores,
    *,
    eval_score: str = "eval_loss",
    combine: str = "mean",
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Turn per-subset validation scores into one label per subset; higher label = better subset.

    Args:
        scores: (n_subsets, n_val) raw values of ``eval_score`` (NaN where a score is missing).
        eval_score: ``eval_loss`` (lower = better: the label uses ``-loss``), ``exact_match`` or
            ``contains_answer`` (higher = better, used as they are); see :data:`EVAL_SCORES`.
        combine: ``"mean"``: weighted mean of the oriented scores; ``"zscore"``: each validation set's oriented
            scores are standardised across the subsets with a finite score (a set with zero spread gives 0),
            then weighted-averaged.
        weights: one non-negative weight per validation set (default: equal); normalised to sum 1.

    Returns:
        (n_subsets,) float64 labels; NaN for a subset with a NaN score on any validation set of positive weight.

    Raises:
        ConfigError: unknown eval score or combine, or weights of the wrong length, negative, or summing to 0.
    """
    sign = _eval_score_sign(eval_score)
    if combine not in COMBINES:
        raise ConfigError(f"unknown combine {combine!r}; choose one of {', '.join(COMBINES)}")
    S = np.asarray(scores, dtype=np.float64)
    if S.ndim != 2:
        raise DataError(f"scores must be (n_subsets, n_val), got shape {S.shape}")
    w = _weights(weights, S.shape[1])
    oriented = sign * S
    if combine == "zscore":
        for v in range(S.shape[1]):
            col = oriented[:, v]
            finite = np.isfinite(col)
            if not finite.any():
                continue
            std = col[finite].std()
            col[finite] = (col[finite] - col[finite].mean()) / std if std > 0 else 0.0
    used = w > 0
    out = oriented[:, used] @ w[used]
    out[~np.isfinite(oriented[:, used]).all(axis=1)] = np.nan
    return out


def _eval_score_sign(eval_score: str) -> float:
    if eval_score not in EVAL_SCORES:
        raise ConfigError(f"unknown eval score {eval_score!r}; choose one of {', '.join(EVAL_SCORES)}")
    return EVAL_SCORES[eval_score]


def _weights(weights: Sequence[float] | None, n_val: int) -> np.ndarray:
    if weights is None:
        return np.full(n_val, 1.0 / n_val)
    w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (n_val,):
        raise ConfigError(f"give one weight per validation set: {n_val} set(s), {w.size} weight(s)")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w / w.sum()


# ------------------------------------------------------------------------------------------ training config


def find_training_config(config: str | os.PathLike) -> str:
    """The path of a training config: a YAML path, or the name of a config shipped with :mod:`selector.training`.

    ``"proxy_smolvlm_256m"`` and ``"tiny_cpu"`` name shipped configs; in a checkout ``recipes/configs/X.yaml``
    points at the same files. The engine itself is the installed :mod:`selector.training`, never a script.

    Raises:
        ConfigError: neither an existing file nor a shipped config's name.
    """
    from selector.training.config import find_config

    try:
        return find_config(config)
    except ConfigError as exc:
        raise ConfigError(f"training {exc}") from None


def parse_val_sources(sources: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """``[(name, path)]`` for validation sources given as ``PATH`` or ``NAME=PATH``.

    The name of a bare path is its file or folder name without extension; repeated names get ``_2``, ``_3``.

    Raises:
        ConfigError: no source, an empty name or path, or a path that does not exist.
    """
    if not sources:
        raise ConfigError("give at least one validation set (--val)")
    out: list[tuple[str, str]] = []
    seen: Counter[str] = Counter()
    for source in sources:
        text = os.fspath(source)
        name, path = None, text
        if "=" in text and not os.path.exists(text):
            name, path = text.split("=", 1)
            if not name or not path:
                raise ConfigError(f"validation source {text!r}: expected PATH or NAME=PATH")
        if not os.path.exists(path):
            raise ConfigError(f"validation set {path}: no such file or directory")
        if name is None:
            name = Path(path.rstrip("/\\")).stem or "val"
        seen[name] += 1
        if seen[name] > 1:
            name = f"{name}_{seen[name]}"
        out.append((name, os.path.abspath(path)))
    return out


# ------------------------------------------------------------------------------------------------------- runs


@dataclass
class LabelsResult:
    """What :func:`generate_labels` produced.

    Attributes:
        labels_path: ``OUT/labels.jsonl`` (``{"id", "group", "label"}``, higher label = better).
        labels: ``{group: label}`` (NaN for a subset left unlabelled).
        subsets: per subset ``{"group", "n_rows", "scores": {val: raw score}, "label", "cached"}``.
        partition: the :class:`Partition`.
        n_finetuned: proxy fine-tunes run by this call.
        n_cached: subsets taken from the cache of an earlier run.
        n_labelled_rows: rows written to ``labels.jsonl``.
        summary_path: ``OUT/summary.json``.
    """

    labels_path: str
    labels: dict[str, float]
    subsets: list[dict[str, Any]]
    partition: Partition
    n_finetuned: int
    n_cached: int
    n_labelled_rows: int
    summary_path: str


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(json_safe(data), sort_keys=True).encode("utf-8")).hexdigest()


def _load_pool(dataset, out: Path) -> tuple[Any, str]:
    """``(Dataset, path the recipe can load)``; an in-memory dataset is saved under ``OUT/pool``."""
    from datasets import Dataset

    if isinstance(dataset, Dataset):
        path = out / "pool"
        tmp = out / f"pool.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        dataset.save_to_disk(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        return dataset, str(path)
    from selector.runs import load_scored

    path = os.path.abspath(os.fspath(dataset))
    return load_scored(path), path


def _resolved_recipe(config_path: str, overrides: dict[str, Any], pool_path: str) -> dict[str, Any]:
    from selector.training.config import make_config, resolve_config
    from selector.training.finetune import FinetuneConfig, validate

    user = dict(overrides)
    for key in ("train_ids", "train_ids_file"):
        if user.get(key):
            raise ConfigError(f"recipe option {key!r}: vlselect labels chooses each subset's rows itself")
    try:
        cfg = resolve_config(FinetuneConfig, config_path, **user)
    except ConfigError as exc:
        raise ConfigError(f"recipe config {config_path}: {exc}") from None
    for key in ("train_ids", "train_ids_file"):
        if getattr(cfg, key):
            raise ConfigError(
                f"{config_path} sets {key!r}; vlselect labels chooses each subset's rows itself, remove it"
            )
    values = dataclasses.asdict(cfg)
    values.update(dataset_name=pool_path, output_dir=os.path.join(pool_path, "_unused"), save_model=True)
    try:
        validate(make_config(FinetuneConfig, values))
    except ConfigError as exc:
        raise ConfigError(f"recipe config {config_path}: {exc}") from None
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _MANAGED}


def _check_val_overlap(val: list[tuple[str, str]], pool_ids: set[str]) -> dict[str, int]:
    """Load every validation set once (fails early on a bad one), warn about pool ids it shares; ``{name: rows}``."""
    from selector.training.data import load_rows

    sizes = {}
    for name, path in val:
        dataset, _ = load_rows(path)
        shared = pool_ids.intersection(map(str, column_list(dataset, "id")))
        if shared:
            logger.warning(
                "validation set %s shares %d id(s) with the pool (e.g. %s): proxies are evaluated on rows "
                "some of them trained on",
                name,
                len(shared),
                sorted(shared)[0],
            )
        sizes[name] = len(dataset)
    return sizes


def generate_labels(
    dataset,
    recipe_config: str | os.PathLike,
    val: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    n_subsets: int = 30,
    eval_score: str = "eval_loss",
    combine: str = "mean",
    weights: Sequence[float] | None = None,
    embedding_columns: Sequence[str] | None = None,
    recipe_script: str | os.PathLike | None = None,
    recipe_overrides: dict[str, Any] | None = None,
    max_eval_samples: int | None = None,
    max_new_tokens: int = 16,
    keep_models: bool = False,
    backend: str = "auto",
    random_state: int | None = 0,
    overwrite: bool = False,
    progress: bool = True,
    metric: str | None = None,
) -> LabelsResult:
    """Label k-means subsets of a scored pool by proxy fine-tunes and write ``OUT/labels.jsonl``.

    Args:
        dataset: a ``vlselect score`` output folder, or a ``datasets.Dataset`` with canonical + ``emb_*``
            columns (saved to ``OUT/pool`` for the fine-tunes).
        recipe_config: the training config: a YAML path or a shipped config's name (``"proxy_smolvlm_256m"``,
            ``"tiny_cpu"``; see :func:`find_training_config`).
        val: validation sets, ``PATH`` or ``NAME=PATH``: any format :func:`selector.training.load_rows` reads
            (data file/folder or ``save_to_disk`` folder).
        out_dir: output folder; holds the cache, so re-running with the same folder resumes.
        n_subsets: number of equal-size subsets (InstructionGPT-4: 30).
        eval_score: evaluation score per validation set, see :data:`EVAL_SCORES` and :func:`combine_scores`.
        combine: how validation sets combine into a label, ``"mean"`` or ``"zscore"`` (:func:`combine_scores`).
        weights: one weight per validation set (default equal).
        embedding_columns: ``emb_*`` columns to cluster on (default all).
        recipe_script: deprecated and ignored (the engine is the installed :mod:`selector.training`).
        recipe_overrides: training options that win over the config (e.g. ``{"model_name_or_path": ...}``).
        max_eval_samples: evaluate on at most this many rows of each validation set.
        max_new_tokens: answer length when ``eval_score`` needs generated answers.
        keep_models: keep each proxy's weights under ``OUT/subsets/<group>/finetune`` (default: deleted after
            its evaluation, since 30 copies of a model rarely fit the disk).
        backend: k-means backend.
        random_state: k-means seed (the training config keeps its own ``seed``, the same for every subset).
        overwrite: discard cached results made with other settings instead of raising.
        progress: show a progress bar over subsets.
        metric: deprecated name of ``eval_score``.

    Returns:
        A :class:`LabelsResult`.

    Raises:
        ConfigError: bad options, a missing training config, or ``out_dir`` holding results of other settings.
        DataError: unusable pool or validation data.
    """
    from selector.logs import progress as progress_bar

    if metric is not None:
        warnings.warn("generate_labels(metric=...) is deprecated; use eval_score=...", FutureWarning, stacklevel=2)
        eval_score = metric
    if recipe_script is not None:
        warnings.warn(
            "recipe_script is deprecated and ignored: vlselect labels runs the installed engine selector.training",
            FutureWarning,
            stacklevel=2,
        )
    _eval_score_sign(eval_score)
    if combine not in COMBINES:
        raise ConfigError(f"unknown combine {combine!r}; choose one of {', '.join(COMBINES)}")
    if max_eval_samples is not None and max_eval_samples < 1:
        raise ConfigError(f"max_eval_samples must be >= 1, got {max_eval_samples}")
    val_sources = parse_val_sources(val)
    _weights(weights, len(val_sources))
    config_path = find_training_config(recipe_config)
    out = Path(out_dir).expanduser().resolve()
    pool_source = dataset if isinstance(dataset, (str, os.PathLike)) else None
    _check_out(out, [pool_source, config_path, *(path for _, path in val_sources)])
    out.mkdir(parents=True, exist_ok=True)
    if not (out / OWN_MARKER).exists():
        mark_own_folder(str(out))
    pool, pool_path = _load_pool(dataset, out)
    recipe_values = _resolved_recipe(config_path, dict(recipe_overrides or {}), pool_path)

    part_path = out / PARTITION_FILE
    settings = partition_settings(pool, n_subsets, embedding_columns=embedding_columns, random_state=random_state)
    partition = None
    if part_path.exists():
        saved = Partition.from_json(read_json(part_path))
        # the backend is not compared: a resume on another machine (faiss or not, other thread count) must train
        # the remaining subsets of the saved partition, not of a new one.
        saved_settings = {k: v for k, v in saved.settings.items() if k != "backend"}
        if saved_settings == settings:
            partition = saved
        elif overwrite:
            logger.warning("%s was made with other settings; --overwrite discards it and every cached subset", out)
            shutil.rmtree(out / SUBSETS_DIR, ignore_errors=True)
        else:
            raise ConfigError(
                f"{out} holds a partition made with other settings ({_diff(saved_settings, settings)}); "
                "use another --out, or pass --overwrite to discard it"
            )
    if partition is None:
        partition = partition_pool(
            pool, n_subsets, embedding_columns=embedding_columns, backend=backend, random_state=random_state
        )
        write_json(part_path, partition.to_json())
    pool_ids = {i for s in partition.subsets for i in s} | set(partition.dropped)
    val_rows = _check_val_overlap(val_sources, pool_ids)

    # the key keeps its old name "metric": it is hashed into every cached subset's fingerprint, and renaming it
    # would make caches written before the rename look like results of other settings.
    eval_options = {"metric": eval_score, "max_eval_samples": max_eval_samples}
    if eval_score != "eval_loss":
        eval_options["max_new_tokens"] = max_new_tokens
    subsets_dir = out / SUBSETS_DIR
    subsets_dir.mkdir(exist_ok=True)
    groups = partition.group_names()
    records: list[dict[str, Any]] = []
    todo: list[int] = []
    for j, group in enumerate(groups):
        fp = _fingerprint({"ids": partition.subsets[j], "recipe": recipe_values, "val": val_sources, **eval_options})
        cached = _read_cached(subsets_dir / f"{group}.json", fp, overwrite)
        records.append(cached if cached is not None else {"group": group, "fingerprint": fp})
        if cached is None:
            todo.append(j)
    n_cached = len(groups) - len(todo)
    if n_cached:
        logger.info("%d of %d subsets already done in %s; resuming", n_cached, len(groups), out)
    quiet = contextlib.nullcontext() if progress else logs.third_party_progress_bars(False)
    with (
        progress_bar(total=len(groups), initial=n_cached, desc="labels", unit="subset", disable=not progress) as bar,
        quiet,
    ):
        for j in todo:
            bar.set_postfix_str(groups[j])
            records[j] = _run_subset(
                recipe_values,
                pool_path,
                partition.subsets[j],
                groups[j],
                records[j]["fingerprint"],
                val_sources,
                subsets_dir,
                eval_options,
                keep_models,
            )
            bar.update(1)

    names = [name for name, _ in val_sources]
    raw = np.array([[_float(r["scores"].get(name)) for name in names] for r in records], dtype=np.float64)
    labels = combine_scores(raw, eval_score=eval_score, combine=combine, weights=weights)
    rows = []
    unlabelled = []
    for j, group in enumerate(groups):
        if not math.isfinite(labels[j]):
            unlabelled.append(group)
            continue
        rows += [{"id": row_id, "group": group, "label": float(labels[j])} for row_id in partition.subsets[j]]
    if unlabelled:
        logger.warning(
            "%d subset(s) have a NaN score on some validation set and get no label: %s",
            len(unlabelled),
            ", ".join(unlabelled),
        )
    if not rows:
        raise DataError(f"no subset got a finite {eval_score} on the validation sets; no labels to write")
    labels_path = out / LABELS_FILE
    write_jsonl(labels_path, rows)

    subsets = [
        {
            "group": group,
            "n_rows": len(partition.subsets[j]),
            "scores": {name: _float(records[j]["scores"].get(name)) for name in names},
            "label": float(labels[j]),
            "cached": j not in todo,
        }
        for j, group in enumerate(groups)
    ]
    summary = {
        "n_pool": partition.settings.get("n_pool"),
        "n_subsets": partition.n_subsets,
        "subset_size": partition.subset_size,
        "dropped": partition.dropped_counts(),
        "n_labelled_rows": len(rows),
        "unlabelled_subsets": unlabelled,
        "eval_score": eval_score,
        "direction": "lower is better (label = -score)" if EVAL_SCORES[eval_score] < 0 else "higher is better",
        "combine": combine,
        "weights": _weights(weights, len(names)).tolist(),
        "val": dict(val_sources),
        "val_rows": val_rows,
        "recipe_config": config_path,
        "recipe": recipe_values,
        "n_finetuned": len(todo),
        "n_cached": n_cached,
        "subsets": subsets,
    }
    summary_path = out / SUMMARY_FILE
    write_json(summary_path, summary)
    return LabelsResult(
        labels_path=str(labels_path),
        labels={s["group"]: s["label"] for s in subsets},
        subsets=subsets,
        partition=partition,
        n_finetuned=len(todo),
        n_cached=n_cached,
        n_labelled_rows=len(rows),
        summary_path=str(summary_path),
    )


def _check_out(out: Path, sources: list) -> None:
    """The output rules of :mod:`selector.runs` for a labels folder, which is also the resume cache: it may not
    overlap an input (the pool, the training config, a validation set), and an existing non-empty one is reused
    only when vlselect wrote it (its marker, or the files of a labels run from before the marker)."""
    check_no_overlap(str(out), sources)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        earlier = (out / OWN_MARKER).is_file() or (out / PARTITION_FILE).is_file() or (out / SUMMARY_FILE).is_file()
        if not earlier:
            raise ConfigError(
                f"--out {out} is not empty and is not an earlier `vlselect labels` output (no {OWN_MARKER}); "
                "choose a new folder"
            )


def _diff(saved: dict[str, Any], now: dict[str, Any]) -> str:
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys) or "none"


def _read_cached(path: Path, fingerprint: str, overwrite: bool) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError):
        # written atomically, so a broken file was edited by hand; redoing the subset is the safe answer.
        logger.warning("%s is not valid JSON; the subset is redone", path)
        return None
    if not isinstance(record, dict):
        logger.warning("%s does not hold a subset result; the subset is redone", path)
        return None
    if record.get("fingerprint") == fingerprint:
        return record
    if overwrite:
        logger.warning("%s was made with other settings; redoing it (--overwrite)", path)
        return None
    raise ConfigError(
        f"{path} holds a result made with another recipe config, validation set or eval score; "
        "use another --out, or pass --overwrite to redo such subsets"
    )


def _run_subset(
    recipe_values: dict[str, Any],
    pool_path: str,
    ids: list[str],
    group: str,
    fingerprint: str,
    val_sources: list[tuple[str, str]],
    subsets_dir: Path,
    eval_options: dict[str, Any],
    keep_models: bool,
) -> dict[str, Any]:
    """Fine-tune a proxy on one subset, evaluate it on every validation set, cache the result atomically."""
    from selector.errors import VLSelectError
    from selector.training import finetune

    work = subsets_dir / group
    work.mkdir(exist_ok=True)
    stamp = work / "fingerprint.txt"
    if stamp.exists() and stamp.read_text(encoding="utf-8").strip() != fingerprint:
        # checkpoints of an interrupted attempt with other settings must not be resumed
        shutil.rmtree(work / "finetune", ignore_errors=True)
    stamp.write_text(fingerprint + "\n", encoding="utf-8")
    ids_file = work / "ids.txt"
    ids_file.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    started = time.perf_counter()
    overrides = dict(recipe_values)
    overrides.update(
        dataset_name=pool_path,
        output_dir=str(work / "finetune"),
        train_ids_file=str(ids_file),
        save_model=True,
        # an interrupted subset continues from its last checkpoint when the config saves some (save_steps)
        resume_from_checkpoint="latest",
    )
    try:
        # looked up on the module at call time, so a test can wrap finetune.train to count or interrupt fine-tunes
        trained = finetune.train(None, **overrides)
    except VLSelectError as exc:
        raise type(exc)(f"{group}: fine-tuning failed: {exc}") from exc
    model_dir = trained.get("model_dir") or str(work / "finetune")
    evaluations = _evaluate_proxy(recipe_values, model_dir, val_sources, work, eval_options, group)
    eval_score = eval_options["metric"]
    record = {
        "group": group,
        "fingerprint": fingerprint,
        "n_rows": len(ids),
        "scores": {name: _float(ev.get(eval_score)) for name, ev in evaluations.items()},
        "evaluations": evaluations,
        "train": {
            k: trained.get(k) for k in ("train_loss", "global_step", "resumed_from_step", "n_train", "train_runtime_s")
        },
        "seconds": time.perf_counter() - started,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(subsets_dir / f"{group}.json", record)
    if not keep_models:
        # the result is cached first: a crash here leaves a finished subset and a folder to delete, not a redo.
        shutil.rmtree(work / "finetune", ignore_errors=True)
    logger.info("%s: %s", group, ", ".join(f"{n}={v:.4g}" for n, v in record["scores"].items()))
    return record


def _evaluate_proxy(recipe_values, model_dir, val_sources, work: Path, eval_options, group: str):
    import gc

    import torch

    from selector.errors import VLSelectError
    from selector.training import evaluation
    from selector.training.modeling import load_model_and_processor

    model, processor = load_model_and_processor(
        model_dir,
        revision=None,
        dtype=recipe_values.get("torch_dtype", "float32"),
        trust_remote_code=recipe_values.get("trust_remote_code", False),
    )
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    eval_score = eval_options["metric"]
    evaluations = {}
    try:
        for name, path in val_sources:
            config = {
                "dataset_name": path,
                "output_file": str(work / f"eval_{name}.json"),
                "compute_loss": eval_score == "eval_loss",
                "generate": eval_score != "eval_loss",
                "per_device_eval_batch_size": recipe_values.get("per_device_eval_batch_size", 4),
                "max_length": recipe_values.get("max_length"),
                "max_eval_samples": eval_options.get("max_eval_samples"),
                "max_new_tokens": eval_options.get("max_new_tokens", 16),
                "torch_dtype": recipe_values.get("torch_dtype", "float32"),
            }
            try:
                result = evaluation.evaluate(config, model=model, processor=processor)
            except VLSelectError as exc:
                raise type(exc)(f"{group}: evaluation on {name} failed: {exc}") from exc
            evaluations[name] = {
                k: result.get(k)
                for k in ("eval_loss", "exact_match", "contains_answer", "n_rows", "n_scored", "n_missing")
            }
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return evaluations


def read_summary(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``summary.json`` of a finished labels run."""
    path = Path(out_dir) / SUMMARY_FILE
    if not path.is_file():
        raise DataError(f"{out_dir}: no {SUMMARY_FILE} (the labels run has not finished)")
    return read_json(path)


__all__ = [
    "BalancedKMeans",
    "LabelsResult",
    "EVAL_SCORES",
    "Partition",
    "combine_scores",
    "find_training_config",
    "generate_labels",
    "parse_val_sources",
    "partition_pool",
    "partition_settings",
    "read_summary",
]
