"""Pruning image-classification datasets: load, embed, select, and write the kept subset in the input's layout.

Inputs (:func:`load_image_classification`, layout detected from ``source``):

- ``imagefolder``: ``ROOT/<class>/<file>`` (torchvision's ImageFolder layout; files in sub-folders of a class
  folder count too). Files with an image extension are rows; anything else is ignored.
- ``save_to_disk``: a ``datasets`` folder (a ``DatasetDict`` folder too: ``split`` picks one) with an image and a
  label column.
- ``parquet``: a ``.parquet`` file or a folder of them (read with ``load_dataset("parquet")``).
- ``hub``: a Hugging Face dataset id, read with ``datasets.load_dataset(source, split=split)``.

Every input row becomes one canonical row: ``id`` (relative path, or the row index), ``image`` (the original
bytes), ``label`` (int), ``label_name``, ``error`` and ``row`` (index into the input). An image that is missing,
empty, truncated or not an image keeps its row with ``error`` set (:func:`selector.data.images.check_image_bytes`):
it is never selected, gets the reason ``error <kind>``, and is counted in the manifest and the card.

:func:`prune_images` embeds the rows with the ``embedding`` metric through :func:`selector.scoring.score` (so a
re-run resumes from the finished shards in ``work_dir``), or with plain downscaled pixels
(``embedding_model="pixels"``, no model), runs a strategy with the class as the stratum
(``stratify_quota="uniform"`` by default: the same budget for every class, capped by its size), and writes:

- the kept subset in the input's layout: class folders of the kept files for an image folder, a ``save_to_disk``
  folder for a ``save_to_disk`` input, ``data/<split>-00000-of-00001.parquet`` for Parquet and Hub inputs. With
  ``keep_rejected`` the dataset layouts keep every row plus ``selected``, ``selection_rank`` and
  ``selection_reason``; an image folder gets ``selection.csv`` (every input file, its class, outcome and reason).
- ``selection_rows.parquet`` (every row's id, outcome, rank, reason), ``manifest.json`` and a dataset card
  (``README.md``, :func:`selector.card.build_image_card`).

Example:
    >>> result = prune_images("flowers/", 0.3, "flowers-30/", embedding_model="efficientnet-lite0")  # doctest: +SKIP
    >>> result.n_selected, result.errors  # doctest: +SKIP
    (300, {'corrupt_image': 2})
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selector.errors import ConfigError, DataError
from selector.fileio import write_json
from selector.rows import error_kind

logger = logging.getLogger(__name__)

LAYOUTS = ("imagefolder", "save_to_disk", "parquet", "hub")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
#: ``embedding_model`` default: a self-supervised encoder, the space density-based pruning found best (Hub id).
DEFAULT_EMBEDDING_MODEL = "facebook/dinov2-small"
#: ``embedding_model`` value for downscaled-pixel features (no model; quick checks and tests).
PIXELS = "pixels"
PIXEL_SIDE = 16
_LOADER_VERSION = "image-classification-1"


@dataclass
class ImageSource:
    """Where an image-classification dataset came from and how to write a subset back in the same layout."""

    layout: str
    location: str
    split: str
    image_column: str
    label_column: str
    class_names: list[str] | None = None
    original: Any = field(default=None, repr=False)


@dataclass
class PruneResult:
    """What :func:`prune_images` did: the :class:`selector.selection.Selection`, the output folder, counts."""

    selection: Any
    out_dir: str
    layout: str
    n_rows: int
    n_selected: int
    errors: dict[str, int]
    manifest: dict


# Loading.


def detect_layout(source: str) -> str:
    """``imagefolder``, ``save_to_disk``, ``parquet`` or ``hub`` for ``source`` (see the module docstring)."""
    source = os.fspath(source)
    if os.path.isfile(source):
        if source.endswith(".parquet"):
            return "parquet"
        raise ConfigError(f"{source}: a single file must be .parquet; give a folder for an image folder")
    if os.path.isdir(source):
        if any(os.path.exists(os.path.join(source, f)) for f in ("state.json", "dataset_dict.json")):
            return "save_to_disk"
        for _, _, files in os.walk(source):
            if any(f.endswith(".parquet") for f in files):
                return "parquet"
        return "imagefolder"
    # a Hub id is "name" or "owner/name"; anything else that doesn't exist locally is a wrong path.
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or not source.strip():
        raise ConfigError(f"{source}: no such file or folder")
    return "hub"


def _image_files(root: str) -> list[tuple[str, str]]:
    """``(class, relative path)`` of every image file under ``root/<class>/``, sorted."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected ROOT/<class>/<image>)")
    out = []
    for name in classes:
        for folder, dirs, files in os.walk(os.path.join(root, name)):
            dirs.sort()
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS) and not file.startswith("."):
                    out.append((name, os.path.relpath(os.path.join(folder, file), root)))
    if not out:
        raise DataError(f"{root}: no image files in the class folders ({', '.join(IMAGE_EXTENSIONS)})")
    return out


