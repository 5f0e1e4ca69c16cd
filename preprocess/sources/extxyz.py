"""Extended XYZ files, gzip-compressed or not, or folders of them (ASE conventions, as MACE
and matbench-discovery distribute MPtrj).

Per frame: the labels are the fields named by the build's
:class:`~orbitgraph.preprocess.sources.labels.LabelPlan` (decided once for the whole source by
:meth:`ExtxyzSource.resolve_labels`; see :mod:`orbitgraph.preprocess.sources.labels` for the
conventions); magnetic moments from ``magmoms``/``magmom`` if present. The material id is
``info['mp_id']`` or ``info['material_id']`` (:data:`MATERIAL_KEYS`); frames of one material
must be contiguous to share a shard. A frame without either key is a material of its own:
its trajectory's frames are then split one by one (the build warns, see
:attr:`ExtxyzSource.frames_without_material_id`). ``info['config_type']``, where present, is
kept in the store's index. The frame id is ``info['frame_id']``, else
``{mp_id}-{calc_id}-{ionic_step}``, else ``{file}:{offset}+{index}``.

The plan scans line headers only (atom count, comment line) to find each frame's byte
offset; a worker parses its byte ranges with ASE's extxyz reader, and a range that does not
parse frame by frame, so that a malformed frame costs only itself. A gzip file (``.gz``, or
any file starting with gzip's magic bytes) cannot be read at an offset: the plan streams its
decompressed bytes and each partition carries its frames' bytes.
"""
from __future__ import annotations

import gzip
import io
import re
from pathlib import Path
from typing import Iterator

from orbitgraph.errors import InputError, RecordError
from orbitgraph.preprocess.frame import Frame
from orbitgraph.preprocess.sources.ase_atoms import frame_from_atoms
from orbitgraph.preprocess.sources.base import Partition, Quarantined, is_gzip, read_range
from orbitgraph.preprocess.sources.files import source_files
from orbitgraph.preprocess.sources.labels import (
    CandidateCount,
    LabelPlan,
    needs_scan,
    parse_comment,
    plan_from_keys,
)
from orbitgraph.preprocess.store.params import LabelKeys

SUFFIXES = (".xyz", ".extxyz", ".xyz.gz", ".extxyz.gz")

MATERIAL_KEYS = ("mp_id", "material_id")
"""The comment-line keys that hold a frame's material id (either; the same value for every
frame of one material or trajectory)."""

_MATERIAL = re.compile(rb'(?:^|\s)(?:' + b"|".join(k.encode() for k in MATERIAL_KEYS)
                       + rb')=("?)([^\s"]+)\1')


