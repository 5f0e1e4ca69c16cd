"""Stores back to files: extended XYZ that ASE, mace-torch and nequip read as they are.

Each frame is written with its labels under the reference keys that mace-torch reads by
default and nequip maps with ``key_mapping``::

    REF_energy   per frame   eV
    REF_forces   per atom    eV/Å (3 columns)
    REF_stress   per frame   eV/Å³, ASE's sign (positive = tensile): 6 Voigt values xx yy zz
                             yz xz xy (the symmetric part: see
                             :func:`~orbitgraph.preprocess.store.atoms.stress_for_ase`);
                             absent where the store has none
    magmoms      per atom    μB, where the frame has magnetic moments
    frame_id, material_id    the store's ids
    config_type              the source's, where the frame has one

``orbitgraph evaluate`` writes its predictions with the same writer, beside the labels, under
the keys mace-torch's ``mace_eval_configs`` writes (with ``--info_prefix ""``) and that
``ase.io.read`` takes as the frame's calculator results::

    energy       per frame   eV
    forces       per atom    eV/Å (3 columns)
    stress       per frame   eV/Å³, ASE's sign: the 3x3 tensor (9 values, in the order ASE's
                             writer gives its ``stress`` key; ``ase.io.read`` turns it into
                             the 6 Voigt values of ``atoms.get_stress()``); absent where the
                             frame has no stress label

Numbers are written with Python's shortest round-trip representation (ASE's writer rounds
per-atom columns to 1e-8, coarser than the graph's 1e-9 Å distance grid), so a store built
from the export holds the same positions, cells, energies, forces, magnetic moments and
symmetric stresses bit for bit, and so the same graphs. ASE's own comment-line encoder
quotes the values.
"""
from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from ase import Atoms
from ase.io.extxyz import key_val_dict_to_str

from orbitgraph.errors import ConfigError, InputError, StoreError
from orbitgraph.preprocess.store import GraphStore

ENERGY_KEY, FORCES_KEY, STRESS_KEY = "REF_energy", "REF_forces", "REF_stress"
FORMATS = ("extxyz",)


def _numbers(values: np.ndarray) -> str:
    return " ".join(map(repr, np.asarray(values, dtype=np.float64).ravel().tolist()))


PREDICTED_KEYS = ("energy", "forces", "stress")


def frame_text(atoms: Atoms, predicted: dict | None = None) -> str:
    """One frame of extended XYZ: ``atoms`` with its labels from ``atoms.calc.results``
    (``energy`` eV and ``forces`` eV/Å required; ``stress`` eV/Å³ ASE sign, 6 Voigt values,
    and ``magmoms`` optional) and ``frame_id``/``material_id``/``config_type`` from
    ``atoms.info``; with ``predicted`` ({``energy``: eV, ``forces``: (N, 3) eV/Å,
    ``stress``: (3, 3) eV/Å³ ASE sign, or absent}), a model's values too, under
    :data:`PREDICTED_KEYS` (see the module docstring).

    Raises InputError naming the frame when it has no energy or forces, or a stress of
    another shape.
    """
    name = atoms.info.get("frame_id", "?")
    results = atoms.calc.results if atoms.calc is not None else {}
    missing = [key for key in ("energy", "forces") if key not in results]
    if missing:
        raise InputError(f"frame {name}: no {' and no '.join(missing)} to export")
    columns = {"pos": atoms.positions, FORCES_KEY: results["forces"]}
    if predicted is not None:
        columns["forces"] = np.asarray(predicted["forces"], dtype=np.float64).reshape(-1, 3)
    if "magmoms" in results:
        columns["magmoms"] = np.asarray(results["magmoms"]).reshape(-1, 1)
    properties = "species:S:1:" + ":".join(f"{key}:R:{np.shape(a)[1]}"
                                           for key, a in columns.items())
    info = {"Lattice": atoms.cell.array.reshape(9), "Properties": properties,
            ENERGY_KEY: float(results["energy"])}
    if "stress" in results:
        stress = np.asarray(results["stress"], dtype=np.float64)
        if stress.shape != (6,):
            raise InputError(f"frame {name}: stress of shape {stress.shape}; expected the 6 "
                             "Voigt values an ASE calculator holds")
        info[STRESS_KEY] = stress
    if predicted is not None:
        info["energy"] = float(predicted["energy"])
        if predicted.get("stress") is not None:
            info["stress"] = np.asarray(predicted["stress"], dtype=np.float64).reshape(3, 3)
    for key in ("frame_id", "material_id", "config_type"):
        if key in atoms.info:
            info[key] = str(atoms.info[key])
    info["pbc"] = np.asarray(atoms.pbc, dtype=bool)
    table = np.hstack([np.asarray(a, dtype=np.float64).reshape(len(atoms), -1)
                       for a in columns.values()])
    lines = [str(len(atoms)), key_val_dict_to_str(info)]
    lines += [f"{symbol} {_numbers(row)}"
              for symbol, row in zip(atoms.get_chemical_symbols(), table, strict=True)]
    return "\n".join(lines) + "\n"


def write_extxyz(images: Iterable[Atoms], path: str | Path) -> int:
    """Write ``images`` (see :func:`frame_text`) to ``path`` (gzip-compressed if it ends
    in ``.gz``); returns the number of frames. The file appears whole or not at all (see
    :func:`write_frames`)."""
    return write_frames(map(frame_text, images), path)


def write_frames(texts: Iterable[str], path: str | Path) -> int:
    """Write frames already in extended XYZ (each a :func:`frame_text`) to ``path``
    (gzip-compressed if it ends in ``.gz``); returns the number of frames. The file is
    written under a temporary name and renamed into place, so that it appears whole or
    not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    count = 0
    try:
        raw = gzip.open(tmp, "wb") if path.name.endswith(".gz") else open(tmp, "wb")
        with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as f:
            for text in texts:
                f.write(text)
                count += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def export_store(store: GraphStore, path: str | Path, format: str = "extxyz",
                 split: str | None = None) -> int:
    """Write the frames of ``store`` (or of its ``split``: train, val or test) to ``path``
    in ``format``; returns the number of frames written.

    Raises ValueError for an unknown format or a selection without frames.
    """
    if format not in FORMATS:
        raise ConfigError(f"export: unknown format {format!r}; expected {', '.join(FORMATS)}")
    selection = store.subset(split=split) if split is not None else store
    if len(selection) == 0:
        where = f"split {split!r} of " if split is not None else ""
        raise StoreError(f"export: no frames in {where}{store.root}")
    return write_extxyz(selection.iter_atoms(), path)
