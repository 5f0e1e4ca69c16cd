"""Back to ASE and to files: a store's frames as ``ase.Atoms`` with their labels, and
``orbitgraph export`` to extended XYZ that ASE (so mace-torch and nequip) reads, built back
into the same store."""
from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.calculator import PropertyNotImplementedError
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

from helpers import SMALL_MPTRJ
from orbitgraph.errors import StoreError
from orbitgraph.preprocess.build import build_store
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.schema import FIELDS
from orbitgraph.preprocess.store import open_store
from orbitgraph.preprocess.store.atoms import frame_to_atoms
from orbitgraph.train.cli import main
from orbitgraph.train.export import export_store, write_extxyz

SYNC = ClusterConfig(kind="synchronous")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """The bundled CHGNet-labelled sample: 151 frames, 34 elements, magnetic moments on
    most frames, every frame with a stress."""
    out = tmp_path_factory.mktemp("export") / "store"
    build_store(SMALL_MPTRJ, out, frames_per_shard=40, cluster=SYNC, progress=False)
    return out


def test_store_atoms_carry_the_labels_in_ase_units_and_sign(store_path):
    store = open_store(store_path)
    atoms_list = list(store.iter_atoms())
    assert len(atoms_list) == len(store)
    with_magmoms = 0
    for i, atoms in enumerate(atoms_list):
        frame = store[i]
        assert atoms.info["frame_id"] == str(frame["frame_id"])
        assert atoms.info["material_id"] == str(frame["material_id"])
        np.testing.assert_array_equal(atoms.numbers, frame["numbers"])
        np.testing.assert_array_equal(atoms.positions, frame["positions"])
        np.testing.assert_array_equal(atoms.cell.array, frame["cell"])
        np.testing.assert_array_equal(atoms.pbc, frame["pbc"])
        assert atoms.get_potential_energy() == frame["energy"]
        np.testing.assert_array_equal(atoms.get_forces(), frame["forces"].astype(np.float64))
        # the store holds eV/Å³ with ASE's sign already: no conversion on the way out
        np.testing.assert_array_equal(atoms.get_stress(voigt=False), symmetric(frame["stress"]))
        if not np.isnan(frame["magmom"]).all():
            with_magmoms += 1
            np.testing.assert_array_equal(atoms.get_magnetic_moments(), frame["magmom"])
    assert with_magmoms > 0
    assert store.atoms(-1).info["frame_id"] == store.frame_ids[-1]


def symmetric(stress: np.ndarray) -> np.ndarray:
    """(σ + σᵀ) / 2, computed as ASE does."""
    return voigt_6_to_full_3x3_stress(full_3x3_to_voigt_6_stress(stress))


def test_the_sample_holds_stresses_symmetric_only_to_rounding(store_path):
    """Why the stress is exported as its symmetric part: the sample's (CHGNet, float32)
    differ from their transpose by up to 3.1e-6 eV/Å³ (0.5 MPa), a part no potential's
    stress, (1/V) ∂E/∂ε for a symmetric strain ε, can have."""
    store = open_store(store_path)
    stress = np.stack([store[i]["stress"] for i in range(len(store))])
    asymmetry = np.abs(stress - stress.transpose(0, 2, 1)).max(axis=(1, 2))
    assert 0 < asymmetry.max() < 1e-5


def test_missing_labels_stay_missing(store_path, tmp_path):
    """A stress or magnetic moments the store lacks (NaN) are absent, in ASE and in the
    export, never zero."""
    frame = dict(open_store(store_path)[0])
    frame["stress"] = np.full((3, 3), np.nan)
    frame["magmom"] = np.full(len(frame["numbers"]), np.nan, dtype=np.float32)
    atoms = frame_to_atoms(frame)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
    assert "magmoms" not in atoms.calc.results
    write_extxyz([atoms], tmp_path / "one.xyz")
    back = ase.io.read(tmp_path / "one.xyz")
    assert "REF_stress" not in back.info and "magmoms" not in back.arrays
    assert back.info["REF_energy"] == frame["energy"]


