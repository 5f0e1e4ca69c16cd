"""The compiled MPtrj reader against the general one (orjson + ``frame_from_record``).

The compiled path is an accelerator: on every input it must give exactly the frames and
quarantine rows of the general path, bit for bit, whether it takes a record itself or
hands it back.
"""
from __future__ import annotations

import copy
import json
import struct

import numpy as np
import pytest

from preprocess.sources.json_numbers import BAD, INEXACT, OK, parse_number
from preprocess.sources.mptrj_extract import SLOW, extract
from preprocess.sources.mptrj_json import parse_materials, parse_materials_general
from tests.helpers import SMALL_MPTRJ, load_small_mptrj

KEY = "uncorrected_total_energy"


# ------------------------------------------------------------------------- numbers

def _parse_all(strings: list[str]) -> list[tuple[int, float, int]]:
    bits = np.zeros(1, dtype=np.uint64)
    out = []
    for s in strings:
        buf = np.frombuffer(s.encode() + b",", dtype=np.uint8)
        out.append(parse_number(buf, 0, bits))
    return out


def _number_cases(rng: np.random.Generator) -> list[str]:
    doubles = rng.integers(0, 2**63 - 1, size=4000, dtype=np.int64).view(np.float64)
    doubles = doubles[np.isfinite(doubles)]
    typical = np.concatenate([rng.normal(0, 10, 3000), rng.normal(0, 1e-3, 1000),
                              rng.normal(0, 1e4, 1000)])
    cases = [repr(float(x)) for x in doubles] + [repr(float(x)) for x in typical]
    cases += [f"{x:.{rng.integers(1, 20)}g}" for x in typical[:2000]]
    cases += [f"{x:.{rng.integers(1, 25)}e}" for x in typical[:1000]]
    cases += [f"{x:.{rng.integers(1, 25)}E}" for x in doubles[:500]]
    for x in rng.uniform(1, 2, 300):  # exactly halfway between two doubles
        from decimal import Decimal
        a = float(x)
        cases.append(format((Decimal(a) + Decimal(float(np.nextafter(a, 3)))) / 2, "f"))
        cases.append(format(Decimal(a), "f"))
    for e in range(-30, 31, 3):
        cases += [f"9007199254740993e{e}", f"18014398509481987e{e}", f"1e{e}", f"-5e{e}"]
    cases += ["0", "-0", "0.0", "-0.0", "1", "-1", "1e308", "1.7976931348623157e308",
              "1.8e308", "5e-324", "4.9e-324", "2.2250738585072014e-308",
              "2.2250738585072011e-308", "1e-400", "1e400", "0.000000000000000000000000001",
              "123456789012345678901234567890", "12345678901234567890", "1234567890123456789",
              "9999999999999999999", "0.30000000000000004", "3.8405612749999997", "1E+5",
              "1e-5", "0.1000000000000000055511151231257827021181583404541015625"]
    return cases


def test_numbers_match_python_float_bit_for_bit():
    cases = _number_cases(np.random.default_rng(7))
    results = _parse_all(cases)
    inexact = 0
    for text, (end, value, status) in zip(cases, results):
        assert status in (OK, INEXACT), text
        assert end == len(text), text
        if status == INEXACT:
            inexact += 1
            continue
        assert struct.pack("<d", value) == struct.pack("<d", float(text)), (text, value)
    assert inexact < len(cases) // 10  # the compiled routes decide almost every number


def test_number_grammar_is_json():
    bad = ["-", "01", "-01", "1.", "1.e5", "1e", "1e+", ".5", "+1", "1.2.3", "--1", "-a",
           "NaN", "Infinity", "0x10", "1.5e5.5"]
    for text, (end, _, status) in zip(bad, _parse_all(bad)):
        assert status == BAD or end < len(text), text  # "0x10": the number is "0", then junk


# ------------------------------------------------------------------------ records

def _run_bytes(materials: dict, indent=None) -> bytes:
    """``"mid": {...}, ...`` as a partition holds it (the top-level braces stripped)."""
    return json.dumps(materials, indent=indent).encode().strip()[1:-1]


def assert_same(fast, general):
    (fa, qa), (fb, qb) = fast, general
    assert [q.to_dict() for q in qa] == [q.to_dict() for q in qb]
    assert [f.frame_id for f in fa] == [f.frame_id for f in fb]
    for x, y in zip(fa, fb):
        assert (x.material_id, x.energy) == (y.material_id, y.energy)
        for name in ("cell", "positions", "numbers", "forces", "stress", "magmom", "pbc"):
            u, v = getattr(x, name), getattr(y, name)
            if u is None or v is None:
                assert u is None and v is None, (x.frame_id, name)
                continue
            assert (u.dtype, u.shape) == (v.dtype, v.shape), (x.frame_id, name)
            assert u.tobytes() == v.tobytes(), (x.frame_id, name)


