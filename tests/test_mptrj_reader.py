"""The MPtrj record reader (msgspec typed decoding, then columns) against records written by
an independent writer: ``json.dumps`` of pymatgen ``Structure.as_dict()`` with labels.

What is expected is computed here from the pymatgen objects and label arrays, never by the
reader: numbers bit for bit as Python's ``float()`` reads their JSON text, every good record
kept, every bad one quarantined with a reason naming the field and the problem.
"""
from __future__ import annotations

import copy
import gzip
import json
import struct

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from helpers import SMALL_MPTRJ, load_small_mptrj
from orbitgraph.errors import LabelError, RecordError
from orbitgraph.preprocess.sources import open_source
from orbitgraph.preprocess.sources.records import frame_from_record, read_run
from orbitgraph.preprocess.store.params import LabelKeys
from orbitgraph.units import EV_PER_A3_IN_KBAR

KEY = "uncorrected_total_energy"
ELEMENTS = ["Fe", "O", "Li", "H", "Na", "Cl", "Si", "Cu", "U", "Og"]


# ------------------------------------------------------------------ the independent writer

def _labelled(rng: np.random.Generator, n: int, *, stress=True, magmom="sites",
              pbc=(True, True, True)) -> tuple[Structure, dict]:
    """A random pymatgen Structure of ``n`` sites and its labels (Python floats)."""
    matrix = np.eye(3) * rng.uniform(4, 9) + rng.normal(0, 0.3, (3, 3))
    structure = Structure(Lattice(matrix, pbc=pbc), list(rng.choice(ELEMENTS, n)),
                          rng.uniform(-0.2, 1.2, (n, 3)),  # some outside the cell
                          site_properties={"magmom": rng.normal(0, 2, n).tolist()}
                          if magmom == "sites" else None)
    labels = {"uncorrected_total_energy": float(rng.normal(-5 * n, 3)),
              "corrected_total_energy": float(rng.normal(-5 * n, 3)),
              "force": rng.normal(0, 1, (n, 3)).tolist(),
              "stress": rng.normal(0, 50, (3, 3)).tolist() if stress else None,
              "magmom": rng.normal(0, 2, n).tolist() if magmom == "record" else None}
    return structure, labels


def _record(structure: Structure, labels: dict) -> dict:
    """An MPtrj record as the published file holds it, with fields the store ignores."""
    return {"structure": structure.as_dict(), **labels, "energy_per_atom": -3.0,
            "ef_per_atom": None, "bandgap": 0.5, "mp_id": "mp-1"}


def _expected(structure: Structure, labels: dict, key: str = KEY) -> dict:
    """What the store must hold for a record, from the pymatgen object and the labels."""
    site_magmom = structure.site_properties.get("magmom")
    magmom = labels["magmom"] if labels["magmom"] is not None else site_magmom
    return {"cell": np.array(structure.lattice.matrix, dtype=np.float64),
            "positions": np.array(structure.cart_coords, dtype=np.float64),
            "numbers": np.array([site.specie.Z for site in structure], dtype=np.int64),
            "pbc": np.array(structure.lattice.pbc, dtype=bool),
            "energy": labels[key],
            "forces": np.array(labels["force"], dtype=np.float64),
            "stress": None if labels["stress"] is None else
            -np.array(labels["stress"], dtype=np.float64) / EV_PER_A3_IN_KBAR,
            "magmom": None if magmom is None else np.array(magmom, dtype=np.float64)}


def _run(materials: dict, indent=None) -> bytes:
    """``"mid": {...}, ...`` as a partition holds it (the enclosing braces stripped)."""
    return json.dumps(materials, indent=indent).encode().strip()[1:-1]


def _bits(x) -> bytes:
    return np.asarray(x).tobytes()


