"""How well the streaming shuffle mixes batches, on an index shaped like MPtrj's.

MPtrj's frames come in relaxation trajectories (~11 frames per material, stored next to
each other), and a store holds them in shards of a few thousand. A batch of a global
shuffle holds ~34 unrelated frames from ~23 shards; a shuffle buffer spanning S shards can
at best draw evenly from S shards, and frames of one material then meet in a batch
n_shards / S times as often. The buffer must reach that bound through the whole epoch.
"""
from __future__ import annotations

import types

import numpy as np
import pyarrow as pa
import pytest

from orbitgraph.train.loader import LoaderConfig, batch_starts, plan_rank


def pack(store, order: np.ndarray, cfg: LoaderConfig) -> list[np.ndarray]:
    """Frames (positions in ``store``'s index, in delivery order) packed greedily into
    batches under the atom and edge budgets, or ``batch_frames`` at a time."""
    return np.split(order, batch_starts(store, order, cfg)[1:])

N_SHARDS, PER_SHARD = 40, 4000


def mptrj_shaped_index(seed: int = 0) -> pa.Table:
    """40 shards x 4,000 frames; materials of geometric(1/11) frames (mean ~11) stored
    consecutively, each of one size (lognormal, median 25 atoms), 16 edges per atom."""
    rng = np.random.default_rng(seed)
    shard, row, atoms, material = [], [], [], []
    m = 0
    for s in range(N_SHARDS):
        r = 0
        while r < PER_SHARD:
            k = min(PER_SHARD - r, int(rng.geometric(1 / 11)))
            n = int(np.clip(rng.lognormal(np.log(25), 0.6), 1, 300))
            shard += [s] * k
            row += range(r, r + k)
            atoms += [n] * k
            material += [m] * k
            r, m = r + k, m + 1
    atoms = np.array(atoms)
    return pa.table({"shard": np.array(shard), "row": np.array(row), "n_atoms": atoms,
                     "n_edges": 16 * atoms, "material_id": np.array(material)})


def batch_mixing(batches: list[list[tuple[int, int]]], material_of: dict) -> dict:
    """Means over batches: distinct shards, the largest single shard's share of the frames,
    and the share of frames whose material another frame of the batch shares."""
    shards, top, same = [], [], []
    for b in batches:
        _, per_shard = np.unique([s for s, _ in b], return_counts=True)
        _, per_material = np.unique([material_of[x] for x in b], return_counts=True)
        shards.append(len(per_shard))
        top.append(per_shard.max() / len(b))
        same.append(per_material[per_material > 1].sum() / len(b))
    return {"shards": np.mean(shards), "top_share": np.mean(top), "same_material": np.mean(same)}


@pytest.fixture(scope="module")
def store():
    index = mptrj_shaped_index()
    return types.SimpleNamespace(index=index, shard_indices=np.arange(N_SHARDS))


@pytest.fixture(scope="module")
def material_of(store):
    cols = [store.index[c].to_numpy() for c in ("shard", "row", "material_id")]
    return {(s, r): m for s, r, m in zip(*cols, strict=True)}


