"""Aggregation of a centre's messages.

* ``sum``: A_i = Σ_j m_ij / n̄ with n̄ the dataset's mean neighbour count (store manifest);
* ``sigmoid``: A_i = Σ_j σ(a_ij) m_ij / n̄ (a gate per edge);
* ``softmax``: A_i = Σ_j α_ij m_ij with α_ij = w_ij e^{a_ij} / Σ_k w_ik e^{a_ik}, where w is the
  edge envelope, so an edge leaving the graph leaves the normalisation smoothly too.

Logits a_ij come from an MLP of invariant edge features (radial basis, species).
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from orbitgraph.model.mlp import silu_mlp
from orbitgraph.model.scatter import scatter_softmax, scatter_sum

AggregationMode = Literal["sum", "sigmoid", "softmax"]  # ModelConfig.aggregation


class Aggregation(nn.Module):
    def __init__(self, mode: AggregationMode, avg_num_neighbors: float, edge_features: int,
                 hidden: int = 32):
        super().__init__()
        if mode not in get_args(AggregationMode):
            raise ValueError(f"aggregation must be one of {', '.join(get_args(AggregationMode))};"
                             f" got {mode!r}")
        if not avg_num_neighbors > 0:
            raise ValueError(f"avg_num_neighbors must be > 0, got {avg_num_neighbors}")
        self.mode = mode
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.logits = silu_mlp(edge_features, [hidden], 1) if mode != "sum" else None

    def forward(self, messages: torch.Tensor, centers: torch.Tensor, n_nodes: int,
                edge_features: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        """messages (E, D), centers (E,), edge_features (E, F), envelope (E,) -> (N, D)."""
        if self.mode == "sum":
            return scatter_sum(messages, centers, n_nodes) / self.avg_num_neighbors
        a = self.logits(edge_features).squeeze(-1)
        if self.mode == "sigmoid":
            return scatter_sum(torch.sigmoid(a).unsqueeze(-1) * messages, centers,
                               n_nodes) / self.avg_num_neighbors
        alpha = scatter_softmax(a, centers, n_nodes, weight=envelope)
        return scatter_sum(alpha.unsqueeze(-1) * messages, centers, n_nodes)
