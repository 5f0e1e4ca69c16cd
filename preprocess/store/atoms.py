"""A stored frame as an ``ase.Atoms`` with its labels, as ASE users expect them.

The labels ride on a :class:`~ase.calculators.singlepoint.SinglePointCalculator`, so that
``atoms.get_potential_energy()`` (eV), ``atoms.get_forces()`` (eV/Å) and
``atoms.get_stress()`` (eV/Å³, ASE's sign: positive = tensile, Voigt order xx yy zz yz xz
xy) return the store's values: the store already holds ASE's units and sign (the stress as
its symmetric part: :func:`stress_for_ase`).
``atoms.info`` holds ``frame_id`` and ``material_id``.

What is missing in the store is missing here too, never zero: a frame without a stress (NaN
in the store) has no ``stress`` result, and the magnetic moments (``magmoms``) are attached
only where the frame has any.
"""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress


def stress_for_ase(stress: np.ndarray) -> np.ndarray | None:
    """(3, 3) eV/Å³, ASE sign -> the 6 Voigt components (xx, yy, zz, yz, xz, xy) an ASE
    calculator holds, or None where the stress is missing (any NaN).

    A stress is symmetric; a computed one may not be to the last bits (CHGNet's, in float32,
    differ from their transpose by up to 3.1e-6 eV/Å³, 0.5 MPa, on the bundled sample): the
    off-diagonal pairs are averaged, as ASE's ``Atoms.get_stress`` does with a (3, 3)
    result. No potential can fit the antisymmetric part: its stress, (1/V) ∂E/∂ε for a
    symmetric strain ε, is symmetric.
    """
    stress = np.asarray(stress, dtype=np.float64).reshape(3, 3)
    if np.isnan(stress).any():
        return None
    return full_3x3_to_voigt_6_stress(stress)


def frame_to_atoms(frame: dict) -> Atoms:
    """One frame (a dict of store fields, as :meth:`GraphStore.__getitem__` gives it) ->
    ``ase.Atoms`` with its labels on a SinglePointCalculator.

    Positions and cell are the stored float64 values (positions wrapped into the cell, as
    the store holds them); forces are the stored float32 values, exactly, as float64.
    """
    n = int(frame["n_atoms"])
    atoms = Atoms(numbers=np.asarray(frame["numbers"], dtype=np.int64),
                  positions=np.asarray(frame["positions"], dtype=np.float64).reshape(n, 3),
                  cell=np.asarray(frame["cell"], dtype=np.float64).reshape(3, 3),
                  pbc=np.asarray(frame["pbc"], dtype=bool).reshape(3))
    atoms.info["frame_id"] = str(frame["frame_id"])
    atoms.info["material_id"] = str(frame["material_id"])
    results: dict = {"energy": float(frame["energy"]),
                     "forces": np.asarray(frame["forces"], dtype=np.float64).reshape(n, 3)}
    stress = stress_for_ase(frame["stress"])
    if stress is not None:
        results["stress"] = stress
    magmom = np.asarray(frame["magmom"], dtype=np.float64)
    if not np.isnan(magmom).all():
        results["magmoms"] = magmom.copy()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms
