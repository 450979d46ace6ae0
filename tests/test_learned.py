"""LearnedSelector: quality on synthetic pools with label noise, modes, NaN policy, save/load, labels, Hub."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import spearmanr

from selector.errors import ConfigError, DataError, VLSelectError
from selector.features import FeatureTable
from selector.learned import LearnedSelector, align_labels, read_labels, top_budget

# bounded epochs: enough to converge on these pools (best epochs ~20-30), so the suite stays fast on a busy machine.
FAST = {"max_epochs": 60, "patience": 15, "batch_size": 8}


def make_pool(n, seed, target="monotone", dim=16, as_dataset=True):
    """A scored pool: 4 score columns (different scales), an image and a text embedding (L2-normalised).

    The true per-row quality is a function of the latent features: ``monotone`` (increasing in two scores and
    one embedding direction) or ``interact`` (a product of two scores plus a sign flip set by the image).
    """
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, 4))
    latent = rng.normal(size=(n, 3))
    basis = np.random.default_rng(1234).normal(size=(3, 2 * dim))  # same embedding geometry in every pool
    img = latent @ basis[:, :dim] + 0.3 * rng.normal(size=(n, dim))
    txt = latent[:, :2] @ basis[:2, dim:] + 0.3 * rng.normal(size=(n, dim))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    if target == "monotone":
        quality = np.tanh(s[:, 0]) + 0.5 * s[:, 1] + 0.3 * latent[:, 0]
    else:
        quality = s[:, 0] * s[:, 1] + 0.5 * np.abs(s[:, 2]) * np.sign(latent[:, 0])
    columns = {
        "id": [f"r{i:05d}" for i in range(n)],
        "messages": [[{"role": "user", "content": "<image> describe"}, {"role": "assistant", "content": "a"}]] * n,
        "error": [None] * n,
        "source": ["synthetic"] * n,
    }
    for j in range(4):
        # each metric on its own scale, as clip / reward / length / judge are.
        columns[f"score_m{j}"] = (s[:, j] * (j + 1) + 3 * j).astype(np.float32)
    columns["emb_img"] = img.astype(np.float32)
    columns["emb_txt"] = txt.astype(np.float32)
    if not as_dataset:
        return columns, quality
    from datasets import Dataset

    return Dataset.from_dict(columns), quality


def kmeans_groups(ds, k, seed=0):
    """Subsets the way InstructionGPT-4 builds them: k-means on the samples' features."""
    from sklearn.cluster import KMeans

    scores = np.column_stack([np.asarray(ds[f"score_m{j}"]) for j in range(4)])
    scores = (scores - scores.mean(0)) / scores.std(0)
    feats = np.column_stack([scores, 2 * np.asarray(ds["emb_img"]), 2 * np.asarray(ds["emb_txt"])])
    return KMeans(k, n_init=1, random_state=seed).fit_predict(feats)


def set_labels(quality, groups, noise=0.1, seed=1):
    """Group label = mean true quality of the group + Gaussian noise (noise x the labels' spread)."""
    keys = np.unique(groups)
    means = np.array([quality[groups == g].mean() for g in keys])
    noisy = means + np.random.default_rng(seed).normal(scale=noise * means.std(), size=len(keys))
    return noisy[np.searchsorted(keys, groups)]


@pytest.fixture(scope="module")
def test_pool():
    return make_pool(1500, seed=99)


@pytest.fixture(scope="module")
def trained():
    """A small set-mode network and ridge, shared by the persistence and NaN-policy tests."""
    ds, quality = make_pool(400, seed=3)
    groups = kmeans_groups(ds, 20)
    y = set_labels(quality, groups)
    net = LearnedSelector(max_epochs=15, patience=15, batch_size=8).fit(ds, y, groups=groups)
    ridge = LearnedSelector(model="ridge").fit(ds, y, groups=groups)
    return ds, net, ridge


# ------------------------------------------------------------------------------------------- quality tests


