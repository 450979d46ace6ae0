"""Copy detection: rows that repeat an earlier row's instruction with an edited copy of its image.

A *copy* is a row whose normalised instruction (the first user turn, lower-cased, ``<image>`` tokens and
punctuation removed, whitespace collapsed) equals another row's, and whose first image is a geometric and
photometric copy of that row's first image: the same picture after JPEG re-encoding, a crop that keeps at least
``1 / max_scale`` of each side, a resize, and/or a brightness change. Rows that ask *different* questions about
one image are never compared (several questions about one picture are legitimate), and two different pictures of
the same kind of thing (two red triangles at other places or sizes) must not be called copies.

Why not a perceptual hash or an embedding: a 64-bit pHash moves 8-35 bits under a 10% crop while distinct
synthetic images sit 2-22 bits apart, and a semantic embedding rates two different red triangles as closer than a
triangle and its own crop. A copy is instead recognised by *alignment*:

1. **Candidates.** Rows are grouped by normalised instruction; only rows without ``error`` in a group of two or
   more are decoded, and rows whose first image can't be read drop out. Within a group, each row is compared
   with its ``n_neighbors`` nearest rows by the cosine of an 8x8 colour thumbnail (exact k-NN in blocks, ties
   broken by id), so a generic instruction shared by 10^5 rows costs ``O(n * n_neighbors)`` verifications, not
   ``O(n^2)`` (the k-NN itself is ``O(n^2)`` 192-d dot products, cheap next to one verification). Groups of at
   most ``n_neighbors + 1`` rows compare all pairs.
2. **Alignment.** Both images are brought to a ``size`` x ``size`` RGB square. One image (the *template*) is
   searched inside the other one rescaled to every integer side from ``size`` to ``ceil(size * max_scale)``, at
   every whole-pixel offset where it fits, in both directions (either image may be the crop of the other), by
   normalised cross-correlation (NCC; per-channel means, so a brightness change or a plain tint changes
   nothing). The best placement is refined to sub-pixel scale and shift (a whole-pixel grid costs a fine texture
   much of its correlation).
3. **Copy score.** At that placement, the *photometric fit* (:func:`photometric_fit`): how much of the brighter
   image's variance ``clip(gain * darker, 0, 255)`` explains, with ONE gain for all three channels and no offset,
   clipped to -1..1 (1 = the same picture up to a brightness change). NCC alone is not enough: it forgives any
   per-image offset and contrast, so two solid shapes of one outline at consistent places score like a copy even
   when one is black and the other grey, or green and teal. A brightness edit is exactly a common gain (with
   saturation at 255, which the clip models), so copies keep a fit near 1 and differently coloured look-alikes
   lose it.
4. **Decision.** A pair is a copy when its copy score is at least ``min_score``. Copies are joined transitively
   (two crops of one picture that do not contain each other are joined through the picture), and every row of a
   copy group but the earliest points to the earliest row of the group.

**Threshold.** ``min_score`` is not tuned on labelled data. By default it is *self-calibrated* on the pool
(:func:`calibrate_copy_thresholds`): up to ``n_calibration`` candidate images (the first in a stable hash order
of their ids, so the sample does not depend on row order) each get one seeded random edit from the edit family
that defines a copy -- 1 or 2 of: JPEG re-encode at quality 30-70; a crop keeping 85-95% of each side at a random
offset; a resize by x0.6-0.85 or x1.2-1.6; brightness x0.8, 0.85, 1.15 or 1.2 (:func:`edit_copy`) -- and
``min_score`` is the ``calibration_quantile`` quantile (default the 5th percentile) of these self-made copies'
scores against their originals. So the threshold says "accept what the documented edits do to *these* images,
missing at most 5% of them", whatever kind of image the pool holds. It never goes below :data:`MIN_SCORE_FLOOR`.
Pass ``min_score`` to fix it instead; ``return_thresholds=True`` returns the rule used
(:class:`CopyThresholds`), and it is logged.

Limits: solid shapes on plain backgrounds whose outline, colour and position agree with a crop of each other (a
red disc and a slightly smaller red disc a little to the left) *are* copies as far as pixels can tell, up to a few
levels of background tint that a JPEG re-encode also changes; such look-alikes can be flagged. Only the first
image of a row is compared.

Columns:

=========================  =======  ===============================================================================
column                     type     meaning
=========================  =======  ===============================================================================
``check_copy_of``          str      id of the earliest row of this row's copy group (same instruction, copied
                                    image); None for the earliest row, rows without a copy, rows with ``error``
                                    and rows whose first image can't be decoded
``check_copy_group``       str      id of the earliest row of this row's copy group for every member, the earliest
                                    included (to keep another member, e.g. the first one that passes the other
                                    filters); None for rows in no copy group
``check_copy_score``       float    the best copy score (-1..1, higher = more alike) of this row's first image
                                    against any candidate of its instruction group, copy or not; NaN when the row
                                    had no candidate (unique instruction, ``error``, no readable image)
=========================  =======  ===============================================================================

Example:
    >>> from selector.copies import copy_duplicates
    >>> checked = copy_duplicates(ds)  # doctest: +SKIP
    >>> kept = checked.filter(lambda r: r["check_copy_of"] is None)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from selector.errors import ConfigError

logger = logging.getLogger(__name__)

COPY_COLUMNS = ("check_copy_of", "check_copy_group", "check_copy_score")
# A guard, not a tuned value: the calibrated threshold only reaches it when the pool's own copies align badly
# (tiny or near-flat pictures); unrelated pictures fit far below it.
MIN_SCORE_FLOOR = 0.5
ANTIALIAS_SIGMA = 0.6
_THUMB = 8
_KNN_BLOCK = 1024
_PUNCT_RE = re.compile(r"[^\w\s]")
_BRIGHTNESS = (0.8, 0.85, 1.15, 1.2)


@dataclass(frozen=True)
class CopyThresholds:
    """The decision rule of :func:`copy_duplicates`.

    Attributes:
        min_score: smallest copy score (photometric fit at the best alignment, -1..1) that counts as a copy.
        n_calibration: self-made copies the threshold was derived from (0 when it was given).
        positive_scores: (min, median) copy score of the self-made copies; NaN when not calibrated.
    """

    min_score: float
    n_calibration: int = 0
    positive_scores: tuple[float, float] = (math.nan, math.nan)


def instruction_key(messages: Any) -> str | None:
    """The normalised first user turn: lower case, ``<image>`` tokens and punctuation removed, whitespace collapsed.

    None when there is no user turn. Rows are candidates for copies of each other only when their keys are equal.
    """
    from selector.data.schema import instruction

    text = instruction(messages)
    return None if text is None else " ".join(_PUNCT_RE.sub(" ", text.lower()).split())


# Pure-numpy image helpers ----------------------------------------------------------------------------------------


def _resize(array: np.ndarray, side: int) -> np.ndarray:
    """An (h, w, 3) uint8 array resized to (side, side, 3) float32 (bilinear, antialiased when shrinking)."""
    from PIL import Image

    image = Image.fromarray(array) if not isinstance(array, Image.Image) else array
    return np.asarray(image.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)


def base_image(image, size: int, max_scale: float) -> np.ndarray:
    """The (B, B, 3) uint8 square every comparison starts from, ``B = ceil(size * max_scale)``.

    The aspect ratio is dropped on purpose: a crop that keeps the same share of each side keeps it anyway, and a
    square makes every image comparable with one template size.
    """
    from PIL import Image

    side = _search_sizes(size, max_scale)[-1]
    return np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), dtype=np.uint8)


def _search_sizes(size: int, max_scale: float) -> list[int]:
    return list(range(size, math.ceil(size * max_scale - 1e-9) + 1))


def _normalised(x: np.ndarray) -> np.ndarray | None:
    """Zero mean per colour channel, unit norm over all values; None for a flat image (nothing to align).

    Per-channel means (not one mean) keep a plain tinted background from looking like structure: a brightness
    change scales each channel's deviations alike, so the NCC stays invariant to it.
    """
    x = x - x.reshape(-1, 3).mean(axis=0)
    norm = float(np.sqrt((x * x).sum()))
    return None if norm < 1e-3 * math.sqrt(x.size) else x / norm


def _ncc_many(template: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(k,) NCC of an (h, w, 3) template with each of k (h, w, 3) windows; -1 for a flat template or window."""
    t = _normalised(template)
    if t is None:
        return np.full(len(windows), -1.0)
    pixels = windows.shape[1] * windows.shape[2]
    flat = windows.reshape(len(windows), -1)
    means = windows.reshape(len(windows), pixels, 3).mean(axis=1)
    var = np.einsum("ij,ij->i", flat, flat) - pixels * np.einsum("ij,ij->i", means, means)
    ok = var > 1e-6 * flat.shape[1]
    return np.where(ok, (flat @ t.ravel()) / np.sqrt(np.where(ok, var, 1.0)), -1.0)


