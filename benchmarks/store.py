"""Bytes per edge on disk and sequential read speed, both backends, against torch.save shards.

usage: python benchmarks/store.py [--repeats 3]

Builds the shared MPtrj sample (../shared/data/mptrj_sample.json.gz) into a Zarr and an
Arrow store (1,000 frames per shard, as the baseline) and runs the baseline
(../shared/bench/bench_e2e_anchor.py: json + pymatgen + torch.save per 1,000 frames) in the
same run. Size is everything on disk (shards, index, manifest, quarantine). Reads: every
shard of the store into numpy arrays, and every frame as a dict, vs torch.load of every
baseline shard.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import ANCHOR, OUT, du, fresh, plain_sample, require_shared, timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    require_shared()
    import torch

    from orbitgraph.preprocess.build import build_store
    from orbitgraph.preprocess.cluster import ClusterConfig
    from orbitgraph.preprocess.store import open_store

    src = plain_sample()
    base_dir = fresh(OUT / "anchor_store")
    proc = subprocess.run([sys.executable, str(ANCHOR), str(src), str(base_dir)],
                          capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) frames (\d+) edges", proc.stdout)
    base_frames, base_edges = int(m.group(1)), int(m.group(2))
    base_bytes = du(base_dir)
    files = sorted(base_dir.glob("*.pt"))

    def read_baseline():
        n = 0
        for f in files:
            n += len(torch.load(f, weights_only=False))
        return n

    t_base, _ = timed(read_baseline, args.repeats)
    print(f"baseline torch.save shards: {base_bytes / base_edges:6.2f} bytes/edge, "
          f"read {base_frames / t_base:9.0f} frames/s (torch.load, median of {args.repeats})")

    for backend in ("zarr", "arrow"):
        out = fresh(OUT / f"store_{backend}")
        build_store(src, out, backend=backend, frames_per_shard=1000,
                    cluster=ClusterConfig(kind="synchronous"), progress=False)
        store = open_store(out)
        edges = store.manifest.counts["edges"]
        size = du(out)

        def read_shards(out=out):
            s = open_store(out)
            s._cache_size = 0
            n = 0
            for i in range(len(s.manifest.shards)):
                n += s._backend.read(out / "shards" / s.manifest.shards[i].name)["n_atoms"].shape[0]
            return n

        def read_frames(out=out):
            s = open_store(out)
            return sum(1 for i in range(len(s)) if s[i]["numbers"].size)

        t_shards, n = timed(read_shards, args.repeats)
        t_frames, _ = timed(read_frames, args.repeats)
        print(f"orbitgraph {backend:5s} store:      {size / edges:6.2f} bytes/edge "
              f"({base_bytes / base_edges / (size / edges):4.1f}x smaller), read "
              f"{n / t_shards:9.0f} frames/s as columns "
              f"({t_base / t_shards * n / base_frames:5.1f}x), "
              f"{n / t_frames:8.0f} frames/s as dicts "
              f"({t_base / t_frames * n / base_frames:4.1f}x)")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"(total {time.perf_counter() - t0:.0f} s)")
