"""Labels are read from the fields the build names (or the one candidate present), never
silently replaced by another field or dropped: several candidates stop the build, a frame
without its label is quarantined, a virial becomes a stress, and every label-like field
not stored is counted."""
from __future__ import annotations

import json

import numpy as np
import pytest

from extxyz_writer import frame_text, nacl
from orbitgraph.errors import LabelError
from orbitgraph.preprocess.build import build_store, make_spec
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.sources.labels import virial_note
from orbitgraph.preprocess.store import open_store, read_manifest

QUIET = dict(cluster=ClusterConfig(kind="synchronous"), progress=False)


def _labels(i: int, n: int = 2):
    """Energy (eV), forces (N, 3) eV/Å and a symmetric stress (3, 3) eV/Å³ of frame i."""
    rng = np.random.default_rng(10 + i)
    s = rng.normal(0, 0.01, (3, 3))
    return -7.5 - 0.1 * i, rng.normal(0, 0.3, (n, 3)), (s + s.T) / 2


def _voigt(s: np.ndarray) -> list[float]:
    return [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]


def _cells() -> list[np.ndarray]:
    """Right-handed cubic and triclinic cells and a left-handed one (rows swapped)."""
    tri = np.array([[5.1, 0.0, 0.0], [0.7, 4.9, 0.0], [-0.4, 0.9, 5.3]])
    return [np.eye(3) * 5.2, tri, tri[[1, 0, 2]]]


def _write(path, texts):
    path.write_text("".join(texts))
    return path


def _stored(store_path) -> dict[str, dict]:
    store = open_store(store_path)
    return {store[i]["frame_id"]: store[i] for i in range(len(store))}


# ------------------------------------------------------------------ 1. conventions, keys

CONVENTIONS = {
    # name: (energy key, forces column, stress key, stress layout)
    "REF_* (MACE)": ("REF_energy", "REF_forces", "REF_stress", "voigt"),
    "ASE calculator, 3x3 stress": ("energy", "forces", "stress", "3x3"),
    "ASE calculator, Voigt stress": ("energy", "forces", "stress", "voigt"),
    "prefixed": ("DFT_energy", "DFT_forces", "DFT_stress", "3x3"),
    "virial 3x3": ("energy", "forces", "virial", "virial 3x3"),
    "REF_virials Voigt": ("REF_energy", "REF_forces", "REF_virials", "virial voigt"),
}


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_each_extxyz_convention_is_read_without_keys(tmp_path, convention):
    e_key, f_key, s_key, layout = CONVENTIONS[convention]
    texts, expected = [], {}
    for i, cell in enumerate(_cells()):
        symbols, pos, _ = nacl(0.05 * i)
        energy, forces, stress = _labels(i)
        volume = abs(np.linalg.det(cell))
        tensor = -stress * volume if layout.startswith("virial") else stress
        value = _voigt(tensor) if layout.endswith("voigt") else tensor
        texts.append(frame_text(symbols, pos, cell, {"frame_id": f"f{i}", e_key: energy,
                                                     s_key: value}, {f_key: forces}))
        expected[f"f{i}"] = (energy, forces, stress)
    src = _write(tmp_path / "frames.extxyz", texts)
    summary = build_store(src, tmp_path / "store", **QUIET)
    assert (summary.frames, summary.quarantined) == (3, 0)
    assert (summary.labels.energy, summary.labels.forces) == (e_key, f_key)
    got = _stored(tmp_path / "store")
    for fid, (energy, forces, stress) in expected.items():
        assert got[fid]["energy"] == energy
        np.testing.assert_allclose(got[fid]["forces"], forces, rtol=1e-6)
        np.testing.assert_allclose(got[fid]["stress"], stress, rtol=1e-12, atol=1e-17)
    if layout.startswith("virial"):
        assert summary.labels_converted == {virial_note(s_key): 3}
        assert virial_note(s_key) in summary.text()


