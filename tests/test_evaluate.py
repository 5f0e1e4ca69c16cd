"""`orbitgraph evaluate` as a user takes its results elsewhere: the predictions as extended
XYZ that ase.io.read gives back (labels under REF_*, the model's values as the frame's
results), one CSV row per frame, the baselines and the config_type rows of the table, and
a raw source file evaluated without building a store first."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import ase.io
import numpy as np
import pytest

from helpers import write_emt_extxyz
from orbitgraph.preprocess.build import build_store
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.store import SplitParams, open_store
from orbitgraph.preprocess.store.atoms import stress_for_ase
from orbitgraph.train.checkpointing import BEST
from orbitgraph.train.cli import main
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.loader import LoaderConfig
from orbitgraph.train.trainer import Trainer

TINY = {"preset": "invariant", "hidden": 8, "species_dim": 4, "final_mlp": [8], "layers": 1,
        "num_radial": 8}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(source, store, best.pt): the EMT extxyz (15 frames, two of them
    config_type=IsolatedAtom), its store (all frames in the train split), and a tiny model
    trained on it for two steps."""
    root = tmp_path_factory.mktemp("evaluate")
    source = write_emt_extxyz(root / "emt.extxyz")
    build_store(source, root / "store", split=SplitParams(val_fraction=0.0, test_fraction=0.0),
                cluster=ClusterConfig(kind="synchronous"), progress=False)
    cfg = TrainConfig(max_steps=2, lr=3e-3, loader=LoaderConfig(max_atoms=20), log_every=10_000,
                      checkpoint_every=10_000, plots=False, tensorboard=False)
    Trainer(root / "store", TINY, cfg, root / "run").fit()
    return source, root / "store", root / "run" / BEST


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory) -> tuple[Path, str]:
    """(output folder, printed text) of `orbitgraph evaluate --store ... --split train`."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("evaluated") / "eval"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["evaluate", str(trained[2]), "--store", str(trained[1]), "--split",
                     "train", "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_predictions_read_back_with_ase_hold_the_labels_and_the_calculators_values(
        trained, evaluated):
    """ase.io.read(index=':') of predictions.extxyz: REF_energy, REF_forces and REF_stress
    are the store's labels bit for bit; energy, forces and stress (eV/Å³, ASE's sign) are
    what OrbitCalculator computes for the frame. The CSV has one row per frame with the
    same energies; the table puts the baselines beside the errors and a row block per
    config_type; the metrics JSON and the parity plot are written."""
    from orbitgraph.train.calculator import OrbitCalculator

    _, store_path, best = trained
    out, printed = evaluated
    assert "baseline" in printed and "E0 only" in printed and "zero force" in printed
    assert "config_type IsolatedAtom (2 frames)" in printed
    assert "config_type (none) (13 frames)" in printed

    store = open_store(store_path)
    images = ase.io.read(out / "predictions.extxyz", index=":")
    assert len(images) == len(store) == 15
    calc = OrbitCalculator.from_checkpoint(best)
    for atoms in images:
        frame = store.get(atoms.info["frame_id"])
        assert atoms.info["REF_energy"] == float(frame["energy"])
        np.testing.assert_array_equal(atoms.arrays["REF_forces"],
                                      np.asarray(frame["forces"], dtype=np.float64))
        np.testing.assert_array_equal(atoms.info["REF_stress"], stress_for_ase(frame["stress"]))
        predicted = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
        fresh = atoms.copy()
        fresh.calc = calc
        stress = fresh.get_stress()  # first: one computation gives all three
        computed = (fresh.get_potential_energy(), fresh.get_forces(), stress)
        for got, want in zip(predicted, computed, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        assert predicted[1].shape == (len(atoms), 3) and predicted[2].shape == (6,)
    iso = [a for a in images if a.info["frame_id"].startswith("iso-")]
    assert [a.info.get("config_type") for a in iso] == ["IsolatedAtom"] * 2

    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["frame_id"] for r in rows] == [a.info["frame_id"] for a in images]
    for row, atoms in zip(rows, images, strict=True):
        assert float(row["energy_eV"]) == atoms.get_potential_energy()
        assert float(row["REF_energy_eV"]) == atoms.info["REF_energy"]
        assert int(row["n_atoms"]) == len(atoms)
        error = np.abs(atoms.get_forces() - atoms.arrays["REF_forces"])
        assert float(row["forces_mae_eV_per_A"]) == pytest.approx(error.mean(), rel=1e-12)
    assert {r["config_type"] for r in rows} == {"IsolatedAtom", ""}

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["by_config_type"]) == {"IsolatedAtom", "(none)"}
    assert metrics["by_config_type"]["IsolatedAtom"]["frames"] == 2
    assert metrics["baseline"]["frames"] == 15
    assert (out / "parity.png").stat().st_size > 0


def test_a_source_file_is_evaluated_whole_with_the_checkpoints_graphs(trained, evaluated,
                                                                      tmp_path, capsys):
    """--source: every frame of the raw extxyz is evaluated, with the same predictions as
    from the store built from it; --split with --source is a one-line error."""
    source, _, best = trained
    assert main(["evaluate", str(best), "--source", str(source),
                 "--out", str(tmp_path / "from-source")]) == 0
    capsys.readouterr()
    a, b = (ase.io.read(folder / "predictions.extxyz", index=":")
            for folder in (evaluated[0], tmp_path / "from-source"))
    assert len(b) == 15
    by_id = {atoms.info["frame_id"]: atoms for atoms in a}
    for atoms in b:
        other = by_id[atoms.info["frame_id"]]
        assert atoms.get_potential_energy() == pytest.approx(other.get_potential_energy(),
                                                             rel=1e-12)
        np.testing.assert_allclose(atoms.get_forces(), other.get_forces(), rtol=1e-9,
                                   atol=1e-12)
    metrics = json.loads((tmp_path / "from-source" / "metrics.json").read_text())
    assert metrics["frames"] == 15 and metrics["split"] == "all"

    # the predictions file itself, its labels named (it holds the model's values too)
    written = evaluated[0] / "predictions.extxyz"
    assert main(["evaluate", str(best), "--source", str(written), "--out",
                 str(tmp_path / "again")]) == 2
    assert "candidate energy labels" in capsys.readouterr().err
    assert main(["evaluate", str(best), "--source", str(written), "--energy-key",
                 "REF_energy", "--forces-key", "REF_forces", "--stress-key", "REF_stress",
                 "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    for key in ("energy_mae_meV_per_atom", "forces_mae_meV_per_A", "stress_mae_GPa"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-9), key

    assert main(["evaluate", str(best), "--source", str(source), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--split: with --source every frame" in err, err


def test_the_evaluation_table_says_nan_stress_only_where_no_frame_has_stress():
    from orbitgraph.train.report import evaluation_table
    keys = {"energy_mae_meV_per_atom": 1.0, "energy_rmse_meV_per_atom": 2.0,
            "forces_mae_meV_per_A": 3.0, "forces_rmse_meV_per_A": 4.0,
            "stress_mae_GPa": 0.5, "stress_rmse_GPa": 0.6}
    base = {"energy_mae_meV_per_atom": 10.0, "forces_mae_meV_per_A": 30.0,
            "stress_mae_GPa": 5.0}
    with_stress = evaluation_table({**keys, "baseline": base, "frames": 3, "split": "test"})
    assert "NaN stress" not in with_stress and "0.500" in with_stress
    nan = float("nan")
    without = evaluation_table({**keys, "stress_mae_GPa": nan, "stress_rmse_GPa": nan,
                                "baseline": {**base, "stress_mae_GPa": nan}, "frames": 3,
                                "split": "test"})
    assert "NaN stress: no frame has a stress label" in without
