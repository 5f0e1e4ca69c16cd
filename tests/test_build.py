"""The Dask build: schedulers agree, lost workers and killed drivers recover, bad records
are quarantined with their reason."""
from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import orbitgraph.preprocess.build as build_module
from helpers import SMALL_MPTRJ, load_small_mptrj
from orbitgraph.preprocess.build import build_store, source_bytes
from orbitgraph.preprocess.cluster import BuildProcessError, ClusterConfig
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.preprocess.sources import open_source
from orbitgraph.preprocess.store import open_store, verify_store
from orbitgraph.preprocess.store.shard import is_committed

SYNC = ClusterConfig(kind="synchronous")


def store_contents(path: Path) -> dict:
    """Everything a store holds that must not depend on how it was built."""
    store = open_store(path)
    out = {"index": store.index.to_pylist(), "quarantine": store.quarantine().to_pylist(),
           "counts": store.manifest.counts, "stats": store.manifest.statistics}
    for s, data, _ in store.iter_shards(range(len(store.manifest.shards))):
        for name, arr in data.columns.items():
            out[f"{s}/{name}"] = arr
    return out


def assert_same_store(a: Path, b: Path):
    """Equal contents; a NaN (a magnetic moment the source lacks) equals a NaN."""
    ca, cb = store_contents(a), store_contents(b)
    assert ca.keys() == cb.keys()
    for key in ca:
        if isinstance(ca[key], np.ndarray):
            assert ca[key].dtype == cb[key].dtype, key
            np.testing.assert_array_equal(ca[key], cb[key], err_msg=key, strict=True)
        else:
            assert repr(ca[key]) == repr(cb[key]), key


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "store"
    build_store(SMALL_MPTRJ, out, frames_per_shard=30, cluster=SYNC, progress=False)
    return out


def test_sync_build_contents(reference_store):
    store = open_store(reference_store)
    data = load_small_mptrj()
    n_records = sum(len(v) for v in data.values())
    assert len(store) + store.manifest.counts["quarantined"] == n_records
    assert len(store.manifest.shards) > 3
    # all frames of a material in one shard
    shard_of = {}
    for row in store.index.to_pylist():
        assert shard_of.setdefault(row["material_id"], row["shard"]) == row["shard"]
    assert verify_store(reference_store, sample=20).ok


def test_gzip_and_plain_sources_partition_alike(tmp_path):
    plain = tmp_path / "mptrj.json"
    plain.write_bytes(gzip.open(SMALL_MPTRJ).read())
    a = list(open_source(plain).partitions(25))
    b = list(open_source(SMALL_MPTRJ).partitions(25))
    assert [(p.n_frames, p.n_materials) for p in a] == [(p.n_frames, p.n_materials) for p in b]
    src = open_source(plain)
    for pa_, pb in zip(a, b, strict=True):
        fa, _ = src.read(pa_, "uncorrected_total_energy")
        fb, _ = open_source(SMALL_MPTRJ).read(pb, "uncorrected_total_energy")
        assert [f.frame_id for f in fa] == [f.frame_id for f in fb]


def _scan_reference(data: bytes) -> list[tuple[int, int, int]]:
    """(start, end, frames) of each material entry, byte by byte in Python."""
    out, depth, in_string, escape, start, frames = [], 0, False, False, 0, 0
    for p, c in enumerate(data):
        if in_string:
            if escape:
                escape = False
            elif c == 92:
                escape = True
            elif c == 34:
                in_string = False
        elif c == 34:
            in_string = True
            if depth == 1:
                start, frames = p, 0
            elif depth == 2:
                frames += 1
        elif c in b"{[":
            depth += 1
        elif c in b"}]":
            depth -= 1
            if depth == 1:
                out.append((start, p + 1, frames))
    return out


