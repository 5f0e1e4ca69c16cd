"""A model file that travels and an exported program: ``orbitgraph package``.

The model file loads with ``torch.load(weights_only=True)`` and through
``orbitgraph.load_model`` without the training code; the torch.export program gives the
eager model's energy, forces and stress on structures of sizes other than the export
example's; the ASE calculator and the torch-sim model load either file."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ase import Atoms

from orbitgraph.errors import ConfigError, InputError
from orbitgraph.model import build_model, load_model, save_model
from orbitgraph.model.program import ExportedPotential
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.train.calculator import OrbitCalculator
from orbitgraph.train.cli import main
from orbitgraph.train.collate import batch_from_structures
from orbitgraph.train.package import package_model
from orbitgraph.train.testing import E0, SMALL, randomise, structure

GRAPH = GraphParams(k=8, tie_tolerance=0.5)
ELEMENTS = ["H", "O", "Si", "Fe"]  # those of E0 and of train.testing.structure
# the dataset records the trainer writes for a run on two stores: r2scan's E0s sit these
# eV/atom above the model's (pbe's)
DATASETS = [{"name": "pbe", "store_id": "s1", "weight": 0.6, "e0_shift": {}},
            {"name": "r2scan", "store_id": "s2", "weight": 0.4,
             "e0_shift": {1: 0.25, 8: -0.4, 14: 1.5}}]


def tiny(dtype: torch.dtype = torch.float64, **overrides):
    torch.manual_seed(0)
    return randomise(build_model({"preset": "mace", **SMALL, "layers": 1,
                                  "atomic_energies": E0, **overrides}, dtype=dtype)).eval()


@pytest.fixture(scope="module")
def potential():
    return tiny(pair_repulsion=True)  # ZBL too: every part of the energy is exported


@pytest.fixture(scope="module")
def files(potential, tmp_path_factory):
    """best.pt as the trainer writes it, packaged into model.pt and model.pt2 (one export
    for the module: ~10-30 s on 2 cores)."""
    tmp = tmp_path_factory.mktemp("package")
    save_model(potential, tmp / "best.pt", extra={"graph": GRAPH.to_dict(), "step": 7,
                                                  "trained_elements": ELEMENTS,
                                                  "weights": "ema",
                                                  "datasets": DATASETS})
    done = package_model(tmp / "best.pt", tmp / "model.pt", program=tmp / "model.pt2")
    assert done.program_difference is not None and done.program_difference <= 1e-12
    return tmp


def batch_of(sizes, seed=20, graph=GRAPH):
    """Triclinic rattled crystals of H, O, Si and Fe of the given sizes, as one batch."""
    return batch_from_structures([structure(seed + i, n) for i, n in enumerate(sizes)], graph)


def assert_same(got: dict, want: dict, rtol: float) -> None:
    for key in ("energy", "forces", "stress"):
        scale = float(want[key].abs().max().clamp(min=1e-12))
        assert float((got[key] - want[key]).abs().max()) <= rtol * scale, key


def test_the_model_file_is_plain_data_with_everything_a_user_needs(files, potential):
    data = torch.load(files / "model.pt", weights_only=True)  # no pickled classes
    assert data["format_version"] == 2  # the normalised species projections
    assert data["dtype"] == "float64"
    assert data["weights"] == "ema" and data["step"] == 7
    assert data["atomic_energies"] == E0  # eV per element, float64 exactly
    assert data["units"]["energy"] == "eV" and data["units"]["stress"].startswith("eV/Å³")
    assert data["graph"] == GRAPH.to_dict() and isinstance(data["model_config"], dict)
    assert data["trained_elements"] == ELEMENTS
    for key, value in potential.state_dict().items():  # bit for bit
        assert torch.equal(data["model_state"][key], value), key


def test_load_model_rebuilds_either_file_without_the_training_code(files, potential):
    """In a fresh process whose ``orbitgraph.train`` cannot be imported, both files load
    through ``orbitgraph.load_model`` and give the eager model's energy."""
    batch = batch_of((3, 5))
    fields = {name: getattr(batch, name) for name in (
        "numbers", "positions", "cell", "batch", "n_atoms", "centers", "neighbors",
        "unit_shifts", "rank_neighbor", "rank_unit_shift")}
    torch.save({**fields, "k": batch.k}, files / "batch.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["orbitgraph.train"] = None  # any import of it raises ImportError
        import torch, orbitgraph
        from orbitgraph.model.batch import Batch
        batch = Batch(**torch.load({str(files / "batch.pt")!r}, weights_only=True))
        for name in ("model.pt", "model.pt2"):
            model = orbitgraph.load_model({str(files)!r} + "/" + name)
            print(type(model).__name__, repr(model(batch)["energy"].tolist()))
        assert not [m for m in sys.modules if m.startswith("orbitgraph.train.")]
        """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert run.returncode == 0, run.stderr
    want = potential(batch)["energy"].tolist()
    lines = run.stdout.split("\n")
    assert lines[0] == f"Potential {want!r}"
    assert lines[1] == f"ExportedPotential {want!r}"


def test_the_program_gives_the_eager_energy_forces_and_stress_at_other_sizes(
        files, potential):
    """Export example: 2 frames of 4 and 6 atoms; here 1 to 7 atoms, 1 to 3 frames, in
    triclinic cells (and a cubic one), float64: equal to 1e-12 relative (the same
    operations on the same numbers: equal to the last bit on the CPU)."""
    program = load_model(files / "model.pt2")
    assert isinstance(program, ExportedPotential) and program.k == GRAPH.k
    cubic = batch_from_structures([(np.eye(3) * 3.0, np.array([[0.1, 0.2, 0.3],
                                                               [1.6, 1.4, 1.5]]), [14, 8])],
                                  GRAPH)
    for batch in (batch_of((1,)), batch_of((2, 7)), batch_of((5, 3, 1), seed=40), cubic):
        assert_same(program(batch), potential(batch), rtol=1e-12)


def test_calculator_and_torchsim_load_either_file(files, potential):
    import torch_sim as ts

    from orbitgraph.train.torchsim import OrbitModel

    cell, positions, numbers = structure(50, 6)
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    calcs = (OrbitCalculator(potential, GRAPH), OrbitCalculator(files / "model.pt"),
             OrbitCalculator(str(files / "model.pt2")))
    results = []
    for calc in calcs:
        atoms.calc = calc
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    for energy, forces, stress in results[1:]:
        assert abs(energy - results[0][0]) <= 1e-12 * abs(results[0][0])
        np.testing.assert_allclose(forces, results[0][1], rtol=0, atol=1e-12)
        np.testing.assert_allclose(stress, results[0][2], rtol=0, atol=1e-12)
    assert calcs[2].weights == f"EMA weights exported to {files / 'model.pt2'}"
    assert calcs[1].known_elements == calcs[2].known_elements == sorted(ELEMENTS)

    systems = [Atoms(numbers=z, positions=p, cell=c, pbc=True)
               for c, p, z in (structure(60 + i, n) for i, n in enumerate((3, 8)))]
    state = ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64)
    want = OrbitModel(potential, GRAPH)(state)  # float64 on the CPU already: not changed
    for path in (files / "model.pt", files / "model.pt2"):
        assert_same(OrbitModel.from_checkpoint(path)(state), want, rtol=1e-12)


def test_packaged_files_predict_on_each_dataset_reference_as_the_checkpoint(files):
    """A model trained on two datasets: its model file and program carry the dataset
    records, so each predicts on a chosen dataset's reference exactly as best.pt does."""
    import torch_sim as ts

    from orbitgraph.train.torchsim import OrbitModel

    cell, positions, numbers = structure(50, 6)
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    assert torch.load(files / "model.pt", weights_only=True)["datasets"] == DATASETS
    for path in ("model.pt", "model.pt2"):
        energies = {}
        for dataset in (None, "pbe", "r2scan"):
            got = []
            for name in ("best.pt", path):
                atoms.calc = OrbitCalculator(files / name, dataset=dataset)
                got.append((atoms.get_potential_energy(), atoms.get_forces(),
                            atoms.get_stress()))
            (e_ckpt, f_ckpt, s_ckpt), (e_file, f_file, s_file) = got
            np.testing.assert_allclose(e_file, e_ckpt, rtol=1e-9, atol=0)
            np.testing.assert_allclose(f_file, f_ckpt, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(s_file, s_ckpt, rtol=1e-9, atol=1e-12)
            energies[dataset] = e_file
        shift = sum(DATASETS[1]["e0_shift"].get(int(z), 0.0) for z in numbers)
        assert abs(shift) > 0.2
        assert energies["r2scan"] - energies["pbe"] == pytest.approx(shift, abs=1e-9)
        assert energies[None] == energies["pbe"]
        with pytest.raises(ConfigError, match=rf"^dataset: .*{path} has no dataset 'hse'; "
                                              r"its datasets are pbe, r2scan$"):
            OrbitCalculator(files / path, dataset="hse")
    # torch-sim: the same choice of reference
    systems = [Atoms(numbers=z, positions=p, cell=c, pbc=True)
               for c, p, z in (structure(60 + i, n) for i, n in enumerate((3, 8)))]
    state = ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64)
    shifts = torch.tensor([sum(DATASETS[1]["e0_shift"].get(int(z), 0.0)
                               for z in s.numbers) for s in systems], dtype=torch.float64)
    for path in ("best.pt", "model.pt", "model.pt2"):
        primary = OrbitModel.from_checkpoint(files / path)(state)
        on_r2scan = OrbitModel.from_checkpoint(files / path, dataset="r2scan")(state)
        torch.testing.assert_close(on_r2scan["energy"], primary["energy"] + shifts,
                                   rtol=0, atol=1e-9)
        torch.testing.assert_close(on_r2scan["forces"], primary["forces"], rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"has no dataset 'hse'; its datasets are pbe"):
        OrbitModel.from_checkpoint(files / "model.pt2", dataset="hse")


def test_a_program_runs_in_its_dtype_and_holds_one_set_of_weights(files):
    with pytest.raises(ConfigError, match=r"exported in \(float64\), not torch.float32"):
        OrbitCalculator(files / "model.pt2", dtype=torch.float32)
    with pytest.raises(InputError, match=r"model.pt2 holds the ema weights only"):
        OrbitCalculator(files / "model.pt2", weights="raw")


def test_orbitgraph_package_writes_a_model_file_and_refuses_a_bad_program_name(
        files, tmp_path, capsys):
    out = tmp_path / "m32.pt"
    assert main(["package", str(files / "best.pt"), "--out", str(out), "--dtype",
                 "float32"]) == 0
    assert "EMA weights" in capsys.readouterr().out
    data = torch.load(out, weights_only=True)
    assert data["dtype"] == "float32" and data["model_state"]["scale_shift.e0"].dtype \
        == torch.float32
    assert main(["package", str(files / "best.pt"), "--out", str(out), "--program",
                 str(tmp_path / "p.pt")]) == 2  # before any tracing
    assert "p.pt: an exported program's file name ends in .pt2" in capsys.readouterr().err


@pytest.mark.slow
def test_a_float32_program_equals_the_float32_eager_model(tmp_path):
    """float32: 1e-5 relative (the program runs the eager model's operations; the room is
    for a reordered sum of ~100 terms at float32's eps 1.2e-7; equal to the last bit here)."""
    model = tiny(torch.float32)
    save_model(model, tmp_path / "best.pt", extra={"graph": GRAPH.to_dict()})
    package_model(tmp_path / "best.pt", tmp_path / "m.pt", program=tmp_path / "m.pt2")
    program = load_model(tmp_path / "m.pt2")
    assert program.dtype == torch.float32
    for batch in (batch_of((1,)), batch_of((2, 7, 3))):
        batch = batch.to(dtype=torch.float32)
        assert_same(program(batch), model(batch), rtol=1e-5)
