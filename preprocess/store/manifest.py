"""The store manifest: what a store is, how it was built, and what it holds.

``manifest.json`` is written last, atomically; its presence marks a complete store.
``build.json``, written when a build starts, marks a folder as a build's output (see
:mod:`orbitgraph.preprocess.store.reuse`). The store id hashes everything that determines the
contents (:meth:`StoreSpec.identity`: the source's fingerprint, graph parameters, schema
version, label keys, split, minimum distance), so two experiments that need the same
graphs find the same store.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orbitgraph.errors import NotAStoreError, StoreError
from orbitgraph.preprocess.schema import SCHEMA_VERSION
from orbitgraph.preprocess.store.location import Location
from orbitgraph.preprocess.store.params import (
    MIN_DISTANCE,
    GraphParams,
    SplitParams,
    StoreParams,
)
from orbitgraph.preprocess.store.shard import ShardRecord

MANIFEST_FILE = "manifest.json"
BUILD_FILE = "build.json"


@dataclass(frozen=True)
class SourceInfo:
    path: str
    format: str  # a key of orbitgraph.preprocess.sources.FORMATS ("mptrj-json", "ase-db", ...)
    # hex SHA-256 of every byte of the file, or of a folder's listing of its files' digests
    # (preprocess/sources/fingerprint.py); stores of earlier versions: of sampled blocks
    fingerprint: str
    # (name, hex SHA-256) of each file read: the file's name, or its path within the folder;
    # empty in stores of earlier versions
    files: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "fingerprint": self.fingerprint,
                "files": dict(self.files)}

    @classmethod
    def from_dict(cls, d: dict) -> "SourceInfo":
        return cls(path=d["path"], format=d["format"], fingerprint=d["fingerprint"],
                   files=tuple(dict(d.get("files", {})).items()))


class StoreSpec(StoreParams):
    """Everything a build needs to know besides the frames themselves: a store's parameters
    (declared and checked in :class:`StoreParams`) and its source."""

    source: SourceInfo

    def identity(self) -> dict:
        """What the store id hashes: everything that determines the store's contents (the
        source by its fingerprint; not its path, the backend or the shard size)."""
        return {"schema_version": SCHEMA_VERSION, "source": self.source.fingerprint,
                "graph": self.graph.to_dict(), "labels": self.labels.to_dict(),
                "split": self.split.to_dict(), "min_distance": self.min_distance}

    @property
    def store_id(self) -> str:
        content = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(content).hexdigest()[:16]


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    store_id: str
    backend: str
    graph: GraphParams
    energy_key: str
    split: SplitParams
    source: SourceInfo
    code_version: str
    # frames, atoms, edges, shards, quarantined; labels_not_stored, labels_converted and
    # labels_masked (optional labels stored as NaN): {what: frames} (see
    # preprocess.sources.labels)
    counts: dict
    shards: tuple[ShardRecord, ...]
    statistics: dict
    min_distance: float = MIN_DISTANCE
    build: dict = field(default_factory=dict)  # wall time, workers: informative only
    labels: dict = field(default_factory=dict)  # the keys read (a LabelPlan's fields)
    identity: dict = field(default_factory=dict)  # what store_id hashes ({} in older stores)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["graph"] = self.graph.to_dict()
        d["split"] = self.split.to_dict()
        d["source"] = self.source.to_dict()
        d["shards"] = [asdict(s) for s in self.shards]
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> "Manifest":
        version = d.get("schema_version")
        if not isinstance(version, int):
            raise StoreError(f"{where}: no integer schema_version; not an orbitgraph store?")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{where}: written with store schema {version}, this orbitgraph "
                             f"reads schema <= {SCHEMA_VERSION}; upgrade orbitgraph")
        if version < SCHEMA_VERSION:
            lacks = ("lacks the first neighbour candidate not kept that models need since "
                     "schema 2 (for forces that are the exact derivatives of the energy)"
                     if version < 2 else
                     "names the integer cell shifts `shifts`/`next_shift` (since schema 3 "
                     "`unit_shifts`/`next_unit_shift`)")
            raise StoreError(
                f"{where}: written with store schema {version}, which {lacks}; rebuild the "
                "store with `orbitgraph build` (or delete it and rerun `orbitgraph run`)")
        try:
            e0 = d["statistics"].get("atomic_energies_eV", {})
            stats = {**d["statistics"], "atomic_energies_eV": {int(z): v for z, v in e0.items()}}
            return cls(schema_version=version, store_id=d["store_id"], backend=d["backend"],
                       graph=GraphParams.from_dict(d["graph"]), energy_key=d["energy_key"],
                       split=SplitParams(**d["split"]), source=SourceInfo.from_dict(d["source"]),
                       code_version=d["code_version"], counts=dict(d["counts"]),
                       shards=tuple(ShardRecord.from_dict(s) for s in d["shards"]),
                       statistics=stats, min_distance=float(d.get("min_distance", MIN_DISTANCE)),
                       build=dict(d.get("build", {})), labels=dict(d.get("labels", {})),
                       identity=dict(d.get("identity", {})))
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(f"{where}: damaged manifest ({type(err).__name__}: {err})") from None


def write_manifest(root: Path, manifest: Manifest) -> None:
    path = Path(root) / MANIFEST_FILE
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest.to_dict(), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(root: "str | Path | Location") -> Manifest:
    """The manifest of the store at ``root`` (a local path, a URL or a :class:`Location`)."""
    loc = Location(root)
    if not loc.exists():
        raise StoreError(f"{loc}: no such store")
    if loc.is_local and loc.path.is_file():
        raise NotAStoreError(f"{loc}: a file, not a store (a store is a folder holding "
                             f"{MANIFEST_FILE})")
    if not loc.is_file(MANIFEST_FILE):
        if not (loc.is_file(BUILD_FILE) or (loc / "shards").exists()):
            raise NotAStoreError(f"{loc}: not a store (no {MANIFEST_FILE}, nor the {BUILD_FILE} "
                                 "or shards/ of a build started there)")
        raise StoreError(f"{loc}: no {MANIFEST_FILE}; the store is incomplete (an interrupted "
                         "build? run the build again to finish it)")
    where = f"{loc}/{MANIFEST_FILE}"
    try:
        data = json.loads(loc.read_bytes(MANIFEST_FILE))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{where}: damaged manifest, not valid JSON ({err})") from None
    return Manifest.from_dict(data, where=where)


@functools.cache
def code_version() -> str:
    try:
        from importlib.metadata import version
        return version("orbitgraph")
    except Exception:  # running from a source tree that is not installed
        return "unknown"
