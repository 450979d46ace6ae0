"""Hostile and unlucky rows and configurations: each bad row becomes that row's ``error``; a problem with the
whole input, a configuration or the environment is one line ``error: ...`` and exit code 2, never a traceback.

The corpus is generated at test time (a few small files per case) and driven through the real CLI
(:func:`selector.cli.main`) where the issue names a command.
"""

from __future__ import annotations

import base64
import io
import json
import os

import pytest
from PIL import Image

from selector.cli import main
from selector.data import export_instructions, load_instructions
from selector.errors import ConfigError, DataError, VLSelectError
from selector.rows import error_kind

GOOD = [
    {"from": "human", "value": "<image>\nWhat is this?"},
    {"from": "gpt", "value": "A red square."},
]
DEEP = "[" * 100_000 + "]" * 100_000


def _png(color=(200, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 6), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    return tmp_path


def _good_row(row_id: str) -> dict:
    return {"id": row_id, "image": "a.png", "conversations": GOOD}


def _errors(ds) -> dict:
    return {row_id: error_kind(error) for row_id, error in zip(ds["id"], ds["error"])}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error line"
    assert err[-1].startswith("error: "), err
    assert not any("Traceback" in line for line in err), err
    return err[-1]


# Lone surrogates ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_escaped_lone_surrogate_marks_the_row_invalid_utf8(folder, suffix):
    # "\ud83d" is half of an emoji's surrogate pair: scrapers cut strings in the middle of one.
    bad = '{"id": "cut\\udc00x", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\\nhi \\ud83d"}, {"from": "gpt", "value": "ok \\ude00"}]}'
    good = json.dumps(_good_row("fine"))
    path = folder / f"data{suffix}"
    path.write_text(f"[{bad}, {good}]" if suffix == ".json" else f"{bad}\n{good}\n")
    ds = load_instructions(str(path))
    rows = {r["id"]: r for r in ds}
    assert len(rows) == 2
    cut = next(r for r in rows.values() if r["id"] != "fine")
    assert error_kind(cut["error"]) == "invalid_utf8"
    assert cut["messages"][0]["content"] == "<image>\nhi \ufffd"
    assert cut["messages"][1]["content"] == "ok \ufffd"
    assert "\ufffd" in cut["id"]
    assert rows["fine"]["error"] is None


def test_lone_surrogate_in_an_image_path_is_a_row_error(folder):
    bad = '{"id": "p", "image": "a\\ud83d.png", "conversations": ' + json.dumps(GOOD) + "}"
    path = folder / "data.jsonl"
    path.write_text(bad + "\n" + json.dumps(_good_row("fine")) + "\n")
    errors = _errors(load_instructions(str(path)))
    assert errors == {"p": "missing_image", "fine": None}


def test_surrogates_through_the_cli(folder, tmp_path, capsys):
    bad = '{"id": "s", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\\n\\ud83d"}, {"from": "gpt", "value": "x"}]}'
    path = folder / "data.jsonl"
    path.write_text(bad + "\n" + json.dumps(_good_row("fine")) + "\n")
    assert main(["score", str(path), "--metrics", "length", "--out", str(tmp_path / "scored")]) == 0
    assert main(["convert", str(path), str(tmp_path / "out" / "x.json"), "--to", "llava"]) == 0
    written = json.loads((tmp_path / "out" / "x.json").read_text())
    assert [r["id"] for r in written] == ["fine"]  # the repaired row has an error and is listed, not written


# Deep nesting ---------------------------------------------------------------------------------------------------


def test_deep_nesting_in_a_jsonl_line_is_that_rows_error(folder):
    path = folder / "data.jsonl"
    path.write_text(DEEP + "\n" + json.dumps(_good_row("fine")) + "\n")
    errors = _errors(load_instructions(str(path)))
    assert errors == {"data:line1": "invalid_json", "fine": None}


def test_deep_nesting_in_a_json_file_is_one_line(folder, capsys):
    path = folder / "data.json"
    path.write_text("[" + json.dumps(_good_row("fine")) + ', {"id": "x", "conversations": ' + DEEP + "}]")
    with pytest.raises(DataError, match="nested too deeply"):
        load_instructions(str(path))
    assert main(["inspect", str(path)]) == 2
    assert "nested too deeply" in _one_error_line(capsys)


def test_deep_nesting_in_a_labels_file_is_one_line(tmp_path, capsys):
    from selector.learned import read_labels

    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"id": "a", "label": 1.0}) + "\n" + '{"id": "b", "label": ' + DEEP + "}\n")
    with pytest.raises(DataError, match="line 2 is nested too deeply"):
        read_labels(labels)
    assert main(["train-selector", str(tmp_path), "--labels", str(labels), "--out", str(tmp_path / "sel")]) == 2
    _one_error_line(capsys)


