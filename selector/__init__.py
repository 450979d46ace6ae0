"""vlselect: choose the vision-language instructions worth fine-tuning on.

Importing ``selector`` is cheap: it imports neither torch, transformers nor datasets. Public names are
resolved lazily on first access.

Example:
    >>> import selector
    >>> ds = selector.load_instructions("selector/example_data/llava_mini.json")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it; resolved on first attribute access so `import selector` stays light.
_LAZY = {
    "load_instructions": "selector.data",
    "summarize": "selector.data",
    "load_with_report": "selector.data",
    "export_instructions": "selector.data",
    "ExportReport": "selector.data",
    "run_checks": "selector.checks",
    "exact_duplicates": "selector.checks",
    "copy_duplicates": "selector.copies",
    "near_duplicates": "selector.checks",
    "basic_rules": "selector.checks",
    "summarize_checks": "selector.checks",  # noqa: E501
    "score": "selector.scoring",
    "SpectralClustering": "selector.spectral",
    "DataError": "selector.errors",
    "VLSelectError": "selector.errors",
    "ConfigError": "selector.errors",
    "MissingDependencyError": "selector.errors",
    "LearnedSelector": "selector.learned",
    "generate_labels": "selector.labels",
    "BalancedKMeans": "selector.cluster",
    "select": "selector.selection",
    "select_arrays": "selector.selection",
    "select_dataset": "selector.selection",
    "Selection": "selector.selection",
    "available_strategies": "selector.strategies",
    "KMeans": "selector.cluster",
    "SSLPrototypes": "selector.prototypes",
    "SemDeDup": "selector.prototypes",
    "semdedup": "selector.prototypes",  # noqa: E501
    "condense_dataset": "selector.condense",
    "condense_tensors": "selector.condense",
    "PipelineConfig": "selector.pipeline",
    "run_pipeline": "selector.pipeline",
    "build_card": "selector.card",
    "write_card": "selector.card",
    "publish": "selector.card",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'selector' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
