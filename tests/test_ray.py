"""The Ray engine (:mod:`selector.ray_engine`): same scores and selection as the local engine, worker death,
resume after an interrupted driver, and the one-line error without Ray.

One local Ray (2 CPUs) serves the whole module; it starts once, on the first test that needs it.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys

import numpy as np
import pytest
from scoring_helpers import resume_dataset

import selector
from metrics.base import ModelMetric
from metrics.length import LengthMetric
from selector.cli import main
from selector.errors import ConfigError, DataError, MissingDependencyError
from selector.runs import load_scored, read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_DIR = os.path.join(ROOT, "selector", "example_data")  # a small folder: the model stamp hashes its files
EXAMPLE = os.path.join(EXAMPLE_DIR, "llava_mini.json")
# Two actor pools plus CPU tasks must fit on the 2-CPU test cluster.
RAY_OPTIONS = {"engine": "ray", "cpus_per_actor": 0.5}


class WordsModel(ModelMetric):
    """A model metric (so it runs in an actor pool) without torch: words per row, and the first worker to score a
    batch exits hard (``os._exit``) once per ``die_marker`` file."""

    def __init__(
        self, name: str = "words", model_name_or_path: str = EXAMPLE_DIR, batch_size: int = 8, die_marker=None
    ):
        self.name = name
        self.model_name_or_path = model_name_or_path
        self.batch_size = batch_size
        self.die_marker = die_marker

    def score_batch(self, batch, *, rank=None):
        if self.die_marker and not os.path.exists(self.die_marker):
            open(self.die_marker, "w").close()
            os._exit(1)
        words = [sum(len(t["content"].split()) for t in m or []) for m in batch["messages"]]
        return {self.column(): np.where([e is None for e in batch["error"]], words, np.nan).astype(np.float32)}


class DieOnceLength(LengthMetric):
    """``length`` whose first task exits hard once (the CPU-task path of the engine)."""

    def score_batch(self, batch, *, rank=None):
        if not os.path.exists(self.die_marker):
            open(self.die_marker, "w").close()
            os._exit(1)
        return super().score_batch(batch, rank=rank)


class RejectsLength(LengthMetric):
    """``length`` that rejects its input in the worker, as a metric does with a user mistake."""

    def score_batch(self, batch, *, rank=None):
        raise DataError("rejects-length: this input can't be scored")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    # the test metrics above live in a test module the workers can't import: ship them by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def example():
    return selector.load_instructions(EXAMPLE)


def _assert_same(a, b) -> None:
    """Same rows, columns, ids and errors; numbers equal within float tolerance (NaN where NaN)."""
    assert a.column_names == b.column_names
    assert a["id"] == b["id"]
    assert a["error"] == b["error"]
    for column in a.column_names:
        if column.startswith(("score_", "emb_")):
            x = np.array(a[column], dtype=np.float64)
            y = np.array(b[column], dtype=np.float64)
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=column)
            assert a.features[column] == b.features[column], column


def _check_equal_runs(metrics, example, tmp_path):
    """Score ``example`` with both engines into ``tmp_path``; outputs, manifests and shard layouts agree."""
    local = selector.score(example, metrics, out_dir=tmp_path / "local", shard_size=16, progress=False)
    ray = selector.score(example, metrics, out_dir=tmp_path / "ray", shard_size=16, progress=False, **RAY_OPTIONS)
    _assert_same(ray, local)

    # the finished folder is what `vlselect select` reads, with the same manifest counts
    _assert_same(load_scored(str(tmp_path / "ray")), local)
    m_ray, m_local = read_manifest(str(tmp_path / "ray")), read_manifest(str(tmp_path / "local"))
    for key in ("n_rows", "n_error_rows", "errors_by_kind", "input"):
        assert m_ray[key] == m_local[key], key
    assert [e["n_nan"] for e in m_ray["metrics"]] == [e["n_nan"] for e in m_local["metrics"]]
    assert m_ray["config"]["engine"] == "ray"
    assert m_ray["ray"] == {"n_shards": 8, "n_shards_reused": 0, "n_shards_computed": 8}

    # the engines share the shard layout and keys, so one engine resumes the other's run
    ray_shards = sorted(
        os.path.relpath(p, tmp_path / "ray") for p in glob.glob(str(tmp_path / "ray/.shards/[!_]*/*/*"))
    )
    local_shards = sorted(
        os.path.relpath(p, tmp_path / "local") for p in glob.glob(str(tmp_path / "local/.shards/*/*/*"))
    )
    assert ray_shards == local_shards
    return ray


def test_ray_scoring_equals_local_on_example_data(ray_cluster, example, tmp_path, caplog):
    errors = [e is not None for e in example["error"]]
    assert any(errors)  # the bundled data has broken rows
    assert "photo-chelsea#1" in example["id"]  # and a duplicate id the loader renamed
    # a cheap metric (CPU tasks) and a model metric (an actor pool)
    metrics = ["length", WordsModel()]
    ray = _check_equal_runs(metrics, example, tmp_path)
    assert np.isnan(np.array(ray["score_words"])[errors]).all()
    # the local engine takes over the Ray run's shards as its own
    with caplog.at_level(logging.INFO, logger="selector.scoring"):
        again = selector.score(example, metrics, out_dir=tmp_path / "ray", shard_size=16, progress=False)
    assert caplog.text.count("4 of 4 shard(s) already done") == 2
    _assert_same(again, ray)


@pytest.mark.slow
def test_ray_image_embeddings_equal_local_on_example_data(ray_cluster, example, tmp_path, tiny_clip_path):
    clip = {"metric": "embedding", "name": "clip_image", "model_name_or_path": tiny_clip_path, "modality": "image"}
    ray = _check_equal_runs(["length", {**clip, "batch_size": 4}], example, tmp_path)
    # missing, corrupt and empty images are NaN vectors, as in the local engine
    assert np.isnan(np.array(ray["emb_clip_image"], dtype=np.float64)).all(axis=1).sum() >= 3


def test_cli_engine_ray_equals_local(ray_cluster, tmp_path, capsys):
    assert (
        main(["--quiet", "score", EXAMPLE, "--metrics", "length", "--out", str(tmp_path / "ray"), "--engine", "ray"])
        == 0
    )
    assert main(["--quiet", "score", EXAMPLE, "--metrics", "length", "--out", str(tmp_path / "local")]) == 0
    out = capsys.readouterr().out
    assert out.count("rows with errors (scored NaN)") == 2
    _assert_same(load_scored(str(tmp_path / "ray")), load_scored(str(tmp_path / "local")))


def test_worker_death_is_retried_and_changes_nothing(ray_cluster, tmp_path):
    ds = resume_dataset(24)
    dying = [WordsModel(die_marker=str(tmp_path / "actor-died")), DieOnceLength()]
    dying[1].die_marker = str(tmp_path / "task-died")
    ray = selector.score(ds, dying, out_dir=tmp_path / "ray", shard_size=8, progress=False, **RAY_OPTIONS)
    assert os.path.exists(tmp_path / "actor-died") and os.path.exists(tmp_path / "task-died")
    _assert_same(ray, selector.score(ds, [WordsModel(), LengthMetric()], progress=False))
    assert not np.isnan(np.array(ray["score_words"])[np.array(ds["error"]) == None]).any()  # noqa: E711


def test_a_metric_error_in_a_worker_is_the_same_one_line_error(ray_cluster, tmp_path):
    with pytest.raises(DataError) as info:
        selector.score(resume_dataset(8), [RejectsLength()], out_dir=tmp_path / "out", progress=False, engine="ray")
    assert str(info.value) == "rejects-length: this input can't be scored"


def test_actor_pools_that_cannot_start_are_refused(ray_cluster, tmp_path):
    # actors keep their CPUs/GPUs to the end, so these runs would wait forever instead of failing
    ds, metrics = resume_dataset(8), ["length", WordsModel()]
    with pytest.raises(ConfigError, match="need 2 CPUs \\+ 1 for the cheap metrics' tasks, more than the cluster's 2"):
        selector.score(ds, metrics, out_dir=tmp_path / "a", engine="ray", concurrency=2, progress=False)
    with pytest.raises(ConfigError, match="need 1 GPUs, more than the cluster's 0 GPUs"):
        selector.score(ds, metrics, out_dir=tmp_path / "b", engine="ray", num_gpus={"words": 1}, progress=False)
    with pytest.raises(ConfigError, match="num_gpus names clip, not a model metric"):
        selector.score(ds, metrics, out_dir=tmp_path / "c", engine="ray", num_gpus={"clip": 0}, progress=False)


def test_resume_after_interrupted_driver_redoes_only_unfinished_shards(ray_cluster, tmp_path, monkeypatch):
    from selector import ray_engine

    ds = resume_dataset(32)
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # the driver dies after the workers wrote their shards, before the final folder exists
    with monkeypatch.context() as patch:
        patch.setattr(ray_engine, "_read_metric", interrupted)
        with pytest.raises(KeyboardInterrupt):
            selector.score(ds, "length", out_dir=out, shard_size=8, progress=False, engine="ray")
    assert not os.path.exists(out / "state.json")
    shards = sorted(glob.glob(str(out / ".shards/length/*/*.parquet")))
    assert len(shards) == 4
    # two shards were in flight when it died: one never written, one written without its marker
    os.remove(shards[1].replace(".parquet", ".done"))
    os.remove(shards[3].replace(".parquet", ".done"))
    with open(shards[3], "wb") as handle:
        handle.write(b"half a parquet file")
    before = {path: os.stat(path).st_mtime_ns for path in shards}

    resumed = selector.score(ds, "length", out_dir=out, shard_size=8, progress=False, engine="ray")
    redone = [path for path in shards if os.stat(path).st_mtime_ns != before[path]]
    assert redone == [shards[1], shards[3]]
    assert read_manifest(str(out))["ray"] == {"n_shards": 4, "n_shards_reused": 2, "n_shards_computed": 2}
    _assert_same(resumed, selector.score(ds, "length", progress=False))
    with open(shards[3].replace(".parquet", ".done")) as handle:
        assert json.load(handle)["rows"] == [24, 32]


def _near_duplicates(n: int = 400, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    copies = rng.choice(n, size=n // 4, replace=False)
    X[copies] = X[rng.choice(n, size=copies.size)] + rng.normal(scale=0.02, size=(copies.size, d)).astype(np.float32)
    return X


def test_semdedup_on_ray_equals_local(ray_cluster, monkeypatch):
    from selector import ray_engine
    from selector.prototypes import centroid_distance, semdedup
    from selector.selection import select_arrays

    monkeypatch.setattr(ray_engine, "ROWS_PER_TASK", 60)  # several tasks, small clusters sharing one
    X = _near_duplicates()
    labels = np.random.default_rng(1).integers(0, 9, size=X.shape[0])
    priority = np.random.default_rng(2).random(X.shape[0])
    local = semdedup(X, labels, [0.01, 0.05], priority=priority, block_size=64)
    ray = semdedup(X, labels, [0.01, 0.05], priority=priority, block_size=64, engine="ray")
    np.testing.assert_array_equal(ray.max_similarity, local.max_similarity)
    np.testing.assert_array_equal(ray.nearest, local.nearest)
    np.testing.assert_array_equal(ray.keep, local.keep)
    np.testing.assert_array_equal(ray.dup_of, local.dup_of)
    assert (~local.keep[1]).sum() > 0

    centers = np.random.default_rng(3).normal(size=(9, X.shape[1]))
    np.testing.assert_array_equal(
        centroid_distance(X, centers, labels, engine="ray"), centroid_distance(X, centers, labels)
    )

    ids = [f"r{i}" for i in range(X.shape[0])]
    a = select_arrays(X, 250, "semdedup", ids=ids, n_clusters=6, engine="ray")
    b = select_arrays(X, 250, "semdedup", ids=ids, n_clusters=6)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.rank, b.rank)
    assert list(a.reason) == list(b.reason)


def test_dedup_step_on_ray_equals_local(ray_cluster, tmp_path, monkeypatch):
    from datasets import Dataset

    from selector import ray_engine
    from selector.pipeline import PipelineConfig, select_scored
    from selector.selection import select

    monkeypatch.setattr(ray_engine, "ROWS_PER_TASK", 60)  # several tasks, small clusters sharing one
    calls = []
    ray_pass = ray_engine.max_previous_similarity
    monkeypatch.setattr(ray_engine, "max_previous_similarity", lambda *a, **k: calls.append(1) or ray_pass(*a, **k))
    X = _near_duplicates()
    n = X.shape[0]
    score = np.random.default_rng(4).random(n)
    score[::17] = np.nan  # NaN ranks last in the keep order
    ds = Dataset.from_dict(
        {
            "id": [f"r{i:03d}" for i in range(n)],
            "error": ["corrupt_image" if i % 50 == 7 else None for i in range(n)],
            "emb_x": X.tolist(),
            "score_q": score.tolist(),
        }
    )
    run = {"score_column": "score_q", "dedup_column": "emb_x", "dedup_eps": 0.05}
    for n_clusters in (None, 5):  # one cluster of all rows; a k-means split into several
        local = select(ds, 250, "topk", **run, dedup_n_clusters=n_clusters)
        ray = select(ds, 250, "topk", **run, dedup_n_clusters=n_clusters, dedup_engine="ray")
        np.testing.assert_array_equal(ray.mask, local.mask)
        np.testing.assert_array_equal(ray.rank, local.rank)
        assert list(ray.reason) == list(local.reason)
        assert ray.dedup_report == {**local.dedup_report, "engine": "ray"}
        assert local.dedup_report["n_duplicates"] > 0
    assert len(calls) == 2

    # `vlselect run`'s dedup block and `vlselect select --dedup-engine` take the same path
    dedup = {"columns": "emb_x", "engine": "ray"}
    config = PipelineConfig(source="x", out=str(tmp_path / "run"), strategy="topk:score_q", budget=250, dedup=dedup)
    assert config.dedup == {"columns": ["emb_x"], "groups": [], "eps": 0.05, "n_clusters": None, "engine": "ray"}
    assert list(select_scored(ds, config).reason) == list(select(ds, 250, "topk", **run).reason)
    assert len(calls) == 3
    ds.save_to_disk(str(tmp_path / "scored"))
    picked = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        args = ["--quiet", "select", str(tmp_path / "scored"), "--strategy", "topk:score_q", "--budget", "250"]
        assert main([*args, "--out", str(out), "--dedup-column", "emb_x", "--dedup-engine", engine]) == 0
        picked[engine] = load_scored(str(out))["id"]
    assert picked["ray"] == picked["local"] and len(calls) == 4
    with pytest.raises(ConfigError, match="engine must be 'local' or 'ray'"):
        select(ds, 250, "topk", **run, dedup_engine="dask")


def test_without_ray_engine_ray_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch, capsys, example):
    # an import of a module mapped to None raises ImportError, as if Ray were not installed
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    code = main(["score", EXAMPLE, "--metrics", "length", "--out", str(tmp_path / "out"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "vlselect[ray]" in err
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(MissingDependencyError, match=r"vlselect\[ray\]"):
        selector.score(example, "length", engine="ray", out_dir=tmp_path / "api")
    # the dedup step asks for Ray before it reads any vector
    with pytest.raises(MissingDependencyError, match=r"vlselect\[ray\]"):
        selector.select_arrays(None, 1, "random", ids=["a", "b"], dedup_embeddings=np.eye(2), dedup_engine="ray")


def test_engine_argument_errors(example, tmp_path):
    with pytest.raises(ConfigError, match="engine 'spark'"):
        selector.score(example, "length", engine="spark")
    with pytest.raises(ConfigError, match="options only with engine='ray'"):
        selector.score(example, "length", address="auto")
    with pytest.raises(ConfigError, match="give out_dir"):
        selector.score(example, "length", engine="ray")
    assert main(["score", EXAMPLE, "--metrics", "length", "--out", str(tmp_path / "x"), "--address", "auto"]) == 2
    with pytest.raises(ConfigError, match="engine must be 'local' or 'ray'"):
        from selector.prototypes import semdedup

        semdedup(np.eye(3), np.zeros(3, dtype=int), engine="dask")


# Reading the source per block on the workers ---------------------------------------------------------------------


def _rows_of(ds) -> list[dict]:
    """Every canonical column of every row, images as their stored bytes and paths."""
    from datasets import Image

    raw = ds.select_columns(["id", "image", "images", "messages", "error", "source"])
    return raw.cast_column("image", Image(decode=False)).cast_column("images", [Image(decode=False)]).to_list()


def test_ray_reads_the_source_per_block_without_the_local_loader(ray_cluster, example, tmp_path, monkeypatch):
    import selector.data.load as load

    metrics = ["length", WordsModel()]
    local = selector.score(example, metrics, out_dir=tmp_path / "local", shard_size=16, progress=False)

    def whole_source_read(*args, **kwargs):
        raise AssertionError("the driver read the whole source with the local loader")

    # the driver may plan the read and pass over the ids, but never materialise or check the rows itself
    for name in ("load_with_report", "load_instructions", "_generate", "canonical_row"):
        monkeypatch.setattr(load, name, whole_source_read)
    out = tmp_path / "ray"
    ray = selector.score(EXAMPLE, metrics, out_dir=out, shard_size=16, progress=False, **RAY_OPTIONS)
    _assert_same(ray, local)
    assert _rows_of(ray) == _rows_of(local)  # images, messages, sources too
    assert ray["id"][61] == "photo-chelsea#1" and ray["id"][2] == "photo-chelsea"  # renamed across blocks
    manifest = read_manifest(str(out))
    assert manifest["input"]["fingerprint"] == read_manifest(str(tmp_path / "local"))["input"]["fingerprint"]
    assert manifest["ray"]["n_input_shards_read"] == 4
    assert not os.path.exists(out / ".shards/_input" / os.listdir(out / ".shards/_input")[0] / "all")

    # a re-run reads nothing and scores nothing
    again = selector.score(EXAMPLE, metrics, out_dir=out, shard_size=16, progress=False, **RAY_OPTIONS)
    assert read_manifest(str(out))["ray"] == {
        "n_shards": 8,
        "n_shards_reused": 8,
        "n_shards_computed": 0,
        "n_input_shards_read": 0,
    }
    assert _rows_of(again) == _rows_of(local)


def test_ray_cli_reads_sharded_parquet_and_jsonl_with_an_image_folder(ray_cluster, tmp_path):
    from test_ray_read import _jsonl_source, _parquet_source

    for name, make in (("parquet", _parquet_source), ("jsonl", _jsonl_source)):
        source, images = make(tmp_path / name)
        runs = {}
        for engine in ("local", "ray"):
            out = str(tmp_path / name / engine)
            args = ["--quiet", "score", source, "--image-root", images, "--metrics", "length", "--out", out]
            assert main([*args, "--shard-size", "5", "--engine", engine]) == 0
            runs[engine] = load_scored(out)
        _assert_same(runs["ray"], runs["local"])
        assert _rows_of(runs["ray"]) == _rows_of(runs["local"])
        ids = runs["ray"]["id"]
        # fallback ids numbered across the Parquet shards, and an id repeated across them made unique
        assert ("train-00002-of-00003:row9" in ids and "same#1" in ids) or ("train:line5" in ids and "dup#2" in ids)


def test_resume_rereads_only_unfinished_input_shards(ray_cluster, tmp_path, monkeypatch):
    from test_ray_read import _jsonl_source

    from selector import ray_engine

    source, images = _jsonl_source(tmp_path)
    out = tmp_path / "run"
    run = {"out_dir": out, "shard_size": 8, "progress": False, "engine": "ray"}
    with monkeypatch.context() as patch:
        patch.setattr(ray_engine, "_read_metric", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            selector.score(ray_engine.RaySource(source, image_root=images), "length", **run)
    inputs = sorted(glob.glob(str(out / ".shards/_input/*/*.parquet")))
    assert len(inputs) == 3
    os.remove(inputs[1].replace(".parquet", ".done"))  # written, marker lost
    before = {path: os.stat(path).st_mtime_ns for path in inputs}

    resumed = selector.score(ray_engine.RaySource(source, image_root=images), "length", **run)
    assert [path for path in inputs if os.stat(path).st_mtime_ns != before[path]] == [inputs[1]]
    assert read_manifest(str(out))["ray"]["n_input_shards_read"] == 1
    assert read_manifest(str(out))["ray"]["n_shards_reused"] == 3
    # (a saved folder keeps image file names without their folders, so the local run saves one too)
    local = selector.load_instructions(source, image_root=images)
    local = selector.score(local, "length", out_dir=tmp_path / "local", shard_size=8, progress=False)
    _assert_same(resumed, local)
    assert _rows_of(resumed) == _rows_of(local)


def test_ray_reads_only_the_blocks_a_limit_needs(ray_cluster, example, tmp_path, capsys):
    out = str(tmp_path / "ray")
    assert (
        main(
            ["--quiet", "score", EXAMPLE, "--metrics", "length", "--out", out, "--engine", "ray"]
            + ["--limit", "20", "--shard-size", "16", "--json"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert (report["n_rows"], report["n_scored"]) == (62, 20)
    assert read_manifest(out)["ray"]["n_input_shards_read"] == 2
    _assert_same(load_scored(out), selector.score(example, "length", limit=20, progress=False))
