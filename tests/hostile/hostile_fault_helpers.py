"""Helpers of tests/hostile/test_hostile_faults.py that worker processes import by name (spawned workers and
``multiprocessing`` children can't unpickle a class or function defined in a test module's body)."""

from __future__ import annotations

import os
import time
from typing import ClassVar

import numpy as np

from metrics.base import Metric, ModelMetric
from metrics.length import LengthMetric

#: Set at run time by the parent test: a forked worker inherits it, a spawned one imports this module fresh.
PARENT_MARK = False


class ImageBytesMetric(Metric):
    """``score_imgbytes``: the size in bytes of a row's image (NaN without one): changes when the file does."""

    higher_is_better: ClassVar[bool] = True

    def __init__(self, name: str = "imgbytes"):
        self.name = name

    def required_columns(self) -> list[str]:
        return ["id", "image", "error"]

    def score_batch(self, batch, *, rank=None):
        out = np.full(len(batch["id"]), np.nan, dtype=np.float32)
        for i, (image, error) in enumerate(zip(batch["image"], batch["error"])):
            if image is not None and not error:
                out[i] = len(image["bytes"])
        return {self.column(): out}


class LocalModelMetric(ModelMetric):
    """A model metric that only names a local folder (never loads it): enough for the shard key."""

    def __init__(self, model_name_or_path: str, name: str = "tiny"):
        self.name = name
        self.model_name_or_path = model_name_or_path


class ForkProbe(LengthMetric):
    """``length`` that records, per batch, its worker's pid and whether the worker inherited the parent's
    memory (a fork) in a file under ``$VLSELECT_TEST_PROBE_DIR``."""

    def score_batch(self, batch, *, rank=None):
        folder = os.environ["VLSELECT_TEST_PROBE_DIR"]
        with open(os.path.join(folder, f"{os.getpid()}.txt"), "a", encoding="utf-8") as handle:
            handle.write(f"{int(PARENT_MARK)}\n")
        return super().score_batch(batch, rank=rank)


def cache_worker(path: str, worker: int, rounds: int, start_at: float) -> None:
    """Write and read ``rounds`` batches of answers in the judge cache at ``path``, all workers starting together."""
    from metrics.judge_backends import JudgeAnswer
    from metrics.judge_cache import AnswerCache

    time.sleep(max(0.0, start_at - time.time()))
    cache = AnswerCache(path)
    for r in range(rounds):
        keys = [f"w{worker}-r{r}-{i}" for i in range(5)]
        cache.put_many([(k, "p", "m", "h", JudgeAnswer(f"Score: {i}")) for i, k in enumerate(keys)])
        got = cache.get_many(keys)
        assert sorted(got) == sorted(keys), (worker, r)
    cache.close()


def use_inherited_cache(cache, worker: int) -> None:
    """In a forked child: use the parent's cache object (and so its inherited connection) as a map worker would."""
    from metrics.judge_backends import JudgeAnswer

    keys = [f"child{worker}-{i}" for i in range(20)]
    cache.put_many([(k, "p", "m", "h", JudgeAnswer("Score: 3")) for k in keys])
    assert sorted(cache.get_many(keys)) == sorted(keys)
