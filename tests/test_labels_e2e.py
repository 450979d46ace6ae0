"""`vlselect labels` end to end with the tiny training config: 3 subsets, interruption and resume, train-selector,
and the same command from an installed wheel outside the checkout.

A pool of 33 rows in 3 embedding blobs, one blob per answer style: short colour names (the style of the
validation set), 40-letter noise, and a repeated "ZZZZ". One step of the tiny LLaVA-style model per subset.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from selector.cli import main
from selector.training import finetune

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(ROOT / "recipes" / "configs" / "tiny_cpu.yaml")
COLORS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0), "yellow": (255, 255, 0)}
STYLES = ("good", "noise", "zz")


def _png(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def _row(row_id, color, answer):
    return {
        "id": row_id,
        "image": {"bytes": _png(COLORS[color]), "path": None},
        "images": [],
        "messages": [
            {"role": "user", "content": "<image>\nWhat color?"},
            {"role": "assistant", "content": answer},
        ],
        "error": None,
        "source": "colors",
    }


def _answer(style, color, rng):
    if style == "good":
        return color
    if style == "noise":
        return "".join(rng.choice(list("qxzjkvw"), size=40))
    return "ZZZZ " * 8


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    from tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``(scored_dir, val_a, val_b)``: the pool as `vlselect score` writes it, and two validation sets."""
    from datasets import Dataset, Features, List, Value

    from selector.data.schema import features

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("labels-data")
    names = list(COLORS)
    rows, emb = [], []
    for b, style in enumerate(STYLES):
        for i in range(10):
            color = names[(b + i) % 4]
            rows.append(_row(f"{style}{i:02d}", color, _answer(style, color, rng)))
            emb.append(np.eye(8)[b] + 0.05 * rng.normal(size=8))
    # one extra row for the balance drop (farther from its blob's centre than the others), one error row, one
    # row whose embedding failed
    rows.append(_row("good_stray", "red", "red"))
    emb.append(np.eye(8)[0] + 0.6 * np.eye(8)[5])
    rows.append(dict(_row("broken", "red", "red"), image=None, error="missing_image: gone.png"))
    emb.append(np.full(8, np.nan))
    rows.append(_row("noemb", "blue", "blue"))
    emb.append(np.full(8, np.nan))
    for row, e in zip(rows, emb):
        row["emb_clip"] = None if np.isnan(e).all() else (e / np.linalg.norm(e)).astype(np.float32).tolist()
        row["score_length"] = float(len(row["messages"][1]["content"]))
    feats = Features({**features(), "emb_clip": List(Value("float32")), "score_length": Value("float32")})
    scored = root / "scored"
    Dataset.from_list(rows, features=feats).save_to_disk(str(scored))
    (scored / "manifest.json").write_text(json.dumps({"input_fingerprint": "test"}))
    val_a = [_row(f"va{i}", names[i % 4], names[i % 4]) for i in range(4)]
    val_b = [_row(f"vb{i}", names[(i + 1) % 4], f"It is {names[(i + 1) % 4]}.") for i in range(3)]
    Dataset.from_list(val_a, features=features()).save_to_disk(str(root / "val_a"))
    Dataset.from_list(val_b, features=features()).save_to_disk(str(root / "val_b"))
    return str(scored), str(root / "val_a"), str(root / "val_b")


