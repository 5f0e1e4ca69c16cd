"""Store conformance suite, written once and run against every backend."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from helpers import build_columns, load_small_mptrj, write_shard
from orbitgraph.errors import StoreError
from orbitgraph.preprocess.frame import Frame
from orbitgraph.preprocess.schema import FIELDS
from orbitgraph.preprocess.sources.records import frame_from_record
from orbitgraph.preprocess.store import (
    GraphParams,
    SourceInfo,
    SplitParams,
    StoreSpec,
    finalize_store,
    open_store,
    verify_store,
    write_frames_shard,
)
from orbitgraph.preprocess.store import shard as shard_module
from orbitgraph.preprocess.store.shard import is_committed, remove_stale_temporaries, shard_dir
from orbitgraph.units import EV_PER_A3_IN_KBAR


def random_frame(rng, n, fid, mid, stress=True, magmom=True) -> Frame:
    side = max(3.0, 2.2 * n ** (1 / 3))
    cell = np.diag([side] * 3) + rng.normal(0, 0.2, (3, 3))
    # a jittered grid keeps atoms apart
    m = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    frac = (grid + 0.5 + rng.uniform(-0.2, 0.2, (n, 3))) / m
    return Frame(frame_id=fid, material_id=mid, cell=cell, positions=frac @ cell,
                 numbers=rng.integers(1, 90, n), energy=float(rng.normal(-5 * n, 1)),
                 forces=rng.normal(0, 1, (n, 3)),
                 stress=rng.normal(0, 0.01, (3, 3)) if stress else None,
                 magmom=rng.normal(0, 1, n) if magmom else None)


def sample_frames(limit=60) -> list[Frame]:
    out = []
    for mid, frames in load_small_mptrj().items():
        for fid, rec in frames.items():
            out.append(frame_from_record(mid, fid, rec))
    return out[:limit]


class StoreConformance:
    """Subclass with ``backend = ...``; every test runs on that backend."""

    backend: str

    def spec(self, **kw) -> StoreSpec:
        return StoreSpec(source=SourceInfo("test", "mptrj-json", "fingerprint"),
                         backend=self.backend, **kw)

    def build(self, root: Path, partitions: list[list[Frame]], **kw):
        spec = self.spec(**kw)
        for i, frames in enumerate(partitions):
            write_shard(root, i, frames, spec)
        finalize_store(root, spec, len(partitions))
        return open_store(root)

    def test_round_trip_every_field_bit_for_bit(self, tmp_path):
        rng = np.random.default_rng(0)
        frames = sample_frames(40) + [random_frame(rng, 1, "one", "m-one"),
                                      random_frame(rng, 400, "big", "m-big"),
                                      random_frame(rng, 5, "bare", "m-bare", stress=False,
                                                   magmom=False)]
        store = self.build(tmp_path / "s", [frames[:20], frames[20:]])
        assert len(store) == len(frames)
        expected = build_columns(frames, GraphParams())
        atom_ptr = np.concatenate(([0], np.cumsum(expected["n_atoms"])))
        for i, f in enumerate(frames):
            got = store.get(f.frame_id)
            assert got["frame_id"] == f.frame_id and got["material_id"] == f.material_id
            np.testing.assert_array_equal(got["cell"], f.cell)
            np.testing.assert_array_equal(got["positions"], f.positions)
            assert got["positions"].dtype == np.float64
            np.testing.assert_array_equal(got["numbers"], f.numbers)
            np.testing.assert_array_equal(got["forces"], f.forces.astype(np.float32))
            assert got["energy"] == f.energy
            if f.stress is None:
                assert np.all(np.isnan(got["stress"]))
            else:
                np.testing.assert_array_equal(got["stress"], f.stress)
            if f.magmom is None:
                assert np.all(np.isnan(got["magmom"]))
            else:
                np.testing.assert_array_equal(got["magmom"], f.magmom.astype(np.float32))
            a0, a1 = atom_ptr[i], atom_ptr[i + 1]
            np.testing.assert_array_equal(got["n_edges"], expected["n_edges"][a0:a1])
            for name in ("next_distance", "next_neighbor", "next_unit_shift"):
                np.testing.assert_array_equal(got[name], expected[name][a0:a1])
        # edges: compare each frame's graph with a fresh build
        from orbitgraph.preprocess.graph import knn_graph
        for f in frames[::7]:
            got = store.get(f.frame_id)
            g = knn_graph(f.cell, f.positions)
            np.testing.assert_array_equal(got["neighbors"], g.neighbors)
            np.testing.assert_array_equal(got["unit_shifts"], g.unit_shifts)
        for field in FIELDS:
            assert field.name in store[0]

    def test_empty_shard(self, tmp_path):
        rng = np.random.default_rng(1)
        store = self.build(tmp_path / "s", [[random_frame(rng, 3, "a", "m")], [],
                                            [random_frame(rng, 2, "b", "m2")]])
        assert len(store) == 2
        assert store.manifest.shards[1].frames == 0
        assert store.read_shard(1).n_frames == 0
        assert verify_store(store.root).ok

    def test_random_access_by_position_and_id(self, tmp_path):
        frames = sample_frames(50)
        store = self.build(tmp_path / "s", [frames[:17], frames[17:34], frames[34:]])
        rng = np.random.default_rng(2)
        for pos in rng.permutation(len(frames))[:20]:
            assert store[int(pos)]["frame_id"] == frames[pos].frame_id
            assert store.get(frames[pos].frame_id)["frame_id"] == frames[pos].frame_id
        assert store[-1]["frame_id"] == frames[-1].frame_id
        with pytest.raises(IndexError):
            store[len(frames)]
        with pytest.raises(KeyError, match="nope"):
            store.get("nope")

    def test_subset_by_index_filters(self, tmp_path):
        frames = sample_frames(60)
        store = self.build(tmp_path / "s", [frames[:30], frames[30:]],
                           split=SplitParams(0.2, 0.2, 1))
        idx = store.index.to_pylist()
        small = store.subset(max_atoms=4)
        assert len(small) == sum(r["n_atoms"] <= 4 for r in idx) > 0
        assert all(f["n_atoms"] <= 4 for f in (small[i] for i in range(len(small))))
        some = sorted({e for r in idx for e in r["elements"]})[0]
        with_el = store.subset(contains_elements=[some])
        assert len(with_el) == sum(some in r["elements"] for r in idx) > 0
        only = store.subset(only_elements=[some])
        assert len(only) == sum(set(r["elements"]) <= {some} for r in idx)
        for split in ("train", "val", "test"):
            part = store.subset(split=split)
            assert len(part) == sum(r["split"] == split for r in idx)
        # splits are by material: no material in two splits
        by_mat = {}
        for r in idx:
            by_mat.setdefault(r["material_id"], set()).add(r["split"])
        assert all(len(s) == 1 for s in by_mat.values())
        ids = [frames[3].frame_id, frames[40].frame_id]
        picked = store.subset(frame_ids=ids)
        assert sorted(picked.frame_ids) == sorted(ids)
        assert sum(len(rows) for _, _, rows in picked.iter_shards()) == 2
        with pytest.raises(ValueError, match="unknown split"):
            store.subset(split="training")

    @pytest.mark.parametrize("scheme", ["memory", "file"])
    def test_read_through_fsspec_url(self, tmp_path, scheme):
        """A store copied to another filesystem reads back bit for bit through its URL."""
        import fsspec

        frames = sample_frames(30)
        local = self.build(tmp_path / "s", [frames[:12], frames[12:]])
        if scheme == "memory":
            fs = fsspec.filesystem("memory")
            fs.put(str(local.root), f"/stores/{self.backend}-{tmp_path.name}", recursive=True)
            url = f"memory://stores/{self.backend}-{tmp_path.name}"
        else:
            url = (tmp_path / "s").as_uri()
        remote = open_store(url)
        assert remote.root == url and not remote.location.is_local
        assert len(remote) == len(local) and remote.manifest == local.manifest
        for i in range(len(local)):
            a, b = local[i], remote[i]
            assert a.keys() == b.keys()
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        part = remote.subset(max_atoms=8)
        assert part.frame_ids == local.subset(max_atoms=8).frame_ids
        assert part.location.url == url
        assert remote.quarantine().num_rows == 0
        with pytest.raises(StoreError, match="no such store"):
            open_store(url + "-missing")
        with pytest.raises(StoreError, match="local"):
            verify_store(url)

    def _damage_target(self, store) -> Path:
        from orbitgraph.preprocess.store.backends import get_backend
        files = get_backend(self.backend).data_files(shard_dir(store.root, "shard-000000"))
        return max(files, key=lambda p: p.stat().st_size)

    def test_checksum_mismatch_detected(self, tmp_path):
        store = self.build(tmp_path / "s", [sample_frames(30)])
        target = self._damage_target(store)
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
        report = verify_store(store.root)
        assert not report.ok
        assert any("checksum mismatch" in p for p in report.problems)

    def test_verify_finds_wrong_graphs_behind_valid_checksums(self, tmp_path):
        """Edges that were wrong when written (checksums fine): an index out of its frame's
        range, and edges that differ from a rebuilt graph."""
        from orbitgraph.preprocess.graph import knn_graphs
        frames = sample_frames(12)
        spec = self.spec()
        graphs = knn_graphs([f.cell for f in frames], [f.positions for f in frames], k=16)
        bad_range = graphs.neighbors.copy()
        bad_range[0] = frames[0].n_atoms  # one past the last atom of frame 0
        swapped = graphs.unit_shifts.copy()
        swapped[0] = swapped[0] + 1  # a different image of the same neighbour
        next_unit_shift = graphs.next_unit_shift.copy()
        next_unit_shift[3] = next_unit_shift[3] + 1  # another image as the first candidate not kept
        next_range = graphs.next_neighbor.copy()
        next_range[0] = frames[0].n_atoms
        for name, graphs_written, problem in (
                ("range", replace(graphs, neighbors=bad_range), "out of range"),
                ("rebuilt", replace(graphs, unit_shifts=swapped), "differ from the rebuilt graph"),
                ("next", replace(graphs, next_unit_shift=next_unit_shift),
                 "differ from the rebuilt graph"),
                ("next-range", replace(graphs, next_neighbor=next_range),
                 "next_neighbor values out of range")):
            root = tmp_path / name
            write_frames_shard(root, 0, frames, spec, graphs_written)
            finalize_store(root, spec, 1)
            report = verify_store(root, sample=len(frames))
            assert not any("checksum" in p for p in report.problems)
            assert any(problem in p and "shard-000000" in p
                       for p in report.problems), report.problems

    def test_truncated_shard_detected(self, tmp_path):
        store = self.build(tmp_path / "s", [sample_frames(30)])
        target = self._damage_target(store)
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        report = verify_store(store.root)
        assert any("shard-000000" in p for p in report.problems)
        with pytest.raises(StoreError, match="shard-000000"):
            open_store(store.root).read_shard(0)

    def test_interrupted_write_leaves_no_visible_shard(self, tmp_path, monkeypatch):
        root = tmp_path / "s"
        spec = self.spec()
        frames = sample_frames(10)

        def crash(*args, **kwargs):
            raise KeyboardInterrupt("killed mid-write")

        monkeypatch.setattr(shard_module, "write_parquet", crash)
        with pytest.raises(KeyboardInterrupt):
            write_shard(root, 0, frames, spec)
        monkeypatch.undo()
        assert not is_committed(root, "shard-000000")
        assert not (root / "shards" / "shard-000000").exists()
        # a hard kill leaves the temporary directory behind: invisible, cleaned next time
        (root / "shards" / ".tmp-shard-000000-deadbeef").mkdir(parents=True)
        with pytest.raises(StoreError, match="not committed"):
            finalize_store(root, spec, 1)
        assert remove_stale_temporaries(root) == 1
        write_shard(root, 0, frames, spec)
        finalize_store(root, spec, 1)
        assert len(open_store(root)) == 10

    def test_rewriting_a_committed_shard_is_a_no_op(self, tmp_path):
        root = tmp_path / "s"
        spec = self.spec()
        frames = sample_frames(10)
        first = write_shard(root, 0, frames, spec)
        mtime = (shard_dir(root, "shard-000000") / "commit.json").stat().st_mtime_ns
        again = write_shard(root, 0, frames, spec)
        assert first == again
        assert (shard_dir(root, "shard-000000") / "commit.json").stat().st_mtime_ns == mtime

    def test_newer_schema_and_damaged_manifest_fail_clearly(self, tmp_path):
        store = self.build(tmp_path / "s", [sample_frames(5)])
        path = store.root / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["schema_version"] = 99
        path.write_text(json.dumps(manifest))
        with pytest.raises(StoreError, match="schema 99.*upgrade orbitgraph"):
            open_store(store.root)
        manifest["schema_version"] = 1  # before the first candidate not kept was stored
        path.write_text(json.dumps(manifest))
        with pytest.raises(StoreError, match="schema 1, which lacks .*rebuild the store"):
            open_store(store.root)
        manifest["schema_version"] = 2  # integer cell shifts named `shifts`/`next_shift`
        path.write_text(json.dumps(manifest))
        with pytest.raises(StoreError, match="schema 2, which names .*`shifts`.*rebuild the store"):
            open_store(store.root)
        path.write_text("{not json")
        with pytest.raises(StoreError, match="damaged manifest"):
            open_store(store.root)
        path.unlink()
        with pytest.raises(StoreError, match="incomplete"):
            open_store(store.root)
        with pytest.raises(StoreError, match="no such store"):
            open_store(tmp_path / "missing")

    def test_manifest_statistics(self, tmp_path):
        frames = sample_frames(80)
        store = self.build(tmp_path / "s", [frames[:40], frames[40:]])
        stats = store.manifest.statistics
        m = store.manifest
        assert m.counts["frames"] == 80
        assert m.counts["atoms"] == sum(f.n_atoms for f in frames)
        assert stats["mean_neighbors_per_atom"] == pytest.approx(
            m.counts["edges"] / m.counts["atoms"])
        assert stats["mean_neighbors_per_atom"] >= 16
        train = [f for f, r in zip(frames, store.index.to_pylist(), strict=True)
                 if r["split"] == "train"]
        forces = np.concatenate([f.forces for f in train])
        assert stats["force_rms_eV_per_A"] == pytest.approx(np.sqrt(np.mean(forces ** 2)), rel=1e-6)
        # E0 solves the least-squares problem on the training frames
        e0 = stats["atomic_energies_eV"]
        zs = sorted(e0)
        A = np.array([[np.sum(f.numbers == z) for z in zs] for f in train], dtype=float)
        y = np.array([f.energy for f in train])
        ref, *_ = np.linalg.lstsq(A, y, rcond=None)
        np.testing.assert_allclose(A @ np.array([e0[z] for z in zs]), A @ ref, rtol=1e-6, atol=1e-6)
        assert verify_store(store.root).ok


class TestZarrStore(StoreConformance):
    backend = "zarr"


class TestArrowStore(StoreConformance):
    backend = "arrow"


def test_store_id_depends_on_what_determines_contents():
    src = SourceInfo("a.json", "mptrj-json", "f1")
    base = StoreSpec(source=src)
    elsewhere = SourceInfo("elsewhere.json", "mptrj-json", "f1")
    assert base.store_id == StoreSpec(source=elsewhere).store_id
    assert base.store_id == StoreSpec(source=src, backend="arrow").store_id
    assert base.store_id != StoreSpec(source=SourceInfo("a.json", "mptrj-json", "f2")).store_id
    assert base.store_id != StoreSpec(source=src, graph=GraphParams(k=12)).store_id
    assert base.store_id != StoreSpec(source=src, energy_key="corrected_total_energy").store_id


def test_mptrj_stress_kbar_to_ase_ev_per_a3():
    """Hand-checked: 10 kBar compressive (VASP +10) is -10/1602.1766208 eV/Å³ in ASE's sign."""
    rec = {
        "structure": {"lattice": {"matrix": [[3, 0, 0], [0, 3, 0], [0, 0, 3]]},
                      "sites": [{"species": [{"element": "Cu", "occu": 1}], "xyz": [0, 0, 0]}]},
        "uncorrected_total_energy": -3.5, "corrected_total_energy": -3.6,
        "force": [[0.0, 0.0, 0.0]],
        "stress": [[10.0, 0.0, 0.0], [0.0, -20.0, 0.0], [0.0, 0.0, 1602.1766208]],
        "magmom": None,
    }
    f = frame_from_record("mp-1", "mp-1-0-0", rec)
    assert f.stress[0, 0] == pytest.approx(-10 / 1602.1766208)  # -0.0062415 eV/Å³
    assert f.stress[0, 0] == pytest.approx(-0.00624150913, rel=1e-8)
    assert f.stress[1, 1] == pytest.approx(20 / 1602.1766208)
    assert f.stress[2, 2] == pytest.approx(-1.0)
    assert f.energy == -3.5
    assert frame_from_record("mp-1", "mp-1-0-0", rec, "corrected_total_energy").energy == -3.6
    assert EV_PER_A3_IN_KBAR == 1602.1766208


