from __future__ import annotations

import inspect
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import selector
from selector.errors import ConfigError, DataError
from selector.strategies import (
    STRATEGIES,
    StrategyInput,
    StrategyResult,
    available_strategies,
    get_strategy,
    rank_by_score,
    resolve_budget,
    select,
    select_arrays,
    select_dataset,
    stable_hash,
    strategy,
    strategy_options,
)


def pool(n=120, d=8, seed=0, n_errors=5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, d)) * 2
    X = (centers[rng.integers(0, 4, n)] + rng.normal(size=(n, d))).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    scores = rng.random(n)
    ids = [f"row-{i:04d}" for i in range(n)]
    errors = [None] * n
    for i in rng.choice(n, n_errors, replace=False):
        errors[i] = "corrupt_image: truncated"
    return X, scores, ids, errors


def contract_inputs(name, tmp_path, seed=0):
    """The inputs strategy ``name`` needs, built from its ``needs`` and options, for the 120-row pool.

    Returns ``(per_row, options)``: per-row arrays for :func:`select_arrays` (``embeddings`` is positional) and
    the options (small ``n_clusters``; a ``dynamics.parquet`` for the training-dynamics strategies).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, scores, ids, errors = pool(seed=seed)
    per_row = {"embeddings": None, "ids": np.array(ids), "errors": np.array(errors, dtype=object)}
    for need in get_strategy(name).needs:
        first = need.split("|")[0]
        if first == "embeddings":
            per_row["embeddings"] = X
        elif first == "scores":
            per_row["scores"] = scores
        elif first == "clusters":
            per_row["clusters"] = np.argmax(X[:, :4], axis=1)
    defaults = strategy_options(name)
    options = {"n_clusters": 4} if "n_clusters" in defaults else {}
    if "dynamics" in defaults:
        rng = np.random.default_rng(seed)
        rows = [(i, e) for i in ids for e in range(3)]
        table = pa.table(
            {
                "id": pa.array([i for i, _ in rows], pa.string()),
                "epoch": pa.array([e for _, e in rows], pa.int64()),
                "correct": pa.array(rng.random(len(rows)) < 0.6, pa.bool_()),
                "el2n": pa.array(rng.random(len(rows)), pa.float32()),
                "grad_norm": pa.array(rng.random(len(rows)), pa.float32()),
                "curvature": pa.array(rng.random(len(rows)), pa.float32()),
            }
        )
        path = tmp_path / f"dynamics-{seed}.parquet"
        pq.write_table(table, path)
        options["dynamics"] = str(path)
    return per_row, options


def _select(per_row, budget, name, perm=None, **kwargs):
    rows = {k: (v if v is None or perm is None else v[perm]) for k, v in per_row.items()}
    embeddings = rows.pop("embeddings")
    return select_arrays(embeddings, budget, name, **rows, **kwargs)


def test_registry_lists_every_strategy_and_each_follows_the_decorator_contract():
    assert set(STRATEGIES) <= set(available_strategies())
    assert len(available_strategies()) >= 12
    for name in available_strategies():
        fn = get_strategy(name)
        assert isinstance(fn.needs, tuple), name  # declared with @strategy(needs=...)
        # every option has a default, so `select(ds, budget, name)` works without options
        assert all(value is not inspect.Parameter.empty for value in strategy_options(name).values()), name


@pytest.mark.parametrize("name", available_strategies())
def test_strategy_contract_budget_errors_reasons(name, tmp_path):
    per_row, options = contract_inputs(name, tmp_path)
    sel = _select(per_row, 30, name, **options)
    assert sel.n_selected == 30 and sel.n_budget == 30
    err = np.array([e is not None for e in per_row["errors"]])
    assert not sel.mask[err].any()
    assert all(r == "error corrupt_image" for r in sel.reason[err])
    assert sorted(sel.rank[sel.mask].tolist()) == list(range(30))
    assert np.all(sel.rank[err] == -1)
    assert all(isinstance(r, str) and r for r in sel.reason)
    assert all(r.startswith("selected") for r in sel.reason[sel.mask])
    assert sel.indices.shape == (30,) and np.all(np.diff(sel.rank[sel.indices]) > 0)
    assert sel.options == {**strategy_options(name), **options}
    summary = sel.summary()
    assert summary["n_selected"] == 30 and summary["reasons"]["error"] == 5 and summary["n_eligible"] == 115


@pytest.mark.parametrize("name", available_strategies())
def test_strategy_contract_permutation_and_seed(name, tmp_path):
    per_row, options = contract_inputs(name, tmp_path, seed=1)
    a = _select(per_row, 25, name, random_state=7, **options)
    b = _select(per_row, 25, name, random_state=7, **options)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.rank, b.rank)
    perm = np.random.default_rng(3).permutation(len(per_row["ids"]))
    c = _select(per_row, 25, name, perm=perm, random_state=7, **options)
    np.testing.assert_array_equal(c.mask, a.mask[perm])
    np.testing.assert_array_equal(c.rank, a.rank[perm])
    np.testing.assert_array_equal(c.reason, a.reason[perm])


@pytest.mark.parametrize("name", available_strategies())
def test_strategy_contract_missing_cluster_rows_are_never_selected(name, tmp_path):
    per_row, options = contract_inputs(name, tmp_path)
    clusters = np.array(per_row.get("clusters", np.arange(120) % 3), dtype=object)
    clusters[[0, 1, 2]] = [-1, None, float("nan")]
    # a given cluster column is used by every strategy: rows without a cluster are not eligible.
    sel = _select({**per_row, "clusters": clusters}, 100, name, **options)
    assert not sel.mask[[0, 1, 2]].any()
    for i in (0, 1, 2):
        assert sel.reason[i] in ("missing clusters", "error corrupt_image")
    assert sel.n_selected == min(100, sel.summary()["n_eligible"])


def test_random_seed_changes_the_selection():
    X, _, ids, _ = pool()
    a = select_arrays(X, 30, "random", ids=ids, random_state=0)
    b = select_arrays(X, 30, "random", ids=ids, random_state=1)
    assert not np.array_equal(a.mask, b.mask)


def test_topk_nan_last_and_ties_by_id():
    scores = np.array([0.5, np.nan, 0.9, 0.5, 0.5, np.nan])
    ids = ["e", "a", "z", "d", "b", "c"]
    sel = select_arrays(None, 6, "topk", scores=scores, ids=ids)
    ranked = [ids[i] for i in sel.indices]
    assert ranked == ["z", "b", "d", "e", "a", "c"]
    assert sel.reason[1].endswith("score=nan")
    asc = select_arrays(None, 2, "topk", scores=scores, ids=ids, ascending=True)
    assert [ids[i] for i in asc.indices] == ["b", "d"]


def test_rank_by_score_helper():
    order = rank_by_score([1.0, np.nan, 3.0, 1.0], tie_rank=[3, 0, 1, 2])
    assert order.tolist() == [2, 3, 0, 1]


def test_fraction_budget_counts_the_whole_pool_and_too_few_rows_warn(caplog):
    X, scores, ids, errors = pool(n=40, n_errors=30)
    sel = select_arrays(X, 0.5, "topk", scores=scores, ids=ids, errors=errors)
    assert sel.n_budget == 20
    assert sel.n_selected == 10  # only 10 eligible rows
    assert sel.warnings and "exceeds the 10 eligible rows" in sel.warnings[0]
    with caplog.at_level(logging.WARNING):
        select_arrays(X, 100, "random", ids=ids, errors=errors)
    assert "selecting all eligible rows" in caplog.text


def test_budget_validation():
    assert resolve_budget(0.25, 10) == 3  # rounds half up
    assert resolve_budget(1.0, 7) == 7
    assert resolve_budget("10", 7) == 10 and resolve_budget(10.0, 7) == 10
    for bad in (0, -1, 0.0, 1.5, True, "many", None):
        with pytest.raises(ConfigError, match="budget"):
            resolve_budget(bad, 10)
    X, scores, ids, _ = pool(n=20)
    with pytest.raises(ConfigError, match="budget: must be above 0"):
        select_arrays(X, 0, "dbp", ids=ids, n_clusters=3)


def test_unknown_strategy_option_and_missing_inputs():
    X, scores, ids, _ = pool(n=30)
    with pytest.raises(ConfigError, match="unknown strategy 'best'.*random"):
        select_arrays(X, 5, "best")
    with pytest.raises(ConfigError, match="has no option.*n_cluster.*options: backend"):
        select_arrays(X, 5, "ssl_prototypes", n_cluster=3)
    with pytest.raises(ConfigError, match="needs scores"):
        select_arrays(X, 5, "topk")
    with pytest.raises(ConfigError, match="needs embeddings"):
        select_arrays(None, 5, "dbp", scores=scores)
    with pytest.raises(ConfigError, match="needs clusters .* or embeddings"):
        select_arrays(None, 5, "instructiongpt4", scores=scores)
    with pytest.raises(ConfigError, match="does not rank by a score"):
        select_arrays(X, 5, "dbp:score_x")
    with pytest.raises(ConfigError, match="keep rule"):
        select_arrays(X, 5, "ssl_prototypes", keep="medium", n_clusters=2)
    with pytest.raises(DataError, match="unique"):
        select_arrays(X, 5, "random", ids=["a"] * 30)
    with pytest.raises(DataError, match="scores has 10 entries for 30 rows"):
        select_arrays(X, 5, "dbp", scores=scores[:10], ids=ids)
    with pytest.raises(DataError, match="embeddings must have shape"):
        select_arrays(X[:, 0], 5, "dbp", ids=ids)


def test_rows_without_embedding_are_never_selected():
    X, scores, ids, _ = pool(n=50, n_errors=0)
    X[3] = np.nan
    sel = select_arrays(X, 49, "ssl_prototypes", ids=ids, n_clusters=3)
    assert not sel.mask[3] and sel.reason[3] == "missing embeddings"
    assert sel.n_selected == 49
    # a strategy that doesn't use embeddings keeps such rows eligible
    assert select_arrays(X, 50, "topk", scores=scores, ids=ids).mask[3]


def test_instructiongpt4_proportional_quotas_from_given_clusters():
    n = 100
    clusters = np.array([0] * 60 + [1] * 30 + [2] * 10)
    scores = np.arange(n, dtype=float)
    sel = select_arrays(None, 10, "instructiongpt4", scores=scores, clusters=clusters)
    per = np.bincount(clusters[sel.mask], minlength=3)
    assert per.tolist() == [6, 3, 1]
    # the best-scoring rows of each cluster
    assert sel.mask[54:60].all() and sel.mask[87:90].all() and sel.mask[99]
    assert sel.reason[99] == "selected cluster=2 rank=1/1"
    assert sel.reason[0].startswith("quota cluster=0 rank=60/6")
    assert sel.info["all"]["quota"] == [6, 3, 1]


def test_instructiongpt4_external_scores_and_kmeans_fallback():
    X, scores, ids, errors = pool()
    learned = -scores  # e.g. LearnedSelector.score_samples(ds)
    a = select_arrays(X, 20, "instructiongpt4", scores=learned, ids=ids, n_clusters=4)
    assert a.info["all"]["n_clusters"] == 4 and a.n_selected == 20
    b = select_arrays(X, 20, "instructiongpt4", scores=scores, ids=ids, n_clusters=4)
    assert not np.array_equal(a.mask, b.mask)


def test_stratify_keeps_a_small_source():
    X, scores, ids, _ = pool(n=200, n_errors=0)
    strata = ["big"] * 196 + ["tiny"] * 4
    scores = scores.copy()
    scores[196:] = -1.0  # the tiny task scores worst everywhere
    plain = select_arrays(X, 20, "topk", scores=scores, ids=ids)
    assert not plain.mask[196:].any()
    strat = select_arrays(X, 20, "topk", scores=scores, ids=ids, strata=strata)
    assert strat.n_selected == 20 and strat.mask[196:].sum() == 1
    assert strat.info["tiny"]["budget"] == 1
    clustered = select_arrays(X, 20, "dbp", ids=ids, strata=strata, n_clusters=3)
    assert clustered.n_selected == 20 and clustered.mask[196:].any()
    # cluster ids stay unique across strata
    big = set(clustered.cluster[:196].tolist())
    tiny = set(clustered.cluster[196:].tolist())
    assert not big & tiny


def test_dbp_names_the_kept_duplicate_and_reports_quotas():
    X, scores, ids, _ = pool(n=100, n_errors=0)
    X[7] = X[8]
    sel = select_arrays(X, 99, "dbp", ids=ids, n_clusters=3, eps=0.001)
    assert sel.n_selected == 99
    dropped = int(np.flatnonzero(~sel.mask)[0])
    assert dropped in (7, 8)
    kept = 15 - dropped
    assert sel.reason[dropped].startswith(f"dup_of={ids[kept]} cos=1.0000")
    assert sel.summary()["reasons"]["dup_of"] == 1
    info = sel.info["all"]
    assert info["n_duplicates"] == 1 and sum(info["quota"]) == 99
    small = select_arrays(X, 10, "dbp", ids=ids, n_clusters=3)
    assert any(r.startswith("quota cluster=") for r in small.reason)


def test_semdedup_budget_sets_the_threshold():
    X, _, ids, _ = pool(n=150, n_errors=0)
    sel = select_arrays(X, 100, "semdedup", ids=ids, n_clusters=3)
    rejected = ~sel.mask
    assert sel.n_selected == 100
    assert all(r.startswith("dup_of=") for r in sel.reason[rejected])
    # with a fixed eps, rows over the threshold are excluded even if the budget is not met
    strict = select_arrays(X, 150, "semdedup", ids=ids, n_clusters=3, eps=0.05)
    assert strict.n_selected < 150 and strict.warnings


def test_plugged_in_strategy_gets_the_policies(monkeypatch):
    calls = {}

    @strategy(needs=("scores",))
    def lowest(inp: StrategyInput, *, flip: bool = False) -> StrategyResult:
        calls["inp"] = inp
        order = rank_by_score(inp.scores, inp.tie_rank, descending=flip)
        return StrategyResult(order=order, info={"flip": flip})

    # registered exactly as a plug-in module would be: a "module:function" line in the registry
    globals()["_plugged"] = lowest
    monkeypatch.setitem(STRATEGIES, "lowest", f"{__name__}:_plugged")
    assert "lowest" in available_strategies()
    assert strategy_options("lowest") == {"flip": False}
    X, scores, ids, errors = pool()
    sel = select_arrays(None, 12, "lowest", scores=scores, ids=ids, errors=errors)
    assert sel.n_selected == 12 and not sel.mask[[e is not None for e in errors]].any()
    assert calls["inp"].n == 115 and calls["inp"].budget == 12 and calls["inp"].embeddings is None
    eligible = np.array([e is None for e in errors])
    assert np.all(scores[sel.mask].max() <= np.sort(scores[eligible])[11] + 1e-12)
    assert sel.options == {"flip": False} and sel.info["all"]["flip"] is False


def test_broken_plugin_output_is_caught(monkeypatch):
    @strategy()
    def broken(inp):
        return StrategyResult(order=np.array([0, 0]))

    globals()["_broken"] = broken
    monkeypatch.setitem(STRATEGIES, "broken", f"{__name__}:_broken")
    with pytest.raises(ValueError, match="repeated or out-of-range"):
        select_arrays(None, 1, "broken", ids=["a", "b", "c"])


def test_stable_hash_is_fixed():
    # a fixed value guards against an accidental change of the hash (it would change every selection)
    assert int(stable_hash(["row-0001"])[0]) == int(stable_hash(np.array(["row-0001"]))[0])
    assert stable_hash(["a", "b"]).dtype == np.uint64 and stable_hash(["a"])[0] != stable_hash(["b"])[0]


def test_public_names_are_lazy():
    assert selector.select is select and selector.select_arrays is select_arrays
    assert selector.KMeans.__name__ == "KMeans" and selector.Selection.__name__ == "Selection"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 40),
    frac=st.floats(0.0, 1.0),
    name=st.sampled_from(available_strategies()),
    seed=st.integers(0, 1000),
    n_errors=st.integers(0, 5),
)
def test_properties_exact_budget_seed_and_permutation(n, frac, name, seed, n_errors):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    scores = rng.random(n)
    scores[rng.random(n) < 0.2] = np.nan
    ids = [f"id{rng.integers(1e9)}-{i}" for i in range(n)]
    errors = [("bad_row: x" if i < n_errors else None) for i in range(n)]
    budget = max(1, int(round(frac * n)))  # a budget of 0 is an error
    opts = {"n_clusters": 3} if name in ("ssl_prototypes", "semdedup", "dbp", "instructiongpt4") else {}
    a = select_arrays(X, budget, name, scores=scores, ids=ids, errors=errors, random_state=seed, **opts)
    assert a.n_selected == min(budget, max(n - n_errors, 0))
    b = select_arrays(X, budget, name, scores=scores, ids=ids, errors=errors, random_state=seed, **opts)
    np.testing.assert_array_equal(a.mask, b.mask)
    perm = rng.permutation(n)
    c = select_arrays(
        X[perm],
        budget,
        name,
        scores=scores[perm],
        ids=[ids[i] for i in perm],
        errors=[errors[i] for i in perm],
        random_state=seed,
        **opts,
    )
    np.testing.assert_array_equal(c.mask, a.mask[perm])


# ------------------------------------------------------------------------------------------ datasets adapters


def scored_dataset(n=60, seed=0, two_embeddings=False):
    from datasets import Dataset

    X, scores, ids, errors = pool(n=n, seed=seed, n_errors=3)
    emb = [row.tolist() for row in X]
    emb[5] = [float("nan")] * X.shape[1]
    score = scores.astype(np.float32).tolist()
    score[6] = None
    data = {
        "id": ids,
        "messages": [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}] for i in range(n)],
        "error": errors,
        "source": ["vqa" if i % 10 else "ocr" for i in range(n)],
        "score_clip": score,
        "emb_clip": emb,
        "cluster_div": [i % 3 for i in range(n)],
    }
    if two_embeddings:
        data["emb_text"] = emb
    return Dataset.from_dict(data)


def test_select_on_a_scored_dataset():
    ds = scored_dataset()
    sel = select(ds, 12, "instructiongpt4", score_column="score_clip", cluster_column="cluster_div")
    assert sel.n_selected == 12 and sel.columns["clusters"] == "cluster_div"
    assert np.bincount(sel.cluster[sel.mask]).tolist() == [4, 4, 4]
    assert sel.reason[6].endswith("score=nan")
    # topk:<column> names the score column
    top = select(ds, 0.2, "topk:score_clip")
    assert top.n_selected == 12 and top.columns["scores"] == "score_clip"
    # embeddings are auto-detected when there is one emb_* column; the NaN row is never selected
    dbp = select(ds, 50, "dbp", n_clusters=3)
    assert dbp.columns["embeddings"] == "emb_clip" and not dbp.mask[5]
    assert dbp.reason[5] == "missing emb_clip"
    strat = select(ds, 10, "topk:score_clip", stratify_column="source")
    sources = np.array(ds["source"])
    assert strat.mask[sources == "ocr"].sum() >= 1


def test_select_external_scores_and_column_errors():
    ds = scored_dataset()
    learned = np.linspace(0, 1, len(ds))
    sel = select(ds, 10, "instructiongpt4", scores=learned, cluster_column="cluster_div")
    assert sel.columns["scores"] == "external scores" and sel.n_selected == 10
    with pytest.raises(ConfigError, match="either score_column= or scores="):
        select(ds, 10, "topk", score_column="score_clip", scores=learned)
    with pytest.raises(ConfigError, match="score_colum=|is not a column"):
        select(ds, 10, "topk", score_column="score_nope")
    with pytest.raises(ConfigError, match="needs score_column= \\(one of: score_clip\\)"):
        select(ds, 10, "topk")
    with pytest.raises(DataError, match="scores has 3 entries"):
        select(ds, 10, "topk", scores=[1, 2, 3])
    two = scored_dataset(two_embeddings=True)
    with pytest.raises(ConfigError, match="needs embedding_column= \\(one of: emb_clip, emb_text\\)"):
        select(two, 10, "dbp")
    assert select(two, 10, "dbp", embedding_column="emb_text", n_clusters=2).n_selected == 10


def test_select_dataset_subset_and_keep_rejected():
    ds = scored_dataset()
    sel = select(ds, 15, "topk:score_clip")
    subset = select_dataset(ds, sel)
    assert len(subset) == 15 and set(subset["id"]) == set(np.array(ds["id"])[sel.mask])
    full = select_dataset(ds, sel, keep_rejected=True)
    assert len(full) == len(ds)
    assert sum(full["selected"]) == 15
    assert full["selection_rank"] == sel.rank.tolist()
    assert full["selection_reason"][0] == sel.reason[0]
    again = select_dataset(full, sel, keep_rejected=True)  # re-applying replaces the columns
    assert again.column_names.count("selected") == 1
    with pytest.raises(DataError, match="ids differ"):
        select_dataset(ds.shuffle(seed=0), sel)
    with pytest.raises(DataError, match="rows"):
        select_dataset(ds.select(range(10)), sel)


def test_select_reads_the_error_column_and_string_clusters():
    ds = scored_dataset().map(lambda r, i: {"cluster_div": f"c{i % 2}"}, with_indices=True)
    sel = select(ds, 8, "instructiongpt4:score_clip", cluster_column="cluster_div")
    assert sel.n_selected == 8 and set(sel.cluster[sel.mask].tolist()) == {0, 1}
    errors = np.array([e is not None for e in ds["error"]])
    assert not sel.mask[errors].any()


def test_embedding_matrix_reads_none_and_rejects_non_vectors():
    from datasets import Dataset

    from selector.strategies import embedding_matrix

    ds = Dataset.from_dict(
        {"id": ["a", "b", "c"], "emb_x": [[1.0, 0.0], None, [0.0, 1.0]], "emb_bad": ["x", "y", "z"]}
    )
    m = embedding_matrix(ds, "emb_x")
    assert m.dtype == np.float32 and m.shape == (3, 2) and np.isnan(m[1]).all()
    with pytest.raises(DataError, match="expected one vector per row"):
        embedding_matrix(ds, "emb_bad")
    sel = select(ds, 3, "ssl_prototypes", embedding_column="emb_x", n_clusters=1)
    assert sel.n_selected == 2 and sel.reason[1] == "missing emb_x" and sel.warnings


def test_module_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, selector.strategies, selector.quota, selector.prototypes, selector.cluster, "
        "selector.commands.select; "
        "print(','.join(m for m in ('torch', 'transformers', 'datasets', 'faiss') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
