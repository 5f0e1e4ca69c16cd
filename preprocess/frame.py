"""One labelled structure, as every source yields it and every shard stores it.

Units are the store's: Å, eV, eV/Å, eV/Å³ with ASE's sign. Sources convert at their edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    """A labelled structure.

    Shapes
    ------
    cell : (3, 3) float64 Å, lattice vectors as rows
    pbc : (3,) bool
    positions : (N, 3) float64 Å
    numbers : (N,) int atomic numbers
    energy : float eV
    forces : (N, 3) float64 eV/Å
    stress : (3, 3) float64 eV/Å³ (ASE sign), or None: masked (stored as NaN)
    magmom : (N,) float64 μB, or None: masked (stored as NaN)
    notes : what the source's reader did with this frame's labels, for the build summary:
        (``"not_stored"``, ``"converted"`` or ``"masked"``, what), e.g. ("converted",
        "stress = -virial / V from 'virial' ..."), ("masked", "stress: missing"); see
        :mod:`orbitgraph.preprocess.sources.labels`
    config_type : the source's label of what kind of structure this is (extxyz
        ``config_type``, as mace-torch reads it), or None; kept in the store's index
    """

    frame_id: str
    material_id: str
    cell: np.ndarray
    positions: np.ndarray
    numbers: np.ndarray
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None
    magmom: np.ndarray | None = None
    pbc: np.ndarray = field(default_factory=lambda: np.ones(3, dtype=bool))
    notes: tuple[tuple[str, str], ...] = ()
    config_type: str | None = None

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])