def assert_frame(frame, want: dict) -> None:
    for name in ("cell", "positions", "numbers", "pbc", "forces", "stress", "magmom"):
        got, exp = getattr(frame, name), want[name]
        if exp is None:
            assert got is None, (frame.frame_id, name)
            continue
        assert (got.dtype, got.shape) == (exp.dtype, exp.shape), (frame.frame_id, name)
        assert _bits(got) == _bits(exp), (frame.frame_id, name)
    assert struct.pack("<d", frame.energy) == struct.pack("<d", want["energy"]), frame.frame_id


def _materials(seed: int, n_materials: int = 6):
    """{mid: {fid: record}} and {fid: expected} of pymatgen-written records of every kind
    of valid record: stress or null, magmoms per record, per site or none, open axes."""
    rng = np.random.default_rng(seed)
    materials, expected = {}, {}
    for m in range(n_materials):
        mid = f"mp-{seed}-{m}"
        materials[mid] = {}
        for f in range(int(rng.integers(1, 5))):
            kind = (m + f) % 4
            structure, labels = _labelled(
                rng, int(rng.integers(1, 12)), stress=kind != 1,
                magmom=("sites", "record", None, "sites")[kind],
                pbc=(True, False, True) if kind == 2 else (True, True, True))
            fid = f"{mid}-{f}"
            materials[mid][fid] = _record(structure, labels)
            expected[fid] = _expected(structure, labels)
    return materials, expected


# ------------------------------------------------------------------ good records

@pytest.mark.parametrize("indent", [None, 2])
def test_pymatgen_written_records_are_read_bit_for_bit(indent):
    materials, expected = _materials(seed=1 if indent else 2)
    frames, quarantine = read_run(_run(materials, indent), KEY)
    assert quarantine == []
    assert [(f.material_id, f.frame_id) for f in frames] == [
        (mid, fid) for mid, records in materials.items() for fid in records]
    for frame in frames:
        assert_frame(frame, expected[frame.frame_id])


def test_the_energy_key_is_the_builds_choice():
    materials, _ = _materials(seed=3, n_materials=2)
    for key in ("corrected_total_energy", "my energy-key (eV)"):
        for records in materials.values():
            for rec in records.values():
                rec[key] = rec["corrected_total_energy"]
        frames, quarantine = read_run(_run(materials), key)
        assert quarantine == []
        want = [rec["corrected_total_energy"] for r in materials.values() for rec in r.values()]
        assert [f.energy for f in frames] == want
    frames, quarantine = read_run(_run(materials), "no_such_energy")
    assert frames == [] and {q.reason for q in quarantine} == {"no_such_energy: missing"}
    with pytest.raises(LabelError, match="'force' is the force field"):
        read_run(_run(materials), "force")


def test_energy_key_naming_another_field_is_refused_before_reading(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_materials(seed=4, n_materials=1)[0]))
    with pytest.raises(LabelError, match="stress"):
        open_source(path).label_keys(LabelKeys(energy="stress"))


def test_bundled_sample_reads_as_its_json_says(tmp_path):
    """The real-layout sample: every record read, each equal to the numbers json.load
    gives, through the source's partitions (plain and gzip)."""
    data = load_small_mptrj()
    plain = tmp_path / "mptrj.json"
    plain.write_bytes(gzip.open(SMALL_MPTRJ).read())
    for path in (plain, SMALL_MPTRJ):
        source = open_source(path)
        frames = []
        for part in source.partitions(97):
            got, quarantine = source.read(part, KEY)
            assert quarantine == []
            frames += got
        assert len(frames) == sum(map(len, data.values()))
        for f in frames:
            rec = data[f.material_id][f.frame_id]
            sites = rec["structure"]["sites"]
            assert _bits(f.cell) == _bits(np.array(rec["structure"]["lattice"]["matrix"], float))
            assert _bits(f.positions) == _bits(np.array([s["xyz"] for s in sites], float))
            assert _bits(f.forces) == _bits(np.array(rec["force"], float))
            assert f.energy == rec[KEY]
            assert [s["species"][0]["element"] for s in sites] == [
                _SYMBOL[z] for z in f.numbers.tolist()]


