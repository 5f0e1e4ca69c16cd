"""The periodic k-nearest-neighbour "orbit" graph of a crystal.

Definition (normative, shared by the fast kernel and the reference)
-------------------------------------------------------------------
For each centre atom ``i`` the candidates are every ``(j, S)`` with ``S`` in Z^3 an integer
cell shift, except ``(i, 0)``; along an axis without periodicity ``S_a = 0``. The edge
vector is ``r_j + S @ cell - r_i`` and its length ``d`` is computed in float64 (Å).

* Every comparison of distances is made once, on one grid: ``q = round(d / DISTANCE_QUANTUM)``
  (:data:`DISTANCE_QUANTUM` = 1e-9 Å; the rule is :mod:`orbitgraph.preprocess.distance_grid`,
  which the kernel, the reference and load-time filtering all call). The grid makes the
  order of symmetry-equivalent neighbours (perfect crystals) independent of float rounding
  noise, so it is the same after a translation.
* Keep the ``k`` nearest. Candidates are ordered by ``q``, then by neighbour index ``j``,
  then by shift ``S`` (lexicographic).
* ``ties="include"`` (default) also keeps every further candidate whose ``q`` exceeds the
  k-th's by at most ``round(tie_tolerance / DISTANCE_QUANTUM)``; ``ties="break"`` keeps
  exactly ``k``.
* ``cutoff`` (Å), if given, then drops edges longer than it.
* The first candidate not kept is recorded per atom: ``next_distance[i]`` (Å),
  ``next_neighbor[i]`` and ``next_unit_shift[i]``; ``inf`` and ``-1`` if there is none, which
  only happens without any periodic axis. A model computes d_{k+1} from it (and from the
  centre's (k+1)-th edge where ties kept more than ``k``), so that d_{k+1} follows the
  positions and the cell under autograd.
* An atom's own periodic images are neighbours; the same ``(j, S)`` never appears twice. A
  cell too small to hold ``k`` neighbours is handled by enumerating more images.

Edges are sorted by centre, then in the order above, so ``centers`` is non-decreasing and
CSR pointers (:attr:`KnnGraph.edge_ptr`) describe the graph completely.

The parameters ``k``, ``ties``, ``tie_tolerance`` and ``cutoff`` are one
:class:`~orbitgraph.preprocess.graph_params.GraphParams`; the functions below take it as
``params`` (default ``GraphParams()``), or its fields as keyword arguments on top of it.

Units: Å throughout. Cells are given with lattice vectors as rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Iterator, Sequence

import numpy as np

from orbitgraph.errors import InputError
from orbitgraph.preprocess.distance_grid import DISTANCE_QUANTUM  # noqa: F401 (part of the API)
from orbitgraph.preprocess.graph_params import (  # noqa: F401 (DEFAULT_*: part of the API)
    DEFAULT_K,
    DEFAULT_TIE_TOLERANCE,
    GraphParams,
    resolve_graph_params,
)
from orbitgraph.preprocess.threads import thread_map

COINCIDENT_DISTANCE = 1e-6  # Å, two atoms closer than this are "at the same place"
MIN_STRUCTURES_PER_THREAD = 64  # fewer are not worth a thread


@dataclass(frozen=True)
class KnnGraph:
    """The k-nearest-neighbour graph of one structure.

    Shapes
    ------
    centers, neighbors : int32 (E,), atom indices within the structure
    unit_shifts : int32 (E, 3), integer cell shifts S (edge vector = r_j + S @ cell - r_i)
    distances : float64 (E,), Å
    next_distance : float64 (N,), Å, distance of the first candidate not kept (inf: none)
    next_neighbor : int32 (N,), its neighbour index (-1: none)
    next_unit_shift : int32 (N, 3), its integer cell shift
    """

    centers: np.ndarray
    neighbors: np.ndarray
    unit_shifts: np.ndarray
    distances: np.ndarray
    next_distance: np.ndarray
    next_neighbor: np.ndarray
    next_unit_shift: np.ndarray

    @property
    def n_atoms(self) -> int:
        return int(self.next_distance.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.centers.shape[0])

    @property
    def counts(self) -> np.ndarray:
        """int64 (N,): number of edges of each centre atom."""
        return np.bincount(self.centers, minlength=self.n_atoms).astype(np.int64)

    @property
    def edge_ptr(self) -> np.ndarray:
        """int64 (N + 1,): CSR pointers, edges of atom i are ``edge_ptr[i]:edge_ptr[i+1]``."""
        return np.concatenate(([0], np.cumsum(self.counts))).astype(np.int64)


def concat_ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """int64: the concatenation of ``arange(starts[i], stops[i])`` over i, without a loop."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(stops, dtype=np.int64) - starts
    first = np.cumsum(lengths) - lengths
    return np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