def _args(tiny_vlm, data, out, *extra):
    scored, val_a, val_b = data
    return [
        "labels", scored, "--n-subsets", "3", "--recipe", TINY_CONFIG,
        "--set", f"model_name_or_path={tiny_vlm}", "--set", "max_steps=1", "--set", "dynamics=false",
        "--val", f"colors={val_a}", f"sentences={val_b}", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


class Counter:
    """Wraps ``selector.training.finetune.train`` to count fine-tunes, optionally failing on the n-th call."""

    def __init__(self, real, fail_on=None):
        self.real, self.fail_on, self.calls = real, fail_on, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("injected crash during the fine-tune")
        return self.real(*args, **kwargs)


@pytest.fixture(scope="module")
def run(tiny_vlm, data, tmp_path_factory):
    """One labels run interrupted by a crash in the second fine-tune, then resumed; the files and counts."""
    real = finetune.train
    out = tmp_path_factory.mktemp("labels-run") / "out"
    info = {"out": out}
    try:
        finetune.train = Counter(real, fail_on=2)
        with pytest.raises(RuntimeError, match="injected crash"):
            main(_args(tiny_vlm, data, out))
        info["first_calls"] = finetune.train.calls
        info["after_crash"] = sorted(p.name for p in (out / "subsets").glob("*.json"))
        info["first_subset"] = (out / "subsets" / "subset_000.json").read_bytes()
        info["labels_after_crash"] = (out / "labels.jsonl").exists()
        finetune.train = Counter(real)
        info["rc"] = main(_args(tiny_vlm, data, out))
        info["resume_calls"] = finetune.train.calls
    finally:
        finetune.train = real
    return info


def test_interrupted_run_resumes_at_the_next_unfinished_subset(run):
    assert run["first_calls"] == 2 and run["after_crash"] == ["subset_000.json"]
    assert not run["labels_after_crash"]
    assert run["rc"] == 0
    assert run["resume_calls"] == 2  # subsets 1 and 2 only
    out = run["out"]
    assert (out / "subsets" / "subset_000.json").read_bytes() == run["first_subset"]  # not redone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_finetuned"] == 2 and summary["n_cached"] == 1
    assert [s["cached"] for s in summary["subsets"]] == [True, False, False]


def test_labels_file_partition_and_scores(run, data):
    from selector.learned import read_labels

    out = run["out"]
    labels = read_labels(out / "labels.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    partition = json.loads((out / "partition.json").read_text())
    assert summary["subset_size"] == 10 and summary["n_labelled_rows"] == 30 == len(labels)
    assert summary["dropped"] == {"error": 1, "no_embedding": 1, "balance": 1}
    assert {d["id"]: d["reason"] for d in partition["dropped"]} == {
        "broken": "error",
        "noemb": "no_embedding",
        "good_stray": "balance",
    }
    by_group = {}
    for row in labels:
        by_group.setdefault(row["group"], set()).add(row["id"])
    assert sorted(by_group) == ["subset_000", "subset_001", "subset_002"]
    # k-means found the three blobs, so every subset is one answer style
    styles = {g: {i.rstrip("0123456789") for i in ids} for g, ids in by_group.items()}
    assert sorted(map(tuple, styles.values())) == [("good",), ("noise",), ("zz",)]
    # label = -(mean validation loss over the two sets), the raw losses kept per subset and set
    for sub in summary["subsets"]:
        record = json.loads((out / "subsets" / f"{sub['group']}.json").read_text())
        losses = [record["evaluations"][name]["eval_loss"] for name in ("colors", "sentences")]
        assert all(np.isfinite(losses)) and min(losses) > 0
        assert sub["label"] == pytest.approx(-np.mean(losses))
        assert [r["label"] for r in labels if r["group"] == sub["group"]] == pytest.approx([sub["label"]] * 10)
        assert record["train"]["global_step"] == 1 and record["train"]["n_train"] == 10
        assert not (out / "subsets" / sub["group"] / "finetune").exists()  # proxy weights deleted
        assert (out / "subsets" / sub["group"] / "eval_colors.json").exists()
    # the subset in the validation sets' answer style is the best one
    best = max(summary["subsets"], key=lambda s: s["label"])["group"]
    assert styles[best] == {"good"}
    assert summary["direction"].startswith("lower is better") and summary["eval_score"] == "eval_loss"


def test_rerun_is_cached_and_combine_changes_without_finetuning(run, tiny_vlm, data, capsys):
    real = finetune.train
    out = run["out"]
    before = json.loads((out / "summary.json").read_text())
    try:
        finetune.train = counter = Counter(real)
        capsys.readouterr()
        assert main(_args(tiny_vlm, data, out)) == 0
        printed = capsys.readouterr().out
        assert "fine-tuned 0 proxy model(s), 3 subset(s) from the cache" in printed
        assert "dropped 3 row(s) (error: 1, no_embedding: 1, balance: 1)" in printed
        # the saved partition is reused whatever k-means backend the resuming machine has
        assert main(_args(tiny_vlm, data, out, "--backend", "sklearn")) == 0
        # the old spelling --metric still works (warned), and finds the same cached subsets
        capsys.readouterr()
        assert main(_args(tiny_vlm, data, out, "--metric", "eval_loss")) == 0
        assert "--metric is deprecated; use --eval-score" in capsys.readouterr().err
        assert main(_args(tiny_vlm, data, out, "--eval-score", "eval_loss", "--recipe-script", "x.py")) == 0
        assert "--recipe-script is deprecated and ignored" in capsys.readouterr().err
        assert main(_args(tiny_vlm, data, out, "--combine", "zscore", "--weights", "3", "1")) == 0
        assert counter.calls == 0
    finally:
        finetune.train = real
    after = json.loads((out / "summary.json").read_text())
    raw = np.array([[s["scores"]["colors"], s["scores"]["sentences"]] for s in before["subsets"]])
    z = -(raw - raw.mean(0)) / raw.std(0)
    assert [s["label"] for s in after["subsets"]] == pytest.approx((0.75 * z[:, 0] + 0.25 * z[:, 1]).tolist())
    assert after["combine"] == "zscore" and after["weights"] == [0.75, 0.25]


def test_changed_settings_are_refused_not_mixed(run, tiny_vlm, data, capsys):
    out = run["out"]
    capsys.readouterr()
    assert main(_args(tiny_vlm, data, out, "--set", "learning_rate=0.5")) == 2
    err = capsys.readouterr().err
    assert "another recipe config" in err and "--overwrite" in err
    assert main(_args(tiny_vlm, data, out, "--seed", "3")) == 2
    assert "random_state: 0 -> 3" in capsys.readouterr().err


def test_validation_rows_shared_with_the_pool_are_warned_about(run, tiny_vlm, data, capsys, caplog):
    argv = _args(tiny_vlm, data, run["out"])
    argv[argv.index("--val") + 1] = f"colors={data[0]}"  # the pool itself as a validation set
    assert main(argv) == 2  # and refused: the cached subsets were evaluated on another set
    assert "validation set colors shares 32 id(s) with the pool" in caplog.text
    assert "another recipe config, validation set or eval score" in capsys.readouterr().err


def test_nan_subset_is_left_out_with_a_warning(run, tiny_vlm, data, tmp_path, caplog):
    out = tmp_path / "copy"
    shutil.copytree(run["out"], out)
    record_path = out / "subsets" / "subset_001.json"
    record = json.loads(record_path.read_text())
    record["scores"]["sentences"] = None  # e.g. no answer token survived max_length
    record_path.write_text(json.dumps(record))
    assert main(_args(tiny_vlm, data, out)) == 0
    rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert {r["group"] for r in rows} == {"subset_000", "subset_002"} and len(rows) == 20
    assert "subset_001" in caplog.text and "get no label" in caplog.text
    assert json.loads((out / "summary.json").read_text())["unlabelled_subsets"] == ["subset_001"]


def test_labels_train_a_learned_selector(run, data, tmp_path, capsys):
    from datasets import load_from_disk

    from selector.learned import LearnedSelector

    scored = data[0]
    sel = tmp_path / "selector"
    rc = main(
        ["train-selector", scored, "--labels", str(run["out"] / "labels.jsonl"), "--out", str(sel),
         "--max-epochs", "20", "--patience", "5"]
    )  # fmt: skip
    assert rc == 0
    assert "30 rows, 3 groups (set-level labels)" in capsys.readouterr().out
    model = LearnedSelector.from_pretrained(sel)
    ds = load_from_disk(scored)
    scores = model.score_samples(ds)
    ids = ds["id"]
    assert np.isnan(scores[ids.index("broken")])
    labelled = [i for i, row_id in enumerate(ids) if row_id[:2] in ("go", "no", "zz") and row_id != "noemb"]
    assert np.isfinite(scores[labelled]).all()


def test_bad_inputs_fail_before_any_finetune(tiny_vlm, data, tmp_path, capsys):
    scored, val_a, _ = data
    real = finetune.train
    base = ["labels", scored, "--n-subsets", "3", "--recipe", TINY_CONFIG, "--out", str(tmp_path / "o")]
    model = ["--set", f"model_name_or_path={tiny_vlm}"]
    cases = [
        ([*base, *model, "--val", str(tmp_path / "gone")], "validation set .*gone: no such file"),
        ([*base, "--val", val_a], "option 'model_name_or_path' is required"),
        ([*base, *model, "--set", "bogus=1", "--val", val_a], "unknown option\\(s\\) bogus"),
        ([*base, *model, "--set", f"train_ids_file={val_a}", "--val", val_a], "chooses each subset's rows"),
        ([*base, *model, "--val", val_a, "--weights", "1", "2"], "one weight per validation set"),
        ([*base, *model, "--val", val_a, "--n-subsets", "40"], "can't fill 40 subsets"),
        ([*base, *model, "--val", val_a, "--embedding-columns", "emb_x"], "emb_x"),
        ([*base[:5], "nope", *base[6:], *model, "--val", val_a], "not a shipped config \\(.*tiny_cpu"),
        ([*base, *model, "--val", val_a, "--metric", "eval_loss", "--eval-score", "exact_match"], "contradicts"),
        ([*base, *model, "--val", val_a, "--max-eval-samples", "0"], "max_eval_samples must be >= 1"),
        ([*base[:3], "0", *base[4:], *model, "--val", val_a], "--n-subsets must be >= 1"),
    ]
    try:
        finetune.train = counter = Counter(real)
        for argv, message in cases:
            capsys.readouterr()
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1, err
            assert re.search(message, err), (message, err)
        assert counter.calls == 0
    finally:
        finetune.train = real


@pytest.mark.slow
def test_killed_process_resumes(tiny_vlm, data, tmp_path):
    """A real interruption: the CLI process is killed once the first subset's result is on disk."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "selector", *_args(tiny_vlm, data, out)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "subsets" / "subset_000.json"
    deadline = time.monotonic() + 300
    try:
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.exists(), "the first subset never finished"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = sorted(p.name for p in (out / "subsets").glob("*.json"))
    assert len(done) < 3 and not (out / "labels.jsonl").exists()
    assert not list((out / "subsets").glob("*.tmp-*"))  # atomic writes leave no half-written result

    real = finetune.train
    try:
        finetune.train = counter = Counter(real)
        assert main(_args(tiny_vlm, data, out)) == 0
    finally:
        finetune.train = real
    assert counter.calls == 3 - len(done)
    assert len((out / "labels.jsonl").read_text().splitlines()) == 30


@pytest.mark.slow
def test_interrupted_subset_continues_from_its_checkpoint_and_overwrite_redoes(tiny_vlm, data, tmp_path):
    out = tmp_path / "out"
    argv = [*_args(tiny_vlm, data, out), "--set", "max_steps=2", "--set", "save_steps=1"]
    real = finetune.train
    calls = []

    def crash_after_first_step(config=None, **overrides):
        calls.append(overrides["output_dir"])
        if len(calls) == 1:  # the first subset stops after its step-1 checkpoint is saved
            real(config, **{**overrides, "max_steps": 1})
            raise RuntimeError("injected crash after the first checkpoint")
        return real(config, **overrides)

    try:
        finetune.train = crash_after_first_step
        with pytest.raises(RuntimeError, match="injected crash"):
            main(argv)
        assert (out / "subsets" / "subset_000" / "finetune" / "checkpoint-1").is_dir()
        assert main(argv) == 0
        record = json.loads((out / "subsets" / "subset_000.json").read_text())
        assert record["train"]["resumed_from_step"] == 1 and record["train"]["global_step"] == 2
        assert len(calls) == 4

        # other settings + --overwrite: every subset is redone, none mixed with the old results
        finetune.train = counter = Counter(real)
        assert main([*argv, "--set", "learning_rate=0.01", "--overwrite"]) == 0
        assert counter.calls == 3
        summary = json.loads((out / "summary.json").read_text())
        assert summary["recipe"]["learning_rate"] == 0.01 and summary["n_cached"] == 0
    finally:
        finetune.train = real


@pytest.mark.slow
def test_accuracy_score_generates_answers_and_keeps_models(tiny_vlm, data, tmp_path):
    out = tmp_path / "out"
    argv = [*_args(tiny_vlm, data, out), "--eval-score", "contains_answer", "--max-eval-samples", "2", "--keep-models"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["direction"] == "higher is better"
    for sub in summary["subsets"]:
        record = json.loads((out / "subsets" / f"{sub['group']}.json").read_text())
        for name in ("colors", "sentences"):
            ev = record["evaluations"][name]
            assert ev["n_rows"] == 2 and ev["n_scored"] == 2 and 0.0 <= ev["contains_answer"] <= 1.0
            assert ev["eval_loss"] is None  # not computed for an accuracy score
            assert (out / "subsets" / sub["group"] / f"eval_{name}.predictions.jsonl").exists()
        assert sub["label"] == pytest.approx(np.mean([record["scores"]["colors"], record["scores"]["sentences"]]))
        assert (out / "subsets" / sub["group"] / "finetune" / "config.json").exists()


# ---- from an installed wheel, outside the checkout ------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(venv_bin, cwd, env)``: vlselect built as a wheel and pip-installed (no deps, no index) into a new venv.

    The venv sees the test environment's packages (torch, transformers, ...) but not the checkout: the sources
    are copied out before the build (so nothing is written into the checkout), the venv's own site-packages
    comes first on ``sys.path``, and the outer environment's editable-install hook is never run (a directory
    listed in a ``.pth`` file is added to ``sys.path`` without processing the ``.pth`` files inside it).
    """
    import site
    import sysconfig

    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("selector", "metrics"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_CACHE_DIR"] = "1"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"), str(src)],
        check=True,
        env=env,
        timeout=300,
    )
    (wheel,) = (root / "dist").glob("vlselect-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # this interpreter may itself be a venv, whose packages --system-site-packages does not reach
    outer = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if os.path.isdir(p)]
    Path(purelib, "_outer_env.pth").write_text("\n".join(dict.fromkeys(outer)) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps", "--no-index",
         "--ignore-installed", str(wheel)],
        check=True,
        env=env,
        timeout=300,
    )  # fmt: skip
    cwd = root / "elsewhere"
    cwd.mkdir()
    return bindir, cwd, env


