"""``safety``: offensive language and personal data in the answer, to filter before training or publishing.

- Offensive language: the ``alt-profanity-check`` package (a maintained fork of ``profanity-check``, Zhou
  2019): a linear SVM on word TF-IDF, calibrated to a probability, trained on ~200k human-labelled offensive /
  clean texts (Davidson et al. 2017 and the Wikipedia toxic-comments data). It is fast and offline, and it is a
  word-level model: it flags explicit profanity and insults, not subtle toxicity.
- Personal data: regular expressions in the style of the BigCode PII pipeline (StarCoder, Li et al. 2023:
  e-mail and IP addresses) and Microsoft Presidio's recognisers (phone numbers, credit cards validated with
  the Luhn checksum, ISO/IEC 7812-1); IP candidates are validated with :mod:`ipaddress`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import ClassVar

import numpy as np

from metrics.base import Metric, Requirement, batch_texts, error_mask, nan_array, split_sentences, text_columns

logger = logging.getLogger(__name__)

_EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")
# A leading "+" and country code, or the North American form (ddd) ddd-dddd / ddd-ddd-dddd / ddd.ddd.dddd.
# Bare digit runs are not counted: ids, amounts and years would drown the real numbers.
_PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}([.-])\d{3}\1\d{4})(?![\w])"
)
_CARD_RE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6_RE = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
_PARTS = ("profanity", "emails", "phones", "cards", "ips")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum (ISO/IEC 7812-1) of a digit string: every second digit from the right doubled."""
    total = 0
    for k, ch in enumerate(reversed(digits)):
        d = int(ch)
        if k % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def count_emails(text: str) -> int:
    return len(_EMAIL_RE.findall(text))


def count_phones(text: str) -> int:
    count = 0
    for match in _PHONE_RE.finditer(text):
        digits = re.sub(r"\D", "", match.group(0))
        count += 7 <= len(digits) <= 15  # E.164 allows at most 15 digits
    return count


def count_cards(text: str) -> int:
    """Digit runs of 13-19 digits (spaces or dashes allowed between digits) that pass the Luhn check."""
    count = 0
    for match in _CARD_RE.finditer(text):
        digits = re.sub(r"\D", "", match.group(0))
        count += 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)
    return count


def count_ips(text: str) -> int:
    """IPv4 and IPv6 addresses that :mod:`ipaddress` accepts (``999.1.1.1`` and ``12:30:45`` do not count);
    an IPv6 address needs at least two groups of 3-4 hex digits."""
    count = 0
    for pattern, cls in ((_IPV4_RE, ipaddress.IPv4Address), (_IPV6_RE, ipaddress.IPv6Address)):
        for match in pattern.finditer(text):
            candidate = match.group(0)
            if cls is ipaddress.IPv6Address and len(re.findall(r"[0-9A-Fa-f]{3,4}", candidate)) < 2:
                continue  # "3:4::5", "::1": ratios, times and loopback, not an address that identifies anyone
            try:
                cls(candidate)
            except ValueError:
                continue
            count += 1
    return count


