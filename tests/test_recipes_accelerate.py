"""The launcher configs in recipes/accelerate_configs/: each parses, and the DDP one trains with two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate_configs"
EXPECTED = {
    "single_gpu": ("NO", 1),
    "multi_gpu": ("MULTI_GPU", 8),
    "fsdp": ("FSDP", 8),
    "deepspeed_zero2": ("DEEPSPEED", 8),
    "deepspeed_zero3": ("DEEPSPEED", 8),
}


def test_the_five_launcher_configs_are_shipped():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launcher_config_parses_with_accelerate(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    distributed, n_processes = EXPECTED[name]
    assert config.distributed_type.name == distributed
    assert config.num_processes == n_processes and config.mixed_precision == "bf16"
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "fsdp":
        assert config.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    from tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm") / "model")


@pytest.fixture(scope="module")
def color_data(tmp_path_factory) -> str:
    from test_training import COLORS, _row, _save

    names = list(COLORS)
    rows = [_row(i, names[i % 4]) for i in range(6)]
    rows.append(_row(6, "red", error="missing_image: gone.png"))
    rows.append(_row(7, "two", image=False, question="How many eyes do cats have?"))
    return _save(rows, tmp_path_factory.mktemp("data") / "colors")


@pytest.mark.slow
def test_ddp_config_trains_with_two_cpu_processes(tiny_vlm, color_data, tmp_path):
    """``accelerate launch --config_file multi_gpu.yaml --num_processes 2`` on CPU (gloo): 37-80 s on the loaded dev box.

    ``--cpu`` would make accelerate fall back to its single-process launcher, so the CPU is chosen with
    ``ACCELERATE_USE_CPU`` instead. The config's ``mixed_precision: bf16`` must win over the recipe's ``--fp16``.
    """
    import pyarrow.parquet as pq

    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "multi_gpu.yaml"),
        "--num_processes",
        "2",
        str(ROOT / "recipes" / "finetune.py"),
        "tiny_cpu",
        "--model_name_or_path",
        tiny_vlm,
        "--dataset_name",
        color_data,
        "--output_dir",
        str(out),
        "--max_steps",
        "-1",
        "--num_train_epochs",
        "2",
        "--prune_fraction",
        "0.3",
        "--dynamics_grad_norm",
        "--dynamics_curvature",
        "--fp16",
        "--save_strategy",
        "epoch",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "train_results.json").read_text())
    assert result["num_processes"] == 2
    assert result["mixed_precision"] == "bf16"  # the launcher's setting, not the recipe's --fp16
    assert proc.stderr.count("the launcher's mixed_precision=bf16 wins over --fp16") == 1  # rank 0 only
    # 7 usable rows, 2 removed at random before training; 2 processes x batch 2: 5 active rows take 2 steps/epoch
    assert result["global_step"] == 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "checkpoint-4" / "random_states_1.pkl").exists()  # state of the second process
    table = pq.read_table(str(out / "dynamics.parquet")).to_pydict()
    epochs = np.asarray(table["epoch"])
    assert (epochs == 0).sum() == 5 and (epochs == 1).sum() == 5
    assert np.all(np.isfinite(table["curvature"]))
