"""The MACE-family equivariant network as a recipe of swappable blocks.

    s_i   = SpeciesEmbedding(z_i)
    h⁰_i  = Linear(s_i)                                  (scalars)
    for t = 1..T:
        m_ij  = TensorProductMessage(h_j, Y(r̂_ij); R(r_ij), s_i, s_j) · envelope_ij
        A_i   = Aggregation_j(m_ij)                      (sum / n̄, or attention, or gate)
        h^t_i = SelfInteraction(Linear(A_i); s_i) + Skip(h^{t-1}_i; s_i)
        e^t_i = Readout^t(h^t_i)
    E_i = ScaleShift(reduce_t e^t_i; z_i)

Blocks declare ``irreps_in``/``irreps_out``; :func:`check_chain` verifies at construction
that each block's output is the next one's input.
"""
from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from orbitgraph.model.aggregation import Aggregation
from orbitgraph.model.embedding import SpeciesEmbedding
from orbitgraph.model.message import TensorProductMessage
from orbitgraph.model.radial import (
    RADIAL_BASES,
    EdgeEnvelope,
)
from orbitgraph.model.readout import LinearReadout, MLPReadout, reduce_blocks
from orbitgraph.model.self_interaction import (
    SELF_INTERACTIONS,
    SpeciesLinear,
    SymmetricContraction,
)


def check_chain(name: str, produced: o3.Irreps, expected: o3.Irreps) -> None:
    if o3.Irreps(produced) != o3.Irreps(expected):
        raise ValueError(f"{name}: expects irreps {expected}, the previous block gives {produced}")


class InteractionBlock(nn.Module):
    def __init__(self, irreps_in, irreps_out, irreps_sh, cfg, avg_num_neighbors: float):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.linear_up = o3.Linear(self.irreps_in, self.irreps_in)
        # messages and A_i carry the natural-parity irreps up to the harmonics' l_max
        natural = o3.Irreps([(1, o3.Irrep(l, (-1) ** l)) for l in range(cfg.sh_l_max + 1)])
        self.message = TensorProductMessage(self.irreps_in, irreps_sh, natural, cfg.num_radial,
                                            cfg.species_dim, cfg.radial_mlp, cfg.message_weights)
        check_chain("message", self.linear_up.irreps_out, self.message.irreps_in)
        self.aggregation = Aggregation(cfg.aggregation, avg_num_neighbors,
                                       cfg.num_radial + 2 * cfg.species_dim)
        # A_i mixed down to the hidden irreps before the self-interaction
        a_irreps = o3.Irreps([(cfg.channels, ir) for _, ir in self.irreps_out.simplify()])
        if cfg.self_interaction == "symmetric_contraction":  # products of the full A_i
            a_irreps = o3.Irreps([(cfg.channels, ir) for _, ir in natural])
        self.linear_down = o3.Linear(self.message.irreps_out, a_irreps)
        si_cls = SELF_INTERACTIONS[cfg.self_interaction]
        if cfg.self_interaction == "symmetric_contraction":
            self.self_interaction = si_cls(a_irreps, self.irreps_out, cfg.correlation,
                                           cfg.species_dim, cfg.contraction_weights)
        else:
            self.self_interaction = si_cls(a_irreps, self.irreps_out, cfg.species_dim)
        check_chain("self_interaction", self.self_interaction.irreps_out, self.irreps_out)
        self.skip = SpeciesLinear(self.irreps_in, self.irreps_out, cfg.species_dim)

    def forward(self, h, species, sh, radial, envelope, edge_features, centers, neighbors,
                numbers):
        m = self.message(self.linear_up(h), sh, radial, envelope, species, centers, neighbors)
        a = self.aggregation(m, centers, h.shape[0], edge_features, envelope)
        x = self.linear_down(a)
        si = (self.self_interaction(x, species, numbers)
              if isinstance(self.self_interaction, SymmetricContraction)
              else self.self_interaction(x, species))
        return si + self.skip(h, species)


class EquivariantNetwork(nn.Module):
    """Atomic energies (before scale/shift) from a batch's geometry."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.species = SpeciesEmbedding(cfg.species_dim)
        self.irreps_sh = o3.Irreps.spherical_harmonics(cfg.sh_l_max)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.radial = RADIAL_BASES[cfg.radial_basis](cfg.cutoff, cfg.num_radial)
        self.envelope = EdgeEnvelope(cfg)
        scalars = o3.Irreps(f"{cfg.channels}x0e")
        hidden = o3.Irreps([(cfg.channels, o3.Irrep(l, (-1) ** l))
                            for l in range(cfg.hidden_l_max + 1)])
        self.embed = o3.Linear(o3.Irreps(f"{cfg.species_dim}x0e"), scalars)
        self.blocks = nn.ModuleList()
        self.readouts = nn.ModuleList()
        irreps = scalars
        for t in range(cfg.layers):
            last = t == cfg.layers - 1
            out = scalars if last else hidden
            block = InteractionBlock(irreps, out, self.irreps_sh, cfg, cfg.avg_num_neighbors)
            check_chain(f"interaction {t}", irreps, block.irreps_in)
            self.blocks.append(block)
            use_mlp = cfg.readout == "mlp" or (cfg.readout == "mlp_last" and last)
            self.readouts.append(MLPReadout(out, cfg.readout_mlp) if use_mlp
                                 else LinearReadout(out))
            irreps = out

    def forward(self, numbers, vectors, centers, neighbors, d_ref, k) -> torch.Tensor:
        """(N,) numbers, (E, 3) edge vectors Å, (N,) d_{k+1} Å (or None), k of the graphs
        -> (N,) atomic energies."""
        species = self.species(numbers)
        r = torch.linalg.norm(vectors, dim=-1)
        sh = self.sh(vectors)
        radial = self.radial(r)
        envelope = self.envelope(r, centers, numbers.shape[0], d_ref, k)
        edge_features = torch.cat([radial * envelope.unsqueeze(-1), species[centers],
                                   species[neighbors]], dim=-1)
        h = self.embed(species)
        per_block = []
        for block, readout in zip(self.blocks, self.readouts, strict=True):
            h = block(h, species, sh, radial, envelope, edge_features, centers, neighbors,
                      numbers)
            per_block.append(readout(h))
        return reduce_blocks(per_block, self.cfg.block_reduction)
