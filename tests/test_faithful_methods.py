"""Each method against its paper and official code (issue 15): one reproducer per deviation that was fixed.

Every test here failed on the code before the fix (DBP clustering before deduplication, curvature in bf16,
forgetting ties on long answers, Peeling the Onion's example and token levels, the smaller deviations).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from selector.errors import ConfigError


def _concepts_with_duplicate_blob(seed: int = 0):
    """10 Gaussian concepts x 300 rows (d=32, centres N(0,1), rows = centre + 0.5 N(0,1)) plus 30 rows of
    concept 0 each copied 60 times with 0.002 N(0,1) noise; rows L2-normalised. Returns ``(X, concept)``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, 32))
    concept = np.repeat(np.arange(10), 300)
    X = centres[concept] + 0.5 * rng.normal(size=(3000, 32))
    sources = X[:30]
    copies = np.repeat(sources, 60, axis=0) + 0.002 * rng.normal(size=(1800, 32))
    X = np.vstack([X, copies])
    concept = np.concatenate([concept, np.zeros(1800, dtype=int)])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), concept


# ---- 1. DBP: deduplicate, then cluster the survivors ----------------------------------------------------------


def test_dbp_reclusters_after_deduplication():
    from selector.selection import select_arrays

    X, concept = _concepts_with_duplicate_blob()
    sel = select_arrays(X, 900, "dbp", n_clusters=20, eps=0.01)
    picked = concept[sel.mask]
    assert sel.n_selected == 900
    # clustered before dedup, 9 of 20 centroids sat on the duplicate blob and concept 0 got 265 of 900.
    assert (picked == 0).sum() <= 150
    # no duplicate of the blob is selected while other rows remain
    assert sel.info["all"]["n_duplicates"] >= 1700 and sel.info["all"]["reclustered_after_dedup"]


def test_dbp_balance_ratio_sets_the_floor():
    from selector.quota import dbp_quota

    sizes = np.array([100, 100, 100, 100])
    # cluster 0 is so complex that without a floor it would take nearly the whole budget
    d_intra = np.array([2.0, 0.0, 0.0, 0.0])
    d_inter = np.array([2.0, 1.0, 1.0, 1.0])
    # floor_j = int(N / k * ratio): with ratio 0.5 each cluster gets >= 5 of 40; with 0.9, >= 9.
    assert dbp_quota(sizes, 40, d_intra=d_intra, d_inter=d_inter).min() == 5
    q = dbp_quota(sizes, 40, d_intra=d_intra, d_inter=d_inter, balance_ratio=0.9)
    assert q.min() == 9 and q.sum() == 40
    # ratio 0: the official code still keeps one row per cluster
    q0 = dbp_quota(sizes, 40, d_intra=d_intra, d_inter=d_inter, balance_ratio=0.0)
    assert q0.min() == 1 and q0.sum() == 40
    with pytest.raises(ConfigError, match="balance_ratio"):
        dbp_quota(sizes, 40, d_intra=d_intra, d_inter=d_inter, balance_ratio=1.5)


def test_dbp_strategy_passes_the_balance_ratio():
    from selector.selection import select_arrays

    X, concept = _concepts_with_duplicate_blob()
    X, concept = X[:3000], concept[:3000]
    sel = select_arrays(X, 200, "dbp", n_clusters=10, balance_ratio=0.9, backend="sklearn")
    assert min(sel.info["all"]["quota"]) >= int(200 / 10 * 0.9)


# ---- 3. forgetting on long answers; curvature without curvature -----------------------------------------------


def _write_dynamics(path, columns):
    from selector.dynamics import write_dynamics

    write_dynamics(path, columns)
    return str(path)


def test_forgetting_counts_on_a_token_accuracy_threshold(tmp_path):
    from selector.coreset import forgetting_scores

    ids = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    epochs = [0, 1, 2] * 3
    # long answers: no sample ever gets every token right, but a climbs to 90% and drops, b stays at 30%.
    accuracy = [0.6, 0.9, 0.4, 0.2, 0.3, 0.3, 0.7, 0.8, 0.9]
    unique, scores = forgetting_scores(ids, epochs, accuracy, threshold=0.5)
    assert unique.tolist() == ["a", "b", "c"]
    assert scores.tolist() == [1.0, 2.0, 0.0]  # a forgotten once, b never learned (max + 1), c learned for good
    # with threshold 1.0 (every token right, the old rule) all three tie at "never learned"
    assert forgetting_scores(ids, epochs, accuracy, threshold=1.0)[1].tolist() == [1.0, 1.0, 1.0]