def frame_columns(store, frame_id: str) -> dict[str, np.ndarray]:
    frame = store.get(frame_id)
    return {f.name: np.asarray(frame[f.name]) for f in FIELDS}


def test_export_then_build_gives_the_same_frames_labels_and_graphs(store_path, tmp_path):
    """Positions, cells, labels, magnetic moments and graphs, bit for bit, by frame id (the
    stress: its symmetric part)."""
    store = open_store(store_path)
    xyz = tmp_path / "sample.extxyz"
    assert export_store(store, xyz) == len(store)
    assert not list(tmp_path.glob(".*partial"))
    again = tmp_path / "again"
    summary = build_store(xyz, again, graph=store.manifest.graph, frames_per_shard=40,
                          cluster=SYNC, progress=False)
    assert summary.quarantined == 0
    rebuilt = open_store(again)
    assert sorted(rebuilt.frame_ids) == sorted(store.frame_ids)
    for fid in store.frame_ids:
        a, b = frame_columns(store, fid), frame_columns(rebuilt, fid)
        a["stress"] = symmetric(a["stress"])
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{fid}: {name}",
                                          strict=True)


def test_the_export_reads_as_mace_and_nequip_read_it(store_path, tmp_path):
    """ase.io.read gives REF_energy and REF_stress in ``info``, REF_forces in ``arrays``
    (mace-torch's default keys; nequip maps them with ``key_mapping``) and no energy, forces
    or stress on a calculator (ASE puts the per-atom ``magmoms`` there, which nequip reads
    as its ``magmoms`` field)."""
    store = open_store(store_path)
    xyz = tmp_path / "sample.xyz.gz"
    write_extxyz(store.iter_atoms(), xyz)
    images = ase.io.read(xyz, index=":")
    assert len(images) == len(store)
    for i, atoms in enumerate(images):
        frame = store[i]
        assert atoms.calc is None or set(atoms.calc.results) == {"magmoms"}
        assert atoms.info["frame_id"] == str(frame["frame_id"])
        assert atoms.info["material_id"] == str(frame["material_id"])
        assert atoms.info["REF_energy"] == frame["energy"]
        np.testing.assert_array_equal(atoms.arrays["REF_forces"], frame["forces"])
        assert atoms.info["REF_stress"].shape == (6,)
        np.testing.assert_array_equal(voigt_6_to_full_3x3_stress(atoms.info["REF_stress"]),
                                      symmetric(frame["stress"]))
        np.testing.assert_array_equal(atoms.positions, frame["positions"])


def test_cli_exports_a_split(store_path, tmp_path, capsys):
    out = tmp_path / "val.xyz"
    assert main(["export", str(store_path), "--format", "extxyz", "--out", str(out),
                 "--split", "val"]) == 0
    val = open_store(store_path).subset(split="val")
    assert 0 < len(val) < len(open_store(store_path))
    assert f"exported {len(val)} frames" in capsys.readouterr().out
    assert [a.info["frame_id"] for a in ase.io.read(out, index=":")] == val.frame_ids


def test_nothing_to_export_is_one_line_and_no_file(store_path, tmp_path, capsys):
    out = tmp_path / "none.xyz"
    with pytest.raises(StoreError, match="no frames"):
        export_store(open_store(store_path).subset(frame_ids=[]), out)
    atoms = open_store(store_path).atoms(0)
    atoms.calc = None
    with pytest.raises(ValueError, match="no energy and no forces"):
        write_extxyz([open_store(store_path).atoms(1), atoms], out)
    assert not out.exists() and not list(tmp_path.glob(".*partial"))
    for store in (store_path, tmp_path / "missing"):  # the sample has no test split
        assert main(["export", str(store), "--out", str(out), "--split", "test"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("orbitgraph: error:") and len(err.strip().splitlines()) == 1
    assert not out.exists()
