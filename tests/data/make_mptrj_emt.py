"""Generate ``mptrj_emt.json.gz``: relaxation trajectories of Al-Cu-Ni crystals in MPtrj's layout.

The default pipeline trains on this file. It has MPtrj's structure, a few chemical systems
with many relaxation frames each, so a validation or test material is made of elements the
training materials hold and a model trained for a minute on a CPU learns visibly.

Materials: for each of the three binary systems Al-Cu, Al-Ni and Cu-Ni, fcc, bcc and hcp
cells of 2 to 8 atoms with random site occupations (unaries and ordered compounds such as
L1_2 and B2 among them), the lattice constant from Vegard's law, then a random strain (up to
a few %) and a rattle (0.12 Å) before the relaxation. Each is relaxed by ASE's FIRE on
positions and cell (FrechetCellFilter) under ASE's EMT potential; every ionic step up to
``--steps`` is a frame, as in MPtrj, where each frame is one ionic step of a relaxation.

Labels are EMT's (an analytic embedded-atom potential, Jacobsen et al. 1996), not DFT:
energies in eV, forces in eV/Å, stress written as MPtrj writes it (kBar, VASP sign:
positive = compressive), ``magmom`` null. Physically consistent (forces and stress are
exact derivatives of the energy), cheap and reproducible; no substitute for real MPtrj
numbers.

    python tests/data/make_mptrj_emt.py [--out tests/data/mptrj_emt.json.gz] [--seed 0]

Reproducible for a given seed, ASE and numpy version.
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from ase.units import GPa

SYSTEMS = (("Al", "Cu"), ("Al", "Ni"), ("Cu", "Ni"))
FCC_A = {"Al": 4.05, "Cu": 3.61, "Ni": 3.52}  # Å, experimental fcc lattice constants
KBAR = GPa / 10.0  # eV/Å³ per kBar
# (lattice, repeat of the conventional cell): 2 to 8 atoms
CELLS = (("fcc", (1, 1, 1)), ("fcc", (2, 1, 1)), ("bcc", (1, 1, 1)), ("bcc", (2, 2, 1)),
         ("hcp", (1, 1, 1)), ("hcp", (2, 1, 1)))
MATERIALS_PER_SYSTEM = 24


def prototype(lattice: str, repeat: tuple[int, int, int], a_fcc: float) -> Atoms:
    """A conventional cell whose volume per atom matches fcc with lattice constant a_fcc."""
    volume = a_fcc ** 3 / 4  # Å³ per atom
    if lattice == "fcc":
        atoms = bulk("X", "fcc", a=a_fcc, cubic=True)
    elif lattice == "bcc":
        atoms = bulk("X", "bcc", a=(2 * volume) ** (1 / 3), cubic=True)
    else:
        a = (volume * 4 / (np.sqrt(3) * 1.633)) ** (1 / 3)
        atoms = bulk("X", "hcp", a=a, c=1.633 * a)
    return atoms.repeat(repeat)


def make_material(rng: np.random.Generator, system: tuple[str, str]) -> Atoms:
    lattice, repeat = CELLS[rng.integers(len(CELLS))]
    a, b = system
    n = len(prototype(lattice, repeat, 4.0))
    n_b = int(rng.integers(0, n + 1))
    symbols = np.array([a] * (n - n_b) + [b] * n_b)
    rng.shuffle(symbols)
    a_fcc = float(np.mean([FCC_A[s] for s in symbols]))  # Vegard
    atoms = prototype(lattice, repeat, a_fcc)
    atoms.set_chemical_symbols(list(symbols))
    strain = np.eye(3) + rng.normal(0.0, 0.02, (3, 3))
    strain = 0.5 * (strain + strain.T) * rng.uniform(0.96, 1.04)
    atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
    atoms.positions += rng.normal(0.0, 0.12, atoms.positions.shape)
    atoms.wrap()
    return atoms


def structure_dict(atoms: Atoms) -> dict:
    """A pymatgen Structure dict, as MPtrj stores it (cell rows are lattice vectors, Å)."""
    from pymatgen.io.ase import AseAtomsAdaptor
    return AseAtomsAdaptor.get_structure(atoms).as_dict()


def trajectory(atoms: Atoms, steps: int) -> list[dict]:
    """Frames of a FIRE relaxation of positions and cell: one record per ionic step."""
    atoms.calc = EMT()
    frames = []

    def record():
        energy = float(atoms.get_potential_energy())
        stress_ev = atoms.get_stress(voigt=False)  # eV/Å³, ASE sign (positive = tensile)
        frames.append({
            "structure": structure_dict(atoms),
            "uncorrected_total_energy": energy,
            "corrected_total_energy": energy,
            "energy_per_atom": energy / len(atoms),
            "ef_per_atom": None,
            "e_per_atom_relaxed": None,
            "ef_per_atom_relaxed": None,
            "force": atoms.get_forces().tolist(),
            "stress": (-stress_ev / KBAR).tolist(),  # kBar, VASP sign
            "magmom": None,
            "bandgap": None,
        })

    opt = FIRE(FrechetCellFilter(atoms), logfile=None, maxstep=0.1)
    opt.attach(record)
    opt.run(fmax=0.02, steps=steps - 1)
    return frames


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("mptrj_emt.json.gz")))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=16, help="frames per relaxation at most")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    data = {}
    for s, system in enumerate(SYSTEMS):
        for m in range(MATERIALS_PER_SYSTEM):
            material_id = f"mp-{12000000 + 100 * s + m}"
            frames = trajectory(make_material(rng, system), args.steps)
            data[material_id] = {}
            for step, record in enumerate(frames):
                record["e_per_atom_relaxed"] = frames[-1]["energy_per_atom"]
                record["mp_id"] = material_id
                data[material_id][f"{material_id}-0-{step}"] = record
    text = json.dumps(data, separators=(",", ":"))
    with gzip.GzipFile(args.out, "wb", mtime=0) as f:
        f.write(text.encode())
    n_frames = sum(len(v) for v in data.values())
    print(f"{args.out}: {len(data)} materials, {n_frames} frames, "
          f"{Path(args.out).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
