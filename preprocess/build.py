"""The build: source -> partitions -> tasks -> committed shards -> manifest.

Each task is a pure function ``(source, partition, spec) -> committed shard``: it parses and
validates its records, builds the graphs and commits one shard atomically. The tasks run on
a Dask cluster, on processes forked from this one (a local source of up to
``cluster.in_process_max_bytes``), or in this process (see :func:`_without_cluster`). A
lost worker's task is simply run again; a rerun after an interruption skips committed
shards; the statistics are reduced from the shards' commit records at the end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import logging
import multiprocessing
import os
import pickle
import re
import signal
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from orbitgraph.errors import StoreError
from orbitgraph.preprocess.cluster import BuildProcessError, ClusterConfig, batch_jobs, dask_client
from orbitgraph.preprocess.graph import knn_graphs_screened
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.preprocess.sources import digest_source, open_source
from orbitgraph.preprocess.sources.base import Partition, Quarantined, Source
from orbitgraph.preprocess.sources.labels import LabelPlan, count_notes
from orbitgraph.preprocess.sources.limits import graph_problems, within_atom_limit, wrap_positions
from orbitgraph.preprocess.store.manifest import (
    MANIFEST_FILE,
    SourceInfo,
    StoreSpec,
    read_manifest,
)
from orbitgraph.preprocess.store.params import SplitParams, StoreParams
from orbitgraph.preprocess.store.parquet import read_parquet, write_parquet
from orbitgraph.preprocess.store.reuse import claim, other_store_error, release
from orbitgraph.preprocess.store.shard import (
    ShardRecord,
    is_committed,
    read_commit,
    remove_stale_temporaries,
    shard_name,
)
from orbitgraph.preprocess.store.writer import (
    INDEX_NAME,
    QUARANTINE_NAME,
    QUARANTINE_SCHEMA,
    empty_splits,
    finalize_store,
    write_frames_shard,
)
from orbitgraph.preprocess.threads import local_cores

log = logging.getLogger("orbitgraph.build")


class EmptyStoreError(StoreError):
    """The build would store no frame: the source holds none, or all were quarantined."""


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
    frames_built: int = 0  # frames stored by the shards built in this run (the rate's)
    wall_s: float = 0.0
    already_complete: bool = False
    dashboard: str | None = None
    jobs: list[str] = field(default_factory=list)  # batch job ids (dask-jobqueue clusters)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    labels: LabelPlan | None = None  # the keys the frames were read with
    labels_not_stored: dict[str, int] = field(default_factory=dict)  # what -> frames
    labels_converted: dict[str, int] = field(default_factory=dict)  # what -> frames
    labels_masked: dict[str, int] = field(default_factory=dict)  # what -> frames
    warnings: list[str] = field(default_factory=list)  # also logged as the build ends

    def text(self) -> str:
        if self.already_complete:
            return (f"store {self.store} (id {self.store_id}) is already complete: "
                    f"{self.frames} frames; nothing to do")
        rate = self.frames_built / self.wall_s if self.wall_s > 0 else float("nan")
        lines = [f"built {self.store} (id {self.store_id})",
                 f"  frames {self.frames}  atoms {self.atoms}  edges {self.edges}  "
                 f"quarantined {self.quarantined}",
                 f"  shards built {self.shards_built}, already committed {self.shards_skipped}",
                 f"  wall {self.wall_s:.2f} s, {rate:.0f} frames/s"
                 + (f" ({self.frames_built} frames built in this run)"
                    if self.shards_skipped else "")]
        if self.jobs:
            lines.append(f"  batch jobs {', '.join(self.jobs)}")
        lines.extend(self._label_lines())
        for reason, n in sorted(self.quarantine_reasons.items(), key=lambda x: -x[1])[:5]:
            lines.append(f"  quarantine: {n} x {reason}")
        return "\n".join(lines)

    def _label_lines(self) -> list[str]:
        lines = []
        if self.labels is not None:
            lines.append(f"  labels: {self.labels.describe()}")
        for what, n in sorted(self.labels_converted.items(), key=lambda x: (-x[1], x[0])):
            lines.append(f"  converted: {n} frames, {what}")
        for title, counts in (("optional labels masked: frames kept, the label stored as NaN "
                               "and left out of the loss and statistics (frames)",
                               self.labels_masked),
                              ("present in the source but not stored (frames)",
                               self.labels_not_stored)):
            if counts:
                listed = ", ".join(f"{n} x {what}" for what, n in
                                   sorted(counts.items(), key=lambda x: (-x[1], x[0])))
                lines.append(f"  {title}: {listed}")
        return lines


def reason_kind(reason: str) -> str:
    """A quarantine reason without its particulars, to count reasons of one kind together:
    parenthesised details dropped, whole numbers (indices, counts) as ``#``; exponents of
    units (``Å^3``, ``Å^-1``) and digits inside words (``int8``) are kept.
    ``"structure: atoms 0 and 3 (cell shift (0, 1, 0)) are closer than 0.5 Å"`` becomes
    ``"structure: atoms # and # are closer than 0.5 Å"``."""
    kind = re.sub(r"\s*\((?:[^()]|\([^()]*\))*\)", "", reason)
    kind = re.sub(r"(\^[-+]?\d+)|(?<![\w.])\d+(?![\w.])",
                  lambda m: m.group(1) or "#", kind)
    return kind[:100]


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
                    threads: int = 1, labels: LabelPlan | None = None) -> ShardRecord:
    """Parse, validate, build graphs for and commit one partition (idempotent).

    ``threads``: the graph kernel (which releases the GIL) runs on that many threads;
    decoding the records holds the GIL and runs on one. 1 on a Dask worker or a forked
    build process, whose cores are shared with the other workers; this process's cores
    when it builds the partitions one at a time. ``labels``: the keys to read (decided
    once by the driver); None resolves them here from ``spec``."""
    root = Path(out)
    if is_committed(root, shard_name(part.index)):
        return read_commit(root, shard_name(part.index))[0]
    if labels is None:
        labels = source.resolve_labels(spec.labels)
    with gc_paused():
        return _build_partition(source, part, spec, root, threads, labels)


def _build_partition(source: Source, part: Partition, spec: StoreSpec, root: Path,
                     threads: int, labels: LabelPlan) -> ShardRecord:
    """Each check that can fail for one frame quarantines that frame only: the reader's
    (labels, cell, values), the atom count (before any graph is built), the graph itself
    (atoms too close, a search that fails) and the graph's fit in the store's integers."""
    frames, quarantine = source.read(part, labels, threads)
    frames, too_large = within_atom_limit(frames)
    cells = np.array([f.cell for f in frames]).reshape(-1, 3, 3)
    pbc = np.array([f.pbc for f in frames], dtype=bool).reshape(-1, 3)
    positions = wrap_positions(cells, [f.positions for f in frames], pbc)
    frames = [f if p is f.positions else dataclasses.replace(f, positions=p)
              for f, p in zip(frames, positions, strict=True)]
    graphs, failed = knn_graphs_screened(cells, positions, pbc, spec.graph, spec.min_distance,
                                         threads)
    failed = {b: f"structure: {reason}" for b, reason in failed.items()}
    for b, reason in graph_problems(graphs.unit_shifts, graphs.next_unit_shift, graphs.centers,
                                    graphs.edge_ptr, graphs.atom_ptr).items():
        failed.setdefault(b, reason)
    quarantine = quarantine + too_large
    if failed:
        keep = [b for b in range(len(frames)) if b not in failed]
        quarantine = quarantine + [Quarantined(frames[b].material_id, frames[b].frame_id,
                                               failed[b]) for b in sorted(failed)]
        frames = [frames[b] for b in keep]
        graphs = graphs.take(keep)
    return write_frames_shard(root, part.index, frames, spec,
                              quarantine=[q.to_dict() for q in quarantine], graphs=graphs,
                              label_counts=count_notes(f.notes for f in frames))


def make_spec(source_path: str | Path, params: StoreParams | None = None, *,
              source_format: str | None = None, **overrides) -> tuple[Source, StoreSpec]:
    """The source and the spec of its store: ``params`` (default :class:`StoreParams` ``()``;
    only its StoreParams fields are read) with keyword ``overrides`` of those fields. Label
    keys left None follow the source's convention (see
    :mod:`orbitgraph.preprocess.sources.labels`); the names a format fixes are filled in
    here, so that the store id is the same whether they were given or not. The source's
    files are hashed whole (:mod:`orbitgraph.preprocess.sources.fingerprint`; a file
    unchanged since it was last hashed is recognised from its status).

    Raises ConfigError (a ValueError) naming a refused override."""
    params = (StoreParams() if params is None else params).model_copy(update=overrides)
    source = open_source(source_path, source_format)
    digest = digest_source(source_path, source.files)
    info = SourceInfo(str(source_path), source.format, digest.fingerprint, digest.files)
    keys = source.label_keys(params.labels)
    fields = {name: getattr(params, name) for name in StoreParams.model_fields}
    fields.update(energy_key=keys.energy, forces_key=keys.forces, stress_key=keys.stress,
                  virial_key=keys.virial)
    return source, StoreSpec(**fields, source=info)


def build_store(source_path: str | Path, out: str | Path, params: StoreParams | None = None,
                *, source_format: str | None = None, cluster: ClusterConfig = ClusterConfig(),
                progress: bool = True, discard_partial: bool = False,
                **overrides) -> BuildSummary:
    """Build (or finish building) the store of ``source_path`` in ``out`` with ``params``
    and keyword ``overrides`` of its fields (see :func:`make_spec`).

    ``out`` may hold this store complete (nothing is done), a partial build of it (resumed),
    or nothing; a partial build of another store (or of another ``frames_per_shard``) is
    refused, or deleted first with ``discard_partial`` (see
    :mod:`orbitgraph.preprocess.store.reuse`).

    Raises StoreError for a folder that holds another store, LabelError (a ValueError) when
    a label key is not given and the source holds several candidates (or none) for it, and
    :class:`EmptyStoreError` when no frame would be stored."""
    t0 = time.perf_counter()
    source, spec = make_spec(source_path, params, source_format=source_format, **overrides)
    out = Path(out)
    summary = BuildSummary(store=out, store_id=spec.store_id)
    if (out / MANIFEST_FILE).is_file():
        m = read_manifest(out)
        if m.store_id != spec.store_id:
            raise other_store_error(out, m, spec)
        summary.already_complete = True
        summary.frames, summary.atoms, summary.edges = (m.counts["frames"], m.counts["atoms"],
                                                        m.counts["edges"])
        summary.quarantined = m.counts["quarantined"]
        summary.labels = LabelPlan(**m.labels) if m.labels else None
        summary.labels_not_stored = dict(m.counts.get("labels_not_stored", {}))
        summary.labels_converted = dict(m.counts.get("labels_converted", {}))
        summary.labels_masked = dict(m.counts.get("labels_masked", {}))
        return summary
    labels = source.resolve_labels(spec.labels)
    summary.labels = labels
    claimed = claim(out, spec, discard_partial)
    try:
        return _build(source, spec, out, cluster, progress, labels, summary, t0)
    except BaseException:
        if claimed:  # a first build that committed nothing leaves nothing to resume
            release(out)
        raise


def _build(source: Source, spec: StoreSpec, out: Path, cluster: ClusterConfig, progress: bool,
           labels: LabelPlan, summary: BuildSummary, t0: float) -> BuildSummary:
    """The partitions of ``source`` built into ``out``, then the manifest; ``summary``
    filled in and returned."""
    source_path = source.path
    remove_stale_temporaries(out)

    parts = source.partitions(spec.frames_per_shard)
    head = list(itertools.islice(parts, 2))
    parts = itertools.chain(head, parts)
    cluster, processes = _without_cluster(cluster, len(head), source_path, source.files)
    if cluster.kind != "synchronous" or processes:
        load_kernels(source.format)  # once, before workers start (they inherit or share it)

    with dask_client(cluster) as client, _progress(progress) as bar:
        if client is not None:
            summary.dashboard = client.dashboard_link
            log.info(f"dask dashboard: {client.dashboard_link}")
            n_workers = max(1, len(client.scheduler_info().get("workers", {})))
            _run_distributed(client, parts, source, spec, out, bar, summary,
                             in_flight=4 * n_workers, labels=labels)
            summary.jobs = batch_jobs(client)
        elif processes:
            _run_on_processes(processes, parts, source, spec, out, bar, summary, labels)
        else:
            for part in parts:
                bar.total = (bar.total or 0) + 1
                if is_committed(out, shard_name(part.index)):
                    summary.shards_skipped += 1
                else:
                    record = build_partition(source, part, spec, str(out),
                                             threads=local_cores(), labels=labels)
                    summary.shards_built += 1
                    summary.frames_built += record.frames
                    log.debug(f"{shard_name(part.index)} committed")
                bar.update(1)
        n_parts = summary.shards_built + summary.shards_skipped
    _refuse_empty(source_path, out, n_parts)
    manifest = finalize_store(out, spec, n_parts, build_info={
        "wall_s": round(time.perf_counter() - t0, 3),
        "cluster": f"processes ({processes})" if processes else cluster.kind},
        labels=labels.to_dict())
    summary.frames, summary.atoms, summary.edges = (manifest.counts["frames"],
                                                    manifest.counts["atoms"],
                                                    manifest.counts["edges"])
    summary.quarantined = manifest.counts["quarantined"]
    summary.labels_not_stored = dict(manifest.counts["labels_not_stored"])
    summary.labels_converted = dict(manifest.counts["labels_converted"])
    summary.labels_masked = dict(manifest.counts["labels_masked"])
    summary.warnings = split_warnings(out, spec.split) + material_id_warnings(source,
                                                                              spec.split)
    summary.quarantine_reasons = reason_counts(
        read_parquet(out / QUARANTINE_NAME).column("reason").to_pylist())
    summary.wall_s = time.perf_counter() - t0
    return summary


def _without_cluster(cluster: ClusterConfig, n_head: int, source_path,
                     files: list[str] | None = None) -> tuple[ClusterConfig, int]:
    """Where a build runs when ``cluster`` is the default LocalCluster: ``(cluster,
    worker processes)``.

    - One partition (``n_head`` < 2): in this process (a cluster would only add its start).
    - A source of at most ``cluster.in_process_max_bytes`` (decompressed): on
      :func:`local_processes` processes forked from this one, without a cluster (a
      LocalCluster's start, 3-10 s here, is most of a small build's time); in this process,
      partition by partition, where :func:`local_processes` is 0 or ``cluster.workers``
      is 1 (``cluster.workers`` bounds the processes, as a LocalCluster's). Memory does not grow
      with the source: each worker holds one partition (peak RSS ~0.3 GB per process for
      2,000-frame partitions).
    - A larger source: the LocalCluster (its start is then a small share, and it adds a
      dashboard, per-worker memory limits and retries of a lost worker's tasks).
    Any other kind is returned unchanged, with 0 processes."""
    if cluster.kind != "local":
        return cluster, 0
    if n_head < 2:
        log.info("one partition: building it in this process (other processes would only add "
                 "their start-up time)")
        return ClusterConfig(kind="synchronous"), 0
    size = source_bytes(source_path, files)
    if size > cluster.in_process_max_bytes:
        return cluster, 0
    processes = local_processes()
    if cluster.workers is not None:  # the user's bound on worker processes
        processes = min(processes, cluster.workers) if cluster.workers > 1 else 0
    where = (f"on {processes} processes forked from this one" if processes else
             "in this process, one partition at a time")
    log.info(f"source {size / 1e6:.0f} MB <= cluster.in_process_max_bytes "
             f"({cluster.in_process_max_bytes / 1e6:.0f} MB): building it without a cluster, "
             f"{where}")
    return ClusterConfig(kind="synchronous"), processes


def source_bytes(path: str | Path, files: list[str] | None = None) -> int:
    """The bytes a build reads from a source file or folder (or its ``files``, when given:
    a glob pattern's matches, the files of a format in a folder), decompressed: a gzip file
    counts as its decompressed size (from its trailer, which holds it modulo 2^32: taken as
    the smallest such value at least the compressed size). What decides between building
    in this process and on a LocalCluster (``cluster.in_process_max_bytes``)."""
    path = Path(path)
    if files is not None:
        files = [Path(f) for f in files]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    total = 0
    for f in files:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
            if gzipped and size >= 18:
                fh.seek(-4, 2)
                isize = int.from_bytes(fh.read(4), "little")
                size = isize + max(0, -(-(size - isize) // 2**32)) * 2**32
        total += size
    return total


def split_warnings(out: Path, split: SplitParams) -> list[str]:
    """A logged warning for each split of the store in ``out`` that holds no frames though
    asked for (val and test with a fraction above 0; train always), naming the fraction
    that would give it some (:func:`~orbitgraph.preprocess.store.writer.empty_splits`)."""
    materials = read_parquet(out / INDEX_NAME).column("material_id").to_pylist()
    asked = {"test": split.test_fraction > 0, "val": split.val_fraction > 0, "train": True}
    found = [f"{out}: {text} (the split is set by store.split.* of orbitgraph build, "
             "stores.NAME.split in pipelines.yaml)" for name, text in
             empty_splits(materials, split).items() if asked[name]]
    for text in found:
        log.warning(text)
    return found


def material_id_warnings(source: Source, split: SplitParams) -> list[str]:
    """A logged one-line warning when frames of ``source`` (its last plan) name no material
    and the store has val or test splits: each such frame is a material of its own, so the
    splits are by frame and one trajectory's frames can fall in train and test. It names
    the fields the reader takes a material id from and how to set one."""
    n = source.frames_without_material_id
    if not n or split.val_fraction + split.test_fraction == 0:
        return []
    keys = " or ".join(f"{key}=" for key in source.material_keys)
    text = (f"{source.path}: {n} frame{'s' * (n != 1)} without a material id ({keys} on "
            "the comment line), so the val and test splits take frames, not materials, and "
            "one trajectory's frames can fall in both train and test; add "
            f"{source.material_keys[0]}=ID to every frame, the same ID for all frames of one "
            "material or trajectory")
    log.warning(text)
    return [text]


def reason_counts(reasons) -> dict[str, int]:
    """{reason kind: records} (see :func:`reason_kind`)."""
    counts: dict[str, int] = {}
    for reason in reasons:
        key = reason_kind(reason)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _refuse_empty(source_path, out: Path, n_parts: int) -> None:
    """Raise EmptyStoreError, naming the commonest quarantine reasons, when the committed
    shards hold no frame (no manifest is written: a store without frames cannot train).
    The quarantined records are written to ``quarantine.parquet`` to be looked at."""
    if n_parts == 0:
        raise EmptyStoreError(f"{source_path}: the source holds no frames; nothing to store")
    frames, quarantine = 0, []
    for i in range(n_parts):
        record, commit = read_commit(out, shard_name(i))
        frames += record.frames
        quarantine.extend(commit.get("quarantine", []))
    if frames:
        return
    write_parquet(pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA),
                  out / QUARANTINE_NAME)
    common = sorted(reason_counts(q["reason"] for q in quarantine).items(),
                    key=lambda x: (-x[1], x[0]))
    listed = "; ".join(f"{n} x {reason}" for reason, n in common[:3])
    raise EmptyStoreError(
        f"{source_path}: no frame could be stored, all {len(quarantine)} were quarantined; "
        f"most common reasons: {listed} (every record and reason: "
        f"{out / QUARANTINE_NAME}). If the labels are under other names, give them with "
        "--energy-key/--forces-key/--stress-key/--virial-key")


def load_kernels(source_format: str) -> None:
    """Compile (or load from numba's on-disk cache) the build's kernels for a source format.

    The driver calls it before a cluster starts: workers that share numba's cache (same
    machine, or a shared install on nodes of the same CPU type) then load the kernels in
    about a second instead of each compiling them (about 20 s on a fresh install). Loading
    them from the cache takes ~0.6 s in a fresh process (numba's type registries, and scipy
    for its BLAS check); otherwise the first partition pays that."""
    from orbitgraph.preprocess.graph import knn_graphs_screened

    if source_format == "mptrj-json":
        from orbitgraph.preprocess.sources.mptrj_json import MaterialScanner
        MaterialScanner().feed(b'{"m": {"f": {}}}')
    knn_graphs_screened(np.eye(3)[None] * 3.0, [np.zeros((1, 3))], np.ones((1, 3), bool),
                        GraphParams(k=1, tie_tolerance=0.01), min_distance=0.5)


def _submit_all(parts, out: Path, bar, summary: BuildSummary, submit, first_done,
                in_flight: int) -> None:
    """Submit every uncommitted partition of ``parts`` with ``submit(part) -> future``, at
    most ``in_flight`` pending at once (partitions that carry their bytes must not pile up
    in memory); ``first_done(pending) -> done futures`` waits until one or more end. The
    first error is raised here."""
    pending: set = set()

    def collect(block: bool) -> None:
        while pending and (block or len(pending) >= in_flight):
            for fut in first_done(pending):
                pending.discard(fut)
                record = fut.result()
                summary.frames_built += record.frames
                log.debug(f"{record.name} committed")
                bar.update(1)

    for part in parts:
        bar.total = (bar.total or 0) + 1
        bar.refresh()
        if is_committed(out, shard_name(part.index)):
            summary.shards_skipped += 1
            bar.update(1)
            continue
        pending.add(submit(part))
        summary.shards_built += 1
        collect(block=False)
    collect(block=True)


def _run_distributed(client, parts, source, spec, out, bar, summary, in_flight, labels):
    """Build every uncommitted partition of ``parts`` as Dask tasks, at most ``in_flight``
    at once; a task whose worker is lost is retried twice."""
    from distributed import wait as wait_dask

    def submit(part):
        return client.submit(build_partition, source, part, spec, str(out), labels=labels,
                             key=f"orbitgraph-{spec.store_id}-{shard_name(part.index)}",
                             retries=2, pure=False)

    _submit_all(parts, out, bar, summary, submit, in_flight=in_flight,
                first_done=lambda pending: wait_dask(list(pending),
                                                     return_when="FIRST_COMPLETED").done)


def local_processes() -> int:
    """Worker processes for a build without a cluster: one per core this process may run
    on, on Linux, where a forked child starts in milliseconds with this process's modules
    and compiled kernels loaded (a spawned one would import them again, ~1-2 s). 0 (build
    in this process, partition by partition) on one core, in a daemon process (a
    multiprocessing or Dask worker may not have children), and on other systems, where
    fork is unsafe (macOS system libraries) or missing (Windows)."""
    cores = local_cores()
    if cores < 2 or not sys.platform.startswith("linux"):
        return 0
    if multiprocessing.current_process().daemon:  # a Pool or Dask worker: no children
        return 0
    return cores


def _init_build_process(parent: int) -> None:
    """Initializer of a forked build process.

    - Killed when the build's process dies (SIGKILL or an unhandled SIGTERM leave no chance
      to stop the workers), instead of living on, orphaned, waiting for work (Linux's
      PR_SET_PDEATHSIG).
    - Ctrl-C is the build's process's to handle (it reaches the whole process group): a
      worker finishes the partition it is building, so that its shard is committed, and an
      idle one prints no traceback of its own."""
    import ctypes

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _build_partition_in_process(*args):
    """:func:`build_partition` in a forked process. Its exception travels back pickled; one
    that cannot be rebuilt from its pickle (an ``__init__`` with other arguments) would
    break the pool and read as a dead process: it is sent as a RuntimeError naming its
    type, message and traceback instead."""
    try:
        return build_partition(*args)
    except Exception as err:
        try:
            pickle.loads(pickle.dumps(err))
        except Exception:
            message = f"{type(err).__name__}: {err}\n{''.join(traceback.format_exception(err))}"
        else:
            raise
    # raised here, outside the handler, so that it carries no __context__ (a pickler that
    # keeps contexts, as tblib's, which distributed installs, would pickle the original too)
    raise RuntimeError(message)


def _run_on_processes(workers: int, parts, source, spec, out, bar, summary, labels) -> None:
    """Build every uncommitted partition of ``parts`` on ``workers`` forked processes, one
    partition per process at a time, each on one thread: decoding and the Python parts of
    the build hold the GIL, so processes, not threads, use the cores. At most
    ``2 * workers`` partitions are queued (a gzip source's partitions carry their bytes).
    The first error stops the build: queued partitions are cancelled, running ones finish
    and stay committed for a resume."""
    context = multiprocessing.get_context("fork")
    # What each worker would otherwise import on its first partition is imported once here
    # and inherited: pyarrow imports pandas, when installed, on its first array (~0.25 s).
    pa.array([0])
    # Objects this process holds stay out of the workers' garbage collections (which would
    # otherwise touch, and so copy, every inherited page; Python's gc.freeze advice).
    caller_froze = gc.get_freeze_count() > 0
    gc.freeze()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_build_process,
                             initargs=(os.getpid(),)) as pool:
        try:
            _submit_all(parts, out, bar, summary, in_flight=2 * workers,
                        submit=lambda part: pool.submit(_build_partition_in_process, source,
                                                        part, spec, str(out), 1, labels),
                        first_done=lambda pending: wait(pending,
                                                        return_when=FIRST_COMPLETED).done)
        except BrokenProcessPool as err:
            raise BuildProcessError(
                f"{out}: a build process died (killed, or out of memory) while building a "
                "partition; the committed shards are kept: run the same build again to "
                "resume it") from err
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            if not caller_froze:  # a caller's own gc.freeze() stays in force
                gc.unfreeze()


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[tqdm]:
    """The build's bar (partitions), on stderr while it is a terminal (tqdm's
    ``disable=None``) and ``enabled``; log lines print above it meanwhile."""
    with tqdm(total=0, unit="shard", desc="building", disable=None if enabled else True) as bar:
        if bar.disable:
            yield bar
            return
        from tqdm.contrib.logging import logging_redirect_tqdm  # imports asyncio: ~40 ms

        with logging_redirect_tqdm(loggers=[logging.getLogger("orbitgraph")]):
            yield bar
