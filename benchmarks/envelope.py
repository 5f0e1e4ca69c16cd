"""What the k-NN rank envelope costs and what it buys, on the shared sample.

Printed, for the adaptive envelope (default: soft k nearest, width 0.5 Å, graphs with
0.5 Å ties; also 0.25 Å) and the envelope below d_{k+1} (``next``, width 0.5 Å, 0.01 Å
ties):

* edges per atom and the effective neighbour count Σ_j w_ij per atom (mean), and the mean
  weight by rank;
* the store's bytes per edge, and the share of the per-atom first-candidate-not-kept
  columns (``next_neighbor``, ``next_unit_shift``) in it;
* model time (forward + forces + stress, mace preset, float32) per batch for each envelope
  and without one, medians;
* the force jump where the (k+1)-th and (k+2)-th candidates swap (``next`` only; the
  adaptive envelope's forces are continuous), on a constructed path.

usage: python benchmarks/envelope.py [--frames 400] [--repeats 7]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import du, require_shared, sample_store  # noqa: E402


def weights(kind: str, width: float, batch):
    import torch

    from orbitgraph.model.geometry import edge_vectors
    from orbitgraph.model.radial import AdaptiveRankEnvelope, RankEnvelope, rank_reference_distance
    r = torch.linalg.norm(edge_vectors(batch.positions, batch.cell, batch), dim=-1)
    if kind == "adaptive":
        return AdaptiveRankEnvelope(width)(r, batch.centers, len(batch.numbers), batch.k)
    d_ref = rank_reference_distance(batch.positions, batch.cell, batch.batch,
                                    batch.rank_neighbor, batch.rank_unit_shift)
    return RankEnvelope(width)(r, d_ref[batch.centers])


def neighbour_figures(store_path: Path, kind: str, width: float, frames: int) -> dict:
    import numpy as np
    import torch

    from orbitgraph.preprocess.store import open_store
    from orbitgraph.train.collate import collate
    store = open_store(store_path)
    batch = collate([store[i] for i in range(min(frames, len(store)))], k=store.manifest.graph.k)
    w = weights(kind, width, batch).double()
    n = len(batch.numbers)
    counts = torch.bincount(batch.centers, minlength=n)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(batch.centers)) - start[batch.centers]
    by_rank = [float(w[rank == r].mean()) for r in range(int(rank.max()) + 1)
               if int((rank == r).sum()) > n // 10]
    return {"edges": len(batch.centers) / n, "sum_w": float(w.sum()) / n,
            "by_rank": np.round(by_rank, 2).tolist()}


def column_bytes(store_path: Path) -> dict:
    """Bytes on disk per edge, in all and for the first-candidate-not-kept columns."""
    from orbitgraph.preprocess.store import open_store
    store = open_store(store_path)
    edges = store.manifest.counts["edges"]
    shards = store_path / "shards"
    extra = sum(du(p) for p in shards.rglob("*") if p.is_dir() and p.name in
                ("next_neighbor", "next_unit_shift"))
    return {"total": du(shards) / edges, "next_columns": extra / edges}


def model_time(store_path: Path, kind: str, width: float, repeats: int) -> float:
    import statistics

    import torch

    from orbitgraph.model import build_model
    from orbitgraph.preprocess.store import open_store
    from orbitgraph.train.collate import collate
    store = open_store(store_path)
    batch = collate([store[i] for i in range(24)], k=store.manifest.graph.k).to(
        dtype=torch.float32)
    torch.manual_seed(0)
    model = build_model({"preset": "mace", "channels": 32, "sh_l_max": 2,
                         "rank_envelope": kind, "rank_envelope_width": width,
                         "atomic_energies": "least_squares"},  # the manifest's E0s
                        store.manifest.statistics).float()
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def force_jump(width: float) -> tuple[float, float]:
    """Largest change of the force on the centre between neighbouring points of a path on
    which its (k+1)-th and (k+2)-th candidates swap (k = 1, ``next`` envelope), against the
    largest change elsewhere on the path (eV/Å)."""
    import numpy as np
    import torch

    from orbitgraph.model import build_model
    from orbitgraph.preprocess.graph_params import GraphParams
    from orbitgraph.train.calculator import OrbitCalculator
    from orbitgraph.train.testing import randomise
    torch.manual_seed(0)
    model = randomise(build_model({"preset": "mace", "channels": 8, "species_dim": 8,
                                   "radial_mlp": [16], "readout_mlp": [8],
                                   "rank_envelope": "next", "rank_envelope_width": width,
                                   "atomic_energies": {1: -1.0, 8: -2.0, 14: -3.0}})).double()
    from ase import Atoms
    calc = OrbitCalculator(model, GraphParams(k=1, ties="break"))
    forces = []
    xs = np.linspace(2.1, 1.9, 201)
    for x in xs:
        atoms = Atoms("SiOHO", positions=[[0, 0, 0], [0, 1.7, 0], [2.0, 0, 0.1], [0, -x, 0]],
                      cell=np.eye(3) * 30, pbc=False)
        atoms.calc = calc
        forces.append(atoms.get_forces()[0])
    steps = np.linalg.norm(np.diff(forces, axis=0), axis=1)
    swap = int(np.argmin(np.abs(xs - np.hypot(2.0, 0.1))))
    at_swap = float(steps[max(swap - 1, 0):swap + 1].max())
    elsewhere = float(np.delete(steps, [swap - 1, swap]).max())
    return at_swap, elsewhere


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    require_shared()
    from orbitgraph.preprocess.graph_params import GraphParams
    stores = {"adaptive": (sample_store("store_ties050", graph=GraphParams(tie_tolerance=0.5)),
                           0.5),
              "adaptive ": (sample_store("store_ties025", graph=GraphParams(tie_tolerance=0.25)),
                            0.25),
              "next": (sample_store("store_ties001", graph=GraphParams(tie_tolerance=0.01)), 0.5)}
    print(f"{'envelope':10s} {'width Å':>7s} {'edges/atom':>10s} {'Σw/atom':>8s} "
          f"{'bytes/edge':>10s} {'of it next_*':>12s} {'model ms':>9s}   mean weight by rank")
    for kind, (path, width) in stores.items():
        fig = neighbour_figures(path, kind.strip(), width, args.frames)
        size = column_bytes(path)
        ms = model_time(path, kind.strip(), width, args.repeats) * 1e3
        print(f"{kind:10s} {width:7.2f} {fig['edges']:10.2f} {fig['sum_w']:8.2f} "
              f"{size['total']:10.2f} {size['next_columns']:12.3f} {ms:9.1f}   {fig['by_rank']}")
    ms = model_time(stores["next"][0], "none", 0.5, args.repeats) * 1e3
    print(f"{'none':10s} {'':7s} {'':10s} {'':8s} {'':10s} {'':12s} {ms:9.1f}")
    at_swap, elsewhere = force_jump(0.5)
    print(f"\nnext envelope (width 0.5 Å), (k+1)/(k+2) swap on a path of 0.001 Å steps: "
          f"force change at the swap {at_swap:.3e} eV/Å, largest elsewhere {elsewhere:.3e} eV/Å")


if __name__ == "__main__":
    main()