@pytest.mark.parametrize("shuffle_shards", [2, 4, 8])
def test_batches_mix_the_buffer_shards_as_well_as_its_size_allows(store, material_of,
                                                                   shuffle_shards):
    cfg = LoaderConfig(max_atoms=1024, shuffle_shards=shuffle_shards)
    plan = plan_rank(store, cfg, epoch=0, rank=0, world=1)
    cols = [store.index[c].to_numpy() for c in ("shard", "row")]
    assert sorted(x for b in plan for x in b) == sorted(zip(*cols, strict=True))  # every frame once
    shard_col, row_col = cols
    permutation = np.random.default_rng(1).permutation(len(store.index))
    global_shuffle = [list(zip(shard_col[b], row_col[b], strict=True))
                      for b in pack(store, permutation, cfg)]
    ideal = batch_mixing(global_shuffle, material_of)
    # past the first tenth of the epoch (refilling only when a shard drained gave 2.5
    # shards per batch, the largest holding 0.72 of it, at shuffle_shards = 4)
    got = batch_mixing(plan[len(plan) // 10:], material_of)
    assert got["shards"] >= 0.95 * shuffle_shards, got
    # no shard dominates: as when each batch's frames are drawn evenly from S shards
    rng = np.random.default_rng(2)
    even = np.mean([rng.multinomial(len(b), [1 / shuffle_shards] * shuffle_shards).max() / len(b)
                    for b in plan])
    assert got["top_share"] <= 1.1 * even, (got, even)
    # material mates meet N_SHARDS / S times as often as in a global shuffle, no more
    # (0.10 when refilling only when a shard drained, at S = 4)
    assert got["same_material"] <= 1.3 * ideal["same_material"] * N_SHARDS / shuffle_shards, \
        (got, ideal)
    # and the whole epoch (the first and last S - 1 shards mix fewer) stays close
    whole = batch_mixing(plan, material_of)
    assert whole["same_material"] <= 1.5 * ideal["same_material"] * N_SHARDS / shuffle_shards


def test_about_shuffle_shards_shards_are_in_memory_at_once(store):
    """A shard is read at its first batch and dropped after its last."""
    for shuffle_shards in (1, 4):
        plan = plan_rank(store, LoaderConfig(max_atoms=1024, shuffle_shards=shuffle_shards),
                         epoch=3, rank=0, world=1)
        first, last = {}, {}
        for b, rows in enumerate(plan):
            for s, _ in rows:
                first.setdefault(s, b)
                last[s] = b
        alive = np.zeros(len(plan) + 1, dtype=int)
        for s in first:
            alive[first[s]] += 1
            alive[last[s] + 1] -= 1
        assert np.cumsum(alive).max() <= shuffle_shards + 1


def greedy_batches(atoms: list[int], edges: list[int], max_atoms: int,
                   max_edges: int) -> list[list[int]]:
    """The packing rule frame by frame: a frame joins the batch while both sums stay within
    the budgets, else it starts the next batch (alone if it is over the budget by itself)."""
    batches: list[list[int]] = []
    a_sum = e_sum = 0
    for i, (a, e) in enumerate(zip(atoms, edges, strict=True)):
        if batches and batches[-1] and a_sum + a <= max_atoms and e_sum + e <= max_edges:
            batches[-1].append(i)
            a_sum, e_sum = a_sum + a, e_sum + e
        else:
            batches.append([i])
            a_sum, e_sum = a, e
    return batches


def test_vectorised_packing_follows_the_greedy_rule(store):
    """Batches as the frame-by-frame rule makes them, with frames over either budget alone
    and frames without edges; within a batch, frames in (shard, row) order."""
    rng = np.random.default_rng(3)
    atoms = rng.integers(1, 400, size=3000)
    edges = np.where(rng.random(3000) < 0.1, 0, 16 * atoms + rng.integers(0, 3000, size=3000))
    fake = types.SimpleNamespace(index=pa.table({"n_atoms": atoms, "n_edges": edges}))
    order = rng.permutation(3000)
    cfg = LoaderConfig(max_atoms=300, max_edges=6000)
    got = [b.tolist() for b in pack(fake, order, cfg)]
    want = greedy_batches(atoms[order].tolist(), edges[order].tolist(), 300, 6000)
    assert got == [order[b].tolist() for b in want]
    assert any(len(b) == 1 and atoms[b[0]] > 300 for b in got)  # over the budget alone
    plan = plan_rank(store, LoaderConfig(max_atoms=1024), epoch=1, rank=1, world=3)
    assert all(rows == sorted(rows) for rows in plan) and len(plan) > 100


def test_a_rank_counts_the_other_ranks_batches_without_keeping_their_plans(store):
    """Every DDP rank needs every rank's number of batches (all take the busiest rank's
    steps) but only its own plan: at OMat24's size the other plans are GBs per process."""
    from orbitgraph.train import loader
    cfg = LoaderConfig(max_atoms=1024, seed=5)
    world = 3
    lengths = [len(plan_rank(store, cfg, 2, r, world)) for r in range(world)]
    loader.clear_plan_cache()
    try:
        for r in range(world):
            assert loader.rank_batches(store, cfg, 2, r, world) == lengths[r]
        loader.clear_plan_cache()
        assert loader.steps_per_epoch(store, cfg, 2, world, rank=1) == max(lengths)
        assert set(loader._plans["ranks"]) == {1}  # only its own plan is kept
        assert loader.epoch_plan(store, cfg, 2, 1, world) == plan_rank(store, cfg, 2, 1, world)
    finally:
        loader.clear_plan_cache()


def test_an_index_not_in_shard_order_is_grouped_by_shard(store):
    """Builds write the index in shard order and the planner then skips sorting it; an index
    in another order (a filtered or concatenated one) is sorted: the same frames are planned,
    each shard's rows in its span."""
    cfg = LoaderConfig(max_atoms=1024, seed=5)
    rng = np.random.default_rng(0)
    shuffled = types.SimpleNamespace(index=store.index.take(rng.permutation(store.index.num_rows)),
                                     shard_indices=store.shard_indices)
    plan = plan_rank(shuffled, cfg, 0, 0, 1)
    frames = [x for batch in plan for x in batch]
    assert len(frames) == store.index.num_rows
    assert set(frames) == set(zip(store.index.column("shard").to_pylist(),
                                  store.index.column("row").to_pylist(), strict=True))
