"""An ASE calculator for a trained potential: energy (eV), forces (eV/Å), stress (eV/Å³,
ASE sign, Voigt order). Each structure's graph is built exactly as the store built it
(same k, tie rule, tolerance and cutoff)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from model import Potential
from model.config import ModelConfig
from model.radial import check_graph
from preprocess.graph import knn_graph
from preprocess.store.params import GraphParams
from train.collate import collate, frame_from_graph


class OrbitCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: Potential, graph: GraphParams | dict, device: str = "cpu",
                 dtype: torch.dtype = torch.float64, **kwargs):
        super().__init__(**kwargs)
        self.graph = graph if isinstance(graph, GraphParams) else GraphParams.from_dict(graph)
        check_graph(model.config.rank_envelope, model.config.rank_envelope_width,
                    self.graph.ties, self.graph.tie_tolerance)
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **kwargs) -> "OrbitCalculator":
        """From ``best.pt`` (EMA weights) or ``checkpoint.pt`` written by the trainer."""
        ckpt = torch.load(path, map_location=device, weights_only=False)
        model = Potential(ModelConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model_state"])
        return cls(model, ckpt["graph"], device=device, **kwargs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        pbc = np.asarray(a.pbc, dtype=bool)
        cell = np.asarray(a.cell.array, dtype=np.float64)
        if not pbc.all() and abs(np.linalg.det(cell)) < 1e-9:
            raise ValueError("OrbitCalculator needs a non-singular cell, also along open axes "
                             "(give the molecule a box)")
        g = self.graph
        graph = knn_graph(cell, a.positions, pbc=pbc, k=g.k, ties=g.ties,
                          tie_tolerance=g.tie_tolerance, cutoff=g.cutoff)
        frame = frame_from_graph(cell, a.positions, a.numbers, graph, pbc=pbc)
        batch = collate([frame], k=g.k).to(self.device, self.dtype)
        want_stress = "stress" in properties and pbc.all()
        out = self.model(batch, forces=True, stress=want_stress)
        energy = float(out["energy"][0].detach())
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": out["forces"].detach().cpu().double().numpy()}
        if want_stress:
            s = out["stress"][0].detach().cpu().double().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
