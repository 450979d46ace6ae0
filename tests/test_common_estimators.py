"""One contract for every estimator of the package, listed from the package itself.

The estimators are found as ``sklearn.utils.all_estimators`` finds scikit-learn's: every module of ``selector`` and
``metrics`` is imported (the training engine, the CLI and modules whose optional packages are missing are left
out) and every public class derived from ``BaseEstimator`` and defined in the package is collected. Each one then
goes through the same checks: arguments stored unchanged by ``__init__``, ``clone`` and the
``get_params``/``set_params`` round trip, ``fit`` returns self with fitted state ending in ``_``, the same seed
gives the same result, and a permuted input gives the same partition (ARI 1.0) or, for estimators that read row
ids or have no randomised step, exactly the permuted result. Clusterers also pass scikit-learn's own ``check_estimator``.

Each estimator needs a recipe below (small parameters and the data its ``fit`` takes). A new estimator without
one fails these tests instead of being skipped.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClusterMixin, clone
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from selector.errors import MissingDependencyError

PACKAGES = ("selector", "metrics")
# the training engine is an extra with its own tests; the CLI modules hold commands, not estimators.
SKIPPED_MODULES = ("selector.training", "selector.commands", "selector.cli", "selector.__main__")
# the listing may grow, never silently shrink below these.
CORE_ESTIMATORS = {"KMeans", "BalancedKMeans", "SpectralClustering", "SSLPrototypes", "SemDeDup", "LearnedSelector"}


def _modules(package: str):
    """Import ``package`` and its submodules recursively, skipping SKIPPED_MODULES and missing optional deps."""
    if package.startswith(SKIPPED_MODULES):
        return
    try:
        module = importlib.import_module(package)
    except MissingDependencyError:
        return
    except ModuleNotFoundError as exc:
        # an optional package that is not installed; a missing module of our own is a bug and must surface.
        if (exc.name or "").split(".")[0] in PACKAGES:
            raise
        return
    yield module
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        yield from _modules(f"{package}.{info.name}")


def all_estimators() -> list[type]:
    """Every public ``BaseEstimator`` subclass defined in ``selector`` or ``metrics``, sorted by qualified name."""
    found = {}
    for package in PACKAGES:
        for module in _modules(package):
            for name, cls in inspect.getmembers(module, inspect.isclass):
                defined_here = cls.__module__.split(".")[0] in PACKAGES
                if defined_here and issubclass(cls, BaseEstimator) and not name.startswith("_"):
                    if not inspect.isabstract(cls):
                        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[key] for key in sorted(found)]


ESTIMATORS = all_estimators()


# Recipes: how to build a small instance and the data its fit takes.


def separable_blobs(n_per: int = 20, k: int = 3, d: int = 8, spread: float = 1.0, seed: int = 0):
    """``k`` blobs of ``n_per`` rows around ``10 * e_j``: apart by Euclidean distance and by angle alike."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    X = 10.0 * np.eye(k, d)[y] + rng.normal(scale=spread, size=(k * n_per, d))
    return X.astype(np.float32), y


def _permute_arrays(args: tuple, perm: np.ndarray) -> tuple:
    return tuple(np.asarray(a)[perm] for a in args)


def _scored_rows():
    """Rows with ids and two score columns whose label is a linear function of them (LearnedSelector)."""
    rng = np.random.default_rng(0)
    n = 80
    X = {"id": [f"row-{i:03d}" for i in range(n)], "score_a": rng.normal(size=n), "score_b": rng.normal(size=n)}
    y = 2.0 * X["score_a"] - X["score_b"] + rng.normal(scale=0.1, size=n)
    return X, y


def _permute_rows(args: tuple, perm: np.ndarray) -> tuple:
    X, y = args
    columns = {
        key: [values[i] for i in perm] if isinstance(values, list) else values[perm] for key, values in X.items()
    }
    return columns, y[perm]


