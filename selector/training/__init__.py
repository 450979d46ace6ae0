"""The fine-tuning engine: training loop, evaluator and training dynamics (``pip install "vlselect[training]"``).

``vlselect labels`` fine-tunes its proxy models with it, and ``recipes/`` holds thin launch scripts over it.
Importing this package is cheap (no torch); the models load when :func:`train` or :func:`evaluate` runs.

Modules:

- :mod:`~selector.training.config`: config dataclasses from YAML / dicts / CLI flags (``HfArgumentParser``, TRL's
  names), shipped configs by name.
- :mod:`~selector.training.data`: rows in (canonical or TRL layout), batches with assistant-only labels out.
- :mod:`~selector.training.modeling`: model + processor loading (LoRA adapters included).
- :mod:`~selector.training.finetune`: :class:`FinetuneConfig` and the Accelerate loop :func:`train`.
- :mod:`~selector.training.evaluation`: :class:`EvalConfig`, :func:`evaluate` and :data:`EVAL_SCORES`.
- :mod:`~selector.training.callbacks`: per-example statistics recorded during training, dynamic pruning.

The ``dynamics.parquet`` file format the loop writes belongs to :mod:`selector.dynamics` (no torch needed).

Example:
    >>> from selector.training import train, evaluate  # doctest: +SKIP
    >>> run = train("tiny_cpu", model_name_or_path="tiny/", dataset_name="data/", output_dir="out/")  # doctest: +SKIP
    >>> evaluate({"model_name_or_path": run["model_dir"], "dataset_name": "val/"})["eval_loss"]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

# public name -> module that defines it; resolved on first access so importing the package stays light.
_LAZY = {
    "FinetuneConfig": "selector.training.finetune",
    "train": "selector.training.finetune",
    "EvalConfig": "selector.training.evaluation",
    "evaluate": "selector.training.evaluation",
    "EVAL_SCORES": "selector.training.evaluation",
    "find_config": "selector.training.config",
    "shipped_configs": "selector.training.config",
    "load_model_and_processor": "selector.training.modeling",
    "load_rows": "selector.training.data",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'selector.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
