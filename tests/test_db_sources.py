"""ASE databases (SQLite .db, fairchem's .aselmdb) and Alexandria JSON as sources: parity with
their reference readers (ase.db, pymatgen), quarantine with reasons, and sources of many
files (planned by file and row range, lazily; resumed; fingerprinted byte for byte)."""
from __future__ import annotations

import bz2
import gzip
import json
import shutil

import numpy as np
import pytest

from helpers import alexandria_entry, write_ase_db
from orbitgraph.preprocess.build import build_store, make_spec
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.sources import format_from_name, open_source
from orbitgraph.preprocess.sources.ase_db import AseDbSource
from orbitgraph.preprocess.sources.base import Partition
from orbitgraph.preprocess.store import open_store
from orbitgraph.preprocess.store.params import LabelKeys

QUIET = dict(cluster=ClusterConfig(kind="synchronous"), progress=False)


def _frames(n: int, seed: int = 0, prefix: str = "f") -> list[dict]:
    """``n`` labelled NaCl frames in skewed cells (eV, eV/Å, eV/Å³ ASE sign, μB)."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        cell = 4.2 * np.eye(3) + rng.uniform(-0.3, 0.3, (3, 3))
        stress = rng.normal(0, 0.01, (3, 3))
        out.append({"mid": f"mat-{(seed * 1000 + i) // 2}", "fid": f"{prefix}{seed}-{i}",
                    "symbols": ["Na", "Cl"],
                    "positions": np.array([[0.1, 0.2, 0.0], [2.1, 2.0, 2.2]])
                    + rng.normal(0, 0.05, (2, 3)),
                    "cell": cell, "energy": -6.5 + rng.normal(0, 0.1),
                    "forces": rng.normal(0, 0.3, (2, 3)), "stress": stress + stress.T,
                    "magmom": rng.uniform(-1, 1, 2)})
    return out


def _read_all(source, labels=None, frames_per_partition: int = 4):
    plan = source.resolve_labels(labels or LabelKeys())
    frames, quarantine = [], []
    for part in source.partitions(frames_per_partition):
        f, q = source.read(part, plan)
        frames += f
        quarantine += q
    return frames, quarantine


# ------------------------------------------------------------------ ASE databases

@pytest.mark.parametrize("suffix", [".db", ".aselmdb"])
def test_ase_db_rows_are_read_as_ase_db_reads_them(tmp_path, suffix):
    """Every row's positions, cell, numbers, energy, forces, stress (ASE's Voigt, eV/Å³,
    ASE's sign, as 3x3) and magnetic moments equal what ``ase.db`` gives for it; the frame
    id is ``{file}:{row id}``, the material id fairchem's ``sid``."""
    import ase.db
    from ase.stress import voigt_6_to_full_3x3_stress

    frames = _frames(7)
    for f in frames:
        f["info"] = {"sid": f["mid"]}
        del f["fid"]
    path = write_ase_db(tmp_path / f"omat{suffix}", frames)
    (tmp_path / f"{path.name}-lock").unlink(missing_ok=True)  # the writer's LMDB lock file
    assert format_from_name(path) == "ase-db"
    got, quarantine = _read_all(open_source(path), frames_per_partition=3)
    assert quarantine == []
    # nothing was written beside the source (read-only opening: no LMDB lock file)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    rows = list(ase.db.connect(str(path)).select())
    assert len(got) == len(rows) == 7
    for frame, row in zip(got, rows, strict=True):
        atoms = row.toatoms()
        assert frame.frame_id == f"omat{suffix}:{row.id}"
        assert frame.material_id == row.key_value_pairs["sid"]
        np.testing.assert_array_equal(frame.positions, atoms.positions)
        np.testing.assert_array_equal(frame.cell, atoms.cell.array)
        np.testing.assert_array_equal(frame.numbers, atoms.numbers)
        assert frame.energy == row.energy
        np.testing.assert_array_equal(frame.forces, row.forces)
        np.testing.assert_array_equal(frame.stress, voigt_6_to_full_3x3_stress(row.stress))
        np.testing.assert_array_equal(frame.magmom, row.magmoms)


@pytest.mark.parametrize("suffix", [".db", ".aselmdb"])
def test_ase_db_bad_rows_are_quarantined_naming_file_row_and_field(tmp_path, suffix):
    """Missing forces, forces of the wrong shape, a NaN energy (SQLite stores NaN as NULL:
    missing there) and a molecule without a cell are quarantined, each with a reason that
    names the field and ends with the row and file; the good rows are stored."""
    good = _frames(3)
    no_forces = dict(_frames(1, seed=1)[0], fid="no-forces", forces=None)
    short = dict(_frames(1, seed=2)[0], fid="short-forces")
    short["forces"] = short["forces"][:1]
    nan_energy = dict(_frames(1, seed=3)[0], fid="nan-energy", energy=np.nan)
    molecule = dict(_frames(1, seed=4)[0], fid="molecule", cell=np.zeros((3, 3)), pbc=False,
                    stress=None)
    path = write_ase_db(tmp_path / f"bad{suffix}",
                        [good[0], no_forces, short, good[1], nan_energy, molecule, good[2]])
    summary = build_store(path, tmp_path / "store", **QUIET)
    store = open_store(tmp_path / "store")
    assert sorted(store.frame_ids) == sorted(f["fid"] for f in good)
    reasons = {q["frame_id"]: q["reason"] for q in store.quarantine().to_pylist()}
    name = path.name
    nan_reason = "energy: missing" if suffix == ".db" else "energy: NaN or inf"
    assert reasons == {
        "no-forces": f"forces: missing (row 2 of {name})",
        "short-forces": f"forces: shape (1, 3) for 2 atoms (row 3 of {name})",
        "nan-energy": f"{nan_reason} (row 5 of {name})",
        "molecule": f"cell: singular cell (volume 0 Å^3) (row 6 of {name})"}
    assert summary.quarantined == 4


