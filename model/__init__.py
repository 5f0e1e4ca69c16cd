"""Composable MACE-family building blocks and the potentials built from them.

``build_model(config)`` takes a preset name (``mace``, ``sevennet``, ``invariant``), a YAML
file, a dict (``{"preset": "mace", "channels": 32}``) or a ModelConfig, optionally the
statistics of a store manifest, and returns a :class:`Potential`. Checkpoints are the
config plus the state_dict (:func:`save_model` / :func:`load_model`), read and written by
:mod:`orbitgraph.model.checkpoint` (plain data and tensors, loaded with ``weights_only=True``).
"""
from __future__ import annotations

from pathlib import Path

from orbitgraph.model.batch import Batch
from orbitgraph.model.checkpoint import read_checkpoint, write_checkpoint
from orbitgraph.model.config import PRESETS, ModelConfig, load_config, with_statistics
from orbitgraph.model.potential import Potential


def build_model(config, statistics: dict | None = None) -> Potential:
    return Potential(with_statistics(load_config(config), statistics))


def save_model(model: Potential, path: str | Path, extra: dict | None = None,
               state: dict | None = None) -> None:
    """Config, weights and ``extra`` (plain data: graph parameters, training elements).
    ``state``: the weights to write instead of ``model.state_dict()`` (same keys; the
    trainer's EMA weights)."""
    write_checkpoint({"model_config": model.config.to_dict(),
                      "model_state": model.state_dict() if state is None else state,
                      **(extra or {})}, path)


def model_from_checkpoint(ckpt: dict) -> Potential:
    """The :class:`Potential` of a checkpoint's dict
    (:func:`orbitgraph.model.checkpoint.read_checkpoint`) with the weights of its
    ``model_state``: those of ``save_model``'s files and of the trainer's ``best.pt``; of
    its ``checkpoint.pt``, which also holds averaged (EMA) weights, the raw ones (the
    trainer's loaders choose between them)."""
    model = Potential(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model_state"])
    return model


def load_model(path: str | Path, map_location="cpu") -> Potential:
    return model_from_checkpoint(read_checkpoint(path, map_location))


__all__ = ["Batch", "ModelConfig", "PRESETS", "Potential", "build_model", "load_config",
           "load_model", "model_from_checkpoint", "read_checkpoint", "save_model",
           "write_checkpoint"]
