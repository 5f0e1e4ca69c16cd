"""Frames (dicts of store fields) -> one :class:`model.Batch`, offsets applied once.

Per-frame fields stack, per-atom fields concatenate, per-edge fields concatenate with the
frame's atom offset added to neighbour indices, and centres come from the CSR counts. Which
field is which follows :mod:`preprocess.schema`, never the name.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from model.batch import Batch


def collate(frames: Sequence[dict], k: int, dtype: torch.dtype = torch.float64) -> Batch:
    """Frames as returned by the store reader (or :func:`frame_from_graph`) -> Batch.

    ``k`` is the k of the frames' graphs; it locates each centre's (k+1)-th edge, if any
    (``rank_edge``), which the model's rank envelope needs.
    """
    n_atoms = np.array([len(f["numbers"]) for f in frames], dtype=np.int64)
    atom_offset = np.concatenate(([0], np.cumsum(n_atoms)[:-1]))
    n_edges_atom = np.concatenate([np.asarray(f["n_edges"], dtype=np.int64) for f in frames])
    centers = np.repeat(np.arange(n_atoms.sum(), dtype=np.int64), n_edges_atom)
    edge_start = np.concatenate(([0], np.cumsum(n_edges_atom)[:-1]))
    rank_edge = np.where(n_edges_atom > k, edge_start + k, -1)
    neighbors = np.concatenate([np.asarray(f["neighbors"], dtype=np.int64) + off
                                for f, off in zip(frames, atom_offset)])

    def cat(key, shape=()):
        return np.concatenate([np.asarray(f[key]).reshape(-1, *shape) for f in frames])

    def tensor(a, dt=dtype):
        return torch.from_numpy(np.ascontiguousarray(a)).to(dt)

    has_labels = all("energy" in f for f in frames)
    return Batch(
        numbers=tensor(cat("numbers"), torch.long),
        positions=tensor(cat("positions", (3,))),
        cell=tensor(np.stack([np.asarray(f["cell"]) for f in frames])),
        frame_index=torch.repeat_interleave(torch.arange(len(frames)), torch.from_numpy(n_atoms)),
        n_atoms=torch.from_numpy(n_atoms),
        centers=torch.from_numpy(centers),
        neighbors=torch.from_numpy(neighbors),
        shifts=tensor(cat("shifts", (3,)).astype(np.float64)),
        next_distance=tensor(cat("next_distance").astype(np.float64)),
        rank_edge=torch.from_numpy(rank_edge.astype(np.int64)),
        energy=tensor(np.array([float(f["energy"]) for f in frames])) if has_labels else None,
        forces=tensor(cat("forces", (3,)).astype(np.float64)) if has_labels else None,
        stress=tensor(np.stack([np.asarray(f["stress"], dtype=np.float64) for f in frames]))
        if has_labels else None,
        frame_ids=[str(f.get("frame_id", i)) for i, f in enumerate(frames)],
    )


def frame_from_graph(cell, positions, numbers, graph, pbc=(True, True, True), **labels) -> dict:
    """A frame dict from a structure and its :class:`preprocess.graph.KnnGraph`."""
    return {"cell": np.asarray(cell, dtype=np.float64),
            "positions": np.asarray(positions, dtype=np.float64),
            "numbers": np.asarray(numbers), "pbc": np.asarray(pbc, dtype=bool),
            "n_edges": graph.counts, "neighbors": graph.neighbors, "shifts": graph.shifts,
            "next_distance": graph.next_distance, **labels}