@dataclass(frozen=True)
class Recipe:
    """How the common tests build and fit one estimator.

    Attributes:
        params: constructor arguments that keep the fit small and fast (``random_state`` is added by the tests).
        data: () -> the positional arguments of ``fit`` on separable data.
        output: (fitted estimator, fit args) -> an array that the same seed must reproduce exactly.
        partition: fitted estimator -> cluster of each training row, for estimators that partition the rows.
        permute: (fit args, permutation) -> the same rows in the permuted order.
        exact_under_permutation: a permuted input must give exactly the permuted ``output``: estimators that read
            row ids (randomised steps see rows in id-hash order) and estimators without randomised steps.
    """

    params: dict
    data: Callable[[], tuple]
    output: Callable[[BaseEstimator, tuple], np.ndarray]
    partition: Callable[[BaseEstimator], np.ndarray] | None = None
    permute: Callable[[tuple, np.ndarray], tuple] = _permute_arrays
    exact_under_permutation: bool = False


def _blob_data():
    return (separable_blobs()[0],)


RECIPES = {
    "KMeans": Recipe(
        params={"n_clusters": 3},
        data=_blob_data,
        output=lambda est, args: est.labels_,
        partition=lambda est: est.labels_,
    ),
    "BalancedKMeans": Recipe(
        params={"n_clusters": 3},
        data=_blob_data,
        output=lambda est, args: est.labels_,
        partition=lambda est: est.labels_,
    ),
    "SpectralClustering": Recipe(
        params={"n_clusters": 3, "n_neighbors": 8},
        data=_blob_data,
        output=lambda est, args: est.labels_,
        partition=lambda est: est.labels_,
    ),
    "SSLPrototypes": Recipe(
        params={"n_clusters": 3, "keep": "random", "budget": 0.5},
        data=_blob_data,
        output=lambda est, args: np.stack([est.score_samples(*args), est.predict(*args)]),
        partition=lambda est: est.kmeans_.labels_,
    ),
    "SemDeDup": Recipe(
        params={"n_clusters": 3, "eps": 0.1},
        data=_blob_data,
        output=lambda est, args: np.stack([est.score_samples(*args), est.predict(*args)]),
        partition=lambda est: est.kmeans_.labels_,
    ),
    "LearnedSelector": Recipe(
        params={"model": "ridge", "budget": 10},
        data=_scored_rows,
        output=lambda est, args: est.score_samples(args[0]),
        permute=_permute_rows,
        exact_under_permutation=True,
    ),
    "QualityScore": Recipe(
        params={"columns": {"score_a": 1.0, "score_b": {"weight": 2.0, "direction": "lower"}}},
        data=_scored_rows,
        output=lambda est, args: est.score_samples(args[0]),
        permute=_permute_rows,
        exact_under_permutation=True,
    ),
}


def recipe_for(cls: type) -> Recipe:
    recipe = RECIPES.get(cls.__name__)
    if recipe is None:
        pytest.fail(f"{cls.__module__}.{cls.__name__} has no recipe in tests/test_common_estimators.py: add one")
    return recipe


def make(cls: type, random_state: int = 0) -> BaseEstimator:
    """A small instance; ``random_state`` is set where the estimator has randomised steps."""
    params = dict(recipe_for(cls).params)
    if "random_state" in inspect.signature(cls).parameters:
        params["random_state"] = random_state
    return cls(**params)


def fitted(cls: type, args: tuple, random_state: int = 0) -> BaseEstimator:
    est = make(cls, random_state)
    assert est.fit(*args) is est, "fit must return self"
    return est


def _ids(estimators) -> list[str]:
    return [cls.__name__ for cls in estimators]


# The listing.


def test_the_listing_finds_every_core_estimator_once():
    names = _ids(ESTIMATORS)
    assert len(names) == len(set(names)), f"two estimators share a name (recipes are keyed by name): {names}"
    missing = CORE_ESTIMATORS - set(names)
    assert not missing, f"not found as BaseEstimator subclasses of the package: {sorted(missing)}"


