"""Composable MACE-family building blocks and the potentials built from them.

``build_model(config)`` takes a preset name (``mace``, ``sevennet``, ``invariant``), a YAML
file, a dict (``{"preset": "mace", "channels": 32}``) or a ModelConfig, optionally the
statistics of a store manifest and a dtype, and returns a :class:`Potential`. Checkpoints
are the config plus the state_dict (:func:`save_model` / :func:`load_model`), read and
written by :mod:`orbitgraph.model.checkpoint` (plain data and tensors, loaded with
``weights_only=True``). A checkpoint's dtype is that of its weights: loading builds the
potential in it (or in the dtype asked for), so a float64 checkpoint loads bit for bit.
Model files also carry their dtype, units and E0s (:func:`model_metadata`);
:mod:`orbitgraph.model.program` exports a potential as a ``torch.export`` program, which
:func:`load_model` loads too.
"""
from __future__ import annotations

from pathlib import Path

import torch

from orbitgraph.model.batch import Batch
from orbitgraph.model.checkpoint import read_checkpoint, upgrade_model_state, write_checkpoint
from orbitgraph.model.config import PRESETS, ModelConfig, load_config, with_statistics
from orbitgraph.model.potential import Potential
from orbitgraph.units import MODEL_UNITS


def build_model(config, statistics: dict | None = None,
                dtype: torch.dtype | None = None) -> Potential:
    """The :class:`Potential` of ``config`` with a store's ``statistics`` (E0s, mean
    neighbours, force RMS), built in ``dtype`` (torch.float32 or torch.float64; None:
    torch's default dtype)."""
    return Potential(with_statistics(load_config(config), statistics), dtype)


def model_metadata(model: Potential, state: dict | None = None) -> dict:
    """What a model file and an exported program say about the model beside its weights,
    as plain data: ``model_config`` (the :class:`ModelConfig` as a dict), ``dtype`` of the
    weights (``"float32"`` or ``"float64"``), ``units`` (:data:`orbitgraph.units.MODEL_UNITS`)
    and ``atomic_energies``, the E0 of each element whose E0 is not 0, {Z: eV}, read from
    the weights ``state`` (default: ``model.state_dict()``)."""
    state = model.state_dict() if state is None else state
    e0 = state["scale_shift.e0"]
    return {"model_config": model.config.to_dict(),
            "dtype": str(state_dtype(state)).removeprefix("torch."),
            "units": dict(MODEL_UNITS),
            "atomic_energies": {int(z): float(e0[z]) for z in torch.nonzero(e0).flatten()}}


def save_model(model: Potential, path: str | Path, extra: dict | None = None,
               state: dict | None = None) -> None:
    """A model file: config, weights (``model_state``), :func:`model_metadata` (dtype,
    units, E0s) and ``extra`` (plain data: graph parameters, training elements, which
    weights). ``state``: the weights to write instead of ``model.state_dict()`` (same keys;
    the trainer's EMA weights). Plain data and tensors only, so that it loads with
    ``torch.load(weights_only=True)``."""
    state = model.state_dict() if state is None else state
    write_checkpoint({**model_metadata(model, state), "model_state": state, **(extra or {})},
                     path)


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
    the CPU; ``.to(device)`` moves it. Weights of an older format are converted
    (:func:`~orbitgraph.model.checkpoint.upgrade_model_state`): the model predicts what the
    code that wrote them did. Raises ValueError (:func:`state_dtype`) for weights of mixed
    dtypes, InputError for a format version this code does not read and RuntimeError
    (``load_state_dict``) for weights of another model."""
    state = ckpt["model_state"]
    model = Potential(ModelConfig.from_dict(ckpt["model_config"]),
                      state_dtype(state) if dtype is None else dtype)
    model.load_state_dict(upgrade_model_state(model, state, ckpt.get("format_version", 0)))
    return model


def load_model(path: str | Path, map_location="cpu", dtype: torch.dtype | None = None):
    """The model in the file at ``path``: a :class:`Potential` (:func:`model_from_checkpoint`)
    from a model file or checkpoint, or an
    :class:`~orbitgraph.model.program.ExportedPotential` from an exported program (``.pt2``,
    :func:`~orbitgraph.model.program.load_program`: it runs in the dtype it was exported in,
    and ``dtype``, if given, must be that one). Both are called as ``model(batch,
    forces=True, stress=True)`` and return the same dict. Loads nothing from ``train``.

    Raises MissingFileError for a missing file, InputError naming the file for one that is
    neither, and what :func:`model_from_checkpoint` raises."""
    from orbitgraph.model.program import is_program, load_program
    if is_program(path):
        return load_program(path, map_location, dtype)
    return model_from_checkpoint(read_checkpoint(path, map_location), dtype)


__all__ = ["Batch", "ModelConfig", "PRESETS", "Potential", "build_model", "load_config",
           "load_model", "model_from_checkpoint", "model_metadata", "read_checkpoint", "save_model",
           "state_dtype", "write_checkpoint"]
