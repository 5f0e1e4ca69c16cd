"""Frames (dicts of store fields) -> one :class:`model.Batch`, offsets applied once.

Two shapes of the same data:

* a *frame*: one structure, frame fields as scalars or (3, 3), atom fields (n, ...), edge
  fields (e, ...) as :meth:`GraphStore.__getitem__` or :func:`frame_from_graph` give it;
* a *block*: many frames, frame fields stacked (F, ...), atom and edge fields concatenated
  (N, ...), (E, ...), neighbour indices still local to each frame, as
  :meth:`ShardData.take` gives it. The loader collates blocks without a per-frame loop.

:func:`collate_columns` turns a block into a Batch: neighbour indices get their frame's atom
offset, centres come from the CSR counts. Which field is which follows
:mod:`orbitgraph.preprocess.schema`, never the name.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from orbitgraph.errors import InputError
from orbitgraph.model.batch import Batch
from orbitgraph.preprocess.graph import knn_graph, knn_graphs
from orbitgraph.preprocess.graph_filter import filter_block
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.preprocess.schema import BY_NAME, edge_index


def _level(name: str) -> str:
    try:
        return BY_NAME[name].level
    except KeyError:
        raise ValueError(f"frame field {name!r} is not in the store schema "
                         "(preprocess/schema.py)") from None


def frames_to_block(frames: Sequence[dict]) -> dict[str, np.ndarray]:
    """Frames -> one block: the fields every frame has, stacked or concatenated by level."""
    if not frames:
        raise ValueError("no frames to collate")
    names = [n for n in frames[0] if all(n in f for f in frames)]
    block: dict[str, np.ndarray] = {}
    for name in names:
        values = [np.asarray(f[name]) for f in frames]
        block[name] = np.stack(values) if _level(name) == "frame" else np.concatenate(values)
    block["n_atoms"] = np.array([len(f["numbers"]) for f in frames], dtype=np.int64)
    return block


def concat_blocks(blocks: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Blocks (e.g. from several shards) -> one block, frames in the given order."""
    if len(blocks) == 1:
        return blocks[0]
    return {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}