class SafetyScore(Metric):
    """Offensive-language probability and personal-data counts of a row's text.

    Columns (float32; NaN where the row has ``error`` set or the text is missing):

    - ``score_<name>``: ``1 - max(profanity, pii)``, ``[0, 1]``, **higher is better (safer)**, where ``pii`` is
      1 when any e-mail address, phone number, Luhn-valid card number or IP address is found, else 0. So a row
      with personal data scores 0, and otherwise ``1 - profanity``. With ``profanity=False`` it is
      ``1 - pii``.
    - ``score_<name>_profanity``: probability that the text is offensive, ``[0, 1]``, lower is better: the
      maximum over the whole text and each of its sentences (one insult in a long answer is not diluted).
      NaN on every row with ``profanity=False``.
    - ``score_<name>_emails``, ``_phones``, ``_cards``, ``_ips``: counts of each kind of personal data,
      ``[0, inf)``, lower is better. Phones: a ``+`` country-code number or the North American
      ``(ddd) ddd-dddd`` / ``ddd-ddd-dddd`` / ``ddd.ddd.dddd`` forms with 7-15 digits; bare digit runs are not
      counted. Cards: 13-19 digits (spaces or dashes between them allowed) passing the Luhn check, not all one
      digit. IPs: IPv4 and IPv6 addresses :mod:`ipaddress` accepts; IPv6 needs two groups of 3-4 hex digits
      (``::1`` and ``fe80::1`` identify no one; ``3:4::5`` is more often a ratio).

    Args:
        name: instance name, the column prefix.
        text_field: ``response`` (default), ``instruction``, ``conversation`` or a string column.
        profanity: score offensive language with ``alt-profanity-check`` (an optional package; construction
            fails with the install hint when it is missing). False leaves the part NaN.

    Example:
        >>> from metrics import get_metric
        >>> safety = get_metric("safety")
        >>> batch = {"id": ["a", "b"], "error": [None, None], "messages": [
        ...     [{"role": "assistant", "content": "The cat sits on a red mat."}],
        ...     [{"role": "assistant", "content": "Mail jane.doe@example.com or call +1 415 555 2671."}]]}
        >>> out = safety.score_batch(batch)
        >>> out["score_safety_emails"].tolist(), out["score_safety_phones"].tolist()
        ([0.0, 1.0], [0.0, 1.0])
        >>> out["score_safety"][1].item()
        0.0
    """

    higher_is_better: ClassVar[bool] = True
    #: profanity probability and personal-data counts: lower is safer.
    part_higher_is_better: ClassVar[dict[str, bool]] = {
        "profanity": False,
        "emails": False,
        "phones": False,
        "cards": False,
        "ips": False,
    }
    requires: ClassVar[tuple[Requirement, ...]] = (
        Requirement(
            "profanity_check",
            "offensive-language scores (or pass profanity=False)",
            extra="safety",
            when=lambda args: bool(args["profanity"]),
        ),
    )

    def __init__(self, name: str = "safety", text_field: str = "response", profanity: bool = True):
        self.name = name
        self.text_field = text_field
        self.profanity = profanity

    def required_columns(self) -> list[str]:
        return ["id", *text_columns(self.text_field), "error"]

    def output_columns(self) -> list[str]:
        return [self.column()] + [self.column(part) for part in _PARTS]

    def _profanity_probs(self, texts: list[str]) -> np.ndarray:
        """Max offensive probability over each text and its sentences, in one vectorised call."""
        from profanity_check import predict_prob

        pieces, owner = [], []
        for k, text in enumerate(texts):
            for piece in dict.fromkeys([text, *split_sentences(text)]):
                if piece.strip():
                    pieces.append(piece)
                    owner.append(k)
        out = np.zeros(len(texts), dtype=np.float64)
        if pieces:
            np.maximum.at(out, np.asarray(owner), np.asarray(predict_prob(pieces), dtype=np.float64))
        return out

    def score_batch(self, batch: dict[str, list], *, rank: int | None = None) -> dict[str, np.ndarray]:
        texts = batch_texts(batch, self.text_field)
        bad = error_mask(batch)
        n = len(texts)
        out = {column: nan_array(n) for column in self.output_columns()}
        todo = [i for i in range(n) if not bad[i] and texts[i] is not None]
        if not todo:
            return out
        counters = {"emails": count_emails, "phones": count_phones, "cards": count_cards, "ips": count_ips}
        pii = np.zeros(len(todo), dtype=bool)
        for part, count in counters.items():
            values = np.array([count(texts[i]) for i in todo], dtype=np.float32)
            out[self.column(part)][todo] = values
            pii |= values > 0
        risk = pii.astype(np.float64)
        if self.profanity:
            prob = self._profanity_probs([texts[i] for i in todo])
            out[self.column("profanity")][todo] = prob
            risk = np.maximum(risk, prob)
        out[self.column()][todo] = 1.0 - risk
        return out
