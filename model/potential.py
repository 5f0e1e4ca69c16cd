"""A potential: a network of atomic energies, made into energy, forces and stress.

    E = Σ_i E_i(z, {r_ij})                     eV
    F = -∂E/∂r                                 eV/Å
    σ = (1/V) ∂E/∂ε  at ε = 0                  eV/Å³, ASE sign (positive = tensile)

with ε a symmetric strain applied to positions and cell together (model.geometry). Every
length the energy depends on — the edges and, for k-NN graphs, each centre's d_{k+1} of the
rank envelope — is computed from the strained positions and cell, so forces and stress are
the exact derivatives of the energy a user evaluates with a freshly built graph. One
backward pass gives both derivatives; with ``training=True`` it keeps the graph so that
losses on forces and stress can be differentiated again.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from orbitgraph.model.batch import Batch
from orbitgraph.model.config import ModelConfig
from orbitgraph.model.geometry import cell_volume, edge_vectors, strained
from orbitgraph.model.networks import NETWORKS
from orbitgraph.model.radial import rank_reference_distance
from orbitgraph.model.readout import ScaleShift
from orbitgraph.model.scatter import scatter_sum


class Potential(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.network = NETWORKS[config.kind](config)
        self.scale_shift = ScaleShift(config.atomic_energies, config.scale, config.shift)

    def atomic_energies(self, batch: Batch, positions: torch.Tensor,
                        cell: torch.Tensor) -> torch.Tensor:
        """(N,) eV, from positions (N, 3) Å and cell (B, 3, 3) Å."""
        with torch.autocast(positions.device.type, enabled=False):  # lengths: model.geometry
            vectors = edge_vectors(positions, cell, batch)
            d_ref = None
            if self.config.rank_envelope == "next":
                d_ref = rank_reference_distance(positions, cell, batch.batch,
                                                batch.rank_neighbor, batch.rank_unit_shift)
        raw = self.network(batch.numbers, vectors, batch.centers, batch.neighbors, d_ref, batch.k)
        return self.scale_shift(raw, batch.numbers)

    def forward(self, batch: Batch, forces: bool = True, stress: bool = True,
                training: bool = False) -> dict[str, torch.Tensor]:
        """Returns ``energy`` (B,), and ``forces`` (N, 3) and ``stress`` (B, 3, 3) if asked."""
        positions = batch.positions
        strain = None
        inputs = []
        if forces or stress:
            positions = positions.detach().requires_grad_(True)
            inputs.append(positions)
        if stress:
            strain = torch.zeros_like(batch.cell, requires_grad=True)
            inputs.append(strain)
        batch_in = replace(batch, positions=positions)
        with torch.autocast(positions.device.type, enabled=False):  # lengths: model.geometry
            pos, cell = strained(batch_in, strain)
        atomic = self.atomic_energies(batch_in, pos, cell)
        energy = scatter_sum(atomic, batch.batch, batch.n_frames)
        out = {"energy": energy, "atomic_energies": atomic}
        if inputs:
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=training,
                                        allow_unused=True)
            if forces:
                g = grads[0]
                out["forces"] = -g if g is not None else torch.zeros_like(positions)
            if stress:
                g = grads[-1]
                g = g if g is not None else torch.zeros_like(batch.cell)
                out["stress"] = g / cell_volume(batch.cell).view(-1, 1, 1)
        return out
