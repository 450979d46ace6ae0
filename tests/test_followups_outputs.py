"""``labels --out`` and ``train-selector --out`` follow the output rules of :mod:`selector.runs`: no output that is,
holds or is inside an input; a non-empty folder is reused or replaced only when vlselect wrote it; a new selector
replaces an earlier one only once it is completely saved."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image
from tree_helpers import file_digests

from selector.cli import main
from selector.runs import OWN_MARKER

CAPTION = [
    {"from": "human", "value": "<image>\nDescribe this image in detail."},
    {"from": "gpt", "value": "A small red square on its own."},
]


class Injected(RuntimeError):
    """The failure injected mid-run."""


@pytest.fixture
def data(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (6, 6), (200, 0, 0)).save(buffer, format="PNG")
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    rows = [
        {"id": f"r{i}", "image": "a.png", "conversations": [CAPTION[0], {"from": "gpt", "value": "word " * (i + 1)}]}
        for i in range(4)
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    return path


# labels --out / train-selector --out -------------------------------------------------------------------------------


@pytest.fixture
def scored(tmp_path, data):
    out = tmp_path / "scored"
    assert main(["score", str(data), "--metrics", "length", "--out", str(out)]) == 0
    return out


@pytest.fixture
def label_file(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "label": float(i)}) + "\n" for i in range(4)))
    return path


def _train(scored, label_file, out, *extra) -> list[str]:
    return ["train-selector", str(scored), "--labels", str(label_file), "--out", str(out), "--model", "ridge", *extra]


@pytest.mark.parametrize("where", ["scored", "scored/sub", "."])
def test_train_selector_out_may_not_overlap_its_inputs(tmp_path, scored, label_file, capsys, where):
    before = file_digests(scored)
    assert main(_train(scored, label_file, tmp_path / where, "--overwrite")) == 2
    assert "overlaps the source" in capsys.readouterr().err
    assert file_digests(scored) == before and label_file.is_file()


def test_train_selector_replaces_only_its_own_folder(tmp_path, scored, label_file, capsys, monkeypatch):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert main(_train(scored, label_file, theirs, "--overwrite")) == 2
    assert "not written by vlselect" in capsys.readouterr().err
    assert os.listdir(theirs) == ["notes.txt"]

    sel = tmp_path / "sel"
    assert main(_train(scored, label_file, sel)) == 0
    assert (sel / OWN_MARKER).is_file()
    os.remove(sel / OWN_MARKER)  # as saved before the marker existed: still recognised as a selector
    before = file_digests(sel)

    from selector.learned import LearnedSelector

    def half_saved(self, directory, **kwargs):
        (Path(directory) / "model.safetensors").write_bytes(b"partial")
        raise Injected("killed while saving")

    monkeypatch.setattr(LearnedSelector, "save_pretrained", half_saved)
    with pytest.raises(Injected):
        main(_train(scored, label_file, sel, "--overwrite"))
    assert file_digests(sel) == before
    monkeypatch.undo()
    assert main(_train(scored, label_file, sel, "--overwrite")) == 0
    assert LearnedSelector.from_pretrained(str(sel)).model == "ridge"
    assert str(sel) in (sel / "README.md").read_text()  # the card names the folder, not the staging copy
    assert "vlselect-staging" not in (sel / "README.md").read_text()


def _labels(scored, out, val) -> list[str]:
    return ["labels", str(scored), "--n-subsets", "2", "--recipe", "tiny_cpu", "--val", str(val), "--out", str(out)]


def test_labels_out_refuses_a_foreign_folder_and_the_inputs(tmp_path, scored, data, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert main(_labels(scored, theirs, data)) == 2
    assert "not an earlier `vlselect labels` output" in capsys.readouterr().err
    assert os.listdir(theirs) == ["notes.txt"]
    before = file_digests(scored)
    for out in (scored, scored / "labels", tmp_path):
        assert main(_labels(scored, out, data)) == 2
        assert "overlaps the source" in capsys.readouterr().err
    assert file_digests(scored) == before
