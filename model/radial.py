"""Radial bases and envelopes.

* :class:`BesselBasis` — sqrt(2/r_c) sin(n π r / r_c) / r (DimeNet, MACE), learnable n.
* :class:`GaussianBasis` — exp(-(r - μ_n)² / 2σ²) on an even grid in [0, r_c].
* :class:`PolynomialEnvelope` — the DimeNet envelope of order p: 1 at r = 0, zero with
  p derivatives at r = r_c, zero beyond.
* :class:`RankEnvelope` — for k-nearest-neighbour graphs: goes smoothly from 1 to 0 as an
  edge's length approaches d_{k+1}, the centre's (k+1)-th smallest candidate distance.
  Edges enter or leave a k-NN graph (by a swap of rank, or by tie inclusion within the
  tolerance) only at rank > k, where d >= d_{k+1} and the weight is exactly 0, and d_{k+1}
  is a continuous function of the positions: the energy stays continuous.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class BesselBasis(nn.Module):
    def __init__(self, cutoff: float, num_basis: int = 8, trainable: bool = False):
        super().__init__()
        self.cutoff = float(cutoff)
        freqs = math.pi * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) / cutoff
        self.freqs = nn.Parameter(freqs, requires_grad=trainable)
        self.prefactor = math.sqrt(2.0 / cutoff)
        self.num_basis = num_basis

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """(E,) Å -> (E, num_basis)."""
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.freqs * r) / r


class GaussianBasis(nn.Module):
    def __init__(self, cutoff: float, num_basis: int = 8, width: float | None = None):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num_basis))
        self.width = float(width or cutoff / num_basis)
        self.num_basis = num_basis
        self.cutoff = float(cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """(E,) Å -> (E, num_basis)."""
        return torch.exp(-0.5 * ((r.unsqueeze(-1) - self.centers) / self.width) ** 2)


class PolynomialEnvelope(nn.Module):
    def __init__(self, cutoff: float, p: int = 5):
        super().__init__()
        self.cutoff = float(cutoff)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """(E,) Å -> (E,)."""
        p = self.p
        x = r / self.cutoff
        env = (1.0 - (p + 1.0) * (p + 2.0) / 2.0 * x**p + p * (p + 2.0) * x ** (p + 1)
               - p * (p + 1.0) / 2.0 * x ** (p + 2))
        return torch.where(x < 1.0, env, torch.zeros_like(env))


def rank_reference_distance(r: torch.Tensor, rank_edge: torch.Tensor,
                            next_distance: torch.Tensor) -> torch.Tensor:
    """d_{k+1} per centre, (N,): the length of the centre's (k+1)-th edge where the graph
    holds one (tie inclusion; differentiable), else the stored ``next_distance``."""
    has = rank_edge >= 0
    from_edge = r[rank_edge.clamp(min=0)] if r.numel() else next_distance
    return torch.where(has, from_edge, next_distance.to(r.dtype))


class RankEnvelope(nn.Module):
    """w(d) = s((d_{k+1} - d) / width) with s the C² smoothstep on [0, 1].

    Where d_{k+1} comes from the stored ``next_distance`` it is a constant for autograd
    (the derivative is exact at fixed d_{k+1}); where the (k+1)-th candidate is an edge of
    the graph its length is differentiated too. Infinite d_{k+1} gives weight 1.
    """

    def __init__(self, width: float = 0.5):
        super().__init__()
        if not width > 0:
            raise ValueError(f"rank envelope width must be > 0 Å, got {width}")
        self.width = float(width)

    def forward(self, r: torch.Tensor, next_distance: torch.Tensor) -> torch.Tensor:
        """r (E,), next_distance (E,) of each edge's centre -> (E,)."""
        gap = torch.nan_to_num(next_distance, posinf=1e6) - r
        x = torch.clamp(gap / self.width, 0.0, 1.0)
        return x * x * x * (x * (6.0 * x - 15.0) + 10.0)


RADIAL_BASES = {"bessel": BesselBasis, "gaussian": GaussianBasis}
