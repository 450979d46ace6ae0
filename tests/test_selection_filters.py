"""Filters and the dedup step inside `select` / `select_arrays`: reasons, counts, kept copy, order invariance."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from selector.errors import ConfigError, DataError
from selector.filters import FilterRule
from selector.quality import QualityScore, add_quality_column
from selector.selection import INELIGIBLE_KINDS, reason_kind, select, select_arrays

NAN = float("nan")


def _pool(n=12):
    rng = np.random.default_rng(0)
    return Dataset.from_dict(
        {
            "id": [f"r{i:02d}" for i in range(n)],
            "error": ["corrupt_image: x" if i == 0 else None for i in range(n)],
            "score_a": [float(i) for i in range(n)],
            "score_b": [NAN if i == 5 else float(n - i) for i in range(n)],
            "check_exact_dup_of": ["r01" if i == 7 else None for i in range(n)],
            "emb_x": rng.normal(size=(n, 4)).astype(np.float32).tolist(),
        }
    )


def test_reason_kind():
    assert reason_kind("filter:score_x>=0.3 and score_x<=2") == "filter"
    assert reason_kind("dedup:dup_of=a cos=0.9900") == "dedup"
    assert reason_kind("dup_of=a cos=0.99 cluster=3") == "dup_of"
    assert reason_kind("error missing_image") == "error" and reason_kind("selected cluster=1 rank=1/2") == "selected"
    assert {"filter", "dedup"} <= set(INELIGIBLE_KINDS)


def test_filters_make_rows_ineligible_with_a_reason_and_counts():
    ds = _pool()
    sel = select(
        ds,
        20,
        "topk:score_a",
        filters=[
            "score_b:min=3",  # NaN (row 5) fails min; rows 10, 11 have score_b 2, 1
            {"column": "check_exact_dup_of", "is_null": True},  # row 7
            FilterRule("score_a", max=10),  # row 11 again: counted under both rules
        ],
    )
    reasons = dict(zip(sel.ids.tolist(), sel.reason.tolist()))
    assert reasons["r00"].startswith("error ")  # the error rule comes first; filters never see error rows
    assert reasons["r05"] == reasons["r10"] == reasons["r11"] == "filter:score_b>=3"
    assert reasons["r07"] == "filter:check_exact_dup_of is null"
    assert sel.filter_report["counts"] == {
        "score_b>=3": 3,
        "check_exact_dup_of is null": 1,
        "score_a<=10": 1,
    }
    assert sel.filter_report["n_filtered"] == 4 and sel.filter_report["n_eligible"] == 11
    summary = sel.summary()
    assert summary["reasons"]["filter"] == 4 and summary["n_eligible"] == 7 and sel.n_selected == 7
    assert not sel.mask[[0, 5, 7, 10, 11]].any()
    assert sel.columns["filters"] == ["score_b>=3", "check_exact_dup_of is null", "score_a<=10"]
    # the "fewer eligible rows than the budget" warning names the filtered rows too
    assert "filtered" in sel.warnings[0] and "filter 4" in sel.warnings[0] and "error 1" in sel.warnings[0]


def test_nan_fails_max_and_quantiles_use_the_eligible_rows():
    ds = _pool()
    sel = select(ds, 3, "topk:score_a", filters=["score_b:max=100", "score_a:min_quantile=0.5"])
    assert sel.reason[5] == "filter:score_b<=100"
    # quantiles are over the rows eligible before any rule (1..11; each rule independent of the others): median 6
    assert sel.filter_report["rules"][1]["resolved"] == {"min_quantile": 6.0}
    assert sel.filter_report["counts"] == {"score_b<=100": 1, "score_a>=quantile(0.5)": 5}
    assert sel.ids[sel.indices].tolist() == ["r11", "r10", "r09"]


def test_select_arrays_filters_read_columns():
    sel = select_arrays(
        None, 2, "topk", scores=[3.0, 2.0, 1.0, 0.5], filters=["q:min=0.5"], columns={"q": [0.1, 0.9, NAN, 0.7]}
    )
    assert sel.ids[sel.indices].tolist() == ["1", "3"]
    assert sel.reason.tolist()[0] == sel.reason.tolist()[2] == "filter:q>=0.5"
    with pytest.raises(ConfigError, match="columns="):
        select_arrays(None, 2, "topk", scores=[1.0, 2.0], filters=["q:min=0"])
    with pytest.raises(DataError, match="no column 'nope'"):
        select_arrays(None, 1, "topk", scores=[1.0, 2.0], filters=["nope:min=0"], columns={"q": [1, 2]})
    with pytest.raises(ConfigError, match="unknown key"):
        select_arrays(
            None, 1, "topk", scores=[1.0, 2.0], filters=[{"column": "q", "minimum": 1}], columns={"q": [1, 2]}
        )


def test_no_filters_and_no_dedup_change_nothing():
    ds = _pool(40)
    base = select(ds, 10, "ssl_prototypes", embedding_column="emb_x", n_clusters=3)
    same = select(ds, 10, "ssl_prototypes", embedding_column="emb_x", n_clusters=3, filters=[], dedup_column=None)
    assert np.array_equal(base.mask, same.mask) and np.array_equal(base.reason, same.reason)
    assert same.filter_report is None and same.dedup_report is None


def _near_duplicates(seed=0):
    """30 random rows plus a group of 4 near-copies of row 3 and a pair of copies of row 10."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(36, 16)).astype(np.float32)
    for j, noise in zip(range(30, 34), (1e-3, 2e-3, -1e-3, 3e-3)):
        X[j] = X[3] + noise
    X[34] = X[10] * 2.0  # same direction: cosine 1
    X[35] = X[10]
    scores = rng.uniform(size=36)
    scores[32] = 5.0  # the best copy of row 3's group
    scores[35] = scores[10]  # a tie inside row 10's group: the smaller id wins
    scores[34] = NAN  # NaN ranks last
    ids = [f"id{j:02d}" for j in range(36)]
    return X, scores, ids


