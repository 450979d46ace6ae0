"""``clip``: how well the answer describes the image, as CLIP image-text cosine similarity.

InstructionGPT-4 scores each (image, response) pair with CLIP: the response is split into sentences (CLIP's
text encoder reads at most 77 tokens), each sentence is scored against the image, and the sentence scores
are averaged.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np

from metrics.base import (
    ModelMetric,
    Requirement,
    batch_texts,
    clip_text_features,
    encode_images,
    encode_texts,
    error_mask,
    load_clip_family,
    load_images,
    nan_array,
    pooled,
    split_sentences,
    text_columns,
    token_limit,
)
from metrics.image_loader import check_num_workers, wants_workers

logger = logging.getLogger(__name__)

AGGREGATES = ("mean", "max", "min")


class ClipScore(ModelMetric):
    """Cosine similarity between a row's image(s) and its text under a CLIP-family model.

    Column ``score_<name>`` (float32): the raw cosine similarity in ``[-1, 1]``, higher is better. For
    CLIP ViT-B/32 matching pairs typically score 0.25-0.35 and unrelated pairs 0.1-0.2. The widely reported
    *CLIPScore* (as in torchmetrics) is ``100 * max(cos, 0)``; Hessel et al.'s CLIP-S is
    ``2.5 * max(cos, 0)``; both are monotone in this column, so ranking is unchanged.

    The text is split into sentences (``split_sentences=True``); each sentence is truncated to the text
    encoder's limit (77 tokens for CLIP) and scored against each image; sentence scores are aggregated with
    ``aggregate`` (``mean`` as in InstructionGPT-4, or ``max`` / ``min``), and rows with several images
    average over their images.

    NaN when the row has ``error`` set, has no image (text-only row), has no text, or an image could not be
    decoded (counted, logged with the row id).

    Args:
        name: instance name, the column prefix.
        model_name_or_path: any checkpoint ``AutoModel`` loads with ``get_image_features`` and
            ``get_text_features`` (CLIP, SigLIP, ...). Default ``openai/clip-vit-base-patch32``.
        revision: Hub revision.
        device: ``None`` picks ``cuda:{rank % n}`` when CUDA exists, else CPU.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
        batch_size: images or sentences per forward pass.
        text_field: ``response`` (default), ``instruction``, ``conversation`` or a string column.
        aggregate: how sentence scores combine: ``mean``, ``max`` or ``min``.
        split_sentences: score sentences separately (True) or the whole text truncated once (False).
        num_workers: processes that decode and preprocess images while the model runs (a ``DataLoader``, see
            :mod:`metrics.image_loader`); ``None``: 0 on CPU (decoding in the scoring process, as before), up to
            8 on CUDA. Used when the scorer runs one process (``num_proc`` 1).

    Example:
        >>> from metrics import get_metric
        >>> clip = get_metric("clip", batch_size=64)           # loads on the first batch
        >>> scored = ds.map(clip, batched=True, with_rank=True)  # doctest: +SKIP
    """

    higher_is_better: ClassVar[bool] = True
    requires: ClassVar[tuple[Requirement, ...]] = (
        Requirement("torch", "the clip metric"),
        Requirement("transformers", "the clip metric"),
    )

    def __init__(
        self,
        name: str = "clip",
        model_name_or_path: str = "openai/clip-vit-base-patch32",
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 32,
        text_field: str = "response",
        aggregate: str = "mean",
        split_sentences: bool = True,
        num_workers: int | None = None,
    ):
        self.name = name
        self.model_name_or_path = model_name_or_path
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.text_field = text_field
        self.aggregate = aggregate
        self.split_sentences = split_sentences
        self.num_workers = num_workers

    def required_columns(self) -> list[str]:
        return ["id", "image", "images", *text_columns(self.text_field), "error"]

    def _validate(self) -> None:
        from selector.errors import ConfigError

        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"clip aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        check_num_workers(self.num_workers)

    def _from_hub(self) -> bool:
        return True

    def _load(self, device: str, torch_dtype) -> None:
        model, processor, self._pad = load_clip_family(
            self.model_name_or_path, torch_dtype, self._hub_kwargs(), require_features=True
        )
        self._model = model.to(device).eval()
        self._tokenizer = processor.tokenizer
        self._image_processor = processor.image_processor
        self._max_tokens = token_limit(
            getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None),
            getattr(self._tokenizer, "model_max_length", None),
        )

    def _encode_images(self, images: list) -> np.ndarray:
        return encode_images(self, images, self._image_forward)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        return encode_texts(self, texts, lambda enc: clip_text_features(self._model, enc, self._pad))

    def score_batch(self, batch: dict[str, list], *, rank: int | None = None) -> dict[str, np.ndarray]:
        self._validate()
        n = len(batch["id"])
        out = self._empty_output(n)
        plan = self._image_plan(batch)
        if not plan:
            return out
        self._ensure_loaded(rank)
        from selector.data.schema import batch_images

        images = batch_images(batch)
        flat_images, image_owner = [], []
        for i in plan:
            decoded = load_images(images[i], batch["id"][i], self)
            if decoded:
                flat_images.extend(decoded)
                image_owner.extend([i] * len(decoded))
        feats = self._encode_images(flat_images) if flat_images else None
        self._image_fill(batch, plan, feats, np.asarray(image_owner, dtype=np.int64), out)
        return out

    def uses_decode_workers(self, rank: int | None = None) -> bool:
        """Whether the scorer should call :meth:`score_dataset` (``num_workers`` resolves to > 0 here)."""
        return wants_workers(self, rank)

    def score_dataset(self, view, *, rank: int | None = None):
        """Score all of ``view`` decoding in ``num_workers`` processes (see :mod:`metrics.image_loader`)."""
        from metrics.image_loader import score_with_workers

        return score_with_workers(self, view, rank=rank, num_workers=self.num_workers)

    # The three steps both paths share: which rows need their images, the image forward, the rows' scores.
    def _empty_output(self, n: int) -> dict[str, np.ndarray]:
        return {self.column(): nan_array(n)}

    def _image_plan(self, batch: dict[str, list]) -> dict[int, list[str]]:
        """``{row: sentence pieces}`` for the rows that get a score if their images decode."""
        bad = error_mask(batch)
        texts = batch_texts(batch, self.text_field)
        from selector.data.schema import batch_images

        images = batch_images(batch)
        plan = {}
        for i in range(len(batch["id"])):
            if bad[i] or not images[i] or texts[i] is None:
                continue
            parts = split_sentences(texts[i]) if self.split_sentences else [texts[i].strip()]
            parts = [p for p in parts if p]
            if parts:
                plan[i] = parts
        return plan

    def _image_forward(self, pixels):
        return pooled(self._model.get_image_features(pixel_values=pixels))

    def _image_fill(self, batch, plan, image_feats, owner, out) -> None:
        if image_feats is None or not len(owner):
            return
        ids = batch["id"]
        scores = out[self.column()]
        rows = sorted(set(owner.tolist()))
        unique_texts = sorted({p for i in rows for p in plan[i]})
        text_index = {t: k for k, t in enumerate(unique_texts)}
        cache = getattr(self, "_text_features", None)
        if cache is None:
            text_feats = self._encode_texts(unique_texts)
        else:
            # The worker path sees one small batch at a time: features of sentences repeated across the shard's
            # batches (answer templates, boilerplate) are encoded once per shard, not once per batch.
            missing = [t for t in unique_texts if t not in cache]
            if missing:
                cache.update(zip(missing, self._encode_texts(missing)))
            text_feats = np.stack([cache[t] for t in unique_texts])
        reduce = {"mean": np.mean, "max": np.max, "min": np.min}[self.aggregate]
        for i in rows:
            sims = image_feats[owner == i] @ text_feats[[text_index[p] for p in plan[i]]].T
            value = float(np.mean(reduce(sims, axis=1)))
            if np.isfinite(value):
                scores[i] = value
            else:
                self._count_failure(ids[i], "the model returned a non-finite similarity")