def test_forgetting_strategy_uses_accuracy_and_warns_on_ties(tmp_path, caplog):
    from selector.selection import select_arrays

    n = 20
    ids = [f"r{i:02d}" for i in range(n)]
    rng = np.random.default_rng(0)
    acc = rng.uniform(0.3, 0.9, size=(n, 3))
    path = _write_dynamics(
        tmp_path / "d.parquet",
        {
            "id": [i for i in ids for _ in range(3)],
            "epoch": [0, 1, 2] * n,
            "correct": [False] * (3 * n),  # nothing is ever fully right on long answers
            "accuracy": acc.reshape(-1).astype(np.float32),
        },
    )
    sel = select_arrays(None, 5, "forgetting", ids=np.array(ids), dynamics=path)
    learned = (acc >= 0.5).astype(int)
    events = ((learned[:, :-1] == 1) & (learned[:, 1:] == 0)).sum(1)
    never = learned.sum(1) == 0
    expected = np.where(never, events.max() + 1, events)
    assert np.array_equal(np.sort(expected[sel.mask])[::-1], np.sort(expected)[::-1][:5])
    # the old rule (every token right) makes every row tie: that is a warning, not a silent id-order pick
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        select_arrays(None, 5, "forgetting", ids=np.array(ids), dynamics=path, accuracy_threshold=1.0)
    assert any("tie" in r.getMessage() for r in caplog.records)


def test_curvature_on_a_file_without_curvature_is_an_error(tmp_path):
    from selector.selection import select_arrays

    path = _write_dynamics(
        tmp_path / "d.parquet",
        {"id": ["a", "b"], "epoch": [0, 0], "loss": [0.1, 0.2], "curvature": [np.nan, np.nan]},
    )
    with pytest.raises(ConfigError, match="dynamics_curvature"):
        select_arrays(None, 1, "curvature", ids=np.array(["a", "b"]), dynamics=path)
    no_column = _write_dynamics(tmp_path / "e.parquet", {"id": ["a", "b"], "epoch": [0, 0], "loss": [0.1, 0.2]})
    with pytest.raises(ConfigError, match="dynamics_curvature"):
        select_arrays(None, 1, "curvature", ids=np.array(["a", "b"]), dynamics=no_column)
    with pytest.raises(ConfigError, match="dynamics_grad_norm"):
        select_arrays(None, 1, "grand", ids=np.array(["a", "b"]), dynamics=no_column)


# ---- 5. smaller deviations ---------------------------------------------------------------------------------------


def test_given_cluster_centroids_average_unit_rows():
    from selector.cluster import cluster_centers, l2_normalize

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 60)
    scaled = X * rng.uniform(0.1, 50.0, size=(60, 1)).astype(np.float32)
    expected = l2_normalize(np.stack([l2_normalize(X)[labels == j].mean(0) for j in range(3)]))
    np.testing.assert_allclose(cluster_centers(scaled, labels, 3), expected, atol=1e-5)


def test_semdedup_with_given_clusters_ignores_row_norms():
    from selector.selection import select_arrays

    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 16)).astype(np.float32)
    X[100:150] = X[:50] + 0.01 * rng.normal(size=(50, 16)).astype(np.float32)
    clusters = rng.integers(0, 4, 200)
    clusters[100:150] = clusters[:50]
    scaled = X * rng.uniform(0.1, 50.0, size=(200, 1)).astype(np.float32)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    a = select_arrays(unit, 150, "semdedup", clusters=clusters)
    b = select_arrays(scaled, 150, "semdedup", clusters=clusters)
    assert np.array_equal(a.mask, b.mask)


@pytest.mark.parametrize("name", ["ssl_prototypes", "semdedup", "dbp"])
def test_n_clusters_above_the_pool_warns(name, caplog):
    from selector.selection import select_arrays

    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        select_arrays(X, 10, name, n_clusters=100, backend="sklearn")
    assert any("n_clusters=100" in r.getMessage() and "30" in r.getMessage() for r in caplog.records)


def test_el2n_and_grand_average_over_seeds(tmp_path):
    from selector.selection import select_arrays

    ids = ["a", "b", "c"]
    runs = []
    for seed, el2n in enumerate(([0.9, 0.1, 0.5], [0.1, 0.9, 0.6])):
        runs.append(
            _write_dynamics(
                tmp_path / f"seed{seed}.parquet",
                {
                    "id": ids * 2,
                    "epoch": [0, 0, 0, 5, 5, 5],
                    "el2n": np.array(el2n + [9.0, 0.0, 0.0], dtype=np.float32),  # late epoch: left out
                    "grad_norm": np.array(el2n + [9.0, 0.0, 0.0], dtype=np.float32),
                },
            )
        )
    for name in ("el2n", "grand"):
        sel = select_arrays(None, 1, name, ids=np.array(ids), dynamics=runs, max_epoch=0)
        # mean over seeds at epoch 0: a 0.5, b 0.5, c 0.55 -> c
        assert sel.mask.tolist() == [False, False, True]
        assert sel.info["all"]["n_runs"] == 2


