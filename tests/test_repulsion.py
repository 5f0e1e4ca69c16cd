"""The ZBL pair repulsion (model.pair_repulsion): the physics harness on a mace model with it
on, and the repulsion's own checks (the screening function, its cutoff, the pairs it sees)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from orbitgraph.model import build_model
from orbitgraph.model.config import ModelConfig
from orbitgraph.model.repulsion import COULOMB_EV_A, ZBLRepulsion
from orbitgraph.train.testing import PotentialTests, worst_jump


class TestMaceWithPairRepulsion(PotentialTests):
    """Every check of the harness with the repulsion on; the harness's structures put many
    pairs within their covalent-radius sums (checked below), so it is exercised."""

    preset = "mace"
    overrides = {"pair_repulsion": True}

    def test_the_repulsion_carries_energy_and_forces_here(self):
        cell, pos, z = self.rattled()
        on = self.evaluate(self.make(), cell, pos, z)
        off = self.evaluate(self.make(pair_repulsion=False), cell, pos, z)
        assert on["energy"].item() - off["energy"].item() > 1.0  # eV: repulsive, and large
        assert (on["forces"] - off["forces"]).abs().max().item() > 1.0  # eV/Å

    def test_continuous_where_a_repelling_pair_enters_the_graph(self):
        """k = 1: Si B approaches Si atom 0 (whose nearest, A, is at 1.5 Å) and enters 0's
        graph at the tie tolerance, 2.0 Å, inside their covalent-radius sum (2.22 Å): the
        repulsion is on there, and only the rank weight keeps the energy continuous."""
        model = self.make()
        xs = np.linspace(2.01, 1.99, 41)
        path = [np.array([[0, 0, 0], [1.5, 0, 0], [-x, 0, 0]]) for x in xs]
        numbers = np.array([14, 14, 14])
        assert worst_jump(self._path(model, path, numbers)) < 3.0
        # the check can fail: the same pair energy without the rank weight jumps there
        repulsion = ZBLRepulsion().double()
        jumps = []
        for points in path:
            frame = self.frame(np.eye(3) * 30.0, points, numbers, pbc=(False,) * 3,
                               graph=self.graph.model_copy(update={"k": 1}))
            b = self.batch([frame], self.graph.model_copy(update={"k": 1}))
            vec = b.positions[b.neighbors] - b.positions[b.centers]
            r = torch.linalg.norm(vec, dim=-1)
            e = repulsion(r, torch.ones_like(r), b.numbers, b.centers, b.neighbors)
            jumps.append(e.sum().item())
        assert worst_jump(jumps) > 10.0


def test_off_by_default():
    assert ModelConfig().pair_repulsion is False
    assert build_model({"preset": "mace", "channels": 4}).repulsion is None


def test_screened_coulomb_limits_and_cutoff():
    """V(r) · r / (k_e Z_i Z_j) -> 1 as r -> 0 (φ(0) = 1: bare nuclei); zero from the sum of
    covalent radii on, with value, slope and curvature going to zero there (C²)."""
    zbl = ZBLRepulsion().double()
    z_si, z_o = torch.tensor([14]), torch.tensor([8])
    r = torch.tensor([1e-6], dtype=torch.float64)
    bare = zbl.pair_energy(r, z_si, z_o) * r / (COULOMB_EV_A * 14 * 8)
    assert abs(bare.item() - 1.0) < 1e-4
    r_c = 1.11 + 0.66  # Å, covalent radii of Si and O (Cordero et al. 2008)
    beyond = torch.tensor([r_c + 1e-9, r_c + 0.1, 5.0], dtype=torch.float64)
    assert torch.all(zbl.pair_energy(beyond, z_si.repeat(3), z_o.repeat(3)) == 0)
    h = 1e-3
    near = torch.tensor([r_c - 2 * h, r_c - h], dtype=torch.float64)
    v = zbl.pair_energy(near, z_si.repeat(2), z_o.repeat(2))
    inside = zbl.pair_energy(torch.tensor([1.0], dtype=torch.float64), z_si, z_o)
    assert inside.item() > 1.0  # eV at 1 Å: strongly repulsive
    # value, slope and curvature vanish at r_c: the energy goes to zero as (r_c - r)³
    assert 0 < v[1].item() < 1e-6 * inside.item()
    assert abs(v[0].item() / v[1].item() - 8.0) < 0.1


def test_symmetric_in_the_pair_and_decreasing():
    zbl = ZBLRepulsion().double()
    r = torch.linspace(0.3, 1.6, 30, dtype=torch.float64)
    a = zbl.pair_energy(r, torch.full((30,), 26), torch.full((30,), 8))
    b = zbl.pair_energy(r, torch.full((30,), 8), torch.full((30,), 26))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.all(a[1:] < a[:-1]) and torch.all(a > 0)


@pytest.mark.parametrize("preset", ["sevennet", "invariant"])
def test_every_network_takes_it(preset):
    model = build_model({"preset": preset, "channels": 4, "hidden": 8, "pair_repulsion": True})
    assert isinstance(model.repulsion, ZBLRepulsion)
