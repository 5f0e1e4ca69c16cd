"""An orbitgraph potential as a torch-sim model: batched MD and relaxations of many systems.

torch-sim (``pip install orbitgraph[torchsim]``; the package is ``torch-sim-atomistic``)
drives models through :class:`torch_sim.models.interface.ModelInterface` (its 0.3 release,
the newest for Python 3.11): ``model(state)`` with a :class:`torch_sim.SimState` holding
many systems returns

    energy   (B,)        eV
    forces   (N, 3)      eV/Å
    stress   (B, 3, 3)   eV/Å³

Each step, every system's graph is built by the rules the store's graphs were built with
(the model's :class:`GraphParams`: k, tie rule and tolerance, cutoff) by the same compiled
kernel, in one call for all systems, on the CPU in float64, then collated and evaluated
as the ASE calculator does (:class:`orbitgraph.train.calculator.OrbitCalculator`).

Conventions, converted explicitly here:

* cell: torch-sim holds lattice vectors as columns (``state.cell``); orbitgraph as rows
  (``state.row_vector_cell``, its transpose).
* stress: torch-sim's is ASE's, (1/V) ∂E/∂ε, positive = tensile (its cell optimisers and
  barostats take the virial as -V (σ + P)), which is what the potential returns: it is
  passed on unchanged (``tests/test_torchsim.py`` checks the sign by finite differences and
  by a relaxation).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from orbitgraph.errors import InputError
from orbitgraph.model import Potential
from orbitgraph.model.batch import Batch
from orbitgraph.model.program import ExportedPotential
from orbitgraph.preprocess.graph_params import GraphParams, graph_for_model
from orbitgraph.train.collate import batch_from_structures
from orbitgraph.train.datasets import frame_energy_shift, reference_shift
from orbitgraph.train.weights import load_potential

try:
    from torch_sim.models.interface import ModelInterface
    from torch_sim.state import SimState
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError("torch-sim is not installed: pip install 'orbitgraph[torchsim]' (or "
                      "torch-sim-atomistic)") from None


class OrbitModel(ModelInterface):
    """A :class:`Potential` (or an exported program's
    :class:`~orbitgraph.model.program.ExportedPotential`) with the graph parameters it was
    trained with, for torch-sim. The model is moved to ``device`` and ``dtype`` in place (a
    program only to its own dtype: another is a ConfigError).

    ``compute_stress`` needs every system periodic along all three axes (a state with
    ``pbc=False`` raises ValueError: make the model with ``compute_stress=False``).
    ``e0_shift`` (float64 (119,), eV per atom of each atomic number; None: none) is added
    to each system's energy: the shift onto one dataset's energy reference of a model
    trained on several (:meth:`from_checkpoint`'s ``dataset``).
    """

    def __init__(self, model: Potential | ExportedPotential, graph: GraphParams | dict,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
                 compute_forces: bool = True, compute_stress: bool = True,
                 e0_shift: np.ndarray | None = None):
        super().__init__()
        graph = graph if isinstance(graph, GraphParams) else GraphParams.from_dict(graph)
        # built here for each system, as given (k=None): only the envelope's needs count
        self.graph = graph_for_model(graph, None, model.config.rank_envelope,
                                     model.config.rank_envelope_width)
        self._device = torch.device(device)
        self._dtype = dtype
        self._compute_forces = compute_forces
        self._compute_stress = compute_stress
        self._memory_scales_with = "n_atoms"  # k neighbours per atom, whatever the density
        self.model = model.to(device=self._device, dtype=dtype).eval()
        self.e0_shift = e0_shift if e0_shift is not None and np.any(e0_shift) else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", weights: str | None = None,
                        dataset: str | None = None, **kwargs) -> "OrbitModel":
        """From a model file (``orbitgraph package``), ``best.pt`` or ``checkpoint.pt``
        written by the trainer, with the weights validation used, or from an exported
        program (``.pt2``, whose dtype ``dtype`` must be; default float64)
        (:func:`orbitgraph.train.weights.load_potential`). ``dataset``: for a model
        trained on several datasets, the one whose energy reference (E0s) the energies are
        on (default: the primary); forces and stresses do not depend on it. Raises
        ConfigError for a name the file does not know
        (:func:`orbitgraph.train.datasets.reference_shift`)."""
        saved = load_potential(path, device=device, weights=weights,
                               dtype=kwargs.get("dtype", torch.float64))
        shift = reference_shift(saved.datasets, dataset, str(path))
        return cls(saved.model, saved.graph, device=device, e0_shift=shift, **kwargs)

    def batch_of(self, state: SimState) -> Batch:
        """The state's systems as one :class:`Batch`: graphs built on the CPU (float64),
        then moved to the model's device and dtype."""
        positions = state.positions.detach().to("cpu", torch.float64).numpy()
        cells = state.row_vector_cell.detach().to("cpu", torch.float64).numpy()
        numbers = state.atomic_numbers.detach().cpu().numpy()
        pbc = np.broadcast_to(np.asarray(torch.as_tensor(state.pbc).cpu(), dtype=bool), (3,))
        counts = torch.bincount(state.system_idx, minlength=state.n_systems).cpu().numpy()
        bounds = np.concatenate(([0], np.cumsum(counts)))
        structures = [(cells[b], positions[start:stop], numbers[start:stop], pbc)
                      for b, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:],
                                                            strict=True))]
        return batch_from_structures(structures, self.graph).to(self._device, self._dtype)

    def forward(self, state: SimState | dict, **kwargs) -> dict[str, torch.Tensor]:
        """Energies (B,) eV, and forces (N, 3) eV/Å and stresses (B, 3, 3) eV/Å³ (ASE's sign,
        as torch-sim's) as set by ``compute_forces`` and ``compute_stress``."""
        if isinstance(state, dict):
            n = state["positions"].shape[0]
            state = SimState(**state, masses=torch.ones(n, dtype=state["positions"].dtype,
                                                        device=state["positions"].device))
        if self._compute_stress and not bool(torch.as_tensor(state.pbc).all()):
            raise InputError("OrbitModel: the stress of a state that is not periodic along "
                             "all three axes is undefined; make it with compute_stress=False")
        batch = self.batch_of(state)
        with torch.enable_grad():  # forces and stress are derivatives, also under no_grad
            out = self.model(batch, forces=self._compute_forces, stress=self._compute_stress)
        results = {"energy": out["energy"].detach()}
        if self.e0_shift is not None:
            results["energy"] = results["energy"] + frame_energy_shift(
                self.e0_shift, batch).to(results["energy"].dtype)
        if self._compute_forces:
            results["forces"] = out["forces"].detach()
        if self._compute_stress:
            results["stress"] = out["stress"].detach()  # (1/V) ∂E/∂ε: torch-sim's sign too
        return results
