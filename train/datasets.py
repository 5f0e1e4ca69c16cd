"""Several datasets in one training run: one store per dataset, mixed by weights.

A store is built from one source, so it holds one dataset; mixing is a training decision.
A run names its stores with a weight and a name each (:class:`DatasetSpec`, in a run file
or an experiment as ``stores: [{path: stores/omat, weight: 0.6, name: omat}, ...]``); the
first is the *primary* dataset. :func:`open_datasets` opens and checks them:

* every store must serve the graphs the model sees (:func:`graph_for_model` on the primary
  store's graphs; the others must be able to serve those, filtered at load time);
* each dataset keeps its own E0s (:func:`energy_references`): datasets on different
  energy references (PBE, PBE+U, r2SCAN) differ by a constant per element, which a fixed
  E0 table per dataset absorbs. The model holds one table (the primary dataset's, plus
  each other element's first E0 among the others) and every other dataset's energies are
  moved onto it as they are loaded: E' = E - Σ_i (E0_d(z_i) - E0_model(z_i)), the same
  loss as a model with an E0 table per dataset, since E0s are fixed. A prediction on
  dataset d's reference is the model's energy plus that sum
  (:meth:`Dataset.shift_energy` with ``sign=+1``).

Which dataset each step draws from is :mod:`orbitgraph.train.mixing`'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from orbitgraph.config import Config
from orbitgraph.errors import ConfigError, GraphMismatchError, MissingFileError
from orbitgraph.preprocess.graph_params import GraphParams, graph_for_model
from orbitgraph.preprocess.store import GraphStore, open_store
from orbitgraph.preprocess.store.e0 import fit_e0


class DatasetSpec(Config):
    """One dataset of a run: a store, its sampling weight and its name."""

    section = "stores[]"

    path: str = Field(description="the dataset's store (a folder built by orbitgraph build)")
    weight: float = Field(1.0, gt=0, description="sampling weight: each training step draws "
                          "from this dataset with probability weight / (sum of the weights)")
    name: str | None = Field(None, min_length=1, description="the dataset's name in logs, "
                             "metrics and the calculator's dataset= (default: the store "
                             "folder's name)")

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name


def dataset_specs(items: list) -> list[DatasetSpec]:
    """The :class:`DatasetSpec` of each of ``items`` (mappings, or store paths with weight
    1). Raises ConfigError (one line, ``stores[i].key``) for a bad entry, an empty list or a
    name given twice."""
    if not items:
        raise ConfigError("stores: expected at least one {path, weight, name}, got none",
                          "stores")
    specs = []
    for i, item in enumerate(items):
        if isinstance(item, DatasetSpec):
            specs.append(item)
            continue
        data = {"path": str(item)} if isinstance(item, (str, Path)) else item
        if not isinstance(data, dict):
            raise ConfigError(f"stores[{i}]: expected a mapping {{path, weight, name}} or a "
                              f"path, got {item!r}", f"stores[{i}]")
        try:
            specs.append(DatasetSpec.from_dict(data))
        except ConfigError as err:
            line = str(err).split(": ", 1)[-1]
            key = err.path.split(".")[-1] if err.path else ""
            raise ConfigError(f"stores[{i}].{key}: {line}", f"stores[{i}].{key}") from None
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec.label in seen:
            raise ConfigError(f"stores[{i}].name: {spec.label!r} is already the name of "
                              f"stores[{seen[spec.label]}]; give each dataset its own name",
                              f"stores[{i}].name")
        seen[spec.label] = i
    return specs


@dataclass
class Dataset:
    """An opened dataset: its name, store, normalised weight (the weights sum to 1) and
    ``e0_shift`` (float64 (119,), eV per atom of each atomic number: E0_d(z) - E0_model(z),
    zero where equal or unknown; set by :func:`energy_references`)."""

    name: str
    store: GraphStore
    weight: float
    e0_shift: np.ndarray | None = None

    def shift_energy(self, batch, sign: int = -1):
        """``batch`` with its energy labels moved onto the model's reference (``sign`` -1:
        E - Σ_i shift(z_i)) or, with ``sign`` +1, a model's energies (a tensor (F,) eV, given
        as ``batch``'s ``energy``) onto this dataset's. Returns the batch (changed in place
        where it has labels)."""
        if self.e0_shift is None or batch.energy is None or not np.any(self.e0_shift):
            return batch
        batch.energy = batch.energy + sign * self.frame_shift(batch).to(batch.energy.dtype)
        return batch

    def frame_shift(self, batch) -> torch.Tensor:
        """Σ_i shift(z_i) per frame of ``batch``: (F,) eV, float64
        (:func:`frame_energy_shift`)."""
        return frame_energy_shift(self.e0_shift, batch)


def frame_energy_shift(shift: np.ndarray, batch) -> torch.Tensor:
    """Σ_i shift(z_i) over each frame's atoms of ``batch`` (a Batch): float64 (F,) eV, on
    the batch's device; ``shift`` float64 (119,), eV per atom of each atomic number."""
    table = torch.as_tensor(shift, dtype=torch.float64, device=batch.numbers.device)
    per_frame = torch.zeros(batch.n_frames, dtype=torch.float64, device=table.device)
    return per_frame.index_add_(0, batch.batch, table[batch.numbers])


