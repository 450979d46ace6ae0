"""The learned selector: predict each sample's contribution to fine-tuning quality from its indicators.

InstructionGPT-4 (Wei et al., arXiv 2308.12067) scores every vision-language instruction with indicators
(CLIP score, length, reward score, GPT score) plus image and text embeddings, and trains a small
self-attention network whose per-sample scores, averaged over a subset, regress the quality of a model
fine-tuned on that subset. :class:`LearnedSelector` implements that idea as a scikit-learn estimator with two
models:

* ``model="attention"`` (default): the self-attention network, corrected (see :class:`LearnedSelector`).
* ``model="ridge"``: a linear baseline on the same features; in set mode it is ridge regression of the
  group labels on the group-mean features, so the mean of its per-row scores over a group is exactly its
  prediction for the group.

The features (standardised ``score_*`` columns, whitened PCA of ``emb_*`` columns, the NaN policy) are built by
:class:`selector.features.FeatureSpec`, fitted on the pool passed to :meth:`LearnedSelector.fit` and saved with
the model.

Labels come per row (``groups=None``) or per set (rows carry ``groups`` and a group-constant label; the loss
is the squared error between the group's mean score and its label). Label files are JSONL rows
``{"id", "group", "label"}`` (see :func:`read_labels`), the schema ``vlselect labels`` writes.

A fitted selector saves to a folder (``config.json`` with the feature spec and metric names,
``model.safetensors`` with the weights and PCA matrices, ``README.md`` model card built by
:func:`selector.card.model_card`) that :meth:`LearnedSelector.from_pretrained` loads from disk or from the
Hugging Face Hub.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from selector.errors import ConfigError, DataError, VLSelectError
from selector.features import FeatureSpec, FeatureTable
from selector.fileio import atomic_write_bytes, atomic_write_text, iter_jsonl_lines, read_json, write_json
from selector.redact import redact
from selector.rows import check_seed, hash_order, id_ranks, parse_budget, resolve_budget

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: 2: the feature spec is stored under "feature_spec" (version 1 called it "recipe"; both load).
FORMAT_VERSION = 2
MODELS = ("attention", "ridge")
_RIDGE_ALPHAS = tuple(10.0**k for k in range(-3, 4))


def read_labels(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL label file of ``{"id", "group", "label"}`` rows.

    ``group`` may be missing or null on every row (per-row labels) or set on every row (set-level labels,
    constant within a group). ``label`` is a finite number; higher means better.

    Raises:
        DataError: the file is missing, a line is not JSON or lacks ``id``/``label``, a label is not a finite
            number, an id repeats, groups are set on some rows only, or a group has different labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for lineno, row in iter_jsonl_lines(path):
        if not isinstance(row, dict) or "id" not in row or "label" not in row:
            raise DataError(f'{path}:{lineno}: each line needs "id" and "label" (and "group" for set labels)')
        label = row["label"]
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
            raise DataError(f"{path}:{lineno}: label must be a finite number, got {label!r}")
        key = str(row["id"])
        if key in seen:
            raise DataError(f"{path}:{lineno}: id {key!r} appears twice")
        seen.add(key)
        rows.append({"id": key, "group": row.get("group"), "label": float(label)})
    if not rows:
        raise DataError(f"label file {path} has no rows")
    with_group = sum(r["group"] is not None for r in rows)
    if 0 < with_group < len(rows):
        raise DataError(f"{path}: {len(rows) - with_group} of {len(rows)} rows have no group; set it on all or none")
    if with_group:
        by_group: dict[str, float] = {}
        for r in rows:
            g = str(r["group"])
            if g in by_group and not math.isclose(by_group[g], r["label"], rel_tol=1e-6, abs_tol=1e-9):
                raise DataError(
                    f"{path}: group {g!r} has different labels ({by_group[g]} and {r['label']}); "
                    "set-level labels are one number per group"
                )
            by_group.setdefault(g, r["label"])
    return rows


def align_labels(ids: Sequence[str], labels: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-row ``y`` (NaN where unlabelled) and ``groups`` (None where unlabelled; None for per-row labels).

    Raises:
        DataError: no label id matches a row id. Label ids not in the data are counted in a warning.
    """
    position = {str(i): k for k, i in enumerate(ids)}
    y = np.full(len(position), np.nan)
    set_mode = any(r.get("group") is not None for r in labels)
    groups = np.full(len(position), None, dtype=object) if set_mode else None
    unknown = 0
    for r in labels:
        k = position.get(str(r["id"]))
        if k is None:
            unknown += 1
            continue
        y[k] = float(r["label"])
        if groups is not None:
            groups[k] = str(r["group"])
    if unknown == len(labels):
        raise DataError(f"none of the {len(labels)} labelled ids is in the data (first: {labels[0]['id']!r})")
    if unknown:
        logger.warning("%d of %d labelled ids are not in the data; ignored", unknown, len(labels))
    return y, groups


