"""Load-time filtering: the graphs of smaller parameters cut from stored, larger ones.

A store built with k = 16 can feed a model that wants fewer neighbours or a shorter cutoff
(:meth:`GraphParams.can_serve <orbitgraph.preprocess.graph_params.GraphParams.can_serve>`):
each centre's stored edges are in the graph's order, so the smaller graph is a prefix of
them, cut by the rule of :mod:`orbitgraph.preprocess.distance_grid` exactly as the kernel
cuts, and the result equals a direct build.
"""
from __future__ import annotations

import numpy as np

from orbitgraph.preprocess.distance_grid import joins_by_tie, quantise
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.preprocess.schema import edge_index


def edge_distances(block: dict, centers: np.ndarray, neighbors: np.ndarray,
                   frame_of_edge: np.ndarray) -> np.ndarray:
    """(E,) Å for a block of frames (indices from
    :func:`orbitgraph.preprocess.schema.edge_index`), with the same float64 formula as the
    graph kernel: (r_j - r_i) + (S_0 a + S_1 b + S_2 c)."""
    pos = block["positions"]
    cell = block["cell"][frame_of_edge]  # (E, 3, 3)
    s = block["unit_shifts"].astype(np.float64)
    v = (pos[neighbors] - pos[centers]) + (s[:, 0:1] * cell[:, 0] + s[:, 1:2] * cell[:, 1]
                                           + s[:, 2:3] * cell[:, 2])
    return np.sqrt(v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1] + v[:, 2] * v[:, 2])


def filter_block(block: dict, stored: GraphParams, wanted: GraphParams) -> dict:
    """The block's graphs as if built with ``wanted``.

    ``block``: frames as store columns (:meth:`ShardData.take
    <orbitgraph.preprocess.store.ShardData.take>`), their graphs built with ``stored``, which
    must contain those of ``wanted`` (:meth:`GraphParams.can_serve`, which the loader
    checks once). Edges are stored per centre in (distance, neighbour, shift) order, so the
    smaller graph is a prefix of each centre's edges: the first k, the ties of the k-th
    (``include``, decided on the distance grid as the kernel decides), and none beyond the
    cutoff. The first candidate not kept (``next_distance``, ``next_neighbor``,
    ``next_unit_shift``) becomes the first dropped edge, so the block equals a direct build.
    """
    if wanted == stored:
        return block
    n_edges = block["n_edges"].astype(np.int64)
    start = np.cumsum(n_edges) - n_edges
    centers, neighbors, frame_of_edge = edge_index(block)
    d = edge_distances(block, centers, neighbors, frame_of_edge)
    rank = np.arange(len(d)) - start[centers]
    k = wanted.k
    keep = np.minimum(n_edges, k)
    if wanted.include_ties:
        has_k = n_edges >= k
        q = quantise(d)
        q_kth = np.zeros(len(n_edges), dtype=np.int64)  # read only where rank >= k: has_k
        q_kth[has_k] = q[start[has_k] + k - 1]
        beyond = (rank >= k) & ~joins_by_tie(q, q_kth[centers], wanted.q_tolerance)
        first_out = n_edges.copy()
        np.minimum.at(first_out, centers[beyond], rank[beyond])
        keep = np.where(has_k, first_out, n_edges)
    if wanted.cutoff is not None:
        too_long = (d > wanted.cutoff) & (rank < keep[centers])
        first_long = keep.copy()
        np.minimum.at(first_long, centers[too_long], rank[too_long])
        keep = first_long
    mask = rank < keep[centers]
    cut = np.nonzero(keep < n_edges)[0]
    first_dropped = start[cut] + keep[cut]
    nxt = block["next_distance"].copy()
    nxt[cut] = d[first_dropped]
    nxt_j = block["next_neighbor"].copy()
    nxt_j[cut] = block["neighbors"][first_dropped]
    nxt_s = block["next_unit_shift"].copy()
    nxt_s[cut] = block["unit_shifts"][first_dropped]
    return {**block, "n_edges": keep.astype(block["n_edges"].dtype),
            "neighbors": block["neighbors"][mask], "unit_shifts": block["unit_shifts"][mask],
            "next_distance": nxt, "next_neighbor": nxt_j, "next_unit_shift": nxt_s}
