"""The metric plugin protocol: what a metric is, what it returns, and how it loads its model.

There are two kinds of metrics. A plugin may be both (``length`` is a row metric with a pool-level part).

**Row metrics** subclass :class:`Metric` and score each row on its own::

    class MyMetric(Metric):
        higher_is_better = True

        def __init__(self, name: str = "mine", threshold: float = 0.5):   # store arguments, nothing else
            self.name = name
            self.threshold = threshold

        def required_columns(self) -> list[str]:       # canonical columns the metric reads
            return ["id", "messages", "error"]

        def output_columns(self) -> list[str]:         # every column score_batch returns
            return [self.column()]                      # -> ["score_mine"]

        def score_batch(self, batch, *, rank=None):    # batch: {column: list} of n rows
            ...
            return {"score_mine": np.ndarray float32 (n,)}

- ``score_batch(batch, *, rank=None) -> dict[str, np.ndarray]`` gets a column batch as
  ``Dataset.map(batched=True)`` gives it and returns ``float32`` arrays with one entry per row.
- ``metric(batch, rank)`` (``__call__``) is the same and plugs straight into
  ``ds.map(metric, batched=True, with_rank=True)``.
- **Column naming**: a scalar metric returns ``score_<name>`` plus optional parts ``score_<name>_<part>``
  (:meth:`Metric.column`); an embedding metric (``kind = "embedding"``) returns ``emb_<name>`` of shape
  ``(n, d)``, L2-normalised (:meth:`Metric.column` gives that name too). ``name`` is the instance name: the
  registry key by default, so two instances of one plugin coexist (``embedding(name="dinov2")`` and
  ``embedding(name="minilm")`` give ``emb_dinov2`` and ``emb_minilm``).
- **NaN** (a NaN vector for embeddings) exactly where the metric's own inputs are missing, where the row has
  ``error`` set, or where the model failed on that row (counted in ``self._n_failed`` and logged with the
  row id). Never raise for one bad row, never drop a row.

**Dataset-level metrics** subclass :class:`DatasetMetric` (scikit-learn style estimators) and run after the
row metrics, on whole columns of the scored pool::

    class Diversity(DatasetMetric):
        def __init__(self, name="diversity", embedding_column="emb_clip", n_clusters=10, random_state=0): ...
        def fit_columns(self) -> list[str]:       # columns the scorer loads as numpy arrays
            return ["id", "error", self.embedding_column]
        def output_columns(self) -> list[str]:
            return [self.column()]
        def fit(self, columns): ...; return self  # fitted attributes end in "_"
        def transform(self, columns) -> dict[str, np.ndarray]: ...

- ``fit_transform(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]``: ``columns`` maps each name of
  :meth:`DatasetMetric.fit_columns` to an array over the whole pool (``error`` as an object array of
  str/None, embeddings as ``(n, d)`` float32); the result maps each output column to an array of length n.
- A row metric with a pool-level part (like ``length``) defines ``fit_columns`` and ``fit_transform`` as
  well; :func:`is_dataset_metric` tells the scorer to run that part after all row metrics.

**Construction** stores names and options only (``model_name_or_path``, ``revision``, ``device``,
``dtype``, ``batch_size``, ``*_column``): no model loading, no I/O, no package checks. Public attributes of the
same name as the constructor arguments are the configuration (:meth:`BaseMetric.get_params`); the resolved
configuration is written to the scoring manifest.

**Declaring packages**: a metric lists the packages it needs once, in the class attribute ``requires``, a tuple
of :class:`Requirement`. The base class checks them when the metric is constructed, before the subclass's
``__init__`` runs and before any heavy import (``importlib.util.find_spec`` only), and fails with a
:class:`~selector.errors.MissingDependencyError` that says what to install. A requirement that depends on the
arguments carries ``when``, a predicate over the constructor's arguments (defaults filled in)::

    class MyEncoder(ModelMetric):
        requires = (
            Requirement("torch", "the my-encoder metric", pip="torch"),            # core dependency
            Requirement("efficientnet_lite", "EfficientNet embeddings", extra="efficientnet",
                        when=lambda args: args["backend"] == "efficientnet"),     # optional extra
        )

``pip=`` names the pip package of a core dependency (message ``... needs torch: pip install torch``);
``extra=`` names the vlselect extra of an optional one (``Install vlselect[efficientnet] to use ...``). A subclass
that adds requirements lists its parent's too (``requires = (*Parent.requires, Requirement(...))``).

**Lazy loading**: :class:`ModelMetric` loads its model on the first batch, once per process, on the
device :func:`resolve_device` picks: ``device`` when given, else ``cuda:{rank % n_gpus}`` when CUDA exists
(``rank`` comes from ``Dataset.map(with_rank=True)``), else CPU. Subclasses implement ``_load(device,
torch_dtype)`` and call ``self._ensure_loaded(rank)`` at the top of ``score_batch``.

**Optional hooks**: ``report(columns) -> dict`` adds a run summary to the scoring manifest (``reward``
reports how many pairs were truncated); ``release()`` drops the loaded model (the scorer calls it when a
metric is done).

**Pickling and fingerprints**: everything a metric computes at run time lives in attributes whose name
starts with ``_`` (loaded weights, tokenizers, counters, caches). ``__getstate__`` drops them, so a loaded
metric pickles to a few hundred bytes, worker processes never receive weights, and ``datasets`` computes the
same fingerprint for a metric before and after it has loaded its model. Keep that rule in subclasses.

Example:
    >>> from metrics import get_metric
    >>> length = get_metric("length")
    >>> out = length.score_batch({"id": ["a"], "error": [None],
    ...     "messages": [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]]})
    >>> out["score_length"].tolist(), out["score_length_words"].tolist()
    ([11.0], [2.0])
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Requirement:
    """A package a metric needs, checked when the metric is constructed (see "Declaring packages" above).

    Attributes:
        module: the importable top-level module (``"sentence_transformers"``).
        feature: what needs it, for the message (``"sentence-transformers embeddings"``).
        pip: the pip package of a core dependency (a broken install); default ``module``.
        extra: the vlselect extra that installs an optional dependency; when set, the message names the extra.
        when: None (always needed), or a predicate over the constructor's arguments, defaults filled in
            (``lambda args: args["backend"] == "openai"``).
    """

    module: str
    feature: str
    pip: str | None = None
    extra: str | None = None
    when: Callable[[Mapping[str, Any]], bool] | None = None

    def check(self, arguments: Mapping[str, Any]) -> None:
        """Raise :class:`~selector.errors.MissingDependencyError` when needed for ``arguments`` and not installed."""
        if self.when is not None and not self.when(arguments):
            return
        if self.extra is not None:
            from selector.errors import require

            require(self.module, self.extra, self.feature)
        else:
            require_package(self.module, self.pip or self.module, self.feature)


def check_requirements(cls: type, arguments: Mapping[str, Any]) -> None:
    """Check every :class:`Requirement` of ``cls.requires`` against the constructor's ``arguments``."""
    for requirement in getattr(cls, "requires", ()):
        requirement.check(arguments)


