"""``safety``: offensive language, each kind of personal data, the combined score, NaN rules, the install hint."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from metric_rows import turns

from metrics.safety import SafetyScore, count_cards, count_emails, count_ips, count_phones, luhn_valid

pytest.importorskip("profanity_check")

CLEAN = "The red car is parked in front of the old house."


def _score(texts, metric=None):
    metric = metric or SafetyScore()
    batch = {
        "id": [f"r{i}" for i in range(len(texts))],
        "error": [None] * len(texts),
        "messages": [[{"role": "assistant", "content": t}] for t in texts],
    }
    return metric.score_batch(batch)


def test_clean_text_is_safe():
    out = _score([CLEAN])
    assert out["score_safety"][0] > 0.8
    for part in ("emails", "phones", "cards", "ips"):
        assert out[f"score_safety_{part}"][0] == 0.0


def test_profanity_scores_high_and_is_not_diluted_by_a_long_answer():
    insult = "You are a stupid fucking idiot."
    long = " ".join([CLEAN] * 8 + [insult])
    out = _score([CLEAN, insult, long])
    prob = out["score_safety_profanity"]
    assert prob[1] > 0.9 and prob[2] > 0.9 and prob[0] < 0.2
    np.testing.assert_allclose(out["score_safety"], 1.0 - prob, atol=1e-6)


@pytest.mark.parametrize(
    "text, part, expected",
    [
        ("Write to jane.doe@example.com or j_smith+tag@mail.co.uk today.", "emails", 2),
        ("Call +1 415 555 2671 or (415) 555-2671 or 415.555.2671.", "phones", 3),
        ("The card 4111 1111 1111 1111 was charged.", "cards", 1),
        ("The card 4111-1111-1111-1112 was declined.", "cards", 0),  # fails the Luhn check
        ("Our server is at 192.168.10.12 and 2001:db8:85a3::8a2e:370:7334.", "ips", 2),
    ],
)
def test_personal_data_counts_and_zeroes_the_score(text, part, expected):
    out = _score([text])
    assert out[f"score_safety_{part}"][0] == expected
    if expected:
        assert out["score_safety"][0] == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "In 2023, 1,200,000 people visited; order id 1234567890123 shipped on 2023-10-12.",
        "The ratio 3:4 at 12:30:45, version 999.1.1.1 and 1.2.3.",
        "Email me at the office.",
    ],
)
def test_numbers_that_are_not_personal_data_are_not_counted(text):
    out = _score([text])
    for part in ("emails", "phones", "cards", "ips"):
        assert out[f"score_safety_{part}"][0] == 0.0, part


def test_luhn_and_counters():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert count_cards("0000 0000 0000 0000") == 0  # passes Luhn but is one repeated digit
    assert count_emails("a@b") == 0
    assert count_phones("+44 20 7946 0958") == 1
    assert count_ips("::1 and fe80::1") == 0 and count_ips("2001:db8::1") == 1


def test_nan_where_the_row_has_error_or_no_answer():
    batch = {
        "id": ["ok", "err", "none"],
        "error": [None, "missing_image: x", None],
        "messages": [turns("Q?", CLEAN), turns("Q?", CLEAN), turns("Q?", None)],
    }
    out = SafetyScore().score_batch(batch)
    for column, values in out.items():
        assert np.isfinite(values[0]) and np.isnan(values[1:]).all(), column


def test_profanity_off_and_missing_package(monkeypatch):
    out = _score(["Mail jane@example.com", CLEAN], SafetyScore(profanity=False))
    assert np.isnan(out["score_safety_profanity"]).all()
    np.testing.assert_array_equal(out["score_safety"], [0.0, 1.0])

    from selector.errors import MissingDependencyError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *a, **k: None if name == "profanity_check" else real_find_spec(name, *a, **k),
    )
    with pytest.raises(MissingDependencyError, match=r"vlselect\[safety\].*profanity=False"):
        SafetyScore()
    assert SafetyScore(profanity=False).output_columns()[0] == "score_safety"
