"""Checkpoint and model files carry a format version; files of the format before versions
(tests/data/format_v0/: best.pt and checkpoint.pt of a 2-step run of a 4-channel mace
model on the EMT sample, written by the code of commit 10fe920) still load, and give the
energies that code computed; a file of a newer version is refused in one line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ase.build import bulk

from orbitgraph.errors import InputError
from orbitgraph.model import build_model, save_model
from orbitgraph.model.checkpoint import FORMAT_VERSION, read_checkpoint, write_checkpoint
from orbitgraph.train.calculator import OrbitCalculator

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
