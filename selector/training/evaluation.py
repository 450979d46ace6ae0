"""Evaluate a vision-language model on short-answer (VQA-style) canonical data and write a JSON of scores.

From Python::

    from selector.training import evaluate
    scores = evaluate({"model_name_or_path": "out/run1", "dataset_name": "val.json", "output_file": "out/eval.json"})

From the shell: ``python -m selector.training.evaluation --dataset_name val.json --predictions_file preds.jsonl``
(or ``python recipes/evaluate.py ...`` in a checkout).

Evaluation scores (:data:`EVAL_SCORES`):

- ``eval_loss``: token-weighted mean cross-entropy on the assistant tokens (>= 0, lower is better; NaN without a
  model).
- ``exact_match``: fraction of rows whose normalised prediction equals a normalised reference (0..1, higher is
  better).
- ``contains_answer``: fraction of rows whose normalised prediction contains a normalised reference as whole
  words (0..1, higher is better); a missing prediction counts as wrong in both and is counted in ``n_missing``.

The reference of a row is its last assistant turn, or every entry of an ``answers`` column when the dataset has
one (VQA keeps several human answers). Normalisation follows the VQA evaluation: lower case, punctuation and
articles removed, number words as digits, whitespace collapsed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from selector.errors import ConfigError, DataError
from selector.fileio import dumps_json, iter_jsonl, write_json, write_jsonl
from selector.training.config import find_config, parse_args, resolve_config
from selector.training.data import ChatCollator, RowDataset, column_list, load_rows, make_loader, to_chat
from selector.training.modeling import load_model_and_processor

logger = logging.getLogger(__name__)

#: evaluation score -> +1.0 when higher is better, -1.0 when lower is better (``sign * score`` orients it)
EVAL_SCORES = {"eval_loss": -1.0, "exact_match": 1.0, "contains_answer": 1.0}

_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s]")


def normalize_answer(text: str | None) -> str:
    """VQA-style normalisation: ``"The Two dogs."`` -> ``"2 dogs"``; None -> ``""``."""
    if text is None:
        return ""
    text = text.lower().replace("\n", " ")
    # "1,000" stays a number; other punctuation separates words.
    text = re.sub(r"(?<=\d),(?=\d)", "", text)
    text = _PUNCT.sub(" ", text)
    words = [_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def exact_match(prediction: str | None, references: list[str]) -> bool:
    """Normalised prediction equals any normalised reference (an empty reference never matches)."""
    pred = normalize_answer(prediction)
    return any(pred == ref for ref in map(normalize_answer, references) if ref)


def contains_answer(prediction: str | None, references: list[str]) -> bool:
    """Any normalised reference occurs in the normalised prediction as whole words."""
    pred = f" {normalize_answer(prediction)} "
    return any(f" {ref} " in pred for ref in map(normalize_answer, references) if ref)


def _text(content) -> str:
    """A turn's text: string content as is, typed parts (TRL layout) joined."""
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if p.get("type") == "text")
    return content or ""


def references_from_dataset(dataset) -> dict[str, list[str]]:
    """``{id: [reference answers]}`` from an ``answers`` column when present, else the last assistant turn."""
    ids = column_list(dataset, "id")
    if "answers" in dataset.column_names:
        answers = column_list(dataset, "answers")
        refs = {}
        for row_id, values in zip(ids, answers):
            values = [values] if isinstance(values, str) else list(values or [])
            refs[row_id] = [v for v in values if isinstance(v, str)]
        return refs
    refs = {}
    for row_id, messages in zip(ids, column_list(dataset, "messages")):
        answers = [_text(t["content"]) for t in messages or [] if t["role"] == "assistant"]
        refs[row_id] = answers[-1:] if answers else []
    return refs


