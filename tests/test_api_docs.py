"""The API reference builds in strict mode (a docstring that doesn't render is an error) and covers the exports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import selector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_api_reference_builds_strict_and_documents_every_export(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", "mkdocs.yml", "--site-dir", str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "WARNING" not in out.stderr  # strict mode already aborts on one; say which
    pages = {
        path.relative_to(site).as_posix(): path.read_text(encoding="utf-8")
        for path in site.rglob("index.html")
        if path.relative_to(site).parts[0] == "api"
    }
    html = "\n".join(pages.values())
    # every name `selector` exports is rendered under the module it is defined in (the registry of exports)
    missing = [name for name, module in selector._LAZY.items() if f'id="{module}.{name}"' not in html]
    assert missing == [], f"exported but not in the API reference (docs/api/*.md): {missing}"
    card = pages["api/card/index.html"]
    # an `Example:` doctest renders as code, not as Markdown text
    assert 'id="selector.card.publish"' in card and "highlight" in card.split('id="selector.card.publish"')[1]
    assert ":func:`" not in html and ":class:`" not in html  # Sphinx roles are shown as code


def test_top_level_exports_and_py_typed():
    code = (
        "import selector, selector.card, selector.pipeline; "
        "assert selector.publish is selector.card.publish and selector.write_card is selector.card.write_card; "
        "assert selector.run_pipeline is selector.pipeline.run_pipeline; "
        "assert {'publish', 'write_card', 'run_pipeline', 'PipelineConfig'} <= set(selector.__all__) <= set(dir(selector))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        package_data = tomllib.load(handle)["tool"]["setuptools"]["package-data"]
    for package in ("selector", "metrics"):
        assert os.path.isfile(os.path.join(ROOT, package, "py.typed"))
        assert "py.typed" in package_data[package]  # shipped in the wheel, so type checkers use the annotations
