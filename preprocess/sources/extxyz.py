"""Extended XYZ files or folders of them (ASE conventions, as MACE and matbench-discovery
distribute MPtrj).

Per frame: the energy is ``info[energy_key]`` (``uncorrected_total_energy`` or
``corrected_total_energy``) when present, else the calculator energy (``energy=``); forces
from the ``forces`` array; stress from ASE's ``stress`` (eV/Å³, ASE sign); magnetic moments
from ``magmoms``/``magmom`` if present. The material id is ``info['mp_id']`` or
``info['material_id']``; frames of one material must be contiguous to share a shard. The
frame id is ``info['frame_id']``, else ``{mp_id}-{calc_id}-{ionic_step}``, else
``{file}:{index}``.

The plan scans line headers only (atom count, comment line) to find each frame's byte
offset; a worker parses its byte ranges with ASE's extxyz reader.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from preprocess.frame import Frame
from preprocess.sources.base import Partition, Quarantined, read_range
from preprocess.sources.records import RecordError, check_cell

_MATERIAL = re.compile(rb'(?:^|\s)(?:mp_id|material_id)=("?)([^\s"]+)\1')


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".xyz", ".extxyz"))
        if not files:
            raise FileNotFoundError(f"{path}: no .xyz or .extxyz files in this folder")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return [path]


class ExtxyzSource:
    format = "extxyz"

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.files = [str(p) for p in _files(Path(path))]

    def _frames(self) -> Iterator[tuple[str, int, int, str | None]]:
        """(file, start byte, end byte, material id) of every frame, in order."""
        for name in self.files:
            with open(name, "rb") as f:
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
                        raise ValueError(f"{name}:{line_no}: expected an atom count, got "
                                         f"{header[:40]!r}") from None
                    comment = f.readline()
                    offset += len(comment)
                    for _ in range(n):
                        offset += len(f.readline())
                    line_no += n + 1
                    m = _MATERIAL.search(comment)
                    yield name, start, offset, (m.group(2).decode() if m else None)

    def partitions(self, frames_per_partition: int) -> Iterator[Partition]:
        index = 0
        ranges: list[list] = []
        n_frames = n_materials = 0
        last_material: object = object()
        for name, start, end, material in self._frames():
            new_material = material is None or material != last_material
            if new_material and n_frames >= frames_per_partition:
                yield Partition(index, n_materials, n_frames, tuple(map(tuple, ranges)))
                index += 1
                ranges, n_frames, n_materials = [], 0, 0
            if ranges and ranges[-1][0] == name and ranges[-1][2] == start:
                ranges[-1][2] = end
            else:
                ranges.append([name, start, end])
            n_frames += 1
            n_materials += new_material
            last_material = material
        if n_frames:
            yield Partition(index, n_materials, n_frames, tuple(map(tuple, ranges)))

    def read(self, part: Partition, energy_key: str, threads: int = 1
             ) -> tuple[list[Frame], list[Quarantined]]:
        """ASE's parser is Python that holds the GIL: ``threads`` would not help, one is used."""
        from ase.io.extxyz import read_xyz

        frames: list[Frame] = []
        quarantine: list[Quarantined] = []
        for name, start, end in part.ranges:
            text = read_range(name, start, end).decode()
            try:
                atoms_list = list(read_xyz(io.StringIO(text), index=slice(None)))
            except Exception as err:  # the parser's errors are of many types
                quarantine.append(Quarantined("?", f"{Path(name).name}@{start}",
                                              f"malformed extxyz: {type(err).__name__}: {err}"))
                continue
            for i, atoms in enumerate(atoms_list):
                mid, fid = _ids(atoms.info, f"{Path(name).stem}:{start}+{i}")
                try:
                    frames.append(_frame(atoms, mid, fid, energy_key))
                except RecordError as err:
                    quarantine.append(Quarantined(mid, fid, err.reason))
        return frames, quarantine


def _ids(info: dict, fallback: str) -> tuple[str, str]:
    mid = str(info.get("mp_id", info.get("material_id", fallback)))
    if "frame_id" in info:
        return mid, str(info["frame_id"])
    if "calc_id" in info and "ionic_step" in info:
        return mid, f"{mid}-{info['calc_id']}-{info['ionic_step']}"
    return mid, fallback


def _frame(atoms, mid: str, fid: str, energy_key: str) -> Frame:
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if not np.all(np.isfinite(cell)):
        raise RecordError("cell: contains NaN or inf")
    check_cell(cell, "cell")
    pos = np.asarray(atoms.positions, dtype=np.float64)
    if not np.all(np.isfinite(pos)):
        raise RecordError("positions: contain NaN or inf")
    calc = atoms.calc
    results = getattr(calc, "results", {}) if calc is not None else {}
    if energy_key in atoms.info:
        energy = float(atoms.info[energy_key])
    elif "energy" in results:
        energy = float(results["energy"])
    else:
        raise RecordError(f"{energy_key}: missing (and no calculator energy)")
    if not np.isfinite(energy):
        raise RecordError(f"{energy_key}: NaN or inf")
    forces = atoms.arrays.get("forces", results.get("forces"))
    if forces is None:
        raise RecordError("forces: missing")
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != pos.shape:
        raise RecordError(f"forces: shape {forces.shape} for {len(atoms)} atoms")
    if not np.all(np.isfinite(forces)):
        raise RecordError("forces: contain NaN or inf")
    stress = results.get("stress")
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape == (6,):  # Voigt xx yy zz yz xz xy
            xx, yy, zz, yz, xz, xy = stress
            stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        if stress.shape != (3, 3) or not np.all(np.isfinite(stress)):
            raise RecordError(f"stress: shape {stress.shape} or non-finite values")
    magmom = atoms.arrays.get("magmoms", atoms.arrays.get("magmom"))
    return Frame(frame_id=fid, material_id=mid, cell=cell, positions=pos,
                 numbers=np.asarray(atoms.numbers, dtype=np.int64), energy=energy,
                 forces=forces, stress=stress,
                 magmom=None if magmom is None else np.asarray(magmom, dtype=np.float64).reshape(-1),
                 pbc=np.asarray(atoms.pbc, dtype=bool))
