"""Writing a store: one shard per partition of frames, then the manifest.

``write_frames_shard`` is a pure function of (frames, spec, shard index) that commits one
shard, so a scheduler may retry it or run it twice; ``finalize_store`` reduces the shards'
statistics and index fragments and writes ``index.parquet``, ``quarantine.parquet`` and,
last, ``manifest.json``.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
from ase.data import chemical_symbols

from orbitgraph.errors import StoreError
from orbitgraph.preprocess.frame import Frame
from orbitgraph.preprocess.graph import KnnGraphBatch
from orbitgraph.preprocess.schema import SCHEMA_VERSION
from orbitgraph.preprocess.store.manifest import (
    Manifest,
    StoreSpec,
    code_version,
    write_manifest,
)
from orbitgraph.preprocess.store.params import SplitParams
from orbitgraph.preprocess.store.parquet import read_parquet, write_parquet
from orbitgraph.preprocess.store.shard import (
    INDEX_FILE,
    ShardRecord,
    columns_from_frames,
    is_committed,
    read_commit,
    shard_dir,
    shard_name,
    write_shard,
)
from orbitgraph.preprocess.store.stats import ShardStats, element_counts

INDEX_NAME = "index.parquet"
QUARANTINE_NAME = "quarantine.parquet"

INDEX_SCHEMA = pa.schema([
    ("frame_id", pa.string()), ("material_id", pa.string()), ("shard", pa.int32()),
    ("row", pa.int32()), ("n_atoms", pa.int32()), ("n_edges", pa.int64()),
    ("energy", pa.float64()), ("energy_per_atom", pa.float64()),
    ("elements", pa.list_(pa.string())), ("composition", pa.string()), ("split", pa.string()),
    ("config_type", pa.string()),
])
"""The index: one row per frame. ``config_type`` is the source's (extxyz ``config_type``),
null where it has none; a store written before the column existed reads as all null
(:func:`conform_index`)."""
QUARANTINE_SCHEMA = pa.schema([("material_id", pa.string()), ("frame_id", pa.string()),
                               ("reason", pa.string())])


def conform_index(table: pa.Table) -> pa.Table:
    """An index table (a store's or a shard's ``index.parquet``) as :data:`INDEX_SCHEMA`:
    a column it lacks that the schema added later (``config_type``) is added as nulls; the
    types cast where they differ. Raises what ``pyarrow.Table.cast`` raises for any other
    mismatch (a damaged or foreign file)."""
    for name in ("config_type",):
        if name not in table.column_names:
            table = table.append_column(pa.field(name, pa.string()),
                                        pa.nulls(table.num_rows, pa.string()))
    return table if table.schema.equals(INDEX_SCHEMA) else table.cast(INDEX_SCHEMA)


def split_position(material_id: str, seed: int) -> float:
    """Where a material falls in [0, 1), from a hash of (seed, material id): the test split
    takes [0, test_fraction), the val split the next val_fraction, train the rest."""
    h = hashlib.blake2b(f"{seed}:{material_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def split_of(material_id: str, split: SplitParams) -> str:
    """'train', 'val' or 'test' by :func:`split_position`: all frames of a material share a
    split, and the assignment never depends on which other materials exist."""
    u = split_position(material_id, split.seed)
    if u < split.test_fraction:
        return "test"
    if u < split.test_fraction + split.val_fraction:
        return "val"
    return "train"


def empty_splits(material_ids: Sequence[str], split: SplitParams) -> dict[str, str]:
    """{split: why it holds no frames and what would give it some} for each of 'test',
    'val' and 'train' that no frame of ``material_ids`` (one entry per frame) falls in, e.g.
    ``"the test split holds no frames: test_fraction 0.05 takes none of the 32 materials;
    test_fraction 0.072 would give it 1 material (5 frames)"``. The fraction named is
    the smallest of two significant digits that does (train: the largest sum)."""
    frames = Counter(material_ids)
    u = {mid: split_position(mid, split.seed) for mid in frames}
    t, v = split.test_fraction, split.val_fraction
    have = {split_of(mid, split) for mid in frames}
    out = {}
    for name in ("test", "val", "train"):
        if name in have or not frames:
            continue
        if name == "train":
            head = (f"val_fraction + test_fraction {t + v:g} take all {len(frames)} "
                    "materials")
            value = _below(max(u.values()))
            gets = [mid for mid in frames if u[mid] >= value]
            advice = f"val_fraction + test_fraction {value:g}"
        else:
            head = (f"{name}_fraction {getattr(split, f'{name}_fraction'):g} takes none of "
                    f"the {len(frames)} materials")
            start = 0.0 if name == "test" else t
            rest = [x for x in u.values() if x >= start]
            if not rest:
                out[name] = (f"the {name} split holds no frames: {head}; every material "
                             "falls in the test split")
                continue
            value = _above(min(rest) - start)
            gets = [mid for mid in frames if start <= u[mid] < start + value]
            advice = f"{name}_fraction {value:g}"
        n = sum(frames[mid] for mid in gets)
        out[name] = (f"the {name} split holds no frames: {head}; {advice} would give it "
                     f"{len(gets)} material{'s' * (len(gets) != 1)} ({n} "
                     f"frame{'s' * (n != 1)})")
    return out


def _above(x: float) -> float:
    """The smallest number of two significant digits above ``x`` (>= 0)."""
    step = 10.0 ** (math.floor(math.log10(max(x, 1e-12))) - 1)
    value = float(f"{(math.floor(x / step) + 1) * step:.12g}")
    return value if value > x else float(f"{value + step:.12g}")


def _below(x: float) -> float:
    """The largest number of two significant digits at most ``x`` (> 0)."""
    step = 10.0 ** (math.floor(math.log10(max(x, 1e-12))) - 1)
    value = float(f"{math.floor(x / step) * step:.12g}")
    return value if value <= x else float(f"{value - step:.12g}")


def composition(numbers: np.ndarray) -> tuple[list[str], str]:
    """Sorted element symbols and a formula with counts, e.g. (['Fe', 'O'], 'Fe2O3')."""
    counts = element_counts(numbers, [len(numbers)])[0]
    present = sorted((chemical_symbols[z], int(counts[z])) for z in np.flatnonzero(counts))
    formula = "".join(f"{symbol}{n if n > 1 else ''}" for symbol, n in present)
    return [symbol for symbol, _ in present], formula


def _compositions(frames: Sequence[Frame]) -> tuple[list[list[str]], list[str]]:
    """:func:`composition` of each frame, computed once per distinct atom list (the frames
    of a relaxation trajectory share theirs)."""
    seen: dict[bytes, tuple[list[str], str]] = {}
    elements, formulas = [], []
    for f in frames:
        key = np.asarray(f.numbers, dtype=np.int64).tobytes()
        if key not in seen:
            seen[key] = composition(f.numbers)
        symbols, formula = seen[key]
        elements.append(list(symbols))
        formulas.append(formula)
    return elements, formulas


def write_frames_shard(root: Path, index: int, frames: Sequence[Frame], spec: StoreSpec,
                       graphs: KnnGraphBatch, quarantine: Sequence[dict] = (),
                       label_counts: dict | None = None) -> ShardRecord:
    """Commit ``frames`` and their ``graphs`` (built with ``spec.graph``, as the build does)
    as shard ``index``.

    ``quarantine`` rows (material_id, frame_id, reason) of this partition and
    ``label_counts`` ({"not_stored" | "converted" | "masked": {what: frames}}) are kept with
    the shard's commit record and gathered by :func:`finalize_store`.
    """
    root = Path(root)
    if is_committed(root, shard_name(index)):
        return read_commit(root, shard_name(index))[0]
    columns = columns_from_frames(frames, graphs)
    atom_ptr = np.concatenate(([0], np.cumsum(columns["n_atoms"], dtype=np.int64)))
    edges_per_atom = np.concatenate(([0], np.cumsum(columns["n_edges"], dtype=np.int64)))
    n_edges_frame = np.diff(edges_per_atom[atom_ptr])
    splits = [split_of(f.material_id, spec.split) for f in frames]
    elements, formulas = _compositions(frames)
    index_rows = pa.Table.from_pydict({
        "frame_id": [f.frame_id for f in frames],
        "material_id": [f.material_id for f in frames],
        "shard": np.full(len(frames), index, dtype=np.int32),
        "row": np.arange(len(frames), dtype=np.int32),
        "n_atoms": columns["n_atoms"],
        "n_edges": n_edges_frame.astype(np.int64),
        "energy": columns["energy"],
        "energy_per_atom": columns["energy"] / np.maximum(columns["n_atoms"], 1),
        "elements": list(elements),
        "composition": list(formulas),
        "split": splits,
        "config_type": [f.config_type for f in frames],
    }, schema=INDEX_SCHEMA)
    stats = ShardStats()
    stats.add_frames([f.numbers for f in frames], [f.energy for f in frames],
                     [f.forces for f in frames], n_edges_frame,
                     [s == "train" for s in splits])
    return write_shard(root, index, columns, spec.backend, index_rows, stats,
                       extra={"quarantine": list(quarantine), "labels": label_counts or {}})


def finalize_store(root: Path, spec: StoreSpec, n_shards: int, build_info: dict | None = None,
                   labels: dict | None = None) -> Manifest:
    """Check that shards 0..n_shards-1 are committed, gather them and write the manifest.
    ``labels``: the keys the frames were read with (a LabelPlan's fields)."""
    root = Path(root)
    missing = [shard_name(i) for i in range(n_shards) if not is_committed(root, shard_name(i))]
    if missing:
        raise StoreError(f"{root}: cannot finalise, {len(missing)} shards are not committed "
                         f"(first: {missing[0]})")
    records, total, tables, quarantine = [], ShardStats(), [], []
    label_counts: dict[str, dict[str, int]] = {"not_stored": {}, "converted": {}, "masked": {}}
    for i in range(n_shards):
        record, commit = read_commit(root, shard_name(i))
        if commit["backend"] != spec.backend:
            raise StoreError(f"{root}: {record.name} was written by backend {commit['backend']!r},"
                             f" this build uses {spec.backend!r}")
        records.append(record)
        total = total + ShardStats.from_dict(commit["stats"])
        tables.append(conform_index(read_parquet(shard_dir(root, record.name) / INDEX_FILE)))
        quarantine.extend(commit.get("quarantine", []))
        for category, counts in commit.get("labels", {}).items():
            for what, n in counts.items():
                label_counts[category][what] = label_counts[category].get(what, 0) + n
    index = pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()
    ids = index.column("frame_id").to_pylist()
    if len(set(ids)) != len(ids):
        seen, dup = set(), None
        for fid in ids:
            if fid in seen:
                dup = fid
                break
            seen.add(fid)
        raise StoreError(f"{root}: frame id {dup!r} occurs more than once in the source")
    write_parquet(index, root / INDEX_NAME)
    write_parquet(pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA),
                  root / QUARANTINE_NAME)
    labels = dict(labels or {"energy": spec.energy_key})
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, store_id=spec.store_id, backend=spec.backend,
        graph=spec.graph, energy_key=labels["energy"], split=spec.split, source=spec.source,
        code_version=code_version(),
        counts={"frames": total.frames, "atoms": total.atoms, "edges": total.edges,
                "shards": n_shards, "quarantined": len(quarantine),
                "labels_not_stored": label_counts["not_stored"],
                "labels_converted": label_counts["converted"],
                "labels_masked": label_counts["masked"]},
        shards=tuple(records), statistics=total.summary(), min_distance=spec.min_distance,
        build=dict(build_info or {}), labels=labels, identity=spec.identity())
    write_manifest(root, manifest)
    return manifest
