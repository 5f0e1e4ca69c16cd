"""Edge vectors from positions, cell and integer cell shifts, with the strain used for stress.

A symmetric strain ε (B, 3, 3), zero-valued but requiring grad, deforms positions and cell:
r' = r (I + ε), cell' = cell (I + ε). Then forces = -dE/dr and stress = (1/V) dE/dε
(ASE's sign: positive = tensile) come from one backward pass.

Lengths are computed with elementwise products and sums (:func:`vec_mat`), never a
matrix-multiply kernel, which a GPU may run in TF32 and autocast in bf16 (10 and 7 bits of
mantissa: edge vectors off by ~1e-2 Å); the potential also keeps them out of autocast.
"""
from __future__ import annotations

import torch

from orbitgraph.model.batch import Batch


def vec_mat(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Row vectors times matrices, v (..., 3) and m (..., 3, 3) -> (..., 3), as an
    elementwise sum (full precision whatever the matmul settings)."""
    return (v.unsqueeze(-1) * m).sum(-2)


def strained(batch: Batch, strain: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (N, 3) and cell (B, 3, 3) under ``strain`` (B, 3, 3), or as they are."""
    if strain is None:
        return batch.positions, batch.cell
    sym = 0.5 * (strain + strain.transpose(1, 2))
    positions = batch.positions + vec_mat(batch.positions, sym[batch.batch])
    cell = batch.cell + vec_mat(batch.cell, sym.unsqueeze(1))
    return positions, cell


def edge_vectors(positions: torch.Tensor, cell: torch.Tensor, batch: Batch) -> torch.Tensor:
    """r_ij = r_j + S @ cell - r_i, shape (E, 3), Å."""
    edge_frame = batch.batch[batch.centers]
    offsets = vec_mat(batch.unit_shifts, cell[edge_frame])
    return positions[batch.neighbors] + offsets - positions[batch.centers]


def cell_volume(cell: torch.Tensor) -> torch.Tensor:
    """|det(cell)|, shape (B,), Å³."""
    return torch.linalg.det(cell).abs()
