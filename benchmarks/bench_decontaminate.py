"""Decontamination benchmark: precision / recall on planted overlaps, and the time at 10^5 x 10^4 rows.

An evaluation set of synthetic VQA samples (long questions, 8-12-token questions, short generic questions; half
with the "Answer the question using a single word or phrase." suffix; one small generated image each) and a
training set that hides, among random rows, planted overlaps with known answers:

==================  ===========================================================================  ==============
planted kind        training row                                                                 expected
==================  ===========================================================================  ==============
``copy``            the eval question and the eval image bytes                                   matched
``question-copy``   the eval question (other case and punctuation), a new image                  matched
``reworded``        a 13-15-token span of a long eval question inside new words, a new image     matched
``reencoded``       the eval image resized and re-encoded as JPEG, a new question                matched
``cropped``         the eval image with 10% cut from each side, a new question                   matched (emb)
``template``        the eval question with every 6th word replaced, a new image                  not matched
``generic``         the same short generic question (+ suffix) as an eval sample, a new image    not matched
``error-copy``      an exact copy whose row has ``error`` set                                    not matched
``random``          random text, an image from a pool of filler images                           not matched
==================  ===========================================================================  ==============

A match counts as correct when it names the planted eval sample. ``emb_hist`` (a colour histogram, Hellinger-
normalised) stands in for an image-embedding model, which the benchmark cannot download: it is what lets the
embedding match catch crops. The baseline is what a quick script does: an exact match of the normalised first
question, or of the image bytes.

Run: ``python benchmarks/bench_decontaminate.py`` (10^5 x 10^4), ``--n-train 2000 --n-eval 500`` for a quick run.
"""

from __future__ import annotations

import argparse
import io
import time
from collections import Counter

import numpy as np

SUFFIX = "Answer the question using a single word or phrase."
GENERIC = ("What color is the {}?", "Is there a {} in the image?", "How many {}s are there?")
OBJECTS = [f"{a}{b}" for a in ("car", "dog", "cup", "bus", "kite", "tree", "boat", "lamp") for b in ("", "let", "er")]
PLANTED = ("copy", "question-copy", "reworded", "reencoded", "cropped")
NEGATIVE = ("template", "generic", "error-copy")


def _vocabulary(rng: np.random.Generator, size: int = 3000) -> tuple[list[str], np.ndarray]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables, size=rng.integers(1, 4))))
    vocab = sorted(words)
    weights = 1.0 / np.arange(1, size + 1) ** 1.1  # Zipf
    return vocab, np.cumsum(weights / weights.sum())


