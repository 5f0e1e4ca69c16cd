"""Sums over edges or atoms into atoms or frames.

torch's own ``index_add_`` is the default; torch-scatter, when installed, is used only if
``ORBITGRAPH_TORCH_SCATTER=1`` (an optional accelerator, never a silent switch).
"""
from __future__ import annotations

import os

import torch

_USE_TORCH_SCATTER = os.environ.get("ORBITGRAPH_TORCH_SCATTER", "0") == "1"
if _USE_TORCH_SCATTER:  # fails loudly here if asked for and missing
    from torch_scatter import scatter_sum as _torch_scatter_sum


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """``out[index[e]] += src[e]`` along dim 0.

    Shapes: src (E, ...), index (E,) -> (dim_size, ...)."""
    if _USE_TORCH_SCATTER:
        return _torch_scatter_sum(src, index, dim=0, dim_size=dim_size)
    out = src.new_zeros((dim_size, *src.shape[1:]))
    return out.index_add_(0, index, src)


def scatter_softmax(logits: torch.Tensor, index: torch.Tensor, dim_size: int,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax of ``logits`` over the edges sharing an ``index``, each edge's term scaled by
    its ``weight`` (the edge envelope: an edge leaving the graph leaves the normalisation
    smoothly too):

        α_e = w_e exp(a_e - m_i) / (Σ_{e' → i} w_e' exp(a_e' - m_i) + 1e-9),   i = index[e]

    with m_i the largest logit of centre i's edges (detached; it cancels but for the floor).
    Shapes: logits (E,) or (E, H), index (E,), weight (E,) or None (all 1) -> like logits.
    The 1e-9 floor keeps a centre whose weights are all 0 at α = 0; m_i counts zero-weight
    edges too, so with logits 20+ apart an entering edge can move the result
    (docs/guides/limitations.md)."""
    expanded = index.view(-1, *([1] * (logits.dim() - 1))).expand_as(logits)
    amax = logits.new_full((dim_size, *logits.shape[1:]), float("-inf")).scatter_reduce(
        0, expanded, logits, reduce="amax", include_self=True)
    ex = torch.exp(logits - amax[index].detach())
    if weight is not None:
        ex = weight.view(-1, *([1] * (logits.dim() - 1))) * ex
    return ex / (scatter_sum(ex, index, dim_size)[index] + 1e-9)