def _checked_init(init: Callable) -> Callable:
    """Wrap a metric's ``__init__`` so that its class's ``requires`` are checked before it runs."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Only the constructor of the instance's own class checks, so a subclass calling super().__init__()
        # is checked once, with its own requirements. Unpickling does not call __init__ and checks nothing.
        if type(self).__init__ is __init__ and getattr(type(self), "requires", ()):
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                pass  # the real __init__ raises the usual error for a bad call
            else:
                bound.apply_defaults()
                arguments: dict[str, Any] = {}
                for name, value in list(bound.arguments.items())[1:]:
                    kind = signature.parameters[name].kind
                    if kind is inspect.Parameter.VAR_KEYWORD:
                        arguments.update(value)
                    elif kind is not inspect.Parameter.VAR_POSITIONAL:
                        arguments[name] = value
                check_requirements(type(self), arguments)
        init(self, *args, **kwargs)

    return __init__


class BaseMetric:
    """What row and dataset-level metrics share: name, configuration, column naming, pickling rules."""

    #: Whether a larger score means a better sample (used to rank; embeddings ignore it).
    higher_is_better: ClassVar[bool] = True
    #: ``"score"`` (``score_<name>`` columns) or ``"embedding"`` (one ``emb_<name>`` column).
    kind: ClassVar[str] = "score"
    #: Packages the metric needs, checked at construction (see "Declaring packages" in the module docstring).
    requires: ClassVar[tuple[Requirement, ...]] = ()

    name: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _checked_init(init)

    def column(self, part: str | None = None) -> str:
        """Output column name: ``score_<name>``, ``score_<name>_<part>``, or ``emb_<name>`` for embeddings."""
        _check_name(self.name)
        prefix = "emb" if self.kind == "embedding" and part is None else "score"
        return f"{prefix}_{self.name}" if part is None else f"{prefix}_{self.name}_{part}"

    def output_columns(self) -> list[str]:
        """Every column this metric writes (row part and pool part)."""
        return [self.column()]

    def report(self, columns: dict[str, np.ndarray]) -> dict[str, Any]:
        """Optional run summary for the manifest, from this metric's finished output columns (default none)."""
        return {}

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments as stored on the instance (scikit-learn's ``get_params``)."""
        return {key: getattr(self, key) for key in self._param_names() if hasattr(self, key)}

    def __getstate__(self) -> dict[str, Any]:
        # Run-time state (weights, tokenizers, counters, caches) lives in "_" attributes; dropping it keeps
        # pickles small and datasets fingerprints identical before and after the model has loaded.
        return {key: value for key, value in self.__dict__.items() if not key.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def release(self) -> None:
        """Drop loaded weights, counters and caches (the next batch loads the model again)."""
        for key in [key for key in self.__dict__ if key.startswith("_")]:
            del self.__dict__[key]

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.__getstate__() == other.__getstate__()

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, repr(sorted(self.__getstate__().items()))))

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self.get_params().items())
        return f"{type(self).__name__}({params})"


