"""A valid crystal is kept and a bad frame costs only itself: left-handed cells, frames the
store cannot hold, unwrapped positions, gzip-compressed extxyz, empty builds, and the
summary's reason kinds."""
from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from extxyz_writer import frame_text, nacl
from orbitgraph.preprocess.build import EmptyStoreError, build_store, reason_kind
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.graph import knn_graph
from orbitgraph.preprocess.sources import open_source
from orbitgraph.preprocess.sources.limits import (
    MAX_ATOMS,
    MAX_UNIT_SHIFT,
    WRAP_EPS,
    atom_count_problem,
)
from orbitgraph.preprocess.sources.records import frame_from_record
from orbitgraph.preprocess.store import open_store
from orbitgraph.preprocess.store.manifest import MANIFEST_FILE
from orbitgraph.units import EV_PER_A3_IN_KBAR

QUIET = dict(cluster=ClusterConfig(kind="synchronous"), progress=False)
GRAPH_FIELDS = ("n_edges", "neighbors", "unit_shifts", "next_neighbor", "next_unit_shift")


def _stored(path) -> dict[str, dict]:
    store = open_store(path)
    return {store[i]["frame_id"]: store[i] for i in range(len(store))}


def _edge_vectors(row: dict) -> list[np.ndarray]:
    """Per atom, the stored edges' vectors r_j + S @ cell - r_i (Å), sorted by length."""
    pos, cell = row["positions"], row["cell"]
    ptr = np.concatenate(([0], np.cumsum(row["n_edges"].astype(np.int64))))
    out = []
    for i in range(len(pos)):
        j = row["neighbors"][ptr[i]:ptr[i + 1]].astype(np.int64)
        v = pos[j] + row["unit_shifts"][ptr[i]:ptr[i + 1]].astype(np.float64) @ cell - pos[i]
        out.append(np.sort(np.linalg.norm(v, axis=1)))
    return out


def _xyz(path, frames: list[dict]):
    """frames: dicts of frame_text arguments plus frame_id, energy, forces, extra info."""
    texts = []
    for f in frames:
        n = len(f["symbols"])
        info = {"frame_id": f["frame_id"], "energy": f.get("energy", -1.0), **f.get("info", {})}
        if "mp_id" in f:
            info["mp_id"] = f["mp_id"]
        texts.append(frame_text(f["symbols"], f["positions"], f["cell"], info,
                                {"forces": f.get("forces", np.zeros((n, 3)))},
                                pbc=f.get("pbc", (True, True, True))))
    path.write_text("".join(texts))
    return path


def _record(cell, positions, symbols, stress_kbar=None, energy=-1.0) -> dict:
    return {"structure": {"lattice": {"matrix": np.asarray(cell).tolist()},
                          "sites": [{"species": [{"element": s, "occu": 1}],
                                     "xyz": list(map(float, p))}
                                    for s, p in zip(symbols, positions, strict=True)]},
            "uncorrected_total_energy": energy, "corrected_total_energy": energy,
            "force": np.zeros((len(symbols), 3)).tolist(),
            "stress": None if stress_kbar is None else np.asarray(stress_kbar).tolist()}


# ------------------------------------------------------------------ 6. left-handed cells

RIGHT_HANDED = {
    "cubic": np.eye(3) * 4.1,
    "triclinic": np.array([[4.2, 0.0, 0.0], [0.3, 3.9, 0.0], [0.2, 0.4, 5.1]]),
    "hexagonal": np.array([[3.2, 0.0, 0.0], [-1.6, 2.771281292, 0.0], [0.0, 0.0, 5.2]]),
}
# signed permutations with determinant -1: the same lattice, left-handed
RELABELLINGS = {
    "swap a, b": np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]]),
    "negate c": np.diag([1, 1, -1]),
    "cycle, negate a": np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0]]),
}
SYMBOLS = ["Na", "Cl", "O"]


def _positions(cell):
    return np.array([[0.0, 0.0, 0.0], [0.5, 0.45, 0.52], [0.25, 0.7, 0.1]]) @ cell


