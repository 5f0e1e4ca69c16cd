"""ASE databases: SQLite ``.db`` files (:mod:`ase.db`) and fairchem's ``.aselmdb`` files (the
LMDB backend of the ``ase-db-backends`` package, as OMat24 ships), one file, a folder of
them or a glob pattern (:mod:`orbitgraph.preprocess.sources.files`).

Each row is read as ASE reads it (``row.toatoms()``: positions and cell in Å, the stored
calculator results under their ASE names: ``energy`` eV, ``forces`` eV/Å, ``stress`` eV/Å³
with ASE's sign as 6 Voigt values, ``magmoms`` μB); the row's key-value pairs and its
``data`` are added to ``atoms.info``, as fairchem's ``AseDBDataset`` does. The labels are
then read by the one rule of :mod:`orbitgraph.preprocess.sources.labels`: by default the
calculator's ``energy`` and ``forces`` (required) and ``stress`` (optional; required when
the build names it); ``--energy-key`` and the others may name a key-value pair or a
``data`` entry instead (a per-atom array of ``data`` is looked up there too).

Ids: the frame id is the row's ``frame_id`` (a key-value pair or ``data`` entry), else
``{file}:{row id}`` (``file`` relative to the source's folder, or the file's name); the
material id is the row's ``material_id``, ``mp_id`` or ``sid`` (fairchem's system id), else
the frame id.

A row that cannot be used (a label absent or of the wrong shape, NaN energy, no cell as
for a molecule, a row ASE cannot read) is quarantined with its reason, which ends with the
row's place, ``(row {id} of {file})``. SQLite stores a NaN number as NULL: a NaN energy
written to a ``.db`` file reads back as missing (``energy: missing``); a file that is not
an ASE database of its kind stops the build with an InputError naming it. Files are opened
read-only (SQLite ``mode=ro``; LMDB without its lock file), so a read-only dataset folder
works and nothing is written beside the source.

The plan (:func:`~orbitgraph.preprocess.sources.files.row_partitions`) takes each file's
row count (``SELECT COUNT(*)``; LMDB: its ``nextid`` and deleted ids) one file at a time as
the build consumes it; a worker reads its ``(file, first row, end row)`` ranges by position
in id order (SQLite ``ORDER BY id LIMIT OFFSET``; LMDB: the backend's ``ids`` list).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterator

from orbitgraph.errors import InputError, RecordError, SourceChangedError
from orbitgraph.preprocess.frame import Frame
from orbitgraph.preprocess.sources.ase_atoms import frame_from_atoms
from orbitgraph.preprocess.sources.base import Partition, Quarantined
from orbitgraph.preprocess.sources.files import display_name, row_partitions, source_files
from orbitgraph.preprocess.sources.labels import LabelPlan
from orbitgraph.preprocess.store.params import LabelKeys

SQLITE_SUFFIXES = (".db",)
LMDB_SUFFIXES = (".aselmdb",)
SUFFIXES = SQLITE_SUFFIXES + LMDB_SUFFIXES
MATERIAL_KEYS = ("material_id", "mp_id", "sid")  # the first present names the material
FILES = ".db or .aselmdb files"
NEEDS_BACKENDS = ("reading .aselmdb files needs the ase-db-backends package: "
                  "pip install 'orbitgraph[omat]' (or pip install ase-db-backends)")


def is_ase_db_name(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def is_lmdb(file: str) -> bool:
    return file.lower().endswith(LMDB_SUFFIXES)


class AseDbSource:
    format = "ase-db"
    material_keys = MATERIAL_KEYS
    frames_without_material_id = 0  # the plan counts rows without reading them

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.files = source_files(path, is_ase_db_name, FILES)
        if any(map(is_lmdb, self.files)):
            try:
                import ase_db_backends.aselmdb  # noqa: F401
            except ImportError:
                raise InputError(f"{self.path}: {NEEDS_BACKENDS}") from None

    # ------------------------------------------------------------------ the plan

    def row_count(self, file: str) -> int:
        """The rows of one file (opens it read-only). Raises InputError for a file that is
        not an ASE database of the kind its name says."""
        with _open(file) as db:
            return db.count()

    def partitions(self, frames_per_partition: int) -> Iterator[Partition]:
        """Partitions of ``frames_per_partition`` rows by file and row range; each file is
        opened (for its row count) only when the plan reaches it."""
        counts = ((f, self.row_count(f)) for f in self.files)
        return row_partitions(counts, frames_per_partition)

    # ------------------------------------------------------------------ labels

    def label_keys(self, keys: LabelKeys) -> LabelKeys:
        """The calculator's ``energy`` and ``forces`` unless others are named; the stress
        and virial keys as given (the stress is read from ``stress`` either way)."""
        return LabelKeys(keys.energy or "energy", keys.forces or "forces", keys.stress,
                         keys.virial)

    def resolve_labels(self, keys: LabelKeys) -> LabelPlan:
        """The plan for ``keys`` (nothing is read: ASE's names are fixed). The stress is
        required in every row only if the build named a stress or virial key."""
        full = self.label_keys(keys)
        return LabelPlan(full.energy, full.forces, keys.stress or "stress", keys.virial,
                         stress_required=keys.stress is not None or keys.virial is not None,
                         stress_units="eV/Å³, ASE sign; ASE's stored results: 6 Voigt "
                                      "values xx yy zz yz xz xy, or 3x3")

    # ------------------------------------------------------------------ reading

    def read(self, part: Partition, labels: LabelPlan, threads: int = 1
             ) -> tuple[list[Frame], list[Quarantined]]:
        """The rows of ``part``'s ranges as frames, and the rows quarantined with their
        reasons, in order. ``threads`` is not used (ASE's row decoding holds the GIL).

        Raises InputError for a file that cannot be opened as an ASE database, and
        SourceChangedError when a file holds fewer rows than the plan counted."""
        frames: list[Frame] = []
        quarantine: list[Quarantined] = []
        for file, start, end in part.ranges:
            name = display_name(self.path, file)
            n = 0
            for row_id, row in _rows(file, start, end):
                n += 1
                where = f"(row {row_id} of {name})"
                fid = f"{name}:{row_id}"
                if isinstance(row, str):
                    quarantine.append(Quarantined(fid, fid, f"{row} {where}"))
                    continue
                try:
                    atoms = _atoms(row)
                except Exception as err:  # ASE's errors for a malformed row are of many types
                    quarantine.append(Quarantined(fid, fid, f"row: ASE cannot build its Atoms: "
                                                            f"{type(err).__name__}: {err} "
                                                            f"{where}"))
                    continue
                if atoms.info.get("frame_id") is not None:
                    fid = str(atoms.info["frame_id"])
                mid = _material_id(atoms.info, fid)
                try:
                    frames.append(frame_from_atoms(atoms, mid, fid, labels))
                except RecordError as err:
                    quarantine.append(Quarantined(mid, fid, f"{err.reason} {where}"))
            if n != end - start:
                raise SourceChangedError(f"{file}: expected rows {start} to {end - 1} (by "
                                         f"position), the file holds {start + n} (it changed "
                                         "since the plan was made?)")
        return frames, quarantine


def _atoms(row):
    """``row`` as ASE's Atoms with its calculator results, and its key-value pairs and
    ``data`` in ``info`` (fairchem's ``AseDBDataset.get_atoms``)."""
    atoms = row.toatoms()
    atoms.info.update(row.key_value_pairs)
    data = row.get("data")
    if isinstance(data, dict):
        atoms.info.update(data)
    return atoms


def _material_id(info: dict, fallback: str) -> str:
    for key in MATERIAL_KEYS:
        if info.get(key) is not None:
            return str(info[key])
    return fallback


# ------------------------------------------------------------------ the two backends

class _Opened:
    """An ASE database opened read-only, as a context manager that closes it."""

    def __init__(self, file: str):
        self.file = file
        self.db = None

    def __enter__(self):
        try:
            self.db = _connect_lmdb(self.file) if is_lmdb(self.file) else \
                _connect_sqlite(self.file)
        except InputError:
            raise
        except Exception as err:
            kind = "an ASE LMDB database (.aselmdb)" if is_lmdb(self.file) else \
                "an ASE SQLite database"
            raise InputError(f"{self.file}: cannot be opened as {kind}: "
                             f"{type(err).__name__}: {err}") from None
        return self

    def count(self) -> int:
        if is_lmdb(self.file):
            return len(self.db.ids)
        return self.db.count()

    def __exit__(self, *exc):
        if is_lmdb(self.file):
            self.db.close()
        else:
            self.db.connection.close()
            self.db.connection = None


def _open(file: str) -> _Opened:
    return _Opened(file)


def _connect_lmdb(file: str):
    try:
        import ase_db_backends.aselmdb  # noqa: F401
    except ImportError:
        raise InputError(f"{file}: {NEEDS_BACKENDS}") from None
    import ase.db

    # readonly: no write transaction and no lock file beside the source (fairchem's choice)
    return ase.db.connect(file, type="aselmdb", readonly=True)


def _connect_sqlite(file: str):
    from ase.db.sqlite import SQLite3Database

    uri = f"{Path(file).resolve().as_uri()}?mode=ro"
    con = sqlite3.connect(uri, uri=True, timeout=20)
    try:
        found = con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='systems'"
                            ).fetchone()[0]
    except sqlite3.DatabaseError as err:
        con.close()
        raise InputError(f"{file}: not an ASE SQLite database ({err})") from None
    if not found:
        con.close()
        raise InputError(f"{file}: not an ASE SQLite database (it has no 'systems' table)")
    db = SQLite3Database(file, create_indices=False, use_lock_file=False)
    db.connection = con  # ASE reads through this read-only connection (as `with db:` sets)
    db.change_count = 0
    return db


def _rows(file: str, start: int, end: int) -> Iterator[tuple[int | str, object]]:
    """``(row id, row)`` of the rows at positions ``[start, end)`` of ``file`` in id order;
    a row the backend cannot decode is ``(id, reason)``."""
    with _open(file) as opened:
        db = opened.db
        if is_lmdb(file):
            for row_id in db.ids[start:end]:
                try:
                    yield row_id, db._get_row(row_id)  # fairchem's AseDBDataset reads so too
                except Exception as err:  # a damaged row: its own problem only
                    yield row_id, f"row: cannot be decoded ({type(err).__name__}: {err})"
            return
        for row in db.select(sort="id", offset=start, limit=end - start):
            yield row.id, row
