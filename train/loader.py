"""Streaming graph shards into batches: never the whole dataset in memory.

An epoch is *planned* from the Parquet index alone (frame sizes are there), so it is cheap,
deterministic and resumable:

1. the store's shards are permuted by (seed, epoch) and dealt round-robin to DDP ranks and,
   within a rank, to DataLoader workers: each takes disjoint shards;
2. a worker walks its shards in order through a shuffle buffer spanning
   ``shuffle_shards`` shards, drawing frames at random (seeded by seed, epoch, rank, worker);
3. frames are packed greedily into batches under an atom and an edge budget (or a fixed
   number of frames).

Only then are shards read, one at a time, and batches collated. The loader position is the
number of batches delivered in the epoch; a resumed run re-plans the same epoch and skips
that many. A store built with k = 16 can feed a model that wants fewer neighbours or a
shorter cutoff: edges are filtered at load time (:func:`filter_block`), exactly as if the
smaller graph had been built.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from model.batch import Batch
from preprocess.schema import FIELDS, numpy_dtype
from preprocess.store import GraphStore, ShardData
from preprocess.store.params import GraphParams
from train.collate import collate_columns, concat_blocks, edge_index


@dataclass(frozen=True)
class LoaderConfig:
    max_atoms: int = 1024  # atoms per batch (budget)
    max_edges: int | None = None  # edges per batch (budget; default 20 x max_atoms)
    batch_frames: int | None = None  # fixed number of frames per batch instead of budgets
    shuffle: bool = True
    shuffle_shards: int = 4  # the shuffle buffer spans this many shards
    num_workers: int = 0
    pin_memory: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.max_atoms < 1:
            raise ValueError(f"loader.max_atoms must be >= 1, got {self.max_atoms}")
        if self.batch_frames is not None and self.batch_frames < 1:
            raise ValueError(f"loader.batch_frames must be >= 1, got {self.batch_frames}")
        if self.shuffle_shards < 1:
            raise ValueError(f"loader.shuffle_shards must be >= 1, got {self.shuffle_shards}")

    @property
    def edge_budget(self) -> int:
        return self.max_edges if self.max_edges is not None else 20 * self.max_atoms


# ------------------------------------------------------------------------- planning

def epoch_shards(store: GraphStore, cfg: LoaderConfig, epoch: int) -> np.ndarray:
    shards = store.shard_indices.copy()
    if cfg.shuffle:
        np.random.default_rng([cfg.seed, epoch, 0x5EED]).shuffle(shards)
    return shards


def plan_worker(store: GraphStore, cfg: LoaderConfig, epoch: int, rank: int, world: int,
                worker: int, workers: int) -> list[list[tuple[int, int]]]:
    """Batches of (shard, row) for one worker of one rank in one epoch."""
    shards = epoch_shards(store, cfg, epoch)
    slot = rank * workers + worker
    mine = shards[slot::world * workers]
    rng = np.random.default_rng([cfg.seed, epoch, rank, worker])
    n_atoms = store.index.column("n_atoms").to_numpy()
    n_edges = store.index.column("n_edges").to_numpy()
    shard_col = store.index.column("shard").to_numpy()
    row_col = store.index.column("row").to_numpy()
    positions_of = {int(s): np.nonzero(shard_col == s)[0] for s in mine}

    order: list[int] = []  # positions in the (sub)set's index, in delivery order
    buffer: list[int] = []
    pending = list(mine)
    while pending or buffer:
        while pending and len({int(shard_col[p]) for p in buffer}) < cfg.shuffle_shards:
            buffer.extend(positions_of[int(pending.pop(0))].tolist())
        if not cfg.shuffle:
            order.extend(buffer)
            buffer = []
            continue
        # draw one shard's worth of frames from the buffer, then refill
        take = max(1, len(buffer) // max(1, len({int(shard_col[p]) for p in buffer})))
        picks = rng.choice(len(buffer), size=min(take, len(buffer)), replace=False)
        chosen = set(picks.tolist())
        order.extend(buffer[i] for i in picks)
        buffer = [p for i, p in enumerate(buffer) if i not in chosen]

    batches, current, atoms, edges = [], [], 0, 0
    for p in order:
        a, e = int(n_atoms[p]), int(n_edges[p])
        if cfg.batch_frames is not None:
            full = len(current) >= cfg.batch_frames
        else:
            full = current and (atoms + a > cfg.max_atoms or edges + e > cfg.edge_budget)
        if full:
            batches.append(current)
            current, atoms, edges = [], 0, 0
        current.append((int(shard_col[p]), int(row_col[p])))
        atoms += a
        edges += e
    if current:
        batches.append(current)
    # within a batch, frames go in (shard, row) order so that each shard's rows are taken in
    # one step (the batch holds the same frames; the draw above decides which)
    return [sorted(b) for b in batches]


def round_robin_skips(counts: list[int], delivered: int) -> tuple[list[int], int]:
    """After ``delivered`` batches of DataLoader's round-robin over workers (exhausted ones
    are passed over): how many each worker had delivered, and whose turn is next."""
    skips = [0] * len(counts)
    w = 0
    for _ in range(delivered):
        for _ in range(len(counts)):
            if skips[w] < counts[w]:
                break
            w = (w + 1) % len(counts)
        skips[w] += 1
        w = (w + 1) % len(counts)
    return skips, w


# ------------------------------------------------------------------ load-time filtering

def edge_distances(block: dict, centers: np.ndarray, neighbors: np.ndarray,
                   frame_of_edge: np.ndarray) -> np.ndarray:
    """(E,) Å for a block of frames (indices from :func:`train.collate.edge_index`), with the
    same float64 formula as the graph kernel: (r_j - r_i) + (S_0 a + S_1 b + S_2 c)."""
    pos = block["positions"]
    cell = block["cell"][frame_of_edge]  # (E, 3, 3)
    s = block["shifts"].astype(np.float64)
    v = (pos[neighbors] - pos[centers]) + (s[:, 0:1] * cell[:, 0] + s[:, 1:2] * cell[:, 1]
                                           + s[:, 2:3] * cell[:, 2])
    return np.sqrt(v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1] + v[:, 2] * v[:, 2])


def filter_block(block: dict, stored: GraphParams, wanted: GraphParams) -> dict:
    """The block's graphs as if built with ``wanted`` (requires ``stored.can_serve(wanted)``).

    Edges are stored per centre in (distance, neighbour, shift) order, so the smaller graph
    is a prefix of each centre's edges: the first k, the ties within the tolerance of the
    k-th (``include``), and none beyond the cutoff. ``next_distance`` becomes the distance
    of the first dropped edge.
    """
    if wanted == stored:
        return block
    n_edges = block["n_edges"].astype(np.int64)
    start = np.cumsum(n_edges) - n_edges
    centers, neighbors, frame_of_edge = edge_index(block)
    d = edge_distances(block, centers, neighbors, frame_of_edge)
    n = len(n_edges)
    rank = np.arange(len(d)) - start[centers]
    k = wanted.k
    keep = np.minimum(n_edges, k)
    if wanted.ties == "include":
        has_k = n_edges >= k
        limit = np.full(n, -np.inf)
        limit[has_k] = d[start[has_k] + k - 1] + wanted.tie_tolerance
        beyond = (rank >= k) & (d > limit[centers])
        first_out = n_edges.copy()
        np.minimum.at(first_out, centers[beyond], rank[beyond])
        keep = np.where(has_k, first_out, n_edges)
    if wanted.cutoff is not None:
        too_long = (d > wanted.cutoff) & (rank < keep[centers])
        first_long = keep.copy()
        np.minimum.at(first_long, centers[too_long], rank[too_long])
        keep = first_long
    mask = rank < keep[centers]
    nxt = block["next_distance"].astype(np.float64).copy()
    cut = keep < n_edges
    nxt[cut] = d[start[cut] + keep[cut]]
    return {**block, "n_edges": keep.astype(block["n_edges"].dtype),
            "neighbors": block["neighbors"][mask], "shifts": block["shifts"][mask],
            "next_distance": nxt.astype(block["next_distance"].dtype)}


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
        if not self.stored.can_serve(self.graph):
            raise ValueError(f"the store's graphs (k={self.stored.k}, ties={self.stored.ties}, "
                             f"cutoff={self.stored.cutoff}) cannot serve k={self.graph.k}, "
                             f"ties={self.graph.ties}, cutoff={self.graph.cutoff}; build a "
                             "store with these graph parameters")
        self.dtype = dtype

    @property
    def workers(self) -> int:
        return max(1, self.cfg.num_workers)

    def plans(self) -> list[list[list[tuple[int, int]]]]:
        return [plan_worker(self.store, self.cfg, self.epoch, self.rank, self.world, w,
                            self.workers) for w in range(self.workers)]

    def __len__(self) -> int:
        return sum(len(p) for p in self.plans())

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        plans = self.plans()
        skips, turn = round_robin_skips([len(p) for p in plans], self.skip)
        # DataLoader starts its round-robin at worker 0: rotate so the cycle continues
        plan = ((info.id if info is not None else 0) + turn) % len(plans)
        batches = plans[plan][skips[plan]:]
        # each shard is read once and dropped after its last batch: about the shuffle
        # buffer's shards (plus those a batch spans across a refill) are in memory
        last_use = {s: b for b, rows in enumerate(batches) for s, _ in rows}
        shards: dict[int, ShardData] = {}
        for b, rows in enumerate(batches):
            block = self.read_block(rows, shards)
            for s in {s for s, _ in rows if last_use[s] == b}:
                del shards[s]
            yield collate_columns(filter_block(block, self.stored, self.graph),
                                  k=self.graph.k, dtype=self.dtype)

    def read_block(self, rows: list[tuple[int, int]],
                   shards: dict[int, ShardData]) -> dict[str, np.ndarray]:
        """The frames ``rows`` (grouped by shard, as planned) as one block of columns;
        shards not yet in ``shards`` are read and added."""
        blocks = []
        for s, group in itertools.groupby(rows, key=lambda row: row[0]):
            if s not in shards:
                shards[s] = self.store.read_shard(s, cache=False)
            blocks.append(shards[s].take([r for _, r in group]))
        return concat_blocks(blocks)


def make_loader(store: GraphStore, cfg: LoaderConfig, epoch: int = 0, rank: int = 0,
                world: int = 1, skip: int = 0, graph: GraphParams | None = None,
                dtype: torch.dtype = torch.float64) -> DataLoader:
    stream = ShardStream(store, cfg, epoch, rank, world, skip, graph, dtype)
    return DataLoader(stream, batch_size=None, num_workers=cfg.num_workers,
                      pin_memory=cfg.pin_memory and torch.cuda.is_available(),
                      persistent_workers=False)


def steps_per_epoch(store: GraphStore, cfg: LoaderConfig, epoch: int, world: int) -> int:
    """Batches of the busiest rank: every rank takes this many steps (idle ones take empty
    steps) so that DDP stays in lockstep and every frame is still seen exactly once."""
    return max(len(ShardStream(store, cfg, epoch, r, world)) for r in range(world))


def empty_batch(k: int, dtype: torch.dtype = torch.float64) -> Batch:
    """A batch of no frames, for a DDP rank that has run out of data in a step the other
    ranks still take: every field of the store schema with zero rows, collated like any
    block, so it carries exactly the fields (and trailing shapes) of a real batch."""
    block = {f.name: np.empty((0, *f.shape), dtype=numpy_dtype(f)) for f in FIELDS}
    return collate_columns(block, k=k, dtype=dtype)
