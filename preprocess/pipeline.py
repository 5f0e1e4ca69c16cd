"""The build: source -> partitions -> Dask tasks -> committed shards -> manifest.

Each task is a pure function ``(source, partition, spec) -> committed shard``: it parses and
validates its records, builds the graphs and commits one shard atomically. A lost worker's
task is simply run again; a rerun after an interruption skips committed shards; the
statistics are reduced from the shards' commit records at the end.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from preprocess.cluster import ClusterConfig, batch_jobs, dask_client
from preprocess.graph import knn_graphs_screened
from preprocess.sources import open_source
from preprocess.sources.base import Partition, Quarantined, Source, fingerprint
from preprocess.store.manifest import (MANIFEST_FILE, SourceInfo, StoreError, StoreSpec,
                                       read_manifest)
from preprocess.store.params import GraphParams, SplitParams
from preprocess.store.shard import (ShardRecord, is_committed, remove_stale_temporaries,
                                    shard_name)
from preprocess.store.parquet import read_parquet
from preprocess.store.writer import QUARANTINE_NAME, finalize_store, write_frames_shard
from preprocess.threads import local_cores

BUILD_FILE = "build.json"


@dataclass
class BuildSummary:
    store: Path
    store_id: str
    frames: int = 0
    atoms: int = 0
    edges: int = 0
    quarantined: int = 0
    shards_built: int = 0
    shards_skipped: int = 0
    wall_s: float = 0.0
    already_complete: bool = False
    dashboard: str | None = None
    jobs: list[str] = field(default_factory=list)  # batch job ids (dask-jobqueue clusters)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        if self.already_complete:
            return (f"store {self.store} (id {self.store_id}) is already complete: "
                    f"{self.frames} frames; nothing to do")
        rate = self.frames / self.wall_s if self.wall_s > 0 else float("nan")
        lines = [f"built {self.store} (id {self.store_id})",
                 f"  frames {self.frames}  atoms {self.atoms}  edges {self.edges}  "
                 f"quarantined {self.quarantined}",
                 f"  shards built {self.shards_built}, already committed {self.shards_skipped}",
                 f"  wall {self.wall_s:.2f} s, {rate:.0f} frames/s"]
        if self.jobs:
            lines.append(f"  batch jobs {', '.join(self.jobs)}")
        for reason, n in sorted(self.quarantine_reasons.items(), key=lambda x: -x[1])[:5]:
            lines.append(f"  quarantine: {n} x {reason}")
        return "\n".join(lines)


def reason_kind(reason: str) -> str:
    """A quarantine reason without its particulars, to count reasons of one kind together:
    parenthesised details dropped, whole numbers (indices, counts) as ``#``.
    ``"structure: atoms 0 and 3 (cell shift (0, 1, 0)) are closer than 0.5 Å"`` becomes
    ``"structure: atoms # and # are closer than 0.5 Å"``."""
    kind = re.sub(r"\s*\((?:[^()]|\([^()]*\))*\)", "", reason)
    return re.sub(r"(?<![\w.])\d+(?![\w.])", "#", kind)[:100]


@contextlib.contextmanager
def gc_paused():
    """Hold Python's cyclic garbage collector for a partition's work.

    A partition allocates hundreds of thousands of short-lived objects and no reference
    cycles worth collecting mid-way; each allocation burst would otherwise trigger
    collections that traverse every live object (measured: parsing the sample's 10 MB
    run took 2-5x longer with the collector on). Memory stays bounded by the partition.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_partition(source: Source, part: Partition, spec: StoreSpec, out: str,
                    threads: int = 1) -> ShardRecord:
    """Parse, validate, build graphs for and commit one partition (idempotent).

    ``threads``: the compiled parts (record extraction, graphs) run on that many threads;
    1 on a Dask worker, whose cores are the cluster's to use; the cores of this process
    when the build runs in it."""
    root = Path(out)
    if is_committed(root, shard_name(part.index)):
        from preprocess.store.shard import read_commit
        return read_commit(root, shard_name(part.index))[0]
    with gc_paused():
        return _build_partition(source, part, spec, root, threads)


