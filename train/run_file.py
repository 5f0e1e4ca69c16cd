"""One YAML for a whole training run: ``orbitgraph train --config run.yaml``.

A run file has these sections, every one optional (:class:`RunFile`)::

    store: stores/mptrj-k16        # the store to train on (--store), or several datasets:
    # stores: [{path: stores/omat, weight: 0.6, name: omat}, {path: stores/mptrj, weight: 0.4}]
    source: data/train.extxyz      # or build that store first from a source (default
    format: extxyz                 #   place: OUT/store); a complete store of the same
    build: {graph: {k: 16}}        #   source and build settings is reused, not rebuilt
    model: {preset: mace, channels: 64}   # a preset name, settings or a YAML file (--model)
    train: {epochs: 100, lr: 0.005}       # training settings
    out: runs/mace                 # the run directory (--out)

``build`` takes the keys of ``orbitgraph build``'s ``store.*`` settings (graph, split, label
keys...). The command line wins: ``--store``, ``--model`` and ``--out`` over the file,
``--set train.lr=...``, ``--set model.channels=...`` and ``--set build.graph.k=...`` over
both. Relative paths are relative to the working directory, as on the command line.

``stores`` trains on several stores at once, each step drawing its dataset by weight
(:mod:`orbitgraph.train.datasets`, :mod:`orbitgraph.train.mixing`); it excludes ``store``
and ``source``.

Two flat forms are read too: a file holding only training settings (the ``train:`` section
alone, as ``--config`` always took), and mace-torch's flat ``mace_run_train --config``
files, translated by :mod:`orbitgraph.train.mace_torch`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from orbitgraph.config import Config, read_yaml
from orbitgraph.errors import ConfigError
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.mace_torch import MACE_TORCH_KEYS, MACE_TORCH_MODELS, from_mace_torch


class RunFile(Config):
    """The sections of a run file; ``model``, ``train`` and ``build`` are validated by their
    own configs once the command line has been applied."""

    section = ""
    label: ClassVar[str] = "run file"

    store: str | None = Field(None, description="the store to train on (--store); with "
                              "source, where it is built (default: OUT/store)")
    source: str | None = Field(None, description="MPtrj .json/.json.gz; extxyz, ASE "
                               ".db/.aselmdb or Alexandria .json.bz2 files (a file, folder or "
                               "glob pattern): the store is built from it before training")
    format: Literal["mptrj-json", "extxyz", "ase-db", "alexandria-json"] | None = Field(
        None, description="the source's format (default: from its name)")
    build: dict[str, Any] = Field(default_factory=dict, description="with source: the store "
                                  "settings of `orbitgraph build` (graph, split, label keys)")
    model: str | dict[str, Any] | None = Field(None, description="a preset name, a mapping of "
                                               "model settings or a YAML file (--model)")
    train: dict[str, Any] = Field(default_factory=dict, description="training settings")
    out: str | None = Field(None, description="the run directory (--out)")
    stores: list[str | dict[str, Any]] | None = Field(
        None, description="several datasets, each {path, weight, name} (weight default 1, "
        "name default the folder's): each step draws its dataset by weight; the first is the "
        "primary (the model's E0 reference)")


SECTIONS = frozenset(RunFile.model_fields)


def run_document(data: dict, where: str) -> dict:
    """The sections of a run file's ``data`` (read from ``where``): sectioned as it is, a
    flat file of train settings as its ``train:``, a flat mace-torch file translated.
    Raises ConfigError (one line naming ``where``) for a file that is none of them."""
    ours = set(TrainConfig.model_fields)
    if isinstance(data.get("model"), str) and data["model"] in MACE_TORCH_MODELS:
        return from_mace_torch(data, where)  # model: MACE
    if set(data) & SECTIONS:
        return data
    if set(data) <= ours:
        return {"train": data}
    if any(key in MACE_TORCH_KEYS for key in data):
        return from_mace_torch(data, where)
    unknown = sorted(set(data) - SECTIONS - ours)
    raise ConfigError(f"{where}: unknown keys {unknown}: a run file has the sections "
                      f"{sorted(SECTIONS)}, or holds train settings alone, or is a "
                      "mace-torch config")


def read_run_file(path_text: str | Path) -> RunFile:
    """The :class:`RunFile` of a YAML file. Raises MissingFileError for a missing file and
    ConfigError naming the file (not YAML, not a mapping, unknown keys, a mace-torch key
    without an equivalent)."""
    path = Path(path_text)
    data = read_yaml(path, "training config")
    doc = run_document(data, str(path))
    try:
        return RunFile.from_dict(doc)
    except ConfigError as err:
        line = str(err).removeprefix(f"{RunFile.label}: ")
        raise ConfigError(f"{path}: {line}", err.path) from None
