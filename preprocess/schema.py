"""Field names of the graph store and of the batch, with level, dtype, shape and unit.

This is the one place that declares what a frame holds. Storage backends, the reader, the
verifier and the training collator all follow these declarations; nothing guesses by name.

Levels
------
* ``frame`` — one row per frame (structure)
* ``atom``  — one row per atom, frames concatenated; ``n_atoms`` (frame level) delimits them
* ``edge``  — one row per edge, atoms concatenated; ``n_edges`` (atom level) delimits them,
  so the centre of an edge is implied by CSR pointers and never stored

Units: Å, eV, eV/Å, eV/Å³ with the ASE sign convention (positive stress = tensile).
Missing values (``stress``, ``magmom``) are stored as NaN and read back as NaN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SCHEMA_VERSION = 3
"""Store schema. 3: the integer cell shifts named ``unit_shifts`` and ``next_unit_shift``
(mace-torch's term; other codes use ``shifts`` for Cartesian offsets); 2: the same columns
named ``shifts`` and ``next_shift``; 1: without the per-atom ``next_neighbor`` and
``next_shift`` (the first candidate not kept, so that a model can differentiate d_{k+1})."""

Level = Literal["frame", "atom", "edge"]


@dataclass(frozen=True)
class Field:
    name: str
    level: Level
    dtype: str  # numpy dtype name, or "str"
    shape: tuple[int, ...]  # trailing shape of one row
    unit: str
    doc: str
    optional: bool = False  # may be NaN (missing) in a record


FIELDS: tuple[Field, ...] = (
    # per frame
    Field("frame_id", "frame", "str", (), "", "unique frame id, e.g. mp-1234-0-5"),
    Field("material_id", "frame", "str", (), "", "material id; splits are by material"),
    Field("n_atoms", "frame", "int32", (), "", "atoms in the frame (CSR over atom rows)"),
    Field("cell", "frame", "float64", (3, 3), "Å", "lattice vectors as rows"),
    Field("pbc", "frame", "bool", (3,), "", "periodicity along each lattice vector"),
    Field("energy", "frame", "float64", (), "eV", "total energy (the build's energy key)"),
    Field("stress", "frame", "float64", (3, 3), "eV/Å³", "stress, ASE sign (+ = tensile)",
          optional=True),
    # per atom
    Field("numbers", "atom", "uint8", (), "", "atomic number"),
    Field("positions", "atom", "float64", (3,), "Å",
          "Cartesian positions, wrapped into the cell along periodic axes"),
    Field("forces", "atom", "float32", (3,), "eV/Å", "forces"),
    Field("magmom", "atom", "float32", (), "μB", "magnetic moment", optional=True),
    Field("next_distance", "atom", "float32", (), "Å",
          "distance of the first neighbour candidate not kept (inf if none)"),
    Field("next_neighbor", "atom", "int32", (), "",
          "neighbour index of the first candidate not kept, local to the frame (-1 if none)"),
    Field("next_unit_shift", "atom", "int8", (3,), "",
          "integer cell shift of the first candidate not kept"),
    Field("n_edges", "atom", "uint16", (), "", "edges of this centre (CSR over edge rows)"),
    # per edge
    Field("neighbors", "edge", "uint16", (), "", "neighbour atom index, local to the frame"),
    Field("unit_shifts", "edge", "int8", (3,), "", "integer cell shift S: r_j + S @ cell - r_i"),
)

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}

# What the integer columns can hold: atoms per frame (neighbour indices, edge counts) and
# integer cell shifts per axis (±); checked by the build before writing (limits, shard).
MAX_ATOMS = int(min(np.iinfo(BY_NAME["neighbors"].dtype).max,
                    np.iinfo(BY_NAME["n_edges"].dtype).max))
MAX_UNIT_SHIFT = int(np.iinfo(BY_NAME["unit_shifts"].dtype).max)
LEVELS: tuple[Level, ...] = ("frame", "atom", "edge")


_AT: dict[str, tuple[Field, ...]] = {lv: tuple(f for f in FIELDS if f.level == lv) for lv in LEVELS}


def fields_at(level: Level) -> tuple[Field, ...]:
    return _AT[level]


def numpy_dtype(field: Field):
    return np.dtypes.StringDType() if field.dtype == "str" else np.dtype(field.dtype)


def check_columns(columns: dict[str, np.ndarray], where: str = "shard") -> dict[str, int]:
    """Validate a column set against the schema; returns the row count per level.

    Raises ValueError naming the field and the problem (missing, dtype, shape, counts).
    """
    rows: dict[str, int] = {}
    for f in FIELDS:
        if f.name not in columns:
            raise ValueError(f"{where}: field {f.name!r} is missing")
        arr = columns[f.name]
        if f.dtype == "str":
            if arr.dtype.kind not in ("U", "O", "T"):
                raise ValueError(f"{where}: field {f.name!r} must hold strings, got {arr.dtype}")
        elif arr.dtype != np.dtype(f.dtype):
            raise ValueError(f"{where}: field {f.name!r} must be {f.dtype}, got {arr.dtype}")
        if arr.shape[1:] != f.shape:
            raise ValueError(f"{where}: field {f.name!r} rows must have shape {f.shape}, "
                             f"got {arr.shape[1:]}")
        n = rows.setdefault(f.level, arr.shape[0])
        if arr.shape[0] != n:
            raise ValueError(f"{where}: field {f.name!r} has {arr.shape[0]} rows, other "
                             f"{f.level} fields have {n}")
    unknown = set(columns) - set(BY_NAME)
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
    if int(columns["n_atoms"].sum()) != rows["atom"]:
        raise ValueError(f"{where}: n_atoms sums to {int(columns['n_atoms'].sum())}, "
                         f"but there are {rows['atom']} atom rows")
    if int(columns["n_edges"].astype(np.int64).sum()) != rows["edge"]:
        raise ValueError(f"{where}: n_edges sums to {int(columns['n_edges'].sum())}, "
                         f"but there are {rows['edge']} edge rows")
    return rows


def edge_index(block: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 (E,) each: centre and neighbour as indices into the atoms of a block of frames
    (frame fields stacked, atom and edge fields concatenated, neighbour indices local to
    their frame), and the frame of each edge; from the CSR counts ``n_atoms`` and
    ``n_edges``."""
    n_atoms = block["n_atoms"].astype(np.int64)
    atom_offset = np.cumsum(n_atoms) - n_atoms
    frame_of_atom = np.repeat(np.arange(n_atoms.size, dtype=np.int64), n_atoms)
    centers = np.repeat(np.arange(frame_of_atom.size, dtype=np.int64),
                        block["n_edges"].astype(np.int64))
    frame_of_edge = frame_of_atom[centers]
    neighbors = block["neighbors"].astype(np.int64) + atom_offset[frame_of_edge]
    return centers, neighbors, frame_of_edge