def both(data: bytes, key: str = KEY):
    fast = parse_materials(data, key)
    assert_same(fast, parse_materials_general(data, key))
    return fast


@pytest.mark.parametrize("key", [KEY, "corrected_total_energy"])
def test_bundled_sample_equals_general_path(key):
    data = _run_bytes(load_small_mptrj())
    columns = extract(data, key)
    assert columns is not None and (columns.status != SLOW).sum() > 0.95 * len(columns.status)
    frames, _ = both(data, key)
    assert len(frames) > 0
    assert SMALL_MPTRJ.is_file()


def _good(n=3, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "structure": {
            "@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0,
            "lattice": {"matrix": (np.eye(3) * 6 + rng.normal(0, 0.1, (3, 3))).tolist(),
                        "pbc": [True, True, True], "a": 6.0, "volume": 216.0},
            "properties": {},
            "sites": [{"species": [{"element": el, "occu": 1}],
                       "abc": [0.1, 0.2, 0.3], "xyz": (rng.uniform(0, 6, 3)).tolist(),
                       "properties": {"magmom": float(rng.normal())}, "label": el}
                      for el in (["Fe", "O", "Li", "H", "Uuo"][:n] if n <= 4 else ["Na"] * n)]},
        "uncorrected_total_energy": float(rng.normal(-10, 1)),
        "corrected_total_energy": float(rng.normal(-10, 1)),
        "energy_per_atom": -3.0, "ef_per_atom": None,
        "force": rng.normal(0, 1, (n, 3)).tolist(),
        "stress": rng.normal(0, 10, (3, 3)).tolist(),
        "magmom": None, "bandgap": 0.5, "mp_id": "mp-1",
    }


def _variants() -> dict[str, dict]:
    """Unusual-but-valid records and one of each kind of bad record."""
    v: dict[str, dict] = {}
    g = _good()
    v["plain"] = g
    v["keys shuffled"] = dict(reversed(list(copy.deepcopy(g).items())))
    r = copy.deepcopy(g)
    r["structure"]["sites"][0]["species"][0]["oxidation_state"] = 3
    r["structure"]["sites"][1]["properties"] = None
    v["oxidation state, null properties"] = r
    r = copy.deepcopy(g)
    r["magmom"] = [0.5, -0.5, 0.0]
    v["record magmom"] = r
    r = copy.deepcopy(g)
    del r["structure"]["sites"][2]["properties"]["magmom"]
    v["partial site magmoms"] = r
    r = copy.deepcopy(g)
    r["stress"] = None
    r["structure"]["lattice"]["pbc"] = [True, False, True]
    r[KEY] = -12
    v["null stress, mixed pbc, integer energy"] = r
    r = copy.deepcopy(g)
    del r["stress"], r["magmom"], r["structure"]["lattice"]["pbc"]
    v["optional fields absent"] = r
    bad = {
        "energy null": {KEY: None}, "energy string": {KEY: "-1.5"}, "energy bool": {KEY: True},
        "no force": {"force": None}, "force rows": {"force": [[0.0, 0.0, 0.0]]},
        "force width": {"force": [[0.0, 0.0]] * 3}, "force text": {"force": "none"},
        "stress shape": {"stress": [[1.0, 0.0, 0.0]]}, "magmom length": {"magmom": [1.0]},
        "magmom text": {"magmom": ["a", "b", "c"]}, "structure null": {"structure": None},
        "record list": None, "empty record": {},
    }
    for name, change in bad.items():
        if change is None:
            v[name] = [1, 2, 3]
            continue
        r = copy.deepcopy(g)
        r.update(change)
        if name == "empty record":
            r = {}
        v[name] = r
    structure_edits = {
        "occupancy 0.5": lambda s: s["sites"][0]["species"][0].update(occu=0.5),
        "two species": lambda s: s["sites"][0]["species"].append({"element": "O", "occu": 1}),
        "species as text": lambda s: s["sites"][0].update(species=["Fe"]),
        "unknown element": lambda s: s["sites"][0]["species"][0].update(element="Xx"),
        "long element name": lambda s: s["sites"][0]["species"][0].update(element="Iron"),
        "xyz of 4": lambda s: s["sites"][0].update(xyz=[0.0, 0.0, 0.0, 1.0]),
        "no xyz": lambda s: s["sites"][0].pop("xyz"),
        "no sites": lambda s: s.update(sites=[]),
        "no matrix": lambda s: s["lattice"].pop("matrix"),
        "singular cell": lambda s: s["lattice"].update(matrix=[[1, 0, 0], [2, 0, 0], [0, 0, 1]]),
        "inverted cell": lambda s: s["lattice"].update(matrix=[[6, 0, 0], [0, 0, 6], [0, 6, 0]]),
        "pbc numbers": lambda s: s["lattice"].update(pbc=[1, 0, 1]),
        "pbc short": lambda s: s["lattice"].update(pbc=[True]),
        "site magmom text": lambda s: s["sites"][0]["properties"].update(magmom="up"),
    }
    for name, edit in structure_edits.items():
        r = copy.deepcopy(g)
        edit(r["structure"])
        v[name] = r
    return v