@pytest.mark.parametrize("name", sorted(RIGHT_HANDED))
@pytest.mark.parametrize("relabel", sorted(RELABELLINGS))
def test_a_left_handed_cell_has_the_graph_of_its_right_handed_relabelling(name, relabel):
    right = RIGHT_HANDED[name]
    p = RELABELLINGS[relabel]
    left = p @ right
    assert np.linalg.det(left) < 0
    pos = _positions(right)
    for ties in ("include", "break"):
        gr, gl = knn_graph(right, pos, ties=ties), knn_graph(left, pos, ties=ties)
        if ties == "include":  # every tied candidate kept: the same edges, relabelled
            # S @ right = S' @ left
            s_left = np.rint(gr.unit_shifts @ np.linalg.inv(p)).astype(np.int64)
            assert set(zip(gr.centers.tolist(), gr.neighbors.tolist(),
                           map(tuple, s_left.tolist()), strict=True)) == \
                set(zip(gl.centers.tolist(), gl.neighbors.tolist(),
                        map(tuple, gl.unit_shifts.tolist()), strict=True))
        # "break" keeps the first of tied candidates (equal on the 1e-9 Å grid) in (j, S)
        # order, which the labels change
        for c in range(len(pos)):
            np.testing.assert_allclose(np.sort(gl.distances[gl.centers == c]),
                                       np.sort(gr.distances[gr.centers == c]), rtol=0, atol=1e-9)
        np.testing.assert_allclose(gl.next_distance, gr.next_distance, rtol=0, atol=1e-9)