def test_material_scanner_matches_a_byte_by_byte_reference():
    """Escapes, brackets and quotes inside strings, at every offset within the scanner's
    8-byte words and across the chunks it is fed."""
    from orbitgraph.preprocess.sources.mptrj_json import MaterialScanner

    rng = np.random.default_rng(11)
    tricky = ['a"b', "back\\slash", "x\\", "{[}]", "\\\"", "é-ü", "", "] } ,", "q" * 17]
    doc = {}
    for m in range(60):
        frames = {}
        for f in range(int(rng.integers(0, 4))):
            frames[f"{rng.choice(tricky)}-{m}-{f}"] = {
                "label": str(rng.choice(tricky)),
                "xyz": rng.normal(size=int(rng.integers(0, 5))).tolist(),
                "nested": [[{"s": str(rng.choice(tricky))}]] * int(rng.integers(0, 3))}
        doc[f"mp-{m}{rng.choice(tricky)}"] = frames
    for indent in (None, 1):
        data = json.dumps(doc, indent=indent, ensure_ascii=bool(indent)).encode()
        want = _scan_reference(data)
        assert len(want) == len(doc)
        for _ in range(6):
            scanner = MaterialScanner(cap=int(rng.integers(1, 9)))
            got, pos = [], 0
            while pos < len(data):
                step = int(rng.integers(1, 40))
                got += scanner.feed(data[pos:pos + step])
                pos += step
            scanner.finish("test")
            assert got == want


def _frames_equal(a, b):
    assert [(f.material_id, f.frame_id) for f in a] == [(f.material_id, f.frame_id) for f in b]
    for fa, fb in zip(a, b, strict=True):
        for name in ("cell", "positions", "numbers", "forces", "stress", "magmom", "pbc"):
            x, y = getattr(fa, name), getattr(fb, name)
            assert (x is None) == (y is None), name
            if x is not None:
                assert np.array_equal(x, y, equal_nan=True) and x.dtype == y.dtype, name
        assert fa.energy == fb.energy


def test_threads_build_what_one_thread_does_and_repeated_ids_keep_the_last(tmp_path):
    """Graphs built on several threads equal the one-thread graphs; a material id given
    twice in a partition keeps its last entry, as JSON's rule for repeated keys says."""
    from orbitgraph.preprocess.graph import knn_graphs_screened

    plain = tmp_path / "mptrj.json"
    plain.write_bytes(gzip.open(SMALL_MPTRJ).read())
    part, = open_source(plain).partitions(100_000)
    frames, quarantine = open_source(plain).read(part, "uncorrected_total_energy")
    assert quarantine == [] and len(frames) == sum(map(len, load_small_mptrj().values()))
    args = (np.array([f.cell for f in frames]), [f.positions for f in frames],
            np.array([f.pbc for f in frames]), GraphParams(k=16, tie_tolerance=0.01), 0.5)
    (g1, failed1), (g3, failed3) = (knn_graphs_screened(*args, threads=t) for t in (1, 3))
    assert failed1 == failed3
    for name in ("centers", "neighbors", "unit_shifts", "distances", "next_distance",
                 "next_neighbor", "next_unit_shift", "edge_ptr", "atom_ptr"):
        assert np.array_equal(getattr(g1, name), getattr(g3, name)), name

    # the first material again at the end, with other frames: the last one wins
    data = plain.read_bytes()
    first_id, first_entry = next(iter(load_small_mptrj().items()))
    last = {fid + "-again": rec for fid, rec in list(first_entry.items())[:1]}
    repeated = data.rstrip()[:-1] + b", " + json.dumps(first_id).encode() + b": " + \
        json.dumps(last).encode() + b"}"
    path = tmp_path / "repeated.json"
    path.write_bytes(repeated)
    part, = open_source(path).partitions(100_000)
    got, _ = open_source(path).read(part, "uncorrected_total_energy")
    assert [f.frame_id for f in got if f.material_id == first_id] == list(last)
    assert len(got) == len(frames) - len(first_entry) + 1


def test_a_single_partition_is_built_in_process(tmp_path, reference_store, caplog):
    """The default local cluster is not started for one task; the store is the same."""
    caplog.set_level(logging.INFO, logger="orbitgraph.build")
    summary = build_store(SMALL_MPTRJ, tmp_path / "store", frames_per_shard=100_000,
                          progress=False)
    lines = caplog.messages
    assert any(line.startswith("one partition") for line in lines), lines
    assert summary.dashboard is None and summary.shards_built == 1
    assert open_store(tmp_path / "store").manifest.build["cluster"] == "synchronous"
    ref = store_contents(reference_store)
    one = store_contents(tmp_path / "store")
    assert one["index"] == [dict(r, shard=0, row=i) for i, r in enumerate(ref["index"])]
    assert one["quarantine"] == ref["quarantine"]