def test_instructiongpt4_prompt_is_the_upstream_wording():
    from metrics.judge_prompts import available_prompts, load_prompt

    prompts = available_prompts()
    assert prompts["instructiongpt4"] == [1, 2]
    upstream = load_prompt("instructiongpt4")
    assert upstream.key == "instructiongpt4@v2"
    # our earlier wording stays loadable under its own name, and pinned v1 keeps its cache key
    ours = load_prompt("vlselect_quality")
    assert ours.user == load_prompt("instructiongpt4@v1").user
    assert ours.key == "vlselect_quality@v1"
    assert upstream.user != ours.user
    assert upstream.parse("Score: 80")[0] == 80.0


# ---- 2. curvature in fp32 whatever the training precision ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    from tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm") / "model")


_ANSWERS = [
    "red",
    "blue sky",
    "a green field with two cows",
    "yes",
    "no, it is not",
    "three",
    "the cat is sitting on the table",
    "white",
    "a man standing in the street",
    "black and white",
    "two dogs",
    "it looks like a bird",
    "green",
    "what a picture",
    "the red car",
    "blue",
]


def _curvature_batch(model_path, n=16):
    import io

    from PIL import Image
    from transformers import AutoProcessor

    from selector.training.data import ChatCollator

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
        rows.append(
            {
                "id": f"r{i}",
                "image": {"bytes": buf.getvalue(), "path": None},
                "images": [],
                "messages": [
                    {"role": "user", "content": "<image>\nDescribe the picture."},
                    {"role": "assistant", "content": _ANSWERS[i % len(_ANSWERS)]},
                ],
                "error": None,
                "source": "pictures",
            }
        )
    from datasets import Dataset

    from selector.data.schema import features
    from selector.training.data import RowDataset

    ds = Dataset.from_list(rows, features=features())
    processor = AutoProcessor.from_pretrained(model_path)
    items = [RowDataset(ds, list(range(n)))[i] for i in range(n)]
    return ChatCollator(processor, 256)(items)


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)).statistic)


def _as(batch, dtype):
    import torch

    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in batch.items()}


def test_curvature_under_bf16_matches_a_float64_reference(tiny_vlm):
    import copy

    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForImageTextToText

    from selector.training.callbacks import curvature

    torch.manual_seed(0)
    batch = _curvature_batch(tiny_vlm)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm, dtype=torch.float32)
    with torch.no_grad():
        # The random init (std 0.02) makes the loss so curved around the embeddings that any rounding is lost in
        # it; unit-scale token and image embeddings, as trained models have, make the curvature of a realistic
        # size next to the gradient. At this scale the old bf16 finite difference scored Spearman 0.46 / 0.62.
        model.get_input_embeddings().weight.mul_(50.0)
        model.model.multi_modal_projector.linear_2.weight.mul_(50.0)
        model.model.multi_modal_projector.linear_2.bias.mul_(50.0)
    reference = curvature(copy.deepcopy(model).double(), _as(batch, torch.float64), seed=3).numpy()
    assert np.all(np.isfinite(reference)) and np.unique(reference).size == reference.size

    # bf16 mixed precision as the engine trains: an Accelerate-prepared model whose forward runs in autocast
    from accelerate.state import AcceleratorState

    accelerator = Accelerator(mixed_precision="bf16", cpu=True)
    try:
        prepared = accelerator.prepare(copy.deepcopy(model))
        with accelerator.autocast():
            mixed = curvature(accelerator.unwrap_model(prepared), batch, seed=3).numpy()
    finally:
        AcceleratorState._reset_state(True)  # later tests build their own Accelerator
    assert _spearman(mixed, reference) >= 0.95

    # bf16 weights (torch_dtype: bfloat16); the reference is the same bf16 weights evaluated in float64
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    reference_bf16 = curvature(copy.deepcopy(bf16).double(), _as(batch, torch.float64), seed=3).numpy()
    values = curvature(bf16, _as(batch, torch.bfloat16), seed=3).numpy()
    assert _spearman(values, reference_bf16) >= 0.95
    # the measurement leaves the model as it found it
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())


