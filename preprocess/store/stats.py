"""Dataset statistics as sufficient statistics that add up across shards.

Each shard accumulates sums over its training frames (normal equations for the atomic
reference energies, force and energy moments) and over all frames (neighbour counts);
the build adds the shards' sums and solves once at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_ELEMENTS = 119  # atomic numbers 0..118


def element_counts(numbers, n_atoms) -> np.ndarray:
    """How many atoms of each element each frame holds: (F, 119) int64, column z for atomic
    number z. ``numbers`` (ΣN,) the frames' atomic numbers one after another, ``n_atoms``
    (F,) their atom counts. The one element count: compositions, the E0 normal equations
    and the E0-only baseline energies are all read from it."""
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    rows = np.repeat(np.arange(n_atoms.size), n_atoms)
    z = np.asarray(numbers, dtype=np.int64)
    return np.bincount(rows * N_ELEMENTS + z, minlength=n_atoms.size * N_ELEMENTS).reshape(
        n_atoms.size, N_ELEMENTS)


@dataclass
class ShardStats:
    frames: int = 0
    atoms: int = 0
    edges: int = 0
    train_frames: int = 0
    train_atoms: int = 0
    ata: np.ndarray = field(default_factory=lambda: np.zeros((N_ELEMENTS, N_ELEMENTS)))
    aty: np.ndarray = field(default_factory=lambda: np.zeros(N_ELEMENTS))
    epa_sum: float = 0.0
    epa_sq_sum: float = 0.0
    force_sq_sum: float = 0.0
    force_components: int = 0

    def add_frames(self, numbers_per_frame, energies, forces_per_frame, edges_per_frame,
                   is_train) -> None:
        """Add frames: lists of (N_b,) numbers, energies (eV), (N_b, 3) forces, edge counts."""
        n_atoms = np.array([len(z) for z in numbers_per_frame], dtype=np.int64)
        self.frames += len(n_atoms)
        self.atoms += int(n_atoms.sum())
        self.edges += int(np.sum(edges_per_frame, dtype=np.int64))
        train = np.nonzero(np.asarray(is_train, dtype=bool))[0]
        if not train.size:
            return
        n = n_atoms[train]
        e = np.asarray(energies, dtype=np.float64)[train]
        z = np.concatenate([np.asarray(numbers_per_frame[b], dtype=np.int64) for b in train])
        counts = element_counts(z, n).astype(np.float64)
        self.train_frames += int(train.size)
        self.train_atoms += int(n.sum())
        self.ata += counts.T @ counts  # integer counts: exact in float64
        self.aty += counts.T @ e
        epa = e / n
        self.epa_sum += float(epa.sum())
        self.epa_sq_sum += float(np.square(epa).sum())
        forces = np.concatenate([np.asarray(forces_per_frame[b], dtype=np.float64).reshape(-1)
                                 for b in train])
        self.force_sq_sum += float(np.square(forces).sum())
        self.force_components += int(forces.size)

    def __add__(self, other: "ShardStats") -> "ShardStats":
        out = ShardStats()
        for name in ("frames", "atoms", "edges", "train_frames", "train_atoms", "epa_sum",
                     "epa_sq_sum", "force_sq_sum", "force_components"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.ata = self.ata + other.ata
        out.aty = self.aty + other.aty
        return out

    def to_dict(self) -> dict:
        present = np.nonzero(np.diag(self.ata))[0]
        return {
            "frames": self.frames, "atoms": self.atoms, "edges": self.edges,
            "train_frames": self.train_frames, "train_atoms": self.train_atoms,
            "elements": present.tolist(),
            "ata": self.ata[np.ix_(present, present)].tolist(),
            "aty": self.aty[present].tolist(),
            "epa_sum": self.epa_sum, "epa_sq_sum": self.epa_sq_sum,
            "force_sq_sum": self.force_sq_sum, "force_components": self.force_components,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ShardStats":
        s = cls()
        for name in ("frames", "atoms", "edges", "train_frames", "train_atoms", "epa_sum",
                     "epa_sq_sum", "force_sq_sum", "force_components"):
            setattr(s, name, d[name])
        present = np.asarray(d["elements"], dtype=np.int64)
        if present.size:
            s.ata[np.ix_(present, present)] = np.asarray(d["ata"])
            s.aty[present] = np.asarray(d["aty"])
        return s

    def summary(self) -> dict:
        """The manifest's statistics: E0 (eV) per element, neighbours, force RMS, energy."""
        present = np.nonzero(np.diag(self.ata))[0]
        e0 = {}
        if present.size:
            sol, *_ = np.linalg.lstsq(self.ata[np.ix_(present, present)], self.aty[present],
                                      rcond=None)
            e0 = {int(z): float(v) for z, v in zip(present, sol, strict=True)}
        n = max(self.train_frames, 1)
        mean = self.epa_sum / n
        var = max(self.epa_sq_sum / n - mean * mean, 0.0)
        return {
            "atomic_energies_eV": e0,
            "mean_neighbors_per_atom": self.edges / max(self.atoms, 1),
            "force_rms_eV_per_A": float(np.sqrt(self.force_sq_sum / max(self.force_components, 1))),
            "energy_per_atom_mean_eV": mean,
            "energy_per_atom_std_eV": float(np.sqrt(var)),
            "train_frames": self.train_frames,
        }
