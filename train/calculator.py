"""An ASE calculator for a trained potential: energy (eV), forces (eV/Å), stress (eV/Å³,
ASE sign, Voigt order). Each structure's graph is built exactly as the store built it
(same k, tie rule, tolerance and cutoff).

The calculator evaluates the model in its ``dtype`` on its ``device`` and never changes
the model it is given (dtype, device, weights or training mode). A model already in that
dtype on that device is used as it is, not copied: later changes to its weights show in the
calculator's results. Any other model is copied once (``copy.deepcopy``, then
``.to(device, dtype)``), so calculators of several dtypes and devices made from one model
coexist; the copy costs its weights' memory and ~0.1 s (e3nn rebuilds its generated code).

A model knows the elements its training frames held (``known_elements``); for any other
element its reference energy E0 is 0 eV and its network never saw it, so the calculator
warns, once per element, when a structure holds one (:class:`UntrainedElementWarning`).
"""
from __future__ import annotations

import copy
import itertools
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from orbitgraph.errors import ConfigError, InputError
from orbitgraph.model import Potential
from orbitgraph.model.potential import FLOAT_DTYPES
from orbitgraph.model.program import ExportedPotential
from orbitgraph.preprocess.graph_params import GraphParams, graph_for_model
from orbitgraph.train.collate import batch_from_structures
from orbitgraph.train.datasets import reference_shift
from orbitgraph.train.weights import load_potential


class UntrainedElementWarning(UserWarning):
    """A structure holds an element that no training frame of the model held."""


