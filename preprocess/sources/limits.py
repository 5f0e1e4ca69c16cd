"""What the store can hold, checked frame by frame so that a frame it cannot hold is
quarantined with its reason and the rest of the build goes on; and the positions rule.

Limits (from the dtypes in :mod:`orbitgraph.preprocess.schema`):

* at most :data:`MAX_ATOMS` = 65,535 atoms per frame: neighbour indices (``neighbors``) and
  per-atom edge counts (``n_edges``) are uint16. Checked before the graph is built.
* cell shifts within ±:data:`MAX_UNIT_SHIFT` = ±127 per axis (``unit_shifts``,
  ``next_unit_shift`` are int8): only a cell far thinner or more skewed than its neighbour
  shell needs more.
  Checked on the built graph.

Positions rule: the store holds positions wrapped into the cell. Along each periodic axis
an atom whose fractional coordinate f lies outside [-ε, 1 - ε) (ε = 1e-7, as ASE's
``wrap``) is moved by ``-floor(f + ε)`` lattice vectors; every other atom keeps its
position bit for bit. Moving an atom by lattice vectors changes neither the crystal nor
its energy, forces (per atom, in the same order) or stress, so those are stored as read,
and the graph is built from (and its shifts refer to) the stored positions: unwrapped
trajectories give the graph of the wrapped frame, never a cell shift out of range.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from orbitgraph.preprocess.frame import Frame
from orbitgraph.preprocess.schema import MAX_ATOMS, MAX_UNIT_SHIFT
from orbitgraph.preprocess.sources.base import Quarantined

__all__ = ["MAX_ATOMS", "MAX_UNIT_SHIFT", "WRAP_EPS", "atom_count_problem", "graph_problems",
           "within_atom_limit", "wrap_positions"]
WRAP_EPS = 1e-7  # fractional; atoms at f = 0 (and just below) stay where they are


def atom_count_problem(n_atoms: int) -> str | None:
    if n_atoms > MAX_ATOMS:
        return (f"frame: more atoms than the {MAX_ATOMS} that the store's uint16 neighbour "
                f"indices can address ({n_atoms} atoms)")
    return None


def within_atom_limit(frames: Sequence[Frame]) -> tuple[list[Frame], list[Quarantined]]:
    """The frames the store can index, and the others quarantined (before any graph)."""
    kept, quarantined = [], []
    for f in frames:
        problem = atom_count_problem(f.n_atoms)
        if problem is None:
            kept.append(f)
        else:
            quarantined.append(Quarantined(f.material_id, f.frame_id, problem))
    return kept, quarantined


def wrap_positions(cells: np.ndarray, positions: Sequence[np.ndarray], pbc: np.ndarray
                   ) -> list[np.ndarray]:
    """Positions wrapped by the positions rule, all structures in one vectorised pass.

    ``cells`` (B, 3, 3) Å, rows = lattice vectors; ``positions`` B arrays (N_b, 3) Å;
    ``pbc`` (B, 3) bool. Returns B arrays: the given array itself where no atom moves, a
    new one otherwise."""
    out = list(positions)
    if not out:
        return out
    n_atoms = np.fromiter(map(len, out), dtype=np.int64, count=len(out))
    pos = np.concatenate(out).astype(np.float64, copy=False)
    frac = np.matmul(pos[:, None, :], np.repeat(np.linalg.inv(cells), n_atoms, axis=0))[:, 0]
    steps = np.floor(frac + WRAP_EPS)
    steps *= np.repeat(np.asarray(pbc, dtype=bool), n_atoms, axis=0)
    if not steps.any():
        return out
    moving = np.nonzero((steps[:, 0] != 0) | (steps[:, 1] != 0) | (steps[:, 2] != 0))[0]
    owner = np.repeat(np.arange(len(out)), n_atoms)[moving]
    new = pos.copy()
    new[moving] -= np.matmul(steps[moving, None, :], cells[owner])[:, 0]
    ptr = np.concatenate(([0], np.cumsum(n_atoms)))
    for b in np.unique(owner).tolist():
        out[b] = new[ptr[b]:ptr[b + 1]]
    return out


def graph_problems(unit_shifts: np.ndarray, next_unit_shift: np.ndarray, centers: np.ndarray,
                   edge_ptr: np.ndarray, atom_ptr: np.ndarray) -> dict[int, str]:
    """Structure index -> why its graph does not fit the store: a cell shift beyond
    ±MAX_UNIT_SHIFT (edges or the first candidate not kept), or an atom with more than
    MAX_ATOMS edges. ``unit_shifts`` (E, 3), ``next_unit_shift`` (N, 3), ``centers`` (E,) local to
    each structure; ``edge_ptr``, ``atom_ptr`` (B + 1,) delimit the structures."""
    n_struct = len(atom_ptr) - 1
    problems: dict[int, str] = {}
    shifts_fit = all(a.size == 0 or (a.max() <= MAX_UNIT_SHIFT and a.min() >= -MAX_UNIT_SHIFT)
                     for a in (unit_shifts, next_unit_shift))
    edges = np.diff(edge_ptr)
    if shifts_fit and (edges.size == 0 or edges.max() <= MAX_ATOMS):
        return problems  # the common case, without per-atom reductions
    edge_shift = _per_structure_max(np.abs(unit_shifts).max(axis=1) if len(unit_shifts) else
                                    np.zeros(0, np.int64), edge_ptr, n_struct)
    next_max = _per_structure_max(np.abs(next_unit_shift).max(axis=1) if len(next_unit_shift) else
                                  np.zeros(0, np.int64), atom_ptr, n_struct)
    per_atom = np.bincount(centers + np.repeat(atom_ptr[:-1], edges), minlength=int(atom_ptr[-1]))
    most_edges = _per_structure_max(per_atom, atom_ptr, n_struct)
    for b in np.nonzero(np.maximum(edge_shift, next_max) > MAX_UNIT_SHIFT)[0].tolist():
        problems[b] = (f"structure: a neighbour needs a cell shift beyond the ±{MAX_UNIT_SHIFT} "
                       f"lattice vectors of the store's int8 shifts "
                       f"({max(edge_shift[b], next_max[b])} along an axis: the cell is far "
                       "thinner or more skewed than the neighbour shell; a reduced cell, e.g. "
                       "Niggli's, describes the same crystal)")
    for b in np.nonzero(most_edges > MAX_ATOMS)[0].tolist():
        problems.setdefault(b, f"structure: an atom has more edges than the {MAX_ATOMS} of the "
                               f"store's uint16 edge counts ({most_edges[b]} edges)")
    return problems


def _per_structure_max(values: np.ndarray, ptr: np.ndarray, n_struct: int) -> np.ndarray:
    """int64 (B,): the largest of ``values[ptr[b]:ptr[b + 1]]`` (0 if empty)."""
    out = np.zeros(n_struct, dtype=np.int64)
    sizes = np.diff(ptr)
    nonempty = np.nonzero(sizes > 0)[0]
    if nonempty.size:
        out[nonempty] = np.maximum.reduceat(np.asarray(values, dtype=np.int64),
                                            ptr[:-1][nonempty])
    return out
