"""Batches from several datasets, each step drawn by weight: deterministic and resumable.

Each dataset keeps its own stream, planned as :mod:`orbitgraph.train.loader` plans one
store (shards by rank, shuffle buffer, budgets), so a batch holds frames of one dataset.
As in fairchem's multi-dataset training (datasets sampled by ratios), each step draws its
dataset d with probability w_d (the normalised weights), from a generator seeded by
(seed, epoch) alone: every DDP rank draws the same datasets, and the whole epoch's draws
are known before the first step (:func:`dataset_draws`).

**An epoch** is as many steps as one pass over every dataset would take: the sum over
datasets of the batches of their first pass (each the busiest rank's count). A dataset
drawn more often than that starts a fresh pass once every batch of the current one has
been drawn (pass p of epoch e is planned with its own seed, drawn from (seed, dataset,
epoch, p), and its own number of batches: a reshuffle packs differently); one drawn less
leaves the rest of its pass unseen that epoch.
With weights proportional to the datasets' batch counts an epoch sees about every frame
once; larger weights over-sample a dataset, smaller ones under-sample it.

**Resume**: the plan of an epoch depends on the datasets' indexes, the loader settings,
the weights, the seed, the epoch and the rank (never on DataLoader workers), so the loader
position (batches delivered in the epoch, in the checkpoint) is all a resumed run needs:
it re-plans the epoch and skips that many (:class:`MixedStream`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from orbitgraph.model.batch import Batch
from orbitgraph.preprocess.graph_filter import filter_block
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.preprocess.store import ShardData
from orbitgraph.train.collate import collate_columns
from orbitgraph.train.datasets import Dataset
from orbitgraph.train.loader import (
    LoaderConfig,
    RankPlan,
    count_batches,
    empty_batch,
    plan_rank,
    read_rows,
    stream_loader,
)

MIX_SALT = 0xD15C  # keeps the draws' stream apart from the loader's shuffles


def dataset_draws(weights, n_steps: int, seed: int, epoch: int) -> np.ndarray:
    """int64 (n_steps,): the dataset of each step of ``epoch``, dataset d with probability
    ``weights[d]`` (normalised here), drawn independently by a generator seeded by
    (``seed``, ``epoch``): the same on every rank and in every process."""
    p = np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng([seed, epoch, MIX_SALT])
    return rng.choice(len(p), size=n_steps, p=p / p.sum()).astype(np.int64)


def pass_config(cfg: LoaderConfig, dataset: int, epoch: int, p: int) -> LoaderConfig:
    """The loader settings of pass ``p`` over dataset number ``dataset`` in ``epoch``: the
    same with a seed of its own (pass 0 of dataset 0 keeps ``cfg``'s seed, so one dataset
    is planned exactly as a single store)."""
    if dataset == 0 and p == 0:
        return cfg
    seed = int(np.random.SeedSequence([cfg.seed, dataset, epoch, p]).generate_state(1)[0])
    return cfg.model_copy(update={"seed": seed})


@dataclass
class MixedPlan:
    """One rank's steps of one epoch over several datasets: step s draws batch
    ``batch[s]`` of pass ``passes[s]`` of dataset ``draws[s]`` (batch -1: this rank has no
    batch of that dataset, an empty step under DDP)."""

    draws: np.ndarray
    passes: np.ndarray
    batch: np.ndarray

    def __len__(self) -> int:
        return len(self.draws)


class MixedPlanner:
    """Plans epochs of a mix of ``datasets`` (their train frames) for one rank; the plans of
    each dataset's passes are kept for the latest epoch."""

    def __init__(self, datasets: list[Dataset], cfg: LoaderConfig, rank: int = 0,
                 world: int = 1):
        self.datasets, self.cfg, self.rank, self.world = datasets, cfg, rank, world
        self._passes: dict[tuple[int, int, int], RankPlan] = {}  # this rank's plans
        self._batches: dict[tuple[int, int, int], int] = {}  # busiest rank's counts

    def _forget_other_epochs(self, epoch: int) -> None:
        for kept in (self._passes, self._batches):
            if kept and next(iter(kept))[1] != epoch:
                kept.clear()

    def pass_plan(self, d: int, epoch: int, p: int) -> RankPlan:
        """This rank's plan of pass ``p`` over dataset ``d`` in ``epoch``."""
        key = (d, epoch, p)
        if key not in self._passes:
            self._forget_other_epochs(epoch)
            self._passes[key] = plan_rank(self.datasets[d].store,
                                          pass_config(self.cfg, d, epoch, p), epoch,
                                          self.rank, self.world)
        return self._passes[key]

    def pass_batches(self, d: int, epoch: int, p: int) -> int:
        """Batches of the busiest rank in pass ``p`` over dataset ``d``: the other ranks'
        counted (:func:`~orbitgraph.train.loader.rank_batches`), their plans not kept."""
        key = (d, epoch, p)
        if key not in self._batches:
            self._forget_other_epochs(epoch)
            cfg = pass_config(self.cfg, d, epoch, p)
            store = self.datasets[d].store
            self._batches[key] = max(
                len(self.pass_plan(d, epoch, p)) if r == self.rank
                else count_batches(store, cfg, epoch, r, self.world)
                for r in range(self.world))
        return self._batches[key]

    def steps(self, epoch: int) -> int:
        """Steps of ``epoch``: the sum over datasets of their first pass's batches."""
        return sum(self.pass_batches(d, epoch, 0) for d in range(len(self.datasets)))

    def plan(self, epoch: int) -> MixedPlan:
        """This rank's :class:`MixedPlan` of ``epoch``. A dataset's draws take the batches
        of its pass 0 in order, then those of pass 1, and so on (each pass as many as its
        busiest rank has); a rank with fewer batches in that pass takes an empty step."""
        n = self.steps(epoch)
        draws = dataset_draws([data.weight for data in self.datasets], n, self.cfg.seed,
                              epoch)
        passes = np.zeros(n, dtype=np.int64)
        batch = np.zeros(n, dtype=np.int64)
        for d in range(len(self.datasets)):
            steps = np.flatnonzero(draws == d)
            p, first = 0, 0
            while first < len(steps):
                mine = steps[first:first + self.pass_batches(d, epoch, p)]
                passes[mine] = p
                batch[mine] = np.arange(len(mine))
                batch[mine[batch[mine] >= len(self.pass_plan(d, epoch, p))]] = -1
                p, first = p + 1, first + len(mine)
        return MixedPlan(draws, passes, batch)


