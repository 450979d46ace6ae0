"""Test configuration: everything offline, every cache in a temporary directory.

The environment is set at import time, before any test module imports ``datasets`` or ``transformers``,
because both read their cache locations and offline flags when first imported.
"""

from __future__ import annotations

import os
import tempfile

_CACHE_ROOT = tempfile.mkdtemp(prefix="vlselect-test-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_CACHE_ROOT, "hf")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHE_ROOT, "datasets")
os.environ["XDG_CACHE_HOME"] = os.path.join(_CACHE_ROOT, "xdg")
os.environ["TORCH_HOME"] = os.path.join(_CACHE_ROOT, "torch")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

pytest_plugins = ["fixtures_models"]


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _restore_progress_bars():
    """The CLI's ``--quiet`` (and the demo) turn vlselect's and the Hugging Face libraries' progress bars off for the
    rest of their process; tests call ``main`` in-process, so each test leaves the bars as it found them."""
    import sys

    states = []
    if "datasets" in sys.modules:
        import datasets

        states.append(
            (datasets.is_progress_bar_enabled(), datasets.enable_progress_bars, datasets.disable_progress_bars)
        )
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        states.append(
            (hf_logging.is_progress_bar_enabled(), hf_logging.enable_progress_bar, hf_logging.disable_progress_bar)
        )
    from selector import logs

    own = {name: getattr(logs, name) for name in ("_bars", "_leave", "_third_party_level", "_third_party_bars")}
    yield
    for name, value in own.items():
        setattr(logs, name, value)
    for was_on, enable, disable in states:
        (enable if was_on else disable)()


#: The Hub download functions, by module: vlselect imports them inside functions (so the module attribute is what
#: runs); the libraries it loads models with bound them at import time.
_HUB_DOWNLOADS = {
    "huggingface_hub": ("snapshot_download", "hf_hub_download"),
    "huggingface_hub.file_download": ("hf_hub_download",),
    "huggingface_hub._snapshot_download": ("snapshot_download",),
    "transformers.utils.hub": ("hf_hub_download", "snapshot_download"),
    "sentence_transformers.util": ("hf_hub_download", "snapshot_download"),
}


@pytest.fixture(autouse=True)
def _no_hub_downloads(monkeypatch):
    """Fail any test that calls a Hub download function (even one whose error the code under test swallows):
    tests build their models locally (tests/tiny_models.py) and fake the Hub where they test talking to it."""
    import importlib

    calls = []

    def guard(name):
        def refuse(*args, **kwargs):
            calls.append(f"{name}{args!r}")
            raise OSError(f"tests must not call the Hub: {name}{args!r}")

        return refuse

    for module_name, names in _HUB_DOWNLOADS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in names:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, guard(f"{module_name}.{name}"))
    yield
    assert not calls, f"the test called a Hub download function: {calls}"
