"""TRL's vision SFT layout: canonical rows -> ``messages`` with typed content parts and an ``images`` column.

TRL's ``SFTTrainer`` (and the processors' chat templates) expect a vision conversation as::

    {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
     "images": [<image>]}

The k-th ``{"type": "image"}`` part of the conversation is the k-th entry of ``images``. vlselect's canonical rows
keep ``<image>`` inside string content (:mod:`selector.data.schema`); this module converts them. The way back (TRL
rows -> canonical) is the ``messages`` format of :func:`selector.data.load_instructions`.

Rules: a ``<image>`` marker becomes an image part in its place; the newline the loaders put next to it is dropped
(the chat template places the image itself; ``exact_text=True`` keeps it, so the parts join back to the canonical
string as ``export_instructions(format="messages")`` needs); empty text pieces are left out, so an assistant turn is always
``[{"type": "text", "text": ...}]``. In a ``datasets`` column (:func:`to_trl`) every part has both keys ``type``
and ``text`` (``text`` is None on image parts), so the column is one Arrow type, as in TRL's own datasets;
:func:`to_trl_messages` reads either form back to the short one.

Example:
    >>> to_trl_messages([{"role": "user", "content": "<image>\\nWhat color?"}])
    [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'What color?'}]}]
"""

from __future__ import annotations

from typing import Any

from selector.data.schema import IMAGE_TOKEN, row_images

#: the columns :func:`to_trl` writes; the other canonical columns it keeps (``id``, ``source``) follow them
TRL_COLUMNS = ("messages", "images")


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def is_trl_messages(messages: list[dict[str, Any]] | None) -> bool:
    """True when every turn's ``content`` is a list of typed parts (TRL layout), False for string content."""
    return bool(messages) and all(isinstance(turn.get("content"), list) for turn in messages)


def to_trl_messages(messages: list[dict[str, Any]], *, exact_text: bool = False) -> list[dict[str, Any]]:
    """Canonical messages (``<image>`` inside strings) -> TRL messages (typed content parts).

    Turns already in TRL layout pass through with their parts normalised to ``{"type", "text"}``.

    Args:
        messages: the conversation.
        exact_text: keep every character, including the newline next to an image marker, so that joining the
            parts gives the canonical string back (what an export that is read again needs). Off for training
            data: the chat templates put their own separator after an image.
    """
    out = []
    for turn in messages:
        content = turn["content"]
        parts: list[dict[str, Any]] = []
        if isinstance(content, list):
            for part in content:
                kind = part.get("type")
                parts.append({"type": "image"} if kind == "image" else _text_part(part.get("text") or ""))
        else:
            pieces = (content or "").split(IMAGE_TOKEN)
            for k, piece in enumerate(pieces):
                if k > 0:
                    parts.append({"type": "image"})
                # Loaders write "<image>\n" before the question; the template places the image itself.
                if len(pieces) > 1 and not exact_text:
                    piece = piece.strip("\n")
                if piece:
                    parts.append(_text_part(piece))
        out.append({"role": turn["role"], "content": parts})
    return out


def n_image_parts(messages: list[dict[str, Any]]) -> int:
    """How many ``{"type": "image"}`` parts a TRL conversation holds."""
    return sum(1 for turn in messages for part in turn["content"] if part.get("type") == "image")


def to_trl_row(row: dict[str, Any], *, exact_text: bool = False) -> dict[str, Any]:
    """One canonical row -> ``{"messages": typed parts, "images": [images in order]}`` (other keys dropped).

    A row that is already in TRL layout (list content, ``images``) keeps its images. Images are passed through as
    stored (``{"bytes", "path"}`` dicts or PIL images); nothing is decoded.
    """
    messages = to_trl_messages(row["messages"], exact_text=exact_text)
    return {"messages": messages, "images": row_images(row)}


def trl_features(extra=None):
    """``datasets.Features`` of the TRL layout (``messages``, ``images``) plus ``extra`` (a mapping of features)."""
    from datasets import Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    columns = {
        "messages": List({"role": Value("string"), "content": List(part)}),
        "images": List(Image()),
    }
    columns.update(dict(extra or {}))
    return Features(columns)


def to_trl(
    dataset, *, keep_columns: tuple[str, ...] | list[str] | None = ("id", "source"), num_proc: int | None = None
):
    """A canonical ``datasets.Dataset`` -> TRL's vision SFT layout (``messages`` with typed parts, ``images``).

    Args:
        dataset: canonical rows (:mod:`selector.data.schema`); rows in TRL layout are accepted too.
        keep_columns: other columns to keep as they are (default ``id`` and ``source`` when present; None keeps
            every column except ``image``, which ``images`` replaces). Rows whose ``error`` is set should be left
            out first (:func:`selector.rows.usable_mask`): their image parts may have no image.
        exact_text: see :func:`to_trl_messages`.
        num_proc: passed to ``Dataset.map``.

    Returns:
        A ``datasets.Dataset`` with ``messages`` (``[{"role", "content": [{"type", "text"}]}]``), ``images``
        (a list of ``datasets.Image``, as many as image parts) and the kept columns. Image bytes are copied as
        they are.

    Example:
        >>> from selector.data import load_instructions  # doctest: +SKIP
        >>> to_trl(load_instructions("llava.json"))[0]["messages"][0]["content"][0]  # doctest: +SKIP
        {'type': 'image', 'text': None}
    """
    names = dataset.column_names
    if keep_columns is None:
        kept = [c for c in names if c not in ("messages", "images", "image")]
    else:
        kept = [c for c in keep_columns if c in names and c not in TRL_COLUMNS]
    extra = {name: dataset.features[name] for name in kept}
    dropped = [c for c in names if c not in kept and c not in TRL_COLUMNS]

    def convert(batch: dict[str, list]) -> dict[str, list]:
        n = len(batch["messages"])
        singles = batch.get("image") or [None] * n
        multi = batch.get("images") or [None] * n
        rows = [
            to_trl_row({"messages": batch["messages"][i], "image": singles[i], "images": multi[i]}) for i in range(n)
        ]
        # one Arrow struct for every part: image parts get an explicit null text
        messages = [
            [{"role": t["role"], "content": [{"text": None, **p} for p in t["content"]]} for t in r["messages"]]
            for r in rows
        ]
        return {"messages": messages, "images": [r["images"] for r in rows]}

    out = dataset.map(
        convert,
        batched=True,
        remove_columns=dropped,
        features=trl_features(extra),
        num_proc=num_proc,
        desc="TRL layout",
    )
    return out.select_columns(["messages", "images", *kept])


__all__ = [
    "TRL_COLUMNS",
    "is_trl_messages",
    "n_image_parts",
    "to_trl",
    "to_trl_messages",
    "to_trl_row",
    "trl_features",
]
