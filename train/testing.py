"""The physics harness for potentials: subclass :class:`PotentialTests` per model and variant.

Every check evaluates the model the way users do: the structure's k-NN graph is built from
its positions and cell (and, for a variant that filters at load time, built larger and
filtered), collated, and evaluated in float64. Finite differences rebuild the graph at
every displaced or strained geometry, so they test the function a user's MD or relaxation
sees, including the rank envelope's d_{k+1}.

Shipped with the package (``from orbitgraph.train.testing import PotentialTests``), so that
someone adding a block checks it the way the presets are: make the block selectable by a
model setting (an entry in its module's registry, e.g.
:data:`orbitgraph.model.self_interaction.SELF_INTERACTIONS`, which the config's
:data:`orbitgraph.model.config.CHOICES` reads), then subclass the harness in a test file with
the preset it slots into and the settings that select it (pytest collects every ``test_*``
method of the subclass)::

    from orbitgraph.train.testing import PotentialTests

    class TestMyBlock(PotentialTests):
        preset = "mace"
        overrides = {"self_interaction": "my_block"}

``tests/test_model.py`` does this for every preset and variant. The harness builds graphs
with :mod:`orbitgraph.preprocess.graph` and batches and the ASE calculator with
:mod:`orbitgraph.train`, so it lives in ``train/`` (the room that may import the others;
``orbitgraph.model`` imports neither of them).

Checks: rotation equivariance; translation, permutation and wrapping invariance; supercell
extensivity; forces and stress against central finite differences with rebuilt graphs
(relative 1e-6) and through :class:`OrbitCalculator` against ASE's finite differences;
a symmetric finite-difference Hessian; energy continuity across the two kinds of rank swap
and the tie-tolerance boundary; left-handed cells; batch independence; float32;
checkpoints.
"""
from __future__ import annotations

from dataclasses import replace
from itertools import chain

import numpy as np
import pytest
import torch

from orbitgraph.model import Potential, build_model, load_model, save_model
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.train.collate import (
    collate,
    collate_columns,
    frame_from_structure,
    frames_to_block,
)

SMALL = {"channels": 8, "hidden": 16, "species_dim": 8, "radial_mlp": [16], "layers": 2,
         "readout_mlp": [8], "final_mlp": [16]}
E0 = {1: -1.0, 8: -2.0, 14: -3.0, 26: -4.0}


def central_difference_forces(energy, positions: np.ndarray, h: float) -> np.ndarray:
    """Forces -dE/dr (N, 3) by central differences of ``energy(positions) -> float`` (eV)
    with steps of ``h`` Å along each Cartesian component."""
    fd = np.zeros_like(positions)
    for i in range(len(positions)):
        for a in range(3):
            d = np.zeros_like(positions)
            d[i, a] = h
            fd[i, a] = -(energy(positions + d) - energy(positions - d)) / (2 * h)
    return fd


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A proper rotation matrix (3, 3)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def structure(seed: int, n: int = 5):
    """A small rattled triclinic crystal: cell (3, 3) Å, positions (n, 3) Å, numbers (n,)."""
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * 3.6 + rng.normal(0, 0.3, (3, 3))
    m = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    frac = (grid + 0.5 + rng.uniform(-0.15, 0.15, (n, 3))) / m
    cell = cell * (n / 4) ** (1 / 3)
    numbers = rng.choice(sorted(E0), n)
    return cell, frac @ cell, numbers


def randomise(model: Potential) -> Potential:
    """Random, not small, scale/shift and readouts (readouts start at zero so that an
    untrained potential predicts Σ E0): every part of the energy is exercised."""
    with torch.no_grad():
        model.scale_shift.scale.uniform_(0.5, 1.5)
        model.scale_shift.shift.uniform_(-0.5, 0.5)
        for p in model.parameters():
            if p.numel() and not p.any():
                p.normal_(0.0, 0.3)
    return model


def worst_jump(energies) -> float:
    """Largest step of a finely sampled path relative to the mean of its two neighbouring
    steps: about 1 where the energy is continuous, large at a jump."""
    steps = np.abs(np.diff(np.asarray(energies)))
    neighbours = 0.5 * (steps[:-2] + steps[2:]) + 1e-12
    return float(np.max(steps[1:-1] / neighbours))


