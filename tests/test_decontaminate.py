"""Decontamination: planted overlaps are found, look-alikes are not; the CLI writes, reports and refuses."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from selector import checks
from selector.cli import main
from selector.data import load_instructions
from selector.decontaminate import COLUMN, decontaminate, find_contamination, normalize_text, parse_against
from selector.errors import ConfigError, DataError
from selector.filters import apply_filters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = os.path.join(ROOT, "selector", "example_data", "images")
EXAMPLE = os.path.join(ROOT, "selector", "example_data", "llava_mini.json")
SUFFIX = "Answer the question using a single word or phrase."
LONG_Q = "In the photograph taken at the old harbor what is the colour of the small boat tied next to the lighthouse?"


def _bench():
    # benchmarks/ is a folder of scripts, not an installed package: load the generator from its file.
    spec = importlib.util.spec_from_file_location(
        "bench_decontaminate", os.path.join(ROOT, "benchmarks", "bench_decontaminate.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _bench()


@pytest.fixture(scope="module")
def planted(bench):
    train, eval_set, truth = bench.planted_sets(n_train=900, n_eval=200, seed=1, n_filler_images=100)
    return train, eval_set, truth


def _jpeg(name: str, *, size=None, crop: float = 0.0, quality: int = 90) -> bytes:
    image = Image.open(os.path.join(IMAGES, name)).convert("RGB")
    w, h = image.size
    if crop:
        image = image.crop((int(w * crop), int(h * crop), w - int(w * crop), h - int(h * crop)))
    if size:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _turns(question, answer="Yes.", image=True):
    return [{"from": "human", "value": ("<image>\n" if image else "") + question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def files(tmp_path):
    """An eval set (LLaVA JSON with images) and a training set with planted overlaps and look-alikes."""
    evaldir, traindir = tmp_path / "eval", tmp_path / "train"
    evaldir.mkdir()
    traindir.mkdir()
    for name in ("astronaut", "coffee", "rocket", "camera", "chelsea", "moon"):
        (evaldir / f"{name}.jpg").write_bytes(_jpeg(f"{name}.jpg"))
    eval_rows = [
        {"id": "e-long", "image": "astronaut.jpg", "conversations": _turns(LONG_Q)},
        {"id": "e-mid", "image": "coffee.jpg", "conversations": _turns("Which brand of coffee cup is on the saucer?")},
        {"id": "e-short", "image": "rocket.jpg", "conversations": _turns("What color is the rocket?")},
        # test splits come without answers: the row loads with an error, and is still used
        {"id": "e-noanswer", "image": "camera.jpg", "conversations": [{"from": "human", "value": "<image>\nWho?"}]},
        {"id": "e-cat", "image": "chelsea.jpg", "conversations": _turns(f"Is there a cat in the image? {SUFFIX}")},
        {"id": "e-moon", "image": "moon.jpg", "conversations": _turns(f"Is there a moon in the image? {SUFFIX}")},
    ] + [
        {"id": f"e-gen{i}", "image": "moon.jpg", "conversations": _turns(f"What is shown here number {i}? {SUFFIX}")}
        for i in range(12)
    ]
    (evaldir / "eval.json").write_text(json.dumps(eval_rows))
    images = {
        "copy.jpg": (evaldir / "astronaut.jpg").read_bytes(),  # same bytes
        "reencoded.jpg": _jpeg("coffee.jpg", size=(400, 400), quality=60),
        "cropped.jpg": _jpeg("camera.jpg", crop=0.02),
        "other.jpg": _jpeg("brick.jpg"),
        "other2.jpg": _jpeg("grass.jpg"),
        "other3.jpg": _jpeg("clock.jpg"),
    }
    for name, data in images.items():
        (traindir / name).write_bytes(data)
    reworded = "Look at this: what is the colour of the small boat tied next to the lighthouse in this old picture"
    train_rows = [
        {"id": "t-copy", "image": "copy.jpg", "conversations": _turns("Describe the picture.", "A person.")},
        {"id": "t-question", "image": "other.jpg", "conversations": _turns(LONG_Q.upper().replace("?", "!!"))},
        {"id": "t-reworded", "image": "other2.jpg", "conversations": _turns("Hi", reworded)},
        {"id": "t-mid", "image": "other3.jpg", "conversations": _turns("which BRAND of coffee-cup is on the saucer")},
        {"id": "t-reencoded", "image": "reencoded.jpg", "conversations": _turns("What drink is this?")},
        {"id": "t-cropped", "image": "cropped.jpg", "conversations": _turns("What device is this?")},
        # look-alikes: same template or same short question, another image
        {"id": "t-template", "image": "other.jpg", "conversations": _turns(f"Is there a dog in the image? {SUFFIX}")},
        {"id": "t-short", "image": "other2.jpg", "conversations": _turns("What color is the rocket?")},
        {"id": "t-shared-suffix", "image": "other3.jpg", "conversations": _turns(f"What is this? {SUFFIX}")},
        {"id": "t-error", "image": "missing.jpg", "conversations": _turns(LONG_Q)},  # kept, never matched
        {"id": "t-text", "conversations": _turns("Tell me a joke about boats.", "No.", image=False)},
    ]
    (traindir / "train.json").write_text(json.dumps(train_rows))
    return str(traindir / "train.json"), str(evaldir / "eval.json")


def _column(ds):
    return dict(zip(ds["id"], ds[COLUMN]))


def test_normalized_text():
    assert normalize_text("What's in the <image> PICTURE?!  Ünï—code, 3.5") == "whats in the picture ünï code 3 5"
    assert normalize_text(["A. b", "c,d"]) == ["a b", "c d"]


def test_planted_overlaps_found_and_look_alikes_not(files):
    train_path, eval_path = files
    train = load_instructions(train_path)
    marked = decontaminate(train, against=[("vqa", eval_path)], hash_method="phash")
    found = _column(marked)
    assert found["t-copy"] == "vqa:e-long image-exact"
    assert found["t-question"] == "vqa:e-long text-13gram"
    assert found["t-reworded"] == "vqa:e-long text-13gram"  # shares a 13-token span, in the answer turn
    assert found["t-mid"] == "vqa:e-mid text-9gram"  # a 9-token question matches whole
    assert found["t-reencoded"].startswith("vqa:e-mid image-phash d=")
    assert found["t-cropped"].startswith("vqa:e-noanswer image-phash d=")  # a light crop keeps the hash
    for row in ("t-template", "t-short", "t-shared-suffix", "t-error", "t-text"):
        assert found[row] is None, row
    assert marked.num_rows == train.num_rows  # nothing is dropped
    passed = apply_filters(marked, ["check_contaminated_by:is_null=true"]).passed
    kept = {row_id for row_id, ok in zip(marked["id"], passed) if ok}
    assert kept == {"t-template", "t-short", "t-shared-suffix", "t-text"}  # the error row is not eligible


def test_planted_precision_and_recall(bench, planted):
    train, eval_set, truth = planted
    with_emb = find_contamination(train, [("ev", eval_set)], embedding_column="emb_hist")
    result = bench.score(with_emb.column, truth, "ev")
    assert result["precision"] == 1.0
    assert result["recall"] >= 0.97
    assert set(result["found"]) == set(bench.PLANTED)
    assert not set(result["flagged"]) & {*bench.NEGATIVE, "random"}
    # Without embeddings crops are missed: the perceptual hash does not survive a 10% crop.
    without = bench.score(find_contamination(train, [("ev", eval_set)]).column, truth, "ev")
    assert without["precision"] == 1.0
    assert without["found"].get("cropped", 0) <= 0.2 * sum(k == "cropped" for k, _ in truth)
    assert without["found"]["copy"] == sum(k == "copy" for k, _ in truth)
    assert bench.score(bench.baseline(train, eval_set), truth, "evalset")["recall"] < result["recall"]


def test_report_counts_by_set_and_kind(planted):
    train, eval_set, truth = planted
    half = eval_set.select(range(100))
    found = find_contamination(train, [("a", half), ("b", eval_set)], n_examples=2)
    report = found.report
    assert report["n_rows"] == len(train) and report["n_matched"] == sum(v is not None for v in found.column)
    assert report["against"]["b"]["n_matched"] >= report["against"]["a"]["n_matched"] > 0
    assert set(report["by_kind"]) == {"image-exact", "text", "image-hash"}
    assert len(report["against"]["a"]["examples"]) == 2 and report["against"]["a"]["examples"][0]["eval_instruction"]
    # a row matching both sets names the first one given
    both = [v for v in found.column if v and v.startswith("a:")]
    assert both and not any(v.startswith("b:q") and int(v[3:].split()[0]) < 100 for v in found.column if v)
    assert report["n_error_rows"] == sum(kind == "error-copy" for kind, _ in truth)


def test_permutation_and_slices_give_the_same_matches(planted):
    train, eval_set, _ = planted
    base = dict(zip(train["id"], find_contamination(train, [("ev", eval_set)], images=False).column))
    shuffled = train.shuffle(seed=3)
    again = dict(zip(shuffled["id"], find_contamination(shuffled, [("ev", eval_set)], images=False).column))
    assert again == base


def test_embedding_paths_agree_and_eval_sets_need_the_column(planted, monkeypatch):
    train, eval_set, _ = planted
    options = {"text": False, "images": False, "embedding_column": "emb_hist", "min_cosine": 0.97}
    with_faiss = find_contamination(train, [("ev", eval_set)], **options).column
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real_find_spec(name)
    )
    without = find_contamination(train, [("ev", eval_set)], **options).column
    assert [v and v.split(" cos=")[0] for v in with_faiss] == [v and v.split(" cos=")[0] for v in without]
    assert any(with_faiss)
    with pytest.raises(DataError, match="has no column 'emb_hist'"):
        find_contamination(train, [("ev", eval_set.remove_columns("emb_hist"))], **options)


def test_settings_and_eval_specs_are_checked(planted):
    train, eval_set, _ = planted
    with pytest.raises(ConfigError, match="min_n <= n"):
        find_contamination(train, [("ev", eval_set)], n=5, min_n=8)
    with pytest.raises(ConfigError, match="unique"):
        parse_against([("a", eval_set), ("a", eval_set)])
    with pytest.raises(ConfigError, match="unknown: root"):
        parse_against([{"source": "x.json", "root": "y"}])
    with pytest.raises(ConfigError, match="text_roles"):
        find_contamination(train, [("ev", eval_set)], text_roles=["human"])
    specs = parse_against(["gqa=lmms-lab/GQA", "data/pope_test.jsonl", {"name": "mmb", "source": "m.tsv"}])
    assert [(s.name, s.source) for s in specs] == [
        ("gqa", "lmms-lab/GQA"),
        ("pope_test", "data/pope_test.jsonl"),
        ("mmb", "m.tsv"),
    ]


def test_multi_image_rows_match_on_any_image(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg("astronaut.jpg"))
    (tmp_path / "b.jpg").write_bytes(_jpeg("brick.jpg"))
    (tmp_path / "c.jpg").write_bytes(_jpeg("coffee.jpg", size=(300, 300), quality=70))
    rows = [
        {"id": "two", "image": ["b.jpg", "a.jpg"], "conversations": _turns("<image>\nCompare them.")},
        {"id": "near", "image": ["b.jpg", "c.jpg"], "conversations": _turns("<image>\nCompare these.")},
    ]
    (tmp_path / "t.json").write_text(json.dumps(rows))
    (tmp_path / "coffee.jpg").write_bytes(_jpeg("coffee.jpg"))
    ev = [
        {"id": "x", "image": "a.jpg", "conversations": _turns("Who?")},
        {"id": "y", "image": "coffee.jpg", "conversations": _turns("What?")},
    ]
    (tmp_path / "e.json").write_text(json.dumps(ev))
    found = _column(decontaminate(load_instructions(str(tmp_path / "t.json")), [f"ev={tmp_path / 'e.json'}"]))
    assert found["two"] == "ev:x image-exact"
    assert found["near"].startswith("ev:y image-")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.integers(0, 2**16 - 1)), max_size=30),
    st.lists(st.one_of(st.none(), st.integers(0, 2**16 - 1)), max_size=30),
    st.integers(0, 5),
)
def test_band_search_against_another_set_matches_brute_force(reference, queries, max_distance):
    expected = []
    for value in queries:
        best = None
        for index, other in enumerate(reference):
            if value is None or other is None:
                continue
            d = (value ^ other).bit_count()
            if d <= max_distance and (best is None or (d, index) < (best[1], best[0])):
                best = (index, d)
        expected.append(best)
    assert checks.nearest_in(reference, queries, max_distance, 16) == expected


def test_cli_writes_reports_and_refuses(files, tmp_path, capsys):
    train_path, eval_path = files
    out = str(tmp_path / "clean")
    args = ["decontaminate", train_path, "--against", f"vqa={eval_path}", "--quiet"]
    assert main([*args, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "matched 6 of 11 rows" in printed and "dry run: nothing written" in printed and not os.path.exists(out)

    assert main([*args, "--out", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_matched"] == 6 and report["against"]["vqa"]["by_kind"]["text"] == 3
    from datasets import load_from_disk

    written = load_from_disk(out)
    assert len(written) == 11 and COLUMN in written.column_names
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["command"] == "decontaminate" and manifest["decontamination"]["n_matched"] == 6
    assert json.load(open(os.path.join(out, "decontamination.json")))["n_rows_written"] == 11

    assert main([*args, "--out", out]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--out", out, "--overwrite", "--drop"]) == 0
    assert len(load_from_disk(out)) == 5  # 4 clean rows + the error row, which is never matched
    assert main([*args, "--out", train_path]) == 2
    assert "overlaps the source" in capsys.readouterr().err
    assert main(["decontaminate", out, "--against", eval_path, "--out", out + "/x"]) == 2
    assert main([*args]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_scored_run_keeps_its_manifest_and_the_card_reports_it(tmp_path, capsys):
    ev = tmp_path / "ev.json"
    ev.write_text(json.dumps(json.load(open(EXAMPLE))[:3]))
    scored, clean, selected = str(tmp_path / "scored"), str(tmp_path / "clean"), str(tmp_path / "selected")
    assert main(["score", EXAMPLE, "--metrics", "length", "--out", scored, "--quiet"]) == 0
    # the eval set's images stay beside the example data: its image root (paths outside a root are not read)
    against = ["--against", f"mini={ev}", "--eval-image-root", f"mini={os.path.dirname(EXAMPLE)}"]
    assert main(["decontaminate", scored, *against, "--out", clean, "--quiet"]) == 0
    manifest = json.load(open(os.path.join(clean, "manifest.json")))
    assert manifest["metrics"][0]["name"] == "length"  # the scoring manifest travels with the data
    assert manifest["decontamination"]["n_matched"] >= 3
    capsys.readouterr()
    from datasets import load_from_disk

    from selector.card import build_card

    select = ["select", clean, "--strategy", "topk:score_length", "--budget", "40"]
    assert main([*select, "--out", selected]) == 0
    card = build_card(selected)
    assert "## Decontamination" in card and "`mini`" in card
    n_left = sum(v is not None for v in load_from_disk(selected)[COLUMN])
    assert n_left and f"{n_left} of them are in this subset" in card
    filtered = str(tmp_path / "filtered")
    assert main([*select, "--filter", "check_contaminated_by:is_null=true", "--out", filtered]) == 0
    assert all(v is None for v in load_from_disk(filtered)[COLUMN])
    assert "none of them is in this subset" in build_card(filtered)


def test_rows_with_errors_are_never_matched_but_kept(files):
    train_path, eval_path = files
    train = load_instructions(train_path)
    found = find_contamination(train, [eval_path])
    errors = np.array([e is not None for e in train["error"]])
    assert errors.any() and all(v is None for v, e in zip(found.column, errors) if e)
    assert found.report["n_error_rows"] == int(errors.sum())
