"""Dataset condensation end to end: arrays in (:func:`condense_tensors`), or a dataset folder in and an image
dataset out (:func:`condense_dataset`).

The loop shared by every method (:mod:`selector.condense.methods`): the synthetic set starts as ``ipc`` random
real images per class (``init="real"``) or standard-normal noise in the normalised space (``init="noise"``);
each of ``iterations`` outer iterations calls the method's ``step`` with generators seeded by ``(seed,
iteration)``; the images are optimised by SGD (momentum 0.5, the method's ``lr_img``). With a ``work_dir`` the
state is checkpointed every ``checkpoint_every`` iterations and at the end, and a re-run with the same settings
continues from it (same result as an uninterrupted run).

Example:
    >>> import torch
    >>> x, y = torch.rand(40, 1, 8, 8), torch.arange(40) % 2
    >>> syn = condense_tensors(x, y, method="dm", ipc=2, iterations=3, net={"width": 8}, progress=False)
    >>> syn.images.shape, syn.labels.tolist()
    (torch.Size([4, 1, 8, 8]), [0, 0, 1, 1])
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selector.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: ConvNet settings of the papers (width 128, depth 3, instance norm, average pooling)
DEFAULT_NET = {"width": 128, "depth": 3, "norm": "instancenorm", "pooling": "avgpooling"}


@dataclass
class SyntheticSet:
    """A learned synthetic set.

    Attributes:
        images: float tensor ``(k * ipc, c, h, w)`` in the normalised space the networks saw (class-major).
        labels: int64 tensor, ``ipc`` copies of each class ``0..k-1``.
        mean: per-channel mean of the normalisation (:meth:`pixels` undoes it).
        std: per-channel standard deviation of the normalisation.
        method: the method's name.
        ipc: images per class.
        iterations: the iterations asked for.
        iterations_done: the iterations run.
        seed: the seed.
        options: the method's resolved options.
        net: the ConvNet settings.
        losses: the method's mean matching loss of every finished iteration (lower is better).
        seconds: wall time of the iterations.
    """

    images: Any
    labels: Any
    mean: list[float]
    std: list[float]
    method: str
    ipc: int
    iterations: int
    iterations_done: int
    seed: int
    options: dict
    net: dict
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def pixels(self) -> np.ndarray:
        """The images in pixel units (0..1 = black..white), float32, not clipped."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return self.images.detach().cpu().numpy().astype(np.float32) * std + mean


def _fingerprint(parts: dict) -> str:
    from selector.fileio import dumps_json

    return hashlib.sha256(dumps_json(parts, indent=None).encode()).hexdigest()[:24]


def _data_digest(images, labels) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images.detach().cpu().numpy()).tobytes())
    h.update(np.ascontiguousarray(labels.cpu().numpy()).tobytes())
    return h.hexdigest()[:24]


