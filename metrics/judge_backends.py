"""Backends of the LLM judge: an OpenAI-compatible chat endpoint (``openai``) and a local causal LM (``hf``).

Each backend has an options dataclass (:class:`OpenAIOptions`, :class:`HFOptions`): its fields are the flat
keys of the judge's configuration (``{metric: judge, backend: openai, base_url: ..., timeout: 30}``), with their
defaults, their checks and the settings that enter the answer cache key. The judge routes its flat keyword
arguments to these objects (:func:`split_options`) and hands the backend its options object.

Both backends take a list of :class:`JudgeRequest` and return one :class:`JudgeAnswer` per request, in order. A
request that fails for good (after the bounded retries) comes back with ``text=None`` and an ``error``; it never
raises, so one bad row cannot stop a batch. Only mistakes that would fail every row (a refused API key, an
unknown model or endpoint) raise :class:`~selector.errors.ConfigError`.

The API key is read from the environment variable named by ``api_key_env`` when the HTTP client is created
and lives only inside that client's headers: it is not an attribute of the backend or the metric, so it never
reaches a ``repr``, a pickle, a manifest, a dataset card or the cache. Credentials given in the configuration
instead (``https://user:key@host`` in ``base_url``, ``headers: {x-api-key: ...}``, ``extra_body: {api_key:
...}``) are registered with :mod:`selector.redact` when the client is created, so manifests, cards, log records
(httpx's request lines included) and error messages show them masked; the cache keys on the endpoint without
its userinfo.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from selector.errors import ConfigError
from selector.redact import install_log_redaction, is_secret_key, redact_text, register_secret

logger = logging.getLogger(__name__)

#: HTTP statuses worth retrying: timeouts, rate limits and transient server errors.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: Statuses that would fail every row the same way: stop the run with a clear message instead.
FATAL_STATUSES = {
    401: "the endpoint refused the API key",
    403: "the endpoint refused access",
    404: "the endpoint or model was not found",
}


@dataclass
class JudgeRequest:
    """One row to judge: the rendered chat messages and, for vision endpoints, its images as data URLs."""

    row_id: str
    messages: list[dict[str, str]]
    image_urls: list[str] = field(default_factory=list)


@dataclass
class JudgeAnswer:
    """What a backend returned for one request.

    Attributes:
        text: the judge's reply (the prefilled ``answer_prefix`` included), or None when the request failed.
        prompt_tokens / completion_tokens: token counts reported by the endpoint (None when it reports none).
        attempts: requests sent for this row (1 + retries).
        error: why the request failed, None on success.
        rating_probs: ``hf`` backend with ``expected_score``: probability of each rating value at the position
            where the rating is written, in the order of the prompt's rating values; None otherwise.
    """

    text: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int = 1
    error: str | None = None
    rating_probs: list[float] | None = None

    def to_cache(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "rating_probs": self.rating_probs,
        }

    @classmethod
    def from_cache(cls, data: dict[str, Any]) -> JudgeAnswer:
        return cls(
            text=data.get("text"),
            prompt_tokens=data.get("prompt_tokens"),
            completion_tokens=data.get("completion_tokens"),
            attempts=0,
            rating_probs=data.get("rating_probs"),
        )


@dataclass
class OpenAIOptions:
    """Options of the ``openai`` backend (flat keys of the judge's configuration).

    Attributes:
        base_url: OpenAI-compatible base URL (``.../v1``); requests go to ``{base_url}/chat/completions``.
        api_key_env: name of the environment variable holding the API key (the key itself is never stored);
            unset variable = no ``Authorization`` header (local servers).
        max_concurrency: requests in flight at once per process.
        timeout: seconds per HTTP request (connect, read, write, pool).
        max_retries: retries per row after a timeout, connection error, malformed body, HTTP 408/409/425/429
            or 5xx; then the row is NaN. HTTP 401/403/404 stop the run with a :class:`ConfigError`.
        backoff, max_backoff: wait ``min(max_backoff, backoff * 2**k)`` seconds before retry ``k + 1``
            (``Retry-After`` wins when the server sends it, capped the same way).
        temperature: sampling temperature sent to the endpoint.
        send_image: send the row's images to a vision-capable endpoint; otherwise the prompt tells the judge
            that the image is not shown.
        extra_body: extra JSON fields merged into each request (``{"seed": 0}``, ``{"top_k": 1}``); a field set
            to None is removed (``{"max_tokens": None, "max_completion_tokens": 256}`` for endpoints that refuse
            ``max_tokens``).
        headers: extra HTTP headers sent with each request (``{"x-api-key": ...}`` for gateways that take the
            key in a header of their own); not part of the cache key, redacted in every output.
    """

    backend: ClassVar[str] = "openai"
    #: Options that change what a judge computes: set with another backend, they are an error, not ignored.
    exclusive: ClassVar[dict[str, str]] = {
        "send_image": "the hf backend is a text-only causal LM; send_image needs backend='openai'",
    }

    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = "OPENAI_API_KEY"
    max_concurrency: int = 8
    timeout: float = 60.0
    max_retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0
    temperature: float = 0.0
    send_image: bool = False
    extra_body: dict | None = None
    headers: dict | None = None

    def validate(self) -> None:
        """Raise a one-line :class:`ConfigError` for an impossible value."""
        checks = [
            (isinstance(self.max_concurrency, int) and self.max_concurrency >= 1, "max_concurrency must be >= 1"),
            (isinstance(self.max_retries, int) and self.max_retries >= 0, "max_retries must be >= 0"),
            (_positive(self.timeout), "timeout must be a positive number of seconds"),
            (_non_negative(self.backoff) and _non_negative(self.max_backoff), "backoff values must be >= 0"),
            (self.extra_body is None or isinstance(self.extra_body, dict), "extra_body must be a mapping"),
            (
                self.headers is None
                or (isinstance(self.headers, dict) and all(isinstance(v, str) for v in self.headers.values())),
                "headers must be a mapping of header name to string",
            ),
            (self.api_key_env is None or isinstance(self.api_key_env, str), "api_key_env must be a variable name"),
            (_real(self.temperature), "temperature must be a number"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"judge: {message}")
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"judge: base_url must start with http:// or https://, got {redact_text(repr(self.base_url))}"
            )

    def endpoint(self) -> str:
        """``base_url`` without its userinfo and trailing slash, scheme and host lower-cased: what names the
        server in the cache key (credentials never enter the key, so a new key still hits the old answers)."""
        parts = urlsplit(self.base_url.strip())
        host = (parts.hostname or "").lower()
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme.lower(), host, parts.path.rstrip("/"), parts.query, ""))

    def model_identity(self, model: str) -> str:
        """What names the model in the cache key: an endpoint's model name."""
        return model

    def cache_settings(self, max_tokens: int) -> dict[str, Any]:
        """Everything besides prompt, model and row content that changes what the judge writes: the endpoint
        (another server answers differently, and a dead one must not be served another server's answers),
        sampling settings and the extra body fields.

        The endpoint enters only when it is not the default ``base_url``: keys of the default endpoint keep the
        formula they had before endpoints were keyed, so paid answers cached from it stay valid.
        """
        settings = {
            "backend": "openai",
            "temperature": float(self.temperature),
            "max_tokens": max_tokens,
            "extra_body": self.extra_body or {},
            "send_image": bool(self.send_image),
        }
        endpoint = self.endpoint()
        if endpoint != _DEFAULT_ENDPOINT:
            settings["endpoint"] = endpoint
        return settings


_DEFAULT_ENDPOINT = OpenAIOptions().endpoint()


@dataclass
class HFOptions:
    """Options of the ``hf`` backend (flat keys of the judge's configuration).

    Attributes:
        revision: Hub revision of the judge model.
        gguf_file: GGUF file name inside the model folder or repository (needs the ``gguf`` package).
        device, dtype: where and in which precision the model runs (see :func:`metrics.base.resolve_device`).
        batch_size: rows per ``generate`` call (rows are length-sorted and left-padded). 32 was the fastest of
            1 / 8 / 32 for SmolLM2-135M on a 2-core CPU (``benchmarks/bench_judge.py``, README); ``vlselect score``
            hands the judge at most ``--batch-size`` rows at a time, so that caps it too.
        prefill: start the assistant turn with the prompt's ``answer_prefix``; recommended for small local
            models, which otherwise often answer outside the expected form.
        expected_score: also return the rating expected under the model's probabilities of the rating tokens
            (every rating of the scale must be a single token, so ``rubric5`` with most tokenizers).
    """

    backend: ClassVar[str] = "hf"
    exclusive: ClassVar[dict[str, str]] = {
        "expected_score": "expected_score needs token probabilities, only the hf backend has them",
        "prefill": "prefill is only supported by the hf backend",
    }

    revision: str | None = None
    gguf_file: str | None = None
    device: str | None = None
    dtype: str = "auto"
    batch_size: int = 32
    prefill: bool = False
    expected_score: bool = False

    def validate(self) -> None:
        """Raise a one-line :class:`ConfigError` for an impossible value."""
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError("judge: batch_size must be >= 1")

    def model_identity(self, model: str) -> str:
        """What names the model in the cache key: the model, its revision and GGUF file."""
        return "|".join([model, self.revision or "", self.gguf_file or ""])

    def cache_settings(self, max_tokens: int) -> dict[str, Any]:
        """Everything besides prompt, model and row content that changes what the judge writes."""
        return {"backend": "hf", "max_tokens": max_tokens, "prefill": bool(self.prefill), "dtype": self.dtype}


#: The options class of each backend, by its ``backend`` name.
BACKEND_OPTIONS: dict[str, type] = {"openai": OpenAIOptions, "hf": HFOptions}


def option_names() -> list[str]:
    """Every backend option name, in declaration order (the judge's flat keys besides its own)."""
    return [f.name for options in BACKEND_OPTIONS.values() for f in fields(options)]


def split_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Route flat keyword arguments to one options object per backend: ``{"openai": OpenAIOptions, "hf": ...}``.

    Raises:
        ConfigError: a key is an option of no backend (the message lists the accepted keys).
    """
    unknown = sorted(set(options) - set(option_names()))
    if unknown:
        raise ConfigError(
            f"metric 'judge' has no parameter(s) {', '.join(unknown)}; backend options are: "
            f"{', '.join(option_names())}"
        )
    return {
        name: cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options})
        for name, cls in BACKEND_OPTIONS.items()
    }


def changed_options(options: Any) -> dict[str, Any]:
    """The fields of an options object that differ from their defaults."""
    default = type(options)()
    return {k: v for k, v in asdict(options).items() if v != getattr(default, k)}


class OpenAIBackend:
    """Chat completions against any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, TGI, ...).

    Requests run in a thread pool of ``max_concurrency`` workers sharing one ``httpx.Client``. Each request
    is retried at most ``max_retries`` times on a timeout, a connection error, a malformed body or a status in
    :data:`RETRY_STATUSES`, waiting ``min(max_backoff, backoff * 2**k)`` seconds before retry ``k + 1`` (or
    the server's ``Retry-After``, capped the same way).
    """

    def __init__(self, *, model: str, options: OpenAIOptions, max_tokens: int):
        self.model = model
        self.options = options
        self.max_tokens = max_tokens
        self._client = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return self.options.base_url.rstrip("/")

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(base_url={redact_text(self.base_url)!r}, model={self.model!r}, "
            f"api_key_env={self.options.api_key_env!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # The client carries the key in its headers: never pickle it.
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = None
        self._lock = threading.Lock()

    def _key(self) -> str | None:
        env = self.options.api_key_env
        return os.environ.get(env) if env else None

    def _redact(self, text: str) -> str:
        key = self._key()
        if key:
            register_secret(key)
        return redact_text(text)

    def _register_secrets(self) -> None:
        """Tell :mod:`selector.redact` every credential this backend sends, before the first request is logged."""
        install_log_redaction()
        register_secret(self._key())
        for name, value in (self.options.headers or {}).items():
            if is_secret_key(name):
                register_secret(value, *str(value).split()[1:])  # "Bearer <token>": the token alone too
        for name, value in (self.options.extra_body or {}).items():
            if is_secret_key(name):
                register_secret(value)
        redact_text(self.base_url)  # registers the userinfo of the URL

    def _get_client(self):
        if self._client is None:
            import httpx

            self._register_secrets()
            headers = {"Content-Type": "application/json", **(self.options.headers or {})}
            key = self._key()
            if key:
                headers["Authorization"] = f"Bearer {key}"
            elif self.options.api_key_env:
                logger.debug(
                    "environment variable %s is not set: sending requests without an API key", self.options.api_key_env
                )
            concurrency = self.options.max_concurrency
            self._client = httpx.Client(
                timeout=httpx.Timeout(float(self.options.timeout)),
                headers=headers,
                limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def payload(self, request: JudgeRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [dict(m) for m in request.messages]
        if request.image_urls:
            # OpenAI vision form: the user turn becomes a list of content parts, images after the text.
            user = messages[-1]
            user["content"] = [{"type": "text", "text": user["content"]}] + [
                {"type": "image_url", "image_url": {"url": url}} for url in request.image_urls
            ]
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": float(self.options.temperature),
            "max_tokens": self.max_tokens,
        }
        body.update(self.options.extra_body or {})
        return {key: value for key, value in body.items() if value is not None}

    def answer(self, requests: list[JudgeRequest]) -> list[JudgeAnswer]:
        """Send every request (at most ``max_concurrency`` at a time); answers come back in request order."""
        if not requests:
            return []
        self._get_client()
        if self.options.max_concurrency <= 1 or len(requests) == 1:
            return [self._answer_one(r) for r in requests]
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=min(self.options.max_concurrency, len(requests)))
        try:
            futures = [pool.submit(self._answer_one, r) for r in requests]
            return [f.result() for f in futures]
        finally:
            # After a fatal error (bad key) the queued requests are dropped instead of being sent.
            pool.shutdown(wait=True, cancel_futures=True)

    def _answer_one(self, request: JudgeRequest) -> JudgeAnswer:
        import httpx

        url = f"{self.base_url}/chat/completions"
        body = self.payload(request)
        client = self._get_client()
        opts = self.options
        last_error = "no attempt made"
        wait = 0.0
        for attempt in range(opts.max_retries + 1):
            if attempt:
                delay = wait if wait > 0 else opts.backoff * 2 ** (attempt - 1)
                time.sleep(min(opts.max_backoff, delay))
                logger.debug("row %s: retry %d after %s", request.row_id, attempt, last_error)
            wait = 0.0
            try:
                response = client.post(url, json=body)
            except httpx.TimeoutException:
                last_error = f"timed out after {float(opts.timeout):g} s"
                continue
            except httpx.TransportError as exc:
                last_error = f"connection error ({type(exc).__name__})"
                continue
            status = response.status_code
            if status in FATAL_STATUSES:
                detail = self._redact(response.text[:300])
                raise ConfigError(
                    redact_text(
                        f"{FATAL_STATUSES[status]} (HTTP {status} from {url}, model {self.model!r}; API key from "
                        f"${opts.api_key_env or '<none>'}): {detail}"
                    )
                )
            if status in RETRY_STATUSES:
                last_error = f"HTTP {status}"
                wait = _retry_after(response.headers.get("retry-after"))
                continue
            if status >= 400:
                # A row-specific refusal (e.g. context too long): retrying gives the same answer.
                return JudgeAnswer(
                    None, attempts=attempt + 1, error=f"HTTP {status}: {self._redact(response.text[:200])}"
                )
            try:
                data = response.json()
                text = _message_text(data["choices"][0]["message"])
            except (ValueError, KeyError, IndexError, TypeError):
                last_error = "malformed response body"
                continue
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            return JudgeAnswer(
                text,
                prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
                completion_tokens=_int_or_none(usage.get("completion_tokens")),
                attempts=attempt + 1,
            )
        return JudgeAnswer(
            None, attempts=opts.max_retries + 1, error=f"{last_error} ({opts.max_retries + 1} attempts)"
        )


def _message_text(message: dict) -> str | None:
    content = message["content"]
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers return content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise TypeError(f"unexpected message content {type(content).__name__}")


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:  # an HTTP date: fall back to exponential back-off
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class HFBackend:
    """Greedy generation with a local ``transformers`` causal LM and its chat template.

    ``gguf_file`` loads a GGUF checkpoint (de-quantised by transformers; needs the ``gguf`` package).
    ``prefill`` starts the assistant turn with the prompt's ``answer_prefix`` (``"Score:"``), which keeps
    small models in the expected form and puts the rating in the first generated tokens. ``rating_values``
    (for the expected score) makes the backend return the probabilities of each rating token at the position
    where the rating is written: the first non-blank generated token with ``prefill``, else the token where the
    parsed score starts (``locate(text) -> char offset``).
    """

    def __init__(
        self,
        *,
        model: str,
        options: HFOptions,
        max_new_tokens: int,
        prefill: str = "",
        rating_values: list[int] | None = None,
        locate=None,
    ):
        self.model = model
        self.options = options
        self.max_new_tokens = max_new_tokens
        self.prefill = prefill
        self.rating_values = rating_values
        self.locate = locate

    def load(self, device: str, torch_dtype) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {}
        if self.options.revision:
            kwargs["revision"] = self.options.revision
        if self.options.gguf_file:
            kwargs["gguf_file"] = self.options.gguf_file
        tokenizer = AutoTokenizer.from_pretrained(self.model, **kwargs)
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"the tokenizer of {self.model} has no chat template; the hf judge needs an instruct model"
            )
        tokenizer.padding_side = "left"  # generation continues the last position of each row
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(self.model, dtype=torch_dtype, **kwargs).to(device)
        model.eval()
        self._tokenizer, self._model, self._device = tokenizer, model, device
        self._candidates = self._rating_token_ids(tokenizer) if self.rating_values else None
        self._eos = _eos_ids(tokenizer, model)

    def _rating_token_ids(self, tokenizer) -> list[list[int]]:
        """For each rating value, the ids of the single tokens that spell it (``"4"``, ``" 4"``)."""
        out, not_single = [], []
        for value in self.rating_values:
            ids = set()
            for variant in (str(value), f" {value}"):
                enc = tokenizer.encode(variant, add_special_tokens=False)
                if len(enc) == 1:
                    ids.add(enc[0])
            if not ids:
                not_single.append(value)
            out.append(sorted(ids))
        if not_single:
            shown = ", ".join(map(str, not_single[:5])) + (" ..." if len(not_single) > 5 else "")
            raise ConfigError(
                f"expected_score needs every rating to be one token, but the tokenizer of {self.model} splits "
                f"{shown} into several; use a prompt with a small scale (prompt='rubric5') or expected_score=False"
            )
        return out

    def token_count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def answer(self, requests: list[JudgeRequest]) -> list[JudgeAnswer]:
        import torch

        tok, model = self._tokenizer, self._model
        texts = [tok.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False) for r in requests]
        texts = [t + self.prefill for t in texts]
        answers: list[JudgeAnswer | None] = [None] * len(requests)
        # Similar lengths in one batch waste less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        want_probs = self._candidates is not None
        config = _greedy_config(model)
        config.max_new_tokens = self.max_new_tokens
        config.pad_token_id = tok.pad_token_id
        config.output_logits = want_probs
        config.return_dict_in_generate = True
        batch_size = self.options.batch_size
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(self._device) for k, v in enc.items()}
            with torch.inference_mode():
                out = model.generate(**enc, generation_config=config)
            prompt_len = enc["input_ids"].shape[1]
            prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
            for j, i in enumerate(idx):
                ids = out.sequences[j, prompt_len:].tolist()
                ids = _cut_at_eos(ids, self._eos)
                text = self.prefill + tok.decode(ids, skip_special_tokens=True)
                probs = None
                if want_probs:
                    step = self._rating_step(ids, text)
                    if step is not None:
                        logits = out.logits[step][j].float()
                        p = torch.softmax(logits, dim=-1)
                        probs = [float(p[c].sum()) for c in self._candidates]
                answers[i] = JudgeAnswer(text, prompt_tokens=int(prompt_tokens[j]), completion_tokens=len(ids))
                answers[i].rating_probs = probs
        return answers  # type: ignore[return-value]

    def _rating_step(self, ids: list[int], text: str) -> int | None:
        """Index of the generated token that writes the rating, or None when it can't be located."""
        tok = self._tokenizer
        if self.prefill:
            for step, token in enumerate(ids):
                if tok.decode([token]).strip():
                    return step if self._is_rating_token(token) else None
            return None
        offset = self.locate(text) if self.locate else None
        if offset is None:
            return None
        for step in range(len(ids)):
            if len(tok.decode(ids[: step + 1], skip_special_tokens=True)) > offset:
                return step if self._is_rating_token(ids[step]) else None
        return None

    def _is_rating_token(self, token: int) -> bool:
        return any(token in ids for ids in self._candidates)


def _greedy_config(model):
    import copy

    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    # Sampling knobs left in a model's generation config only trigger warnings under greedy decoding.
    for key in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
        if hasattr(config, key):
            setattr(config, key, None)
    return config


def _eos_ids(tokenizer, model) -> set[int]:
    ids = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def _cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    for k, token in enumerate(ids):
        if token in eos:
            return ids[:k]
    return ids


def _positive(value: object) -> bool:
    return _real(value) and value > 0


def _non_negative(value: object) -> bool:
    return _real(value) and value >= 0


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