def test_a_file_that_is_not_an_ase_database_is_one_error_naming_it(tmp_path):
    from orbitgraph.errors import InputError

    path = tmp_path / "notes.db"
    path.write_text("not a database")
    with pytest.raises(InputError, match="notes.db: not an ASE SQLite database"):
        list(AseDbSource(path).partitions(10))
    assert path.read_text() == "not a database"  # opened read-only: left as it was


# ------------------------------------------------------------------ Alexandria JSON

def _write_alexandria(path, entries, how: str):
    text = json.dumps({"entries": entries}).encode()
    if how == "gz":
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(text))
    elif how == "bz2":
        path = path.with_name(path.name + ".bz2")
        path.write_bytes(bz2.compress(text))
    else:
        path.write_bytes(text)
    return path


@pytest.mark.parametrize("how", ["plain", "gz", "bz2"])
def test_alexandria_entries_are_read_as_pymatgen_reads_them(tmp_path, how):
    """Every entry's Cartesian positions, lattice, numbers, uncorrected energy (or
    ``energy + correction``, pymatgen's ``ComputedEntry.energy``), site forces and magnetic
    moments equal what pymatgen's ``ComputedStructureEntry.from_dict`` gives; the stress
    (kBar, VASP's sign in ``data``) is stored as -stress x 0.1 GPa in eV/Å³ (ASE's sign)."""
    from ase.units import GPa
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    entries = []
    for i, f in enumerate(_frames(5)):
        e = alexandria_entry(f)
        e["correction"] = -0.25 * i
        entries.append(e)
    path = _write_alexandria(tmp_path / "alexandria_000.json", entries, how)
    source = open_source(path, "alexandria-json")
    got, quarantine = _read_all(source, frames_per_partition=2)
    corrected, _ = _read_all(source, LabelKeys(energy="corrected_energy"))
    assert quarantine == [] and len(got) == len(corrected) == 5
    for frame, frame_c, d in zip(got, corrected, entries, strict=True):
        ref = ComputedStructureEntry.from_dict(d)
        s = ref.structure
        assert frame.frame_id == ref.entry_id and frame.material_id == ref.data["mat_id"]
        np.testing.assert_array_equal(frame.positions, s.cart_coords)
        np.testing.assert_array_equal(frame.cell, s.lattice.matrix)
        np.testing.assert_array_equal(frame.numbers, s.atomic_numbers)
        assert frame.energy == ref.uncorrected_energy
        assert frame_c.energy == pytest.approx(ref.energy, rel=0, abs=1e-12)
        np.testing.assert_array_equal(frame.forces, np.array(s.site_properties["forces"]))
        np.testing.assert_array_equal(frame.magmom, np.array(s.site_properties["magmom"]))
        np.testing.assert_allclose(frame.stress, -np.array(ref.data["stress"]) * 0.1 * GPa,
                                   rtol=1e-12)


def test_alexandria_bad_entries_are_quarantined_naming_file_entry_and_field(tmp_path):
    good = [alexandria_entry(f) for f in _frames(3)]
    no_forces = alexandria_entry(dict(_frames(1, seed=1)[0], fid="no-forces"))
    del no_forces["structure"]["sites"][1]["properties"]["forces"]
    nan_energy = alexandria_entry(dict(_frames(1, seed=2)[0], fid="nan-energy"))
    nan_energy["energy"] = float("nan")
    nan_force = alexandria_entry(dict(_frames(1, seed=3)[0], fid="nan-force"))
    nan_force["structure"]["sites"][0]["properties"]["forces"][2] = float("inf")
    path = _write_alexandria(tmp_path / "alexandria_001.json",
                             [good[0], no_forces, nan_energy, good[1], nan_force, good[2]],
                             "bz2")
    build_store(path, tmp_path / "store", **QUIET)
    store = open_store(tmp_path / "store")
    assert sorted(store.frame_ids) == sorted(e["entry_id"] for e in good)
    name = path.name
    assert {q["frame_id"]: q["reason"] for q in store.quarantine().to_pylist()} == {
        "no-forces": f"structure.sites[1].properties.forces: missing (entry 1 of {name})",
        "nan-energy": f"energy: NaN or inf (entry 2 of {name})",
        "nan-force": f"structure.sites.properties.forces: contains NaN or inf "
                     f"(entry 4 of {name})"}