def test_the_listing_skips_what_it_should_and_nothing_else():
    modules = {module.__name__ for package in PACKAGES for module in _modules(package)}
    assert not any(name.startswith(SKIPPED_MODULES) for name in modules)
    assert {"selector.cluster", "selector.spectral", "selector.prototypes", "metrics.diversity"} <= modules


# The contract, over every estimator found.


@pytest.mark.parametrize("cls", ESTIMATORS, ids=_ids(ESTIMATORS))
def test_init_stores_its_arguments_unchanged_and_nothing_else(cls):
    names = list(inspect.signature(cls).parameters)
    sentinels = {name: object() for name in names}
    # no validation, conversion or I/O in __init__: any object is stored as it is
    est = cls(**sentinels)
    assert {name: getattr(est, name) for name in names} == sentinels
    assert set(vars(est)) == set(names)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=_ids(ESTIMATORS))
def test_clone_and_params_round_trip(cls):
    est = make(cls, random_state=3)
    params = est.get_params(deep=False)
    assert set(params) == set(inspect.signature(cls).parameters)
    copy = clone(est)
    assert copy is not est and type(copy) is cls
    assert copy.get_params(deep=False) == params
    assert cls().set_params(**params).get_params(deep=False) == params
    name, value = next(iter(params.items()))
    assert copy.set_params(**{name: "changed"}) is copy and copy.get_params()[name] == "changed"
    assert est.get_params()[name] == value  # the clone shares no state


@pytest.mark.parametrize("cls", ESTIMATORS, ids=_ids(ESTIMATORS))
def test_fit_returns_self_and_fitted_state_ends_in_underscore(cls):
    est = make(cls, random_state=0)
    before = set(vars(est))
    params = est.get_params(deep=False)
    fitted_est = est.fit(*recipe_for(cls).data())
    assert fitted_est is est
    added = {name for name in set(vars(est)) - before if not name.startswith("_")}
    assert added and all(name.endswith("_") for name in added), sorted(added)
    assert est.get_params(deep=False) == params  # fit does not change the parameters
    # clone of a fitted estimator is unfitted
    assert not (set(vars(clone(est))) - before)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=_ids(ESTIMATORS))
def test_same_seed_same_result(cls):
    recipe = recipe_for(cls)
    args = recipe.data()
    first = recipe.output(fitted(cls, args, random_state=7), args)
    again = recipe.output(fitted(cls, args, random_state=7), args)
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=_ids(ESTIMATORS))
def test_permuted_input_gives_the_same_result(cls):
    recipe = recipe_for(cls)
    args = recipe.data()
    perm = np.random.default_rng(11).permutation(_n_rows(args))
    permuted = recipe.permute(args, perm)
    est, est_perm = fitted(cls, args, random_state=0), fitted(cls, permuted, random_state=0)
    assert recipe.partition or recipe.exact_under_permutation, "the recipe must say what a permutation preserves"
    if recipe.partition is not None:
        assert adjusted_rand_score(recipe.partition(est)[perm], recipe.partition(est_perm)) == 1.0
    if recipe.exact_under_permutation:
        np.testing.assert_array_equal(recipe.output(est_perm, permuted), recipe.output(est, args)[..., perm])


def _n_rows(args: tuple) -> int:
    X = args[0]
    return len(X["id"]) if isinstance(X, dict) else len(X)


# scikit-learn's own checks, where the estimator type has them (clusterers).


def _checked_instances():
    instances = []
    for cls in ESTIMATORS:
        if issubclass(cls, ClusterMixin):
            recipe = RECIPES.get(cls.__name__)
            instances.append(cls(**recipe.params) if recipe else cls())
    return instances


@parametrize_with_checks(_checked_instances())
def test_scikit_learn_check_estimator(estimator, check):
    check(estimator)
