"""The overwrite rules: no command deletes or overwrites anything before its new output is complete, none writes
into, over or around its input, and ``--overwrite`` replaces only folders vlselect wrote (the ``.vlselect-output``
marker, or a vlselect ``manifest.json`` for folders written before the marker existed).

Driven through the real CLI (:func:`selector.cli.main`); each case checks the bytes that must survive.
"""

from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image
from tree_helpers import file_digests

from selector.cli import main
from selector.runs import OWN_MARKER

CAPTION = [
    {"from": "human", "value": "<image>\nDescribe this image in detail."},
    {"from": "gpt", "value": "A small red square on its own."},
]


def _png(color=(200, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 6), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


@pytest.fixture
def data(tmp_path):
    """A LLaVA file with captions MiniGPT-4 accepts, and its image."""
    (tmp_path / "a.png").write_bytes(_png())
    rows = [{"id": f"r{i}", "image": "a.png", "conversations": CAPTION} for i in range(4)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def minigpt4(tmp_path, data):
    out = tmp_path / "mg"
    assert main(["convert", str(data), str(out), "--to", "minigpt4"]) == 0
    assert (out / OWN_MARKER).is_file()
    return out


@pytest.fixture
def scored(tmp_path, data):
    out = tmp_path / "scored"
    assert main(["score", str(data), "--metrics", "length", "--out", str(out)]) == 0
    return out


# convert / export ------------------------------------------------------------------------------------------------


def test_convert_into_its_own_source_is_refused(minigpt4, capsys):
    before = file_digests(minigpt4)
    assert main(["convert", str(minigpt4), str(minigpt4), "--to", "minigpt4", "--overwrite"]) == 2
    assert "overlaps the source" in _error(capsys)
    assert file_digests(minigpt4) == before


@pytest.mark.parametrize("where", ["inside", "around"])
def test_convert_inside_or_around_the_source_is_refused(tmp_path, minigpt4, data, capsys, where):
    before = file_digests(tmp_path)
    if where == "inside":
        args = ["convert", str(minigpt4), str(minigpt4 / "sub"), "--to", "minigpt4", "--overwrite"]
    else:
        args = ["convert", str(data), str(tmp_path), "--to", "minigpt4", "--overwrite"]
    assert main(args) == 2
    assert "overlaps the source" in _error(capsys)
    assert file_digests(tmp_path) == before


def test_convert_a_file_onto_itself_is_refused(data, capsys):
    before = data.read_bytes()
    assert main(["convert", str(data), str(data), "--to", "llava", "--overwrite"]) == 2
    _error(capsys)
    assert data.read_bytes() == before


def test_convert_onto_a_folder_named_like_a_file_is_one_line(tmp_path, data, capsys):
    folder = tmp_path / "out.json"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    assert main(["convert", str(data), str(folder), "--to", "llava", "--overwrite"]) == 2
    assert "is a folder" in _error(capsys)
    assert (folder / "keep.txt").read_text() == "mine"


def test_minigpt4_overwrite_replaces_an_earlier_export_only_when_complete(tmp_path, minigpt4):
    from datasets import IterableDataset

    from selector.data import export_instructions, load_instructions
    from selector.data.schema import features

    before = file_digests(minigpt4)
    rows = list(load_instructions(str(tmp_path / "data.json")))

    def failing():
        yield from rows[:2]
        raise OSError(28, "No space left on device")

    broken = IterableDataset.from_generator(failing, features=features())
    with pytest.raises(OSError):
        export_instructions(broken, minigpt4, format="minigpt4", overwrite=True)
    assert file_digests(minigpt4) == before  # the earlier export is intact
    assert sorted(os.listdir(tmp_path)) == sorted(["a.png", "data.json", "mg"])  # no staging folder left
    # a complete export replaces it
    again = load_instructions(str(tmp_path / "data.json")).select(range(2))
    assert export_instructions(again, minigpt4, format="minigpt4", overwrite=True).n_written == 2
    assert len(os.listdir(minigpt4 / "image")) == 2 and (minigpt4 / OWN_MARKER).is_file()


def test_minigpt4_overwrite_refuses_a_folder_vlselect_did_not_write(tmp_path, data, capsys):
    theirs = tmp_path / "cc_sbu_align"
    (theirs / "image").mkdir(parents=True)
    (theirs / "image" / "1.jpg").write_bytes(b"their photo")
    (theirs / "filter_cap.json").write_text('{"annotations": []}')
    before = file_digests(theirs)
    assert main(["convert", str(data), str(theirs), "--to", "minigpt4"]) == 2
    assert "exists" in _error(capsys)
    assert main(["convert", str(data), str(theirs), "--to", "minigpt4", "--overwrite"]) == 2
    assert "not written by vlselect" in _error(capsys)
    assert file_digests(theirs) == before


# select ------------------------------------------------------------------------------------------------------------


def test_select_into_the_scored_run_is_refused(scored, capsys):
    before = file_digests(scored)
    for out in (scored, scored / "picked"):
        args = ["select", str(scored), "--strategy", "topk:score_length", "--budget", "2", "--overwrite"]
        assert main([*args, "--out", str(out)]) == 2
        assert "overlaps the source" in _error(capsys)
    assert file_digests(scored) == before


def test_select_overwrite_replaces_only_vlselect_folders(tmp_path, scored, capsys):
    from datasets import Dataset

    args = ["select", str(scored), "--strategy", "topk:score_length", "--budget", "2", "--overwrite", "--out"]
    # the user's own save_to_disk dataset (state.json, no vlselect marker or manifest) is not replaced
    theirs = tmp_path / "theirs"
    Dataset.from_dict({"x": [1, 2]}).save_to_disk(str(theirs))
    before = file_digests(theirs)
    assert main([*args, str(theirs)]) == 2
    assert "not written by vlselect" in _error(capsys)
    assert file_digests(theirs) == before
    # a selection written by an earlier version (vlselect manifest, no marker) is replaced; so is a marked one
    picked = tmp_path / "picked"
    assert main([*args, str(picked)]) == 0
    os.remove(picked / OWN_MARKER)
    assert main([*args, str(picked)]) == 0
    assert (picked / OWN_MARKER).is_file()
    assert main([*args, str(picked)]) == 0


# score -------------------------------------------------------------------------------------------------------------


def test_score_refuses_a_folder_with_a_foreign_manifest(tmp_path, data, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "manifest.json").write_text('{"mine": true}')
    assert main(["score", str(data), "--metrics", "length", "--out", str(theirs)]) == 2
    _error(capsys)
    assert (theirs / "manifest.json").read_text() == '{"mine": true}'
    assert os.listdir(theirs) == ["manifest.json"]


def test_score_into_its_source_is_refused(scored, capsys):
    before = file_digests(scored)
    assert main(["score", str(scored), "--metrics", "length", "--out", str(scored)]) == 2
    assert "overlaps the source" in _error(capsys)
    assert file_digests(scored) == before


def test_score_resumes_in_its_own_folder_and_an_earlier_versions(tmp_path, data, scored):
    assert (scored / OWN_MARKER).is_file()
    assert main(["score", str(data), "--metrics", "length", "--out", str(scored)]) == 0
    os.remove(scored / OWN_MARKER)  # as an earlier version left it: a vlselect manifest only
    assert main(["score", str(data), "--metrics", "length", "--out", str(scored)]) == 0


# run ---------------------------------------------------------------------------------------------------------------


def _config(tmp_path, out, source="data.json") -> str:
    path = tmp_path / "run.yaml"
    path.write_text(
        f"source: {source}\nout: {out}\nmetrics: [{{metric: length}}]\nstrategy: topk:score_length\nbudget: 2\n"
    )
    return str(path)


def test_run_refuses_a_foreign_folder_before_writing_anything(tmp_path, data, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"precious": true}')
    assert main(["run", _config(tmp_path, "theirs")]) == 2
    assert "not an earlier vlselect run" in _error(capsys)
    assert os.listdir(theirs) == ["config.json"]
    assert (theirs / "config.json").read_text() == '{"precious": true}'


def test_run_refuses_an_out_that_overlaps_the_source(tmp_path, data, capsys):
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png())
    (folder / "data.json").write_text(data.read_text())
    before = file_digests(folder)
    assert main(["run", _config(tmp_path, "input/run", source="input")]) == 2
    assert "overlaps the source" in _error(capsys)
    assert file_digests(folder) == before


def test_run_resumes_its_own_folder_and_an_earlier_versions(tmp_path, data):
    config = _config(tmp_path, "run")
    assert main(["run", config]) == 0
    assert (tmp_path / "run" / OWN_MARKER).is_file()
    os.remove(tmp_path / "run" / OWN_MARKER)  # an earlier version's run folder: config.json, scored/, selected/
    os.remove(tmp_path / "run" / "scored" / OWN_MARKER)
    os.remove(tmp_path / "run" / "selected" / OWN_MARKER)
    assert main(["run", config]) == 0