def test_installed_wheel_imports_the_engine_outside_the_checkout(installed):
    bindir, cwd, env = installed
    code = (
        "import sys, selector, selector.training, selector.dynamics, selector.labels; "
        "from selector.training import find_config; "
        "print(selector.__file__); print(find_config('proxy_smolvlm_256m')); "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    proc = subprocess.run(
        [str(bindir / "python"), "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    module, config, heavy = proc.stdout.strip().splitlines()
    venv = str(bindir.parent)
    assert module.startswith(venv) and not module.startswith(str(ROOT))  # the wheel's copy, not the checkout
    assert config.startswith(venv) and config.endswith("proxy_smolvlm_256m.yaml")  # shipped as package data
    assert heavy == "[]"
    proc = subprocess.run(
        [str(bindir / "vlselect"), "labels", "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "--eval-score" in proc.stdout and "--recipe" in proc.stdout


def test_vlselect_labels_runs_from_the_installed_wheel(installed, tiny_vlm, data):
    """The whole command from the wheel: a shipped config by name, fine-tunes and evaluations, labels.jsonl."""
    bindir, cwd, env = installed
    scored, val_a, _ = data
    argv = [
        str(bindir / "vlselect"), "labels", scored, "--n-subsets", "2", "--recipe", "tiny_cpu",
        "--set", f"model_name_or_path={tiny_vlm}", "--set", "max_steps=1",
        "--val", f"colors={val_a}", "--max-eval-samples", "2", "--out", "out", "--quiet",
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tuned 2 proxy model(s)" in proc.stdout
    labels = [json.loads(line) for line in (cwd / "out" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 30 and {r["group"] for r in labels} == {"subset_000", "subset_001"}
    summary = json.loads((cwd / "out" / "summary.json").read_text())
    assert summary["recipe_config"].startswith(str(bindir.parent))  # the wheel's tiny_cpu.yaml
