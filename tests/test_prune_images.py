"""`vlselect prune-images` end to end: an image folder (real EfficientNet-Lite0 weights, resumable embeddings) and
Hugging Face image datasets (save_to_disk, Parquet), with broken images kept out and reported."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from selector.cli import main
from selector.errors import ConfigError
from selector.images import detect_layout, load_image_classification, prune_images

CLASSES = ("cat", "dog", "fish")


def _png(path, shade: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(shade, 25, size=(24, 24, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "src"
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(6 if name != "fish" else 2):
            _png(root / name / f"{i}.png", 40 + 80 * c, seed=10 * c + i)
    (root / "cat" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("not an image, ignored")
    return root


def test_prune_image_folder_with_efficientnet_end_to_end(image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "prune-images",
        str(image_folder),
        "--budget",
        "6",
        "--out",
        str(out),
        "--keep-rejected",
        "--embedding-model",
        "efficientnet-lite0",
        "--work-dir",
        str(tmp_path / "emb"),
        "-o",
        "n_clusters=2",
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "kept 6 of 16 images" in printed and "2 broken images kept out" in printed
    # same layout: class folders with the kept files, byte-identical to the source
    kept = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert len(kept) == 6
    assert {k.split("/")[0] for k in kept} == set(CLASSES)  # uniform per-class quota: 2 each
    for rel in kept:
        assert (out / rel).read_bytes() == (image_folder / rel).read_bytes()
    assert not (out / "cat" / "truncated.png").exists() and not (out / "dog" / "empty.jpg").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["errors_by_kind"] == {"corrupt_image": 1, "empty_image": 1}
    assert manifest["classes"]["fish"] == {"rows": 2, "usable": 2, "selected": 2}
    assert manifest["embedding"]["model_name_or_path"] == "efficientnet-lite0"
    assert manifest["strategy_info"]["cat"]["difficulty"] == "prototype"
    rows = {r.split(",")[0]: r for r in (out / "selection.csv").read_text().splitlines()[1:]}
    assert len(rows) == 16
    assert rows["cat/truncated.png"].endswith("error corrupt_image")
    assert rows["dog/empty.jpg"].endswith("error empty_image")
    card = (out / "README.md").read_text()
    assert "image-classification" in card and "`corrupt_image` | 1" in card and "| `fish` | 2 | 2 | 2 |" in card

    # a re-run with the same work dir reuses the finished embedding shards (not rewritten, no model call)
    shards = {p: p.stat().st_mtime_ns for p in (tmp_path / "emb" / ".shards").rglob("*.parquet")}
    assert shards
    assert main([*args[:5], str(tmp_path / "out2"), *args[6:-1]]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "emb" / ".shards").rglob("*.parquet")} == shards
    again = sorted(str(p.relative_to(tmp_path / "out2")) for p in (tmp_path / "out2").rglob("*.png"))
    assert again == kept


def _hf_dataset(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as HFImage

    good = []
    for i in range(12):
        path = tmp_path / f"img{i}.png"
        _png(path, 30 + 60 * (i % 3), seed=i)
        good.append({"bytes": path.read_bytes(), "path": None})
    images = [*good, {"bytes": b"GIF89a-broken", "path": None}, None]
    labels = [i % 3 for i in range(12)] + [0, 1]
    features = Features({"image": HFImage(), "label": ClassLabel(names=list(CLASSES)), "extra": Value("int64")})
    return Dataset.from_dict({"image": images, "label": labels, "extra": list(range(14))}, features=features)


def test_prune_hf_save_to_disk_dataset_keeps_layout_and_reports_broken_images(tmp_path):
    from datasets import load_from_disk

    src = tmp_path / "hf"
    _hf_dataset(tmp_path).save_to_disk(str(src))
    ds, info = load_image_classification(str(src))
    assert info.layout == "save_to_disk" and info.class_names == list(CLASSES)
    assert ds["error"][12].startswith("corrupt_image") and ds["error"][13].startswith("missing_image")

    result = prune_images(str(src), 0.5, tmp_path / "out", embedding_model="pixels", progress=False, n_clusters=2)
    assert result.n_selected == 7 and result.errors == {"corrupt_image": 1, "missing_image": 1}
    subset = load_from_disk(str(tmp_path / "out"))
    assert subset.column_names == ["image", "label", "extra"] and len(subset) == 7
    assert not {12, 13} & set(subset["extra"])
    assert sorted(np.bincount(subset["label"]).tolist()) == [2, 2, 3]  # uniform per class, exact total

    full = prune_images(
        str(src),
        0.5,
        tmp_path / "all",
        embedding_model="pixels",
        keep_rejected=True,
        progress=False,
        strategy="random",
    )
    rejected = load_from_disk(str(tmp_path / "all"))
    assert len(rejected) == 14 and sum(rejected["selected"]) == full.n_selected
    assert rejected["selection_reason"][12] == "error corrupt_image"
    assert rejected["selection_reason"][13] == "error missing_image"


def test_prune_parquet_dataset_writes_parquet(tmp_path):
    from datasets import load_dataset

    (tmp_path / "pq").mkdir()
    _hf_dataset(tmp_path).to_parquet(str(tmp_path / "pq" / "train.parquet"))
    assert detect_layout(str(tmp_path / "pq")) == "parquet"
    result = prune_images(
        str(tmp_path / "pq"),
        2,
        tmp_path / "out",
        embedding_model="pixels",
        strategy="ssl_prototypes",
        stratify_quota=None,
        progress=False,
        n_clusters=2,
    )
    assert result.layout == "parquet" and result.n_selected == 2
    assert result.manifest["strategy_info"]["all"]["keep"] == "easy"  # 2 of the 12 usable rows: below 20%
    out = load_dataset("parquet", data_files=str(tmp_path / "out" / "data" / "*.parquet"), split="train")
    assert len(out) == 2 and not {12, 13} & set(out["extra"])


def test_layout_detection_and_user_errors(tmp_path, image_folder):
    assert detect_layout(str(image_folder)) == "imagefolder"
    assert detect_layout("someone/some-images") == "hub"
    with pytest.raises(ConfigError, match="no such file"):
        detect_layout(str(tmp_path / "missing" / "x"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        prune_images(str(image_folder), 3, tmp_path / "busy", embedding_model="pixels")
    with pytest.raises(ConfigError, match="label"):
        src = tmp_path / "hf"
        _hf_dataset(tmp_path).save_to_disk(str(src))
        load_image_classification(str(src), label_column="class")
    assert main(["prune-images", str(image_folder), "--budget", "0", "--out", str(tmp_path / "o")]) == 2
    assert not os.path.exists(tmp_path / "o")


def test_out_folder_rules_protect_the_source_and_foreign_folders(tmp_path, image_folder):
    # never inside, equal to or holding the source, even with overwrite: replacing it would delete the images
    for out in (image_folder, image_folder / "sub", image_folder.parent):
        with pytest.raises(ConfigError, match="overlaps the source"):
            prune_images(str(image_folder), 3, out, embedding_model="pixels", overwrite=True, progress=False)
    assert sorted(os.listdir(image_folder))  # untouched
    # a foreign non-empty folder is not replaced even with overwrite; an earlier result is, whole
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="does not look like an earlier result"):
        prune_images(str(image_folder), 3, tmp_path / "foreign", embedding_model="pixels", overwrite=True)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    kwargs = dict(embedding_model="pixels", strategy="random", progress=False)
    first = prune_images(str(image_folder), 3, tmp_path / "out", **kwargs)
    second = prune_images(str(image_folder), 5, tmp_path / "out", overwrite=True, **kwargs)
    assert (first.n_selected, second.n_selected) == (3, 5)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["n_selected"] == 5
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no staging or old copies left behind
