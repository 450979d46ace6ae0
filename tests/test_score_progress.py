"""``vlselect score`` on a slow metric: progress inside a shard, and ``--limit``'s rows/s and two estimates.

The metrics here are fakes that sleep instead of running a model, so the tests are fast and download nothing.
"""

from __future__ import annotations

import json
import re
import sys
import time

import numpy as np
import pytest
from scoring_helpers import write_qa_rows

from metrics.base import Metric
from metrics.judge import format_duration, remaining_seconds
from selector.cli import main
from selector.commands import score as score_command

N_ROWS = 12


class SlowMetric(Metric):
    """Sleeps ``delay`` seconds per row; remembers what stderr showed when each batch started (while the shard
    it belongs to is still being scored, so nothing of that shard is written yet)."""

    def __init__(self, name: str = "slow", delay: float = 0.05):
        self.name = name
        self.delay = delay

    def required_columns(self) -> list[str]:
        return ["id", "error"]

    def score_batch(self, batch, *, rank=None):
        seen = getattr(self, "stderr_at_batch", None)
        if seen is None:
            seen = self.stderr_at_batch = []
        getvalue = getattr(sys.stderr, "getvalue", None)  # pytest's capsys stream
        seen.append(getvalue() if getvalue else "")
        n = len(batch["id"])
        time.sleep(self.delay * n)
        return {self.column(): np.full(n, 1.0, dtype=np.float32)}


class FakeJudge(SlowMetric):
    """Judge-like: every row is a request taking ``delay`` seconds, and it has ``estimate`` / ``format_estimate``
    with :class:`metrics.judge.Judge`'s contract. ``in_workers=True`` keeps no counters in this process, as a judge
    run with ``--num-proc`` (its requests were sent by worker processes)."""

    def __init__(self, name: str = "fakejudge", delay: float = 0.05, in_workers: bool = False):
        super().__init__(name=name, delay=delay)
        self.in_workers = in_workers

    def _stats(self) -> dict:
        stats = getattr(self, "_stats_obj", None)
        if stats is None:
            stats = self._stats_obj = {"requests": 0, "seconds": 0.0}
        return stats

    def release(self) -> None:
        stats = self._stats()  # kept for estimate(), as Judge.release keeps them
        super().release()
        self._stats_obj = stats

    def score_batch(self, batch, *, rank=None):
        started = time.perf_counter()
        out = super().score_batch(batch, rank=rank)
        if not self.in_workers:
            stats = self._stats()
            stats["requests"] += len(batch["id"])
            stats["seconds"] += time.perf_counter() - started
        return out

    def estimate(self, dataset, *, n_scored=None, elapsed=None):
        stats = self._stats()
        requests = len(dataset) - (n_scored or 0)  # the scored rows are answered (cached)
        seconds = remaining_seconds(requests, stats, n_scored=n_scored, elapsed=elapsed)
        return {"requests": requests, "seconds": seconds, "this_process": dict(stats)}

    def format_estimate(self, est) -> str:
        return f"fake judge: remaining {est['requests']} requests: about {format_duration(est['seconds'])}"


def _use_metrics(monkeypatch, *metrics):
    monkeypatch.setattr(score_command, "_metric_list", lambda args: list(metrics))


def test_progress_moves_inside_one_shard_before_it_is_written(tmp_path, capsys, monkeypatch):
    slow = SlowMetric()
    _use_metrics(monkeypatch, slow)
    out = tmp_path / "out"
    args = ["score", write_qa_rows(tmp_path, N_ROWS), "--metrics", "slow", "--out", str(out), "--batch-size", "4"]
    assert main([*args, "--shard-size", "100"]) == 0  # the whole input is one shard
    err = capsys.readouterr().err
    assert "slow rows 0-12" in err and "8/12" in err
    # When the last batch started, stderr already showed the first two batches' progress, and the shard (the
    # unit of output) was not written yet: a long shard is not silent.
    assert len(slow.stderr_at_batch) == 3
    assert "4/12" in slow.stderr_at_batch[2] and "8/12" in slow.stderr_at_batch[2]
    assert "12/12" not in slow.stderr_at_batch[2]


