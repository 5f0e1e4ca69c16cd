"""Reading a store: frames by position or id, shards in order, subsets from the index.

Stores are read from a local directory or, through fsspec, from any URL (object storage).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orbitgraph.errors import ConfigError, StoreError
from orbitgraph.preprocess.graph import concat_ranges
from orbitgraph.preprocess.schema import fields_at
from orbitgraph.preprocess.store.backends import get_backend
from orbitgraph.preprocess.store.location import Location
from orbitgraph.preprocess.store.manifest import Manifest, read_manifest
from orbitgraph.preprocess.store.parquet import read_parquet
from orbitgraph.preprocess.store.shard import COMMIT_FILE
from orbitgraph.preprocess.store.writer import INDEX_NAME, QUARANTINE_NAME, conform_index

if TYPE_CHECKING:
    from ase import Atoms


@dataclass(frozen=True)
class ShardData:
    """The columns of one shard with its CSR pointers.

    ``atom_ptr`` (F + 1,) delimits the atoms of each frame; ``edge_ptr`` (N + 1,) the edges
    of each atom, so frame r owns edges ``edge_ptr[atom_ptr[r]]:edge_ptr[atom_ptr[r + 1]]``.
    """

    name: str
    columns: dict[str, np.ndarray]
    atom_ptr: np.ndarray
    edge_ptr: np.ndarray

    @classmethod
    def from_columns(cls, name: str, columns: dict[str, np.ndarray]) -> "ShardData":
        atom_ptr = np.concatenate(([0], np.cumsum(columns["n_atoms"], dtype=np.int64)))
        edge_ptr = np.concatenate(([0], np.cumsum(columns["n_edges"], dtype=np.int64)))
        return cls(name, columns, atom_ptr, edge_ptr)

    @property
    def n_frames(self) -> int:
        return int(self.atom_ptr.shape[0] - 1)

    def frame(self, row: int) -> dict[str, np.ndarray]:
        """Frame ``row`` as a dict of the schema's fields (edge fields local to the frame)."""
        a0, a1 = int(self.atom_ptr[row]), int(self.atom_ptr[row + 1])
        e0, e1 = int(self.edge_ptr[a0]), int(self.edge_ptr[a1])
        out: dict[str, np.ndarray] = {}
        for f in fields_at("frame"):
            out[f.name] = self.columns[f.name][row]
        for f in fields_at("atom"):
            out[f.name] = self.columns[f.name][a0:a1]
        for f in fields_at("edge"):
            out[f.name] = self.columns[f.name][e0:e1]
        return out

    def take(self, rows: np.ndarray | list[int]) -> dict[str, np.ndarray]:
        """Rows ``rows`` (in that order) as one block of columns: frame fields (F, ...),
        atom fields (N, ...) and edge fields (E, ...) of those frames, concatenated; edge
        fields stay local to their frame (see :func:`orbitgraph.train.collate.collate_columns`)."""
        rows = np.asarray(rows, dtype=np.int64)
        frame_edge_ptr = self.edge_ptr[self.atom_ptr]
        atoms = concat_ranges(self.atom_ptr[rows], self.atom_ptr[rows + 1])
        edges = concat_ranges(frame_edge_ptr[rows], frame_edge_ptr[rows + 1])
        out: dict[str, np.ndarray] = {}
        for level, index in (("frame", rows), ("atom", atoms), ("edge", edges)):
            for f in fields_at(level):
                out[f.name] = self.columns[f.name][index]
        return out


def centers_of(n_edges: np.ndarray) -> np.ndarray:
    """int64 (E,): the centre atom of each edge, from the per-atom edge counts."""
    return np.repeat(np.arange(n_edges.shape[0], dtype=np.int64), n_edges.astype(np.int64))


