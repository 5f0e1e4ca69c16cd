"""Streaming graph shards into batches: never the whole dataset in memory.

An epoch is *planned* from the Parquet index alone (frame sizes are there), so it is cheap,
deterministic and resumable:

1. the store's shards are permuted by (seed, epoch) and dealt round-robin to DDP ranks:
   each takes disjoint shards;
2. a rank walks its shards in order through a shuffle buffer spanning ``shuffle_shards``
   shards and refilled frame by frame, drawing frames at random (seeded by seed, epoch,
   rank; see :func:`shuffled_order`);
3. frames are packed greedily into batches under an atom and an edge budget (or a fixed
   number of frames). A frame larger than the budget makes a batch of its own.

Only then are shards read and batches collated, DataLoader workers taking the rank's
batches in turn. The loader position is the number of batches delivered in the epoch; a
resumed run re-plans the same epoch (the same whatever the number of workers) and skips
that many. A store built with k = 16 can feed a model that wants fewer neighbours or a
shorter cutoff: edges are filtered at load time
(:func:`orbitgraph.preprocess.graph_filter.filter_block`), exactly as if the smaller graph
had been built.
"""
from __future__ import annotations

import itertools
import signal
from collections.abc import Sequence
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from orbitgraph.model.batch import Batch
from orbitgraph.preprocess.graph import concat_ranges
from orbitgraph.preprocess.graph_filter import filter_block
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.preprocess.schema import FIELDS, numpy_dtype
from orbitgraph.preprocess.store import GraphStore, ShardData
from orbitgraph.train.collate import collate_columns, concat_blocks
from orbitgraph.train.loader_config import DEVICE_PATTERN, DEVICES, Device, LoaderConfig  # noqa: F401


def over_budget(store: GraphStore, cfg: LoaderConfig) -> tuple[int, int, int]:
    """Frames of ``store`` over the batch budget by themselves (more than ``max_atoms`` atoms
    or the edge budget's edges): how many, and the largest atom and edge counts among them.
    Each becomes a batch of its own, larger than the budget meant to fit the device."""
    if cfg.batch_frames is not None or not len(store):
        return 0, 0, 0
    atoms = store.index.column("n_atoms").to_numpy()
    edges = store.index.column("n_edges").to_numpy()
    over = (atoms > cfg.max_atoms) | (edges > cfg.edge_budget)
    if not over.any():
        return 0, 0, 0
    return int(over.sum()), int(atoms[over].max()), int(edges[over].max())


# ------------------------------------------------------------------------- planning

class RankPlan(Sequence):
    """One rank's batches of one epoch, as arrays.

    Frame f of the plan is row ``row[f]`` of shard ``shard[f]`` (int64 (F,)); batch b holds
    frames ``batch_ptr[b]:batch_ptr[b + 1]`` (int64 (B + 1,)), in (shard, row) order. As a
    sequence, batch b is the list ``[(shard, row), ...]`` of plain ints.
    """

    __hash__ = None

    def __init__(self, shard: np.ndarray, row: np.ndarray, batch_ptr: np.ndarray):
        self.shard, self.row, self.batch_ptr = shard, row, batch_ptr

    def __len__(self) -> int:
        return len(self.batch_ptr) - 1

    def __getitem__(self, b):
        if isinstance(b, slice):
            return [self[i] for i in range(*b.indices(len(self)))]
        if not -len(self) <= b < len(self):
            raise IndexError(f"batch {b} of a plan of {len(self)} batches")
        b = b % len(self)
        a, z = self.batch_ptr[b], self.batch_ptr[b + 1]
        return list(zip(self.shard[a:z].tolist(), self.row[a:z].tolist(), strict=True))

    def __eq__(self, other) -> bool:
        if isinstance(other, RankPlan):
            return all(np.array_equal(x, y) for x, y in zip(
                (self.shard, self.row, self.batch_ptr),
                (other.shard, other.row, other.batch_ptr), strict=True))
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented


def epoch_shards(store: GraphStore, cfg: LoaderConfig, epoch: int) -> np.ndarray:
    shards = store.shard_indices.copy()
    if cfg.shuffle:
        np.random.default_rng([cfg.seed, epoch, 0x5EED]).shuffle(shards)
    return shards


