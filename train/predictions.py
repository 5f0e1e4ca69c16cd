"""A model's predictions on each frame that ``evaluate`` saw, beside the frame's labels, and
the files a user takes elsewhere.

* ``predictions.extxyz``: every frame with its labels under ``REF_energy``/``REF_forces``/
  ``REF_stress`` and the model's values under ``energy``/``forces``/``stress``, the keys of
  mace-torch's ``mace_eval_configs`` (see :mod:`orbitgraph.train.export`); ``ase.io.read``
  gives the model's values as ``atoms.get_potential_energy()``, ``get_forces()`` and
  ``get_stress()``.
* ``predictions.csv``: one row per frame (:data:`CSV_COLUMNS`), in the same order.

Frames are kept in memory until written: per frame its forces twice (N, 3) float64, about
50 bytes per atom (a 100,000-frame split of 30 atoms: ~150 MB).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from orbitgraph.preprocess.store import GraphStore
from orbitgraph.train.export import frame_text, write_frames
from orbitgraph.train.metrics import ErrorAccumulator
from orbitgraph.train.report import Pairs
from orbitgraph.units import EV_PER_A3_IN_GPA

NO_CONFIG_TYPE = "(none)"
"""The group of frames without a config_type, where other frames have one."""

CSV_COLUMNS = (
    "frame_id", "material_id", "config_type", "n_atoms",
    "energy_eV", "REF_energy_eV", "energy_per_atom_eV", "REF_energy_per_atom_eV",
    "energy_error_meV_per_atom", "forces_mae_eV_per_A", "forces_rmse_eV_per_A",
    "stress_mae_GPa", "stress_rmse_GPa")
"""``predictions.csv``: energies in eV and eV/atom (model, then ``REF_``: the label), the
energy error (model - label) in meV/atom, the MAE and RMSE of the frame's force components
in eV/Å and of its stress components in GPa (empty where the frame has no stress label)."""


@dataclass
class FramePrediction:
    """One frame's labels and the model's values: ``energy``/``ref_energy`` eV,
    ``forces``/``ref_forces`` (N, 3) eV/Å, ``stress``/``ref_stress`` (3, 3) eV/Å³ with
    ASE's sign (``ref_stress`` NaN where the frame has no stress label), all float64."""

    frame_id: str
    energy: float
    ref_energy: float
    forces: np.ndarray
    ref_forces: np.ndarray
    stress: np.ndarray
    ref_stress: np.ndarray

    @property
    def n_atoms(self) -> int:
        return int(self.forces.shape[0])

    @property
    def has_stress(self) -> bool:
        return not np.isnan(self.ref_stress).any()


