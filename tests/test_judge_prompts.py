"""Judge prompts: versioned files, rendering, and the strict answer parser."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics.judge_prompts import PROMPT_DIR, available_prompts, load_prompt
from selector.errors import ConfigError


def test_bundled_prompts_load_with_their_scales():
    assert available_prompts() == {"instructiongpt4": [1, 2], "rubric5": [1], "vlselect_quality": [1]}
    igpt = load_prompt("instructiongpt4")
    rubric = load_prompt("rubric5")
    assert (igpt.key, igpt.score_min, igpt.score_max) == ("instructiongpt4@v2", 0.0, 100.0)
    assert (rubric.key, rubric.score_min, rubric.score_max) == ("rubric5@v1", 1.0, 5.0)
    assert rubric.rating_values() == [1, 2, 3, 4, 5]
    assert len(igpt.sha256) == 64 and igpt.sha256 != rubric.sha256
    # every spelling of a pinned version gives the same prompt
    assert load_prompt("rubric5@v1") == load_prompt("rubric5@1") == load_prompt("rubric5-v1") == rubric


def test_render_declares_image_absent_or_attached_and_keeps_braces():
    prompt = load_prompt("vlselect_quality")
    absent = prompt.render("What is {x} in the image?", "It is {y}.", image_attached=False)
    attached = prompt.render("What is {x} in the image?", "It is {y}.", image_attached=True)
    assert [m["role"] for m in absent] == ["system", "user"]
    assert prompt.image_absent in absent[1]["content"] and prompt.image_attached not in absent[1]["content"]
    assert prompt.image_attached in attached[1]["content"]
    assert "What is {x} in the image?" in absent[1]["content"] and "It is {y}." in absent[1]["content"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", "unknown judge prompt 'nope'"),
        ("rubric5@v9", "has no version 9"),
        ("/does/not/exist.yaml", "cannot read judge prompt"),
    ],
)
def test_unknown_prompts_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_prompt(spec)


def _write(tmp_path, text: str):
    path = tmp_path / "custom-v1.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_custom_prompt_file(tmp_path):
    text = (PROMPT_DIR / "rubric5-v1.yaml").read_text(encoding="utf-8").replace("name: rubric5", "name: custom")
    prompt = load_prompt(_write(tmp_path, text))
    assert prompt.key == "custom@v1"
    assert prompt.parse("Rating: 2") == (2.0, None)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("version: 1\n", ""), "missing key"),
        (lambda t: t + "temperature: 0\n", "unknown key"),
        (lambda t: t.replace("scale: {min: 1, max: 5}", "scale: {min: 5, max: 1}"), "min must be below max"),
        (lambda t: t.replace("(?P<score>", "("), "named group"),
        (lambda t: t.replace("{response}", "{answer}"), r"must contain \{response\}"),
        (lambda t: t.replace("pattern: '(?im)", "pattern: '(?im)(["), "not a valid regular expression"),
        (lambda t: "- just\n- a list\n", "must be a YAML mapping"),
        (lambda t: t.replace("version: 1", "version: one"), "version must be an integer"),
    ],
)
def test_malformed_prompt_files_are_config_errors(tmp_path, edit, message):
    text = (PROMPT_DIR / "rubric5-v1.yaml").read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_prompt(_write(tmp_path, edit(text)))


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Score: 85", 85.0),
        ("The answer is accurate and detailed.\nScore: 85", 85.0),  # reasoning before
        ("Score: 85\nIt is accurate and detailed.", 85.0),  # reasoning after
        ("**Score:** 85/100", 85.0),
        ("Final score: 72.5", 72.5),
        ("score = 0", 0.0),
        ("Score: 100.", 100.0),
        ("Score: 60 (clear but short)", 60.0),
        ("Score: 80\nTo repeat, Score: 80 is fair.\nscore: 80", 80.0),  # the same value twice is one answer
    ],
)
def test_parse_accepts_the_expected_form(answer, expected):
    assert load_prompt("vlselect_quality").parse(answer) == (expected, None)


@pytest.mark.parametrize(
    "answer, reason",
    [
        (None, "empty answer"),
        ("   ", "empty answer"),
        ("I would give it 85.", "no line matches"),  # a bare number is not guessed
        ("The score is 85", "no line matches"),
        ("Score: 70-80", "no line matches"),  # a range
        ("Score: 8/10", "no line matches"),  # another scale
        ("Score: eighty", "no line matches"),
        ("Score: 101", "outside [0, 100]"),
        ("Score: 80\nScore: 90", "conflicting scores"),
    ],
)
def test_parse_rejects_everything_else_as_nan(answer, reason):
    score, why = load_prompt("vlselect_quality").parse(answer)
    assert math.isnan(score)
    assert reason in why


def test_rubric_parse():
    prompt = load_prompt("rubric5")
    assert prompt.parse("Rating: 4\nCorrect but it misses the colour.") == (4.0, None)
    assert prompt.parse("Rating: 4 - correct, misses the colour") == (4.0, None)
    assert prompt.parse("**Rating**: 5/5") == (5.0, None)
    for bad in ("Rating: 3-4", "Rating: 0", "Rating: 6", "Rating: 4/10", "4", "Rating: 2\nRating: 5"):
        assert math.isnan(prompt.parse(bad)[0]), bad


_NOISE = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=":="), max_size=80)


@settings(max_examples=60, deadline=None)
@given(value=st.integers(0, 100), before=_NOISE, after=_NOISE)
def test_parse_finds_the_score_whatever_text_surrounds_it(value, before, after):
    # Text without ':' or '=' can never form a second score line, so exactly the written value comes back.
    prompt = load_prompt("vlselect_quality")
    assert prompt.parse(f"{before}\nScore: {value}\n{after}") == (float(value), None)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=200))
def test_parse_never_raises_and_never_leaves_the_scale(text):
    score, reason = load_prompt("rubric5").parse(text)
    assert (math.isnan(score) and reason) or (1.0 <= score <= 5.0 and reason is None)
