"""A plain MLP of invariant features (used for radial weights, readouts, the invariant toolbox)."""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Sequential):
    """Linear layers with SiLU between them: sizes [in, hidden..., out]."""

    def __init__(self, sizes: list[int], bias_last: bool = True):
        layers: list[nn.Module] = []
        for a, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            last = a == len(sizes) - 2
            layers.append(nn.Linear(n_in, n_out, bias=bias_last or not last))
            if not last:
                layers.append(nn.SiLU())
        super().__init__(*layers)


def silu_mlp(n_in: int, hidden: list[int], n_out: int) -> MLP:
    return MLP([n_in, *hidden, n_out])




def zero_last_layer(mlp: MLP) -> None:
    """Zero the output layer: the MLP starts as the constant 0 (its bias) and learns from
    there; used for energy readouts, so an untrained potential predicts Σ E0."""
    last = [m for m in mlp if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
