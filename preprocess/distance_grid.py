"""The distance grid: the one rule by which the graph compares distances.

Every comparison of distances (the order of candidates, the k-th distance, tie inclusion,
the first candidate not kept, and the proof that a search is complete) is made on one grid,
``q = round(d / DISTANCE_QUANTUM)``, as int64. Two candidates are equally far exactly when
their grid values are equal, so the result is a function of the grid values alone and the
order of symmetry-equivalent neighbours does not depend on float rounding noise.

The functions below are the rule's only definition. Each is elementwise: numpy applies it
to arrays (the brute-force reference, load-time filtering), and the compiled kernel
(:mod:`orbitgraph.preprocess.knn_kernel`) compiles the same functions for scalars and
inlines them. They use nothing but numpy arithmetic on their arguments and this module's
constants, so that both can. The kernel's on-disk cache is keyed by this file too
(:mod:`orbitgraph.preprocess.kernel_cache`): an edit compiles the kernel again.
"""
from __future__ import annotations

import numpy as np

DISTANCE_QUANTUM = 1e-9  # Å, the grid's step
INV_QUANTUM = 1.0 / DISTANCE_QUANTUM  # 1/Å; multiplied, never divided, as in every caller


def quantise(d):
    """Grid value(s) of distance(s) ``d`` (Å, float64 scalar or array): int64
    ``round(d / DISTANCE_QUANTUM)`` (half up). Also turns a tie tolerance (Å) into grid
    steps."""
    return np.int64(d * INV_QUANTUM + 0.5)


def joins_by_tie(q, q_kth, q_tolerance):
    """Whether a candidate of grid distance ``q``, after the k-th (grid distance ``q_kth``),
    is kept by tie inclusion: it exceeds the k-th by at most ``q_tolerance`` grid steps
    (:func:`quantise` of the tolerance in Å). bool, elementwise."""
    return q <= q_kth + q_tolerance


def inside_bound(r):
    """int64: a candidate whose grid distance is below this lies strictly inside the ball
    of radius ``r`` Å searched (finite), whatever the rounding of either value. A search is
    complete when the first candidate not kept is below it (:func:`proves_complete`):
    nothing outside the ball could have been kept."""
    return np.int64(r * INV_QUANTUM) - 1


def proves_complete(q_next, bound):
    """Whether the first candidate not kept, at grid distance ``q_next``, lies strictly
    inside the searched ball whose :func:`inside_bound` is ``bound``. bool, elementwise."""
    return q_next < bound
