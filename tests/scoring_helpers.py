"""Helpers for the scoring tests that must also run in a subprocess (the kill-and-resume test)."""

from __future__ import annotations

import os
import time

from metric_rows import make_dataset, turns

from metrics.length import LengthMetric


class SlowLength(LengthMetric):
    """``length`` that sleeps per batch and logs each batch's first id, so a test can kill a run part-way
    and see which batches a resumed run recomputes. Both knobs come from the environment, not the instance
    state, so the slow and the fast instance have the same fingerprint."""

    def score_batch(self, batch, *, rank=None):
        log = os.environ.get("VLSELECT_TEST_BATCH_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(batch["id"][0] + "\n")
        time.sleep(float(os.environ.get("VLSELECT_TEST_DELAY", "0")))
        return super().score_batch(batch, rank=rank)


def resume_dataset(n: int = 32):
    rows = []
    for i in range(n):
        rows.append(
            {
                "id": f"row-{i:03d}",
                "messages": turns(f"Question {i}?", "word " * (i % 7 + 1), image=False),
                "error": "bad_row: test" if i % 11 == 5 else None,
            }
        )
    return make_dataset(rows)


def run(out_dir: str, shard_size: int = 4) -> None:
    import selector

    selector.score(
        resume_dataset(),
        [SlowLength(name="slow")],
        out_dir=out_dir,
        shard_size=shard_size,
        batch_size=shard_size,
        progress=False,
    )


def write_qa_rows(folder, n: int) -> str:
    """``folder/data.json``: ``n`` text-only ShareGPT rows ``r0..r{n-1}`` ("Question i?" / "Answer i."); returns the
    path."""
    import json

    rows = [
        {
            "id": f"r{i}",
            "conversations": [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": f"Answer {i}."}],
        }
        for i in range(n)
    ]
    path = os.path.join(str(folder), "data.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(rows))
    return path
