"""End-to-end build throughput against the naive path, and an optional full-size run.

usage: python benchmarks/build.py [--workers 2] [--scale FRAMES]

1. The shared sample through the orbitgraph build (synchronous with a Zarr and an Arrow
   store, LocalCluster with Zarr; the first row pays the process's one-time loads) and through
   ../shared/bench/bench_e2e_anchor.py (json.load + pymatgen + 16-NN + torch.save), in the
   same run: frames/s and the ratio.
2. With --scale N: write an MPtrj-format file of N frames by replicating the sample with fresh
   material and frame ids (streamed, never in memory), build it on the local cluster and
   report wall time, frames/s and peak memory per worker (1,580,395 frames ≈ 12 GB is MPtrj).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ANCHOR, OUT, SAMPLE, fresh, plain_sample, require_shared  # noqa: E402


def write_replicated(path: Path, n_frames: int) -> int:
    """Replicate the sample's materials with fresh ids until ``n_frames`` frames."""
    import gzip
    sample = json.load(gzip.open(SAMPLE))
    materials = list(sample.items())
    written = 0
    copy = 0
    with open(path, "w") as f:
        f.write("{")
        first = True
        while written < n_frames:
            for mid, frames in materials:
                new_mid = f"{mid}-r{copy}"
                entry = {fid.replace(mid, new_mid, 1): rec for fid, rec in frames.items()}
                f.write(("" if first else ", ") + json.dumps(new_mid) + ": " + json.dumps(entry))
                first = False
                written += len(entry)
                if written >= n_frames:
                    break
            copy += 1
        f.write("}")
    return written


def worker_peak_mb(client) -> float:
    import resource

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    return max(client.run(peak).values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scale", type=int, default=0, help="frames of a replicated full-size run")
    ap.add_argument("--frames-per-shard", type=int, default=4000)
    args = ap.parse_args()
    require_shared()
    from preprocess.cluster import ClusterConfig
    from preprocess.pipeline import build_store

    src = plain_sample()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ANCHOR), str(src), str(fresh(OUT / "anchor_build"))],
                          capture_output=True, text=True, check=True)
    t_anchor = time.perf_counter() - t0
    n_anchor = int(re.search(r"(\d+) frames", proc.stdout).group(1))
    anchor_rate = n_anchor / t_anchor
    print(f"baseline (json.load + pymatgen + torch.save), 1 process: {anchor_rate:7.0f} frames/s "
          f"({t_anchor:.2f} s, process start included)")
    for label, cluster, backend in (
            ("synchronous, 1 process", ClusterConfig(kind="synchronous"), "zarr"),
            ("synchronous, Arrow store", ClusterConfig(kind="synchronous"), "arrow"),
            (f"LocalCluster, {args.workers} workers", ClusterConfig(workers=args.workers), "zarr")):
        t0 = time.perf_counter()
        s = build_store(src, fresh(OUT / "build_sample"), frames_per_shard=250, cluster=cluster,
                        backend=backend, progress=False, log=lambda m: None)
        dt = time.perf_counter() - t0
        total = s.frames + s.quarantined
        print(f"orbitgraph build, {label:24s}: {total / dt:7.0f} frames/s ({dt:.2f} s, cluster "
              f"start included) = {total / dt / anchor_rate:5.1f}x baseline")

    if args.scale:
        big = OUT / f"mptrj_replicated_{args.scale}.json"
        if not big.is_file():
            t0 = time.perf_counter()
            n = write_replicated(big, args.scale)
            print(f"wrote {n} frames, {big.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          memory_limit="3GB", dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            t0 = time.perf_counter()
            s = build_store(big, fresh(OUT / "build_big"), frames_per_shard=args.frames_per_shard,
                            cluster=ClusterConfig(kind="address", address=cluster.scheduler_address),
                            progress=False, log=lambda m: None)
            dt = time.perf_counter() - t0
            print(f"full-size build: {s.frames} frames ({s.quarantined} quarantined) in {dt:.0f} s "
                  f"= {(s.frames + s.quarantined) / dt:.0f} frames/s; peak worker memory "
                  f"{worker_peak_mb(client):.0f} MB")


if __name__ == "__main__":
    main()