def test_deep_nesting_in_vlselect_json_files_is_one_line(tmp_path):
    from selector.fileio import read_json
    from selector.labels import read_summary

    (tmp_path / "summary.json").write_text(DEEP)
    with pytest.raises(DataError, match="nested too deeply"):
        read_json(tmp_path / "summary.json")
    with pytest.raises(DataError):
        read_summary(tmp_path)


# Embedded images ------------------------------------------------------------------------------------------------


def test_base64_image_bytes_in_messages_rows_are_decoded(tmp_path):
    png = _png((0, 0, 200))
    content = [{"type": "image"}, {"type": "text", "text": "What?"}]
    base = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "Blue."}]}
    rows = [
        {"id": "b64", **base, "images": [{"bytes": base64.b64encode(png).decode()}]},
        {"id": "junk", **base, "images": [{"bytes": "not base64 at all!"}]},
        {"id": "num", **base, "images": [{"bytes": 12345}]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from datasets import Image as ImageFeature

    ds = load_instructions(str(path)).cast_column("image", ImageFeature(decode=False))
    by_id = {r["id"]: r for r in ds}
    assert by_id["b64"]["error"] is None and by_id["b64"]["image"]["bytes"] == png
    assert error_kind(by_id["junk"]["error"]) == "corrupt_image"
    assert by_id["num"]["error"] is not None and by_id["num"]["image"] is None


# Canonical rows of the wrong shape --------------------------------------------------------------------------------


def test_canonical_rows_with_wrong_types_are_row_errors(tmp_path, capsys):
    turns = [{"role": "user", "content": "<image>\nq"}, {"role": "assistant", "content": "a"}]
    text = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rows = [
        {"id": "str_images", "image": None, "images": "a.png", "messages": turns, "error": None},
        {"id": "int_error", "image": None, "images": [], "messages": text, "error": 5},
        {"id": "list_error", "image": None, "images": [], "messages": text, "error": ["x"]},
        {"id": "dot", "image": ".", "images": [], "messages": turns, "error": None},
        {"id": "fine", "image": None, "images": [], "messages": text, "error": None},
    ]
    path = tmp_path / "canon.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    errors = _errors(load_instructions(str(path)))
    assert errors == {
        "str_images": "bad_row",
        "int_error": "bad_row",
        "list_error": "bad_row",
        "dot": "missing_image",
        "fine": None,
    }
    assert main(["score", str(path), "--metrics", "length", "--out", str(tmp_path / "scored")]) == 0


def test_canonical_image_path_dot_exports(tmp_path):
    from datasets import Dataset

    from selector.data.schema import features

    turns = [{"role": "user", "content": "<image>\nq"}, {"role": "assistant", "content": "a"}]
    rows = [
        {"id": "dot", "image": {"bytes": _png(), "path": "."}, "images": [], "messages": turns, "error": None},
        {"id": "up", "image": {"bytes": _png((1, 2, 3)), "path": "./"}, "images": [], "messages": turns},
    ]
    rows[1]["error"] = None
    Dataset.from_list([{**r, "source": None} for r in rows], features=features()).to_parquet(tmp_path / "c.parquet")
    out = tmp_path / "out" / "x.json"
    assert main(["convert", str(tmp_path / "c.parquet"), str(out), "--to", "llava"]) == 0
    written = json.loads(out.read_text())
    assert {r["id"] for r in written} == {"dot", "up"}
    for record in written:
        assert (out.parent / record["image"]).is_file()


def test_image_named_like_the_export_file_is_not_overwritten(tmp_path):
    """Item 5: an image whose path equals the export's file name would be overwritten by the JSON."""
    from datasets import Dataset

    from selector.data.schema import features

    png = _png((9, 9, 9))
    turns = [{"role": "user", "content": "<image>\nq"}, {"role": "assistant", "content": "a"}]
    rows = [
        {"id": "clash", "image": {"bytes": png, "path": "train.json"}, "images": [], "messages": turns},
        {
            "id": "tmp",
            "image": {"bytes": png, "path": f"train.json.tmp-{os.getpid()}"},
            "images": [],
            "messages": turns,
        },
        {"id": "under", "image": {"bytes": png, "path": "train.json/x.png"}, "images": [], "messages": turns},
    ]
    ds = Dataset.from_list([{**r, "error": None, "source": None} for r in rows], features=features())
    out = tmp_path / "train.json"
    report = export_instructions(ds, out, format="llava")
    assert report.n_written == 3
    written = json.loads(out.read_text())  # still the JSON, not the PNG
    for record in written:
        assert record["image"] != "train.json" and not record["image"].startswith("train.json")
        assert (tmp_path / record["image"]).read_bytes() == png
    back = load_instructions(str(out))
    assert back["error"] == [None, None, None]


# Whole-input and configuration problems through the CLI -----------------------------------------------------------


def test_splits_given_as_a_string_is_one_line(tmp_path, capsys):
    folder = tmp_path / "dd"
    (folder / "train").mkdir(parents=True)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": "train"}))
    assert main(["inspect", str(folder)]) == 2
    line = _one_error_line(capsys)
    assert "'splits' must be a non-empty list" in line and "t, r, a" not in line
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": ["../../etc"]}))
    assert main(["inspect", str(folder)]) == 2
    _one_error_line(capsys)
    (folder / "dataset_dict.json").write_text(json.dumps(["train"]))
    assert main(["inspect", str(folder)]) == 2
    _one_error_line(capsys)


def test_malformed_save_to_disk_state_is_one_line(tmp_path, capsys):
    folder = tmp_path / "saved"
    folder.mkdir()
    for state in (["x"], {"_data_files": [{"filename": 5}]}, {"_data_files": [{"filename": "/etc/passwd"}]}):
        (folder / "state.json").write_text(json.dumps(state))
        assert main(["inspect", str(folder)]) == 2
        _one_error_line(capsys)


def test_minigpt4_export_of_over_long_ids(tmp_path, capsys):
    conv = [{"from": "human", "value": "<image>\nDescribe this image in detail."}, {"from": "gpt", "value": "Red."}]
    (tmp_path / "a.png").write_bytes(_png())
    rows = [{"id": "x" * 400, "image": "a.png", "conversations": conv}]
    rows.append({"id": "x" * 399 + "y", "image": "a.png", "conversations": conv})
    (tmp_path / "long.json").write_text(json.dumps(rows))
    out = tmp_path / "mg"
    assert main(["convert", str(tmp_path / "long.json"), str(out), "--to", "minigpt4"]) == 0
    names = sorted(os.listdir(out / "image"))
    assert len(names) == 2 and all(len(n) < 200 for n in names)
    ds = load_instructions(str(out))
    assert ds["error"] == [None, None]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("seed", "abc"),
        ("seed", 1.5),
        ("batch_size", "big"),
        ("batch_size", 0),
        ("limit", "all"),
        ("metrics", "length"),
        ("metrics", ["length"]),
        ("options", [1]),
        ("strategy", 5),
        ("score_column", 3),
        ("image_root", 7),
        ("out", ["x"]),
    ],
)
def test_pipeline_values_of_the_wrong_type_are_config_errors(tmp_path, capsys, key, value):
    from selector.pipeline import PipelineConfig

    values = {"source": "data.json", "out": "run", key: value}
    with pytest.raises(ConfigError, match=key):
        PipelineConfig.from_dict(values)
    config = tmp_path / "c.yaml"
    import yaml

    config.write_text(yaml.safe_dump(values))
    assert main(["run", str(config)]) == 2
    assert key in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()  # nothing written before validation