def test_dedup_keeps_the_best_scored_copy_and_names_it():
    X, scores, ids = _near_duplicates()
    sel = select_arrays(X, 36, "topk", scores=scores, ids=ids, dedup_embeddings=X, dedup_eps=0.01)
    removed = {ids[j]: sel.reason[j] for j in range(36) if reason_kind(sel.reason[j]) == "dedup"}
    assert set(removed) == {"id03", "id30", "id31", "id33", "id34", "id35"}
    assert all(r.startswith("dedup:dup_of=id32 cos=") for k, r in removed.items() if k in ("id03", "id30", "id31"))
    assert removed["id35"].startswith("dedup:dup_of=id10 cos=1.0000")  # tie on score: id10 < id35
    assert removed["id34"].startswith("dedup:dup_of=id10 cos=1.0000")  # NaN score never kept over a scored copy
    assert sel.dedup_report["n_duplicates"] == 6 and sel.dedup_report["n_compared"] == 36
    assert sel.summary()["reasons"]["dedup"] == 6 and sel.n_selected == 30
    assert sel.mask[32] and sel.mask[10]


def test_dedup_is_invariant_to_row_order():
    X, scores, ids = _near_duplicates(1)
    kwargs = {"dedup_eps": 0.01, "n_clusters": 4}
    base = select_arrays(X, 12, "ssl_prototypes", scores=scores, ids=ids, dedup_embeddings=X, **kwargs)
    perm = np.random.default_rng(7).permutation(36)
    moved = select_arrays(
        X[perm],
        12,
        "ssl_prototypes",
        scores=scores[perm],
        ids=[ids[p] for p in perm],
        dedup_embeddings=X[perm],
        **kwargs,
    )
    assert np.array_equal(base.mask[perm], moved.mask)
    assert base.reason[perm].tolist() == moved.reason.tolist()
    # the k-means split variant too
    base = select_arrays(X, 12, "topk", scores=scores, ids=ids, dedup_embeddings=X, dedup_eps=0.01, dedup_n_clusters=3)
    moved = select_arrays(
        X[perm], 12, "topk", scores=scores[perm], ids=[ids[p] for p in perm], dedup_embeddings=X[perm],
        dedup_eps=0.01, dedup_n_clusters=3,
    )  # fmt: skip
    assert base.reason[perm].tolist() == moved.reason.tolist()
    assert base.dedup_report["n_duplicates"] >= 1


