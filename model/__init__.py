"""Composable MACE-family building blocks and the potentials built from them.

``build_model(config)`` takes a preset name (``mace``, ``sevennet``, ``invariant``), a YAML
file, a dict (``{"preset": "mace", "channels": 32}``) or a ModelConfig, optionally the
statistics of a store manifest, and returns a :class:`Potential`. Checkpoints are the
config plus the state_dict (:func:`save_model` / :func:`load_model`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from model.batch import Batch
from model.config import PRESETS, ModelConfig, load_config, with_statistics
from model.potential import Potential


def build_model(config, statistics: dict | None = None) -> Potential:
    return Potential(with_statistics(load_config(config), statistics))


def save_model(model: Potential, path: str | Path, extra: dict | None = None) -> None:
    torch.save({"model_config": model.config.to_dict(), "model_state": model.state_dict(),
                **(extra or {})}, path)


def load_model(path: str | Path, map_location="cpu") -> Potential:
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    model = Potential(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model_state"])
    return model


__all__ = ["Batch", "ModelConfig", "PRESETS", "Potential", "build_model", "load_config",
           "load_model", "save_model"]