def _stamp(root: str, files: list[tuple[str, str]]) -> str:
    parts = [_LOADER_VERSION, os.path.abspath(root)]
    for _, rel in files:
        try:
            st = os.stat(os.path.join(root, rel))
            parts.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{rel}:absent")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _imagefolder_rows(root: str, files: tuple, classes: tuple, stamp: str, allow_outside_root: bool = False):
    # `stamp` only keys datasets' cache to the files' sizes and times.
    from selector.data.images import read_image_file, resolve_image_path

    index = {name: i for i, name in enumerate(classes)}
    for row, (name, rel) in enumerate(files):
        # a file in a class folder may be a symlink to anywhere: it must resolve inside the image folder
        path, error = resolve_image_path(rel, [os.path.abspath(root)], allow_outside_root=allow_outside_root)
        data, error = (None, error) if error else read_image_file(path, name=os.path.join(root, rel))
        yield {
            "id": rel.replace(os.sep, "/"),
            "image": None if data is None else {"bytes": data, "path": None},
            "label": index[name],
            "label_name": name,
            "error": error,
            "row": row,
        }


def _features():
    from datasets import Features, Image, Value

    return Features(
        {
            "id": Value("string"),
            "image": Image(),
            "label": Value("int64"),
            "label_name": Value("string"),
            "error": Value("string"),
            "row": Value("int64"),
        }
    )


