"""Physics of every model preset: a reusable harness, subclassed per preset.

Equivariance, invariances, supercell extensivity, forces and stress against finite
differences (float64), batch independence, smoothness of the k-NN rank envelope.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import random_rotation
from model import build_model, load_model, save_model
from preprocess.graph import knn_graph
from train.collate import collate as _collate, frame_from_graph

SMALL = {"channels": 8, "hidden": 16, "species_dim": 8, "radial_mlp": [16], "layers": 2,
         "readout_mlp": [8], "final_mlp": [16]}


def structure(seed: int, n: int = 5):
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * 3.6 + rng.normal(0, 0.3, (3, 3))
    m = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    frac = (grid + 0.5 + rng.uniform(-0.15, 0.15, (n, 3))) / m
    cell = cell * (n / 4) ** (1 / 3)
    numbers = rng.choice([1, 8, 14, 26], n)
    return cell, frac @ cell, numbers


def frame(cell, pos, numbers, k=8):
    return frame_from_graph(cell, pos, numbers, knn_graph(cell, pos, k=k))


def collate(frames, k=8):
    return _collate(frames, k)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.usefixtures("float64")
class ModelHarness:
    preset: str
    overrides: dict = {}

    def make(self, **kw):
        torch.manual_seed(0)
        cfg = {"preset": self.preset, **SMALL, **self.overrides, **kw,
               "atomic_energies": {1: -1.0, 8: -2.0, 14: -3.0, 26: -4.0}}
        model = build_model(cfg)
        # random, not small, scale/shift, and random readouts (they start at zero so that an
        # untrained potential predicts Σ E0): every part of the energy is exercised
        with torch.no_grad():
            model.scale_shift.scale.uniform_(0.5, 1.5)
            model.scale_shift.shift.uniform_(-0.5, 0.5)
            for p in model.parameters():
                if p.numel() and not p.any():
                    p.normal_(0.0, 0.3)
        return model

    def test_rotation_equivariance(self):
        model = self.make()
        cell, pos, z = structure(1, 6)
        rot = random_rotation(np.random.default_rng(3))
        a = model(collate([frame(cell, pos, z)]))
        b = model(collate([frame(cell @ rot.T, pos @ rot.T, z)]))
        torch.testing.assert_close(b["energy"], a["energy"], rtol=1e-10, atol=1e-10)
        R = torch.tensor(rot)
        torch.testing.assert_close(b["forces"], a["forces"] @ R.T, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(b["stress"][0], R @ a["stress"][0] @ R.T, rtol=1e-8, atol=1e-10)

    def test_translation_permutation_wrapping(self):
        model = self.make()
        cell, pos, z = structure(2, 7)
        ref = model(collate([frame(cell, pos, z)]))
        moved = model(collate([frame(cell, pos + np.array([1.3, -7.1, 0.4]), z)]))
        torch.testing.assert_close(moved["energy"], ref["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(moved["forces"], ref["forces"], rtol=1e-8, atol=1e-10)
        perm = np.random.default_rng(0).permutation(len(z))
        permuted = model(collate([frame(cell, pos[perm], z[perm])]))
        torch.testing.assert_close(permuted["energy"], ref["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(permuted["forces"], ref["forces"][perm], rtol=1e-8, atol=1e-10)
        outside = pos + np.array([[2, -1, 0], [0, 0, 3]] + [[0, 0, 0]] * (len(z) - 2)) @ cell
        wrapped = model(collate([frame(cell, outside, z)]))
        torch.testing.assert_close(wrapped["energy"], ref["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(wrapped["stress"], ref["stress"], rtol=1e-8, atol=1e-10)

    def test_supercell_is_extensive(self):
        model = self.make()
        cell, pos, z = structure(3, 4)
        reps = np.array([(a, b, c) for a in range(2) for b in range(2) for c in range(1)])
        big_pos = (pos[None] + (reps @ cell)[:, None]).reshape(-1, 3)
        big_cell = cell * np.array([2, 2, 1])[:, None]
        small = model(collate([frame(cell, pos, z, k=16)], k=16))
        big = model(collate([frame(big_cell, big_pos, np.tile(z, 4), k=16)], k=16))
        torch.testing.assert_close(big["energy"], 4 * small["energy"], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(big["stress"], small["stress"], rtol=1e-7, atol=1e-9)

    def test_forces_and_stress_match_finite_differences(self):
        model = self.make()
        cell, pos, z = structure(4, 5)
        f = frame(cell, pos, z)
        out = model(collate([f]))
        h = 1e-5

        def energy(positions, c):
            g = dict(f, positions=positions, cell=c)  # same graph: shifts and next_distance
            return model(collate([g]), forces=False, stress=False)["energy"].item()

        fd = np.zeros_like(pos)
        for i in range(len(z)):
            for a in range(3):
                d = np.zeros_like(pos)
                d[i, a] = h
                fd[i, a] = -(energy(pos + d, cell) - energy(pos - d, cell)) / (2 * h)
        np.testing.assert_allclose(out["forces"].detach().numpy(), fd, rtol=1e-5, atol=1e-7)
        vol = abs(np.linalg.det(cell))
        fd_s = np.zeros((3, 3))
        for a in range(3):
            for b in range(3):
                eps = np.zeros((3, 3))
                eps[a, b] = eps[b, a] = h / 2 if a != b else h
                plus = energy(pos @ (np.eye(3) + eps), cell @ (np.eye(3) + eps))
                minus = energy(pos @ (np.eye(3) - eps), cell @ (np.eye(3) - eps))
                fd_s[a, b] = (plus - minus) / (2 * h) / vol
        np.testing.assert_allclose(out["stress"][0].detach().numpy(), fd_s, rtol=1e-5, atol=1e-8)

    def test_batch_independence(self):
        model = self.make()
        frames = [frame(*structure(s, n)) for s, n in ((5, 3), (6, 6), (7, 4))]
        alone = [model(collate([f])) for f in frames]
        together = model(collate(frames))
        torch.testing.assert_close(together["energy"], torch.cat([a["energy"] for a in alone]),
                                   rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(together["forces"], torch.cat([a["forces"] for a in alone]),
                                   rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(together["stress"], torch.cat([a["stress"] for a in alone]),
                                   rtol=1e-8, atol=1e-10)
        # no gradient leaks between frames: frame 0's energy does not depend on frame 1
        b = collate(frames)
        pos = b.positions.clone().requires_grad_(True)
        from dataclasses import replace
        e = model(replace(b, positions=pos), forces=False, stress=False)["energy"]
        (g,) = torch.autograd.grad(e[0], pos)
        assert torch.all(g[b.frame_index != 0] == 0)

    def test_float32_runs_and_agrees(self):
        model = self.make()
        cell, pos, z = structure(8, 5)
        b = collate([frame(cell, pos, z)])
        ref = model(b)
        m32 = model.to(torch.float32)
        out = m32(b.to(dtype=torch.float32))
        assert out["energy"].dtype == torch.float32
        torch.testing.assert_close(out["energy"].double(), ref["energy"], rtol=1e-4, atol=1e-4)

    def test_checkpoint_round_trip(self, tmp_path):
        model = self.make()
        b = collate([frame(*structure(9, 4))])
        save_model(model, tmp_path / "m.pt")
        again = load_model(tmp_path / "m.pt")
        torch.testing.assert_close(again(b)["energy"], model(b)["energy"])

    def test_rank_envelope_makes_swaps_smooth(self):
        """Atom 0 keeps k=1 neighbour; B overtakes A: energy continuous only with the envelope."""
        def path_energies(model):
            es = []
            for x in np.linspace(2.2, 1.8, 81):
                pos = np.array([[0, 0, 0], [2.0, 0, 0], [-x, 0.3, 0]])
                cell = np.eye(3) * 30
                g = knn_graph(cell, pos, pbc=False, k=1)
                b = collate([frame_from_graph(cell, pos, np.array([14, 8, 1]), g, pbc=(0, 0, 0))], k=1)
                es.append(model(b, forces=False, stress=False)["energy"].item())
            return np.abs(np.diff(es))

        def worst_jump(steps):
            """Largest step relative to the mean of its two neighbours (~1 if continuous)."""
            neighbours = 0.5 * (steps[:-2] + steps[2:]) + 1e-12
            return float(np.max(steps[1:-1] / neighbours))

        assert worst_jump(path_energies(self.make(rank_envelope=True))) < 3.0
        assert worst_jump(path_energies(self.make(rank_envelope=False))) > 10.0


class TestMacePreset(ModelHarness):
    preset = "mace"


class TestSevennetPreset(ModelHarness):
    preset = "sevennet"


class TestInvariantPreset(ModelHarness):
    preset = "invariant"


class TestMaceVariants(ModelHarness):
    """Other swappable blocks through the same physics checks."""
    preset = "mace"
    overrides = {"aggregation": "softmax", "message_weights": "radial+species+features",
                 "self_interaction": "tensor_square", "radial_basis": "gaussian",
                 "block_reduction": "mean", "readout": "linear"}


class TestInvariantSoftmax(ModelHarness):
    preset = "invariant"
    overrides = {"attention": "softmax", "bands": [2.5, 3.5, 4.5]}


def test_untrained_potential_predicts_the_reference_energies():
    model = build_model({"preset": "mace", **SMALL, "atomic_energies": {1: -1.0, 8: -2.5}}).double()
    cell, pos, _ = structure(11, 4)
    z = np.array([1, 8, 8, 1])
    out = model(collate([frame(cell, pos, z)]))
    torch.testing.assert_close(out["energy"], torch.tensor([-7.0], dtype=torch.float64), rtol=0, atol=1e-12)
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
    for prev, nxt in zip(blocks[:-1], blocks[1:]):
        assert prev.irreps_out == nxt.irreps_in
    from model.equivariant import check_chain
    from e3nn import o3
    with pytest.raises(ValueError, match="expects irreps"):
        check_chain("x", o3.Irreps("1x0e"), o3.Irreps("1x1o"))


@pytest.mark.usefixtures("float64")
class TestSymmetricContraction:
    """The product basis on its own: equivariant, channel by channel, degree = correlation."""

    def make(self, correlation=3, out="4x0e+4x1o"):
        from e3nn import o3
        from model.self_interaction import SymmetricContraction
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
        from model.self_interaction import from_channels, to_channels
        x = to_channels(a, 4, [0, 1, 2, 3])
        x2 = x.clone()
        x2[:, 1] += torch.randn_like(x2[:, 1])  # change channel 1 only
        y = to_channels(sc(a, species), 4, [0, 1])
        y2 = to_channels(sc(from_channels(x2, [0, 1, 2, 3]), species), 4, [0, 1])
        changed = (y2 - y).abs().amax(dim=(0, 2)) > 1e-12
        assert changed.tolist() == [False, True, False, False]

    def test_layout_round_trip_and_errors(self):
        from e3nn import o3
        from model.self_interaction import SymmetricContraction, from_channels, to_channels
        a = torch.randn(3, o3.Irreps("4x0e+4x1o+4x2e").dim)
        torch.testing.assert_close(from_channels(to_channels(a, 4, [0, 1, 2]), [0, 1, 2]), a)
        with pytest.raises(ValueError, match="natural-parity"):
            SymmetricContraction(o3.Irreps("4x0e+4x1e"), o3.Irreps("4x0e"), 2, 5)
        with pytest.raises(ValueError, match="not made of"):
            SymmetricContraction(o3.Irreps("4x0e+4x1o"), o3.Irreps("4x2e"), 2, 5)


COMPILE_SCRIPT = """
import sys, numpy as np, torch
torch.set_default_dtype(torch.float64)
from model import build_model
from preprocess.graph_reference import knn_graph_reference
from train.collate import collate, frame_from_graph
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
def test_torch_compile_matches_eager():
    """In a fresh process without numba: Inductor's CPU kernels crash next to numba's LLVM."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], cwd=root, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiled == eager" in proc.stdout
