"""The teacher-student fidelity benchmark's pipeline (benchmarks/fidelity.py), end to end
on its --quick path: EMT teacher, one small system, a tiny model trained a few steps
(matcalc, in the test extra, computes the properties)."""
from __future__ import annotations

import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from benchmarks import fidelity

    out = tmp_path_factory.mktemp("fidelity")
    summary = fidelity.main(["--teacher", "emt", "--systems", "Ag", "--quick",
                             "--max-steps", "4", "--threads", "1", "--out", str(out)])
    return fidelity, out, summary


@pytest.mark.slow
def test_quick_run_reports_every_property(quick_run):
    fidelity, out, summary = quick_run
    rows = {r["property"]: r for r in summary["table"] if r["system"] == "Ag"}
    assert set(rows) == {label for label, *_ in fidelity.ROWS}
    result = summary["results"]["Ag"]
    teacher = result["teacher"]
    assert teacher["failures"] == {}
    for key in ("a_A", "bulk_modulus_GPa", "C11_GPa", "C12_GPa", "C44_GPa"):
        assert math.isfinite(teacher[key]) and teacher[key] > 0, key
    assert all(len(teacher["phonon_THz"][q]) == 3 * 4 for q in fidelity.Q_POINTS)
    assert teacher["md"]["finite"] and len(teacher["md"]["rdf"]) == 100
    # the test-set errors are numbers; a student property is a number or a named failure
    for key in ("energy_mae_meV_per_atom", "forces_mae_meV_per_A", "stress_mae_GPa"):
        assert math.isfinite(result["errors"][key]), key
    failed = result["student"]["failures"]
    for label, key, _, _ in fidelity.ROWS:
        value = result["errors"][key]
        assert isinstance(value, bool) or math.isfinite(value) or failed, (label, value)
    for path in ("fidelity.csv", "fidelity.json", "curves.png", "Ag/Ag.png", "Ag/run.yaml",
                 "Ag/curves.csv"):
        assert (out / path).is_file(), path


@pytest.mark.slow
def test_trajectories_stay_in_their_split(quick_run):
    """Every stored trajectory lies wholly in the split it was generated for."""
    from orbitgraph import open_store

    _, out, _ = quick_run
    store = open_store(out / "Ag" / "store")
    index = store.index.to_pydict()
    assert set(index["split"]) == {"train", "val"}
    for material, split in zip(index["material_id"], index["split"], strict=True):
        assert f"-{split}-" in material, (material, split)


@pytest.mark.slow
def test_run_file_is_one_the_cli_reads(quick_run):
    from orbitgraph.train.config import TrainConfig
    from orbitgraph.train.run_file import read_run_file

    _, out, summary = quick_run
    run = read_run_file(out / "Ag" / "run.yaml")
    assert TrainConfig.from_dict(run.train).max_steps == 4
    assert summary["results"]["Ag"]["training"]["steps"] == 4


@pytest.mark.slow
def test_teacher_against_itself_is_exact(quick_run):
    """The same calculator twice: every property error is zero and the MD is stable (the
    comparison neither shifts seeds nor mixes up teacher and student)."""
    from ase.calculators.emt import EMT

    fidelity, _, summary = quick_run
    system = fidelity.SYSTEMS["Ag"]
    teacher = summary["results"]["Ag"]["teacher"]
    again = fidelity.properties(EMT(), system, fidelity.QUICK)
    errors = fidelity.compare(teacher, again)
    for key, value in errors.items():
        if key == "md_stable":
            assert value is True
        else:
            assert value == 0.0, (key, value)
    frames = fidelity.generate(system, EMT(), fidelity.QUICK)["test"]
    labels = fidelity.label_errors(fidelity.reference(frames), fidelity.predict(frames, EMT()))
    assert labels == pytest.approx({k: 0.0 for k in labels}, abs=1e-9)


@pytest.mark.slow
def test_radius_graph_ablation_reuses_the_data(quick_run):
    """``--reuse-data --graph radius --tag``: the earlier run's frames, a store holding every
    neighbour within the 6 Å cutoff, the rank envelope off, and the main run's table and
    model left as they were."""
    import numpy as np
    from ase.io import read
    from ase.neighborlist import neighbor_list

    from orbitgraph import open_store

    fidelity, out, summary = quick_run
    before = (out / "fidelity.csv").read_bytes()
    ablation = fidelity.main(["--teacher", "emt", "--systems", "Ag", "--quick", "--max-steps",
                              "3", "--threads", "1", "--out", str(out), "--reuse-data",
                              "--graph", "radius", "--tag", "radius", "--labels-only"])
    result = ablation["results"]["Ag"]
    assert result["graph"] == "radius" and result["training"]["steps"] == 3
    assert result["frames"] == summary["results"]["Ag"]["frames"]
    assert math.isfinite(result["errors"]["forces_mae_meV_per_A"])
    assert {r["property"] for r in ablation["table"]} == {"E MAE", "F MAE", "σ MAE"}
    assert (out / "fidelity.csv").read_bytes() == before
    assert (out / "Ag" / "radius" / "run" / "best.pt").is_file()
    import yaml
    doc = yaml.safe_load((out / "Ag" / "radius" / "run.yaml").read_text())
    assert doc["model"]["rank_envelope"] == "none"
    assert doc["store"].endswith("store-radius")
    # the stored graph of each frame is its full 6 Å neighbour list (a k-NN graph of
    # 16 would hold 16 per atom)
    store = open_store(out / "Ag" / "store-radius")
    frames = read(out / "Ag" / "train_val.extxyz", index=":")
    degrees = np.concatenate([np.bincount(neighbor_list("i", a, 6.0), minlength=len(a))
                              for a in frames])
    assert store.manifest.counts["edges"] == int(degrees.sum()) > 16 * len(degrees)


