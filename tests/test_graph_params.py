"""The graph has one owner: its parameters, its distance-grid rule, load-time filtering and the
question "can these graphs serve this model" live in preprocess/, once, and every caller
(kernel, reference, loader, trainer, pipelines, calculator) goes through them."""
from __future__ import annotations

import numpy as np
from orbitgraph.preprocess import distance_grid


def test_compiled_rule_is_the_numpy_rule():
    """The kernel compiles the functions of distance_grid, so its grid values, tie decisions
    and completeness bounds are those numpy computes from the same functions."""
    from orbitgraph.preprocess import knn_kernel as kk
    rng = np.random.default_rng(1)
    d = np.concatenate([rng.uniform(0, 12, 2000), np.arange(1, 200) * 0.5e-9,
                        2.0 + np.arange(-3, 4) * 1e-9])
    q = distance_grid.quantise(d)
    assert q.dtype == np.int64
    assert np.array_equal(q, [kk._quantise(x) for x in d])
    q_tol = int(distance_grid.quantise(0.01))
    assert q_tol == 10_000_000
    q_kth = q[:500]
    later = q[500:1000]
    assert np.array_equal(distance_grid.joins_by_tie(later, q_kth, q_tol),
                          [kk._joins_by_tie(a, b, q_tol)
                           for a, b in zip(later, q_kth, strict=True)])
    bounds = distance_grid.inside_bound(d[:300])
    assert np.array_equal(bounds, [kk._inside_bound(x) for x in d[:300]])
    assert np.array_equal(distance_grid.proves_complete(q[:300], bounds),
                          [kk._proves_complete(a, b)
                           for a, b in zip(q[:300], bounds, strict=True)])