@pytest.mark.parametrize("model", ["ridge", "attention"])
def test_monotone_target_30_groups(model, test_pool):
    ds, quality = make_pool(900, seed=0)
    groups = kmeans_groups(ds, 30)
    params = {"max_epochs": 40, "patience": 10, "batch_size": 8}
    sel = LearnedSelector(model=model, **params).fit(ds, set_labels(quality, groups), groups=groups)
    assert sel.mode_ == "set" and sel.n_units_ == 30
    test_ds, test_quality = test_pool
    rho = spearmanr(sel.score_samples(test_ds), test_quality).statistic
    assert rho >= 0.8, f"{model}: held-out Spearman {rho:.3f}"


def test_interactions_network_beats_ridge():
    ds, quality = make_pool(1200, seed=5, target="interact")
    groups = kmeans_groups(ds, 100)
    y = set_labels(quality, groups)
    test_ds, test_quality = make_pool(1500, seed=98, target="interact")
    rho = {}
    for model in ("ridge", "attention"):
        sel = LearnedSelector(model=model, **FAST).fit(ds, y, groups=groups)
        rho[model] = spearmanr(sel.score_samples(test_ds), test_quality).statistic
    assert rho["attention"] >= rho["ridge"] + 0.1, rho


@pytest.mark.parametrize("model", ["ridge", "attention"])
def test_per_row_labels(model, test_pool):
    ds, quality = make_pool(600, seed=7)
    y = quality + np.random.default_rng(2).normal(scale=0.2 * quality.std(), size=len(quality))
    sel = LearnedSelector(model=model, max_epochs=30, patience=10, batch_size=64).fit(ds, y)
    assert sel.mode_ == "row" and sel.n_units_ == 600 and sel.validation_["n"] == 120
    test_ds, test_quality = test_pool
    assert spearmanr(sel.score_samples(test_ds), test_quality).statistic >= 0.8


def test_set_mode_scores_are_in_label_units(trained):
    """Set-level training regresses the group mean of the row scores onto the group label."""
    ds, quality = make_pool(400, seed=3)
    groups = kmeans_groups(ds, 20)
    y = set_labels(quality, groups)
    _, _, ridge = trained
    scores = ridge.score_samples(ds)
    group_means = np.array([scores[groups == g].mean() for g in range(20)])
    labels = np.array([y[groups == g][0] for g in range(20)])
    assert abs(group_means.mean() - labels.mean()) < 0.1 * labels.std()
    assert np.corrcoef(group_means, labels)[0, 1] > 0.9


def test_best_epoch_is_kept_on_held_out_groups(trained):
    _, net, _ = trained
    history = net.history_
    val = [h["val_loss"] for h in history]
    assert net.best_epoch_ == int(np.argmin(val)) + 1
    assert net.validation_["n"] == 4 and net.validation_["loss"] == pytest.approx(min(val), rel=1e-5)


# --------------------------------------------------------------------------------------- behaviour per row


def test_score_depends_on_the_row_only(trained):
    ds, net, _ = trained
    full = net.score_samples(ds)
    perm = np.random.default_rng(0).permutation(len(ds))
    assert np.allclose(net.score_samples(ds.select(perm)), full[perm], atol=1e-5)
    assert np.allclose(net.score_samples(ds.select(range(7))), full[:7], atol=1e-5)
    assert np.allclose(net.score_samples(ds, batch_size=3), full, atol=1e-5)


def test_nan_policy_error_rows_and_missing_features(trained):
    ds, net, ridge = trained
    cols = {c: list(ds[c]) for c in ds.column_names}
    cols["error"][0] = "missing_image: a.jpg not found"
    for c in ("score_m0", "score_m1", "score_m2", "score_m3"):
        cols[c][1] = float("nan")  # every score missing, embeddings present -> imputed, finite
        cols[c][2] = float("nan")
    cols["emb_img"][2] = [float("nan")] * 16  # nothing left for row 2 -> NaN
    cols["emb_txt"][2] = [float("nan")] * 16
    cols["score_m3"][3] = float("nan")  # one score missing -> imputed to the pool mean
    for sel in (net, ridge):
        scores = sel.score_samples(cols)
        assert np.isnan(scores[0]) and np.isfinite(scores[1]) and np.isnan(scores[2]) and np.isfinite(scores[3])
        assert np.isfinite(scores[4:]).all()
        sel.budget = len(ds)  # asks for every row: the two NaN rows are still left out
        mask = sel.predict(cols)
        assert mask.sum() == len(ds) - 2 and not mask[0] and not mask[2]


