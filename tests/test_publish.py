"""Publishing to the Hub with the Hub mocked (no network): what is pushed, the merged card, failures in one line.

``Dataset.push_to_hub`` is replaced by a fake that records the pushed rows and writes the README the real one
writes (``dataset_info`` and ``configs`` built with the same ``datasets`` classes); ``HfApi.hf_hub_download``
returns that README and ``HfApi.create_commit`` records the card commit.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from selector.cli import main

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "selector", "example_data", "llava_mini.json")
HUB_SOURCE = "liuhaotian/LLaVA-Instruct-150K"


@pytest.fixture(scope="module")
def selected_base(tmp_path_factory):
    """A real score -> select run with an ``emb_text`` column added to the selected rows."""
    from datasets import load_from_disk

    root = tmp_path_factory.mktemp("publish")
    scored, out = str(root / "scored"), str(root / "selected")
    assert main(["score", EXAMPLE, "--metrics", "length", "--out", scored, "--quiet"]) == 0
    assert main(["select", scored, "--strategy", "topk:score_length", "--budget", "12", "--out", out]) == 0
    subset = load_from_disk(out)
    rng = np.random.default_rng(0)
    subset = subset.add_column("emb_text", [list(v) for v in rng.normal(size=(len(subset), 8)).astype("float32")])
    final = str(root / "with_emb")
    subset.save_to_disk(final)
    shutil.copy(os.path.join(out, "manifest.json"), os.path.join(final, "manifest.json"))
    return final


@pytest.fixture
def selected(selected_base, tmp_path):
    copy = tmp_path / "selected"
    shutil.copytree(selected_base, copy)
    return str(copy)


class FakeHub:
    """Records what ``publish`` sends; ``fail`` (an exception) is raised by the step named in ``fail_at``."""

    def __init__(self, root):
        self.root = root
        self.pushes: list[dict] = []
        self.commits: list[dict] = []
        self.fail: BaseException | None = None
        self.fail_at = "push_to_hub"
        self.existing_metadata: dict = {}

    def push_to_hub(self, dataset, repo_id, private=None, token=None, split=None, **kwargs):
        from datasets import DatasetInfo, SplitDict, SplitInfo
        from datasets.info import DatasetInfosDict
        from datasets.utils.metadata import MetadataConfigs
        from huggingface_hub import DatasetCard, DatasetCardData

        if self.fail is not None and self.fail_at == "push_to_hub":
            raise self.fail
        split = split or "train"
        self.pushes.append(
            {"repo_id": repo_id, "private": private, "split": split, "columns": dataset.column_names, "rows": dataset}
        )
        # what datasets writes: the repo's README metadata (kept) + dataset_info + configs
        data = DatasetCardData(**self.existing_metadata)
        splits = SplitDict()
        splits.add(SplitInfo(name=split, num_bytes=1234, num_examples=len(dataset)))
        info = DatasetInfo(features=dataset.features, splits=splits, download_size=999, dataset_size=1234)
        DatasetInfosDict({"default": info}).to_dataset_card_data(data)
        MetadataConfigs(
            {"default": {"data_files": [{"split": split, "path": f"data/{split}-*"}]}}
        ).to_dataset_card_data(data)
        self.readme = os.path.join(self.root, "pushed_README.md")
        with open(self.readme, "w", encoding="utf-8") as handle:
            handle.write(str(DatasetCard(f"---\n{data}\n---\n")))

        class Commit:
            oid = "abc123"

        return Commit()

    def hf_hub_download(self, api, repo_id, filename, repo_type=None, revision=None, **kwargs):
        if self.fail is not None and self.fail_at == "hf_hub_download":
            raise self.fail
        assert (repo_type, filename, revision) == ("dataset", "README.md", "abc123")
        return self.readme

    def create_commit(self, api, repo_id, operations, repo_type=None, **kwargs):
        files = {}
        for op in operations:
            source = op.path_or_fileobj
            if isinstance(source, str):
                with open(source, "rb") as handle:
                    source = handle.read()
            files[op.path_in_repo] = source.decode("utf-8")
        self.commits.append({"repo_id": repo_id, "repo_type": repo_type, "files": files})

    def card(self) -> str:
        assert len(self.commits) == 1, "the card is pushed in one commit"
        return self.commits[0]["files"]["README.md"]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import datasets
    from huggingface_hub import HfApi

    fake = FakeHub(str(tmp_path))
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda ds, *a, **k: fake.push_to_hub(ds, *a, **k))
    monkeypatch.setattr(HfApi, "hf_hub_download", lambda api, *a, **k: fake.hf_hub_download(api, *a, **k))
    monkeypatch.setattr(HfApi, "create_commit", lambda api, *a, **k: fake.create_commit(api, *a, **k))
    return fake


def _metadata(card: str) -> dict:
    from huggingface_hub import DatasetCard

    return DatasetCard(card).data.to_dict()


def test_publish_keeps_dataset_info_and_configs(selected, hub, capsys):
    hub.existing_metadata = {"annotations_creators": ["expert-generated"]}  # written before, by someone else
    assert main(["publish", selected, "me/example", "--license", "cc-by-4.0"]) == 0
    assert capsys.readouterr().out.startswith("published https://huggingface.co/datasets/me/example")
    (push,) = hub.pushes
    assert push["private"] is True and push["split"] == "train"  # private unless --public
    meta = _metadata(hub.card())
    # push_to_hub's metadata, which the dataset viewer and load_dataset read, survives the card
    assert meta["dataset_info"]["splits"] == [{"name": "train", "num_bytes": 1234, "num_examples": 12}]
    assert [f["name"] for f in meta["dataset_info"]["features"]] == push["columns"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert meta["annotations_creators"] == ["expert-generated"]
    # ... and ours is merged in
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["en"]
    assert meta["pretty_name"] == "llava_mini (12 rows, topk:score_length)"
    assert "tags" in meta and "size_categories" in meta
    assert "# llava_mini (12 rows, topk:score_length)" in hub.card()
    assert 'load_dataset("me/example", split="train")' in hub.card()


def test_publish_public_and_report_in_the_same_commit(selected, hub):
    with open(os.path.join(selected, "report.html"), "w") as handle:
        handle.write("<html>report</html>")
    assert main(["publish", selected, "me/example", "--public"]) == 0
    assert hub.pushes[0]["private"] is False
    (commit,) = hub.commits
    assert set(commit["files"]) == {"README.md", "report.html"} and commit["repo_type"] == "dataset"
    assert "[`report.html`](report.html)" in commit["files"]["README.md"]


def test_card_names_the_source_and_writes_no_local_path(selected, hub, tmp_path):
    manifest = json.loads(open(os.path.join(selected, "manifest.json")).read())
    # a selector path and a warning naming a local folder, as real runs write them
    manifest["options"] = {"selector": str(tmp_path / "models" / "sel")}
    manifest["warnings"] = [f"budget 12 exceeds the rows of {tmp_path}/pool/cluster"]
    with open(os.path.join(selected, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)
    assert main(["publish", selected, "me/example"]) == 0
    card = hub.card()
    for local in (str(tmp_path), os.path.dirname(selected), os.getcwd(), os.path.abspath(EXAMPLE)):
        assert local not in card
    assert "source: `llava_mini.json`" in card
    assert "source_datasets" not in _metadata(card)  # a local file is no Hub dataset
    assert '"selector": "sel"' in card and "rows of cluster" in card
    assert "pretty_name: selected" not in card


def test_hub_source_is_source_datasets_and_names_the_card(selected, hub):
    manifest = json.loads(open(os.path.join(selected, "manifest.json")).read())
    scoring_path = os.path.join(manifest["input"], "manifest.json")
    scoring = json.loads(open(scoring_path).read())
    original = dict(scoring["input"])
    scoring["input"].update(source=HUB_SOURCE, hub=True)  # as a run that loaded the source from the Hub records it
    try:
        with open(scoring_path, "w") as handle:
            json.dump(scoring, handle)
        assert main(["publish", selected, "me/example"]) == 0
    finally:
        scoring["input"] = original
        with open(scoring_path, "w") as handle:
            json.dump(scoring, handle)
    meta = _metadata(hub.card())
    assert meta["source_datasets"] == [HUB_SOURCE]
    assert meta["pretty_name"] == "LLaVA-Instruct-150K (12 rows, topk:score_length)"
    assert f"(source: `{HUB_SOURCE}`)" in hub.card()


def test_embeddings_are_dropped_by_default(selected, hub):
    assert main(["publish", selected, "me/example"]) == 0
    columns = hub.pushes[0]["columns"]
    assert "emb_text" not in columns and "score_length" in columns and "id" in columns
    card = hub.card()
    assert "Left out of the published files: `emb_text`" in card
    assert "`emb_text`" not in card.split("Left out")[0]  # the column list describes what is there


def test_drop_columns_globs_and_keep_embeddings(selected, hub):
    assert (
        main(["publish", selected, "me/example", "--drop-columns", "score_length_*, source", "--keep-embeddings"]) == 0
    )
    columns = hub.pushes[0]["columns"]
    assert "emb_text" in columns and "score_length" in columns
    assert not {"score_length_words", "score_length_norm", "source"} & set(columns)
    assert [f["name"] for f in _metadata(hub.card())["dataset_info"]["features"]] == columns


@pytest.mark.parametrize(
    "args, message",
    [
        (["--drop-columns", "scor_*"], "--drop-columns 'scor_*' matches no column"),
        (["--drop-columns", "id"], "can't drop id"),
        (["--language", "English"], "--language english: give ISO 639-1 codes"),
    ],
)
def test_bad_card_options_exit_2_before_pushing(selected, hub, capsys, args, message):
    assert main(["publish", selected, "me/example", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert hub.pushes == [] and hub.commits == []


def _http_error():
    from huggingface_hub.errors import HfHubHTTPError

    try:
        import httpx2 as client
    except ImportError:  # huggingface_hub releases on httpx
        import httpx as client
    request = client.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError("401 Client Error: Unauthorized", response=client.Response(401, request=request))


def _network_failures():
    import httpx
    import requests

    return [
        ("push_to_hub", httpx.ConnectError("[Errno -3] Temporary failure in name resolution")),
        ("push_to_hub", requests.ConnectionError("Max retries exceeded with url: /api/datasets/me/example")),
        ("push_to_hub", _http_error()),
        ("hf_hub_download", httpx.ReadTimeout("The read operation timed out")),
    ]


@pytest.mark.parametrize(
    "step, error", _network_failures(), ids=lambda v: v if isinstance(v, str) else type(v).__name__
)
def test_network_errors_are_one_line_and_exit_2(selected, hub, capsys, step, error):
    hub.fail, hub.fail_at = error, step
    assert main(["publish", selected, "me/example"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not publish to me/example: ")
    assert str(error).splitlines()[0] in err[0] and "Traceback" not in captured.err
    assert hub.commits == []


def test_layout_trl_publishes_typed_content(selected, hub):
    assert main(["publish", selected, "me/example", "--layout", "trl"]) == 0
    (push,) = hub.pushes
    rows = push["rows"]
    assert push["columns"][:2] == ["messages", "images"] and "image" not in push["columns"]
    assert "score_length" in push["columns"] and "emb_text" not in push["columns"]
    with_image = next(row for row in rows if row["images"])
    user = with_image["messages"][0]
    assert user["role"] == "user" and isinstance(user["content"], list)
    assert {part["type"] for part in user["content"]} == {"image", "text"}
    assert all("<image>" not in (part["text"] or "") for turn in with_image["messages"] for part in turn["content"])
    assert sum(p["type"] == "image" for t in with_image["messages"] for p in t["content"]) == len(with_image["images"])
    assert "TRL's vision SFT layout" in hub.card()
    assert [f["name"] for f in _metadata(hub.card())["dataset_info"]["features"]] == push["columns"]


def test_dry_run_card_matches_what_publish_describes(selected, hub, capsys):
    assert main(["publish", selected, "me/example", "--dry-run", "--layout", "trl"]) == 0
    assert hub.pushes == [] and "nothing pushed" in capsys.readouterr().out
    text = open(os.path.join(selected, "README.md")).read()
    meta = _metadata(text)
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert "TRL's vision SFT layout" in text and "Left out of the published files: `emb_text`" in text


def test_merge_card_metadata_prefers_the_pushed_data_files():
    from selector.card import merge_card_metadata

    pushed = "---\nconfigs:\n- config_name: default\n  data_files: data/*.parquet\nlicense: mit\nextra: kept\n---\n"
    ours = "---\nlicense: cc-by-4.0\nconfigs:\n- config_name: default\n  data_files: data/train-*\n---\n# Ours\n"
    merged = merge_card_metadata(pushed, ours)
    meta = _metadata(merged)
    assert meta["configs"][0]["data_files"] == "data/*.parquet" and meta["license"] == "cc-by-4.0"
    assert meta["extra"] == "kept" and merged.rstrip().endswith("# Ours")
    assert merge_card_metadata(None, ours) == ours


def test_train_selector_push_is_private_by_default():
    import argparse

    from selector.commands import train_selector

    parser = argparse.ArgumentParser()
    train_selector.add_parser(parser.add_subparsers())
    base = ["train-selector", "scored", "--labels", "labels.jsonl", "--out", "sel"]
    assert parser.parse_args(base).private is True
    assert parser.parse_args([*base, "--public"]).private is False
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--public", "--private"])
