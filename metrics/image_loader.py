"""Parallel image decoding for image metrics: a ``torch.utils.data.DataLoader`` with worker processes.

On a GPU, CLIP ViT-B/32 embeds tens of thousands of images per second while one process decodes and resizes a few
hundred: decoding sets the speed. With ``num_workers > 0`` an image metric (``clip``, ``embedding`` with
``modality="image"``) scores a whole shard through :func:`score_with_workers` instead of ``Dataset.map``:

- the worker processes read their rows from the Arrow table themselves (a memory-mapped dataset pickles as its
  file paths), decode them with :func:`selector.data.images.decode_row` (the same caps and failure rules as the
  in-process path) and run the image processor, so the main process only moves tensors and runs the forward;
- rows are ordered by the encoded size of their first image before they are cut into batches, so one batch holds
  images of similar decode cost (no worker waits on a batch of large photos while others idle);
- workers start with ``forkserver`` (``spawn`` where it is missing), never ``fork``: a process forked after torch
  has run can hang in its first parallel region; the fork server imports torch, transformers and datasets once,
  so the workers of every later shard start in a fraction of a second;
- on CUDA the batches come in pinned memory with ``prefetch_factor`` batches per worker in flight, are copied with
  ``non_blocking=True``, and the forward runs under ``torch.autocast`` in the model's half precision.

The scores are the same as the in-process path's (same decode, same preprocessing, same forward); a row whose image
cannot be decoded is NaN and counted, never the batch's failure.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "check_num_workers",
    "default_num_workers",
    "encode_pixels",
    "image_sizes",
    "make_loader",
    "score_with_workers",
    "start_method",
    "wants_workers",
]

#: Image columns of the canonical schema; everything else a metric reads is text or metadata.
IMAGE_COLUMNS = ("image", "images")


#: Modules the forkserver imports once; every worker forked from it starts with them loaded (a worker that
#: imports torch, transformers and datasets itself takes seconds, paid again for every shard's DataLoader).
_PRELOAD = ["torch", "PIL.Image", "datasets", "transformers", "metrics.image_loader", "selector.data.images"]


def start_method():
    """The multiprocessing context for decode workers: ``forkserver`` (with :data:`_PRELOAD` imported in the
    server, which never runs torch code itself) where the platform has it, else ``spawn``; never ``fork``."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def default_num_workers(device: str) -> int:
    """Decode workers for ``num_workers=None``: none on CPU (the forward is the bottleneck there, and the cores
    are the forward's), up to 8 on CUDA, one core left for the main process."""
    if not str(device).startswith("cuda"):
        return 0
    from selector.cpus import usable_cpus

    return max(1, min(8, usable_cpus() - 1))


def check_num_workers(num_workers) -> None:
    """ConfigError unless ``num_workers`` is None or an integer >= 0."""
    from selector.errors import ConfigError

    if num_workers is not None and (
        isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0
    ):
        raise ConfigError(f"num_workers must be None or an integer >= 0, got {num_workers!r}")


def wants_workers(metric, rank: int | None = None) -> bool:
    """True when ``metric.num_workers`` resolves to at least one decode worker on the device for ``rank``."""
    if metric.num_workers == 0 or getattr(metric, "modality", "image") != "image":
        return False
    if metric.num_workers is not None:
        return True
    from metrics.base import resolve_device

    return default_num_workers(resolve_device(metric.device, rank)) > 0


