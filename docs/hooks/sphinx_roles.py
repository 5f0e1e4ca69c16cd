"""Griffe extension: the docstrings' reStructuredText roles read as Markdown code.

The docstrings name code the Sphinx way (``:class:`Potential```, ``:mod:`orbitgraph.units```,
``:func:`knn_graph```) and end a paragraph before a literal block with ``::``. mkdocstrings
renders docstrings as Markdown, where those would show as they are typed; this extension
turns each role into a code span (`` `Potential` ``) and a closing ``::`` into ``:`` (the
indented block after it is a Markdown code block already). The source files keep their
text.
"""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|data|obj|exc|const|ref|term):"
                  r"`~?([^`]+)`")
LITERAL = re.compile(r"(?<=\S)::$", re.M)


def markdown(text: str) -> str:
    """``text`` with its roles as code spans and its ``::`` paragraph ends as ``:``."""
    return LITERAL.sub(":", ROLE.sub(r"`\1`", text))


class SphinxRoles(griffe.Extension):
    """Rewrites each object's docstring as it is loaded (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