@dataclass(frozen=True)
class KnnGraphBatch:
    """The graphs of many structures, concatenated (what the build writes).

    ``centers``/``neighbors`` are local to each structure. ``edge_ptr`` (B + 1,) and
    ``atom_ptr`` (B + 1,) delimit the structures.
    """

    centers: np.ndarray
    neighbors: np.ndarray
    unit_shifts: np.ndarray
    distances: np.ndarray
    next_distance: np.ndarray
    next_neighbor: np.ndarray
    next_unit_shift: np.ndarray
    edge_ptr: np.ndarray
    atom_ptr: np.ndarray

    def __len__(self) -> int:
        return int(self.edge_ptr.shape[0] - 1)

    def __getitem__(self, b: int) -> KnnGraph:
        if not -len(self) <= b < len(self):
            raise IndexError(f"structure {b} out of range for a batch of {len(self)}")
        b %= len(self)
        e0, e1 = self.edge_ptr[b], self.edge_ptr[b + 1]
        a0, a1 = self.atom_ptr[b], self.atom_ptr[b + 1]
        return KnnGraph(self.centers[e0:e1], self.neighbors[e0:e1], self.unit_shifts[e0:e1],
                        self.distances[e0:e1], self.next_distance[a0:a1],
                        self.next_neighbor[a0:a1], self.next_unit_shift[a0:a1])

    def __iter__(self) -> Iterator[KnnGraph]:
        return (self[b] for b in range(len(self)))

    def take(self, structures: Sequence[int]) -> "KnnGraphBatch":
        """The graphs of the given structures, in that order, as a new batch."""
        idx = np.asarray(structures, dtype=np.int64)
        n_atoms = np.diff(self.atom_ptr)[idx]
        n_edges = np.diff(self.edge_ptr)[idx]
        atoms = concat_ranges(self.atom_ptr[idx], self.atom_ptr[idx + 1])
        if np.all(np.diff(idx) > 0) and n_edges.sum() == len(self.neighbors):
            edges = slice(None)  # only structures without edges left out: every edge stays
        else:
            edges = concat_ranges(self.edge_ptr[idx], self.edge_ptr[idx + 1])
        return KnnGraphBatch(self.centers[edges], self.neighbors[edges], self.unit_shifts[edges],
                             self.distances[edges], self.next_distance[atoms],
                             self.next_neighbor[atoms], self.next_unit_shift[atoms],
                             np.concatenate(([0], np.cumsum(n_edges))).astype(np.int64),
                             np.concatenate(([0], np.cumsum(n_atoms))).astype(np.int64))