_SYMBOL = {z: s for s, z in __import__("ase.data", fromlist=["atomic_numbers"])
           .atomic_numbers.items()}


def _number_cases(rng: np.random.Generator) -> list[str]:
    """JSON number texts of every form: shortest reprs of random doubles, fixed and
    exponent forms of every length, halfway cases, long mantissas, subnormals, big
    integers."""
    from decimal import Decimal

    doubles = rng.integers(0, 2**63 - 1, size=3000, dtype=np.int64).view(np.float64)
    doubles = doubles[np.isfinite(doubles)]
    typical = np.concatenate([rng.normal(0, 10, 2000), rng.normal(0, 1e-3, 500),
                              rng.normal(0, 1e4, 500)])
    cases = [repr(float(x)) for x in doubles] + [repr(float(x)) for x in typical]
    cases += [f"{x:.{rng.integers(1, 20)}g}" for x in typical[:1500]]
    cases += [f"{x:.{rng.integers(1, 25)}e}" for x in typical[:800]]
    cases += [f"{x:.{rng.integers(1, 25)}E}" for x in doubles[:400]]
    for x in rng.uniform(1, 2, 200):  # exactly halfway between two doubles
        a = float(x)
        cases.append(format((Decimal(a) + Decimal(float(np.nextafter(a, 3)))) / 2, "f"))
    for e in range(-30, 31, 3):
        cases += [f"9007199254740993e{e}", f"18014398509481987e{e}", f"1e{e}", f"-5e{e}"]
    cases += ["0", "0.0", "-0.0", "1", "-1", "1e308", "1.7976931348623157e308", "5e-324",
              "4.9e-324", "2.2250738585072014e-308", "2.2250738585072011e-308", "1e-400",
              "0.000000000000000000000000001", "123456789012345678901234567890",
              "12345678901234567890", "9007199254740993", "18446744073709551617",
              "0.30000000000000004", "1E+5", "1e-5", "-1.00000000000000000000000000001e0",
              "0.1000000000000000055511151231257827021181583404541015625",
              "1" + "0" * 400 + "e-400"]
    return cases


def _forms(rng: np.random.Generator, x: float) -> str:
    """``x`` written in one of JSON's number forms, chosen at random."""
    k = int(rng.integers(1, 25))
    return [repr(x), f"{x:.{k}g}", f"{x:.{k}e}", f"{x:.{k}E}", f"{x:.{k}f}"][rng.integers(5)]