def _selector_folder(tmp_path):
    """A real saved ridge selector (tiny), to damage one file at a time."""
    import numpy as np
    from datasets import Dataset

    from selector.learned import LearnedSelector

    rng = np.random.default_rng(0)
    n = 24
    ds = Dataset.from_dict(
        {"id": [str(i) for i in range(n)], "score_a": rng.random(n).tolist(), "score_b": rng.random(n).tolist()}
    )
    model = LearnedSelector(model="ridge").fit(ds, rng.random(n))
    path = tmp_path / "sel"
    model.save_pretrained(path)
    return path, ds


def _damage(name: str, path):
    config = json.loads((path / "config.json").read_text())
    if name == "no_params":
        del config["params"]
    elif name == "params_list":
        config["params"] = [1, 2]
    elif name == "no_fitted":
        del config["fitted"]
    elif name == "bad_version":
        config["format_version"] = "two"
    elif name == "spec_garbage":
        config["feature_spec"] = "garbage"
    elif name == "weights_garbage":
        (path / "model.safetensors").write_bytes(b"\x00" * 10)
    elif name == "weights_missing_tensor":
        from safetensors.numpy import save_file

        save_file({"other": __import__("numpy").zeros(2, dtype="float32")}, str(path / "model.safetensors"))
    elif name == "config_deep":
        (path / "config.json").write_text(DEEP)
        return
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "damage",
    [
        "no_params",
        "params_list",
        "no_fitted",
        "bad_version",
        "spec_garbage",
        "weights_garbage",
        "weights_missing_tensor",
        "config_deep",
    ],
)
def test_malformed_learned_selector_folders_are_one_line(tmp_path, capsys, damage):
    from selector.learned import LearnedSelector

    path, ds = _selector_folder(tmp_path)
    LearnedSelector.from_pretrained(path)  # intact: loads
    _damage(damage, path)
    with pytest.raises(VLSelectError):
        LearnedSelector.from_pretrained(path)
    scored = tmp_path / "scored"
    ds.add_column("image", [None] * len(ds)).save_to_disk(str(scored))
    args = ["select", str(scored), "--strategy", "random", "--budget", "3", "--selector", str(path)]
    assert main([*args, "--out", str(tmp_path / "picked")]) == 2
    _one_error_line(capsys)