class GraphStore:
    """A complete store, or a subset of one (same API).

    ``len(store)`` frames; ``store[i]`` the i-th frame of the (sub)set as a dict;
    ``store.get(frame_id)``; ``store.iter_shards()`` the shards holding the selection, in
    order, as :class:`ShardData` with the selected rows; ``store.subset(...)``.
    """

    def __init__(self, root: "Path | Location", manifest: Manifest, index: pa.Table,
                 cache_shards: int = 4):
        self.location = Location(root)
        self.manifest = manifest
        self.index = index
        self._backend = get_backend(manifest.backend)
        self._cache: OrderedDict[int, ShardData] = OrderedDict()
        self._cache_size = cache_shards
        self._shard = index.column("shard").to_numpy()
        self._row = index.column("row").to_numpy()
        self._by_id: dict[str, int] | None = None

    @property
    def root(self) -> Path | str:
        """The local directory (a Path), or the URL of a remote store."""
        return self.location.path if self.location.is_local else self.location.url

    # ---------------------------------------------------------------- frames
    def __len__(self) -> int:
        return self.index.num_rows

    def __getitem__(self, position: int) -> dict[str, np.ndarray]:
        if not -len(self) <= position < len(self):
            raise IndexError(f"frame {position} out of range for {len(self)} frames")
        position %= len(self)
        return self.read_shard(int(self._shard[position])).frame(int(self._row[position]))

    def get(self, frame_id: str) -> dict[str, np.ndarray]:
        if self._by_id is None:
            ids = self.index.column("frame_id").to_pylist()
            self._by_id = {fid: i for i, fid in enumerate(ids)}
        try:
            return self[self._by_id[frame_id]]
        except KeyError:
            where = "this store subset" if self.is_subset else "this store"
            raise KeyError(f"frame {frame_id!r} is not in {where}") from None

    def atoms(self, position: int) -> "Atoms":
        """The frame at ``position`` as ``ase.Atoms`` with its labels (energy eV, forces
        eV/Å, stress eV/Å³ with ASE's sign) on a SinglePointCalculator; see
        :func:`orbitgraph.preprocess.store.atoms.frame_to_atoms`. ``atoms.info`` holds
        ``config_type`` too where the index has one."""
        from orbitgraph.preprocess.store.atoms import frame_to_atoms  # ASE only when asked
        atoms = frame_to_atoms(self[position])
        config_type = self.index.column("config_type")[position % len(self)].as_py()
        if config_type is not None:
            atoms.info["config_type"] = config_type
        return atoms

    def iter_atoms(self) -> Iterator["Atoms"]:
        """Every frame of the (sub)set as ``ase.Atoms``, in index order."""
        return (self.atoms(i) for i in range(len(self)))

    @property
    def frame_ids(self) -> list[str]:
        return self.index.column("frame_id").to_pylist()

    @property
    def is_subset(self) -> bool:
        return self.index.num_rows != self.manifest.counts["frames"]

    # ---------------------------------------------------------------- shards
    @property
    def shard_indices(self) -> np.ndarray:
        """Shards that hold at least one selected frame, ascending."""
        return np.unique(self._shard)

    def read_shard(self, shard: int, cache: bool = True) -> ShardData:
        """All rows of shard ``shard``; the last few read are kept unless ``cache=False``
        (streaming readers that manage shard lifetimes themselves)."""
        if shard in self._cache:
            self._cache.move_to_end(shard)
            return self._cache[shard]
        if not 0 <= shard < len(self.manifest.shards):
            raise IndexError(f"shard {shard} out of range for {len(self.manifest.shards)} shards")
        record = self.manifest.shards[shard]
        directory = self.location / "shards" / record.name
        if not directory.is_file(COMMIT_FILE):
            raise StoreError(f"{self.root}: {record.name} is listed in the manifest but missing")
        try:
            columns = self._backend.read(directory)
        except Exception as err:
            raise StoreError(f"{self.root}: {record.name} cannot be read ({type(err).__name__}: "
                             f"{err}); run `orbitgraph verify` on the store") from None
        data = ShardData.from_columns(record.name, columns)
        if data.n_frames != record.frames or int(data.edge_ptr[-1]) != record.edges:
            raise StoreError(f"{self.root}: {record.name} holds {data.n_frames} frames and "
                             f"{int(data.edge_ptr[-1])} edges, the manifest says "
                             f"{record.frames} and {record.edges}")
        if not cache:
            return data
        self._cache[shard] = data
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return data

    def shard_rows(self, shard: int) -> np.ndarray:
        """Rows of ``shard`` that belong to this (sub)set, in index order."""
        return self._row[self._shard == shard]

    def iter_shards(self, shards: Iterable[int] | None = None
                    ) -> Iterator[tuple[int, ShardData, np.ndarray]]:
        """Yield (shard index, shard data, selected rows) for each shard, in order."""
        for s in (self.shard_indices if shards is None else shards):
            yield int(s), self.read_shard(int(s)), self.shard_rows(int(s))

    # ---------------------------------------------------------------- subsets
    def subset(self, *, split: str | Iterable[str] | None = None,
               frame_ids: Iterable[str] | None = None,
               material_ids: Iterable[str] | None = None,
               min_atoms: int | None = None, max_atoms: int | None = None,
               contains_elements: Iterable[str] | None = None,
               only_elements: Iterable[str] | None = None,
               where: pc.Expression | None = None) -> "GraphStore":
        """Frames matching every given filter, selected from the index without opening shards.

        ``contains_elements``: frames holding all of these; ``only_elements``: frames made of
        these and nothing else; ``where``: any pyarrow expression over the index columns.
        """
        table = self.index
        mask = pa.array(np.ones(table.num_rows, dtype=bool))
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            unknown = set(splits) - {"train", "val", "test"}
            if unknown:
                raise ConfigError(f"subset: unknown split {sorted(unknown)}; "
                                  "expected train, val, test", "split")
            mask = pc.and_(mask, pc.is_in(table["split"], pa.array(splits)))
        if frame_ids is not None:
            wanted = pa.array(list(frame_ids), pa.string())
            mask = pc.and_(mask, pc.is_in(table["frame_id"], wanted))
        if material_ids is not None:
            mask = pc.and_(mask, pc.is_in(table["material_id"],
                                          pa.array(list(material_ids), pa.string())))
        if min_atoms is not None:
            mask = pc.and_(mask, pc.greater_equal(table["n_atoms"], min_atoms))
        if max_atoms is not None:
            mask = pc.and_(mask, pc.less_equal(table["n_atoms"], max_atoms))
        if contains_elements is not None or only_elements is not None:
            elements = table["elements"].to_pylist()
            keep = np.ones(len(elements), dtype=bool)
            if contains_elements is not None:
                want = set(contains_elements)
                keep &= np.array([want <= set(e) for e in elements], dtype=bool)
            if only_elements is not None:
                allowed = set(only_elements)
                keep &= np.array([set(e) <= allowed for e in elements], dtype=bool)
            mask = pc.and_(mask, pa.array(keep))
        selected = table.filter(mask)
        if where is not None:
            selected = selected.filter(where)
        return GraphStore(self.location, self.manifest, selected, self._cache_size)

    def quarantine(self) -> pa.Table:
        return _read_parquet(self.location, QUARANTINE_NAME)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"GraphStore({str(self.root)!r}, {len(self)} frames, backend={m.backend}, "
                f"k={m.graph.k}, ties={m.graph.ties}, id={m.store_id})")


def _read_parquet(loc: Location, name: str, schema: pa.Schema | None = None) -> pa.Table:
    if loc.is_local:
        return read_parquet(loc.path / name, schema)
    return read_parquet(pa.BufferReader(loc.read_bytes(name)), schema)


def open_store(path: "str | Path | Location",
               storage_options: dict[str, Any] | None = None) -> GraphStore:
    """Open a complete store: a local directory or an fsspec URL (``s3://bucket/store``...).

    ``storage_options`` go to fsspec for URLs (credentials, endpoint). Raises StoreError if
    the store is missing, incomplete, damaged or written by a newer schema.
    """
    loc = Location(path, storage_options) if not isinstance(path, Location) else path
    manifest = read_manifest(loc)
    try:
        index = conform_index(_read_parquet(loc, INDEX_NAME))
    except Exception as err:
        raise StoreError(f"{loc}: cannot read {INDEX_NAME} ({type(err).__name__}: {err})") from None
    if index.num_rows != manifest.counts["frames"]:
        raise StoreError(f"{loc}: {INDEX_NAME} has {index.num_rows} rows, the manifest counts "
                         f"{manifest.counts['frames']} frames")
    return GraphStore(loc, manifest, index)
