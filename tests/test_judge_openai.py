"""The ``judge`` metric's ``openai`` backend against a real HTTP server on 127.0.0.1 (tests/judge_server.py)."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import pickle
import threading

import numpy as np
import pytest
from judge_server import JudgeServer

from metrics.judge import Judge
from metrics.registry import get_metric
from selector.errors import ConfigError

SECRET = "sk-test-5f3c2a9e-never-log-me"


@pytest.fixture(scope="module")
def server():
    with JudgeServer(slow_seconds=1.0) as srv:
        yield srv


@pytest.fixture
def fresh(server):
    server.reset()
    server.api_key = None
    return server


def _messages(instruction: str, answer: str | None) -> list[dict]:
    turns = [{"role": "user", "content": f"<image>\n{instruction}"}]
    if answer is not None:
        turns.append({"role": "assistant", "content": answer})
    return turns


def _batch(rows: list[tuple[str, str | None]], errors: dict[int, str] | None = None) -> dict[str, list]:
    errors = errors or {}
    return {
        "id": [f"row{i}" for i in range(len(rows))],
        "messages": [_messages(q, a) for q, a in rows],
        "error": [errors.get(i) for i in range(len(rows))],
    }


def _judge(server, tmp_path, **params) -> Judge:
    defaults = {
        "base_url": server.base_url,
        "model": "test-judge",
        "api_key_env": None,
        "cache_dir": str(tmp_path / "cache"),
        "timeout": 0.4,
        "max_retries": 2,
        "backoff": 0.01,
    }
    return Judge(**{**defaults, **params})


def _user_text(judge: Judge, instruction: str, answer: str) -> str:
    return judge._prompt.render(instruction, answer)[1]["content"]


GOOD = [("What animal is in the picture?", "A tabby cat on a sofa."), ("What colour is the car?", "Red.")]


def test_well_formed_answers_are_parsed_per_row(fresh, tmp_path):
    judge = _judge(fresh, tmp_path)
    out = judge.score_batch(_batch(GOOD))
    assert list(out) == ["score_judge"]
    assert out["score_judge"].dtype == np.float32
    expected = [JudgeServer.expected_score(_user_text(judge, q, a)) for q, a in GOOD]
    assert out["score_judge"].tolist() == expected
    body = fresh.requests[0]["body"]
    assert body["model"] == "test-judge" and body["temperature"] == 0.0 and body["max_tokens"] == 256
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert judge._prompt.image_absent in body["messages"][1]["content"]
    assert judge.stats()["prompt_tokens"] > 0 and judge.stats()["completion_tokens"] > 0


def test_extra_body_adds_and_removes_fields(fresh, tmp_path):
    extra = {"seed": 7, "max_tokens": None, "max_completion_tokens": 64}
    _judge(fresh, tmp_path, extra_body=extra).score_batch(_batch(GOOD[:1]))
    body = fresh.requests[0]["body"]
    assert body["seed"] == 7 and body["max_completion_tokens"] == 64 and "max_tokens" not in body


def test_rubric_prompt_and_registry(fresh, tmp_path):
    judge = get_metric("judge", **{**_judge(fresh, tmp_path).get_params(), "prompt": "rubric5"})
    scores = judge.score_batch(_batch(GOOD))["score_judge"]
    assert set(scores.tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_error_rows_and_missing_turns_are_nan_without_a_request(fresh, tmp_path):
    rows = [GOOD[0], ("Describe it.", None), GOOD[1], ("", "Only an image was sent.")]
    out = _judge(fresh, tmp_path).score_batch(_batch(rows, errors={2: "missing_image: x.jpg not found"}))
    scores = out["score_judge"]
    assert np.isfinite(scores[0]) and np.isnan(scores[1]) and np.isnan(scores[2]) and np.isfinite(scores[3])
    assert len(fresh.requests) == 2  # nothing sent for the error row and the row without an answer


def test_retries_then_success(fresh, tmp_path):
    judge = _judge(fresh, tmp_path, max_retries=2)
    rows = [("[[flaky]] What is it?", "A dog."), ("[[ratelimit]] What is it?", "A bird.")]
    scores = judge.score_batch(_batch(rows))["score_judge"]
    assert np.isfinite(scores).all()
    attempts = sorted(fresh.attempts.values())
    assert attempts == [2, 3]  # 429 once then OK; 503 twice then OK
    assert judge.stats()["attempts"] == 5 and judge.stats()["failed"] == 0


def test_failing_server_gives_nan_after_bounded_retries(fresh, tmp_path, caplog):
    judge = _judge(fresh, tmp_path, max_retries=2)
    with caplog.at_level(logging.WARNING):
        scores = judge.score_batch(_batch([("[[fail]] What is it?", "A dog."), GOOD[0]]))["score_judge"]
    assert np.isnan(scores[0]) and np.isfinite(scores[1])
    assert max(fresh.attempts.values()) == 3  # 1 + max_retries, then it gives up
    assert "row0" in caplog.text and "HTTP 500" in caplog.text
    assert judge.stats()["failed"] == 1


def test_row_specific_refusal_is_not_retried(fresh, tmp_path):
    scores = _judge(fresh, tmp_path).score_batch(_batch([("[[badrequest]] What?", "A dog.")]))["score_judge"]
    assert np.isnan(scores[0]) and len(fresh.requests) == 1


@pytest.mark.parametrize("marker", ["malformed", "nochoices"])
def test_malformed_bodies_are_retried_then_nan(fresh, tmp_path, marker):
    judge = _judge(fresh, tmp_path, max_retries=1)
    scores = judge.score_batch(_batch([(f"[[{marker}]] What?", "A dog.")]))["score_judge"]
    assert np.isnan(scores[0]) and len(fresh.requests) == 2


def test_timeouts_are_retried_then_nan(fresh, tmp_path, caplog):
    judge = _judge(fresh, tmp_path, timeout=0.2, max_retries=1)
    with caplog.at_level(logging.WARNING):
        out = judge.score_batch(_batch([("[[slow]] What?", "A dog."), ("[[slow-once]] What?", "A cat.")]))
    scores = out["score_judge"]
    assert np.isnan(scores[0]) and np.isfinite(scores[1])  # the second answers in time on its retry
    assert "timed out after 0.2 s" in caplog.text and "row0" in caplog.text


def test_unparsable_answer_is_nan_and_logged_with_row_id(fresh, tmp_path, caplog):
    judge = _judge(fresh, tmp_path)
    with caplog.at_level(logging.WARNING, logger="metrics.judge"):
        scores = judge.score_batch(_batch([GOOD[0], ("[[unparsable]] What?", "A dog.")]))["score_judge"]
    assert np.isfinite(scores[0]) and np.isnan(scores[1])
    assert "row1" in caplog.text and "unparsable" in caplog.text and "pretty good" in caplog.text
    assert judge.stats()["unparsable"] == 1


def test_cache_rerun_makes_no_requests(fresh, tmp_path):
    rows = GOOD + [("[[unparsable]] What?", "A dog.")]
    first = _judge(fresh, tmp_path).score_batch(_batch(rows))["score_judge"]
    assert len(fresh.requests) == 3
    rerun = _judge(fresh, tmp_path)  # a new instance (new process in practice) reads the same cache file
    again = rerun.score_batch(_batch(rows))["score_judge"]
    assert len(fresh.requests) == 3  # no new request, not even for the unparsable answer
    np.testing.assert_array_equal(first, again)
    assert rerun.stats()["cache_hits"] == 3 and rerun.stats()["unparsable"] == 1


def test_cache_keys_on_prompt_model_and_content(fresh, tmp_path):
    _judge(fresh, tmp_path).score_batch(_batch(GOOD))
    assert len(fresh.requests) == 2
    _judge(fresh, tmp_path, model="other-model").score_batch(_batch(GOOD))
    assert len(fresh.requests) == 4
    _judge(fresh, tmp_path, prompt="rubric5").score_batch(_batch(GOOD))
    assert len(fresh.requests) == 6
    changed = [GOOD[0], (GOOD[1][0], "Blue.")]  # one answer edited: only that row is asked again
    _judge(fresh, tmp_path).score_batch(_batch(changed))
    assert len(fresh.requests) == 7
    # the same content under another row id is a cache hit
    batch = _batch(GOOD)
    batch["id"] = ["x", "y"]
    _judge(fresh, tmp_path).score_batch(batch)
    assert len(fresh.requests) == 7


def test_failed_requests_are_not_cached(fresh, tmp_path):
    rows = [("[[fail]] What?", "A dog."), GOOD[0]]
    _judge(fresh, tmp_path, max_retries=0).score_batch(_batch(rows))
    assert len(fresh.requests) == 2
    _judge(fresh, tmp_path, max_retries=0).score_batch(_batch(rows))
    assert len(fresh.requests) == 3  # only the failed row is asked again


def test_cache_can_be_disabled(fresh, tmp_path):
    for _ in range(2):
        _judge(fresh, tmp_path, cache=False).score_batch(_batch(GOOD))
    assert len(fresh.requests) == 4
    assert not (tmp_path / "cache").exists()


def test_api_key_is_sent_but_never_stored_logged_or_pickled(fresh, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    fresh.api_key = SECRET
    judge = _judge(fresh, tmp_path, api_key_env="JUDGE_TEST_KEY")
    with caplog.at_level(logging.DEBUG):
        out = judge.score_batch(_batch(GOOD + [("[[fail]] What?", "A dog."), ("[[badrequest]] x", "y")]))
    scores = out["score_judge"]
    assert np.isfinite(scores[:2]).all()
    assert fresh.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in caplog.text
    assert SECRET not in repr(judge) and SECRET not in json.dumps(judge.get_params())
    assert SECRET.encode() not in pickle.dumps(judge)
    files = [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert files
    for path in files:
        assert SECRET.encode() not in path.read_bytes()


def test_wrong_api_key_stops_the_run_with_a_config_error(fresh, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-wrong-key")
    fresh.api_key = SECRET
    judge = _judge(fresh, tmp_path, api_key_env="JUDGE_TEST_KEY")
    with pytest.raises(ConfigError, match="refused the API key") as info:
        judge.score_batch(_batch(GOOD))
    assert "sk-wrong-key" not in str(info.value) and "JUDGE_TEST_KEY" in str(info.value)


def test_unknown_endpoint_is_a_config_error(fresh, tmp_path):
    judge = _judge(fresh, tmp_path, base_url=fresh.base_url.replace("/v1", "/v2"))
    with pytest.raises(ConfigError, match="not found"):
        judge.score_batch(_batch(GOOD))


def test_unreachable_server_gives_nan_not_a_crash(tmp_path, caplog):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = Judge(
        base_url=f"http://127.0.0.1:{port}/v1",
        model="m",
        api_key_env=None,
        cache_dir=str(tmp_path),
        timeout=0.5,
        max_retries=1,
        backoff=0.01,
    )
    with caplog.at_level(logging.WARNING):
        scores = judge.score_batch(_batch(GOOD))["score_judge"]
    assert np.isnan(scores).all() and "connection error" in caplog.text


def test_concurrency_limit_is_respected(tmp_path):
    rows = [(f"Question {i}?", f"Answer {i}.") for i in range(12)]
    with JudgeServer(delay=0.05) as srv:
        _judge(srv, tmp_path, max_concurrency=3).score_batch(_batch(rows))
        assert len(srv.requests) == 12 and 1 <= srv.max_in_flight <= 3
        srv.reset()
        _judge(srv, tmp_path, max_concurrency=1, cache=False).score_batch(_batch(rows))
        assert srv.max_in_flight == 1


def test_send_image_posts_data_urls(fresh, tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format="PNG")
    batch = _batch(GOOD + [("What is it?", "Nothing.")])
    batch["image"] = [{"bytes": buf.getvalue(), "path": None}, None, {"bytes": b"not an image", "path": None}]
    batch["images"] = [[], [], []]
    judge = _judge(fresh, tmp_path, send_image=True)
    assert judge.required_columns() == ["id", "messages", "error", "image", "images"]
    scores = judge.score_batch(batch)["score_judge"]
    assert np.isfinite(scores[:2]).all() and np.isnan(scores[2])  # the corrupt image is a counted failure
    by_text = {r["text"]: r["body"] for r in fresh.requests}
    with_image = next(b for b in by_text.values() if isinstance(b["messages"][1]["content"], list))
    parts = with_image["messages"][1]["content"]
    assert parts[0]["type"] == "text" and judge._prompt.image_attached in parts[0]["text"]
    url = parts[1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (8, 8)
    text_only = [b for b in by_text.values() if isinstance(b["messages"][1]["content"], str)]
    assert len(text_only) == 1 and judge._prompt.image_absent in text_only[0]["messages"][1]["content"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"backend": "vllm"}, "backend must be one of"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"timeout": -1}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"base_url": "127.0.0.1:8000"}, "base_url must start with"),
        ({"expected_score": True}, "only the hf backend"),
        ({"prefill": True}, "only supported by the hf backend"),
        ({"extra_body": ["seed", 0]}, "extra_body must be a mapping"),
        ({"prompt": "nope"}, "unknown judge prompt"),
        ({"backend": "hf", "send_image": True}, "text-only"),
    ],
)
def test_bad_parameters_are_config_errors(tmp_path, params, message):
    judge = Judge(**{"cache_dir": str(tmp_path), **params})
    with pytest.raises(ConfigError, match=message):
        judge.score_batch(_batch(GOOD))


def test_pickle_and_fingerprint_are_stable_after_use(fresh, tmp_path):
    from datasets.fingerprint import Hasher

    judge = _judge(fresh, tmp_path)
    before = Hasher.hash(judge)
    judge.score_batch(_batch(GOOD))
    assert Hasher.hash(judge) == before
    clone = pickle.loads(pickle.dumps(judge))
    assert clone == judge and len(pickle.dumps(judge)) < 2000
    assert (
        clone.score_batch(_batch(GOOD))["score_judge"].tolist()
        == judge.score_batch(_batch(GOOD))["score_judge"].tolist()
    )


def test_dataset_map_with_workers_shares_the_cache(fresh, tmp_path):
    from datasets import Dataset

    rows = [(f"Question {i}?", f"Answer {i}.") for i in range(6)]
    ds = Dataset.from_dict(_batch(rows))
    judge = _judge(fresh, tmp_path)
    mapped = ds.map(judge, batched=True, batch_size=2, with_rank=True, num_proc=2, remove_columns=ds.column_names)
    direct = _judge(fresh, tmp_path).score_batch(_batch(rows))["score_judge"]
    np.testing.assert_array_equal(np.asarray(mapped["score_judge"], dtype=np.float32), direct)
    assert len(fresh.requests) == 6  # the direct call was answered from what the workers cached


def test_estimate_after_a_limited_run(fresh, tmp_path):
    rows = [(f"Describe picture {i} in detail.", "A long answer. " * (i + 1)) for i in range(10)]
    batch = _batch(rows, errors={9: "corrupt_image: truncated"})
    judge = _judge(fresh, tmp_path, price_input_per_mtok=1.0, price_output_per_mtok=4.0)
    cold = judge.estimate(batch)
    assert (cold["requests"], cold["cached"], cold["skipped"]) == (9, 0, 1)
    assert cold["completion_tokens"] == 9 * 256 and cold["seconds"] is None  # upper bound, nothing measured
    first = {k: v[:3] for k, v in batch.items()}
    judge.score_batch(first)
    est = judge.estimate(batch, n_scored=3, elapsed=1.0)
    assert (est["rows"], est["cached"], est["skipped"], est["requests"]) == (10, 3, 1, 6)
    real_prompt = sum(sum(len(m["content"]) for m in r["body"]["messages"]) // 4 for r in fresh.requests)
    assert est["cached_prompt_tokens"] == real_prompt
    assert 0 < est["prompt_tokens"] and 0 < est["completion_tokens"] < 6 * 256
    assert est["seconds"] is not None and est["seconds"] >= 0
    assert est["cost"] == pytest.approx((est["prompt_tokens"] * 1.0 + est["completion_tokens"] * 4.0) / 1e6, rel=1e-3)
    text = judge.format_estimate(est)
    assert "6 requests to send" in text and "3 already answered" in text and "cost about" in text
    assert len(fresh.requests) == 3  # estimating sends nothing


def test_cli_score_limit_prints_the_judge_estimate(fresh, tmp_path, capsys):
    from selector.cli import main

    rows = [
        {
            "id": f"r{i}",
            "conversations": [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": f"Answer {i}."}],
        }
        for i in range(8)
    ]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    config = tmp_path / "metrics.yaml"
    config.write_text(
        "metrics:\n"
        f"  - {{metric: judge, base_url: '{fresh.base_url}', model: test-judge, api_key_env: null,"
        f" cache_dir: '{tmp_path / 'cache'}', price_input_per_mtok: 0.15, price_output_per_mtok: 0.6}}\n",
        encoding="utf-8",
    )
    rc = main(
        ["score", str(data), "--metric-config", str(config), "--out", str(tmp_path / "out"), "--limit", "3", "--quiet"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert len(fresh.requests) == 3
    assert "judge 'judge' (openai test-judge, prompt vlselect_quality@v1)" in out
    assert "8 rows: 3 already answered (cached), 0 skipped" in out and "5 requests to send" in out
    assert "cost about" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    params = manifest["metrics"][0]["params"]
    assert params["api_key_env"] is None and params["model"] == "test-judge"


def test_worker_threads_do_not_outlive_a_batch(fresh, tmp_path):
    judge = _judge(fresh, tmp_path)
    judge.score_batch(_batch(GOOD * 3))
    assert not [t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")]
    judge.close()
    assert math.isfinite(float(judge.score_batch(_batch(GOOD))["score_judge"][0]))  # reopens after close


def test_flat_keys_route_to_the_backend_options(tmp_path, caplog):
    from metrics.judge_backends import HFOptions, OpenAIOptions

    judge = get_metric("judge", base_url="http://127.0.0.1:9/v1", timeout=5, cache_dir=str(tmp_path))
    assert judge.openai_options == OpenAIOptions(base_url="http://127.0.0.1:9/v1", timeout=5)
    assert judge.hf_options == HFOptions()
    params = judge.get_params()
    assert params["timeout"] == 5 and "gguf_file" not in params  # only this backend's options (and changed ones)
    assert Judge(**params) == judge
    with pytest.raises(ConfigError, match="no parameter.*colour.*backend options are: base_url"):
        get_metric("judge", colour="red")
    ignored = Judge(cache_dir=str(tmp_path), batch_size=4, prompt="rubric5")
    assert ignored.get_params()["batch_size"] == 4  # kept, so the configuration round-trips
    with caplog.at_level(logging.WARNING):
        ignored._validate()
    assert "batch_size is an option of the hf backend; ignored with backend='openai'" in caplog.text


def test_cache_keys_are_stable_across_versions(tmp_path):
    """The cache key formula is a file format: existing caches must keep answering after a refactor."""
    batch = _batch([("What is it?", "A cat.")])
    judge = Judge(
        model="m", prompt="instructiongpt4@v1", temperature=0.5, extra_body={"seed": 1}, cache_dir=str(tmp_path)
    )
    assert judge._prepare(batch)[0][1] == "db5f62b216fc25eda2f3b6d837ed7fd3006828f8c7afce76246692e43add37b3"


def test_missing_httpx_fails_at_construction(monkeypatch):
    import importlib.util

    from selector.errors import MissingDependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "httpx" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"Install vlselect\[judge\] to use the openai judge backend"):
        get_metric("judge", base_url="http://127.0.0.1:9/v1")
    assert get_metric("judge", backend="hf").backend == "hf"  # the hf backend does not need httpx