def make_image(seed: int, size: int = 64) -> bytes:
    """A smooth random image (four coloured blobs over a wave pattern), JPEG-encoded."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    palette = rng.uniform(0, 255, (4, 3))
    c, s = rng.uniform(0, 1, (4, 2)), rng.uniform(0.02, 0.2, 4)
    f, ph = rng.uniform(0.5, 3, (4, 2)), rng.uniform(0, 6.28, 4)
    blobs = np.exp(-((xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2) / s[:, None, None])
    waves = 0.3 * np.sin(6.28 * (f[:, 0, None, None] * xx[None] + f[:, 1, None, None] * yy[None]) + ph[:, None, None])
    w = np.exp(3 * (blobs + waves))
    w /= w.sum(0)
    buffer = io.BytesIO()
    Image.fromarray(np.einsum("kij,kc->ijc", w, palette).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def reencode(data: bytes, *, crop: float = 0.0, scale: float = 0.75, quality: int = 80) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    if crop:
        image = image.crop((int(w * crop), int(h * crop), w - int(w * crop), h - int(h * crop)))
    image = image.resize((max(8, int(w * scale)), max(8, int(h * scale))))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def histogram_embedding(data: bytes, bins: int = 8) -> np.ndarray:
    """Colour histogram (``bins**3``), square-rooted and L2-normalised: a crop-tolerant stand-in embedding."""
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).reshape(-1, 3) // (256 // bins)
    counts = np.bincount((pixels[:, 0] * bins + pixels[:, 1]) * bins + pixels[:, 2], minlength=bins**3)
    vector = np.sqrt(counts / counts.sum())
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _sentence(rng, vocab, cdf, n_words: int) -> list[str]:
    # inverse-CDF sampling: rng.choice(p=...) rebuilds the CDF on every call, 100x slower at 10^6 rows
    return [vocab[i] for i in np.minimum(np.searchsorted(cdf, rng.random(n_words)), len(vocab) - 1)]


def _text(words: list[str], end: str = "?") -> str:
    return " ".join(words).capitalize() + end


def _row(row_id, question, answer, image, emb, error=None) -> dict:
    return {
        "id": row_id,
        "image": None if image is None else {"bytes": image, "path": None},
        "images": [],
        "messages": [
            {"role": "user", "content": ("<image>\n" if image is not None else "") + question},
            {"role": "assistant", "content": answer},
        ],
        "error": error,
        "source": None,
        "emb_hist": emb,
    }


def _dataset(rows: list[dict]):
    from datasets import Features, List, Value

    from selector.data.schema import features

    feats = Features({**features(), "emb_hist": List(Value("float32"))})
    columns = {name: [row[name] for row in rows] for name in feats}
    from datasets import Dataset

    return Dataset.from_dict(columns, features=feats)


def planted_sets(n_train: int, n_eval: int, seed: int = 0, n_filler_images: int | None = None, images: bool = True):
    """The evaluation set, the training set, and per training row (planted kind, eval id or None).

    About 2% of the training rows (at most a fifth of the eval set) are planted per kind in ``PLANTED`` and
    ``NEGATIVE``; the rest are random rows whose images come from a pool of ``n_filler_images`` distinct images.
    ``images=False`` builds text-only rows (no image kinds; ``copy`` is then a copy of the question).
    """
    rng = np.random.default_rng(seed)
    vocab, cdf = _vocabulary(rng)
    image_seed = iter(range(seed * 10_000_000, (seed + 1) * 10_000_000))
    emb_cache: dict[bytes, np.ndarray] = {}

    def emb(data):
        if data is None:
            return None
        if data not in emb_cache:
            emb_cache[data] = histogram_embedding(data)
        return emb_cache[data]

    eval_rows, eval_words, eval_kind = [], [], []
    for i in range(n_eval):
        kind = rng.choice(["long", "mid", "generic"], p=[0.4, 0.3, 0.3])
        if kind == "generic":
            words = GENERIC[rng.integers(len(GENERIC))].format(OBJECTS[rng.integers(len(OBJECTS))]).split()
            question = " ".join(words)
        else:
            words = _sentence(rng, vocab, cdf, int(rng.integers(14, 25) if kind == "long" else rng.integers(8, 13)))
            question = _text(words)
        if rng.random() < 0.5:
            question += " " + SUFFIX
        image = make_image(next(image_seed)) if images else None
        eval_rows.append(_row(f"q{i}", question, vocab[rng.integers(50)], image, emb(image)))
        eval_words.append(words)
        eval_kind.append(kind)

    n_each = max(1, min(int(0.02 * n_train), n_eval // 5))
    used = [k for k in PLANTED + NEGATIVE if images or k not in ("reencoded", "cropped")]
    kinds = [k for k in used for _ in range(n_each)]
    n_random = n_train - len(kinds)
    if n_random < 0:
        raise ValueError(f"n_train={n_train} is too small for {len(kinds)} planted rows")
    n_filler = min(n_filler_images or n_random, n_random) or 1
    filler = [make_image(next(image_seed)) for _ in range(n_filler)] if images else [None]
    text_targets = [i for i, k in enumerate(eval_kind) if k != "generic"]
    long_targets = [i for i, k in enumerate(eval_kind) if k == "long"]
    generic_targets = [i for i, k in enumerate(eval_kind) if k == "generic"]

    train_rows, truth = [], []
    for j, kind in enumerate(kinds + ["random"] * n_random):
        new_q = _text(_sentence(rng, vocab, cdf, int(rng.integers(6, 30))))
        answer = _text(_sentence(rng, vocab, cdf, int(rng.integers(5, 40))), ".")
        new_image = filler[rng.integers(len(filler))]
        target = None
        if kind in ("copy", "error-copy", "reencoded", "cropped"):
            # without images, a copy of a short generic question is the `generic` look-alike: copy a specific one
            target = int(rng.integers(n_eval)) if images else int(rng.choice(text_targets))
            source = eval_rows[target]
            image = source["image"]["bytes"] if images else None
            question = source["messages"][0]["content"].removeprefix("<image>\n")
            if kind == "copy":
                row = _row(f"t{j}", question, answer, image, emb(image))
            elif kind == "error-copy":
                row = _row(f"t{j}", question, answer, None, None, error="missing_image: gone.jpg")
            else:
                variant = reencode(image) if kind == "reencoded" else reencode(image, crop=0.1, scale=1.0, quality=85)
                row = _row(f"t{j}", new_q, answer, variant, emb(variant))
        elif kind == "question-copy":
            target = int(rng.choice(text_targets))
            question = eval_rows[target]["messages"][0]["content"].removeprefix("<image>\n")
            row = _row(f"t{j}", "Q: " + question.upper().replace("?", " ?!"), answer, new_image, emb(new_image))
        elif kind == "reworded":
            target = int(rng.choice(long_targets))
            words = eval_words[target]
            span = int(rng.integers(13, min(15, len(words)) + 1))
            start = int(rng.integers(0, len(words) - span + 1))
            before = _sentence(rng, vocab, cdf, 4)
            question = _text(before, ",") + " " + " ".join(words[start : start + span]) + ", right?"
            row = _row(f"t{j}", question, answer, new_image, emb(new_image))
        elif kind == "template":
            source_index = int(rng.choice(text_targets))
            words = list(eval_words[source_index])
            for position in range(2, len(words), 6):
                words[position] = vocab[int(rng.integers(len(vocab)))]
            suffix = " " + SUFFIX if SUFFIX in eval_rows[source_index]["messages"][0]["content"] else ""
            row = _row(f"t{j}", _text(words) + suffix, answer, new_image, emb(new_image))
        elif kind == "generic":
            source_index = int(rng.choice(generic_targets))
            question = eval_rows[source_index]["messages"][0]["content"].removeprefix("<image>\n")
            row = _row(f"t{j}", question, answer, new_image, emb(new_image))
        else:
            row = _row(f"t{j}", new_q, answer, new_image, emb(new_image))
        train_rows.append(row)
        truth.append((kind, None if target is None or kind == "error-copy" else f"q{target}"))
    order = rng.permutation(len(train_rows))
    train_rows = [train_rows[i] for i in order]
    truth = [truth[i] for i in order]
    return _dataset(train_rows), _dataset(eval_rows), truth


def score(column: list[str | None], truth: list[tuple[str, str | None]], set_name: str) -> dict:
    """Precision, recall and per-kind counts of a ``check_contaminated_by`` column against the planted truth."""
    correct = wrong = missed = 0
    per_kind: Counter = Counter()
    flagged_kind: Counter = Counter()
    for value, (kind, expected) in zip(column, truth):
        found = None if value is None else value.split(" ", 1)[0].removeprefix(f"{set_name}:")
        if found is not None:
            flagged_kind[kind] += 1
        if expected is None:
            wrong += found is not None
        elif found == expected:
            correct += 1
            per_kind[kind] += 1
        else:
            missed += 1
            wrong += found is not None
    precision = correct / (correct + wrong) if correct + wrong else float("nan")
    recall = correct / (correct + missed) if correct + missed else float("nan")
    return {"precision": precision, "recall": recall, "found": dict(per_kind), "flagged": dict(flagged_kind)}


def baseline(train, eval_set) -> list[str | None]:
    """Exact normalised-first-question or exact image-bytes match: what a quick script checks."""
    from datasets import Image

    from selector.data.schema import instruction
    from selector.decontaminate import normalize_text

    def columns(ds):
        ds = ds.select_columns(["id", "messages", "image", "error"]).cast_column("image", Image(decode=False))
        images = [None if image is None else image["bytes"] for image in ds["image"]]
        questions = normalize_text([instruction(m) or "" for m in ds["messages"]])
        return ds["id"], questions, images, ds["error"]

    ids, questions, images, _ = columns(eval_set)
    by_question = {}
    by_image = {}
    for row_id, question, image in zip(ids, questions, images):
        by_question.setdefault(question, row_id)
        by_image.setdefault(image, row_id)
    out = []
    for question, image, error in zip(*columns(train)[1:]):
        hit = None if error is not None else by_image.get(image) if image else None
        hit = hit or (None if error is not None else by_question.get(question))
        out.append(None if hit is None else f"evalset:{hit} baseline")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=100_000)
    parser.add_argument("--n-eval", type=int, default=10_000)
    parser.add_argument("--n-filler-images", type=int, default=10_000, help="distinct images of the random rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-embedding", action="store_true", help="skip the emb_hist match")
    parser.add_argument("--text-only", action="store_true", help="rows without images: time the text match alone")
    args = parser.parse_args(argv)

    from datasets.utils.logging import disable_progress_bar

    from selector.data import set_progress
    from selector.decontaminate import find_contamination

    disable_progress_bar()
    set_progress(False)
    t0 = time.perf_counter()
    train, eval_set, truth = planted_sets(
        args.n_train, args.n_eval, args.seed, args.n_filler_images, images=not args.text_only
    )
    print(f"generated {len(train):,} training x {len(eval_set):,} eval rows in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    base = baseline(train, eval_set)
    base_seconds = time.perf_counter() - t0
    runs = [("text only", {"images": False})] + ([] if args.text_only else [("text + images", {})])
    if not args.no_embedding and not args.text_only:
        runs.append(("text + images + emb", {"embedding_column": "emb_hist"}))
    results = {}
    for label, options in runs:
        t0 = time.perf_counter()
        found = find_contamination(train, [("evalset", eval_set)], **options)
        seconds = time.perf_counter() - t0
        results[label] = (score(found.column, truth, "evalset"), seconds, found.report)

    base_score = score(base, truth, "evalset")
    n_planted = Counter(kind for kind, _ in truth)
    print(f"planted per kind: {dict(n_planted)}")
    print(f"{'method':<24}{'precision':>10}{'recall':>8}{'seconds':>9}   found per planted kind / flagged negatives")
    rows = [("baseline (exact)", base_score, base_seconds)] + [(k, v[0], v[1]) for k, v in results.items()]
    for label, result, seconds in rows:
        negatives = {k: v for k, v in result["flagged"].items() if k in NEGATIVE or k == "random"}
        print(
            f"{label:<24}{result['precision']:>10.3f}{result['recall']:>8.3f}{seconds:>9.1f}   "
            f"{result['found']} / {negatives or 'none'}"
        )
    best = rows[-1][1]
    if base_score["recall"]:
        print(f"recall ratio vs baseline: {best['recall'] / base_score['recall']:.2f}x")
    report = results[rows[-1][0]][2]
    print(f"phases (s): {report['seconds']}")
    print(f"eval set: { {k: v for k, v in report['against']['evalset'].items() if k != 'examples'} }")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