class PotentialTests:
    """Physics checks of one model configuration, evaluated through the user's path.

    Class attributes: ``preset`` and ``overrides`` (the model config), ``graph`` (the graph
    the model sees), ``filtered_from`` (if set, graphs are built with these parameters
    and filtered to ``graph`` at load time, as the loader does) and ``energy_scale`` (so
    that forces are large enough for a 1e-6 relative finite-difference check).
    """

    preset: str = "mace"
    overrides: dict = {}
    graph: GraphParams = GraphParams(k=8, tie_tolerance=0.5)  # serves the adaptive envelope
    filtered_from: GraphParams | None = None
    energy_scale: float = 1.0  # multiplies the random scale, for networks with small outputs

    # ------------------------------------------------------------------ setup and path
    def setup_method(self, method=None):
        self._dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def teardown_method(self, method=None):
        torch.set_default_dtype(self._dtype)

    def make(self, **kw) -> Potential:
        torch.manual_seed(0)
        cfg = {"preset": self.preset, **SMALL, **self.overrides, **kw, "atomic_energies": E0}
        model = randomise(build_model(cfg)).double()
        with torch.no_grad():
            model.scale_shift.scale.mul_(self.energy_scale)
        return model

    def frame(self, cell, positions, numbers, pbc=(True, True, True), graph=None) -> dict:
        """The frame a user's model sees: graph built from these positions and this cell."""
        built_with = self.filtered_from if graph is None else None
        return frame_from_structure(cell, positions, numbers, graph or self.graph, pbc=pbc,
                                    built_with=built_with)

    def batch(self, frames, graph=None):
        return collate(frames, k=(graph or self.graph).k)

    def evaluate(self, model, cell, positions, numbers, pbc=(True, True, True), forces=True,
                 stress=True, graph=None) -> dict:
        b = self.batch([self.frame(cell, positions, numbers, pbc, graph)], graph)
        return model(b, forces=forces, stress=stress and all(pbc))

    def energy(self, model, cell, positions, numbers, pbc=(True, True, True), graph=None) -> float:
        return self.evaluate(model, cell, positions, numbers, pbc, False, False, graph)[
            "energy"].item()

    def rattled(self, seed: int = 4, n: int = 8):
        """A rattled crystal in which many edges lie within the envelope width of d_{k+1}."""
        cell, pos, z = structure(seed, n)
        pos = pos + np.random.default_rng(seed + 100).normal(0, 0.1, pos.shape)
        return cell, pos, z

    # -------------------------------------------------------------- symmetry and invariance
    def test_rotation_equivariance(self):
        model = self.make()
        cell, pos, z = structure(1, 6)
        rot = random_rotation(np.random.default_rng(3))
        a = self.evaluate(model, cell, pos, z)
        b = self.evaluate(model, cell @ rot.T, pos @ rot.T, z)
        torch.testing.assert_close(b["energy"], a["energy"], rtol=1e-10, atol=1e-10)
        R = torch.tensor(rot)
        torch.testing.assert_close(b["forces"], a["forces"] @ R.T, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(b["stress"][0], R @ a["stress"][0] @ R.T, rtol=1e-8, atol=1e-10)

    def test_translation_permutation_wrapping(self):
        model = self.make()
        cell, pos, z = structure(2, 7)
        ref = self.evaluate(model, cell, pos, z)
        moved = self.evaluate(model, cell, pos + np.array([1.3, -7.1, 0.4]), z)
        torch.testing.assert_close(moved["energy"], ref["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(moved["forces"], ref["forces"], rtol=1e-8, atol=1e-10)
        perm = np.random.default_rng(0).permutation(len(z))
        permuted = self.evaluate(model, cell, pos[perm], z[perm])
        torch.testing.assert_close(permuted["energy"], ref["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(permuted["forces"], ref["forces"][perm], rtol=1e-8, atol=1e-10)
        outside = pos + np.array([[2, -1, 0], [0, 0, 3]] + [[0, 0, 0]] * (len(z) - 2)) @ cell
        wrapped = self.evaluate(model, cell, outside, z)
        torch.testing.assert_close(wrapped["energy"], ref["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(wrapped["forces"], ref["forces"], rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(wrapped["stress"], ref["stress"], rtol=1e-8, atol=1e-10)

    def test_supercell_is_extensive(self):
        model = self.make()
        cell, pos, z = structure(3, 4)
        reps = np.array([(a, b, c) for a in range(2) for b in range(2) for c in range(1)])
        big_pos = (pos[None] + (reps @ cell)[:, None]).reshape(-1, 3)
        big_cell = cell * np.array([2, 2, 1])[:, None]
        small = self.evaluate(model, cell, pos, z)
        big = self.evaluate(model, big_cell, big_pos, np.tile(z, 4))
        torch.testing.assert_close(big["energy"], 4 * small["energy"], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(big["forces"], small["forces"].repeat(4, 1), rtol=1e-7,
                                   atol=1e-9)
        torch.testing.assert_close(big["stress"], small["stress"], rtol=1e-7, atol=1e-9)

    def test_left_handed_cell(self):
        """A left-handed cell is the same crystal: swapping two lattice vectors (det < 0)
        changes nothing; a mirror image gives the same energy, mirrored forces and stress."""
        model = self.make()
        cell, pos, z = self.rattled(5, 6)
        assert np.linalg.det(cell) > 0
        ref = self.evaluate(model, cell, pos, z)
        swapped = self.evaluate(model, cell[[1, 0, 2]], pos, z)
        torch.testing.assert_close(swapped["energy"], ref["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(swapped["forces"], ref["forces"], rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(swapped["stress"], ref["stress"], rtol=1e-8, atol=1e-10)
        mirror = np.diag([1.0, 1.0, -1.0])
        assert np.linalg.det(cell @ mirror) < 0
        mirrored = self.evaluate(model, cell @ mirror, pos @ mirror, z)
        M = torch.tensor(mirror)
        torch.testing.assert_close(mirrored["energy"], ref["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(mirrored["forces"], ref["forces"] @ M, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(mirrored["stress"][0], M @ ref["stress"][0] @ M, rtol=1e-8,
                                   atol=1e-10)

    # ----------------------------------------------------- derivatives of the user's energy
    def _envelope_share(self, model, cell, pos) -> float:
        """Fraction of edges strictly inside the rank envelope's ramp (0 < w < 1)."""
        from orbitgraph.model.geometry import edge_vectors
        from orbitgraph.model.radial import AdaptiveRankEnvelope, rank_reference_distance
        envelope = model.network.envelope.rank_envelope
        if envelope is None:
            return 1.0
        b = self.batch([self.frame(cell, pos, np.ones(len(pos), dtype=int))])
        r = torch.linalg.norm(edge_vectors(b.positions, b.cell, b), dim=-1)
        if isinstance(envelope, AdaptiveRankEnvelope):
            w = envelope(r, b.centers, len(pos), b.k)
        else:
            w = envelope(r, rank_reference_distance(b.positions, b.cell, b.batch,
                                                    b.rank_neighbor, b.rank_unit_shift)[b.centers])
        return float(((w > 0) & (w < 1)).double().mean())

    def test_forces_and_stress_are_derivatives_of_the_rebuilt_graph_energy(self):
        """Central finite differences of the energy with the graph rebuilt at every displaced
        position and strained cell agree with autograd to 1e-6 relative (float64)."""
        model = self.make()
        cell, pos, z = self.rattled()
        assert self._envelope_share(model, cell, pos) > 0.1  # many edges in the ramp
        out = self.evaluate(model, cell, pos, z)
        h = 1e-5
        fd = central_difference_forces(lambda p: self.energy(model, cell, p, z), pos, h)
        forces = out["forces"].detach().numpy()
        scale = np.abs(fd).max()
        assert scale > 1e-3, "forces too small to test"
        np.testing.assert_allclose(forces, fd, rtol=0, atol=1e-6 * scale)
        vol = abs(np.linalg.det(cell))
        fd_s = np.zeros((3, 3))
        for a in range(3):
            for b in range(3):
                eps = np.zeros((3, 3))
                eps[a, b] = eps[b, a] = h / 2 if a != b else h
                plus = self.energy(model, cell @ (np.eye(3) + eps), pos @ (np.eye(3) + eps), z)
                minus = self.energy(model, cell @ (np.eye(3) - eps), pos @ (np.eye(3) - eps), z)
                fd_s[a, b] = (plus - minus) / (2 * h) / vol
        stress = out["stress"][0].detach().numpy()
        np.testing.assert_allclose(stress, fd_s, rtol=0, atol=1e-6 * np.abs(fd_s).max())

    def test_forces_match_finite_differences_on_a_fixed_graph(self):
        """The same graph (edges and the (k+1)-th candidates) held at displaced positions:
        the model's own derivative, without graph changes (the rebuilt-graph test above is
        the one that checks what users evaluate)."""
        model = self.make()
        cell, pos, z = structure(4, 5)
        f = self.frame(cell, pos, z)
        out = model(self.batch([f]))
        h = 1e-5
        fd = central_difference_forces(
            lambda p: model(self.batch([dict(f, positions=p)]), forces=False,
                            stress=False)["energy"].item(), pos, h)
        np.testing.assert_allclose(out["forces"].detach().numpy(), fd, rtol=1e-5, atol=1e-7)

    def test_calculator_matches_ase_finite_differences(self):
        """Through :class:`OrbitCalculator` (what MD and relaxations call), forces and stress
        equal ASE's numerical derivatives of the calculator's own energy."""
        from ase import Atoms
        from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

        from orbitgraph.train.calculator import OrbitCalculator
        if self.filtered_from is not None:
            pytest.skip("the calculator builds the model's graph directly, not a filtered one: "
                        "filtering is covered by the checks that evaluate frames")
        model = self.make()
        cell, pos, z = self.rattled(6, 5)
        atoms = Atoms(numbers=z, positions=pos, cell=cell, pbc=True)
        atoms.calc = OrbitCalculator(model, self.graph)
        forces, stress = atoms.get_forces(), atoms.get_stress()
        num_f = calculate_numerical_forces(atoms, eps=1e-5)
        num_s = calculate_numerical_stress(atoms, eps=1e-6)
        np.testing.assert_allclose(forces, num_f, rtol=0, atol=1e-6 * np.abs(num_f).max())
        np.testing.assert_allclose(stress, num_s, rtol=0, atol=1e-5 * np.abs(num_s).max())

    def test_hessian_is_symmetric(self):
        """The finite-difference Hessian of the calculator's forces (graph rebuilt) is
        symmetric to 1e-6 relative: a conservative potential, usable for phonons."""
        model = self.make()
        cell, pos, z = self.rattled(7, 4)
        h = 1e-5
        n = 3 * len(z)
        hess = np.zeros((n, n))
        for c in range(n):
            d = np.zeros(n)
            d[c] = h
            fp = self.evaluate(model, cell, pos + d.reshape(-1, 3), z, stress=False)["forces"]
            fm = self.evaluate(model, cell, pos - d.reshape(-1, 3), z, stress=False)["forces"]
            hess[c] = -(fp - fm).detach().numpy().ravel() / (2 * h)
        asym = np.linalg.norm(hess - hess.T) / np.linalg.norm(hess)
        assert asym < 1e-6, asym

    # ------------------------------------------------------------------- continuity
    def _path(self, model, points, numbers=(14, 8, 1)) -> list[float]:
        """Energies of small molecules (positions (n, 3) Å per point) in a large open box,
        graphs with k = 1 and the harness's tie rule."""
        numbers = np.asarray(numbers)
        graph = self.graph.model_copy(update={"k": 1})
        cell = np.eye(3) * 30.0
        return [self.energy(model, cell, p, numbers, pbc=(False, False, False), graph=graph)
                for p in points]

    def test_energy_is_continuous_across_rank_swaps(self):
        """k = 1. (a) B overtakes A as the nearest neighbour of atom 0 (k-th and (k+1)-th
        swap); (b) the (k+1)-th and (k+2)-th candidates of atom 0 swap, changing which atom
        d_{k+1} follows; (c) B crosses the tie tolerance of A (it enters or leaves the
        graph)."""
        if self.filtered_from is not None:
            pytest.skip("molecules are built directly, not filtered: the filtered graph's "
                        "continuity is covered by the other checks")
        model = self.make()
        xs = np.linspace(2.2, 1.8, 41)
        swap_k = [np.array([[0, 0, 0], [2.0, 0, 0], [-x, 0.3, 0]]) for x in xs]
        # A kept at 1.7 Å (inside the envelope's ramp); C passes B at ~2.0 Å
        swap_k1 = [np.array([[0, 0, 0], [0, 1.7, 0], [2.0, 0, 0.1], [0, -x, 0]]) for x in xs]
        tol = self.graph.tie_tolerance
        ds = 2.0 + tol + np.linspace(-3e-3, 3e-3, 31)
        tie = [np.array([[0, 0, 0], [2.0, 0, 0], [-d, 0, 0]]) for d in ds]
        with_envelope = model.config.rank_envelope != "none"
        jumps = (worst_jump(self._path(model, swap_k)),
                 worst_jump(self._path(model, swap_k1, numbers=np.array([14, 8, 1, 8]))),
                 worst_jump(self._path(model, tie)))
        if with_envelope:
            assert max(jumps) < 3.0, jumps
        else:  # the check can fail: without the envelope a swap is a jump of the energy
            assert jumps[0] > 10.0 and jumps[2] > 10.0 and jumps[1] < 3.0, jumps

    # ---------------------------------------------------------------- batches and dtypes
    def test_batch_independence(self):
        model = self.make()
        frames = [self.frame(*structure(s, n)) for s, n in ((5, 3), (6, 6), (7, 4))]
        alone = [model(self.batch([f])) for f in frames]
        together = model(self.batch(frames))
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(together[key], torch.cat([a[key] for a in alone]),
                                       rtol=1e-8, atol=1e-10)
        # no gradient leaks between frames: frame 0's energy does not depend on frame 1
        b = self.batch(frames)
        pos = b.positions.clone().requires_grad_(True)
        e = model(replace(b, positions=pos), forces=False, stress=False)["energy"]
        (g,) = torch.autograd.grad(e[0], pos)
        assert torch.all(g[b.batch != 0] == 0)

    def test_float32_runs_and_agrees(self):
        model = self.make()
        cell, pos, z = structure(8, 5)
        b = self.batch([self.frame(cell, pos, z)])
        ref = model(b)
        out = model.to(torch.float32)(b.to(dtype=torch.float32))
        assert out["energy"].dtype == torch.float32
        torch.testing.assert_close(out["energy"].double(), ref["energy"], rtol=1e-4, atol=1e-4)

    def test_checkpoint_round_trip(self, tmp_path):
        """Saved, then loaded where torch's default dtype is float32 (a user's process):
        every parameter and buffer, and the energy and forces, bit for bit."""
        model = self.make()
        b = self.batch([self.frame(*structure(9, 4))])
        save_model(model, tmp_path / "m.pt")
        torch.set_default_dtype(torch.float32)  # teardown_method restores it
        again = load_model(tmp_path / "m.pt")
        loaded = dict(chain(again.named_parameters(), again.named_buffers()))
        for name, t in chain(model.named_parameters(), model.named_buffers()):
            assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
        out, ref = again(b), model(b)
        assert torch.equal(out["energy"], ref["energy"])
        assert torch.equal(out["forces"], ref["forces"])

    def test_empty_batch_runs_forward_and_backward(self):
        """A DDP rank that ran out of data still takes the step: zero frames, zero atoms."""
        model = self.make()
        fields = self.frame(*structure(9, 4))
        block = {name: value[:0] for name, value in frames_to_block([fields]).items()}
        b = collate_columns(block, k=self.graph.k)
        out = model(b, training=True)
        loss = out["energy"].sum() + out["forces"].sum() + out["stress"].sum()
        loss.backward()
        assert out["energy"].shape == (0,) and out["forces"].shape == (0, 3)