@pytest.mark.parametrize("cores", [2, 1], ids=["forked-processes", "one-core"])
@pytest.mark.parametrize("compressed", [True, False], ids=["gzip", "plain"])
def test_a_small_source_is_built_without_a_cluster(tmp_path, reference_store, caplog,
                                                   monkeypatch, cores, compressed):
    """Under ``cluster.in_process_max_bytes`` the default local cluster is not started:
    the partitions are built on processes forked from this one (or, on one core, in this
    process) into the same store as the Dask path builds (see
    test_local_cluster_matches_synchronous), from a gzip file (partitions carry their
    bytes) or a plain one (byte ranges), and an interrupted build resumes."""
    monkeypatch.setattr(build_module, "local_cores", lambda: cores)
    src = SMALL_MPTRJ
    if not compressed:
        src = tmp_path / "mptrj.json"
        src.write_bytes(gzip.open(SMALL_MPTRJ).read())
    out = tmp_path / "store"
    caplog.set_level(logging.INFO, logger="orbitgraph.build")
    summary = build_store(src, out, frames_per_shard=30, progress=False)
    where = "on 2 processes forked" if cores == 2 else "in this process, one partition"
    assert any("in_process_max_bytes" in line and where in line
               for line in caplog.messages), caplog.messages
    assert open_store(out).manifest.build["cluster"] == (
        "processes (2)" if cores == 2 else "synchronous")
    n_shards = len(open_store(reference_store).manifest.shards)
    assert summary.dashboard is None and summary.shards_built == n_shards > 1
    assert summary.frames_built == summary.frames == len(open_store(out))
    if compressed:  # a plain copy hashes the same bytes only after decompression
        assert (open_store(out).manifest.store_id
                == open_store(reference_store).manifest.store_id)
    assert_same_store(out, reference_store)
    (out / "manifest.json").unlink()  # as if interrupted before the last shard
    shutil.rmtree(out / "shards" / "shard-000002")
    summary = build_store(src, out, frames_per_shard=30, progress=False)
    assert (summary.shards_built, summary.shards_skipped) == (1, n_shards - 1)
    assert summary.frames_built == open_store(out).manifest.shards[2].frames < summary.frames
    assert f"({summary.frames_built} frames built in this run)" in summary.text()
    assert_same_store(out, reference_store)


def _fail_on_shard_2(source, part, *args, **kwargs):
    """build_partition, except that partition 2 fails as a full disk would."""
    if part.index == 2:
        raise OSError(f"no space left on device (partition {part.index})")
    return _BUILD_PARTITION(source, part, *args, **kwargs)


_BUILD_PARTITION = build_module.build_partition


def _die_on_shard_2(source, part, *args, **kwargs):
    """build_partition, except that the process building partition 2 is killed (as the
    kernel's out-of-memory killer would)."""
    if part.index == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return _BUILD_PARTITION(source, part, *args, **kwargs)


def test_a_killed_build_process_is_named_and_the_build_resumes(tmp_path, reference_store,
                                                               monkeypatch):
    monkeypatch.setattr(build_module, "local_cores", lambda: 2)
    monkeypatch.setattr(build_module, "build_partition", _die_on_shard_2)
    out = tmp_path / "store"
    with pytest.raises(BuildProcessError,
                       match="a build process died .* run the same build again"):
        build_store(SMALL_MPTRJ, out, frames_per_shard=30, progress=False)
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(build_module, "build_partition", _BUILD_PARTITION)
    build_store(SMALL_MPTRJ, out, frames_per_shard=30, progress=False)
    assert_same_store(out, reference_store)


