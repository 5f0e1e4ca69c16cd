"""Message generation: tensor product of sender features and edge harmonics, with weights
from an MLP of the radial features (and, as configured, both species embeddings and the
scalar features of sender and receiver).

m_ij = TP_uvu(h_j, Y(r̂_ij); w_ij),  w_ij = MLP([R(r_ij), s_i, s_j, h⁰_i, h⁰_j]) · envelope_ij
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
from e3nn import o3
from torch import nn

from orbitgraph.model.mlp import silu_mlp

# what the message weights depend on (ModelConfig.message_weights)
WeightInputs = Literal["radial", "radial+species", "radial+species+features"]


def channelwise_instructions(irreps_in1: o3.Irreps, irreps_in2: o3.Irreps,
                             wanted: o3.Irreps) -> tuple[o3.Irreps, list[tuple]]:
    """'uvu' paths (one per channel of input 1) into every irrep of ``wanted``'s types.

    Returns the (sorted) output irreps and the instructions indexing into them.
    """
    targets = {ir for _, ir in wanted}
    out: list[tuple[int, o3.Irrep]] = []
    raw = []
    for i, (mul, ir1) in enumerate(irreps_in1):
        for j, (_, ir2) in enumerate(irreps_in2):
            for ir in ir1 * ir2:
                if ir in targets:
                    raw.append((i, j, len(out)))
                    out.append((mul, ir))
    irreps_out = o3.Irreps(out)
    irreps_sorted, perm, _ = irreps_out.sort()
    instructions = [(i, j, perm[k], "uvu", True) for i, j, k in raw]
    return irreps_sorted, instructions


class TensorProductMessage(nn.Module):
    """Declared irreps: ``irreps_in`` (node), ``irreps_sh`` (edge) -> ``irreps_out`` (edge)."""

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_target: o3.Irreps,
                 num_radial: int, species_dim: int, hidden: list[int],
                 weight_inputs: WeightInputs = "radial+species"):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_sh = o3.Irreps(irreps_sh)
        irreps_mid, instructions = channelwise_instructions(self.irreps_in, self.irreps_sh,
                                                            o3.Irreps(irreps_target))
        self.tp = o3.TensorProduct(self.irreps_in, self.irreps_sh, irreps_mid, instructions,
                                   shared_weights=False, internal_weights=False)
        self.irreps_out = irreps_mid
        if weight_inputs not in get_args(WeightInputs):
            raise ValueError(f"message weight_inputs must be one of "
                             f"{', '.join(get_args(WeightInputs))}; got {weight_inputs!r}")
        self.weight_inputs = weight_inputs
        self.n_scalars = self.irreps_in.count("0e")
        n_in = num_radial
        if weight_inputs != "radial":
            n_in += 2 * species_dim
        if weight_inputs == "radial+species+features":
            n_in += 2 * self.n_scalars
        self.weight_mlp = silu_mlp(n_in, hidden, self.tp.weight_numel)

    def forward(self, h: torch.Tensor, sh: torch.Tensor, radial: torch.Tensor,
                envelope: torch.Tensor, species: torch.Tensor, centers: torch.Tensor,
                neighbors: torch.Tensor) -> torch.Tensor:
        """h (N, irreps_in.dim), sh (E, irreps_sh.dim), radial (E, R), envelope (E,),
        species (N, S) -> messages (E, irreps_out.dim)."""
        inputs = [radial]
        if self.weight_inputs != "radial":
            inputs += [species[centers], species[neighbors]]
        if self.weight_inputs == "radial+species+features":
            scalars = h[:, : self.n_scalars]  # irreps are sorted: scalars come first
            inputs += [scalars[centers], scalars[neighbors]]
        weights = self.weight_mlp(torch.cat(inputs, dim=-1)) * envelope.unsqueeze(-1)
        return self.tp(h[neighbors], sh, weights)