def test_unusual_and_bad_records_agree_with_general_path():
    variants = _variants()
    materials = {f"mp-{i}": {f"mp-{i}-{name}": rec} for i, (name, rec) in enumerate(variants.items())}
    for indent in (None, 2):
        data = _run_bytes(materials, indent=indent)
        columns = extract(data, KEY)
        assert columns is not None
        taken = {fid.split("-", 2)[2] for fid, s in zip(columns.frame_ids, columns.status)
                 if s != SLOW}
        assert {"plain", "keys shuffled", "oxidation state, null properties", "record magmom",
                "partial site magmoms", "null stress, mixed pbc, integer energy",
                "optional fields absent"} <= taken
        frames, quarantine = both(data)
        kept = {f.frame_id.split("-", 2)[2] for f in frames}
        assert {"energy string", "energy bool", "pbc numbers"} <= kept  # as float()/bool() read them
        assert len(quarantine) >= 20


def _text_with(placeholder_edits: dict, replacement: str) -> str:
    """A record's JSON with the number 123.25 (placed by ``placeholder_edits``) replaced by
    ``replacement`` as raw text."""
    r = _good()
    for path, _ in placeholder_edits.items():
        target = r
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = 123.25
    text = json.dumps(r)
    assert text.count("123.25") == len(placeholder_edits)
    return text.replace("123.25", replacement)


def test_exact_text_cases_agree_with_general_path():
    g = json.dumps(_good())
    runs = {
        "repeated key": '"m": {"f": ' + g[:-1] + ', "force": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}}',
        "escaped ids": '"m\\u00e9": {"f\\"1": ' + g + ', "f\\u0032": ' + g + "}",
        "non-ascii ids": '"mé": {"fü": ' + g + "}",
        "long numbers": '"m": {"f": ' + _text_with(
            {(KEY,): 0, ("force", 0, 1): 0, ("structure", "sites", 0, "xyz", 2): 0},
            "-1.00000000000000000000000000001e0") + "}",
        "force beyond float": '"m": {"f": ' + _text_with({("force", 1, 2): 0}, "1e400") + "}",
        "energy beyond float": '"m": {"f": ' + _text_with({(KEY,): 0}, "-1e999") + "}",
        "subnormal position": '"m": {"f": ' + _text_with(
            {("structure", "sites", 1, "xyz", 0): 0}, "4.9e-324") + "}",
        "empty material": '"m0": {}, "m": {"f": ' + g + "}",
        "whitespace": ' \n "m" \t:\r\n { "f" : ' + g + " } \n",
    }
    for name, text in runs.items():
        data = text.encode()
        assert extract(data, KEY) is not None, name
        both(data)


def test_runs_the_compiled_path_refuses_go_the_general_way():
    g = json.dumps(_good())
    runs = {
        "NaN literal": '"m": {"f": ' + g.replace('"bandgap": 0.5', '"bandgap": NaN') + "}",
        "repeated material": '"m": {"f": ' + g + '}, "m": {"g": ' + g + "}",
        "repeated frame": '"m": {"f": ' + g + ', "f": ' + g + "}",
        "broken JSON": '"m": {"f": ' + g + '}, "n": {"g": {"structure": [1, 2,]}}',
        "material not an object": '"m": [1, 2], "n": {"g": ' + g + "}",
    }
    for name, text in runs.items():
        data = text.encode()
        assert extract(data, KEY) is None, name
        assert_same(parse_materials(data, KEY), parse_materials_general(data, KEY))


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


def test_mutated_records_agree_with_general_path():
    rng = np.random.default_rng(11)
    records = list(_mutations(rng, _good(), 300))
    materials = {f"mp-{i // 10}": {} for i in range(len(records))}
    for i, r in enumerate(records):
        materials[f"mp-{i // 10}"][f"mp-{i // 10}-{i}"] = r
    frames, quarantine = both(_run_bytes(materials))
    assert len(frames) + len(quarantine) == len(records)
    assert len(frames) > 50 and len(quarantine) > 50