def _build_partition(source: Source, part: Partition, spec: StoreSpec, root: Path,
                     threads: int) -> ShardRecord:
    frames, quarantine = source.read(part, spec.energy_key, threads)
    g = spec.graph
    graphs, failed = knn_graphs_screened(
        np.array([f.cell for f in frames]).reshape(-1, 3, 3), [f.positions for f in frames],
        np.array([f.pbc for f in frames], dtype=bool).reshape(-1, 3), g.k, g.ties,
        g.tie_tolerance, g.cutoff, spec.min_distance, threads)
    if failed:
        keep = [b for b in range(len(frames)) if b not in failed]
        quarantine = quarantine + [Quarantined(frames[b].material_id, frames[b].frame_id,
                                               f"structure: {reason}")
                                   for b, reason in failed.items()]
        frames = [frames[b] for b in keep]
        graphs = graphs.take(keep)
    return write_frames_shard(root, part.index, frames, spec,
                              quarantine=[q.to_dict() for q in quarantine], graphs=graphs)


def _check_out_dir(out: Path, spec: StoreSpec) -> None:
    """Refuse to mix shards of different stores in one directory."""
    build_file = out / BUILD_FILE
    if build_file.is_file():
        existing = json.loads(build_file.read_text())
        if existing.get("store_id") != spec.store_id:
            raise StoreError(
                f"{out} holds a partial build of another store (id {existing.get('store_id')}, "
                f"this build is {spec.store_id}); use another --out or delete it")
        if existing.get("frames_per_shard") != spec.frames_per_shard:
            raise StoreError(f"{out}: a partial build with frames_per_shard="
                             f"{existing.get('frames_per_shard')} exists; resume it with the same value")
        return
    out.mkdir(parents=True, exist_ok=True)
    build_file.write_text(json.dumps({"store_id": spec.store_id, "backend": spec.backend,
                                      "frames_per_shard": spec.frames_per_shard}))


def make_spec(source_path: str | Path, *, source_format: str | None = None,
              graph: GraphParams = GraphParams(), backend: str = "zarr",
              energy_key: str = "uncorrected_total_energy", split: SplitParams = SplitParams(),
              frames_per_shard: int = 2000, min_distance: float = 0.5
              ) -> tuple[Source, StoreSpec]:
    source = open_source(source_path, source_format)
    info = SourceInfo(str(source_path), source.format, fingerprint(source_path))
    return source, StoreSpec(source=info, graph=graph, backend=backend, energy_key=energy_key,
                             split=split, frames_per_shard=frames_per_shard,
                             min_distance=min_distance)


def build_store(source_path: str | Path, out: str | Path, *, source_format: str | None = None,
                graph: GraphParams = GraphParams(), backend: str = "zarr",
                energy_key: str = "uncorrected_total_energy", split: SplitParams = SplitParams(),
                frames_per_shard: int = 2000, cluster: ClusterConfig = ClusterConfig(),
                min_distance: float = 0.5, progress: bool = True,
                log: Callable[[str], None] = print) -> BuildSummary:
    """Build (or finish building) the store of ``source_path`` in ``out``."""
    t0 = time.perf_counter()
    source, spec = make_spec(source_path, source_format=source_format, graph=graph,
                             backend=backend, energy_key=energy_key, split=split,
                             frames_per_shard=frames_per_shard, min_distance=min_distance)
    out = Path(out)
    summary = BuildSummary(store=out, store_id=spec.store_id)
    if (out / MANIFEST_FILE).is_file():
        m = read_manifest(out)
        if m.store_id != spec.store_id:
            raise StoreError(f"{out} already holds another store (id {m.store_id}, this build "
                             f"is {spec.store_id}); use another --out or delete it")
        summary.already_complete = True
        summary.frames, summary.atoms, summary.edges = (m.counts["frames"], m.counts["atoms"],
                                                        m.counts["edges"])
        summary.quarantined = m.counts["quarantined"]
        return summary
    _check_out_dir(out, spec)
    remove_stale_temporaries(out)

    parts = source.partitions(spec.frames_per_shard)
    head = list(itertools.islice(parts, 2))
    parts = itertools.chain(head, parts)
    if cluster.kind == "local" and len(head) < 2:
        log("one partition: building it in this process (a local cluster would only add its "
            "start-up time)")
        cluster = ClusterConfig(kind="synchronous")

    if cluster.kind != "synchronous":
        load_kernels(source.format)

    with dask_client(cluster, log) as client, _progress(progress) as bar:
        if client is not None:
            summary.dashboard = client.dashboard_link
            log(f"dask dashboard: {client.dashboard_link}")
            n_workers = max(1, len(client.scheduler_info().get("workers", {})))
            _run_distributed(client, parts, source, spec, out, bar, summary,
                             in_flight=4 * n_workers)
            summary.jobs = batch_jobs(client)
        else:
            for part in parts:
                bar.total = (bar.total or 0) + 1
                if is_committed(out, shard_name(part.index)):
                    summary.shards_skipped += 1
                else:
                    build_partition(source, part, spec, str(out), threads=local_cores())
                    summary.shards_built += 1
                bar.update(1)
        n_parts = summary.shards_built + summary.shards_skipped
    manifest = finalize_store(out, spec, n_parts, build_info={
        "wall_s": round(time.perf_counter() - t0, 3), "cluster": cluster.kind})
    summary.frames, summary.atoms, summary.edges = (manifest.counts["frames"],
                                                    manifest.counts["atoms"],
                                                    manifest.counts["edges"])
    summary.quarantined = manifest.counts["quarantined"]
    for reason in read_parquet(out / QUARANTINE_NAME).column("reason").to_pylist():
        key = reason_kind(reason)
        summary.quarantine_reasons[key] = summary.quarantine_reasons.get(key, 0) + 1
    summary.wall_s = time.perf_counter() - t0
    return summary


