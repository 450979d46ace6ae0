"""``selector.score`` and ``vlselect score``: columns, manifest, resume after a kill, CLI errors."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from metric_rows import contract_dataset, make_dataset, turns
from scoring_helpers import SlowLength, resume_dataset

import selector
from metrics import get_metric
from metrics.base import DatasetMetric
from selector.cli import main
from selector.errors import ConfigError, DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
EXAMPLE = os.path.join(ROOT, "selector", "example_data", "llava_mini.json")


def test_score_in_memory_appends_float32_columns_in_order():
    ds = contract_dataset()
    out = selector.score(
        ds, ["length", {"metric": "length", "name": "ask", "text_field": "instruction"}], progress=False
    )
    assert out.column_names[: len(ds.column_names)] == ds.column_names
    assert out["id"] == ds["id"]
    for col in ("score_length", "score_length_words", "score_length_norm", "score_ask", "score_ask_norm"):
        assert out.features[col].dtype == "float32"
    lengths = np.array(out["score_length"], dtype=np.float32)
    assert np.isnan(lengths[ds["id"].index("error-row")])


def test_score_accepts_names_string_and_instances():
    ds = contract_dataset()
    a = selector.score(ds, "length", progress=False)
    b = selector.score(ds, [get_metric("length")], progress=False)
    np.testing.assert_array_equal(np.array(a["score_length"]), np.array(b["score_length"]))


def test_score_errors():
    ds = contract_dataset()
    with pytest.raises(DataError, match="no rows"):
        selector.score(ds.select([]), "length")
    with pytest.raises(DataError, match="lacks column.*'messages'.*length"):
        selector.score(ds.remove_columns("messages"), "length")
    with pytest.raises(ConfigError, match="no metrics"):
        selector.score(ds, [])
    with pytest.raises(ConfigError, match="two metrics write"):
        selector.score(ds, "length,length")
    with pytest.raises(ConfigError, match="limit"):
        selector.score(ds, "length", limit=0)


def test_rescoring_replaces_existing_columns(caplog):
    ds = selector.score(contract_dataset(), "length", progress=False)
    again = selector.score(ds, "length", progress=False)
    assert again.column_names.count("score_length") == 1
    assert "replacing existing column" in caplog.text


def test_num_proc_gives_the_same_result():
    ds = resume_dataset(24)
    one = selector.score(ds, "length", batch_size=5, progress=False)
    two = selector.score(ds, "length", batch_size=5, num_proc=2, progress=False)
    np.testing.assert_array_equal(np.array(one["score_length"]), np.array(two["score_length"]))


def test_out_dir_is_a_save_to_disk_folder_with_manifest(tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "scored"
    ds = contract_dataset()
    result = selector.score(ds, "length", out_dir=out, shard_size=3, seed=7, source="unit-test", progress=False)
    loaded = load_from_disk(str(out))
    assert loaded.column_names == result.column_names and len(loaded) == len(ds)
    manifest = json.loads((out / "manifest.json").read_text())
    # "unit-test" names no local path, so the loader would read it from the Hub by id: input.hub is True
    expected = {"source": "unit-test", "hub": True, "fingerprint": ds._fingerprint, "n_rows": 10, "n_scored": 10}
    assert manifest["input"] == expected
    assert manifest["seed"] == 7 and manifest["config"]["shard_size"] == 3
    assert manifest["config"]["metrics"] == [
        {"metric": "length", "name": "length", "text_field": "response", "tokenizer": None, "revision": None}
    ]
    assert manifest["n_error_rows"] == 1 and manifest["errors_by_kind"] == {"missing_image": 1}
    entry = manifest["metrics"][0]
    assert entry["columns"] == ["score_length", "score_length_words", "score_length_norm"]
    assert entry["n_nan"]["score_length"] == 2  # the error row and the row without an answer
    assert manifest["packages"]["datasets"] and manifest["packages"]["numpy"]
    assert len(glob.glob(str(out / ".shards" / "length" / "*" / "*.done"))) == 4


def test_out_dir_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a vlselect score output"):
        selector.score(contract_dataset(), "length", out_dir=tmp_path)


def test_changed_configuration_recomputes(tmp_path):
    ds = resume_dataset(8)
    selector.score(ds, [get_metric("length")], out_dir=tmp_path, shard_size=4, progress=False)
    first = glob.glob(str(tmp_path / ".shards" / "length" / "*"))
    out = selector.score(
        ds, [get_metric("length", text_field="instruction")], out_dir=tmp_path, shard_size=4, progress=False
    )
    second = glob.glob(str(tmp_path / ".shards" / "length" / "*"))
    assert len(first) == len(second) == 1 and first != second
    assert out["score_length_words"][0] == 2.0  # "Question 0?"


def _batch_log(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_killed_run_resumes_without_redoing_finished_shards(tmp_path, monkeypatch):
    out = tmp_path / "run"
    log = tmp_path / "batches.log"
    env = dict(
        os.environ,
        VLSELECT_TEST_DELAY="0.4",
        VLSELECT_TEST_BATCH_LOG=str(log),
        PYTHONPATH=os.pathsep.join([ROOT, TESTS]),
    )
    code = f"from scoring_helpers import run; run({str(out)!r})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    try:
        while len(glob.glob(str(out / ".shards" / "slow" / "*" / "*.done"))) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no shard finished in time"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    done_before = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(out / ".shards" / "slow" / "*" / "*.done"))}
    assert 2 <= len(done_before) < 8
    assert not (out / "manifest.json").exists()
    first_batches = _batch_log(log)

    monkeypatch.setenv("VLSELECT_TEST_BATCH_LOG", str(log))
    monkeypatch.setenv("VLSELECT_TEST_DELAY", "0")
    resumed = selector.score(
        resume_dataset(), [SlowLength(name="slow")], out_dir=out, shard_size=4, batch_size=4, progress=False
    )
    second_batches = _batch_log(log)[len(first_batches) :]
    finished_starts = {f"row-{int(os.path.basename(p).split('-')[1]):03d}" for p in done_before}
    assert not finished_starts & set(second_batches), "a finished shard was scored again"
    assert len(second_batches) == 8 - len(done_before)
    assert {p: os.stat(p).st_mtime_ns for p in done_before} == done_before

    fresh = selector.score(resume_dataset(), [SlowLength(name="slow")], progress=False)
    for col in ("score_slow", "score_slow_words", "score_slow_norm"):
        np.testing.assert_array_equal(np.array(resumed[col]), np.array(fresh[col]))
    assert json.loads((out / "manifest.json").read_text())["n_rows"] == 32


def test_cli_score_limit_resume_and_saved_input(tmp_path, capsys):
    from datasets import load_from_disk

    out = tmp_path / "out"
    assert main(["score", EXAMPLE, "--metrics", "length", "--out", str(out), "--limit", "10", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "scored 10 of 62 rows" in text and "estimate for all 62 rows" in text
    assert len(load_from_disk(str(out))) == 10

    assert main(["score", EXAMPLE, "--metrics", "length", "--out", str(out), "--quiet", "--shard-size", "10"]) == 0
    text = capsys.readouterr().out
    assert "scored 62 of 62 rows" in text and "estimate" not in text
    assert "rows with errors (scored NaN): 5" in text
    scored = load_from_disk(str(out))
    assert len(scored) == 62 and "score_length_norm" in scored.column_names

    # a save_to_disk folder is a valid SOURCE; its score columns are replaced
    config = tmp_path / "metrics.yaml"
    config.write_text("metrics:\n  - {metric: length, name: ask, text_field: instruction}\n")
    out2 = tmp_path / "out2"
    assert (
        main(["score", str(out), "--metric-config", str(config), "--metrics", "length", "--out", str(out2), "--quiet"])
        == 0
    )
    rescored = load_from_disk(str(out2))
    assert {"score_ask", "score_length"} <= set(rescored.column_names)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metrics", "nope"], "unknown metric 'nope'"),
        ([], "give --metrics"),
        (["--metrics", "length", "--limit", "0"], "limit"),
        (["--metric-config", "missing.yaml"], "cannot read metric config"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    code = main(["score", EXAMPLE, "--out", str(tmp_path / "o"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_missing_source_and_foreign_out(tmp_path, capsys):
    assert main(["score", str(tmp_path / "absent.json"), "--metrics", "length", "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    assert main(["score", EXAMPLE, "--metrics", "length", "--out", str(tmp_path / "foreign"), "--quiet"]) == 2
    assert "not a vlselect score output" in capsys.readouterr().err


def test_text_only_pool_through_score_with_make_dataset():
    ds = make_dataset([{"id": "a", "messages": turns("q", "abc", image=False)}])
    assert selector.score(ds, "length", progress=False)["score_length_norm"] == [10.0]


class _Rank(DatasetMetric):
    """Pool-level test metric: the rank of each row's length, plus an integer bucket column."""

    def __init__(self, name="rank", source_column="score_length"):
        self.name = name
        self.source_column = source_column

    def fit_columns(self):
        return ["id", "error", self.source_column]

    def output_columns(self):
        return [self.column(), f"bucket_{self.name}"]

    def fit(self, columns):
        self.n_rows_ = len(columns["id"])
        return self

    def transform(self, columns):
        values = columns[self.source_column]
        ranks = np.argsort(np.argsort(np.nan_to_num(values, nan=-1.0))).astype(np.float32)
        ranks[np.isnan(values)] = np.nan
        return {self.column(): ranks, f"bucket_{self.name}": (np.nan_to_num(values) > 10).astype(np.int64)}


def test_dataset_level_metric_runs_after_row_metrics(tmp_path):
    from datasets import load_from_disk

    ds = resume_dataset(12)
    out = selector.score(ds, [_Rank(), "length"], out_dir=tmp_path, shard_size=5, progress=False)
    assert out.features["score_rank"].dtype == "float32" and out.features["bucket_rank"].dtype == "int64"
    lengths = np.array(out["score_length"], dtype=np.float32)
    ranks = np.array(out["score_rank"], dtype=np.float32)
    assert np.array_equal(np.isnan(ranks), np.isnan(lengths))
    ok = ~np.isnan(lengths)
    assert (np.argsort(lengths[ok], kind="stable") == np.argsort(ranks[ok], kind="stable")).all()
    assert "score_rank" in load_from_disk(str(tmp_path)).column_names
    entry = json.loads((tmp_path / "manifest.json").read_text())["metrics"][0]
    assert entry["metric"] is None and entry["class"].endswith(":_Rank") and entry["n_nan"]["score_rank"] == 1
    with pytest.raises(DataError, match="needs column 'score_nothing'"):
        selector.score(ds, [_Rank(source_column="score_nothing")], progress=False)