class MixedStream(IterableDataset):
    """Yields the collated batches of one rank's epoch over several datasets, from step
    ``skip`` on, each with its energies moved onto the model's E0 reference
    (:meth:`Dataset.shift_energy`); a step with no batch for this rank yields an empty
    batch. ``dataset_of`` (after iteration starts: the dataset index of each planned step)
    lets a caller tell which dataset a batch came from."""

    def __init__(self, planner: MixedPlanner, epoch: int = 0, skip: int = 0,
                 graph: GraphParams | None = None, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.planner, self.epoch, self.skip, self.dtype = planner, epoch, skip, dtype
        self.graph = graph or planner.datasets[0].store.manifest.graph
        for data in planner.datasets:
            data.store.manifest.graph.check_can_serve(self.graph)
        self._plan = planner.plan(epoch)
        self.dataset_of = self._plan.draws

    def __len__(self) -> int:
        return len(self._plan)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self._plan
        steps = np.arange(self.skip + worker, len(plan), workers).tolist()
        # a shard is dropped after the last of this worker's steps that reads it
        needs: dict[tuple[int, int, int], int] = {}
        rows_of = []
        for i, s in enumerate(steps):
            d, p, b = int(plan.draws[s]), int(plan.passes[s]), int(plan.batch[s])
            rows = self.planner.pass_plan(d, self.epoch, p)[b] if b >= 0 else []
            rows_of.append((d, rows))
            for shard, _ in rows:
                needs[(d, shard)] = i
        drop_after: dict[int, list[tuple[int, int]]] = {}
        for key, i in needs.items():
            drop_after.setdefault(i, []).append(key)
        shards: list[dict[int, ShardData]] = [{} for _ in self.planner.datasets]
        for i, (d, rows) in enumerate(rows_of):
            data = self.planner.datasets[d]
            if not rows:
                yield empty_batch(self.graph.k, self.dtype)
                continue
            block = read_rows(data.store, rows, shards[d])
            for dataset, shard in drop_after.get(i, ()):
                del shards[dataset][shard]
            block = filter_block(block, data.store.manifest.graph, self.graph)
            yield data.shift_energy(collate_columns(block, k=self.graph.k, dtype=self.dtype))


def make_mixed_loader(planner: MixedPlanner, epoch: int = 0, skip: int = 0,
                      graph: GraphParams | None = None,
                      dtype: torch.dtype = torch.float64) -> DataLoader:
    """A DataLoader over :class:`MixedStream` (``planner.cfg``'s workers and pinning; its
    workers leave SIGINT to the trainer, :func:`~orbitgraph.train.loader.stream_loader`)."""
    return stream_loader(MixedStream(planner, epoch, skip, graph, dtype), planner.cfg)