def test_dedup_on_several_columns_needs_similarity_in_all_of_them():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(6, 8)).astype(np.float32)
    text = rng.normal(size=(6, 8)).astype(np.float32)
    image[1] = image[0]  # same image, other text: two questions about one picture
    image[2], text[2] = image[0] * 1.01, text[0] * 0.99  # same image and same text: a duplicate of row 0
    text[3] = text[4]  # same text, other image
    image[5] = np.nan  # no image: takes no part
    ds = Dataset.from_dict(
        {
            "id": list("abcdef"),
            "q": [1.0, 2.0, 0.0, 1.0, 1.0, 1.0],
            "emb_img": image.tolist(),
            "emb_txt": text.tolist(),
        }
    )
    sel = select(ds, 6, "topk:q", dedup_column=["emb_img", "emb_txt"], dedup_eps=0.01)
    assert [reason_kind(r) for r in sel.reason].count("dedup") == 1
    assert sel.reason[2].startswith("dedup:dup_of=a cos=1.0000")
    assert sel.dedup_report["n_missing"] == 1 and sel.dedup_report["columns"] == ["emb_img", "emb_txt"]
    assert sel.mask[5] and sel.columns["dedup"] == ["emb_img", "emb_txt"]
    # one column alone: the image duplicates collapse too (row 1 is a copy of row 0's image)
    only_image = select(ds, 6, "topk:q", dedup_column="emb_img", dedup_eps=0.01)
    assert {sel_id for sel_id, r in zip(only_image.ids, only_image.reason) if reason_kind(r) == "dedup"} == {"a", "c"}


def test_dedup_runs_after_filters_and_for_any_strategy():
    X, scores, ids = _near_duplicates()
    # filtering the best copy (id32) out: the next best of its group stays
    sel = select_arrays(
        X, 10, "random", scores=scores, ids=ids, dedup_embeddings=X, dedup_eps=0.01,
        filters=["keep:min=1"], columns={"keep": [0.0 if j == 32 else 1.0 for j in range(36)]},
    )  # fmt: skip
    assert sel.reason[32] == "filter:keep>=1"
    group = [3, 30, 31, 33]
    kept = [j for j in group if reason_kind(sel.reason[j]) != "dedup"]
    assert kept == [max(group, key=lambda j: scores[j])]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dedup_eps": -0.1}, "dedup_eps"),
        ({"dedup_eps": "a"}, "dedup_eps"),
        ({"dedup_n_clusters": 0}, "dedup_n_clusters"),
        ({"dedup_column": "emb_nope"}, "not a column"),
        ({"dedup_column": 3}, "dedup_column"),
    ],
)
def test_bad_dedup_requests(kwargs, match):
    ds = _pool()
    kwargs.setdefault("dedup_column", "emb_x")
    with pytest.raises(ConfigError, match=match):
        select(ds, 3, "topk:score_a", **kwargs)


def test_quality_column_as_score_column_and_dedup_priority():
    ds = _pool()
    quality = QualityScore({"score_a": 1.0, "score_b": {"weight": 1.0, "direction": "lower"}})
    scored = add_quality_column(ds, quality)
    sel = select(scored, 3, "topk:score_quality")
    assert sel.columns["scores"] == "score_quality"
    expected = np.argsort(-np.nan_to_num(np.asarray(scored["score_quality"], dtype=float), nan=-1), kind="stable")[:3]
    assert sorted(sel.indices.tolist()) == sorted(expected.tolist())


