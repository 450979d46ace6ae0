"""Training data for the engine: rows in, padded batches with assistant-only labels out.

:func:`load_rows` reads rows in any format :func:`selector.data.load_instructions` reads (LLaVA JSON, TRL/HF
``messages`` with typed content parts, vlselect's canonical columns, a ``save_to_disk`` folder, a Hub dataset id)
and leaves out rows whose ``error`` marks them unusable (counted and logged, never silent). :class:`RowDataset`
hands the loop each row in TRL's vision SFT layout (``messages`` with ``{"type": "image"}`` / ``{"type": "text"}``
parts and an ``images`` list; :mod:`selector.data.trl`), and :class:`ChatCollator` renders that conversation with
the processor's chat template and labels the assistant tokens only. The collator also accepts rows in the old
canonical layout (``<image>`` inside string content).
"""

from __future__ import annotations

import bisect
import logging
import os
import re
from collections import Counter
from typing import Any

from selector.errors import DataError

logger = logging.getLogger(__name__)

#: label of every token that carries no loss (prompt, images, padding), as in ``torch.nn.CrossEntropyLoss``
IGNORE_INDEX = -100


def column_list(dataset, name: str) -> list:
    """One column of a ``datasets.Dataset`` as a list, honouring ``select``/``filter`` index mappings."""
    return dataset.select_columns([name])[:][name]


# "owner/name": what load_instructions reads from the Hub when no such local path exists
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _string_content(dataset) -> bool:
    """True when ``messages`` holds string content (canonical layout), False for typed parts (TRL layout)."""
    feature = dataset.features["messages"]
    inner = getattr(feature, "feature", None)
    if isinstance(feature, list) and feature:
        inner = feature[0]
    content = inner.get("content") if isinstance(inner, dict) else None
    return getattr(content, "dtype", None) == "string"


def _is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, name)) for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def load_rows(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    image_root: str | None = None,
    split: str = "train",
    allow_outside_root: bool = False,
):
    """Load canonical rows and drop the unusable ones (counted and logged, never silent).

    Args:
        path: a data file or folder for :func:`selector.data.load_instructions`, a ``save_to_disk`` folder (a
            ``DatasetDict`` folder uses ``split``), or a Hub dataset id (``owner/name``, read through
            ``datasets.load_dataset``). Canonical rows and TRL-layout rows (typed content parts, ``images``) both
            load; the result is canonical.
        format: passed to ``load_instructions``.
        image_root: passed to ``load_instructions``.
        allow_outside_root: passed to ``load_instructions``: without it an image path that resolves outside the
            allowed roots is the row's error (``image_outside_root``), and the row is left out.
        split: split of a saved ``DatasetDict`` or a Hub dataset.

    Returns:
        ``(dataset, skipped)``: the usable rows (``error`` None, NaN or ``""``; see :mod:`selector.rows`) and a
        ``{error_kind: count}`` dict of the rows left out.

    Raises:
        DataError: the path does not exist, lacks the canonical columns, or has no usable row.
    """
    from datasets import DatasetDict, load_from_disk

    from selector.data import load_instructions
    from selector.rows import error_kind, usable_mask

    path = os.fspath(path)
    if not os.path.exists(path) and not _HUB_ID.fullmatch(path):
        raise DataError(f"dataset {path}: no such file or directory")
    dataset = None
    if _is_saved_dataset(path) and format in ("auto", "canonical"):
        dataset = load_from_disk(path)
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise DataError(f"dataset {path} has splits {', '.join(dataset)}; no split {split!r}")
            dataset = dataset[split]
        if not {"id", "messages"} <= set(dataset.column_names) or not _string_content(dataset):
            # a saved dataset in another layout (TRL messages with typed parts, ...): the loaders convert it
            dataset = None
    if dataset is None:
        # a single file has only "train"; the split names a split of a saved DatasetDict or a Hub dataset
        many = not os.path.exists(path) or _is_saved_dataset(path)
        dataset = load_instructions(
            path,
            format=format,
            image_root=image_root,
            split=split if many else None,
            allow_outside_root=allow_outside_root,
        )
    missing = {"id", "messages"} - set(dataset.column_names)
    if missing:
        raise DataError(f"dataset {path} lacks the canonical column(s) {', '.join(sorted(missing))}")
    skipped: Counter[str] = Counter()
    if "error" in dataset.column_names:
        errors = column_list(dataset, "error")
        usable = usable_mask(errors, len(errors))
        skipped.update(error_kind(err) for err, ok in zip(errors, usable) if not ok)
        if skipped:
            logger.warning(
                "%s: skipping %d row(s) with errors (%s)",
                path,
                sum(skipped.values()),
                ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())),
            )
            dataset = dataset.select(usable.nonzero()[0].tolist())
    if len(dataset) == 0:
        raise DataError(f"dataset {path} has no usable rows (skipped: {dict(skipped)})")
    ids = column_list(dataset, "id")
    if len(set(ids)) != len(ids):
        raise DataError(f"dataset {path}: ids are not unique; training dynamics are keyed by id")
    return dataset, dict(skipped)


