"""``length``: how long the answer is, in characters, words and (optionally) tokens.

InstructionGPT-4 (Wei et al. 2023) uses the response length as a quality indicator, normalised over the pool
as ``10 * chars / max chars``; that pool-level part is ``score_length_norm``.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np

from metrics.base import Metric, batch_texts, error_mask, text_columns

logger = logging.getLogger(__name__)


class LengthMetric(Metric):
    """Length of a row's text.

    Columns (all float32, higher is better, NaN where the row has ``error`` set or the text is missing):

    - ``score_length``: characters of the text, ``[0, inf)``.
    - ``score_length_words``: whitespace-separated words, ``[0, inf)``.
    - ``score_length_tokens``: tokens under ``tokenizer`` (no special tokens), only when ``tokenizer`` is set.
    - ``score_length_norm`` (pool-level, written by ``vlselect score`` / :func:`selector.score` after the row
      pass): InstructionGPT-4's length score ``10 * chars / max chars`` over the scored pool, ``[0, 10]``.

    Args:
        name: instance name, the column prefix.
        text_field: ``"response"`` (assistant turns joined, the InstructionGPT-4 choice), ``"instruction"``,
            ``"conversation"``, or the name of a string column.
        tokenizer: a tokenizer id or folder for ``AutoTokenizer.from_pretrained``; loaded lazily.
        revision: Hub revision of ``tokenizer``.

    Example:
        >>> m = LengthMetric()
        >>> batch = {"id": ["a", "b"], "error": [None, "missing_image: x.jpg"],
        ...          "messages": [[{"role": "assistant", "content": "two words"}], []]}
        >>> m.score_batch(batch)["score_length_words"].tolist()
        [2.0, nan]
    """

    higher_is_better: ClassVar[bool] = True

    def __init__(
        self,
        name: str = "length",
        text_field: str = "response",
        tokenizer: str | None = None,
        revision: str | None = None,
    ):
        self.name = name
        self.text_field = text_field
        self.tokenizer = tokenizer
        self.revision = revision

    def required_columns(self) -> list[str]:
        return ["id", *text_columns(self.text_field), "error"]

    def output_columns(self) -> list[str]:
        cols = [self.column(), self.column("words")]
        if self.tokenizer:
            cols.append(self.column("tokens"))
        return cols + [self.column("norm")]

    def row_columns(self) -> list[str]:
        return [c for c in self.output_columns() if c != self.column("norm")]

    def _get_tokenizer(self):
        if getattr(self, "_tok", None) is None:
            from transformers import AutoTokenizer

            kwargs = {"revision": self.revision} if self.revision else {}
            self._tok = AutoTokenizer.from_pretrained(self.tokenizer, **kwargs)
        return self._tok

    def score_batch(self, batch: dict[str, list], *, rank: int | None = None) -> dict[str, np.ndarray]:
        texts = batch_texts(batch, self.text_field)
        bad = error_mask(batch)
        ok = [i for i, text in enumerate(texts) if text is not None and not bad[i]]
        n = len(texts)
        chars = np.full(n, np.nan, dtype=np.float32)
        words = np.full(n, np.nan, dtype=np.float32)
        for i in ok:
            chars[i] = len(texts[i])
            words[i] = len(texts[i].split())
        out = {self.column(): chars, self.column("words"): words}
        if self.tokenizer:
            tokens = np.full(n, np.nan, dtype=np.float32)
            if ok:
                ids = self._get_tokenizer()([texts[i] for i in ok], add_special_tokens=False)["input_ids"]
                tokens[ok] = [len(x) for x in ids]
            out[self.column("tokens")] = tokens
        return out

    # Pool-level part: run by the scorer after every row metric.
    def fit_columns(self) -> list[str]:
        return [self.column()]

    def fit_transform(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chars = np.asarray(columns[self.column()], dtype=np.float32)
        finite = chars[np.isfinite(chars)]
        top = float(finite.max()) if finite.size else np.nan
        self.max_chars_ = top
        if not np.isfinite(top):
            norm = np.full_like(chars, np.nan)
        elif top == 0:
            # every text is empty: all equally short, not undefined
            norm = np.where(np.isfinite(chars), 0.0, np.nan).astype(np.float32)
        else:
            norm = (10.0 * chars / top).astype(np.float32)
        return {self.column("norm"): norm}
