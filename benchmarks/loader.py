"""Frames/s from a store into collated batches, against torch_geometric's DataLoader over an
in-memory list of pre-built ``Data`` objects of the same graphs, in the same run.

Each epoch opens the store afresh (no shard cached from the previous one); every frame is
read from its shard file, as in training. Ratios compare the same number of workers.

usage: python benchmarks/loader.py [--epochs 5] [--backend arrow|zarr] [--frames-per-shard 256]
       (pip install torch_geometric for the baseline)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import require_shared, sample_store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--backend", choices=["arrow", "zarr"], default="arrow")
    ap.add_argument("--frames-per-shard", type=int, default=256,
                    help="shard size of the benchmark store (builds default to 2000; the sample "
                         "has 1,027 frames, and 2 workers need several shards)")
    args = ap.parse_args()
    require_shared()
    import numpy as np
    import torch

    from orbitgraph.preprocess.store import open_store
    from orbitgraph.train.loader import LoaderConfig, make_loader

    store = open_store(sample_store(f"store_loader_{args.backend}_{args.frames_per_shard}",
                                    backend=args.backend,
                                    frames_per_shard=args.frames_per_shard))
    print(f"store: {len(store)} frames in {len(store.manifest.shards)} {args.backend} shards; "
          f"batches of {args.batch} frames; medians of {args.epochs} epochs")
    n = len(store)

    def ours(workers: int) -> float:
        cfg = LoaderConfig(batch_frames=args.batch, num_workers=workers, shuffle_shards=4)
        rates = []
        for epoch in range(args.epochs):
            fresh = open_store(store.root)  # no shard cached from the previous epoch
            t0 = time.perf_counter()
            seen = sum(b.n_frames for b in make_loader(fresh, cfg, epoch=epoch))
            rates.append(seen / (time.perf_counter() - t0))
        return float(np.median(rates))

    results = {f"orbitgraph stream, {w} worker(s)": ours(w) for w in (0, 1, 2)}
    try:
        from torch_geometric.data import Data
        from torch_geometric.loader import DataLoader as PygLoader
    except ImportError:
        print("torch_geometric not installed: pip install torch_geometric for the baseline")
        Data = None
    if Data is not None:
        data = []
        for i in range(n):
            f = store[i]
            centers = np.repeat(np.arange(len(f["numbers"])), f["n_edges"].astype(np.int64))
            data.append(Data(z=torch.from_numpy(f["numbers"].astype(np.int64)),
                             pos=torch.from_numpy(f["positions"]),
                             cell=torch.from_numpy(f["cell"]).unsqueeze(0),
                             edge_index=torch.from_numpy(
                                 np.stack([f["neighbors"].astype(np.int64), centers])),
                             shift=torch.from_numpy(f["unit_shifts"].astype(np.int64)),
                             forces=torch.from_numpy(f["forces"]),
                             energy=torch.tensor([float(f["energy"])])))

        def pyg(workers: int) -> float:
            rates = []
            for _ in range(args.epochs):
                loader = PygLoader(data, batch_size=args.batch, shuffle=True, num_workers=workers)
                t0 = time.perf_counter()
                seen = sum(b.num_graphs for b in loader)
                rates.append(seen / (time.perf_counter() - t0))
            return float(np.median(rates))

        for w in (0, 1, 2):
            results[f"torch_geometric in memory, {w} worker(s)"] = pyg(w)
    for name, rate in results.items():
        workers = name.split(", ")[1]
        base = results.get(f"torch_geometric in memory, {workers}")
        ratio = f"{rate / base:5.2f}x in-memory PyG with {workers}" if base else ""
        print(f"{name:40s} {rate:9.0f} frames/s {ratio}")


if __name__ == "__main__":
    main()