def _build_network(n_scores: int, embedding_components: Sequence[int], d_model: int, n_heads: int, n_layers: int):
    """The corrected InstructionGPT-4 network (torch imported here, so ``import selector`` stays light)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(d_model)
            # batch_first=True: the sequence axis is the sample's own tokens, never other samples.
            self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
            self.norm2 = nn.LayerNorm(d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))

        def forward(self, x):
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.norm2(x))

    class SelectorNetwork(nn.Module):
        """Tokens of one sample: [CLS, one per score, one per embedding PCA]; linear head on CLS."""

        def __init__(self):
            super().__init__()
            # score token j = s_j * w_j + b_j: a numeric embedding whose b_j also tells the tokens apart.
            self.score_weight = nn.Parameter(torch.randn(n_scores, d_model) * 0.5)
            self.score_bias = nn.Parameter(torch.randn(n_scores, d_model) * 0.5)
            self.embedding_proj = nn.ModuleList(nn.Linear(k, d_model) for k in embedding_components)
            self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.5)
            self.blocks = nn.ModuleList(Block() for _ in range(n_layers))
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, 1)

        def forward(self, scores, embeddings):
            tokens = [self.cls.expand(scores.shape[0], 1, d_model)]
            if n_scores:
                tokens.append(scores.unsqueeze(-1) * self.score_weight + self.score_bias)
            tokens.extend(proj(e).unsqueeze(1) for proj, e in zip(self.embedding_proj, embeddings))
            x = torch.cat(tokens, dim=1)
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x[:, 0])).squeeze(-1)

    return SelectorNetwork()


class LearnedSelector(BaseEstimator):
    """Score samples by their predicted contribution to fine-tuning quality; keep the best ``budget``.

    ``score_samples`` returns one float per row in the units of the training labels (in set mode, the mean of
    the scores over a subset predicts that subset's label); higher is better; NaN for rows with ``error``
    set or without any feature, and those rows are never selected. A row's score depends on that row only,
    not on the batch or the pool it is scored with.

    The attention network follows InstructionGPT-4's selector with these differences from the released
    upstream code (``waltonfuture/InstructionGPT-4``, ``selector/``), each fixing a behaviour that made
    scores depend on things they should not:

    * Attention over the sample's own tokens. Upstream concatenates all features into one vector and calls
      ``nn.MultiheadAttention`` with the default ``batch_first=False`` on ``(groups, samples, features)``,
      so attention runs across the *batch* axis (training: across the 30 subsets; inference: across all
      3,439 samples, each repeated 114 times), and a sample's score depends on which other samples are in
      the batch. Here each sample is a short sequence (CLS, one token per score, one per embedding) and
      attention never crosses samples.
    * A real residual. Upstream's ``residual=0`` adds the attention output and ``residual=1`` drops it
      (attention is skipped entirely); the stacked linear layers have no non-linearity, so the network
      collapses to almost a linear map. Here: pre-norm blocks ``x + attn(norm(x))``, ``x + mlp(norm(x))``
      with a GELU MLP.
    * Best-epoch checkpoint on held-out groups. Upstream's "best" model is chosen on training loss that is
      reset to 0 before the comparison and stored as a ``state_dict()`` reference that later steps keep
      updating, so the last epoch is saved. Here a ``validation_fraction`` of the groups (of the rows in
      per-row mode) is held out, the weights of the epoch with the lowest held-out loss are deep-copied,
      and training stops after ``patience`` epochs without improvement.
    * No score truncation. Upstream ranks by ``int(final_score)``, which turns the learned scores into a
      handful of ties broken by input order. Here the float scores rank, ties break by ``id``.
    * One feature space. Upstream fits a separate PCA on each training subset and another on the full
      pool, so the components the network saw in training are not the ones it scores with (PCA axes and
      signs differ per fit). Here one PCA per embedding column is fitted on the pool, sign-fixed, whitened
      and saved with the model; scores are standardised with pool statistics instead of upstream's ad hoc
      ``10 *`` scaling of reward and length.
    * Subsets of any size, per-row or set-level labels from a file, NaN handling, seeds, save/load.
    * Order independence: fitting sees the rows in stable-hash order of their ``id``, so a permuted input gives
      exactly the same selector (upstream's shuffles and splits follow the input order).

    Args:
        model: ``"attention"`` (the network) or ``"ridge"`` (linear baseline on the same features).
        budget: rows :meth:`predict` keeps: an int count, or a float fraction in (0, 1] of the rows given.
        score_columns: ``score_*`` columns to use; None = every numeric ``score_*`` column of the pool.
        embedding_columns: ``emb_*`` columns to use; None = every ``emb_*`` column of the pool.
        n_components: PCA components per embedding column (upstream: 6).
        clip_std: standardised scores are clipped to +-this many standard deviations.
        d_model: token width of the network.
        n_heads: attention heads (must divide ``d_model``).
        n_layers: transformer blocks.
        max_epochs: upper bound on training epochs.
        patience: stop after this many epochs without a better held-out loss.
        batch_size: groups per step in set mode, rows per step in per-row mode; None = 16 groups or 256 rows.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        validation_fraction: share of groups (rows) held out to pick the best epoch; needs >= 5 groups (rows),
            else no hold-out and the last epoch is kept.
        alphas: ridge penalties tried by cross-validation over groups (rows); None = 1e-3 ... 1e3.
        device: torch device for the network (``"cpu"``, ``"cuda"``).
        num_threads: torch CPU threads while fitting and scoring (restored afterwards); the network is so
            small that more threads mostly add synchronisation, and on a busy machine oversubscription makes
            training several times slower. None leaves torch's setting alone.
        random_state: int seed for the split, the initialisation and the batch order (None reads as 0, as
            everywhere in vlselect); the same seed on the same data gives the same scores.

    Attributes:
        feature_spec_: the fitted :class:`~selector.features.FeatureSpec`.
        network_: the trained torch module (``model="attention"``).
        coef_, intercept_, alpha_: ridge coefficients over the flat features, intercept and chosen penalty
            (``model="ridge"``).
        label_mean_, label_std_: the labels' mean and standard deviation (the network trains on z-scores).
        mode_: ``"row"`` or ``"set"``.
        best_epoch_: the epoch whose weights were kept (1-based; network only).
        history_: per-epoch ``{"epoch", "train_loss", "val_loss"}`` (network only).
        validation_: held-out ``{"loss", "spearman", "n"}`` on the held-out groups (rows): for the network, of
            the kept epoch; for ridge, before its final refit on every labelled group (row).
        n_features_in_: number of feature columns read.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = {"id": [str(i) for i in range(200)], "score_a": rng.normal(size=200)}
        >>> y = 2 * np.asarray(X["score_a"]) + rng.normal(scale=0.1, size=200)
        >>> sel = LearnedSelector(model="ridge", budget=10).fit(X, y)
        >>> int(sel.predict(X).sum())
        10
    """

    def __init__(
        self,
        model: str = "attention",
        budget: int | float | None = None,
        *,
        score_columns: Sequence[str] | None = None,
        embedding_columns: Sequence[str] | None = None,
        n_components: int = 6,
        clip_std: float = 6.0,
        d_model: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        max_epochs: int = 300,
        patience: int = 40,
        batch_size: int | None = None,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-4,
        validation_fraction: float = 0.2,
        alphas: Sequence[float] | None = None,
        device: str = "cpu",
        num_threads: int | None = 1,
        random_state: int | None = 0,
    ):
        self.model = model
        self.budget = budget
        self.score_columns = score_columns
        self.embedding_columns = embedding_columns
        self.n_components = n_components
        self.clip_std = clip_std
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.alphas = alphas
        self.device = device
        self.num_threads = num_threads
        self.random_state = random_state

    def set_params(self, **params: Any) -> LearnedSelector:
        """scikit-learn's ``set_params``; an unknown name is a :class:`ConfigError` (a ``ValueError``)."""
        try:
            return super().set_params(**params)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _validate_params(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if int(self.n_components) < 1:
            raise ConfigError(f"n_components must be >= 1, got {self.n_components}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.max_epochs < 1 or (self.batch_size is not None and self.batch_size < 1) or self.patience < 1:
            raise ConfigError("max_epochs, batch_size and patience must be >= 1")
        if not self.clip_std > 0:
            raise ConfigError(f"clip_std must be > 0, got {self.clip_std}")
        check_seed(self.random_state)
        if self.budget is not None:
            parse_budget(self.budget)

    def fit(self, X: Any, y: Sequence[float], groups: Sequence[Any] | None = None) -> LearnedSelector:
        """Fit the feature spec on every usable row of ``X`` and the model on the labelled rows.

        Args:
            X: the scored pool (``datasets.Dataset``, DataFrame or mapping of columns).
            y: one label per row of ``X``; NaN marks an unlabelled row (it still shapes the features).
                Higher means better.
            groups: None for per-row labels; else one group key per row (None for unlabelled rows), and the
                label must be the same on every row of a group (set-level labels).

        Returns:
            self

        Raises:
            ConfigError: invalid constructor parameters.
            DataError: lengths differ, no labelled usable row, labels constant, or a group's label varies.
        """
        self._validate_params()
        table = FeatureTable(X)
        y = np.asarray(y, dtype=np.float64).ravel()
        if len(y) != len(table):
            raise DataError(f"y has {len(y)} values for {len(table)} rows")
        if groups is not None:
            groups = np.asarray([None if g is None else str(g) for g in groups], dtype=object)
            if len(groups) != len(table):
                raise DataError(f"groups has {len(groups)} values for {len(table)} rows")
        # Every step that depends on row order (statistics, PCA, the split, ridge folds, batch order) sees the
        # rows in stable-hash order of their ids, so a permuted input gives exactly the same selector.
        pool = np.flatnonzero(~table.error_mask())
        pool = pool[hash_order(table.ids()[pool])]
        if pool.size == 0:
            raise DataError("every row has `error` set; nothing to fit on")
        spec = FeatureSpec.fit(
            table,
            score_columns=self.score_columns,
            embedding_columns=self.embedding_columns,
            n_components=self.n_components,
            clip_std=self.clip_std,
            rows=pool,
        )
        scores, embeddings, usable = spec.transform(table)
        labelled = usable & np.isfinite(y)
        if groups is not None:
            labelled &= np.array([g is not None for g in groups])
        n_skipped = int((np.isfinite(y) & ~usable).sum())
        if n_skipped:
            logger.warning("%d labelled rows have `error` set or no feature; left out of training", n_skipped)
        rows = pool[labelled[pool]]
        if rows.size < 2:
            raise DataError(f"need at least 2 labelled usable rows, got {rows.size}")

        if groups is None:
            self.mode_ = "row"
            unit_of_row = np.arange(rows.size)
            unit_labels = y[rows]
        else:
            self.mode_ = "set"
            keys, first, unit_of_row = np.unique(groups[rows].astype(str), return_index=True, return_inverse=True)
            unit_labels = y[rows][first]
            varying = ~np.isclose(y[rows], unit_labels[unit_of_row], rtol=1e-6, atol=1e-9)
            if varying.any():
                bad = keys[unit_of_row[np.argmax(varying)]]
                raise DataError(f"group {bad!r} has different labels; set-level labels are one per group")
            if len(keys) < 2:
                raise DataError("set-level training needs at least 2 labelled groups")
        self.label_mean_ = float(unit_labels.mean())
        self.label_std_ = float(unit_labels.std())
        if not self.label_std_ > 0:
            raise DataError("all labels are equal; there is nothing to learn")
        self.feature_spec_ = spec
        self.n_features_in_ = len(spec.columns)
        self.n_train_rows_ = int(rows.size)
        self.n_units_ = int(len(unit_labels))
        z = (unit_labels - self.label_mean_) / self.label_std_
        # one seed for the split, the ridge folds, the initialisation and the batch order.
        seed = int(np.random.SeedSequence(check_seed(self.random_state)).generate_state(1)[0])
        train_units, val_units = self._split(len(unit_labels), seed)
        if self.model == "ridge":
            flat = np.concatenate([scores, *embeddings], axis=1).astype(np.float64)[rows]
            self._fit_ridge(flat, unit_of_row, z, train_units, val_units, seed)
        else:
            feats = (scores[rows], [e[rows] for e in embeddings])
            self._fit_network(feats, unit_of_row, z, train_units, val_units, seed)
        logger.info(
            "fitted %s selector (%s mode) on %d rows / %d %s; held-out spearman %s",
            self.model, self.mode_, rows.size, len(unit_labels), "groups" if self.mode_ == "set" else "rows",
            _fmt(self.validation_["spearman"]),
        )  # fmt: skip
        return self

    def _split(self, n_units: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        n_val = resolve_budget(self.validation_fraction, n_units) if self.validation_fraction > 0 else 0
        if n_units < 5 or n_val < 1:
            if self.validation_fraction > 0:
                logger.warning("only %d labelled units: no held-out split, the last epoch is kept", n_units)
            return np.arange(n_units), np.arange(0)
        order = np.random.default_rng(seed).permutation(n_units)
        return np.sort(order[n_val:]), np.sort(order[:n_val])

    def _fit_ridge(self, flat, unit_of_row, z, train_units, val_units, seed) -> None:
        n_units = len(z)
        # per-unit mean features: the identity in per-row mode, group means in set mode.
        counts = np.bincount(unit_of_row, minlength=n_units).astype(np.float64)
        means = np.zeros((n_units, flat.shape[1]))
        np.add.at(means, unit_of_row, flat)
        means /= counts[:, None]
        alphas = tuple(self.alphas) if self.alphas is not None else _RIDGE_ALPHAS
        if len(alphas) == 1:
            alpha = float(alphas[0])
        else:
            alpha = _ridge_cv(means[train_units], z[train_units], alphas, seed)
        coef, intercept = _ridge(means[train_units], z[train_units], alpha)
        self.alpha_ = alpha
        self.coef_ = coef * self.label_std_
        self.intercept_ = float(intercept * self.label_std_ + self.label_mean_)
        self.validation_ = _validation(means[val_units] @ coef + intercept, z[val_units])
        if len(val_units):
            # the hold-out only measured the model; the final ridge uses every labelled unit.
            coef, intercept = _ridge(means, z, alpha)
            self.coef_ = coef * self.label_std_
            self.intercept_ = float(intercept * self.label_std_ + self.label_mean_)

    def _fit_network(self, feats, unit_of_row, z, train_units, val_units, seed) -> None:
        with _torch_threads(self.num_threads):
            self._train_network(feats, unit_of_row, z, train_units, val_units, seed)

    def _train_network(self, feats, unit_of_row, z, train_units, val_units, seed) -> None:
        import torch

        from selector.logs import progress

        device = torch.device(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = _build_network(
                feats[0].shape[1], self.feature_spec_.n_components, self.d_model, self.n_heads, self.n_layers
            ).to(device)
        scores = torch.as_tensor(feats[0], device=device)
        embeddings = [torch.as_tensor(e, device=device) for e in feats[1]]
        target = torch.as_tensor(z, dtype=torch.float32, device=device)
        by_unit = np.argsort(unit_of_row, kind="stable")
        rows_of_unit = np.split(by_unit, np.cumsum(np.bincount(unit_of_row, minlength=len(z)))[:-1])
        optimizer = torch.optim.AdamW(network.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        rng = np.random.default_rng(seed)
        batch_size = self.batch_size or (16 if self.mode_ == "set" else 256)

        def unit_means(units: np.ndarray):
            rows = np.concatenate([rows_of_unit[u] for u in units])
            rows_t = torch.as_tensor(rows, device=device)
            out = network(scores[rows_t], [e[rows_t] for e in embeddings])
            # scatter-mean of row scores into their units: set mode averages a group, row mode is the identity.
            local = torch.as_tensor(np.searchsorted(units, unit_of_row[rows]), device=device)
            sums = torch.zeros(len(units), device=device).index_add(0, local, out)
            counts = torch.zeros(len(units), device=device).index_add(0, local, torch.ones_like(out))
            return sums / counts

        def evaluate(units: np.ndarray) -> tuple[float, np.ndarray]:
            network.eval()
            with torch.inference_mode():
                pred = unit_means(units).cpu().numpy()
            network.train()
            return float(np.mean((pred - z[units]) ** 2)), pred

        has_val = len(val_units) > 0
        best = (math.inf, 0, copy.deepcopy(network.state_dict()))
        history = []
        stale = 0
        network.train()
        # disable=None: a bar on a terminal, silent in logs and tests.
        epochs = progress(range(1, self.max_epochs + 1), desc="training selector", unit="epoch", disable=None)
        for epoch in epochs:
            order = train_units[rng.permutation(len(train_units))]
            total = 0.0
            for start in range(0, len(order), batch_size):
                units = np.sort(order[start : start + batch_size])
                loss = torch.mean((unit_means(units) - target[torch.as_tensor(units, device=device)]) ** 2)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(units)
            train_loss = total / len(order)
            val_loss = evaluate(val_units)[0] if has_val else train_loss
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss if has_val else None})
            epochs.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}" if has_val else "-")
            if val_loss < best[0] - 1e-6 or not has_val:
                best = (val_loss, epoch, copy.deepcopy(network.state_dict()))
                stale = 0
            else:
                stale += 1
                if stale >= self.patience:
                    break
        epochs.close()
        network.load_state_dict(best[2])
        network.eval()
        self.network_ = network
        self.best_epoch_ = best[1]
        self.history_ = history
        self.validation_ = _validation(evaluate(val_units)[1], z[val_units]) if has_val else _validation(None, None)

    def _check_fitted(self) -> None:
        if not hasattr(self, "feature_spec_"):
            raise VLSelectError("this LearnedSelector is not fitted; call fit() or from_pretrained() first")

    def score_samples(self, X: Any, *, batch_size: int = 8192) -> np.ndarray:
        """Predicted quality of each row.

        Returns:
            float64 array (n,): in the units of the training labels, higher is better; NaN for rows with
            ``error`` set or with none of the selector's features present.

        Raises:
            DataError: ``X`` lacks a column the selector was trained on (the message lists them all).
        """
        self._check_fitted()
        table = FeatureTable(X)
        out = np.full(len(table), np.nan)
        if self.model == "ridge":
            flat, usable = self.feature_spec_.flat(table)
            out[usable] = flat[usable] @ self.coef_ + self.intercept_
            return out
        import torch

        scores, embeddings, usable = self.feature_spec_.transform(table)
        rows = np.flatnonzero(usable)
        device = next(self.network_.parameters()).device
        pieces = []
        self.network_.eval()
        with _torch_threads(self.num_threads), torch.inference_mode():
            for start in range(0, rows.size, batch_size):
                idx = rows[start : start + batch_size]
                s = torch.as_tensor(scores[idx], device=device)
                e = [torch.as_tensor(m[idx], device=device) for m in embeddings]
                pieces.append(self.network_(s, e).double().cpu().numpy())
        if pieces:
            out[rows] = np.concatenate(pieces) * self.label_std_ + self.label_mean_
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Boolean mask of the ``budget`` best rows by :meth:`score_samples` (ties by ``id``, NaN never).

        ``budget`` follows the row rules of :func:`selector.rows.resolve_budget` (a fraction of the rows of
        ``X`` rounds half up).
        """
        scores = self.score_samples(X)
        return top_budget(scores, FeatureTable(X).ids(), self.budget)

    def _config(self) -> dict[str, Any]:
        from selector import __version__

        params = self.get_params()
        params["score_columns"] = list(self.feature_spec_.score_columns)
        params["embedding_columns"] = list(self.feature_spec_.embedding_columns)
        params["alphas"] = None if self.alphas is None else [float(a) for a in self.alphas]
        fitted = {
            "mode": self.mode_,
            "label_mean": self.label_mean_,
            "label_std": self.label_std_,
            "n_train_rows": self.n_train_rows_,
            "n_units": self.n_units_,
            "validation": self.validation_,
        }
        if self.model == "ridge":
            fitted["alpha"] = self.alpha_
            fitted["intercept"] = self.intercept_
        else:
            fitted["best_epoch"] = self.best_epoch_
            fitted["n_epochs_run"] = len(self.history_)
        return {
            "format": "vlselect-learned-selector",
            "format_version": FORMAT_VERSION,
            "vlselect_version": __version__,
            "params": params,
            "feature_spec": self.feature_spec_.to_json(),
            "metrics": self.feature_spec_.metrics,
            "required_columns": self.feature_spec_.columns,
            "fitted": fitted,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, *, repo_id: str | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card to a folder.

        Args:
            save_directory: the folder (created if needed; files in it are replaced).
            repo_id: the name the card's usage examples load the selector by; default the folder path.

        Returns:
            The folder's path.
        """
        from safetensors.numpy import save

        from selector.card import model_card

        self._check_fitted()
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = self.feature_spec_.tensors()
        if self.model == "ridge":
            tensors["ridge.coef"] = np.asarray(self.coef_, dtype=np.float64)
        else:
            for name, value in self.network_.state_dict().items():
                tensors[f"network.{name}"] = value.detach().cpu().numpy()
        config = redact(self._config())  # the metrics' configurations may carry credentials (a judge's extra_body)
        atomic_write_bytes(out / WEIGHTS_NAME, save(tensors, metadata={"format": "vlselect-learned-selector"}))
        write_json(out / CONFIG_NAME, config)
        atomic_write_text(out / CARD_NAME, model_card(config, repo_id or str(out)))
        return out

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, revision: str | None = None, device: str | None = None
    ) -> LearnedSelector:
        """Load a selector saved by :meth:`save_pretrained` from a folder or a Hugging Face Hub model id.

        Args:
            name_or_path: a local folder, or a Hub repository id (downloaded with ``snapshot_download``).
            revision: Hub branch, tag or commit (ignored for local folders).
            device: torch device for the network; default the saved ``device`` falling back to CPU.

        Raises:
            VLSelectError: the folder or Hub repository does not hold a vlselect selector, or can't be fetched.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            text = str(name_or_path)
            if path.exists() or path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1:
                raise VLSelectError(f"selector folder not found: {name_or_path}")
            path = _download(text, revision)
        config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not config_file.is_file() or not weights_file.is_file():
            raise VLSelectError(f"{name_or_path} is not a vlselect selector (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        config = read_json(config_file)
        if not isinstance(config, dict) or config.get("format") != "vlselect-learned-selector":
            raise VLSelectError(f"{config_file} is not a vlselect selector config")
        version = config.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise VLSelectError(f"{config_file}: format_version must be an integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise VLSelectError(f"{name_or_path} was saved by a newer vlselect; upgrade vlselect to load it")
        # a damaged or hand-edited folder (missing keys, wrong types, weights of another shape) is one line, not a
        # traceback from deep inside the restore.
        try:
            tensors = load_file(str(weights_file))
            params = dict(config["params"])
            if device is not None:
                params["device"] = device
            accepted = set(cls().get_params(deep=False))
            selector = cls(**{k: v for k, v in params.items() if k in accepted})
            # format version 1 stored the feature spec under "recipe".
            spec = config["feature_spec"] if "feature_spec" in config else config["recipe"]
            selector.feature_spec_ = FeatureSpec.from_json(spec, tensors)
            fitted = config["fitted"]
            selector.mode_ = fitted["mode"]
            selector.label_mean_ = float(fitted["label_mean"])
            selector.label_std_ = float(fitted["label_std"])
            selector.n_train_rows_ = int(fitted["n_train_rows"])
            selector.n_units_ = int(fitted["n_units"])
            selector.validation_ = fitted["validation"]
            selector.n_features_in_ = len(selector.feature_spec_.columns)
            if selector.model == "ridge":
                selector.coef_ = tensors["ridge.coef"]
                selector.alpha_ = float(fitted["alpha"])
                selector.intercept_ = float(fitted["intercept"])
            else:
                import torch

                network = _build_network(
                    len(selector.feature_spec_.score_columns),
                    selector.feature_spec_.n_components,
                    selector.d_model,
                    selector.n_heads,
                    selector.n_layers,
                )
                state = {
                    k[len("network.") :]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith("network.")
                }
                network.load_state_dict(state)
                target = params.get("device", "cpu")
                if str(target).startswith("cuda") and not torch.cuda.is_available():
                    logger.warning("selector saved for %s; CUDA is not available, using CPU", target)
                    target = "cpu"
                selector.network_ = network.to(target).eval()
                selector.best_epoch_ = int(fitted["best_epoch"])
                selector.history_ = []
        except VLSelectError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, SafetensorError) as exc:
            raise VLSelectError(
                f"{name_or_path} is not a loadable vlselect selector ({type(exc).__name__}: {exc})"[:500]
            ) from None
        return selector

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload vlselect learned selector",
        revision: str | None = None,
    ) -> str:
        """Upload the saved selector (weights, config and model card) to a Hub model repository.

        Returns:
            The URL of the commit.
        """
        import tempfile

        from huggingface_hub import HfApi

        self._check_fitted()
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="vlselect-selector-") as tmp:
            self.save_pretrained(tmp, repo_id=repo_id)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                repo_type="model",
                commit_message=commit_message,
                revision=revision,
            )
        return str(getattr(info, "commit_url", info))


def top_budget(scores: np.ndarray, ids: Sequence[str], budget: int | float | None) -> np.ndarray:
    """Mask of the ``budget`` highest finite scores; ties broken by ascending ``id``; NaN never selected.

    ``budget`` is anything :func:`selector.rows.resolve_budget` reads: a count (``200``, ``200.0``), a fraction
    in (0, 1] of ``len(scores)`` rounded half up, or a percent string. With fewer finite scores than the
    budget, every finite row is selected and a warning is logged.

    Raises:
        ConfigError: ``budget`` is None, 0 or below, or not a budget.
    """
    n = len(scores)
    if budget is None:
        raise ConfigError("set budget (a row count, or a fraction in (0, 1]) to select rows")
    count = resolve_budget(budget, n)
    finite = np.isfinite(scores)
    if count > finite.sum():
        logger.warning("budget %d exceeds the %d rows with a score; selecting all of them", count, finite.sum())
        count = int(finite.sum())
    order = np.lexsort((id_ranks(ids), -np.where(finite, scores, -np.inf), ~finite))
    mask = np.zeros(n, dtype=bool)
    mask[order[:count]] = True
    return mask


@contextlib.contextmanager
def _torch_threads(n: int | None):
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _ridge(X: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge with an unpenalised intercept, closed form."""
    mean_x, mean_y = X.mean(axis=0), y.mean()
    Xc = X - mean_x
    coef = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ (y - mean_y))
    return coef, float(mean_y - mean_x @ coef)


def _ridge_cv(X: np.ndarray, y: np.ndarray, alphas: Sequence[float], seed: int) -> float:
    """Penalty with the lowest 5-fold (or leave-one-out when small) squared error."""
    n = len(y)
    n_folds = min(5, n)
    if n_folds < 2:
        return float(alphas[len(alphas) // 2])
    folds = np.random.default_rng(seed).permutation(n) % n_folds
    errors = []
    for alpha in alphas:
        err = 0.0
        for f in range(n_folds):
            train, test = folds != f, folds == f
            coef, intercept = _ridge(X[train], y[train], alpha)
            err += float(np.sum((X[test] @ coef + intercept - y[test]) ** 2))
        errors.append(err)
    return float(alphas[int(np.argmin(errors))])


def _validation(pred: np.ndarray | None, target: np.ndarray | None) -> dict[str, float | int | None]:
    """Held-out loss (MSE on z-scored labels) and Spearman correlation; None when nothing was held out."""
    if pred is None or len(pred) == 0:
        return {"loss": None, "spearman": None, "n": 0}
    from scipy.stats import spearmanr

    rho = float(spearmanr(pred, target).statistic) if len(pred) > 2 else float("nan")
    # None, not NaN, so config.json stays strict JSON (constant predictions give a NaN correlation).
    rho = rho if math.isfinite(rho) else None
    return {"loss": float(np.mean((pred - target) ** 2)), "spearman": rho, "n": int(len(pred))}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(
            snapshot_download(
                repo_id, revision=revision, repo_type="model", allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]
            )
        )
    except HFValidationError as exc:
        raise VLSelectError(f"{repo_id} is neither a local folder nor a valid Hub model id") from exc
    except (OSError, ValueError) as exc:
        # huggingface_hub raises OSError subclasses (offline, 404, gated) with a readable message.
        raise VLSelectError(f"could not load selector {repo_id!r} from the Hub: {exc}") from exc
