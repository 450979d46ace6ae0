"""`vlselect train-selector` and `vlselect select --selector` end to end on a scored folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selector.cli import main


def write_scored(tmp_path, n=120, seed=0):
    """A folder shaped like `vlselect score` output: canonical columns + score_* + emb_* (NaN where missing)."""
    from datasets import Dataset, Features, List, Value

    from selector.data.schema import features

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[3] = np.nan  # a row whose image embedding failed
    clip = rng.normal(size=n)
    reward = rng.normal(size=n)
    clip[4] = np.nan
    feats = Features(
        {
            **features(),
            "score_clip": Value("float32"),
            "score_reward": Value("float32"),
            "emb_clip": List(Value("float32")),
        }
    )
    ds = Dataset.from_dict(
        {
            "id": [f"s{i:04d}" for i in range(n)],
            "image": [None] * n,
            "images": [[] for _ in range(n)],
            "messages": [[{"role": "user", "content": "<image> q"}, {"role": "assistant", "content": "a"}]] * n,
            "error": ["missing_image: gone.jpg" if i == 0 else None for i in range(n)],
            "source": ["a" if i % 3 else "b" for i in range(n)],
            "score_clip": clip.astype(np.float32),
            "score_reward": reward.astype(np.float32),
            "emb_clip": emb.astype(np.float32),
        },
        features=feats,
    )
    path = tmp_path / "scored"
    ds.save_to_disk(str(path))
    (path / "manifest.json").write_text(json.dumps({"input_fingerprint": "fp"}))
    quality = np.nan_to_num(clip) + 0.5 * reward
    return path, ds, quality


def write_set_labels(path, ds, quality, n_groups=12):
    """Set-level labels: contiguous groups of rows, label = the group's mean quality."""
    ids = ds["id"]
    groups = np.arange(len(ids)) * n_groups // len(ids)
    rows = []
    for g in range(n_groups):
        label = float(quality[groups == g].mean())
        rows += [{"id": ids[i], "group": int(g), "label": label} for i in np.flatnonzero(groups == g)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def scored(tmp_path):
    return write_scored(tmp_path)


def test_train_selector_ridge_per_row(tmp_path, scored, capsys):
    from selector.learned import LearnedSelector

    path, ds, quality = scored
    labels = tmp_path / "labels.jsonl"
    # per-row labels for half of the pool; the rest still shapes the feature recipe.
    labels.write_text("".join(json.dumps({"id": i, "label": float(q)}) + "\n" for i, q in zip(ds["id"][:60], quality)))
    out = tmp_path / "sel"
    rc = main(["train-selector", str(path), "--labels", str(labels), "--out", str(out), "--model", "ridge"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "trained ridge selector on 59 rows, 59 rows (row-level labels)" in printed
    assert "features: score_clip, score_reward, emb_clip" in printed
    sel = LearnedSelector.from_pretrained(out)
    scores = sel.score_samples(ds)
    assert np.isnan(scores[0]) and np.isfinite(scores[1:]).all()
    assert np.corrcoef(scores[60:], quality[60:])[0, 1] > 0.9


def test_train_selector_network_set_labels_then_select(tmp_path, scored, capsys):
    from datasets import load_from_disk

    from selector.learned import LearnedSelector
    from selector.strategies import select

    path, ds, quality = scored
    labels = write_set_labels(tmp_path / "labels.jsonl", ds, quality)
    out = tmp_path / "sel"
    args = ["train-selector", str(path), "--labels", str(labels), "--out", str(out), "--max-epochs", "5"]
    assert main(args) == 0
    assert "(set-level labels); held-out Spearman" in capsys.readouterr().out
    # the selector's three files, and the marker that makes the folder vlselect's own (selector.runs.OWN_MARKER)
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md", ".vlselect-output"}
    assert main(args) == 2  # the selector is there: no silent overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0

    picked = tmp_path / "picked"
    rc = main(
        ["select", str(path), "--strategy", "instructiongpt4", "--selector", str(out), "--budget", "20",
         "--out", str(picked), "--embedding-column", "emb_clip", "-o", "n_clusters=4", "--keep-rejected"]
    )  # fmt: skip
    assert rc == 0 and "selected 20 of 120 rows" in capsys.readouterr().out
    result = load_from_disk(str(picked))
    manifest = json.loads((picked / "manifest.json").read_text())
    # the selector's scores become score_quality (percentile ranks: the same order) and are ranked by
    assert manifest["selector"] == str(out) and manifest["columns"]["scores"] == "score_quality"
    assert manifest["quality"]["source"] == "selector" and "score_quality" in result.column_names

    scores = LearnedSelector.from_pretrained(out).score_samples(ds)
    expected = select(ds, 20, "instructiongpt4", embedding_column="emb_clip", scores=scores, n_clusters=4)
    assert result["selected"] == expected.mask.tolist()
    chosen = np.asarray(result["selected"])
    assert not chosen[0]  # the error row
    assert np.nanmean(scores[chosen]) > np.nanmean(scores[~chosen])


def test_select_with_selector_errors(tmp_path, scored, capsys):
    path, ds, quality = scored
    labels = write_set_labels(tmp_path / "labels.jsonl", ds, quality)
    out = tmp_path / "sel"
    assert main(["train-selector", str(path), "--labels", str(labels), "--out", str(out), "--model", "ridge"]) == 0
    capsys.readouterr()
    base = ["select", None, "--strategy", "instructiongpt4", "--budget", "10", "--embedding-column", "emb_clip"]

    base[1] = str(path)
    rc = main([*base, "--selector", str(out), "--score-column", "score_clip", "--out", str(tmp_path / "o1")])
    assert rc == 2 and "either --score-column or --selector" in capsys.readouterr().err

    # the same data without one of the selector's metrics: the message names it.
    ds.remove_columns(["score_reward"]).save_to_disk(str(tmp_path / "partial"))
    capsys.readouterr()
    base[1] = str(tmp_path / "partial")
    assert main([*base, "--selector", str(out), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing from the data: score_reward" in err and len(err.splitlines()) == 1

    base[1] = str(path)
    assert main([*base, "--selector", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o3")]) == 2
    assert "selector folder not found" in capsys.readouterr().err


def test_train_selector_input_errors(tmp_path, scored, capsys):
    path, ds, _ = scored
    out = str(tmp_path / "sel")
    assert main(["train-selector", str(path), "--labels", str(tmp_path / "none.jsonl"), "--out", out]) == 2
    assert "label file not found" in capsys.readouterr().err
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"id": "x1", "label": 1}\n{"id": "x2", "label": 2}\n')
    assert main(["train-selector", str(path), "--labels", str(foreign), "--out", out]) == 2
    assert "none of the 2 labelled ids is in the data" in capsys.readouterr().err
    assert main(["train-selector", str(tmp_path / "missing"), "--labels", str(foreign), "--out", out]) == 2
    assert "no such folder" in capsys.readouterr().err
