"""torch-sim drives orbitgraph potentials: per system as the ASE calculator, forces and
stress as derivatives (graphs rebuilt), the stress sign torch-sim expects, and MD and
relaxations of a batch of 8 systems of different sizes on the CPU."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch_sim as ts
from ase import Atoms
from torch_sim.models.interface import validate_model_outputs

from orbitgraph.model import build_model
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.train.calculator import OrbitCalculator
from orbitgraph.train.testing import E0, SMALL, randomise, structure
from orbitgraph.train.torchsim import OrbitModel

CPU = torch.device("cpu")
GRAPH = GraphParams(k=8, tie_tolerance=0.5)
SIZES = (2, 3, 4, 5, 6, 7, 9, 12)


@pytest.fixture(scope="module")
def potential():
    torch.manual_seed(0)
    return randomise(build_model({"preset": "mace", **SMALL, "layers": 1,
                                  "atomic_energies": E0})).double()


@pytest.fixture(scope="module")
def model(potential) -> OrbitModel:
    return OrbitModel(potential, GRAPH)


def systems(sizes=SIZES, seed: int = 10) -> list[Atoms]:
    """Rattled triclinic crystals of H, O, Si and Fe, one per size."""
    return [Atoms(numbers=z, positions=p, cell=c, pbc=True)
            for c, p, z in (structure(seed + i, n) for i, n in enumerate(sizes))]


def state_of(atoms: list[Atoms]) -> ts.SimState:
    return ts.io.atoms_to_state(atoms, CPU, torch.float64)


def test_the_interface_contract(model):
    validate_model_outputs(model, CPU, torch.float64)  # torch-sim's own checks
    assert model.memory_scales_with == "n_atoms"


def test_each_system_as_the_ase_calculator(potential, model):
    """Energies, forces and stresses of a batched state equal OrbitCalculator's on each
    system alone (float64, 1e-10 relative); torch-sim's column-vector cell is converted."""
    atoms = systems()
    state = state_of(atoms)
    assert not torch.equal(state.cell, state.row_vector_cell)
    out = model(state)
    calc = OrbitCalculator(potential, GRAPH)
    for b, a in enumerate(atoms):
        a = a.copy()
        a.calc = calc
        mine = state.system_idx == b
        np.testing.assert_allclose(out["energy"][b].item(), a.get_potential_energy(),
                                   rtol=1e-10)
        forces = a.get_forces()
        np.testing.assert_allclose(out["forces"][mine].numpy(), forces, rtol=0,
                                   atol=1e-10 * np.abs(forces).max())
        stress = a.get_stress(voigt=False)
        np.testing.assert_allclose(out["stress"][b].numpy(), stress, rtol=0,
                                   atol=1e-10 * np.abs(stress).max())