def test_a_failing_partition_stops_a_forked_build_and_a_rerun_finishes_it(
        tmp_path, reference_store, monkeypatch):
    """A partition's error in a forked worker reaches the caller as itself (not a broken
    pool); the shards committed before it stay, no manifest is written, and a rerun builds
    only what is missing."""
    monkeypatch.setattr(build_module, "local_cores", lambda: 2)
    monkeypatch.setattr(build_module, "build_partition", _fail_on_shard_2)
    out = tmp_path / "store"
    with pytest.raises(OSError, match=r"no space left on device \(partition 2\)"):
        build_store(SMALL_MPTRJ, out, frames_per_shard=30, progress=False)
    assert not (out / "manifest.json").exists()
    assert not is_committed(out, "shard-000002")
    monkeypatch.setattr(build_module, "build_partition", _BUILD_PARTITION)
    summary = build_store(SMALL_MPTRJ, out, frames_per_shard=30, progress=False)
    assert summary.shards_skipped >= 1 and summary.shards_built >= 1
    assert_same_store(out, reference_store)


def test_source_bytes_counts_decompressed_bytes(tmp_path):
    plain = tmp_path / "mptrj.json"
    plain.write_bytes(gzip.open(SMALL_MPTRJ).read())
    assert source_bytes(SMALL_MPTRJ) == source_bytes(plain) == plain.stat().st_size
    assert source_bytes(tmp_path) == plain.stat().st_size
    with pytest.raises(ValueError, match="in_process_max_bytes"):
        ClusterConfig(in_process_max_bytes=-1)


def test_rebuild_of_a_complete_store_does_nothing(reference_store):
    summary = build_store(SMALL_MPTRJ, reference_store, frames_per_shard=30, cluster=SYNC,
                          progress=False)
    assert summary.already_complete
    assert "nothing to do" in summary.text()


@pytest.mark.slow
def test_local_cluster_matches_synchronous(tmp_path, reference_store):
    out = tmp_path / "store"
    summary = build_store(SMALL_MPTRJ, out, frames_per_shard=30, progress=False,
                          cluster=ClusterConfig(workers=2, in_process_max_bytes=0))
    assert summary.dashboard and summary.shards_built == len(open_store(out).manifest.shards)
    assert summary.frames_built == summary.frames
    assert open_store(out).manifest.store_id == open_store(reference_store).manifest.store_id
    assert_same_store(out, reference_store)


def _slow_source_script(out: Path, delay: float, frames_per_shard: int,
                        forked: bool = False) -> str:
    """A build of the small source whose partitions each take ``delay`` s more; on this
    process (``forked``: on 2 processes forked from it); it prints its pid first."""
    cluster = "ClusterConfig()" if forked else "ClusterConfig(kind='synchronous')"
    return f"""
import os, time, preprocess.build as P
from orbitgraph.preprocess.cluster import ClusterConfig
original = P.build_partition
def slow(*a, **k):
    time.sleep({delay})
    return original(*a, **k)
P.build_partition = slow
P.local_cores = lambda: 2
print(os.getpid(), flush=True)
P.build_store({str(SMALL_MPTRJ)!r}, {str(out)!r}, frames_per_shard={frames_per_shard},
              cluster={cluster}, progress=False)
"""


def test_killed_driver_resumes_with_only_missing_shards(tmp_path, reference_store):
    out = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", _slow_source_script(out, 0.4, 30)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            done = sum(is_committed(out, f"shard-{i:06d}") for i in range(20))
            if done >= 2 or proc.poll() is not None:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    committed = sorted(p.name for p in (out / "shards").iterdir() if is_committed(out, p.name))
    n_total = len(open_store(reference_store).manifest.shards)
    assert 0 < len(committed) < n_total, "the kill must land mid-build"
    assert not (out / "manifest.json").exists()
    summary = build_store(SMALL_MPTRJ, out, frames_per_shard=30, cluster=SYNC,
                          progress=False)
    assert summary.shards_skipped == len(committed)
    assert summary.shards_built == n_total - len(committed)
    assert_same_store(out, reference_store)


