"""Batched MD through torch-sim against looping the ASE calculator over the same systems.

B frames of the shared sample (``--atoms`` atoms each, rattled 0.05 Å), one model
(``--model``: a small mace preset, randomised readouts), NVE velocity Verlet at 1 fs:

* ``torch-sim``: :class:`orbitgraph.train.torchsim.OrbitModel`, all B systems in one state,
  ``--steps`` steps of ``ts.nve``'s update (timed after its init);
* ``ASE loop``: :class:`OrbitCalculator` with ASE's VelocityVerlet, each system in turn,
  ``--steps`` steps each.

Printed: batched steps/s and system-steps/s of each, their ratio, and what one batched step
costs: the graphs (the numba kernel on the CPU, all systems in one call) and collation
(:meth:`OrbitModel.batch_of`) beside the model's energy, forces and stress.

usage: python benchmarks/torchsim.py [--systems 16] [--atoms 8-48] [--steps 20]
           [--dtype float32|float64] [--device cpu|cuda] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import require_shared, sample_store  # noqa: E402

MODEL = {"preset": "mace", "channels": 16, "sh_l_max": 2, "species_dim": 8,
         "radial_mlp": [32], "readout_mlp": [16]}


def sample_systems(store_path: Path, count: int, lo: int, hi: int, seed: int) -> list:
    """``count`` training frames of ``lo``..``hi`` atoms, one per material, rattled."""
    import numpy as np

    from orbitgraph.preprocess.store import open_store
    train = open_store(store_path).subset(split="train", min_atoms=lo, max_atoms=hi)
    rng = np.random.default_rng(seed)
    out, materials = [], set()
    for i in range(len(train)):
        atoms = train.atoms(i)
        if atoms.info["material_id"] in materials:
            continue
        materials.add(atoms.info["material_id"])
        atoms.calc = None
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        out.append(atoms)
        if len(out) == count:
            return out
    raise SystemExit(f"only {len(out)} materials with {lo}-{hi} atoms in {store_path}")


def random_model(systems, dtype):
    import torch

    from orbitgraph.model import build_model
    from orbitgraph.train.testing import randomise
    torch.manual_seed(0)
    numbers = sorted({int(z) for a in systems for z in a.numbers})
    model = randomise(build_model({**MODEL, "atomic_energies": {z: -3.0 for z in numbers}}))
    return model.to(dtype).eval()


def torchsim_rate(model, systems, steps: int, device: str, dtype) -> tuple[float, float, float]:
    """(batched steps/s, s per step in graphs + collation, s per step in the model)."""
    import torch
    import torch_sim as ts
    from torch_sim.units import MetalUnits

    from orbitgraph.train.torchsim import OrbitModel
    ts_model = OrbitModel(model, graph(), device=device, dtype=dtype)
    state = ts.io.atoms_to_state(systems, torch.device(device), dtype)
    init, update = ts.nve(model=ts_model, dt=torch.tensor(0.001 * MetalUnits.time, dtype=dtype),
                          kT=torch.tensor(300 * MetalUnits.temperature, dtype=dtype), seed=1)
    state = init(state)
    state = update(state)  # compiled, warm
    t0 = time.perf_counter()
    for _ in range(steps):
        state = update(state)
    rate = steps / (time.perf_counter() - t0)
    graphs, evals = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        batch = ts_model.batch_of(state)
        t1 = time.perf_counter()
        model(batch, forces=True, stress=True)
        graphs.append(t1 - t0)
        evals.append(time.perf_counter() - t1)
    return rate, statistics.median(graphs), statistics.median(evals)


def ase_rate(model, systems, steps: int, device: str, dtype) -> float:
    """System-steps/s of ASE's VelocityVerlet over the systems, one after the other."""
    import numpy as np
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from orbitgraph.train.calculator import OrbitCalculator
    calc = OrbitCalculator(model, graph(), device=device, dtype=dtype)
    runs = []
    for i, atoms in enumerate(systems):
        atoms = atoms.copy()
        atoms.calc = calc
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(i))
        dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
        dyn.run(1)
        runs.append(dyn)
    t0 = time.perf_counter()
    for dyn in runs:
        dyn.run(steps)
    return steps * len(systems) / (time.perf_counter() - t0)


def graph():
    from orbitgraph.preprocess.graph_params import GraphParams
    return GraphParams()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--systems", type=int, default=16)
    ap.add_argument("--atoms", default="8-48")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    require_shared()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    lo, hi = (int(x) for x in args.atoms.split("-"))
    systems = sample_systems(sample_store("store_torchsim"), args.systems, lo, hi, args.seed)
    n_atoms = sum(len(a) for a in systems)
    model = random_model(systems, dtype)
    print(f"{len(systems)} systems, {n_atoms} atoms ({lo}-{hi} each), NVE 1 fs, {args.steps} "
          f"steps, {args.dtype}, {args.device}, torch threads {torch.get_num_threads()}")
    rate, t_graph, t_model = torchsim_rate(model, systems, args.steps, args.device, dtype)
    loop = ase_rate(model, systems, args.steps, args.device, dtype)
    batched = rate * len(systems)
    print(f"torch-sim   {rate:8.2f} steps/s  {batched:9.1f} system-steps/s")
    print(f"ASE loop    {loop / len(systems):8.2f} steps/s  {loop:9.1f} system-steps/s")
    print(f"batched / loop: {batched / loop:.2f}x")
    print(f"one batched step: graphs + collation {1e3 * t_graph:.2f} ms, model energy, "
          f"forces, stress {1e3 * t_model:.1f} ms ({100 * t_graph / (t_graph + t_model):.1f} % "
          f"in the graphs)")


if __name__ == "__main__":
    main()
