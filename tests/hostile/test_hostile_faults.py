"""Faults and silently wrong data (issue 21, items 6, 8, 9, 10, 12): images fixed in place are rescored, new
weights under the same path are rescored, ``num_proc`` workers are never forked from a process that ran torch,
one writer per output folder, a full disk or unwritable folder is one line and resumes, a killed final save
leaves nothing behind for good, and the SQLite judge cache holds under concurrent processes.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import hostile_fault_helpers as helpers
import numpy as np
import pytest
from metric_rows import make_dataset, turns

import selector
from selector.cli import main
from selector.errors import OutputError
from selector.fileio import folder_lock, lock_path, output_errors

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "selector", "example_data", "llava_mini.json")


def _error_line(err: str) -> str:
    """The CLI's one ``error:`` line (stderr also holds the loader's warnings)."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _rows(n: int = 12):
    return make_dataset(
        [{"id": f"r{i:02d}", "messages": turns(f"Question {i}?", "word " * (i + 1), image=False)} for i in range(n)]
    )


def _png(path, color, size=(16, 16)):
    from PIL import Image

    Image.new("RGB", size, color).save(path)


# Item 6: the input fingerprint covers image files; the shard key covers the model's weights.


def test_image_fixed_in_place_is_rescored(tmp_path):
    from selector.data import load_instructions

    images = tmp_path / "images"
    images.mkdir()
    _png(images / "a.png", "red")
    (images / "b.png").write_bytes(b"broken: not an image")
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A square."}]
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": name, "image": f"{name}.png", "conversations": conv} for name in "ab"]))
    out = str(tmp_path / "scored")

    first = selector.score(load_instructions(str(data), image_root=str(images)), [helpers.ImageBytesMetric()],
                           out_dir=out, progress=False)  # fmt: skip
    assert first["error"][1] is not None and np.isnan(first["score_imgbytes"][1])

    # fix the image in place: the folder's mtime does not change, only the file's
    folder_mtime = os.stat(images).st_mtime_ns
    _png(images / "b.png", "blue", size=(40, 40))
    os.utime(images, ns=(folder_mtime, folder_mtime))
    fixed = (images / "b.png").stat().st_size

    second = selector.score(load_instructions(str(data), image_root=str(images)), [helpers.ImageBytesMetric()],
                            out_dir=out, progress=False)  # fmt: skip
    assert second["error"][1] is None
    assert second["score_imgbytes"][1] == fixed
    assert second["score_imgbytes"][0] == first["score_imgbytes"][0]


def test_new_local_weights_change_the_shard_key(tmp_path):
    from selector.scoring import model_stamp, shard_key

    folder = tmp_path / "model"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"1" * 100)
    metric = helpers.LocalModelMetric(str(folder))
    before = shard_key("fp", metric)
    assert model_stamp(metric)["model_name_or_path"].startswith("local:")
    assert shard_key("fp", metric) == before  # stable while nothing changes
    weights.write_bytes(b"2" * 120)  # retrained and saved under the same folder name
    assert shard_key("fp", metric) != before


# Item 8: no fork after torch.