def test_label_keys_name_any_field(tmp_path):
    texts = []
    for i in range(3):
        symbols, pos, cell = nacl(0.05 * i)
        energy, forces, stress = _labels(i)
        texts.append(frame_text(symbols, pos, cell, {"frame_id": f"f{i}", "E_dft": energy,
                                                     "sigma": _voigt(stress)}, {"grad": -forces}))
    src = _write(tmp_path / "odd.extxyz", texts)
    with pytest.raises(LabelError, match="no energy label.*--energy-key.*no forces label"):
        build_store(src, tmp_path / "refused", **QUIET)

    from orbitgraph.train.cli import main
    rc = main(["build", "--source", str(src), "--out", str(tmp_path / "store"), "--quiet",
               "--scheduler", "synchronous", "--energy-key", "E_dft", "--forces-key", "grad",
               "--stress-key", "sigma"])
    assert rc == 0
    got = _stored(tmp_path / "store")
    energy, forces, stress = _labels(2)
    assert got["f2"]["energy"] == energy
    np.testing.assert_allclose(got["f2"]["forces"], -forces, rtol=1e-6)
    np.testing.assert_allclose(got["f2"]["stress"], stress, rtol=1e-12)
    m = read_manifest(tmp_path / "store")
    assert (m.labels["energy"], m.labels["forces"], m.labels["stress"]) == ("E_dft", "grad",
                                                                            "sigma")


def test_label_keys_are_part_of_the_store_id(tmp_path):
    symbols, pos, cell = nacl()
    src = _write(tmp_path / "a.extxyz", [frame_text(symbols, pos, cell, {"energy": -1.0},
                                                    {"forces": np.zeros((2, 3))})])
    ids = {make_spec(src, **keys)[1].store_id for keys in (
        {}, {"energy_key": "energy"}, {"energy_key": "REF_energy"}, {"forces_key": "forces"},
        {"stress_key": "stress"}, {"virial_key": "virial"})}
    assert len(ids) == 6
    mptrj = tmp_path / "m.json"
    mptrj.write_text("{}")
    assert (make_spec(mptrj)[1].store_id
            == make_spec(mptrj, energy_key="uncorrected_total_energy")[1].store_id
            != make_spec(mptrj, energy_key="corrected_total_energy")[1].store_id)

    from orbitgraph.train.pipelines import load_pipelines
    yaml = tmp_path / "pipelines.yaml"
    yaml.write_text("sources: {a: {path: a.extxyz}}\nstores:\n"
                    "  plain: {source: a}\n"
                    "  keyed: {source: a, energy_key: REF_energy, forces_key: REF_forces,"
                    " virial_key: REF_virial}\n")
    config = load_pipelines(yaml)
    assert config.stores["keyed"].labels.virial == "REF_virial"
    assert config.store_path("plain").name.split("-")[-1] != \
        config.store_path("keyed").name.split("-")[-1]


def _mptrj_record(stress=True) -> dict:
    return {"structure": {"lattice": {"matrix": [[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]]},
                          "sites": [{"species": [{"element": "Cu", "occu": 1}],
                                     "xyz": [0.0, 0.0, 0.0]}]},
            "uncorrected_total_energy": -3.5, "corrected_total_energy": -3.7,
            "force": [[0.0, 0.0, 0.1]],
            "stress": [[16.021766208, 0, 0], [0, 0, 0], [0, 0, 0]] if stress else None}


def test_mptrj_label_keys(tmp_path):
    src = tmp_path / "m.json"
    src.write_text(json.dumps({"mp-1": {"mp-1-0": _mptrj_record(),
                                        "mp-1-1": _mptrj_record(stress=False)}}))
    summary = build_store(src, tmp_path / "corrected", energy_key="corrected_total_energy",
                          **QUIET)
    got = _stored(tmp_path / "corrected")
    assert summary.frames == 2 and got["mp-1-0"]["energy"] == -3.7
    assert got["mp-1-0"]["stress"][0, 0] == pytest.approx(-0.01)  # 16.02 kBar compressive
    assert np.isnan(got["mp-1-1"]["stress"]).all()
    for refused in ({"forces_key": "forces"}, {"stress_key": "REF_stress"},
                    {"virial_key": "virial"}):
        with pytest.raises(LabelError, match="MPtrj JSON records hold"):
            build_store(src, tmp_path / "refused", **refused, **QUIET)
    summary = build_store(src, tmp_path / "stress", stress_key="stress", **QUIET)
    assert summary.frames == 1
    assert summary.quarantine_reasons == {"stress: missing": 1}