def test_fit_leaves_out_error_rows_and_unlabelled_rows_shape_the_recipe():
    ds, quality = make_pool(300, seed=11, as_dataset=False)
    y = quality.copy()
    y[200:] = np.nan  # unlabelled: used for standardisation / PCA only
    ds["error"][0] = "corrupt_image: truncated"
    ds["score_m0"][0] = np.nan
    sel = LearnedSelector(model="ridge").fit(ds, y)
    assert sel.n_train_rows_ == 199
    pool_mean = np.nanmean(np.delete(ds["score_m0"], 0).astype(np.float64))
    assert sel.feature_spec_.score_mean[0] == pytest.approx(pool_mean, rel=1e-6)


def test_pca_features_are_whitened_and_saved_order(trained):
    ds, net, _ = trained
    spec = net.feature_spec_
    assert spec.embedding_columns == ["emb_img", "emb_txt"] and spec.n_components == [6, 6]
    assert spec.score_columns == ["score_m0", "score_m1", "score_m2", "score_m3"]
    scores, embeddings, usable = spec.transform(FeatureTable(ds))
    assert usable.all()
    assert np.allclose(scores.std(0), 1.0, atol=0.02) and np.allclose(scores.mean(0), 0.0, atol=0.02)
    for emb in embeddings:
        assert emb.shape == (len(ds), 6)
        assert np.allclose(emb.std(0, ddof=1), 1.0, atol=1e-3) and np.allclose(emb.mean(0), 0.0, atol=1e-4)


def test_same_seed_same_scores_other_seed_differs():
    ds, quality = make_pool(200, seed=4)
    groups = kmeans_groups(ds, 10)
    y = set_labels(quality, groups)
    params = {"max_epochs": 5, "patience": 5}
    a = LearnedSelector(random_state=1, **params).fit(ds, y, groups=groups).score_samples(ds)
    b = LearnedSelector(random_state=1, **params).fit(ds, y, groups=groups).score_samples(ds)
    c = LearnedSelector(random_state=2, **params).fit(ds, y, groups=groups).score_samples(ds)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_permuted_pool_gives_the_same_network():
    ds, quality = make_pool(150, seed=5)
    groups = kmeans_groups(ds, 10)
    y = set_labels(quality, groups)
    params = {"max_epochs": 4, "patience": 4}
    a = LearnedSelector(**params).fit(ds, y, groups=groups).score_samples(ds)
    perm = np.random.default_rng(0).permutation(len(ds))
    shuffled = ds.select(perm)
    b = LearnedSelector(**params).fit(shuffled, y[perm], groups=np.asarray(groups)[perm]).score_samples(shuffled)
    np.testing.assert_allclose(b, a[perm], rtol=0, atol=1e-6)


def test_predict_budget_ties_and_errors():
    scores = np.array([1.0, 3.0, 3.0, np.nan, 2.0])
    ids = ["e", "d", "c", "b", "a"]
    assert top_budget(scores, ids, 1).tolist() == [False, False, True, False, False]  # tie -> smaller id
    assert top_budget(scores, ids, 0.6).tolist() == [False, True, True, False, True]
    assert top_budget(scores, ids, 0.5).sum() == 3  # the shared rule: a fraction rounds half up (2.5 -> 3)
    assert top_budget(scores, ids, "40%").sum() == top_budget(scores, ids, 2.0).sum() == 2
    assert top_budget(scores, ids, 10).sum() == 4  # NaN never, budget capped with a warning
    for bad in (None, 1.5, -1, 0, "three", True):
        with pytest.raises(ConfigError):
            top_budget(scores, ids, bad)