@pytest.mark.parametrize("fmt", ["extxyz", "mptrj-json"])
def test_left_handed_cells_are_stored_with_volume_abs_det(tmp_path, fmt):
    stress = np.array([[0.01, 0.002, 0.0], [0.002, -0.02, 0.001], [0.0, 0.001, 0.005]])  # eV/Å³
    frames = {}
    for name, right in RIGHT_HANDED.items():
        for relabel, p in {"right": np.eye(3, dtype=int), **RELABELLINGS}.items():
            frames[f"{name}-{relabel.replace(' ', '').replace(',', '')}"] = (p @ right, right)
    if fmt == "extxyz":  # labelled by a virial: the stress needs the volume
        src = _xyz(tmp_path / "cells.extxyz", [
            {"frame_id": fid, "symbols": SYMBOLS, "positions": _positions(right), "cell": cell,
             "info": {"virial": -stress * abs(np.linalg.det(cell))}}
            for fid, (cell, right) in frames.items()])
    else:
        src = tmp_path / "cells.json"
        src.write_text(json.dumps({fid: {fid: _record(cell, _positions(right), SYMBOLS,
                                                      -stress * EV_PER_A3_IN_KBAR)}
                                   for fid, (cell, right) in frames.items()}))
        for fid, (cell, right) in frames.items():  # the general reader takes them too
            frame = frame_from_record(fid, fid, _record(cell, _positions(right), SYMBOLS))
            np.testing.assert_array_equal(frame.cell, cell)
    summary = build_store(src, tmp_path / "store", **QUIET)
    assert (summary.frames, summary.quarantined) == (len(frames), 0)
    got = _stored(tmp_path / "store")
    for fid, (cell, _) in frames.items():
        np.testing.assert_array_equal(got[fid]["cell"], cell)
        np.testing.assert_allclose(got[fid]["stress"], stress, rtol=1e-12, atol=1e-18)
        name = fid.split("-")[0]
        for a, b in zip(_edge_vectors(got[fid]), _edge_vectors(got[f"{name}-right"]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)


# ------------------------------------------------------------------ 7. per-frame limits

def _cu_frame(fid, repeat=(1, 1, 1)):
    from ase.build import bulk
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    return {"frame_id": fid, "mp_id": fid, "symbols": atoms.get_chemical_symbols(),
            "positions": atoms.positions, "cell": atoms.cell.array}


def test_atom_limit_is_the_largest_uint16():
    assert MAX_ATOMS == 65535 and MAX_UNIT_SHIFT == 127
    assert atom_count_problem(65535) is None
    assert atom_count_problem(65536) == ("frame: more atoms than the 65535 that the store's "
                                         "uint16 neighbour indices can address (65536 atoms)")


@pytest.mark.parametrize("fmt", ["extxyz", "mptrj-json"])
def test_a_frame_with_more_atoms_than_uint16_addresses_costs_only_itself(tmp_path, fmt):
    big = _cu_frame("cu-big", (26, 26, 25))  # 67,600 atoms
    assert len(big["symbols"]) == 67600
    frames = [_cu_frame("cu-a"), big, _cu_frame("cu-b", (2, 1, 1))]
    if fmt == "extxyz":
        src = _xyz(tmp_path / "frames.extxyz", frames)
    else:
        src = tmp_path / "frames.json"
        src.write_text(json.dumps({f["frame_id"]: {f["frame_id"]: _record(
            f["cell"], f["positions"], f["symbols"])} for f in frames}))
    summary = build_store(src, tmp_path / "store", **QUIET)
    store = open_store(tmp_path / "store")
    assert sorted(store.frame_ids) == ["cu-a", "cu-b"]
    assert store.quarantine().to_pylist() == [{
        "material_id": "cu-big", "frame_id": "cu-big",
        "reason": "frame: more atoms than the 65535 that the store's uint16 neighbour indices "
                  "can address (67600 atoms)"}]
    assert summary.quarantine_reasons == {
        "frame: more atoms than the # that the store's uint16 neighbour indices can address": 1}


def _skewed(m: int, axis: int) -> np.ndarray:
    """A simple cubic Cu lattice (2.5 Å) whose lattice vector ``axis`` is c' + m b: the
    neighbours along c' need a shift of m along b."""
    cell = np.eye(3) * 2.5
    other = (axis + 1) % 3
    cell[axis] = cell[axis] + m * cell[other] + 0.3 / 2.5 * cell[other]
    return cell


@pytest.mark.parametrize("axis", [0, 2])
def test_a_cell_shift_beyond_int8_quarantines_only_that_frame(tmp_path, axis):
    frames = [_cu_frame("cu-a")]
    for m in (100, 150, -200):
        frames.append({"frame_id": f"skew{m}", "symbols": ["Cu"], "positions": [[0.2, 0.1, 0.3]],
                       "cell": _skewed(m, axis)})
    frames.append(_cu_frame("cu-b"))
    summary = build_store(_xyz(tmp_path / "frames.extxyz", frames), tmp_path / "store", **QUIET)
    store = open_store(tmp_path / "store")
    assert sorted(store.frame_ids) == ["cu-a", "cu-b", "skew100"]
    reasons = {q["frame_id"]: q["reason"] for q in store.quarantine().to_pylist()}
    assert set(reasons) == {"skew150", "skew-200"}
    for reason in reasons.values():
        assert reason.startswith("structure: a neighbour needs a cell shift beyond the ±127 "
                                 "lattice vectors of the store's int8 shifts (")
    assert summary.quarantined == 2
    assert np.abs(_stored(tmp_path / "store")["skew100"]["unit_shifts"]).max() <= 127


def test_graph_limits_name_the_structures_beyond_them():
    from orbitgraph.preprocess.sources.limits import graph_problems
    # three structures of 2 atoms: edges 0-1 fine, 2-3 an edge shift of -128, 4-5 a next
    # candidate's shift of 130; then one whose atom 0 has 65,536 edges
    unit_shifts = np.zeros((6 + 65536, 3), dtype=np.int32)
    unit_shifts[3] = [0, -128, 0]
    next_unit_shift = np.zeros((8, 3), dtype=np.int32)
    next_unit_shift[5] = [0, 0, 130]
    centers = np.zeros(len(unit_shifts), dtype=np.int32)
    edge_ptr = np.array([0, 2, 4, 6, 6 + 65536])
    atom_ptr = np.array([0, 2, 4, 6, 8])
    problems = graph_problems(unit_shifts, next_unit_shift, centers, edge_ptr, atom_ptr)
    assert sorted(problems) == [1, 2, 3]
    assert "(128 along an axis" in problems[1] and "(130 along an axis" in problems[2]
    assert problems[3] == ("structure: an atom has more edges than the 65535 of the store's "
                           "uint16 edge counts (65536 edges)")
    assert graph_problems(unit_shifts[:6], next_unit_shift[:6] * 0, centers[:6], edge_ptr[:4],
                          atom_ptr[:4]).keys() == {1}


def test_a_graph_that_cannot_be_built_costs_only_its_frame(tmp_path, monkeypatch):
    import orbitgraph.preprocess.build as P
    original = P.knn_graphs_screened

    def failing_second(*args, **kwargs):  # as the kernel reports an incomplete search
        graphs, failed = original(*args, **kwargs)
        return graphs, {**failed, 1: "the neighbour search of atom 0 did not prove its 16 "
                                     "nearest neighbours complete"}

    monkeypatch.setattr(P, "knn_graphs_screened", failing_second)
    src = _xyz(tmp_path / "f.extxyz", [_cu_frame("a"), _cu_frame("b"), _cu_frame("c")])
    build_store(src, tmp_path / "store", **QUIET)
    store = open_store(tmp_path / "store")
    assert sorted(store.frame_ids) == ["a", "c"]
    assert store.quarantine().to_pylist()[0]["reason"].startswith(
        "structure: the neighbour search of atom 0 did not prove")


def test_a_source_shorter_than_its_plan_is_a_user_error(tmp_path):
    """A source that shrank after the build planned its partitions: one line naming the
    file, a user error (SourceChangedError), not an OSError that names no file."""
    from orbitgraph.errors import OrbitgraphError, SourceChangedError
    from orbitgraph.preprocess.sources.base import read_range

    path = tmp_path / "frames.json"
    path.write_bytes(b"0123456789")
    assert read_range(str(path), 2, 6) == b"2345"
    with pytest.raises(SourceChangedError, match=r"frames.json: expected 20 bytes at offset 5, "
                                                  r"got 5 \(the file changed"):
        read_range(str(path), 5, 25)
    assert issubclass(SourceChangedError, OrbitgraphError)


def test_a_malformed_frame_costs_only_itself(tmp_path):
    frames = [_cu_frame(f"cu-{i}") for i in range(4)]
    src = _xyz(tmp_path / "frames.extxyz", frames)
    lines = src.read_text().splitlines(keepends=True)
    lines[2 + 2 * 6 + 1] = lines[2 + 2 * 6 + 1].replace("0.0", "zero", 1)  # frame 2, atom 1
    src.write_text("".join(lines))
    build_store(src, tmp_path / "store", **QUIET)
    store = open_store(tmp_path / "store")
    assert sorted(store.frame_ids) == ["cu-0", "cu-1", "cu-3"]
    (q,) = store.quarantine().to_pylist()
    assert q["material_id"] == "cu-2" and q["reason"].startswith("malformed extxyz: ")


STRUCTURES = {
    "triclinic, random atoms": (np.array([[5.1, 0.0, 0.0], [0.7, 4.9, 0.0], [-0.4, 0.9, 5.3]]),
                                np.random.default_rng(0).uniform(0.02, 0.98, (7, 3)),
                                (True, True, True)),
    "fcc Cu 2x2x2, atoms on the cell faces": (np.eye(3) * 7.22, None, (True, True, True)),
    "slab, z not periodic": (np.array([[4.0, 0.0, 0.0], [1.0, 4.5, 0.0], [0.0, 0.0, 12.0]]),
                             np.random.default_rng(1).uniform(0.05, 0.95, (5, 3)),
                             (True, True, False)),
}


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_unwrapped_positions_give_the_graph_of_the_wrapped_frame(tmp_path, name):
    cell, frac, pbc = STRUCTURES[name]
    if frac is None:
        wrapped = _cu_frame("x", (2, 2, 2))["positions"]
    else:
        wrapped = frac @ cell
    n = len(wrapped)
    rng = np.random.default_rng(2)
    forces = rng.normal(size=(n, 3))
    frames = [{"frame_id": "wrapped", "symbols": ["Cu"] * n, "positions": wrapped,
               "cell": cell, "pbc": pbc, "forces": forces, "info": {"stress": np.eye(3) * 0.01}}]
    for far in (10, 1000, 100000):
        steps = rng.integers(-far, far + 1, (n, 3)) * np.array(pbc)
        frames.append({**frames[0], "frame_id": f"unwrapped{far}",
                       "positions": wrapped + steps @ cell})
    build_store(_xyz(tmp_path / "traj.extxyz", frames), tmp_path / "store", **QUIET)
    got = _stored(tmp_path / "store")
    ref = got["wrapped"]
    np.testing.assert_array_equal(ref["positions"], wrapped)  # inside: kept bit for bit
    for fid in ("unwrapped10", "unwrapped1000", "unwrapped100000"):
        row = got[fid]
        for field in GRAPH_FIELDS:
            np.testing.assert_array_equal(row[field], ref[field], err_msg=f"{fid} {field}")
        np.testing.assert_allclose(row["next_distance"], ref["next_distance"], rtol=1e-6)
        np.testing.assert_allclose(row["positions"], wrapped, rtol=0, atol=1e-6)
        frac_stored = row["positions"] @ np.linalg.inv(cell)
        periodic = np.array(pbc)
        assert np.all(frac_stored[:, periodic] >= -WRAP_EPS - 1e-9)
        assert np.all(frac_stored[:, periodic] < 1 - WRAP_EPS + 1e-9)
        np.testing.assert_array_equal(row["forces"], ref["forces"])  # per atom, same order
        np.testing.assert_array_equal(row["stress"], ref["stress"])
        assert row["energy"] == ref["energy"]


# ------------------------------------------------------------------ 8. gzip

def _gz(src, dst):
    with open(src, "rb") as f, gzip.open(dst, "wb") as g:
        shutil.copyfileobj(f, g)


def _materials_frames(n=6):
    out = []
    for i in range(n):
        symbols, pos, cell = nacl(0.03 * i)
        out.append({"frame_id": f"m{i // 2}-{i}", "mp_id": f"m{i // 2}", "symbols": symbols,
                    "positions": pos, "cell": cell, "energy": -7.0 - 0.1 * i,
                    "forces": np.full((2, 3), 0.01 * i)})
    return out


@pytest.mark.parametrize("layout", ["file.extxyz.gz", "file.xyz.gz", "gzip bytes, .extxyz name",
                                    "folder of .gz and plain files"])
def test_gzip_extxyz_gives_the_store_of_the_plain_file(tmp_path, layout):
    frames = _materials_frames()
    plain = tmp_path / "plain"
    plain.mkdir()
    _xyz(plain / "a.extxyz", frames[:4])
    _xyz(plain / "b.extxyz", frames[4:])
    packed = tmp_path / "packed"
    packed.mkdir()
    if layout == "folder of .gz and plain files":
        (packed / "sub").mkdir()
        _gz(plain / "a.extxyz", packed / "a.extxyz.gz")
        shutil.copy(plain / "b.extxyz", packed / "sub" / "b.extxyz")
        src = packed
    else:
        whole = tmp_path / "whole.extxyz"
        whole.write_bytes((plain / "a.extxyz").read_bytes() + (plain / "b.extxyz").read_bytes())
        name = {"file.extxyz.gz": "f.extxyz.gz", "file.xyz.gz": "f.xyz.gz",
                "gzip bytes, .extxyz name": "f.extxyz"}[layout]
        src = packed / name
        _gz(whole, src)
        assert open_source(src).format == "extxyz"
    a = build_store(plain, tmp_path / "a", frames_per_shard=2, **QUIET)
    b = build_store(src, tmp_path / "b", frames_per_shard=2, **QUIET)
    assert a.frames == b.frames == 6 and b.quarantined == 0
    sa, sb = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    assert len(sb.manifest.shards) == 3
    assert (sa.index.drop(["shard", "row"]).to_pylist()
            == sb.index.drop(["shard", "row"]).to_pylist())
    for fid in sa.frame_ids:
        ra, rb = sa.get(fid), sb.get(fid)
        for key in ra:
            np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{fid} {key}")


# ------------------------------------------------------- 9. material ids and config_type

def test_extxyz_without_a_material_id_is_split_by_frame_with_a_one_line_warning(tmp_path,
                                                                                caplog):
    """Frames without mp_id/material_id are each a material: the build warns once, in one
    line naming the keys to add (logged, and in the summary); with mp_id, or without val
    and test splits, it does not."""
    import logging

    from orbitgraph.preprocess.store import SplitParams

    frames = _materials_frames()
    unnamed = [{k: v for k, v in f.items() if k != "mp_id"} for f in frames]
    with caplog.at_level(logging.WARNING, logger="orbitgraph.build"):
        summary = build_store(_xyz(tmp_path / "unnamed.extxyz", unnamed), tmp_path / "a",
                              **QUIET)
    warned = [w for w in summary.warnings if "without a material id" in w]
    assert len(warned) == 1 and "\n" not in warned[0], summary.warnings
    assert warned[0].startswith(f"{tmp_path / 'unnamed.extxyz'}: 6 frames without a material "
                                "id (mp_id= or material_id= on the comment line)")
    assert "add mp_id=ID to every frame" in warned[0]
    assert warned[0] in [r.getMessage() for r in caplog.records]
    assert len(set(open_store(tmp_path / "a").index.column("material_id").to_pylist())) == 6
    named = build_store(_xyz(tmp_path / "named.extxyz", frames), tmp_path / "b", **QUIET)
    assert not [w for w in named.warnings if "material id" in w]
    unsplit = build_store(tmp_path / "unnamed.extxyz", tmp_path / "c", **QUIET,
                          split=SplitParams(val_fraction=0.0, test_fraction=0.0))
    assert unsplit.warnings == []


def test_config_type_is_kept_in_the_index_and_an_older_index_reads_as_none(tmp_path):
    """extxyz config_type lands in the index (null where a frame has none) and on the
    store's Atoms; an index written without the column (an older store) opens, all null."""
    import pyarrow.parquet as pq

    frames = _materials_frames(4)
    frames[1]["info"] = {"config_type": "Bulk"}
    frames[2]["info"] = {"config_type": "IsolatedAtom"}
    build_store(_xyz(tmp_path / "typed.extxyz", frames), tmp_path / "s", **QUIET)
    store = open_store(tmp_path / "s")
    assert dict(zip(store.frame_ids, store.index.column("config_type").to_pylist(),
                    strict=True)) == {"m0-0": None, "m0-1": "Bulk", "m1-2": "IsolatedAtom",
                                      "m1-3": None}
    position = store.frame_ids.index("m0-1")
    assert store.atoms(position).info["config_type"] == "Bulk"
    assert "config_type" not in store.atoms(store.frame_ids.index("m0-0")).info
    index = tmp_path / "s" / "index.parquet"
    pq.write_table(pq.read_table(index).drop(["config_type"]), index)
    old = open_store(tmp_path / "s")
    assert old.index.column("config_type").to_pylist() == [None] * 4
    assert old.index.drop(["config_type"]).equals(store.index.drop(["config_type"]))


# ------------------------------------------------------------------ 4. empty stores

def _empty_source(tmp_path, variant):
    if variant == "every frame lacks the chosen energy (extxyz)":
        return _xyz(tmp_path / "f.extxyz", _materials_frames(3)), {"energy_key": "REF_energy"}
    if variant == "every record has atoms too close (MPtrj)":
        src = tmp_path / "f.json"
        src.write_text(json.dumps({f"mp-{i}": {f"mp-{i}-0": _record(
            np.eye(3) * 5, [[0, 0, 0], [0.1 * i + 0.1, 0, 0]], ["Na", "Cl"])} for i in range(3)}))
        return src, {}
    if variant == "empty extxyz file":
        (tmp_path / "f.extxyz").write_text("")
        return tmp_path / "f.extxyz", {}
    (tmp_path / "f.json").write_text("{}")
    return tmp_path / "f.json", {}


@pytest.mark.parametrize("variant, phrase", [
    ("every frame lacks the chosen energy (extxyz)",
     "all 3 were quarantined; most common reasons: 3 x REF_energy: missing"),
    ("every record has atoms too close (MPtrj)",
     "all 3 were quarantined; most common reasons: 3 x structure: atoms # and # are closer "
     "than 0.5 Å"),
    ("empty extxyz file", "the source holds no frames"),
    ("empty MPtrj JSON", "the source holds no frames"),
])
def test_an_empty_store_is_a_build_error_naming_the_reasons(tmp_path, capsys, variant, phrase):
    src, keys = _empty_source(tmp_path, variant)
    with pytest.raises(EmptyStoreError) as err:
        build_store(src, tmp_path / "store", **keys, **QUIET)
    assert phrase in str(err.value)
    assert not (tmp_path / "store" / MANIFEST_FILE).exists()

    from orbitgraph.train.cli import main
    args = ["build", "--source", str(src), "--out", str(tmp_path / "cli"), "--quiet"]
    args += [a for k, v in keys.items() for a in (f"--{k.replace('_', '-')}", v)]
    assert main(args) == 2
    assert phrase in capsys.readouterr().err


# ------------------------------------------------------------------ 9. reason kinds

@pytest.mark.parametrize("reason, kind", [
    ("cell: volume -83.5 Å^3 is not allowed", "cell: volume -83.5 Å^3 is not allowed"),
    ("structure.lattice: singular cell (volume 0 Å^3)", "structure.lattice: singular cell"),
    ("density 3 atoms per 12 Å^3", "density # atoms per # Å^3"),
    ("stress: 2 values in eV/Å^3", "stress: # values in eV/Å^3"),
    ("wave vector 4 Å^-1 too long", "wave vector # Å^-1 too long"),
    ("frame: more atoms than the 65535 that the store's uint16 neighbour indices can address "
     "(67600 atoms)", "frame: more atoms than the # that the store's uint16 neighbour indices "
     "can address"),
])
def test_reason_kinds_keep_units_and_words(reason, kind):
    assert reason_kind(reason) == kind
