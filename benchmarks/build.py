"""End-to-end build throughput against the naive path, on three source sizes.

usage: python benchmarks/build.py [--repeats 3] [--workers 2] [--frames 20000] [--full]
                                  [--cluster] [--skip-sample] [--dir DIR]

1. The shared sample (1,027 frames), each contender in a fresh process, repeats interleaved,
   medians:
   - baseline: ../shared/bench/bench_e2e_anchor.py (json.load + pymatgen + 16-NN + torch.save);
   - ``orbitgraph build --source SAMPLE --out DIR`` with defaults (Zarr), and with Arrow;
   - ``build_store`` in a fresh process whose libraries are loaded before its clock starts,
     as the baseline's are (its clock starts after importing torch and pymatgen, whose
     compiled neighbour search loads at import): here numba's cached kernels
     (:func:`orbitgraph.preprocess.build.load_kernels`) and pandas, which pyarrow loads on first
     use. Together ~0.6 s that the CLI's clock includes.
   Two clocks each: the program's own (the rate the anchor prints; the wall time in the
   build summary) and the whole process (interpreter and imports too).
2. In this process, after a first build has paid the one-time loads (imports, numba's
   cache, pyarrow's first use, the thread pool): the steady-state rate of the same build, the
   rate the per-frame work sets on a source of any size.
3. Through Dask with 2 workers and 250-frame partitions: a LocalCluster started for the
   build (start-up included), and one already running (as on a real cluster).
4. ``--frames N`` (default 20,000; 0 skips it): an MPtrj-format file of N frames, the
   sample's materials replicated with fresh material and frame ids, written to a temporary
   folder (or ``--dir``); the baseline and a fresh ``orbitgraph build`` process on it,
   interleaved, medians of ``--repeats``: both clocks, the ratios, and the build
   peak memory of the largest of the build's processes (wait4 reports the maximum over the
   process and the workers it forked and reaped).
   With ``--cluster`` also the same command on a LocalCluster started for it.
5. ``--full``: the same at MPtrj's size (``--full-frames``, default 1,580,395 frames, about
   17 GB written), built once on a LocalCluster of ``--workers`` single-threaded workers
   (3 GB memory limit each) started before the clock: wall time, frames/s, peak memory
   per worker. The baseline cannot load a 17 GB file (json.load holds it all as Python
   objects): its ratio is against its rate on the N-frame source of this run. The build's
   time includes hashing the new source whole (its store id's fingerprint); that hash is
   then timed alone, and the recognition of the unchanged file from the digest cache.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ANCHOR, OUT, SAMPLE, fresh, plain_sample, require_shared  # noqa: E402


def write_replicated(path: Path, n_frames: int) -> int:
    """Replicate the sample's materials with fresh ids (material ``ID-rC`` for copy C, its
    frame ids likewise) until at least ``n_frames`` frames (whole materials); returns the
    frames written. Each copy is one text substitution in the sample's text, so that a
    full-size file is written at disk speed."""
    import gzip
    mark = "@COPY@"  # in no id or value of the sample
    pieces = []
    with gzip.open(SAMPLE) as f:
        sample = json.load(f)
    for mid, frames in sample.items():
        new_mid = f"{mid}-r{mark}"
        entry = {fid.replace(mid, new_mid, 1): rec for fid, rec in frames.items()}
        pieces.append((json.dumps(new_mid) + ": " + json.dumps(entry), len(entry)))
    whole = ", ".join(text for text, _ in pieces)
    per_copy = sum(n for _, n in pieces)
    assert whole.count(mark) == len(pieces) + per_copy
    written = copy = 0
    with open(path, "w") as f:
        f.write("{")
        while written < n_frames:
            if written + per_copy <= n_frames:
                text, count = whole, per_copy
            else:
                taken = []
                count = 0
                for piece, n in pieces:
                    taken.append(piece)
                    count += n
                    if written + count >= n_frames:
                        break
                text = ", ".join(taken)
            f.write((", " if copy else "") + text.replace(mark, str(copy)))
            written += count
            copy += 1
        f.write("}")
    return written


def worker_peaks_mb(client) -> list[float]:
    """Peak resident memory (MB) of each worker process."""
    import resource

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    return list(client.run(peak).values())


def _run(cmd: list[str]) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak resident MB) of a child process."""
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return text, wall, usage.ru_maxrss / 1024


def run_anchor(src: Path) -> tuple[float, float, int]:
    """(own seconds, process seconds, frames) of one baseline run."""
    text, wall, _ = _run([sys.executable, str(ANCHOR), str(src), str(fresh(OUT / "anchor_build"))])
    m = re.search(r"(\d+) frames \d+ edges in ([\d.]+) s", text)
    return float(m.group(2)), wall, int(m.group(1))


