"""Self-interaction: how a node turns its aggregated neighbourhood A_i into new features.

Every block declares ``irreps_in`` and ``irreps_out``; all are equivariant.

* :class:`LinearSelfInteraction` — one linear map per irrep type (SevenNet/NequIP style),
  optionally with species-dependent weights.
* :class:`SymmetricContraction` — the MACE product basis, evaluated recursively:
  B¹ = A, B^ν = W_ν(z_i) · (B^{ν-1} ⊗ A) with the channel-wise Clebsch-Gordan product
  contracted back to one copy per irrep type by species-dependent weights per path and
  channel, i.e. polynomials of degree ν in the same A_i (body order ν + 1); the output is
  Σ_ν W'_ν(z_i) B^ν, then one shared linear map, as in MACE.
  Couplings of identical factors that are antisymmetric vanish by themselves, so only the
  symmetric part survives.
* :class:`GatedSelfInteraction` — a linear map to scalars, gates and gated irreps, then
  e3nn's Gate: SiLU on scalars, sigmoid gates on l > 0.
* :class:`TensorSquareSelfInteraction` — a limited tensor square: x ⊗ x channel-wise
  ('uuu'), restricted to the output irrep types, then a linear map.
"""
from __future__ import annotations

import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn

from model.embedding import SpeciesProjection
from model.message import channelwise_instructions


class SpeciesLinear(nn.Module):
    """o3.Linear whose weights depend on the species embedding (or are shared)."""

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, species_dim: int | None):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        if species_dim:
            self.linear = o3.Linear(self.irreps_in, self.irreps_out, shared_weights=False,
                                    internal_weights=False)
            self.weights = SpeciesProjection(species_dim, self.linear.weight_numel)
        else:
            self.linear = o3.Linear(self.irreps_in, self.irreps_out)
            self.weights = None

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            return self.linear(x)
        return self.linear(x, self.weights(species))


class LinearSelfInteraction(nn.Module):
    def __init__(self, irreps_in, irreps_out, species_dim: int | None = None):
        super().__init__()
        self.body = SpeciesLinear(irreps_in, irreps_out, species_dim)
        self.irreps_in, self.irreps_out = self.body.irreps_in, self.body.irreps_out

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.body(x, species)


class ChannelwiseLinear(nn.Module):
    """out_{c} = Σ_paths w_{path, c}(z) x_{path, c}: per-channel weights, no channel mixing.

    Every irrep of the input whose type appears in the output contributes through its own
    path; all irreps must have the same number of channels.
    """

    def __init__(self, irreps_in, irreps_out, species_dim: int):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        scalar = o3.Irreps("0e")
        instructions = [(i, 0, k, "uvu", True)
                        for i, (_, ir_in) in enumerate(self.irreps_in)
                        for k, (_, ir_out) in enumerate(self.irreps_out) if ir_in == ir_out]
        self.tp = o3.TensorProduct(self.irreps_in, scalar, self.irreps_out, instructions,
                                   shared_weights=False, internal_weights=False)
        self.weights = SpeciesProjection(species_dim, self.tp.weight_numel)

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        one = x.new_ones((x.shape[0], 1))
        return self.tp(x, one, self.weights(species))


class SymmetricContraction(nn.Module):
    def __init__(self, irreps_in, irreps_out, correlation: int, species_dim: int):
        super().__init__()
        if correlation < 1:
            raise ValueError(f"correlation must be >= 1, got {correlation}")
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.correlation = correlation
        channels = {mul for mul, _ in self.irreps_in} | {mul for mul, _ in self.irreps_out}
        if len(channels) != 1:
            raise ValueError(f"symmetric contraction needs one channel count for every irrep, "
                             f"got {self.irreps_in} -> {self.irreps_out}")
        # B^ν = W_ν(z) · (B^{ν-1} ⊗ A): each product is contracted straight back to one
        # copy of each irrep type of A (species-dependent weights per path and channel),
        # MACE's recursive evaluation; the cost grows linearly with the correlation order.
        keep = o3.Irreps([(next(iter(channels)), ir) for _, ir in self.irreps_in.simplify()])
        self.products = nn.ModuleList()
        self.reduce = nn.ModuleList()
        for _ in range(2, correlation + 1):
            prev = self.irreps_in if not len(self.products) else keep
            mid, instructions = channelwise_instructions(prev, self.irreps_in, keep)
            instructions = [(i, j, k, mode, False) for i, j, k, mode, _ in instructions]
            self.products.append(o3.TensorProduct(prev, self.irreps_in, mid, instructions))
            self.reduce.append(ChannelwiseLinear(mid, keep, species_dim))
        orders = [self.irreps_in] + [keep] * (correlation - 1)
        self.contractions = nn.ModuleList(ChannelwiseLinear(ir, self.irreps_out, species_dim)
                                          for ir in orders)
        self.mix = o3.Linear(self.irreps_out, self.irreps_out)

    def forward(self, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """a (N, irreps_in.dim), species (N, S) -> (N, irreps_out.dim)."""
        b = a
        out = self.contractions[0](b, species)
        for tp, reduce, contraction in zip(self.products, self.reduce, self.contractions[1:]):
            b = reduce(tp(b, a), species)
            out = out + contraction(b, species)
        return self.mix(out)


class GatedSelfInteraction(nn.Module):
    def __init__(self, irreps_in, irreps_out, species_dim: int | None = None):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        irreps_out = o3.Irreps(irreps_out)
        scalars = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.gate = enn.Gate(scalars, [torch.nn.functional.silu] * len(scalars),
                             gates, [torch.sigmoid] * len(gates), gated)
        self.linear = SpeciesLinear(self.irreps_in, self.gate.irreps_in, species_dim)
        self.irreps_out = self.gate.irreps_out

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.gate(self.linear(x, species))


class TensorSquareSelfInteraction(nn.Module):
    def __init__(self, irreps_in, irreps_out, species_dim: int | None = None):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        mid, instructions = channelwise_instructions(self.irreps_in, self.irreps_in,
                                                     o3.Irreps(irreps_out))
        instructions = [(i, j, k, "uuu", w) for i, j, k, _, w in instructions
                        if self.irreps_in[i].mul == self.irreps_in[j].mul]
        self.square = o3.TensorProduct(self.irreps_in, self.irreps_in, mid, instructions)
        self.linear_x = SpeciesLinear(self.irreps_in, irreps_out, species_dim)
        self.linear_sq = SpeciesLinear(mid, irreps_out, species_dim)
        self.irreps_out = o3.Irreps(irreps_out)

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.linear_x(x, species) + self.linear_sq(self.square(x, x), species)


SELF_INTERACTIONS = {
    "linear": LinearSelfInteraction,
    "symmetric_contraction": SymmetricContraction,
    "gate": GatedSelfInteraction,
    "tensor_square": TensorSquareSelfInteraction,
}
