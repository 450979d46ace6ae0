"""The HTML report: built from a small real run of the bundled example data, checked in headless Chromium.

The run: the bundled example rows (with their broken rows), the ``length`` metric, a colour-histogram embedding
computed here from the images (cheap, and it clusters the pictures by colour), then DBP (quotas and cluster
complexity) with a filter rule and SemDeDup, written by :func:`selector.runs.write_selection`.

The browser test drives Debian's ``chromium`` (``apt-get install chromium``) with Playwright; it is skipped, with
the reason, when either is missing. A large pool is tested without images: a synthetic 10^6-row run checks the
sampling and the file-size bound.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil

import numpy as np
import pytest

from selector.report import build_report, cluster_table, write_report
from selector.report import data as rd

pytest.importorskip("plotly")

EMB = "emb_color"
FILTER = "score_length:min=20"


def _color_embedding(image) -> list[float] | None:
    """12-d normalised histogram of hue-ish colour: 4 bins per RGB channel of a 32x32 copy; None without image."""
    from PIL import Image

    if image is None:
        return None
    try:
        rgb = Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else Image.open(image["path"])
        pixels = np.asarray(rgb.convert("RGB").resize((32, 32)), dtype=np.float64) / 256.0
    except (OSError, ValueError, KeyError):
        return None
    hist = np.concatenate([np.histogram(pixels[..., c], bins=4, range=(0, 1))[0] for c in range(3)]).astype(float)
    return (hist / np.linalg.norm(hist)).tolist()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    from datasets import Image, List, Value

    from selector.data import load_instructions
    from selector.runs import write_selection
    from selector.scoring import score
    from selector.selection import select

    root = str(tmp_path_factory.mktemp("report-run"))
    example = os.path.join(os.path.dirname(rd.__file__), "..", "example_data", "llava_mini.json")
    ds = load_instructions(os.path.abspath(example))
    raw = ds.cast_column("image", Image(decode=False))["image"]
    ds = ds.add_column(EMB, [_color_embedding(image) for image in raw], feature=List(Value("float32")))
    scored_dir = os.path.join(root, "scored")
    scored = score(ds, ["length"], out_dir=scored_dir, progress=False)
    selection = select(
        scored,
        15,
        "dbp",
        embedding_column=EMB,
        score_column="score_length",
        filters=[FILTER],
        dedup_column=EMB,
        dedup_eps=0.001,
        n_clusters=5,
        random_state=0,
    )
    write_selection(scored, selection, os.path.join(root, "selected"), scored_dir=scored_dir)
    return root


@pytest.fixture(scope="module")
def report_path(run_dir) -> str:
    return write_report(run_dir, projection="pca")


def test_report_is_one_self_contained_file(run_dir, report_path):
    assert report_path == os.path.join(run_dir, "selected", "report.html")
    html = open(report_path, encoding="utf-8").read()
    from plotly.offline import get_plotlyjs

    bundle = get_plotlyjs().replace("</", "<\\/")
    assert bundle in html  # plotly.js inlined, not loaded from a CDN
    page = html.replace(bundle, "")
    # Nothing else refers to the network: no external script, stylesheet, image or font.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "cdn.plot.ly" not in page and "<link" not in page
    assert html.count("data:image/jpeg;base64,") >= 40
    for section in ("summary", "scores", "map", "clusters", "gallery"):
        assert f'<section id="{section}">' in html
    assert "Missing sections" not in html
    # summary: errors by kind from the error column, the filter rule, the strategy
    for kind in ("missing_image", "corrupt_image", "empty_image", "no_assistant_turn"):
        assert f"<code>{kind}</code>" in html
    assert "score_length&gt;=20" in html
    assert "<code>dbp</code>" in html
    assert len(html.encode()) < 8_000_000


def test_cluster_table_has_dbp_quota_and_complexity(run_dir):
    run = rd.load_run(run_dir)
    table = cluster_table(run)
    manifest = json.load(open(os.path.join(run_dir, "selected", "manifest.json")))
    assert sum(row["selected"] for row in table) == manifest["counts"]["n_selected"] == 15
    assert sum(row["quota"] for row in table) == 15
    assert all(row["complexity"] is not None and row["complexity"] >= 0 for row in table)
    assert [row["size"] for row in table] == sorted((row["size"] for row in table), reverse=True)
    # the per-row outcome file matches the selection: errors never selected, every row has a reason
    assert not (run.selected & (run.errors != None)).any()  # noqa: E711
    assert all(run.reason) and "not recorded" not in set(run.reason)


def test_gallery_picks_selected_then_nearest_rejected(run_dir):
    run = rd.load_run(run_dir)
    gallery = rd.gallery_rows(run, rd.embeddings_reader(run))
    clusters = [g for g in gallery.groups if g[0].startswith("cluster ")]
    assert clusters and gallery.n_clusters_shown == gallery.n_clusters
    for _, members in clusters:
        roles = [role for _, role in members]
        assert roles == sorted(roles, key=lambda r: r != "selected")  # selected first
        assert all(run.selected[i] == (role == "selected") for i, role in members)
    ineligible = dict(gallery.groups)["ineligible rows (errors, missing inputs, filters, duplicates)"]
    keys = {rd.reason_key(run.reason[i]) for i, _ in ineligible}
    assert any(k.startswith("error ") for k in keys) and any(k.startswith("filter:") for k in keys)


def test_card_links_to_report_and_publish_uploads_it(run_dir, report_path, tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    from selector.card import build_card, publish

    selected = str(tmp_path / "selected")
    shutil.copytree(os.path.join(run_dir, "selected"), selected)
    assert "[`report.html`](report.html)" in build_card(selected)
    pushed = []
    readme = tmp_path / "pushed_README.md"
    readme.write_text("---\nconfigs:\n- config_name: default\n  data_files: data/train-*\n---\n")
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, repo_id, **kw: pushed.append("rows"))
    monkeypatch.setattr(huggingface_hub.HfApi, "hf_hub_download", lambda self, *a, **kw: str(readme))
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "create_commit",
        lambda self, repo_id, operations, **kw: pushed.append(
            [(op.path_in_repo, op.path_or_fileobj) for op in operations][1:]
        ),
    )
    publish(selected, "me/example")  # the card and the report go in one commit
    assert pushed == ["rows", [("report.html", os.path.join(selected, "report.html"))]]
    os.remove(os.path.join(selected, "report.html"))
    pushed.clear()
    publish(selected, "me/example")
    assert pushed == ["rows", []]
    assert "report.html" not in build_card(selected)


def test_missing_scores_and_embeddings_still_render(run_dir, tmp_path):
    from datasets import load_from_disk

    scored = load_from_disk(os.path.join(run_dir, "scored"))
    bare = scored.remove_columns([c for c in scored.column_names if c.startswith(("score_", "emb_"))])
    bare.save_to_disk(str(tmp_path / "scored"))
    shutil.copytree(os.path.join(run_dir, "selected"), tmp_path / "selected")
    (tmp_path / "selected" / "report.html").unlink()
    html = build_report(str(tmp_path), projection="pca")
    assert "Missing sections" in html
    assert "<b>scores</b>" in html and "<b>map</b>" in html
    # what it can show it still shows: the summary, the cluster bars and the gallery with thumbnails
    assert 'id="cluster-bars"' in html and "data:image/jpeg;base64," in html
    # only the selected folder (the scored one is gone): rows of the subset, with a note saying so
    shutil.rmtree(tmp_path / "scored")
    manifest = json.loads((tmp_path / "selected" / "manifest.json").read_text())
    manifest["input"] = str(tmp_path / "scored")
    (tmp_path / "selected" / "manifest.json").write_text(json.dumps(manifest))
    html = build_report(str(tmp_path), projection="pca")
    assert "The scored dataset" in html and "is missing" in html


def test_not_a_run_folder_is_a_data_error(tmp_path):
    from selector.cli import main

    assert main(["report", str(tmp_path)]) == 2


def test_large_pool_is_sampled_and_stays_small(tmp_path):
    """10^6 rows without images: the sampled parts are bounded, and even with every shown row carrying the
    largest thumbnail the file would stay under 20 MB."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    n, k, d = 1_000_000, 1000, 4
    gen = np.random.default_rng(0)
    ids = np.char.add("row-", np.arange(n).astype(str))
    cluster = gen.integers(0, k, n)
    emb = (np.eye(k, d, dtype=np.float32)[cluster % d] + gen.normal(0, 0.1, (n, d)).astype(np.float32)).ravel()
    errors = np.where(np.arange(n) % 1000 == 0, "missing_image: gone.jpg", None)
    table = pa.table(
        {
            "id": ids,
            "messages": pa.array([[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]] * 1).take(
                np.zeros(n, dtype=np.int64)
            ),
            "error": pa.array(errors, type=pa.string()),
            "score_x": gen.random(n).astype(np.float32),
            EMB: pa.FixedSizeListArray.from_arrays(pa.array(emb), d),
        }
    )
    Dataset(table).save_to_disk(str(tmp_path / "scored"), max_shard_size="2GB")
    (tmp_path / "scored" / "manifest.json").write_text(json.dumps({"seed": 3, "n_rows": n}))
    selected = (gen.random(n) < 0.01) & (errors == None)  # noqa: E711
    reason = np.where(selected, "selected", np.where(errors == None, "quota", "error missing_image"))  # noqa: E711
    Dataset.from_dict({"id": ids[selected][:10]}).save_to_disk(str(tmp_path / "selected"))
    pq.write_table(
        pa.table({"id": ids, "selected": selected, "rank": np.arange(n), "cluster": cluster, "reason": reason}),
        tmp_path / "selected" / "selection_rows.parquet",
    )
    quota = np.bincount(cluster[selected], minlength=k).tolist()
    manifest = {"command": "select", "strategy": "dbp", "seed": 3, "n_budget": int(selected.sum())}
    manifest["strategy_info"] = {"all": {"quota": quota, "d_intra": [0.5] * k, "d_inter": [0.4] * k}}
    (tmp_path / "selected" / "manifest.json").write_text(json.dumps(manifest))

    html = build_report(str(tmp_path), projection="pca")
    size = len(html.encode())
    n_rows_shown = len(json.loads(re.search(r'id="rows-data" type="application/json">(.*?)</script>', html).group(1)))
    assert (
        n_rows_shown <= rd.MAX_MAP_POINTS + rd.MAX_GALLERY_CLUSTERS * (rd.GALLERY_SELECTED + rd.GALLERY_REJECTED) + 10
    )
    assert f"The map shows {rd.MAX_MAP_POINTS:,} of the" in html
    assert f"The gallery shows the {rd.MAX_GALLERY_CLUSTERS} largest of {k:,} clusters" in html
    assert f"The cluster bars show the {rd.MAX_BAR_CLUSTERS} largest of {k:,} clusters" in html
    thumbs = n_rows_shown * (rd.THUMB_MAX_BYTES * 4 // 3 + 40)
    assert size + thumbs < 20_000_000, (size, thumbs)


def test_map_sample_keeps_selected_rows_and_is_order_free():
    n = 50_000
    ids = np.array([f"r{i}" for i in range(n)])
    selected = np.zeros(n, dtype=bool)
    selected[::100] = True
    usable = np.ones(n, dtype=bool)
    rows = rd.map_sample(usable, selected, ids, seed=0, max_points=1000)
    assert rows.size == 1000 and selected[rows].sum() == 500
    perm = np.random.default_rng(1).permutation(n)
    again = rd.map_sample(usable[perm], selected[perm], ids[perm], seed=0, max_points=1000)
    assert set(ids[perm][again]) == set(ids[rows])


def test_thumbnail_is_bounded_and_none_for_bad_bytes():
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (600, 900, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    url = rd.thumbnail({"bytes": buffer.getvalue(), "path": None})
    assert url.startswith("data:image/jpeg;base64,")
    assert len(url) - len("data:image/jpeg;base64,") <= rd.THUMB_MAX_BYTES * 4 // 3 + 4
    assert rd.thumbnail({"bytes": b"not an image", "path": None}) is None
    assert rd.thumbnail(None) is None


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_in_headless_chromium(report_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright to run the browser test")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no chromium: install Debian's browser with `apt-get install -y chromium`")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=browser_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems, requests = [], []
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto("file://" + os.path.abspath(report_path), wait_until="load")
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")

            assert not problems, problems
            assert all(url.startswith(("file:", "data:")) for url in requests), requests
            widths = page.evaluate("Array.from(document.querySelectorAll('img.thumb'), i => i.naturalWidth)")
            assert len(widths) >= 20 and min(widths) > 0, widths
            # every plot drew marks: bars or points with a visible size
            marks = page.evaluate(
                """Array.from(document.querySelectorAll('.js-plotly-plot'), div => [div.id,
                   Array.from(div.querySelectorAll('.point')).filter(m => {
                     const b = m.getBBox(); return b.width > 0 && b.height > 0; }).length])"""
            )
            assert len(marks) >= 4 and all(count > 0 for _, count in marks), marks
            assert {"embedding-map", "cluster-bars"} <= {plot for plot, _ in marks}

            # hovering a map point shows the row's thumbnail and id
            page.locator("#embedding-map").scroll_into_view_if_needed()
            box = page.locator("#embedding-map .scatterlayer .point").first.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.wait_for_selector("#hover-box:not(.hidden)", timeout=5000)
            assert page.evaluate("document.querySelector('#hover-box img').naturalWidth") > 0

            def visible() -> int:
                return page.evaluate("document.querySelectorAll('.card:not(.hidden)').length")

            total = visible()
            options = page.evaluate("Array.from(document.querySelectorAll('#reason-filter option'), o => o.value)")
            assert "selected" in options and any(o.startswith("error ") for o in options)
            page.select_option("#reason-filter", "selected")
            chosen = visible()
            assert 0 < chosen < total
            assert page.evaluate(
                "Array.from(document.querySelectorAll('.card:not(.hidden)')).every(c => c.dataset.reason === 'selected')"
            )
            page.select_option("#reason-filter", "")
            assert visible() == total
            page.fill("#search", "photo-camera")
            assert visible() == 1
            assert not problems, problems
        finally:
            browser.close()


def test_secret_looking_options_are_redacted(run_dir, tmp_path):
    shutil.copytree(os.path.join(run_dir, "scored"), tmp_path / "scored")
    shutil.copytree(os.path.join(run_dir, "selected"), tmp_path / "selected")
    manifest = json.loads((tmp_path / "selected" / "manifest.json").read_text())
    manifest["input"] = str(tmp_path / "scored")
    manifest["options"] = dict(manifest.get("options") or {}, api_key="sk-live-123")
    (tmp_path / "selected" / "manifest.json").write_text(json.dumps(manifest))
    html = build_report(str(tmp_path), projection="pca")
    assert "sk-live-123" not in html and "redacted" in html
