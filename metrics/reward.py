"""``reward``: a sequence-classification reward model's score for (instruction, response).

InstructionGPT-4 uses OpenAssistant's DeBERTa-v3 reward model as a quality indicator of the answer.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from metrics.base import (
    ModelMetric,
    Requirement,
    batch_texts,
    chunks,
    error_mask,
    nan_array,
    text_columns,
    token_limit,
)

logger = logging.getLogger(__name__)


class RewardScore(ModelMetric):
    """Reward-model score of the response given the instruction.

    Columns (float32, NaN where the row has ``error`` set or the instruction or response is missing):

    - ``score_<name>``: the model's single logit, an unbounded real number; higher is better. For
      ``OpenAssistant/reward-model-deberta-v3-large-v2`` good answers are typically > 0 and poor ones < -2.
    - ``score_<name>_truncated``: 1.0 where (instruction, response) exceeded ``max_length`` tokens and was
      truncated (longest part first), else 0.0. The count is logged and written to the manifest.

    Rows are sorted by token length before batching so padding stays small.

    Args:
        name: instance name, the column prefix.
        model_name_or_path: an ``AutoModelForSequenceClassification`` checkpoint with one output
            (default ``OpenAssistant/reward-model-deberta-v3-large-v2``).
        revision: Hub revision.
        device: ``None`` picks ``cuda:{rank % n}`` when CUDA exists, else CPU.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
        batch_size: pairs per forward pass.
        max_length: token limit; default: the tokenizer's ``model_max_length`` capped by the model's
            position limit (512 for the default model).
        instruction_field: text given as the first segment (default ``instruction``).
        response_field: text given as the second segment (default ``response``).

    Example:
        >>> from metrics import get_metric
        >>> reward = get_metric("reward", batch_size=8)
        >>> scored = ds.map(reward, batched=True, with_rank=True)  # doctest: +SKIP
    """

    higher_is_better: ClassVar[bool] = True
    requires: ClassVar[tuple[Requirement, ...]] = (
        Requirement("torch", "the reward metric"),
        Requirement("transformers", "the reward metric"),
    )

    def __init__(
        self,
        name: str = "reward",
        model_name_or_path: str = "OpenAssistant/reward-model-deberta-v3-large-v2",
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 16,
        max_length: int | None = None,
        instruction_field: str = "instruction",
        response_field: str = "response",
    ):
        self.name = name
        self.model_name_or_path = model_name_or_path
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_length = max_length
        self.instruction_field = instruction_field
        self.response_field = response_field

    def required_columns(self) -> list[str]:
        return list(dict.fromkeys(["id", *text_columns(self.instruction_field, self.response_field), "error"]))

    def output_columns(self) -> list[str]:
        return [self.column(), self.column("truncated")]

    def _from_hub(self) -> bool:
        return True

    def _load(self, device: str, torch_dtype) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from selector.errors import ConfigError

        model = AutoModelForSequenceClassification.from_pretrained(
            self.model_name_or_path, dtype=torch_dtype, **self._hub_kwargs()
        )
        if model.config.num_labels != 1:
            raise ConfigError(
                f"{self.model_name_or_path} has {model.config.num_labels} outputs; a reward model has exactly one"
            )
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path, **self._hub_kwargs())
        self._model = model.to(device).eval()
        self._limit = token_limit(
            self.max_length,
            getattr(model.config, "max_position_embeddings", None),
            getattr(self._tokenizer, "model_max_length", None),
        )
        self._n_special = self._tokenizer.num_special_tokens_to_add(pair=True)

    def score_batch(self, batch: dict[str, list], *, rank: int | None = None) -> dict[str, np.ndarray]:
        from selector.errors import ConfigError

        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        ids = batch["id"]
        n = len(ids)
        scores, truncated = nan_array(n), nan_array(n)
        bad = error_mask(batch)
        prompts = batch_texts(batch, self.instruction_field)
        answers = batch_texts(batch, self.response_field)
        todo = [i for i in range(n) if not bad[i] and prompts[i] is not None and answers[i] is not None]
        if todo:
            self._ensure_loaded(rank)
            self._score(ids, prompts, answers, todo, scores, truncated)
        return {self.column(): scores, self.column("truncated"): truncated}

    def _score(self, ids, prompts, answers, todo, scores, truncated) -> None:
        import torch

        tok = self._tokenizer
        # Token counts without truncation (verbose=False: no "sequence too long" warning per row).
        plen = tok([prompts[i] for i in todo], add_special_tokens=False, verbose=False)["input_ids"]
        alen = tok([answers[i] for i in todo], add_special_tokens=False, verbose=False)["input_ids"]
        lengths = {i: len(p) + len(a) + self._n_special for i, p, a in zip(todo, plen, alen)}
        n_cut = 0
        for i in todo:
            truncated[i] = float(lengths[i] > self._limit)
            n_cut += lengths[i] > self._limit
        if n_cut:
            self._n_truncated = getattr(self, "_n_truncated", 0) + n_cut
            logger.info("metric %r: %d of %d pairs truncated to %d tokens", self.name, n_cut, len(todo), self._limit)
        order = sorted(todo, key=lambda i: lengths[i])
        for idx in chunks(order, self.batch_size):
            enc = tok(
                [prompts[i] for i in idx],
                [answers[i] for i in idx],
                padding=True,
                truncation="longest_first",
                max_length=self._limit,
                return_tensors="pt",
            )
            enc = {key: value.to(self._device) for key, value in enc.items()}
            with torch.inference_mode():
                logits = self._model(**enc).logits[:, 0].float().cpu().numpy()
            for i, value in zip(idx, logits):
                if np.isfinite(value):
                    scores[i] = value
                else:
                    self._count_failure(ids[i], "the model returned a non-finite reward")

    def report(self, columns: dict[str, np.ndarray]) -> dict[str, Any]:
        """Run summary for the manifest: how many pairs were truncated."""
        cut = np.asarray(columns[self.column("truncated")], dtype=np.float32)
        return {"n_truncated": int(np.nansum(cut))}
