"""Filters: rule parsing, each rule type, NaN/None, quantiles over usable rows, reasons and counts, data kinds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from selector.errors import ConfigError, DataError
from selector.filters import RULE_KEYS, FilterRule, apply_filters, parse_filter, parse_filters

NAN = float("nan")


def _data():
    return {
        "id": ["a", "b", "c", "d", "e", "f"],
        "score_relevance": [0.9, 0.1, NAN, 0.5, 0.3, None],
        "check_exact_dup_of": [None, None, "a", None, NAN, None],
        "check_lang": ["en", "en", "fr", None, "en", "de"],
        "error": [None, None, None, None, None, None],
    }


# Parsing.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("score_relevance:min=0.3", FilterRule("score_relevance", min=0.3)),
        ("check_exact_dup_of:is_null=true", FilterRule("check_exact_dup_of", is_null=True)),
        ("check_lang:is_null=false", FilterRule("check_lang", is_null=False)),
        ("score_x:min_quantile=0.1,max=5", FilterRule("score_x", min_quantile=0.1, max=5.0)),
        ("score_x: max_quantile = 0.9 ", FilterRule("score_x", max_quantile=0.9)),
        ("score_x:min=1e-3", FilterRule("score_x", min=0.001)),
        ("score_x:max=-2", FilterRule("score_x", max=-2.0)),
    ],
)
def test_parse_filter_cli_form(text, expected):
    assert parse_filter(text) == expected


@pytest.mark.parametrize(
    ("rule", "text"),
    [
        (FilterRule("score_relevance", min=0.3), "score_relevance>=0.3"),
        (FilterRule("score_x", max=5), "score_x<=5"),
        (FilterRule("check_exact_dup_of", is_null=True), "check_exact_dup_of is null"),
        (FilterRule("check_lang", is_null=False), "check_lang is not null"),
        (FilterRule("score_x", min_quantile=0.1, max=5), "score_x>=quantile(0.1) and score_x<=5"),
        (FilterRule("score_x", max_quantile=0.95), "score_x<=quantile(0.95)"),
    ],
)
def test_str_is_readable_and_cli_form_round_trips(rule, text):
    assert str(rule) == text
    assert parse_filter(rule.to_cli()) == rule
    assert parse_filters([rule.to_dict()]) == [rule]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("score_relevance", "expected COLUMN:KEY=VALUE"),
        ("score_relevance:", "expected COLUMN:KEY=VALUE"),
        (":min=0.3", "expected COLUMN:KEY=VALUE"),
        ("score_relevance:min", "'min' is not KEY=VALUE"),
        ("score_relevance:min=", "'min=' is not KEY=VALUE"),
        ("score_relevance:min=0.3,", "'' is not KEY=VALUE"),
        ("score_relevance:min=abc", "min must be a number, got 'abc'"),
        ("score_relevance:min=nan", "min must be a number, got NaN"),
        ("score_relevance:min=true", "min must be a number, got True"),
        ("score_relevance:minimum=0.3", "unknown key(s) minimum; accepted keys: " + ", ".join(RULE_KEYS)),
        ("score_relevance:min=0.3,min=0.4", "'min' is given twice"),
        ("score_relevance:min=0.5,max=0.4", "min 0.5 is above max 0.4"),
        ("score_relevance:min_quantile=1.5", "min_quantile must be in [0, 1]"),
        ("score_relevance:min_quantile=0.9,max_quantile=0.1", "min_quantile 0.9 is above max_quantile 0.1"),
        ("check_x:is_null=maybe", "is_null must be true or false"),
        ("check_x:is_null=true,min=1", "keeps no row"),
        ("emb_clip:min=0.1", "scalar columns, not embedding vectors"),
    ],
)
def test_bad_rule_text_is_a_one_line_config_error(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_filter(text)
    message = str(info.value)
    assert "\n" not in message
    assert fragment in message
    assert message.startswith(f"filter {text!r}")


def test_parse_filters_mixes_mappings_strings_and_rules():
    rules = parse_filters(
        [{"column": "score_relevance", "min": 0.3}, "check_exact_dup_of:is_null=true", FilterRule("s", max=1)]
    )
    assert [str(r) for r in rules] == ["score_relevance>=0.3", "check_exact_dup_of is null", "s<=1"]
    assert parse_filters(None) == []
    assert parse_filters("s:max=1") == [FilterRule("s", max=1.0)]


def test_unknown_yaml_key_names_the_accepted_keys():
    with pytest.raises(
        ConfigError, match=r"filters\[1\]: unknown key\(s\) maximum, minimum; accepted keys: column, min"
    ):
        parse_filters([{"column": "a", "min": 1}, {"column": "b", "minimum": 1, "maximum": 2}])


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ({"min": 0.3}, "needs a 'column'"),
        ({"column": "score_x"}, "has no condition; give one of min, max, min_quantile, max_quantile, is_null"),
        ({"column": "", "min": 1}, "needs a column name"),
        ({"column": "s", "min": [1]}, "min must be a number"),
        ({"column": "s", "is_null": "yes"}, "is_null must be true or false"),
        ({"column": "s", "min": 0, "keep_null": "yes"}, "keep_null must be true or false"),
        ({"column": "s", "is_null": False, "keep_null": True}, "keep_null=true needs min, max or a quantile"),
        (["s", "min"], "must be a mapping"),
    ],
)
def test_bad_yaml_rules(item, fragment):
    with pytest.raises(ConfigError, match="filters\\[0\\]") as info:
        parse_filters([item])
    assert fragment in str(info.value)


# Rule types and NaN / None.


def test_min_rule_nan_and_none_fail():
    res = apply_filters(_data(), ["score_relevance:min=0.3"])
    assert res.passed.tolist() == [True, False, False, True, True, False]


def test_keep_null_lets_nan_and_none_pass_the_numeric_conditions():
    rule = parse_filter("score_relevance:min=0.3,keep_null=true")
    assert str(rule) == "score_relevance>=0.3 or null" and parse_filter(rule.to_cli()) == rule
    res = apply_filters(_data(), [rule])
    plain = apply_filters(_data(), ["score_relevance:min=0.3"])
    values = _data()["score_relevance"]
    null = np.array([v is None or v != v for v in values])
    assert null.any() and res.passed.tolist() == (plain.passed | null).tolist()
    quantile = apply_filters(_data(), [{"column": "score_relevance", "min_quantile": 0.5, "keep_null": True}])
    assert quantile.passed[null].all()


def test_max_rule_nan_and_none_fail_and_bound_is_inclusive():
    res = apply_filters(_data(), ["score_relevance:max=0.5"])
    assert res.passed.tolist() == [False, True, False, True, True, False]


def test_min_and_max_in_one_rule():
    res = apply_filters(_data(), [{"column": "score_relevance", "min": 0.2, "max": 0.6}])
    assert res.passed.tolist() == [False, False, False, True, True, False]
    assert res.reason.tolist()[0] == "filter:score_relevance>=0.2 and score_relevance<=0.6"


def test_is_null_treats_none_and_nan_as_null():
    res = apply_filters(_data(), ["check_exact_dup_of:is_null=true"])
    assert res.passed.tolist() == [True, True, False, True, True, True]
    res = apply_filters(_data(), ["score_relevance:is_null=true"])
    assert res.passed.tolist() == [False, False, True, False, False, True]
    res = apply_filters(_data(), ["check_lang:is_null=false"])
    assert res.passed.tolist() == [True, True, True, False, True, True]


def test_quantiles_over_non_nan_values_nan_fails():
    values = [float(v) for v in range(10)] + [NAN]
    data = {"s": values}
    res = apply_filters(data, ["s:min_quantile=0.5"])
    # median of 0..9 is 4.5; the NaN row is not in the quantile and fails
    assert res.passed.tolist() == [False] * 5 + [True] * 5 + [False]
    assert res.bounds == [{"min_quantile": 4.5}]
    res = apply_filters(data, ["s:max_quantile=0.2"])
    assert np.flatnonzero(res.passed).tolist() == [0, 1]  # 20% quantile = 1.8
    res = apply_filters(data, ["s:min_quantile=0,max_quantile=1"])
    assert res.passed.tolist() == [True] * 10 + [False]


def test_quantiles_exclude_error_rows():
    # the error row's huge value would move the median from 2 to 2.5 if it were counted
    data = {"s": [1.0, 2.0, 3.0, 1000.0], "error": [None, "", NAN, "missing_image: x.jpg"]}
    res = apply_filters(data, ["s:min_quantile=0.5"])
    assert res.bounds[0]["min_quantile"] == 2.0
    assert res.passed.tolist() == [False, True, True, False]
    assert res.eligible.tolist() == [True, True, True, False]
    assert res.reason.tolist() == ["filter:s>=quantile(0.5)", "", "", ""]
    assert res.counts() == {"s>=quantile(0.5)": 1}


def test_quantile_of_empty_pool_fails_every_row():
    res = apply_filters({"s": [NAN, None]}, ["s:max_quantile=0.9"])
    assert not res.passed.any()
    assert res.bounds == [{"max_quantile": None}]


def test_eligible_mask_limits_evaluation_and_quantile_pool():
    data = {"s": [1.0, 2.0, 3.0, 4.0]}
    res = apply_filters(data, ["s:min_quantile=0.5"], eligible=[True, True, True, False])
    assert res.bounds[0]["min_quantile"] == 2.0
    assert res.passed.tolist() == [False, True, True, False]
    assert res.reason.tolist() == ["filter:s>=quantile(0.5)", "", "", ""]
    with pytest.raises(DataError, match="eligible has 2 entries for 4 rows"):
        apply_filters(data, ["s:min=1"], eligible=[True, False])


def test_bools_and_ints_are_numeric():
    res = apply_filters({"flag": [True, False, None], "n": [3, 1, 2]}, ["flag:min=1", "n:max=2"])
    assert res.failed.tolist() == [[False, True], [True, False], [True, False]]


# Reasons and counts.


def test_reason_names_first_failing_rule_and_counts_each_rule():
    data = {"a": [1.0, 0.0, 0.0, 1.0], "b": [1.0, 0.0, 1.0, 0.0]}
    res = apply_filters(data, ["a:min=0.5", "b:min=0.5"])
    assert res.passed.tolist() == [True, False, False, False]
    assert res.failed.tolist() == [[False, False], [True, True], [True, False], [False, True]]
    assert res.first_failed.tolist() == [-1, 0, 0, 1]
    assert res.reason.tolist() == ["", "filter:a>=0.5", "filter:a>=0.5", "filter:b>=0.5"]
    # row 1 fails both rules: counted under each, named only in the first one's reason
    assert res.counts() == {"a>=0.5": 2, "b>=0.5": 2}
    report = res.report()
    assert report["n_filtered"] == 3 and report["n_passed"] == 1 and report["n_eligible"] == 4
    assert [(r["rule"], r["n_failed"], r["n_first"]) for r in report["rules"]] == [
        ("a>=0.5", 2, 2),
        ("b>=0.5", 2, 1),
    ]
    assert res.filtered.tolist() == [False, True, True, True]


def test_rule_order_changes_reasons_not_the_kept_rows():
    data = {"a": [1.0, 0.0, 0.0, 1.0], "b": [1.0, 0.0, 1.0, 0.0]}
    one = apply_filters(data, ["a:min=0.5", "b:min_quantile=0.5"])
    two = apply_filters(data, ["b:min_quantile=0.5", "a:min=0.5"])
    assert one.passed.tolist() == two.passed.tolist()
    assert one.reason[1] == "filter:a>=0.5" and two.reason[1] == "filter:b>=quantile(0.5)"


def test_report_is_json_able_and_records_resolved_quantiles():
    import json

    res = apply_filters({"s": [1.0, 2.0, 3.0]}, ["s:max_quantile=0.5", "s:max=10"])
    report = json.loads(json.dumps(res.report()))
    assert report["rules"][0] == {
        "rule": "s<=quantile(0.5)",
        "column": "s",
        "max_quantile": 0.5,
        "resolved": {"max_quantile": 2.0},
        "n_failed": 1,
        "n_first": 1,
    }
    assert "resolved" not in report["rules"][1]


def test_no_rules_keeps_every_usable_row():
    res = apply_filters({"s": [1.0, 2.0], "error": [None, "bad"]}, [])
    assert res.passed.tolist() == [True, False]
    assert res.reason.tolist() == ["", ""]
    assert res.counts() == {}


# Columns and data kinds.


def test_missing_column_lists_available_columns():
    with pytest.raises(DataError, match=r"no column 'score_nope'; available: id, score_relevance"):
        apply_filters(_data(), ["score_nope:min=1"])


def test_vector_columns_are_config_errors():
    with pytest.raises(ConfigError, match="not embedding vectors"):
        apply_filters({"emb_clip": [[1.0, 0.0]]}, ["emb_clip:min=0"])
    with pytest.raises(ConfigError, match="'vec' is not a scalar column"):
        apply_filters({"vec": [[1.0, 0.0], [0.0, 1.0]]}, ["vec:min=0"])


def test_numeric_rule_on_text_column_is_a_data_error():
    with pytest.raises(DataError, match="'check_lang' is not numeric"):
        apply_filters(_data(), ["check_lang:min=1"])


def _rules():
    return ["score_relevance:min_quantile=0.25", "check_exact_dup_of:is_null=true", "check_lang:is_null=false"]


def test_dataset_dataframe_and_mapping_agree():
    datasets = pytest.importorskip("datasets")
    pd = pytest.importorskip("pandas")
    data = _data()
    data["error"] = [None, None, None, None, "corrupt_image: y", None]
    data["check_exact_dup_of"][4] = None  # arrow string columns hold None, not NaN
    data["emb_x"] = [[1.0, 0.0]] * 6
    expected = apply_filters(data, _rules())
    for other in (datasets.Dataset.from_dict(data), pd.DataFrame(data)):
        got = apply_filters(other, _rules())
        assert got.passed.tolist() == expected.passed.tolist()
        assert got.reason.tolist() == expected.reason.tolist()
        assert got.counts() == expected.counts()
    # 25% quantile of the usable non-NaN relevances (0.1, 0.5, 0.9) is 0.3; row e is an error row
    assert expected.reason.tolist() == [
        "",
        "filter:score_relevance>=quantile(0.25)",
        "filter:score_relevance>=quantile(0.25)",
        "filter:check_lang is not null",
        "",
        "filter:score_relevance>=quantile(0.25)",
    ]
    assert expected.passed.tolist() == [True, False, False, False, False, False]
    with pytest.raises(ConfigError, match=r"column 'v' is not a scalar column \(List|Sequence"):
        apply_filters(datasets.Dataset.from_dict({"emb_y": [[1.0]], "v": [[2.0]]}), ["v:min=0"])


def test_dataset_after_select_uses_its_own_rows():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"s": [5.0, 1.0, 2.0, 3.0]}).select([1, 2, 3])
    res = apply_filters(ds, ["s:min_quantile=0.5"])
    assert res.passed.tolist() == [False, True, True]
    assert math.isclose(res.bounds[0]["min_quantile"], 2.0)