# ------------------------------------------------------------------ 2. candidates, absence

def _pred_and_ref(path, stress_keys=("REF_stress",), split=False, virial_keys=()):
    """Frames with reference labels (REF_*) and a model's predictions (energy=, forces);
    with ``split``, frame 1 holds only the predictions and frame 0 only the references."""
    texts = []
    for i in range(3):
        symbols, pos, cell = nacl(0.05 * i)
        energy, forces, stress = _labels(i)
        info = {"frame_id": f"f{i}"}
        columns = {}
        if not (split and i == 1):
            info["REF_energy"] = energy
            columns["REF_forces"] = forces
        if not (split and i == 0):
            info["energy"] = -40.0
            columns["forces"] = np.zeros_like(forces)
        for key in stress_keys:
            info[key] = _voigt(stress)
        for key in virial_keys:
            info[key] = _voigt(-stress * abs(np.linalg.det(cell)))
        texts.append(frame_text(symbols, pos, cell, info, columns))
    return _write(path, texts)


@pytest.mark.parametrize("variant, listed", [
    ("predictions beside references", ["'REF_energy' (3 of 3 frames)", "'energy' (3 of 3",
                                       "'REF_forces' (3 of 3", "'forces' (3 of 3"]),
    ("candidates in different frames", ["'REF_energy' (2 of 3 frames)",
                                        "'energy' (2 of 3 frames)"]),
    ("two stress fields", ["'REF_stress'", "'stress'", "--stress-key"]),
    ("two virial fields", ["'REF_virial'", "'virial'", "--virial-key"]),
])
def test_several_candidates_stop_the_build_and_are_listed(tmp_path, variant, listed):
    src = tmp_path / "frames.extxyz"
    keys = {}
    if variant == "candidates in different frames":
        _pred_and_ref(src, split=True)
    elif variant == "predictions beside references":
        _pred_and_ref(src)
    else:
        keys = {"energy_key": "REF_energy", "forces_key": "REF_forces"}
        _pred_and_ref(src, stress_keys=("REF_stress", "stress") * (variant == "two stress fields"),
                      virial_keys=("REF_virial", "virial") * (variant == "two virial fields"))
    with pytest.raises(LabelError) as err:
        build_store(src, tmp_path / "store", **keys, **QUIET)
    for phrase in listed:
        assert phrase in str(err.value)
    assert not (tmp_path / "store" / "shards").exists()  # stopped before any work

    from orbitgraph.train.cli import main
    args = ["build", "--source", str(src), "--out", str(tmp_path / "cli"), "--quiet"]
    args += [a for k, v in keys.items() for a in (f"--{k.replace('_', '-')}", v)]
    assert main(args) == 2


def test_chosen_references_are_stored_and_the_predictions_counted(tmp_path):
    src = _pred_and_ref(tmp_path / "ref_and_pred.extxyz")
    summary = build_store(src, tmp_path / "store", energy_key="REF_energy",
                          forces_key="REF_forces", **QUIET)
    got = _stored(tmp_path / "store")
    for i in range(3):
        energy, forces, stress = _labels(i)
        assert got[f"f{i}"]["energy"] == energy != -40.0
        np.testing.assert_allclose(got[f"f{i}"]["forces"], forces, rtol=1e-6)
        np.testing.assert_allclose(got[f"f{i}"]["stress"], stress, rtol=1e-12)
    assert summary.labels_not_stored == {"energy 'energy'": 3, "forces 'forces'": 3}


