"""The graph kernel's on-disk cache: keyed by both files it compiles, and announced while
it compiles."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orbitgraph.preprocess import kernel_cache

CHILD = """
import logging, numpy as np
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from orbitgraph.preprocess.graph import knn_graph
print(knn_graph(np.eye(3) * 3.0, np.zeros((1, 3))).n_edges)
"""


def test_digest_follows_both_sources(tmp_path):
    """An edit of distance_grid.py (whose functions the kernel inlines) changes the cache
    key as an edit of knn_kernel.py does; the same contents give the same key."""
    copies = []
    for path in kernel_cache.KERNEL_SOURCES:
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        copies.append(copy)
    before = kernel_cache.source_digest(copies)
    assert before == kernel_cache.source_digest(kernel_cache.KERNEL_SOURCES)
    grid = tmp_path / "distance_grid.py"
    grid.write_text(grid.read_text().replace("DISTANCE_QUANTUM = 1e-9", "DISTANCE_QUANTUM = 2e-9"))
    assert kernel_cache.source_digest(copies) != before


def test_cache_folder_is_keyed_and_overridable(tmp_path, monkeypatch):
    monkeypatch.setenv(kernel_cache.CACHE_ENV, str(tmp_path))
    path = kernel_cache.cache_path("0123abcd")
    assert path == tmp_path / "graph-kernel-0123abcd" and path.is_dir()
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv(kernel_cache.CACHE_ENV, str(blocked))
    with pytest.raises(OSError, match=kernel_cache.CACHE_ENV):
        kernel_cache.cache_path("0123abcd")


@pytest.mark.slow
def test_first_run_compiles_once_and_says_so(tmp_path):
    """A process with a fresh cache folder compiles the kernel, saying so on the
    orbitgraph.graph logger; the next process loads it from there, silently."""
    env = {**os.environ, kernel_cache.CACHE_ENV: str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                           text=True, timeout=600) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["18"]
    line = f"orbitgraph.graph: {kernel_cache.COMPILING_MESSAGE}"
    assert runs[0].stderr.count(line) == 1, runs[0].stderr
    assert line not in runs[1].stderr, runs[1].stderr
    folder, = tmp_path.iterdir()
    assert folder.name == f"graph-kernel-{kernel_cache.source_digest()}"
    assert any(Path(folder).glob("knn_kernel.knn_batch-*.nbi"))
