"""Loading the vision-language model and processor the engine trains or evaluates."""

from __future__ import annotations

import os
from typing import Any

from selector.errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def torch_dtype(name: str):
    """``"bfloat16"`` -> ``torch.bfloat16``; ``"auto"`` stays ``"auto"`` (the checkpoint's own dtype)."""
    if name not in DTYPES:
        raise ConfigError(f"torch_dtype {name!r}: expected one of {', '.join(DTYPES)}")
    if name == "auto":
        return "auto"
    import torch

    return getattr(torch, name)


def load_model_and_processor(
    model_name_or_path: str,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
):
    """``AutoModelForImageTextToText`` + ``AutoProcessor``; a LoRA adapter folder loads its base model first.

    Raises:
        ConfigError: the model can't be loaded (bad id or path, no network for an uncached Hub id).
        MissingDependencyError: a LoRA adapter folder without ``peft`` installed.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    model_kwargs = dict(kwargs, dtype=torch_dtype(dtype))
    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    adapter = os.path.isdir(model_name_or_path) and os.path.exists(
        os.path.join(model_name_or_path, "adapter_config.json")
    )
    try:
        if adapter:
            from selector.errors import require

            require("peft", "training", "LoRA adapters")
            from peft import PeftConfig, PeftModel

            base_path = PeftConfig.from_pretrained(model_name_or_path).base_model_name_or_path
            base = AutoModelForImageTextToText.from_pretrained(base_path, **model_kwargs)
            model = PeftModel.from_pretrained(base, model_name_or_path)
        else:
            model = AutoModelForImageTextToText.from_pretrained(model_name_or_path, **model_kwargs)
        processor = AutoProcessor.from_pretrained(model_name_or_path, **kwargs)
    except OSError as exc:
        raise ConfigError(f"can't load model {model_name_or_path!r}: {exc}") from None
    return model, processor


__all__ = ["DTYPES", "load_model_and_processor", "torch_dtype"]
