"""Pool partition, label combination and config lookup of `vlselect labels` (no fine-tuning here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from selector.errors import ConfigError, DataError
from selector.labels import (
    Partition,
    combine_scores,
    find_training_config,
    parse_val_sources,
    partition_pool,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "recipes" / "configs" / "tiny_cpu.yaml"


def blobs(sizes, d=6, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.eye(d)[: len(sizes)] * 3.0
    X = np.concatenate([centers[j] + spread * rng.normal(size=(n, d)) for j, n in enumerate(sizes)])
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return X.astype(np.float32), truth


# ---- partition_pool -------------------------------------------------------------------------------------------


def scored_pool(n=41, seed=0):
    """Canonical rows + emb_clip/emb_text in 3 blobs; row 0 has an error, row 1 no embedding at all."""
    from datasets import Dataset, Features, List, Value

    from selector.data.schema import features

    X, _ = blobs([14, 14, 13], d=8, spread=0.1, seed=seed)
    text = X[:, ::-1].copy()
    X[1] = np.nan
    text[1] = np.nan
    text[2] = np.nan  # only the text embedding missing: still clustered on the image part
    feats = Features({**features(), "emb_clip": List(Value("float32")), "emb_text": List(Value("float32"))})
    rows = {
        "id": [f"p{i:03d}" for i in range(n)],
        "image": [None] * n,
        "images": [[] for _ in range(n)],
        "messages": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]] * n,
        "error": ["missing_image: x.jpg" if i == 0 else None for i in range(n)],
        "source": ["s"] * n,
        "emb_clip": [None if i == 1 else X[i].tolist() for i in range(n)],
        "emb_text": [None if i in (1, 2) else text[i].tolist() for i in range(n)],
    }
    return Dataset.from_dict(rows, features=feats)


def test_partition_pool_reports_every_dropped_row_and_ignores_row_order():
    ds = scored_pool()
    part = partition_pool(ds, 3, random_state=0)
    assert part.subset_size == 13 and [len(s) for s in part.subsets] == [13, 13, 13]
    assert part.dropped_counts() == {"error": 1, "no_embedding": 1, "balance": 0}
    assert part.dropped["p000"] == "error" and part.dropped["p001"] == "no_embedding"
    every = [i for s in part.subsets for i in s] + list(part.dropped)
    assert sorted(every) == sorted(ds["id"])  # no row silently lost
    assert "p002" in {i for s in part.subsets for i in s}
    assert part.settings["embedding_columns"] == ["emb_clip", "emb_text"]

    shuffled = ds.shuffle(seed=5)
    again = partition_pool(shuffled, 3, random_state=0)
    assert again.subsets == part.subsets and again.dropped == part.dropped

    # 4 subsets of 39 usable rows: 9 each, 3 dropped for balance; JSON round trip keeps everything
    four = partition_pool(ds, 4, embedding_columns=["emb_clip"], random_state=0)
    assert four.dropped_counts() == {"error": 1, "no_embedding": 1, "balance": 3}
    assert Partition.from_json(json.loads(json.dumps(four.to_json()))) == four


def test_partition_pool_errors():
    ds = scored_pool()
    with pytest.raises(DataError, match="can't fill 40 subsets"):
        partition_pool(ds, 40)
    with pytest.raises(ConfigError, match="positive integer"):
        partition_pool(ds, 0)
    with pytest.raises(DataError, match=r"emb_nope.*emb_clip, emb_text"):
        partition_pool(ds, 3, embedding_columns=["emb_nope"])
    with pytest.raises(DataError, match="no emb_\\* column"):
        partition_pool(ds.remove_columns(["emb_clip", "emb_text"]), 3)


# ---- combine_scores -------------------------------------------------------------------------------------------


def test_combine_loss_is_negated_so_lower_loss_gives_the_higher_label():
    losses = np.array([[2.0, 4.0], [3.0, 1.0], [1.0, 1.0]])
    labels = combine_scores(losses, eval_score="eval_loss")
    assert np.allclose(labels, [-3.0, -2.0, -1.0])
    assert np.argmax(labels) == 2
    weighted = combine_scores(losses, eval_score="eval_loss", weights=[3, 1])
    assert np.allclose(weighted, [-(0.75 * 2 + 0.25 * 4), -(0.75 * 3 + 0.25 * 1), -1.0])


def test_combine_accuracy_zscore_and_nan():
    acc = np.array([[0.5, 0.10], [0.7, 0.12], [0.6, np.nan], [0.6, 0.11]])
    mean = combine_scores(acc, eval_score="exact_match")
    assert np.allclose(mean[[0, 1, 3]], [0.3, 0.41, 0.355]) and np.isnan(mean[2])
    z = combine_scores(acc, eval_score="exact_match", combine="zscore")
    # both sets ordered 0 < 3 < 1 and scaled to unit spread: the second set's tiny range weighs as much as the first
    first = (acc[:, 0] - acc[:, 0].mean()) / acc[:, 0].std()
    second_vals = acc[[0, 1, 3], 1]
    second = (second_vals - second_vals.mean()) / second_vals.std()
    assert np.allclose(z[[0, 1, 3]], (first[[0, 1, 3]] + second) / 2) and np.isnan(z[2])
    # a set on which every subset ties adds nothing; a zero weight ignores a NaN on that set
    tie = combine_scores(np.array([[1.0, 5.0], [2.0, 5.0]]), eval_score="contains_answer", combine="zscore")
    assert np.allclose(tie, [-0.5, 0.5])
    assert np.allclose(combine_scores(acc, eval_score="exact_match", weights=[1, 0]), acc[:, 0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eval_score": "bleu"}, "unknown eval score 'bleu'"),
        ({"combine": "max"}, "unknown combine 'max'"),
        ({"weights": [1.0]}, "one weight per validation set: 2 set"),
        ({"weights": [1.0, -1.0]}, "non-negative"),
        ({"weights": [0.0, 0.0]}, "not all zero"),
    ],
)
def test_combine_rejects_bad_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        combine_scores(np.ones((2, 2)), **kwargs)


# ---- training config lookup and validation sources -----------------------------------------------------------


def test_training_config_by_path_or_shipped_name(tmp_path):
    from selector.training.config import shipped_configs

    shipped = shipped_configs()["tiny_cpu"]
    assert find_training_config("tiny_cpu") == shipped
    assert find_training_config(TINY_CONFIG) == str(Path(shipped).resolve())  # recipes/configs points at them
    own = tmp_path / "configs" / "x.yaml"
    own.parent.mkdir()
    own.write_text("max_steps: 1\n")
    assert find_training_config(own) == str(own.resolve())  # any folder: no script has to sit beside it
    with pytest.raises(ConfigError, match="training config .*missing.yaml: no such file, and not a shipped config"):
        find_training_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="proxy_smolvlm_256m"):
        find_training_config("nope")
    with pytest.raises(ConfigError, match="is a directory"):
        find_training_config(tmp_path)


def test_parse_val_sources(tmp_path):
    a = tmp_path / "vqa.json"
    a.write_text("[]")
    b = tmp_path / "other" / "vqa.json"
    b.parent.mkdir()
    b.write_text("[]")
    assert parse_val_sources([str(a), str(b), f"gqa={a}"]) == [
        ("vqa", str(a)),
        ("vqa_2", str(b)),
        ("gqa", str(a)),
    ]
    with pytest.raises(ConfigError, match="at least one validation set"):
        parse_val_sources([])
    with pytest.raises(ConfigError, match="no such file"):
        parse_val_sources([str(tmp_path / "gone.json")])
    with pytest.raises(ConfigError, match="NAME=PATH"):
        parse_val_sources(["=x"])


def test_import_selector_stays_light_and_exports_labels():
    import subprocess
    import sys

    code = (
        "import sys, selector; assert callable(selector.generate_labels); "
        "import selector.commands.labels; "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