def _metric_config(tmp_path, **entry) -> str:
    import yaml

    path = tmp_path / "metrics.yaml"
    path.write_text(yaml.safe_dump({"metrics": [entry]}))
    return str(path)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"model_name_or_path": "/nonexistent/vlselect/model"}, "does not exist"),
        ({"model_name_or_path": "someone-vlselect/not-cached-model"}, "cannot load model"),
        ({"device": "cuda:0"}, "CUDA is not available"),
        ({"device": "cuda"}, "CUDA is not available"),
        ({"device": "gpu"}, "not a torch device"),
    ],
)
def test_missing_models_and_devices_are_one_line(folder, tmp_path, capsys, monkeypatch, entry, expected):
    import torch

    if "device" in entry and torch.cuda.is_available() and entry["device"] != "gpu":
        pytest.skip("CUDA is available here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = folder / "data.json"
    path.write_text(json.dumps([_good_row("a"), _good_row("b")]))
    spec = {"metric": "embedding", "name": "e", "model_name_or_path": str(folder), **entry}
    config = _metric_config(tmp_path, **spec)
    assert main(["score", str(path), "--metric-config", config, "--out", str(tmp_path / "scored")]) == 2
    assert expected in _one_error_line(capsys)


def test_a_folder_that_holds_no_model_is_one_line(folder, tmp_path, capsys):
    path = folder / "data.json"
    path.write_text(json.dumps([_good_row("a")]))
    config = _metric_config(tmp_path, metric="embedding", name="e", model_name_or_path=str(folder))
    assert main(["score", str(path), "--metric-config", config, "--out", str(tmp_path / "scored")]) == 2
    assert "cannot load model" in _one_error_line(capsys)