def test_estimator_protocol():
    import inspect

    from sklearn.base import BaseEstimator, clone

    sel = LearnedSelector()
    assert isinstance(sel, BaseEstimator)
    assert sel.get_params()["model"] == "attention" and repr(sel) == "LearnedSelector()"
    # get_params comes from the signature: every constructor argument, nothing listed by hand.
    assert set(sel.get_params()) == set(inspect.signature(LearnedSelector).parameters)
    other = clone(LearnedSelector(model="ridge", budget=5))
    assert other.get_params()["budget"] == 5 and not hasattr(other, "feature_spec_")
    assert other.set_params(budget=7) is other and other.budget == 7
    with pytest.raises(ConfigError, match="n_estimators"):
        sel.set_params(n_estimators=3)
    X, quality = make_pool(60, seed=0, as_dataset=False)
    fitted = LearnedSelector(model="ridge")
    assert fitted.fit(X, quality) is fitted
    refit = clone(fitted).fit(X, quality)
    np.testing.assert_array_equal(refit.score_samples(X), fitted.score_samples(X))
    assert not [k for k in vars(clone(fitted)) if k.endswith("_")]  # fitted state does not survive clone
    with pytest.raises(VLSelectError, match="not fitted"):
        sel.score_samples({"score_a": [1.0]})


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model": "mlp"}, "model must be"),
        ({"n_heads": 3}, "must divide"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"n_components": 0}, "n_components"),
        ({"budget": 0}, "budget: must be above 0"),
        ({"random_state": "seed"}, "random_state must be an int"),
    ],
)
def test_invalid_parameters(params, message):
    X, quality = make_pool(50, seed=0, as_dataset=False)
    with pytest.raises(ConfigError, match=message):
        LearnedSelector(**params).fit(X, quality)


def test_fit_input_errors():
    X, quality = make_pool(60, seed=0, as_dataset=False)
    with pytest.raises(DataError, match="60 rows"):
        LearnedSelector(model="ridge").fit(X, quality[:10])
    with pytest.raises(DataError, match="all labels are equal"):
        LearnedSelector(model="ridge").fit(X, np.ones(60))
    groups = np.arange(60) % 5
    y = quality.copy()  # not constant inside a group
    with pytest.raises(DataError, match="different labels"):
        LearnedSelector(model="ridge").fit(X, y, groups=groups)
    with pytest.raises(DataError, match="at least 2 labelled groups"):
        LearnedSelector(model="ridge").fit(X, np.ones(60), groups=np.zeros(60))
    with pytest.raises(DataError, match="at least 2 labelled usable rows, got 0"):
        LearnedSelector(model="ridge").fit(X, np.full(60, np.nan))
    with pytest.raises(DataError, match="every row has `error` set"):
        LearnedSelector(model="ridge").fit({**X, "error": ["bad_row: x"] * 60}, quality)
    with pytest.raises(DataError, match="no usable feature"):
        LearnedSelector(model="ridge").fit({"id": X["id"], "other": X["score_m0"]}, quality)
    with pytest.raises(DataError, match="score_nope"):
        LearnedSelector(model="ridge", score_columns=["score_nope"]).fit(X, quality)
    with pytest.raises(DataError, match="X must be"):
        LearnedSelector(model="ridge").fit([[1.0]], [1.0])


