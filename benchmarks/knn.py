"""Structures per second per core for the 16-NN orbit graph, against pymatgen + top-k.

usage: python benchmarks/knn.py [N_STRUCTURES] [--repeats R] [--check C] [--clock wall|cpu]

Structures come from ``../shared/bench/structures.py`` (MPtrj-like: real prototypes,
substituted, strained, rattled) and the baseline from ``../shared/bench/knn_anchors.py``
(pymatgen's neighbour list grown until 17 candidates, then top-k), both measured in this
run on one core. The graph is measured at the default tie tolerance (0.5 Å), at 0.01 Å and
with ties broken. Prints medians over repeats and the ratio, and checks that the results
are identical to the brute-force reference. ``--clock cpu`` times with this thread's CPU time
(every contender runs on this one thread), which a busy shared machine disturbs less than
the wall clock.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

SHARED_BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "bench"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--check", type=int, default=200,
                    help="structures checked against the reference")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: this thread's CPU time")
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    sys.path.insert(0, str(SHARED_BENCH))
    import knn_anchors  # noqa: E402
    from structures import mptrj_like  # noqa: E402

    from orbitgraph.preprocess.graph import DEFAULT_TIE_TOLERANCE, knn_graph, knn_graphs
    from orbitgraph.preprocess.graph_reference import knn_graph_reference

    structs = mptrj_like(args.n, seed=1)
    cells = np.array([s.lattice.matrix for s in structs])
    poss = [np.array(s.cart_coords) for s in structs]
    atoms = sum(len(p) for p in poss)
    print(f"{args.n} MPtrj-like structures, {atoms} atoms (mean {atoms / args.n:.1f}), 1 core, "
          f"{args.clock} clock")
    knn_graphs(cells[:2], poss[:2])  # load the compiled kernel

    contenders = {
        f"knn_graphs ties=include, {DEFAULT_TIE_TOLERANCE} Å (default)":
            lambda: knn_graphs(cells, poss, k=16, ties="include"),
        "knn_graphs ties=include, 0.01 Å":
            lambda: knn_graphs(cells, poss, k=16, ties="include", tie_tolerance=0.01),
        "knn_graphs ties=break": lambda: knn_graphs(cells, poss, k=16, ties="break"),
        "orbitgraph knn_graph one by one": lambda: [knn_graph(c, p)
                                                    for c, p in zip(cells, poss, strict=True)],
        "pymatgen get_neighbor_list + top-k": lambda: [knn_anchors.knn_pymatgen(s, 16)
                                                       for s in structs],
    }
    # Repeats interleave the contenders, so that a slow spell of this shared machine hits
    # all of them alike; each figure is a median over repeats.
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    rates = {name: args.n / float(np.median(t)) for name, t in times.items()}
    r_pmg = rates["pymatgen get_neighbor_list + top-k"]
    for name, r in rates.items():
        print(f"{name:45s} {r:10.0f} structures/s   {r / r_pmg:6.2f}x pymatgen")

    # identical to the reference (exact edge lists, both tie modes, both tolerances)
    modes = [{}, {"tie_tolerance": 0.01}, {"ties": "break"}]
    bad = 0
    for c, p in list(zip(cells, poss, strict=True))[: args.check]:
        for mode in modes:
            a = knn_graph(c, p, **mode)
            b = knn_graph_reference(c, p, **mode)
            same = all(np.array_equal(getattr(a, f), getattr(b, f))
                       for f in ("centers", "neighbors", "unit_shifts", "distances",
                                 "next_distance"))
            bad += not same
    print(f"reference check: {bad} of {len(modes) * min(args.check, args.n)} graphs differ")


if __name__ == "__main__":
    main()