def condense_tensors(
    images,
    labels,
    *,
    method: str = "dm",
    ipc: int = 10,
    iterations: int | None = None,
    seed: int = 0,
    net: dict | None = None,
    mean=None,
    std=None,
    work_dir: str | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
    callback: Callable[[int, Any], None] | None = None,
    **method_options,
) -> SyntheticSet:
    """Learn ``ipc`` synthetic images per class from real ``(images, labels)``.

    Args:
        images: float ``(n, c, h, w)`` tensor or array, already normalised (see ``mean``/``std``).
        labels: int labels ``0..k-1``; every class needs at least ``ipc`` images, and there must be two classes.
        method: a name in :data:`selector.condense.methods.METHODS` (``dc``, ``dsa``, ``dm``, ``cafe``, ``idm``).
        ipc: synthetic images per class.
        iterations: outer iterations (default: the method's paper setting, 1,000 for DC/DSA, 2,000 for CAFE,
            20,000 for DM/IDM).
        seed: the seed of every random draw (same seed and settings -> same result).
        net: ConvNet settings overriding :data:`DEFAULT_NET` (``width``, ``depth``, ``norm``, ``pooling``).
        mean: the per-channel mean already subtracted from ``images`` (recorded; default 0).
        std: the per-channel standard deviation ``images`` were divided by (recorded; default 1).
        work_dir: checkpoint folder; a re-run with the same settings and data resumes from it.
        checkpoint_every: iterations between checkpoints (with ``work_dir``).
        progress: a tqdm bar with the time estimate.
        callback: called as ``callback(iterations_done, synthetic_set)`` after every iteration (e.g. to evaluate
            a learning curve); the set's images are a detached copy.
        **method_options: the method's options (``lr_img``, ``batch_real``, ``outer_loop``, ``init``, ...).

    Returns:
        :class:`SyntheticSet`.

    Raises:
        ConfigError: an unknown method or option, ipc below 1, iterations below 0.
        DataError: fewer than two classes, or a class with fewer than ``ipc`` images.
    """
    import torch

    from selector.condense.methods import RealData, StepContext, get_method
    from selector.condense.networks import make_network
    from selector.rows import check_seed

    seed = check_seed(seed, name="seed")
    algo = get_method(method, **method_options)
    if int(ipc) < 1:
        raise ConfigError(f"ipc must be at least 1, got {ipc}")
    ipc = int(ipc)
    iterations = int(algo.options["iterations"] if iterations is None else iterations)
    if iterations < 0:
        raise ConfigError(f"iterations must be 0 or more, got {iterations}")
    init = algo.options.get("init", "real")
    if init not in ("real", "noise"):
        raise ConfigError(f"init must be 'real' or 'noise', got {init!r}")
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).float()
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long()
    if x.ndim != 4 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"images must be (n, c, h, w) and labels (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    classes = torch.unique(y)
    if classes.numel() < 2:
        raise DataError(f"condensation needs at least two classes, got {classes.numel()}")
    if int(y.min()) < 0 or int(y.max()) + 1 != classes.numel():
        raise DataError("labels must be 0..k-1 with every class present")
    counts = torch.bincount(y)
    small = [(c, int(n)) for c, n in enumerate(counts.tolist()) if n < ipc]
    if small:
        raise DataError(
            f"ipc {ipc} is larger than class(es) {', '.join(f'{c} ({n} images)' for c, n in small)}; "
            f"lower --ipc to at most {min(n for _, n in small)}"
        )
    real = RealData(x, y)
    k = real.num_classes
    spec = {"channel": real.channel, "num_classes": k, "im_size": real.im_size, **DEFAULT_NET, **(net or {})}
    options = {**algo.resolved(ipc), "iterations": iterations}
    mean = [0.0] * real.channel if mean is None else [float(v) for v in np.ravel(mean)]
    std = [1.0] * real.channel if std is None else [float(v) for v in np.ravel(std)]
    fingerprint = _fingerprint(
        {
            "method": algo.name,
            "ipc": ipc,
            "seed": seed,
            # iterations are left out: asking for more iterations continues a shorter run's checkpoint
            "options": {k2: v for k2, v in options.items() if k2 != "iterations"},
            "net": spec,
            "data": _data_digest(x, y),
        }
    )

    # initialisation draws from its own generator, so it is the same whatever `iterations` is
    init_rng = np.random.default_rng([seed, 0x1417])
    gen = torch.Generator().manual_seed(seed)
    syn = torch.randn((k * ipc, real.channel, *real.im_size), generator=gen)
    custom = algo.init_images(real, ipc, init, init_rng)
    if custom is not None:
        syn = custom.clone()
    elif init == "real":
        syn = torch.cat([real.sample(c, ipc, init_rng) for c in range(k)]).clone()
    syn.requires_grad_(True)
    syn_labels = torch.arange(k).repeat_interleave(ipc)
    optimizer = torch.optim.SGD([syn], lr=float(options["lr_img"]), momentum=0.5)
    done, losses = 0, []
    if work_dir:
        from selector.condense.io import load_checkpoint

        found = load_checkpoint(work_dir)
        if found is not None:
            tensors, meta = found
            if meta.get("fingerprint") != fingerprint:
                raise ConfigError(
                    f"{work_dir} holds a checkpoint of other settings or data ({meta.get('method')}, ipc "
                    f"{meta.get('ipc')}); use another --work-dir, delete it, or pass --overwrite to start afresh"
                )
            with torch.no_grad():
                syn.copy_(tensors["images"])
            if "momentum" in tensors:
                optimizer.state[syn]["momentum_buffer"] = tensors["momentum"].clone()
            algo.load_state_dict({k2[7:]: v for k2, v in tensors.items() if k2.startswith("method.")})
            done, losses = int(meta["iterations_done"]), [float(v) for v in meta["losses"]]
            logger.info("resuming %s from iteration %d of %d (%s)", algo.name, done, iterations, work_dir)

    def snapshot(n_done: int, seconds: float) -> SyntheticSet:
        return SyntheticSet(
            syn.detach().clone(),
            syn_labels.clone(),
            mean,
            std,
            algo.name,
            ipc,
            iterations,
            n_done,
            seed,
            options,
            {k2: v for k2, v in spec.items() if k2 not in ("channel", "num_classes", "im_size")},
            list(losses),
            seconds,
        )

    def save(n_done: int) -> None:
        from selector.condense.io import save_checkpoint

        tensors = {"images": syn.detach()}
        buf = optimizer.state.get(syn, {}).get("momentum_buffer")
        if buf is not None:
            tensors["momentum"] = buf
        tensors.update({f"method.{k2}": v for k2, v in algo.state_dict().items()})
        meta = {
            "fingerprint": fingerprint,
            "method": algo.name,
            "ipc": ipc,
            "iterations_done": n_done,
            "losses": losses,
        }
        save_checkpoint(work_dir, tensors, meta)

    start = time.perf_counter()
    bar = None
    if progress and iterations > done:
        from selector.logs import progress as progress_bar

        bar = progress_bar(total=iterations, initial=done, desc=f"condense {algo.name} ipc {ipc}", unit="it")
    make_net = lambda s: make_network(spec, s)  # noqa: E731
    try:
        for it in range(done, iterations):
            ctx = StepContext(
                real=real,
                images=syn,
                labels=syn_labels,
                ipc=ipc,
                optimizer=optimizer,
                make_net=make_net,
                iteration=it,
                generator=torch.Generator().manual_seed(seed * 1_000_003 + it + 1),
                rng=np.random.default_rng([seed, it + 1]),
            )
            losses.append(float(algo.step(ctx)))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
            if work_dir and ((it + 1) % max(1, int(checkpoint_every)) == 0 or it + 1 == iterations):
                save(it + 1)
            if callback is not None:
                callback(it + 1, snapshot(it + 1, time.perf_counter() - start))
    finally:
        if bar is not None:
            bar.close()
    return snapshot(iterations, time.perf_counter() - start)


