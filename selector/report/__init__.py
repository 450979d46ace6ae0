"""``vlselect report RUN_DIR``: one self-contained HTML page that shows what a run kept and why.

The page holds a summary (rows in, errors by kind, rows filtered by rule and deduplicated, selected; budget,
strategy, seed, models), per score column the distribution of kept vs rejected rows with NaN counts, a 2-D map of
the embedding coloured by cluster with the selected rows marked (hover shows id, instruction and thumbnail), per
cluster bars (size, quota, selected, complexity for DBP), and a gallery per cluster (top selected and nearest
rejected rows with thumbnail, instruction, answer, scores and reason; a filter by reason and a search by id or
text).

Everything is inlined (plotly.js, styles, thumbnails as JPEG data URLs), so the file opens from disk or after a
download from the Hub with no network request. Large pools are sampled for the map and the gallery (stated on the
page; see :mod:`selector.report.data`), so the file stays under ~20 MB at 10^6 rows. A run folder missing scores or
embeddings still gives a page: the sections it can't fill say why.

Example:
    >>> from selector.report import write_report
    >>> write_report("runs/demo")  # doctest: +SKIP
    'runs/demo/selected/report.html'
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections import Counter
from typing import Any

import numpy as np

from selector.card import redact
from selector.errors import MissingDependencyError

logger = logging.getLogger(__name__)

#: File name of the report, beside the dataset card in the selected folder (the card links to it).
REPORT = "report.html"
_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template.html")


def default_path(run_dir: str) -> str:
    """Where :func:`write_report` writes by default: beside the dataset card (``<selected>/report.html``), else in
    the folder given."""
    from selector.report.data import resolve_folders

    _, selected_dir = resolve_folders(run_dir)
    return os.path.join(selected_dir or run_dir, REPORT)


def write_report(run_dir: str, out: str | None = None, **options: Any) -> str:
    """Build the report of a run folder and write it atomically; return the path written.

    Args:
        run_dir: a ``vlselect run``/``demo`` folder (``scored/`` + ``selected/``), a ``vlselect select`` output or
            a ``vlselect score`` output.
        out: the HTML file; default :func:`default_path` (``<run>/selected/report.html``).
        **options: passed to :func:`build_report` (``projection``, ``embedding_column``).

    Raises:
        DataError: ``run_dir`` holds no run.
        MissingDependencyError: ``plotly`` is not installed (``pip install vlselect[report]``).
    """
    from selector.fileio import atomic_write_text

    html = build_report(run_dir, **options)
    out = out or default_path(run_dir)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write_text(out, html)
    logger.debug("wrote %s (%.1f MB)", out, len(html.encode("utf-8")) / 1e6)
    return out


def build_report(run_dir: str, *, projection: str = "auto", embedding_column: str | None = None) -> str:
    """The report's HTML text (see the module docstring).

    Args:
        run_dir: see :func:`write_report`.
        projection: the map's 2-D projection: ``auto`` (UMAP when ``umap-learn`` is installed, else PCA),
            ``umap`` or ``pca``.
        embedding_column: the ``emb_*`` column to map; default: the selection's, else the first one.
    """
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise MissingDependencyError("Install vlselect[report] (plotly) to build the HTML report") from None
    import jinja2
    from markupsafe import Markup

    from selector.report import data as rd
    from selector.report import figures

    run = rd.load_run(run_dir, embedding_column=embedding_column)
    sampling: list[str] = []
    store: dict[str, dict[str, Any]] = {}

    details_needed: set[int] = set()
    map_rows = np.zeros(0, dtype=np.int64)
    if "map" not in run.missing:
        usable = rd.has_embedding(run)
        map_rows = rd.map_sample(usable, run.selected, run.ids, run.seed)
        if not map_rows.size:
            run.missing["map"] = f"no row has a {run.embedding_column} embedding"
        elif map_rows.size < int(usable.sum()):
            sampling.append(
                f"The map shows {map_rows.size:,} of the {int(usable.sum()):,} rows with an embedding, drawn at "
                f"random with seed {run.seed} (selected rows first, up to half of the points)."
            )
        details_needed.update(map_rows.tolist())
    gallery = rd.gallery_rows(run, rd.embeddings_reader(run))
    for _, members in gallery.groups:
        details_needed.update(i for i, _ in members)
    if gallery.n_clusters > gallery.n_clusters_shown:
        sampling.append(
            f"The gallery shows the {gallery.n_clusters_shown} largest of {gallery.n_clusters:,} clusters, "
            f"{rd.GALLERY_SELECTED} top selected and {rd.GALLERY_REJECTED} nearest rejected rows each."
        )
    details = rd.row_details(run, np.array(sorted(details_needed), dtype=np.int64))
    for i, info in details.items():
        store[_key(i)] = _store_entry(run, i, info)

    sections: dict[str, str] = {}
    sections["scores"] = _score_section(run, figures)
    map_html, map_note = _map_section(run, map_rows, projection, figures)
    sections["map"] = map_html
    bars_html, bar_note = _cluster_section(run, figures)
    sections["clusters"] = bars_html
    sampling += [note for note in (bar_note,) if note]

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    with open(_TEMPLATE, encoding="utf-8") as handle:
        template = environment.from_string(handle.read())
    rows_json = json.dumps(store, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return template.render(
        title=f"vlselect report: {os.path.basename(os.path.abspath(run_dir))}",
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        summary=_summary(run),
        notes=run.notes,
        sampling=sampling,
        missing=run.missing,
        sections=sections,
        map_note=map_note,
        gallery=_gallery_view(run, gallery, details),
        reasons=_reason_options(run, gallery),
        plotly_js=_script_safe(figures.plotly_js()),
        # "<" as \u003c: no "</script>" or "<!--" can end or confuse the script element, and the JSON means the same
        rows_json=Markup(rows_json.replace("<", "\\u003c")),
    )


def _script_safe(text: str) -> str:
    """Text that can sit inside ``<script>`` without closing it early (``</`` -> ``<\\/`` is the same JS)."""
    from markupsafe import Markup

    return Markup(text.replace("</", "<\\/"))


def _key(i: int) -> str:
    return f"r{i}"


def _fmt(value: float) -> str:
    return "NaN" if not np.isfinite(value) else f"{value:.4g}"


def _store_entry(run, i: int, info: dict[str, Any]) -> dict[str, Any]:
    """The JSON the page's hover box and gallery read for one row."""
    from selector.report.data import MAX_HOVER_CHARS

    entry = {
        "id": str(run.ids[i]),
        "ins": _shorten(info["instruction"], MAX_HOVER_CHARS),
        "sel": bool(run.selected[i]) if run.selected is not None else None,
        "reason": str(run.reason[i]) if run.reason is not None else None,
    }
    if info.get("thumb"):
        entry["thumb"] = info["thumb"]
    return entry


