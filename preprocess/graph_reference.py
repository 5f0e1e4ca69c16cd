"""A slow, obviously correct k-nearest-neighbour graph: the oracle for the fast kernel.

Brute force in numpy: for a radius ``R``, enumerate the whole box of cell shifts
``|S_a| <= ceil(R / h_a) + 1`` (``h_a`` the lattice-plane spacing; the ``+ 1`` covers atoms
anywhere within one cell of each other, and unwrapped positions are covered by widening the
box by their fractional spread), compute every distance, sort all candidates with
``np.lexsort`` by the key of :mod:`orbitgraph.preprocess.graph`, and double ``R`` until the first
candidate not kept lies well inside ``R``. No pruning, no reuse between atoms. Distances are
compared by the rule of :mod:`orbitgraph.preprocess.distance_grid`, applied to arrays.
"""
from __future__ import annotations

import numpy as np

from orbitgraph.errors import InputError
from orbitgraph.preprocess.distance_grid import (
    inside_bound,
    joins_by_tie,
    proves_complete,
    quantise,
)
from orbitgraph.preprocess.graph import (
    COINCIDENT_DISTANCE,
    GraphParams,
    KnnGraph,
    _as_pbc,
    _check_structure,
    resolve_graph_params,
)


def knn_graph_reference(cell, positions, pbc=(True, True, True),
                        params: GraphParams | None = None, **overrides) -> KnnGraph:
    """What :func:`orbitgraph.preprocess.graph.knn_graph` returns for the same arguments,
    by brute force."""
    cell = np.asarray(cell, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64)
    params = resolve_graph_params(params, **overrides)
    k, cutoff = params.k, params.cutoff
    _check_structure(-1, cell, pos)
    pbc = _as_pbc(pbc, 1)[0]
    n = len(pos)
    inv = np.linalg.inv(cell)
    heights = 1.0 / np.linalg.norm(inv, axis=0)
    frac = pos @ inv
    spread = np.ceil(frac.max(axis=0) - frac.min(axis=0)) if n else np.zeros(3)
    radius = np.inf if not pbc.any() else 2.0 * heights[pbc].min()

    q_tolerance = params.q_tolerance
    rows = []
    next_distance = np.full(n, np.inf)
    next_neighbor = np.full(n, -1, dtype=np.int64)
    next_unit_shift = np.zeros((n, 3), dtype=np.int64)
    for i in range(n):
        r = radius
        while True:
            m = np.where(pbc, np.ceil(np.where(np.isfinite(r), r, 0) / heights) + 1 + spread, 0)
            axes = [np.arange(-mm, mm + 1, dtype=np.int64) for mm in m.astype(np.int64)]
            shifts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
            jj = np.repeat(np.arange(n), len(shifts))
            ss = np.tile(shifts, (n, 1))
            v = (pos[jj] - pos[i]) + (ss[:, 0:1] * cell[0] + ss[:, 1:2] * cell[1]
                                      + ss[:, 2:3] * cell[2])
            d = np.sqrt(v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1] + v[:, 2] * v[:, 2])
            own = (jj == i) & ~ss.any(axis=1)
            sel = ~own & (d <= r)
            jj, ss, d = jj[sel], ss[sel], d[sel]
            q = quantise(d)
            order = np.lexsort((ss[:, 2], ss[:, 1], ss[:, 0], jj, q))
            jj, ss, d, q = jj[order], ss[order], d[order], q[order]
            if len(d) and d[0] < COINCIDENT_DISTANCE:
                raise InputError(f"atoms {i} and {jj[0]} (cell shift {tuple(ss[0].tolist())}) "
                                 f"are at the same place (closer than {COINCIDENT_DISTANCE} Å)")
            if len(d) >= k:
                kept = k
                if params.include_ties:  # on the grid of the ordering
                    kept = int(np.sum(joins_by_tie(q, q[k - 1], q_tolerance)))
            else:
                kept = len(d)
            if not np.isfinite(r) or (
                    kept < len(d) and proves_complete(q[kept], inside_bound(r))):
                break
            r *= 2.0
        keep = np.arange(kept)
        if cutoff is not None:
            keep = keep[d[:kept] <= cutoff]
        if len(keep) < len(d):
            next_distance[i] = d[len(keep)]
            next_neighbor[i] = jj[len(keep)]
            next_unit_shift[i] = ss[len(keep)]
        rows.append((np.full(len(keep), i), jj[keep], ss[keep], d[keep]))
    if rows:
        ci, cj, cs, cd = (np.concatenate(x) for x in zip(*rows, strict=True))
    else:
        ci, cj, cs, cd = (np.empty(0, np.int64), np.empty(0, np.int64),
                          np.empty((0, 3), np.int64), np.empty(0))
    return KnnGraph(ci.astype(np.int64), cj.astype(np.int64), cs.astype(np.int64).reshape(-1, 3),
                    cd, next_distance, next_neighbor, next_unit_shift)
