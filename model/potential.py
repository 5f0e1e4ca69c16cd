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

A potential is built in one floating dtype (``Potential(config, dtype)``): every parameter
and buffer, the constants computed at construction included (E0, scale and shift, radial
frequencies and centres, Clebsch-Gordan and coupling coefficients), is made in it. A
float64 model built in float32 and converted would hold float32 numbers in float64 (an
E0 of -6.7 eV off by 1.6e-7 eV per atom), and its non-persistent constants would differ
from those of the same model loaded from its checkpoint.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from orbitgraph.model.batch import Batch
from orbitgraph.model.config import ModelConfig, with_statistics
from orbitgraph.model.geometry import cell_volume, edge_vectors, strained
from orbitgraph.model.networks import NETWORKS
from orbitgraph.model.radial import rank_reference_distance
from orbitgraph.model.readout import ScaleShift
from orbitgraph.model.repulsion import ZBLRepulsion
from orbitgraph.model.scatter import scatter_sum

FLOAT_DTYPES = (torch.float32, torch.float64)  # the dtypes a potential is built in


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype set to ``dtype`` inside the block, as nequip and mace-torch
    build models: what the blocks create without naming a dtype (``torch.zeros``,
    ``nn.Linear``, e3nn's coefficients) is made in it. Process-wide while it lasts."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class Potential(nn.Module):
    """The network and species-wise scale, shift and E0 of ``config`` (and, with
    ``config.pair_repulsion``, a ZBL pair repulsion), built in ``dtype`` (torch.float32 or
    torch.float64; None: torch's default dtype). ``config``'s settings left to the data
    (E0s, avg_num_neighbors, scale) take an untrained model's values unless filled in
    (:func:`orbitgraph.model.config.with_statistics`). Raises ValueError for another
    dtype."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None):
        super().__init__()
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"a potential is built in torch.float32 or torch.float64, "
                             f"not {dtype}")
        config = with_statistics(config)
        self.config = config
        with default_dtype(dtype):
            self.network = NETWORKS[config.kind](config)
            self.scale_shift = ScaleShift(config.atomic_energies, config.scale, config.shift)
            self.repulsion = ZBLRepulsion() if config.pair_repulsion else None

    def atomic_energies(self, batch: Batch, positions: torch.Tensor,
                        cell: torch.Tensor) -> torch.Tensor:
        """(N,) eV, from positions (N, 3) Å and cell (B, 3, 3) Å: the network's energies,
        scaled and shifted, plus E0 and, with ``pair_repulsion``, the ZBL repulsion."""
        with torch.autocast(positions.device.type, enabled=False):  # lengths: model.geometry
            vectors = edge_vectors(positions, cell, batch)
            d_ref = None
            if self.config.rank_envelope == "next":
                d_ref = rank_reference_distance(positions, cell, batch.batch,
                                                batch.rank_neighbor, batch.rank_unit_shift)
            repulsion = None
            if self.repulsion is not None:  # outside autocast too: 1/r and exponentials
                r = torch.linalg.norm(vectors, dim=-1)
                weights = self.network.envelope.rank_weights(
                    r, batch.centers, batch.numbers.shape[0], d_ref, batch.k)
                repulsion = self.repulsion(r, weights, batch.numbers, batch.centers,
                                           batch.neighbors)
        raw = self.network(batch.numbers, vectors, batch.centers, batch.neighbors, d_ref, batch.k)
        atomic = self.scale_shift(raw, batch.numbers)
        return atomic if repulsion is None else atomic + repulsion

    def forward(self, batch: Batch, forces: bool = True, stress: bool = True,
                training: bool = False) -> dict[str, torch.Tensor]:
        """Returns ``energy`` (B,), and ``forces`` (N, 3) and ``stress`` (B, 3, 3) if asked."""
        return energy_and_derivatives(self.atomic_energies, batch, forces, stress, training)


def energy_and_derivatives(atomic_energies, batch: Batch, forces: bool = True,
                           stress: bool = True, training: bool = False
                           ) -> dict[str, torch.Tensor]:
    """E, F = -∂E/∂r and σ = (1/V) ∂E/∂ε of the atomic energies
    ``atomic_energies(batch, positions, cell) -> (N,) eV`` (a :class:`Potential`'s, or an
    exported program's: :mod:`orbitgraph.model.program`), evaluated on ``batch``'s
    positions and cell under a zero strain ε, so that one backward pass gives both
    derivatives; ``training=True`` keeps the graph for a second one.

    Returns ``energy`` (B,) eV and ``atomic_energies`` (N,) eV, with ``forces`` (N, 3) eV/Å
    and ``stress`` (B, 3, 3) eV/Å³ (ASE sign) if asked."""
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
    atomic = atomic_energies(batch_in, pos, cell)
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