@pytest.mark.parametrize("label", ["energy", "forces", "stress"])
def test_a_frame_without_the_chosen_key_is_quarantined_with_the_reason(tmp_path, label):
    texts = []
    for i in range(4):
        symbols, pos, cell = nacl(0.05 * i)
        energy, forces, stress = _labels(i)
        info = {"frame_id": f"f{i}", "REF_energy": energy, "REF_stress": _voigt(stress)}
        columns = {"REF_forces": forces}
        if i == 2:
            info.pop("REF_energy") if label == "energy" else None
            columns.pop("REF_forces") if label == "forces" else None
            info.pop("REF_stress") if label == "stress" else None
        texts.append(frame_text(symbols, pos, cell, info, columns))
    src = _write(tmp_path / "frames.extxyz", texts)
    keys = {"energy_key": "REF_energy", "forces_key": "REF_forces", "stress_key": "REF_stress"}
    summary = build_store(src, tmp_path / "store", **keys, **QUIET)
    store = open_store(tmp_path / "store")
    reason = {"energy": "REF_energy: missing", "forces": "REF_forces: missing",
              "stress": "stress: missing (no 'REF_stress' in this frame)"}[label]
    assert store.quarantine().to_pylist() == [{"material_id": "frames:0+2", "frame_id": "f2",
                                               "reason": reason}]
    assert sorted(store.frame_ids) == ["f0", "f1", "f3"] and summary.quarantined == 1
    if label == "stress":  # found by the scan, not named: optional, NaN where absent
        del keys["stress_key"]
        build_store(src, tmp_path / "optional", **keys, **QUIET)
        got = _stored(tmp_path / "optional")
        assert len(got) == 4 and np.isnan(got["f2"]["stress"]).all()
        np.testing.assert_allclose(got["f3"]["stress"], _labels(3)[2], rtol=1e-12)


# ------------------------------------------------------------------ 3. virial

@pytest.mark.parametrize("key, layout", [("virial", "3x3"), ("virial", "voigt"),
                                         ("REF_virial", "3x3")])
def test_virial_is_stored_as_stress_minus_virial_over_volume(tmp_path, key, layout):
    texts, expected = [], {}
    for i, cell in enumerate(_cells()):
        symbols, pos, _ = nacl(0.05 * i)
        energy, forces, stress = _labels(i)
        virial = -stress * abs(np.linalg.det(cell))  # eV
        texts.append(frame_text(symbols, pos, cell, {
            "frame_id": f"f{i}", "energy": energy,
            key: _voigt(virial) if layout == "voigt" else virial}, {"forces": forces}))
        expected[f"f{i}"] = stress
    # a frame with both: its stress is stored, its virial counted as not stored
    symbols, pos, cell = nacl()
    energy, forces, stress = _labels(7)
    texts.append(frame_text(symbols, pos, cell, {"frame_id": "both", "energy": energy,
                                                 "stress": _voigt(stress),
                                                 key: np.eye(3)}, {"forces": forces}))
    expected["both"] = stress
    src = _write(tmp_path / "virial.extxyz", texts)
    summary = build_store(src, tmp_path / "store", **QUIET)
    got = _stored(tmp_path / "store")
    for fid, stress in expected.items():
        np.testing.assert_allclose(got[fid]["stress"], stress, rtol=1e-12, atol=1e-17)
    # cubic cell of 5.2 Å: V = 140.608 Å³
    assert summary.labels_converted == {virial_note(key): 3}
    assert summary.labels_not_stored == {f"virial '{key}'": 1}
    text = summary.text()
    assert f"converted: 3 frames, {virial_note(key)}" in text and "abs(det(cell))" in text
    assert read_manifest(tmp_path / "store").counts["labels_converted"] == \
        {virial_note(key): 3}


def test_virial_of_a_frame_without_volume_is_counted_not_stored(tmp_path):
    symbols, pos, cell = nacl()
    energy, forces, stress = _labels(0)
    src = _write(tmp_path / "slab.extxyz", [
        frame_text(symbols, pos, cell, {"frame_id": "slab", "energy": energy,
                                        "virial": np.eye(3)}, {"forces": forces},
                   pbc=(True, True, False)),
        frame_text(symbols, pos, cell, {"frame_id": "bulk", "energy": energy,
                                        "virial": np.eye(3)}, {"forces": forces})])
    summary = build_store(src, tmp_path / "store", **QUIET)
    got = _stored(tmp_path / "store")
    assert np.isnan(got["slab"]["stress"]).all()
    np.testing.assert_allclose(got["bulk"]["stress"],
                               -np.eye(3) / abs(np.linalg.det(cell)), rtol=1e-12)
    assert summary.labels_not_stored == {}
    assert summary.labels_masked == {
        "virial 'virial': the frame is not periodic along all three axes (no volume)": 1,
        "magmom: missing": 2}


# ------------------------------------------------------------------ 5. present, not stored

