"""Dataset condensation: learn a few synthetic training images per class (DC, DSA, DM, CAFE, IDM).

Modules: :mod:`~selector.condense.networks` (the papers' ConvNet, DC's gradient distance),
:mod:`~selector.condense.augment` (differentiable Siamese augmentation), :mod:`~selector.condense.methods` (the
methods and their registry; CAFE in :mod:`~selector.condense.cafe`, IDM in :mod:`~selector.condense.idm`), :mod:`~selector.condense.evaluate` (the evaluation protocol),
:mod:`~selector.condense.io` (checkpoints, output folder, card), :mod:`~selector.condense.api` (the loop,
:func:`condense_tensors` and :func:`condense_dataset`).

Importing this package imports torch.
"""

from __future__ import annotations

from selector.condense.api import DEFAULT_NET, CondenseResult, SyntheticSet, condense_dataset, condense_tensors
from selector.condense.evaluate import EvalResult, evaluate_synthetic
from selector.condense.methods import METHODS, CondensationMethod, available_methods, get_method

__all__ = [
    "DEFAULT_NET",
    "METHODS",
    "CondensationMethod",
    "CondenseResult",
    "EvalResult",
    "SyntheticSet",
    "available_methods",
    "condense_dataset",
    "condense_tensors",
    "evaluate_synthetic",
    "get_method",
]
