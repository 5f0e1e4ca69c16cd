"""Shared test helpers: small fixtures made here, never downloaded."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from orbitgraph.train.testing import random_rotation  # noqa: F401  (re-exported for the tests)

DATA = Path(__file__).parent / "data"
SMALL_MPTRJ = DATA / "mptrj_small.json.gz"
VASP_FRAMES = DATA / "vasp_frames.json.gz"


def load_small_mptrj() -> dict:
    with gzip.open(SMALL_MPTRJ, "rt") as f:
        return json.load(f)


def sample_structures(limit: int | None = None
                      ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(frame_id, cell, positions, numbers) of the bundled MPtrj-format sample."""
    out = []
    for frames in load_small_mptrj().values():
        for fid, rec in frames.items():
            s = rec["structure"]
            cell = np.array(s["lattice"]["matrix"], dtype=np.float64)
            pos = np.array([site["xyz"] for site in s["sites"]], dtype=np.float64)
            from pymatgen.core import Element
            z = np.array([Element(site["species"][0]["element"]).Z for site in s["sites"]])
            out.append((fid, cell, pos, z))
            if limit is not None and len(out) >= limit:
                return out
    return out


def canonical_edges(g) -> list[tuple]:
    """Edges as a sorted list of (centre, neighbour, S) tuples."""
    return sorted(zip(g.centers.tolist(), g.neighbors.tolist(),
                      map(tuple, g.unit_shifts.tolist()), strict=True))


def per_atom_sorted_distances(g) -> list[np.ndarray]:
    ptr = g.edge_ptr
    return [np.sort(g.distances[ptr[i]:ptr[i + 1]]) for i in range(g.n_atoms)]




def write_small_mptrj(path: Path, frames: int = 40, max_atoms: int = 20) -> Path:
    """About ``frames`` frames of the bundled sample's materials of at most ``max_atoms``
    atoms (whole materials), as an MPtrj-format file: for tests that train."""
    small: dict = {}
    for mid, records in load_small_mptrj().items():
        if len(next(iter(records.values()))["structure"]["sites"]) <= max_atoms:
            small[mid] = records
        if sum(map(len, small.values())) >= frames:
            break
    path.write_text(json.dumps(small))
    return path


def write_mptrj(path: Path, materials: dict, labels: str = "emt") -> Path:
    """{material id: [ase.Atoms, ...]} as an MPtrj-format file, labelled by EMT (or with
    zero energies, forces and stresses: ``labels="zero"``); open cells get no stress."""
    from ase.calculators.emt import EMT

    from orbitgraph.units import EV_PER_A3_IN_KBAR

    def stress_to_vasp_kbar(stress_ev_a3) -> np.ndarray:
        """(3, 3) eV/Å³, ASE sign -> (3, 3) kBar, VASP sign (how MPtrj holds stress)."""
        return -np.asarray(stress_ev_a3, dtype=np.float64) * EV_PER_A3_IN_KBAR

    def record(atoms):
        periodic = bool(atoms.pbc.all())
        if labels == "emt":
            atoms.calc = EMT()
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            stress = atoms.get_stress(voigt=False) if periodic else None
        else:
            energy, forces, stress = 0.0, np.zeros((len(atoms), 3)), np.zeros((3, 3))
        return {"structure": {"lattice": {"matrix": atoms.cell.array.tolist(),
                                          "pbc": atoms.pbc.tolist()},
                              "sites": [{"species": [{"element": el, "occu": 1}],
                                         "xyz": p.tolist()}
                                        for el, p in zip(atoms.get_chemical_symbols(),
                                                         atoms.positions, strict=True)]},
                "uncorrected_total_energy": energy, "corrected_total_energy": energy,
                "force": np.asarray(forces).tolist(), "magmom": None,
                "stress": stress_to_vasp_kbar(stress).tolist() if stress is not None else None}

    path.write_text(json.dumps({mid: {f"{mid}-{i}": record(a) for i, a in enumerate(frames)}
                                for mid, frames in materials.items()}))
    return path
