"""Building an OMat24-shaped source at scale: a folder of ``.aselmdb`` files, built through
a local Dask cluster, against the naive path (``ase.db`` rows -> pymatgen -> 16-NN + top-k).

usage: python benchmarks/omat.py --dir DIR [--frames 1000000] [--rows-per-file 10000]
                                 [--workers 2] [--baseline-frames 5000] [--processes 2]
                                 [--frames-per-shard 4000] [--keep-store]

OMat24 ships as ASE databases in LMDB files (``.aselmdb``, read with the ``ase-db-backends``
package), one folder per subset (``rattled-300``, ``aimd-from-PBE-1000-npt``, ...), each of
many files. Its frames are small bulk cells (most of them ~5-40 atoms). The synthetic source
imitates that shape, not its physics:

- ``DIR/omat_{frames}/{subset}/data.{k:04d}.aselmdb``: ``--rows-per-file`` rows each
  (the last file of the source fewer), spread round-robin over four subset folders;
- each frame: n atoms (lognormal, median 12, clipped to 1-160), random elements (Z 1-83) on a
  jittered cubic grid of ~14 Å³ per atom (rattled by 0.1 Å), periodic; fake labels stored
  as the calculator's results (``energy`` eV, ``forces`` eV/Å, ``stress`` 6 Voigt values
  eV/Å³) and a key-value pair ``sid`` (10 frames per system, as a short trajectory). The
  labels' values do not matter for a build's speed.

Generation is cheap by construction: each of ``--processes`` processes writes its first file
row by row through ``ase.db.connect(..., type="aselmdb")`` (one LMDB transaction per file),
and every later file of that process by copying that file's stored rows with their ``sid``
rewritten (``-c{file}`` appended), in the backend's own encoding (zlib-compressed JSON, LMDB
keys as the backend writes them). So the frames of different files share geometries (the
build does not cache by geometry: each frame is read, decoded and built again). The source
is kept under ``--dir`` and reused by later runs; its generation time is printed apart.

Then, in this order:

1. the naive path on the first ``--baseline-frames`` rows of the source, one process:
   ``ase.db.connect(file).select()``, ``row.toatoms()``, pymatgen ``Structure``
   (``AseAtomsAdaptor``), ``Structure.get_neighbor_list`` grown until 16 neighbours + top-k
   (``../shared/bench/knn_anchors.py``, as ``bench_e2e_anchor.py``), ``torch.save`` shards of
   1000 frames: frames/s;
2. ``build_store`` of the whole folder on a LocalCluster of ``--workers`` single-threaded
   workers (3 GB memory limit each) started before the clock: wall, frames/s, peak resident
   memory of each worker (:func:`build.worker_peaks_mb`) and of this driver process, the
   ratio to (1), and the store's size on disk (removed after the run unless
   ``--keep-store``).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ANCHOR, OUT, du, fresh, require_shared  # noqa: E402


def _bench_module(name: str):
    """A sibling benchmark script as a module (_common drops this folder from the path)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(
        f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker_peaks_mb = _bench_module("build").worker_peaks_mb

SUBSETS = ("rattled-300", "rattled-500", "aimd-from-PBE-1000-npt", "aimd-from-PBE-3000-nvt")
FRAMES_PER_SYSTEM = 10


# ------------------------------------------------------------------ the synthetic source

def synthetic_atoms(rng, index: int):
    """One OMat24-shaped periodic frame with fake calculator labels (see the module)."""
    import numpy as np
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    n = int(np.clip(rng.lognormal(np.log(12), 0.6), 1, 160))
    a = (14.0 * n) ** (1 / 3)
    m = int(np.ceil(n ** (1 / 3) - 1e-9))
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[rng.permutation(len(grid))[:n]]
    positions = (grid + 0.5) / m * a + rng.normal(0, 0.1, (n, 3))
    cell = np.diag(a * (1 + rng.normal(0, 0.02, 3)))
    atoms = Atoms(numbers=rng.integers(1, 84, n), positions=positions, cell=cell, pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=float(-4.0 * n + rng.normal()),
                                       forces=rng.normal(0, 0.5, (n, 3)),
                                       stress=rng.normal(0, 0.01, 6))
    return atoms


def _file_path(root: Path, k: int) -> Path:
    return root / SUBSETS[k % len(SUBSETS)] / f"data.{k:04d}.aselmdb"


def _write_files(args: tuple[str, list[tuple[int, int]], int]) -> int:
    """Write the files ``[(k, rows)]`` (one process): the first row by row through ASE, the
    others as copies of its stored rows with the ``sid`` rewritten. Returns rows written."""
    import ase.db
    import ase_db_backends.aselmdb as backend
    import lmdb
    import numpy as np

    root, files, seed = Path(args[0]), args[1], args[2]
    rng = np.random.default_rng(seed)
    template = None
    written = 0
    for k, rows in files:
        path = _file_path(root, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        if template is None or rows > len(template):
            db = ase.db.connect(str(tmp), type="aselmdb")
            with db:
                for i in range(rows):
                    db.write(synthetic_atoms(rng, i), sid=f"synth-{k}-{i // FRAMES_PER_SYSTEM}")
            db.close()
            if template is None or rows > len(template):
                env = lmdb.open(str(tmp), subdir=False, readonly=True, lock=False)
                with env.begin() as txn:
                    template = [zlib.decompress(txn.get(backend.encode_key(str(i + 1))))
                                for i in range(rows)]
                env.close()
                first_sid = f'"synth-{k}-'.encode()
        else:
            env = lmdb.open(str(tmp), subdir=False, map_size=2**34, lock=True)
            with env.begin(write=True) as txn:
                for i, raw in enumerate(template[:rows]):
                    txn.put(backend.encode_key(str(i + 1)),
                            zlib.compress(raw.replace(first_sid, f'"synth-{k}-'.encode()), 1))
                txn.put(backend.encode_key("nextid"),
                        backend.encode_object(rows + 1, compress=True, json_encode=True))
            env.close()
        Path(str(tmp) + "-lock").unlink(missing_ok=True)
        tmp.rename(path)
        written += rows
    return written


def synthetic_source(where: Path, frames: int, rows_per_file: int, processes: int) -> Path:
    """``where/omat_{frames}``: written once (files already there are kept), then reused."""
    root = where / f"omat_{frames}_{rows_per_file}"
    n_files = -(-frames // rows_per_file)
    todo = [(k, min(rows_per_file, frames - k * rows_per_file)) for k in range(n_files)
            if not _file_path(root, k).is_file()]
    if todo:
        t0 = time.perf_counter()
        jobs = [(str(root), todo[p::processes], p) for p in range(processes) if todo[p::processes]]
        with ProcessPoolExecutor(processes) as pool:
            written = sum(pool.map(_write_files, jobs))
        dt = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in root.rglob("*.aselmdb"))
        print(f"generated {written} frames in {len(todo)} files ({size / 1e9:.2f} GB) in "
              f"{dt:.0f} s ({written / dt:.0f} frames/s, {processes} processes): {root}",
              flush=True)
    else:
        print(f"reusing the synthetic source {root} ({n_files} files)", flush=True)
    return root


# ------------------------------------------------------------------ the naive path

def naive_rate(root: Path, n_frames: int) -> tuple[int, float]:
    """(frames, seconds) of the naive path on the first ``n_frames`` rows of ``root``."""
    import warnings

    import ase.db
    import ase_db_backends.aselmdb  # noqa: F401
    import numpy as np
    import torch
    from pymatgen.io.ase import AseAtomsAdaptor

    sys.path.insert(0, str(ANCHOR.parent))
    import knn_anchors as K

    warnings.filterwarnings("ignore")
    out = fresh(OUT / "omat_naive")
    out.mkdir(parents=True)
    files = sorted(root.rglob("*.aselmdb"))
    shard, done, k = [], 0, 0
    t0 = time.perf_counter()
    for file in files:
        db = ase.db.connect(str(file), type="aselmdb", readonly=True)
        for row in db.select():
            atoms = row.toatoms()
            s = AseAtomsAdaptor.get_structure(atoms)
            i, j, S, d = K.knn_pymatgen(s, 16)
            shard.append(dict(z=torch.tensor(s.atomic_numbers, dtype=torch.uint8),
                              pos=torch.tensor(s.cart_coords, dtype=torch.float32),
                              cell=torch.tensor(s.lattice.matrix, dtype=torch.float32),
                              edge_index=torch.tensor(np.stack([i, j])),
                              shift=torch.tensor(S, dtype=torch.int8),
                              energy=atoms.get_potential_energy(),
                              forces=torch.tensor(atoms.get_forces()),
                              stress=torch.tensor(atoms.get_stress()), id=row.id))
            done += 1
            if len(shard) == 1000:
                torch.save(shard, out / f"shard{k:05d}.pt")
                shard, k = [], k + 1
            if done == n_frames:
                break
        db.close()
        if done == n_frames:
            break
    if shard:
        torch.save(shard, out / f"shard{k:05d}.pt")
    return done, time.perf_counter() - t0


# ------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, required=True,
                    help="where the synthetic source is written and kept")
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--rows-per-file", type=int, default=10_000)
    ap.add_argument("--processes", type=int, default=2, help="processes writing the source")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-frames", type=int, default=5000)
    ap.add_argument("--frames-per-shard", type=int, default=4000)
    ap.add_argument("--keep-store", action="store_true",
                    help="keep the store (benchmarks/_out/omat_store) after the run")
    args = ap.parse_args()
    require_shared()
    root = synthetic_source(args.dir, args.frames, args.rows_per_file, args.processes)

    n, dt = naive_rate(root, args.baseline_frames)
    base = n / dt
    print(f"naive path (ase.db select + toatoms + pymatgen 16-NN + torch.save), one process: "
          f"{n} frames in {dt:.1f} s = {base:.0f} frames/s", flush=True)

    from distributed import Client, LocalCluster

    from orbitgraph.preprocess.build import build_store, load_kernels
    from orbitgraph.preprocess.cluster import ClusterConfig

    load_kernels("ase-db")
    out = fresh(OUT / "omat_store")
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      memory_limit="3GB", dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        t0 = time.perf_counter()
        s = build_store(root, out, frames_per_shard=args.frames_per_shard,
                        cluster=ClusterConfig(kind="address", address=cluster.scheduler_address),
                        progress=False)
        dt = time.perf_counter() - t0
        peaks = sorted(worker_peaks_mb(client))
    driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rate = (s.frames + s.quarantined) / dt
    print(f"orbitgraph build_store, LocalCluster of {args.workers} workers: {s.frames} frames "
          f"({s.quarantined} quarantined), {s.edges} edges in {dt:.0f} s ({dt / 60:.1f} min) = "
          f"{rate:.0f} frames/s = {rate / base:.1f}x the naive path; peak memory per worker "
          + ", ".join(f"{p:.0f}" for p in peaks) + f" MB, driver {driver:.0f} MB", flush=True)
    size = du(out)
    print(f"store: {size / 1e9:.2f} GB = {size / max(s.frames, 1):.0f} bytes/frame, "
          f"{size / max(s.edges, 1):.2f} bytes/edge (source "
          f"{sum(f.stat().st_size for f in root.rglob('*.aselmdb')) / 1e9:.2f} GB)", flush=True)
    if not args.keep_store:
        fresh(out)
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