class Metric(BaseMetric):
    """A row metric: scores each row independently; see the module docstring for the protocol."""

    def required_columns(self) -> list[str]:
        """Canonical columns ``score_batch`` reads; the scorer passes only these."""
        return ["id", "messages", "error"]

    def score_batch(self, batch: dict[str, list], *, rank: int | None = None) -> dict[str, np.ndarray]:
        """Score ``n`` rows; returns ``{column: float32 array}`` with first dimension ``n``."""
        raise NotImplementedError

    def __call__(self, batch: dict[str, list], rank: int | None = None) -> dict[str, np.ndarray]:
        """``Dataset.map(metric, batched=True, with_rank=True)`` entry point; same values as ``score_batch``."""
        out = self.score_batch(batch, rank=rank)
        return {key: np.asarray(value, dtype=np.float32) for key, value in out.items()}


class DatasetMetric(BaseMetric):
    """A dataset-level metric: an estimator fitted on whole columns of the scored pool."""

    def fit_columns(self) -> list[str]:
        """Columns the scorer loads (as numpy arrays over the whole pool) and passes to :meth:`fit`."""
        raise NotImplementedError

    def fit(self, columns: dict[str, np.ndarray]) -> DatasetMetric:
        raise NotImplementedError

    def transform(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def fit_transform(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fit on the pool and return ``{column: array of length n}``."""
        return self.fit(columns).transform(columns)


def is_row_metric(metric: object) -> bool:
    """True when ``metric`` scores rows (``score_batch``)."""
    return isinstance(metric, Metric)


def is_dataset_metric(metric: object) -> bool:
    """True when ``metric`` has a pool-level part (``fit_transform`` + ``fit_columns``) the scorer must run."""
    fit_columns = getattr(type(metric), "fit_columns", None)
    return (
        callable(getattr(metric, "fit_transform", None))
        and fit_columns is not None
        and (fit_columns is not DatasetMetric.fit_columns or isinstance(metric, DatasetMetric))
    )


def _check_name(name: object) -> None:
    from selector.errors import ConfigError

    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"metric name must be letters, digits, '_' or '-' (it names columns), got {name!r}")


# --------------------------------------------------------------------------------------------------------------
# Helpers for metrics.


def error_mask(batch: dict[str, list]) -> np.ndarray:
    """Boolean ``(n,)``: rows whose ``error`` is set (they get NaN from every metric).

    ``error`` of None, NaN or ``""`` means the row is usable (:func:`selector.rows.usable_mask`).
    """
    from selector.rows import usable_mask

    n = len(next(iter(batch.values()))) if batch else 0
    errors = batch.get("error")
    return ~usable_mask(None if errors is None else errors, n)


# Text fields that :func:`batch_texts` derives from the ``messages`` column; any other field is a column name.
MESSAGE_FIELDS = ("instruction", "response", "conversation")


def text_columns(*fields: str) -> list[str]:
    """The dataset columns :func:`batch_texts` reads for ``fields``, in order without repeats: ``messages`` for
    ``instruction``/``response``/``conversation``, else the field itself (a plain string column)."""
    return list(dict.fromkeys("messages" if field in MESSAGE_FIELDS else field for field in fields))


def batch_texts(batch: dict[str, list], field: str) -> list[str | None]:
    """Per-row text of ``field``: ``"instruction"``, ``"response"``, ``"conversation"`` (all turns joined) or
    the name of a plain string column. None where the text is missing."""
    from selector.data import schema

    if field in MESSAGE_FIELDS:
        out = []
        for messages in batch["messages"]:
            if field == "instruction":
                out.append(schema.instruction(messages))
            elif field == "response":
                out.append(schema.response(messages))
            else:
                turns = [schema._TOKEN_RE.sub(" ", t["content"]).strip() for t in messages or ()]
                out.append("\n".join(turns) if turns else None)
        return out
    if field not in batch:
        from selector.errors import ConfigError

        raise ConfigError(f"text field {field!r} is neither instruction/response/conversation nor a column")
    return [value if isinstance(value, str) else None for value in batch[field]]


def split_columns(spec: Any) -> list[Any]:
    """A column option as a list: ``"emb_a, emb_b"`` (comma-separated) or a list; empty entries dropped. The
    caller checks what the list must hold."""
    names = [c.strip() for c in spec.split(",")] if isinstance(spec, str) else list(spec or ())
    return [c for c in names if c]


def usable_embeddings(columns: dict[str, Any], names: list[str], what: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """The embedding columns ``names`` of a pool as float32 ``(n, d)`` arrays, and the rows usable in all of them.

    A row is usable when its ``error`` (if the pool has that column) is unset and each of its embeddings is
    finite and non-zero (a NaN or zero vector marks a row without that input). ``what`` names the caller in
    the error for a missing column ("diversity metric 'diversity'").

    Raises:
        DataError: a column is missing, is not ``(n, d)``, or the columns differ in length.
    """
    from selector.errors import DataError
    from selector.rows import usable_mask

    missing = [c for c in names if c not in columns]
    if missing:
        raise DataError(f"{what} needs column(s) {missing}; score an embedding first")
    arrays = []
    for c in names:
        x = np.asarray(columns[c], dtype=np.float32)
        if x.ndim != 2:
            raise DataError(f"{c} must be an (n, d) embedding column, got shape {x.shape}")
        arrays.append(x)
    n = arrays[0].shape[0]
    if any(x.shape[0] != n for x in arrays):
        raise DataError(f"embedding columns {names} have different lengths")
    usable = np.ones(n, dtype=bool) if columns.get("error") is None else usable_mask(columns["error"], n)
    for x in arrays:
        norms = np.linalg.norm(x, axis=1)
        usable &= np.isfinite(norms) & (norms > 0)
    return usable, arrays


def nan_array(n: int, dim: int | None = None) -> np.ndarray:
    """A float32 NaN array of shape ``(n,)`` or ``(n, dim)``."""
    return np.full((n,) if dim is None else (n, dim), np.nan, dtype=np.float32)


def resolve_device(device: str | None, rank: int | None) -> str:
    """The torch device a process scores on.

    ``device=None`` (auto): ``cuda:{rank % n}`` with ``n`` visible GPUs (rank 0 when ``rank`` is None),
    else ``cpu``. ``device="cuda"`` is spread over the GPUs the same way; an explicit ``"cuda:1"`` or
    ``"cpu"`` is used as given.
    """
    import torch

    from selector.errors import ConfigError

    if device is not None and device != "cuda":
        try:
            parsed = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device {device!r} is not a torch device ({exc})") from None
        # checked here, not by torch deep inside a model load (an assertion or a CUDA traceback)
        if parsed.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was asked for but CUDA is not available")
        if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return device
    if torch.cuda.is_available():
        return f"cuda:{(rank or 0) % torch.cuda.device_count()}"
    if device == "cuda":
        raise ConfigError("device='cuda' was asked for but CUDA is not available")
    return "cpu"


def resolve_dtype(dtype: str, device: str):
    """``torch.dtype`` for ``dtype`` on ``device``: ``auto`` is float16 on CUDA (bfloat16 where supported is
    opt-in), float32 elsewhere; half precision on CPU is honoured when asked for explicitly."""
    import torch

    from selector.errors import ConfigError

    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class ModelMetric(Metric):
    """A row metric backed by a model that loads lazily, once per process, on the device for its rank.

    Subclasses store ``model_name_or_path``, ``revision``, ``device``, ``dtype`` and ``batch_size`` in
    ``__init__`` and implement ``_load(device, torch_dtype)``, which sets ``_``-prefixed attributes only.
    ``score_batch`` calls :meth:`_ensure_loaded` first and runs forwards under ``torch.inference_mode()``.
    """

    model_name_or_path: str
    revision: str | None = None
    device: str | None = None
    dtype: str = "auto"
    batch_size: int = 32

    def _load(self, device: str, torch_dtype) -> None:
        raise NotImplementedError

    def _ensure_loaded(self, rank: int | None = None) -> str:
        """Load the model on first use in this process (or after a fork/unpickle); returns the device."""
        if getattr(self, "_loaded_pid", None) == os.getpid():
            return self._device
        device = resolve_device(self.device, rank)
        torch_dtype = resolve_dtype(self.dtype, device)
        logger.info("loading %s for metric %r on %s (%s)", self.model_name_or_path, self.name, device, torch_dtype)
        from selector.errors import ConfigError, VLSelectError

        problem = unavailable_model(self.name, self.model_name_or_path, self.revision) if self._from_hub() else None
        if problem:  # say so without asking the Hub (offline, the libraries would only fail later, the same way)
            raise ConfigError(problem)
        try:
            self._load(device, torch_dtype)
        except VLSelectError:
            raise
        except (OSError, ValueError) as exc:
            # transformers / huggingface_hub raise OSError for a missing folder, an unknown or uncached Hub id
            # (offline) and unreadable files, ValueError for a folder that holds no model: one line that names
            # the metric and the model.
            raise ConfigError(model_load_error(self.name, self.model_name_or_path, exc)) from None
        self._device = device
        self._torch_dtype = torch_dtype
        self._loaded_pid = os.getpid()
        return device

    def _hub_kwargs(self) -> dict[str, Any]:
        return {"revision": self.revision} if self.revision else {}

    def _from_hub(self) -> bool:
        """Whether ``model_name_or_path`` is a folder or a Hub id that the libraries load: then a missing folder, or
        offline an id not in the cache, is reported before loading. False by default (a plugin may name its model
        any way); the built-in metrics that load with ``from_pretrained`` say True."""
        return False

    def _count_failure(self, row_id: object, reason: str) -> None:
        self._n_failed = getattr(self, "_n_failed", 0) + 1
        logger.warning("metric %r: row %s scored NaN: %s", self.name, row_id, reason)

    def model_ids(self) -> dict[str, str | None]:
        """``{"model_name_or_path", "revision", "resolved_revision"}`` for the manifest and dataset card.

        ``resolved_revision`` is the commit hash of the cached Hub snapshot, or None for a local folder or
        when it is not cached.
        """
        return {
            "model_name_or_path": self.model_name_or_path,
            "revision": self.revision,
            "resolved_revision": resolved_revision(self.model_name_or_path, self.revision),
        }


def _looks_local(path: str) -> bool:
    """A path no Hub id can be: absolute, ``./``, ``~`` or with more than one ``/``."""
    return os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def unavailable_model(name: str, model_name_or_path: str, revision: str | None = None) -> str | None:
    """The one-line reason a metric's model can't be loaded, found without loading or asking the Hub: a local path
    that does not exist, or (with ``HF_HUB_OFFLINE``) a Hub id that is not in the local cache; None otherwise."""
    path = os.fspath(model_name_or_path)
    if os.path.exists(os.path.expanduser(path)):
        return None
    if _looks_local(path):
        return f"metric {name!r}: model folder {path} does not exist"
    if _hub_offline() and cached_snapshot(path, revision) is None:
        return f"metric {name!r}: cannot load model {path!r} (HF_HUB_OFFLINE is set and it is not in the local cache)"
    return None


def model_load_error(name: str, model_name_or_path: str, exc: BaseException) -> str:
    """The one-line reason a metric's model could not be loaded (``exc`` is the loader's ``OSError``)."""
    path = os.fspath(model_name_or_path)
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if _looks_local(path) and not os.path.exists(os.path.expanduser(path)):
        return f"metric {name!r}: model folder {path} does not exist"
    hint = (
        " (HF_HUB_OFFLINE is set and it is not in the local cache)"
        if _hub_offline() and not os.path.exists(path)
        else ""
    )
    return f"metric {name!r}: cannot load model {path!r}{hint}: {first}"[:600]


def cached_snapshot(repo_id: str, revision: str | None = None) -> str | None:
    """The folder of the locally cached Hub snapshot of model ``repo_id`` at ``revision`` (default ``main``), read
    from the Hub cache's own layout (``models--org--name/refs/<revision>`` holds the commit, and
    ``snapshots/<commit>/`` its files): no network and no download call. None for anything that is not a valid
    repo id, or not cached."""
    import re

    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    repo = os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))
    ref = revision or "main"
    commit = ref if re.fullmatch(r"[0-9a-f]{40}", ref) else None
    if commit is None:
        try:
            with open(os.path.join(repo, "refs", ref), encoding="utf-8") as handle:
                commit = handle.read().strip()
        except OSError:
            return None
    snapshot = os.path.join(repo, "snapshots", commit)
    return snapshot if commit and os.path.isdir(snapshot) else None


def resolved_revision(model_name_or_path: str, revision: str | None = None) -> str | None:
    """Commit hash of the locally cached Hub snapshot of ``model_name_or_path`` (None for local folders and for ids
    that are not cached)."""
    if os.path.isdir(model_name_or_path):
        return None
    snapshot = cached_snapshot(model_name_or_path, revision)
    return None if snapshot is None else os.path.basename(snapshot)


def load_clip_family(model_name_or_path: str, torch_dtype, hub_kwargs: dict, *, require_features: bool = False):
    """Load a CLIP-family checkpoint (CLIP, SigLIP, ...) with ``AutoModel`` and ``AutoProcessor``.

    Returns ``(model, processor, padding)``: the model in ``torch_dtype`` (not yet moved or set to eval), its
    processor, and the ``padding`` argument its text tower expects (``"max_length"`` for SigLIP, else True).

    Raises:
        ConfigError: with ``require_features``, when the model lacks ``get_image_features`` /
            ``get_text_features`` (checked before the processor loads).
    """
    from transformers import AutoModel, AutoProcessor

    from selector.errors import ConfigError

    model = AutoModel.from_pretrained(model_name_or_path, dtype=torch_dtype, **hub_kwargs)
    if require_features and not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ConfigError(
            f"{model_name_or_path} ({type(model).__name__}) is not an image-text model with "
            "get_image_features/get_text_features (CLIP, SigLIP, ...)"
        )
    processor = AutoProcessor.from_pretrained(model_name_or_path, **hub_kwargs)
    # SigLIP was trained on texts padded to a fixed length; its text tower expects the same.
    padding = "max_length" if "siglip" in str(model.config.model_type) else True
    return model, processor, padding


def token_limit(*limits, default: int | None = None) -> int:
    """The smallest real token limit among ``limits`` (model positions, ``model_max_length``, a user cap).

    None and the huge "no limit" sentinels some tokenizers report (``model_max_length`` of 1e30) are ignored;
    ``default`` is used when nothing else is left.

    Raises:
        ValueError: no usable limit and no ``default``.
    """
    usable = [x for x in limits if isinstance(x, int) and 0 < x < 100_000]
    if not usable and default is not None:
        usable = [default]
    return min(usable)


def load_images(images: list, row_id: object, metric: ModelMetric) -> list | None:
    """Decode a row's images to RGB; None (and a counted failure) when one cannot be decoded.

    Decoding goes through :func:`selector.data.images.decode_row`: the pixel caps are checked from the headers,
    per image also at the size the loaded ``metric._image_processor`` resizes to (a 1x60000 strip would become
    224x13,440,000), and per row, before anything is decoded; any decoder failure or ``MemoryError`` is this
    row's failure, never the batch's.
    """
    from selector.data.images import ImageError, decode_row

    try:
        return decode_row(images, f"row {row_id}", processor=getattr(metric, "_image_processor", None))
    except ImageError as exc:
        metric._count_failure(row_id, f"image could not be decoded ({exc.error})")
        return None


def require_package(module: str, pip_name: str, feature: str) -> None:
    """Fail when a package a core metric needs is missing (a broken install, not an extra).

    Metrics declare this through ``requires = (Requirement(module, feature, pip=pip_name),)`` rather than
    calling it; it stays public for code that checks a package outside a constructor.

    Raises:
        MissingDependencyError: ``clip metric needs transformers: pip install transformers``.
    """
    import importlib.util

    from selector.errors import MissingDependencyError

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"{feature} needs {pip_name}: pip install {pip_name} (no module named {module!r})"
        )


_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Split on sentence-final punctuation followed by whitespace, and on newlines; drop empty pieces."""
    return [piece.strip() for piece in _SENTENCE_RE.split(text) if piece and piece.strip()]


