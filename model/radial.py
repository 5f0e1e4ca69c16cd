"""Radial bases and envelopes.

* :class:`BesselBasis` — sqrt(2/r_c) sin(n π r / r_c) / r (DimeNet, MACE), learnable n.
* :class:`GaussianBasis` — exp(-(r - μ_n)² / 2σ²) on an even grid in [0, r_c].
* :class:`PolynomialEnvelope` — the DimeNet envelope of order p: 1 at r = 0, zero with
  p derivatives at r = r_c, zero beyond.
* :class:`RankEnvelope` — for k-nearest-neighbour graphs: goes smoothly from 1 to 0 as an
  edge's length approaches d_{k+1}, the centre's (k+1)-th smallest candidate distance
  (:func:`rank_reference_distance`, computed from positions and cell so that autograd
  differentiates it). Edges enter or leave a k-NN graph (by a swap of rank, or by tie
  inclusion within the tolerance) only at rank > k, where d >= d_{k+1} and the weight is
  exactly 0, and d_{k+1} (the (k+1)-th smallest of continuous functions) is continuous: the
  energy is continuous, and forces and stress are its exact derivatives wherever it is
  differentiable. Where the (k+1)-th and (k+2)-th candidates swap, d_{k+1} follows another
  candidate and has a kink, so forces may jump there (by an amount that vanishes with the
  weight derivative of the edges within ``width`` of d_{k+1}).

With a graph cutoff c (store or load-time filter), the first candidate not kept can lie at a
rank below k + 1 (beyond c); the energy is then continuous when the model's cutoff is at most
c - width (edges within ``width`` of the graph cutoff then carry no weight anyway).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from orbitgraph.model.geometry import vec_mat
from orbitgraph.model.scatter import scatter_sum


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


def rank_reference_distance(positions: torch.Tensor, cell: torch.Tensor,
                            batch: torch.Tensor, rank_neighbor: torch.Tensor,
                            rank_unit_shift: torch.Tensor) -> torch.Tensor:
    """d_{k+1} per centre: |r_j + S @ cell - r_i| of its (k+1)-th nearest candidate (j, S).

    Computed from the (strained) positions and cell with the edge-vector formula, so forces
    and stress include d_{k+1}'s dependence on them.

    Shapes: positions (N, 3) Å, cell (B, 3, 3) Å, batch (N,), rank_neighbor (N,)
    (-1: no candidate), rank_unit_shift (N, 3) -> (N,) Å, ``inf`` where there is no candidate.
    """
    has = rank_neighbor >= 0
    # every row computed (no data-dependent selection, so that torch.export keeps the
    # number of atoms symbolic); rows without a candidate measure a unit vector, whose norm
    # has a finite gradient, and are then set to inf
    offset = vec_mat(rank_unit_shift, cell[batch])
    vec = positions[rank_neighbor.clamp(min=0)] + offset - positions
    vec = torch.where(has.unsqueeze(-1), vec, torch.ones_like(vec) / 3 ** 0.5)
    d_ref = torch.linalg.norm(vec, dim=-1)
    return torch.where(has, d_ref, torch.full_like(d_ref, float("inf")))


def smoothstep(x: torch.Tensor) -> torch.Tensor:
    """C² step s(x): 0 for x <= 0, 1 for x >= 1, 6x⁵ - 15x⁴ + 10x³ between."""
    x = torch.clamp(x, 0.0, 1.0)
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)


class RankEnvelope(nn.Module):
    """w(d) = s((d_{k+1} - d) / width) with s the C² smoothstep on [0, 1].

    d_{k+1} comes from :func:`rank_reference_distance` (differentiable); infinite d_{k+1}
    gives weight 1.
    """

    def __init__(self, width: float):  # Å (default: ModelConfig.rank_envelope_width)
        super().__init__()
        if not width > 0:
            raise ValueError(f"rank envelope width must be > 0 Å, got {width}")
        self.width = float(width)

    def forward(self, r: torch.Tensor, d_ref: torch.Tensor) -> torch.Tensor:
        """r (E,) Å, d_ref (E,) Å: d_{k+1} of each edge's centre -> (E,) weights in [0, 1]."""
        gap = torch.where(torch.isinf(d_ref), torch.full_like(r, 1e6), d_ref - r)
        return smoothstep(gap / self.width)


def smoothstep_slope(x: torch.Tensor) -> torch.Tensor:
    """s'(x) = 30 x² (1 - x)² on [0, 1], 0 outside."""
    x = torch.clamp(x, 0.0, 1.0)
    return 30.0 * x * x * (1.0 - x) * (1.0 - x)