def test_token_statistics_record_token_accuracy():
    import torch

    from selector.training.callbacks import token_statistics

    logits = torch.zeros(1, 5, 4)
    for t, predicted in enumerate([1, 2, 3, 1]):  # the targets are 1, 2, 3, 2: 3 of 4 answer tokens right
        logits[0, t, predicted] = 5.0
    labels = torch.tensor([[-100, 1, 2, 3, 2]])
    per = token_statistics(logits, labels)["per_example"]
    assert float(per["accuracy"][0]) == pytest.approx(0.75)
    assert float(per["correct"][0]) == 0.0


# ---- 4. Peeling the Onion: example level and token level --------------------------------------------------------


def test_peeling_removes_a_random_subset_before_training_and_swaps_from_it():
    from selector.training.callbacks import DynamicsRecorder, initial_removal, prune_step

    active, pool = initial_removal(100, 0.2, seed=0)
    assert len(active) == 80 and len(pool) == 20 and set(active).isdisjoint(pool)
    assert sorted(active + pool) == list(range(100))
    assert active != list(range(80))  # random, not the first rows
    assert initial_removal(100, 0.2, seed=0) == (active, pool) and initial_removal(100, 0.2, seed=1) != (active, pool)
    rec = DynamicsRecorder([f"r{i}" for i in range(100)])
    for i in active:  # every active row learned, r{i} with lower loss for smaller i
        rec.add(0, 1, [i], {"loss": [i / 100], "accuracy": [0.9], "correct": [0]})
    new_active, new_pool, dropped, restored = prune_step(active, pool, rec, 5, seed=3)
    assert dropped == sorted(active)[:5]  # the most unforgettable: learned, lowest loss
    assert len(restored) == 5 and set(restored) <= set(pool)
    # the swap-back is a random draw from the removed rows, as upstream, not first-in-first-out
    draws = {tuple(prune_step(active, pool, rec, 5, seed=s)[3]) for s in range(5)}
    assert len(draws) > 1
    assert len(new_active) == 80 and set(dropped) <= set(new_pool) and len(new_pool) == 20


@pytest.fixture(scope="module")
def tiny_vlm_16_patches(tmp_path_factory) -> str:
    from tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm-32") / "model", image_size=32)


def test_visual_token_pruning_keeps_the_patches_cls_attends_to(tiny_vlm_16_patches):
    import torch
    from transformers import AutoModelForImageTextToText

    from selector.training.modeling import VisualTokenPruning

    torch.manual_seed(0)
    eager = AutoModelForImageTextToText.from_pretrained(tiny_vlm_16_patches, attn_implementation="eager").eval()
    pixels = torch.randn(3, 3, 32, 32)
    layer = eager.config.vision_feature_layer
    with torch.no_grad():
        out = eager.model.vision_tower(pixels, output_attentions=True, output_hidden_states=True)
        cls = out.attentions[layer][:, :, 0, 1:].mean(1)  # (3 images, 16 patches)
        full = eager.model.multi_modal_projector(out.hidden_states[layer][:, 1:])
        pruner = VisualTokenPruning(eager, 0.25)
        with pruner.pruning():
            kept = eager.model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output
    assert pruner.n_keep(16) == 4
    for i in range(3):
        top = torch.topk(cls[i], 4).indices.sort().values
        torch.testing.assert_close(kept[i], full[i, top], rtol=1e-5, atol=1e-6)
    # outside the context the model is untouched
    assert "get_image_features" not in vars(eager.model)


def test_visual_token_pruning_halves_the_image_tokens_in_training(tiny_vlm_16_patches, tmp_path):
    from test_training import COLORS, _row, _save

    from selector.training import finetune

    data = _save([_row(i, list(COLORS)[i % 4]) for i in range(4)], tmp_path / "four")
    runs = {}
    for ratio in (1.0, 0.5):
        runs[ratio] = finetune.train(
            "tiny_cpu",
            model_name_or_path=tiny_vlm_16_patches,
            dataset=data,
            output_dir=str(tmp_path / f"r{ratio}"),
            max_steps=2,
            visual_token_ratio=ratio,
            save_model=False,
        )
    # 2 rows per step, one 32x32 image each: 16 patch tokens per image, 8 after pruning
    assert runs[1.0]["visual_tokens_history"] == [32, 32]
    assert runs[0.5]["visual_tokens_history"] == [16, 16]
    assert np.all(np.isfinite(runs[0.5]["loss_history"]))


def test_visual_token_pruning_refuses_idefics3_with_the_reason(tmp_path):
    from tiny_vlm import build_tiny_idefics3
    from transformers import AutoModelForImageTextToText

    from selector.training.modeling import VisualTokenPruning

    model = AutoModelForImageTextToText.from_pretrained(build_tiny_idefics3(tmp_path / "idefics3"))
    with pytest.raises(ConfigError, match="no \\[CLS\\] token"):
        VisualTokenPruning(model, 0.5)
