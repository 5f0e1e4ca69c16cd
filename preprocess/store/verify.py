"""`orbitgraph verify`: re-read every shard, check it, and rebuild a sample of graphs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orbitgraph.errors import StoreError
from orbitgraph.preprocess.graph import knn_graph
from orbitgraph.preprocess.schema import check_columns
from orbitgraph.preprocess.store.backends import get_backend
from orbitgraph.preprocess.store.reader import ShardData, open_store
from orbitgraph.preprocess.store.shard import checksum, is_committed, shard_dir


@dataclass
class VerifyReport:
    shards: int = 0
    frames: int = 0
    rebuilt: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_shard(data: ShardData, where: str) -> list[str]:
    c = data.columns
    problems = []
    if np.any(c["n_atoms"] < 0):
        problems.append(f"{where}: negative n_atoms")
    # neighbour indices in range of their frame; no shift along an open axis
    edge_frame = np.repeat(np.repeat(np.arange(data.n_frames), c["n_atoms"].astype(np.int64)),
                           c["n_edges"].astype(np.int64))
    if c["neighbors"].size:
        too_big = c["neighbors"].astype(np.int64) >= c["n_atoms"][edge_frame]
        if np.any(too_big):
            problems.append(f"{where}: {int(too_big.sum())} neighbour indices out of range "
                            f"(first in frame {c['frame_id'][edge_frame[np.argmax(too_big)]]})")
        open_axes = ~c["pbc"][edge_frame]
        if np.any(c["unit_shifts"][open_axes] != 0):
            problems.append(f"{where}: cell shifts along non-periodic axes")
    # the first candidate not kept: in range, or -1 exactly where next_distance is inf
    atom_frame = np.repeat(np.arange(data.n_frames), c["n_atoms"].astype(np.int64))
    nxt = c["next_neighbor"].astype(np.int64)
    bad_next = (nxt >= c["n_atoms"][atom_frame]) | (nxt < -1) | (
        (nxt == -1) != np.isinf(c["next_distance"]))
    if np.any(bad_next):
        problems.append(f"{where}: {int(bad_next.sum())} next_neighbor values out of range or "
                        "inconsistent with next_distance (first in frame "
                        f"{c['frame_id'][atom_frame[np.argmax(bad_next)]]})")
    for name in ("cell", "positions", "energy"):
        if not np.all(np.isfinite(c[name])):
            problems.append(f"{where}: non-finite values in {name}")
    if len(set(c["frame_id"].tolist())) != data.n_frames:
        problems.append(f"{where}: duplicate frame ids")
    return problems


def verify_store(path: str | Path, sample: int = 64, seed: int = 0) -> VerifyReport:
    """Check checksums, structure, counts and a rebuilt sample of graphs; never raises for
    damage it finds, it reports it (a missing or unreadable manifest does raise)."""
    store = open_store(path)
    if not store.location.is_local:
        raise StoreError(f"{path}: verify reads a local store (it checksums the shard files); "
                         "verify before uploading, or copy the store to local disk")
    m = store.manifest
    report = VerifyReport()
    backend = get_backend(m.backend)
    totals = {"frames": 0, "atoms": 0, "edges": 0}
    rng = np.random.default_rng(seed)
    per_shard = max(1, sample // max(len(m.shards), 1)) if sample else 0
    for s, record in enumerate(m.shards):
        where = record.name
        report.shards += 1
        directory = shard_dir(store.root, record.name)
        if not is_committed(store.root, record.name):
            report.problems.append(f"{where}: missing")
            continue
        try:
            digest, size = checksum(backend.data_files(directory), directory)
        except OSError as err:
            report.problems.append(f"{where}: cannot read data files ({err})")
            continue
        if digest != record.checksum:
            report.problems.append(f"{where}: checksum mismatch (stored {record.checksum}, "
                                   f"found {digest}); the shard is damaged")
            continue
        try:
            columns = backend.read(directory)
            rows = check_columns(columns, where=where)
        except Exception as err:
            report.problems.append(f"{where}: unreadable ({type(err).__name__}: {err})")
            continue
        data = ShardData.from_columns(record.name, columns)
        counted = (rows["frame"], rows["atom"], rows["edge"])
        if counted != (record.frames, record.atoms, record.edges):
            report.problems.append(f"{where}: counts {rows} differ from the manifest's record")
        report.problems.extend(_check_shard(data, where))
        idx_rows = store.index.filter(np.asarray(store.index["shard"]) == s)
        if idx_rows.num_rows != data.n_frames or \
                idx_rows["frame_id"].to_pylist() != [str(x) for x in columns["frame_id"]]:
            report.problems.append(f"{where}: index rows do not match the shard")
        for key in totals:
            totals[key] += rows[{"frames": "frame", "atoms": "atom", "edges": "edge"}[key]]
        report.frames += data.n_frames
        # rebuild a sample of graphs from the stored positions and cell
        for row in rng.choice(data.n_frames, size=min(per_shard, data.n_frames), replace=False):
            fr = data.frame(int(row))
            g = knn_graph(fr["cell"], fr["positions"], pbc=fr["pbc"], params=m.graph)
            same = (np.array_equal(g.neighbors, fr["neighbors"].astype(np.int64))
                    and np.array_equal(g.unit_shifts, fr["unit_shifts"].astype(np.int64))
                    and np.array_equal(g.counts, fr["n_edges"].astype(np.int64))
                    and np.array_equal(g.next_distance.astype(np.float32), fr["next_distance"])
                    and np.array_equal(g.next_neighbor, fr["next_neighbor"].astype(np.int64))
                    and np.array_equal(g.next_unit_shift, fr["next_unit_shift"].astype(np.int64)))
            if not same:
                report.problems.append(f"{where}: frame {fr['frame_id']}: stored edges or "
                                       "first candidates not kept differ from the rebuilt graph")
            report.rebuilt += 1
    for key, value in totals.items():
        if value != m.counts[key] and not any("checksum" in p or "unreadable" in p
                                               for p in report.problems):
            report.problems.append(f"manifest counts {m.counts[key]} {key}, shards hold {value}")
    return report
