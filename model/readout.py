"""Readouts (per block), block reduction, and species-wise scale and shift with E0.

E_i = scale(z_i) · Σ_blocks e_i^(t) (reduced) + shift(z_i) + E0(z_i);  E = Σ_i E_i  (eV)
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
from e3nn import o3
from torch import nn

from orbitgraph.model.embedding import NUM_ELEMENTS
from orbitgraph.model.mlp import silu_mlp, zero_last_layer

# which blocks' readouts are MLPs (ModelConfig.readout): none (linear), all, or the last
ReadoutKind = Literal["linear", "mlp", "mlp_last"]
BlockReduction = Literal["sum", "last", "mean"]  # ModelConfig.block_reduction


class LinearReadout(nn.Module):
    """irreps_in -> one scalar per atom (only the 0e part contributes)."""

    def __init__(self, irreps_in):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps("0e")
        self.linear = o3.Linear(self.irreps_in, self.irreps_out)
        with torch.no_grad():  # an untrained potential predicts exactly Σ E0
            self.linear.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


class MLPReadout(nn.Module):
    """MLP on the scalar channels of irreps_in -> one scalar per atom."""

    def __init__(self, irreps_in, hidden: list[int]):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps("0e")
        self.n_scalars = self.irreps_in.count("0e")
        if self.n_scalars == 0:
            raise ValueError(f"MLP readout needs scalar features, {self.irreps_in} has none")
        self.mlp = silu_mlp(self.n_scalars, hidden, 1)
        zero_last_layer(self.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x[:, : self.n_scalars]).squeeze(-1)


def reduce_blocks(per_block: list[torch.Tensor], mode: BlockReduction) -> torch.Tensor:
    """Combine the readouts of every block: list of (N,) -> (N,)."""
    if mode == "last":
        return per_block[-1]
    total = torch.stack(per_block, dim=0).sum(0)
    if mode == "mean":
        return total / len(per_block)
    if mode == "sum":
        return total
    raise ValueError(f"block_reduction must be one of {', '.join(get_args(BlockReduction))}; "
                     f"got {mode!r}")


class ScaleShift(nn.Module):
    """Species-wise learnable scale and shift, plus fixed atomic reference energies E0 (eV),
    all (NUM_ELEMENTS,) in torch's default dtype (the potential's: :class:`model.Potential`
    builds its blocks in it), so that a float64 model holds E0 to float64 precision."""

    def __init__(self, atomic_energies: dict[int, float], scale: float = 1.0, shift: float = 0.0):
        super().__init__()
        dtype = torch.get_default_dtype()
        e0 = torch.zeros(NUM_ELEMENTS, dtype=dtype)
        for z, v in atomic_energies.items():
            e0[int(z)] = float(v)
        self.register_buffer("e0", e0)
        self.scale = nn.Parameter(torch.full((NUM_ELEMENTS,), float(scale), dtype=dtype))
        self.shift = nn.Parameter(torch.full((NUM_ELEMENTS,), float(shift), dtype=dtype))

    def forward(self, atomic: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        return self.scale[numbers] * atomic + self.shift[numbers] + self.e0[numbers]