def run_cli(src: Path, backend: str, peaks: list | None = None, *extra: str
            ) -> tuple[float, float, int]:
    """(own seconds, process seconds, records) of one ``orbitgraph build`` run (``extra``:
    more arguments); its peak memory (MB) appended to ``peaks``."""
    text, wall, peak = _run([sys.executable, "-m", "orbitgraph.train.cli", "build",
                             "--source", str(src), "--out", str(fresh(OUT / "build_cli")),
                             "--backend", backend,
                             "--quiet", *extra])
    if peaks is not None:
        peaks.append(peak)
    frames = re.search(r"frames (\d+) .* quarantined (\d+)", text)
    own = float(re.search(r"wall ([\d.]+) s", text).group(1))
    return own, wall, int(frames.group(1)) + int(frames.group(2))


LOADED = """
import sys, time
from orbitgraph.preprocess.build import build_store, load_kernels
import pandas  # pyarrow loads it on first use
load_kernels("mptrj-json")
t0 = time.perf_counter()
s = build_store(sys.argv[1], sys.argv[2], backend=sys.argv[3], progress=False)
print(s.frames + s.quarantined, time.perf_counter() - t0)
"""


def run_loaded(src: Path, backend: str) -> tuple[float, float, int]:
    """(own seconds, process seconds, records) of ``build_store`` in a fresh process whose
    libraries were loaded before its clock started."""
    text, wall, _ = _run([sys.executable, "-c", LOADED, str(src),
                          str(fresh(OUT / "build_loaded")), backend])
    records, own = text.split()[-2:]
    return float(own), wall, int(records)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--frames", type=int, default=20_000,
                    help="frames of the replicated source built by fresh processes (0: skip)")
    ap.add_argument("--full", action="store_true", help="also a full-size source (long)")
    ap.add_argument("--full-frames", type=int, default=1_580_395)
    ap.add_argument("--dir", type=Path, default=None,
                    help="where replicated sources are written and kept (default: a "
                         "temporary folder, removed at the end)")
    ap.add_argument("--frames-per-shard", type=int, default=4000)
    ap.add_argument("--skip-sample", action="store_true", help="only sections 4 and 5")
    ap.add_argument("--cluster", action="store_true",
                    help="section 4 also on a LocalCluster started for the build "
                         "(--set cluster.in_process_max_bytes=0)")
    args = ap.parse_args()
    require_shared()
    src = plain_sample()
    if not args.skip_sample:
        sample_sections(src, args)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        where = Path(args.dir or tmp)
        base_rate = replicated_section(where, args) if args.frames else None
        if args.full:
            full_section(where, args, base_rate)


def sample_sections(src: Path, args) -> None:
    from orbitgraph.preprocess.build import build_store
    from orbitgraph.preprocess.cluster import ClusterConfig

    runs: dict[str, list[tuple[float, float, int]]] = {
        name: [] for name in ("anchor", "zarr", "arrow", "loaded zarr", "loaded arrow")}
    for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits all alike
        runs["anchor"].append(run_anchor(src))
        for backend in ("zarr", "arrow"):
            runs[backend].append(run_cli(src, backend))
            runs[f"loaded {backend}"].append(run_loaded(src, backend))

    def rates(name):
        own = statistics.median(n / t for t, _, n in runs[name])
        proc = statistics.median(n / w for _, w, n in runs[name])
        return own, proc

    base_own, base_proc = rates("anchor")
    print(f"sample: {runs['anchor'][0][2]} frames; medians of {args.repeats} interleaved runs, "
          "each a fresh process")
    print(f"{'':42s} {'own clock':>16s} {'whole process':>16s}")
    print(f"{'baseline (json.load + pymatgen + 16-NN)':42s} {base_own:9.0f} fr/s    "
          f"{base_proc:9.0f} fr/s")
    for name, label in (("zarr", "orbitgraph build, zarr"), ("arrow", "orbitgraph build, arrow"),
                        ("loaded zarr", "build, libraries loaded first, zarr"),
                        ("loaded arrow", "build, libraries loaded first, arrow")):
        own, proc = rates(name)
        print(f"{label:42s} {own:9.0f} fr/s {own / base_own:4.1f}x "
              f"{proc:9.0f} fr/s {proc / base_proc:4.1f}x")

    def build(cluster, backend, frames_per_shard=2000):
        out = fresh(OUT / "build_sample")
        t0 = time.perf_counter()
        s = build_store(src, out, frames_per_shard=frames_per_shard, cluster=cluster,
                        backend=backend, progress=False)
        return (s.frames + s.quarantined) / (time.perf_counter() - t0)

    sync = ClusterConfig(kind="synchronous")
    build(sync, "zarr")  # pay the one-time loads
    for backend in ("zarr", "arrow"):
        rate = statistics.median(build(sync, backend) for _ in range(max(5, args.repeats)))
        print(f"{'steady state, one process, ' + backend:42s} {rate:9.0f} fr/s "
              f"{rate / base_own:4.1f}x")

    from distributed import Client, LocalCluster
    rate = build(ClusterConfig(workers=args.workers), "arrow", frames_per_shard=250)
    print(f"{f'LocalCluster started for it, {args.workers} workers':42s} {rate:9.0f} fr/s "
          f"{rate / base_own:4.1f}x  (arrow, 250-frame partitions, start-up included)")
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster):
        running = ClusterConfig(kind="address", address=cluster.scheduler_address)
        build(running, "arrow", frames_per_shard=250)  # workers load their caches
        rate = statistics.median(build(running, "arrow", frames_per_shard=250)
                                 for _ in range(max(5, args.repeats)))
    print(f"{f'running cluster, {args.workers} workers':42s} {rate:9.0f} fr/s "
          f"{rate / base_own:4.1f}x  (arrow, 250-frame partitions)")