def to_chat(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages in either layout -> the processor's chat format (TRL's typed content parts).

    The same as :func:`selector.data.trl.to_trl_messages`; kept under this name for the evaluator and callers.
    """
    from selector.data.trl import to_trl_messages

    return to_trl_messages(messages)


def _render(processor, chat, add_generation_prompt=False) -> str:
    return processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(processor, chat: list[dict[str, Any]], full: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in ``full`` (the rendered chat), end-of-turn tokens included.

    Works with any chat template: the span of turn i is what rendering ``chat[:i+1]`` adds to rendering
    ``chat[:i]`` with the generation prompt. Templates without that prefix property fall back to locating the
    answer text itself.
    """
    spans = []
    cursor = 0
    for i, turn in enumerate(chat):
        if turn["role"] != "assistant":
            continue
        span = None
        try:
            prefix = _render(processor, chat[:i], add_generation_prompt=True) if i else None
            upto = _render(processor, chat[: i + 1])
        except Exception as exc:  # a template may refuse a partial chat; the fallback below still finds the span
            logger.debug("partial chat render failed (%s); locating the answer text instead", exc)
            prefix = upto = None
        if prefix is not None and upto is not None and full.startswith(upto) and upto.startswith(prefix):
            if len(upto) > len(prefix) >= cursor:
                span = (len(prefix), len(upto))
        if span is None:
            text = "".join(p.get("text", "") for p in turn["content"])
            start = full.find(text, cursor) if text else -1
            if start >= 0:
                span = (start, start + len(text))
        if span is not None:
            spans.append(span)
            cursor = span[1]
    return spans