# ----------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("which", ["network", "ridge"])
def test_save_load_identical_scores(trained, tmp_path, which):
    ds, net, ridge = trained
    sel = net if which == "network" else ridge
    path = sel.save_pretrained(tmp_path / "sel")
    assert {p.name for p in path.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    config = json.loads((path / "config.json").read_text())
    assert config["metrics"] == ["m0", "m1", "m2", "m3", "img", "txt"]
    assert config["required_columns"] == ["score_m0", "score_m1", "score_m2", "score_m3", "emb_img", "emb_txt"]
    assert config["feature_spec"]["n_components"] == [6, 6] and "pca" not in config["feature_spec"]
    loaded = LearnedSelector.from_pretrained(str(path))
    np.testing.assert_array_equal(loaded.score_samples(ds), sel.score_samples(ds))
    assert loaded.score_columns == config["feature_spec"]["score_columns"]  # the resolved columns, not None
    same = ("model", "n_components", "d_model", "n_heads", "n_layers", "random_state", "alphas")
    assert {k: loaded.get_params()[k] for k in same} == {k: sel.get_params()[k] for k in same}
    card = (path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vlselect") and "`score_m0`" in card and "`emb_img`" in card


def test_format_version_1_folders_still_load(trained, tmp_path):
    """Version 1 stored the feature spec under "recipe"; folders saved then load and score the same."""
    ds, _, ridge = trained
    path = ridge.save_pretrained(tmp_path / "sel")
    config = json.loads((path / "config.json").read_text())
    config["recipe"] = config.pop("feature_spec")
    config["format_version"] = 1
    (path / "config.json").write_text(json.dumps(config))
    np.testing.assert_array_equal(LearnedSelector.from_pretrained(path).score_samples(ds), ridge.score_samples(ds))


def test_model_card_is_a_valid_hub_card(trained, tmp_path):
    from huggingface_hub import ModelCard

    _, net, _ = trained
    card = ModelCard.load(net.save_pretrained(tmp_path / "sel", repo_id="me/sel") / "README.md")
    assert card.data.library_name == "vlselect" and "instructiongpt4" in card.data.tags
    assert "| `emb_img` | embedding (16-d) | PCA to 6 whitened components fitted on the pool |" in card.text
    assert 'LearnedSelector.from_pretrained("me/sel")' in card.text and "best epoch" in card.text


def test_empty_error_string_means_usable():
    """The shared row rule: error None, NaN or "" is usable; anything else is not."""
    X, quality = make_pool(60, seed=0, as_dataset=False)
    X["error"] = [None, float("nan"), "", "corrupt_image: x"] + [None] * 56
    scores = LearnedSelector(model="ridge").fit(X, quality).score_samples(X)
    assert np.isfinite(scores[:3]).all() and np.isnan(scores[3])


def test_loading_on_data_without_its_metrics_names_them(trained, tmp_path):
    ds, net, _ = trained
    path = net.save_pretrained(tmp_path / "sel")
    loaded = LearnedSelector.from_pretrained(path)
    partial = ds.remove_columns(["score_m2", "emb_txt"])
    with pytest.raises(DataError, match=r"missing from the data: score_m2, emb_txt"):
        loaded.score_samples(partial)
    wrong_dim = {c: ds[c] for c in ds.column_names if c != "emb_img"} | {"emb_img": np.zeros((len(ds), 8))}
    with pytest.raises(DataError, match="dimension 8"):
        loaded.score_samples(wrong_dim)


def test_from_pretrained_errors(tmp_path, monkeypatch):
    with pytest.raises(VLSelectError, match="not a vlselect selector"):
        LearnedSelector.from_pretrained(tmp_path)  # a folder without the files
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(VLSelectError, match="invalid JSON"):
        LearnedSelector.from_pretrained(tmp_path)
    # not a folder: a Hub id, fetched with snapshot_download; here a fake Hub that has no such repository
    # (huggingface_hub raises OSError subclasses for offline, 404 and gated) must give a clean one-line error.
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    asked = []

    def offline_hub(repo_id, revision=None, repo_type=None, allow_patterns=None, **kwargs):
        validate_repo_id(repo_id)  # the real id check: HFValidationError for a malformed id
        asked.append((repo_id, revision, repo_type, sorted(allow_patterns)))
        raise LocalEntryNotFoundError("offline and not in the local cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline_hub)
    with pytest.raises(VLSelectError, match="could not load selector 'vlselect-test/no-such-selector'"):
        LearnedSelector.from_pretrained("vlselect-test/no-such-selector")
    assert asked == [
        ("vlselect-test/no-such-selector", None, "model", ["README.md", "config.json", "model.safetensors"])
    ]
    with pytest.raises(VLSelectError):
        LearnedSelector.from_pretrained("not a valid//id")


def test_push_to_hub_uploads_the_saved_folder(trained, monkeypatch):
    import huggingface_hub

    _, _, ridge = trained
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, repo_type, private, exist_ok):
            calls["create"] = (repo_id, repo_type, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, repo_type, commit_message, revision):
            from pathlib import Path

            calls["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = ridge.push_to_hub("me/my-selector", private=True, token="t")
    assert url == "https://huggingface.co/me/my-selector/commit/abc"
    assert calls["create"] == ("me/my-selector", "model", True, True) and calls["token"] == "t"
    assert set(calls["files"]) == {"config.json", "model.safetensors", "README.md"}
    assert b"library_name: vlselect" in calls["files"]["README.md"]
    assert b'LearnedSelector.from_pretrained("me/my-selector")' in calls["files"]["README.md"]


# -------------------------------------------------------------------------------------------------- labels


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_read_and_align_labels(tmp_path, caplog):
    path = write_jsonl(
        tmp_path / "l.jsonl",
        [{"id": "a", "group": 0, "label": 1.5}, {"id": "b", "group": 0, "label": 1.5}, "",
         {"id": "c", "group": "1", "label": 2}, {"id": "zz", "group": 1, "label": 2}],
    )  # fmt: skip
    rows = read_labels(path)
    assert [r["id"] for r in rows] == ["a", "b", "c", "zz"] and rows[2]["label"] == 2.0
    y, groups = align_labels(["c", "x", "a", "b"], rows)
    assert np.array_equal(y, [2.0, np.nan, 1.5, 1.5], equal_nan=True)
    assert groups.tolist() == ["1", None, "0", "0"]
    assert "1 of 4 labelled ids are not in the data" in caplog.text
    per_row = write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "label": 1}, {"id": "b", "label": 0, "group": None}])
    y, groups = align_labels(["a", "b"], read_labels(per_row))
    assert groups is None and y.tolist() == [1.0, 0.0]
    with pytest.raises(DataError, match="none of the 2 labelled ids"):
        align_labels(["q"], read_labels(per_row))