def read_predictions(path: str) -> dict[str, str]:
    """Read predictions: JSONL rows ``{"id", "prediction"}`` or a JSON object ``{id: prediction}``."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise DataError(f"predictions file {path}: no such file") from None
    stripped = text.strip()
    if not stripped:
        raise DataError(f"predictions file {path} is empty")
    if stripped.startswith("{") and "\n" not in stripped:
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "id" not in data:
            return {str(k): (None if v is None else str(v)) for k, v in data.items()}
    preds: dict[str, str] = {}
    for row in iter_jsonl(path):
        if not isinstance(row, dict) or "id" not in row or "prediction" not in row:
            raise DataError(f'{path}: expected objects with "id" and "prediction", got {dumps_json(row, indent=None)}')
        preds[str(row["id"])] = None if row["prediction"] is None else str(row["prediction"])
    return preds


def score_predictions(
    predictions: Mapping[str, str | None],
    references: Mapping[str, list[str]],
    sources: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """Exact-match and contains-answer accuracy of ``predictions`` against ``references``.

    Every reference row is scored; a row without a prediction counts as wrong and in ``n_missing``.
    Predictions for unknown ids are ignored and counted in ``n_extra``. Rows without any reference answer are
    not scored (``n_no_reference``).

    Returns:
        ``{"n_scored", "n_missing", "n_extra", "n_no_reference", "exact_match", "contains_answer",
        "per_source": {source: {"n", "exact_match", "contains_answer"}}}``; accuracies are in 0..1 and NaN when
        nothing was scored.
    """
    n_scored = n_missing = n_no_ref = 0
    em = ca = 0
    per_source: dict[str, list[int]] = {}
    for row_id, refs in references.items():
        if not refs:
            n_no_ref += 1
            continue
        n_scored += 1
        pred = predictions.get(row_id)
        if row_id not in predictions:
            n_missing += 1
        hit_em = pred is not None and exact_match(pred, refs)
        hit_ca = pred is not None and contains_answer(pred, refs)
        em += hit_em
        ca += hit_ca
        if sources is not None:
            bucket = per_source.setdefault(str(sources.get(row_id)), [0, 0, 0])
            bucket[0] += 1
            bucket[1] += hit_em
            bucket[2] += hit_ca
    nan = float("nan")
    return {
        "n_scored": n_scored,
        "n_missing": n_missing,
        "n_extra": len(set(predictions) - set(references)),
        "n_no_reference": n_no_ref,
        "exact_match": em / n_scored if n_scored else nan,
        "contains_answer": ca / n_scored if n_scored else nan,
        "per_source": {
            name: {"n": b[0], "exact_match": b[1] / b[0], "contains_answer": b[2] / b[0]}
            for name, b in sorted(per_source.items())
        },
    }


def _device(model):
    return next(model.parameters()).device


def answer_loss(model, processor, dataset, *, batch_size: int = 4, max_length: int | None = None) -> float:
    """Token-weighted mean cross-entropy on assistant tokens (the validation loss); NaN with no answer token."""
    import torch

    from selector.training.callbacks import token_statistics

    loader = make_loader(
        RowDataset(dataset),
        batch_size=batch_size,
        collate_fn=ChatCollator(processor, max_length),
    )
    device = _device(model)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            labels = batch.pop("labels").to(device)
            batch.pop("index", None)
            batch = {
                k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if hasattr(v, "to") else v
                for k, v in batch.items()
            }
            stats = token_statistics(model(**batch).logits, labels)
            n = int(stats["per_example"]["n_tokens"].sum())
            total += float(stats["loss"]) * n
            count += n
    return total / count if count else float("nan")


def generate_predictions(
    model, processor, dataset, *, batch_size: int = 4, max_new_tokens: int = 16
) -> dict[str, str]:
    """Greedy answers to each row's conversation up to its last assistant turn: ``{id: prediction}``."""
    import torch

    from selector.data.schema import row_images, to_rgb
    from selector.logs import progress

    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = _device(model)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    preds: dict[str, str] = {}
    model.eval()
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    try:
        for start in progress(range(0, len(dataset), batch_size), desc="generate", disable=len(dataset) <= batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            prompts, images = [], []
            for row in rows:
                messages = list(row["messages"])
                last = max((i for i, t in enumerate(messages) if t["role"] == "assistant"), default=len(messages))
                chat = to_chat(messages[:last])
                prompts.append(processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
                images.append([to_rgb(img) for img in row_images(row)])
            inputs = processor(text=prompts, images=images if any(images) else None, padding=True, return_tensors="pt")
            inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            new_tokens = out[:, inputs["input_ids"].shape[1] :]
            for row, text in zip(rows, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                preds[row["id"]] = text.strip()
    finally:
        tokenizer.padding_side = previous_side
    return preds


@dataclass
class EvalConfig:
    """Options of the evaluator (YAML keys = these fields = CLI flags; names as in :class:`FinetuneConfig`).

    Example:
        >>> EvalConfig(dataset_name="val.json", predictions_file="preds.jsonl").max_new_tokens
        16
    """

    #: old option name -> new name; accepted with a warning
    DEPRECATED_ALIASES: ClassVar[dict[str, Any]] = {"dataset": "dataset_name", "revision": "model_revision"}

    dataset_name: str = ""
    model_name_or_path: str | None = None
    predictions_file: str | None = None
    output_file: str | None = None
    model_revision: str | None = None
    trust_remote_code: bool = False
    dataset_format: str = "auto"
    image_root: str | None = None
    allow_outside_root: bool = False  # read images outside image_root too (default: a row error)
    dataset_split: str = "train"
    max_eval_samples: int | None = None
    per_device_eval_batch_size: int = 4
    max_new_tokens: int = 16
    max_length: int | None = 2048
    compute_loss: bool = True
    generate: bool = True
    torch_dtype: str = "float32"
    device: str | None = None


def evaluate(config: EvalConfig | dict | str | None = None, *, model=None, processor=None, **overrides) -> dict:
    """Score a model (or a predictions file) on a canonical dataset and write the scores as JSON.

    Args:
        config: an :class:`EvalConfig`, a dict of its fields, or a YAML path; ``overrides`` win.
        model, processor: an already loaded model and processor (e.g. right after fine-tuning) instead of
            ``model_name_or_path``.

    Returns:
        ``{"dataset", "model_name_or_path", "n_rows", "skipped_rows", "eval_loss", "exact_match",
        "contains_answer", "n_scored", "n_missing", "n_extra", "n_no_reference", "per_source",
        "predictions_file"}``; also written to ``output_file`` when set (predictions beside it as JSONL).

    Raises:
        ConfigError, DataError: bad options or unusable data.
    """
    if isinstance(config, (str, os.PathLike)):
        config = find_config(config)
    cfg = resolve_config(EvalConfig, config, **overrides)
    if not cfg.dataset_name:
        raise ConfigError("option 'dataset_name' is required")
    if model is None and not cfg.model_name_or_path and not cfg.predictions_file:
        raise ConfigError("give model_name_or_path (to generate answers) or predictions_file (to score answers)")
    if model is not None and processor is None:
        raise ConfigError("pass the processor together with the model")
    if cfg.per_device_eval_batch_size < 1 or cfg.max_new_tokens < 1:
        raise ConfigError("per_device_eval_batch_size and max_new_tokens must be >= 1")
    dataset, skipped = load_rows(
        cfg.dataset_name,
        format=cfg.dataset_format,
        image_root=cfg.image_root,
        allow_outside_root=cfg.allow_outside_root,
        split=cfg.dataset_split,
    )
    if cfg.max_eval_samples is not None:
        dataset = dataset.select(range(min(cfg.max_eval_samples, len(dataset))))
    references = references_from_dataset(dataset)
    sources = None
    if "source" in dataset.column_names:
        sources = dict(zip(column_list(dataset, "id"), column_list(dataset, "source")))

    if model is None and cfg.model_name_or_path and (cfg.compute_loss or (cfg.generate and not cfg.predictions_file)):
        import torch

        model, processor = load_model_and_processor(
            cfg.model_name_or_path,
            revision=cfg.model_revision,
            dtype=cfg.torch_dtype,
            trust_remote_code=cfg.trust_remote_code,
        )
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
    eval_loss = float("nan")
    if model is not None and cfg.compute_loss:
        eval_loss = answer_loss(
            model, processor, dataset, batch_size=cfg.per_device_eval_batch_size, max_length=cfg.max_length
        )
    predictions_path = cfg.predictions_file
    if cfg.predictions_file:
        predictions = read_predictions(cfg.predictions_file)
    elif model is not None and cfg.generate:
        predictions = generate_predictions(
            model, processor, dataset, batch_size=cfg.per_device_eval_batch_size, max_new_tokens=cfg.max_new_tokens
        )
    else:
        predictions = None
    scores: dict[str, Any] = {"n_scored": 0, "exact_match": float("nan"), "contains_answer": float("nan")}
    if predictions is not None:
        scores = score_predictions(predictions, references, sources)
    if predictions is not None and cfg.output_file and not cfg.predictions_file:
        predictions_path = os.path.splitext(cfg.output_file)[0] + ".predictions.jsonl"
        write_jsonl(
            predictions_path,
            (
                {"id": row_id, "prediction": pred, "references": references[row_id]}
                for row_id, pred in predictions.items()
            ),
        )
    result = {
        "dataset": cfg.dataset_name,
        "model_name_or_path": cfg.model_name_or_path,
        "n_rows": len(dataset),
        "skipped_rows": skipped,
        "eval_loss": eval_loss,
        **scores,
        "predictions_file": predictions_path,
    }
    if cfg.output_file:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.output_file)), exist_ok=True)
        # strict JSON: NaN is written as null
        write_json(cfg.output_file, result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--config`` + ``--<option> value`` flags; prints the scores as JSON, exit 2 on bad input."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from selector.errors import VLSelectError

    try:
        cfg = parse_args(EvalConfig, argv)
        result = evaluate(cfg)
    except VLSelectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(dumps_json(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "EVAL_SCORES",
    "EvalConfig",
    "answer_loss",
    "contains_answer",
    "evaluate",
    "exact_match",
    "generate_predictions",
    "main",
    "normalize_answer",
    "read_predictions",
    "references_from_dataset",
    "score_predictions",
]
