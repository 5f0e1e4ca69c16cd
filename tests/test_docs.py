"""The documentation site (mkdocs.yml, docs/) builds with warnings as errors, offline, with
the API reference generated from the docstrings; the README's links lead to files that
exist."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import orbitgraph

ROOT = Path(__file__).resolve().parents[1]

# mkdocs in a process whose sockets cannot connect: a plugin or theme that fetches anything
# at build time (web fonts, objects.inv inventories) fails the build instead of passing on
# a machine with internet and failing on CI's
OFFLINE_BUILD = """
import socket, sys

def refuse(*args, **kwargs):
    raise OSError(f"the documentation build tried to reach the network: {args!r}")

socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = refuse
from mkdocs.__main__ import cli
cli(sys.argv[1:])
"""


def test_the_site_builds_strict_and_offline(tmp_path):
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-c", OFFLINE_BUILD, "build", "--strict",
                          "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "WARNING" not in run.stderr, run.stderr[-4000:]
    # every guide and reference page is rendered (a page outside the nav is a warning)
    pages = sorted(p.relative_to(ROOT / "docs").with_suffix("").as_posix()
                   for p in (ROOT / "docs").rglob("*.md"))
    for page in pages:
        html = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert html.is_file(), page
    # the API reference is generated from the docstrings, every public name of the root
    # package among it, under the module that defines it
    api = "".join(p.read_text() for p in (site / "reference" / "api").rglob("index.html"))
    for name, module in orbitgraph._PUBLIC.items():
        assert f'id="{module}.{name}"' in api, f"{module}.{name} is not in the API reference"
    assert "Cartesian Å" in api  # knn_graph's parameters, from its docstring
    # markdown inside the mace-torch table's <details> is rendered (md_in_html)
    mace = (site / "guides" / "mace-torch" / "index.html").read_text()
    assert "<td><code>r_max</code></td>" in mace


def test_the_readme_links_lead_to_files():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert len(local) >= 15, local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_docstrings_read_as_markdown():
    """The griffe extension of the site (docs/hooks/sphinx_roles.py): Sphinx roles become code
    spans, a ``::`` paragraph end a colon, a simple table of fields a code block."""
    spec = importlib.util.spec_from_file_location("sphinx_roles",
                                                  ROOT / "docs" / "hooks" / "sphinx_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = ("Uses :class:`Potential` and :func:`~orbitgraph.knn_graph`::\n\n    code\n\n"
            "=====  =====\nfield  unit\n=====  =====\npos    Å\n=====  =====\n\nAfter.")
    assert module.markdown(text) == (
        "Uses `Potential` and `orbitgraph.knn_graph`:\n\n    code\n\n\n```text\n"
        "=====  =====\nfield  unit\n=====  =====\npos    Å\n=====  =====\n```\n\n\nAfter.")
