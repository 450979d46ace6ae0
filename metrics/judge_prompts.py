"""Versioned judge prompts (``metrics/prompts/<name>-v<version>.yaml``) and the strict parser of their answers.

A prompt file holds the system and user templates, the rating scale, the two sentences that declare the image
absent or attached, an optional ``answer_prefix`` (prefilled into the assistant turn by the ``hf`` backend when
``prefill=True``), and the regular expression an answer must match. Prompts are never edited in place: a new
wording is a new version, and the judge's cache keys include both the version and a hash of the file, so
answers to different wordings are never mixed.

Example:
    >>> from metrics.judge_prompts import load_prompt
    >>> prompt = load_prompt("rubric5")
    >>> prompt.key, prompt.score_min, prompt.score_max
    ('rubric5@v1', 1.0, 5.0)
    >>> prompt.parse("The answer is correct but short.\\nRating: 4")
    (4.0, None)
    >>> prompt.parse("Somewhere between 3 and 4.")
    (nan, 'no line matches the expected form')
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from selector.errors import ConfigError

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
_FILE_RE = re.compile(r"^(?P<name>[A-Za-z0-9_]+)-v(?P<version>[0-9]+)\.ya?ml$")
_SPEC_RE = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(?:(?:@v?|-v)(?P<version>[0-9]+))?$")
_REQUIRED = ("name", "version", "scale", "system", "user", "image_absent", "image_attached", "pattern")
_OPTIONAL = ("description", "answer_prefix")


@dataclass(frozen=True)
class JudgePrompt:
    """One versioned prompt: templates, rating scale and answer pattern.

    Attributes:
        name: prompt family (``"instructiongpt4"``, ``"vlselect_quality"``, ``"rubric5"``).
        version: integer version; ``key`` is ``"<name>@v<version>"``.
        system: system message.
        user: user message template with ``{instruction}``, ``{response}`` and ``{image_note}``.
        image_absent / image_attached: the ``{image_note}`` sentence for a text-only or an image request.
        score_min / score_max: the rating scale; a parsed score outside it is rejected.
        pattern: regular expression with a named group ``score``.
        answer_prefix: text that starts the expected answer (``"Score:"``); used to prefill local models.
        sha256: hash of the prompt file's bytes (part of the cache key).
        path: where the prompt was read from.
    """

    name: str
    version: int
    system: str
    user: str
    image_absent: str
    image_attached: str
    score_min: float
    score_max: float
    pattern: str
    answer_prefix: str
    description: str
    sha256: str
    path: str

    @property
    def key(self) -> str:
        return f"{self.name}@v{self.version}"

    def render(self, instruction: str, response: str, *, image_attached: bool = False) -> list[dict[str, str]]:
        """The chat messages (system, user) for one sample; the image itself is added by the backend.

        A prompt with an empty ``system`` (the upstream InstructionGPT-4 wording is one user message) renders the
        user message alone.
        """
        note = self.image_attached if image_attached else self.image_absent
        # format_map on the template only: braces inside the instruction or answer are inserted verbatim.
        user = self.user.format_map({"instruction": instruction, "response": response, "image_note": note})
        system = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return system + [{"role": "user", "content": user}]

    def parse(self, text: str | None) -> tuple[float, str | None]:
        """Strictly parse a judge's answer.

        Returns:
            ``(score, None)`` when exactly one score value is found on a line of the expected form (the same
            value repeated counts as one) and it lies in ``[score_min, score_max]``; otherwise
            ``(nan, reason)``. Never guesses: no fallback to "the first number in the text".
        """
        if text is None or not text.strip():
            return math.nan, "empty answer"
        values = {float(m.group("score")) for m in re.finditer(self.pattern, text)}
        if not values:
            return math.nan, "no line matches the expected form"
        if len(values) > 1:
            return math.nan, f"conflicting scores {sorted(values)}"
        value = values.pop()
        if not self.score_min <= value <= self.score_max:
            return math.nan, f"score {value:g} outside [{self.score_min:g}, {self.score_max:g}]"
        return value, None

    def rating_values(self) -> list[int]:
        """The integer ratings of the scale (used for the expected score from token probabilities)."""
        return list(range(int(math.ceil(self.score_min)), int(math.floor(self.score_max)) + 1))

    def find_score(self, text: str) -> re.Match | None:
        """The match of the (single) score in ``text``, for locating the rating token; None when unparsable."""
        if math.isnan(self.parse(text)[0]):
            return None
        return next(re.finditer(self.pattern, text))


def available_prompts() -> dict[str, list[int]]:
    """``{name: sorted versions}`` of the bundled prompt files."""
    found: dict[str, list[int]] = {}
    for path in PROMPT_DIR.iterdir():
        match = _FILE_RE.match(path.name)
        if match:
            found.setdefault(match["name"], []).append(int(match["version"]))
    return {name: sorted(versions) for name, versions in sorted(found.items())}


def load_prompt(spec: str) -> JudgePrompt:
    """Load a prompt by ``name`` (newest version), ``name@v2`` / ``name-v2`` (pinned), or a YAML file path.

    Raises:
        ConfigError: unknown name or version, unreadable file, missing or unknown keys, a bad scale or a
            pattern without a ``score`` group.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"prompt must be a prompt name or a YAML file path, got {spec!r}")
    if spec.endswith((".yaml", ".yml")) or os.sep in spec or "/" in spec:
        return _read_prompt(Path(spec))
    match = _SPEC_RE.match(spec)
    known = available_prompts()
    if match is None or match["name"] not in known:
        names = ", ".join(f"{n} (v{', v'.join(map(str, v))})" for n, v in known.items())
        raise ConfigError(f"unknown judge prompt {spec!r}; bundled prompts: {names}; or give a YAML file path")
    versions = known[match["name"]]
    version = int(match["version"]) if match["version"] else versions[-1]
    if version not in versions:
        raise ConfigError(f"prompt {match['name']!r} has no version {version}; versions: {versions}")
    return _read_prompt(PROMPT_DIR / f"{match['name']}-v{version}.yaml")


