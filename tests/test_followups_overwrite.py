"""``--overwrite`` on the commands that resume (``score``, ``run``; ``demo`` shares the code): the earlier result
stays in place, byte for byte, until the new one is complete; an interrupted run leaves it intact; run folders of
earlier versions (no marker at the top) are recognised."""

from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image
from tree_helpers import file_digests

import selector.runs
import selector.scoring
from selector.cli import main
from selector.runs import OWN_MARKER

CAPTION = [
    {"from": "human", "value": "<image>\nDescribe this image in detail."},
    {"from": "gpt", "value": "A small red square on its own."},
]


class Injected(RuntimeError):
    """The failure injected mid-run."""


def _leftovers(parent) -> list[str]:
    return [name for name in os.listdir(parent) if "vlselect-fresh" in name or "vlselect-old" in name]


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


def _config(tmp_path, budget=2) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(
        f"source: data.json\nout: run\nmetrics: [{{metric: length}}]\nstrategy: topk:score_length\nbudget: {budget}\n"
    )
    return str(path)


def test_run_overwrite_interrupted_mid_run_keeps_the_earlier_result(tmp_path, data, monkeypatch):
    assert main(["run", _config(tmp_path)]) == 0
    run = tmp_path / "run"
    before = file_digests(run)

    def fail(*args, **kwargs):
        assert os.path.isdir(run / "scored"), "the earlier result was removed before the new one was complete"
        raise Injected("disk gone mid-run")

    # scoring has finished when the selection is written: the failure lands in the middle of the run
    monkeypatch.setattr(selector.runs, "write_selection", fail)
    with pytest.raises(Injected):
        main(["run", _config(tmp_path, budget=3), "--overwrite"])
    assert file_digests(run) == before
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()

    # a run killed with -9 leaves its staging folder: the next --overwrite removes it
    (tmp_path / ".run.vlselect-fresh-999999999-dead").mkdir()
    assert main(["run", _config(tmp_path, budget=3), "--overwrite"]) == 0
    assert _leftovers(tmp_path) == []
    manifest = json.loads((run / "selected" / "manifest.json").read_text())
    assert manifest["counts"]["n_selected"] == 3
    # the swapped folder names itself, not the staging folder it was written in
    assert manifest["input"] == str(run / "scored")
    assert json.loads((run / "config.json").read_text())["out"] == str(run)
    assert "vlselect-fresh" not in (run / "selected" / "report.html").read_text()
    assert (run / OWN_MARKER).is_file()
    assert main(["report", str(run)]) == 0


def test_run_overwrite_prints_the_final_paths(tmp_path, data, capsys):
    assert main(["run", _config(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["run", _config(tmp_path), "--overwrite", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scored"] == str(tmp_path / "run" / "scored")
    assert result["card"] == str(tmp_path / "run" / "selected" / "README.md")


def test_run_overwrite_replaces_an_earlier_versions_run_folder(tmp_path, data):
    assert main(["run", _config(tmp_path)]) == 0
    run = tmp_path / "run"
    for folder in (run, run / "scored", run / "selected"):  # as an earlier version left it: manifests only
        os.remove(folder / OWN_MARKER)
    assert main(["run", _config(tmp_path, budget=3), "--overwrite"]) == 0
    assert json.loads((run / "selected" / "manifest.json").read_text())["counts"]["n_selected"] == 3


def test_run_overwrite_still_refuses_a_foreign_folder(tmp_path, data, capsys):
    theirs = tmp_path / "run"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"precious": true}')
    (theirs / "scored").mkdir()
    assert main(["run", _config(tmp_path), "--overwrite"]) == 2
    assert "not written by vlselect" in capsys.readouterr().err
    assert (theirs / "config.json").read_text() == '{"precious": true}'


def test_score_overwrite_interrupted_keeps_the_earlier_result(tmp_path, data, monkeypatch):
    out = tmp_path / "scored"
    assert main(["score", str(data), "--metrics", "length", "--out", str(out)]) == 0
    before = file_digests(out)

    def fail(*args, **kwargs):
        raise Injected("killed before the manifest")

    monkeypatch.setattr(selector.scoring, "build_manifest", fail)
    with pytest.raises(Injected):
        main(["score", str(data), "--metrics", "length", "--out", str(out), "--overwrite"])
    assert file_digests(out) == before
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert main(["score", str(data), "--metrics", "length", "--out", str(out), "--overwrite", "--limit", "2"]) == 0
    assert json.loads((out / "manifest.json").read_text())["input"]["n_scored"] == 2
    assert (out / OWN_MARKER).is_file()
    assert _leftovers(tmp_path) == []