def _as_pbc(pbc, n_struct: int) -> np.ndarray:
    arr = np.asarray(pbc, dtype=bool)
    if arr.ndim == 0:
        arr = np.full(3, bool(arr))
    if arr.shape == (3,):
        arr = np.broadcast_to(arr, (n_struct, 3))
    if arr.shape != (n_struct, 3):
        raise InputError(f"pbc must be a bool, 3 bools or ({n_struct}, 3) bools, "
                         f"got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _check_structure(b: int, cell: np.ndarray, pos: np.ndarray) -> None:
    where = f"structure {b}: " if b >= 0 else ""
    if cell.shape != (3, 3):
        raise InputError(f"{where}cell must have shape (3, 3), got {cell.shape}")
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise InputError(f"{where}positions must have shape (N, 3), got {pos.shape}")
    if not np.all(np.isfinite(cell)):
        raise InputError(f"{where}cell has non-finite values: {cell.tolist()}")
    if not np.all(np.isfinite(pos)):
        bad = int(np.nonzero(~np.isfinite(pos).all(axis=1))[0][0])
        raise InputError(f"{where}positions of atom {bad} are not finite: {pos[bad].tolist()}")
    det = np.linalg.det(cell)
    scale = float(np.prod(np.linalg.norm(cell, axis=1)))
    if not scale > 0 or abs(det) <= 1e-10 * scale:
        raise InputError(f"{where}cell is singular (volume {det:.3g} Å^3): {cell.tolist()}")


def knn_graphs(cells: Sequence[np.ndarray] | np.ndarray, positions: Sequence[np.ndarray],
               pbc=(True, True, True), params: GraphParams | None = None,
               **overrides) -> KnnGraphBatch:
    """Graphs of many structures in one compiled call; same result as :func:`knn_graph` each.

    Parameters
    ----------
    cells : (B, 3, 3) float, Å, lattice vectors as rows
    positions : sequence of B arrays (N_b, 3), Cartesian Å
    pbc : bool, 3 bools for all structures, or (B, 3) bools
    params : GraphParams (default ``GraphParams()``: k = 16, ties included within 0.5 Å)
    **overrides : k, ties, tie_tolerance, cutoff, replacing those of ``params``

    Raises
    ------
    InputError
        Naming the structure (its index in the batch) and the problem: non-finite values,
        a singular cell, two atoms at the same place.
    ConfigError
        A parameter out of range (k, ties, tie_tolerance, cutoff).
    RuntimeError
        The search could not prove a structure's neighbours complete (a defect of the
        kernel).
    """
    params = resolve_graph_params(params, **overrides)
    cells_arr = np.ascontiguousarray(np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3))
    pos_list = [np.asarray(p, dtype=np.float64) for p in positions]
    if len(pos_list) != cells_arr.shape[0]:
        raise InputError(f"got {cells_arr.shape[0]} cells but {len(pos_list)} position arrays")
    pos, atom_ptr = _check_batch(cells_arr, pos_list)
    return _knn_checked(cells_arr, pos, atom_ptr, _as_pbc(pbc, len(pos_list)), params)


def _concatenate(pos_list: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """float64 (N_total, 3) positions and int64 (B + 1,) atom pointers, or None when some
    array is not (N, 3)."""
    if not pos_list:
        return np.empty((0, 3)), np.zeros(1, dtype=np.int64)
    try:
        pos = np.concatenate(pos_list)  # fails unless all have the same ndim and columns
    except ValueError:
        return None
    if pos.ndim != 2 or pos.shape[1] != 3:
        return None
    atom_ptr = np.zeros(len(pos_list) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in pos_list], out=atom_ptr[1:])
    return pos, atom_ptr