def image_sizes(view) -> np.ndarray:
    """Encoded byte length of each row's first image, read from the Arrow table without decoding (0 where the
    row has no inline bytes, e.g. a path, or no image)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(view)
    sizes = np.zeros(n, dtype=np.int64)
    if "image" not in view.column_names:
        return sizes
    table = view.with_format("arrow")[:]
    column = table.column("image")
    if not pa.types.is_struct(column.type) or column.type.get_field_index("bytes") < 0:
        return sizes
    lengths = pc.binary_length(pc.struct_field(column, "bytes"))
    return np.asarray(lengths.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)


def size_ordered_batches(sizes: np.ndarray, batch_rows: int) -> list[np.ndarray]:
    """Row indices cut into batches of ``batch_rows`` rows of similar image size (stable order among equals)."""
    order = np.argsort(sizes, kind="stable")
    return [np.sort(order[k : k + batch_rows]) for k in range(0, order.size, batch_rows)]


class _DecodedBatches:
    """Map-style dataset: item ``k`` is batch ``k`` of rows, decoded and preprocessed in a worker process.

    Holds the dataset view (its Arrow table), the metric (pickled without weights: ``__getstate__`` drops them)
    and the loaded image processor (a small configuration object).
    """

    def __init__(self, view, metric, processor, batches: list[np.ndarray]):
        self.view = view
        self.metric = metric
        self.processor = processor
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> dict[str, Any]:
        return decode_batch(self.view, self.metric, self.processor, self.batches[k])


def decode_batch(view, metric, processor, rows: np.ndarray) -> dict[str, Any]:
    """Plan, decode and preprocess ``rows`` of ``view`` for ``metric`` (runs in a worker, or in-process).

    Returns ``{"rows", "plan", "pixels" (tensor or None), "owner" (index into rows per image), "failures"
    ((row id, reason) pairs)}``.
    """
    from selector.data.images import ImageError, decode_row
    from selector.data.schema import batch_images

    batch = view[[int(r) for r in rows]]
    plan = metric._image_plan(batch)
    images = batch_images(batch)
    ids = batch["id"]
    decoded, owner, failures = [], [], []
    for i in sorted(plan):
        try:
            row_images = decode_row(images[i], f"row {ids[i]}", processor=processor)
        except ImageError as exc:
            failures.append((ids[i], f"image could not be decoded ({exc.error})"))
            continue
        decoded.extend(row_images)
        owner.extend([i] * len(row_images))
    pixels = processor(images=decoded, return_tensors="pt")["pixel_values"] if decoded else None
    return {
        "rows": rows,
        "plan": plan,
        "batch": _text_part(batch),
        "pixels": pixels,
        "owner": owner,
        "failures": failures,
    }


def _text_part(batch: dict[str, list]) -> dict[str, list]:
    # The main process needs the rows' text and ids, not their image bytes back.
    return {key: value for key, value in batch.items() if key not in IMAGE_COLUMNS}


def _collate(items):
    # batch_size=None hands over one item per step; only the pixel tensor goes through pinning.
    return items


def encode_pixels(metric, pixels, forward) -> np.ndarray:
    """Unit-length features of preprocessed ``pixels`` (m, 3, H, W), ``metric.batch_size`` images per forward.

    On CUDA the copy is asynchronous (pinned source) and the forward runs under ``torch.autocast`` when the model
    is in half precision (float32 weights keep a float32 forward: the user asked for it).
    """
    import contextlib

    import torch

    from metrics.base import l2_normalize

    device = str(metric._device)
    dtype = metric._torch_dtype
    cuda = device.startswith("cuda")
    autocast = (
        torch.autocast("cuda", dtype=dtype)
        if cuda and dtype in (torch.float16, torch.bfloat16)
        else contextlib.nullcontext()
    )
    feats = []
    for start in range(0, pixels.shape[0], metric.batch_size):
        chunk = pixels[start : start + metric.batch_size].to(device, non_blocking=cuda).to(dtype)
        with torch.inference_mode(), autocast:
            out = forward(chunk)
        feats.append(out.float().cpu().numpy())
    return l2_normalize(np.concatenate(feats))


def make_loader(metric, view, num_workers: int, *, pin_memory: bool = False):
    """The ``DataLoader`` of decoded, preprocessed batches of ``view`` for a loaded image ``metric``: batches of
    ``metric.batch_size`` rows of similar image size, ``num_workers`` processes (0: in this process)."""
    from torch.utils.data import DataLoader

    batches = size_ordered_batches(image_sizes(view), metric.batch_size)
    return DataLoader(
        _DecodedBatches(view, metric, metric._image_processor, batches),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
        multiprocessing_context=start_method() if num_workers else None,
    )


def score_with_workers(metric, view, *, rank: int | None = None, num_workers: int | None = None):
    """Score every row of ``view`` (a ``datasets.Dataset`` with undecoded images) with an image ``metric``,
    decoding in ``num_workers`` DataLoader worker processes.

    The metric provides ``_image_plan(batch) -> {row: payload}`` (rows that need their images),
    ``_image_forward(pixels) -> tensor`` and ``_image_fill(batch, plan, feats, owner, out)`` (writes the rows'
    outputs into ``out``, a dict of arrays for this batch); ``score_batch`` runs the same three steps in-process.

    Returns:
        A ``datasets.Dataset`` with the metric's output columns, one row per row of ``view``, in order.
    """
    import torch
    from datasets import Dataset

    metric._validate()
    device = metric._ensure_loaded(rank)
    workers = default_num_workers(device) if num_workers is None else num_workers
    n = len(view)
    out = metric._empty_output(n)
    cuda = str(device).startswith("cuda")
    loader = make_loader(metric, view, workers, pin_memory=cuda)
    # Per-shard cache of text features for metrics that also encode text (clip); dropped when the shard is done.
    metric._text_features = {}
    try:
        _score_items(metric, loader, out)
    finally:
        del metric._text_features
    if cuda:
        torch.cuda.synchronize(device)
    return Dataset.from_dict({key: list(value) if value.ndim > 1 else value for key, value in out.items()})


def _score_items(metric, loader, out: dict[str, np.ndarray]) -> None:
    for item in loader:
        for row_id, reason in item["failures"]:
            metric._count_failure(row_id, reason)
        rows = np.asarray(item["rows"])
        part = {key: value[rows] for key, value in out.items()}
        feats = None
        if item["pixels"] is not None:
            feats = encode_pixels(metric, item["pixels"], metric._image_forward)
        metric._image_fill(item["batch"], item["plan"], feats, np.asarray(item["owner"], dtype=np.int64), part)
        for key, value in part.items():
            out[key][rows] = value
