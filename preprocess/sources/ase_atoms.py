"""One ASE ``Atoms`` (as ASE's readers give it: ``info``, ``arrays``, a calculator's
``results``) to a :class:`~orbitgraph.preprocess.frame.Frame`, checked: the one reader of
an ASE frame, shared by the extended XYZ and ASE database sources."""
from __future__ import annotations

import numpy as np

from orbitgraph.errors import RecordError
from orbitgraph.preprocess.frame import Frame
from orbitgraph.preprocess.sources.labels import LabelPlan, read_labels
from orbitgraph.preprocess.sources.records import check_cell


def frame_from_atoms(atoms, material_id: str, frame_id: str, plan: LabelPlan) -> Frame:
    """The frame of ``atoms`` with the labels ``plan`` names (see
    :func:`~orbitgraph.preprocess.sources.labels.read_labels`: energy eV, forces (N, 3)
    eV/Å, stress (3, 3) eV/Å³ ASE sign); cell (3, 3) and positions (N, 3) Å as float64;
    ``info['config_type']`` (mace-torch's convention), where present, as a string.

    Raises RecordError naming the field: a cell that is not finite, singular (no cell, as
    a molecule's) or too large; positions that are not finite; a required label that is
    absent or unusable."""
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if not np.all(np.isfinite(cell)):
        raise RecordError("cell: contains NaN or inf")
    check_cell(cell, "cell")
    pos = np.asarray(atoms.positions, dtype=np.float64)
    if not np.all(np.isfinite(pos)):
        raise RecordError("positions: contain NaN or inf")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    labels = read_labels(atoms, plan, cell, pbc)
    config_type = atoms.info.get("config_type")
    return Frame(frame_id=frame_id, material_id=material_id, cell=cell, positions=pos,
                 numbers=np.asarray(atoms.numbers, dtype=np.int64), energy=labels.energy,
                 forces=labels.forces, stress=labels.stress, magmom=labels.magmom, pbc=pbc,
                 notes=labels.notes,
                 config_type=None if config_type is None else str(config_type))