def _read_prompt(path: Path) -> JudgePrompt:
    from selector.fileio import parse_yaml_mapping

    # Read the bytes once: they are both parsed and hashed into the cache key.
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read judge prompt {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"judge prompt {path} is not UTF-8 text ({exc.reason})") from None
    data = parse_yaml_mapping(text, source=str(path), what="judge prompt")
    missing = [key for key in _REQUIRED if key not in data]
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        detail = "; ".join(
            part
            for part in (
                f"missing key(s) {', '.join(missing)}" if missing else "",
                f"unknown key(s) {', '.join(unknown)}" if unknown else "",
            )
            if part
        )
        raise ConfigError(f"judge prompt {path}: {detail}")
    scale = data["scale"]
    if not isinstance(scale, dict) or set(scale) != {"min", "max"}:
        raise ConfigError(f"judge prompt {path}: scale must be {{min: <number>, max: <number>}}")
    try:
        lo, hi = float(scale["min"]), float(scale["max"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"judge prompt {path}: scale bounds must be numbers") from exc
    if not lo < hi:
        raise ConfigError(f"judge prompt {path}: scale min must be below max, got {lo:g} >= {hi:g}")
    try:
        compiled = re.compile(str(data["pattern"]))
    except re.error as exc:
        raise ConfigError(f"judge prompt {path}: pattern is not a valid regular expression: {exc}") from exc
    if "score" not in compiled.groupindex:
        raise ConfigError(f"judge prompt {path}: pattern needs a named group (?P<score>...)")
    if not isinstance(data["version"], int) or isinstance(data["version"], bool):
        raise ConfigError(f"judge prompt {path}: version must be an integer")
    for key in ("name", "system", "user", "image_absent", "image_attached"):
        if not isinstance(data[key], str):
            raise ConfigError(f"judge prompt {path}: {key} must be a string")
    for field in ("{instruction}", "{response}", "{image_note}"):
        if field not in data["user"]:
            raise ConfigError(f"judge prompt {path}: the user template must contain {field}")
    return JudgePrompt(
        name=data["name"],
        version=data["version"],
        system=data["system"],
        user=data["user"],
        image_absent=data["image_absent"],
        image_attached=data["image_attached"],
        score_min=lo,
        score_max=hi,
        pattern=str(data["pattern"]),
        answer_prefix=str(data.get("answer_prefix") or ""),
        description=str(data.get("description") or ""),
        sha256=hashlib.sha256(raw).hexdigest(),
        path=str(path),
    )
