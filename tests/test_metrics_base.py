"""The metric protocol's helpers and the registry."""

from __future__ import annotations

import inspect
import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from metrics import base, registry
from metrics.base import DatasetMetric, Metric, ModelMetric, Requirement, is_dataset_metric, is_row_metric
from metrics.length import LengthMetric
from metrics.registry import available_metrics, get_metric, metrics_from_config
from selector.errors import ConfigError, MissingDependencyError


class _Echo(ModelMetric):
    """A model metric whose 'model' is a big array, to check lazy loading and pickling."""

    def __init__(self, name="echo", model_name_or_path="none", device=None, dtype="auto", batch_size=2):
        self.name = name
        self.model_name_or_path = model_name_or_path
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size

    def _load(self, device, torch_dtype):
        self._model = np.ones(1_000_000, dtype=np.float32)

    def score_batch(self, batch, *, rank=None):
        self._ensure_loaded(rank)
        return {self.column(): np.arange(len(batch["id"]), dtype=np.float32)}


def test_builtins_are_registered_and_listed_from_the_registry():
    names = available_metrics()
    assert {"length", "clip", "reward", "embedding"} <= set(names)
    assert names == sorted(names)


def test_unknown_metric_and_unknown_parameter_are_config_errors():
    with pytest.raises(ConfigError, match="unknown metric 'nope'.*available: .*length"):
        get_metric("nope")
    with pytest.raises(ConfigError, match="no parameter.*colour.*accepts: .*text_field"):
        get_metric("length", colour="red")


def test_two_instances_of_one_plugin_coexist():
    a = get_metric("embedding", name="dinov2")
    b = get_metric("embedding", name="minilm", modality="text")
    assert a.output_columns() == ["emb_dinov2"] and b.output_columns() == ["emb_minilm"]
    with pytest.raises(ConfigError, match="two metrics write column 'score_length'"):
        registry.check_unique_names([get_metric("length"), get_metric("length")])


def test_bad_instance_name_is_rejected_when_columns_are_named():
    with pytest.raises(ConfigError, match="metric name"):
        LengthMetric(name="has space").output_columns()