def open_datasets(specs: list[DatasetSpec], k: int | None, rank_envelope: str,
                  rank_envelope_width: float) -> tuple[list[Dataset], GraphParams]:
    """The datasets of ``specs`` (stores opened, weights normalised) and the graphs the model
    sees (:func:`graph_for_model` of the primary store's graphs with the model's ``k`` and
    rank envelope). Raises MissingFileError naming ``stores[i]`` for a store that does not
    exist, and GraphMismatchError naming it when its graphs cannot serve the model's."""
    total = sum(spec.weight for spec in specs)
    datasets = []
    for i, spec in enumerate(specs):
        if not Path(spec.path).exists():
            raise MissingFileError(f"stores[{i}].path: {spec.path}: no such store "
                                   f"(dataset {spec.label!r}); build it with orbitgraph build")
        datasets.append(Dataset(spec.label, open_store(spec.path), spec.weight / total))
    graph = graph_for_model(datasets[0].store.manifest.graph, k, rank_envelope,
                            rank_envelope_width)
    for i, data in enumerate(datasets[1:], start=1):
        stored = data.store.manifest.graph
        if not stored.can_serve(graph):
            raise GraphMismatchError(
                f"stores[{i}]: dataset {data.name!r} has graphs k={stored.k}, ties="
                f"{stored.ties}, tie_tolerance={stored.tie_tolerance}, cutoff={stored.cutoff}"
                f", which cannot serve the model's graphs (k={graph.k}, ties={graph.ties}, "
                f"tie_tolerance={graph.tie_tolerance}, cutoff={graph.cutoff}) built from "
                f"{datasets[0].name!r}; build it with the same graph settings", "k")
    return datasets, graph


def energy_references(datasets: list[Dataset], method: str, **fit) -> dict[int, float]:
    """Fit each dataset's E0s by ``method`` (:func:`fit_e0` on its store, with the keywords
    ``fit``), set each dataset's ``e0_shift``, and return the model's E0 table {Z: eV}: the
    primary dataset's E0s, and for an element it lacks, the first other dataset's."""
    tables = [fit_e0(data.store, method, **fit) for data in datasets]
    model: dict[int, float] = {}
    for table in tables:
        for z, e0 in table.items():
            model.setdefault(int(z), float(e0))
    for data, table in zip(datasets, tables, strict=True):
        shift = np.zeros(119, dtype=np.float64)
        for z, e0 in table.items():
            shift[int(z)] = float(e0) - model[int(z)]
        data.e0_shift = shift
    return model


