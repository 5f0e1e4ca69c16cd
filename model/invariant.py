"""The invariant toolbox: edge MLPs, attention, MLP node updates, multi-scale neighbours.

    h_i = SpeciesEmbedding(z_i) -> Linear
    per layer:
        f_ij  = R_learned(r_ij) ⊙ D_ij                      learned radial x directional
        e^b_ij = EdgeMLP_b([h_i, h_j, f_ij])             one MLP per distance band
        α_ij  = attention(e_ij) (sigmoid gate or envelope-weighted softmax), or 1
        m_i   = Σ_j α_ij w_ij Σ_b β_b(r_ij) e^b_ij / n̄   (β_b: smooth distance bands)
        h_i  += NodeMLP([h_i, m_i])
    E_i = FinalMLP(h_i)

Directional features D_ij are rotation invariants: for l = 0..L, the projection of the
edge's harmonics onto the centre's neighbourhood density, Σ_m Y_lm(r̂_ij) ρ_i,lm with
ρ_i,lm = Σ_k w_ik Y_lm(r̂_ik) / n̄, i.e. three-body angular information (Legendre terms).
"""
from __future__ import annotations

from typing import Literal

import torch
from e3nn import o3
from torch import nn

from orbitgraph.model.embedding import NormalizedLinear, SpeciesEmbedding
from orbitgraph.model.mlp import silu_mlp, zero_last_layer
from orbitgraph.model.radial import (
    RADIAL_BASES,
    EdgeEnvelope,
    smoothstep,
)
from orbitgraph.model.scatter import scatter_softmax, scatter_sum

DIRECTIONAL_L_MAX = 3
BAND_WIDTH = 0.5  # Å over which an edge moves from one distance band to the next
Attention = Literal["none", "sigmoid", "softmax"]  # over neighbours (ModelConfig.attention)


def band_weights(r: torch.Tensor, radii: torch.Tensor, width: float) -> torch.Tensor:
    """(E,) distances -> (E, len(radii) + 1) smooth band memberships summing to 1.

    Band b holds edges between radii[b-1] and radii[b]; each boundary is a smoothstep of
    ``width`` Å centred on the radius, so the energy stays smooth as edges cross it.
    """
    if radii.numel() == 0:
        return torch.ones_like(r).unsqueeze(-1)
    above = smoothstep((r.unsqueeze(-1) - radii) / width + 0.5)  # (E, B): past boundary b
    ones = torch.ones_like(r).unsqueeze(-1)
    zeros = torch.zeros_like(r).unsqueeze(-1)
    return torch.cat([ones, above], dim=-1) - torch.cat([above, zeros], dim=-1)


class InvariantLayer(nn.Module):
    def __init__(self, hidden: int, n_radial: int, n_bands: int, attention: Attention,
                 avg_num_neighbors: float):
        super().__init__()
        n_dir = DIRECTIONAL_L_MAX + 1
        self.radial_weights = nn.Linear(n_radial, n_dir * 4)
        self.edge_mlps = nn.ModuleList(silu_mlp(2 * hidden + n_dir * 4, [hidden], hidden)
                                       for _ in range(n_bands))
        self.attention = attention
        self.logit = nn.Linear(hidden, 1) if attention != "none" else None
        self.node_mlp = silu_mlp(2 * hidden, [hidden], hidden)
        self.avg_num_neighbors = float(avg_num_neighbors)

    def forward(self, h, radial, directional, envelope, band_weights, centers, neighbors):
        """band_weights (E, n_bands): smooth membership of each edge in each distance band."""
        n = h.shape[0]
        f = self.radial_weights(radial) * directional.repeat_interleave(4, dim=-1)
        x = torch.cat([h[centers], h[neighbors], f], dim=-1)
        e = sum(band_weights[:, b:b + 1] * mlp(x) for b, mlp in enumerate(self.edge_mlps))
        # the envelope multiplies every message, so an edge leaving the graph fades out of
        # the sum and, for softmax, out of the normalisation as well
        e = envelope.unsqueeze(-1) * e
        if self.attention == "sigmoid":
            m = scatter_sum(torch.sigmoid(self.logit(e)) * e, centers, n) / self.avg_num_neighbors
        elif self.attention == "softmax":
            alpha = scatter_softmax(self.logit(e).squeeze(-1), centers, n, weight=envelope)
            m = scatter_sum(alpha.unsqueeze(-1) * e, centers, n)
        else:
            m = scatter_sum(e, centers, n) / self.avg_num_neighbors
        return h + self.node_mlp(torch.cat([h, m], dim=-1))


class InvariantNetwork(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.species = SpeciesEmbedding(cfg.species_dim)
        self.embed = NormalizedLinear(cfg.species_dim, cfg.hidden, bias="uniform")
        self.radial = RADIAL_BASES[cfg.radial_basis](cfg.cutoff, cfg.num_radial)
        self.envelope = EdgeEnvelope(cfg)
        self.irreps_sh = o3.Irreps.spherical_harmonics(DIRECTIONAL_L_MAX)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.register_buffer("bands", torch.tensor(list(cfg.bands),
                                                   dtype=torch.get_default_dtype()))
        self.layers = nn.ModuleList(
            InvariantLayer(cfg.hidden, cfg.num_radial, len(cfg.bands) + 1, cfg.attention,
                           cfg.avg_num_neighbors) for _ in range(cfg.layers))
        self.final = silu_mlp(cfg.hidden, list(cfg.final_mlp), 1)
        zero_last_layer(self.final)
        # which harmonics components belong to each l
        self._l_slices = [(l * l, (l + 1) ** 2) for l in range(DIRECTIONAL_L_MAX + 1)]

    def forward(self, numbers, vectors, centers, neighbors, d_ref, k) -> torch.Tensor:
        n = numbers.shape[0]
        r = torch.linalg.norm(vectors, dim=-1)
        radial = self.radial(r)
        envelope = self.envelope(r, centers, numbers.shape[0], d_ref, k)
        y = self.sh(vectors)
        density = scatter_sum(envelope.unsqueeze(-1) * y, centers, n) / self.cfg.avg_num_neighbors
        proj = y * density[centers]
        directional = torch.stack([proj[:, a:b].sum(-1) for a, b in self._l_slices], dim=-1)
        bands = band_weights(r, self.bands, BAND_WIDTH)
        h = self.embed(self.species(numbers))
        for layer in self.layers:
            h = layer(h, radial, directional, envelope, bands, centers, neighbors)
        return self.final(h).squeeze(-1)
