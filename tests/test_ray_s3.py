"""The Ray engine writing to an ``s3://`` URI, end to end against a local S3 server (moto), without a network.

The workers write their shards through pyarrow's S3 filesystem and the driver saves the final folder through fsspec
(s3fs); both find the local server through ``AWS_ENDPOINT_URL``, set here before Ray starts so the workers inherit it.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

import selector
from selector.cli import main
from selector.errors import ConfigError
from selector.runs import load_scored

pytest.importorskip("ray")
pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "selector", "example_data", "llava_mini.json")
BUCKET = "vlselect-runs"


@pytest.fixture(scope="module")
def s3():
    """A local S3 server with one bucket, and the credentials and endpoint every AWS client reads from the env."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the server logs every request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # pyarrow's S3 client would otherwise ask the EC2 metadata service for a region and credentials
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        # versions show which shards a resumed run wrote again
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield {"env": env, "client": client}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.fixture(scope="module")
def ray_cluster(s3):
    import ray

    if ray.is_initialized():  # another module's Ray started before the endpoint was set: its workers lack it
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, runtime_env={"env_vars": s3["env"]})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def example():
    return selector.load_instructions(EXAMPLE)


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _load_uri(uri: str):
    from datasets import load_from_disk

    return load_from_disk(uri)


def _assert_same(a, b) -> None:
    assert a.column_names == b.column_names
    assert a["id"] == b["id"]
    assert a["error"] == b["error"]
    assert a["messages"] == b["messages"]
    for column in a.column_names:
        if column.startswith("score_"):
            np.testing.assert_allclose(
                np.array(a[column], dtype=np.float64), np.array(b[column], dtype=np.float64), equal_nan=True
            )


def _n_versions(client, key: str) -> int:
    versions = client.list_object_versions(Bucket=BUCKET, Prefix=key).get("Versions", [])
    return sum(version["Key"] == key for version in versions)


def _manifest(client, prefix: str) -> dict:
    return json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read())


def test_ray_scores_into_an_s3_bucket_as_the_local_engine_does(ray_cluster, s3, example, tmp_path):
    uri = f"s3://{BUCKET}/equal"
    run = {"out_dir": uri, "shard_size": 16, "progress": False, "engine": "ray"}
    local = selector.score(example, "length", out_dir=tmp_path / "local", shard_size=16, progress=False)

    # the workers read the source file block by block and write every shard into the bucket
    scored = selector.score(EXAMPLE, "length", **run)
    _assert_same(scored, local)
    _assert_same(_load_uri(uri), local)  # what a later `select` on another machine reads back
    keys = _keys(s3["client"], "equal/")
    assert "equal/manifest.json" in keys and "equal/state.json" in keys
    assert sum(key.startswith("equal/.shards/length/") and key.endswith(".done") for key in keys) == 4
    assert sum(key.startswith("equal/.shards/_input/") and key.endswith(".done") for key in keys) == 4
    manifest = _manifest(s3["client"], "equal")
    assert manifest["config"]["engine"] == "ray"
    assert manifest["n_rows"] == len(local)
    assert manifest["ray"] == {"n_shards": 4, "n_shards_reused": 0, "n_shards_computed": 4, "n_input_shards_read": 4}

    # a re-run finds every shard in the bucket and scores nothing
    again = selector.score(EXAMPLE, "length", **run)
    _assert_same(again, local)
    assert _manifest(s3["client"], "equal")["ray"]["n_shards_reused"] == 4
    assert _manifest(s3["client"], "equal")["ray"]["n_input_shards_read"] == 0


def test_an_interrupted_s3_run_resumes_from_the_shards_in_the_bucket(ray_cluster, s3, example, monkeypatch):
    from selector import ray_engine

    client, prefix = s3["client"], "resume"
    uri = f"s3://{BUCKET}/{prefix}"
    run = {"out_dir": uri, "shard_size": 16, "progress": False, "engine": "ray"}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # the driver dies after the workers wrote their shards, before the final folder exists
    with monkeypatch.context() as patch:
        patch.setattr(ray_engine, "_read_metric", interrupted)
        with pytest.raises(KeyboardInterrupt):
            selector.score(example, "length", **run)
    assert f"{prefix}/state.json" not in _keys(client, prefix + "/")
    shards = [key for key in _keys(client, f"{prefix}/.shards/length/") if key.endswith(".parquet")]
    assert len(shards) == 4
    # two shards were in flight when it died: one written without its marker, one half-written without it
    client.delete_object(Bucket=BUCKET, Key=shards[1].replace(".parquet", ".done"))
    client.delete_object(Bucket=BUCKET, Key=shards[3].replace(".parquet", ".done"))
    client.put_object(Bucket=BUCKET, Key=shards[3], Body=b"half a parquet file")

    resumed = selector.score(example, "length", **run)
    # the bucket keeps every version: shards 0 and 2 were never written again, 1 and 3 were scored again
    assert [_n_versions(client, key) for key in shards] == [1, 2, 1, 3]
    assert _manifest(client, prefix)["ray"] == {"n_shards": 4, "n_shards_reused": 2, "n_shards_computed": 2}
    local = selector.score(example, "length", progress=False)
    _assert_same(resumed, local)
    _assert_same(_load_uri(uri), local)
    marker = json.loads(client.get_object(Bucket=BUCKET, Key=shards[3].replace(".parquet", ".done"))["Body"].read())
    assert marker["rows"] == [48, 62]


def test_cli_scores_into_an_s3_bucket(ray_cluster, s3, example, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URI taken for a local path would show up here as a folder "s3:"
    uri = f"s3://{BUCKET}/cli"
    args = ["--quiet", "score", EXAMPLE, "--metrics", "length", "--out", uri, "--engine", "ray"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"-> {uri}" in out and "rows with errors (scored NaN): 5" in out  # the manifest read from the bucket
    _assert_same(_load_uri(uri), selector.score(example, "length", progress=False))
    assert main([*args, "--json"]) == 0  # resumed: every shard is in the bucket
    assert json.loads(capsys.readouterr().out)["out"] == uri
    # `vlselect select` reads the run from the bucket as it reads a local one
    picked = {}
    local = str(tmp_path / "local")
    assert main(["--quiet", "score", EXAMPLE, "--metrics", "length", "--out", local]) == 0
    for name, scored in (("s3", uri), ("local", local)):
        out = tmp_path / f"picked-{name}"
        assert (
            main(["--quiet", "select", scored, "--strategy", "topk:score_length", "--budget", "10", "--out", str(out)])
            == 0
        )
        picked[name] = load_scored(str(out))["id"]
        assert json.loads((out / "manifest.json").read_text())["input"] == (uri if name == "s3" else local)
    assert picked["s3"] == picked["local"] and len(picked["s3"]) == 10
    # --overwrite stages a local folder and swaps it into place: refused for a URI instead of writing "./s3:/..."
    assert main([*args, "--overwrite"]) == 2
    assert "--overwrite works on a local --out folder" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s3:")


def test_endpoint_options_in_the_uri_are_refused_before_any_work(example):
    # pyarrow's from_uri would reach the server, but the final save through fsspec would go to AWS itself
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL=http://HOST:PORT"):
        selector.score(example, "length", engine="ray", out_dir="s3://bucket/run?endpoint_override=127.0.0.1:9000")
