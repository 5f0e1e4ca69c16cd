"""Checkpoint and model files carry a format version; files of the format before versions
(tests/data/format_v0/: best.pt and checkpoint.pt of a 2-step run of a 4-channel mace
model on the EMT sample, written by the code of commit 10fe920) still load, and give the
energies that code computed; a file of a newer version is refused in one line."""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ase.build import bulk

from orbitgraph.errors import InputError
from orbitgraph.model import build_model, load_model, model_metadata, save_model
from orbitgraph.model.checkpoint import (
    FORMAT_VERSION,
    projection_scales,
    read_checkpoint,
    upgrade_model_state,
    write_checkpoint,
)
from orbitgraph.model.embedding import NormalizedLinear
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.train.calculator import OrbitCalculator
from orbitgraph.train.checkpointing import upgrade_optimizer_state
from orbitgraph.train.collate import batch_from_structures
from orbitgraph.train.weights import load_potential

V0 = Path(__file__).parent / "data" / "format_v0"
# energies (eV) of the structure below, float64, computed by the code that wrote the files
# (OrbitCalculator.from_checkpoint; checkpoint.pt then gave its raw, non-EMA weights). That
# code built the potential in float32 before loading the weights, so its constants (E0,
# basis frequencies, Clebsch-Gordan buffers) were float32-rounded: its energies lie ~1e-9
# relative from today's float64 build, far below what a misread file would change.
V0_ENERGY = {"best.pt": (None, 0.37079479060939524),
             "checkpoint.pt": ("raw", 0.36995963041899993)}


def structure():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.symbols[0] = "Al"
    atoms.rattle(0.05, seed=1)
    return atoms


@pytest.mark.parametrize("name", sorted(V0_ENERGY))
def test_files_of_the_format_before_versions_load_and_give_the_same_energy(name):
    data = read_checkpoint(V0 / name)
    assert "format_version" not in data  # version 0
    weights, energy = V0_ENERGY[name]
    atoms = structure()
    atoms.calc = OrbitCalculator.from_checkpoint(V0 / name, weights=weights)
    assert atoms.get_potential_energy() == pytest.approx(energy, rel=1e-8)


def test_files_written_now_carry_the_version(tmp_path):
    model = build_model({"preset": "mace", "channels": 4, "layers": 1, "radial_mlp": [8],
                         "readout_mlp": [4], "species_dim": 4, "atomic_energies": {29: -3.0}})
    save_model(model, tmp_path / "model.pt", extra={"graph": {"k": 16}})
    assert read_checkpoint(tmp_path / "model.pt")["format_version"] == FORMAT_VERSION


def test_a_newer_format_is_refused_naming_the_version(tmp_path):
    write_checkpoint({"model_state": {"w": torch.zeros(1)}}, tmp_path / "new.pt")
    data = torch.load(tmp_path / "new.pt", weights_only=True)
    torch.save({**data, "format_version": FORMAT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(InputError, match=rf"new\.pt: checkpoint format version "
                                         rf"{FORMAT_VERSION + 1}; this orbitgraph reads "
                                         rf"versions 0 to {FORMAT_VERSION}"):
        read_checkpoint(tmp_path / "new.pt")


def format1_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` as the code of format 1 built it: each normalised projection an
    ``nn.Linear`` (y = W·x + b), with weights of its own (the test's format-1 model)."""
    old = copy.deepcopy(model)
    for name, module in list(old.named_modules()):
        if isinstance(module, NormalizedLinear):
            parent, _, attr = name.rpartition(".")
            linear = torch.nn.Linear(module.in_features, module.out_features,
                                     bias=module.bias is not None, dtype=torch.float64)
            setattr(old.get_submodule(parent), attr, linear)
    torch.manual_seed(3)
    with torch.no_grad():  # every weight nonzero (readouts start at zero): forces and stress
        for p in old.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return old


@pytest.mark.parametrize("preset", ["mace", "invariant"])
def test_a_format_1_file_predicts_what_its_code_did(tmp_path, preset):
    config = {"preset": preset, "species_dim": 6, "atomic_energies": {13: -3.0, 29: -4.0}}
    config.update({"channels": 4, "layers": 2, "radial_mlp": [8], "readout_mlp": [4]}
                  if preset == "mace" else {"hidden": 8, "layers": 1})
    torch.manual_seed(0)  # the initial weights (not the test order's random state)
    model = build_model(config, dtype=torch.float64)
    assert projection_scales(model)  # the model has projections to convert
    old = format1_copy(model)
    path = tmp_path / "format1.pt"
    torch.save({**model_metadata(old), "model_state": old.state_dict(), "graph": {"k": 16},
                "format_version": 1}, path)
    graph = GraphParams(k=16)
    batch = batch_from_structures([structure(), bulk("Al", "fcc", a=4.0) * (2, 1, 1)], graph)
    expected = old(batch, forces=True, stress=True)
    got = load_model(path)(batch, forces=True, stress=True)
    # comparisons that could fail: eV, eV/Å, and eV/Å³ (1e-5 eV/Å³ is 1.6 MPa)
    for key, floor in (("energy", 1e-3), ("forces", 1e-3), ("stress", 1e-5)):
        assert expected[key].abs().max() > floor, key
        torch.testing.assert_close(got[key], expected[key], rtol=1e-12, atol=1e-12)
    # the checkpoint loader's path (the calculator, evaluate, package) reads it as well
    saved = load_potential(path)
    torch.testing.assert_close(saved.model(batch)["energy"], expected["energy"],
                               rtol=1e-12, atol=0)


def test_a_format_1_runs_adam_moments_are_converted_with_its_weights():
    """Resuming a format-1 checkpoint.pt: with W₂ = W₁·c the next Adam step moves each
    projection weight W₂ by what the older code moved W₁ (the step in the normalised
    parametrisation), and every other weight exactly as the older code did."""
    model = build_model({"preset": "mace", "channels": 4, "layers": 1, "radial_mlp": [8],
                         "readout_mlp": [4], "species_dim": 6,
                         "atomic_energies": {13: -3.0, 29: -4.0}}, dtype=torch.float64)
    old = format1_copy(model)

    def step(potential, optimizer):
        batch = batch_from_structures([structure()], GraphParams(k=16))
        out = potential(batch, forces=True, stress=False, training=True)
        optimizer.zero_grad()
        ((out["energy"] ** 2).sum() + (out["forces"] ** 2).sum()).backward()
        optimizer.step()

    # eps, which enters the normalised weights' denominator c times larger, negligible
    old_optimizer = torch.optim.Adam(old.parameters(), lr=1e-3, eps=1e-30)
    for _ in range(2):  # moments of two steps, as a checkpoint holds them
        step(old, old_optimizer)
    model.load_state_dict(upgrade_model_state(model, old.state_dict(), 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-30)
    optimizer.load_state_dict(copy.deepcopy(old_optimizer.state_dict()))  # no shared moments
    upgrade_optimizer_state(SimpleNamespace(model=model, optimizer=optimizer))
    before_old, before = copy.deepcopy(old.state_dict()), copy.deepcopy(model.state_dict())
    step(old, old_optimizer)
    step(model, optimizer)
    scales = projection_scales(model)
    for name, value in model.state_dict().items():
        moved, moved_old = value - before[name], old.state_dict()[name] - before_old[name]
        if name in scales:
            assert moved_old.abs().max() > 1e-5, name
        # eps (1e-8) enters Adam's denominator c times larger: ~1e-6 relative
        torch.testing.assert_close(moved, moved_old, rtol=1e-9, atol=1e-15, msg=name)
