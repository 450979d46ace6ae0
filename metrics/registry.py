"""Metric registry: names -> ``"module:Class"`` strings, plus outside plugins from entry points.

Importing this module imports nothing heavy: a metric's module is imported only when it is asked for.

Outside packages register metrics in their ``pyproject.toml``::

    [project.entry-points."vlselect.metrics"]
    aesthetic = "my_package.aesthetic:AestheticScore"

Example:
    >>> from metrics.registry import available_metrics, get_metric
    >>> "length" in available_metrics()
    True
    >>> get_metric("length", name="answer_len").output_columns()[0]
    'score_answer_len'
"""

from __future__ import annotations

import importlib
import inspect
import logging
from importlib.metadata import entry_points
from typing import Any

from selector.errors import ConfigError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "vlselect.metrics"

#: Built-in metrics. One line per metric; the value is "module:Class".
BUILTIN_METRICS: dict[str, str] = {
    "length": "metrics.length:LengthMetric",
    "clip": "metrics.clip:ClipScore",
    "reward": "metrics.reward:RewardScore",
    "embedding": "metrics.embedding:EmbeddingMetric",
    "judge": "metrics.judge:Judge",
    "diversity": "metrics.diversity:Diversity",
    "pairing": "metrics.pairing:Pairing",
    "relevance": "metrics.relevance:RelevanceScore",
    "perplexity": "metrics.perplexity:Perplexity",
    "text_quality": "metrics.text_quality:TextQuality",
    "safety": "metrics.safety:SafetyScore",
}


def _entry_point_metrics() -> dict[str, str]:
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN_METRICS:
            logger.warning("entry point %s=%s ignored: %r is a built-in metric", ep.name, ep.value, ep.name)
            continue
        found[ep.name] = ep.value
    return found


def available_metrics() -> list[str]:
    """Sorted names of every registered metric: built-ins and ``vlselect.metrics`` entry points."""
    return sorted(set(BUILTIN_METRICS) | set(_entry_point_metrics()))


def metric_class(name: str) -> type:
    """The class registered under ``name`` (imports its module)."""
    target = BUILTIN_METRICS.get(name) or _entry_point_metrics().get(name)
    if target is None:
        raise ConfigError(f"unknown metric {name!r}; available: {', '.join(available_metrics())}")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def get_metric(metric: str, /, **params: Any):
    """Construct the metric registered as ``metric`` with constructor arguments ``params``.

    The instance name (column prefix) defaults to the registry name; pass ``name=...`` in ``params`` to run
    two instances of one plugin side by side (``get_metric("embedding", name="dinov2", ...)``).

    Raises:
        ConfigError: unknown metric, or a parameter the metric's constructor does not take.
        MissingDependencyError: the metric needs an optional package that is not installed.
    """
    cls = metric_class(metric)
    accepted = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(key for key in params if key not in accepted or key == "self")
    if unknown and not takes_any:
        allowed = sorted(k for k, p in accepted.items() if k != "self" and p.kind not in (p.VAR_POSITIONAL,))
        raise ConfigError(
            f"metric {metric!r} has no parameter(s) {', '.join(unknown)}; it accepts: {', '.join(allowed)}"
        )
    if "name" in accepted and "name" not in params:
        params = {"name": metric, **params}
    return cls(**params)


def parse_metric_list(spec: str) -> list[str]:
    """``"length, clip"`` -> ``["length", "clip"]`` (empty items dropped)."""
    return [item.strip() for item in spec.split(",") if item.strip()]


def metrics_from_config(config: dict | list | str) -> list:
    """Metrics from the YAML form (a path, the parsed mapping, or its ``metrics`` list).

    Each item is ``{metric: <registry name>, <constructor argument>: value, ...}``; unknown keys are an
    error::

        metrics:
          - {metric: clip, model_name_or_path: openai/clip-vit-base-patch32, batch_size: 64}
          - {metric: embedding, name: dinov2, model_name_or_path: facebook/dinov2-small}
    """
    if isinstance(config, str):
        from selector.fileio import load_yaml_mapping

        config = load_yaml_mapping(config, what="metric config")
    if isinstance(config, dict):
        extra = sorted(set(config) - {"metrics"})
        if extra:
            raise ConfigError(f"unknown key(s) in metric config: {', '.join(extra)} (expected 'metrics')")
        config = config.get("metrics")
    if not isinstance(config, list) or not config:
        raise ConfigError("metric config needs a non-empty 'metrics' list")
    out = []
    for i, item in enumerate(config):
        if isinstance(item, str):
            item = {"metric": item}
        if not isinstance(item, dict) or "metric" not in item:
            raise ConfigError(f"metrics[{i}] must be a mapping with a 'metric' key, got {item!r}")
        params = dict(item)
        out.append(get_metric(params.pop("metric"), **params))
    check_unique_names(out)
    return out


def check_unique_names(metrics: list) -> None:
    """Two metrics writing the same column would overwrite each other: refuse it."""
    seen: dict[str, str] = {}
    for metric in metrics:
        for column in metric.output_columns():
            if column in seen:
                raise ConfigError(
                    f"two metrics write column {column!r} ({seen[column]} and {metric!r}); give one a different name="
                )
            seen[column] = repr(metric)


def registry_name(metric) -> str | None:
    """The registry name whose ``"module:Class"`` is ``metric``'s class (None for unregistered classes)."""
    target = f"{type(metric).__module__}:{type(metric).__qualname__}"
    for name, value in {**_entry_point_metrics(), **BUILTIN_METRICS}.items():
        if value == target:
            return name
    return None