@pytest.mark.slow
def test_lost_worker_is_survived(tmp_path, reference_store):
    from distributed import Client, LocalCluster

    out = tmp_path / "store"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        killed = []

        def killer():
            deadline = time.time() + 120
            while time.time() < deadline and not killed:
                if any(is_committed(out, f"shard-{i:06d}") for i in range(20)):
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                time.sleep(0.01)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        # slow tasks so the kill lands mid-build: run the build through a wrapper
        client.run(_install_slow_partitions, 0.3)
        summary = build_store(SMALL_MPTRJ, out, frames_per_shard=30, progress=False,
                              cluster=ClusterConfig(kind="address",
                                                    address=cluster.scheduler_address))
        thread.join(5)
    assert killed, "a worker was killed mid-build"
    assert summary.frames == len(open_store(reference_store))
    assert verify_store(out, sample=20).ok
    assert_same_store(out, reference_store)


def _install_slow_partitions(delay: float) -> None:
    """On a worker: make every partition take ``delay`` s longer (keeps the kill mid-build)."""
    import time as _time

    import orbitgraph.preprocess.store.writer as W

    if getattr(W.write_frames_shard, "_slowed", False):
        return
    original = W.write_frames_shard

    def slow(*a, **k):
        _time.sleep(delay)
        return original(*a, **k)

    slow._slowed = True
    W.write_frames_shard = slow
    import orbitgraph.preprocess.build as P
    P.write_frames_shard = slow


# ---------------------------------------------------------------------- quarantine

def _record(n=2, **overrides) -> dict:
    rng = np.random.default_rng(n)
    rec = {
        "structure": {"lattice": {"matrix": [[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]]},
                      "sites": [{"species": [{"element": "Na", "occu": 1}],
                                 "xyz": (np.array([0.5, 0.5, 0.5]) + 1.9 * i).tolist()}
                                for i in range(n)]},
        "uncorrected_total_energy": -2.0 * n, "corrected_total_energy": -2.1 * n,
        "force": rng.normal(0, 0.1, (n, 3)).tolist(),
        "stress": [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], "magmom": None,
    }
    rec.update(overrides)
    return rec


def test_planted_bad_records_are_quarantined(tmp_path):
    good = {f"mp-{i}": {f"mp-{i}-0-{j}": _record(2 + j) for j in range(3)} for i in range(6)}
    singular = _record()
    singular["structure"]["lattice"]["matrix"] = [[10.0, 0, 0], [20.0, 0, 0], [0, 0, 10.0]]
    left_handed = _record()  # a valid crystal: stored
    left_handed["structure"]["lattice"]["matrix"] = [[10.0, 0, 0], [0, 0, 10.0], [0, 10.0, 0]]
    huge = _record()
    huge["structure"]["lattice"]["matrix"] = [[1e300, 0, 0], [0, 1e300, 0], [0, 0, 10.0]]
    close = _record()
    close["structure"]["sites"][1]["xyz"] = [0.6, 0.5, 0.5]
    no_force = _record()
    del no_force["force"]
    bad = {
        "mp-bad": {
            "mp-bad-missing-energy": _record(uncorrected_total_energy=None),
            "mp-bad-no-force": no_force,
            "mp-bad-force-count": _record(force=[[0.0, 0.0, 0.0]]),
            "mp-bad-singular": singular,
            "mp-bad-left-handed": left_handed,
            "mp-bad-huge": huge,
            "mp-bad-close": close,
            "mp-bad-not-a-record": [1, 2, 3],
            "mp-bad-good-neighbour": _record(3),
        },
    }
    path = tmp_path / "planted.json"
    text = json.dumps({**dict(list(good.items())[:3]), **bad, **dict(list(good.items())[3:])})
    # a NaN literal as Python writes it, and a material whose JSON is broken
    nan_rec = json.dumps(
        {"mp-nan": {"mp-nan-0": _record(2, uncorrected_total_energy=float("nan"))}})[1:-1]
    text = text[:-1] + ", " + nan_rec + ', "mp-broken": {"mp-broken-0": {"structure": [1, 2,]}}}'
    path.write_text(text)
    summary = build_store(path, tmp_path / "store", frames_per_shard=4, cluster=SYNC,
                          progress=False)
    store = open_store(tmp_path / "store")
    reasons = {r["frame_id"]: r["reason"] for r in store.quarantine().to_pylist()}
    expected = {
        "mp-bad-missing-energy": "uncorrected_total_energy: missing",
        "mp-bad-no-force": "force: missing",
        "mp-bad-force-count": "force: 1 rows for 2 atoms",
        "mp-bad-singular": "singular cell",
        "mp-bad-huge": "cell too large",
        "mp-bad-close": "closer than 0.5",
        "mp-bad-not-a-record": "record: expected an object",
        "mp-nan-0": "uncorrected_total_energy: NaN",
        "?": "malformed JSON",
    }
    for fid, phrase in expected.items():
        assert fid in reasons, f"{fid} not quarantined"
        assert phrase in reasons[fid], (fid, reasons[fid])
    good_ids = {fid for m in good.values() for fid in m} | {"mp-bad-good-neighbour",
                                                            "mp-bad-left-handed"}
    assert set(store.frame_ids) == good_ids
    assert summary.quarantined == len(expected)
    assert sum(summary.quarantine_reasons.values()) == len(expected)
    assert summary.quarantine_reasons["structure: atoms # and # are closer than 0.5 Å"] == 1
    assert verify_store(tmp_path / "store").ok