# ------------------------------------------------------------------ many files, one source

def test_alexandria_files_read_as_their_concatenation_by_file_and_entry_range(tmp_path):
    """Three .json.bz2 files of a folder give the frames of one file holding their entries
    in order; partitions run across the files by entry range, each carrying its entries."""
    entries = [alexandria_entry(f) for f in _frames(8)]
    folder = tmp_path / "alexandria"
    folder.mkdir()
    for i, (a, b) in enumerate([(0, 3), (3, 4), (4, 8)]):
        _write_alexandria(folder / f"alexandria_{i:03d}.json", entries[a:b], "bz2")
    one = _write_alexandria(tmp_path / "all.json", entries, "plain")
    assert format_from_name(folder) == "alexandria-json"
    source = open_source(folder)
    parts = list(source.partitions(5))
    assert [p.ranges for p in parts] == [
        ((str(folder / "alexandria_000.json.bz2"), 0, 3),
         (str(folder / "alexandria_001.json.bz2"), 0, 1),
         (str(folder / "alexandria_002.json.bz2"), 0, 1)),
        ((str(folder / "alexandria_002.json.bz2"), 1, 4),)]
    many, _ = _read_all(source, frames_per_partition=5)
    single, _ = _read_all(open_source(one, "alexandria-json"), frames_per_partition=5)
    assert [f.frame_id for f in many] == [f.frame_id for f in single] == \
        [e["entry_id"] for e in entries]
    for a, b in zip(many, single, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.forces, b.forces)
        assert a.energy == b.energy



def test_many_files_build_the_store_of_their_concatenation(tmp_path, monkeypatch):
    """50 small .db files (a folder, or a glob) give the store of one file holding their
    rows in order: the plan is by file and row range, each file opened only when the plan
    reaches it (the first partition comes before most files were opened); an interrupted
    build resumes; one byte changed in one file changes the fingerprint."""
    frames = [f for i in range(50) for f in _frames(1 + i % 3, seed=i)]
    folder = tmp_path / "omat"
    folder.mkdir()
    empty = write_ase_db(tmp_path / "empty.db", [])
    at = 0
    sizes = []
    for i in range(50):
        n = 1 + i % 3
        shutil.copy(empty, folder / f"part-{i:03d}.db")  # SQLite's tables made once
        write_ase_db(folder / f"part-{i:03d}.db", frames[at:at + n], append=True)
        sizes.append(n)
        at += n
    one = write_ase_db(tmp_path / "all.db", frames)

    # the plan: pieces by file and row range, lazily
    source = open_source(folder)
    opened = []
    count = source.row_count
    monkeypatch.setattr(source, "row_count", lambda f: opened.append(f) or count(f))
    parts = source.partitions(5)
    first = next(parts)
    assert first == Partition(0, 5, 5, ((str(folder / "part-000.db"), 0, 1),
                                        (str(folder / "part-001.db"), 0, 2),
                                        (str(folder / "part-002.db"), 0, 2)))
    assert len(opened) == 3
    rest = list(parts)
    assert len(opened) == 50 and sum(p.n_frames for p in [first, *rest]) == sum(sizes)
    assert rest[0].ranges == ((str(folder / "part-002.db"), 2, 3),
                              (str(folder / "part-003.db"), 0, 1),
                              (str(folder / "part-004.db"), 0, 2),
                              (str(folder / "part-005.db"), 0, 1))

    # a folder and a glob of it are the same source; both build the concatenation's store
    _, spec_folder = make_spec(folder)
    _, spec_glob = make_spec(str(folder / "*.db"))
    assert spec_folder.source.fingerprint == spec_glob.source.fingerprint
    assert spec_folder.store_id == spec_glob.store_id
    from test_build import assert_same_store

    build_store(one, tmp_path / "one", frames_per_shard=9, **QUIET)
    summary = build_store(str(folder / "*.db"), tmp_path / "many", frames_per_shard=9, **QUIET)
    assert summary.frames == len(frames) and summary.shards_built == -(-len(frames) // 9)
    assert_same_store(tmp_path / "one", tmp_path / "many")

    # interrupted before the last shards: the rerun builds only those
    (tmp_path / "many" / "manifest.json").unlink()
    shutil.rmtree(tmp_path / "many" / "shards" / "shard-000003")
    summary = build_store(str(folder / "*.db"), tmp_path / "many", frames_per_shard=9, **QUIET)
    assert (summary.shards_built, summary.shards_skipped) == (1, -(-len(frames) // 9) - 1)
    assert_same_store(tmp_path / "one", tmp_path / "many")

    # one byte of one file
    target = folder / "part-017.db"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    _, spec_changed = make_spec(folder)
    assert spec_changed.source.fingerprint != spec_folder.source.fingerprint
    changed = dict(spec_changed.source.files)
    assert [n for n, d in spec_folder.source.files if changed[n] != d] == ["part-017.db"]