def test_labels_present_but_not_stored_are_counted(tmp_path):
    texts = []
    for i in range(4):
        symbols, pos, cell = nacl(0.05 * i)
        energy, forces, stress = _labels(i)
        info = {"frame_id": f"f{i}", "REF_energy": energy, "REF_stress": _voigt(stress)}
        columns = {"REF_forces": forces}
        if i in (1, 2):
            info["MACE_energy"] = energy + 0.1
            columns["MACE_forces"] = forces + 0.1
        if i == 2:
            info["REF_stress"] = [1.0, 2.0, 3.0, 4.0]  # not a stress layout
            columns["dft_gradient"] = -forces
        if i == 3:
            columns["magmoms"] = np.ones((2, 3))  # non-collinear: the store holds one number
        texts.append(frame_text(symbols, pos, cell, info, columns))
    src = _write(tmp_path / "frames.extxyz", texts)
    summary = build_store(src, tmp_path / "store", energy_key="REF_energy",
                          forces_key="REF_forces", stress_key="REF_stress", **QUIET)
    expected = {
        "energy 'MACE_energy'": 2,
        "forces 'MACE_forces'": 2,
        "per-atom column 'dft_gradient' (3 numbers per atom, like forces)": 1,
    }
    masked = {  # present, but not in a form the store holds: the frame kept, the label NaN
        "stress 'REF_stress': not understood (shape (4,))": 1,
        "magmom: shape (3,) per atom, the store holds one number per atom": 1,
        "magmom: missing": 3,
    }
    assert summary.frames == 4 and summary.quarantined == 0
    assert (summary.labels_not_stored, summary.labels_masked) == (expected, masked)
    counts = read_manifest(tmp_path / "store").counts
    assert (counts["labels_not_stored"], counts["labels_masked"]) == (expected, masked)
    assert "present in the source but not stored (frames): 2 x energy 'MACE_energy'" in \
        summary.text()
    got = _stored(tmp_path / "store")
    assert np.isnan(got["f2"]["stress"]).all() and np.isnan(got["f3"]["magmom"]).all()
    np.testing.assert_allclose(got["f1"]["stress"], _labels(1)[2], rtol=1e-12)


# ------------------------------------------------------------------ 6. one rule, every format

FORMATS = ["mptrj-json", "extxyz", "ase-db", "alexandria-json"]  # every source class of
# preprocess.sources.FORMATS


def _frame(fid: str, i: int, **edit) -> dict:
    """A labelled NaCl frame of material ``fid`` for :func:`helpers.write_source`."""
    symbols, pos, cell = nacl(0.05 * i)
    energy, forces, stress = _labels(i)
    return {"mid": f"mp-{fid}", "fid": fid, "symbols": symbols, "positions": pos,
            "cell": cell, "energy": energy, "forces": forces, "stress": stress,
            "magmom": np.array([0.5 + i, -0.25]), **edit}


