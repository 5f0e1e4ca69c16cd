"""The one batch type that flows through every model: many frames, concatenated.

Offsets are applied once, at collation: ``centers`` and ``neighbors`` index the batch's atom
rows. Edge vectors are not stored; the model recomputes them from positions, cell and
integer cell shifts so that forces and stress come from autograd.

Shapes (B frames, N atoms, E edges) and units
---------------------------------------------
numbers          (N,)      int64   atomic numbers
positions        (N, 3)    float   Å
cell             (B, 3, 3) float   Å, lattice vectors as rows
batch            (N,)      int64   frame of each atom (PyG's, nequip's and MACE's ``batch``)
n_atoms          (B,)      int64
centers          (E,)      int64   receiving atom i of edge i <- j
neighbors        (E,)      int64   sending atom j
edge_index       (2, E)    int64   property: stack (neighbors, centers) = (senders j,
                                   receivers i), PyG's source_to_target flow and MACE's
                                   (sender, receiver); messages aggregate onto edge_index[1]
unit_shifts      (E, 3)    float   integer cell shifts S: r_ij = r_j + S @ cell - r_i
                                   (mace-torch's ``unit_shifts``; its ``shifts`` = S @ cell)
rank_neighbor    (N,)      int64   atom j of the centre's (k+1)-th nearest candidate (j, S),
                                   whose distance is the rank envelope's d_{k+1}; -1 if none
                                   (no periodic axis and too few atoms)
rank_unit_shift  (N, 3)    float   its integer cell shift S
k                int               the k the graphs were built (or filtered) with
energy           (B,)      float   eV        (labels; optional)
forces           (N, 3)    float   eV/Å
stress           (B, 3, 3) float   eV/Å³, ASE sign; NaN rows where unknown
frame_ids        list[str]
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

TENSOR_FIELDS = ("numbers", "positions", "cell", "batch", "n_atoms", "centers",
                 "neighbors", "unit_shifts", "rank_neighbor", "rank_unit_shift", "energy",
                 "forces", "stress")
FLOAT_FIELDS = ("positions", "cell", "unit_shifts", "rank_unit_shift", "energy", "forces", "stress")


@dataclass
class Batch:
    numbers: torch.Tensor
    positions: torch.Tensor
    cell: torch.Tensor
    batch: torch.Tensor
    n_atoms: torch.Tensor
    centers: torch.Tensor
    neighbors: torch.Tensor
    unit_shifts: torch.Tensor
    rank_neighbor: torch.Tensor
    rank_unit_shift: torch.Tensor
    k: int
    energy: torch.Tensor | None = None
    forces: torch.Tensor | None = None
    stress: torch.Tensor | None = None
    frame_ids: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return self.cell.shape[0]

    @property
    def n_edges(self) -> int:
        return self.centers.shape[0]

    @property
    def edge_index(self) -> torch.Tensor:
        """(2, E) int64: row 0 the senders j (``neighbors``), row 1 the receivers i
        (``centers``), as PyG (flow ``source_to_target``) and MACE (sender, receiver) use it."""
        return torch.stack((self.neighbors, self.centers))

    def _map(self, fn) -> "Batch":
        return replace(self, **{f: fn(f, getattr(self, f)) for f in TENSOR_FIELDS
                                if getattr(self, f) is not None})

    def to(self, device=None, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> "Batch":
        """Move to ``device``; cast float fields to ``dtype`` if given."""
        def move(name, t):
            if dtype is not None and name in FLOAT_FIELDS:
                return t.to(device=device, dtype=dtype, non_blocking=non_blocking)
            return t.to(device=device, non_blocking=non_blocking)
        return self._map(move)

    def pin_memory(self) -> "Batch":
        return self._map(lambda name, t: t.pin_memory())

    @property
    def device(self) -> torch.device:
        return self.positions.device
