"""Griffe extension for the API reference: read our ``Example:`` sections as Google-style examples.

Our docstrings head their doctests ``Example:`` (the style guide's "a short runnable example on every public
class"); Napoleon reads that as an examples section, but griffe reads it as an admonition and renders the ``>>>``
lines as Markdown (where ``out["a"][0]`` even looks like a cross-reference). This renames the header to
``Examples:`` when the section holds a doctest, so the block renders as code. Sphinx roles
(``:func:`~selector.card.publish```) are shown as code (``publish``), as Sphinx would show them.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*\n(?=(?P=indent)[ \t]+>>>)", re.M)
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(?P<tilde>~?)(?P<target>[^`]+)`")


def _role(match: re.Match) -> str:
    target = match.group("target")
    return f"`{target.rsplit('.', 1)[-1] if match.group('tilde') else target}`"


class DoctestExamples(Extension):
    """Turn ``Example:`` sections that hold a doctest into ``Examples:`` sections; Sphinx roles into code."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is None:
            return
        value = _EXAMPLE.sub(lambda m: f"{m.group('indent')}Examples:\n", docstring.value)
        docstring.value = _ROLE.sub(_role, value)
