"""The training engine (selector.training) on a tiny LLaVA-style model built from configs (CPU, seconds)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import selector.dynamics
from selector.errors import ConfigError, DataError, MissingDependencyError
from selector.training import callbacks, evaluation, finetune, modeling
from selector.training.config import find_config, parse_args, resolve_config, shipped_configs
from selector.training.data import IGNORE_INDEX, ChatCollator, assistant_spans, load_rows, to_chat

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = "tiny_cpu"  # a config shipped with the package, found by name
COLORS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0), "yellow": (255, 255, 0)}


def _png(color, size=16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _row(i, answer, *, error=None, question="What color?", image=True, extra_turns=()):
    messages = [{"role": "user", "content": ("<image>\n" if image else "") + question}]
    messages.append({"role": "assistant", "content": answer})
    messages.extend(extra_turns)
    return {
        "id": f"r{i}",
        "image": {"bytes": _png(COLORS.get(answer, (9, 9, 9))), "path": None} if image else None,
        "images": [],
        "messages": messages,
        "error": error,
        "source": "colors" if image else "text",
    }


def _save(rows, path) -> str:
    from datasets import Dataset

    from selector.data.schema import features

    Dataset.from_list(rows, features=features()).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    from tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm") / "model")


@pytest.fixture(scope="module")
def color_data(tmp_path_factory) -> str:
    names = list(COLORS)
    rows = [_row(i, names[i % 4]) for i in range(6)]
    rows.append(_row(6, "red", error="missing_image: gone.png"))
    rows.append(_row(7, "two", image=False, question="How many eyes do cats have?"))
    return _save(rows, tmp_path_factory.mktemp("data") / "colors")


def _train(tiny_vlm, data, out, **overrides):
    options = {"model_name_or_path": tiny_vlm, "dataset_name": data, "output_dir": str(out), **overrides}
    return finetune.train(TINY_CONFIG, **options)


# ---- labels ----------------------------------------------------------------------------------------------------


def test_labels_cover_assistant_tokens_only(tiny_vlm):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm)
    rows = [
        _row(0, "red", extra_turns=[{"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "yes"}]),
        _row(1, "blue", image=False),
    ]
    batch = ChatCollator(processor)(rows)
    tok = processor.tokenizer
    for b, expected in enumerate(["red<|im_end|>\nyes<|im_end|>\n", "blue<|im_end|>\n"]):
        labels = batch["labels"][b]
        kept = batch["input_ids"][b][labels != IGNORE_INDEX]
        assert tok.decode(kept) == expected
        # labels are exactly the input ids where kept
        assert (labels[labels != -100] == batch["input_ids"][b][labels != -100]).all()
    # the image row expands <image> into 4 placeholder tokens (16x16 image, 8x8 patches), none of them labelled
    image_id = processor.image_token_id
    assert int((batch["input_ids"][0] == image_id).sum()) == 4
    assert not ((batch["input_ids"] == image_id) & (batch["labels"] != -100)).any()
    assert batch["pixel_values"].shape[0] == 1


def test_assistant_spans_fall_back_to_answer_text():
    class Weird:
        # a template that rewrites earlier turns, so prefixes don't line up
        def apply_chat_template(self, chat, tokenize=False, add_generation_prompt=False):
            text = "".join(f"[{len(chat)}]{t['role']}:" + "".join(p["text"] for p in t["content"]) for t in chat)
            return text + ("[gen]" if add_generation_prompt else "")

    chat = to_chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    full = Weird().apply_chat_template(chat)
    spans = assistant_spans(Weird(), chat, full)
    assert [full[a:b] for a, b in spans] == ["hello"]


def test_to_chat_places_images_as_parts():
    chat = to_chat([{"role": "user", "content": "<image>\nWhat is <image> this?"}])
    assert chat[0]["content"] == [
        {"type": "image"},
        {"type": "text", "text": "What is "},
        {"type": "image"},
        {"type": "text", "text": " this?"},
    ]


# ---- training ----------------------------------------------------------------------------------------------------


def test_two_cpu_steps_with_tiny_config(tiny_vlm, color_data, tmp_path, caplog):
    import pyarrow.parquet as pq

    with caplog.at_level("WARNING"):
        result = _train(tiny_vlm, color_data, tmp_path / "run", eval_fraction=0.25)
    assert result["global_step"] == 2
    assert result["skipped_rows"] == {"missing_image": 1}
    assert "skipping 1 row(s) with errors (missing_image: 1)" in caplog.text
    assert result["n_train"] + result["n_eval"] == 7
    assert np.isfinite(result["eval_loss"]) and result["eval_loss"] > 0
    assert len(result["loss_history"]) == 2
    table = pq.read_table(result["dynamics_path"]).to_pydict()
    assert set(selector.dynamics.COLUMNS) <= set(table)
    assert len(table["id"]) == 4  # 2 steps x batch 2, one row per (id, epoch)
    assert "r6" not in table["id"]
    assert all(n > 0 for n in table["n_tokens"])
    assert all(0 <= v <= 2**0.5 for v in table["el2n"])
    assert all(np.isnan(table["grad_norm"]))  # dynamics_grad_norm is off by default
    saved = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert saved["global_step"] == 2
    assert (tmp_path / "run" / "finetune_config.yaml").exists()
    # the output folder loads back like a Hub checkpoint and is scored by the evaluator
    scores = evaluation.evaluate(
        {
            "model_name_or_path": str(tmp_path / "run"),
            "dataset_name": color_data,
            "output_file": str(tmp_path / "eval.json"),
            "max_new_tokens": 3,
        }
    )
    assert scores["n_rows"] == 7 and scores["n_scored"] == 7 and scores["n_missing"] == 0
    assert np.isfinite(scores["eval_loss"])
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["n_rows"] == 7
    preds = [json.loads(line) for line in (tmp_path / "eval.predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 7 and {"id", "prediction", "references"} <= set(preds[0])


def test_loss_goes_down_on_a_repeated_batch(tiny_vlm, tmp_path):
    data = _save([_row(0, "red"), _row(1, "blue")], tmp_path / "two")
    result = _train(tiny_vlm, data, tmp_path / "run", max_steps=6, learning_rate=1e-2, save_model=False)
    history = result["loss_history"]
    assert len(history) == 6
    assert history[-1] < 0.8 * history[0]
    assert result["epochs_completed"] == 6  # max_steps overrides num_train_epochs
    assert result["model_dir"] is None and not (tmp_path / "run" / "model.safetensors").exists()


def test_resume_continues_the_step_count(tiny_vlm, color_data, tmp_path):
    full = _train(tiny_vlm, color_data, tmp_path / "a", max_steps=4, save_steps=2, save_total_limit=None)
    assert (tmp_path / "a" / "checkpoint-2").exists() and (tmp_path / "a" / "checkpoint-4").exists()
    # a crashed run: only its step-2 checkpoint survives; "latest" picks it up
    os.makedirs(tmp_path / "b")
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    resumed = _train(tiny_vlm, color_data, tmp_path / "b", max_steps=4, resume_from_checkpoint="latest")
    assert resumed["resumed_from_step"] == 2
    assert resumed["global_step"] == 4
    np.testing.assert_allclose(resumed["loss_history"], full["loss_history"], rtol=1e-5)
    from safetensors.numpy import load_file

    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
    import pyarrow.parquet as pq

    da = pq.read_table(str(tmp_path / "a" / "dynamics.parquet")).to_pydict()
    db = pq.read_table(str(tmp_path / "b" / "dynamics.parquet")).to_pydict()
    assert da["id"] == db["id"] and da["epoch"] == db["epoch"] and da["step"] == db["step"]


def test_resume_rejects_a_checkpoint_of_other_rows(tiny_vlm, color_data, tmp_path):
    _train(tiny_vlm, color_data, tmp_path / "a", max_steps=1, save_steps=1, save_model=False, dynamics=False)
    other = _save([_row(0, "red"), _row(1, "blue")], tmp_path / "other")
    with pytest.raises(ConfigError, match="different rows"):
        _train(tiny_vlm, other, tmp_path / "a", max_steps=2, resume_from_checkpoint="latest")


def test_dynamic_pruning_rotates_unforgettable_examples(tiny_vlm, tmp_path):
    import pyarrow.parquet as pq

    data = _save([_row(i, list(COLORS)[i]) for i in range(4)], tmp_path / "four")
    result = _train(
        tiny_vlm,
        data,
        tmp_path / "run",
        max_steps=-1,
        num_train_epochs=2,
        per_device_train_batch_size=4,
        prune_fraction=0.5,
        prune_swap_fraction=0.5,
        dynamics_grad_norm=True,
        dynamics_curvature=True,
        save_model=False,
    )
    table = pq.read_table(result["dynamics_path"]).to_pydict()
    epochs = np.asarray(table["epoch"])
    # half the rows removed at random before training; one of the two active rows swapped after epoch 0
    assert (epochs == 0).sum() == 2 and (epochs == 1).sum() == 2
    ids0 = {i for i, e in zip(table["id"], epochs) if e == 0}
    ids1 = {i for i, e in zip(table["id"], epochs) if e == 1}
    assert len(ids0 & ids1) == 1
    assert len(result["active_ids"]) == 2
    assert result["global_step"] == 2
    assert np.all(np.isfinite(table["grad_norm"])) and np.all(np.asarray(table["grad_norm"]) > 0)
    assert np.all(np.isfinite(table["curvature"])) and np.all(np.asarray(table["curvature"]) >= 0)
    assert np.all((np.asarray(table["accuracy"]) >= 0) & (np.asarray(table["accuracy"]) <= 1))


def test_lora_adapter_trains_and_reloads(tiny_vlm, color_data, tmp_path):
    result = _train(
        tiny_vlm,
        color_data,
        tmp_path / "lora",
        max_steps=1,
        use_peft=True,
        lora_r=2,
        lora_modules_to_save=["multi_modal_projector"],
        freeze_vision_tower=True,
        dynamics=False,
    )
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["multi_modal_projector"]
    assert all("vision_tower" not in name for name in config["target_modules"])  # frozen tower gets no adapter
    model, processor = modeling.load_model_and_processor(str(tmp_path / "lora"))
    assert type(model).__name__ == "PeftModel"
    trainable = {name for name, p in model.named_parameters() if "lora_" in name}
    assert trainable and all("language_model" in name for name in trainable)
    assert result["dynamics_path"] is None


# ---- configuration and bad input -------------------------------------------------------------------------------


def test_config_unknown_key_and_bad_type(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="unknown option.*learning_rat"):
        resolve_config(finetune.FinetuneConfig, str(bad))
    with pytest.raises(ConfigError, match="per_device_train_batch_size"):
        resolve_config(finetune.FinetuneConfig, {"per_device_train_batch_size": "many"})
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(finetune.FinetuneConfig, str(tmp_path / "broken.yaml"))
    with pytest.raises(ConfigError, match="not a shipped config.*tiny_cpu"):
        finetune.train("no_such_config")


def test_cli_flags_override_yaml(tmp_path):
    # alignment-handbook style: the YAML (a path or a shipped name) first, then TRL-named flags override it
    cfg = parse_args(
        finetune.FinetuneConfig,
        [TINY_CONFIG, "--max_steps", "5", "--use_peft", "--lora_target_modules", "q_proj", "v_proj", "--bf16"],
    )
    assert cfg.max_steps == 5 and cfg.use_peft is True and cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.bf16 is True and cfg.fp16 is False
    assert cfg.per_device_train_batch_size == 2  # from the YAML
    yaml_path = tmp_path / "mine.yml"
    yaml_path.write_text("learning_rate: 0.5\nreport_to: [tensorboard]\nuse_peft: true\n")
    cfg = parse_args(
        finetune.FinetuneConfig, ["--config", str(yaml_path), "--learning_rate", "1e-4", "--use_peft", "false"]
    )
    assert cfg.learning_rate == 1e-4 and cfg.report_to == ["tensorboard"] and cfg.use_peft is False
    assert finetune.main([TINY_CONFIG]) == 2  # required options missing -> one-line error, exit 2


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--learning_rat", "0.1"], "unknown argument.*--learning_rat"),
        (["--learning_rate", "fast"], "learning_rate.*invalid float"),
        ([TINY_CONFIG, "--config", TINY_CONFIG], "two configs"),
        (["no_such_config"], "not a shipped config"),
    ],
)
def test_cli_mistakes_are_one_line_exit_2(argv, match, capsys):
    with pytest.raises(ConfigError, match=match):
        parse_args(finetune.FinetuneConfig, argv)
    assert finetune.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "usage:" not in err


def test_deprecated_names_still_work_with_a_warning(caplog):
    with caplog.at_level("WARNING"):
        cfg = parse_args(
            finetune.FinetuneConfig,
            [
                TINY_CONFIG,
                "--dataset",
                "d",
                "--use_lora",
                "true",
                "--mixed_precision",
                "fp16",
                "--lora_target_modules",
                "q_proj,v_proj",
            ],
        )
    assert cfg.dataset_name == "d" and cfg.use_peft is True and cfg.fp16 is True and cfg.bf16 is False
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]  # the old comma-joined form
    assert "'dataset' is deprecated; use 'dataset_name'" in caplog.text and "'use_lora' is deprecated" in caplog.text
    cfg = resolve_config(finetune.FinetuneConfig, {"dataset": "d", "revision": "main", "mixed_precision": "bf16"})
    assert cfg.dataset_name == "d" and cfg.model_revision == "main" and cfg.bf16 is True
    with pytest.raises(ConfigError, match="both given"):
        resolve_config(finetune.FinetuneConfig, {"dataset": "a", "dataset_name": "b"})


def test_launcher_mixed_precision_wins(monkeypatch, caplog):
    cfg = finetune.FinetuneConfig(bf16=True)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert finetune._mixed_precision(cfg) == "bf16"
    assert finetune._mixed_precision(finetune.FinetuneConfig()) is None  # Accelerate's own default
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate launch's default: not a choice
    assert finetune._mixed_precision(cfg) == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with caplog.at_level("WARNING"):
        assert finetune._mixed_precision(cfg) is None  # Accelerator reads the launcher's fp16 itself
    assert "mixed_precision=fp16 wins over --bf16" in caplog.text


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        ({"max_steps": 0}, ConfigError, "max_steps"),
        ({"prune_fraction": 1.5}, ConfigError, "prune_fraction"),
        ({"prune_fraction": 0.5, "dynamics": False}, ConfigError, "dynamics"),
        ({"mixed_precision": "fp8"}, ConfigError, "mixed_precision"),
        ({"torch_dtype": "int8"}, ConfigError, "torch_dtype"),
        ({"dataset_name": "/no/such/data"}, DataError, "no such file"),
        ({"train_ids": ["r0", "r6", "nope"]}, DataError, "2 train id"),
        ({"eval_fraction": 0.99}, DataError, "no training rows"),
        ({"use_peft": True, "lora_target_modules": ["nothing"]}, ConfigError, "match no linear layer"),
        ({"bf16": True, "fp16": True}, ConfigError, "both set"),
        ({"eval_strategy": "steps"}, ConfigError, "needs an eval set"),
        ({"report_to": ["tensorbored"]}, ConfigError, "report_to tensorbored"),
        ({"report_to": ["clearml"]}, MissingDependencyError, "clearml package is not installed"),
        ({"save_strategy": "sometimes"}, ConfigError, "save_strategy"),
        ({"metric_for_best_model": "bleu"}, ConfigError, "metric_for_best_model"),
        (
            {"eval_fraction": 0.25, "eval_strategy": "epoch", "load_best_model_at_end": True},
            ConfigError,
            "save_strategy == eval_strategy",
        ),
        (
            {
                "eval_fraction": 0.25,
                "eval_strategy": "steps",
                "eval_steps": 2,
                "save_steps": 3,
                "load_best_model_at_end": True,
            },
            ConfigError,
            "multiple of eval_steps",
        ),
        ({"eval_fraction": 0.25, "eval_strategy": "steps", "early_stopping_patience": 0}, ConfigError, "patience"),
        ({"push_to_hub": True, "save_model": False}, ConfigError, "nothing to push"),
    ],
)
def test_bad_options_raise_clear_errors(tiny_vlm, color_data, tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        _train(tiny_vlm, color_data, tmp_path / "run", **overrides)


def test_all_rows_with_errors_is_a_data_error(tmp_path):
    data = _save([_row(0, "red", error="corrupt_image: x"), _row(1, "blue", error="missing_image: y")], tmp_path / "d")
    with pytest.raises(DataError, match="no usable rows"):
        load_rows(data)


def test_train_ids_select_a_subset(tiny_vlm, color_data, tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("r1\nr3\n")
    result = _train(
        tiny_vlm, color_data, tmp_path / "run", train_ids_file=str(ids_file), max_steps=1, save_model=False
    )
    assert result["n_train"] == 2 and sorted(result["active_ids"]) == ["r1", "r3"]


# ---- statistics --------------------------------------------------------------------------------------------------


def test_token_statistics_match_autograd():
    import torch

    torch.manual_seed(0)
    vocab, dim = 7, 5
    head = torch.nn.Linear(dim, vocab, bias=False)
    hidden = torch.randn(2, 6, dim)
    labels = torch.tensor([[-100, -100, 3, 1, 4, -100], [-100, 2, 2, -100, -100, -100]])
    logits = head(hidden)
    stats = callbacks.token_statistics(logits, labels, hidden)
    per = stats["per_example"]
    for b in range(2):
        head.zero_grad()
        lb = head(hidden[b : b + 1])
        shift, target = lb[0, :-1], labels[b, 1:]
        keep = target != -100
        loss = torch.nn.functional.cross_entropy(shift[keep], target[keep])
        loss.backward()
        assert float(per["loss"][b]) == pytest.approx(loss.item(), rel=1e-5)
        assert float(per["grad_norm"][b]) == pytest.approx(float(head.weight.grad.norm()), rel=1e-4)
        probs = torch.softmax(shift[keep], -1)
        onehot = torch.nn.functional.one_hot(target[keep], vocab).float()
        assert float(per["el2n"][b]) == pytest.approx((probs - onehot).norm(dim=1).mean().item(), rel=1e-5)
        correct = bool((shift[keep].argmax(-1) == target[keep]).all())
        assert float(per["correct"][b]) == float(correct)
    assert per["n_tokens"].tolist() == [3.0, 2.0]
    # the batch loss is the token-weighted mean and carries gradients
    assert stats["loss"].requires_grad


def test_token_statistics_nan_for_rows_without_answer():
    import torch

    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, 1, 2, 3], [-100, -100, -100, -100]])
    per = callbacks.token_statistics(logits, labels)["per_example"]
    assert np.isfinite(float(per["loss"][0])) and np.isnan(float(per["loss"][1]))
    assert np.isnan(float(per["correct"][1])) and float(per["n_tokens"][1]) == 0


def test_prune_step_drops_unforgettable_and_restores_from_pool():
    rec = callbacks.DynamicsRecorder(["a", "b", "c", "d", "e", "f"])
    # epoch 0 and 1 for active {0..3}: a always right (unforgettable), b forgotten once, c never learned, d right
    pattern = {0: [1, 1], 1: [1, 0], 2: [0, 0], 3: [0, 1]}
    losses = {0: [0.1, 0.05], 1: [0.2, 0.9], 2: [2.0, 2.0], 3: [1.0, 0.3]}
    for epoch in range(2):
        for i in range(4):
            rec.add(epoch, epoch + 1, [i], {"loss": [losses[i][epoch]], "correct": [pattern[i][epoch]]})
    active, pool, dropped, restored = callbacks.prune_step([0, 1, 2, 3], [4, 5], rec, 2)
    assert dropped == [0, 3]  # zero forgetting events and correct now; a has the lower loss
    assert sorted(restored) == [4, 5]
    assert active == [1, 2, 4, 5] and pool == [0, 3]
    # never more than the pool holds: the active set keeps its size
    active, pool, dropped, restored = callbacks.prune_step([0, 1, 2, 3], [4], rec, 3)
    assert dropped == [0] and restored == [4] and active == [1, 2, 3, 4] and pool == [0]
    # nothing removed, nothing to swap
    assert callbacks.prune_step([0, 1, 2, 3], [], rec, 2) == ([0, 1, 2, 3], [], [], [])


def test_recorder_roundtrip(tmp_path):
    rec = callbacks.DynamicsRecorder(["x", "y"])
    rec.add(0, 1, [1, 0, 1], {"loss": [0.5, 1.5, 9.0], "correct": [1, 0, 0], "n_tokens": [3, 2, 3]})
    rec.add_curvature(0, [0], [0.25])
    path = str(tmp_path / "d.parquet")
    rec.save(path)
    back = callbacks.DynamicsRecorder(["x", "y"])
    back.load(path)
    cols = back.columns()
    assert cols["id"].tolist() == ["x", "y"]
    assert cols["loss"].tolist() == [1.5, 0.5]  # the repeated (y, 0) record kept its first value
    assert cols["correct"].tolist() == [False, True]
    assert cols["curvature"][0] == 0.25 and np.isnan(cols["curvature"][1])


# ---- evaluation --------------------------------------------------------------------------------------------------


def test_evaluator_scores_a_known_answer_file(tmp_path):
    rows = [
        _row(0, "red"),
        _row(1, "Two dogs."),
        _row(2, "blue"),
        _row(3, "green"),
        _row(4, "yellow"),
        _row(5, "red", error="corrupt_image: bad"),
    ]
    data = _save(rows, tmp_path / "vqa")
    preds = tmp_path / "preds.jsonl"
    lines = [
        {"id": "r0", "prediction": "Red."},  # exact after normalisation
        {"id": "r1", "prediction": "the two dogs"},  # exact: articles, case, number word
        {"id": "r2", "prediction": "It is blue, I think"},  # contains only
        {"id": "r3", "prediction": "greenish"},  # neither (not a whole word)
        {"id": "zz", "prediction": "red"},  # unknown id
    ]  # r4 missing
    preds.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "scores.json"
    scores = evaluation.evaluate({"dataset_name": data, "predictions_file": str(preds), "output_file": str(out)})
    assert scores["n_scored"] == 5 and scores["n_missing"] == 1 and scores["n_extra"] == 1
    assert scores["exact_match"] == pytest.approx(2 / 5)
    assert scores["contains_answer"] == pytest.approx(3 / 5)
    assert scores["skipped_rows"] == {"corrupt_image": 1}
    written = json.loads(out.read_text())
    assert written["exact_match"] == pytest.approx(0.4) and written["eval_loss"] is None


def test_normalisation_and_matching():
    assert evaluation.normalize_answer("The  Two, dogs!") == "2 dogs"
    assert evaluation.normalize_answer("1,000") == "1000"
    assert evaluation.exact_match("An apple", ["apple", "pear"])
    assert not evaluation.exact_match("", [""])
    assert evaluation.contains_answer("I see 2 cats", ["two cats"])
    assert not evaluation.contains_answer("category", ["cat"])


def test_predictions_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prediction": "x"}\nnot json\n')
    with pytest.raises(DataError, match="bad.jsonl: invalid JSON on line 2"):
        evaluation.read_predictions(str(bad))
    (tmp_path / "wrong.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(DataError, match="prediction"):
        evaluation.read_predictions(str(tmp_path / "wrong.jsonl"))
    (tmp_path / "obj.json").write_text('{"a": "red", "b": null}')
    assert evaluation.read_predictions(str(tmp_path / "obj.json")) == {"a": "red", "b": None}
    with pytest.raises(ConfigError, match="model_name_or_path"):
        evaluation.evaluate({"dataset_name": "x"})


def test_answers_column_gives_several_references(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_dict(
        {
            "id": ["a", "b"],
            "messages": [[{"role": "assistant", "content": "x"}], [{"role": "assistant", "content": "y"}]],
            "answers": [["cat", "kitten"], []],
        }
    )
    refs = evaluation.references_from_dataset(ds)
    assert refs == {"a": ["cat", "kitten"], "b": []}
    scores = evaluation.score_predictions({"a": "kitten", "b": "y"}, refs)
    assert scores["n_scored"] == 1 and scores["n_no_reference"] == 1 and scores["exact_match"] == 1.0


# ---- SmolVLM-class (Idefics3) model: image splitting, row/column tags, a different template --------------------


@pytest.fixture(scope="module")
def tiny_idefics3(tmp_path_factory) -> str:
    from tiny_vlm import build_tiny_idefics3

    return build_tiny_idefics3(tmp_path_factory.mktemp("tiny-idefics3") / "model")


def test_smolvlm_class_model_labels_and_training(tiny_idefics3, tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_idefics3)
    follow_up = [{"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "yes"}]
    rows = [_row(0, "red", extra_turns=follow_up), _row(1, "blue", image=False)]
    batch = ChatCollator(processor)(rows)
    tok = processor.tokenizer
    kept = [tok.decode(batch["input_ids"][b][batch["labels"][b] != -100]) for b in range(2)]
    assert kept == [" red<end_of_utterance>\n yes<end_of_utterance>\n", " blue<end_of_utterance>\n"]
    # 16x16 image -> resized to 64 and split into 2x2 tiles + a global view, 4 tokens each
    assert int((batch["input_ids"][0] == processor.image_token_id).sum()) == 20
    data = _save([_row(0, "red"), _row(1, "blue"), _row(2, "two", image=False)], tmp_path / "mixed")
    result = _train(tiny_idefics3, data, tmp_path / "run", max_steps=2, per_device_train_batch_size=3)
    assert result["global_step"] == 2 and np.isfinite(result["train_loss"])
    # evaluation with an in-memory model (as proxy fine-tunes do), generation on mixed image/text rows
    model, processor = modeling.load_model_and_processor(result["model_dir"])
    scores = evaluation.evaluate({"dataset_name": data, "max_new_tokens": 2}, model=model, processor=processor)
    assert scores["n_scored"] == 3 and np.isfinite(scores["eval_loss"]) and 0 <= scores["exact_match"] <= 1


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_shipped_configs_are_valid(name):
    cfg = resolve_config(finetune.FinetuneConfig, find_config(name), dataset_name="d", output_dir="o")
    if not cfg.model_name_or_path:
        cfg = resolve_config(finetune.FinetuneConfig, cfg, model_name_or_path="m")
    finetune.validate(cfg)


def test_recipes_configs_are_the_shipped_configs():
    # recipes/configs is the checkout's view of the package data, not a second copy that could drift
    shipped = shipped_configs()
    assert {"tiny_cpu", "proxy_smolvlm_256m"} <= set(shipped)
    assert (ROOT / "recipes" / "configs").resolve() == Path(shipped["tiny_cpu"]).parent.resolve()
    assert find_config(ROOT / "recipes" / "configs" / "tiny_cpu.yaml") == str(Path(shipped["tiny_cpu"]).resolve())
    assert find_config("tiny_cpu.yaml") == shipped["tiny_cpu"]


def test_scripts_run_as_files_and_stay_thin():
    for script in ("finetune.py", "evaluate.py"):
        path = ROOT / "recipes" / script
        proc = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "--config" in proc.stdout and "--dataset_name" in proc.stdout
        assert len(path.read_text().splitlines()) <= 40  # a launcher; the engine lives in selector.training


def test_no_sys_path_edits_and_no_loading_by_file_path():
    offenders = []
    for folder in ("selector", "metrics", "recipes"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if "sys.path" in text or "spec_from_file_location" in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_evaluate_cli_reports_bad_input(tmp_path, capsys):
    assert evaluation.main(["--dataset_name", str(tmp_path / "missing"), "--predictions_file", "p.jsonl"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.gpu
def test_bf16_on_cuda(tiny_vlm, color_data, tmp_path):
    import torch

    result = _train(tiny_vlm, color_data, tmp_path / "gpu", bf16=True, dynamics_grad_norm=True, save_model=False)
    assert result["global_step"] == 2 and np.isfinite(result["train_loss"])
    assert torch.cuda.is_available()


def test_trains_on_the_bundled_llava_json(tiny_vlm, tmp_path):
    data = str(ROOT / "selector" / "example_data" / "llava_mini.json")
    result = _train(tiny_vlm, data, tmp_path / "run", max_steps=1, save_model=False)
    assert result["global_step"] == 1
    assert sum(result["skipped_rows"].values()) == 5  # the example file's deliberately broken rows
    assert result["n_train"] == 57