def pooled_statistics(datasets: list[Dataset], train: list[Dataset]) -> dict:
    """The statistics of the model that the data decide (mean neighbours per atom, force
    RMS) over all the datasets' training frames together (``train``: their training
    subsets): each store's value weighted by its training atoms (the RMS as the root of the
    pooled mean square), as over one concatenated training set. Not by the sampling
    weights: the model's normalisation then stays the same when a resumed run changes the
    weights at an epoch boundary."""
    stats = [data.store.manifest.statistics for data in datasets]
    atoms = np.array([float(sub.store.index.column("n_atoms").to_numpy().sum())
                      for sub in train])
    w = atoms / max(atoms.sum(), 1.0)
    out = dict(stats[0])
    if all("mean_neighbors_per_atom" in s for s in stats):
        out["mean_neighbors_per_atom"] = float(
            np.dot(w, [s["mean_neighbors_per_atom"] for s in stats]))
    if all(s.get("force_rms_eV_per_A") for s in stats):
        out["force_rms_eV_per_A"] = float(np.sqrt(np.dot(
            w, [s["force_rms_eV_per_A"] ** 2 for s in stats])))
    return out


def reference_shift(records: list[dict] | None, dataset: str | None, where: str) -> np.ndarray:
    """float64 (119,): the E0 shift (eV per atom of each atomic number) that puts a model's
    energies on the reference of dataset ``dataset``, from the dataset records a model file
    holds (``records``, :func:`orbitgraph.train.checkpointing.dataset_records`; None for a
    model trained on one store). ``dataset`` None: the primary dataset's (zeros). Raises
    ConfigError naming ``where`` and the datasets it knows for a name it does not know, or
    a name given for a model trained on one store."""
    shift = np.zeros(119, dtype=np.float64)
    if dataset is None:
        return shift
    names = [r["name"] for r in records or []]
    if dataset not in names:
        known = f"its datasets are {', '.join(names)}" if names else \
            "it was trained on one store (no datasets to choose from)"
        raise ConfigError(f"dataset: {where} has no dataset {dataset!r}; {known}", "dataset")
    for z, value in records[names.index(dataset)]["e0_shift"].items():
        shift[int(z)] = float(value)
    return shift


def dataset_of_store(records: list[dict] | None, store, dataset: str | None,
                     where: str) -> str | None:
    """The name of the dataset whose energy reference the labels of ``store`` (an opened
    GraphStore) are on, for the model of ``where`` trained on the datasets ``records``
    (:func:`orbitgraph.train.checkpointing.dataset_records`; None: one store, and None is
    returned): ``dataset`` where given (checked by :func:`reference_shift`), else the
    dataset whose store it is (by store id). Raises ConfigError, naming ``where``, the
    store and the datasets, when it is none of them or several (give ``--dataset``)."""
    if not records:
        reference_shift(records, dataset, where)
        return None
    if dataset is not None:
        reference_shift(records, dataset, where)
        return dataset
    names = [r["name"] for r in records if r.get("store_id") == store.manifest.store_id]
    if len(names) == 1:
        return names[0]
    what = (f"the store of the datasets {', '.join(names)}" if names else
            f"none of the stores of its datasets {', '.join(r['name'] for r in records)}")
    raise ConfigError(f"dataset: {where} was trained on several datasets and {store.root} is "
                      f"{what}; name the dataset whose energy reference (E0s) its labels are "
                      "on (--dataset NAME)", "dataset")


def recorded_store(records: list[dict] | None, name: str, where: str) -> str:
    """The store (path or URL) of dataset ``name`` as the model of ``where`` recorded it at
    training time.
    Raises ConfigError naming ``where`` for a model trained on one store, an unknown name
    (:func:`reference_shift`), or a record without a store path (a checkpoint written
    before they were recorded: give ``--store``), and MissingFileError where the store is
    gone."""
    if not records:
        raise ConfigError(f"--store: {where} was trained on one store; give the store "
                          "(--store) or a source file (--source) to evaluate it on", "--store")
    reference_shift(records, name, where)
    record = records[[r["name"] for r in records].index(name)]
    path = record.get("path")
    if path is None:
        raise ConfigError(f"--store: {where} does not record where dataset {name!r}'s store "
                          "is (written before stores were recorded); give it with --store",
                          "--store")
    if "://" not in path and not Path(path).exists():
        raise MissingFileError(f"{path}: no such store (dataset {name!r} of {where}); give "
                               "its store with --store")
    return path