@dataclass
class CondenseResult:
    """What :func:`condense_dataset` wrote: the synthetic set, the output folder, the evaluation on the saved PNGs (None
    when no evaluation ran), the manifest, and the unusable source images by kind."""

    synthetic: SyntheticSet
    out_dir: str
    evaluation: Any
    manifest: dict
    errors: dict[str, int]


@dataclass
class _Loaded:
    pixels: np.ndarray  # (n, c, h, w) float32 in 0..1
    labels: np.ndarray  # (n,) int64, 0..k-1 over `class_names`
    class_names: list[str]
    errors: Counter
    n_rows: int
    classes: dict  # name -> {"rows", "usable"}


def _decode_dataset(ds, *, image_size, channels, names: list[str] | None = None) -> tuple[_Loaded, tuple, int]:
    """Decode every usable row to pixels; rows that fail to decode count as errors (never a crash)."""
    from PIL import Image

    from selector.data.images import open_image
    from selector.images import _undecoded
    from selector.rows import error_kind

    view = ds.select_columns(["image", "label", "label_name", "error"]).cast_column("image", _undecoded())
    label_of: dict[str, int] = {}
    errors: Counter = Counter()
    decoded: list[tuple[Image.Image, str]] = []
    per_class: dict[str, dict[str, int]] = {}
    for i, row in enumerate(view):
        name = str(row["label_name"])
        label_of.setdefault(name, int(row["label"]))
        per_class.setdefault(name, {"rows": 0, "usable": 0})["rows"] += 1
        error = row["error"]
        img = None
        if not error and row["image"] is not None:
            try:
                img = open_image(row["image"]["bytes"], f"row {i}")
                img.load()
            except Exception as exc:  # PIL raises many types for broken files; the row is reported, not fatal
                error = f"corrupt_image: row {i}: {exc}"
                img = None
        if img is None:
            errors[error_kind(error or "missing_image") or "missing_image"] += 1
            continue
        per_class[name]["usable"] += 1
        decoded.append((img, name))
    if not decoded:
        raise DataError("no usable images (every image is missing or broken)")
    if channels is None:
        grey = all(img.mode in ("1", "L", "LA", "I", "I;16", "F", "P") and _is_grey(img) for img, _ in decoded)
        channels = 1 if grey else 3
    if image_size is None:
        sizes = {img.size for img, _ in decoded}
        (w, h) = next(iter(sizes)) if len(sizes) == 1 else (32, 32)
        image_size = (h, w) if len(sizes) == 1 and max(h, w) <= 64 else (32, 32)
    h, w = image_size
    if names is None:
        # the source's own label order (ClassLabel ids, or sorted class folders)
        names = sorted({name for _, name in decoded}, key=lambda n: (label_of[n], n))
    index = {name: k for k, name in enumerate(names)}
    pixels, labels = [], []
    for img, name in decoded:
        if name not in index:
            errors["unknown_class"] += 1
            continue
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        pixels.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        labels.append(index[name])
    loaded = _Loaded(
        np.stack(pixels) if pixels else np.zeros((0, channels, h, w), np.float32),
        np.asarray(labels, dtype=np.int64),
        names,
        errors,
        len(ds),
        per_class,
    )
    return loaded, (h, w), channels


