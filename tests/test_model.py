"""Physics of every model preset and variant: the harness of :mod:`orbitgraph.train.testing`,
subclassed per configuration, plus the blocks' own checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import random_rotation
from orbitgraph.model import build_model
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.train.collate import collate as _collate
from orbitgraph.train.collate import frame_from_structure
from orbitgraph.train.testing import SMALL, PotentialTests, randomise, structure


def frame(cell, pos, numbers, k=8):
    return frame_from_structure(cell, pos, numbers, GraphParams(k=k))


def collate(frames, k=8):
    return _collate(frames, k)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class TestMacePreset(PotentialTests):
    preset = "mace"


class TestMacePerElementContractionWeights(PotentialTests):
    """mace-torch's per-element weights in the symmetric contraction, through the same
    physics checks."""
    preset = "mace"
    overrides = {"contraction_weights": "element"}


def test_per_element_contraction_weights_belong_to_their_element(float64):
    """With ``contraction_weights: element`` each element's row of the contraction's
    weight tables acts on that element's atoms only: an absent element's rows do not
    change the energy, a present one's do, and only present elements' rows get gradients."""
    from orbitgraph.model.embedding import ElementWeights

    torch.manual_seed(0)
    model = build_model({"preset": "mace", "channels": 4, "species_dim": 4, "radial_mlp": [8],
                         "readout_mlp": [4], "contraction_weights": "element"})
    randomise(model)  # readouts start at zero: no gradient would reach the tables
    tables = [m.table for m in model.modules() if isinstance(m, ElementWeights)]
    assert tables and all(t.shape[0] == 119 for t in tables)
    cell, pos, _ = structure(0, 6)
    numbers = np.array([8, 14, 8, 14, 8, 8])
    b = collate([frame(cell, pos, numbers)])
    energy = model(b, training=True)["energy"]
    grads = torch.autograd.grad(energy.sum(), tables, retain_graph=True)
    for g in grads:
        present = g.abs().sum(dim=1) > 0
        assert set(np.flatnonzero(present.numpy())) <= {8, 14}
    assert any(g[14].abs().sum() > 0 for g in grads)
    with torch.no_grad():
        for t in tables:
            t[26] += 1.0  # iron: absent
    unchanged = model(b)["energy"]
    with torch.no_grad():
        for t in tables:
            t[14] += 0.1
    changed = model(b)["energy"]
    torch.testing.assert_close(unchanged, energy.detach(), rtol=0, atol=0)
    assert (changed - energy).abs().max() > 1e-6
    # the embedding's projections have no such tables
    default = build_model({"preset": "mace", "channels": 4, "species_dim": 4})
    assert not any(isinstance(m, ElementWeights) for m in default.modules())


class TestSevennetPreset(PotentialTests):
    preset = "sevennet"


class TestInvariantPreset(PotentialTests):
    preset = "invariant"
    energy_scale = 100.0


class TestMaceVariants(PotentialTests):
    """Other swappable blocks through the same physics checks."""
    preset = "mace"
    overrides = {"aggregation": "softmax", "message_weights": "radial+species+features",
                 "self_interaction": "tensor_square", "radial_basis": "gaussian",
                 "block_reduction": "mean", "readout": "linear"}


class TestInvariantSoftmaxBands(PotentialTests):
    preset = "invariant"
    energy_scale = 100.0
    overrides = {"attention": "softmax", "bands": [2.5, 3.5, 4.5]}


class TestMaceNextCandidateEnvelope(PotentialTests):
    """The envelope below d_{k+1}: continuous energy, exact derivatives (forces may jump
    where the (k+1)-th candidate changes identity), on the default 0.01 Å tie graphs."""
    preset = "mace"
    overrides = {"rank_envelope": "next", "rank_envelope_width": 0.5}
    graph = GraphParams(k=8, tie_tolerance=0.01)


class TestMaceWithoutRankEnvelope(PotentialTests):
    """k-NN without the envelope: exact derivatives between swaps, jumps at swaps."""
    preset = "mace"
    overrides = {"rank_envelope": "none"}
    graph = GraphParams(k=8, tie_tolerance=0.01)


class TestMaceFilteredAtLoadTime(PotentialTests):
    """Graphs built with k = 12 and filtered to k = 8 at load time, as the loader does."""
    preset = "mace"
    graph = GraphParams(k=8, tie_tolerance=0.5)
    filtered_from = GraphParams(k=12, tie_tolerance=0.5)


class TestInvariantTiesBreakNextEnvelope(PotentialTests):
    preset = "invariant"
    energy_scale = 100.0
    overrides = {"rank_envelope": "next"}
    graph = GraphParams(k=8, ties="break")


def test_untrained_potential_predicts_the_reference_energies():
    model = build_model({"preset": "mace", **SMALL, "atomic_energies": {1: -1.0, 8: -2.5}}).double()
    cell, pos, _ = structure(11, 4)
    z = np.array([1, 8, 8, 1])
    out = model(collate([frame(cell, pos, z)]))
    torch.testing.assert_close(out["energy"], torch.tensor([-7.0], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert float(out["forces"].abs().max()) == 0.0


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown model preset 'macee'"):
        build_model("macee")
    with pytest.raises(ValueError, match="unknown keys \\['chanels'\\]"):
        build_model({"preset": "mace", "chanels": 3})
    with pytest.raises(ValueError, match="model.aggregation: 'max' is not one of"):
        build_model({"preset": "mace", "aggregation": "max"})
    with pytest.raises(ValueError, match="model.channels: expected an integer >= 1"):
        build_model({"preset": "mace", "channels": 0})


def test_blocks_declare_irreps_that_chain():
    model = build_model({"preset": "mace", **SMALL})
    blocks = model.network.blocks
    for prev, nxt in zip(blocks[:-1], blocks[1:], strict=True):
        assert prev.irreps_out == nxt.irreps_in
    from e3nn import o3

    from orbitgraph.model.equivariant import check_chain
    with pytest.raises(ValueError, match="expects irreps"):
        check_chain("x", o3.Irreps("1x0e"), o3.Irreps("1x1o"))


@pytest.mark.usefixtures("float64")
class TestSymmetricContraction:
    """The product basis on its own: equivariant, channel by channel, degree = correlation."""

    def make(self, correlation=3, out="4x0e+4x1o"):
        from e3nn import o3

        from orbitgraph.model.self_interaction import SymmetricContraction
        torch.manual_seed(1)
        sc = SymmetricContraction(o3.Irreps("4x0e+4x1o+4x2e+4x3o"), o3.Irreps(out),
                                  correlation, species_dim=5)
        for p in sc.parameters():  # random, not initial, weights everywhere
            torch.nn.init.normal_(p)
        return sc, torch.randn(7, sc.irreps_in.dim), torch.randn(7, 5)

    @pytest.mark.parametrize("out", ["4x0e+4x1o", "4x0e", "4x0e+4x1o+4x2e+4x3o"])
    def test_equivariant(self, out):
        sc, a, species = self.make(out=out)
        rot = torch.as_tensor(random_rotation(np.random.default_rng(3)))
        d_in = sc.irreps_in.D_from_matrix(rot)
        d_out = sc.irreps_out.D_from_matrix(rot)
        torch.testing.assert_close(sc(a @ d_in.T, species), sc(a, species) @ d_out.T,
                                   rtol=1e-10, atol=1e-10)

    def test_polynomial_of_degree_correlation(self):
        for correlation in (1, 2, 3):
            sc, a, species = self.make(correlation)
            lambdas = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5])
            values = torch.stack([sc(lam * a, species) for lam in lambdas])  # (5, N, D)
            powers = torch.stack([lambdas ** p for p in range(1, correlation + 1)], 1)
            coeffs = torch.linalg.lstsq(powers, values.reshape(5, -1)).solution
            torch.testing.assert_close(powers @ coeffs, values.reshape(5, -1), rtol=1e-9, atol=1e-9)
            assert coeffs[-1].abs().max() > 1e-3  # the top order is really there
            assert torch.allclose(sc(0 * a, species), torch.zeros(()))  # no constant term

    def test_channels_do_not_mix_before_the_final_linear(self):
        sc, a, species = self.make()
        sc.mix = torch.nn.Identity()
        from orbitgraph.model.self_interaction import from_channels, to_channels
        x = to_channels(a, 4, [0, 1, 2, 3])
        x2 = x.clone()
        x2[:, 1] += torch.randn_like(x2[:, 1])  # change channel 1 only
        y = to_channels(sc(a, species), 4, [0, 1])
        y2 = to_channels(sc(from_channels(x2, [0, 1, 2, 3]), species), 4, [0, 1])
        changed = (y2 - y).abs().amax(dim=(0, 2)) > 1e-12
        assert changed.tolist() == [False, True, False, False]

    def test_layout_round_trip_and_errors(self):
        from e3nn import o3

        from orbitgraph.model.self_interaction import (
            SymmetricContraction,
            from_channels,
            to_channels,
        )
        a = torch.randn(3, o3.Irreps("4x0e+4x1o+4x2e").dim)
        torch.testing.assert_close(from_channels(to_channels(a, 4, [0, 1, 2]), [0, 1, 2]), a)
        with pytest.raises(ValueError, match="natural-parity"):
            SymmetricContraction(o3.Irreps("4x0e+4x1e"), o3.Irreps("4x0e"), 2, 5)
        with pytest.raises(ValueError, match="not made of"):
            SymmetricContraction(o3.Irreps("4x0e+4x1o"), o3.Irreps("4x2e"), 2, 5)


COMPILE_SCRIPT = """
import sys, numpy as np, torch
torch.set_default_dtype(torch.float64)
from orbitgraph.model import build_model
from orbitgraph.preprocess.graph_reference import knn_graph_reference
from orbitgraph.train.collate import collate, frame_from_graph
rng = np.random.default_rng(0)
cell = np.eye(3) * 4 + rng.normal(0, 0.2, (3, 3)); pos = rng.random((5, 3)) @ cell
b = collate([frame_from_graph(cell, pos, np.array([1, 8, 8, 14, 26]),
                              knn_graph_reference(cell, pos, k=8))], k=8)
torch.manual_seed(0)
model = build_model({"preset": "mace", "channels": 8, "species_dim": 8, "radial_mlp": [16],
                     "readout_mlp": [8]})
eager = model(b)
model.network = torch.compile(model.network, dynamic=True)
out = model(b)
torch.testing.assert_close(out["energy"], eager["energy"], rtol=1e-9, atol=1e-9)
torch.testing.assert_close(out["forces"], eager["forces"], rtol=1e-7, atol=1e-9)
torch.testing.assert_close(out["stress"], eager["stress"], rtol=1e-7, atol=1e-9)
assert "numba" not in sys.modules, "numba must not be loaded next to torch.compile on CPU"
print("compiled == eager")
"""


@pytest.mark.slow
def test_torch_compile_matches_eager(tmp_path):
    """In a fresh process without numba: Inductor's CPU kernels crash next to numba's LLVM.
    Inductor's cache in a folder of this test's own: another process compiling into the
    shared one at the same time can leave a truncated kernel there."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], cwd=root, capture_output=True,
                          text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiled == eager" in proc.stdout