def shuffled_order(store: GraphStore, shards: np.ndarray, cfg: LoaderConfig,
                   rng: np.random.Generator) -> np.ndarray:
    """Positions in ``store``'s index of the frames of ``shards``, in delivery order.

    The shuffle buffer is refilled frame by frame: shard i's frames are delivered at random
    over the span of the ``shuffle_shards`` shards that start with it (each frame gets a
    uniform random time in [c_i, c_{i+S}), c_i the frames of the shards before it), so at
    any point of the epoch the buffer holds S shards at staggered stages and a batch draws
    about evenly from all of them. A shard is needed only over its own span: about S shards
    are in memory at once. (Refilling only when a shard is drained made the S shards drain
    together, and batches then drew mostly from the one shard just added.) Only the first
    and last S - 1 shards' spans mix fewer shards.
    """
    shard_col = store.index.column("shard").to_numpy()
    if np.all(shard_col[1:] >= shard_col[:-1]):  # as builds write it: no sort to group
        first = np.searchsorted(shard_col, shards, side="left")
        last = np.searchsorted(shard_col, shards, side="right")
        positions = concat_ranges(first, last)
    else:
        by_shard = np.argsort(shard_col, kind="stable")  # positions grouped by shard
        first = np.searchsorted(shard_col[by_shard], shards, side="left")
        last = np.searchsorted(shard_col[by_shard], shards, side="right")
        positions = by_shard[concat_ranges(first, last)]
        del by_shard
    if not cfg.shuffle:
        return positions
    sizes = last - first
    c = np.concatenate([[0], np.cumsum(sizes)]).astype(np.float64)
    span_end = c[np.minimum(np.arange(len(shards)) + cfg.shuffle_shards, len(shards))]
    # times = start + u * width, u ~ U[0, 1), built in place (one float64 per frame)
    times = np.repeat(span_end - c[:-1], sizes)
    times *= rng.random(len(positions))
    times += np.repeat(c[:-1], sizes)
    return positions[np.argsort(times, kind="stable")]


def plan_rank(store: GraphStore, cfg: LoaderConfig, epoch: int, rank: int,
              world: int) -> RankPlan:
    """Batches of (shard, row) for one DDP rank in one epoch.

    The plan depends on the store's index, the loader settings, the seed, the epoch and the
    rank's place among ``world`` ranks, never on the number of DataLoader workers (they
    share it out batch by batch, see :class:`ShardStream`): a run resumed with another
    ``num_workers`` continues the same trajectory. Computed with whole-array operations
    (no Python loop over frames); :func:`epoch_plan` keeps it for the epoch.
    """
    order = _rank_order(store, cfg, epoch, rank, world)
    starts = batch_starts(store, order, cfg)
    sizes = np.diff(np.append(starts, len(order)))
    shard = store.index.column("shard").to_numpy()[order]
    row = store.index.column("row").to_numpy()[order]
    # within a batch, frames go in (shard, row) order so that each shard's rows are taken in
    # one step (the batch holds the same frames; the draw above decides which)
    within = _sort_within_batches(shard, row, np.repeat(np.arange(len(starts)), sizes))
    return RankPlan(shard[within].astype(np.int64), row[within].astype(np.int64),
                    np.append(starts, len(order)).astype(np.int64))


def _rank_order(store: GraphStore, cfg: LoaderConfig, epoch: int, rank: int,
                world: int) -> np.ndarray:
    """Positions in ``store``'s index of the rank's frames of the epoch, in delivery order."""
    shards = epoch_shards(store, cfg, epoch)[rank::world]
    return shuffled_order(store, shards, cfg, np.random.default_rng([cfg.seed, epoch, rank]))