def test_forces_and_stress_are_finite_differences_of_the_energy(model):
    """Central differences of the batched energies, every graph rebuilt at each displaced
    position and strained cell, against the model's forces and stress (ASE's sign: σ =
    (1/V) ∂E/∂ε, as torch-sim takes it) to 1e-6 relative."""
    atoms = systems((3, 5), seed=40)
    for a in atoms:
        a.positions += np.random.default_rng(1).normal(0, 0.1, a.positions.shape)
    state = state_of(atoms)
    out = model(state)

    def energies(images: list[Atoms]) -> np.ndarray:
        return model(state_of(images))["energy"].numpy()

    def moved(b: int, i: int, c: int, step: float) -> list[Atoms]:
        images = [a.copy() for a in atoms]
        images[b].positions[i, c] += step
        return images

    def strained(eps: np.ndarray) -> list[Atoms]:
        images = [a.copy() for a in atoms]
        for a in images:
            a.set_cell(a.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        return images

    h = 1e-5
    for b, a in enumerate(atoms):
        fd = np.array([[-(energies(moved(b, i, c, h))[b] - energies(moved(b, i, c, -h))[b])
                        / (2 * h) for c in range(3)] for i in range(len(a))])
        assert np.abs(fd).max() > 1e-3
        np.testing.assert_allclose(out["forces"][state.system_idx == b].numpy(), fd, rtol=0,
                                   atol=1e-6 * np.abs(fd).max())
    fd_s = np.zeros((len(atoms), 3, 3))
    for c in range(3):
        for d in range(c, 3):
            eps = np.zeros((3, 3))
            eps[c, d] = eps[d, c] = h / 2 if c != d else h
            fd_s[:, c, d] = fd_s[:, d, c] = (energies(strained(eps))
                                             - energies(strained(-eps))) / (2 * h)
    fd_s /= np.array([a.get_volume() for a in atoms])[:, None, None]
    for b in range(len(atoms)):
        assert np.abs(fd_s[b]).max() > 1e-5
        np.testing.assert_allclose(out["stress"][b].numpy(), fd_s[b], rtol=0,
                                   atol=1e-6 * np.abs(fd_s[b]).max())


def total_energy(state) -> torch.Tensor:
    """(B,) eV: potential plus kinetic energy of each system."""
    return state.energy + ts.calc_kinetic_energy(momenta=state.momenta, masses=state.masses,
                                                 system_idx=state.system_idx)


def test_nve_conserves_each_systems_energy(model):
    """Velocity Verlet on 8 systems at once: each system's total energy stays within 1 % of
    its kinetic energy over 30 steps of 1 fs (forces that were not -dE/dr would not)."""
    start = ts.integrate(systems(), model, integrator=ts.nve, n_steps=1, temperature=300,
                         timestep=0.001, seed=1)
    e0 = total_energy(start)
    kinetic = e0 - start.energy
    end = ts.integrate(start, model, integrator=ts.nve, n_steps=30, temperature=300,
                       timestep=0.001)
    assert end.n_systems == 8 and torch.all(kinetic > 0)
    assert not torch.equal(end.positions, start.positions)
    drift = (total_energy(end) - e0).abs()
    assert torch.all(drift < 0.01 * kinetic), (drift / kinetic).tolist()


def test_nvt_langevin_holds_the_temperature(model):
    atoms = systems()
    end = ts.integrate(atoms, model, integrator=ts.nvt_langevin, n_steps=30, temperature=1000,
                       timestep=0.001, seed=2)
    kT = ts.calc_kT(momenta=end.momenta, masses=end.masses)  # all 48 atoms together
    temperature = kT.item() / ts.units.MetalUnits.temperature
    assert 500 < temperature < 1500, temperature
    assert end.n_systems == len(atoms) and torch.isfinite(end.positions).all()


def test_fire_with_the_cell_relaxes_every_system(model):
    """FIRE on positions and cell (torch-sim's Fréchet cell filter): every system's energy
    drops and the largest force with it, and in the first steps each cell grows where the
    stress is compressive (σ < 0, ASE's sign) and shrinks where it is tensile: the sign
    torch-sim expects."""
    atoms = systems()
    state = state_of(atoms)
    before = model(state)
    pressure_sign = torch.sign(torch.diagonal(before["stress"], dim1=1, dim2=2).sum(-1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Optimize has reached max steps"
        first = ts.optimize(atoms, model, optimizer=ts.frechet_cell_fire, max_steps=5,
                            steps_between_swaps=5)
    assert torch.equal(torch.sign(first.volume - state.volume), -pressure_sign)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        relaxed = ts.optimize(atoms, model, optimizer=ts.frechet_cell_fire, max_steps=40,
                              convergence_fn=ts.generate_energy_convergence_fn(1e-6))
    after = model(relaxed)
    assert relaxed.n_systems == len(atoms)
    assert torch.all(after["energy"] < before["energy"]), \
        (after["energy"] - before["energy"]).tolist()
    assert after["forces"].norm(dim=1).max() < before["forces"].norm(dim=1).max()


def test_an_open_system_has_no_stress(potential):
    molecule = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]],
                     cell=np.eye(3) * 10, pbc=False)
    with pytest.raises(ValueError, match="compute_stress=False"):
        OrbitModel(potential, GRAPH)(state_of([molecule]))
    out = OrbitModel(potential, GRAPH, compute_stress=False)(state_of([molecule]))
    assert set(out) == {"energy", "forces"}
    calc = OrbitCalculator(potential, GRAPH)
    molecule.calc = calc
    np.testing.assert_allclose(out["forces"].numpy(), molecule.get_forces(), rtol=0,
                               atol=1e-12)
