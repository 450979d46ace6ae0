from __future__ import annotations

import json
import os

import numpy as np
import pytest

from selector.cli import main
from selector.commands.select import parse_budget, parse_options
from selector.errors import ConfigError


def write_scored(tmp_path, n=40):
    """A folder shaped like `vlselect score` output: save_to_disk + manifest.json."""
    from datasets import Dataset

    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ds = Dataset.from_dict(
        {
            "id": [f"s{i:03d}" for i in range(n)],
            "messages": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]] * n,
            "error": ["missing_image: gone.jpg" if i == 0 else None for i in range(n)],
            "source": ["a" if i % 4 else "b" for i in range(n)],
            "score_clip": rng.random(n).astype(np.float32).tolist(),
            "emb_clip": X.tolist(),
            "cluster_div": [i % 4 for i in range(n)],
        }
    )
    path = tmp_path / "scored"
    ds.save_to_disk(str(path))
    (path / "manifest.json").write_text(json.dumps({"input": {"fingerprint": "abc123"}}))
    return path


def test_select_writes_subset_and_manifest(tmp_path, capsys):
    from datasets import load_from_disk

    scored = write_scored(tmp_path)
    out = tmp_path / "picked"
    rc = main(
        [
            "select",
            str(scored),
            "--strategy",
            "instructiongpt4",
            "--budget",
            "8",
            "--out",
            str(out),
            "--score-column",
            "score_clip",
            "--cluster-column",
            "cluster_div",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    assert "selected 8 of 40 rows" in capsys.readouterr().out
    subset = load_from_disk(str(out))
    assert len(subset) == 8 and "s000" not in subset["id"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["strategy"] == "instructiongpt4" and manifest["seed"] == 3
    assert manifest["options"] == {
        "n_clusters": 10,
        "quota": "proportional",
        "clustering": "spectral",
        "backend": "auto",
        "balance": 1.0,
    }
    assert manifest["counts"]["n_selected"] == 8 and manifest["counts"]["reasons"]["error"] == 1
    assert manifest["clusters"] == {str(c): {"rows": 10 - (c == 0), "selected": 2} for c in range(4)}
    assert manifest["sources"]["b"]["rows"] == 10
    assert manifest["input_fingerprint"] == "abc123"
    assert manifest["columns"]["scores"] == "score_clip"
    assert manifest["strategy_info"]["all"]["quota"] == [2, 2, 2, 2]


def test_keep_rejected_options_and_overwrite(tmp_path):
    from datasets import load_from_disk

    scored = write_scored(tmp_path)
    out = tmp_path / "all"
    args = ["select", str(scored), "--strategy", "dbp", "--budget", "25%", "--out", str(out), "--keep-rejected"]
    assert main([*args, "-o", "n_clusters=3", "-o", "eps=null"]) == 0
    full = load_from_disk(str(out))
    assert len(full) == 40 and sum(full["selected"]) == 10
    assert {"selected", "selection_rank", "selection_reason"} <= set(full.column_names)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["n_clusters"] == 3 and manifest["options"]["eps"] is None
    assert manifest["columns"]["embeddings"] == "emb_clip" and manifest["n_budget"] == 10
    # a second run refuses to clobber the result unless asked
    assert main([*args, "-o", "n_clusters=3"]) == 2
    assert main([*args, "-o", "n_clusters=2", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["options"]["n_clusters"] == 2
    assert not [p for p in os.listdir(tmp_path) if p.startswith((".select-", ".vlselect-"))]


def test_stratify_and_topk_column(tmp_path):
    from datasets import load_from_disk

    scored = write_scored(tmp_path)
    out = tmp_path / "top"
    assert (
        main(
            [
                "select",
                str(scored),
                "--strategy",
                "topk:score_clip",
                "--budget",
                "0.1",
                "--out",
                str(out),
                "--stratify-column",
                "source",
            ]
        )
        == 0
    )
    subset = load_from_disk(str(out))
    assert len(subset) == 4 and "b" in subset["source"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strategy", "nope", "--budget", "5"], "unknown strategy 'nope'"),
        (["--strategy", "random", "--budget", "many"], "--budget: expected a count"),
        (["--strategy", "random", "--budget", "1.5"], "fraction"),
        (["--strategy", "topk", "--budget", "5"], "needs score_column="),
        (["--strategy", "dbp", "--budget", "5", "-o", "n_cluster=3"], "has no option"),
        (["--strategy", "dbp", "--budget", "5", "-o", "oops"], "not KEY=VALUE"),
        (["--strategy", "dbp", "--budget", "5", "--embedding-column", "emb_x"], "not a column"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, extra, message):
    scored = write_scored(tmp_path)
    capsys.readouterr()
    assert main(["select", str(scored), "--out", str(tmp_path / "o"), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


def test_missing_or_wrong_input_folder(tmp_path, capsys):
    assert (
        main(["select", str(tmp_path / "none"), "--strategy", "random", "--budget", "2", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert (
        main(
            ["select", str(tmp_path / "plain"), "--strategy", "random", "--budget", "2", "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "not a save_to_disk dataset folder" in capsys.readouterr().err


def test_parsers():
    assert parse_budget("200") == 200 and parse_budget("0.3") == 0.3 and parse_budget("30%") == 0.3
    assert parse_options(["n-clusters=5", "keep=easy", "eps=0.05"]) == {"n_clusters": 5, "keep": "easy", "eps": 0.05}
    with pytest.raises(ConfigError, match="given twice"):
        parse_options(["a=1", "a=2"])


def test_filters_quality_and_dedup_flags(tmp_path, capsys):
    from datasets import load_from_disk

    scored = write_scored(tmp_path)
    ds = load_from_disk(str(scored))
    # rows 1 and 2 get row 3's embedding: near-duplicates; score_b has a NaN (row 4)
    emb = np.asarray(ds["emb_clip"])
    emb[1] = emb[2] = emb[3]
    ds = ds.remove_columns("emb_clip").add_column("emb_clip", emb.tolist())
    ds = ds.add_column("score_b", [np.nan if i == 4 else float(i % 7) for i in range(40)])
    ds.save_to_disk(str(tmp_path / "scored2"))
    out = tmp_path / "picked"
    rc = main(
        ["select", str(tmp_path / "scored2"), "--strategy", "instructiongpt4", "--budget", "10", "--out", str(out),
         "--cluster-column", "cluster_div", "--quality", "score_clip:2,score_b:lower",
         "--filter", "score_b:max=5", "--filter", "score_clip:min_quantile=0.1",
         "--dedup-column", "emb_clip", "--dedup-eps", "0.01", "--keep-rejected"]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "selected 10 of 40 rows" in printed and "filtered " in printed and "near-duplicates" in printed
    result = load_from_disk(str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = dict(zip(result["id"], result["selection_reason"]))
    assert reasons["s004"] == "filter:score_b<=5"  # NaN fails max
    assert manifest["filters"]["counts"]["score_b<=5"] == sum(
        1 for i in range(1, 40) if i == 4 or (i % 7) > 5
    )  # row 0 has an error: never counted
    assert manifest["columns"]["scores"] == "score_quality" and "score_quality" in result.column_names
    assert [(c["column"], c["weight"], c["direction"]) for c in manifest["quality"]["columns"]] == [
        ("score_clip", 2.0, "higher"),
        ("score_b", 1.0, "lower"),
    ]
    # of the three copies still eligible, the one with the best score_quality stays
    copies = [f"s00{i}" for i in (1, 2, 3) if not reasons[f"s00{i}"].startswith("filter:")]
    quality = dict(zip(result["id"], result["score_quality"]))
    best = max(copies, key=lambda i: (quality[i], -int(i[1:])))
    assert not reasons[best].startswith("dedup:")
    assert all(reasons[c].startswith(f"dedup:dup_of={best} cos=1.0000") for c in copies if c != best)
    assert manifest["dedup"]["n_duplicates"] == len(copies) - 1 == manifest["counts"]["reasons"]["dedup"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--filter", "score_clip"], "expected COLUMN:KEY=VALUE"),
        (["--filter", "score_nope:min=1"], "no column 'score_nope'"),
        (["--filter", "emb_clip:min=1"], "not embedding vectors"),
        (["--quality", "score_clip:heavy"], "neither a weight nor higher/lower"),
        (["--quality", "score_nope"], "score_nope"),
        (["--quality", "default", "--selector", "x"], "either --quality or --selector"),
        (["--dedup-column", "emb_nope"], "not a column"),
        (["--dedup-column", "emb_clip", "--dedup-eps", "-1"], "dedup_eps must be"),
    ],
)
def test_filter_quality_dedup_mistakes_exit_2(tmp_path, capsys, extra, message):
    scored = write_scored(tmp_path)
    capsys.readouterr()
    args = ["select", str(scored), "--out", str(tmp_path / "o"), "--quiet", "--strategy", "topk:score_clip"]
    assert main([*args, "--budget", "5", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1
