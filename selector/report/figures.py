"""The report's plots, built with Plotly (the page inlines plotly.js once; each figure is a ``<div>`` + script).

Histograms are binned here with numpy and drawn as bars, so a figure's size does not grow with the pool: a
10^6-row run embeds the same 40 bins per column as a 60-row one.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Plotly's options for every figure: no logo, no "send to Chart Studio" button (it would leave the page).
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["sendDataToCloud"]}
HIST_BINS = 40
KEPT_COLOR, REJECTED_COLOR, ALL_COLOR = "#1f77b4", "#bbbbbb", "#7f7f7f"


def plotly_js() -> str:
    """The plotly.js bundle that ships with the installed ``plotly`` package (no CDN)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def to_div(fig, div_id: str, post_script: str | None = None) -> str:
    """A figure as an HTML fragment that draws itself with the page's inlined plotly.js."""
    import plotly.io as pio

    return pio.to_html(
        fig,
        include_plotlyjs=False,
        full_html=False,
        div_id=div_id,
        config=PLOT_CONFIG,
        post_script=post_script,
        default_height=None,
    )


def _layout(fig, title: str, height: int) -> None:
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        height=height,
        margin={"l": 45, "r": 10, "t": 40, "b": 35},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.18},
        bargap=0.02,
    )


def score_histogram(column: str, values: np.ndarray, selected: np.ndarray | None, direction: str | None):
    """Kept vs rejected distribution of one score column (each group as a share of its own rows), or None when
    the column has no finite value. ``direction``: ``"higher"``/``"lower"`` is better, None unknown."""
    import plotly.graph_objects as go

    finite = np.isfinite(values)
    if not finite.any():
        return None
    edges = np.histogram_bin_edges(values[finite], bins=HIST_BINS)
    if edges[0] == edges[-1]:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    centers, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    groups = [("all rows", np.ones(values.shape[0], dtype=bool), ALL_COLOR)]
    if selected is not None:
        groups = [("kept", selected, KEPT_COLOR), ("rejected", ~selected, REJECTED_COLOR)]
    fig = go.Figure()
    for name, mask, color in groups:
        counts, _ = np.histogram(values[mask & finite], bins=edges)
        total = max(int(counts.sum()), 1)
        fig.add_trace(
            go.Bar(
                x=centers,
                y=counts / total,
                width=widths,
                name=f"{name} ({int((mask & finite).sum()):,}, NaN {int((mask & ~finite).sum()):,})",
                marker_color=color,
                opacity=0.75,
                customdata=counts,
                hovertemplate="%{x:.4g}: %{customdata:,} rows (%{y:.1%})<extra>" + name + "</extra>",
            )
        )
    arrow = {"higher": " (higher is better)", "lower": " (lower is better)"}.get(direction or "", "")
    _layout(fig, f"{column}{arrow}", 260)
    fig.update_layout(barmode="overlay", yaxis={"tickformat": ".0%", "title": None})
    return fig


def project_2d(vectors: np.ndarray, method: str = "auto", random_state: int = 0) -> tuple[np.ndarray, str]:
    """(n, 2) coordinates of L2-normalised ``vectors`` and the method used.

    ``method``: ``"umap"`` (needs ``umap-learn``), ``"pca"``, or ``"auto"`` (UMAP when installed and there are at
    least 20 rows, else PCA). UMAP is seeded, so the same run gives the same map.
    """
    from sklearn.decomposition import PCA

    x = np.asarray(vectors, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm > 0, norm, 1.0)
    if method not in ("auto", "umap", "pca"):
        from selector.errors import ConfigError

        raise ConfigError(f"projection must be auto, umap or pca, not {method!r}")
    if method in ("auto", "umap") and x.shape[0] >= 20:
        try:
            from umap import UMAP
        except ImportError:  # also a broken install whose `umap` namespace lacks UMAP
            if method == "umap":
                from selector.errors import MissingDependencyError

                raise MissingDependencyError("Install umap-learn to draw the embedding map with UMAP") from None
        else:
            with warnings.catch_warnings():
                # "n_jobs value 1 overridden to 1 by setting random_state": the seed is the point here.
                warnings.simplefilter("ignore")
                reducer = UMAP(
                    n_components=2, n_neighbors=min(15, x.shape[0] - 1), random_state=random_state, metric="cosine"
                )
                return np.asarray(reducer.fit_transform(x), dtype=np.float64), "UMAP"
    if x.shape[0] < 2 or x.shape[1] < 2:
        return np.zeros((x.shape[0], 2)), "none (fewer than 2 rows or dimensions)"
    coords = PCA(n_components=2, random_state=random_state).fit_transform(x)
    return np.asarray(coords, dtype=np.float64), "PCA"