class AdaptiveRankEnvelope(nn.Module):
    """Soft k nearest neighbours: per centre an adaptive cutoff R_i, edge weights
    w_ij = 1 - s((d_ij - R_i) / width), with R_i the solution of

        Σ_j w_ij(R_i) = k - 1/2          (a smooth count of the centre's neighbours)

    R_i lies below d_k (at most k - 1 weights are exactly 1) and above d_k - width, so
    every candidate with non-zero weight lies within ``width`` of the k-th: the graph must
    keep all of them (``ties: include`` with ``tie_tolerance >= width``; the trainer and the
    calculator check it: :func:`orbitgraph.preprocess.graph_params.graph_for_model`). The
    energy is then C² in the positions and the cell: candidates enter or leave the graph,
    and swap ranks, only where their weight and its first two derivatives are 0, and R_i is
    a smooth symmetric function of the distances (implicit function theorem;
    ∂R_i/∂d_ij = s'_ij / Σ_j s'_ij). Forces are continuous everywhere, and the weights
    always sum to k - 1/2 effective neighbours. A centre with fewer than k
    edges (no periodic axis, or a graph cutoff) has R_i = inf: weight 1.

    R_i is found without gradient by bisection to ~1e-7 Å and two Newton steps kept inside
    the bracket (to float64 precision), then one more Newton step with the slope held fixed
    attaches the exact first derivative.
    """

    BISECTIONS = 26  # (span + width) / 2²⁶: ~1e-7 Å for MPtrj-like neighbourhoods
    NEWTON = 2

    def __init__(self, width: float):  # Å (default: ModelConfig.rank_envelope_width)
        super().__init__()
        if not width > 0:
            raise ValueError(f"rank envelope width must be > 0 Å, got {width}")
        self.width = float(width)

    def forward(self, r: torch.Tensor, centers: torch.Tensor, n_nodes: int, k: int) -> torch.Tensor:
        """r (E,) Å, centers (E,), k the graph's k (:attr:`Batch.k`) -> (E,) weights in [0, 1]."""
        if r.numel() == 0:
            return torch.ones_like(r)
        target = k - 0.5
        w = self.width
        with torch.no_grad():
            d = r.detach()
            # edges per centre, as a scatter (not bincount, whose length depends on the
            # data): exact integers in floating point
            count = scatter_sum(torch.ones_like(d), centers, n_nodes)
            lo = d.new_full((n_nodes,), float("inf")).scatter_reduce(
                0, centers, d, reduce="amin", include_self=True) - w
            hi = d.new_full((n_nodes,), float("-inf")).scatter_reduce(
                0, centers, d, reduce="amax", include_self=True)
            for _ in range(self.BISECTIONS):
                mid = 0.5 * (lo + hi)
                total = scatter_sum(1.0 - smoothstep((d - mid[centers]) / w), centers, n_nodes)
                below = total < target
                lo = torch.where(below, mid, lo)
                hi = torch.where(below, hi, mid)
            r0 = 0.5 * (lo + hi)
            for _ in range(self.NEWTON + 1):
                x = (d - r0[centers]) / w
                total = scatter_sum(1.0 - smoothstep(x), centers, n_nodes)
                slope = scatter_sum(smoothstep_slope(x), centers, n_nodes) / w
                if _ < self.NEWTON:
                    step = (total - target) / slope.clamp(min=1e-30)
                    r0 = torch.minimum(torch.maximum(r0 - step, lo), hi)
            enough = count >= k
            r0 = torch.where(enough, r0, torch.zeros_like(r0))
            slope = torch.where(enough, slope, torch.ones_like(slope))
        # one Newton step on F(R) = Σ_j (1 - s((d_ij - R)/w)) = k - 1/2, slope fixed
        total = scatter_sum(1.0 - smoothstep((r - r0[centers]) / w), centers, n_nodes)
        radius = r0 - (total - target) / slope
        weight = 1.0 - smoothstep((r - radius[centers]) / w)
        return torch.where(enough[centers], weight, torch.ones_like(weight))


class EdgeEnvelope(nn.Module):
    """The weight of each edge in every message: the polynomial cutoff envelope times the
    model's rank envelope (``cfg.rank_envelope``: adaptive | next | none), shared by the
    equivariant and the invariant networks. No parameters."""

    def __init__(self, cfg):
        super().__init__()
        self.cutoff_envelope = PolynomialEnvelope(cfg.cutoff, cfg.envelope_p)
        self.rank_envelope = rank_envelope(cfg)

    def forward(self, r: torch.Tensor, centers: torch.Tensor, n_nodes: int,
                d_ref: torch.Tensor | None, k: int) -> torch.Tensor:
        """r (E,) Å, centers (E,), d_ref (N,) Å: d_{k+1} per atom (or None), k of the
        graphs -> (E,) weights in [0, 1]."""
        envelope = self.cutoff_envelope(r)
        if self.rank_envelope is None:
            return envelope
        return envelope * self.rank_weights(r, centers, n_nodes, d_ref, k)

    def rank_weights(self, r: torch.Tensor, centers: torch.Tensor, n_nodes: int,
                     d_ref: torch.Tensor | None, k: int) -> torch.Tensor:
        """The rank envelope's part alone (arguments as :meth:`forward`): (E,) weights in
        [0, 1], all 1 without a rank envelope."""
        if isinstance(self.rank_envelope, AdaptiveRankEnvelope):
            return self.rank_envelope(r, centers, n_nodes, k)
        if self.rank_envelope is not None:
            return self.rank_envelope(r, d_ref[centers])
        return torch.ones_like(r)


def rank_envelope(cfg) -> nn.Module | None:
    """The rank envelope of a model config (``cfg.rank_envelope``, a key of
    :data:`RANK_ENVELOPES`), None for ``none``."""
    envelope = RANK_ENVELOPES[cfg.rank_envelope]
    return envelope(cfg.rank_envelope_width) if envelope is not None else None


RADIAL_BASES = {"bessel": BesselBasis, "gaussian": GaussianBasis}  # ModelConfig.radial_basis
# ModelConfig.rank_envelope: its class, taking the width in Å (none: no rank envelope)
RANK_ENVELOPES = {"adaptive": AdaptiveRankEnvelope, "next": RankEnvelope, "none": None}