def test_every_source_format_is_in_the_label_tests():
    from orbitgraph.preprocess.sources import FORMATS as SOURCE_FORMATS
    assert sorted(SOURCE_FORMATS) == sorted(FORMATS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_or_missing_stress_and_magmom_are_masked_and_counted_in_every_format(tmp_path,
                                                                                  fmt):
    """Stress and magmom are optional: NaN (in any component, any atom) or absent, the frame
    is kept, the label is stored as NaN (the whole tensor, every atom: what the loss's
    per-frame mask and the statistics leave out) and counted, with why, in the summary and
    the manifest. Energy and forces stay required: NaN quarantines."""
    import torch

    from helpers import write_source
    from orbitgraph.train.loader import LoaderConfig, make_loader
    from orbitgraph.train.metrics import loss_sums

    nan_stress = _labels(1)[2].copy()
    nan_stress[2, 2] = np.nan
    frames = [_frame("ok", 0), _frame("stress-nan", 1, stress=nan_stress),
              _frame("magmom-nan", 2, magmom=np.array([np.nan, 0.5])),
              _frame("none", 3, stress=None, magmom=None),
              _frame("energy-nan", 4, energy=np.nan),
              _frame("forces-nan", 5, forces=np.where(np.eye(2, 3) > 0, np.nan, 0.1))]
    src = write_source(tmp_path / "frames", fmt, frames)
    summary = build_store(src, tmp_path / "store", **QUIET)

    store = open_store(tmp_path / "store")
    reasons = {q["frame_id"]: q["reason"] for q in store.quarantine().to_pylist()}
    assert sorted(reasons) == ["energy-nan", "forces-nan"]
    assert all("NaN or inf" in r for r in reasons.values()), reasons
    got = _stored(tmp_path / "store")
    assert sorted(got) == ["magmom-nan", "none", "ok", "stress-nan"]
    for fid, i in (("ok", 0), ("magmom-nan", 2)):
        np.testing.assert_allclose(got[fid]["stress"], _labels(i)[2], rtol=1e-12)
    for fid in ("stress-nan", "none"):
        assert np.isnan(got[fid]["stress"]).all(), fid
    for fid in ("magmom-nan", "none"):
        assert np.isnan(got[fid]["magmom"]).all(), fid
    np.testing.assert_array_equal(got["stress-nan"]["magmom"], [1.5, -0.25])
    np.testing.assert_array_equal(got["ok"]["magmom"], [0.5, -0.25])
    masked = {"stress 'stress': NaN or inf": 1, "stress: missing": 1,
              "magmom: NaN or inf": 1, "magmom: missing": 1}
    assert summary.labels_masked == masked
    assert read_manifest(tmp_path / "store").counts["labels_masked"] == masked
    assert "optional labels masked" in summary.text() and \
        "1 x stress 'stress': NaN or inf" in summary.text()

    # the loss counts the stress of the two frames that have one, and stays finite
    batch = next(iter(make_loader(store, LoaderConfig(max_atoms=1000, shuffle=False))))
    assert batch.n_frames == 4
    out = {"energy": batch.energy.double(), "forces": batch.forces.double(),
           "stress": torch.zeros_like(batch.stress, dtype=torch.float64)}
    sums = loss_sums(out, batch, "mse", 0.01)
    assert float(sums["n_stress"]) == 9 * 2 and np.isfinite(float(sums["stress"]))


# ------------------------------------------------------------------ 7. energy per atom

@pytest.mark.parametrize("fmt", FORMATS)
def test_an_energy_per_atom_key_is_stored_as_the_total_energy_and_said(tmp_path, fmt):
    """``energy_key: energy_per_atom`` (eV/atom) stores value × n_atoms (eV), the total
    energy the store and the models hold, and says so in the summary and the manifest;
    the store then holds the same energies as one read from the total-energy field."""
    from ase.build import bulk

    from helpers import write_source

    cu = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms, beside NaCl's 2
    frames = [_frame("nacl", 0), _frame("cu", 1, symbols=cu.get_chemical_symbols(),
                                        positions=cu.positions, cell=cu.cell.array,
                                        forces=np.zeros((4, 3)), magmom=None)]
    for f in frames:
        f["info"] = {"energy_per_atom": f["energy"] / len(f["symbols"])}
    src = write_source(tmp_path / "frames", fmt, frames)
    summary = build_store(src, tmp_path / "per_atom", energy_key="energy_per_atom", **QUIET)
    total_key = {"mptrj-json": "uncorrected_total_energy", "extxyz": "energy",
                 "ase-db": "energy", "alexandria-json": "energy"}[fmt]
    build_store(src, tmp_path / "total", energy_key=total_key, **QUIET)

    per_atom, total = _stored(tmp_path / "per_atom"), _stored(tmp_path / "total")
    for f in frames:
        n = len(f["symbols"])
        assert per_atom[f["fid"]]["energy"] == f["info"]["energy_per_atom"] * n
        assert per_atom[f["fid"]]["energy"] == pytest.approx(total[f["fid"]]["energy"],
                                                             rel=1e-15)
    note = "energy = 'energy_per_atom' × n_atoms (eV/atom to eV)"
    assert summary.labels_converted == {note: 2}
    assert summary.labels.energy_per_atom
    assert f"converted: 2 frames, {note}" in summary.text()
    assert "energy 'energy_per_atom' (eV/atom, stored × n_atoms" in summary.text()
    m = read_manifest(tmp_path / "per_atom")
    assert m.labels["energy"] == "energy_per_atom" and m.labels["energy_per_atom"] is True
    assert m.counts["labels_converted"] == {note: 2}
    assert read_manifest(tmp_path / "total").labels["energy_per_atom"] is False