def load_kernels(source_format: str) -> None:
    """Compile (or load from numba's on-disk cache) the build's kernels for a source format.

    The driver calls it before a cluster starts: workers that share numba's cache (same
    machine, or a shared install on nodes of the same CPU type) then load the kernels in
    about a second instead of each compiling them (about 20 s on a fresh install). Loading
    them from the cache takes ~0.6 s in a fresh process (numba's type registries, and scipy
    for its BLAS check); otherwise the first partition pays that."""
    from preprocess.graph import knn_graphs_screened

    if source_format == "mptrj-json":
        from preprocess.sources.mptrj_extract import extract
        from preprocess.sources.mptrj_json import MaterialScanner
        MaterialScanner().feed(b'{"m": {"f": {}}}')
        extract(b'"m": {"f": {"structure": {"lattice": {"matrix": [[3, 0, 0], [0, 3, 0], '
                b'[0, 0, 3]]}, "sites": [{"species": [{"element": "H"}], "xyz": [0, 0, 0]}]},'
                b' "e": -1.0, "force": [[0, 0, 0]]}}', "e")
    knn_graphs_screened(np.eye(3)[None] * 3.0, [np.zeros((1, 3))], np.ones((1, 3), bool),
                        k=1, ties="include", tie_tolerance=0.01, cutoff=None, min_distance=0.5)


def _run_distributed(client, parts, source, spec, out, bar, summary, in_flight):
    """Submit every uncommitted partition of ``parts``; at most ``in_flight`` at once
    (partitions that carry their bytes must not pile up in the scheduler's memory)."""
    from distributed import as_completed

    pending = as_completed()
    running = 0
    records = []

    def drain(block: bool):
        nonlocal running
        while running and (block or running >= in_flight):
            fut = next(pending)
            records.append(fut.result())
            running -= 1
            bar.update(1)

    for part in parts:
        bar.total = (bar.total or 0) + 1
        bar.refresh()
        if is_committed(out, shard_name(part.index)):
            summary.shards_skipped += 1
            bar.update(1)
            continue
        fut = client.submit(build_partition, source, part, spec, str(out),
                            key=f"orbitgraph-{spec.store_id}-{shard_name(part.index)}",
                            retries=2, pure=False)
        pending.add(fut)
        running += 1
        summary.shards_built += 1
        drain(block=False)
    drain(block=True)
    return records


class _progress:
    """A tqdm bar on a terminal, a no-op otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()

    def __enter__(self):
        if self.enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=0, unit="shard", desc="building")
        else:
            self.bar = _NoBar()
        return self.bar

    def __exit__(self, *exc):
        self.bar.close()
        return False


class _NoBar:
    total = 0

    def update(self, n):
        pass

    def refresh(self):
        pass

    def close(self):
        pass