def test_quarantine_summary_groups_reasons_by_kind():
    from orbitgraph.preprocess.build import reason_kind
    same = ["structure: atoms 0 and 0 (cell shift (-1, 1, 0)) are closer than 0.5 Å",
            "structure: atoms 3 and 17 (cell shift (0, 0, 0)) are closer than 0.5 Å"]
    assert {reason_kind(r) for r in same} == {"structure: atoms # and # are closer than 0.5 Å"}
    assert reason_kind("force: 1 rows for 2 atoms") == reason_kind("force: 7 rows for 9 atoms")
    assert reason_kind("force: 1 rows for 2 atoms") != reason_kind("force: missing")
    assert reason_kind("structure.lattice: singular cell (volume 0 Å^3)") == \
        "structure.lattice: singular cell"


def test_extxyz_source(tmp_path):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for i, _ in enumerate(load_small_mptrj()):
        if i >= 6:
            break
        rng = np.random.default_rng(i)
        atoms = Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0.1 * i, 0]], cell=np.eye(3) * 5.6,
                      pbc=True)
        atoms.calc = SinglePointCalculator(atoms, energy=-6.5 - i, forces=rng.normal(size=(2, 3)),
                                           stress=rng.normal(size=6) * 1e-3)
        atoms.info.update(mp_id=f"mp-{i // 2}", calc_id=0, ionic_step=i)
        frames.append(atoms)
    write(tmp_path / "a.extxyz", frames[:4])
    write(tmp_path / "b.extxyz", frames[4:])
    summary = build_store(tmp_path, tmp_path / "store", frames_per_shard=2, cluster=SYNC,
                          progress=False)
    store = open_store(tmp_path / "store")
    assert summary.frames == 6 and len(store.manifest.shards) == 3
    got = store.get("mp-1-0-3")
    assert got["energy"] == -9.5
    np.testing.assert_allclose(got["forces"], frames[3].get_forces(), rtol=1e-6)
    np.testing.assert_allclose(got["stress"], frames[3].get_stress(voigt=False))


def test_the_forked_build_processes_die_with_a_killed_driver(tmp_path, reference_store):
    """SIGKILL (or an unhandled SIGTERM) of the build's process leaves no chance to stop its
    workers: they are killed with it (PR_SET_PDEATHSIG), not left orphaned waiting for
    work; a rerun resumes to the same store."""
    import psutil

    out = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", _slow_source_script(out, 1.0, 30, True)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert int(proc.stdout.readline()) == proc.pid
        deadline = time.time() + 120
        workers = []
        while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
            workers = psutil.Process(proc.pid).children()
            time.sleep(0.05)
        assert len(workers) == 2, proc.stderr.read() if proc.poll() is not None else workers
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"orphaned build processes: {alive}"
    build_store(SMALL_MPTRJ, out, frames_per_shard=30, cluster=SYNC, progress=False)
    assert_same_store(out, reference_store)