def test_map_workers_start_with_spawn_while_torch_is_loaded():
    import multiprocess
    import torch  # noqa: F401 - loaded in this process, as after any model metric

    from selector.scoring import _workers_never_fork_torch

    before = multiprocess.get_start_method(allow_none=True)
    with _workers_never_fork_torch(2):
        assert multiprocess.get_start_method() == "spawn"
    assert multiprocess.get_start_method(allow_none=True) == before
    with _workers_never_fork_torch(None):  # no workers: nothing changes
        assert multiprocess.get_start_method(allow_none=True) == before


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_num_proc_workers_are_not_forked_after_torch_ran(tmp_path, monkeypatch):
    import torch

    torch.ones(64, 64).matmul(torch.ones(64, 64)).sum().item()  # torch has run in this process
    monkeypatch.setenv("VLSELECT_TEST_PROBE_DIR", str(tmp_path))
    monkeypatch.setattr(helpers, "PARENT_MARK", True)
    ds = _rows(8)
    scored = selector.score(ds, [helpers.ForkProbe(name="probe")], num_proc=2, batch_size=2, progress=False)
    np.testing.assert_array_equal(scored["score_probe"], selector.score(ds, "length", progress=False)["score_length"])
    marks = [line for name in os.listdir(tmp_path) for line in (tmp_path / name).read_text().split()]
    assert marks and set(marks) == {"0"}, "a worker was forked from the process that ran torch"
    assert str(os.getpid()) + ".txt" not in os.listdir(tmp_path)  # the work ran in the workers


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_model_metric_with_num_proc_finishes(tiny_clip_path):
    """The issue's case: a model metric ran in this process, then the same metric with ``num_proc=2``."""
    rows = [{"id": f"r{i}", "messages": turns(f"Q {i}?", "word " * (i + 1), image=False)} for i in range(6)]
    ds = make_dataset(rows)
    spec = [{"metric": "clip", "model_name_or_path": tiny_clip_path}]
    alone = selector.score(ds, spec, progress=False)
    both = selector.score(ds, spec, num_proc=2, batch_size=2, progress=False)
    np.testing.assert_allclose(both["score_clip"], alone["score_clip"], rtol=1e-5, equal_nan=True)


# Item 9: one writer per output folder.