def _shorten(text: str, limit: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _metric_directions(run) -> dict[str, str]:
    directions = {}
    for entry in run.scoring_manifest.get("metrics") or []:
        higher = entry.get("higher_is_better")
        if higher is None:
            continue
        for column in entry.get("columns") or []:
            directions[column] = "higher" if higher else "lower"
    for entry in (run.selection_manifest.get("quality") or {}).get("columns") or []:
        if isinstance(entry, dict) and entry.get("column") and entry.get("direction"):
            directions[entry["column"]] = entry["direction"]
    return directions


def _score_section(run, figures) -> str:
    if not run.scores:
        return ""
    directions = _metric_directions(run)
    parts = []
    for n, (column, values) in enumerate(run.scores.items()):
        fig = figures.score_histogram(column, values, run.selected, directions.get(column))
        if fig is None:
            parts.append(f'<div class="plot-empty">{_escape(column)}: every value is NaN ({values.size:,} rows)</div>')
            continue
        parts.append(figures.to_div(fig, f"score-{n}"))
    return "\n".join(parts)


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def _map_section(run, map_rows: np.ndarray, projection: str, figures) -> tuple[str, str]:
    from selector.report.data import embeddings_reader

    if "map" in run.missing or not map_rows.size:
        return "", ""
    vectors = embeddings_reader(run)(map_rows)
    coords, method = figures.project_2d(vectors, projection, random_state=run.seed)
    cluster = run.cluster[map_rows] if run.cluster is not None else np.full(map_rows.size, -1)
    selected = run.selected[map_rows] if run.selected is not None else None
    keys = [_key(int(i)) for i in map_rows]
    hover = [f"{run.ids[i]}" for i in map_rows]
    fig = figures.embedding_map(coords, cluster, selected, keys, hover, f"{run.embedding_column}, {method}")
    note = f"{method} of {run.embedding_column} (L2-normalised), {map_rows.size:,} points."
    return figures.to_div(fig, "embedding-map", post_script=_HOVER_SCRIPT), note


# Plotly draws the hover label; this shows the row's thumbnail and instruction beside it (plotly labels can't
# hold images). ROWS is the page's JSON of shown rows.
_HOVER_SCRIPT = """
var plot = document.getElementById('{plot_id}');
plot.on('plotly_hover', function (ev) { showHover(ev.points[0].customdata, ev.event); });
plot.on('plotly_unhover', hideHover);
"""


def cluster_table(run) -> list[dict[str, Any]]:
    """One entry per real cluster: ``cluster``, ``size`` (pool rows), ``selected``, ``quota`` and ``complexity``
    (``d_intra * d_inter``, DBP only) when the strategy reported them, largest clusters first."""
    if run.cluster is None or not (run.cluster >= 0).any():
        return []
    labels = run.cluster
    clustered = labels >= 0
    sizes = np.bincount(labels[clustered])
    chosen = np.bincount(labels[clustered & run.selected], minlength=sizes.size) if run.selected is not None else None
    quota, complexity = _strategy_arrays(run.selection_manifest.get("strategy_info") or {}, sizes.size)
    table = []
    for c in np.flatnonzero(sizes):
        table.append(
            {
                "cluster": int(c),
                "size": int(sizes[c]),
                "selected": None if chosen is None else int(chosen[c]),
                "quota": None if quota is None else int(quota[c]),
                "complexity": None if complexity is None else float(complexity[c]),
            }
        )
    table.sort(key=lambda row: (-row["size"], row["cluster"]))
    return table


def _strategy_arrays(info: dict, n_clusters: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-cluster quota and DBP complexity from the manifest's ``strategy_info`` (one entry per stratum, in the
    order the selection numbered their clusters), or None when absent or not one value per cluster."""
    quota, complexity = [], []
    for entry in info.values() if isinstance(info, dict) else []:
        if not isinstance(entry, dict):
            return None, None
        quota.extend(entry.get("quota") or [])
        d_intra, d_inter = entry.get("d_intra"), entry.get("d_inter")
        if d_intra and d_inter and len(d_intra) == len(d_inter):
            complexity.extend(np.asarray(d_intra, dtype=float) * np.asarray(d_inter, dtype=float))
    quota_arr = np.asarray(quota, dtype=np.int64) if len(quota) == n_clusters else None
    complexity_arr = np.asarray(complexity, dtype=float) if len(complexity) == n_clusters else None
    return quota_arr, complexity_arr


def _cluster_section(run, figures) -> tuple[str, str]:
    from selector.report.data import MAX_BAR_CLUSTERS

    table = cluster_table(run)
    if not table:
        why = "the selection has no clusters (its strategy does not cluster)" if run.selected is not None else None
        run.missing.setdefault("clusters", why or "per-cluster quotas need a selection")
        return "", ""
    note = ""
    if len(table) > MAX_BAR_CLUSTERS:
        note = f"The cluster bars show the {MAX_BAR_CLUSTERS} largest of {len(table):,} clusters."
        table = table[:MAX_BAR_CLUSTERS]
    fig = figures.cluster_bars(table, f"{len(table):,} clusters, largest first")
    return figures.to_div(fig, "cluster-bars"), note


def _summary(run) -> dict[str, Any]:
    """Counts and settings for the summary tables (rows in, errors, filters, dedup, selection, models)."""
    sel, scoring = run.selection_manifest, run.scoring_manifest
    errors = Counter(e for e in run.errors if e is not None)
    reasons = Counter()
    filters: Counter = Counter()
    if run.reason is not None:
        from selector.report.data import reason_kinds

        kinds = reason_kinds(run.reason)
        values, counts_ = np.unique(kinds.astype(str), return_counts=True)
        reasons.update(dict(zip(values.tolist(), counts_.tolist())))
        filters.update(str(r)[len("filter:") :] for r in run.reason[kinds == "filter"])
    counts = sel.get("counts") or {}
    filter_report = _first_mapping(sel, "filter_report", "filters", "filter")
    if filter_report and isinstance(filter_report.get("counts"), dict):
        # the manifest counts rows failing each rule (a row failing two rules counts twice); ours, the first one.
        filter_rows = [(rule, n) for rule, n in filter_report["counts"].items()]
        filter_note = "rows failing each rule (a row failing several rules counts under each)"
    else:
        filter_rows = sorted(filters.items(), key=lambda kv: (-kv[1], kv[0]))
        filter_note = "rows by the first rule they fail"
    dedup_report = _first_mapping(sel, "dedup_report", "dedup")
    n_dedup = reasons.get("dedup", 0)
    if dedup_report and isinstance(dedup_report.get("n_duplicates"), int):
        n_dedup = dedup_report["n_duplicates"]
    settings = []
    if sel:
        settings = [
            ("strategy", sel.get("strategy")),
            ("budget", f"{sel.get('budget')} ({sel.get('n_budget')} rows)"),
            ("seed", sel.get("seed")),
            # the report is published beside the card: secret-looking option values are redacted the same way.
            ("options", json.dumps(redact(sel.get("options") or {}), sort_keys=True, default=str)),
            ("columns", json.dumps(sel.get("columns") or {}, sort_keys=True, default=str)),
        ]
        if dedup_report:
            settings.append(("dedup", json.dumps(_brief(dedup_report), sort_keys=True, default=str)))
        quality = sel.get("quality")
        if isinstance(quality, dict) and quality.get("columns"):
            parts = [
                f"{c.get('column')} x{c.get('weight')} ({c.get('direction')})"
                for c in quality["columns"]
                if isinstance(c, dict)
            ]
            settings.append((quality.get("output_column", "quality"), ", ".join(parts)))
        settings.append(("vlselect", sel.get("vlselect_version")))
    models = []
    for entry in scoring.get("metrics") or []:
        model = entry.get("model")
        if isinstance(model, dict):
            revision = model.get("resolved_revision") or model.get("revision")
            name = model.get("model_name_or_path") or ""
            model = f"{name} @ {revision}" if revision else name
        nan = entry.get("n_nan") or {}
        models.append((entry.get("name"), entry.get("metric"), model or "-", sum(int(v) for v in nan.values())))
    n_selected = int(run.selected.sum()) if run.selected is not None else None
    return {
        "n_rows": run.n_rows,
        "n_errors": int(sum(errors.values())),
        "errors": sorted(errors.items(), key=lambda kv: (-kv[1], kv[0])),
        "n_filtered": reasons.get("filter", 0),
        "filters": filter_rows,
        "filter_note": filter_note,
        "n_dedup": n_dedup,
        "n_selected": n_selected,
        "n_budget": sel.get("n_budget"),
        "reasons": sorted((reasons or Counter(counts.get("reasons") or {})).items(), key=lambda kv: (-kv[1], kv[0])),
        "settings": settings,
        "models": models,
        "warnings": list(sel.get("warnings") or []),
        "scored_dir": run.scored_dir,
        "selected_dir": run.selected_dir,
    }


def _first_mapping(manifest: dict, *keys: str) -> dict | None:
    for key in keys:
        value = manifest.get(key)
        if isinstance(value, dict):
            return value
    return None


def _brief(report: dict) -> dict:
    """A report without its long lists (examples, per-row ids), for one line of the settings table."""
    return {
        k: v for k, v in report.items() if not isinstance(v, (list, dict)) or len(json.dumps(v, default=str)) < 120
    }


def _gallery_view(run, gallery, details: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The gallery's groups as the template renders them: cards with text, scores and reason."""
    from selector.report.data import MAX_ANSWER_CHARS, MAX_INSTRUCTION_CHARS, reason_key

    # The selection's own score first: it is what the strategy ranked by.
    score_columns = sorted(run.scores, key=lambda c: c != "selection score")
    view = []
    for title, members in gallery.groups:
        cards = []
        for i, role in members:
            info = details.get(i, {"instruction": "", "answer": "", "thumb": None})
            reason = (
                str(run.reason[i]) if run.reason is not None else ("error " + run.errors[i] if run.errors[i] else "")
            )
            answer = " ".join(info["answer"].split())
            cards.append(
                {
                    "key": _key(i),
                    "id": str(run.ids[i]),
                    "role": role,
                    "has_thumb": bool(info.get("thumb")),
                    "error": run.errors[i],
                    "instruction": _shorten(info["instruction"], MAX_INSTRUCTION_CHARS),
                    "answer_short": _shorten(answer, 160),
                    "answer": _shorten(answer, MAX_ANSWER_CHARS),
                    "answer_long": len(answer) > 160,
                    "reason": reason,
                    "reason_key": reason_key(reason) if reason else "",
                    "scores": [(c, _fmt(run.scores[c][i])) for c in score_columns],
                    "search": f"{run.ids[i]} {info['instruction']} {answer}".lower(),
                }
            )
        view.append({"title": title, "cards": cards})
    return view


def _reason_options(run, gallery) -> list[tuple[str, int]]:
    """The reason filter's choices: every reason key of the gallery's rows, with how many cards have it."""
    from selector.report.data import reason_key

    if run.reason is None:
        return []
    keys = Counter(reason_key(str(run.reason[i])) for _, members in gallery.groups for i, _ in members)
    return sorted(keys.items(), key=lambda kv: (-kv[1], kv[0]))