def embedding_map(
    coords: np.ndarray,
    cluster: np.ndarray,
    selected: np.ndarray | None,
    keys: list[str],
    hover: list[str],
    title: str,
    max_legend_clusters: int = 30,
):
    """Scatter of the 2-D map: one colour per cluster (the largest ``max_legend_clusters`` each in the legend, the
    rest together), selected rows ringed in black. ``keys`` (per point) let the page's hover box find the row."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = np.asarray(cluster)
    present, sizes = np.unique(labels, return_counts=True)
    big = set(present[np.argsort(-sizes, kind="stable")][:max_legend_clusters].tolist())
    groups = [(f"cluster {c}" if c >= 0 else "no cluster", labels == c) for c in present if c in big]
    rest = ~np.isin(labels, list(big))
    if rest.any():
        groups.append((f"{int(np.unique(labels[rest]).size)} smaller clusters", rest))
    keys_arr, hover_arr = np.asarray(keys, dtype=object), np.asarray(hover, dtype=object)
    for name, mask in groups:
        fig.add_trace(
            go.Scatter(
                x=coords[mask, 0],
                y=coords[mask, 1],
                mode="markers",
                name=name,
                marker={"size": 7, "opacity": 0.8},
                customdata=keys_arr[mask],
                hovertext=hover_arr[mask],
                hoverinfo="text",
            )
        )
    if selected is not None and selected.any():
        fig.add_trace(
            go.Scatter(
                x=coords[selected, 0],
                y=coords[selected, 1],
                mode="markers",
                name="selected",
                marker={"size": 12, "symbol": "circle-open", "color": "black", "line": {"width": 2}},
                customdata=keys_arr[selected],
                hovertext=hover_arr[selected],
                hoverinfo="text",
            )
        )
    _layout(fig, title, 560)
    fig.update_layout(legend={"orientation": "v", "y": 1, "x": 1.02}, hoverlabel={"namelength": 0})
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None)
    return fig


def cluster_bars(table: list[dict[str, Any]], title: str):
    """Per-cluster bars (pool size, quota, selected), with cluster complexity in a second panel when known."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = [str(row["cluster"]) for row in table]
    has_quota = any(row.get("quota") is not None for row in table)
    has_complexity = any(row.get("complexity") is not None for row in table)
    fig = make_subplots(
        rows=2 if has_complexity else 1,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.7, 0.3] if has_complexity else None,
        vertical_spacing=0.06,
    )
    series = [("pool rows", "size", "#c7c7c7"), ("selected", "selected", KEPT_COLOR)]
    if has_quota:
        series.insert(1, ("quota", "quota", "#ff7f0e"))
    for label, key, color in series:
        fig.add_trace(go.Bar(x=names, y=[row.get(key) for row in table], name=label, marker_color=color), row=1, col=1)
    if has_complexity:
        fig.add_trace(
            go.Bar(
                x=names,
                y=[row.get("complexity") for row in table],
                name="complexity (d_intra x d_inter)",
                marker_color="#2ca02c",
            ),
            row=2,
            col=1,
        )
    _layout(fig, title, 420 if has_complexity else 330)
    fig.update_layout(barmode="group")
    fig.update_xaxes(type="category", title=None)
    return fig