def is_extxyz_name(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


class ExtxyzSource:
    """Extended XYZ files. ``frames_without_material_id``: how many frames of the last
    :meth:`partitions` plan (counted as it is iterated) have none of :data:`MATERIAL_KEYS`."""

    format = "extxyz"
    material_keys = MATERIAL_KEYS
    frames_without_material_id = 0

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.files = source_files(path, is_extxyz_name, f"{', '.join(SUFFIXES)} files")
        self.gzipped = {name: is_gzip(name) for name in self.files}

    def _frames(self, keep_bytes: bool = False
                ) -> Iterator[tuple[str, int, int, str | None, bytes, bytes | None]]:
        """(file, start byte, end byte, material id, comment line, the frame's bytes) of
        every frame, in order. Offsets of a gzip file are in its decompressed bytes; the
        frame's bytes are given for gzip files when ``keep_bytes``, else None."""
        for name in self.files:
            gz = self.gzipped[name]
            with (gzip.open(name, "rb") if gz else open(name, "rb")) as f:
                offset = 0
                line_no = 0
                while True:
                    start = offset
                    header = f.readline()
                    if not header:
                        break
                    offset += len(header)
                    line_no += 1
                    if not header.strip():
                        continue
                    try:
                        n = int(header.split()[0])
                    except ValueError:
                        raise InputError(f"{name}:{line_no}: expected an atom count, got "
                                         f"{header[:40]!r}") from None
                    comment = f.readline()
                    lines = [header, comment]
                    for _ in range(n):
                        lines.append(f.readline())
                    offset += sum(len(line) for line in lines[1:])
                    line_no += n + 1
                    m = _MATERIAL.search(comment)
                    yield (name, start, offset, (m.group(2).decode() if m else None), comment,
                           b"".join(lines) if gz and keep_bytes else None)

    def partitions(self, frames_per_partition: int) -> Iterator[Partition]:
        index = 0
        ranges: list[list] = []
        payload: list[bytes] = []
        n_frames = n_materials = 0
        last_material: object = object()
        self.frames_without_material_id = 0

        def partition() -> Partition:
            return Partition(index, n_materials, n_frames, tuple(map(tuple, ranges)),
                             payload=b"".join(payload) if payload else None)

        for name, start, end, material, _, data in self._frames(keep_bytes=True):
            new_material = material is None or material != last_material
            if new_material and n_frames >= frames_per_partition:
                yield partition()
                index += 1
                ranges, payload, n_frames, n_materials = [], [], 0, 0
            if ranges and ranges[-1][0] == name and ranges[-1][2] == start:
                ranges[-1][2] = end
            else:
                ranges.append([name, start, end])
            if data is not None:
                payload.append(data)
            n_frames += 1
            n_materials += new_material
            self.frames_without_material_id += material is None
            last_material = material
        if n_frames:
            yield partition()

    def label_keys(self, keys: LabelKeys) -> LabelKeys:
        """The keys as they determine the store: extxyz has no fixed names to fill in."""
        return keys

    def resolve_labels(self, keys: LabelKeys) -> LabelPlan:
        """The plan for ``keys``; a key not given is the one candidate of its kind found
        in the comment lines of all frames (one pass over the source's lines)."""
        if not needs_scan(keys):
            return plan_from_keys(keys)
        count = CandidateCount()
        for *_, comment, _ in self._frames():
            count.add(comment)
        return count.resolve(keys, self.path)

    def read(self, part: Partition, labels: LabelPlan, threads: int = 1
             ) -> tuple[list[Frame], list[Quarantined]]:
        """ASE's parser is Python that holds the GIL: ``threads`` would not help, one is used."""
        if not isinstance(labels, LabelPlan):
            raise TypeError(f"extxyz read: expected a LabelPlan (see resolve_labels), got "
                            f"{labels!r}")
        frames: list[Frame] = []
        quarantine: list[Quarantined] = []
        at = 0  # into the payload, which holds the gzip files' ranges in order
        for name, start, end in part.ranges:
            if self.gzipped[name]:
                data = part.payload[at:at + end - start]
                at += end - start
            else:
                data = read_range(name, start, end)
            stem = Path(name).stem
            for i, item in enumerate(_parse(data)):
                if isinstance(item, _Unparsed):
                    offset, chunk, err = item.args
                    m = _MATERIAL.search(chunk.split(b"\n", 2)[1] if chunk.count(b"\n") > 1
                                         else b"")
                    quarantine.append(Quarantined(
                        m.group(2).decode() if m else "?", f"{stem}:{start + offset}",
                        f"malformed extxyz: {type(err).__name__}: {err}"))
                    continue
                mid, fid = _ids(item.info, f"{stem}:{start}+{i}")
                try:
                    frames.append(frame_from_atoms(item, mid, fid, labels))
                except RecordError as err:
                    quarantine.append(Quarantined(mid, fid, err.reason))
        return frames, quarantine


class _Unparsed(Exception):
    """A frame ASE could not read: args (offset in the range, its bytes, the error)."""


def _read(text: str) -> list:
    from ase.io.extxyz import read_xyz

    return list(read_xyz(io.StringIO(text), index=slice(None), properties_parser=parse_comment))


def _parse(data: bytes) -> list:
    """The frames of a byte range as ASE Atoms, in order; a frame that does not parse is an
    :class:`_Unparsed` in its place (the range is then read frame by frame)."""
    try:
        return _read(data.decode())
    except Exception:  # the parser's errors are of many types; find the frames at fault
        pass
    out: list = []
    for offset, chunk in _split(data):
        try:
            out.extend(_read(chunk.decode()))
        except Exception as err:
            out.append(_Unparsed(offset, chunk, err))
    return out


def _split(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, bytes) of each frame of a range, by the atom count on each frame's first
    line; what follows a line that holds no count is one last piece."""
    lines = data.splitlines(keepends=True)
    out, i, offset = [], 0, 0
    while i < len(lines):
        if not lines[i].strip():
            offset += len(lines[i])
            i += 1
            continue
        try:
            n = int(lines[i].split()[0])
        except ValueError:
            out.append((offset, b"".join(lines[i:])))
            break
        chunk = b"".join(lines[i:i + n + 2])
        out.append((offset, chunk))
        offset += len(chunk)
        i += n + 2
    return out


def _ids(info: dict, fallback: str) -> tuple[str, str]:
    mid = str(next((info[key] for key in MATERIAL_KEYS if key in info), fallback))
    if "frame_id" in info:
        return mid, str(info["frame_id"])
    if "calc_id" in info and "ionic_step" in info:
        return mid, f"{mid}-{info['calc_id']}-{info['ionic_step']}"
    return mid, fallback
