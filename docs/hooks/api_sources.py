"""MkDocs hook: lets mkdocstrings read the ``orbitgraph`` namespace from the sources.

The namespace installs from four folders at the repository's root (pyproject's
``[tool.setuptools.package-dir]``: ``orbitgraph/``, with ``preprocess/``, ``model/`` and
``train/`` as its subpackages), a layout griffe's finder cannot follow from the root package
(it looks for submodules inside ``orbitgraph/``). At the start of each build this hook lays
the installed layout out in ``build/docs-api/`` (ignored by git): a copy of the ``.py``
files, ~1 MB (griffe resolves symbolic links, which would lead it back to the root folders).
mkdocs.yml gives that folder to the python handler as its search path, so the API reference
is read from the source files, without importing them.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from mkdocs.plugins import event_priority

if sys.version_info >= (3, 11):
    import tomllib
else:  # the docs extra installs tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
API_SOURCES = ROOT / "build" / "docs-api"  # mkdocs.yml: plugins.mkdocstrings...paths


def package_dirs() -> dict[str, str]:
    """pyproject's ``[tool.setuptools.package-dir]``: {package: folder}."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def lay_out(top: Path = API_SOURCES) -> Path:
    """Write ``top/orbitgraph/`` as the wheel lays the namespace out (the root package, then
    each subpackage in its place: ``orbitgraph.preprocess`` -> ``orbitgraph/preprocess/``)
    and return ``top``; what an earlier build left there is replaced."""
    shutil.rmtree(top, ignore_errors=True)
    dirs = package_dirs()
    sources = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in sorted(dirs, key=lambda n: n.count(".")):
        shutil.copytree(ROOT / dirs[name], top.joinpath(*name.split(".")), ignore=sources,
                        dirs_exist_ok=True)
    return top


# before the plugins' on_config: mkdocstrings' python handler reads its paths there
@event_priority(100)
def on_config(config):
    lay_out()
    return config