class Predictions:
    """The :class:`FramePrediction` of each frame of ``frames`` (a store or a subset of one)
    in the order :meth:`add` receives them (kept only with ``keep``: the files need them),
    with error accumulators per ``config_type`` (the index's; none where no frame has
    one)."""

    def __init__(self, frames: GraphStore, keep: bool = True):
        self.frames = frames
        self.keep = keep
        self.items: list[FramePrediction] = []
        ids = frames.index.column("frame_id").to_pylist()
        self.position = {fid: i for i, fid in enumerate(ids)}
        self.material_ids = frames.index.column("material_id").to_pylist()
        self.config_types = frames.index.column("config_type").to_pylist()
        typed = any(ct is not None for ct in self.config_types)
        self.by_config_type: dict[str, ErrorAccumulator] = (
            {self._group(ct): ErrorAccumulator() for ct in self.config_types} if typed else {})

    @staticmethod
    def _group(config_type: str | None) -> str:
        return NO_CONFIG_TYPE if config_type is None else config_type

    def add(self, out: dict, batch) -> None:
        """The model's output ``out`` (``energy`` (F,) eV, ``forces`` (N, 3) eV/Å,
        ``stress`` (F, 3, 3) eV/Å³) on ``batch`` (a labelled :class:`model.Batch` whose
        ``frame_ids`` are frames of this store)."""
        n_atoms = batch.n_atoms.cpu().numpy()
        ptr = np.concatenate([[0], np.cumsum(n_atoms)])
        energy, ref_energy = (t.detach().double().cpu().numpy()
                              for t in (out["energy"], batch.energy))
        forces, ref_forces = (t.detach().double().cpu().numpy()
                              for t in (out["forces"], batch.forces))
        stress, ref_stress = (t.detach().double().cpu().numpy().reshape(-1, 3, 3)
                              for t in (out["stress"], batch.stress))
        for b, fid in enumerate(batch.frame_ids):
            a, z = ptr[b], ptr[b + 1]
            item = FramePrediction(fid, float(energy[b]), float(ref_energy[b]), forces[a:z],
                                   ref_forces[a:z], stress[b], ref_stress[b])
            if self.keep:
                self.items.append(item)
            if self.by_config_type:
                group = self._group(self.config_types[self.position[fid]])
                self.by_config_type[group].add_differences(
                    np.array([(item.energy - item.ref_energy) / max(item.n_atoms, 1)]),
                    item.forces - item.ref_forces,
                    (item.stress - item.ref_stress)[None] if item.has_stress
                    else np.empty((0, 3, 3)))

    def config_type_frames(self, group: str) -> GraphStore:
        """The frames of ``group`` (a config_type, or :data:`NO_CONFIG_TYPE`)."""
        column = pc.field("config_type")
        return self.frames.subset(where=column.is_null() if group == NO_CONFIG_TYPE
                                  else column == group)

    def pairs(self) -> Pairs:
        """(reference, predicted) pairs for parity plots: energy per atom (eV/atom), force
        components (eV/Å), stress components of the frames with a stress label (GPa)."""
        items = self.items
        energy = np.array([[p.ref_energy / max(p.n_atoms, 1), p.energy / max(p.n_atoms, 1)]
                           for p in items]).reshape(-1, 2)
        forces = np.stack([np.concatenate([p.ref_forces.ravel() for p in items] or [[]]),
                           np.concatenate([p.forces.ravel() for p in items] or [[]])], 1)
        with_stress = [p for p in items if p.has_stress]
        stress = np.stack([np.concatenate([p.ref_stress.ravel() for p in with_stress] or [[]]),
                           np.concatenate([p.stress.ravel() for p in with_stress] or [[]])], 1)
        return Pairs(energy, forces, stress * EV_PER_A3_IN_GPA)

    def write_extxyz(self, path: str | Path) -> int:
        """``predictions.extxyz`` (see the module docstring) at ``path``; the frames'
        positions, cells and labels are the store's (:meth:`GraphStore.atoms`). Returns the
        number of frames written."""
        def texts():
            for p in self.items:
                atoms = self.frames.atoms(self.position[p.frame_id])
                yield frame_text(atoms, {"energy": p.energy, "forces": p.forces,
                                         "stress": p.stress if p.has_stress else None})
        return write_frames(texts(), path)

    def write_csv(self, path: str | Path) -> int:
        """``predictions.csv`` (:data:`CSV_COLUMNS`) at ``path``; returns the rows written."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for p in self.items:
                i = self.position[p.frame_id]
                n = max(p.n_atoms, 1)
                df = p.forces - p.ref_forces
                if p.has_stress:
                    ds = (p.stress - p.ref_stress) * EV_PER_A3_IN_GPA
                    stress = [repr(float(np.abs(ds).mean())),
                              repr(float(np.sqrt((ds ** 2).mean())))]
                else:
                    stress = ["", ""]
                writer.writerow([
                    p.frame_id, self.material_ids[i], self.config_types[i] or "", p.n_atoms,
                    repr(p.energy), repr(p.ref_energy), repr(p.energy / n),
                    repr(p.ref_energy / n), repr((p.energy - p.ref_energy) / n * 1000.0),
                    repr(float(np.abs(df).mean())), repr(float(np.sqrt((df ** 2).mean()))),
                    *stress])
        return len(self.items)
