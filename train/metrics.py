"""Losses and metrics, in the units practitioners quote.

Energies per atom (meV/atom), force components (meV/Å), stress components (GPa). Sums and
counts are accumulated so that metrics over many batches (and DDP ranks) are exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from orbitgraph.model.batch import Batch
from orbitgraph.units import EV_PER_A3_IN_GPA


def elementwise(kind: str, pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    if kind == "mse":
        return (pred - target) ** 2
    return torch.nn.functional.huber_loss(pred, target, reduction="none", delta=delta)


def loss_sums(out: dict, batch: Batch, kind: str, delta: float) -> dict[str, torch.Tensor]:
    """Unnormalised loss sums and their counts for one batch: energy per atom (eV), force
    components (eV/Å) and stress components (GPa; frames without a stress label left out)."""
    n_atoms = batch.n_atoms.to(out["energy"].dtype)
    e_pa = elementwise(kind, out["energy"] / n_atoms.clamp(min=1),
                       batch.energy.to(out["energy"].dtype) / n_atoms.clamp(min=1), delta)
    f = elementwise(kind, out["forces"], batch.forces.to(out["forces"].dtype), delta)
    has_stress = ~torch.isnan(batch.stress).flatten(1).any(dim=1)
    s_target = torch.nan_to_num(batch.stress.to(out["stress"].dtype))
    s = elementwise(kind, out["stress"] * EV_PER_A3_IN_GPA, s_target * EV_PER_A3_IN_GPA,
                    delta) * has_stress.view(-1, 1, 1)
    return {"energy": e_pa.sum(), "forces": f.sum(), "stress": s.sum(),
            "n_energy": torch.tensor(float(batch.n_frames)),
            "n_forces": torch.tensor(float(3 * batch.forces.shape[0])),
            "n_stress": 9.0 * has_stress.sum().to(torch.float64)}


@dataclass
class ErrorAccumulator:
    """Absolute and squared errors; ``result()`` gives MAE and RMSE in quoted units."""

    sums: dict = field(default_factory=lambda: {k: 0.0 for k in (
        "e_abs", "e_sq", "n_e", "f_abs", "f_sq", "n_f", "s_abs", "s_sq", "n_s")})
    pairs: dict = field(default_factory=lambda: {"energy": [], "forces": []})
    keep_pairs: bool = False

    def add(self, out: dict, batch: Batch) -> None:
        with torch.no_grad():
            n = batch.n_atoms.to(torch.float64).clamp(min=1)
            de = (out["energy"].double() - batch.energy.double()) / n
            df = out["forces"].double() - batch.forces.double()
            has = ~torch.isnan(batch.stress).flatten(1).any(dim=1)
            ds = (out["stress"].double() - torch.nan_to_num(batch.stress.double()))[has]
            self.add_differences(de, df, ds)
            if self.keep_pairs:
                self.pairs["energy"].append(torch.stack([batch.energy.double() / n,
                                                         out["energy"].double() / n], 1))
                self.pairs["forces"].append(torch.stack([batch.forces.double().flatten(),
                                                         out["forces"].double().flatten()], 1))

    def add_differences(self, de, df, ds) -> None:
        """Add predicted minus reference values (float64 tensors or numpy arrays): ``de``
        (F,) energy per atom, eV/atom; ``df`` (N, 3) forces, eV/Å; ``ds`` (F', 3, 3)
        stress, eV/Å³, of the F' frames that have a stress label."""
        s = self.sums
        for key, d in (("e", de), ("f", df), ("s", ds)):
            s[f"{key}_abs"] += float(abs(d).sum())
            s[f"{key}_sq"] += float((d ** 2).sum())
            s[f"n_{key}"] += math.prod(d.shape)

    def merge_tensor(self) -> torch.Tensor:
        return torch.tensor([self.sums[k] for k in sorted(self.sums)], dtype=torch.float64)

    def load_tensor(self, t: torch.Tensor) -> None:
        for k, v in zip(sorted(self.sums), t.tolist(), strict=True):
            self.sums[k] = v

    def result(self) -> dict[str, float]:
        s = self.sums

        def mae_rmse(a, q, n, scale):
            if n == 0:
                return float("nan"), float("nan")
            return a / n * scale, (q / n) ** 0.5 * scale

        e = mae_rmse(s["e_abs"], s["e_sq"], s["n_e"], 1000.0)
        f = mae_rmse(s["f_abs"], s["f_sq"], s["n_f"], 1000.0)
        st = mae_rmse(s["s_abs"], s["s_sq"], s["n_s"], EV_PER_A3_IN_GPA)
        return {"energy_mae_meV_per_atom": e[0], "energy_rmse_meV_per_atom": e[1],
                "forces_mae_meV_per_A": f[0], "forces_rmse_meV_per_A": f[1],
                "stress_mae_GPa": st[0], "stress_rmse_GPa": st[1],
                "frames": int(s["n_e"])}