def test_numbers_are_python_float_of_their_text_bit_for_bit():
    """Every number field (cell, positions, energy, forces, stress, magmom) holds
    ``float(text)`` of its JSON text exactly (stress: its conversion, -kBar / 1602.18)."""
    rng = np.random.default_rng(7)
    cases = _number_cases(rng)
    n = 40  # atoms per record
    per_record = 3 * n + 1 + 3 * n + 9 + n
    records, texts = {}, {}
    for r in range(len(cases) // per_record + 1):
        numbers = [cases[(r * per_record + i) % len(cases)] for i in range(per_record)]
        # cells of arbitrary numbers would be singular: ordinary values in every form
        cell = [[_forms(rng, float(rng.uniform(4, 9)) if i == j else float(rng.normal(0, 0.1)))
                 for j in range(3)] for i in range(3)]
        structure, labels = _labelled(np.random.default_rng(r), n, magmom="record")
        rec = _record(structure, labels)
        # placeholders, then the number texts put where the placeholders were
        it = iter(numbers)
        rec["structure"]["lattice"]["matrix"] = [[f"<<{t}>>" for t in row] for row in cell]
        for site in rec["structure"]["sites"]:
            site["xyz"] = [f"<<{next(it)}>>" for _ in range(3)]
        rec[KEY] = f"<<{next(it)}>>"
        rec["force"] = [[f"<<{next(it)}>>" for _ in range(3)] for _ in range(n)]
        rec["stress"] = [[f"<<{next(it)}>>" for _ in range(3)] for _ in range(3)]
        rec["magmom"] = [f"<<{next(it)}>>" for _ in range(n)]
        records[f"f{r}"] = rec
        texts[f"f{r}"] = [t for row in cell for t in row] + numbers
    run = _run({"m": records}).replace(b'"<<', b"").replace(b'>>"', b"")
    frames, quarantine = read_run(run, KEY)
    assert quarantine == [] and len(frames) == len(records)
    for frame in frames:
        want = [float(t) for t in texts[frame.frame_id]]
        stress_at = 9 + 3 * n + 1 + 3 * n
        got = [*frame.cell.ravel(), *frame.positions.ravel(), frame.energy,
               *frame.forces.ravel(), *want[stress_at:stress_at + 9], *frame.magmom]
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert struct.pack("<d", g) == struct.pack("<d", w), (texts[frame.frame_id][i], g)
        want_stress = -np.array(want[stress_at:stress_at + 9]) / EV_PER_A3_IN_KBAR
        assert _bits(frame.stress.ravel()) == _bits(want_stress)


def test_integer_minus_zero_is_the_integer_zero():
    """JSON's ``-0`` is an integer, and every JSON library reads it as 0 (json, orjson,
    msgspec): the reader stores +0.0 where ``float("-0")`` would give -0.0. ``-0.0`` is a
    float and keeps its sign."""
    structure, labels = _labelled(np.random.default_rng(0), 1)
    text = json.dumps({"m": {"f": _record(structure, dict(labels, force=[["<<-0>>", 1.0,
                                                                            "<<-0.0>>"]]))}})
    text = text.replace('"<<', "").replace('>>"', "")
    (frame,), _ = read_run(text.encode().strip()[1:-1], KEY)
    assert json.loads("-0") == 0 and isinstance(json.loads("-0"), int)
    assert struct.pack("<d", frame.forces[0, 0]) == struct.pack("<d", 0.0)
    assert struct.pack("<d", frame.forces[0, 2]) == struct.pack("<d", -0.0)


def test_unusual_but_valid_records_and_runs():
    rng = np.random.default_rng(5)
    structure, labels = _labelled(rng, 3)
    good = _record(structure, labels)
    want = _expected(structure, labels)
    variants = {}
    r = copy.deepcopy(good)
    r["structure"]["sites"][0]["species"][0]["oxidation_state"] = 3
    r["structure"]["sites"][1]["properties"] = None  # then not every site has a magmom
    r["structure"]["extra"] = {"deep": [[{"x": None}]], "text": "a\"b]}"}
    variants["extra fields, null properties"] = (r, dict(want, magmom=None))
    variants["keys in another order"] = (dict(reversed(list(good.items()))), want)
    r = copy.deepcopy(good)
    del r["stress"], r["magmom"], r["structure"]["lattice"]["pbc"]
    variants["optional fields absent"] = (r, dict(want, stress=None))
    r = copy.deepcopy(good)
    r[KEY] = -12
    variants["integer energy"] = (r, dict(want, energy=-12.0))
    r = copy.deepcopy(good)
    r["structure"]["lattice"]["matrix"] = [r["structure"]["lattice"]["matrix"][i]
                                           for i in (0, 2, 1)]
    variants["left-handed cell"] = (r, dict(want, cell=want["cell"][[0, 2, 1]]))
    materials = {f"mp-{i}": {f"f-{name}": rec} for i, (name, (rec, _)) in
                 enumerate(variants.items())}
    frames, quarantine = read_run(_run(materials), KEY)
    assert quarantine == []
    assert [f.frame_id for f in frames] == [f"f-{name}" for name in variants]
    for f, (_, exp) in zip(frames, variants.values(), strict=True):
        assert_frame(f, exp)

    g = json.dumps(good)
    runs = {
        "escaped ids": ('"m\\u00e9": {"f\\"1": ' + g + ', "f\\u0032": ' + g + "}",
                        [("m\u00e9", 'f"1'), ("m\u00e9", "f2")]),
        "non-ascii ids": ('"mé": {"fü": ' + g + "}", [("mé", "fü")]),
        "empty material": ('"m0": {}, "m": {"f": ' + g + "}", [("m", "f")]),
        "whitespace": (' \n "m" \t:\r\n { "f" : ' + g + " } \n", [("m", "f")]),
        "repeated frame: the last": ('"m": {"f": ' + g + ', "g": ' + g + ', "f": '
                                     + g.replace(str(labels[KEY]), "-1.5") + "}",
                                     [("m", "f"), ("m", "g")]),
        "repeated material: the last": ('"m": {"f": ' + g + '}, "n": {"g": ' + g
                                        + '}, "m": {"h": ' + g + "}",
                                        [("m", "h"), ("n", "g")]),
        "repeated field: the last": ('"m": {"f": ' + g[:-1] + ', "force": '
                                     + json.dumps(np.ones((3, 3)).tolist()) + "}}",
                                     [("m", "f")]),
    }
    for name, (text, ids) in runs.items():
        frames, quarantine = read_run(text.encode(), KEY)
        assert quarantine == [], name
        assert sorted((f.material_id, f.frame_id) for f in frames) == sorted(ids), name
        assert_frame(frames[-1], dict(want, energy=frames[-1].energy,
                                      forces=frames[-1].forces))
    frames, _ = read_run(runs["repeated frame: the last"][0].encode(), KEY)
    assert frames[0].energy == -1.5
    frames, _ = read_run(runs["repeated field: the last"][0].encode(), KEY)
    assert _bits(frames[0].forces) == _bits(np.ones((3, 3)))


# ------------------------------------------------------------------ bad records

def _edit(path, value):
    def apply(rec):
        target = rec
        for step in path[:-1]:
            target = target[step]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return rec
    return apply


_DELETE = object()
S = ("structure",)
SITE0 = S + ("sites", 0)

# (edit of a good 3-atom record, exact reason)
BAD_RECORDS = {
    "no structure": (_edit(S, _DELETE), "structure: missing"),
    "structure null": (_edit(S, None), "structure: missing"),
    "structure a list": (_edit(S, [1, 2]), "structure: expected an object or null, got an array"),
    "no lattice": (_edit(S + ("lattice",), _DELETE), "structure.lattice: missing"),
    "no matrix": (_edit(S + ("lattice", "matrix"), _DELETE), "structure.lattice.matrix: missing"),
    "matrix 2 rows": (_edit(S + ("lattice", "matrix"), [[1.0, 0, 0], [0, 1.0, 0]]),
                      "structure.lattice.matrix: expected an array of length 3"),
    "singular cell": (_edit(S + ("lattice", "matrix"), [[1, 0, 0], [2, 0, 0], [0, 0, 1]]),
                      "structure.lattice: singular cell (volume 0 Å^3)"),
    "cell beyond the float range": (
        _edit(S + ("lattice", "matrix"), [[1e300, 0, 0], [0, 1e300, 0], [0, 0, 10.0]]),
        "structure.lattice: cell too large: its volume is beyond the float range (largest "
        "entry 1e+300 Å)"),
    "pbc numbers": (_edit(S + ("lattice", "pbc"), [1, 0, 1]),
                    "structure.lattice.pbc[0]: expected a boolean, got an integer"),
    "pbc short": (_edit(S + ("lattice", "pbc"), [True]),
                  "structure.lattice.pbc: expected an array of length 3"),
    "no sites": (_edit(S + ("sites",), []), "structure.sites: empty"),
    "no xyz": (_edit(SITE0 + ("xyz",), _DELETE), "structure.sites[0].xyz: missing"),
    "xyz of 4": (_edit(SITE0 + ("xyz",), [0.0, 0.0, 0.0, 1.0]),
                 "structure.sites[0].xyz: expected an array of length 3"),
    "xyz text": (_edit(SITE0 + ("xyz",), "0 0 0"),
                 "structure.sites[0].xyz: expected an array, got a string"),
    "unknown element": (_edit(SITE0 + ("species", 0, "element"), "Xx"),
                        "structure.sites[0]: unknown element 'Xx'"),
    "element name": (_edit(SITE0 + ("species", 0, "element"), "Iron"),
                     "structure.sites[0]: unknown element 'Iron'"),
    "species as text": (_edit(SITE0 + ("species",), ["Fe"]),
                        "structure.sites[0].species[0]: expected an object, got a string"),
    "no species": (_edit(SITE0 + ("species",), []),
                   "structure.sites[0]: partial occupancy is not supported"),
    "site magmom text": (_edit(SITE0 + ("properties", "magmom"), "up"),
                         "structure.sites[0].properties.magmom: expected a number or null, "
                         "got a string"),
    "no energy": (_edit((KEY,), _DELETE), f"{KEY}: missing"),
    "energy null": (_edit((KEY,), None), f"{KEY}: missing"),
    "energy string": (_edit((KEY,), "-1.5"),
                      f"{KEY}: expected a number or null, got a string"),
    "energy bool": (_edit((KEY,), True), f"{KEY}: expected a number or null, got a boolean"),
    "no force": (_edit(("force",), _DELETE), "force: missing"),
    "force null": (_edit(("force",), None), "force: missing"),
    "force rows": (_edit(("force",), [[0.0, 0.0, 0.0]]), "force: 1 rows for 3 atoms"),
    "force width": (_edit(("force",), [[0.0, 0.0]] * 3), "force[0]: expected an array of length 3"),
    "force text": (_edit(("force",), "none"), "force: expected an array or null, got a string"),
    "stress shape": (_edit(("stress",), [[1.0, 0.0, 0.0]]),
                     "stress: expected an array of length 3"),
    "magmom text": (_edit(("magmom",), ["a", "b", "c"]),
                    "magmom[0]: expected a number, got a string"),
    "record a list": (lambda rec: [1, 2, 3], "record: expected an object, got an array"),
}

# the same, but a non-finite number (as Python's json.dumps writes it: NaN, Infinity) or
# one beyond the float range written into the JSON text
NON_FINITE = {
    "energy NaN": ((KEY,), "NaN", f"{KEY}: NaN or inf"),
    "force inf": (("force", 1, 2), "Infinity", "force: contains NaN or inf"),
    "position -inf": (SITE0 + ("xyz", 1), "-Infinity", "structure.sites.xyz: contains NaN or inf"),
    "cell NaN": (S + ("lattice", "matrix", 0, 0), "NaN",
                 "structure.lattice.matrix: contains NaN or inf"),
    "force beyond float": (("force", 1, 2), "1e400", "force[1][2]: number out of range"),
    "energy beyond float": ((KEY,), "-1e999", f"{KEY}: number out of range"),
}


def _good(rng, magmom="sites"):
    structure, labels = _labelled(rng, 3, magmom=magmom)
    labels["force"] = np.round(labels["force"], 3).tolist()  # placeholders stay unique
    return _record(structure, labels), _expected(structure, labels)


@pytest.mark.parametrize("indent", [None, 1])
def test_each_bad_record_is_quarantined_with_its_reason_and_its_neighbours_kept(indent):
    rng = np.random.default_rng(9)
    materials, expected, reasons = {}, {}, {}
    for i, (name, (edit, reason)) in enumerate(BAD_RECORDS.items()):
        before, want_before = _good(rng)
        after, want_after = _good(rng, magmom="record")
        bad, _ = _good(rng, magmom="record" if name.startswith("magmom") else "sites")
        materials[f"mp-{i}"] = {f"{i}-before": before, f"{i}-{name}": edit(bad),
                                f"{i}-after": after}
        expected.update({f"{i}-before": want_before, f"{i}-after": want_after})
        reasons[f"{i}-{name}"] = reason
    text = _run(materials, indent).decode()
    for j, (name, (path, literal, reason)) in enumerate(NON_FINITE.items()):
        rec, _ = _good(rng, magmom="record" if name.startswith("magmom") else "sites")
        _edit(path, "@placeholder@")(rec)
        keep, want = _good(rng)
        entry = json.dumps({f"nf-{j}": {f"nf-{j}-keep": keep, f"nf-{j}-{name}": rec}})
        text += ", " + entry[1:-1].replace('"@placeholder@"', literal)
        expected[f"nf-{j}-keep"] = want
        reasons[f"nf-{j}-{name}"] = reason
    # a material that is not an object of frames, and one whose JSON is broken
    keep, want = _good(rng)
    text += ', "mp-list": [1, 2], "mp-broken": {"b-0": {"structure": [1, 2,]}}, "mp-last": ' \
            + json.dumps({"last-0": keep})
    expected["last-0"] = want
    reasons.update({"mp-list/?": "material: value is not an object of frames",
                    "mp-broken/?": "malformed JSON"})

    frames, quarantine = read_run(text.encode(), KEY)
    assert [f.frame_id for f in frames] == list(expected)
    for f in frames:
        assert_frame(f, expected[f.frame_id])
    got = {(q.frame_id if q.frame_id != "?" else f"{q.material_id}/?"): q.reason
           for q in quarantine}
    assert list(got) == list(reasons)  # in the order of the source
    for fid, reason in reasons.items():
        assert got[fid].startswith(reason), (fid, got[fid])
        if fid != "mp-broken/?":
            assert got[fid] == reason, (fid, got[fid])


# an optional label that cannot be stored: (edit, literal written for "@placeholder@",
# the label masked, the note)
MASKED_LABELS = {
    "stress NaN": (("stress", 2, 2), "NaN", "stress", "stress 'stress': NaN or inf"),
    "stress inf": (("stress", 0, 1), "-Infinity", "stress", "stress 'stress': NaN or inf"),
    "magmom inf": (("magmom", 0), "Infinity", "magmom", "magmom: NaN or inf"),
    "site magmom NaN": (SITE0 + ("properties", "magmom"), "NaN", "magmom",
                        "magmom: NaN or inf"),
    "magmom length": (("magmom",), "[1.0]", "magmom", "magmom: not one value per atom"),
}


@pytest.mark.parametrize("name", sorted(MASKED_LABELS))
def test_an_unusable_optional_label_is_masked_and_the_record_kept(name):
    """A stress or magmom holding NaN or inf, or magmoms not one per atom: the record is a
    frame with that label None (stored as NaN) and a note saying why; every other field
    is read as from the intact record, and its neighbours are untouched."""
    path, literal, label, note = MASKED_LABELS[name]
    rng = np.random.default_rng(21)
    rec, want = _good(rng, magmom="sites" if name.startswith("site") else "record")
    keep, want_keep = _good(rng)
    _edit(path, "@placeholder@")(rec)
    text = json.dumps({"mp-1": {"bad": rec, "keep": keep}})[1:-1]
    frames, quarantine = read_run(text.replace('"@placeholder@"', literal).encode(), KEY)
    assert quarantine == [] and [f.frame_id for f in frames] == ["bad", "keep"]
    assert_frame(frames[0], dict(want, **{label: None}))
    assert_frame(frames[1], want_keep)
    assert ("masked", note) in frames[0].notes
    assert not any(what.startswith(label) for _, what in frames[1].notes)


def test_a_run_of_only_good_records_equals_the_same_records_among_bad_ones():
    """The entry-by-entry path (taken when anything fails to decode) reads good records
    exactly as the whole-run path does."""
    materials, expected = _materials(seed=6)
    clean, _ = read_run(_run(materials), KEY)
    first = next(iter(materials.values()))
    first["bad"] = {"structure": None}
    mixed, quarantine = read_run(_run(materials), KEY)
    assert [q.frame_id for q in quarantine] == ["bad"]
    assert [f.frame_id for f in mixed] == [f.frame_id for f in clean]
    for f in mixed:
        assert_frame(f, expected[f.frame_id])


def test_frame_from_record_reads_a_record_as_the_run_reader_does():
    materials, expected = _materials(seed=8, n_materials=3)
    for mid, records in materials.items():
        for fid, rec in records.items():
            assert_frame(frame_from_record(mid, fid, rec), expected[fid])
    rec = copy.deepcopy(next(iter(next(iter(materials.values())).values())))
    rec["force"] = rec["force"][:1]
    with pytest.raises(RecordError, match=r"^force: 1 rows for \d+ atoms$"):
        frame_from_record("m", "f", rec)
    rec["force"] = None
    with pytest.raises(RecordError, match="^force: missing$"):
        frame_from_record("m", "f", rec)


def _mutations(rng: np.random.Generator, record: dict, count: int):
    """Records with one value somewhere replaced, removed or given an extra key."""
    values = [None, True, 0, -1.5, 1e300, "x", [], {}, [1, 2, 3], [[1, 2, 3]], {"a": 1},
              [[0.1, 0.2, 0.3]] * 3]

    def paths(obj, prefix=()):
        yield prefix
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from paths(v, prefix + (k,))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                yield from paths(v, prefix + (i,))

    all_paths = [p for p in paths(record) if p]
    for _ in range(count):
        r = copy.deepcopy(record)
        path = all_paths[rng.integers(len(all_paths))]
        parent = r
        for step in path[:-1]:
            parent = parent[step]
        action = rng.integers(3)
        if action == 0 or isinstance(parent, list) and action == 1:
            parent[path[-1]] = values[rng.integers(len(values))]
        elif action == 1:
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[f"extra{rng.integers(9)}"] = values[rng.integers(len(values))]
        else:
            parent.append(values[rng.integers(len(values))])
        yield r


def test_mutated_records_are_kept_or_quarantined_one_by_one():
    """Random damage anywhere in pymatgen-written records: each record is a frame or a
    quarantine row naming a field, the undamaged records between them are all kept bit
    for bit, and each damaged record's outcome is what reading it alone gives."""
    rng = np.random.default_rng(11)
    record, _ = _good(rng)
    damaged = list(_mutations(rng, record, 300))
    materials, expected = {}, {}
    for i, r in enumerate(damaged):
        control, want = _good(rng)
        materials[f"mp-{i}"] = {f"d-{i}": r, f"c-{i}": control}
        expected[f"c-{i}"] = want
    frames, quarantine = read_run(_run(materials), KEY)
    assert len(frames) + len(quarantine) == 2 * len(damaged)
    kept = {f.frame_id: f for f in frames}
    for fid, want in expected.items():
        assert_frame(kept[fid], want)
    assert 50 < len(quarantine) < len(damaged)
    for q in quarantine:
        assert q.frame_id.startswith("d-") and ":" in q.reason
        field = q.reason.split(":")[0]
        assert field.split(".")[0].split("[")[0] in {
            "record", "structure", KEY, "force", "stress", "magmom"}, q.reason
    for i, r in enumerate(damaged):  # alone, the same outcome
        alone_frames, alone_q = read_run(_run({f"mp-{i}": {f"d-{i}": r}}), KEY)
        if f"d-{i}" in kept:
            assert len(alone_frames) == 1
            assert _bits(alone_frames[0].forces) == _bits(kept[f"d-{i}"].forces)
        else:
            assert [q.reason for q in alone_q] == [
                q.reason for q in quarantine if q.frame_id == f"d-{i}"]
