"""``diversity``: spectral clusters of an embedding column, for diverse selection (InstructionGPT-4).

InstructionGPT-4 (Wei et al. 2023) spectral-clusters the multimodal embeddings of the pool into 10 clusters and
takes each cluster's share of the budget, so the subset covers every kind of sample. This dataset-level metric
writes those clusters (``cluster_<name>``) and each row's distance to its cluster centre (``score_<name>``);
``vlselect select --strategy instructiongpt4`` reads a ``cluster_*`` column when given one.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np

from metrics.base import DatasetMetric, split_columns

logger = logging.getLogger(__name__)


class Diversity(DatasetMetric):
    """Spectral clustering of one embedding column, or of several concatenated (image + text).

    Columns:

    - ``cluster_<name>`` (int64): cluster of the row in ``[0, n_clusters)``, numbered by decreasing size (ties:
      the cluster holding the row with the smallest id hash first); ``-1`` where the row has ``error`` set or
      any of its embeddings is missing (NaN).
    - ``score_<name>`` (float32): cosine distance from the row's embedding to its cluster's centre (the
      normalised mean of the cluster's embeddings), in ``[0, 2]``; low = typical of its cluster, high = unusual.
      It is a prototypicality measure, not a quality judgement (``higher_is_better`` is False: ranking by it
      puts the most typical rows first). NaN where ``cluster_<name>`` is ``-1``.

    With several embedding columns each is L2-normalised and they are concatenated with equal weight, so the
    image and the text count the same whatever their dimensions. Clustering runs on the rows ordered by a
    stable hash of ``id`` and the clusters are numbered canonically, so a permuted pool gets the same columns
    (permuted) and the same ``random_state`` the same clusters.

    Args:
        name: instance name: columns ``cluster_<name>`` and ``score_<name>``.
        embedding_column: an ``emb_*`` column, or a list (or comma-separated string) of them to concatenate.
            The default is the column of the default ``embedding`` metric.
        n_clusters: clusters (10, as in InstructionGPT-4); lowered to the number of usable rows when the pool
            is smaller.
        n_neighbors: neighbours per row in the spectral affinity graph.
        knn: nearest-neighbour search of :class:`selector.spectral.SpectralClustering` (``auto``, ``exact``,
            ``ivf``, ``hnsw``, ``pynndescent``).
        eigen_solver: ``auto`` (LOBPCG + AMG when pyamg is installed, else ARPACK), ``lobpcg`` or ``arpack``.
        random_state: seed of the clustering.

    Example:
        >>> import numpy as np
        >>> from metrics import get_metric
        >>> rng = np.random.default_rng(0)
        >>> emb = np.concatenate([rng.normal(c, 0.05, size=(20, 4)) for c in np.eye(4)]).astype("float32")
        >>> div = get_metric("diversity", embedding_column="emb_clip", n_clusters=4)
        >>> out = div.fit_transform({"id": np.arange(80).astype(str).astype(object),
        ...                          "error": np.full(80, None, dtype=object), "emb_clip": emb})
        >>> sorted(np.bincount(out["cluster_diversity"]).tolist())
        [20, 20, 20, 20]
    """

    higher_is_better: ClassVar[bool] = False

    def __init__(
        self,
        name: str = "diversity",
        embedding_column: str | list[str] = "emb_embedding",
        n_clusters: int = 10,
        n_neighbors: int = 10,
        knn: str = "auto",
        eigen_solver: str = "auto",
        random_state: int = 0,
    ):
        self.name = name
        self.embedding_column = embedding_column
        self.n_clusters = n_clusters
        self.n_neighbors = n_neighbors
        self.knn = knn
        self.eigen_solver = eigen_solver
        self.random_state = random_state

    def embedding_columns(self) -> list[str]:
        """The embedding column(s) to cluster, as a list."""
        from selector.errors import ConfigError

        spec = self.embedding_column
        names = split_columns(spec)
        if not names or not all(isinstance(c, str) for c in names):
            raise ConfigError(f"embedding_column must name one or more embedding columns, got {spec!r}")
        if len(set(names)) != len(names):
            raise ConfigError(f"embedding_column lists a column twice: {names}")
        return names

    def cluster_column(self) -> str:
        """``cluster_<name>``: the integer cluster column."""
        self.column()  # validates the name
        return f"cluster_{self.name}"

    def fit_columns(self) -> list[str]:
        return ["id", "error", *self.embedding_columns()]

    def output_columns(self) -> list[str]:
        return [self.cluster_column(), self.column()]

    def _features(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(usable row mask (n,), L2-normalised concatenated embeddings of the usable rows)."""
        from metrics.base import usable_embeddings

        usable, parts = usable_embeddings(columns, self.embedding_columns(), f"diversity metric {self.name!r}")
        blocks = [p[usable] / np.linalg.norm(p[usable], axis=1, keepdims=True) for p in parts]
        feats = np.concatenate(blocks, axis=1) / np.float32(np.sqrt(len(blocks)))
        return usable, np.ascontiguousarray(feats, dtype=np.float32)

    def _validate(self) -> None:
        from selector.errors import ConfigError

        self.output_columns()  # checks the name: it names the columns
        for param in ("n_clusters", "n_neighbors"):
            value = getattr(self, param)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"diversity {param} must be a positive integer, got {value!r}")
        if self.n_neighbors < 2:
            raise ConfigError(f"diversity n_neighbors must be >= 2, got {self.n_neighbors}")

    def fit(self, columns: dict[str, np.ndarray]) -> Diversity:
        """Cluster the usable rows; sets ``cluster_centers_`` (unit vectors), ``n_clusters_``, ``cluster_sizes_``
        and ``n_unusable_`` (rows with an error or a missing embedding)."""
        self._fit_labels(columns)
        return self

    def _fit_labels(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from selector.rows import hash_order
        from selector.spectral import SpectralClustering

        self._validate()
        usable, feats = self._features(columns)
        n = usable.size
        m = feats.shape[0]
        self.n_unusable_ = int(n - m)
        if self.n_unusable_:
            logger.info("diversity %r: %d of %d rows have an error or no embedding: cluster -1", self.name, n - m, n)
        k = min(int(self.n_clusters), m)
        if k < self.n_clusters:
            logger.warning(
                "diversity %r: only %d usable rows for %d clusters; using %d", self.name, m, self.n_clusters, k
            )
        labels = np.full(n, -1, dtype=np.int64)
        if m == 0:
            self.n_clusters_ = 0
            self.cluster_sizes_ = np.zeros(0, dtype=np.int64)
            self.cluster_centers_ = np.zeros((0, feats.shape[1]), dtype=np.float32)
            return usable, feats, labels
        ids = columns.get("id")
        rows = np.flatnonzero(usable)
        if ids is not None:
            # Cluster in stable-hash order of id: a permuted pool then gives the same clusters.
            order = hash_order(np.asarray(ids, dtype=object)[rows])
        else:
            order = np.arange(m)
        sc = SpectralClustering(
            n_clusters=k,
            n_neighbors=min(int(self.n_neighbors), m),
            metric="cosine",
            knn=self.knn,
            eigen_solver=self.eigen_solver,
            random_state=self.random_state,
        )
        raw = np.empty(m, dtype=np.int64)
        raw[order] = sc.fit(feats[order]).labels_
        # Canonical numbering: by decreasing size, ties by the cluster's first row in hash order.
        sizes = np.bincount(raw, minlength=k)
        first = np.full(k, m, dtype=np.int64)
        np.minimum.at(first, raw[order], np.arange(m))
        canon = np.lexsort((first, -sizes))
        relabel = np.empty(k, dtype=np.int64)
        relabel[canon] = np.arange(k)
        raw = relabel[raw]
        labels[rows] = raw
        from selector.cluster import cluster_centers

        self.cluster_centers_ = cluster_centers(feats, raw, k)
        self.cluster_sizes_ = np.bincount(raw, minlength=k)
        self.n_clusters_ = k
        return usable, feats, labels

    def _distances(self, feats: np.ndarray, labels: np.ndarray, usable: np.ndarray) -> np.ndarray:
        score = np.full(usable.size, np.nan, dtype=np.float32)
        if feats.shape[0]:
            centres = self.cluster_centers_[labels[usable]]
            cos = np.einsum("ij,ij->i", feats, centres)
            score[usable] = np.clip(1.0 - cos, 0.0, 2.0)
        return score

    def transform(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Assign rows to the nearest fitted cluster centre (cosine) and score their distance to it.

        Spectral clusters have no exact out-of-sample rule; nearest centre is the usual approximation.
        :meth:`fit_transform` returns the spectral clusters themselves.
        """
        from selector.errors import ConfigError

        if not hasattr(self, "cluster_centers_"):
            raise ConfigError(f"diversity metric {self.name!r} is not fitted; call fit_transform(columns)")
        self._validate()
        usable, feats = self._features(columns)
        if feats.shape[1] != self.cluster_centers_.shape[1]:
            from selector.errors import DataError

            raise DataError(
                f"embeddings have {feats.shape[1]} dimensions, the fitted clusters {self.cluster_centers_.shape[1]}"
            )
        labels = np.full(usable.size, -1, dtype=np.int64)
        if feats.shape[0] and self.n_clusters_:
            labels[usable] = np.argmax(feats @ self.cluster_centers_.T, axis=1)
        else:
            usable = np.zeros_like(usable)
            feats = feats[:0]
        return {self.cluster_column(): labels, self.column(): self._distances(feats, labels, usable)}

    def fit_transform(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Spectral-cluster the pool; returns ``{cluster_<name>: int64 (n,), score_<name>: float32 (n,)}``."""
        usable, feats, labels = self._fit_labels(columns)
        return {self.cluster_column(): labels, self.column(): self._distances(feats, labels, usable)}

    def report(self, columns: dict[str, np.ndarray]) -> dict:
        labels = np.asarray(columns.get(self.cluster_column(), []))
        used = labels[labels >= 0]
        return {
            "n_clusters": int(used.max()) + 1 if used.size else 0,
            "cluster_sizes": np.bincount(used).tolist() if used.size else [],
            "n_unclustered": int((labels < 0).sum()),
        }
