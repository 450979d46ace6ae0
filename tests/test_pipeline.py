"""`vlselect run`: the whole pipeline on the bundled example data (the demo: tests/test_demo.py)."""

from __future__ import annotations

import functools
import json
import os

import numpy as np
import pytest
from datasets import load_from_disk

from selector.cli import main
from selector.errors import ConfigError
from selector.pipeline import (
    EXAMPLE_DATA,
    RECOMMENDED_CONFIG,
    PipelineConfig,
    override_metric,
    parse_quality_arg,
    recommended_values,
    run_pipeline,
)


def _config(tmp_path, **overrides):
    values = {
        "source": EXAMPLE_DATA,
        "out": str(tmp_path / "run"),
        "metrics": [{"metric": "length"}],
        "strategy": "topk:score_length",
        "budget": 7,
    }
    values.update(overrides)
    return values


def test_run_writes_scores_subset_card_and_resolved_config(tmp_path):
    result = run_pipeline(PipelineConfig.from_dict(_config(tmp_path)), progress=False)
    assert result["n_rows"] == 62 and result["n_selected"] == 7
    subset = load_from_disk(result["selected"])
    assert len(subset) == 7 and all(e is None for e in subset["error"])
    lengths = load_from_disk(result["scored"])["score_length"]
    assert sorted(subset["score_length"]) == sorted(x for x in lengths if x == x)[-7:]
    with open(os.path.join(tmp_path, "run", "config.json")) as handle:
        resolved = json.load(handle)
    assert resolved["seed"] == 0 and resolved["batch_size"] == 32  # defaults filled in
    assert open(result["card"]).read().startswith("---\n")


def test_rerun_resumes_scoring_and_gives_the_same_selection(tmp_path):
    config = PipelineConfig.from_dict(_config(tmp_path, strategy="random", budget=0.25, seed=3))
    first = run_pipeline(config, progress=False)
    markers = {
        os.path.join(dp, f): os.stat(os.path.join(dp, f)).st_mtime_ns
        for dp, _, fs in os.walk(os.path.join(first["scored"], ".shards"))
        for f in fs
    }
    assert markers
    second = run_pipeline(config, progress=False)
    for path, mtime in markers.items():
        assert os.stat(path).st_mtime_ns == mtime  # finished shards were not redone
    assert load_from_disk(first["selected"])["id"] == load_from_disk(second["selected"])["id"]


@pytest.mark.parametrize("budget, expected", [(1.0, 57), (0.5, 31), (5, 5), (5.0, 5)])
def test_budget_fraction_or_count(tmp_path, budget, expected):
    # 1.0 is the whole pool (57 usable rows of 62), not one row; 5.0 is a count.
    result = run_pipeline(
        PipelineConfig.from_dict(_config(tmp_path, strategy="random", budget=budget)), progress=False
    )
    assert result["n_selected"] == expected


def test_yaml_config_paths_are_relative_to_the_file(tmp_path, capsys):
    config = tmp_path / "conf" / "select.yaml"
    config.parent.mkdir()
    config.write_text(
        f"source: {EXAMPLE_DATA}\nout: out\nmetrics:\n  - {{metric: length}}\nstrategy: random\nbudget: 5\n"
    )
    assert main(["run", str(config), "--quiet"]) == 0
    assert "selected 5 of 62 rows" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "conf" / "out" / "selected" / "README.md")


