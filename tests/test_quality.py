"""score_quality: percentile ranks, directions, weights, NaN and error rows, ties, invariances, selector scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selector.errors import ConfigError, DataError, VLSelectError
from selector.quality import (
    DEFAULT_QUALITY_COLUMNS,
    QualityScore,
    add_quality_column,
    metric_direction,
    percentile_rank,
    quality_from_selector,
)

NAN = float("nan")


def _score(columns, data):
    return QualityScore(columns).fit(data).score_samples(data)


def _pool(n=40, seed=0):
    r = np.random.default_rng(seed)
    return {
        "id": [f"r{i:03d}" for i in range(n)],
        "score_a": r.normal(size=n),
        "score_b": r.exponential(size=n) * 100,
        "score_c": r.integers(0, 5, size=n).astype(float),  # many ties
        "error": [None] * n,
    }


# Percentile ranks.


def test_percentile_rank_is_average_rank_scaled_to_unit_interval():
    ref = np.array([1.0, 2.0, 2.0, 5.0])
    # ranks 1, 2.5, 2.5, 4 -> (r - 1) / 3
    assert percentile_rank([1.0, 2.0, 5.0], ref).tolist() == [0.0, 0.5, 1.0]
    # between pool values: between their percentiles; beyond the pool: clipped
    assert percentile_rank([3.0, -10.0, 10.0], ref).tolist() == [2.5 / 3, 0.0, 1.0]
    assert np.isnan(percentile_rank([NAN], ref)).all()
    assert percentile_rank([7.0], np.array([3.0])).tolist() == [0.5]
    assert np.isnan(percentile_rank([1.0], np.array([]))).all()


def test_single_column_is_its_percentile_rank_and_ties_share_the_average():
    data = {"score_a": [10.0, 30.0, 20.0, 20.0, 40.0]}
    assert _score(["score_a"], data).tolist() == [0.0, 0.75, 0.375, 0.375, 1.0]
    assert _score(["score_a"], {"score_a": [3.0, 3.0, 3.0]}).tolist() == [0.5, 0.5, 0.5]


# Directions.


def test_lower_direction_flips_the_rank():
    data = {"score_a": [10.0, 30.0, 20.0, 20.0, 40.0]}
    higher = _score({"score_a": "higher"}, data)
    lower = _score({"score_a": {"direction": "lower"}}, data)
    np.testing.assert_allclose(lower, 1.0 - higher)
    # "lower" on x is "higher" on -x
    np.testing.assert_array_equal(lower, _score(["score_a"], {"score_a": [-v for v in data["score_a"]]}))


def test_direction_defaults_to_the_metric_registry():
    assert metric_direction("score_diversity") == "lower"  # Diversity.higher_is_better is False
    assert metric_direction("score_length") == "higher"
    assert metric_direction("score_length_words") is None  # a part has no direction unless declared
    assert metric_direction("score_unknown_metric") is None
    assert metric_direction("check_lang_score") is None
    q = QualityScore(["score_diversity", "score_x", {"column": "score_length", "direction": "lower"}])
    q.fit({"score_diversity": [1.0, 2.0], "score_x": [1.0, 2.0], "score_length": [1.0, 2.0]})
    assert [(c.column, c.direction, c.direction_source) for c in q.columns_] == [
        ("score_diversity", "lower", "metric"),
        ("score_x", "higher", "default"),
        ("score_length", "lower", "given"),
    ]


def test_part_directions_declared_by_a_metric_win(monkeypatch):
    from metrics import registry
    from metrics.length import LengthMetric

    class Parts(LengthMetric):
        part_higher_is_better = {"bad": False}

    monkeypatch.setitem(registry.BUILTIN_METRICS, "partsy", f"{__name__}:_Parts")
    monkeypatch.setitem(globals(), "_Parts", Parts)
    assert metric_direction("score_partsy_bad") == "lower"
    assert metric_direction("score_partsy_good") is None
    assert metric_direction("score_partsy") == "higher"


# Weights.


def test_weight_zero_column_changes_nothing():
    data = _pool()
    alone = _score({"score_a": 1.0}, data)
    with_zero = _score({"score_a": 1.0, "score_b": 0.0}, data)
    np.testing.assert_array_equal(alone, with_zero)
    # also when the zero-weight column is the only one with a value in a row
    data["score_a"][3] = NAN
    assert np.isnan(_score({"score_a": 1.0, "score_b": 0.0}, data)[3])


def test_doubling_a_weight_moves_the_score_toward_that_column():
    data = _pool()
    pa = _score(["score_a"], data)
    pb = _score(["score_b"], data)
    even = _score({"score_a": 1.0, "score_b": 1.0}, data)
    double_a = _score({"score_a": 2.0, "score_b": 1.0}, data)
    np.testing.assert_allclose(even, (pa + pb) / 2)
    np.testing.assert_allclose(double_a, (2 * pa + pb) / 3)
    differ = pa != pb
    assert differ.sum() > 30
    assert np.all(np.abs(double_a - pa)[differ] < np.abs(even - pa)[differ])
    # only relative weights matter
    np.testing.assert_allclose(_score({"score_a": 20.0, "score_b": 10.0}, data), double_a)


# NaN and error rows.


def test_nan_column_is_left_out_of_that_row_and_weights_renormalise():
    data = {"score_a": [1.0, 2.0, 3.0, NAN, NAN], "score_b": [5.0, 4.0, NAN, 2.0, NAN]}
    got = _score({"score_a": 1.0, "score_b": 3.0}, data)
    pa = [0.0, 0.5, 1.0]  # ranks of a among 1, 2, 3
    pb = [1.0, 0.5, None, 0.0]  # ranks of b among 2, 4, 5
    np.testing.assert_allclose(got[:2], [(pa[0] + 3 * pb[0]) / 4, (pa[1] + 3 * pb[1]) / 4])
    assert got[2] == pa[2]  # only a: its rank alone
    assert got[3] == pb[3]  # only b: its rank alone
    assert np.isnan(got[4])  # NaN in every column


def test_error_rows_score_nan_and_do_not_move_other_rows():
    data = {"score_a": [1.0, 2.0, 3.0, 4.0], "error": [None, "", NAN, "missing_image: x.jpg"]}
    got = _score(["score_a"], data)
    assert got[:3].tolist() == [0.0, 0.5, 1.0] and np.isnan(got[3])
    data["score_a"] = [1.0, 2.0, 3.0, -100.0]  # the error row's value is not in the pool
    np.testing.assert_array_equal(_score(["score_a"], data)[:3], got[:3])


def test_report_counts_nans_and_is_json_able():
    data = {"score_a": [1.0, NAN, 3.0, 4.0], "score_b": [NAN, NAN, 1.0, 2.0], "error": [None, None, None, "bad"]}
    q = QualityScore({"score_a": 2, "score_b": {"weight": 1, "direction": "lower"}}).fit(data)
    report = json.loads(json.dumps(q.report()))
    assert report == {
        "source": "columns",
        "output_column": "score_quality",
        "columns": [
            {"column": "score_a", "weight": 2.0, "direction": "higher", "direction_source": "default", "n_nan": 1},
            {"column": "score_b", "weight": 1.0, "direction": "lower", "direction_source": "given", "n_nan": 2},
        ],
        "skipped": [],
        "n_rows": 4,
        "n_usable": 3,
        "n_nan": 2,  # row 1 (no value) and row 3 (error)
    }
    assert int(np.isnan(q.score_samples(data)).sum()) == report["n_nan"]


# Invariances and determinism.


def test_scale_invariance_monotone_transform_leaves_score_unchanged():
    data = _pool()
    base = _score({"score_a": 1.0, "score_b": 2.0, "score_c": 1.0}, data)
    moved = dict(data)
    moved["score_a"] = np.exp(3 * data["score_a"]) + 7  # increasing
    moved["score_b"] = np.log1p(data["score_b"]) * 1e6  # increasing
    moved["score_c"] = data["score_c"] ** 3 - 1000  # increasing (ties stay ties)
    np.testing.assert_array_equal(_score({"score_a": 1.0, "score_b": 2.0, "score_c": 1.0}, moved), base)


@settings(max_examples=60, deadline=None)
@given(
    a=st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(NAN), st.sampled_from([0.0, 1.0])), min_size=1, max_size=30),
    seed=st.integers(0, 2**32 - 1),
    wb=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
)
def test_permutation_invariant_and_deterministic(a, seed, wb):
    n = len(a)
    r = np.random.default_rng(seed)
    data = {
        "score_a": np.array(a),
        "score_b": np.where(r.random(n) < 0.2, np.nan, r.integers(0, 4, n).astype(float)),
        "error": [None if x > 0.1 else "bad" for x in r.random(n)],
    }
    columns = {"score_a": 1.0, "score_b": {"weight": wb, "direction": "lower"}}
    got = _score(columns, data)
    perm = r.permutation(n)
    permuted = {k: [v[i] for i in perm] for k, v in data.items()}
    np.testing.assert_array_equal(_score(columns, permuted), got[perm])
    np.testing.assert_array_equal(_score(columns, data), got)
    finite = got[~np.isnan(got)]
    assert np.all((finite >= 0) & (finite <= 1))


# Defaults.


def test_defaults_skip_absent_columns_and_use_documented_directions():
    names = [d["column"] for d in DEFAULT_QUALITY_COLUMNS]
    assert names == [
        "score_relevance",
        "score_text_quality",
        "score_perplexity",
        "score_safety",
        "score_clip",
        "score_reward",
        "score_judge",
    ]
    data = {"score_relevance": [0.1, 0.9, 0.5], "score_perplexity": [5.0, 50.0, 10.0], "score_other": [1, 2, 3]}
    q = QualityScore().fit(data)
    assert [(c.column, c.direction) for c in q.columns_] == [
        ("score_relevance", "higher"),
        ("score_perplexity", "lower"),
    ]
    assert q.report()["skipped"] == [n for n in names if n not in data]
    # relevance ranks 0, 1, 0.5; perplexity (lower better) 1, 0, 0.5
    assert q.score_samples(data).tolist() == [0.5, 0.5, 0.5]


def test_default_directions_agree_with_the_metric_registry():
    checked = 0
    for spec in DEFAULT_QUALITY_COLUMNS:
        inferred = metric_direction(spec["column"])
        if inferred is not None and spec["direction"] is not None:
            assert spec["direction"] == inferred, spec
            checked += 1
    assert checked >= 3  # clip, reward, judge are built-ins; the others once their metrics are registered


def test_defaults_error_when_no_default_column_is_present():
    with pytest.raises(DataError, match="none of the default quality columns is present.*available: score_x"):
        QualityScore().fit({"score_x": [1.0]})


# Configuration errors.


@pytest.mark.parametrize(
    ("columns", "fragment"),
    [
        ([{"column": "score_a", "weigth": 1}], "unknown key(s) weigth; accepted keys: column, weight, direction"),
        ({"score_a": {"wieght": 2}}, "unknown key(s) wieght"),
        ({"score_a": "up"}, "direction must be 'higher' or 'lower'"),
        ({"score_a": -1}, "weight must be finite and >= 0"),
        ({"score_a": float("inf")}, "weight must be finite and >= 0"),
        ({"score_a": "2"}, "direction must be"),
        ([{"column": "score_a", "weight": True}], "weight must be a number"),
        ({"score_a": 0, "score_b": 0.0}, "at least one column with a weight above 0"),
        (["score_a", "score_a"], "listed twice"),
        ([], "at least one column"),
        ([{"weight": 1}], "needs a column name"),
        (["emb_clip"], "not embedding vectors"),
        (3, "must be a mapping or a list"),
    ],
)
def test_bad_column_specs_are_config_errors(columns, fragment):
    with pytest.raises(ConfigError) as info:
        QualityScore(columns).fit({"score_a": [1.0], "score_b": [2.0]})
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_or_non_numeric_columns_are_data_errors():
    with pytest.raises(DataError, match="no column 'score_nope'; available: score_a"):
        QualityScore(["score_nope"]).fit({"score_a": [1.0]})
    with pytest.raises(DataError, match="'check_lang' is not numeric"):
        QualityScore(["check_lang"]).fit({"check_lang": ["en"]})
    q = QualityScore(["score_a"]).fit({"score_a": [1.0]})
    with pytest.raises(DataError, match="no column 'score_a'"):
        q.score_samples({"score_b": [1.0]})


def test_constructor_stores_arguments_and_follows_the_estimator_contract():
    from sklearn.base import clone

    spec = {"score_a": 1.0}
    q = QualityScore(spec, output_column="q")
    assert q.columns is spec
    assert clone(q).get_params() == {"columns": spec, "error_column": "error", "output_column": "q"}
    with pytest.raises(VLSelectError, match="not fitted"):
        q.score_samples({"score_a": [1.0]})
    assert q.fit({"score_a": [1.0, 2.0]}) is q


def test_scoring_new_rows_places_them_in_the_fitted_pool():
    q = QualityScore(["score_a"]).fit({"score_a": [1.0, 2.0, 3.0]})
    assert q.score_samples({"score_a": [0.0, 2.0, 2.5, 9.0]}).tolist() == [0.0, 0.5, 0.75, 1.0]


# The learned selector as the quality source.


class _FixedScores:
    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=float)

    def score_samples(self, X):
        return self.scores


def test_quality_from_selector_converts_scores_to_percentile_ranks():
    data = {"id": list("abcde"), "error": [None, None, None, None, "bad"]}
    sel = _FixedScores([3.5, -10.0, NAN, 120.0, 1000.0])
    got = quality_from_selector(sel, data)
    assert got[[0, 1, 3]].tolist() == [0.5, 0.0, 1.0]
    assert np.isnan(got[2]) and np.isnan(got[4])  # the selector's NaN; the error row
    with pytest.raises(DataError, match="returned 2 scores for 5 rows"):
        quality_from_selector(_FixedScores([1.0, 2.0]), data)


def test_quality_from_a_trained_learned_selector_keeps_its_order():
    from selector.learned import LearnedSelector

    data = _pool(60, seed=3)
    data["error"][5] = "corrupt_image: x"
    y = 2 * data["score_a"] - np.log1p(data["score_b"])
    sel = LearnedSelector(model="ridge").fit(data, y)
    raw = sel.score_samples(data)
    got = quality_from_selector(sel, data)
    usable = np.arange(60) != 5
    assert np.isnan(got[5]) and not np.isnan(got[usable]).any()
    assert got[usable].min() == 0.0 and got[usable].max() == 1.0
    np.testing.assert_array_equal(np.argsort(got[usable], kind="stable"), np.argsort(raw[usable], kind="stable"))
    out = add_quality_column(data, sel)
    np.testing.assert_array_equal(out["score_quality"], got)


# Writing the column.


def test_add_quality_column_to_dataset_dataframe_and_mapping():
    datasets = pytest.importorskip("datasets")
    pd = pytest.importorskip("pandas")
    data = {
        "id": list("abcd"),
        "score_a": [1.0, 3.0, None, 2.0],
        "score_b": [4.0, 1.0, 2.0, 3.0],
        "error": [None, None, None, None],
    }
    columns = {"score_a": 1.0, "score_b": {"direction": "lower"}}
    expected = _score(columns, data)
    ds = add_quality_column(datasets.Dataset.from_dict(data), QualityScore(columns))
    np.testing.assert_allclose(np.array(ds["score_quality"], dtype=float), expected)
    assert ds.features["score_quality"].dtype == "float64"
    frame = add_quality_column(pd.DataFrame(data), QualityScore(columns))
    np.testing.assert_allclose(frame["score_quality"].to_numpy(), expected)
    mapping = add_quality_column(data, QualityScore(columns))
    assert "score_quality" not in data  # the input is not modified
    np.testing.assert_allclose(mapping["score_quality"], expected)
    # an existing column is replaced, and the dataset's own rows are used after a select()
    again = add_quality_column(ds.select([3, 1, 0]), QualityScore(columns))
    assert again.column_names.count("score_quality") == 1
    np.testing.assert_allclose(
        np.array(again["score_quality"], dtype=float),
        _score(columns, {k: [v[i] for i in (3, 1, 0)] for k, v in data.items()}),
    )


def test_add_quality_column_accepts_precomputed_scores_and_a_name():
    out = add_quality_column({"x": [1, 2]}, [0.2, NAN], column="score_q2")
    assert out["score_q2"][0] == 0.2 and np.isnan(out["score_q2"][1])
    with pytest.raises(DataError, match="3 scores for 2 rows"):
        add_quality_column({"x": [1, 2]}, [0.1, 0.2, 0.3])
