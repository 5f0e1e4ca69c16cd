"""Which weights a saved model file gives, and saying which.

The trainer's ``checkpoint.pt`` (the run's state) holds two sets of weights: the raw ones,
which the optimiser moves, and, where training keeps an exponential moving average
(``train.ema_decay``), the averaged ones. Validation, the logged metrics and ``best.pt``
use the averaged weights where there are some. ``best.pt`` holds one set and records which
(``weights``: ``ema`` or ``raw``); :func:`model.save_model`'s files hold one set, unrecorded.

:func:`load_potential` gives by default the weights validation used, and says in words
which weights it gave; ``weights="ema"`` or ``"raw"`` asks for one set, and a file that
does not hold it is a one-line error naming the file. ``evaluate``, the ASE calculator and
the pipelines' reports load models through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from orbitgraph.errors import ConfigError, InputError
from orbitgraph.model import Potential, model_from_checkpoint, read_checkpoint
from orbitgraph.model.program import (
    ExportedPotential,
    is_program,
    load_program,
    read_program_metadata,
)
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.train.ema import averaged_state

WEIGHTS = ("ema", "raw")


@dataclass(frozen=True)
class SavedPotential:
    """A model loaded from a file: the network (on the device asked for, in the dtype it
    was saved in; an :class:`~orbitgraph.model.program.ExportedPotential` from an exported
    program), the graph parameters it was trained with, the chemical symbols of its
    training frames (None where the file does not hold them), which weights it has, in
    words (``weights``), and as ``ema``, ``raw`` or None where the file does not record it
    (``kind``), and, for a model trained on several datasets, their records (``datasets``:
    name, store id, weight, E0 shift; None otherwise)."""

    model: Potential | ExportedPotential
    graph: GraphParams
    trained_elements: list[str] | None
    weights: str
    kind: str | None = None
    datasets: list[dict] | None = None  # several datasets: name, store_id, weight, e0_shift


def load_potential(path: str | Path, device: str = "cpu", weights: str | None = None,
                   dtype: torch.dtype | None = None) -> SavedPotential:
    """The model saved in ``path`` (``checkpoint.pt``, ``best.pt`` or a
    :func:`model.save_model` file) with the weights validation used (``weights`` None), or
    the EMA or raw ones (``"ema"``, ``"raw"``), built in ``dtype`` (None: that of the
    weights; see :func:`orbitgraph.model.model_from_checkpoint`).

    An exported program (``.pt2``, :mod:`orbitgraph.model.program`) loads as an
    :class:`~orbitgraph.model.program.ExportedPotential`: it holds one set of weights (a
    ``weights`` other than it is an InputError) and runs in the dtype it was exported in
    (``dtype`` None or that one; another is a ConfigError).

    Raises MissingFileError for a missing file and InputError, naming the file, where it
    does not hold the weights asked for (a run without EMA has no averaged weights;
    ``best.pt`` holds one set), or that is no model file (a bare state_dict)."""
    if Path(path).is_file() and is_program(path):
        return load_program_potential(Path(path), device, weights, dtype)
    ckpt = read_checkpoint(path, map_location=device)
    missing = [key for key in ("model_config", "model_state", "graph") if key not in ckpt]
    if missing:
        raise InputError(f"{path}: not an orbitgraph model file (no {missing[0]!r}: "
                         "a model file holds the model's config, weights and graph parameters)")
    state, said = choose_weights(ckpt, Path(path), weights)
    model = model_from_checkpoint({**ckpt, "model_state": state}, dtype)
    return SavedPotential(model.to(device), GraphParams.from_dict(ckpt["graph"]),
                          ckpt.get("trained_elements"), said,
                          weights_kind(ckpt, weights), ckpt.get("datasets"))


def load_program_potential(path: Path, device: str, weights: str | None,
                           dtype: torch.dtype | None) -> SavedPotential:
    """:func:`load_potential` of an exported program."""
    if weights not in (None, *WEIGHTS):
        raise ConfigError(f"weights: expected ema or raw, got {weights!r}", "weights")
    meta = read_program_metadata(path)
    held = meta.get("weights")
    if weights is not None and weights != held:
        raise InputError(f"{path} holds the {held or 'unrecorded'} weights only (an exported "
                         "program holds one set: package the checkpoint again with "
                         f"--weights {weights})")
    model = load_program(path, device, dtype)
    said = (f"{'EMA' if held == 'ema' else held} weights exported to {path}" if held
            else f"the weights exported to {path} (unrecorded whether EMA or raw)")
    return SavedPotential(model, GraphParams.from_dict(meta["graph"]),
                          meta.get("trained_elements"), said, held, meta.get("datasets"))


def weights_kind(ckpt: dict, weights: str | None = None) -> str | None:
    """``ema`` or ``raw``: the weights :func:`choose_weights` gives of ``ckpt`` for
    ``weights``; None where the file does not record which it holds."""
    if "ema_state" in ckpt:
        return weights or ("ema" if ckpt["ema_state"] is not None else "raw")
    return ckpt.get("weights")


def choose_weights(ckpt: dict, path: Path, weights: str | None = None) -> tuple[dict, str]:
    """The state_dict of the weights asked for (see :func:`load_potential`) among those of
    the checkpoint ``ckpt`` read from ``path``, and which they are, in words."""
    if weights not in (None, *WEIGHTS):
        raise ConfigError(f"weights: expected ema or raw (or none: those validation used), "
                          f"got {weights!r}", "weights")
    if "ema_state" in ckpt:  # the trainer's checkpoint.pt: the raw weights and the EMA's
        step = ckpt["state"]["step"]
        has_ema = ckpt["ema_state"] is not None
        if weights == "ema" and not has_ema:
            raise InputError(f"{path}: no EMA weights: this run kept no average "
                             "(train.ema_decay null), validation used its raw weights")
        if (weights or ("ema" if has_ema else "raw")) == "ema":
            return (averaged_state(ckpt["model_state"], ckpt["ema_state"]),
                    f"EMA weights of {path}, step {step} (those validation used)")
        used = "validation used the EMA weights" if has_ema else "those validation used"
        return ckpt["model_state"], f"raw weights of {path}, step {step} ({used})"
    held = ckpt.get("weights")  # best.pt: one set, recorded; model.save_model's: unrecorded
    if weights is not None and weights != held:
        holds = (f"holds the {held} weights only" if held is not None
                 else "does not record whether it holds EMA or raw weights")
        raise InputError(f"{path} {holds}; the run's checkpoint.pt holds both")
    at = f", step {ckpt['step']}" if "step" in ckpt else ""
    if held == "ema":
        return ckpt["model_state"], f"EMA weights of {path}{at} (those validation used)"
    if held == "raw":
        return ckpt["model_state"], f"raw weights of {path}{at} (no EMA kept: those " \
                                    "validation used)"
    return ckpt["model_state"], f"the weights {path} holds (it does not record whether " \
                                "EMA or raw)"