def _window_sums(values: np.ndarray, side: int) -> np.ndarray:
    """Sums of ``values`` (m, m, ...) over every side x side window, (p, p, ...), by an integral image."""
    integral = np.zeros((values.shape[0] + 1, values.shape[1] + 1, *values.shape[2:]), dtype=np.float64)
    integral[1:, 1:] = values.cumsum(axis=0).cumsum(axis=1)
    return integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]


def _best_offset(template: np.ndarray, search: np.ndarray) -> tuple[float, int, int]:
    """(NCC, y, x) of the best whole-pixel placement of ``template`` inside ``search`` (both (s, s, 3))."""
    from numpy.lib.stride_tricks import sliding_window_view

    t = _normalised(template)
    if t is None:
        return -1.0, 0, 0
    side = template.shape[0]
    positions = search.shape[0] - side + 1
    windows = sliding_window_view(search, template.shape).reshape(positions * positions, t.size)
    # window statistics from integral images: a per-window mean would copy every window once more
    sums = _window_sums(search, side).reshape(-1, 3)
    squares = _window_sums((search.astype(np.float64) ** 2).sum(axis=-1), side).ravel()
    var = squares - (sums * sums).sum(axis=1) / (side * side)
    ok = var > 1e-6 * t.size
    ncc = np.where(ok, (windows @ t.ravel()) / np.sqrt(np.where(ok, var, 1.0)), -1.0)
    best = int(np.argmax(ncc))
    return float(ncc[best]), *divmod(best, positions)


