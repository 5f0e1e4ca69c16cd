"""Species embedding: a small learned vector per element, projected wherever species
matter (initial node features, radial-weight MLPs, self-interaction, readout)."""
from __future__ import annotations

import torch
from torch import nn

NUM_ELEMENTS = 119


class SpeciesEmbedding(nn.Module):
    """(N,) atomic numbers -> (N, dim) learned embedding."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.dim = dim
        self.table = nn.Embedding(NUM_ELEMENTS, dim)
        nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        return self.table(numbers)


class SpeciesProjection(nn.Module):
    """Projects the species embedding to a per-atom weight vector of length ``out``."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear = nn.Linear(dim, out)
        nn.init.zeros_(self.linear.bias)

    def forward(self, species: torch.Tensor) -> torch.Tensor:
        return self.linear(species)
