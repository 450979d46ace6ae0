"""The scoring manifest records whether its source was a Hub dataset id (``input.hub``), so the card tells a Hub
id from a local folder named like ``owner/name`` wherever it is rendered."""

from __future__ import annotations

import json

from datasets import Dataset

import selector
from selector.cli import main
from selector.scoring import loaded_from_hub

ROWS = [
    {"id": f"r{i}", "conversations": [{"from": "human", "value": "hi " * (i + 1)}, {"from": "gpt", "value": "ho"}]}
    for i in range(4)
]


def test_loaded_from_hub_follows_the_loaders_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert loaded_from_hub("someone/pool") is True
    assert loaded_from_hub("pool") is True
    assert loaded_from_hub("pool.json") is False
    assert loaded_from_hub(str(tmp_path)) is False
    (tmp_path / "someone" / "pool").mkdir(parents=True)
    assert loaded_from_hub("someone/pool") is False  # a local folder wins, as in the loader
    assert loaded_from_hub(None) is None


def test_manifest_records_hub_and_the_card_uses_it_from_anywhere(tmp_path, monkeypatch):
    local = tmp_path / "someone" / "pool"
    local.mkdir(parents=True)
    (local / "data.json").write_text(json.dumps(ROWS))
    monkeypatch.chdir(tmp_path)
    assert main(["score", "someone/pool", "--metrics", "length", "--out", "scored"]) == 0
    assert json.loads((tmp_path / "scored" / "manifest.json").read_text())["input"]["hub"] is False
    args = ["select", "scored", "--strategy", "topk:score_length", "--budget", "2", "--out", "sel"]
    assert main(args) == 0

    # rendered from another folder, where no someone/pool exists: the manifest, not a guess, decides
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["card", str(tmp_path / "sel")]) == 0
    card = (tmp_path / "sel" / "README.md").read_text()
    front = card.split("---")[1]
    assert "source_datasets" not in front and "someone/pool" not in front

    # an in-memory dataset scored with a Hub id as its source is recorded as one
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    ds = Dataset.from_list([{"id": r["id"], "messages": messages, "error": None} for r in ROWS])
    selector.score(ds, ["length"], out_dir=str(tmp_path / "hub_scored"), source="someone/other")
    assert json.loads((tmp_path / "hub_scored" / "manifest.json").read_text())["input"]["hub"] is True


def test_committed_demo_card_names_its_source_and_holds_no_local_path():
    """data_cards/example-demo/README.md is the demo's card as rendered today (data_cards/README.md says how)."""
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[1] / "data_cards" / "example-demo" / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["pretty_name"].startswith("vlselect bundled example")
    assert meta["configs"][0]["data_files"][0]["path"] == "data/train-*"
    assert f"# {meta['pretty_name']}" in text
    local = re.compile(
        r"(?<![\w.])/(?:tmp|work|root|home|Users|usr|mnt|opt|var|private)/|site-packages|\.venv|[A-Z]:\\"
    )
    assert not local.search(text), local.search(text)
    assert not re.search(r"\bhf_[A-Za-z0-9]{20,}|\bsk-[A-Za-z0-9]{20,}|Bearer ", text)