def test_the_kept_cao_model_gives_its_recorded_lattice_parameter():
    """benchmarks/models/CaO-chgnet: the student the fidelity benchmark trained on CHGNet's
    CaO (its command in fidelity.json) loads through the ASE calculator and relaxes the
    rocksalt cell to the lattice parameter the benchmark recorded for it (matcalc's
    relaxation: FIRE on positions and cell, FrechetCellFilter, fmax 0.005 eV/Å), within
    0.5 % of the teacher's."""
    import json
    from pathlib import Path

    from ase.build import bulk
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from orbitgraph import OrbitCalculator

    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "CaO-chgnet"
    record = json.loads((folder / "fidelity.json").read_text())
    atoms = bulk("CaO", "rocksalt", a=4.81, cubic=True)
    atoms.calc = OrbitCalculator.from_checkpoint(folder / "model.pt")
    FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.005, steps=200)
    a = float(atoms.cell.lengths().mean())
    assert abs(a - record["student"]["a_A"]) < 2e-3, (a, record["student"]["a_A"])
    assert abs(a - record["teacher"]["a_A"]) / record["teacher"]["a_A"] < 0.005
    assert abs(atoms.get_stress()).max() * 160.2 < 0.05  # GPa: relaxed


@pytest.mark.slow
def test_frame_cache_labels_each_trajectory_once(tmp_path):
    """A second generation with the same key reads every trajectory the first one kept
    (no teacher call) and gets the same frames back; an unreadable file is labelled again;
    another key (other settings) relabels from scratch; a folder holding other files is
    refused, not emptied."""
    from ase.calculators.emt import EMT

    from benchmarks import fidelity

    key = {"teacher": "emt", **{k: getattr(fidelity.QUICK, k) for k in fidelity.DATA_SETTINGS}}
    cache = tmp_path / "frames"
    system = fidelity.SYSTEMS["Ag"]
    first = fidelity.generate(system, EMT(), fidelity.QUICK, fidelity.FrameCache(cache, key))

    class NoCalls(EMT):
        def calculate(self, *args, **kwargs):
            raise AssertionError("a kept trajectory was labelled again")

    again = fidelity.generate(system, NoCalls(), fidelity.QUICK, fidelity.FrameCache(cache, key))
    for split in ("train", "val", "test"):
        assert len(again[split]) == len(first[split]) > 0
        for a, b in zip(first[split], again[split], strict=True):
            for name in ("mp_id", "config_type"):
                assert a.info[name] == b.info[name]
            assert abs(a.info["REF_energy"] - b.info["REF_energy"]) < 1e-6
            assert np.asarray(b.info["REF_stress"]).shape == (6,)
            assert abs(a.info["REF_stress"] - b.info["REF_stress"]).max() < 1e-8
            assert abs(a.arrays["REF_forces"] - b.arrays["REF_forces"]).max() < 1e-6
            assert abs(a.positions - b.positions).max() < 1e-6
            assert abs(a.cell.array - b.cell.array).max() < 1e-6
    damaged = sorted(cache.glob("Ag-train-displaced-*.extxyz"))
    assert len(damaged) == 1
    damaged[0].write_text("")  # as an interrupted copy leaves it
    relabelled = fidelity.generate(system, EMT(), fidelity.QUICK,
                                   fidelity.FrameCache(cache, key))
    assert len(relabelled["train"]) == len(first["train"])
    assert damaged[0].stat().st_size > 0
    fidelity.FrameCache(cache, {**key, "displaced": key["displaced"] + 1})
    assert sorted(p.name for p in cache.iterdir()) == ["key.json"]
    (cache / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not a folder of kept frames"):
        fidelity.FrameCache(cache, key)
    assert (cache / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_near_equilibrium_frames_are_small_displacements_of_the_relaxed_cell():
    """The displaced frames lie within 0.15 Å of the teacher's relaxed cell (whose forces
    and stress vanish), strained by at most 1 % per component, and hold forces: the
    harmonic range phonons probe."""
    from ase.calculators.emt import EMT

    from benchmarks import fidelity

    system = fidelity.SYSTEMS["Ag"]
    cell = system.build().repeat(fidelity.supercell_reps(system.build()))
    relaxed = fidelity.relaxed_cell(cell, EMT())
    relaxed.calc = EMT()
    assert abs(relaxed.get_forces()).max() < 1e-3
    assert abs(relaxed.get_stress()).max() < 1e-3
    relaxed.calc = None
    frames = fidelity.displaced_frames(relaxed, EMT(), 8, seed=0, trajectory="t")
    for atoms in frames:
        stretch = np.linalg.solve(relaxed.cell.array, atoms.cell.array)
        assert abs(stretch - np.eye(3)).max() <= 0.0101  # isotropic + normal, each ≤ 0.5 %
        scaled = relaxed.get_scaled_positions(wrap=False) @ atoms.cell.array
        assert 0 < np.linalg.norm(atoms.positions - scaled, axis=1).max() < 0.15
        assert atoms.info["config_type"] == "displaced"
        assert abs(atoms.arrays["REF_forces"]).max() > 0.01  # eV/Å


@pytest.mark.parametrize("flag, text, problem", [
    ("--train-overrides", "[1, 2]", "a JSON object of entries is needed, not list"),
    ("--model-overrides", "{channels: 8}", "not JSON"),
])
def test_overrides_that_are_not_a_json_object_are_refused_by_flag(tmp_path, flag, text,
                                                                   problem):
    from benchmarks import fidelity

    with pytest.raises(SystemExit) as e:
        fidelity.main(["--teacher", "emt", "--systems", "Ag", "--quick", flag, text,
                       "--out", str(tmp_path)])
    assert str(e.value).startswith(flag) and problem in str(e.value)
    assert not any(tmp_path.iterdir())  # refused before any data was made


@pytest.mark.slow
def test_student_flag_evaluates_a_kept_checkpoint_as_its_run_did(quick_run):
    """``--student best.pt`` on the run's own data gives the test errors the run reported
    for that checkpoint, trains nothing, and leaves the run's table alone; without
    ``--reuse-data`` it is refused."""
    fidelity, out, summary = quick_run
    best = out / "Ag" / "run" / "best.pt"
    before = (out / "fidelity.csv").read_bytes()
    again = fidelity.main(["--teacher", "emt", "--systems", "Ag", "--quick", "--threads", "1",
                           "--out", str(out), "--reuse-data", "--tag", "kept", "--student",
                           str(best), "--labels-only"])
    errors, first = again["results"]["Ag"]["errors"], summary["results"]["Ag"]["errors"]
    for key in ("energy_mae_meV_per_atom", "forces_mae_meV_per_A", "stress_mae_GPa"):
        assert errors[key] == pytest.approx(first[key], rel=1e-9), key
    assert not (out / "Ag" / "kept" / "run").exists()
    assert (out / "fidelity.csv").read_bytes() == before
    with pytest.raises(SystemExit, match="--student"):
        fidelity.main(["--teacher", "emt", "--systems", "Ag", "--quick", "--out", str(out),
                       "--student", str(best)])
    reuse = ["--teacher", "emt", "--systems", "Ag", "--quick", "--out", str(out), "--reuse-data",
             "--student", str(best)]
    with pytest.raises(SystemExit, match="holds its own graph and model"):
        fidelity.main([*reuse, "--tag", "other", "--model-overrides", '{"channels": 64}'])
    (out / "Ag" / "trained").mkdir()
    (out / "Ag" / "trained" / "run.yaml").write_text("{}")  # as a training run leaves it
    with pytest.raises(SystemExit, match="a training run's folder"):
        fidelity.main([*reuse, "--tag", "trained"])


@pytest.mark.parametrize("flag, text, problem", [
    ("--train-overrides", '{"lr": "fast"}', "lr"),
    ("--model-overrides", '{"chanels": 16}', "chanels"),
])
def test_overrides_orbitgraph_refuses_are_refused_before_any_data(tmp_path, flag, text,
                                                                  problem):
    """A key or value that the model or training config refuses ends the run at once,
    naming the flag and the key, before the teacher labels anything."""
    from benchmarks import fidelity

    with pytest.raises(SystemExit) as e:
        fidelity.main(["--teacher", "emt", "--systems", "Ag", "--quick", flag, text,
                       "--out", str(tmp_path)])
    assert str(e.value).startswith(flag) and problem in str(e.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_reuse_data_needs_an_earlier_run_of_the_same_teacher(tmp_path, quick_run):
    """--reuse-data on a folder without data, or on data another teacher labelled, is
    refused with the folder named, not a traceback or a mislabelled table."""
    fidelity, out, _ = quick_run
    with pytest.raises(SystemExit, match="no earlier run's data"):
        fidelity.main(["--teacher", "emt", "--systems", "Ag", "--quick", "--out",
                       str(tmp_path), "--reuse-data", "--tag", "t"])
    with pytest.raises(SystemExit, match="labelled by emt, not by --teacher chgnet"):
        fidelity.main(["--teacher", "chgnet", "--systems", "Ag", "--quick", "--out",
                       str(out), "--reuse-data", "--tag", "t", "--labels-only"])
