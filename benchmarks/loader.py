"""Frames/s from a store into collated batches, against torch_geometric's DataLoader over an
in-memory list of pre-built ``Data`` objects of the same graphs, in the same run.

usage: python benchmarks/loader.py [--epochs 3]    (pip install torch_geometric for the baseline)
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
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    require_shared()
    import numpy as np
    import torch

    from preprocess.store import open_store
    from train.loader import LoaderConfig, make_loader

    store = open_store(sample_store("store_loader", backend="arrow"))
    n = len(store)

    def ours(workers: int) -> float:
        cfg = LoaderConfig(batch_frames=args.batch, num_workers=workers, shuffle_shards=4)
        rates = []
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            seen = sum(b.n_frames for b in make_loader(store, cfg, epoch=epoch))
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
                             edge_index=torch.from_numpy(np.stack([f["neighbors"].astype(np.int64), centers])),
                             shift=torch.from_numpy(f["shifts"].astype(np.int64)),
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
    base = results.get("torch_geometric in memory, 0 worker(s)")
    for name, rate in results.items():
        ratio = f"{rate / base:5.2f}x in-memory PyG" if base else ""
        print(f"{name:40s} {rate:9.0f} frames/s {ratio}")


if __name__ == "__main__":
    main()