def test_quiet_shows_no_progress(tmp_path, capsys, monkeypatch):
    _use_metrics(monkeypatch, SlowMetric(delay=0.0))
    out = tmp_path / "out"
    data = write_qa_rows(tmp_path, N_ROWS)
    assert main(["score", data, "--metrics", "slow", "--out", str(out), "--batch-size", "4", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "4/12" not in err and "rows 0-12" not in err


def _limit_run(tmp_path, monkeypatch, capsys, judge, json_out: bool):
    # A second slow metric makes the whole run's time differ from the judge's own.
    _use_metrics(monkeypatch, SlowMetric(delay=0.03), judge)
    out = tmp_path / "out"
    args = [
        "score",
        write_qa_rows(tmp_path, N_ROWS),
        "--metrics",
        "x",
        "--out",
        str(out),
        "--limit",
        "4",
        "--batch-size",
        "2",
    ]
    assert main([*args, *(["--json"] if json_out else [])]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    return capsys.readouterr().out, {e["name"]: e["seconds"] for e in manifest["metrics"]}


@pytest.mark.parametrize("in_workers", [False, True], ids=["this-process", "workers"])
def test_limit_whole_input_estimate_agrees_with_remaining_requests(tmp_path, capsys, monkeypatch, in_workers):
    judge = FakeJudge(in_workers=in_workers)
    text, seconds = _limit_run(tmp_path, monkeypatch, capsys, judge, json_out=True)
    out = json.loads(text)
    est = out["estimates"]["fakejudge"]
    assert est["requests"] == N_ROWS - 4
    parts = out["estimate_parts"]
    assert set(parts) == {"slow", "fakejudge", "writing"}
    assert out["estimated_seconds_all_rows"] == pytest.approx(sum(parts.values()))
    assert parts["slow"] == pytest.approx(seconds["slow"] * N_ROWS / 4)
    if in_workers:
        # Nothing measured here: the judge's estimate is its own wall time per row (not the whole run's, which
        # holds the other metric too), and the whole-input part is that estimate, not that plus the wall time.
        assert est["seconds"] == pytest.approx((N_ROWS - 4) * seconds["fakejudge"] / 4, rel=1e-3)
        assert parts["fakejudge"] == pytest.approx(est["seconds"])
    else:
        waited = est["this_process"]["seconds"]
        assert parts["fakejudge"] == pytest.approx(est["seconds"] + max(seconds["fakejudge"] - waited, 0.0))
    # 8 remaining rows at 0.05 s: about 0.4 s either way; the other metric's 0.36 s is not in the judge's part.
    assert parts["fakejudge"] == pytest.approx(0.4, abs=0.25)
    assert set(out["rows_per_second"]) == {"slow", "fakejudge"}
    assert out["rows_per_second"]["fakejudge"] == pytest.approx(4 / seconds["fakejudge"])


def test_limit_prints_rates_and_the_same_judge_time_twice(tmp_path, capsys, monkeypatch):
    judge = FakeJudge(delay=0.5, in_workers=True)  # 8 remaining rows at 0.5 s: about 4 s
    text, _ = _limit_run(tmp_path, monkeypatch, capsys, judge, json_out=False)
    rates = [line.split(":")[0].strip() for line in text.splitlines() if "(this run, model loading included)" in line]
    assert rates == ["slow", "fakejudge"]
    assert re.search(r"^  fakejudge: [12]\.\d rows/s \(this run", text, re.M)  # 4 rows at 0.5 s each
    whole = next(line for line in text.splitlines() if line.startswith(f"estimate for all {N_ROWS} rows: about"))
    remaining = next(line for line in text.splitlines() if line.startswith("fake judge: remaining 8 requests"))
    judge_part = whole.split("fakejudge ")[1].split(",")[0]
    assert remaining.endswith(f"about {judge_part}")  # one number, one format, in both lines


def test_slow_rate_is_shown_in_seconds_per_row():
    assert score_command._format_rate(0.5) == "2.0 s/row"
    assert score_command._format_rate(2.0) == "2.0 rows/s"


def test_format_duration_is_shared():
    assert score_command._format_seconds(100) == format_duration(100) == "100 s"
    assert format_duration(294) == "4.9 min"
    assert format_duration(3 * 3600) == "3.0 h"


def test_judge_estimate_without_a_measured_time_is_unknown():
    from metrics.registry import get_metric

    judge = get_metric("judge", base_url="http://127.0.0.1:9/v1", model="m", api_key_env=None, cache=False)
    batch = {
        "id": ["a", "b"],
        "messages": [[{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]] * 2,
        "error": [None, None],
    }
    # Shards resumed from disk take 0 s: that measures nothing, it is not "free".
    assert judge.estimate(batch, n_scored=2, elapsed=0.0)["seconds"] is None
    assert judge.estimate(batch, n_scored=2, elapsed=3.0)["seconds"] == pytest.approx(3.0)
