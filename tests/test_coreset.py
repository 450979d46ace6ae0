"""Coreset scores from training dynamics, herding and k-center greedy against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selector import coreset
from selector.errors import ConfigError, DataError


def _table(records):
    ids, epochs, correct = zip(*records)
    return list(ids), list(epochs), list(correct)


def test_forgetting_matches_a_hand_computed_example():
    # a: 1 0 1 0 1 -> 2 forgetting events; b: 0 1 1 1 1 -> 0 (learned, never forgotten);
    # c: never correct -> most forgettable; d: 1 1 0 0 1 -> 1; rows given out of order on purpose.
    seqs = {"a": [1, 0, 1, 0, 1], "b": [0, 1, 1, 1, 1], "c": [0, 0, 0, 0, 0], "d": [1, 1, 0, 0, 1]}
    records = [(i, e, bool(v)) for i, seq in seqs.items() for e, v in enumerate(seq)]
    records = records[::-1]
    ids, events, learned = coreset.forgetting_events(*_table(records))
    assert ids.tolist() == ["a", "b", "c", "d"]
    assert events.tolist() == [2, 0, 0, 1]
    assert learned.tolist() == [True, True, False, True]
    ids, scores = coreset.forgetting_scores(*_table(records))
    assert scores.tolist() == [2.0, 0.0, 3.0, 1.0]  # never learned = max events + 1


def test_forgetting_uses_recorded_epochs_and_missing_as_incorrect():
    # epochs 0, 2, 5 recorded (dynamic pruning skips some): correct -> correct -> wrong is one event
    ids, scores = coreset.forgetting_scores(["x", "x", "x", "y"], [0, 2, 5, 0], [True, True, None, True])
    assert scores.tolist() == [1.0, 0.0]
    with pytest.raises(DataError, match="more than one row"):
        coreset.forgetting_scores(["x", "x"], [0, 0], [True, False])
    with pytest.raises(DataError, match="differ in length"):
        coreset.forgetting_scores(["x"], [0, 1], [True])


def test_el2n_grand_curvature_average_the_window():
    ids = ["a", "a", "a", "b", "b", "c"]
    epochs = [0, 1, 2, 0, 1, 0]
    values = [0.2, 0.4, 0.9, np.nan, 0.5, np.nan]
    uid, el2n = coreset.el2n_scores(ids, epochs, values)
    assert uid.tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(el2n[:2], [0.5, 0.5])
    assert np.isnan(el2n[2])  # no recorded value -> NaN
    _, early = coreset.el2n_scores(ids, epochs, values, max_epoch=1)
    np.testing.assert_allclose(early[:2], [0.3, 0.5])
    _, grand = coreset.grand_scores(ids, epochs, values, max_epoch=0)
    assert grand[0] == pytest.approx(0.2) and np.isnan(grand[1])
    _, curv = coreset.curvature_scores(ids, epochs, values)
    np.testing.assert_allclose(curv[:2], el2n[:2])


def test_dynamics_scores_dispatch_and_errors(tmp_path):
    table = {"id": np.array(["a", "b"]), "epoch": np.array([0, 0]), "correct": np.array([True, False])}
    ids, scores = coreset.dynamics_scores(table, "forgetting")
    assert scores.tolist() == [0.0, 1.0]
    with pytest.raises(DataError, match="no 'el2n' column"):
        coreset.dynamics_scores(table, "el2n")
    with pytest.raises(DataError, match="unknown dynamics score"):
        coreset.dynamics_scores(table, "nope")
    with pytest.raises(DataError, match="dynamics file"):
        coreset.read_dynamics(str(tmp_path / "missing.parquet"))


def test_unforgettable_order():
    ids = ["a", "a", "b", "b", "c", "c", "d", "d"]
    epochs = [0, 1] * 4
    correct = [True, True, True, False, False, False, False, True]
    loss = [0.1, 0.2, 0.1, 0.9, 3.0, 3.0, 1.0, 0.1]
    # a, d: no events and correct now (d has the lower last loss); b: one event; c: never learned
    assert coreset.unforgettable_order(ids, epochs, correct, loss).tolist() == ["d", "a", "b", "c"]


def _herding_by_definition(x, n):
    mu = x.mean(axis=0)
    chosen = []
    for _ in range(n):
        best, best_d = None, np.inf
        for i in range(len(x)):
            if i in chosen:
                continue
            d = np.linalg.norm(mu - x[chosen + [i]].mean(axis=0))
            if d < best_d - 1e-12:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_herding_matches_its_definition():
    x = np.random.default_rng(0).normal(size=(40, 5))
    assert coreset.herding(x, 12).tolist() == _herding_by_definition(x, 12)
    # the running mean approaches the pool mean
    picked = coreset.herding(x, 20)
    assert np.linalg.norm(x[picked].mean(0) - x.mean(0)) < np.linalg.norm(x[:20].mean(0) - x.mean(0))


def _kcenter_by_definition(x, n, first):
    chosen = [first]
    while len(chosen) < n:
        d = np.array([min(np.linalg.norm(x[i] - x[c]) for c in chosen) for i in range(len(x))])
        d[chosen] = -1
        chosen.append(int(np.argmax(d)))
    return chosen


def test_kcenter_greedy_matches_its_definition():
    x = np.random.default_rng(1).normal(size=(50, 3))
    picked = coreset.kcenter_greedy(x, 10, random_state=3)
    assert picked.tolist() == _kcenter_by_definition(x, 10, int(picked[0]))
    assert picked[0] == np.random.default_rng(3).integers(50)
    assert coreset.kcenter_greedy(x, 10, random_state=3).tolist() == picked.tolist()
    # with initial centers the first pick is the farthest point from them
    seeded = coreset.kcenter_greedy(x, 3, initial=[0, 1])
    d = np.minimum(np.linalg.norm(x - x[0], axis=1), np.linalg.norm(x - x[1], axis=1))
    assert seeded[0] == int(np.argmax(d)) and not {0, 1} & set(seeded.tolist())


def test_kcenter_two_approximation_on_clusters():
    rng = np.random.default_rng(2)
    centers = rng.normal(scale=20, size=(4, 2))
    x = np.concatenate([c + rng.normal(scale=0.1, size=(25, 2)) for c in centers])
    picked = coreset.kcenter_greedy(x, 4, random_state=0)
    assert sorted({int(i) // 25 for i in picked}) == [0, 1, 2, 3]  # one center per blob


def test_nan_rows_are_never_picked():
    x = np.random.default_rng(0).normal(size=(10, 2))
    x[[2, 5]] = np.nan
    for picked in (coreset.herding(x, 10), coreset.kcenter_greedy(x, 10)):
        assert len(picked) == 8 and not {2, 5} & set(picked.tolist())
    with pytest.raises(DataError, match="2-D"):
        coreset.herding(np.zeros(3), 1)
    assert coreset.herding(x, 0).size == 0 and coreset.kcenter_greedy(x, 0).size == 0


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), k=st.integers(0, 35), seed=st.integers(0, 5))
def test_greedy_coresets_pick_distinct_rows(n, k, seed):
    x = np.random.default_rng(seed).normal(size=(n, 3))
    for picked in (coreset.herding(x, k), coreset.kcenter_greedy(x, k, random_state=seed)):
        assert len(picked) == min(n, k) and len(set(picked.tolist())) == len(picked)


# ---- strategies --------------------------------------------------------------------------------------------


def _write_dynamics(path, rows):
    from selector.dynamics import write_dynamics

    write_dynamics(path, dict(zip(("id", "epoch", "correct", "el2n", "curvature"), map(list, zip(*rows)))))
    return str(path)


def test_dynamics_strategies_through_select_arrays(tmp_path):
    from selector.strategies import available_strategies, select_arrays

    assert {"forgetting", "el2n", "grand", "curvature", "herding", "kcenter"} <= set(available_strategies())
    path = _write_dynamics(
        tmp_path / "dynamics.parquet",
        [
            ("a", 0, True, 0.1, 5.0),
            ("a", 1, False, 0.3, 5.0),  # forgotten once
            ("b", 0, True, 0.1, 1.0),
            ("b", 1, True, 0.1, 1.0),  # unforgettable, flat
            ("c", 0, False, 0.9, 9.0),
            ("c", 1, False, 0.8, 9.0),  # never learned
        ],
    )
    ids = ["a", "b", "c", "d"]  # d has no record and ranks last
    sel = select_arrays(None, 2, "forgetting", ids=ids, dynamics=path)
    assert [ids[i] for i in sel.indices] == ["c", "a"]
    sel = select_arrays(None, 1, "el2n", ids=ids, dynamics=path, max_epoch=0)
    assert [ids[i] for i in sel.indices] == ["c"]
    sel = select_arrays(None, 3, "curvature", ids=ids, dynamics=path)
    assert [ids[i] for i in sel.indices] == ["b", "a", "c"]  # lowest curvature first, d (NaN) not reached
    sel = select_arrays(None, 1, "curvature", ids=ids, dynamics=path, descending=True)
    assert [ids[i] for i in sel.indices] == ["c"]
    # precomputed raw scores instead of a dynamics file
    sel = select_arrays(None, 2, "forgetting", ids=ids, scores=[1.0, 0.0, 3.0, np.nan])
    assert [ids[i] for i in sel.indices] == ["c", "a"]
    with pytest.raises(ConfigError, match="dynamics="):
        select_arrays(None, 2, "el2n", ids=ids)


def test_embedding_strategies_through_select_arrays():
    from selector.strategies import select_arrays

    x = np.random.default_rng(0).normal(size=(30, 4))
    x[3] = np.nan
    for name in ("herding", "kcenter"):
        sel = select_arrays(x, 5, name, random_state=1)
        assert sel.n_selected == 5 and not sel.mask[3]
        assert sel.reason[3].startswith("missing")
        again = select_arrays(x, 5, name, random_state=1)
        assert again.indices.tolist() == sel.indices.tolist()
        # permuting rows with their ids gives the same selection
        perm = np.random.default_rng(1).permutation(30)
        ids = np.array([f"r{i:02d}" for i in range(30)])
        a = select_arrays(x, 5, name, ids=ids, random_state=1)
        b = select_arrays(x[perm], 5, name, ids=ids[perm], random_state=1)
        assert sorted(a.ids[a.mask].tolist()) == sorted(b.ids[b.mask].tolist())
    with pytest.raises(ConfigError, match="needs"):
        select_arrays(None, 2, "herding", ids=["a", "b", "c"])


def test_forgetting_on_a_dataset_skips_error_rows(tmp_path):
    from datasets import Dataset

    from selector.strategies import select

    path = _write_dynamics(
        tmp_path / "d.parquet",
        [("a", 0, True, 0.1, 1.0), ("a", 1, False, 0.1, 1.0), ("b", 0, False, 0.5, 1.0), ("c", 0, True, 0.1, 1.0)],
    )
    ds = Dataset.from_dict({"id": ["a", "b", "c"], "error": [None, "corrupt_image: x", None]})
    sel = select(ds, 2, "forgetting", dynamics=path)
    assert sel.ids[sel.mask].tolist() == ["a", "c"] and sel.reason[1].startswith("error")
    assert sel.options["dynamics"] == path
