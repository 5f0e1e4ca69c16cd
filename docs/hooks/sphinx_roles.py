"""Griffe extension: the docstrings' reStructuredText read as Markdown.

The docstrings name code the Sphinx way (``:class:`Potential```, ``:mod:`orbitgraph.units```,
``:func:`knn_graph```), end a paragraph before a literal block with ``::``, and lay out
tables of fields, shapes and units as reStructuredText simple tables (``====  ====``
borders). mkdocstrings renders docstrings as Markdown, where roles would show as typed and a
table would run together into one paragraph; this extension turns each role into a code span
(`` `Potential` ``), a closing ``::`` into ``:`` (the indented block after it is a Markdown
code block already) and each simple table into a code block that keeps its columns. The
source files keep their text.
"""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|data|obj|exc|const|ref|term):"
                  r"`~?([^`]+)`")
LITERAL = re.compile(r"(?<=\S)::$", re.M)
BORDER = re.compile(r"^=+( +=+)+ *$")


def fence_tables(text: str) -> str:
    """``text`` with each simple table (from a border line to the border line that a blank
    line or the end follows) inside a fenced code block."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        if BORDER.match(lines[i]):
            j = i + 1
            while j < len(lines) and not (BORDER.match(lines[j]) and
                                          (j + 1 == len(lines) or not lines[j + 1].strip())):
                j += 1
            if j < len(lines):
                out += ["", "```text", *lines[i:j + 1], "```", ""]
                i = j + 1
                continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def markdown(text: str) -> str:
    """``text`` with its roles as code spans, its ``::`` paragraph ends as ``:`` and its
    simple tables as code blocks."""
    return fence_tables(LITERAL.sub(":", ROLE.sub(r"`\1`", text)))


class SphinxRoles(griffe.Extension):
    """Rewrites each object's docstring as it is loaded (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
