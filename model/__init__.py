"""Composable MACE-family building blocks and the potentials built from them.

``build_model(config)`` takes a preset name (``mace``, ``sevennet``, ``invariant``), a YAML
file, a dict (``{"preset": "mace", "channels": 32}``) or a ModelConfig, optionally the
statistics of a store manifest and a dtype, and returns a :class:`Potential`. Checkpoints
are the config plus the state_dict (:func:`save_model` / :func:`load_model`), read and
written by :mod:`orbitgraph.model.checkpoint` (plain data and tensors, loaded with
``weights_only=True``). A checkpoint's dtype is that of its weights: loading builds the
potential in it (or in the dtype asked for), so a float64 checkpoint loads bit for bit.
"""
from __future__ import annotations

from pathlib import Path

import torch

from orbitgraph.model.batch import Batch
from orbitgraph.model.checkpoint import read_checkpoint, write_checkpoint
from orbitgraph.model.config import PRESETS, ModelConfig, load_config, with_statistics
from orbitgraph.model.potential import Potential


def build_model(config, statistics: dict | None = None,
                dtype: torch.dtype | None = None) -> Potential:
    """The :class:`Potential` of ``config`` with a store's ``statistics`` (E0s, mean
    neighbours, force RMS), built in ``dtype`` (torch.float32 or torch.float64; None:
    torch's default dtype)."""
    return Potential(with_statistics(load_config(config), statistics), dtype)


def save_model(model: Potential, path: str | Path, extra: dict | None = None,
               state: dict | None = None) -> None:
    """Config, weights and ``extra`` (plain data: graph parameters, training elements).
    ``state``: the weights to write instead of ``model.state_dict()`` (same keys; the
    trainer's EMA weights)."""
    write_checkpoint({"model_config": model.config.to_dict(),
                      "model_state": model.state_dict() if state is None else state,
                      **(extra or {})}, path)


def state_dtype(state: dict) -> torch.dtype:
    """The one floating dtype of a model's ``state_dict`` (a checkpoint's
    ``model_state``). Raises ValueError if its floating-point tensors hold several, or
    none."""
    dtypes = {t.dtype for t in state.values() if torch.is_tensor(t) and t.is_floating_point()}
    if len(dtypes) != 1:
        raise ValueError(f"model_state: a potential's weights have one floating dtype, these "
                         f"have {sorted(map(str, dtypes)) or 'none'}")
    return dtypes.pop()


def model_from_checkpoint(ckpt: dict, dtype: torch.dtype | None = None) -> Potential:
    """The :class:`Potential` of a checkpoint's dict
    (:func:`orbitgraph.model.checkpoint.read_checkpoint`) with the weights of its
    ``model_state``: those of ``save_model``'s files and of the trainer's ``best.pt``; of
    its ``checkpoint.pt``, which also holds averaged (EMA) weights, the raw ones (the
    trainer's loaders choose between them).

    Built in ``dtype`` (None: the dtype of the checkpoint's weights, see
    :func:`state_dtype`) before its weights are loaded: weights of the same dtype load bit
    for bit, float32 weights into float64 exactly, float64 into float32 rounded once. On
    the CPU; ``.to(device)`` moves it. Raises ValueError (:func:`state_dtype`) for weights
    of mixed dtypes and RuntimeError (``load_state_dict``) for weights of another model."""
    state = ckpt["model_state"]
    model = Potential(ModelConfig.from_dict(ckpt["model_config"]),
                      state_dtype(state) if dtype is None else dtype)
    model.load_state_dict(state)
    return model


def load_model(path: str | Path, map_location="cpu", dtype: torch.dtype | None = None
               ) -> Potential:
    """:func:`model_from_checkpoint` of the file at ``path``."""
    return model_from_checkpoint(read_checkpoint(path, map_location), dtype)


__all__ = ["Batch", "ModelConfig", "PRESETS", "Potential", "build_model", "load_config",
           "load_model", "model_from_checkpoint", "read_checkpoint", "save_model",
           "state_dtype", "write_checkpoint"]
