"""Reuse you can trust: a store id changes with any byte of its source, an unchanged source
is recognised from its file status, a folder holding another store (complete or partial)
says what differs, and a source given where a store is expected says how to build one."""
from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

import orbitgraph.preprocess.build as build_module
from extxyz_writer import frame_text, nacl
from helpers import load_small_mptrj
from orbitgraph.preprocess.build import build_store, make_spec
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.store import StoreError, open_store
from orbitgraph.preprocess.store.shard import is_committed
from orbitgraph.train.cli import main

SYNC = ClusterConfig(kind="synchronous")
BIG = 20 << 20  # bytes: larger than what a sampled fingerprint would read whole (16 MB)
ENERGY = b'"uncorrected_total_energy": '
BUILD_FILE = "build.json"  # written into a store's folder when its build starts


def committed_shards(out: Path) -> list[str]:
    return [p.name for p in sorted((out / "shards").glob("shard-*")) if is_committed(out, p.name)]


# ------------------------------------------------------------------ sources to change

def mptrj_text(materials: dict, size: int = 0) -> bytes:
    """``materials`` as an MPtrj JSON file of about ``size`` bytes: whitespace (valid JSON)
    spread evenly between the materials, so that they lie all over the file."""
    entries = [json.dumps(mid) + ": " + json.dumps(frames) for mid, frames in materials.items()]
    gap = " " * max(0, (size - sum(map(len, entries))) // (len(entries) + 1))
    return ("{" + gap + (gap + ", ").join(entries) + gap + "}").encode()


def energy_digits(data: bytes, marker: bytes) -> list[int]:
    """Offsets of the first decimal digit of every value that follows ``marker``."""
    offsets, at = [], data.find(marker)
    while at >= 0:
        offsets.append(data.index(b".", at + len(marker)) + 1)
        at = data.find(marker, at + 1)
    return offsets


def extxyz_text(n_frames: int, first: int = 0) -> bytes:
    """``n_frames`` 2-atom frames, each its own material, energies -6.5xxx eV."""
    symbols, positions, cell = nacl()
    forces = np.zeros((2, 3))
    return "".join(frame_text(symbols, positions, cell,
                              {"energy": -6.5 - 1e-4 * i, "stress": np.full(6, 1e-3),
                               "mp_id": f"mp-{i}"},
                              {"forces": forces})
                   for i in range(first, first + n_frames)).encode()


def _mptrj_plain(tmp: Path):
    data = mptrj_text(load_small_mptrj(), BIG)
    src = tmp / "mptrj.json"
    src.write_bytes(data)
    return src, [(src, at) for at in energy_digits(data, ENERGY)[::5]]


def _mptrj_gzip(tmp: Path):
    src = tmp / "mptrj.json.gz"
    src.write_bytes(gzip.compress(mptrj_text(load_small_mptrj())))
    size = src.stat().st_size
    return src, [(src, at) for at in range(10, size - 8, max(1, (size - 18) // 12))]


def _extxyz_file(tmp: Path):
    data = extxyz_text(BIG // 250)
    src = tmp / "frames.extxyz"
    src.write_bytes(data)
    digits = energy_digits(data, b"energy=")
    return src, [(src, at) for at in digits[::len(digits) // 24]]


def _extxyz_folder(tmp: Path):
    src = tmp / "folder"
    (src / "part").mkdir(parents=True)
    small, big = src / "a.xyz", src / "part" / "b.extxyz"
    small.write_bytes(extxyz_text(10))
    big.write_bytes(extxyz_text(BIG // 250, first=10))
    edits = [(small, at) for at in energy_digits(small.read_bytes(), b"energy=")[::3]]
    digits = energy_digits(big.read_bytes(), b"energy=")
    return src, edits + [(big, at) for at in digits[::len(digits) // 16]]


LAYOUTS = {"mptrj-json": _mptrj_plain, "mptrj-json-gzip": _mptrj_gzip,
           "extxyz-file": _extxyz_file, "extxyz-folder": _extxyz_folder}


def change_byte(path: Path, offset: int, new: bytes | None = None) -> bytes:
    """Replace the byte at ``offset`` (by default by another digit) in place (same size,
    same inode) and set the modification time back, as a careful hand edit might; returns
    the old byte."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(new or (b"7" if old != b"7" else b"3"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    return old


def put_byte(path: Path, offset: int, byte: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(byte)


def store_id(src: Path) -> str:
    return make_spec(src)[1].store_id


# ------------------------------------------------------------------ 1. the store id

@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_change_of_a_sources_content_gives_another_store_id(tmp_path, layout):
    """One byte changed anywhere in any file the source reads (a same-size edit whose
    modification time was set back, in files larger than 16 MB too) gives another store
    id; undone, the id is the original again. The source is left to settle first (longer
    than the 2 s in which a digest is not cached), so that each edited version is
    compared with a cached digest of the original: a cache keyed on size and
    modification time alone would serve it."""
    src, edits = LAYOUTS[layout](tmp_path)
    assert len(edits) >= 10
    time.sleep(2.5)
    original = store_id(src)
    assert store_id(src) == original, "an unchanged source keeps its id"
    ids = set()
    for path, offset in edits:
        old = change_byte(path, offset)
        changed = store_id(src)
        assert changed != original, f"{path.name}: byte {offset} of {path.stat().st_size} " \
                                    "changed, same store id"
        ids.add(changed)
        put_byte(path, offset, old)
        assert store_id(src) == original, f"{path.name}: byte {offset} restored, another id"
    assert len(ids) == len(edits), "each change gives its own store id"


def test_a_folder_source_s_id_follows_its_files(tmp_path):
    """A folder's id changes with a file added, removed or renamed (what is read changes),
    not with files the source does not read."""
    src = tmp_path / "folder"
    src.mkdir()
    (src / "a.xyz").write_bytes(extxyz_text(3))
    (src / "b.xyz").write_bytes(extxyz_text(3, first=3))
    original = store_id(src)
    (src / "notes.txt").write_text("not read by the source")
    assert store_id(src) == original
    seen = {original}
    (src / "c.xyz").write_bytes(extxyz_text(1, first=6))
    seen.add(store_id(src))
    (src / "c.xyz").unlink()
    assert store_id(src) == original
    (src / "b.xyz").rename(src / "z.xyz")
    seen.add(store_id(src))
    (src / "z.xyz").unlink()
    seen.add(store_id(src))
    assert len(seen) == 4


def test_a_corrected_energy_is_built_not_served_from_the_old_store(tmp_path):
    """The issue's case: one energy corrected with a value of the same length in the middle
    of a 40 MB MPtrj file, far from its first and last 16 MB. Rebuilding into the same
    --out is refused, naming the file that changed (the old store is not served as
    complete); a fresh --out gets another store id and stores the corrected energy."""
    sample = load_small_mptrj()
    materials = {mid: sample[mid] for mid in list(sample)[:3]}
    src = tmp_path / "mptrj.json"
    src.write_bytes(mptrj_text(materials, 40 << 20))
    first = build_store(src, tmp_path / "store", cluster=SYNC, progress=False)
    mid = list(materials)[1]
    fid, record = next(iter(materials[mid].items()))
    data = src.read_bytes()
    start = data.index(ENERGY, data.index(json.dumps(fid).encode())) + len(ENERGY)
    text = json.dumps(record["uncorrected_total_energy"]).encode()
    assert data[start:].startswith(text) and 12 << 20 < start < 28 << 20
    at = start + text.index(b".") + 1  # the first decimal digit
    digit = b"1" if data[at:at + 1] != b"1" else b"2"
    change_byte(src, at, digit)
    corrected = float(data[start:at] + digit + data[at + 1:start + len(text)])
    assert corrected != record["uncorrected_total_energy"]

    assert main(["build", "--source", src, "--out", tmp_path / "store", "--scheduler",
                 "synchronous", "--quiet"]) == 2
    with pytest.raises(StoreError, match=rf"already holds another store .*{src} changed "
                                         r"\(SHA-256 was \w+\.\.\., is \w+\.\.\.\)"):
        build_store(src, tmp_path / "store", cluster=SYNC, progress=False)
    assert open_store(tmp_path / "store").get(fid)["energy"] == record[
        "uncorrected_total_energy"], "the old store is left as it was"
    fresh = build_store(src, tmp_path / "fresh", cluster=SYNC, progress=False)
    assert fresh.store_id != first.store_id
    assert open_store(tmp_path / "fresh").get(fid)["energy"] == corrected


# ------------------------------------------------------------------ 2. the digest cache

def test_an_unchanged_file_is_recognised_without_reading_it(tmp_path, monkeypatch):
    """Hashed once, then recognised from its status (the cache in $XDG_CACHE_HOME); any
    write (here one that keeps the size and sets the modification time back) reads it
    again."""
    import orbitgraph.preprocess.sources.fingerprint as fingerprint

    monkeypatch.setattr(fingerprint, "RACY_NS", -10**12)
    src = tmp_path / "frames.xyz"
    src.write_bytes(extxyz_text(50))
    hashed = []
    real = fingerprint.file_sha256
    monkeypatch.setattr(fingerprint, "file_sha256", lambda p: hashed.append(p) or real(p))
    first = store_id(src)
    assert store_id(src) == first and len(hashed) == 1
    assert str(src.resolve()) in json.loads(
        (Path(os.environ["XDG_CACHE_HOME"]) / "orbitgraph" / fingerprint.CACHE_FILE).read_text())
    old = change_byte(src, 100)
    assert store_id(src) != first and len(hashed) == 2
    put_byte(src, 100, old)
    assert store_id(src) == first and len(hashed) == 3


def test_a_file_just_written_is_not_remembered(tmp_path):
    """A file changed within RACY_NS before its hash could change again within the same
    timestamp tick unseen: its digest is used but not cached."""
    import orbitgraph.preprocess.sources.fingerprint as fingerprint

    src = tmp_path / "frames.xyz"
    src.write_bytes(extxyz_text(5))
    store_id(src)
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "orbitgraph" / fingerprint.CACHE_FILE
    assert not cache.exists() or str(src.resolve()) not in json.loads(cache.read_text())


def test_a_damaged_cache_is_a_warning_and_the_file_is_hashed(tmp_path, monkeypatch, caplog):
    import orbitgraph.preprocess.sources.fingerprint as fingerprint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "RACY_NS", -10**12)
    (tmp_path / "cache" / "orbitgraph").mkdir(parents=True)
    (tmp_path / "cache" / "orbitgraph" / fingerprint.CACHE_FILE).write_text("{damaged")
    src = tmp_path / "frames.xyz"
    src.write_bytes(extxyz_text(5))
    assert make_spec(src)[1].source.fingerprint == fingerprint.file_sha256(src)
    assert "cannot read the cache of source digests" in caplog.text
    assert str(src.resolve()) in json.loads(
        (tmp_path / "cache" / "orbitgraph" / fingerprint.CACHE_FILE).read_text())


def test_a_file_that_changes_while_hashed_is_an_error(tmp_path, monkeypatch):
    import orbitgraph.preprocess.sources.fingerprint as fingerprint

    src = tmp_path / "frames.xyz"
    src.write_bytes(extxyz_text(5))
    real = fingerprint.file_sha256

    def appending(path):
        digest = real(path)
        with open(path, "ab") as f:
            f.write(extxyz_text(1, first=5))
        return digest

    monkeypatch.setattr(fingerprint, "file_sha256", appending)
    with pytest.raises(fingerprint.SourceChangedError,
                       match=r"frames.xyz: changed while it was being read"):
        store_id(src)


# ------------------------------------------------------------------ 3. partial builds

def _broken_sources(tmp: Path) -> dict:
    """{case: (source, broken writer, repaired writer, the file to name, shards committed
    before the failure)}: sources a first build fails on, and their repair. Given all its
    label keys, the extended XYZ folder's bad file is found while its partitions are
    built; without them, by the scan of its comment lines, before any."""
    good = mptrj_text(load_small_mptrj())
    plain, gz, folder = tmp / "mptrj.json", tmp / "mptrj.json.gz", tmp / "folder"
    folder.mkdir()
    (folder / "a.xyz").write_bytes(extxyz_text(6))
    bad_b = extxyz_text(2, first=6) + b"x\n" + extxyz_text(2, first=8)
    return {
        "mptrj-json-truncated": (plain, lambda: plain.write_bytes(good[:-60]),
                                 lambda: plain.write_bytes(good), plain, True),
        "extxyz-folder-bad-header": (folder, lambda: (folder / "b.xyz").write_bytes(bad_b),
                                     lambda: (folder / "b.xyz").write_bytes(
                                         extxyz_text(4, first=6)), folder / "b.xyz", True),
        "extxyz-folder-bad-header-in-the-label-scan": (
            folder, lambda: (folder / "b.xyz").write_bytes(bad_b),
            lambda: (folder / "b.xyz").write_bytes(extxyz_text(4, first=6)), folder / "b.xyz",
            False),
        "mptrj-gzip-truncated": (gz, lambda: gz.write_bytes(gzip.compress(good)[:-200]),
                                 lambda: gz.write_bytes(gzip.compress(good)), gz, False),
    }


@pytest.mark.parametrize("case", ["mptrj-json-truncated", "extxyz-folder-bad-header",
                                  "extxyz-folder-bad-header-in-the-label-scan",
                                  "mptrj-gzip-truncated"])
def test_a_build_that_failed_on_its_source_and_the_repaired_source(tmp_path, capsys, case):
    """A first build fails on its source. If it committed shards, the rerun with the
    repaired source is refused in one line naming the file that changed (and only it) and
    the flag that discards the partial build; with the flag it builds the store a fresh
    folder gets. If it committed none, it leaves no build.json: the rerun simply builds."""
    src, break_it, repair, changed, committed = _broken_sources(tmp_path)[case]
    out = tmp_path / "store"
    keys = ({"energy_key": "energy", "forces_key": "forces", "stress_key": "stress",
             "virial_key": "virial"} if case == "extxyz-folder-bad-header" else {})
    argv = ["build", "--source", src, "--out", out, "--frames-per-shard", "2",
            "--scheduler", "synchronous", "--quiet",
            *(f"--{k.replace('_', '-')}={v}" for k, v in keys.items())]
    break_it()
    with pytest.raises(ValueError):
        build_store(src, out, frames_per_shard=2, cluster=SYNC, progress=False, **keys)
    assert bool(committed_shards(out)) == committed
    assert (out / BUILD_FILE).is_file() == committed
    repair()
    capsys.readouterr()
    if committed:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds a partial build of another store" in err[0], err
        assert f"{changed} changed (SHA-256 was " in err[0] and "--discard-partial" in err[0]
        named = [p for p in (src.iterdir() if src.is_dir() else [src]) if str(p) in err[0]]
        assert named == [changed], "only the file that changed is named"
        argv.append("--discard-partial")
    assert main(argv) == 0, capsys.readouterr().err
    build_store(src, tmp_path / "fresh", frames_per_shard=2, cluster=SYNC, progress=False,
                **keys)
    a, b = open_store(out), open_store(tmp_path / "fresh")
    assert a.manifest.store_id == b.manifest.store_id
    assert a.index.to_pylist() == b.index.to_pylist()


def _fail_on_shard_1(source, part, *args, **kwargs):
    if part.index == 1:
        raise OSError("no space left on device")
    return _BUILD_PARTITION(source, part, *args, **kwargs)


_BUILD_PARTITION = build_module.build_partition


def test_a_partial_build_with_other_parameters_names_them(tmp_path, monkeypatch, capsys):
    """A partial build refused for another parameter says which, and the flag; the flag
    deletes the build's files only (not other files in the folder), and never a complete
    store."""
    src = tmp_path / "mptrj.json"
    src.write_bytes(mptrj_text(load_small_mptrj()))
    out = tmp_path / "store"
    monkeypatch.setattr(build_module, "build_partition", _fail_on_shard_1)
    with pytest.raises(OSError):
        build_store(src, out, frames_per_shard=30, cluster=SYNC, progress=False)
    monkeypatch.setattr(build_module, "build_partition", _BUILD_PARTITION)
    (out / "notes.txt").write_text("mine")

    def build(k: int, frames_per_shard: int, *flags: str) -> int:
        return main(["build", "--source", src, "--out", out, "--k", str(k),
                     "--frames-per-shard", str(frames_per_shard), "--scheduler",
                     "synchronous", "--quiet", *flags])

    capsys.readouterr()
    assert build(12, 30) == 2
    err = capsys.readouterr().err
    assert "graph.k 16 -> 12" in err and "--discard-partial to delete its 1 committed" in err
    assert build(16, 40) == 2
    assert "frames_per_shard=30 exists" in capsys.readouterr().err
    assert build(12, 30, "--discard-partial") == 0
    assert open_store(out).manifest.graph.k == 12 and (out / "notes.txt").read_text() == "mine"
    assert build(16, 30, "--discard-partial") == 2
    assert "already holds another store" in capsys.readouterr().err
    assert open_store(out).manifest.graph.k == 12, "a complete store is never discarded"


# ------------------------------------------------------------------ 4. info on a source

SOURCE_NAMES = {"mptrj.json": True, "mptrj.json.gz": True, "frames.xyz": True,
                "frames.extxyz.gz": True, "folder": True, "frames.txt": False,
                "MPtrj_2022.9_full": False}


@pytest.mark.parametrize("command", ["info", "verify"])
def test_a_source_given_as_a_store_says_how_to_build_one(tmp_path, capsys, command):
    """Every kind of source (a file of each known name, a folder of extended XYZ files, a
    file whose name tells no format) given to info or verify is 'not a store', in one line
    with the command that builds one (naming --format when the name tells none); never
    'incomplete'. A folder a build started in is still 'incomplete'; an empty folder is
    just not a store."""
    for name, known in SOURCE_NAMES.items():
        path = tmp_path / name
        if name == "folder":
            path.mkdir()
            (path / "a.xyz").write_bytes(extxyz_text(1))
        else:
            path.write_bytes(b"{}")
        assert main([command, path]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert "not a store" in err[0] and "incomplete" not in err[0], err[0]
        assert f"orbitgraph build --source {path} --out DIR" in err[0], err[0]
        assert ("--format mptrj-json|extxyz" in err[0]) != known, err[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([command, empty]) == 2
    err = capsys.readouterr().err
    assert "not a store" in err and "orbitgraph build" not in err
    (empty / BUILD_FILE).write_text("{}")
    assert main([command, empty]) == 2
    assert "the store is incomplete (an interrupted build?" in capsys.readouterr().err


def test_another_source_file_is_named_as_another_file_not_as_a_change(tmp_path):
    """A complete store built from one file, then a build into it from another file: the
    refusal names both files, and does not call the new one "changed"."""
    sample = load_small_mptrj()
    names = list(sample)
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps({mid: sample[mid] for mid in names[:2]}))
    second.write_text(json.dumps({mid: sample[mid] for mid in names[2:4]}))
    build_store(first, tmp_path / "store", cluster=SYNC, progress=False)
    with pytest.raises(StoreError) as refused:
        build_store(second, tmp_path / "store", cluster=SYNC, progress=False)
    text = str(refused.value)
    assert f"{second} is not the file the store was built from, {first}" in text, text
    assert "changed" not in text, text
