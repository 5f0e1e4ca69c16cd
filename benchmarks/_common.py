"""Helpers shared by the benchmark scripts (paths, timing, disk usage)."""
from __future__ import annotations

import gzip
import shutil
import statistics
import sys
import time
from pathlib import Path

# Scripts here are named after what they measure (train.py, model.py): once this module is
# imported, drop their folder from the import path so that `train` and `model` are the
# project's packages, not these scripts.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLE = SHARED / "data" / "mptrj_sample.json.gz"
ANCHOR = SHARED / "bench" / "bench_e2e_anchor.py"
OUT = ROOT / "benchmarks" / "_out"


def require_shared() -> None:
    if not SAMPLE.is_file():
        raise SystemExit(f"{SAMPLE} not found: benchmarks need ../shared beside the checkout")


def plain_sample() -> Path:
    """The sample decompressed once (the anchor script reads plain JSON)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "mptrj_sample.json"
    if not path.is_file():
        with gzip.open(SAMPLE, "rb") as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return path


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    """Median wall time over ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def sample_store(name: str, backend: str = "zarr", frames_per_shard: int = 100,
                 graph=None) -> Path:
    """A store of the shared sample under benchmarks/_out/NAME, built once and then reused
    (``graph``: GraphParams, default the store default); built again when the one there is
    incomplete or of an older store schema, which this code cannot read."""
    from orbitgraph.errors import StoreError
    from orbitgraph.preprocess.build import build_store
    from orbitgraph.preprocess.cluster import ClusterConfig
    from orbitgraph.preprocess.graph_params import GraphParams
    from orbitgraph.preprocess.store.manifest import read_manifest

    out = OUT / name
    try:
        read_manifest(out)
    except StoreError:
        build_store(plain_sample(), fresh(out), backend=backend, frames_per_shard=frames_per_shard,
                    graph=graph or GraphParams(), cluster=ClusterConfig(kind="synchronous"),
                    progress=False)
    return out
