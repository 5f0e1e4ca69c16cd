"""The training losses (orbitgraph.train.metrics): each kind's value and gradient as its
formula says."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.train.collate import collate, frame_from_structure
from orbitgraph.train.metrics import conditional_huber_forces, elementwise, loss_sums
from orbitgraph.units import EV_PER_A3_IN_GPA


def _huber(e: float, d: float) -> float:
    return 0.5 * e * e if abs(e) <= d else d * (abs(e) - 0.5 * d)


def test_universal_force_loss_follows_mace_torchs_formula():
    """conditional_huber_forces (mace-torch's mace/modules/loss.py): Huber's loss of each
    component, δ = huber_delta × 1, 0.7, 0.4, 0.1 for reference |F| < 100, < 200, < 300,
    >= 300 eV/Å; its gradient is the error clamped to ±δ."""
    delta = 0.5
    # one atom in each band, and the band edges themselves (|F| = 100 is in the second)
    norms = [3.0, 99.999, 100.0, 150.0, 200.0, 250.0, 300.0, 800.0]
    factors = [1.0, 1.0, 0.7, 0.7, 0.4, 0.4, 0.1, 0.1]
    target = torch.tensor([[n, 0.0, 0.0] for n in norms], dtype=torch.float64)
    # errors of 0.04 (inside every δ), -0.3 (inside δ = 0.5 and 0.35, beyond 0.2 and 0.05)
    # and 2.0 (beyond every δ)
    error = torch.tensor([[0.04, -0.3, 2.0]], dtype=torch.float64).expand(len(norms), 3)
    pred = (target + error).clone().requires_grad_(True)
    loss = conditional_huber_forces(pred, target, delta)
    loss.sum().backward()
    for i, factor in enumerate(factors):
        d = delta * factor
        for c in range(3):
            e = float(error[i, c])
            assert float(loss[i, c]) == pytest.approx(_huber(e, d), rel=1e-12), (i, c)
            assert float(pred.grad[i, c]) == pytest.approx(max(-d, min(d, e)), rel=1e-12)
    # below 100 eV/Å it is plain Huber (torch's), as the universal loss's other terms are
    low = slice(0, 2)
    torch.testing.assert_close(loss[low], elementwise("huber", pred[low], target[low], delta))
    assert torch.equal(elementwise("universal", pred, target, delta),
                       elementwise("huber", pred, target, delta))


def test_universal_stress_delta_is_in_ev_per_cubic_angstrom():
    """universal takes huber_delta for stress in eV/Å³ (mace-torch's unit): a 1 GPa error
    is inside δ = 0.01 eV/Å³ = 1.602 GPa, so its loss is ½ (1 GPa)²; huber's δ is in GPa,
    where the same error is far beyond it (δ (1 − δ/2))."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    batch = collate([frame_from_structure(atoms.cell.array, atoms.positions, atoms.numbers,
                                          GraphParams(k=16), energy=-14.0,
                                          forces=np.zeros((4, 3)), stress=np.zeros((3, 3)))],
                    k=16)
    out = {"energy": torch.tensor([-14.0], dtype=torch.float64),
           "forces": torch.zeros((4, 3), dtype=torch.float64),
           "stress": torch.full((1, 3, 3), 1.0 / EV_PER_A3_IN_GPA, dtype=torch.float64)}
    universal = loss_sums(out, batch, "universal", 0.01)
    huber = loss_sums(out, batch, "huber", 0.01)
    assert float(universal["stress"]) == pytest.approx(9 * 0.5, rel=1e-12)
    assert float(huber["stress"]) == pytest.approx(9 * 0.01 * (1 - 0.005), rel=1e-12)
    assert float(universal["n_stress"]) == 9


def test_an_unknown_loss_is_refused():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="loss must be one of mse, huber, universal; got 'l1'"):
        elementwise("l1", x, x, 0.01)
