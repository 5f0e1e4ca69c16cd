"""The graph has one owner: its parameters, its distance-grid rule, load-time filtering and the
question "can these graphs serve this model" live in preprocess/, once, and every caller
(kernel, reference, loader, trainer, pipelines, calculator) goes through them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import write_small_mptrj
from orbitgraph.preprocess import distance_grid
from orbitgraph.preprocess.graph import knn_graph, knn_graphs
from orbitgraph.preprocess.graph_params import (
    GraphMismatchError,
    GraphParams,
    graph_for_model,
)
from orbitgraph.preprocess.graph_reference import knn_graph_reference

ROOT = Path(__file__).resolve().parents[1]
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


def test_preprocess_owns_filtering_and_the_model_question():
    """Load-time filtering and "can these graphs serve this model" import neither model/
    nor train/ (nor torch): they belong to the graph's room."""
    code = ("import sys\n"
            "from orbitgraph.preprocess.graph_filter import filter_block\n"
            "from orbitgraph.preprocess.graph_params import graph_for_model, GraphParams\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('orbitgraph.model', "
            "'orbitgraph.train', 'torch')))\n"
            "print(bad)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_graph_for_model():
    stored = GraphParams(k=16, tie_tolerance=0.5)
    assert graph_for_model(stored, None, "adaptive", 0.5) == stored
    assert graph_for_model(stored, 8, "adaptive", 0.5) == GraphParams(k=8, tie_tolerance=0.5)
    with pytest.raises(GraphMismatchError, match="needs k=20.*built with k=16") as err:
        graph_for_model(stored, 20, "next", 0.5)
    assert err.value.model_key == "k"
    for graphs in (GraphParams(ties="break"), GraphParams(tie_tolerance=0.25)):
        with pytest.raises(GraphMismatchError, match="rank_envelope 'adaptive'") as err:
            graph_for_model(graphs, None, "adaptive", 0.5)
        assert err.value.model_key == "rank_envelope"
        assert graph_for_model(graphs, None, "next", 0.5) == graphs


@pytest.mark.parametrize("graph,model,key", [
    ({"k": 4, "ties": "break"}, {}, "rank_envelope"),
    ({"k": 4}, {"k": 8}, "k"),
])
def test_pipelines_and_trainer_refuse_alike(tmp_path, graph, model, key):
    """The pipelines refuse, before training, exactly what the trainer refuses, naming the
    experiment's key: they ask the same question."""
    from orbitgraph.train.config import TrainConfig
    from orbitgraph.train.pipelines import PipelineError, load_pipelines
    from orbitgraph.train.trainer import Trainer

    src = write_small_mptrj(tmp_path / "small.json", frames=8)
    model = {"preset": "mace", "channels": 8, **model}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump({
        "cluster": {"kind": "synchronous"},
        "sources": {"s": {"path": str(src), "format": "mptrj-json"}},
        "stores": {"b": {"source": "s", "graph": graph, "frames_per_shard": 8,
                         "split": {"val_fraction": 0.0, "test_fraction": 0.0}}},
        "experiments": {"e": {"store": "b", "model": model}}}))
    config = load_pipelines(path)
    with pytest.raises(PipelineError) as refused:
        config.run_experiment("e", progress=False)
    line = str(refused.value)
    assert line.startswith(f"experiments.e.model.{key}: ") and refused.value.path == \
        f"experiments.e.model.{key}"
    with pytest.raises(ValueError) as trainer_refused:
        Trainer(config.store_path("b"), model, TrainConfig(), tmp_path / "out")
    assert str(trainer_refused.value) in line