@pytest.mark.parametrize(
    "rows, message",
    [
        (['{"id": "a", "label": 1}', "", "{oops"], "invalid JSON on line 3"),
        (['{"id": "a", "label": 1}', "", '{"id": "b"}'], ':3: each line needs "id" and "label"'),
        ([{"id": "a"}], 'needs "id" and "label"'),
        ([{"id": "a", "label": "high"}], "finite number"),
        (['{"id": "a", "label": NaN}'], "finite number"),
        ([{"id": "a", "label": 1}, {"id": "a", "label": 2}], "appears twice"),
        ([{"id": "a", "label": 1, "group": 0}, {"id": "b", "label": 2}], "have no group"),
        ([{"id": "a", "label": 1, "group": 0}, {"id": "b", "label": 2, "group": 0}], "different labels"),
        ([], "has no rows"),
    ],
)
def test_bad_label_files(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        read_labels(write_jsonl(tmp_path / "bad.jsonl", rows))


def test_missing_label_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_labels(tmp_path / "nope.jsonl")


def test_import_is_light():
    code = "import sys, selector.learned, selector.commands.train_selector; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_dataset_with_null_entries_and_an_index_mapping(trained):
    """None vectors / scores in a real Dataset (arrow nulls) count as missing; select() order is honoured."""
    ds, net, _ = trained

    def drop_first(batch, idx):
        return {
            "emb_img": [None if i == 0 else v for i, v in zip(idx, batch["emb_img"])],
            "score_m0": [None if i == 0 else v for i, v in zip(idx, batch["score_m0"])],
        }

    holed = ds.map(drop_first, batched=True, with_indices=True)
    scores = net.score_samples(holed.select([5, 0, 6]))
    assert np.isfinite(scores).all()
    full = net.score_samples(ds)
    assert np.allclose(scores[[0, 2]], full[[5, 6]], atol=1e-5) and abs(scores[1] - full[0]) > 1e-6


@pytest.mark.gpu
def test_network_trains_on_cuda_and_loads_on_cpu(tmp_path):
    ds, quality = make_pool(300, seed=8)
    groups = kmeans_groups(ds, 15)
    sel = LearnedSelector(device="cuda", max_epochs=5).fit(ds, set_labels(quality, groups), groups=groups)
    on_gpu = sel.score_samples(ds)
    loaded = LearnedSelector.from_pretrained(sel.save_pretrained(tmp_path / "sel"), device="cpu")
    assert np.allclose(loaded.score_samples(ds), on_gpu, atol=1e-4)


def test_dataframe_and_mapping_inputs_score_like_the_dataset(trained):
    ds, net, ridge = trained
    frame = ds.select_columns(["id", "error", "score_m0", "score_m1", "score_m2", "score_m3", "emb_img", "emb_txt"])
    for sel in (net, ridge):
        expected = sel.score_samples(ds)
        np.testing.assert_allclose(sel.score_samples(frame.to_pandas()), expected, atol=1e-6)
        np.testing.assert_allclose(sel.score_samples(frame.to_dict()), expected, atol=1e-6)
