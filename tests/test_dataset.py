"""Stores for any PyTorch code: the map-style FrameDataset and its PyG Data/Batch, against
orbitgraph's own batches (the streaming loader's)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch_geometric.loader import DataLoader as PygDataLoader

from helpers import SMALL_MPTRJ
from orbitgraph.model.geometry import edge_vectors
from orbitgraph.preprocess.build import build_store
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.graph import knn_graph
from orbitgraph.preprocess.schema import FIELDS
from orbitgraph.preprocess.store import GraphParams, open_store
from orbitgraph.train.collate import collate
from orbitgraph.train.dataset import FrameDataset
from orbitgraph.train.loader import LoaderConfig, make_loader
from orbitgraph.train.pyg import batch_to_pyg, frame_to_data

SYNC = ClusterConfig(kind="synchronous")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dataset") / "store"
    build_store(SMALL_MPTRJ, out, frames_per_shard=25, cluster=SYNC, progress=False)
    return out


def per_frame(frame_ids, frame_of_atom, frame_of_edge, vectors, energy, forces, stress):
    """{frame id: (edge vectors, energy, forces, stress)} of one batch."""
    return {fid: (vectors[frame_of_edge == b], energy[b], forces[frame_of_atom == b], stress[b])
            for b, fid in enumerate(frame_ids)}


def test_items_are_the_store_frames_as_tensors(store_path):
    store = open_store(store_path)
    dataset = FrameDataset(store)
    assert len(dataset) == len(store)
    for i in (0, 17, len(store) - 1, -1):
        item, frame = dataset[i], store[i]
        assert set(item) == {f.name for f in FIELDS}
        for f in FIELDS:
            if f.dtype == "str":
                assert item[f.name] == str(frame[f.name])
                continue
            assert isinstance(item[f.name], torch.Tensor)
            assert item[f.name].dtype in (torch.int64, torch.float64, torch.bool), f.name
            assert tuple(item[f.name].shape) == np.shape(frame[f.name]), f.name
            np.testing.assert_array_equal(item[f.name].numpy(), frame[f.name], err_msg=f.name)
    with pytest.raises(IndexError):
        dataset[len(store)]


def test_a_torch_dataloader_collates_orbitgraph_batches(store_path):
    store = open_store(store_path).subset(split="train")
    dataset = FrameDataset(store)
    loader = DataLoader(dataset, batch_size=6, shuffle=False, collate_fn=dataset.collate)
    first = next(iter(loader))
    expected = collate([store[i] for i in range(6)], k=store.manifest.graph.k)
    assert first.frame_ids == store.frame_ids[:6]
    for name in ("numbers", "positions", "cell", "centers", "neighbors", "unit_shifts",
                 "rank_neighbor", "rank_unit_shift", "energy", "forces", "stress"):
        assert torch.equal(getattr(first, name), getattr(expected, name)), name
    assert sum(b.n_frames for b in loader) == len(store)


def test_a_smaller_graph_is_filtered_as_if_built(store_path):
    store = open_store(store_path)
    wanted = GraphParams(k=8, cutoff=4.0)
    dataset = FrameDataset(store, graph=wanted)
    for i in (3, 40):
        item = dataset[i]
        g = knn_graph(item["cell"].numpy(), item["positions"].numpy(), pbc=item["pbc"].numpy(),
                      k=wanted.k, ties=wanted.ties, tie_tolerance=wanted.tie_tolerance,
                      cutoff=wanted.cutoff)
        np.testing.assert_array_equal(item["n_edges"].numpy(), g.counts)
        np.testing.assert_array_equal(item["neighbors"].numpy(), g.neighbors)
        np.testing.assert_array_equal(item["unit_shifts"].numpy(), g.unit_shifts)
    with pytest.raises(ValueError, match="cannot serve k=24"):
        FrameDataset(store, graph=GraphParams(k=24))


def test_pyg_dataloader_gives_the_edge_vectors_and_labels_of_orbitgraph_batches(store_path):
    """Every frame, batched by PyG's DataLoader from the dataset, against the same frame in
    the streaming loader's (shuffled, budgeted) batches: edge vectors, energy, forces and
    stress."""
    store = open_store(store_path)
    ours: dict = {}
    for batch in make_loader(store, LoaderConfig(max_atoms=96, seed=3)):
        frame_of_edge = batch.batch[batch.centers]
        ours.update(per_frame(batch.frame_ids, batch.batch, frame_of_edge,
                              edge_vectors(batch.positions, batch.cell, batch), batch.energy,
                              batch.forces, batch.stress))
    theirs: dict = {}
    loader = PygDataLoader(FrameDataset(store, transform=frame_to_data), batch_size=7)
    for data in loader:
        src, dst = data.edge_index
        assert torch.equal(data.batch[src], data.batch[dst])  # edges stay within a frame
        vectors = data.pos[src] + data.shifts - data.pos[dst]
        assert data.cell.shape == (data.num_graphs, 3, 3)
        theirs.update(per_frame(data.frame_id, data.batch, data.batch[dst], vectors,
                                data.energy, data.forces, data.stress))
    assert sorted(theirs) == sorted(ours) and len(ours) == len(store)
    for fid, (v, e, f, s) in ours.items():
        v2, e2, f2, s2 = theirs[fid]
        # orbitgraph's positions are relative to each frame's first atom: same vectors
        torch.testing.assert_close(v2, v, rtol=0, atol=1e-12)
        assert torch.equal(e2, e) and torch.equal(f2, f) and torch.equal(s2, s), fid


def test_batch_to_pyg_keeps_frames_edges_and_labels(store_path):
    store = open_store(store_path)
    batch = collate([store[i] for i in (5, 0, 9)], k=store.manifest.graph.k)
    data = batch_to_pyg(batch)
    assert data.num_graphs == 3 and data.frame_id == batch.frame_ids
    assert torch.equal(data.edge_index, batch.edge_index)
    assert torch.equal(data.batch, batch.batch)
    vectors = data.pos[data.edge_index[0]] + data.shifts - data.pos[data.edge_index[1]]
    torch.testing.assert_close(vectors, edge_vectors(batch.positions, batch.cell, batch),
                               rtol=0, atol=1e-12)
    for name in ("energy", "forces", "stress", "cell", "numbers", "unit_shifts"):
        assert torch.equal(getattr(data, name), getattr(batch, name)), name
    assert data.get_example(1).frame_id == str(store[0]["frame_id"])
