"""Loading the vision-language model and processor the engine trains or evaluates, and visual-token pruning.

:class:`VisualTokenPruning` is the token level of "Peeling the Onion" (Kong et al., AAAI 2023; official code
``ZLKong/Tri-Level-ViT``) for LLaVA-style models: each image keeps the ``visual_token_ratio`` share of its patch
tokens that the vision tower's [CLS] token attends to most, so the language model sees fewer image tokens.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
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


class VisualTokenPruning:
    """Keep the ``ratio`` share of each image's patch tokens with the highest [CLS] attention (LLaVA-style models).

    The score of a patch is the attention its token receives from the [CLS] token in the vision-tower layer whose
    output LLaVA feeds to the projector (``vision_feature_layer``), averaged over heads, recomputed from that
    layer's own query/key projections with a hook, so it works with any attention kernel (SDPA and flash attention
    return no weights). Each image keeps ``ceil(ratio * n_patches)`` tokens in their original order; the [CLS]
    feature of ``vision_feature_select_strategy="full"`` is always kept. The image placeholders of the dropped
    tokens are removed from ``input_ids`` (with ``attention_mask`` and ``labels``) before the forward pass, so the
    language model's sequence is shorter, which is where the saving is. This follows the paper's token level,
    which drops tokens inside a ViT being trained; here the ViT is the (usually frozen) encoder and the tokens are
    dropped on their way into the language model, where a VLM spends its compute.

    Not available for Idefics3 / SmolVLM: their SigLIP tower has no [CLS] token to rank patches by, and the
    pixel-shuffle connector regroups the full patch grid into ``scale_factor**2`` blocks, so it can't take a
    subset of patches; dropping whole connector tokens by some other score would be a new method, not the paper's.

    Args:
        model: the model being trained (``LlavaForConditionalGeneration``, optionally LoRA-wrapped).
        ratio: share of patch tokens to keep per image, in (0, 1].

    Raises:
        ConfigError: a model without a CLIP-style [CLS] vision tower, or a ratio outside (0, 1].
    """

    def __init__(self, model, ratio: float):
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f"visual_token_ratio must be in (0, 1], got {ratio}")
        self.ratio = float(ratio)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner = getattr(base, "model", base)
        model_type = getattr(getattr(base, "config", None), "model_type", None)
        if model_type != "llava" or not hasattr(inner, "get_image_features"):
            raise ConfigError(
                f"visual_token_ratio < 1 needs a LLaVA-style model (CLIP vision tower with a [CLS] token); "
                f"{type(base).__name__} ({model_type}) is not one. Idefics3/SmolVLM: the SigLIP tower has no [CLS] "
                f"token and the pixel-shuffle connector needs the full patch grid (see the README)"
            )
        self.inner = inner
        self.config = base.config
        self.image_token_id = int(self.config.image_token_id)
        self.full = getattr(self.config, "vision_feature_select_strategy", "default") == "full"
        self.layer = self._attention_layer()

    def _attention_layer(self):
        tower = self.inner.vision_tower
        encoder = getattr(getattr(tower, "vision_model", tower), "encoder", None)
        layers = getattr(encoder, "layers", None)
        if layers is None or not hasattr(layers[0], "self_attn") or not hasattr(layers[0].self_attn, "q_proj"):
            raise ConfigError(
                f"visual_token_ratio < 1: the vision tower {type(tower).__name__} is not a CLIP-style encoder "
                f"(encoder.layers[i].self_attn.q_proj/k_proj), so its [CLS] attention can't be read"
            )
        feature_layer = self.config.vision_feature_layer
        if not isinstance(feature_layer, int):
            feature_layer = max(feature_layer, key=lambda i: i % (len(layers) + 1))
        # hidden_states[p] is the output of layer p - 1 (hidden_states[0] is the embedding output).
        position = feature_layer % (len(layers) + 1)
        if position == 0:
            raise ConfigError(
                "visual_token_ratio: vision_feature_layer selects the embeddings; no attention to rank by"
            )
        return layers[position - 1].self_attn

    def n_keep(self, n_features: int) -> int:
        """Image tokens kept of ``n_features`` (the [CLS] feature of the ``full`` strategy counts and is kept)."""
        n_patches = n_features - 1 if self.full else n_features
        return min(n_features, math.ceil(self.ratio * n_patches) + (1 if self.full else 0))

    def shrink(self, batch: dict[str, Any], labels) -> tuple[dict[str, Any], Any]:
        """Drop the placeholders of the tokens that will be pruned: the last ``n - n_keep(n)`` of each image's
        ``n`` placeholders (placeholders are interchangeable; features fill them in order). Rows are re-padded on
        the right, as the collator pads."""
        import torch

        input_ids = batch["input_ids"]
        pixel_values = batch.get("pixel_values")
        if pixel_values is None or pixel_values.shape[0] == 0:
            return batch, labels
        is_image = input_ids == self.image_token_id
        n_images = pixel_values.shape[0]
        total = int(is_image.sum())
        if total % n_images:
            raise ValueError(f"{total} image placeholders do not split evenly over {n_images} images")
        per_image = total // n_images
        keep_n = self.n_keep(per_image)
        # rank of each placeholder within its image: running count within the row, modulo the image's size
        rank = (torch.cumsum(is_image.long(), dim=1) - 1) % per_image
        keep = ~is_image | (rank < keep_n)
        mask = batch.get("attention_mask")
        lengths = keep.sum(dim=1)
        width = int(lengths.max())
        pad_id = getattr(getattr(self.config, "text_config", self.config), "pad_token_id", None) or 0
        new_ids = torch.full((input_ids.shape[0], width), pad_id, dtype=input_ids.dtype, device=input_ids.device)
        new_mask = torch.zeros_like(new_ids) if mask is not None else None
        new_labels = torch.full_like(new_ids, -100)
        for b in range(input_ids.shape[0]):
            sel = keep[b]
            n = int(lengths[b])
            new_ids[b, :n] = input_ids[b, sel]
            new_labels[b, :n] = labels[b, sel]
            if new_mask is not None:
                new_mask[b, :n] = mask[b, sel].to(new_mask.dtype)
        out = dict(batch)
        out["input_ids"] = new_ids
        if new_mask is not None:
            out["attention_mask"] = new_mask.to(mask.dtype)
        return out, new_labels

    @contextmanager
    def pruning(self):
        """While active, the model's image features keep only the highest-[CLS]-attention tokens of each image."""
        import torch

        original = self.inner.get_image_features
        captured: dict[str, Any] = {}

        def capture(module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            with torch.no_grad():
                attn = module
                h = hidden.detach()
                bsz, length, _ = h.shape
                q = attn.q_proj(h[:, :1]).view(bsz, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
                k = attn.k_proj(h).view(bsz, length, attn.num_heads, attn.head_dim).transpose(1, 2)
                weights = torch.softmax((q @ k.transpose(-1, -2)).float() * attn.scale, dim=-1)
                captured["cls"] = weights.mean(dim=1)[:, 0]  # (n_images, 1 + n_patches)

        def get_image_features(*args, **kwargs):
            handle = self.layer.register_forward_pre_hook(capture, with_kwargs=True)
            try:
                out = original(*args, **kwargs)
            finally:
                handle.remove()
            features = out.pooler_output if hasattr(out, "pooler_output") else out
            scores = captured["cls"]
            if not self.full:
                scores = scores[:, 1:]
            else:
                scores = scores.clone()
                scores[:, 0] = float("inf")
            kept = []
            for i, feats in enumerate(features):
                n_keep = self.n_keep(feats.shape[0])
                top = torch.topk(scores[i, : feats.shape[0]], n_keep).indices.sort().values
                kept.append(feats[top.to(feats.device)])
            if hasattr(out, "pooler_output"):
                out.pooler_output = kept
                return out
            return kept

        had_own = "get_image_features" in vars(self.inner)
        self.inner.get_image_features = get_image_features
        try:
            yield self
        finally:
            if had_own:
                self.inner.get_image_features = original
            else:
                del self.inner.get_image_features


__all__ = ["DTYPES", "VisualTokenPruning", "load_model_and_processor", "torch_dtype"]