def test_yaml_config(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("metrics:\n  - {metric: length, text_field: instruction}\n  - {metric: length, name: resp_len}\n")
    metrics = metrics_from_config(str(path))
    assert [m.name for m in metrics] == ["length", "resp_len"]
    assert metrics[0].text_field == "instruction"
    path.write_text("metrics:\n  - {metric: length, bogus: 1}\n")
    with pytest.raises(ConfigError, match="bogus"):
        metrics_from_config(str(path))
    path.write_text("metric: [length]\n")
    with pytest.raises(ConfigError, match="unknown key.*metric"):
        metrics_from_config(str(path))
    path.write_text("metrics: [ {metric: length\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        metrics_from_config(str(path))
    path.write_text("metrics:\n  - {text_field: x}\n")
    with pytest.raises(ConfigError, match="'metric' key"):
        metrics_from_config(str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        metrics_from_config(str(tmp_path / "missing.yaml"))


def test_entry_point_plugins_are_discovered(monkeypatch):
    eps = [
        SimpleNamespace(name="echo", value=f"{_Echo.__module__}:_Echo"),
        SimpleNamespace(name="length", value="somewhere:Else"),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == registry.ENTRY_POINT_GROUP else [])
    assert "echo" in available_metrics()
    metric = get_metric("echo", batch_size=4)
    assert isinstance(metric, _Echo) and metric.name == "echo" and metric.batch_size == 4
    assert registry.metric_class("length") is LengthMetric  # a plugin can't shadow a built-in
    assert registry.registry_name(metric) == "echo"


def test_lazy_loading_once_per_process_and_pickles_without_weights():
    metric = _Echo()
    empty = len(pickle.dumps(metric))
    metric.score_batch({"id": ["a", "b"]})
    model = metric._model
    metric.score_batch({"id": ["c"]})
    assert metric._model is model  # loaded once
    assert len(pickle.dumps(metric)) == empty < 1000
    from datasets.fingerprint import Hasher

    assert Hasher.hash(metric) == Hasher.hash(_Echo())
    metric.release()
    assert not hasattr(metric, "_model")


def test_resolve_device_spreads_ranks_over_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [base.resolve_device(None, r) for r in (None, 0, 1, 2, 3, 4)] == [
        "cuda:0",
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:0",
        "cuda:1",
    ]
    assert base.resolve_device("cuda", 5) == "cuda:2"
    assert base.resolve_device("cpu", 1) == "cpu"
    assert base.resolve_device("cuda:1", 0) == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert base.resolve_device(None, 3) == "cpu"
    with pytest.raises(ConfigError, match="CUDA is not available"):
        base.resolve_device("cuda", 0)


def test_resolve_dtype():
    import torch

    assert base.resolve_dtype("auto", "cpu") is torch.float32
    assert base.resolve_dtype("auto", "cuda:1") is torch.float16
    assert base.resolve_dtype("bfloat16", "cuda:0") is torch.bfloat16
    assert base.resolve_dtype("float16", "cpu") is torch.float16
    with pytest.raises(ConfigError, match="dtype must be one of"):
        base.resolve_dtype("fp8", "cpu")


def test_missing_package_fails_at_construction(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sentence_transformers" else real(name, *a)
    )
    with pytest.raises(MissingDependencyError, match="sentence-transformers"):
        get_metric("embedding", modality="text", backend="sentence-transformers")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    for name in ("clip", "reward", "embedding"):
        with pytest.raises(MissingDependencyError, match="pip install transformers"):
            get_metric(name)


def test_kinds():
    assert is_row_metric(LengthMetric()) and is_dataset_metric(LengthMetric())
    assert is_row_metric(_Echo()) and not is_dataset_metric(_Echo())

    class Pool(DatasetMetric):
        def __init__(self, name="pool"):
            self.name = name

        def fit_columns(self):
            return ["score_x"]

    assert is_dataset_metric(Pool()) and not is_row_metric(Pool())
    assert not is_dataset_metric(Metric())


def test_helpers():
    assert base.split_sentences("A cat. A dog!  Two?\nFour\n\n") == ["A cat.", "A dog!", "Two?", "Four"]
    assert base.split_sentences("   ") == []
    x = base.l2_normalize(np.array([[3, 4], [0, 0], [np.nan, 1]], dtype=np.float32))
    np.testing.assert_allclose(x[:2], [[0.6, 0.8], [0, 0]])
    assert np.isnan(x[2]).all()
    assert list(base.chunks([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert base.error_mask({"id": ["a", "b"], "error": [None, "x"]}).tolist() == [False, True]
    assert base.error_mask({"id": ["a"]}).tolist() == [False]
    assert base.resolved_revision("/") is None
    assert base.resolved_revision("nobody/not-cached-model") is None


def test_resolved_revision_reads_the_hub_cache_layout(tmp_path, monkeypatch):
    """The commit of a cached snapshot comes from the cache's refs/ and snapshots/ folders, without a Hub call."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    commit, tagged = "a" * 40, "b" * 40
    repo = tmp_path / "models--org--model"
    for c in (commit, tagged):
        (repo / "snapshots" / c).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "refs" / "v1").write_text(tagged + "\n")
    assert base.resolved_revision("org/model") == commit
    assert base.resolved_revision("org/model", "v1") == tagged
    assert base.resolved_revision("org/model", tagged) == tagged
    assert base.resolved_revision("org/model", "c" * 40) is None  # a commit that is not cached
    assert base.resolved_revision("org/model", "v2") is None
    assert base.resolved_revision("org/other") is None and base.resolved_revision("efficientnet-lite0") is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert base.unavailable_model("m", "org/model") is None
    assert "not in the local cache" in base.unavailable_model("m", "org/other")
    assert base.unavailable_model("m", "/no/such/folder") == "metric 'm': model folder /no/such/folder does not exist"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert base.unavailable_model("m", "org/other") is None  # online: the library downloads it


def test_requirements_are_declared_once_and_checked_before_init(monkeypatch):
    import importlib.util

    calls = []

    class Needs(ModelMetric):
        requires = (
            Requirement("numpy", "the needs metric"),
            Requirement("not_a_module_xyz", "fancy mode", extra="fancy", when=lambda args: args["mode"] == "fancy"),
        )

        def __init__(self, name="needs", mode="plain", **extra):
            calls.append(mode)
            self.name = name
            self.mode = mode

    class Child(Needs):
        requires = (*Needs.requires, Requirement("also_missing_xyz", "the child metric", pip="also-missing"))

        def __init__(self, name="child", mode="plain"):
            super().__init__(name=name, mode=mode)

    assert Needs().mode == "plain" and calls == ["plain"]
    with pytest.raises(MissingDependencyError, match=r"Install vlselect\[fancy\] to use fancy mode"):
        Needs(mode="fancy")
    assert calls == ["plain"]  # the constructor body never ran
    with pytest.raises(MissingDependencyError, match="the child metric needs also-missing: pip install also-missing"):
        Child()
    assert calls == ["plain"]
    with pytest.raises(TypeError):
        Needs(1, 2, 3)  # a bad call is the usual TypeError, not a requirement error
    assert list(inspect.signature(Needs).parameters) == ["name", "mode", "extra"]
    blob = pickle.dumps(get_metric("clip"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert pickle.loads(blob).name == "clip"  # unpickling (a worker process) checks nothing


def test_model_metrics_declare_their_packages():
    from metrics.clip import ClipScore
    from metrics.embedding import EmbeddingMetric
    from metrics.judge import Judge
    from metrics.reward import RewardScore

    for cls in (ClipScore, RewardScore, EmbeddingMetric):
        assert {r.module for r in cls.requires} >= {"torch", "transformers"}
    assert {r.module for r in Judge.requires} == {"httpx", "gguf"}
    source = "".join(inspect.getsource(cls.__init__) for cls in (ClipScore, RewardScore, EmbeddingMetric, Judge))
    assert "require" not in source  # declared in `requires`, not checked by hand in the constructors
