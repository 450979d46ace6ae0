"""No credential reaches anything vlselect writes or prints (issue 21, item 2), and the judge cache keys on the
endpoint (item 7).

The end-to-end test runs ``score`` -> ``select`` -> ``card`` -> ``report`` through the CLI with a judge whose
configuration carries a secret in every place a user puts one (``user:key@`` in ``base_url``, ``x-api-key`` and
``credentials`` headers, ``extra_body.api_key``, the API key variable), against the local OpenAI-compatible
server, then reads back every file the run wrote (the judge's SQLite cache included), every log record (httpx's
request lines included) and stdout/stderr, and looks for each secret's value.
"""

from __future__ import annotations

import logging
import os

import pytest
import yaml
from judge_server import JudgeServer

from selector.cli import main
from selector.redact import is_secret_key, redact, redact_text

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "selector", "example_data", "llava_mini.json")

USER = "judge-user-71c2"
PASSWORD = "pw-userinfo-9d41e0"
ENV_KEY = "sk-env-3b7f1a2c9e"
HEADER_KEY = "hdr-key-5e8d2f61"
CREDENTIALS = "cred-token-a4c90b"
BODY_KEY = "body-key-0f6e3d27"
SECRETS = (USER, PASSWORD, ENV_KEY, HEADER_KEY, CREDENTIALS, BODY_KEY)
KEY_VAR = "VLSELECT_TEST_JUDGE_KEY"


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "apikey",
        "API-KEY",
        "x-api-key",
        "X-Api-Key",
        "token",
        "hf_token",
        "secret",
        "client_secret",
        "password",
        "passwd",
        "credentials",
        "Authorization",
        "auth",
        "cookie",
        "private_key",
        "private-key",
        "aws_secret_access_key",
    ],
)
def test_secret_keys(key):
    assert is_secret_key(key)
    assert redact({key: "v4lue-x"}) == {key: "<redacted>"}


@pytest.mark.parametrize("key", ["api_key_env", "max_new_tokens", "tokenizer", "author", "image_token_mismatch"])
def test_not_secret_keys(key):
    assert not is_secret_key(key)
    assert redact({key: "kept"}) == {key: "kept"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("https://u:k3y-abcdef@api.example.com/v1", "https://***@api.example.com/v1"),
        ("http://tok-only-123@h:8000/v1/chat", "http://***@h:8000/v1/chat"),
        ("https://u:p@ss-word@h/v1", "https://***@h/v1"),  # an unescaped "@" in the password
        ("see http://host/path?email=a@b.c", "see http://host/path?email=a@b.c"),
        ("GET https://h/v1?api_key=abc123&n=2", "GET https://h/v1?api_key=***&n=2"),
        ("Authorization: Bearer sk-abc.def", "Authorization: *** ***"),
        ("{'api_key': 'sk-in-a-repr-1'}", "{'api_key': '***'}"),
        ("image_token_mismatch: 2 <image> token(s)", "image_token_mismatch: 2 <image> token(s)"),
    ],
)
def test_secrets_inside_text(text, expected):
    assert redact_text(text) == expected


def test_nested_values_and_urls_in_lists_are_redacted():
    data = {"metrics": [{"params": {"extra_body": {"api_key": "k-123456", "seed": 1}}}], "urls": ("https://a:b@c/",)}
    assert redact(data) == {
        "metrics": [{"params": {"extra_body": {"api_key": "<redacted>", "seed": 1}}}],
        "urls": ("https://***@c/",),
    }


def _judge_config(tmp_path, base_url: str) -> str:
    path = tmp_path / "metrics.yaml"
    scheme, rest = base_url.split("://", 1)
    judge = {
        "metric": "judge",
        "backend": "openai",
        "base_url": f"{scheme}://{USER}:{PASSWORD}@{rest}",
        "model": "test-judge",
        "api_key_env": KEY_VAR,
        "cache_dir": str(tmp_path / "judge-cache"),
        "headers": {"x-api-key": HEADER_KEY, "credentials": CREDENTIALS},
        "extra_body": {"api_key": BODY_KEY, "seed": 1},
        "timeout": 10,
        "max_retries": 0,
    }
    path.write_text(yaml.safe_dump({"metrics": [judge]}))
    return str(path)


def _files_with_secrets(root) -> dict[str, list[str]]:
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                data = handle.read()
            hits = [s for s in SECRETS if s.encode() in data]
            if hits:
                found[path] = hits
    return found


