"""A seeded image fuzzer: small images in every format Pillow writes, damaged (truncated, bytes flipped, chunks
spliced in), then loaded through the safe opener, the loader and a scoring step.

Every damaged image must load fine or become that row's error (a counted metric failure at scoring time); none
may raise. The default suite runs a few hundred; ``-m slow`` runs thousands.
"""

from __future__ import annotations

import functools
import io
import json
import random
import warnings

import numpy as np
import pytest
from PIL import Image

from selector.data import load_instructions
from selector.data.images import ALLOWED_FORMATS, ImageError, check_image_bytes, decode_row
from selector.data.schema import IMAGE_ERROR_KINDS
from selector.rows import error_kind

MODES = ("RGB", "L", "RGBA", "P", "1", "LA", "I;16", "I", "F", "CMYK")
CONVERSATION = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A gradient."}]


@functools.lru_cache(maxsize=1)
def originals() -> tuple[tuple[str, str, bytes], ...]:
    """``(format, mode, bytes)`` for every format Pillow can write here and every mode it accepts."""
    Image.init()
    out = []
    for fmt in sorted(Image.SAVE):
        for mode in MODES:
            image = Image.radial_gradient("L").resize((13, 9))
            image = image.convert(mode) if mode not in ("I;16", "F", "I") else image.convert("I").convert(mode)
            buffer = io.BytesIO()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    image.save(buffer, format=fmt)
            except Exception:  # noqa: BLE001, S112 - this format can't write this mode (or needs a missing tool)
                continue
            if buffer.getvalue():
                out.append((fmt, mode, buffer.getvalue()))
    return tuple(out)


def damage(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random kind of damage: truncate, flip bytes (anywhere or past the signature), or splice a chunk."""
    kind = rng.choice(("truncate", "flip", "flip_body", "splice", "duplicate"))
    buf = bytearray(data)
    if kind == "truncate":
        return kind, bytes(buf[: rng.randrange(len(buf))])
    if kind in ("flip", "flip_body"):
        start = 16 if kind == "flip_body" and len(buf) > 17 else 0  # keep the signature: the decoder must run
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(start, len(buf))] = rng.randrange(256)
        return kind, bytes(buf)
    if kind == "splice":
        other = rng.choice(originals())[2]
        at, start = rng.randrange(len(buf)), rng.randrange(len(other))
        return kind, bytes(buf[:at] + other[start : start + rng.randint(1, 64)] + buf[at:])
    at, start = rng.randrange(len(buf)), rng.randrange(len(buf))  # a chunk of itself repeated elsewhere
    return kind, bytes(buf[:at] + buf[start : start + rng.randint(1, 256)] + buf[at:])


def fuzz(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    items = originals()
    out = []
    for k in range(n):
        fmt, mode, data = items[k % len(items)]
        kind, blob = damage(data, rng)
        out.append((f"{k:05d}-{fmt}-{mode.replace(';', '')}-{kind}", blob))
    return out


def _processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _check_blobs(blobs, processor) -> dict[str, str | None]:
    """The safe opener and a model's preprocessing on each blob: an error string or None, never an exception."""
    results = {}
    for name, blob in blobs:
        error = check_image_bytes(blob, name)
        assert error is None or error_kind(error) in IMAGE_ERROR_KINDS, error
        try:
            decoded = decode_row([blob], name, processor=processor)
        except ImageError as exc:
            assert error_kind(exc.error) in IMAGE_ERROR_KINDS, exc.error
        else:
            processor(images=decoded, return_tensors="np")
        results[name] = error
    return results


def test_fuzzer_covers_every_allowed_format_and_most_writable_ones():
    covered = {fmt for fmt, _, _ in originals()}
    writable = {fmt for fmt in ALLOWED_FORMATS if fmt in Image.SAVE}  # AVIF only where Pillow was built with it
    assert writable <= covered, sorted(writable - covered)
    assert len(covered) >= 20, sorted(covered)  # off-list formats too (EPS, DDS, SGI, ...): refused cleanly


def test_damaged_images_load_or_become_row_errors(tmp_path, clip_metric_params):
    from metrics import get_metric

    blobs = fuzz(300, seed=0)
    results = _check_blobs(blobs, _processor())
    kinds = {error_kind(e) if e else "ok" for e in results.values()}
    assert {"ok", "corrupt_image", "unsupported_image_format"} <= kinds  # the fuzzer reaches every outcome

    # The loader: each damaged file named by one row.
    folder = tmp_path / "img"
    folder.mkdir()
    rows = []
    for name, blob in blobs:
        (folder / name).write_bytes(blob)
        rows.append({"id": name, "image": f"img/{name}", "conversations": CONVERSATION})
    (tmp_path / "data.json").write_text(json.dumps(rows))
    ds = load_instructions(str(tmp_path / "data.json"))
    assert len(ds) == len(blobs)
    loaded = dict(zip(ds["id"], ds["error"]))
    for name, error in results.items():
        if error is None:
            assert loaded[name] is None
        else:
            assert error_kind(loaded[name]) == error_kind(error), (name, loaded[name], error)

    # A scoring step: the CLIP metric decodes what loaded; a failure is a counted NaN, never an exception.
    from datasets import Image as ImageFeature

    metric = get_metric("clip", **clip_metric_params)
    raw = ds.cast_column("image", ImageFeature(decode=False))
    scores = []
    for start in range(0, len(raw), 64):
        batch = raw[start : start + 64]
        scores.append(metric.score_batch(batch)[metric.column()])
    scores = np.concatenate(scores)
    usable = np.array([e is None for e in ds["error"]])
    assert np.all(np.isnan(scores[~usable]))
    assert np.isfinite(scores[usable]).sum() + getattr(metric, "_n_failed", 0) == usable.sum()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_damaged_images_many(seed):
    results = _check_blobs(fuzz(3000, seed=seed), _processor())
    assert len(results) == 3000