class ChatCollator:
    """Turn rows into a padded batch with labels on assistant tokens only.

    Each row needs ``messages`` (TRL layout with typed parts, or canonical string content with ``<image>``) and
    its images (``images``, or canonical ``image``/``images``); ``index`` is passed through as a tensor so the
    training loop can key per-example statistics. Labels are ``-100`` outside assistant turns and on padding.

    Example:
        >>> processor = AutoProcessor.from_pretrained("HuggingFaceTB/SmolVLM-256M-Instruct")  # doctest: +SKIP
        >>> batch = ChatCollator(processor, max_length=2048)([row_a, row_b])  # doctest: +SKIP
        >>> sorted(batch)  # doctest: +SKIP
        ['attention_mask', 'input_ids', 'labels', 'pixel_attention_mask', 'pixel_values']
    """

    def __init__(self, processor, max_length: int | None = None):
        self.processor = processor
        self.max_length = max_length

    def _tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from transformers import BatchFeature

        from selector.data.schema import row_images, to_rgb

        tokenizer = self._tokenizer()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        texts, spans, images = [], [], []
        for row in rows:
            chat = to_chat(row["messages"])
            full = _render(self.processor, chat)
            texts.append(full)
            spans.append(assistant_spans(self.processor, chat, full))
            images.append([to_rgb(img) for img in row_images(row)])
        has_images = any(images)
        # Tensors are made after popping the offsets: some processors (Idefics3) try to tensorise the list of
        # replacement records and fail.
        raw = self.processor(
            text=texts,
            images=images if has_images else None,
            padding=True,
            return_offsets_mapping=True,
            return_text_replacement_offsets=True,
        )
        offsets = torch.as_tensor(raw.pop("offset_mapping"))
        replacements = raw.pop("text_replacement_offsets", None) or [[] for _ in rows]
        out = BatchFeature(dict(raw), tensor_type="pt")
        labels = torch.full_like(out["input_ids"], IGNORE_INDEX)
        for b, row_spans in enumerate(spans):
            ends = [r["span"][1] for r in replacements[b]]
            gained = [0]
            for r in replacements[b]:
                gained.append(gained[-1] + (r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0]))
            for start, end in row_spans:
                # Placeholders expanded before the span shift its characters right.
                start += gained[bisect.bisect_right(ends, start)]
                end += gained[bisect.bisect_right(ends, end - 1)]
                tok_start, tok_end = offsets[b, :, 0], offsets[b, :, 1]
                inside = (tok_start < end) & (tok_end > start) & (tok_end > tok_start)
                labels[b][inside] = out["input_ids"][b][inside]
        labels[out["attention_mask"] == 0] = IGNORE_INDEX
        if self.max_length is not None and out["input_ids"].shape[1] > self.max_length:
            out, labels = self._truncate(out, labels)
        out["labels"] = labels
        if "index" in rows[0]:
            out["index"] = torch.tensor([int(r["index"]) for r in rows], dtype=torch.long)
        return out

    def _truncate(self, out, labels):
        image_id = getattr(self.processor, "image_token_id", None)
        ids = out["input_ids"]
        if image_id is not None and bool((ids[:, self.max_length :] == image_id).any()):
            # Cutting inside an image's placeholder run breaks the model's image/token alignment: keep the length.
            logger.warning("a batch exceeds max_length=%d inside image tokens; not truncating it", self.max_length)
            return out, labels
        for key in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"):
            if key in out:
                out[key] = out[key][:, : self.max_length]
        return out, labels[:, : self.max_length]


class RowDataset:
    """Map-style view of selected rows of a ``datasets.Dataset`` in TRL's vision SFT layout.

    Each item is ``{"id", "index", "messages" (typed content parts), "images"}``
    (:func:`selector.data.trl.to_trl_row`); ``index`` is the row's position in ``dataset``.
    """

    def __init__(self, dataset, indices: list[int] | None = None):
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        from selector.data.trl import to_trl_row

        index = self.indices[k]
        row = self.dataset[int(index)]
        item = to_trl_row(row)
        item.update(id=row.get("id"), index=index)
        return item


def make_loader(dataset, *, batch_size: int, collate_fn, num_workers: int = 0, **kwargs: Any):
    """The one way the engine builds a ``torch.utils.data.DataLoader``: worker processes (``num_workers > 0``)
    start with ``forkserver`` (``spawn`` where it is missing), never ``fork``.

    A process forked after torch has run can deadlock in its first parallel region (libgomp's barrier, issue 21
    item 8); the engine has always run torch by the time it builds a loader. The context is the one the image
    metrics' decode workers use (:func:`metrics.image_loader.start_method`), so every worker the package starts
    comes from the same fork server. ``kwargs`` go to ``DataLoader`` unchanged.
    """
    from torch.utils.data import DataLoader

    if num_workers > 0:
        from metrics.image_loader import start_method

        kwargs["multiprocessing_context"] = start_method()
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers, **kwargs)


__all__ = [
    "IGNORE_INDEX",
    "ChatCollator",
    "RowDataset",
    "assistant_spans",
    "column_list",
    "load_rows",
    "make_loader",
    "to_chat",
]