def rank_candidates(block: dict[str, np.ndarray], neighbors: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each centre's (k+1)-th nearest candidate, which the rank envelope's d_{k+1} follows.

    It is the centre's edge of rank k where tie inclusion kept more than ``k`` edges, else
    the stored first candidate not kept (``next_neighbor``, ``next_unit_shift``).

    Returns
    -------
    rank_neighbor : int64 (N,), index into the block's atoms (-1: no such candidate, which
        only happens without any periodic axis)
    rank_unit_shift : int64 (N, 3), its integer cell shift
    """
    n_atoms = block["n_atoms"].astype(np.int64)
    n_edges = block["n_edges"].astype(np.int64)
    atom_offset = np.repeat(np.cumsum(n_atoms) - n_atoms, n_atoms)
    stored = block["next_neighbor"].astype(np.int64)
    rank_neighbor = np.where(stored >= 0, stored + atom_offset, -1)
    rank_unit_shift = block["next_unit_shift"].astype(np.int64).reshape(-1, 3).copy()
    tied = np.nonzero(n_edges > k)[0]
    if tied.size:
        edge = (np.cumsum(n_edges) - n_edges)[tied] + k
        rank_neighbor[tied] = neighbors[edge]
        rank_unit_shift[tied] = block["unit_shifts"].reshape(-1, 3)[edge]
    return rank_neighbor, rank_unit_shift


def relative_positions(positions: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """(N, 3) Å -> each frame's positions minus its first atom's (float64; frames of
    ``n_atoms`` (B,) atoms, at least one each)."""
    first = np.cumsum(n_atoms) - n_atoms
    return positions.astype(np.float64) - np.repeat(positions[first], n_atoms, axis=0)


def collate_columns(block: dict[str, np.ndarray], k: int,
                    dtype: torch.dtype = torch.float64) -> Batch:
    """One block -> Batch.

    ``k`` is the k of the block's graphs; it locates each centre's (k+1)-th candidate
    (:func:`rank_candidates`), which the model's rank envelope needs. Positions are taken
    relative to each frame's first atom (in float64, before any cast): the energy does not
    change, and float32 keeps its precision however far from the origin a frame sits.
    """
    n_atoms = block["n_atoms"].astype(np.int64)
    n_frames = n_atoms.size
    centers, neighbors, _ = edge_index(block)
    rank_neighbor, rank_unit_shift = rank_candidates(block, neighbors, k)

    def tensor(a, dt=dtype):
        return torch.from_numpy(np.ascontiguousarray(a)).to(dt)

    has_labels = "energy" in block and "forces" in block and "stress" in block
    frame_ids = block.get("frame_id")
    return Batch(
        numbers=tensor(block["numbers"], torch.long),
        positions=tensor(relative_positions(block["positions"].reshape(-1, 3), n_atoms)),
        cell=tensor(block["cell"].reshape(-1, 3, 3)),
        # numpy: torch's repeat_interleave took ~20 ms per call with 2 threads on a busy
        # machine (its thread pool), 1,000x numpy's 0.01 ms
        batch=torch.from_numpy(np.repeat(np.arange(n_frames, dtype=np.int64), n_atoms)),
        n_atoms=torch.from_numpy(n_atoms),
        centers=torch.from_numpy(centers),
        neighbors=torch.from_numpy(neighbors),
        unit_shifts=tensor(block["unit_shifts"].reshape(-1, 3)),
        rank_neighbor=torch.from_numpy(rank_neighbor),
        rank_unit_shift=tensor(rank_unit_shift),
        k=int(k),
        energy=tensor(block["energy"].astype(np.float64)) if has_labels else None,
        forces=tensor(block["forces"].reshape(-1, 3)) if has_labels else None,
        stress=tensor(block["stress"].reshape(-1, 3, 3)) if has_labels else None,
        frame_ids=([str(x) for x in frame_ids] if frame_ids is not None
                   else [str(i) for i in range(n_frames)]),
    )


def collate(frames: Sequence[dict], k: int, dtype: torch.dtype = torch.float64) -> Batch:
    """Frames as returned by the store reader (or :func:`frame_from_graph`) -> Batch."""
    return collate_columns(frames_to_block(frames), k, dtype)


def frame_from_graph(cell, positions, numbers, graph, pbc=(True, True, True), **labels) -> dict:
    """A frame dict from a structure and its :class:`orbitgraph.preprocess.graph.KnnGraph`."""
    return {"cell": np.asarray(cell, dtype=np.float64),
            "positions": np.asarray(positions, dtype=np.float64),
            "numbers": np.asarray(numbers), "pbc": np.asarray(pbc, dtype=bool),
            "n_edges": graph.counts, "neighbors": graph.neighbors, "unit_shifts": graph.unit_shifts,
            "next_distance": graph.next_distance, "next_neighbor": graph.next_neighbor,
            "next_unit_shift": graph.next_unit_shift, **labels}


GRAPH_FIELDS = ("n_edges", "neighbors", "unit_shifts", "next_distance", "next_neighbor",
                "next_unit_shift")


def frame_from_structure(cell, positions, numbers, graph: GraphParams,
                         pbc=(True, True, True), built_with: GraphParams | None = None,
                         **labels) -> dict:
    """One structure's frame, its graph built by the store's rules from these positions and
    this cell: :func:`~orbitgraph.preprocess.graph.knn_graph` with ``graph``, or, with
    ``built_with`` (a larger graph, as a store may hold), built with that and filtered to
    ``graph`` at load time as the loader does
    (:func:`~orbitgraph.preprocess.graph_filter.filter_block`).

    cell (3, 3) Å, rows are lattice vectors; positions (N, 3) Å; numbers (N,) atomic
    numbers; ``labels``: frame fields such as ``energy`` (eV), ``forces`` (N, 3) eV/Å,
    ``stress`` (3, 3) eV/Å³. Raises what ``knn_graph`` raises for a bad structure."""
    frame = frame_from_graph(cell, positions, numbers,
                             knn_graph(cell, positions, pbc=pbc, params=built_with or graph),
                             pbc=pbc, **labels)
    if built_with is not None and built_with != graph:
        block = filter_block(frames_to_block([frame]), built_with, graph)
        frame.update({name: block[name] for name in GRAPH_FIELDS})
    return frame


def batch_from_structures(structures: Iterable, graph: GraphParams,
                          dtype: torch.dtype = torch.float64) -> Batch:
    """The one way from structures to a :class:`Batch` (graphs -> frames -> collate), used
    by the ASE calculator, the torch-sim model and the physics harness: each structure an
    ``ase.Atoms`` or a ``(cell, positions, numbers[, pbc])`` tuple (cell (3, 3) Å, rows are
    lattice vectors; positions (N, 3) Å), every graph built with ``graph`` by the store's
    rules in one compiled call (:func:`~orbitgraph.preprocess.graph.knn_graphs`). Positions
    and cell in ``dtype``; no labels. Raises what ``knn_graphs`` raises for a bad
    structure, naming its index."""
    cells, positions, numbers, pbcs = [], [], [], []
    for s in structures:
        if hasattr(s, "get_positions"):  # ase.Atoms
            s = (s.cell.array, s.get_positions(), s.numbers, s.pbc)
        cells.append(np.asarray(s[0], dtype=np.float64))
        positions.append(np.asarray(s[1], dtype=np.float64))
        numbers.append(np.asarray(s[2]))
        pbcs.append(np.broadcast_to(np.asarray(s[3] if len(s) > 3 else True, dtype=bool), 3))
    if not cells:
        raise InputError("no structures to batch")
    graphs = knn_graphs(np.stack(cells), positions, pbc=np.stack(pbcs), params=graph)
    frames = [frame_from_graph(cells[b], positions[b], numbers[b], graphs[b], pbc=pbcs[b])
              for b in range(len(cells))]
    return collate(frames, k=graph.k, dtype=dtype)