def is_placed(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether every parameter and buffer of ``model`` is on ``device`` (resolved: cuda:0,
    not cuda) and every floating one in ``dtype``."""
    return all(t.device == device and (t.dtype == dtype or not t.is_floating_point())
               for t in itertools.chain(model.parameters(), model.buffers()))


class OrbitCalculator(Calculator):
    """Energy (eV), forces (eV/Å) and stress (eV/Å³, ASE sign) of ``model`` in ``dtype``
    (torch.float32 or torch.float64) on ``device``, on graphs built with ``graph``'s
    parameters. ``model`` itself is used where it already is in that dtype on that device,
    a converted copy otherwise (see the module docstring); it is never changed.

    ``model`` may also be a path: a model file (``orbitgraph package``), ``best.pt`` or
    ``checkpoint.pt`` (with ``weights="ema"`` or ``"raw"``, as :meth:`from_checkpoint`),
    or an exported program (``.pt2``, which runs in the dtype it was exported in: another
    ``dtype`` is a ConfigError); ``graph`` and ``known_elements`` then default to the
    file's.
    ``known_elements``: the chemical symbols of the model's training frames (from the
    checkpoint; None when the model was handed over without them, and then nothing is
    checked). Raises ValueError for another dtype or a graph the model's rank envelope
    cannot use, ConfigError for a model handed over without ``graph``, and what
    :func:`orbitgraph.train.weights.load_potential` raises for a path.
    ``dataset``: for a model file trained on several datasets, the name of the one whose
    energy reference (E0s) the energies are on (default: the primary, the first of the
    run's ``stores``); forces and stresses do not depend on it. Raises ConfigError for a
    name the model does not know (:func:`orbitgraph.train.datasets.reference_shift`)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: Potential | ExportedPotential | str | os.PathLike,
                 graph: GraphParams | dict | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float64, known_elements: list[str] | None = None,
                 weights: str | None = None, dataset: str | None = None, **kwargs):
        if dtype not in FLOAT_DTYPES:
            raise ConfigError(f"OrbitCalculator: dtype is torch.float32 or torch.float64, "
                              f"not {dtype}")
        said = "the model handed over"
        e0_shift = reference_shift(None, None, "")
        if isinstance(model, (str, os.PathLike)):  # a model file, checkpoint or program
            saved = load_potential(model, device=device, weights=weights, dtype=dtype)
            e0_shift = reference_shift(saved.datasets, dataset, str(model))
            dataset = dataset or (saved.datasets[0]["name"] if saved.datasets else None)
            model, said = saved.model.eval(), saved.weights
            graph = saved.graph if graph is None else graph
            known_elements = saved.trained_elements if known_elements is None \
                else known_elements
        elif graph is None or weights is not None or dataset is not None:
            raise ConfigError("OrbitCalculator: a model handed over needs its graph "
                              "parameters (graph=...) and has one set of weights and one "
                              "energy reference (no weights=..., dataset=...); a file carries "
                              "its graph parameters and datasets")
        super().__init__(**kwargs)
        self.known_elements = sorted(known_elements) if known_elements is not None else None
        self._warned: set[str] = set()
        graph = graph if isinstance(graph, GraphParams) else GraphParams.from_dict(graph)
        # built here for each structure, as given (k=None): only the envelope's needs count
        self.graph = graph_for_model(graph, None, model.config.rank_envelope,
                                     model.config.rank_envelope_width)
        self.device = torch.empty(0, device=device).device  # "cuda" resolved to "cuda:0"
        self.dtype = dtype
        self.model = (model if is_placed(model, self.device, dtype)
                      else copy.deepcopy(model).to(device=self.device, dtype=dtype).eval())
        self.weights = said  # from a file: which weights of the file, in words
        self.dataset = dataset  # whose energy reference (several datasets; None: the primary)
        self.e0_shift = e0_shift  # float64 (119,), eV per atom of each Z

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", weights: str | None = None,
                        dtype: torch.dtype = torch.float64, dataset: str | None = None,
                        **kwargs) -> "OrbitCalculator":
        """From ``best.pt`` or ``checkpoint.pt`` written by the trainer, with the weights
        validation used (the EMA's where training kept one) or, from ``checkpoint.pt``,
        ``weights="raw"`` or ``"ema"`` (:func:`orbitgraph.train.weights.load_potential`);
        which ones, in words: :attr:`weights`. The potential is built in ``dtype`` and its
        weights loaded into it (bit for bit where the checkpoint has this dtype, see
        :func:`orbitgraph.model.model_from_checkpoint`), no copy. ``dataset``: as for the
        constructor."""
        return cls(path, device=device, dtype=dtype, weights=weights, dataset=dataset,
                   **kwargs)

    def _warn_untrained(self, symbols: list[str]) -> None:
        if self.known_elements is None:
            return
        for el in sorted(set(symbols) - set(self.known_elements) - self._warned):
            warnings.warn(f"OrbitCalculator: element {el}: no training frame of this model held "
                          f"it (its E0 is 0 eV and the network never saw it), so its energies "
                          f"and forces are not predictions; the model knows "
                          f"{', '.join(self.known_elements)}", UntrainedElementWarning,
                          stacklevel=2)
            self._warned.add(el)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        self._warn_untrained(a.get_chemical_symbols())
        pbc = np.asarray(a.pbc, dtype=bool)
        cell = np.asarray(a.cell.array, dtype=np.float64)
        if not pbc.all() and abs(np.linalg.det(cell)) < 1e-9:
            raise InputError("OrbitCalculator needs a non-singular cell, also along open axes "
                             "(give the molecule a box)")
        batch = batch_from_structures([(cell, a.positions, a.numbers, pbc)], self.graph).to(
            self.device, self.dtype)
        want_stress = "stress" in properties and pbc.all()
        out = self.model(batch, forces=True, stress=want_stress)
        energy = float(out["energy"][0].detach()) + float(self.e0_shift[a.numbers].sum())
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": out["forces"].detach().cpu().double().numpy()}
        if want_stress:
            s = out["stress"][0].detach().cpu().double().numpy()
            # Voigt order xx, yy, zz, yz, xz, xy, as ASE
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2],
                                               s[1, 2], s[0, 2], s[0, 1]])
