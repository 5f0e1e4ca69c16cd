"""Shards: columns built from frames, written whole and committed atomically.

A shard is a directory ``shards/shard-NNNNNN`` holding the backend's data files, the
shard's rows of the Parquet index (``index.parquet``) and its commit record
(``commit.json``: counts, checksum of the data files, statistics). Everything is written
under a temporary name and renamed into place in one step, so a reader sees a whole shard
or none; a crash leaves only a ``.tmp-*`` directory that the next build removes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from orbitgraph.errors import InputError
from orbitgraph.preprocess.frame import Frame
from orbitgraph.preprocess.graph import KnnGraphBatch
from orbitgraph.preprocess.schema import (
    BY_NAME,
    MAX_ATOMS,
    MAX_UNIT_SHIFT,
    check_columns,
    numpy_dtype,
)
from orbitgraph.preprocess.store.backends import get_backend
from orbitgraph.preprocess.store.parquet import write_parquet
from orbitgraph.preprocess.store.stats import ShardStats

COMMIT_FILE = "commit.json"
INDEX_FILE = "index.parquet"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


@dataclass(frozen=True)
class ShardRecord:
    """What the manifest says about one committed shard."""

    name: str
    frames: int
    atoms: int
    edges: int
    checksum: str  # blake2b of the data files, in the backend's order
    bytes: int

    @classmethod
    def from_dict(cls, d: dict) -> "ShardRecord":
        return cls(**{k: d[k] for k in ("name", "frames", "atoms", "edges", "checksum", "bytes")})


def columns_from_frames(frames: Sequence[Frame], graphs: KnnGraphBatch) -> dict[str, np.ndarray]:
    """The schema's columns for ``frames`` and their graphs (``graphs[b]`` is frame b's)."""
    n = len(frames)
    if len(graphs) != n:
        raise ValueError(f"{n} frames but {len(graphs)} graphs")
    n_atoms = np.array([f.n_atoms for f in frames], dtype=np.int32)
    if n_atoms.size and n_atoms.max() > MAX_ATOMS:
        raise InputError(f"a frame has more than {MAX_ATOMS} atoms; neighbour indices are uint16")
    if ((graphs.unit_shifts.size and np.abs(graphs.unit_shifts).max() > MAX_UNIT_SHIFT)
            or (graphs.next_unit_shift.size
                and np.abs(graphs.next_unit_shift).max() > MAX_UNIT_SHIFT)):
        raise InputError("a cell shift exceeds the int8 range; the cell is too small for k")

    def stack(values, shape, dtype):
        return (np.stack(values).astype(dtype) if values else np.empty((0, *shape), dtype))

    def cat(values, shape, dtype):
        return (np.concatenate(values).astype(dtype) if values else np.empty((0, *shape), dtype))

    counts = np.bincount(
        graphs.centers + np.repeat(graphs.atom_ptr[:-1], np.diff(graphs.edge_ptr)),
        minlength=int(n_atoms.sum())) if n else np.empty(0, np.int64)
    return {
        "frame_id": np.array([f.frame_id for f in frames], dtype=numpy_dtype(BY_NAME["frame_id"])),
        "material_id": np.array([f.material_id for f in frames],
                                dtype=numpy_dtype(BY_NAME["material_id"])),
        "n_atoms": n_atoms,
        "cell": stack([f.cell for f in frames], (3, 3), np.float64),
        "pbc": stack([np.asarray(f.pbc, dtype=bool) for f in frames], (3,), bool),
        "energy": np.array([f.energy for f in frames], dtype=np.float64),
        "stress": stack([f.stress if f.stress is not None else np.full((3, 3), np.nan)
                         for f in frames], (3, 3), np.float64),
        "numbers": cat([f.numbers for f in frames], (), np.uint8),
        "positions": cat([f.positions for f in frames], (3,), np.float64),
        "forces": cat([f.forces for f in frames], (3,), np.float32),
        "magmom": cat([f.magmom if f.magmom is not None else np.full(f.n_atoms, np.nan)
                       for f in frames], (), np.float32),
        "next_distance": graphs.next_distance.astype(np.float32),
        "next_neighbor": graphs.next_neighbor.astype(np.int32),
        "next_unit_shift": graphs.next_unit_shift.astype(np.int8),
        "n_edges": counts.astype(np.uint16),
        "neighbors": graphs.neighbors.astype(np.uint16),
        "unit_shifts": graphs.unit_shifts.astype(np.int8),
    }


def checksum(files: Sequence[Path], base: Path) -> tuple[str, int]:
    """blake2b over the files' paths (relative to ``base``) and bytes; (hex digest, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    total = 0
    for path in files:
        h.update(path.relative_to(base).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
                total += len(chunk)
    return h.hexdigest(), total


def shard_dir(root: Path, name: str) -> Path:
    return Path(root) / "shards" / name


def is_committed(root: Path, name: str) -> bool:
    return (shard_dir(root, name) / COMMIT_FILE).is_file()


def write_shard(root: Path, index: int, columns: dict[str, np.ndarray], backend: str,
                index_rows: pa.Table, stats: ShardStats, extra: dict | None = None) -> ShardRecord:
    """Write one shard and commit it atomically; returns its record.

    If the shard is already committed (a retried task, a rerun) the existing record is
    returned and nothing is written.
    """
    name = shard_name(index)
    final = shard_dir(root, name)
    if is_committed(root, name):
        return read_commit(root, name)[0]
    rows = check_columns(columns, where=name)
    be = get_backend(backend)
    tmp = final.parent / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        be.write(tmp, columns)
        digest, size = checksum(be.data_files(tmp), tmp)
        write_parquet(index_rows, tmp / INDEX_FILE)
        record = ShardRecord(name, rows["frame"], rows["atom"], rows["edge"], digest, size)
        commit = {"record": asdict(record), "backend": backend, "stats": stats.to_dict(),
                  **(extra or {})}
        with open(tmp / COMMIT_FILE, "w") as f:
            f.write(json.dumps(commit))  # json.dump would use the pure-Python encoder
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_committed(root, name):  # not a concurrent twin: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return read_commit(root, name)[0]
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def read_commit(root: Path, name: str) -> tuple[ShardRecord, dict]:
    with open(shard_dir(root, name) / COMMIT_FILE) as f:
        commit = json.load(f)
    return ShardRecord.from_dict(commit["record"]), commit


def remove_stale_temporaries(root: Path) -> int:
    """Delete ``.tmp-*`` leftovers of interrupted writes; returns how many."""
    shards = Path(root) / "shards"
    stale = list(shards.glob(".tmp-*")) if shards.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)