def _medians(runs: list[tuple[float, float, int]]) -> tuple[float, float]:
    """(own-clock frames/s, whole-process frames/s) medians."""
    return (statistics.median(n / t for t, _, n in runs),
            statistics.median(n / w for _, w, n in runs))


def replicated_source(where: Path, frames: int) -> Path:
    """``where``/mptrj_replicated_{frames}.json, written by :func:`write_replicated` once."""
    path = where / f"mptrj_replicated_{frames}.json"
    if not path.is_file():
        t0 = time.perf_counter()
        n = write_replicated(path, frames)
        print(f"\nwrote {n} frames, {path.stat().st_size / 1e6:.0f} MB in "
              f"{time.perf_counter() - t0:.0f} s: {path}")
    return path


def replicated_section(where: Path, args) -> float:
    """Section 4; returns the baseline's own-clock rate on the replicated source."""
    src = replicated_source(where, args.frames)
    anchor, cli, cluster, peaks = [], [], [], []
    for _ in range(args.repeats):  # interleaved
        anchor.append(run_anchor(src))
        cli.append(run_cli(src, "zarr", peaks))
        if args.cluster:
            cluster.append(run_cli(src, "zarr", None, "--set", "cluster.in_process_max_bytes=0"))
    base_own, base_proc = _medians(anchor)
    print(f"replicated source: {cli[0][2]} frames; medians of {args.repeats} interleaved runs, "
          "each a fresh process")
    print(f"{'':42s} {'own clock':>16s} {'whole process':>16s}")
    print(f"{'baseline (json.load + pymatgen + 16-NN)':42s} {base_own:9.0f} fr/s    "
          f"{base_proc:9.0f} fr/s")
    rows = [("orbitgraph build, zarr", cli)]
    if cluster:
        rows.append(("same, on a LocalCluster started for it", cluster))
    for label, runs in rows:
        own, proc = _medians(runs)
        print(f"{label:42s} {own:9.0f} fr/s {own / base_own:4.1f}x "
              f"{proc:9.0f} fr/s {proc / base_proc:4.1f}x"
              + (f"   (peak memory {max(peaks):.0f} MB)" if runs is cli else ""))
    print(f"  seconds, median: baseline {statistics.median(w for _, w, _ in anchor):.1f} s, "
          f"orbitgraph build {statistics.median(w for _, w, _ in cli):.1f} s"
          + (f", on a LocalCluster {statistics.median(w for _, w, _ in cluster):.1f} s"
             if cluster else "") + " (whole process)")
    return base_own


def full_section(where: Path, args, base_rate: float | None) -> None:
    """Section 5."""
    from distributed import Client, LocalCluster

    from orbitgraph.preprocess.build import build_store
    from orbitgraph.preprocess.cluster import ClusterConfig

    big = replicated_source(where, args.full_frames)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      memory_limit="3GB", dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        t0 = time.perf_counter()
        s = build_store(big, fresh(OUT / "build_big"), frames_per_shard=args.frames_per_shard,
                        cluster=ClusterConfig(kind="address", address=cluster.scheduler_address),
                        progress=False)
        dt = time.perf_counter() - t0
        peaks = sorted(worker_peaks_mb(client))
    rate = (s.frames + s.quarantined) / dt
    versus = (f" = {rate / base_rate:.1f}x the baseline's rate on the replicated source"
              if base_rate else "")
    print(f"full-size build: {s.frames} frames ({s.quarantined} quarantined) in {dt:.0f} s "
          f"({dt / 60:.1f} min) = {rate:.0f} frames/s{versus}; {args.workers} workers, peak "
          f"memory per worker " + ", ".join(f"{p:.0f}" for p in peaks) + " MB")
    fresh(OUT / "build_big")
    fingerprint_section(big)


def fingerprint_section(src: Path) -> None:
    """What the store id's fingerprint costs on ``src``: SHA-256 of every byte (as a build
    of a new or changed source pays it), and the digest cache's recognition of the
    unchanged file (as every later build, and each ``store_path`` of pipelines.yaml)."""
    from orbitgraph.preprocess.sources import digest_source
    from orbitgraph.preprocess.sources.fingerprint import file_sha256

    size = src.stat().st_size
    t0 = time.perf_counter()
    file_sha256(src)
    hashed = time.perf_counter() - t0
    digest_source(src, [src])  # remembered now, if it was not during the build
    t0 = time.perf_counter()
    digest_source(src, [src])
    recognised = time.perf_counter() - t0
    print(f"fingerprint: SHA-256 of the {size / 1e9:.1f} GB source in {hashed:.1f} s "
          f"({size / hashed / 1e9:.2f} GB/s); the unchanged file recognised from the digest "
          f"cache in {recognised * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
