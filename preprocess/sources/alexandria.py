"""Alexandria-style JSON: files of pymatgen ``ComputedStructureEntry`` dicts, plain, ``.gz``
or ``.bz2``; one file, a folder of them or a glob pattern (Alexandria ships
``alexandria_000.json.bz2`` ...).

Layout (Alexandria's files, as ``json.load`` then ``ComputedStructureEntry.from_dict`` read
them): ``{"entries": [entry, ...], ...}``, or a bare list of entries. Each entry is
``ComputedStructureEntry.as_dict()``:

* ``structure``: a pymatgen Structure dict (lattice rows and Cartesian ``xyz`` in Å); each
  site's ``properties`` hold its ``forces`` (eV/Å, Alexandria's per-site forces) and
  ``magmom`` (μB);
* ``energy``: the total energy as computed (eV, uncorrected), ``correction`` (eV): the
  energy adjustments (``ComputedEntry.energy`` is their sum);
* ``entry_id`` and ``data``: Alexandria's ``data`` holds ``mat_id`` and more numbers
  (``energy_total``, ``energy_corrected``, ``e_form`` ...).

Labels: the energy key is ``energy`` (default; the uncorrected total energy),
``corrected_energy`` (``energy + correction``, pymatgen's ``ComputedEntry.energy``) or a
number of ``data`` (a ``*per_atom*`` name is eV/atom, stored × n_atoms); forces are the
sites' ``forces`` (required); the stress is ``data["stress"]`` or the ``data`` field the
build names (3x3, kBar with VASP's sign, as VASP writes it and MPtrj holds it; stored in
eV/Å³ with ASE's sign; optional unless named); magnetic moments from the sites' ``magmom``
(optional). Every entry is then
checked by the MPtrj record reader (:mod:`orbitgraph.preprocess.sources.records`): the same
quarantine reasons, units and masking.

Ids: the frame id is the entry's ``entry_id``, else ``{file}:{index}`` (its position in its
file; ``file`` relative to the source's folder, or the file's name); the material id is
``data["mat_id"]``, else the frame id. A quarantined entry's reason ends with its place,
``(entry {index} of {file})``.

The plan reads one file at a time as the build consumes it: the file is decompressed and
split into its entries' bytes (msgspec, without building Python objects), and each
partition, a run of ``frames_per_partition`` entries by file and entry range
(:func:`~orbitgraph.preprocess.sources.files.row_partitions`), carries its entries' bytes
(as a gzip source's partitions do): the driver holds one decompressed file at a time.
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import zlib
from pathlib import Path
from typing import Any, Iterator, Union

import msgspec

from orbitgraph.errors import InputError, LabelError
from orbitgraph.preprocess.frame import Frame
from orbitgraph.preprocess.sources.base import Partition, Quarantined
from orbitgraph.preprocess.sources.files import display_name, row_partitions, source_files
from orbitgraph.preprocess.sources.labels import LabelPlan
from orbitgraph.preprocess.sources.records import (
    FORCES_KEY,
    STRESS_KEY,
    energy_key,
    frames_from_records,
)
from orbitgraph.preprocess.store.params import LabelKeys

SUFFIXES = (".json", ".json.gz", ".json.bz2")
FILES = ".json, .json.gz or .json.bz2 files"
DEFAULT_ENERGY_KEY = "energy"
CORRECTED = "corrected_energy"  # energy + correction
SITE_FORCES = "structure.sites.properties.forces"
STRESS_UNITS = "kBar, VASP sign; stored as -stress / 1602.1766208 eV/Å³, ASE sign"


def is_alexandria_name(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


class _File(msgspec.Struct):
    entries: list[msgspec.Raw]


_TOP = msgspec.json.Decoder(Union[list[msgspec.Raw], _File])
_PAYLOAD = msgspec.json.Decoder(list[list[msgspec.Raw]])


def read_bytes(file: str) -> bytes:
    """The file's bytes, decompressed when it starts with gzip's or bzip2's magic bytes.
    Raises InputError for a damaged or truncated compressed stream."""
    with open(file, "rb") as f:
        magic = f.read(3)
    opener = gzip.open if magic[:2] == b"\x1f\x8b" else bz2.open if magic == b"BZh" else open
    try:
        with opener(file, "rb") as f:
            return f.read()
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as err:
        raise InputError(f"{file}: the compressed stream is truncated or damaged ({err})"
                         ) from None


def file_entries(file: str) -> list[bytes | msgspec.Raw]:
    """The entries of one file, each as its JSON bytes. A file holding ``NaN`` or
    ``Infinity`` (as Python's json writes them; not JSON, so msgspec refuses them) is read by
    the standard library instead and each entry written back as Python's json writes it.
    Raises InputError for a file that is not JSON, or holds neither a list of entries nor
    an object with ``entries``."""
    data = read_bytes(file)
    try:
        top = _TOP.decode(data)
        return top if isinstance(top, list) else top.entries
    except msgspec.ValidationError as err:
        raise InputError(f"{file}: not an Alexandria JSON file (a list of entries, or an "
                         f"object with 'entries'): {err}") from None
    except msgspec.DecodeError:
        pass
    try:
        top = json.loads(data)
    except ValueError as err:
        raise InputError(f"{file}: not JSON: {err}") from None
    entries = top.get("entries") if isinstance(top, dict) else top
    if not isinstance(entries, list):
        raise InputError(f"{file}: not an Alexandria JSON file (a list of entries, or an "
                         "object with 'entries')")
    return [json.dumps(e).encode() for e in entries]


class AlexandriaJsonSource:
    format = "alexandria-json"
    material_keys = ("data.mat_id",)
    frames_without_material_id = 0  # the plan counts entries without reading their data

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.files = source_files(path, is_alexandria_name, FILES)

    def partitions(self, frames_per_partition: int) -> Iterator[Partition]:
        """Partitions of ``frames_per_partition`` entries by file and entry range, each
        carrying its entries' bytes: one JSON array per range, in order."""
        loaded: dict[str, list[msgspec.Raw]] = {}

        def counts():
            for file in self.files:
                loaded[file] = file_entries(file)
                yield file, len(loaded[file])

        for part in row_partitions(counts(), frames_per_partition):
            payload = b"[" + b",".join(
                b"[" + b",".join(bytes(r) for r in loaded[file][start:end]) + b"]"
                for file, start, end in part.ranges) + b"]"
            last = part.ranges[-1][0]
            for file in [f for f in loaded if f != last]:  # done with: let it go
                del loaded[file]
            yield Partition(part.index, part.n_materials, part.n_frames, part.ranges,
                            payload=payload)

    def label_keys(self, keys: LabelKeys) -> LabelKeys:
        """The energy key (default ``energy``) and the stress key as given; forces are the
        sites' ``forces``. Raises LabelError for a forces or virial key, and for an energy
        or stress key that names a field the reader uses otherwise."""
        if keys.forces is not None and keys.forces != "forces":
            raise LabelError(f"{self.path}: Alexandria entries hold forces in each site's "
                             f"properties ('forces'); forces_key {keys.forces!r} cannot be "
                             "read from this format")
        if keys.virial is not None:
            raise LabelError(f"{self.path}: Alexandria entries hold no virial; virial_key "
                             f"{keys.virial!r} cannot be read from this format")
        energy = energy_key(self.path, keys.energy, DEFAULT_ENERGY_KEY)
        if keys.stress in ("structure", FORCES_KEY, "magmom"):
            raise LabelError(f"{self.path}: stress_key {keys.stress!r} names a field the "
                             "reader uses otherwise")
        return LabelKeys(energy, keys.forces, keys.stress)

    def resolve_labels(self, keys: LabelKeys) -> LabelPlan:
        """The plan for ``keys`` (nothing is read: the layout is fixed)."""
        full = self.label_keys(keys)
        return LabelPlan(full.energy, "forces", keys.stress or STRESS_KEY, None,
                         stress_required=keys.stress is not None, stress_units=STRESS_UNITS)

    def read(self, part: Partition, labels: LabelPlan, threads: int = 1
             ) -> tuple[list[Frame], list[Quarantined]]:
        """The entries of ``part`` as frames, and the entries quarantined with their reasons,
        in order. ``threads`` is not used (decoding holds the GIL)."""
        try:
            pieces = _PAYLOAD.decode(part.payload)
        except msgspec.DecodeError:  # NaN or Infinity, as Python's json writes them
            pieces = json.loads(part.payload)
        entries: list[tuple[str, str, Any]] = []
        wheres: list[str] = []
        for (file, start, _), raws in zip(part.ranges, pieces, strict=True):
            name = display_name(self.path, file)
            for i, raw in enumerate(raws):
                entries.append(_record(raw, f"{name}:{start + i}", labels))
                wheres.append(f"(entry {start + i} of {name})")
        frames, quarantine = frames_from_records(entries, labels.energy)
        where = {fid: w for (_, fid, _), w in zip(entries, wheres, strict=True)}
        return frames, [Quarantined(q.material_id, q.frame_id,
                                    f"{_site_reason(q.reason)} {where[q.frame_id]}")
                        for q in quarantine]


def _record(raw: msgspec.Raw | Any, place: str, labels: LabelPlan) -> tuple[str, str, Any]:
    """``(material id, frame id, MPtrj-layout record or the reason it cannot be read)`` of
    the entry at ``place`` (``{file}:{index}``): its JSON bytes, or the entry itself."""
    if isinstance(raw, msgspec.Raw):
        try:
            entry = msgspec.json.decode(raw)
        except msgspec.DecodeError:  # NaN or Infinity, as Python's json writes them
            entry = json.loads(bytes(raw))
    else:
        entry = raw
    if not isinstance(entry, dict):
        return place, place, "entry: not an object"
    fid = str(entry.get("entry_id") or place)
    data = entry.get("data") if isinstance(entry.get("data"), dict) else {}
    mid = str(data.get("mat_id") or fid)
    structure = entry.get("structure")
    record: dict[str, Any] = {"structure": structure}
    sites = structure.get("sites") if isinstance(structure, dict) else None
    if isinstance(sites, list):
        forces = []
        for a, site in enumerate(sites):
            props = site.get("properties") if isinstance(site, dict) else None
            value = props.get("forces") if isinstance(props, dict) else None
            if value is None:
                return mid, fid, f"structure.sites[{a}].properties.forces: missing"
            forces.append(value)
        record[FORCES_KEY] = forces
    key = labels.energy
    if key == DEFAULT_ENERGY_KEY:
        record[key] = entry.get("energy")
    elif key == CORRECTED:
        energy, correction = entry.get("energy"), entry.get("correction", 0.0)
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                 for v in (energy, correction))
        record[key] = energy + correction if ok else energy
    else:
        record[key] = data.get(key)
        if record[key] is None:
            return mid, fid, f"data.{key}: missing"
    if data.get(labels.stress) is not None:
        record[STRESS_KEY] = data[labels.stress]
    elif labels.stress_required:
        return mid, fid, f"data.{labels.stress}: missing"
    return mid, fid, record


def _site_reason(reason: str) -> str:
    """A reason of the record reader about its ``force`` field, in Alexandria's terms."""
    if reason.startswith(FORCES_KEY + ":") or reason.startswith(FORCES_KEY + "["):
        return SITE_FORCES + reason[len(FORCES_KEY):]
    return reason