def pooled(output):
    """A features tensor from what ``get_image_features`` / ``get_text_features`` return: a tensor in
    transformers 4.x, an output object whose ``pooler_output`` holds the projected features in 5.x."""
    if hasattr(output, "pooler_output") and output.pooler_output is not None:
        return output.pooler_output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def clip_text_features(model, enc: dict, padding):
    """Pooled ``get_text_features`` of a CLIP-family ``model`` for tokenizer output ``enc``.

    The attention mask is passed only with dynamic padding (``padding=True``): SigLIP's text tower was trained
    on fixed-length padded texts without a mask.
    """
    kwargs = {"input_ids": enc["input_ids"]}
    if "attention_mask" in enc and padding is True:
        kwargs["attention_mask"] = enc["attention_mask"]
    return pooled(model.get_text_features(**kwargs))


def encode_images(metric: ModelMetric, images: list, forward) -> np.ndarray:
    """Unit-length features ``(len(images), d)`` of decoded images, ``metric.batch_size`` at a time.

    Uses the loaded ``metric._image_processor``; ``forward(pixel_values)`` maps a batch of pixels (already on
    the metric's device and dtype) to a ``(batch, d)`` tensor and runs under ``torch.inference_mode()``.
    """
    import torch

    feats = []
    for idx in chunks(list(range(len(images))), metric.batch_size):
        pixels = metric._image_processor(images=[images[i] for i in idx], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = forward(pixels.to(metric._device, metric._torch_dtype))
        feats.append(out.float().cpu().numpy())
    return l2_normalize(np.concatenate(feats))


def encode_texts(metric: ModelMetric, texts: list[str], forward) -> np.ndarray:
    """Unit-length features ``(len(texts), d)`` of texts, in input order, ``metric.batch_size`` at a time.

    Texts are tokenized with the loaded ``metric._tokenizer`` (``padding=metric._pad``, truncated to
    ``metric._max_tokens``); ``forward(enc)`` maps the tokenizer output (on the metric's device) to a
    ``(batch, d)`` tensor and runs under ``torch.inference_mode()``.
    """
    import torch

    # Sorting by length keeps padding (wasted compute) small inside each forward batch.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    feats = np.zeros((len(texts), 0), dtype=np.float32)
    for idx in chunks(order, metric.batch_size):
        enc = metric._tokenizer(
            [texts[i] for i in idx],
            padding=metric._pad,
            truncation=True,
            max_length=metric._max_tokens,
            return_tensors="pt",
        )
        enc = {key: value.to(metric._device) for key, value in enc.items()}
        with torch.inference_mode():
            out = forward(enc).float().cpu().numpy()
        if feats.shape[1] == 0:
            feats = np.zeros((len(texts), out.shape[1]), dtype=np.float32)
        feats[idx] = out
    return l2_normalize(feats)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); all-zero rows stay zero, NaN rows stay NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(np.isnan(norms) | (norms > 0), norms, 1.0)).astype(np.float32)


def chunks(indices: list[int], size: int):
    """Consecutive slices of ``indices`` of at most ``size`` items."""
    for start in range(0, len(indices), max(1, size)):
        yield indices[start : start + size]
