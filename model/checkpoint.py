"""Checkpoint files: one writer and one reader for everything orbitgraph saves with torch.

Every checkpoint is a dict of plain data (dicts, lists, tuples, strings, numbers, None) and
tensors, so one reader serves all of them with ``torch.load(weights_only=True)``, which
never runs code from the file: the trainer's ``checkpoint.pt`` (model, EMA, optimiser,
schedule, RNG states, loader position), its ``best.pt`` and :func:`model.save_model`'s
files (config, weights, graph parameters), which the ASE calculator, ``evaluate`` and the
reports load. :func:`plain` turns configs (dataclasses, pydantic models, paths) into such
data before they are written.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from orbitgraph.errors import InputError, MissingFileError
from orbitgraph.model.embedding import NormalizedLinear


def plain(value):
    """``value`` as plain data: dataclasses and pydantic models as dicts, paths as strings,
    numpy scalars as numbers, containers recursively (tuples stay tuples). Tensors and
    other values are returned as they are."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if hasattr(value, "model_dump") and not isinstance(value, type):
        return plain(value.model_dump())
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and not torch.is_tensor(value) and getattr(value, "ndim", 1) == 0:
        return value.item()  # numpy scalar
    return value


# The layout of every checkpoint and model file, written into each as ``format_version``.
# 0: the files written before they carried a version (the same keys as version 1; the tests
# keep such files in tests/data/format_v0/). 1: the species projections (and the invariant
# model's embedding) were nn.Linear layers. 2: they are NormalizedLinear layers, whose
# weights are nn.Linear's times √in_features (upgrade_model_state converts). Raise it when
# a key changes meaning or goes, and teach the readers to convert the older versions or to
# refuse them in one line.
FORMAT_VERSION = 2
# the last version whose projection weights are nn.Linear's
LINEAR_PROJECTIONS_VERSION = 1


def write_checkpoint(data: dict, path: str | Path) -> None:
    """Save ``data`` (configs made :func:`plain`) with ``format_version``
    (:data:`FORMAT_VERSION`) to ``path`` atomically: written beside it, then renamed over
    it, so a kill mid-write leaves the previous file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(plain({**data, "format_version": FORMAT_VERSION}), tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The dict a checkpoint holds, loaded with ``weights_only=True`` (tensors and plain
    data only). Raises MissingFileError (a FileNotFoundError) for a missing file and
    InputError (a ValueError), naming the file, for one that holds anything else (another
    program's pickle, or an orbitgraph checkpoint from before they held plain data: numpy
    RNG states) or for a format version newer than this code reads (:data:`FORMAT_VERSION`;
    a file without one is version 0, which reads as version 1)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such checkpoint")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).splitlines()
                       if "Unsupported global" in line), str(err).splitlines()[0])
        raise InputError(f"{path}: not a checkpoint of plain data and tensors ({detail}); "
                         "orbitgraph loads checkpoints with weights_only=True and never runs "
                         "code from them") from None
    except RuntimeError as err:  # not a torch file at all (truncated, another format)
        raise InputError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0]})") \
            from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a checkpoint holds a dict, this file a "
                         f"{type(data).__name__}")
    check_format_version(path, data.get("format_version", 0))
    return data


def check_format_version(path: str | Path, version) -> None:
    """Raises InputError, naming ``path``, for a ``format_version`` this code does not read
    (0 to :data:`FORMAT_VERSION`): that of a checkpoint, a model file or an exported
    program (:mod:`orbitgraph.model.program`)."""
    if not isinstance(version, int) or isinstance(version, bool) \
            or not 0 <= version <= FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format version {version!r}; this orbitgraph "
                         f"reads versions 0 to {FORMAT_VERSION} (a newer orbitgraph wrote it: "
                         "upgrade to read it)")


def projection_scales(model: nn.Module) -> dict[str, float]:
    """The parameter names (those of ``model.state_dict()``) of ``model``'s
    :class:`~orbitgraph.model.embedding.NormalizedLinear` weights, each with √in_features:
    format 2's weight is format 1's (``nn.Linear``'s) times it."""
    return {f"{name}.weight" if name else "weight": math.sqrt(module.in_features)
            for name, module in model.named_modules() if isinstance(module, NormalizedLinear)}


def upgrade_model_state(model: nn.Module, state: dict, version, path: str | Path = "") -> dict:
    """``state``, a ``state_dict`` of ``model``'s architecture read from a file of format
    ``version`` (0 to :data:`FORMAT_VERSION`), as the current ``model`` loads it: up to
    format 1 the normalised projections' weights were ``nn.Linear``'s, W₁ = W₂/√in_features,
    so each is multiplied by √in_features (:func:`projection_scales`) in the dtype of
    ``model``'s parameter (a new dict; ``state`` is unchanged). The model then computes
    what the code that wrote the file did to the rounding of one product (~1e-16 relative
    in float64). Works as well on the EMA's ``shadow`` dict (the same names, parameters
    only). Raises InputError, naming ``path``, for a ``version`` this code does not read and
    for a state that lacks one of the weights (a file of another model)."""
    check_format_version(path, version)
    if version > LINEAR_PROJECTIONS_VERSION:
        return state
    upgraded = dict(state)
    parameters = dict(model.named_parameters())
    for name, scale in projection_scales(model).items():
        if name not in state:
            raise InputError(f"{path}: model_state has no {name!r}: a file of another model "
                             "than its model_config describes")
        # in the model's dtype: float32 weights loaded into a float64 model stay exact
        upgraded[name] = state[name].to(parameters[name].dtype) * scale
    return upgraded