def _check_batch(cells: np.ndarray, pos_list: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised screening, then the concatenated positions and atom pointers; when
    something is wrong the per-structure check names the first bad structure."""
    joined = _concatenate(pos_list)
    if joined is not None:
        dets = np.linalg.det(cells)
        scales = np.prod(np.linalg.norm(cells, axis=2), axis=1)
        if (np.isfinite(cells).all() and np.isfinite(joined[0]).all()
                and np.all(np.abs(dets) > 1e-10 * scales) and np.all(scales > 0)):
            return joined
    for b, (cell, pos) in enumerate(zip(cells, pos_list, strict=True)):
        _check_structure(b, cell, pos)
    raise AssertionError("the vectorised and per-structure checks disagree")  # unreachable


def _kernel():
    """The compiled kernel, imported on first use: processes that only read stores or train
    never load numba (its LLVM does not coexist with torch.compile's CPU kernels)."""
    from orbitgraph.preprocess import knn_kernel
    return knn_kernel


def _run_kernel(cells: np.ndarray, pos: np.ndarray, atom_ptr: np.ndarray, pbc: np.ndarray,
                params: GraphParams, coincident: float, threads: int = 1) -> tuple:
    """Call the compiled kernel on checked, concatenated input; returns its outputs
    (:data:`knn_kernel.KnnResult`).

    With ``threads`` > 1 the structures are cut into that many runs of similar atom counts,
    each run on its own thread (the kernel releases the GIL), and the outputs joined.
    """
    kernel = _kernel()
    n_struct = len(atom_ptr) - 1
    threads = min(threads, n_struct // MIN_STRUCTURES_PER_THREAD)
    if threads > 1:
        targets = atom_ptr[-1] * np.arange(1, threads) // threads
        cuts = np.unique(np.searchsorted(atom_ptr, targets).clip(1, n_struct - 1))
        bounds = [0, *cuts.tolist(), n_struct]
        runs = [(b0, b1, int(atom_ptr[b0]), int(atom_ptr[b1]))
                for b0, b1 in pairwise(bounds)]
        outs = thread_map(lambda r: _run_kernel(
            cells[r[0]:r[1]], pos[r[2]:r[3]], atom_ptr[r[0]:r[1] + 1] - r[2], pbc[r[0]:r[1]],
            params, coincident), runs)
        joined = {f: np.concatenate([getattr(out, f) for out in outs])
                  for f in kernel.KnnResult._fields if f != "edge_ptr"}
        edge_offsets = np.cumsum([0] + [out.edge_ptr[-1] for out in outs[:-1]])
        edge_ptr = np.concatenate([[0]] + [out.edge_ptr[1:] + offset
                                           for out, offset in zip(outs, edge_offsets, strict=True)])
        return kernel.KnnResult(edge_ptr=edge_ptr, **joined)
    # Room for 2 (k + 2) edges per atom, which the default tie inclusion (~1.4 k) stays well
    # within; only the pages written are ever touched, so the unused rest costs address
    # space, not memory, while growing inside the kernel (a copy onto fresh pages, for more
    # ties than that) costs ~20% of its time.
    capacity = 2 * int(atom_ptr[-1]) * (params.k + 2) + 64
    from orbitgraph.preprocess.kernel_cache import announce_compilation
    with announce_compilation():  # the first run of an installation compiles it
        return kernel.knn_batch(
            kernel.Structures(np.ascontiguousarray(cells, dtype=np.float64).reshape(-1, 3, 3),
                              np.ascontiguousarray(pos, dtype=np.float64), atom_ptr, pbc),
            kernel.Rules(params.k, params.include_ties, float(params.tie_tolerance),
                         np.int64(params.q_tolerance),
                         np.inf if params.cutoff is None else float(params.cutoff),
                         float(coincident)),
            kernel.Edges(np.empty(capacity, np.int32), np.empty(capacity, np.int32),
                         np.empty((capacity, 3), np.int32), np.empty(capacity, np.float64)))


def _failure(status: int, bad: np.ndarray, closer_than: str, k: int) -> str:
    """Why the kernel could not build a structure's graph, in words."""
    kernel = _kernel()
    ci, cj, *cs = bad.tolist()
    if status == kernel.STATUS_COINCIDENT:
        return f"atoms {ci} and {cj} (cell shift {tuple(cs)}) are {closer_than}"
    if status == kernel.STATUS_INCOMPLETE:
        return (f"the neighbour search of atom {ci} did not prove its {k} nearest "
                "neighbours complete within its radius limit (a defect of the graph kernel: "
                "please report this structure)")
    raise AssertionError(f"unknown kernel status {status}")


def _knn_checked(cells: np.ndarray, pos: np.ndarray, atom_ptr: np.ndarray, pbc: np.ndarray,
                 params: GraphParams) -> KnnGraphBatch:
    i, j, s, d, edge_ptr, nxt, nxt_j, nxt_s, status, bad = _run_kernel(
        cells, pos, atom_ptr, pbc, params, COINCIDENT_DISTANCE)
    failed = np.nonzero(status != _kernel().STATUS_OK)[0]
    if failed.size:
        b = int(failed[0])
        why = _failure(int(status[b]), bad[b],
                       f"at the same place (closer than {COINCIDENT_DISTANCE} Å)", params.k)
        if status[b] == _kernel().STATUS_COINCIDENT:
            raise InputError(f"structure {b}: {why}")
        raise RuntimeError(f"structure {b}: {why}")
    return KnnGraphBatch(i, j, s, d, nxt, nxt_j, nxt_s, edge_ptr, atom_ptr)


def knn_graphs_screened(cells: np.ndarray, positions: Sequence[np.ndarray], pbc: np.ndarray,
                        params: GraphParams, min_distance: float, threads: int = 1
                        ) -> tuple[KnnGraphBatch, dict[int, str]]:
    """Like :func:`knn_graphs` for inputs already checked, but a structure with two atoms
    closer than ``min_distance`` Å, or whose search fails (:data:`knn_kernel.STATUS_INCOMPLETE`),
    is reported (index -> reason) instead of raising; its graph in the returned batch is
    empty. Used by the build to quarantine such records.
    ``threads``: structures built on that many threads (same result).
    """
    joined = _concatenate([np.asarray(p, dtype=np.float64) for p in positions])
    if joined is None:
        raise InputError("positions must be arrays of shape (N, 3)")
    pos, atom_ptr = joined
    i, j, s, d, edge_ptr, nxt, nxt_j, nxt_s, status, bad = _run_kernel(
        cells, pos, atom_ptr, _as_pbc(pbc, len(atom_ptr) - 1), params, min_distance, threads)
    failed = {b: _failure(int(status[b]), bad[b], f"closer than {min_distance} Å", params.k)
              for b in np.nonzero(status != _kernel().STATUS_OK)[0].tolist()}
    return KnnGraphBatch(i, j, s, d, nxt, nxt_j, nxt_s, edge_ptr, atom_ptr), failed


def knn_graph(cell: np.ndarray, positions: np.ndarray, pbc=(True, True, True),
              params: GraphParams | None = None, **overrides) -> KnnGraph:
    """The k-nearest-neighbour periodic graph of one structure.

    Parameters
    ----------
    cell : (3, 3) float, Å, lattice vectors as rows
    positions : (N, 3) float, Cartesian Å
    pbc : bool or 3 bools, periodicity per lattice vector
    params : GraphParams (default ``GraphParams()``): ``k`` neighbours kept per atom before
        tie inclusion; ``ties`` "include" (keep candidates within ``tie_tolerance`` Å of the
        k-th) or "break"; ``cutoff`` (Å or None) drops longer edges afterwards
    **overrides : k, ties, tie_tolerance, cutoff, replacing those of ``params``

    Returns
    -------
    KnnGraph with edges sorted by centre, then (distance, neighbour, shift).

    Raises
    ------
    InputError, ConfigError, RuntimeError
        As :func:`knn_graphs`, without the structure's index.
    """
    cell = np.asarray(cell, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    params = resolve_graph_params(params, **overrides)
    _check_structure(-1, cell, positions)
    try:
        batch = _knn_checked(cell.reshape(1, 3, 3), positions,
                             np.array([0, len(positions)], dtype=np.int64), _as_pbc(pbc, 1),
                             params)
    except (InputError, RuntimeError) as err:
        raise type(err)(str(err).removeprefix("structure 0: ")) from None
    return batch[0]
