"""`vlselect score --limit` on a slow metric: rows/s per metric, one time estimate, progress inside a shard."""

from __future__ import annotations

import json

import pytest
from judge_server import JudgeServer
from scoring_helpers import write_qa_rows

from metrics.registry import get_metric
from selector.cli import main

N_ROWS = 12


@pytest.fixture(scope="module")
def server():
    # Every answer takes 0.1 s and requests go one at a time: a slow judge, as a local model is.
    with JudgeServer(delay=0.1) as srv:
        yield srv


def _config(tmp_path, server):
    path = tmp_path / "metrics.yaml"
    path.write_text(
        "metrics:\n"
        "  - {metric: length}\n"
        f"  - {{metric: judge, base_url: '{server.base_url}', model: test-judge, api_key_env: null,"
        f" cache_dir: '{tmp_path / 'cache'}', max_concurrency: 1}}\n",
        encoding="utf-8",
    )
    return path


def _precache(tmp_path, server, rows: range) -> None:
    """Judge some later rows beforehand (same cache), as an earlier run or another worker would have."""
    from selector.data import load_instructions

    ds = load_instructions(str(write_qa_rows(tmp_path, N_ROWS)))
    judge = get_metric(
        "judge", base_url=server.base_url, model="test-judge", api_key_env=None, cache_dir=str(tmp_path / "cache")
    )
    judge.score_batch(ds.select(rows)[:])


def test_limit_estimate_agrees_with_the_judge_remaining_requests(server, tmp_path, capsys):
    _precache(tmp_path, server, range(8, 12))  # 4 of the 8 rows after --limit 4 are answered already
    server.reset()
    data, config = write_qa_rows(tmp_path, N_ROWS), _config(tmp_path, server)
    out_dir = tmp_path / "out"
    rc = main(["score", str(data), "--metric-config", str(config), "--out", str(out_dir), "--limit", "4", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    seconds = {entry["name"]: entry["seconds"] for entry in manifest["metrics"]}
    judge_est = out["estimates"]["judge"]
    assert judge_est["requests"] == 4 and judge_est["cached"] == 8  # 4 from this run, 4 from before
    parts = out["estimate_parts"]
    assert set(parts) == {"length", "judge", "writing"}
    assert out["estimated_seconds_all_rows"] == pytest.approx(sum(parts.values()))
    # The whole-input figure counts the judge exactly as its own "remaining requests" estimate does, plus what
    # the judge cost here besides waiting for answers (loading): the two estimates cannot disagree.
    waited = judge_est["this_process"]["seconds"]
    assert parts["judge"] == pytest.approx(judge_est["seconds"] + max(seconds["judge"] - waited, 0.0))
    # Scaling the judge's time by rows (what the old estimate did) would charge the 8 cached rows again.
    assert parts["judge"] < seconds["judge"] * N_ROWS / 4
    assert parts["length"] == pytest.approx(seconds["length"] * N_ROWS / 4)
    assert set(out["rows_per_second"]) == {"length", "judge"}
    assert out["rows_per_second"]["judge"] == pytest.approx(4 / seconds["judge"])


def test_limit_prints_rows_per_second_per_metric(server, tmp_path, capsys):
    data, config = write_qa_rows(tmp_path, N_ROWS), _config(tmp_path, server)
    rc = main(["score", str(data), "--metric-config", str(config), "--out", str(tmp_path / "o"), "--limit", "3"])
    assert rc == 0
    text = capsys.readouterr().out
    rate_lines = [line for line in text.splitlines() if "(this run, model loading included)" in line]
    assert [line.split(":")[0].strip() for line in rate_lines] == ["length", "judge"]
    assert f"estimate for all {N_ROWS} rows: about" in text and "judge " in text.split("estimate for all")[1]


def test_progress_shows_inside_a_shard(server, tmp_path, capsys):
    data, config = write_qa_rows(tmp_path, N_ROWS), _config(tmp_path, server)
    # One shard of 12 rows, map batches of 4: without --quiet the bar moves after every batch, not per shard.
    rc = main(
        [
            "score",
            str(data),
            "--metric-config",
            str(config),
            "--out",
            str(tmp_path / "p"),
            "--batch-size",
            "4",
            "--shard-size",
            "100",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "judge rows 0-12" in err
    assert "4/12" in err and "8/12" in err