_HOLD = """
import sys, time
from selector.fileio import folder_lock
with folder_lock(sys.argv[1], command="score"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_writer_is_refused_with_one_line(tmp_path, capsys):
    out = tmp_path / "scored"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"another vlselect run .*pid {holder.pid} on host"):
            selector.score(_rows(), "length", out_dir=str(out), progress=False)
        assert main(["score", EXAMPLE, "--metrics", "length", "--out", str(out), "--quiet"]) == 2
        err = _error_line(capsys.readouterr().err)
        assert err.startswith("error: --out") and f"pid {holder.pid}" in err
        run_config = tmp_path / "run.yaml"
        run_config.write_text(
            f"source: {EXAMPLE}\nout: {out}\nmetrics: [{{metric: length}}]\nbudget: 3\nstrategy: random\n"
        )
        assert main(["run", str(run_config), "--quiet"]) == 2
        assert "another vlselect run" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # once the holder is gone (killed: the kernel dropped its lock) the folder is free again
    assert len(selector.score(_rows(), "length", out_dir=str(out), progress=False)) == 12
    assert not os.path.exists(lock_path(out))


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    out = tmp_path / "scored"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = {"pid": dead.pid, "host": socket.gethostname(), "command": "score", "started": "earlier"}
    with open(lock_path(out), "w") as handle:
        json.dump(owner, handle)
    selector.score(_rows(), "length", out_dir=str(out), progress=False)
    assert f"taking over the stale lock of pid {dead.pid}" in caplog.text


def test_lock_recorded_by_another_host_is_refused(tmp_path):
    out = tmp_path / "scored"
    with open(lock_path(out), "w") as handle:
        json.dump({"pid": 1234, "host": "some-other-host", "command": "score", "started": "earlier"}, handle)
    with pytest.raises(OutputError, match="another host .*some-other-host.*delete"):
        selector.score(_rows(), "length", out_dir=str(out), progress=False)


def test_lock_is_reentrant_within_a_process(tmp_path):
    out = tmp_path / "x"
    with folder_lock(out):
        with folder_lock(out):
            assert os.path.exists(lock_path(out))
        assert os.path.exists(lock_path(out))
    assert not os.path.exists(lock_path(out))


# Item 10: a full disk or an unwritable folder is one line; the run resumes; leftovers are cleaned.


def _fail_on_call(monkeypatch, module, name, call: int, code: int):
    real = getattr(module, name)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


def test_disk_full_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys, caplog):
    import pyarrow.parquet as pq

    out = str(tmp_path / "scored")
    _fail_on_call(monkeypatch, pq, "write_table", call=3, code=errno.ENOSPC)  # the third shard
    assert main(["score", EXAMPLE, "--metrics", "length", "--out", out, "--shard-size", "10", "--quiet"]) == 2
    err = _error_line(capsys.readouterr().err)
    assert err.startswith("error: cannot write --out") and "no space left on the device" in err
    assert "free some space" in err
    assert not os.path.exists(lock_path(out))
    monkeypatch.undo()  # space freed

    with caplog.at_level("INFO"):
        assert main(["score", EXAMPLE, "--metrics", "length", "--out", out, "--shard-size", "10"]) == 0
    assert "2 of 7 shard(s) already done, skipped" in caplog.text
    fresh = str(tmp_path / "fresh")
    assert main(["score", EXAMPLE, "--metrics", "length", "--out", fresh, "--shard-size", "10", "--quiet"]) == 0
    from datasets import load_from_disk

    np.testing.assert_array_equal(load_from_disk(out)["score_length"], load_from_disk(fresh)["score_length"])


def test_disk_full_during_the_final_save_resumes(tmp_path, monkeypatch):
    from datasets import Dataset

    out = str(tmp_path / "scored")
    _fail_on_call(monkeypatch, Dataset, "save_to_disk", call=1, code=errno.ENOSPC)
    with pytest.raises(OutputError, match="no space left"):
        selector.score(_rows(), "length", out_dir=out, progress=False)
    monkeypatch.undo()
    assert len(selector.score(_rows(), "length", out_dir=out, progress=False)) == 12


def test_read_only_file_system_is_one_line(tmp_path, monkeypatch):
    """EROFS from the write itself (works as root, unlike a chmod'ed folder)."""
    import pyarrow.parquet as pq

    _fail_on_call(monkeypatch, pq, "write_table", call=1, code=errno.EROFS)
    with pytest.raises(OutputError, match="read-only file system.*make it writable"):
        selector.score(_rows(), "length", out_dir=str(tmp_path / "s"), progress=False)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_folder_is_one_line(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        out = str(parent / "scored")
        assert main(["score", EXAMPLE, "--metrics", "length", "--out", out, "--quiet"]) == 2
        err = _error_line(capsys.readouterr().err)
        assert err.startswith("error: cannot write --out") and "permission denied" in err
    finally:
        parent.chmod(0o700)


def test_permission_error_reading_elsewhere_is_not_called_an_output_problem(tmp_path):
    with pytest.raises(PermissionError):
        with output_errors(tmp_path / "out"):
            raise PermissionError(errno.EACCES, "Permission denied", "/somewhere/else/model.bin")


def test_leftovers_of_a_killed_save_are_removed(tmp_path):
    out = tmp_path / "scored"
    selector.score(_rows(), "length", out_dir=str(out), progress=False, shard_size=5)
    staging = out / ".staging-999999999"  # a final save killed part-way (no such pid)
    staging.mkdir()
    (staging / "data-00000-of-00001.arrow").write_bytes(b"partial")
    shard_dir = next(p for p in (out / ".shards" / "length").iterdir())
    tmp_file = shard_dir / "rows-0000000000-0000000005.parquet.tmp-999999999"
    tmp_file.write_bytes(b"partial")
    (out / "manifest.json.tmp-999999999").write_text("{")
    selector.score(_rows(), "length", out_dir=str(out), progress=False, shard_size=5)
    assert not staging.exists() and not tmp_file.exists()
    assert not (out / "manifest.json.tmp-999999999").exists()


# Item 12: the SQLite judge cache under concurrent processes.


@pytest.mark.timeout(120)
def test_judge_cache_under_concurrent_processes(tmp_path):
    from metrics.judge_cache import AnswerCache

    path = str(tmp_path / "judge" / "answers.sqlite")  # a fresh file: every worker races to create it
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 4.0  # all workers start their first write together
    procs = [ctx.Process(target=helpers.cache_worker, args=(path, w, 25, start_at)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(100)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    assert len(AnswerCache(path)) == 4 * 25 * 5


@pytest.mark.timeout(60)
def test_forked_workers_do_not_reuse_the_parent_connection(tmp_path):
    from metrics.judge_backends import JudgeAnswer
    from metrics.judge_cache import AnswerCache

    cache = AnswerCache(tmp_path / "answers.sqlite")
    cache.put_many([("parent", "p", "m", "h", JudgeAnswer("Score: 1"))])  # the parent's connection is open
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=helpers.use_inherited_cache, args=(cache, w)) for w in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(50)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    assert len(cache) == 1 + 3 * 20