def test_no_secret_in_any_file_log_or_message(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv(KEY_VAR, ENV_KEY)
    runs = tmp_path / "runs"
    scored, selected = str(runs / "scored"), str(runs / "selected")
    with JudgeServer() as server:
        config = _judge_config(tmp_path, server.base_url)
        with caplog.at_level(logging.DEBUG):  # every record, httpx's request lines included
            argv = ["-v", "score", EXAMPLE, "--metric-config", config, "--out", scored, "--limit", "6"]
            assert main(argv) == 0
            assert main(["select", scored, "--strategy", "topk:score_judge", "--budget", "3", "--out", selected]) == 0
            assert main(["card", selected]) == 0
            report = main(["report", selected, "--out", str(runs / "report.html")])
        requests = list(server.requests)
    # the secrets were really used: sent to the server, so a clean output is not a clean input
    assert len(requests) == 6
    headers = {k.lower(): v for k, v in requests[0]["headers"].items()}
    assert headers["x-api-key"] == HEADER_KEY and headers["credentials"] == CREDENTIALS
    assert requests[0]["body"]["api_key"] == BODY_KEY

    written = _files_with_secrets(tmp_path / "runs")
    written.update(_files_with_secrets(tmp_path / "judge-cache"))
    assert written == {}
    out, err = capsys.readouterr()
    logs = caplog.text
    for secret in SECRETS:
        assert secret not in out and secret not in err and secret not in logs, secret
    manifest = (runs / "scored" / "manifest.json").read_text()
    assert '"api_key": "<redacted>"' in manifest and '"x-api-key": "<redacted>"' in manifest
    assert f"http://***@127.0.0.1:{server.base_url.rsplit(':', 1)[1]}" in manifest
    assert os.path.exists(os.path.join(selected, "README.md"))
    assert report in (0, 2)  # the report needs the [report] extra; when it ran, its file was checked above


def test_httpx_request_lines_are_masked(tmp_path, monkeypatch, caplog):
    """A library user who turns httpx's INFO log on sees each request URL with its userinfo masked."""
    from metrics.judge import Judge

    monkeypatch.setenv(KEY_VAR, ENV_KEY)
    batch = {"id": ["a"], "messages": [[{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]]}
    batch["error"] = [None]
    with JudgeServer() as server:
        params = yaml.safe_load(open(_judge_config(tmp_path, server.base_url)))["metrics"][0]
        params.pop("metric")
        with caplog.at_level(logging.DEBUG):
            Judge(**params).score_batch(batch)
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert lines and all("***@127.0.0.1" in line for line in lines), lines
    for secret in SECRETS:
        assert secret not in caplog.text


def test_refused_key_is_one_line_without_secrets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_VAR, ENV_KEY)
    with JudgeServer(api_key="the-right-key-0000") as server:
        config = _judge_config(tmp_path, server.base_url)
        code = main(["score", EXAMPLE, "--metric-config", config, "--out", str(tmp_path / "s"), "--limit", "2"])
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: the endpoint refused the API key")
    assert "***@127.0.0.1" in lines[0]
    for secret in SECRETS:
        assert secret not in err


def test_judge_cache_keys_on_the_endpoint(tmp_path):
    """Item 7: answers cached from one server are never served for another (a dead one gives NaN, not them)."""
    import numpy as np

    from metrics.judge import Judge

    batch = {
        "id": ["a", "b"],
        "messages": [
            [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A cat."}],
            [{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "Red."}],
        ],
        "error": [None, None],
    }

    def judge(base_url):
        return Judge(
            base_url=base_url,
            model="test-judge",
            api_key_env=None,
            cache_dir=str(tmp_path),
            timeout=0.5,
            max_retries=0,
        )

    with JudgeServer() as first:
        scores = judge(first.base_url).score_batch(batch)["score_judge"]
        again = judge(first.base_url + "/").score_batch(batch)["score_judge"]  # same endpoint: all cached
        assert len(first.requests) == 2
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(again, scores)
    # the same server name with other credentials is the same endpoint: credentials never enter the key
    host = first.base_url.split("://", 1)[1]
    assert judge(f"http://someone:else@{host}")._cache_key("row") == judge(first.base_url)._cache_key("row")
    # another endpoint (here: a dead one) must not answer from the first one's cache
    dead = judge("http://127.0.0.1:9/v1").score_batch(batch)["score_judge"]
    assert np.isnan(dead).all()