def _is_grey(img) -> bool:
    if img.mode != "P":
        return True
    return img.convert("RGB").convert("L").convert("RGB").tobytes() == img.convert("RGB").tobytes()


def _holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, ``round(fraction * size)`` rows (at least 1 when the class has 2+ rows) go to the test side."""
    rng = np.random.default_rng([seed, 0x7E57])
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = int(round(fraction * idx.size))
        n = min(max(n, 1 if idx.size > 1 else 0), idx.size - 1)
        test.extend(rng.permutation(idx)[:n].tolist())
    mask = np.zeros(labels.size, dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def condense_dataset(
    source,
    out_dir,
    *,
    method: str = "dm",
    ipc: int = 10,
    iterations: int | None = None,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    layout: str = "auto",
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    eval_source: str | None = None,
    eval_split: str | None = None,
    holdout: float = 0.1,
    eval_runs: int = 5,
    eval_epochs: int | None = None,
    net: dict | None = None,
    seed: int = 0,
    work_dir: str | None = None,
    checkpoint_every: int = 50,
    overwrite: bool = False,
    license: str = "other",
    progress: bool = True,
    **method_options,
) -> CondenseResult:
    """Condense an image-classification dataset and write the synthetic image dataset (see :mod:`.io`).

    Args:
        source: an image folder, ``save_to_disk`` folder, Parquet file/folder or Hub id
            (:func:`selector.images.load_image_classification`, the loaders ``prune-images`` uses).
        out_dir: output folder (must not exist or be empty, unless ``overwrite`` and it holds an earlier result).
        method: see :func:`condense_tensors` (``dc``, ``dsa``, ``dm``, ``cafe``, ``idm``).
        ipc: synthetic images per class.
        iterations: outer iterations (default: the paper's).
        split: split of a ``DatasetDict`` folder or Hub dataset.
        image_column: image column of a Hugging Face dataset.
        label_column: label column of a Hugging Face dataset.
        layout: ``auto`` or a layout of :func:`selector.images.load_image_classification`.
        image_size: side or ``(h, w)`` the images are resized to (default: their common size when all share one
            of at most 64 pixels, else 32x32, the papers' CIFAR resolution).
        channels: 1 (grey) or 3 (RGB); default grey when every image is grey.
        eval_source: a dataset with the same classes to test on; else ``eval_split`` of ``source``; else a
            ``holdout`` fraction of each class is kept out of condensation and tested on (0 = no evaluation).
        eval_runs: networks trained on the saved PNGs for the reported accuracy (0 = skip; the papers use 20).
        eval_epochs: epochs per evaluation network (default: the method's protocol, 300 or 1,000).
        net: ConvNet settings (``width``, ``depth``, ...; default the papers' width 128, depth 3).
        seed: the seed of every random draw.
        work_dir: checkpoints (default ``<out_dir>.condense-work``, kept so a re-run resumes or extends).
        checkpoint_every: iterations between checkpoints.
        overwrite: replace an earlier result in ``out_dir``.
        license: licence id for the card.
        progress: progress bar with a time estimate.
        **method_options: the method's options (``lr_img``, ``batch_real``, ``outer_loop``, ``init``, ...).

    Returns:
        :class:`CondenseResult`.

    Raises:
        ConfigError: bad options or output folder.
        DataError: fewer than two classes with usable images, a class with fewer usable images than ``ipc``, no
            readable images. Individual unreadable images are skipped, counted by kind and reported.
    """
    import torch

    from selector import __version__
    from selector.condense.evaluate import evaluate_synthetic
    from selector.condense.io import (
        CARD,
        CHECKPOINT,
        CHECKPOINT_META,
        SAFETENSORS,
        build_card,
        read_pngs,
        write_dataset,
        write_pngs,
        write_safetensors,
    )
    from selector.condense.methods import get_method
    from selector.fileio import atomic_write_text, write_json
    from selector.images import load_image_classification
    from selector.runs import check_out_folder, swap_into_place

    local_source = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    out_dir = check_out_folder(os.fspath(out_dir), source=local_source, overwrite=overwrite)
    algo = get_method(method, **method_options)  # unknown method/options fail before any loading
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    if not 0 <= float(holdout) < 1:
        raise ConfigError(f"holdout must be in [0, 1), got {holdout}")
    ds, info = load_image_classification(
        source, split=split, image_column=image_column, label_column=label_column, layout=layout
    )
    if eval_split is not None and eval_source is None and info.layout == "imagefolder":
        raise ConfigError("an image folder has no splits: give the test images with --eval-source")
    if len(ds) == 0:
        raise DataError(f"{source}: the dataset has no rows")
    train, image_size, channels = _decode_dataset(ds, image_size=image_size, channels=channels)
    warnings = []
    if train.errors:
        n_bad = sum(train.errors.values())
        msg = (
            f"{n_bad} of {train.n_rows} source images can't be used and were left out ("
            + ", ".join(f"{k}: {v}" for k, v in sorted(train.errors.items()))
            + ")"
        )
        logger.warning("%s: %s", source, msg)
        warnings.append(msg)
    if len(train.class_names) < 2:
        raise DataError(
            f"{source}: condensation needs at least two classes with usable images, found "
            f"{len(train.class_names)} ({', '.join(train.class_names)})"
        )
    if eval_source is not None or eval_split is not None:
        eval_ds, _ = load_image_classification(
            eval_source if eval_source is not None else source,
            split=eval_split or split,
            image_column=image_column,
            label_column=label_column,
            layout="auto" if eval_source is not None else layout,
        )
        test, _, _ = _decode_dataset(eval_ds, image_size=image_size, channels=channels, names=train.class_names)
        train_idx = np.arange(train.labels.size)
        test_pixels, test_labels = test.pixels, test.labels
        eval_desc = f"`{eval_source if eval_source is not None else source}` split `{eval_split or split}`"
    else:
        train_idx, test_idx = (
            _holdout(train.labels, float(holdout), seed)
            if holdout > 0
            else (np.arange(train.labels.size), np.zeros(0, np.int64))
        )
        test_pixels, test_labels = train.pixels[test_idx], train.labels[test_idx]
        eval_desc = f"{test_idx.size} held-out source images ({holdout:.0%} of each class, never condensed)"
    pixels, labels = train.pixels[train_idx], train.labels[train_idx]
    counts = np.bincount(labels, minlength=len(train.class_names))
    small = [(train.class_names[c], int(n)) for c, n in enumerate(counts) if n < int(ipc)]
    if small:
        raise DataError(
            f"{source}: --ipc {ipc} is larger than class(es) "
            + ", ".join(
                f"{name!r} ({n} usable images{' after the hold-out' if holdout > 0 else ''})" for name, n in small
            )
            + f"; lower --ipc to at most {min(n for _, n in small)}"
        )
    mean = pixels.mean(axis=(0, 2, 3))
    std = np.maximum(pixels.std(axis=(0, 2, 3)), 1e-6)

    def normalise(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((arr - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)).float()

    work = os.path.abspath(work_dir or out_dir.rstrip(os.sep) + ".condense-work")
    if overwrite:
        # --overwrite starts afresh (the convention of the commands that resume): drop our checkpoint, nothing else
        for name in (CHECKPOINT, CHECKPOINT_META):
            if os.path.isfile(os.path.join(work, name)):
                os.remove(os.path.join(work, name))
    synthetic = condense_tensors(
        normalise(pixels),
        torch.from_numpy(labels),
        method=algo.name,
        ipc=ipc,
        iterations=iterations,
        seed=seed,
        net=net,
        mean=mean,
        std=std,
        work_dir=work,
        checkpoint_every=checkpoint_every,
        progress=progress,
        **method_options,
    )
    parent = os.path.dirname(out_dir) or "."
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".condense-", dir=parent)
    try:
        syn_labels = synthetic.labels.numpy()
        rows = write_pngs(staging, synthetic.pixels(), syn_labels, train.class_names)
        evaluation = None
        if eval_runs > 0 and test_labels.size > 0:
            epochs = int(eval_epochs if eval_epochs is not None else algo.eval_epochs)
            logger.info("evaluating the saved PNGs: %d networks x %d epochs", eval_runs, epochs)
            # a method may store its images in another form than it trains on (IDM: 2x2 partitioned images)
            eval_images, eval_labels = algo.training_set(
                normalise(read_pngs(staging, rows)), torch.from_numpy(syn_labels)
            )
            evaluation = evaluate_synthetic(
                eval_images,
                eval_labels,
                normalise(test_pixels),
                torch.from_numpy(test_labels),
                runs=eval_runs,
                epochs=epochs,
                augment=algo.eval_augment,
                net={**DEFAULT_NET, **(net or {}), "num_classes": len(train.class_names)},
                seed=seed,
            )
        elif eval_runs > 0:
            warnings.append("no test images (holdout 0 and no --eval-source/--eval-split): accuracy not measured")
        note = getattr(algo, "stored_form_note", None)
        if note:
            warnings.append(note)
        write_dataset(staging, rows, train.class_names)
        meta = {"method": synthetic.method, "ipc": ipc, "iterations": synthetic.iterations_done, "seed": seed}
        write_safetensors(os.path.join(staging, SAFETENSORS), synthetic.pixels(), syn_labels, mean, std, meta)
        manifest = {
            "command": "condense",
            "vlselect_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": str(source),
            "split": split,
            "method": synthetic.method,
            "paper": algo.paper,
            "ipc": ipc,
            "iterations": synthetic.iterations,
            "iterations_done": synthetic.iterations_done,
            "seed": seed,
            "options": synthetic.options,
            "network": synthetic.net,
            "image_size": list(image_size),
            "channels": channels,
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "class_names": train.class_names,
            "n_images": int(syn_labels.size),
            "n_train_images": int(labels.size),
            "classes": train.classes,
            "errors_by_kind": dict(sorted(train.errors.items())),
            "eval_set": {"description": eval_desc, "n_images": int(test_labels.size)},
            "evaluation": evaluation.to_dict() if evaluation is not None else None,
            "seconds": synthetic.seconds,
            "losses": synthetic.losses,
            "work_dir": work,
            "warnings": warnings,
            "license": license,
        }
        write_json(os.path.join(staging, "manifest.json"), manifest)
        atomic_write_text(
            os.path.join(staging, CARD), build_card(manifest, os.path.basename(out_dir.rstrip(os.sep)), license)
        )
        swap_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return CondenseResult(synthetic, out_dir, evaluation, manifest, dict(train.errors))
