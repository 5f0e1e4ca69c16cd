"""Unit conversions at the source boundary.

MPtrj (VASP) reports stress in kBar with VASP's sign: positive = compressive. The store uses
eV/Å³ with ASE's sign: positive = tensile. 1 eV/Å³ = 1602.1766208 kBar (160.21766208 GPa).
"""
from __future__ import annotations

import numpy as np

EV_PER_A3_IN_KBAR = 1602.1766208
EV_PER_A3_IN_GPA = 160.21766208

# The units of a potential's inputs and outputs, written into every model file and exported
# program (``units``) so that a reader needs no other document to use them.
MODEL_UNITS = {"length": "Å", "positions": "Å", "cell": "Å, lattice vectors as rows",
               "energy": "eV", "atomic_energies": "eV", "E0": "eV per atom of the element",
               "forces": "eV/Å",
               "stress": "eV/Å³, ASE sign (positive = tensile): (1/V) dE/dε"}


def stress_from_vasp_kbar(stress_kbar) -> np.ndarray:
    """(3, 3) kBar, VASP sign -> (3, 3) eV/Å³, ASE sign."""
    return -np.asarray(stress_kbar, dtype=np.float64) / EV_PER_A3_IN_KBAR

