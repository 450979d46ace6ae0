"""Condensation files: checkpoints (resume), the output folder, and its card.

Checkpoint (``<work_dir>/checkpoint.safetensors`` + ``checkpoint.json``, both written atomically): the synthetic
images, the image optimiser's momentum, the method's own state, the finished iteration count, the per-iteration
losses, and a fingerprint of the settings; a run with other settings refuses to resume from it.

Output folder (:func:`write_output`):

- ``images/<class>/<class>_<k>.png``: the synthetic images as 8-bit PNGs (pixel values clipped to [0, 1]); the
  folder is an ImageFolder, so ``vlselect prune-images`` / ``condense`` read it back.
- ``labels.csv``: ``file,label,label_name`` for every PNG.
- ``dataset/``: a ``datasets`` ``save_to_disk`` folder with columns ``image`` (``Image``), ``label``
  (``ClassLabel``) and ``label_name``.
- ``synthetic.safetensors``: ``images`` (float32 ``(n, c, h, w)`` in pixel units, 0..1 = black..white, not
  clipped, so nothing is lost to 8-bit rounding), ``labels`` (int64), ``mean`` and ``std`` (the per-channel
  normalisation the networks saw: ``(images - mean) / std``).
- ``manifest.json`` and ``README.md`` (a Hugging Face dataset card: method, ipc, iterations, seed, evaluation
  accuracy measured on the saved PNG images).
"""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np

from selector.errors import DataError
from selector.fileio import atomic_write_bytes, read_json, write_json

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"
SAFETENSORS = "synthetic.safetensors"
CARD = "README.md"


def save_checkpoint(work_dir: str, tensors: dict, meta: dict) -> None:
    """Write the checkpoint tensors and metadata atomically (tensors first: the JSON marks a complete pair)."""
    from safetensors.torch import save

    os.makedirs(work_dir, exist_ok=True)
    atomic_write_bytes(os.path.join(work_dir, CHECKPOINT), save({k: v.contiguous() for k, v in tensors.items()}))
    write_json(os.path.join(work_dir, CHECKPOINT_META), meta)


def load_checkpoint(work_dir: str) -> tuple[dict, dict] | None:
    """``(tensors, meta)`` of the checkpoint in ``work_dir``, or None when there is none.

    Raises:
        DataError: a checkpoint that can't be read.
    """
    meta_path = os.path.join(work_dir, CHECKPOINT_META)
    tensor_path = os.path.join(work_dir, CHECKPOINT)
    if not (os.path.exists(meta_path) and os.path.exists(tensor_path)):
        return None
    from safetensors.torch import load_file

    try:
        return load_file(tensor_path), read_json(meta_path)
    except Exception as exc:  # safetensors raises its own error types for a truncated or foreign file
        raise DataError(f"{work_dir}: can't read the checkpoint ({exc}); delete the folder to start over") from exc


def to_uint8(pixels) -> np.ndarray:
    """``(n, c, h, w)`` float pixels (0..1) -> ``(n, h, w, c)`` uint8, clipped and rounded."""
    arr = np.asarray(pixels, dtype=np.float32)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def write_pngs(folder: str, pixels, labels, class_names: list[str]) -> list[tuple[str, int]]:
    """Write every image as ``images/<class>/<class>_<k>.png`` under ``folder`` and ``labels.csv``.

    Returns ``(relative path, label)`` per image, in the input order.
    """
    from PIL import Image

    data = to_uint8(pixels)
    rows = []
    counts: dict[int, int] = {}
    for img, label in zip(data, np.asarray(labels).tolist()):
        name = _safe_name(class_names[label])
        k = counts.get(label, 0)
        counts[label] = k + 1
        rel = f"images/{name}/{name}_{k:04d}.png"
        os.makedirs(os.path.join(folder, "images", name), exist_ok=True)
        mode_img = Image.fromarray(img[:, :, 0], mode="L") if img.shape[2] == 1 else Image.fromarray(img, "RGB")
        mode_img.save(os.path.join(folder, rel), format="PNG")
        rows.append((rel, int(label)))
    with open(os.path.join(folder, "labels.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "label_name"])
        for rel, label in rows:
            writer.writerow([rel, label, class_names[label]])
    return rows


def _safe_name(name: str) -> str:
    """A class name usable as a folder name (path separators and leading dots replaced)."""
    out = "".join("_" if ch in '/\\:*?"<>|' or ord(ch) < 32 else ch for ch in str(name)).strip()
    out = out.lstrip(".") or "class"
    return out


def read_pngs(folder: str, rows: list[tuple[str, int]]) -> np.ndarray:
    """The PNGs written by :func:`write_pngs` as float32 ``(n, c, h, w)`` pixels in 0..1."""
    from PIL import Image

    out = []
    for rel, _ in rows:
        with Image.open(os.path.join(folder, rel)) as img:
            arr = np.asarray(img, dtype=np.float32) / 255.0
        out.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return np.stack(out)


def write_dataset(folder: str, rows: list[tuple[str, int]], class_names: list[str]) -> None:
    """``folder/dataset``: a ``save_to_disk`` dataset of the PNGs (``image``, ``label`` ClassLabel, ``label_name``)."""
    from datasets import ClassLabel, Dataset, Features, Image, Value

    features = Features(
        {"image": Image(), "label": ClassLabel(names=list(class_names)), "label_name": Value("string")}
    )
    records = {"image": [], "label": [], "label_name": []}
    for rel, label in rows:
        with open(os.path.join(folder, rel), "rb") as handle:
            records["image"].append({"bytes": handle.read(), "path": None})
        records["label"].append(int(label))
        records["label_name"].append(str(class_names[label]))
    Dataset.from_dict(records, features=features).save_to_disk(os.path.join(folder, "dataset"))


def write_safetensors(path: str, pixels, labels, mean, std, metadata: dict[str, Any]) -> None:
    """The float synthetic set (see the module docstring); ``metadata`` values are stored as strings."""
    import torch
    from safetensors.torch import save_file

    save_file(
        {
            "images": torch.as_tensor(np.asarray(pixels, dtype=np.float32)).contiguous(),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)),
            "mean": torch.as_tensor(np.asarray(mean, dtype=np.float32)),
            "std": torch.as_tensor(np.asarray(std, dtype=np.float32)),
        },
        path,
        metadata={k: str(v) for k, v in metadata.items()},
    )


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

A synthetic image-classification training set learned with dataset condensation by
[vlselect](https://pypi.org/project/vlselect/) (`vlselect condense`): **{{ n_images }} images**
({{ ipc }} per class, {{ n_classes }} classes) learned with **{{ method_title }}** from `{{ source }}`.

## How it was made

| setting | value |
|---|---|
{% for row in settings %}| {{ row[0] }} | {{ row[1] }} |
{% endfor %}

Method: {{ paper }}.

## Evaluation

Fresh ConvNets trained on the saved **PNG images** (8-bit, as published here) and tested on {{ eval_on }}:

| measure | value |
|---|---|
{% for row in evaluation %}| {{ row[0] }} | {{ row[1] }} |
{% endfor %}

## Files

- `images/<class>/*.png` and `labels.csv`: the images (an ImageFolder layout).
- `dataset/`: the same as a `datasets` folder (`datasets.load_from_disk`), columns `image`, `label`, `label_name`.
- `synthetic.safetensors`: the float images before 8-bit rounding (`images` in 0..1 pixel units, `labels`,
  and the `mean`/`std` normalisation the networks saw).
- `manifest.json`: every resolved setting, the loss per iteration, and the source's class counts.
{% if warnings %}
## Warnings

{% for w in warnings %}- {{ w }}
{% endfor %}{% endif %}"""


def build_card(manifest: dict, name: str, license: str = "other") -> str:
    """Render the dataset card of a condensation output from its manifest."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from selector.card import license_metadata

    n = int(manifest["n_images"])
    size = "n<1K" if n < 1000 else "1K<n<10K" if n < 10000 else "10K<n<100K"
    card_data = DatasetCardData(
        pretty_name=name,
        **license_metadata(license),
        task_categories=["image-classification"],
        tags=["vlselect", "dataset-condensation", f"method-{manifest['method']}", "synthetic"],
        size_categories=[size],
    )
    ev = manifest.get("evaluation") or {}
    settings = [
        ["method", f"`{manifest['method']}`"],
        ["images per class (ipc)", manifest["ipc"]],
        ["iterations", f"{manifest['iterations_done']} of {manifest['iterations']}"],
        ["seed", manifest["seed"]],
        ["init", f"`{manifest['options'].get('init')}`"],
        ["image size", f"{manifest['image_size'][0]}x{manifest['image_size'][1]}, {manifest['channels']} channel(s)"],
        ["network", f"ConvNet `{_json(manifest['network'])}`"],
        ["options", f"`{_json(manifest['options'])}`"],
        ["wall time", f"{manifest['seconds']:.0f} s"],
        ["vlselect", manifest.get("vlselect_version")],
    ]
    if ev:
        evaluation = [
            ["test accuracy (mean ± std)", f"{100 * ev['mean']:.2f} ± {100 * ev['std']:.2f} %"],
            ["runs", ev["runs"]],
            ["accuracies", ", ".join(f"{100 * a:.2f}" for a in ev["accuracies"])],
            ["epochs per run", ev["epochs"]],
            ["training augmentation", f"`{ev['augment']}`"],
            ["measured on", "the PNG files in this folder"],
        ]
    else:
        evaluation = [["test accuracy", "not measured (evaluation runs = 0)"]]
    card = DatasetCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        name=name,
        n_images=n,
        ipc=manifest["ipc"],
        n_classes=len(manifest["class_names"]),
        method_title=manifest["method"].upper(),
        source=manifest["source"],
        settings=[[str(a), str(b)] for a, b in settings],
        paper=manifest["paper"],
        eval_on=manifest.get("eval_set", {}).get("description", "a held-out set"),
        evaluation=[[str(a), str(b)] for a, b in evaluation],
        warnings=manifest.get("warnings") or [],
    )
    return str(card)


def _json(value) -> str:
    from selector.fileio import dumps_json

    return dumps_json(value, indent=None)