@pytest.mark.parametrize(
    "text, match",
    [
        ("source: a\nout: b\nbudgett: 3\n", r"unknown configuration key\(s\) \['budgett'\]"),
        ("source: a\n", r"missing required configuration key\(s\) \['out'\]"),
        ("source: a\nout: b\nbudget: -1\n", "budget: must be above 0"),
        ("source: a\nout: b\nmetrics: length\n", "metrics: expected a list"),
        ("source: [a\n", "not valid YAML"),
        ("- a\n- b\n", "must be a YAML mapping"),
    ],
)
def test_bad_configurations_are_clear_errors(tmp_path, text, match, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        PipelineConfig.from_yaml(str(path))
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"filters": [{"column": "score_length", "minimum": 3}]}, "unknown key"),
        ({"filters": ["score_length:min"]}, "is not KEY=VALUE"),
        ({"filters": [{"column": "emb_x", "min": 0}]}, "not embedding vectors"),
        ({"quality": {"columns": {"score_length": {"direction": "up"}}}}, "direction must be"),
        ({"quality": {"columns": ["score_a"], "selector": "x"}}, "either columns or selector"),
        ({"quality": "best"}, "is not 'default'"),
        ({"dedup": {"columns": ["emb_x"], "epsilon": 0.1}}, r"dedup: unknown key\(s\) \['epsilon'\]"),
        ({"dedup": {"columns": ["emb_x"], "eps": 3}}, "dedup_eps must be"),
        ({"checks": {"min_sides": 3}}, r"checks: unknown key\(s\) \['min_sides'\]"),
        ({"checks": "yes"}, "checks: expected a mapping"),
    ],
)
def test_bad_stage_configurations_fail_before_scoring(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        PipelineConfig.from_dict(_config(tmp_path, **extra))
    assert not os.path.exists(tmp_path / "run")


def test_stage_configurations_are_resolved():
    config = PipelineConfig(
        source="a",
        out="b",
        checks=True,
        filters=["score_x:min=0.3", {"column": "check_exact_dup_of", "is_null": True}],
        quality="default",
        dedup="emb_x",
    )
    assert config.checks == {}
    assert config.filters == [{"column": "score_x", "min": 0.3}, {"column": "check_exact_dup_of", "is_null": True}]
    assert config.quality == {"columns": None}
    assert config.dedup == {"columns": ["emb_x"], "groups": [], "eps": 0.05, "n_clusters": None, "engine": "local"}
    assert PipelineConfig(source="a", out="b").dedup is None  # off unless asked for
    assert parse_quality_arg("score_a:2:lower,score_b") == {
        "columns": [{"column": "score_a", "weight": 2.0, "direction": "lower"}, {"column": "score_b"}]
    }
    with pytest.raises(ConfigError, match="neither a weight nor higher/lower"):
        parse_quality_arg("score_a:best")


def _text_embedding(path):
    return {
        "metric": "embedding",
        "name": "text",
        "modality": "text",
        "backend": "sentence-transformers",
        "text_field": "conversation",
        "model_name_or_path": path,
        "batch_size": 16,
    }


def test_checks_quality_filters_and_dedup_through_the_yaml(tmp_path, tiny_sentence_transformer_path):
    config = tmp_path / "select.yaml"
    config.write_text(
        f"""
source: {EXAMPLE_DATA}
out: out
checks: {{min_side: 16}}
metrics:
  - {{metric: length}}
  - {{metric: text_quality, language_id: false}}
  - {json.dumps(_text_embedding(tiny_sentence_transformer_path))}
quality:
  columns:
    score_text_quality: 2
    score_length: {{weight: 1, direction: higher}}
filters:
  - {{column: check_exact_dup_of, is_null: true}}
  - {{column: score_length, min_quantile: 0.2}}
dedup: {{columns: [emb_text], eps: 0.001}}
strategy: ssl_prototypes
options: {{n_clusters: 3}}
budget: 12
"""
    )
    assert main(["run", str(config), "--quiet"]) == 0
    run = tmp_path / "out"
    subset = load_from_disk(str(run / "selected"))
    assert len(subset) == 12 and "score_quality" in subset.column_names and "check_exact_dup_of" in subset.column_names
    manifest = json.loads((run / "selected" / "manifest.json").read_text())
    # the quality score is the score column: it ranks rows inside the strategy and decides which duplicate stays
    assert manifest["columns"]["scores"] == "score_quality"
    assert [(c["column"], c["weight"], c["direction"]) for c in manifest["quality"]["columns"]] == [
        ("score_text_quality", 2.0, "higher"),
        ("score_length", 1.0, "higher"),
    ]
    filters = manifest["filters"]
    assert [r["rule"] for r in filters["rules"]] == ["check_exact_dup_of is null", "score_length>=quantile(0.2)"]
    assert filters["counts"]["score_length>=quantile(0.2)"] >= 10  # a fifth of the 57 usable rows
    assert manifest["counts"]["reasons"]["filter"] == filters["n_filtered"]
    dedup = manifest["dedup"]
    assert dedup["columns"] == ["emb_text"] and dedup["eps"] == 0.001 and dedup["keep_by"].startswith("score_quality")
    assert manifest["counts"]["reasons"].get("dedup", 0) == dedup["n_duplicates"]
    assert manifest["checks"]["n_rows"] == 62 and "exact_duplicates" in manifest["checks"]
    card = (run / "selected" / "README.md").read_text()
    assert "### Quality score" in card and "| `score_text_quality` | 2.0 | higher | 0 |" in card
    assert (
        "### Filters" in card
        and f"| `score_length>=quantile(0.2)` | {filters['counts']['score_length>=quantile(0.2)']} |" in card
    )
    assert "### Near-duplicates" in card and "cosine similarity above 0.999" in card
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["dedup"] == {
        "columns": ["emb_text"],
        "groups": [],
        "eps": 0.001,
        "n_clusters": None,
        "engine": "local",
    }
    assert resolved["filters"][1] == {"column": "score_length", "min_quantile": 0.2}
    # the same rows as selecting from the scored folder with the same rules by hand
    from selector.pipeline import add_quality
    from selector.selection import select

    scored, _ = add_quality(load_from_disk(str(run / "scored")), resolved["quality"])
    again = select(
        scored, 12, "ssl_prototypes", score_column="score_quality", filters=resolved["filters"],
        dedup_column="emb_text", dedup_eps=0.001, n_clusters=3,
    )  # fmt: skip
    assert sorted(again.ids[again.mask].tolist()) == sorted(subset["id"])


def test_run_example_prints_the_recommended_configuration(capsys):
    assert main(["run", "--example"]) == 0
    text = capsys.readouterr().out
    assert text == open(RECOMMENDED_CONFIG, encoding="utf-8").read()
    import yaml

    config = PipelineConfig.from_dict(yaml.safe_load(text))  # a valid configuration as printed
    assert config.checks is not None and config.quality and config.dedup and config.filters
    assert config.strategy == "instructiongpt4" and config.score_column == "score_quality"
    assert config.cluster_column == "cluster_diversity"
    names = [m.get("name", m["metric"]) for m in config.metrics]
    assert names == [
        "length",
        "text_quality",
        "relevance",
        "perplexity",
        "image",
        "text",
        "question",
        "answer",
        "image_pair",
        "qa_pair",
        "diversity",
    ]
    models = {m.get("name", m["metric"]): m.get("model_name_or_path") for m in config.metrics}
    assert models["image"] == "facebook/dinov2-small" and models["perplexity"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models["text"] == models["relevance"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert models["question"] == models["answer"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert config.metrics[2]["clip_model_name_or_path"] == "openai/clip-vit-base-patch32"
    assert config.dedup["columns"] == ["emb_image", "emb_text"]
    assert main(["run"]) == 2 and "--example" in capsys.readouterr().err


def test_recommended_pipeline_with_tiny_models(
    tmp_path, tiny_sentence_transformer_path, tiny_clip_path, tiny_causal_lm_path, tiny_dinov2_path
):
    values = recommended_values()
    override_metric(
        values,
        "relevance",
        model_name_or_path=tiny_sentence_transformer_path,
        clip_model_name_or_path=tiny_clip_path,
        batch_size=16,
    )
    override_metric(values, "perplexity", model_name_or_path=tiny_causal_lm_path, batch_size=16)
    override_metric(values, "image", model_name_or_path=tiny_dinov2_path, batch_size=16)
    override_metric(values, "text", model_name_or_path=tiny_sentence_transformer_path, backend="sentence-transformers")
    for name in ("question", "answer"):
        override_metric(values, name, model_name_or_path=tiny_sentence_transformer_path, batch_size=16)
    override_metric(values, "diversity", n_clusters=4, n_neighbors=6)
    values.update(source=EXAMPLE_DATA, out=str(tmp_path / "run"), budget=15)
    # random tiny models put every embedding in a narrow cone (cosines above 0.97), so only exact copies count here
    values["dedup"]["eps"] = 1e-5
    result = run_pipeline(PipelineConfig.from_dict(values), progress=False)

    scored = load_from_disk(result["scored"])
    for column in (
        "check_exact_dup_of",
        "check_near_dup_of",
        "score_length",
        "score_text_quality_lang",
        "score_relevance",
        "score_relevance_image",
        "score_perplexity",
        "score_perplexity_ifd",
        "emb_image",
        "emb_text",
        "emb_question",
        "emb_answer",
        "score_image_pair",
        "score_qa_pair",
        "cluster_diversity",
    ):
        assert column in scored.column_names, column
    subset = load_from_disk(result["selected"])
    assert len(subset) == 15 and all(q == q for q in subset["score_quality"])
    manifest = json.loads(open(os.path.join(result["selected"], "manifest.json")).read())
    assert manifest["columns"]["scores"] == "score_quality" and manifest["columns"]["clusters"] == "cluster_diversity"
    assert [c["column"] for c in manifest["quality"]["columns"]] == [
        "score_relevance",
        "score_relevance_image",
        "score_text_quality",
        "score_perplexity",
        "score_perplexity_end",
        "score_image_pair",
        "score_qa_pair",
    ]
    assert len(manifest["filters"]["rules"]) == len(values["filters"])
    assert manifest["dedup"]["columns"] == ["emb_image", "emb_text"]
    assert manifest["dedup"]["n_compared"] > 0  # the text-only row has no image embedding and is not compared
    assert manifest["strategy"] == "instructiongpt4" and manifest["checks"]["n_rows"] == 62
    # quotas follow the diversity clusters and each is filled by quality
    selection = result["selection"]
    clusters = np.asarray(scored["cluster_diversity"])
    quality = selection.score  # the score the strategy ranked by: score_quality
    eligible = np.array([r.split(" ")[0] in ("selected", "quota") for r in selection.reason])
    for c in set(clusters[selection.mask].tolist()):
        members = eligible & (clusters == c)
        worst_kept = np.min(quality[members & selection.mask])
        assert np.all(np.nan_to_num(quality[members & ~selection.mask], nan=-1.0) <= worst_kept)


def test_quality_from_a_trained_selector(tmp_path):
    from selector.learned import LearnedSelector

    first = run_pipeline(
        PipelineConfig.from_dict(_config(tmp_path, metrics=[{"metric": "length"}, {"metric": "text_quality"}])),
        progress=False,
    )
    scored = load_from_disk(first["scored"])
    # a selector that learned "longer is better" from per-row labels
    labels = [float(x) if x == x else float("nan") for x in scored["score_length"]]
    model = LearnedSelector(model="ridge", score_columns=["score_length", "score_text_quality"]).fit(scored, labels)
    model.save_pretrained(tmp_path / "selector")
    config = tmp_path / "select.yaml"
    config.write_text(
        f"source: {EXAMPLE_DATA}\nout: out2\nmetrics: [{{metric: length}}, {{metric: text_quality}}]\n"
        "quality: {selector: selector}\nstrategy: topk:score_quality\nbudget: 5\n"
    )
    resolved = PipelineConfig.from_yaml(str(config))
    assert resolved.quality == {"selector": str(tmp_path / "selector")}  # relative to the YAML file
    result = run_pipeline(resolved, progress=False)
    assert result["quality"]["source"] == "selector" and result["quality"]["features"] == [
        "score_length",
        "score_text_quality",
    ]
    subset = load_from_disk(result["selected"])
    expected = np.sort(model.score_samples(scored))[::-1]
    raw = np.sort(model.score_samples(subset))[::-1]
    assert np.allclose(raw, expected[~np.isnan(expected)][:5])  # the selector's top 5
    manifest = json.loads(open(os.path.join(result["selected"], "manifest.json")).read())
    assert manifest["quality"]["selector"] == str(tmp_path / "selector")


def test_copy_groups_through_the_yaml_keep_the_best_copy_that_passes_the_filters(tmp_path):
    """checks {copies: true} + dedup {groups: [check_copy_group]}: of a photo and its cropped copy (same
    question), the one with the better quality stays, even when the earlier one fails a filter; the card and the
    manifest say so, and other photos with the same question are untouched."""
    from tests.test_copies import _crop, _scene

    os.makedirs(tmp_path / "images")
    records = []
    for i in range(6):
        _scene(100 + i).save(tmp_path / "images" / f"p{i}.png")
        records.append({"id": f"p{i}", "image": f"images/p{i}.png", "answer": f"A picture of scene {i} with shapes."})
    _crop(_scene(100), 0.9, 0.3, 0.6).save(tmp_path / "images" / "copy.png")
    # the copy's answer is longer (better by the quality score below); the original is the group's earliest row
    records.append({"id": "p6", "image": "images/copy.png", "answer": "A picture of scene 0 with several shapes."})
    records[0]["answer"] = "Bad."  # and the original fails the filter
    data = [
        {
            "id": r["id"],
            "image": r["image"],
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the picture."},
                {"from": "gpt", "value": r["answer"]},
            ],
        }
        for r in records
    ]
    (tmp_path / "data.json").write_text(json.dumps(data))
    config = tmp_path / "select.yaml"
    config.write_text(
        """
source: data.json
out: out
checks: {min_side: 16, copies: true}
metrics: [{metric: length}]
quality: {columns: {score_length: 1}}
filters: [{column: check_response_words, min: 2}]
dedup: {groups: [check_copy_group]}
strategy: topk
budget: 7
"""
    )
    assert main(["run", str(config), "--quiet"]) == 0
    run = tmp_path / "out"
    manifest = json.loads((run / "selected" / "manifest.json").read_text())
    assert manifest["checks"]["copies"]["count"] == 1 and manifest["checks"]["copies"]["examples"] == [["p6", "p0"]]
    assert manifest["dedup"]["groups"]["counts"] == {"check_copy_group": 0}  # p0 was filtered: p6 stays
    subset = load_from_disk(str(run / "selected"))
    assert sorted(subset["id"]) == ["p1", "p2", "p3", "p4", "p5", "p6"]
    # without the filter the better copy (the longer answer) stays and the other is a group duplicate
    config.write_text(config.read_text().replace("filters: [{column: check_response_words, min: 2}]\n", ""))
    assert main(["run", str(config), "--quiet", "--overwrite"]) == 0
    manifest = json.loads((run / "selected" / "manifest.json").read_text())
    assert manifest["dedup"]["groups"]["counts"] == {"check_copy_group": 1}
    assert manifest["counts"]["reasons"]["dedup"] == 1 and "p0" not in load_from_disk(str(run / "selected"))["id"]
    card = (run / "selected" / "README.md").read_text()
    assert "Rows that repeat each other" in card and "`check_copy_group` 1" in card


def test_a_rerun_reads_the_checks_from_the_run_folder_and_resumes_scoring(tmp_path, monkeypatch):
    """The checks read every image: a re-run with the same rows and options takes their columns from
    `out/checks/` and gives the scoring stage the same input fingerprint, so nothing is computed twice; other
    options (or changed rows) check again."""
    import selector.checks as checks_module

    config = tmp_path / "select.yaml"
    config.write_text(
        f"""
source: {EXAMPLE_DATA}
out: out
checks: {{min_side: 16, copies: true}}
metrics: [{{metric: length}}]
filters: [{{column: check_exact_dup_of, is_null: true}}]
strategy: topk:score_length
budget: 10
"""
    )
    assert main(["run", str(config), "--quiet"]) == 0
    run = tmp_path / "out"
    first = load_from_disk(str(run / "selected"))
    manifest = json.loads((run / "scored" / "manifest.json").read_text())
    assert (run / "checks" / "columns.parquet").exists()

    calls = []
    real = checks_module.run_checks

    @functools.wraps(real)  # the same signature: the YAML's check options are validated against it
    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(checks_module, "run_checks", counted)
    assert main(["run", str(config), "--quiet"]) == 0
    assert calls == []
    again = json.loads((run / "scored" / "manifest.json").read_text())
    assert again["input"]["fingerprint"] == manifest["input"]["fingerprint"]
    second = load_from_disk(str(run / "selected"))
    assert list(second["id"]) == list(first["id"])
    scores = [np.asarray(ds["check_copy_score"], dtype=float) for ds in (first, second)]
    np.testing.assert_array_equal(*scores)  # NaN where a row had no candidate, in both
    # other options: the checks run again
    config.write_text(config.read_text().replace("min_side: 16", "min_side: 17"))
    assert main(["run", str(config), "--quiet"]) == 0
    assert len(calls) == 1 and calls[0]["min_side"] == 17