def test_real_vasp_frame_units():
    """The bundled real VASP frames: pressure sign survives the conversion."""
    import gzip

    from helpers import VASP_FRAMES
    data = json.load(gzip.open(VASP_FRAMES))
    for mid, frames in data.items():
        fid, rec = next(iter(frames.items()))
        f = frame_from_record(mid, fid, rec)
        kbar = np.array(rec["stress"])
        np.testing.assert_allclose(f.stress, -kbar / 1602.1766208)
        assert np.trace(f.stress) * np.trace(kbar) <= 0


def _zarr_python_write(group_path: Path, columns: dict, chunk_rows: dict, clevel: int,
                       blocksize: int) -> None:
    """The same arrays written through zarr-python's own API, for comparison."""
    import zarr
    from zarr.codecs import BloscCodec

    from orbitgraph.preprocess.schema import numpy_dtype
    group = zarr.open_group(str(group_path), mode="w", zarr_format=3)
    blosc = BloscCodec(cname="zstd", clevel=clevel, shuffle="shuffle", blocksize=blocksize)
    for f in FIELDS:
        arr = columns[f.name]
        if f.dtype == "str":
            group.create_array(f.name, data=np.asarray(arr, dtype=numpy_dtype(f)),
                               chunks=(max(1, len(arr)),))
            continue
        rows = chunk_rows[f.name]
        outer = max(rows, -(-arr.shape[0] // rows) * rows)
        group.create_array(f.name, data=arr, chunks=(rows, *f.shape), shards=(outer, *f.shape),
                           compressors=blosc)


@pytest.mark.parametrize("n_frames", [0, 3, 40])
def test_zarr_shards_are_what_zarr_python_writes(tmp_path, monkeypatch, n_frames):
    """The direct Zarr v3 writer: same documents and chunk bytes as zarr-python for the same
    arrays (small inner chunks, so that arrays hold several and the last one is padded),
    read back bit for bit by zarr-python, -0.0 and NaN included."""
    import zarr

    from orbitgraph.preprocess.store import backends
    monkeypatch.setattr(backends, "CHUNK_BYTES", 2000)
    rng = np.random.default_rng(5)
    frames = [random_frame(rng, int(rng.integers(1, 12)), f"f{i}", f"m{i // 3}",
                           stress=i % 4 != 1, magmom=i % 5 != 2) for i in range(n_frames)]
    columns = build_columns(frames, GraphParams())
    if n_frames:
        columns["positions"][0, 0] = -0.0
        columns["forces"][1, 2] = np.nan
    # no inner chunk may hold only the fill value: zarr-python leaves those out
    for name in ("positions", "forces", "n_edges", "neighbors", "unit_shifts") if n_frames else ():
        columns[name] = columns[name].copy()
        columns[name].reshape(len(columns[name]), -1)[::2, :1] += 1
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    backends.ZarrBackend().write(ours, columns)
    chunk_rows = {}
    for f in FIELDS:
        meta = json.loads((ours / "data.zarr" / f.name / "zarr.json").read_text())
        if f.dtype != "str":
            chunk_rows[f.name] = meta["codecs"][0]["configuration"]["chunk_shape"][0]
    if n_frames == 40:  # several inner chunks, the last one padded
        assert len(columns["unit_shifts"]) % chunk_rows["unit_shifts"] and \
            chunk_rows["unit_shifts"] < len(columns["unit_shifts"]) // 2
    _zarr_python_write(theirs / "data.zarr", columns, chunk_rows, backends.ZSTD_LEVEL,
                       backends.BLOSC_BLOCK)
    files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
    for rel in files:
        a, b = (ours / rel).read_bytes(), (theirs / rel).read_bytes()
        if rel.name == "zarr.json":
            assert json.loads(a) == json.loads(b), rel
        else:
            assert a == b, rel
    group = zarr.open_group(str(ours / "data.zarr"), mode="r")
    for f in FIELDS:
        got = group[f.name][...]
        want = columns[f.name]
        if f.dtype == "str":
            assert list(got) == list(want)
            continue
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), f.name
