"""``judge``: an LLM rates each sample's answer (InstructionGPT-4's "GPT score", AlpaGasus-style rubric).

Two backends behind one ``backend`` parameter: ``openai`` (any OpenAI-compatible chat endpoint: OpenAI,
vLLM, llama.cpp's server, TGI) and ``hf`` (a local ``transformers`` causal LM with its chat template, GGUF
checkpoints through ``gguf_file``). Prompts are versioned files in ``metrics/prompts/`` (see
:mod:`metrics.judge_prompts`); answers are parsed strictly and cached by (prompt version, model, endpoint,
row content hash) in a SQLite file (:mod:`metrics.judge_cache`), so a re-run sends no requests.

The judge's configuration keys are flat (``{metric: judge, backend: openai, base_url: ..., timeout: 30}``): the
judge's own options are constructor arguments, and every other key is an option of a backend, routed to that
backend's options object (:class:`~metrics.judge_backends.OpenAIOptions`,
:class:`~metrics.judge_backends.HFOptions`), where its default, meaning and checks are defined once.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from metrics.base import ModelMetric, Requirement, batch_texts, error_mask, nan_array
from metrics.judge_backends import (
    HFBackend,
    HFOptions,
    JudgeAnswer,
    JudgeRequest,
    OpenAIBackend,
    OpenAIOptions,
    _non_negative,
    changed_options,
    split_options,
)
from metrics.judge_cache import AnswerCache, cache_file, cache_key
from metrics.judge_cache import row_hash as content_hash
from selector.errors import ConfigError

__all__ = ["AnswerCache", "BACKENDS", "DEFAULT_MODELS", "Judge"]

logger = logging.getLogger(__name__)

BACKENDS = ("openai", "hf")
#: Real default models per backend (a Hub id for ``hf``, an API model name for ``openai``).
DEFAULT_MODELS = {"openai": "gpt-4o-mini", "hf": "HuggingFaceTB/SmolLM2-1.7B-Instruct"}
#: Characters per token for estimates before any real token count has been observed.
CHARS_PER_TOKEN = 4.0
#: Shown to the judge instead of an empty instruction (an image-only user turn, e.g. a captioning sample).
EMPTY_INSTRUCTION = "(The user sent only the image, without text.)"
_STAT_KEYS = (
    "rows",
    "skipped",
    "cache_hits",
    "requests",
    "attempts",
    "failed",
    "unparsable",
    "prompt_tokens",
    "completion_tokens",
    "estimated_text_tokens",
    "usage_requests",
    "seconds",
)


class Judge(ModelMetric):
    """An LLM judge's rating of each row's answer.

    Columns (float32, higher is better):

    - ``score_<name>``: the parsed rating on the prompt's scale: ``[0, 100]`` for ``instructiongpt4``,
      ``[1, 5]`` for ``rubric5``. NaN where the row has ``error`` set, has no user or no assistant turn, the
      request failed after its retries, or the answer did not match the prompt's expected form (logged with the
      row id, never replaced by a guess).
    - with ``expected_score=True`` (``hf`` backend only): ``score_<name>_expected``, the rating expected under
      the model's probabilities of the rating tokens where it writes the rating, same scale (NaN when that
      position can't be found); and ``score_<name>_rating_mass``, the total probability of the rating tokens
      there, ``[0, 1]`` (low mass means the expected score rests on little evidence).

    Args:
        name: instance name, the column prefix.
        backend: ``"openai"`` or ``"hf"``.
        model: API model name (``openai``) or Hub id / folder (``hf``); None picks :data:`DEFAULT_MODELS`.
        prompt: ``"vlselect_quality"`` (0-100, the default: vlselect's curation wording, formerly
            ``instructiongpt4@v1``), ``"instructiongpt4"`` (0-100, the upstream InstructionGPT-4 wording),
            ``"rubric5"`` (1-5), a pinned version (``"rubric5@v1"``) or a YAML file path (see
            :mod:`metrics.judge_prompts`).
        max_tokens: most tokens the judge may write per answer.
        cache: reuse and store answers in the SQLite cache.
        cache_dir: cache folder; default ``$VLSELECT_CACHE`` or ``$XDG_CACHE_HOME/vlselect`` or
            ``~/.cache/vlselect``, file ``judge/answers.sqlite``.
        price_input_per_mtok: price per million prompt tokens, for the cost estimate (:meth:`estimate`); None =
            cost not estimated.
        price_output_per_mtok: price per million completion tokens, likewise.
        **options: the backend's options, flat: for ``openai`` (:class:`~metrics.judge_backends.OpenAIOptions`)
            ``base_url``, ``api_key_env``, ``max_concurrency``, ``timeout``, ``max_retries``, ``backoff``,
            ``max_backoff``, ``temperature``, ``send_image``, ``extra_body``, ``headers``; for ``hf``
            (:class:`~metrics.judge_backends.HFOptions`) ``revision``, ``gguf_file``, ``device``, ``dtype``,
            ``batch_size``, ``prefill``, ``expected_score``. An option of the other backend is ignored with a
            warning, except ``send_image``, ``prefill`` and ``expected_score``, which are errors there.

    Example:
        >>> judge = Judge(backend="openai", base_url="http://127.0.0.1:8000/v1", model="qwen2-vl-7b",
        ...               prompt="rubric5", api_key_env="VLLM_API_KEY")
        >>> judge.output_columns()
        ['score_judge']
        >>> out = judge.score_batch(batch)  # doctest: +SKIP
    """

    higher_is_better: ClassVar[bool] = True
    requires: ClassVar[tuple[Requirement, ...]] = (
        Requirement("httpx", "the openai judge backend", extra="judge", when=lambda args: args["backend"] == "openai"),
        Requirement(
            "gguf",
            "GGUF judge models",
            extra="judge",
            when=lambda args: args["backend"] == "hf" and bool(args.get("gguf_file")),
        ),
    )

    def __init__(
        self,
        name: str = "judge",
        backend: str = "openai",
        model: str | None = None,
        prompt: str = "vlselect_quality",
        max_tokens: int = 256,
        cache: bool = True,
        cache_dir: str | None = None,
        price_input_per_mtok: float | None = None,
        price_output_per_mtok: float | None = None,
        **options: Any,
    ):
        self.name = name
        self.backend = backend
        self.model = model
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.cache = cache
        self.cache_dir = cache_dir
        self.price_input_per_mtok = price_input_per_mtok
        self.price_output_per_mtok = price_output_per_mtok
        routed = split_options(options)
        self.openai_options: OpenAIOptions = routed["openai"]
        self.hf_options: HFOptions = routed["hf"]

    def get_params(self) -> dict[str, Any]:
        """The flat configuration: the judge's arguments, every option of its backend, and the options of the
        other backend that differ from their defaults (so ``Judge(**judge.get_params()) == judge``)."""
        own = super().get_params()
        active, other = self._options_pair()
        flat = {**asdict(active), **changed_options(other)}
        head = {k: own.pop(k) for k in ("name", "backend", "model", "prompt")}
        return {**head, **flat, **own}

    def _options_pair(self) -> tuple[Any, Any]:
        """(the options of this judge's backend, the options of the other one); openai first when unknown."""
        if self.backend == "hf":
            return self.hf_options, self.openai_options
        return self.openai_options, self.hf_options

    @property
    def model_name_or_path(self) -> str:
        """The model actually used: ``model``, or the backend's default."""
        return self.model or DEFAULT_MODELS.get(self.backend, "")

    # ModelMetric loads on ``device`` in ``dtype`` and records ``revision``: for the judge they are hf options.
    @property
    def revision(self) -> str | None:
        return self.hf_options.revision

    @property
    def device(self) -> str | None:
        return self.hf_options.device

    @property
    def dtype(self) -> str:
        return self.hf_options.dtype

    @property
    def batch_size(self) -> int:
        return self.hf_options.batch_size

    @property
    def _send_image(self) -> bool:
        return bool(self.openai_options.send_image)

    @property
    def _expected_score(self) -> bool:
        return bool(self.hf_options.expected_score)

    def required_columns(self) -> list[str]:
        return ["id", "messages", "error"] + (["image", "images"] if self._send_image else [])

    def output_columns(self) -> list[str]:
        cols = [self.column()]
        if self._expected_score:
            cols += [self.column("expected"), self.column("rating_mass")]
        return cols

    def model_ids(self) -> dict[str, str | None]:
        if self.backend == "openai":
            # An endpoint's model name has no Hub revision to resolve.
            return {"model_name_or_path": self.model_name_or_path, "revision": None, "resolved_revision": None}
        return super().model_ids()

    def _validate(self) -> None:
        if getattr(self, "_validated", False):
            return
        if self.backend not in BACKENDS:
            raise ConfigError(f"judge backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not (isinstance(self.max_tokens, int) and not isinstance(self.max_tokens, bool) and self.max_tokens >= 1):
            raise ConfigError("judge: max_tokens must be >= 1")
        for price in (self.price_input_per_mtok, self.price_output_per_mtok):
            if price is not None and not _non_negative(price):
                raise ConfigError("judge: prices must be >= 0")
        active, other = self._options_pair()
        active.validate()
        for key in changed_options(other):
            if key in other.exclusive:
                raise ConfigError(f"judge: {other.exclusive[key]}")
            logger.warning(
                "judge %r: %s is an option of the %s backend; ignored with backend=%r",
                self.name,
                key,
                other.backend,
                self.backend,
            )
        self._prompt_obj = _load_prompt(self.prompt)
        self._validated = True

    @property
    def _prompt(self):
        self._validate()
        return self._prompt_obj

    def _load(self, device: str, torch_dtype) -> None:
        prompt = self._prompt
        backend = HFBackend(
            model=self.model_name_or_path,
            options=self.hf_options,
            max_new_tokens=self.max_tokens,
            prefill=prompt.answer_prefix if self.hf_options.prefill else "",
            rating_values=prompt.rating_values() if self._expected_score else None,
            locate=_score_locator(prompt),
        )
        backend.load(device, torch_dtype)
        self._backend = backend

    def _get_backend(self, rank: int | None):
        self._validate()
        if self.backend == "hf":
            self._ensure_loaded(rank)
            return self._backend
        if getattr(self, "_backend", None) is None or getattr(self, "_backend_pid", None) != os.getpid():
            self._backend = OpenAIBackend(
                model=self.model_name_or_path, options=self.openai_options, max_tokens=self.max_tokens
            )
            self._backend_pid = os.getpid()
        return self._backend

    def close(self) -> None:
        """Close the HTTP client and the cache connection (both reopen on the next batch)."""
        backend = getattr(self, "_backend", None)
        if isinstance(backend, OpenAIBackend):
            backend.close()
            self._backend = None
        cache = getattr(self, "_cache_obj", None)
        if cache is not None:
            cache.close()
            self._cache_obj = None

    def cache_path(self) -> Path:
        """Where answers are cached (a SQLite file shared by every judge configuration)."""
        return cache_file(self.cache_dir)

    def _get_cache(self) -> AnswerCache | None:
        if not self.cache:
            return None
        cache = getattr(self, "_cache_obj", None)
        if cache is None:
            # One object per judge: after a fork it opens a connection of its own (see metrics.judge_cache).
            cache = AnswerCache(self.cache_path())
            self._cache_obj = cache
        return cache

    def _model_identity(self) -> str:
        return self._options_pair()[0].model_identity(self.model_name_or_path)

    def _cache_key(self, row: str) -> str:
        prompt = self._prompt
        settings = self._options_pair()[0].cache_settings(self.max_tokens)
        return cache_key(prompt.key, prompt.sha256, self._model_identity(), settings, row)

    def _stats(self) -> dict[str, float]:
        stats = getattr(self, "_stats_obj", None)
        if stats is None:
            stats = self._stats_obj = dict.fromkeys(_STAT_KEYS, 0)
        return stats

    def stats(self) -> dict[str, float]:
        """Counters of this process since construction (or unpickling): rows, cache hits, requests, HTTP
        attempts, failed and unparsable rows, token counts, seconds spent waiting for answers."""
        return dict(self._stats())

    def _prepare(self, batch: dict[str, list]) -> list[tuple[int, str, JudgeRequest, str] | None]:
        """Per row: None (no request: error or missing inputs) or (row, cache key, request, row hash)."""
        prompt = self._prompt
        n = len(batch["id"])
        instructions = batch_texts(batch, "instruction")
        responses = batch_texts(batch, "response")
        bad = error_mask(batch)
        images = _batch_images(batch) if self._send_image else [[] for _ in range(n)]
        out: list[tuple[int, str, JudgeRequest, str] | None] = []
        for i in range(n):
            if bad[i] or instructions[i] is None or responses[i] is None:
                out.append(None)
                continue
            urls: list[str] = []
            if images[i]:
                urls = self._image_urls(images[i], batch["id"][i])
                if urls is None:
                    out.append(None)
                    continue
            instruction = instructions[i] or EMPTY_INSTRUCTION
            messages = prompt.render(instruction, responses[i], image_attached=bool(urls))
            content = content_hash(instruction, responses[i], urls)
            request = JudgeRequest(str(batch["id"][i]), messages, urls)
            out.append((i, self._cache_key(content), request, content))
        return out

    def _image_urls(self, images: list, row_id: object) -> list[str] | None:
        from metrics.base import load_images

        decoded = load_images(images, row_id, self)
        if decoded is None:
            return None
        urls = []
        for image in decoded:
            buf = io.BytesIO()
            # JPEG keeps requests small; quality 90 is visually lossless for judging content.
            image.save(buf, format="JPEG", quality=90)
            urls.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
        return urls

    def score_batch(self, batch: dict[str, list], *, rank: int | None = None) -> dict[str, np.ndarray]:
        """Rate each row; see the class docstring for the columns, ranges and NaN meaning."""
        self._validate()
        n = len(batch["id"])
        stats = self._stats()
        prepared = self._prepare(batch)
        stats["rows"] += n
        stats["skipped"] += sum(item is None for item in prepared)
        todo = [item for item in prepared if item is not None]
        cache = self._get_cache()
        cached = cache.get_many([item[1] for item in todo]) if cache is not None and todo else {}
        answers: dict[int, JudgeAnswer] = {}
        missing = []
        for i, key, request, row_hash in todo:
            hit = cached.get(key)
            if hit is not None and (not self._expected_score or hit.rating_probs is not None):
                answers[i] = hit
                stats["cache_hits"] += 1
            else:
                missing.append((i, key, request, row_hash))
        if missing:
            backend = self._get_backend(rank)
            started = time.perf_counter()
            results = backend.answer([item[2] for item in missing])
            stats["seconds"] += time.perf_counter() - started
            fresh = []
            for (i, key, request, row_hash), answer in zip(missing, results):
                answers[i] = answer
                stats["requests"] += 1
                stats["attempts"] += answer.attempts
                stats["prompt_tokens"] += answer.prompt_tokens or 0
                stats["completion_tokens"] += answer.completion_tokens or 0
                if answer.prompt_tokens is not None:
                    # Only requests whose real token count is known calibrate the character-based estimate.
                    stats["usage_requests"] += 1
                    stats["estimated_text_tokens"] += _text_tokens(request.messages)
                if answer.text is None:
                    self._count_failure(request.row_id, f"judge request failed: {answer.error}")
                    stats["failed"] += 1
                else:
                    fresh.append((key, self._prompt.key, self._model_identity(), row_hash, answer))
            if cache is not None and fresh:
                cache.put_many(fresh)
        return self._columns(n, answers, {item[0]: item[2].row_id for item in todo})

    def _columns(self, n: int, answers: dict[int, JudgeAnswer], row_ids: dict[int, str]) -> dict[str, np.ndarray]:
        prompt = self._prompt
        scores = nan_array(n)
        expected = nan_array(n)
        mass = nan_array(n)
        values = np.asarray(prompt.rating_values(), dtype=np.float64)
        for i, answer in answers.items():
            if answer.text is None:
                continue
            score, reason = prompt.parse(answer.text)
            if reason is not None:
                self._stats()["unparsable"] += 1
                logger.warning(
                    "judge %r: row %s: unparsable answer (%s), scored NaN: %r",
                    self.name,
                    row_ids[i],
                    reason,
                    answer.text[:300],
                )
            scores[i] = score
            if self._expected_score and answer.rating_probs is not None:
                p = np.asarray(answer.rating_probs, dtype=np.float64)
                total = float(p.sum())
                mass[i] = total
                if total > 0:
                    expected[i] = float((p * values).sum() / total)
        out = {self.column(): scores}
        if self._expected_score:
            out[self.column("expected")] = expected
            out[self.column("rating_mass")] = mass
        return out

    def release(self) -> None:
        """Free the model, HTTP client and cache connection; keep this process's counters for :meth:`estimate`."""
        stats = getattr(self, "_stats_obj", None)
        self.close()
        super().release()
        if stats is not None:
            self._stats_obj = stats

    def estimate(self, dataset, *, n_scored: int | None = None, elapsed: float | None = None) -> dict[str, Any]:
        """Requests, tokens, time and cost to judge all of ``dataset`` with this configuration.

        Rows already answered in the cache (for example the first ``--limit N`` rows just scored) need no
        request; their real token counts calibrate the estimate for the others: prompt tokens are the rendered
        prompt's characters / 4 times the ratio of real to estimated tokens of the answered rows (this also
        covers image tokens), completion tokens are the answered rows' mean. With nothing answered yet the
        estimate falls back to 4 characters per token and ``max_tokens`` (an upper bound). Time uses the
        seconds per request measured in this process (concurrency included), else (the rows were judged in
        worker processes) ``elapsed / n_scored`` of this metric (which includes model loading, so it errs high).

        Args:
            dataset: a ``datasets.Dataset`` or a column batch (``{column: list}``) in canonical form.
            n_scored: rows scored in the measured run (``--limit N``).
            elapsed: seconds this metric took in that run (its wall time, not the whole run's; 0, as for shards
                resumed from disk, means nothing was measured).

        Returns:
            A dict: ``rows``, ``skipped`` (error or missing turn: no request), ``cached``, ``requests`` (still to
            send), ``cached_prompt_tokens`` / ``cached_completion_tokens`` (real counts of the cached rows),
            ``prompt_tokens`` / ``completion_tokens`` (estimated for the requests still to send),
            ``tokens_basis``, ``seconds`` and ``cost`` (None when they can't be estimated), ``this_process``
            (this process's counters, see :meth:`stats`).
        """
        self._validate()
        stats = self._stats()
        cache = self._get_cache()
        rows = skipped = cached = requests = 0
        text_tokens = 0.0  # char-based estimate for the rows still to send
        known_text = known_prompt = known_completion = 0.0
        known = 0
        for batch in _iter_batches(dataset, self.required_columns()):
            prepared = self._prepare(batch)
            rows += len(prepared)
            todo = [item for item in prepared if item is not None]
            skipped += len(prepared) - len(todo)
            hits = cache.get_many([item[1] for item in todo]) if cache is not None and todo else {}
            for _, key, request, _ in todo:
                hit = hits.get(key)
                if hit is not None and (not self._expected_score or hit.rating_probs is not None):
                    cached += 1
                    if hit.prompt_tokens is not None and hit.completion_tokens is not None:
                        known += 1
                        known_text += _text_tokens(request.messages)
                        known_prompt += hit.prompt_tokens
                        known_completion += hit.completion_tokens
                else:
                    requests += 1
                    text_tokens += _text_tokens(request.messages)
        if known and known_text:
            prompt_tokens = text_tokens * known_prompt / known_text
            completion_tokens = requests * known_completion / known
            basis = f"calibrated on {known} answered rows"
        else:
            prompt_tokens = text_tokens
            completion_tokens = requests * self.max_tokens
            basis = f"{CHARS_PER_TOKEN:g} characters per token; completion at most max_tokens={self.max_tokens}"
        seconds = remaining_seconds(requests, stats, n_scored=n_scored, elapsed=elapsed)
        cost = None
        if self.price_input_per_mtok is not None or self.price_output_per_mtok is not None:
            cost = (
                prompt_tokens * (self.price_input_per_mtok or 0.0)
                + completion_tokens * (self.price_output_per_mtok or 0.0)
            ) / 1e6
        return {
            "rows": rows,
            "skipped": skipped,
            "cached": cached,
            "requests": requests,
            "cached_prompt_tokens": int(known_prompt),
            "cached_completion_tokens": int(known_completion),
            "prompt_tokens": int(round(prompt_tokens)),
            "completion_tokens": int(round(completion_tokens)),
            "tokens_basis": basis,
            "seconds": seconds,
            "cost": cost,
            "this_process": dict(stats),
        }

    def format_estimate(self, est: dict[str, Any]) -> str:
        """A few lines for the CLI from :meth:`estimate`'s result."""
        run = est["this_process"]
        lines = [
            f"judge {self.name!r} ({self.backend} {self.model_name_or_path}, prompt {self._prompt.key}):",
            f"  input: {est['rows']} rows: {est['cached']} already answered (cached), {est['skipped']} skipped "
            f"(error or missing turn), {est['requests']} requests to send",
            f"  answered so far: {est['cached_prompt_tokens']} prompt + {est['cached_completion_tokens']} "
            "completion tokens",
        ]
        if run["requests"]:
            lines.append(
                f"  this run: {run['requests']} requests ({run['attempts']} attempts), {run['failed']} failed, "
                f"{run['unparsable']} unparsable, {run['prompt_tokens']} prompt + {run['completion_tokens']} "
                f"completion tokens, {run['seconds']:.1f} s waiting for answers"
            )
        timing = "unknown (nothing measured)" if est["seconds"] is None else f"about {format_duration(est['seconds'])}"
        cost = (
            "cost not estimated (set price_input_per_mtok / price_output_per_mtok)"
            if est["cost"] is None
            else f"cost about {est['cost']:.4f}"
        )
        lines.append(
            f"  remaining {est['requests']} requests: {est['prompt_tokens']} prompt + {est['completion_tokens']} "
            f"completion tokens ({est['tokens_basis']}); {timing}; {cost}"
        )
        return "\n".join(lines)


def _load_prompt(spec: str):
    from metrics.judge_prompts import load_prompt

    return load_prompt(spec)


def _score_locator(prompt):
    def locate(text: str) -> int | None:
        match = prompt.find_score(text)
        return None if match is None else match.start("score")

    return locate


def _text_tokens(messages: list[dict[str, str]]) -> float:
    return sum(len(m["content"]) for m in messages) / CHARS_PER_TOKEN


def _batch_images(batch: dict[str, list]) -> list[list]:
    from selector.data.schema import batch_images

    return batch_images(batch)


def _iter_batches(dataset, columns: list[str], batch_size: int = 1000):
    if isinstance(dataset, dict):
        yield dataset
        return
    present = [c for c in columns if c in dataset.column_names]
    yield from dataset.select_columns(present).iter(batch_size=batch_size)


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"4.9 min"``, ``"2.1 h"``: how the judge's and ``vlselect score --limit``'s estimates read."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def remaining_seconds(
    requests: int, stats: dict[str, float], *, n_scored: int | None = None, elapsed: float | None = None
) -> float | None:
    """Seconds for ``requests`` more requests: at the rate measured in this process (``stats``: ``requests`` and
    ``seconds`` so far), else at ``elapsed / n_scored`` of the rows scored in worker processes, else None."""
    if stats["requests"]:
        return requests * stats["seconds"] / stats["requests"]
    if n_scored and elapsed:
        return requests * elapsed / n_scored
    return None
