"""The documentation site (mkdocs.yml, docs/) builds with warnings as errors, offline, with
the API reference generated from the docstrings; the README's links lead to files that
exist."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
    # the API reference is generated from the docstrings: signatures and their text
    api = (site / "reference" / "api" / "preprocess" / "index.html").read_text()
    assert 'id="orbitgraph.preprocess.graph.knn_graph"' in api
    assert "tie_tolerance" in api
    api = (site / "reference" / "api" / "train" / "index.html").read_text()
    assert 'id="orbitgraph.train.calculator.OrbitCalculator"' in api
    assert 'id="orbitgraph.train.trainer.Trainer"' in api
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
