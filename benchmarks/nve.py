"""Energy conservation in NVE molecular dynamics through :class:`OrbitCalculator`.

One model's weights, four graphs, the same start (positions, velocities), float64:

* ``knn+adaptive`` — the default: k-NN graph (k = 16, ties within 0.5 Å included) with the
  adaptive rank envelope (soft k nearest, width 0.5 Å; C² energy, continuous forces);
* ``knn+next``     — k-NN graph (k = 16, 0.01 Å ties) with the envelope below d_{k+1}
  (continuous energy with exact derivatives; forces jump where the (k+1)-th candidate
  changes identity);
* ``radius``       — a radius graph: k so large that the model's cutoff decides (graph
  cutoff = model cutoff), envelope off: the conservative reference;
* ``knn-bare``     — the k-NN graph without the envelope (the energy jumps at every swap).

Velocity Verlet, 0.5 fs, 1000 K Maxwell-Boltzmann start, fixed seeds. Printed: max over the
run of |E_total(t) - E_total(0)| per atom (meV/atom) for each, and its ratio to the radius
graph's, for a model with randomised readouts and for one trained briefly on the shared
sample.

usage: python benchmarks/nve.py [--steps 300] [--train-steps 150] [--atoms 30-60]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, fresh, require_shared, sample_store  # noqa: E402

SMALL_MACE = {"preset": "mace", "channels": 16, "sh_l_max": 2, "species_dim": 8,
              "radial_mlp": [32], "readout_mlp": [16], "cutoff": 6.0}


def start_structure(store_path: Path, lo: int, hi: int, seed: int):
    """A training frame of the sample with lo..hi atoms, rattled by 0.05 Å (ase.Atoms)."""
    import numpy as np
    from ase import Atoms

    from orbitgraph.preprocess.store import open_store
    store = open_store(store_path)
    train = store.subset(split="train")
    for i in range(len(train)):
        f = train[i]
        if lo <= len(f["numbers"]) <= hi:
            rng = np.random.default_rng(seed)
            pos = f["positions"] + rng.normal(0, 0.05, f["positions"].shape)
            return Atoms(numbers=f["numbers"].astype(int), positions=pos, cell=f["cell"],
                         pbc=True), f["frame_id"]
    raise SystemExit(f"no training frame with {lo}-{hi} atoms in {store_path}")


def variants(model, width: float = 0.5):
    """(name, model, graph) for the four graphs, sharing the model's weights."""
    from orbitgraph.model import Potential
    from orbitgraph.preprocess.graph_params import GraphParams
    cfg = model.config

    def kind(envelope, width):
        m = Potential(cfg.model_copy(update={"rank_envelope": envelope,
                                             "rank_envelope_width": width}))
        m.load_state_dict(model.state_dict())
        return m.double().eval()
    return [("knn+adaptive", kind("adaptive", width), GraphParams(k=16, tie_tolerance=width)),
            ("knn+next", kind("next", 0.5), GraphParams(k=16, tie_tolerance=0.01)),
            ("radius", kind("none", width), GraphParams(k=400, ties="break", cutoff=cfg.cutoff)),
            ("knn-bare", kind("none", width), GraphParams(k=16, tie_tolerance=0.01))]


def drift(model, graph, atoms0, steps: int, dt_fs: float, seed: int) -> tuple[float, int, float]:
    """Max |E(t) - E(0)| per atom (eV/atom), the mean edge count per atom, and s/step."""
    import numpy as np
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    from orbitgraph.preprocess.graph import knn_graph
    from orbitgraph.train.calculator import OrbitCalculator
    atoms = atoms0.copy()
    atoms.calc = OrbitCalculator(model, graph)
    MaxwellBoltzmannDistribution(atoms, temperature_K=1000, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    e0 = atoms.get_potential_energy() + atoms.get_kinetic_energy()
    worst = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        dyn.run(1)
        worst = max(worst, abs(atoms.get_potential_energy() + atoms.get_kinetic_energy() - e0))
    per_step = (time.perf_counter() - t0) / steps
    g = knn_graph(atoms.cell.array, atoms.positions, params=graph)
    return worst / len(atoms), g.n_edges / len(atoms), per_step


def random_model(numbers):
    import torch

    from orbitgraph.model import build_model
    from orbitgraph.train.testing import randomise
    torch.manual_seed(0)
    e0 = {int(z): -3.0 for z in set(numbers.tolist())}
    return randomise(build_model({**SMALL_MACE, "atomic_energies": e0})).double().eval()


def trained_model(store_path: Path, steps: int):
    from orbitgraph.train.calculator import OrbitCalculator
    from orbitgraph.train.config import TrainConfig
    from orbitgraph.train.loader import LoaderConfig
    from orbitgraph.train.trainer import Trainer
    out = fresh(OUT / "nve_train")
    cfg = TrainConfig(max_steps=steps, lr=0.005, precision="float64",
                      loader=LoaderConfig(max_atoms=512, num_workers=0),
                      plots=False, tensorboard=False, checkpoint_every=steps, log_every=10**9)
    trainer = Trainer(store_path, dict(SMALL_MACE), cfg, out)
    trainer.fit()
    best = out / "best.pt" if (out / "best.pt").is_file() else out / "checkpoint.pt"
    return OrbitCalculator.from_checkpoint(best).model.double().eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--dt", type=float, default=0.5, help="fs")
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--atoms", default="30-60")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-trained", action="store_true")
    ap.add_argument("--width", type=float, default=0.5,
                    help="adaptive envelope width and tie tolerance, Å")
    args = ap.parse_args()
    require_shared()
    import torch
    torch.set_default_dtype(torch.float64)
    lo, hi = (int(x) for x in args.atoms.split("-"))
    store = sample_store("store_nve")
    atoms, frame_id = start_structure(store, lo, hi, args.seed)
    print(f"{frame_id} rattled 0.05 Å, {len(atoms)} atoms; NVE {args.steps} steps of "
          f"{args.dt} fs from 1000 K, float64")
    models = [("random readouts", random_model(atoms.numbers))]
    if not args.skip_trained:
        models.append((f"trained {args.train_steps} steps", trained_model(store, args.train_steps)))
    for label, model in models:
        rows = []
        for name, m, graph in variants(model, args.width):
            rows.append((name, *drift(m, graph, atoms, args.steps, args.dt, args.seed)))
        ref = rows[2][1]
        print(f"\n{label}:")
        print(f"  {'graph':14s} {'max|dE|/atom (meV)':>19s} {'ratio to radius':>16s} "
              f"{'edges/atom':>11s} {'ms/step':>8s}")
        for name, d, edges, per_step in rows:
            print(f"  {name:14s} {d * 1e3:19.3e} {d / ref:16.2f} {edges:11.1f} "
                  f"{per_step * 1e3:8.1f}")


if __name__ == "__main__":
    main()
