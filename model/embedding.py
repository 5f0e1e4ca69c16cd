"""Species embedding: a small learned vector per element, projected wherever species
matter (initial node features, radial-weight MLPs, self-interaction, readout).

The projections are normalised linear maps (:class:`NormalizedLinear`, y = W·x/√fan_in + b,
e3nn's convention for its ``Linear`` and ``FullyConnectedNet``): the weights are of order 1
whatever the width, so an optimiser step of a given size (Adam's steps are about ``lr`` per
weight, whatever the gradient's scale) changes the output by a fraction that does not grow
with the width. With ``nn.Linear``'s parametrisation (y = W·x + b, W of order 1/√fan_in)
the same step changed the output of a width-64 embedding's projection five times as much as
a width-16 one's, and squared-loss training spiked.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional

NUM_ELEMENTS = 119

# The per-element part of the initial embedding (the shared part has unit variance).
PER_ELEMENT_STD = 0.1


class SpeciesEmbedding(nn.Module):
    """(N,) atomic numbers -> (N, dim) learned embedding.

    Every element starts at one shared random vector (N(0, 1) per component) plus a small
    part of its own (N(0, :data:`PER_ELEMENT_STD`²)): what the network computes from the
    geometry then starts nearly the same for every element, so what a step learns from
    one material's forces carries over to the others, and the elements move apart as the
    data asks. Started as independent N(0, 1) vectors, every function of the geometry is
    element-specific from the first step: on element-rich data (86 elements, ~9 frames per
    material) the force-loss gradients of different batches are then nearly orthogonal
    (mean cosine 0.018 after 30 steps, 0.21 with the shared start) and a few hundred steps
    learn no forces (docs/guides/training.md).
    """

    def __init__(self, dim: int = 16):
        super().__init__()
        self.dim = dim
        self.table = nn.Embedding(NUM_ELEMENTS, dim)
        with torch.no_grad():
            self.table.weight.normal_(0.0, PER_ELEMENT_STD).add_(torch.randn(dim))

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        return self.table(numbers)


class NormalizedLinear(nn.Module):
    """y = x·Wᵀ/√in_features + b: a linear map whose weights are of order 1.

    ``weight`` (out_features, in_features) starts U(-1, 1), ``nn.Linear``'s initial weights
    U(-1/√in_features, 1/√in_features) times √in_features, drawn from the same random
    numbers, so that the map at initialisation is ``nn.Linear``'s (variance 1/3 for inputs
    of unit variance). ``bias`` (out_features,) starts at zero (``bias="zeros"``), as
    ``nn.Linear``'s (``bias="uniform"``) or is absent (``bias=None``); it is not scaled.
    ``nn.Linear``'s weights are this module's divided by √in_features: that is how
    checkpoints of format 1 are read (:func:`orbitgraph.model.checkpoint.upgrade_model_state`).
    Raises ValueError for another ``bias``.
    """

    def __init__(self, in_features: int, out_features: int,
                 bias: Literal["zeros", "uniform"] | None = "zeros"):
        super().__init__()
        if bias not in ("zeros", "uniform", None):
            raise ValueError(f"bias: expected 'zeros', 'uniform' or None, got {bias!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.scale = 1.0 / math.sqrt(self.in_features)
        # nn.Linear's initialisation, the same random numbers drawn in the same order (a
        # seed gives the initial function the older code gave), its weights rescaled
        linear = nn.Linear(self.in_features, self.out_features, bias=bias is not None)
        with torch.no_grad():
            self.weight = nn.Parameter(linear.weight / self.scale)
            self.bias = None if bias is None else nn.Parameter(
                linear.bias.zero_() if bias == "zeros" else linear.bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        return functional.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class SpeciesProjection(nn.Module):
    """Projects the species embedding (N, dim) to a per-atom weight vector (N, out): a
    :class:`NormalizedLinear` whose bias starts at zero."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear = NormalizedLinear(dim, out)

    def forward(self, species: torch.Tensor) -> torch.Tensor:
        return self.linear(species)


class ElementWeights(nn.Module):
    """(N,) atomic numbers -> (N, out) weights: one learned row per element (mace-torch's
    per-element weights of the symmetric contraction), beside :class:`SpeciesProjection`'s
    projection of the shared embedding. ``table`` (119, out) starts N(0, 1/3), the variance
    of a :class:`SpeciesProjection`'s output at initialisation; each element's row starts
    independently and learns from its own atoms only."""

    def __init__(self, out: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(NUM_ELEMENTS, out) / math.sqrt(3.0))

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        return self.table[numbers]