def test_group_dedup_keeps_each_groups_best_row_that_passes_the_filters():
    """Rows sharing a group id (check_copy_group) repeat each other: the best-scored eligible one stays, even
    when the group's first row is a defect the filters removed; no group (None / NaN / "") is never touched."""
    ids = [f"r{i}" for i in range(8)]
    scores = np.array([0.9, 0.5, 0.7, 0.8, 0.1, 0.6, NAN, 0.3])
    groups = np.array(["g0", "g0", "g0", "g1", "g1", None, "g1", ""], dtype=object)
    bad = {"bad": [1.0, 0, 0, 1.0, 0, 0, 0, 0]}  # r0 (best of g0) and r3 (best of g1) fail a filter
    sel = select_arrays(
        None, 8, "topk", scores=scores, ids=ids, filters=["bad:max=0.5"], columns=bad, dedup_groups=groups
    )
    reasons = dict(zip(ids, sel.reason))
    assert reasons["r0"].startswith("filter:") and reasons["r3"].startswith("filter:")
    assert reasons["r1"] == "dedup:dup_of=r2 group=dedup_groups"  # g0: r2 (0.7) beats r1 (0.5)
    assert reasons["r6"] == "dedup:dup_of=r4 group=dedup_groups"  # g1: a NaN score never beats a scored copy
    assert {i for i, keep in zip(ids, sel.mask) if keep} == {"r2", "r4", "r5", "r7"}
    report = sel.dedup_report
    assert report["n_duplicates"] == 2 and report["groups"]["counts"] == {"dedup_groups": 2}
    assert report["columns"] == [] and sel.summary()["reasons"]["dedup"] == 2


def test_group_dedup_then_semdedup_and_order_invariance():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(10, 4)).astype(np.float32)
    X[9] = X[8]  # an embedding duplicate outside any group
    ids = [f"id{i:02d}" for i in range(10)]
    scores = rng.uniform(size=10)
    groups = np.array(["a", "a", "b", "b", "b", None, None, None, None, None], dtype=object)
    kwargs = {"dedup_embeddings": X, "dedup_eps": 0.001, "dedup_groups": {"check_copy_group": groups}}
    base = select_arrays(None, 10, "topk", scores=scores, ids=ids, **kwargs)
    kinds = [r.split(" ")[-1] if reason_kind(r) == "dedup" else None for r in base.reason]
    assert (
        kinds.count("group=check_copy_group") == 3 and sum(k is not None and k.startswith("cos=") for k in kinds) == 1
    )
    assert base.dedup_report["n_duplicates"] == 4 and base.dedup_report["groups"]["n_duplicates"] == 3
    perm = rng.permutation(10)
    moved = select_arrays(
        None,
        10,
        "topk",
        scores=scores[perm],
        ids=[ids[p] for p in perm],
        dedup_embeddings=X[perm],
        dedup_eps=0.001,
        dedup_groups={"check_copy_group": groups[perm]},
    )
    assert set(np.asarray(ids)[base.mask]) == {ids[p] for p, keep in zip(perm, moved.mask) if keep}


def test_group_dedup_through_select_the_yaml_and_the_cli(tmp_path, capsys):
    from selector.cli import main
    from selector.pipeline import parse_dedup

    ds = _pool().add_column("check_copy_group", ["g" if i in (2, 3, 4) else None for i in range(12)])
    sel = select(ds, 12, "topk:score_a", dedup_group="check_copy_group")
    assert [r for r in sel.reason if reason_kind(r) == "dedup"] == ["dedup:dup_of=r04 group=check_copy_group"] * 2
    assert sel.columns["dedup_group"] == ["check_copy_group"] and sel.columns["dedup"] == []
    with pytest.raises(ConfigError, match="dedup_group='nope' is not a column"):
        select(ds, 3, "topk:score_a", dedup_group="nope")
    with pytest.raises(ConfigError, match="dedup_group must be a column name"):
        select(ds, 3, "topk:score_a", dedup_group=3)
    assert parse_dedup({"groups": "check_copy_group"})["groups"] == ["check_copy_group"]
    with pytest.raises(ConfigError, match="name at least one"):
        parse_dedup({"eps": 0.1})
    ds.save_to_disk(str(tmp_path / "scored"))
    command = ["select", str(tmp_path / "scored"), "--budget", "12", "--strategy", "topk:score_a"]
    rc = main([*command, "--out", str(tmp_path / "picked"), "--dedup-group", "check_copy_group"])
    text = capsys.readouterr().out
    assert rc == 0 and "removed 2 near-duplicates (groups check_copy_group 2)" in text
