"""Edge vectors from positions, cell and shifts, with the strain used for stress.

A symmetric strain ε (B, 3, 3), zero-valued but requiring grad, deforms positions and cell:
r' = r (I + ε), cell' = cell (I + ε). Then forces = -dE/dr and stress = (1/V) dE/dε
(ASE's sign: positive = tensile) come from one backward pass.
"""
from __future__ import annotations

import torch

from model.batch import Batch


def strained(batch: Batch, strain: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (N, 3) and cell (B, 3, 3) under ``strain`` (B, 3, 3), or as they are."""
    if strain is None:
        return batch.positions, batch.cell
    sym = 0.5 * (strain + strain.transpose(1, 2))
    positions = batch.positions + torch.einsum("ni,nij->nj", batch.positions, sym[batch.frame_index])
    cell = batch.cell + torch.bmm(batch.cell, sym)
    return positions, cell


def edge_vectors(positions: torch.Tensor, cell: torch.Tensor, batch: Batch) -> torch.Tensor:
    """r_ij = r_j + S @ cell - r_i, shape (E, 3), Å."""
    edge_frame = batch.frame_index[batch.centers]
    offsets = torch.einsum("ei,eij->ej", batch.shifts, cell[edge_frame])
    return positions[batch.neighbors] + offsets - positions[batch.centers]


def cell_volume(cell: torch.Tensor) -> torch.Tensor:
    """|det(cell)|, shape (B,), Å³."""
    return torch.linalg.det(cell).abs()