def _build_in_a_daemon(src: str, out: str) -> str:
    from orbitgraph.preprocess.build import build_store
    from orbitgraph.preprocess.store import open_store

    build_store(src, out, frames_per_shard=30, progress=False)
    return open_store(out).manifest.build["cluster"]


def test_a_build_inside_a_daemon_process_runs_in_it(tmp_path, reference_store, monkeypatch):
    """A multiprocessing or Dask worker (a daemon) may not have children: the build runs in
    it, partition by partition."""
    import multiprocessing

    monkeypatch.setattr(build_module, "local_cores", lambda: 2)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        where = pool.apply(_build_in_a_daemon, (str(SMALL_MPTRJ), str(tmp_path / "store")))
    assert where == "synchronous"
    assert_same_store(tmp_path / "store", reference_store)


def test_the_caller_s_gc_freeze_stays(tmp_path, monkeypatch):
    import gc

    monkeypatch.setattr(build_module, "local_cores", lambda: 2)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        build_store(SMALL_MPTRJ, tmp_path / "store", frames_per_shard=30, progress=False)
        # objects frozen leave the count only when freed (an unfreeze would empty it)
        assert gc.get_freeze_count() > frozen // 2 > 0
    finally:
        gc.unfreeze()


def test_a_truncated_gzip_source_is_one_clear_error(tmp_path):
    data = SMALL_MPTRJ.read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.json.gz: the gzip stream is truncated or "
                                         r"damaged \(reading on from decompressed byte 0: "
                                         "Compressed file ended"):
        build_store(cut, tmp_path / "store", frames_per_shard=30, cluster=SYNC,
                    progress=False)


@pytest.mark.parametrize("workers, where", [(1, "synchronous"), (2, "processes (2)")])
def test_cluster_workers_bounds_the_forked_processes(tmp_path, reference_store, monkeypatch,
                                                     workers, where):
    """``cluster.workers`` (``--workers``) bounds the processes of a build without a
    cluster as it sizes a LocalCluster; 1 builds in this process."""
    monkeypatch.setattr(build_module, "local_cores", lambda: 4)
    out = tmp_path / "store"
    build_store(SMALL_MPTRJ, out, frames_per_shard=30, progress=False,
                cluster=ClusterConfig(workers=workers))
    assert open_store(out).manifest.build["cluster"] == where
    assert_same_store(out, reference_store)


def _refuse_to_rebuild():
    raise TypeError("this object cannot be rebuilt")


class _Unrebuildable:
    def __reduce__(self):
        return _refuse_to_rebuild, ()


class _TwoArgumentError(Exception):
    """An exception that pickles but cannot be rebuilt from its pickle (its attribute's
    rebuild fails, whoever pickles exceptions: the standard library or tblib, which
    distributed installs)."""

    def __init__(self, what, where):
        super().__init__(f"{what} at {where}")
        self.detail = _Unrebuildable()


def _raise_unrebuildable(source, part, *args, **kwargs):
    if part.index == 1:
        raise _TwoArgumentError("bad thing", f"partition {part.index}")
    return _BUILD_PARTITION(source, part, *args, **kwargs)


def test_an_exception_that_cannot_be_unpickled_is_reported_not_a_dead_process(
        tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "local_cores", lambda: 2)
    monkeypatch.setattr(build_module, "build_partition", _raise_unrebuildable)
    with pytest.raises(RuntimeError, match="_TwoArgumentError: bad thing at partition 1") as err:
        build_store(SMALL_MPTRJ, tmp_path / "store", frames_per_shard=30, progress=False)
    assert not isinstance(err.value, BuildProcessError)


