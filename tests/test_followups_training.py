"""Follow-ups of issue 21 in the training engine: its DataLoaders never fork (item 8), and the recipes' data
loading refuses images outside the image root unless the config opts in (item 1)."""

from __future__ import annotations

import ast
import io
import json
import multiprocessing
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def test_make_loader_workers_never_fork():
    from datasets import Dataset

    from selector.training.data import RowDataset, make_loader

    rows = Dataset.from_dict(
        {
            "id": ["a", "b"],
            "messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]] * 2,
        }
    )
    loader = make_loader(RowDataset(rows), batch_size=1, collate_fn=list, num_workers=1)
    method = loader.multiprocessing_context.get_start_method()
    assert method in ("forkserver", "spawn")
    assert multiprocessing.get_start_method(allow_none=True) in (None, "fork", method)  # the global is left alone
    # the workers really start that way: the rows come back through them
    assert sorted(batch[0]["id"] for batch in loader) == ["a", "b"]
    assert make_loader(RowDataset(rows), batch_size=1, collate_fn=list).multiprocessing_context is None


def test_every_dataloader_of_the_package_goes_through_a_non_forking_helper():
    """A DataLoader built anywhere else could fork after torch has run; only the two helpers construct one."""
    allowed = {"selector/training/data.py": "make_loader", "metrics/image_loader.py": "make_loader"}
    offenders = []
    for package in ("selector", "metrics"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef):
                    continue
                for call in ast.walk(node):
                    if isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", None)) == (
                        "DataLoader"
                    ):
                        if allowed.get(relative) != node.name:
                            offenders.append(f"{relative}:{call.lineno} in {node.name}")
    assert not offenders, offenders


@pytest.fixture
def outside(tmp_path):
    """A LLaVA file in ``data/`` whose second row names an image outside its folder (an absolute path)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "private").mkdir()
    for folder in ("data", "private"):
        buffer = io.BytesIO()
        Image.new("RGB", (6, 6), (0, 0, 200)).save(buffer, format="PNG")
        (tmp_path / folder / "img.png").write_bytes(buffer.getvalue())
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A blue square."}]
    rows = [
        {"id": "inside", "image": "img.png", "conversations": turns},
        {"id": "outside", "image": str(tmp_path / "private" / "img.png"), "conversations": turns},
    ]
    path = tmp_path / "data" / "train.json"
    path.write_text(json.dumps(rows))
    return path


def test_recipe_data_refuses_images_outside_the_root_unless_opted_in(outside, tmp_path):
    from selector.training.config import parse_args
    from selector.training.finetune import FinetuneConfig, _datasets

    argv = ["--model_name_or_path", "m", "--dataset_name", str(outside), "--output_dir", str(tmp_path / "o")]
    cfg = parse_args(FinetuneConfig, argv)
    assert cfg.allow_outside_root is False
    train = _datasets(cfg)[0]
    assert list(train["id"]) == ["inside"]

    cfg = parse_args(FinetuneConfig, [*argv, "--allow_outside_root"])  # HfArgumentParser: a bool takes no value
    assert cfg.allow_outside_root is True
    assert sorted(_datasets(cfg)[0]["id"]) == ["inside", "outside"]


def test_evaluation_data_refuses_images_outside_the_root_unless_opted_in(outside):
    from selector.training.data import load_rows
    from selector.training.evaluation import EvalConfig

    rows, skipped = load_rows(outside)
    assert list(rows["id"]) == ["inside"] and skipped == {"image_outside_root": 1}
    rows, skipped = load_rows(outside, allow_outside_root=True)
    assert len(rows) == 2 and skipped == {}
    assert EvalConfig(dataset_name=str(outside), allow_outside_root=True).allow_outside_root


def test_labels_silences_library_bars_through_the_logs_module():
    import datasets
    from transformers.utils import logging as hf_logging

    import selector.labels
    from selector import logs

    # one logging/progress module: labels keeps no helper of its own
    assert not hasattr(selector.labels, "_library_bars_off")
    assert "third_party_progress_bars" in Path(selector.labels.__file__).read_text()
    was = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.enable_progress_bars()
    hf_logging.enable_progress_bar()
    with logs.third_party_progress_bars(False):
        assert not datasets.is_progress_bar_enabled() and not hf_logging.is_progress_bar_enabled()
    assert datasets.is_progress_bar_enabled() and hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the caller's own choice survives the block
    try:
        with logs.third_party_progress_bars(False):
            pass
        assert not datasets.is_progress_bar_enabled() and hf_logging.is_progress_bar_enabled()
    finally:
        (datasets.enable_progress_bars if was[0] else datasets.disable_progress_bars)()
        (hf_logging.enable_progress_bar if was[1] else hf_logging.disable_progress_bar)()


@pytest.mark.slow
def test_fine_tuning_with_a_loader_worker_runs(tmp_path):
    """The engine's batches (RowDataset, ChatCollator with a processor) cross into a forkserver worker."""
    from test_training import COLORS, TINY_CONFIG, _row, _save
    from tiny_vlm import build_tiny_vlm

    from selector.training import finetune

    model = build_tiny_vlm(tmp_path / "model")
    data = _save([_row(i, list(COLORS)[i % 4]) for i in range(4)], tmp_path / "colors")
    options = {"model_name_or_path": model, "dataset_name": data, "output_dir": str(tmp_path / "run")}
    result = finetune.train(TINY_CONFIG, dataloader_num_workers=1, **options)
    assert result["global_step"] == 2 and len(result["loss_history"]) == 2