def _sort_within_batches(shard: np.ndarray, row: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """The permutation that orders frames by (batch, shard, row): one sort of a combined
    int64 key (a three-key lexsort takes ~14x longer on 1.6M frames)."""
    if not len(row):
        return np.zeros(0, dtype=np.int64)
    rows, shards = int(row.max()) + 1, int(shard.max()) + 1
    if (int(batch[-1]) + 1) * shards * rows >= 2**63:
        return np.lexsort((row, shard, batch))
    key = (batch.astype(np.int64) * shards + shard) * rows + row
    return np.argsort(key, kind="stable")


def batch_starts(store: GraphStore, order: np.ndarray, cfg: LoaderConfig) -> np.ndarray:
    """int64 (B,): where each batch starts in ``order`` (positions in ``store``'s index, in
    delivery order) when the frames are packed greedily under the atom and edge budgets, or
    ``batch_frames`` at a time. A frame over the budget on its own makes a batch of its own
    (see :func:`over_budget`).

    Greedy packing is sequential, but where a batch starting at frame s ends depends on s
    alone: the cumulative atom and edge counts give every s its successor at once
    (``searchsorted``), and the batch starts are the chain of successors from 0, one step
    per batch."""
    n = len(order)
    if cfg.batch_frames is not None:
        return np.arange(0, n, cfg.batch_frames, dtype=np.int64)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    at_least = np.arange(1, n + 1, dtype=np.int64)  # a batch holds at least its first frame
    nxt = None
    for column, budget in (("n_atoms", cfg.max_atoms), ("n_edges", cfg.edge_budget)):
        total = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(store.index.column(column).to_numpy()[order], out=total[1:])
        # the batch from s holds frames s..e-1 while total[e] - total[s] <= budget
        end = np.searchsorted(total, total[:-1] + budget, side="right") - 1
        del total
        np.maximum(end, at_least, out=end)
        nxt = end if nxt is None else np.minimum(nxt, end, out=nxt)
    del at_least
    # the chain of successors, one Python step per batch (not per frame); numpy's scalar
    # reads, not a list of every frame's successor (~36 bytes per frame: 4 GB at 110 M)
    starts, s, step = [], 0, nxt.item
    while s < n:
        starts.append(s)
        s = step(s)
    return np.array(starts, dtype=np.int64)


_plans: dict = {}  # the plans of one (store, settings, epoch, world): see epoch_plan


def _plan_key(cfg: LoaderConfig) -> tuple:
    """The settings a plan depends on."""
    return (cfg.shuffle, cfg.shuffle_shards, cfg.seed, cfg.batch_frames, cfg.max_atoms,
            cfg.edge_budget)


def _epoch_cache(store: GraphStore, cfg: LoaderConfig, epoch: int, world: int) -> dict:
    """What this process keeps of the latest (store, settings, epoch, world): ``ranks``
    {rank: RankPlan} and ``lengths`` {rank: batches}."""
    key = (id(store), _plan_key(cfg), epoch, world)
    if _plans.get("key") != key or _plans.get("store") is not store:
        _plans.clear()
        # the store is held: its id stays its own
        _plans.update(key=key, store=store, ranks={}, lengths={})
    return _plans


def epoch_plan(store: GraphStore, cfg: LoaderConfig, epoch: int, rank: int,
               world: int) -> RankPlan:
    """:func:`plan_rank`, computed once per epoch: the plans of the latest (store,
    settings, epoch, world) are kept in this process, so ``steps_per_epoch`` and the rank's
    stream share them, and DataLoader workers inherit the plan made before they start
    instead of each planning again."""
    cache = _epoch_cache(store, cfg, epoch, world)
    if rank not in cache["ranks"]:
        cache["ranks"][rank] = plan_rank(store, cfg, epoch, rank, world)
        cache["lengths"][rank] = len(cache["ranks"][rank])
    return cache["ranks"][rank]


def rank_batches(store: GraphStore, cfg: LoaderConfig, epoch: int, rank: int,
                 world: int) -> int:
    """The number of batches of :func:`plan_rank`'s plan, counted without keeping the plan
    (a 110 M-frame epoch's plan is ~1.8 GB; each DDP rank needs every rank's count but
    only its own plan). Kept per epoch like :func:`epoch_plan`."""
    cache = _epoch_cache(store, cfg, epoch, world)
    if rank not in cache["lengths"]:
        cache["lengths"][rank] = count_batches(store, cfg, epoch, rank, world)
    return cache["lengths"][rank]


def count_batches(store: GraphStore, cfg: LoaderConfig, epoch: int, rank: int,
                  world: int) -> int:
    """``len(plan_rank(store, cfg, epoch, rank, world))``, without making the plan."""
    return len(batch_starts(store, _rank_order(store, cfg, epoch, rank, world), cfg))


def clear_plan_cache() -> None:
    """Forget the plans kept by :func:`epoch_plan`."""
    _plans.clear()


# ---------------------------------------------------------------------- the stream

class ShardStream(IterableDataset):
    """Yields collated :class:`Batch` objects for one rank and one epoch."""

    def __init__(self, store: GraphStore, cfg: LoaderConfig, epoch: int = 0, rank: int = 0,
                 world: int = 1, skip: int = 0, graph: GraphParams | None = None,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        self.store = store
        self.cfg = cfg
        self.epoch, self.rank, self.world = epoch, rank, world
        self.skip = skip
        self.stored = store.manifest.graph
        self.graph = graph or self.stored
        self.stored.check_can_serve(self.graph)
        self.dtype = dtype
        # planned here, in the process that makes the DataLoader: its workers inherit it
        self._plan = epoch_plan(store, cfg, epoch, rank, world)

    def plan(self) -> RankPlan:
        """This rank's batches of the epoch."""
        return self._plan

    def __len__(self) -> int:
        return len(self.plan())

    def __iter__(self) -> Iterator[Batch]:
        # DataLoader takes one batch from each worker in turn, starting at worker 0: worker
        # w makes batches skip + w, skip + w + W, ..., so they arrive in the planned order
        # whatever W is (each worker reads the shards its batches need)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.plan()
        batches = np.arange(self.skip + worker, len(plan), workers)
        # each shard is read once and dropped after its last batch: about the shuffle
        # buffer's shards (plus those a batch spans across a refill) are in memory
        a, z = plan.batch_ptr[batches], plan.batch_ptr[batches + 1]
        used = plan.shard[concat_ranges(a, z)][::-1]  # this worker's frames, last first
        shard_ids, last = np.unique(used, return_index=True)
        last_batch = np.repeat(np.arange(len(batches)), z - a)[::-1][last]
        dropped_after: dict[int, list[int]] = {}
        for s, b in zip(shard_ids.tolist(), last_batch.tolist(), strict=True):
            dropped_after.setdefault(b, []).append(s)
        shards: dict[int, ShardData] = {}
        for b, batch in enumerate(batches.tolist()):
            block = self.read_block(plan[batch], shards)
            for s in dropped_after.get(b, ()):
                del shards[s]
            yield collate_columns(filter_block(block, self.stored, self.graph),
                                  k=self.graph.k, dtype=self.dtype)

    def read_block(self, rows: list[tuple[int, int]],
                   shards: dict[int, ShardData]) -> dict[str, np.ndarray]:
        """The frames ``rows`` of the store (:func:`read_rows`)."""
        return read_rows(self.store, rows, shards)


def read_rows(store: GraphStore, rows: list[tuple[int, int]],
              shards: dict[int, ShardData]) -> dict[str, np.ndarray]:
    """The frames ``rows`` ((shard, row) pairs, grouped by shard, as planned) of ``store``
    as one block of columns; shards not yet in ``shards`` are read and added."""
    blocks = []
    for s, group in itertools.groupby(rows, key=lambda row: row[0]):
        if s not in shards:
            shards[s] = store.read_shard(s, cache=False)
        blocks.append(shards[s].take([r for _, r in group]))
    return concat_blocks(blocks)


def make_loader(store: GraphStore, cfg: LoaderConfig, epoch: int = 0, rank: int = 0,
                world: int = 1, skip: int = 0, graph: GraphParams | None = None,
                dtype: torch.dtype = torch.float64) -> DataLoader:
    """The DataLoader of this rank's batches of ``epoch``, the first ``skip`` left out
    (:func:`stream_loader`)."""
    return stream_loader(ShardStream(store, cfg, epoch, rank, world, skip, graph, dtype), cfg)


def stream_loader(stream: IterableDataset, cfg: LoaderConfig) -> DataLoader:
    """A DataLoader over ``stream``, whose items are whole batches, with ``cfg``'s workers
    and pinning. Its worker processes ignore SIGINT: a Ctrl-C on a terminal reaches the
    whole process group, and the trainer finishes its step (with the batches the workers
    deliver) before it stops (:mod:`orbitgraph.train.interrupts`); the workers end with the
    loader."""
    return DataLoader(stream, batch_size=None, num_workers=cfg.num_workers,
                      pin_memory=cfg.pin_memory and torch.cuda.is_available(),
                      persistent_workers=False,
                      worker_init_fn=ignore_sigint if cfg.num_workers else None)


def ignore_sigint(worker_id: int) -> None:
    """A loader worker's start: SIGINT is the main process's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def steps_per_epoch(store: GraphStore, cfg: LoaderConfig, epoch: int, world: int,
                    rank: int | None = None) -> int:
    """Batches of the busiest rank: every rank takes this many steps (idle ones take empty
    steps) so that DDP stays in lockstep and every frame is still seen exactly once.
    ``rank``: this process's rank, whose plan is made and kept (:func:`epoch_plan`) for its
    stream to reuse; the other ranks' batches are counted (:func:`rank_batches`), their
    plans not kept."""
    return max(len(epoch_plan(store, cfg, epoch, r, world)) if r == rank
               else rank_batches(store, cfg, epoch, r, world) for r in range(world))


def empty_batch(k: int, dtype: torch.dtype = torch.float64) -> Batch:
    """A batch of no frames, for a DDP rank that has run out of data in a step the other
    ranks still take: every field of the store schema with zero rows, collated like any
    block, so it carries exactly the fields (and trailing shapes) of a real batch."""
    block = {f.name: np.empty((0, *f.shape), dtype=numpy_dtype(f)) for f in FIELDS}
    return collate_columns(block, k=k, dtype=dtype)