def test_forked_build_processes_leave_ctrl_c_to_the_build(tmp_path):
    """Ctrl-C reaches the whole process group: a worker ignores it (it finishes its
    partition; an idle one prints no traceback), the build's process handles it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ours = signal.getsignal(signal.SIGINT)  # the default, or ignored in a background job
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"),
                                 initializer=build_module._init_build_process,
                                 initargs=(os.getpid(),)) as pool:
            assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, ours)


# ------------------------------------------------------------------ empty splits

def _small_as_extxyz(path: Path) -> Path:
    """The bundled MPtrj sample's frames, materials and ids as an extended XYZ file."""
    from helpers import write_source
    from orbitgraph.units import stress_from_vasp_kbar

    frames = []
    for mid, records in load_small_mptrj().items():
        for fid, rec in records.items():
            sites = rec["structure"]["sites"]
            frames.append({"mid": mid, "fid": fid,
                           "symbols": [s["species"][0]["element"] for s in sites],
                           "positions": np.array([s["xyz"] for s in sites]),
                           "cell": np.array(rec["structure"]["lattice"]["matrix"]),
                           "energy": rec["uncorrected_total_energy"],
                           "forces": np.array(rec["force"]),
                           "stress": stress_from_vasp_kbar(np.array(rec["stress"]))})
    return write_source(path, "extxyz", frames)


@pytest.mark.parametrize("fmt", ["mptrj-json", "extxyz"])
def test_an_empty_split_is_a_build_warning_naming_the_fraction_that_fills_it(tmp_path, fmt,
                                                                            caplog):
    """The bundled sample's 31 stored materials with the default 5 % test split: the test
    split holds none. The build warns (logged, and in the summary), naming the split and
    the fraction that gives it frames; that fraction does, and a split asked to be empty
    (fraction 0) is no warning."""
    import re

    from orbitgraph.preprocess.store.params import SplitParams

    src = SMALL_MPTRJ if fmt == "mptrj-json" else _small_as_extxyz(tmp_path / "small")
    with caplog.at_level(logging.WARNING, logger="orbitgraph.build"):
        summary = build_store(src, tmp_path / "default", cluster=SYNC, progress=False)
    assert len(summary.warnings) == 1, summary.warnings
    warning = summary.warnings[0]
    assert "the test split holds no frames: test_fraction 0.05 takes none of the 31 " \
           "materials" in warning
    assert warning in [r.getMessage() for r in caplog.records]
    found = re.search(r"test_fraction ([0-9.]+) would give it 1 material \((\d+) frames\)",
                      warning)
    assert found, warning
    filled = build_store(src, tmp_path / "filled", cluster=SYNC, progress=False,
                         split=SplitParams(test_fraction=float(found.group(1))))
    assert filled.warnings == []
    splits = open_store(tmp_path / "filled").index.column("split").to_pylist()
    assert splits.count("test") == int(found.group(2)) > 0
    no_test = build_store(src, tmp_path / "no-test", cluster=SYNC, progress=False,
                          split=SplitParams(val_fraction=0.1, test_fraction=0.0))
    assert no_test.warnings == []


def test_empty_splits_names_each_empty_split_and_the_fraction_that_fills_it():
    """val and train too: the fraction named gives the split exactly the material, and the
    frames, it says."""
    import re

    from orbitgraph.preprocess.store import SplitParams, empty_splits, split_of
    from orbitgraph.preprocess.store.writer import split_position

    ids = [f"mp-{i}" for i in range(5) for _ in range(i + 1)]  # mp-i has i + 1 frames
    by_u = sorted(set(ids), key=lambda mid: split_position(mid, 0))
    first, last = by_u[0], by_u[-1]
    cases = {  # split: (params that leave it empty, the material its advice adds)
        "val": (SplitParams(val_fraction=1e-6, test_fraction=0.0), first),
        "train": (SplitParams(val_fraction=split_position(last, 0) + 1e-9,
                              test_fraction=0.0), last),
    }
    for name, (params, material) in cases.items():
        text = empty_splits(ids, params)[name]
        assert text.startswith(f"the {name} split holds no frames"), text
        found = re.search(r"(val_fraction|val_fraction \+ test_fraction) ([0-9.e-]+) would give "
                          r"it 1 material \((\d+) frames?\)", text)
        assert found, text
        value = float(found.group(2))
        held = [mid for mid in set(ids)
                if split_of(mid, SplitParams(val_fraction=value, test_fraction=0.0)) == name]
        assert held == [material] and int(found.group(3)) == ids.count(material), text
    assert empty_splits([], SplitParams()) == {}
