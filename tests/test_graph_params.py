"""The graph has one owner: its parameters, its distance-grid rule, load-time filtering and the
question "can these graphs serve this model" live in preprocess/, once, and every caller
(kernel, reference, loader, trainer, pipelines, calculator) goes through them."""
from __future__ import annotations

import numpy as np
import pytest
from orbitgraph.preprocess import distance_grid
from orbitgraph.preprocess.graph import knn_graph, knn_graphs
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.preprocess.graph_reference import knn_graph_reference

FIELDS = ("centers", "neighbors", "unit_shifts", "distances", "next_distance", "next_neighbor",
          "next_unit_shift")


def _rattled(seed: int = 0, n: int = 6):
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * 4.0 + rng.normal(0, 0.2, (3, 3))
    return cell, rng.random((n, 3)) @ cell


def test_graph_functions_take_graph_params():
    """A GraphParams is what knn_graph, knn_graphs and the reference take; keyword
    arguments are overrides of its fields and give the same graphs."""
    cell, pos = _rattled()
    params = GraphParams(k=8, ties="include", tie_tolerance=0.01, cutoff=3.5)
    by_params = knn_graph(cell, pos, params=params)
    by_keywords = knn_graph(cell, pos, k=8, tie_tolerance=0.01, cutoff=3.5)
    batch = knn_graphs([cell], [pos], (True, True, True), params)
    reference = knn_graph_reference(cell, pos, params=params)
    overridden = knn_graph(cell, pos, params=GraphParams(k=3), k=8, tie_tolerance=0.01,
                           cutoff=3.5)
    for field in FIELDS:
        for other in (by_keywords, batch[0], reference, overridden):
            np.testing.assert_array_equal(getattr(by_params, field), getattr(other, field))
    assert by_params.n_edges < knn_graph(cell, pos, k=8).n_edges  # the parameters mattered
    assert params.q_tolerance == distance_grid.quantise(0.01) == 10_000_000
    with pytest.raises(TypeError, match="'kk'"):
        knn_graph(cell, pos, kk=3)


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
