"""The loader's epoch plan at MPtrj scale: 1,580,395 frames in 395 shards.

usage: python benchmarks/loader_plan.py [--repeats 5] [--world 1 4] [--workers 4]
       python benchmarks/loader_plan.py --omat [--frames 110000000] [--repeats 3] [--world 1 8]

An index shaped like MPtrj's (materials of ~11 frames stored together, lognormal sizes with
a median of 25 atoms, 16 edges per atom; no store on disk: the planner reads only the
index) is planned by the loader (:func:`orbitgraph.train.loader.plan_rank`,
:func:`orbitgraph.train.loader.steps_per_epoch`) and by the planner it replaced, kept below as
``before_*`` (a Python loop over frames for packing and sorting, and one plan per
DataLoader worker and per ``steps_per_epoch`` call). The two must give identical batches.
Prints medians over repeats, interleaved, and the ratios:

- one rank's plan (all frames when world = 1);
- what one rank paid per epoch before (``steps_per_epoch``: every rank's plan; then every
  DataLoader worker its own) and what it pays now (``steps_per_epoch`` counts every rank's
  batches once and plans its own, which the rank's DataLoader reuses).

``--omat``: an index shaped like OMat24's (``--frames``, default 110 M frames, in shards of
4,000 frames as ``orbitgraph build`` writes them; lognormal sizes with a median of 12 atoms,
clipped to 1-160; 16 edges per atom; the store index's own dtypes: int32 shard, row and
n_atoms, int64 n_edges; the index's id strings are left out, the planner does not read
them). Only the planner of today (the one before loops over frames in Python: hours at this
size): for each world size, seconds (median of ``--repeats``) of one rank's epoch as a rank
pays it (``steps_per_epoch``, which counts every rank's batches and plans its own, then that
plan reused), and
the peak resident memory above the index's, of the first such epoch (this process's peak
resident memory, read after each: measured for the first world size given, a lower bound
for the next ones).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (drops this folder from the import path)
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

N_FRAMES, N_SHARDS = 1_580_395, 395


def omat_index(frames: int, frames_per_shard: int = 4000, seed: int = 0
               ) -> types.SimpleNamespace:
    """A store-like object shaped like OMat24's index (see the module), ``frames`` frames."""
    rng = np.random.default_rng(seed)
    atoms = np.clip(rng.lognormal(np.log(12), 0.6, size=frames), 1, 160).astype(np.int32)
    positions = np.arange(frames, dtype=np.int64)
    shard = (positions // frames_per_shard).astype(np.int32)
    row = (positions % frames_per_shard).astype(np.int32)
    del positions
    index = pa.table({"shard": shard, "row": row, "n_atoms": atoms,
                      "n_edges": 16 * atoms.astype(np.int64)})
    return types.SimpleNamespace(index=index, shard_indices=np.arange(int(shard[-1]) + 1))


def peak_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def omat_main(args) -> None:
    """The ``--omat`` measurement (see the module)."""
    from orbitgraph.train import loader
    from orbitgraph.train.loader import LoaderConfig, epoch_plan, steps_per_epoch

    t0 = time.perf_counter()
    store = omat_index(args.frames)
    made = time.perf_counter() - t0
    cfg = LoaderConfig()
    base = peak_mb()
    print(f"OMat24-shaped index: {store.index.num_rows} frames in {len(store.shard_indices)} "
          f"shards, {int(store.index['n_atoms'].to_numpy().sum())} atoms, "
          f"{store.index.nbytes / 1e9:.2f} GB of index columns (made in {made:.0f} s); process "
          f"peak {base:.0f} MB; {cfg.max_atoms} atoms per batch, shuffle_shards "
          f"{cfg.shuffle_shards}; medians of {args.repeats}", flush=True)
    for world in args.world:
        times = []
        for _ in range(args.repeats):
            loader.clear_plan_cache()
            t0 = time.perf_counter()
            steps = steps_per_epoch(store, cfg, 2, world, 0)
            plan = epoch_plan(store, cfg, 2, 0, world)
            times.append(time.perf_counter() - t0)
            after = peak_mb()
        loader.clear_plan_cache()
        print(f"world {world}: one rank's epoch plan (every rank's batches counted, its own "
              f"planned, steps_per_epoch {steps}, rank 0 {len(plan)} batches): "
              f"{statistics.median(times):.1f} s (runs: "
              + ", ".join(f"{t:.1f}" for t in times) + f"); process peak {after:.0f} MB, "
              f"{after - base:.0f} MB above the index's", flush=True)


def mptrj_index(seed: int = 0) -> types.SimpleNamespace:
    """A store-like object with MPtrj's frame and shard counts: ``index`` (shard, row,
    n_atoms, n_edges) and ``shard_indices``."""
    rng = np.random.default_rng(seed)
    sizes = rng.geometric(1 / 11, size=N_FRAMES)  # frames per material (more than needed)
    material = np.repeat(np.arange(len(sizes)), sizes)[:N_FRAMES]
    atoms_of = np.clip(rng.lognormal(np.log(25), 0.6, size=material[-1] + 1), 1, 300)
    atoms = atoms_of.astype(np.int64)[material]
    shard = np.repeat(np.arange(N_SHARDS), np.diff(np.linspace(0, N_FRAMES, N_SHARDS + 1)
                                                   .astype(np.int64)))
    row = np.arange(N_FRAMES) - np.searchsorted(shard, shard, side="left")
    index = pa.table({"shard": shard, "row": row, "n_atoms": atoms, "n_edges": 16 * atoms})
    return types.SimpleNamespace(index=index, shard_indices=np.arange(N_SHARDS))


# ------------------------------------------- the planner before (train/loader.py, 9b26ab2)

def before_epoch_shards(store, cfg, epoch):
    shards = store.shard_indices.copy()
    if cfg.shuffle:
        np.random.default_rng([cfg.seed, epoch, 0x5EED]).shuffle(shards)
    return shards


def before_shuffled_order(store, shards, cfg, rng):
    shard_col = store.index.column("shard").to_numpy()
    by_shard = np.argsort(shard_col, kind="stable")
    first = np.searchsorted(shard_col[by_shard], shards, side="left")
    last = np.searchsorted(shard_col[by_shard], shards, side="right")
    positions = np.concatenate([by_shard[a:b] for a, b in zip(first, last, strict=True)]
                               or [np.zeros(0, dtype=np.int64)])
    if not cfg.shuffle:
        return positions
    sizes = last - first
    c = np.concatenate([[0], np.cumsum(sizes)]).astype(np.float64)
    span_end = c[np.minimum(np.arange(len(shards)) + cfg.shuffle_shards, len(shards))]
    start = np.repeat(c[:-1], sizes)
    width = np.repeat(span_end - c[:-1], sizes)
    times = start + rng.random(len(positions)) * width
    return positions[np.argsort(times, kind="stable")]


def before_pack(store, order, cfg):
    if cfg.batch_frames is not None:
        return [order[i:i + cfg.batch_frames] for i in range(0, len(order), cfg.batch_frames)]
    n_atoms = store.index.column("n_atoms").to_numpy()[order].tolist()
    n_edges = store.index.column("n_edges").to_numpy()[order].tolist()
    starts, atoms, edges = [0], 0, 0
    for i, (a, e) in enumerate(zip(n_atoms, n_edges, strict=True)):
        if i > starts[-1] and (atoms + a > cfg.max_atoms or edges + e > cfg.edge_budget):
            starts.append(i)
            atoms, edges = 0, 0
        atoms += a
        edges += e
    return [order[a:b] for a, b in zip(starts, starts[1:] + [len(order)], strict=True) if b > a]


def before_plan_rank(store, cfg, epoch, rank, world):
    shards = before_epoch_shards(store, cfg, epoch)[rank::world]
    order = before_shuffled_order(store, shards, cfg,
                                  np.random.default_rng([cfg.seed, epoch, rank]))
    shard_col = store.index.column("shard").to_numpy()
    row_col = store.index.column("row").to_numpy()
    return [sorted(zip(shard_col[b].tolist(), row_col[b].tolist(), strict=True))
            for b in before_pack(store, order, cfg)]


def before_rank_epoch(store, cfg, epoch, rank, world, workers):
    """What one rank computed per epoch: steps_per_epoch (every rank's plan), then each
    DataLoader worker the rank's plan again (at least one: the main process)."""
    max(len(before_plan_rank(store, cfg, epoch, r, world)) for r in range(world))
    for _ in range(max(1, workers)):
        before_plan_rank(store, cfg, epoch, rank, world)


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--world", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers per rank")
    ap.add_argument("--omat", action="store_true",
                    help="an OMat24-shaped index of --frames frames instead (see the module)")
    ap.add_argument("--frames", type=int, default=110_000_000)
    args = ap.parse_args()
    if args.omat:
        return omat_main(args)
    from orbitgraph.train import loader
    from orbitgraph.train.loader import LoaderConfig, epoch_plan, plan_rank, steps_per_epoch

    store = mptrj_index()
    cfg = LoaderConfig()  # max_atoms 1024, shuffle_shards 4
    print(f"index: {store.index.num_rows} frames in {len(store.shard_indices)} shards, "
          f"{int(store.index['n_atoms'].to_numpy().sum())} atoms; {cfg.max_atoms} atoms per "
          f"batch, shuffle_shards {cfg.shuffle_shards}; medians of {args.repeats}")
    # identical batches (epoch 1, every rank)
    for world in args.world:
        for rank in range(world):
            new = plan_rank(store, cfg, 1, rank, world)
            old = before_plan_rank(store, cfg, 1, rank, world)
            if list(new) != old:
                raise SystemExit(f"plans differ: world {world}, rank {rank}")
    print(f"plans identical to the planner before (world {', '.join(map(str, args.world))}, "
          "every rank)")

    def rank_epoch_now(world, rank):
        steps_per_epoch(store, cfg, 2, world, rank)
        return epoch_plan(store, cfg, 2, rank, world)  # what the rank's ShardStream takes

    print(f"{'':52s} {'before':>9s} {'now':>9s} {'ratio':>7s}")
    for world in args.world:
        cases = {
            f"one rank's plan (world {world})": (
                lambda world=world: before_plan_rank(store, cfg, 2, 0, world),
                lambda world=world: plan_rank(store, cfg, 2, 0, world)),
            f"one rank's epoch, {args.workers} workers (world {world})": (
                lambda world=world: before_rank_epoch(store, cfg, 2, 0, world, args.workers),
                lambda world=world: rank_epoch_now(world, 0)),
        }
        for name, (before, now) in cases.items():
            times = {"before": [], "now": []}
            for _ in range(args.repeats):
                for key, fn in (("before", before), ("now", now)):
                    loader.clear_plan_cache()
                    t0 = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - t0)
            b, n = statistics.median(times["before"]), statistics.median(times["now"])
            print(f"{name:52s} {b:8.3f}s {n:8.3f}s {b / n:6.1f}x")


if __name__ == "__main__":
    main()