def _interp_matrices(size: int, side: int, starts: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(k, size, side) bilinear weights; matrix i samples positions ``starts[i] + steps[i] * j`` (clamped to the
    edge) of a line of ``side`` pixels."""
    position = np.clip(starts[:, None] + steps[:, None] * np.arange(size)[None, :], 0.0, side - 1.0)
    low = np.minimum(np.floor(position).astype(np.int64), side - 2) if side > 1 else np.zeros_like(position, int)
    frac = np.clip(position - low, 0.0, 1.0).astype(np.float32)
    matrices = np.zeros((len(starts), size, side), dtype=np.float32)
    k, j = np.meshgrid(np.arange(len(starts)), np.arange(size), indexing="ij")
    matrices[k, j, low] = 1.0 - frac
    if side > 1:
        matrices[k, j, low + 1] = frac
    return matrices


def _warp(base: np.ndarray, size: int, steps: np.ndarray, y0: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """(k, size, size, 3) windows of ``base``: pixel (v, u) of window i sits at base coordinates
    (y0[i] + steps[i]*v, x0[i] + steps[i]*u), bilinear. A scale-and-shift warp is separable, so it is two small
    batched matrix products."""
    side = base.shape[0]
    rows = _interp_matrices(size, side, y0, steps)
    cols = _interp_matrices(size, side, x0, steps)
    k = len(steps)
    half = (rows @ base.reshape(side, -1)).reshape(k, size, side, 3).transpose(0, 1, 3, 2).reshape(k, size * 3, side)
    return (half @ cols.transpose(0, 2, 1)).reshape(k, size, 3, size).transpose(0, 1, 3, 2)


def _antialiased(base: np.ndarray) -> np.ndarray:
    """A float32 copy of a base image blurred just enough (Gaussian, ``ANTIALIAS_SIGMA`` px) that bilinear
    sampling at steps up to ``max_scale`` does not alias fine texture into noise."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(base.astype(np.float32), sigma=(ANTIALIAS_SIGMA, ANTIALIAS_SIGMA, 0), mode="nearest")


def _refine(template: np.ndarray, base: np.ndarray, step: float, y0: float, x0: float) -> tuple[float, np.ndarray]:
    """Sub-pixel refinement of a whole-pixel placement: a small coordinate search over scale and shift.

    Whole-pixel offsets at integer sizes leave up to half a pixel of misalignment, which costs a finely textured
    photo much of its correlation; three rounds of a 3x3x3 search (scale, y, x) with halving steps recover it.
    """
    size = template.shape[0]
    deltas = np.array([(ds, dy, dx) for ds in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], np.float64)
    d_shift, d_step = 0.5 * step, 0.02 * step
    best_score, best_window = -math.inf, None
    for _ in range(3):
        steps = step + deltas[:, 0] * d_step
        # the window's centre stays put while the scale changes
        centre_shift = deltas[:, 0] * d_step * (size - 1) / 2
        ys = y0 + deltas[:, 1] * d_shift - centre_shift
        xs = x0 + deltas[:, 2] * d_shift - centre_shift
        windows = _warp(base, size, steps, ys, xs)
        scores = _ncc_many(template, windows)
        k = int(np.argmax(scores))
        if scores[k] > best_score:
            best_score, best_window = float(scores[k]), windows[k]
            step, y0, x0 = float(steps[k]), float(ys[k]), float(xs[k])
        d_shift, d_step = d_shift / 2, d_step / 2
    return best_score, best_window


def photometric_fit(a: np.ndarray, b: np.ndarray) -> float:
    """How well one aligned (s, s, 3) image predicts the other as ``clip(gain * darker, 0, 255)``: -inf..1.

    ``1 - |brighter - clip(g * darker)|^2 / |brighter - mean(brighter)|^2`` with one gain ``g`` for all three
    channels, fitted by least squares on the pixels the brighter image has not saturated (>= 250). 1 = a pure
    brightness change; lower = pixels that no brightness change explains. Unlike NCC it has no offset and no
    per-channel freedom, so a black shape is not a grey one, a green shape not a teal one, and a beige background
    not a pale blue one, while a brightened copy whose background clipped to white still fits. -inf when the
    brighter image is flat.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    dark, bright = (a, b) if a.mean() <= b.mean() else (b, a)
    unsaturated = (bright < 250.0).all(axis=-1)
    if not unsaturated.any():
        unsaturated = np.ones(unsaturated.shape, dtype=bool)
    x, y = dark[unsaturated], bright[unsaturated]
    denominator = float((x * x).sum())
    gain = float((x * y).sum()) / denominator if denominator > 0 else 1.0
    residual = bright - np.clip(gain * dark, 0.0, 255.0)
    spread = bright - bright.reshape(-1, 3).mean(axis=0)
    variance = float((spread * spread).sum())
    if variance < 1e-6 * bright.size:
        return -math.inf
    return 1.0 - float((residual * residual).sum()) / variance


def align(
    a: np.ndarray, b: np.ndarray, size: int = 32, max_scale: float = 1.25, refine_above: float = -math.inf
) -> tuple[float, float]:
    """(alignment NCC, copy score) of two base images (see :func:`base_image`).

    The alignment is the placement with the best NCC (-1..1; -1 when an image is flat) over both directions (a
    inside b, b inside a), every whole-pixel template placement at every search size, refined to sub-pixel when
    the whole-pixel NCC is at least ``refine_above`` (refinement raises it by about 0.1 at most, for fine
    textures, so a pair far below the threshold is left unrefined to save time). The copy score is the
    :func:`photometric_fit` at that placement, clipped to -1..1 (higher = more alike).
    """
    sizes = _search_sizes(size, max_scale)
    base_side = sizes[-1]
    best = (-math.inf, None, None, None, 0, 0, 0)
    for template_base, search_base in ((b, a), (a, b)):
        template = _resize(template_base, size)
        for side in sizes:
            search = template if side == size and template_base is search_base else _resize(search_base, side)
            score, y, x = _best_offset(template, search)
            if score > best[0]:
                best = (score, template, template_base, search_base, side, y, x)
    score, template, template_base, search_base, side, y, x = best
    if template is None or score <= -1.0:
        return -1.0, -1.0
    if score < refine_above:
        window = _resize(search_base, side)[y : y + size, x : x + size]
        return score, max(photometric_fit(template, window), -1.0)
    # The refined comparison samples the template and the window with the same bilinear sampler, so an image
    # compared with itself scores exactly 1. Pixel (v, u) of the whole-pixel window sits at base coordinate
    # ((v + y + 0.5) * B / side - 0.5).
    own = base_side / size
    template_base, search_base = _antialiased(template_base), _antialiased(search_base)
    template = _warp(template_base, size, np.array([own]), *np.full((2, 1), 0.5 * own - 0.5))[0]
    step = base_side / side
    score, window = _refine(template, search_base, step, (y + 0.5) * step - 0.5, (x + 0.5) * step - 0.5)
    return score, max(photometric_fit(template, window), -1.0)


# Self-calibration ------------------------------------------------------------------------------------------------


def edit_copy(image, rng: np.random.Generator):
    """A copy of a PIL image made with 1 or 2 random edits of the edit family that defines a copy.

    The edits, in random order: ``jpeg`` (re-encode at quality 30-70, applied last), ``crop`` (keep 85-95% of
    each side at a random offset), ``resize`` (x0.6-0.85 or x1.2-1.6, bicubic), ``brightness`` (x0.8, 0.85,
    1.15 or 1.2).
    """
    from PIL import Image, ImageEnhance

    image = image.convert("RGB")
    steps = rng.permutation(["jpeg", "crop", "resize", "brightness"])[: int(rng.integers(1, 3))]
    quality = None
    for step in steps:
        width, height = image.size
        if step == "crop":
            keep = rng.uniform(0.85, 0.95)
            cw, ch = max(1, round(width * keep)), max(1, round(height * keep))
            x, y = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
            image = image.crop((x, y, x + cw, y + ch))
        elif step == "resize":
            scale = rng.uniform(0.6, 0.85) if rng.random() < 0.5 else rng.uniform(1.2, 1.6)
            image = image.resize(
                (max(8, round(width * scale)), max(8, round(height * scale))), Image.Resampling.BICUBIC
            )
        elif step == "brightness":
            image = ImageEnhance.Brightness(image).enhance(float(rng.choice(_BRIGHTNESS)))
        else:
            quality = int(rng.integers(30, 71))
    if quality is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        image = Image.open(io.BytesIO(buffer.getvalue()))
        image.load()
    return image


def calibrate_copy_thresholds(
    images,
    size: int = 32,
    max_scale: float = 1.25,
    quantile: float = 0.05,
    random_state: int = 0,
) -> CopyThresholds:
    """The copy-score threshold that accepts all but ``quantile`` of self-made copies of ``images``.

    Each image that is not flat (one colour: nothing to align) gets one copy by :func:`edit_copy` with a
    generator seeded by ``(random_state, position)``; ``min_score`` is the ``quantile`` quantile of the copies'
    scores (:func:`align`) against their originals, never below :data:`MIN_SCORE_FLOOR`; only flat images give
    ``MIN_SCORE_FLOOR`` with ``n_calibration=0``.

    Args:
        images: PIL images (the pool's own; pass a stable sample for an order-independent result).
        size, max_scale: as in :func:`copy_duplicates`.
        quantile: share of self-made copies the threshold may reject, in (0, 0.5).
        random_state: int seed of the edits.

    Raises:
        DataError: no image to calibrate on.
    """
    from selector.errors import DataError

    images = list(images)
    if not images:
        raise DataError("copy-threshold calibration needs at least one readable image")
    scores = []
    for position, image in enumerate(images):
        original = base_image(image, size, max_scale)
        if _normalised(_resize(original, size)) is None:
            continue  # a flat picture can't be aligned: it says nothing about how well copies align
        rng = np.random.default_rng([int(random_state), position])
        copy = base_image(edit_copy(image, rng), size, max_scale)
        scores.append(align(original, copy, size, max_scale)[1])
    if not scores:
        # only flat pictures: flat pairs score -1 and are never copies, so any threshold gives the same result
        return CopyThresholds(min_score=MIN_SCORE_FLOOR, n_calibration=0)
    scores_array = np.asarray(scores)
    return CopyThresholds(
        min_score=max(float(np.quantile(scores_array, quantile)), MIN_SCORE_FLOOR),
        n_calibration=len(scores),
        positive_scores=(float(scores_array.min()), float(np.median(scores_array))),
    )


# The check -------------------------------------------------------------------------------------------------------


def _thumbnails(bases: list[np.ndarray]) -> np.ndarray:
    """(n, 8*8*3) zero-mean unit-norm colour thumbnails: the cheap descriptor that proposes candidates."""
    vectors = np.stack([_resize(base, _THUMB).ravel() for base in bases]).astype(np.float64)
    vectors -= vectors.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 1e-9)


def candidate_pairs(bases: list[np.ndarray], ranks: np.ndarray, n_neighbors: int) -> set[tuple[int, int]]:
    """Pairs (i < j) of positions in one instruction group to verify.

    All pairs when the group has at most ``n_neighbors + 1`` rows; else each row and its ``n_neighbors`` most
    similar rows by thumbnail cosine (exact, in blocks), ties broken by the id ranks ``ranks`` so that the pairs
    do not depend on row order.
    """
    n = len(bases)
    if n <= n_neighbors + 1:
        return {(i, j) for i in range(n) for j in range(i + 1, n)}
    vectors = _thumbnails(bases)
    # a tie-breaker far below any real cosine difference, fixed by the ids: equal thumbnails pick the same pairs
    # whatever the row order
    tie = np.argsort(np.argsort(ranks)) / (n * 1e9)
    pairs: set[tuple[int, int]] = set()
    for start in range(0, n, _KNN_BLOCK):
        block = vectors[start : start + _KNN_BLOCK] @ vectors.T - tie[None, :]
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = -np.inf
        nearest = np.argpartition(-block, n_neighbors - 1, axis=1)[:, :n_neighbors]
        for offset, neighbours in enumerate(nearest):
            i = start + offset
            pairs.update((min(i, int(j)), max(i, int(j))) for j in neighbours)
    return pairs


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _check_arguments(size, max_scale, n_neighbors, min_score, n_calibration, quantile) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ConfigError(f"copy size must be an int >= 8 pixels; got {size!r}")
    if not isinstance(max_scale, (int, float)) or not 1.0 <= max_scale <= 2.0:
        raise ConfigError(f"copy max_scale must be a number in [1, 2]; got {max_scale!r}")
    if not isinstance(n_neighbors, int) or isinstance(n_neighbors, bool) or n_neighbors < 1:
        raise ConfigError(f"copy n_neighbors must be an int >= 1; got {n_neighbors!r}")
    if min_score is not None and (not isinstance(min_score, (int, float)) or not -1.0 <= min_score <= 1.0):
        raise ConfigError(f"copy min_score must be a number in [-1, 1] or None; got {min_score!r}")
    if not isinstance(n_calibration, int) or isinstance(n_calibration, bool) or n_calibration < 1:
        raise ConfigError(f"copy n_calibration must be an int >= 1; got {n_calibration!r}")
    if not isinstance(quantile, (int, float)) or not 0.0 < quantile < 0.5:
        raise ConfigError(f"copy calibration_quantile must be a number in (0, 0.5); got {quantile!r}")


def copy_duplicates(
    dataset,
    *,
    size: int = 32,
    max_scale: float = 1.25,
    n_neighbors: int = 5,
    min_score: float | None = None,
    n_calibration: int = 200,
    calibration_quantile: float = 0.05,
    random_state: int = 0,
    return_thresholds: bool = False,
):
    """Mark rows that repeat an earlier row's instruction with a copy of its first image (see the module docstring).

    Args:
        dataset: a canonical ``datasets.Dataset``.
        size: side in pixels of the square both images are compared at.
        max_scale: largest relative scale searched; a crop that keeps ``1 / max_scale`` of each side (0.8 for
            1.25) is still found.
        n_neighbors: candidates verified per row in an instruction group of more than ``n_neighbors + 1`` rows.
        min_score: smallest copy score (-1..1) of a copy; None: self-calibrated on the pool.
        n_calibration: most self-made copies the calibration makes.
        calibration_quantile: share of self-made copies the calibrated thresholds may miss.
        random_state: int seed of the calibration edits.
        return_thresholds: also return the :class:`CopyThresholds` used.

    Returns:
        The dataset with ``check_copy_of``, ``check_copy_group`` and ``check_copy_score`` (and the thresholds when
        asked).

    Raises:
        ConfigError: an argument out of range.
        DataError: not a canonical map-style dataset.
    """
    from selector.checks import _image_bytes, _images, _open_small, _progress, _rows, _with_columns
    from selector.logs import progress
    from selector.rows import check_seed, hash_order, id_ranks

    _check_arguments(size, max_scale, n_neighbors, min_score, n_calibration, calibration_quantile)
    random_state = check_seed(random_state)
    ids: list[str] = []
    keys: list[str | None] = []
    for row in _rows(dataset, ("id", "messages", "error")):
        ids.append(row["id"])
        keys.append(instruction_key(row["messages"]) if row["error"] is None else None)
    counts: dict[str, int] = defaultdict(int)
    for key in keys:
        if key is not None:
            counts[key] += 1
    wanted = [i for i, key in enumerate(keys) if key is not None and counts[key] > 1]

    # only the first n_calibration wanted rows in stable-hash order of their ids keep their decoded picture
    calibration_rows: set[int] = set()
    if wanted:
        order = hash_order([ids[i] for i in wanted])
        calibration_rows = {wanted[k] for k in order[:n_calibration]}
    bases: dict[int, np.ndarray] = {}
    pictures: dict[int, Any] = {}
    if wanted:
        rows = _rows(dataset.select(wanted), ("id", "image", "images", "error"))
        for position, row in zip(wanted, _progress(rows, len(wanted), "Copy detection: decode")):
            images = _images(row)
            data = _image_bytes(images[0]) if images else None
            if data is None:
                continue
            try:
                picture = _open_small(data)
            except (OSError, ValueError, SyntaxError) as exc:
                logger.warning("row %s: the image could not be decoded for copy detection (%s)", row["id"], exc)
                continue
            bases[position] = base_image(picture, size, max_scale)
            if position in calibration_rows:
                pictures[position] = picture

    groups: dict[str, list[int]] = defaultdict(list)
    for position in sorted(bases):
        groups[keys[position]].append(position)
    groups = {key: members for key, members in groups.items() if len(members) > 1}

    thresholds = CopyThresholds(min_score=math.nan if min_score is None else float(min_score))
    if groups and min_score is None:
        sample = [pictures[p] for p in sorted(pictures, key=lambda p: ids[p]) if p in bases]
        thresholds = calibrate_copy_thresholds(sample, size, max_scale, calibration_quantile, random_state)
        logger.info(
            "copy threshold from %d self-made copies: copy score >= %.3f (self-made copies: min %.3f, median %.3f)",
            thresholds.n_calibration,
            thresholds.min_score,
            *thresholds.positive_scores,
        )
    pictures.clear()

    ranks = id_ranks(ids)
    scores = np.full(len(ids), np.nan)
    parent = list(range(len(ids)))
    # the copy score is at most about the squared NCC (a gain-only fit explains no more than an affine one), and
    # refinement raises a whole-pixel NCC by about 0.1 at most: pairs further below can't become copies
    refine_above = math.sqrt(max(thresholds.min_score, 0.0)) - 0.15
    work = [
        (members, candidate_pairs([bases[p] for p in members], ranks[members], n_neighbors))
        for members in groups.values()
    ]
    total = sum(len(pairs) for _, pairs in work)
    with progress(total=total, desc="Copy detection: verify", unit=" pairs") as bar:
        for members, pairs in work:
            for i, j in sorted(pairs):
                a, b = members[i], members[j]
                score = align(bases[a], bases[b], size, max_scale, refine_above)[1]
                for position in (a, b):
                    if not score <= scores[position]:
                        scores[position] = score
                if score >= thresholds.min_score:
                    root_a, root_b = _root(parent, a), _root(parent, b)
                    parent[max(root_a, root_b)] = min(root_a, root_b)
                bar.update(1)
    roots = [_root(parent, position) for position in range(len(ids))]
    in_group = {root for position, root in enumerate(roots) if root != position}
    values = {
        "check_copy_of": [ids[root] if root != position else None for position, root in enumerate(roots)],
        "check_copy_group": [ids[root] if root in in_group else None for root in roots],
        "check_copy_score": scores.tolist(),
    }
    types = {"check_copy_of": "string", "check_copy_group": "string", "check_copy_score": "float64"}
    marked = _with_columns(dataset, values, types)
    return (marked, thresholds) if return_thresholds else marked
