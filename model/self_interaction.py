"""Self-interaction: how a node turns its aggregated neighbourhood A_i into new features.

Every block declares ``irreps_in`` and ``irreps_out``; all are equivariant.

* :class:`LinearSelfInteraction` — one linear map per irrep type (SevenNet/NequIP style),
  optionally with species-dependent weights.
* :class:`SymmetricContraction` — the MACE product basis, evaluated recursively:
  B¹ = A, B^ν = W_ν(z_i) · (B^{ν-1} ⊗ A) with the channel-wise Clebsch-Gordan product
  contracted back to one copy per irrep type by species-dependent weights per path and
  channel, i.e. polynomials of degree ν in the same A_i (body order ν + 1); the output is
  Σ_ν W'_ν(z_i) B^ν, then one shared linear map, as in MACE. Each order is one dense
  matrix product over all type pairs (fast on CPU and GPU alike).
* :class:`GatedSelfInteraction` — a linear map to scalars, gates and gated irreps, then
  e3nn's Gate: SiLU on scalars, sigmoid gates on l > 0.
* :class:`TensorSquareSelfInteraction` — a limited tensor square: x ⊗ x channel-wise
  ('uuu'), restricted to the output irrep types, then a linear map.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Literal, get_args

import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn

from orbitgraph.model.embedding import ElementWeights, SpeciesProjection
from orbitgraph.model.message import channelwise_instructions


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


def _natural_types(irreps: o3.Irreps, what: str) -> tuple[int, list[int]]:
    """(channels, [l, ...]) of irreps made of distinct natural-parity types, one
    multiplicity for all (e.g. 64x0e+64x1o+64x2e+64x3o)."""
    muls = {mul for mul, _ in irreps}
    ls = [ir.l for _, ir in irreps]
    if len(muls) != 1 or len(set(ls)) != len(ls) or any(ir.p != (-1) ** ir.l for _, ir in irreps):
        raise ValueError(f"symmetric contraction: {what} must be distinct natural-parity irreps "
                         f"with one channel count (like 64x0e+64x1o+64x2e), got {irreps}")
    return muls.pop(), ls


class _Layout:
    """Where each irrep type sits in a channel-last layout (N, C, D), D = Σ (2l + 1)."""

    def __init__(self, ls: list[int]):
        self.ls = list(ls)
        self.start = {}
        d = 0
        for l in self.ls:
            self.start[l] = d
            d += 2 * l + 1
        self.dim = d

    def block(self, l: int) -> slice:
        return slice(self.start[l], self.start[l] + 2 * l + 1)


def to_channels(x: torch.Tensor, channels: int, ls: list[int]) -> torch.Tensor:
    """e3nn layout (N, Σ C (2l+1)) -> (N, C, Σ (2l+1))."""
    parts, i = [], 0
    for l in ls:
        w = channels * (2 * l + 1)
        parts.append(x[:, i:i + w].reshape(-1, channels, 2 * l + 1))
        i += w
    return torch.cat(parts, dim=-1)


def from_channels(x: torch.Tensor, ls: list[int]) -> torch.Tensor:
    """(N, C, Σ (2l+1)) -> e3nn layout (N, Σ C (2l+1))."""
    parts, i = [], 0
    for l in ls:
        parts.append(x[:, :, i:i + 2 * l + 1].reshape(x.shape[0], x.shape[1] * (2 * l + 1)))
        i += 2 * l + 1
    return torch.cat(parts, dim=-1)


# where the symmetric contraction's weights come from (ModelConfig.contraction_weights)
ContractionWeights = Literal["embedding", "element"]


class SymmetricContraction(nn.Module):
    """MACE's product basis, channel by channel, as dense matrix products.

    With A_i in channel-last layout (N, C, D):

        B¹ = A,   B^ν_L = Σ_{paths p → L} w_{ν,p}(z) · [B^{ν-1}_{l1} ⊗ A_{l2}]_L  (CG, per channel)
        out_L = Σ_ν v_{ν,L}(z) · B^ν_L,   then one shared linear map

    Every channelwise Clebsch-Gordan product of all type pairs is one GEMM of the outer
    product (N·C, D·D) with a fixed sparse-in-content coupling matrix (D·D, Q); weights
    w, v depend on the species, per path and channel: projected from the species
    embedding (``weights="embedding"``) or one table row per element (``"element"``,
    mace-torch's; :class:`~orbitgraph.model.embedding.ElementWeights`). B^ν is a polynomial
    of degree ν in the same A_i (body order ν + 1); the last order computes only the
    output's types.
    """

    def __init__(self, irreps_in, irreps_out, correlation: int, species_dim: int,
                 weights: str = "embedding"):
        super().__init__()
        if weights not in get_args(ContractionWeights):
            raise ValueError(f"weights: 'embedding' or 'element', got {weights!r}")
        self.weights = weights

        def projection(out: int) -> nn.Module:
            return SpeciesProjection(species_dim, out) if weights == "embedding" \
                else ElementWeights(out)
        if correlation < 1:
            raise ValueError(f"correlation must be >= 1, got {correlation}")
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.channels, ls_in = _natural_types(self.irreps_in, "irreps_in")
        channels_out, ls_out = _natural_types(self.irreps_out, "irreps_out")
        if channels_out != self.channels or not set(ls_out) <= set(ls_in):
            raise ValueError(f"symmetric contraction: {self.irreps_out} is not made of the "
                             f"channels and types of {self.irreps_in}")
        self.correlation = correlation
        self.ls_in, self.ls_out = ls_in, ls_out
        self.layout_in = _Layout(ls_in)
        # orders 2..correlation: coupling matrices, path -> component maps, weights
        self._orders: list[tuple[_Layout, _Layout]] = []
        self._paths: list[int] = []  # coupling paths of each order
        self.reduce = nn.ModuleList()
        prev = self.layout_in
        for nu in range(2, correlation + 1):
            target = _Layout(ls_in if nu < correlation else ls_out)
            coupling, path_of_q, sum_q = self._coupling(prev, self.layout_in, target)
            self.register_buffer(f"coupling_{nu}", coupling, persistent=False)
            self.register_buffer(f"path_of_q_{nu}", path_of_q, persistent=False)
            self.register_buffer(f"sum_q_{nu}", sum_q, persistent=False)
            self._paths.append(int(path_of_q.max()) + 1)
            self.reduce.append(projection(self._paths[-1] * self.channels))
            self._orders.append((prev, target))
            prev = target
        # v_{ν,L}: per order, output type and channel; each order's components of the output
        # types (B¹ = A has all input types, the last order only the output's)
        self.contract = nn.ModuleList(projection(len(ls_out) * self.channels)
                                      for _ in range(correlation))
        self.register_buffer("type_of_out", torch.tensor(
            [t for t, l in enumerate(ls_out) for _ in range(2 * l + 1)]), persistent=False)
        for order, layout in enumerate([self.layout_in] + [t for _, t in self._orders]):
            self.register_buffer(f"out_index_{order}", torch.tensor(
                [layout.start[l] + m for l in ls_out for m in range(2 * l + 1)]), persistent=False)
        self.mix = o3.Linear(self.irreps_out, self.irreps_out)

    @staticmethod
    def _coupling(left: _Layout, right: _Layout, target: _Layout):
        """Coupling (left.dim * right.dim, Q), the path of each of the Q output components,
        and the 0/1 map (Q, target.dim) that sums paths of one type."""
        triples = [(l1, l2, l3) for l1 in left.ls for l2 in right.ls for l3 in target.ls
                   if abs(l1 - l2) <= l3 <= l1 + l2 and (l1 + l2 + l3) % 2 == 0]
        paths_per_type = Counter(l3 for _, _, l3 in triples)
        columns, path_of_q, rows_of_q = [], [], []
        for path, (l1, l2, l3) in enumerate(triples):
            # component normalisation, and 1/sqrt(paths) so each type keeps unit scale
            cg = o3.wigner_3j(l1, l2, l3) * math.sqrt((2 * l3 + 1) / paths_per_type[l3])
            block = torch.zeros(left.dim, right.dim, 2 * l3 + 1)
            block[left.block(l1), right.block(l2)] = cg
            columns.append(block.reshape(left.dim * right.dim, 2 * l3 + 1))
            path_of_q += [path] * (2 * l3 + 1)
            rows_of_q += [target.start[l3] + m for m in range(2 * l3 + 1)]
        coupling = torch.cat(columns, dim=1)
        sum_q = torch.zeros(len(rows_of_q), target.dim)
        sum_q[torch.arange(len(rows_of_q)), torch.tensor(rows_of_q)] = 1.0
        return coupling, torch.tensor(path_of_q), sum_q

    def forward(self, a: torch.Tensor, species: torch.Tensor,
                numbers: torch.Tensor | None = None) -> torch.Tensor:
        """a (N, irreps_in.dim), species (N, S) embedding, numbers (N,) atomic numbers
        (needed with per-element weights) -> (N, irreps_out.dim)."""
        if self.weights == "element":
            if numbers is None:
                raise ValueError("symmetric contraction with per-element weights: the atomic "
                                 "numbers are needed")
            species = numbers  # what the weight modules take
        n, c = a.shape[0], self.channels
        x = to_channels(a, c, self.ls_in)  # (N, C, D)
        out = self._contract(0, x, species)
        b = x
        for nu, ((left, _), paths, reduce) in enumerate(
                zip(self._orders, self._paths, self.reduce, strict=True), start=2):
            outer = (b.unsqueeze(-1) * x.unsqueeze(-2)).reshape(n, c, left.dim * x.shape[-1])
            y = outer @ getattr(self, f"coupling_{nu}")  # (N, C, Q)
            # sizes spelled out (no -1): an empty batch (N = 0) has no size to infer
            w = reduce(species).view(n, paths, c).transpose(1, 2)  # (N, C, paths)
            y = y * w[:, :, getattr(self, f"path_of_q_{nu}")]
            b = y @ getattr(self, f"sum_q_{nu}")  # (N, C, target.dim)
            out = out + self._contract(nu - 1, b, species)
        return self.mix(from_channels(out, self.ls_out))

    def _contract(self, order: int, b: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """v(z) · B^{order+1} restricted to the output types: (N, C, D_out)."""
        v = self.contract[order](species).view(b.shape[0], len(self.ls_out), self.channels)
        v = v.transpose(1, 2)
        return b[:, :, getattr(self, f"out_index_{order}")] * v[:, :, self.type_of_out]


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


SELF_INTERACTIONS = {  # ModelConfig.self_interaction
    "symmetric_contraction": SymmetricContraction,
    "linear": LinearSelfInteraction,
    "gate": GatedSelfInteraction,
    "tensor_square": TensorSquareSelfInteraction,
}
