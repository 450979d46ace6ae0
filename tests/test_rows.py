"""The row rules of :mod:`selector.rows`, pinned with the answers of issue 14 through every entry point.

Budget: a fraction rounds half up (0.5 of 5 rows is 3); ``200.0`` is 200 rows; ``"30%"`` is 0.3; 0 or below is a
one-line error -- each through the Python API, ``vlselect select`` and a YAML pipeline (``vlselect run``).
Errors: ``error`` of None, NaN or ``""`` means usable. Clusters: -1, None or NaN means missing (never selected,
reason ``missing <column>``, not counted as a cluster in the manifest). Order and seeds: stable-hash order of ids,
``random_state=None`` reads as 0.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from selector import rows
from selector.cli import main
from selector.errors import ConfigError, DataError
from selector.pipeline import PipelineConfig
from selector.selection import select, select_arrays

NAN = float("nan")


def scored_folder(tmp_path, n, clusters=None, name="scored"):
    """A folder shaped like `vlselect score` output with ``n`` rows (ids ``r000``...)."""
    from datasets import Dataset

    data = {
        "id": [f"r{i:03d}" for i in range(n)],
        "error": [None] * n,
        "score_x": np.linspace(0, 1, n).tolist(),
    }
    data.update(clusters or {})
    path = tmp_path / name
    Dataset.from_dict(data).save_to_disk(str(path))
    return path


def run_select(tmp_path, scored, budget, *extra, out="picked"):
    args = ["select", str(scored), "--strategy", "random", f"--budget={budget}", "--out", str(tmp_path / out)]
    return main([*args, "--quiet", *extra])


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def yaml_config(tmp_path, n, budget):
    """A pipeline YAML over an ``n``-row LLaVA file, selecting ``budget`` rows at random."""
    data = tmp_path / "data.json"
    records = [
        {
            "id": f"r{i:03d}",
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a" * (i + 1)}],
        }
        for i in range(n)
    ]
    data.write_text(json.dumps(records))
    path = tmp_path / "run.yaml"
    path.write_text(
        f"source: data.json\nout: out\nmetrics: [{{metric: length}}]\nstrategy: random\nbudget: {budget}\n"
    )
    return path


# Budget: the rule itself.


@pytest.mark.parametrize(
    "value, expected",
    [
        (200, 200),
        (200.0, 200),
        ("200", 200),
        ("200.0", 200),
        (np.int64(7), 7),
        (0.3, 0.3),
        ("0.3", 0.3),
        ("30%", 0.3),
        (" 30% ", 0.3),
        (1.0, 1.0),
        ("100%", 1.0),
    ],
)
def test_parse_budget(value, expected):
    got = rows.parse_budget(value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    "value", [0, -1, 0.0, -0.5, "0", "-1", "0%", "150%", 2.5, "2.5", True, None, "many", NAN, float("inf")]
)
def test_bad_budgets_are_one_line_config_errors(value):
    with pytest.raises(ConfigError, match="^budget: ") as info:
        rows.parse_budget(value)
    assert "\n" not in str(info.value)


def test_a_fraction_rounds_half_up():
    assert rows.resolve_budget(0.5, 5) == 3
    assert rows.resolve_budget(0.25, 10) == 3
    assert rows.resolve_budget(0.3, 10) == 3 and rows.resolve_budget("30%", 10) == 3
    assert rows.resolve_budget(1.0, 7) == 7  # the whole pool, not one row
    assert rows.resolve_budget(200.0, 7) == 200  # a count may exceed the pool; selection caps it and warns


# Budget through the Python API.


def test_api_budget_answers():
    assert select_arrays(None, 0.5, "random", ids=list("abcde")).n_selected == 3
    sel = select_arrays(None, 200.0, "random", ids=[f"r{i}" for i in range(250)])
    assert sel.n_selected == 200 and sel.budget == 200 and isinstance(sel.budget, int)
    assert select_arrays(None, "30%", "random", ids=[f"r{i}" for i in range(10)]).n_selected == 3
    assert PipelineConfig(source="d.json", out="o", budget=200.0).budget == 200
    assert PipelineConfig(source="d.json", out="o", budget="30%").budget == 0.3


@pytest.mark.parametrize("budget", [0, -1, 0.0])
def test_api_budget_zero_or_below_is_one_line_error(budget):
    from datasets import Dataset

    with pytest.raises(ConfigError, match=r"^budget: must be above 0, got -?0?1?(\.0)?$"):
        select_arrays(None, budget, "random", ids=list("abc"))
    with pytest.raises(ConfigError, match="^budget: must be above 0"):
        select(Dataset.from_dict({"id": list("abc")}), budget, "random")
    with pytest.raises(ConfigError, match="^budget: must be above 0"):
        PipelineConfig(source="d.json", out="o", budget=budget)


# Budget through `vlselect select`.


@pytest.mark.parametrize("n, budget, expected", [(5, "0.5", 3), (250, "200.0", 200), (10, "30%", 3)])
def test_cli_budget_answers(tmp_path, n, budget, expected):
    from datasets import load_from_disk

    assert run_select(tmp_path, scored_folder(tmp_path, n), budget) == 0
    written = manifest(tmp_path / "picked")
    assert written["n_budget"] == expected and written["counts"]["n_selected"] == expected
    assert len(load_from_disk(str(tmp_path / "picked"))) == expected
    if budget == "30%":
        assert written["budget"] == 0.3


@pytest.mark.parametrize("budget", ["0", "-1", "0.0", "0%"])
def test_cli_budget_zero_or_below_exits_2_with_one_line(tmp_path, capsys, budget):
    scored = scored_folder(tmp_path, 5)
    capsys.readouterr()
    assert run_select(tmp_path, scored, budget) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --budget: ") and err.count("\n") == 1
    assert not (tmp_path / "picked").exists()


# Budget through a YAML pipeline (`vlselect run`).


@pytest.mark.parametrize(
    "n, budget, expected, resolved",
    [(5, "0.5", 3, 0.5), (250, "200.0", 200, 200), (10, "30%", 3, 0.3), (10, '"30%"', 3, 0.3)],
)
def test_yaml_budget_answers(tmp_path, capsys, n, budget, expected, resolved):
    path = yaml_config(tmp_path, n, budget)
    assert main(["run", str(path), "--quiet"]) == 0
    assert f"selected {expected} of {n} rows" in capsys.readouterr().out
    assert manifest(tmp_path / "out" / "selected")["n_budget"] == expected
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["budget"] == resolved and type(config["budget"]) is type(resolved)


@pytest.mark.parametrize("budget", ["0", "-1", "0.0", "-0.5"])
def test_yaml_budget_zero_or_below_is_one_line_error(tmp_path, capsys, budget):
    path = yaml_config(tmp_path, 5, budget)
    with pytest.raises(ConfigError, match="^budget: must be above 0"):
        PipelineConfig.from_yaml(str(path))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: budget: must be above 0") and err.count("\n") == 1
    assert not (tmp_path / "out" / "scored").exists()  # refused before any scoring


# Errors: None, NaN or "" means usable.


def test_usable_error_values():
    values = [None, NAN, np.float32("nan"), "", False, "missing_image: x.jpg", True, "oops"]
    assert rows.usable_mask(values).tolist() == [True] * 5 + [False] * 3
    assert [rows.error_kind(v) for v in values] == [None] * 5 + ["missing_image", "error", "oops"]
    assert rows.usable_mask(None, 3).tolist() == [True, True, True]
    with pytest.raises(DataError, match="2 entries for 3 rows"):
        rows.usable_mask([None, None], 3)


def test_usable_errors_are_selected_and_scored_everywhere():
    from datasets import Dataset

    from metrics.base import error_mask
    from metrics.length import LengthMetric

    errors = [None, NAN, "", "corrupt_image: x"]
    sel = select_arrays(None, 4, "random", ids=list("abcd"), errors=errors)
    assert sel.mask.tolist() == [True, True, True, False] and sel.reason[3] == "error corrupt_image"
    ds = Dataset.from_dict({"id": list("abc"), "error": [None, "", "missing_image: y"]})
    assert select(ds, 3, "random").mask.tolist() == [True, True, False]
    assert error_mask({"id": list("abcd"), "error": errors}).tolist() == [False, False, False, True]
    messages = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]] * 3
    scores = LengthMetric().score_batch({"id": list("abc"), "messages": messages, "error": [None, "", "x: y"]})
    assert np.isfinite(scores["score_length"][:2]).all() and np.isnan(scores["score_length"][2])


# Missing clusters: -1, None or NaN.


def test_cluster_labels_treat_minus_one_none_and_nan_as_missing():
    labels, missing = rows.cluster_labels([3, -1, None, NAN, 3.0, 7, np.int64(-1), np.float32("nan")])
    assert labels.tolist() == [0, -1, -1, -1, 0, 1, -1, -1]
    assert missing.tolist() == [False, True, True, True, False, False, True, True]
    assert rows.n_clusters_present([3, -1, None, NAN, 3.0, 7]) == 2
    assert rows.cluster_labels(["b", "a", None])[0].tolist() == [1, 0, -1]
    with pytest.raises(DataError, match="integers"):
        rows.cluster_labels([0.5, 1.0])


def test_missing_cluster_rows_are_never_selected_through_the_api():
    clusters = [0, 1, -1, None, NAN, 0, 1, 0]
    sel = select_arrays(None, 1.0, "instructiongpt4", scores=np.arange(8.0), ids=list("abcdefgh"), clusters=clusters)
    assert not sel.mask[[2, 3, 4]].any() and sel.n_selected == 5
    assert all(sel.reason[i] == "missing clusters" for i in (2, 3, 4))
    assert sel.summary()["n_clusters"] == 2 and set(sel.summary()["clusters"]) == {"0", "1"}
    assert sel.info["all"]["n_clusters"] == 2


def test_diversity_minus_one_is_missing_not_an_eleventh_cluster():
    # the bug of issue 14: the diversity metric writes -1 for a row without an embedding, and -1 became a cluster
    # with a guaranteed quota, so a text-only row was selected.
    from metrics.diversity import Diversity

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(15, 4)) + 5, rng.normal(size=(15, 4)) - 5]).astype(np.float32)
    X[3] = np.nan  # a text-only row: no image embedding
    ids = np.array([f"r{i:02d}" for i in range(30)], dtype=object)
    columns = {"id": ids, "error": np.array([None] * 30, dtype=object), "emb_image": X}
    clusters = Diversity(embedding_column="emb_image", n_clusters=2, n_neighbors=5).fit_transform(columns)
    clusters = clusters["cluster_diversity"]
    assert clusters[3] == -1
    sel = select_arrays(None, 29, "instructiongpt4", scores=rng.random(30), ids=ids, clusters=clusters)
    assert not sel.mask[3] and sel.reason[3] == "missing clusters"
    assert sel.n_selected == 29 and sel.summary()["n_clusters"] == 2


def test_missing_clusters_are_not_counted_in_the_cli_manifest(tmp_path):
    from datasets import load_from_disk

    n = 12
    ints = [-1, None] + [i % 2 for i in range(n - 2)]
    floats = [NAN, -1.0] + [float(i % 3) for i in range(n - 2)]
    scored = scored_folder(tmp_path, n, {"cluster_int": ints, "cluster_float": floats})
    for column, missing, n_clusters in (("cluster_int", [0, 1], 2), ("cluster_float", [0, 1], 3)):
        out = f"picked_{column}"
        extra = ["--score-column", "score_x", "--cluster-column", column, "--keep-rejected", "-o", "n_clusters=10"]
        args = ["select", str(scored), "--strategy", "instructiongpt4", "--budget", "12", "--out", str(tmp_path / out)]
        assert main([*args, "--quiet", *extra]) == 0
        written = manifest(tmp_path / out)
        assert written["counts"]["n_clusters"] == n_clusters and len(written["clusters"]) == n_clusters
        assert sum(c["rows"] for c in written["clusters"].values()) == n - len(missing)
        assert written["strategy_info"]["all"]["n_clusters"] == n_clusters
        assert written["counts"]["n_selected"] == n - len(missing)
        full = load_from_disk(str(tmp_path / out))
        for i in missing:
            assert not full["selected"][i] and full["selection_reason"][i] == f"missing {column}"


# Ids, order and seeds.


def test_stable_hash_and_hash_order_are_fixed_and_permutation_invariant():
    # a pinned value guards against an accidental change of the hash (it would change every selection)
    assert int(rows.stable_hash(["row-0001"])[0]) == 2230283763480076450
    ids = [f"id-{i}" for i in range(50)]
    perm = np.random.default_rng(0).permutation(50)
    a = np.array(ids)[rows.hash_order(ids)]
    b = np.array(ids)[perm][rows.hash_order([ids[i] for i in perm])]
    assert a.tolist() == b.tolist()
    assert rows.id_ranks(["b", "c", "a"]).tolist() == [1, 2, 0]
    assert rows.pool_digest(["b", "a"]) == rows.pool_digest(["a", "b"])
    with pytest.raises(DataError, match="unique"):
        rows.as_ids(["a", "a"], 2)


def test_seed_rule():
    assert rows.check_seed(None) == 0 and rows.check_seed(np.int64(3)) == 3
    for bad in (1.5, True, "3"):
        with pytest.raises(ConfigError, match="random_state"):
            rows.check_seed(bad)
    a = select_arrays(None, 5, "random", ids=[f"r{i}" for i in range(20)], random_state=None)
    b = select_arrays(None, 5, "random", ids=[f"r{i}" for i in range(20)], random_state=0)
    assert a.mask.tolist() == b.mask.tolist() and a.random_state == 0


def test_column_array_reads_datasets_frames_and_mappings():
    import pandas as pd
    from datasets import Dataset

    ds = Dataset.from_dict({"s": [1.0, None, 2.0], "e": [[1.0, 0.0], None, [0.0, 1.0]], "t": ["x", None, "z"]})
    assert np.isnan(rows.column_array(ds, "s")).tolist() == [False, True, False]
    assert rows.column_array(ds.select([2, 0]), "s").tolist() == [2.0, 1.0]  # honours the index mapping
    matrix = rows.embedding_matrix(ds, "e")
    assert matrix.dtype == np.float32 and matrix.shape == (3, 2) and np.isnan(matrix[1]).all()
    assert rows.column_array(ds, "t", dtype=None).tolist() == ["x", None, "z"]
    with pytest.raises(DataError, match="expected one vector per row"):
        rows.embedding_matrix(ds, "s")
    with pytest.raises(DataError, match="no column 'nope'"):
        rows.column_array(ds, "nope")
    assert rows.column_array(pd.DataFrame({"s": [1.0, None]}), "s")[0] == 1.0
    assert np.isnan(rows.column_array({"s": [1, None]}, "s")[1])