def _open_hf(layout: str, source: str, split: str):
    import datasets

    if layout == "save_to_disk":
        loaded = datasets.load_from_disk(source)
    elif layout == "parquet":
        files = (
            [source]
            if os.path.isfile(source)
            else sorted(
                os.path.join(folder, f)
                for folder, _, names in os.walk(source)
                for f in names
                if f.endswith(".parquet")
            )
        )
        loaded = datasets.load_dataset("parquet", data_files={split: files}, split=split)
    else:
        try:
            loaded = datasets.load_dataset(source, split=split)
        except (FileNotFoundError, ConnectionError, OSError) as exc:
            raise DataError(f"{source}: can't load the Hub dataset ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ConfigError(f"{source}: no split {split!r}; splits: {', '.join(loaded)}")
        loaded = loaded[split]
    return loaded


def _allowed_roots(layout: str, base: str) -> tuple[str, ...]:
    """Where a path-only image of a Hugging Face dataset may point: the dataset's folder, or for a Hub id the
    ``datasets`` cache its files were extracted to."""
    if layout != "hub":
        return (os.path.abspath(base),)
    from selector.data.images import hub_cache_roots

    return hub_cache_roots()


def _canonical_batch(
    batch: dict,
    indices: list[int],
    *,
    image_column: str,
    label_column: str,
    names,
    base: str,
    roots: tuple = (),
    allow_outside_root: bool = False,
):
    from selector.data.images import check_image_bytes, read_image_file, resolve_image_path

    out = {"id": [], "image": [], "label": [], "label_name": [], "error": [], "row": []}
    for image, label, row in zip(batch[image_column], batch[label_column], indices):
        name = f"row {row}"
        data, error = None, None
        if image is None:
            error = f"missing_image: {name} has no image"
        elif image.get("bytes"):
            data = image["bytes"]
            error = check_image_bytes(data, name)
        elif image.get("path"):
            path = image["path"] if os.path.isabs(image["path"]) else os.path.join(base, image["path"])
            path, error = resolve_image_path(path, list(roots or (base,)), allow_outside_root=allow_outside_root)
            if error is None:
                data, error = read_image_file(path)
        else:
            error = f"empty_image: {name} has neither bytes nor a path"
        out["id"].append(str(row))
        out["image"].append(None if error else {"bytes": data, "path": None})
        out["label"].append(int(label) if label is not None else -1)
        out["label_name"].append(names[int(label)] if names and label is not None else str(label))
        out["error"].append(error)
        out["row"].append(int(row))
    return out


def load_image_classification(
    source,
    *,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    layout: str = "auto",
    allow_outside_root: bool = False,
) -> tuple[Any, ImageSource]:
    """Load an image-classification dataset as canonical rows (see the module docstring).

    Args:
        source: an image folder, a ``save_to_disk`` folder, a Parquet file or folder, or a Hub dataset id.
        split: the split of a ``DatasetDict`` folder or Hub dataset (default ``train``).
        image_column, label_column: the columns of a Hugging Face dataset (ignored for image folders, whose label
            is the class folder). A ``ClassLabel`` label gives the class names.
        layout: ``auto`` (detect) or one of :data:`LAYOUTS`.
        allow_outside_root: also read image files that resolve (after symlinks) outside the allowed roots: the
            image folder itself, the ``save_to_disk``/Parquet folder, or the Hugging Face caches for a Hub id.
            By default such a file is the row error ``image_outside_root`` (see :mod:`selector.data.images`).

    Returns:
        ``(dataset, ImageSource)``: a ``datasets.Dataset`` with columns ``id``, ``image``, ``label``,
        ``label_name``, ``error``, ``row``, and how to write a subset back.

    Raises:
        ConfigError: an unknown layout or split, a missing column.
        DataError: no images, or a source that can't be read.
    """
    from datasets import ClassLabel, Dataset, Image

    source = os.fspath(source)
    layout = detect_layout(source) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of auto, {', '.join(LAYOUTS)}")
    if layout == "imagefolder":
        files = _image_files(source)
        classes = sorted({name for name, _ in files})
        ds = Dataset.from_generator(
            _imagefolder_rows,
            features=_features(),
            gen_kwargs={
                "root": source,
                "files": tuple(files),
                "classes": tuple(classes),
                "stamp": _stamp(source, files),
                "allow_outside_root": bool(allow_outside_root),
            },
            fingerprint=f"imagefolder-{_stamp(source, files)}-{int(bool(allow_outside_root))}",
        )
        return ds, ImageSource(layout, os.path.abspath(source), split, image_column, label_column, classes, files)
    original = _open_hf(layout, source, split)
    missing = [c for c in (image_column, label_column) if c not in original.column_names]
    if missing:
        raise ConfigError(
            f"{source}: no column(s) {', '.join(missing)}; columns: {', '.join(original.column_names)} "
            "(use --image-column / --label-column)"
        )
    label_feature = original.features[label_column]
    names = list(label_feature.names) if isinstance(label_feature, ClassLabel) else None
    raw = original.select_columns([image_column, label_column]).cast_column(image_column, Image(decode=False))
    base = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    ds = raw.map(
        _canonical_batch,
        batched=True,
        with_indices=True,
        remove_columns=raw.column_names,
        features=_features(),
        fn_kwargs={
            "image_column": image_column,
            "label_column": label_column,
            "names": names,
            "base": base,
            "roots": _allowed_roots(layout, base),
            "allow_outside_root": bool(allow_outside_root),
        },
        desc="checking images",
    )
    info = ImageSource(
        layout,
        source if layout == "hub" else os.path.abspath(source),
        split,
        image_column,
        label_column,
        names,
        original,
    )
    return ds, info


# Embedding.


def pixel_embeddings(ds, side: int = PIXEL_SIDE) -> np.ndarray:
    """(n, side*side) float32 features: each image in grey, resized to ``side`` x ``side``, centred, unit length.

    A NaN row where the row has an ``error`` (no model; for quick checks and tests, weaker than a real encoder).
    """
    from PIL import Image

    from selector.data.images import ImageError, decode_rgb

    out = np.full((len(ds), side * side), np.nan, dtype=np.float32)
    view = ds.select_columns(["image", "error"]).cast_column("image", _undecoded())
    for i, row in enumerate(view):
        if row["error"] or row["image"] is None:
            continue
        try:
            img = decode_rgb(row["image"]["bytes"], f"row {i}")
        except ImageError as exc:
            logger.warning("row %d: no pixel features: %s", i, exc.error)
            continue
        pixels = np.asarray(img.convert("L").resize((side, side), Image.BILINEAR), dtype=np.float32).ravel()
        pixels -= pixels.mean()
        norm = float(np.linalg.norm(pixels))
        out[i] = pixels / norm if norm > 0 else pixels
    return out


def _undecoded():
    from datasets import Image

    return Image(decode=False)


def embedding_spec(model: str, *, batch_size: int = 32, device: str | None = None) -> dict:
    """The ``embedding`` metric entry for ``model`` (column ``emb_image``)."""
    spec = {"metric": "embedding", "name": "image", "modality": "image", "model_name_or_path": model}
    spec["batch_size"] = batch_size
    if device is not None:
        spec["device"] = device
    return spec


# Pruning.


def prune_images(
    source,
    budget,
    out_dir,
    *,
    strategy: str = "ccs",
    embedding_model: str = DEFAULT_EMBEDDING_MODEL,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    layout: str = "auto",
    stratify_quota: str | None = "uniform",
    keep_rejected: bool = False,
    work_dir: str | None = None,
    batch_size: int = 32,
    device: str | None = None,
    random_state: int = 0,
    overwrite: bool = False,
    license: str = "other",
    progress: bool = True,
    allow_outside_root: bool = False,
    **options,
) -> PruneResult:
    """Prune an image-classification dataset to ``budget`` rows and write the subset in the input's layout.

    Args:
        source: see :func:`load_image_classification`.
        budget: a count, a fraction in (0, 1] of all rows (broken images included) or ``"30%"``.
        out_dir: output folder (must not exist or be empty, unless ``overwrite``).
        strategy: a selection strategy that works from embeddings: ``ccs`` (default; coverage-centric: with the
            default per-class quota, within 0.6 points of random at every budget in benchmarks/bench_pruning.py,
            but not above it; see the README), ``random``,
            ``ssl_prototypes`` (``keep="auto"``), ``semdedup``, ``dbp``, ``kcenter``, ``herding``, ...
        embedding_model: ``embedding`` metric model: a Hub id (default ``facebook/dinov2-small``), a local
            checkpoint, ``efficientnet-lite0`` (packaged, offline), or ``"pixels"`` (no model).
        split, image_column, label_column, layout: see :func:`load_image_classification`.
        stratify_quota: ``"uniform"`` (default: the same budget per class, capped by class size, the rest spread
            over the larger classes), ``"proportional"`` (per class, proportional to its size) or None (classes
            ignored: the strategy runs on the whole pool).
        keep_rejected: also keep the rejected rows with their reasons (see the module docstring).
        work_dir: where the resumable embedding shards go (default ``<out_dir>.embeddings``, kept for re-runs).
        batch_size, device: for the embedding model.
        random_state: seed of the selection.
        overwrite: replace a non-empty ``out_dir``.
        license: licence for the card metadata (the subset inherits the source's; ``other`` until you set it).
        progress: progress bars.
        allow_outside_root: read image files outside the allowed roots too (see :func:`load_image_classification`).
        **options: strategy options (``n_clusters``, ``beta``, ``keep``, ...).

    Returns:
        :class:`PruneResult`.
    """
    from selector import __version__
    from selector.runs import check_out_folder, swap_into_place, write_selection_rows
    from selector.scoring import score
    from selector.selection import select_arrays

    local_source = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    out_dir = check_out_folder(os.fspath(out_dir), source=local_source, overwrite=overwrite)
    if stratify_quota not in (None, "uniform", "proportional"):
        raise ConfigError(f"stratify_quota must be 'uniform', 'proportional' or None, got {stratify_quota!r}")
    ds, info = load_image_classification(
        source,
        split=split,
        image_column=image_column,
        label_column=label_column,
        layout=layout,
        allow_outside_root=allow_outside_root,
    )
    if len(ds) == 0:
        raise DataError(f"{source}: the dataset has no rows")
    errors = Counter(kind for kind in map(error_kind, ds["error"]) if kind is not None)
    if errors:
        logger.warning(
            "%s: %d of %d images can't be used and will not be selected (%s)",
            source,
            sum(errors.values()),
            len(ds),
            ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())),
        )
    if embedding_model == PIXELS:
        embeddings = pixel_embeddings(ds)
        work = None
        embedding = {"model": PIXELS, "side": PIXEL_SIDE}
    else:
        work = os.path.abspath(work_dir or out_dir.rstrip(os.sep) + ".embeddings")
        spec = embedding_spec(embedding_model, batch_size=batch_size, device=device)
        scored = score(
            ds,
            [spec],
            out_dir=work,
            batch_size=max(batch_size, 32),
            progress=progress,
            seed=random_state,
            source=str(source),
        )
        from selector.rows import embedding_matrix

        embeddings = embedding_matrix(scored, "emb_image")
        embedding = {k: v for k, v in spec.items() if k != "metric"}
    names = np.asarray(ds["label_name"], dtype=object)
    selection = select_arrays(
        embeddings,
        budget,
        strategy,
        ids=ds["id"],
        errors=ds["error"],
        strata=None if stratify_quota is None else names,
        random_state=random_state,
        **({} if stratify_quota is None else {"stratify_quota": stratify_quota}),
        **options,
    )
    per_class = {}
    for name in sorted(set(names.tolist())):
        rows = names == name
        per_class[name] = {
            "rows": int(rows.sum()),
            "usable": int((rows & np.array([e is None for e in ds["error"]])).sum()),
            "selected": int(selection.mask[rows].sum()),
        }
    summary = selection.summary()
    manifest = {
        "command": "prune-images",
        "vlselect_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": str(source),
        "layout": info.layout,
        "split": split,
        "strategy": selection.strategy,
        "budget": selection.budget,
        "n_budget": selection.n_budget,
        "seed": selection.random_state,
        "options": selection.options,
        "stratify_quota": stratify_quota,
        "embedding": embedding,
        "embedding_work_dir": work,
        "keep_rejected": bool(keep_rejected),
        "counts": {k: v for k, v in summary.items() if k != "clusters"},
        "errors_by_kind": dict(sorted(errors.items())),
        "classes": per_class,
        "strategy_info": selection.info,
        "warnings": selection.warnings,
        "license": license,
    }
    from selector.card import write_image_card
    from selector.fileio import folder_lock, output_errors
    from selector.redact import redact

    # One writer per output folder; a full disk or an unwritable folder is one line.
    with folder_lock(out_dir, command="prune-images"), output_errors(out_dir):
        staging = _write_output(ds, info, selection, out_dir, keep_rejected=keep_rejected)
        try:
            write_selection_rows(os.path.join(staging, "selection_rows.parquet"), selection)
            write_json(os.path.join(staging, "manifest.json"), redact(manifest))
            write_image_card(staging, license=license)
            swap_into_place(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return PruneResult(selection, out_dir, info.layout, len(ds), selection.n_selected, dict(errors), manifest)


def _write_output(ds, info: ImageSource, selection, out_dir: str, *, keep_rejected: bool) -> str:
    """Write the kept rows in ``info.layout`` into a staging folder beside ``out_dir``; return its path (the caller
    adds the manifest and card, then moves it into place)."""
    parent = os.path.dirname(out_dir) or "."
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".prune-images-", dir=parent)
    try:
        kept_rows = np.asarray(ds["row"])[selection.mask]
        if info.layout == "imagefolder":
            for row in kept_rows.tolist():
                _, rel = info.original[row]
                target = os.path.join(staging, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(os.path.join(info.location, rel), target)
            if keep_rejected:
                with open(os.path.join(staging, "selection.csv"), "w", newline="") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(["path", "label", "selected", "rank", "reason"])
                    for i, (name, rel) in enumerate(info.original):
                        rel = rel.replace(os.sep, "/")
                        writer.writerow(
                            [rel, name, bool(selection.mask[i]), int(selection.rank[i]), selection.reason[i]]
                        )
        else:
            original = info.original
            if keep_rejected:
                extra = {
                    "selected": selection.mask.tolist(),
                    "selection_rank": selection.rank.tolist(),
                    "selection_reason": [str(r) for r in selection.reason],
                }
                for column, values in extra.items():
                    if column in original.column_names:
                        original = original.remove_columns(column)
                    original = original.add_column(column, values)
                subset = original
            else:
                subset = original.select(np.sort(kept_rows))
            if info.layout == "save_to_disk":
                subset.save_to_disk(staging)
            else:
                os.makedirs(os.path.join(staging, "data"))
                subset.to_parquet(os.path.join(staging, "data", f"{info.split}-00000-of-00001.parquet"))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging
