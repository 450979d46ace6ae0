"""What an SFTTrainer user relies on, in the engine: trackers, periodic eval/save, best checkpoint, early stopping,
a model card and push_to_hub (huggingface_hub mocked: no network), strict-JSON results, TRL's messages layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selector.errors import ConfigError
from selector.training import finetune
from selector.training.data import ChatCollator, RowDataset, load_rows

TINY_CONFIG = "tiny_cpu"


def _no_nan(text: str):
    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


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


def _train(tiny_vlm, data, out, **overrides):
    options = {"model_name_or_path": tiny_vlm, "dataset_name": data, "output_dir": str(out), **overrides}
    return finetune.train(TINY_CONFIG, **options)


class FakeHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records the calls, touches no network."""

    calls: list[tuple[str, dict]] = []
    fail_with: Exception | None = None

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        if FakeHfApi.fail_with is not None:
            raise FakeHfApi.fail_with
        FakeHfApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, **kwargs):
        FakeHfApi.calls.append(
            ("upload_folder", {**kwargs, "files": sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())})
        )
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/0123abc"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls = []
    FakeHfApi.fail_with = None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


def test_eval_save_best_checkpoint_early_stopping_and_tensorboard(tiny_vlm, color_data, tmp_path, monkeypatch):
    from safetensors.numpy import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # scripted validation losses: the best is at step 2, then two evaluations without improvement stop the run
    scripted = iter([3.0, 2.0, 2.5, 2.6])
    seen_sizes = []

    def fake_eval(model, processor, dataset, cfg, accelerator):
        seen_sizes.append(len(dataset))
        return next(scripted, 7.0)

    monkeypatch.setattr(finetune, "evaluate_loss", fake_eval)
    out = tmp_path / "run"
    result = _train(
        tiny_vlm,
        color_data,
        out,
        max_steps=8,
        eval_fraction=0.25,
        eval_strategy="steps",
        eval_steps=1,
        save_steps=1,
        save_total_limit=1,
        load_best_model_at_end=True,
        early_stopping_patience=2,
        report_to=["tensorboard"],
        run_name="tb",
        dynamics=False,
    )
    assert result["stopped_early"] and result["global_step"] == 4
    assert [e["eval_loss"] for e in result["eval_history"]] == [3.0, 2.0, 2.5, 2.6]
    assert [e["step"] for e in result["eval_history"]] == [1, 2, 3, 4]
    assert result["best_metric"] == 2.0 and result["best_model_checkpoint"] == str(out / "checkpoint-2")
    assert set(seen_sizes) == {2}  # the held-out rows
    # save_total_limit=1 keeps the newest checkpoint, and the best one is never rotated out
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # load_best_model_at_end: the saved model is the step-2 weights, not the last step's
    from transformers import AutoModelForImageTextToText

    # checkpoints hold the in-memory state dict; the output folder is loaded back the way users load it
    final = {k: v.numpy() for k, v in AutoModelForImageTextToText.from_pretrained(str(out)).state_dict().items()}
    best = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    last = load_file(str(out / "checkpoint-4" / "model.safetensors"))
    common = sorted(set(final) & set(best))
    assert len(common) > 10
    assert all((final[k] == best[k]).all() for k in common)
    assert any((final[k] != last[k]).any() for k in common)
    state = _no_nan((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(out / "checkpoint-2") and state["early_stopping_counter"] == 2
    # report_to=tensorboard: offline event files with the training and evaluation scalars
    events = list((out / "runs" / "tb").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(out / "runs" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "eval/loss"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.value for e in acc.Scalars("eval/loss")][:4] == pytest.approx([3.0, 2.0, 2.5, 2.6])  # float32


def test_results_are_strict_json_and_push_uploads_a_model_card(tiny_vlm, color_data, tmp_path, fake_hub, capsys):
    from huggingface_hub import ModelCard

    out = tmp_path / "full"
    argv = [TINY_CONFIG, "--model_name_or_path", tiny_vlm, "--dataset_name", color_data, "--output_dir", str(out)]
    argv += ["--max_steps", "1", "--no_dynamics", "--push_to_hub", "--hub_model_id", "me/tiny-sft"]
    assert finetune.main(argv) == 0
    printed = _no_nan(capsys.readouterr().out)  # no eval set: eval_loss is NaN, printed as null
    saved = _no_nan((out / "train_results.json").read_text())
    assert printed["eval_loss"] is None and saved["eval_loss"] is None and saved["best_metric"] is None
    assert saved["hub_url"] == "https://huggingface.co/me/tiny-sft/commit/0123abc"
    (create, repo), (upload, upload_args) = fake_hub.calls
    assert create == "create_repo" and repo["repo_id"] == "me/tiny-sft" and repo["private"] is True
    assert upload == "upload_folder" and upload_args["folder_path"] == str(out)
    assert "checkpoint-*" in upload_args["ignore_patterns"]
    assert {"README.md", "model.safetensors", "config.json", "train_results.json"} <= set(upload_args["files"])
    card = ModelCard.load(str(out / "README.md"))
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    assert "vlselect" in card.data.tags and card.data.base_model is None  # a local base model is not named
    assert "full fine-tune" in card.text and 'from_pretrained("me/tiny-sft")' in card.text
    assert str(tmp_path) not in str(card)  # no local paths in a card that gets published


def test_push_of_a_lora_adapter_is_public_on_request(tiny_vlm, color_data, tmp_path, fake_hub):
    from huggingface_hub import ModelCard

    out = tmp_path / "lora"
    result = _train(
        tiny_vlm,
        color_data,
        out,
        max_steps=1,
        use_peft=True,
        lora_r=2,
        lora_target_modules=["q_proj", "v_proj"],
        dynamics=False,
        push_to_hub=True,
        hub_private_repo=False,
    )
    assert result["hub_url"].endswith("/commit/0123abc")
    repo = fake_hub.calls[0][1]
    assert repo["repo_id"] == "lora" and repo["private"] is False  # default id: the output folder's name
    assert "adapter_config.json" in fake_hub.calls[1][1]["files"]
    card = ModelCard.load(str(out / "README.md"))
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    assert "LoRA adapter" in card.text and "PeftModel.from_pretrained" in card.text and "lora_r | 2" in card.text


def test_push_failure_is_one_line(tmp_path, fake_hub, capsys):
    fake_hub.fail_with = OSError("Connection refused\nmore detail that must not be printed")
    cfg = finetune.FinetuneConfig(model_name_or_path="m", dataset_name="d", output_dir=str(tmp_path), push_to_hub=True)
    with pytest.raises(ConfigError, match=r"^push_to_hub .*: OSError: Connection refused$"):
        finetune.push_to_hub(cfg, str(tmp_path))


# ---- TRL messages layout ----------------------------------------------------------------------------------------


def test_to_trl_layout_matches_trl_vision_sft(color_data):
    from datasets import load_from_disk

    from selector.data.trl import is_trl_messages, n_image_parts, to_trl, to_trl_messages

    canonical = load_from_disk(color_data)
    trl = to_trl(canonical)
    assert trl.column_names == ["messages", "images", "id", "source"]
    row = trl[0]
    assert row["messages"][0]["content"] == [{"type": "image", "text": None}, {"type": "text", "text": "What color?"}]
    assert row["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": "red"}]}
    assert len(row["images"]) == 1 and row["images"][0].size == (16, 16)
    text_only = trl[7]
    assert text_only["images"] == [] and n_image_parts(text_only["messages"]) == 0
    assert is_trl_messages(row["messages"]) and not is_trl_messages(canonical[0]["messages"])
    # the short form TRL documents, several images in place, and exact_text for a lossless export
    assert to_trl_messages([{"role": "user", "content": "<image>\nWhat is <image> this?"}])[0]["content"] == [
        {"type": "image"},
        {"type": "text", "text": "What is "},
        {"type": "image"},
        {"type": "text", "text": " this?"},
    ]
    exact = to_trl_messages([{"role": "user", "content": "<image>\nQ"}], exact_text=True)
    assert exact[0]["content"] == [{"type": "image"}, {"type": "text", "text": "\nQ"}]


def test_recipes_load_trl_layout_and_the_old_layout(tiny_vlm, color_data, tmp_path):
    from datasets import load_from_disk
    from transformers import AutoProcessor

    from selector.data.trl import to_trl
    from selector.rows import usable_mask

    canonical = load_from_disk(color_data)
    usable = canonical.select(usable_mask(list(canonical["error"]), len(canonical)).nonzero()[0].tolist())
    trl_path = tmp_path / "trl"
    to_trl(usable).save_to_disk(str(trl_path))
    rows, skipped = load_rows(str(trl_path))
    assert len(rows) == 7 and skipped == {}
    assert list(rows["id"]) == list(usable["id"])
    # the data loader hands the loop TRL rows; the collator gives the same batch for either layout
    trl_items = [RowDataset(rows)[i] for i in range(3)]
    assert set(trl_items[0]) == {"id", "index", "messages", "images"}
    assert trl_items[0]["messages"][0]["content"][0] == {"type": "image"}
    processor = AutoProcessor.from_pretrained(tiny_vlm)
    collate = ChatCollator(processor)
    old = collate([dict(usable[i], index=i) for i in range(3)])
    new = collate(trl_items)
    for key in ("input_ids", "labels", "attention_mask", "pixel_values"):
        assert (old[key] == new[key]).all(), key
    result = _train(tiny_vlm, str(trl_path), tmp_path / "run", max_steps=1, save_model=False, dynamics=False)
    assert result["global_step"] == 1 and result["n_train"] == 7


def test_a_hub_dataset_name_offline_is_one_line(monkeypatch):
    from selector.errors import DataError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"^no-such-owner/no-such-data: not a local file or directory") as info:
        load_rows("no-such-owner/no-such-data")
    assert "\n" not in str(info.value)
