"""Losses and metrics, in the units practitioners quote.

Energies per atom (meV/atom), force components (meV/Å), stress components (GPa). Sums and
counts are accumulated so that metrics over many batches (and DDP ranks) are exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from orbitgraph.model.batch import Batch
from orbitgraph.train.config import CHOICES
from orbitgraph.units import EV_PER_A3_IN_GPA

# train.loss: squared errors, Huber of every component, or mace-torch's "universal" loss
LOSSES = CHOICES["loss"]
# universal: a force component's Huber delta is huber_delta times the factor of the band its
# reference force's norm falls in: |F| < 100, 100-200, 200-300, >= 300 eV/Å
FORCE_BANDS_EV_PER_A = (100.0, 200.0, 300.0)
FORCE_BAND_FACTORS = (1.0, 0.7, 0.4, 0.1)


def huber(error: torch.Tensor, delta: torch.Tensor | float) -> torch.Tensor:
    """Huber's loss of ``error`` elementwise: ½ e² where |e| <= δ, δ (|e| − ½ δ) beyond;
    ``delta`` a number or a tensor broadcasting against ``error`` (same units). Equal to
    ``torch.nn.functional.huber_loss(..., reduction="none")``, which takes a number only."""
    a = error.abs()
    return torch.where(a <= delta, 0.5 * error ** 2, delta * (a - 0.5 * delta))


def conditional_huber_forces(pred: torch.Tensor, target: torch.Tensor,
                             delta: float) -> torch.Tensor:
    """Huber's loss of force components, with a delta that shrinks as the reference force
    grows (mace-torch's ``conditional_huber_forces``, mace/modules/loss.py, the force term of
    its ``UniversalLoss`` used to train MACE-MP on MPtrj):

        δ_i = delta · c(|F_ref,i|),  c = 1, 0.7, 0.4, 0.1 for |F_ref,i| < 100, < 200, < 300,
        >= 300 eV/Å;   loss_ic = huber(F_pred,ic − F_ref,ic; δ_i)

    so that the few atoms with the largest forces pull on the weights no harder than
    ``delta · c`` per component. Shapes: pred and target (N, 3) eV/Å -> (N, 3) eV²/Å²."""
    norm = torch.linalg.vector_norm(target, dim=-1)
    bands = torch.tensor(FORCE_BANDS_EV_PER_A, dtype=norm.dtype, device=norm.device)
    factors = torch.tensor(FORCE_BAND_FACTORS, dtype=pred.dtype, device=pred.device)
    band = torch.bucketize(norm, bands, right=True)  # 0..3: |F| < 100, < 200, < 300, >= 300
    return huber(pred - target, (delta * factors[band]).unsqueeze(-1))


def elementwise(kind: str, pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    """The loss of each component of ``pred`` against ``target`` (same shape and unit):
    (pred − target)² for ``mse``, Huber's loss with ``delta`` (in their unit) for ``huber``
    and ``universal`` (whose forces go through :func:`conditional_huber_forces` instead)."""
    if kind == "mse":
        return (pred - target) ** 2
    if kind in ("huber", "universal"):
        return torch.nn.functional.huber_loss(pred, target, reduction="none", delta=delta)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {kind!r}")


def loss_sums(out: dict, batch: Batch, kind: str, delta: float) -> dict[str, torch.Tensor]:
    """Unnormalised loss sums and their counts for one batch: energy per atom (eV), force
    components (eV/Å) and stress components (GPa; frames without a stress label left out),
    each component's loss that of ``kind`` (:data:`LOSSES`, see :func:`elementwise`) with
    Huber's ``delta`` in the term's unit (eV/atom, eV/Å, GPa), except that ``universal``
    takes it as mace-torch's ``UniversalLoss`` does: forces through
    :func:`conditional_huber_forces`, stress with a delta of ``delta`` eV/Å³ (160.2 ×
    ``delta`` GPa).

    Returns {"energy", "forces", "stress": sums (0-d tensors, differentiable), "n_energy",
    "n_forces", "n_stress": their counts (frames, force components, stress components)}."""
    n_atoms = batch.n_atoms.to(out["energy"].dtype)
    e_pa = elementwise(kind, out["energy"] / n_atoms.clamp(min=1),
                       batch.energy.to(out["energy"].dtype) / n_atoms.clamp(min=1), delta)
    f_target = batch.forces.to(out["forces"].dtype)
    f = (conditional_huber_forces(out["forces"], f_target, delta) if kind == "universal"
         else elementwise(kind, out["forces"], f_target, delta))
    has_stress = ~torch.isnan(batch.stress).flatten(1).any(dim=1)
    s_target = torch.nan_to_num(batch.stress.to(out["stress"].dtype))
    # universal: the stress term's delta is huber_delta eV/Å³ as in mace-torch (so that its
    # stress_weight carries over divided by 160.2², mace_torch.py), in GPa here
    s_delta = delta * EV_PER_A3_IN_GPA if kind == "universal" else delta
    s = elementwise(kind, out["stress"] * EV_PER_A3_IN_GPA, s_target * EV_PER_A3_IN_GPA,
                    s_delta) * has_stress.view(-1, 1, 1)
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

