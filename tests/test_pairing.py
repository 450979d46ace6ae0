"""The ``pairing`` metric: cross-fitted pair consistency of two embedding columns."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from metrics import get_metric
from selector.errors import ConfigError, DataError


def _pool(n: int = 120, n_wrong: int = 8, seed: int = 0, d_image: int = 12, d_answer: int = 10):
    """Four kinds of image, each paired with answers about it; the first ``n_wrong`` rows' answers are about
    another kind of image. Dimensions differ on the two sides, as image and text models do."""
    rng = np.random.default_rng(seed)
    kind = np.arange(n) % 4
    image_centres = rng.normal(size=(4, d_image))
    answer_centres = rng.normal(size=(4, d_answer))
    image = image_centres[kind] + rng.normal(0, 0.3, (n, d_image))
    about = kind.copy()
    about[:n_wrong] = (kind[:n_wrong] + 1 + np.arange(n_wrong) % 3) % 4
    answer = answer_centres[about] + rng.normal(0, 0.3, (n, d_answer))
    return {
        "id": np.array([f"r{i:03d}" for i in range(n)], dtype=object),
        "error": np.full(n, None, dtype=object),
        "emb_image": image.astype(np.float32),
        "emb_answer": answer.astype(np.float32),
    }


def _metric(**kwargs):
    return get_metric("pairing", columns=["emb_image", "emb_answer"], dim=4, **kwargs)


def test_wrong_pairs_score_below_genuine_ones():
    pool = _pool()
    metric = _metric()
    score = metric.fit_transform(pool)["score_pairing"]
    assert score.dtype == np.float32 and np.all((score >= 0) & (score <= 1))
    # every answer about another image ranks below every genuine pair
    assert score[:8].max() < score[8:].min()
    # a random re-pairing lands on the same kind of image 1 time in 4, so about 0.875 is the best possible
    assert 0.75 < metric.held_out_auroc_ <= 0.9
    assert metric.report(pool) == {"held_out_auroc": metric.held_out_auroc_, "rows": 120}


def test_no_row_is_scored_by_a_model_that_saw_it():
    # A model fitted on every row (no cross-fitting) would partly learn the wrong pairs as genuine; with
    # cross-fitting a row's score does not change when only that row's own pair changes elsewhere in training.
    pool = _pool()
    metric = _metric()
    base = metric.fit_transform(pool)["score_pairing"]
    folds = len(metric.models_)
    assert folds == 5
    # each fold model scores the held-out rows; the mean of the fold models scores rows it never saw
    unseen = _pool(n=40, n_wrong=10, seed=0)
    unseen["id"] = np.array([f"new{i}" for i in range(40)], dtype=object)
    fresh = metric.transform(unseen)["score_pairing"]
    assert np.nanmean(fresh[:10]) < np.nanmean(fresh[10:])
    assert np.isfinite(base).all()


def test_error_rows_and_missing_embeddings_are_nan():
    pool = _pool()
    pool["error"][3] = "corrupt_image: x"
    pool["emb_image"][5] = np.nan
    pool["emb_answer"][7] = 0.0  # a zero vector: no input
    score = _metric().fit_transform(pool)["score_pairing"]
    assert np.isnan(score[[3, 5, 7]]).all()
    assert np.isfinite(np.delete(score, [3, 5, 7])).all()


def test_deterministic_and_permutation_invariant():
    pool = _pool()
    a = _metric(random_state=3).fit_transform(pool)["score_pairing"]
    b = _metric(random_state=3).fit_transform(pool)["score_pairing"]
    np.testing.assert_array_equal(a, b)
    perm = np.random.default_rng(1).permutation(len(pool["id"]))
    shuffled = {k: v[perm] for k, v in pool.items()}
    c = _metric(random_state=3).fit_transform(shuffled)["score_pairing"]
    np.testing.assert_allclose(c, a[perm], rtol=1e-5, atol=1e-6)


def test_too_few_rows_is_nan_with_a_warning(caplog):
    pool = {k: v[:15] for k, v in _pool().items()}
    with caplog.at_level(logging.WARNING, logger="metrics.pairing"):
        score = _metric().fit_transform(pool)["score_pairing"]
    assert np.isnan(score).all() and "at least 20 needed" in caplog.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"columns": ["emb_image"]}, "two different embedding columns"),
        ({"columns": "emb_image,emb_image"}, "two different embedding columns"),
        ({"dim": 0}, "dim must be an integer >= 1"),
        ({"n_folds": 1}, "n_folds must be an integer >= 2"),
        ({"negatives": 0}, "negatives must be an integer >= 1"),
        ({"C": -1.0}, "C must be a positive number"),
        ({"C": float("nan")}, "C must be a positive number"),
        ({"random_state": "x"}, "random_state must be an int seed"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs, message):
    params = {"columns": ["emb_image", "emb_answer"], **kwargs}
    with pytest.raises(ConfigError, match=message):
        get_metric("pairing", **params).fit_transform(_pool())


def test_missing_or_malformed_column_is_a_data_error():
    pool = _pool()
    del pool["emb_answer"]
    with pytest.raises(DataError, match="score an embedding first"):
        _metric().fit_transform(pool)
    pool = _pool()
    pool["emb_answer"] = pool["emb_answer"][:, 0]
    with pytest.raises(DataError, match=r"\(n, d\) embedding column"):
        _metric().fit_transform(pool)


def test_transform_before_fit_is_an_error():
    with pytest.raises(ConfigError, match="not fitted"):
        _metric().transform(_pool())


def test_runs_as_a_scoring_step_on_a_dataset():
    from datasets import Dataset

    import selector

    pool = _pool()
    ds = Dataset.from_dict(
        {
            "id": list(pool["id"]),
            "error": [None] * 120,
            "emb_image": pool["emb_image"].tolist(),
            "emb_answer": pool["emb_answer"].tolist(),
        }
    )
    scored = selector.score(ds, [_metric()], progress=False)
    score = np.asarray(scored["score_pairing"], dtype=np.float32)
    assert score[:8].max() < score[8:].min()
