"""MPtrj records to :class:`~orbitgraph.preprocess.frame.Frame`: the one reader of the format, with
validation.

A record is one value of the published MPtrj JSON, ``{material_id: {frame_id: record}}``:
``structure`` (a pymatgen Structure dict), ``uncorrected_total_energy`` and
``corrected_total_energy`` (eV), ``force`` (eV/Å), ``stress`` (kBar, VASP sign),
``magmom`` (list or null), and fields the store does not read.

Reading is two steps:

1. msgspec decodes the bytes straight into the typed structures below (:class:`Structure`
   and a :func:`record_type` per energy key). The types are the definition of a readable
   record: a field of another type or shape fails the decode at its path (``force[2]:
   expected array of length 3``); a number beyond the float range fails it too. Fields
   the types do not name are skipped unread, whatever they hold; absent optional fields
   and nulls take their defaults. Numbers are decoded exactly as Python's ``float()``
   reads their text (``tests/test_mptrj_reader.py`` checks that bit for bit).
2. The structures of a whole run become flat columns (positions, forces, ... of every
   atom), and the checks that need values run on the columns: finite numbers, forces one
   per atom, known elements, full occupancy, a usable cell. The optional labels follow the
   one rule of :mod:`orbitgraph.preprocess.sources.labels`: a stress that is absent or holds NaN or
   inf, magnetic moments absent, not finite or not one per atom are masked (the frame is
   kept, the label stored as NaN) and noted. An energy key naming an energy per atom
   (``energy_per_atom``) is stored × n_atoms as the total energy.

A run of materials that does not decode whole (one bad record fails msgspec's decode of
everything) is decoded again material by material and record by record, so that each bad
record is quarantined with its reason and every other record is kept; a material whose
JSON is malformed is parsed by the standard library (it reads the ``NaN`` and
``Infinity`` that Python writes, which the checks then report), else quarantined whole.

Every problem is a reason that names the field and the problem; the build puts such
records in quarantine with their ids.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import re
from typing import Any, Union

import msgspec
import numpy as np
from ase.data import atomic_numbers

from orbitgraph.errors import LabelError, RecordError
from orbitgraph.preprocess.frame import Frame
from orbitgraph.preprocess.sources.base import Quarantined
from orbitgraph.preprocess.sources.labels import (
    MAGMOM_MISSING,
    MAGMOM_NOT_FINITE,
    MASKED,
    STRESS_MISSING,
    energy_note,
    is_energy_per_atom,
    not_finite,
)
from orbitgraph.preprocess.sources.mptrj_scan import DEPTH, MaterialScanner
from orbitgraph.units import stress_from_vasp_kbar

# ------------------------------------------------------------------ the record's types

Vec3 = tuple[float, float, float]
Mat3 = tuple[Vec3, Vec3, Vec3]


class Species(msgspec.Struct, gc=False):
    element: str
    occu: float = 1.0


class SiteProperties(msgspec.Struct, gc=False):
    magmom: Union[float, None] = None  # μB


class Site(msgspec.Struct, gc=False):
    species: list[Species]
    xyz: Vec3  # Å
    properties: Union[SiteProperties, None] = None


class Lattice(msgspec.Struct, gc=False):
    matrix: Mat3  # Å, rows = lattice vectors
    pbc: tuple[bool, bool, bool] = (True, True, True)


class Structure(msgspec.Struct, gc=False):
    lattice: Lattice
    sites: list[Site]


FORCES_KEY = "force"  # eV/Å
STRESS_KEY = "stress"  # kBar, VASP sign
MAGMOM_KEY = "magmom"  # μB
MAGMOM_COUNT = f"{MAGMOM_KEY}: not one value per atom"
_FIXED = ("structure", FORCES_KEY, STRESS_KEY, MAGMOM_KEY)


def energy_key(source: str, key: str | None, default: str) -> str:
    """The energy field of MPtrj-layout records read from ``source``: ``key``, or
    ``default`` where none is given. Raises LabelError naming ``source`` if it is another
    field the reader uses (:func:`record_type`)."""
    key = key or default
    try:
        record_type(key)
    except LabelError as err:
        raise LabelError(f"{source}: {err}") from None
    return key


@functools.lru_cache(maxsize=None)
def record_type(energy_key: str) -> type:
    """The Struct of a record whose energy (eV) is the field ``energy_key``; its attribute
    is ``energy`` whatever the key. Raises LabelError if the key is another field the
    reader uses."""
    if energy_key in _FIXED:
        raise LabelError(f"energy key {energy_key!r} is the {energy_key} field of an MPtrj "
                         "record, not an energy")
    return msgspec.defstruct(
        "Record",
        [("structure", Union[Structure, None], None),
         ("energy", Union[float, None], None),
         ("force", Union[list[Vec3], None], None),
         ("stress", Union[Mat3, None], None),
         ("magmom", Union[list[float], None], None)],
        rename={"energy": energy_key}, gc=False)


@functools.lru_cache(maxsize=None)
def _decoders(energy_key: str) -> tuple[msgspec.json.Decoder, msgspec.json.Decoder]:
    """(a run of materials, one record) decoders for ``energy_key``."""
    record = record_type(energy_key)
    return msgspec.json.Decoder(dict[str, dict[str, record]]), msgspec.json.Decoder(record)


_ENTRIES = msgspec.json.Decoder(dict[str, msgspec.Raw])


_TYPE_WORDS = {"object": "an object", "array": "an array", "float": "a number",
               "int": "an integer", "str": "a string", "bool": "a boolean", "null": "null"}
_EXPECTED = re.compile(r"Expected `([^`]*)`(?:, got `([^`]*)`)?")


def _reason(err: msgspec.ValidationError) -> str:
    """msgspec's message as a quarantine reason: the field's path, then the problem
    (``Expected `float`, got `str` - at `$.force[0][2]``` becomes
    ``force[0][2]: expected a number, got a string``)."""
    problem, _, path = str(err).partition(" - at `$")
    path = path.rstrip("`").lstrip(".")
    if problem.startswith("Object missing required field `"):
        name = problem[len("Object missing required field `"):].rstrip("`")
        return f"{path + '.' if path else ''}{name}: missing"

    def words(types: str) -> str:
        return " or ".join(_TYPE_WORDS.get(t, t) for t in types.split(" | "))

    problem = _EXPECTED.sub(lambda m: f"expected {words(m.group(1))}"
                            + (f", got {words(m.group(2))}" if m.group(2) else ""), problem)
    return f"{path or 'record'}: {problem[:1].lower()}{problem[1:]}".replace("`", "")


# ------------------------------------------------------------------ reading a run

def read_run(data: bytes | memoryview, energy_key: str
             ) -> tuple[list[Frame], list[Quarantined]]:
    """Frames of a run of ``"material_id": {frame_id: record, ...}`` entries (the bytes of
    a partition: entries separated by commas, without the enclosing braces), in order, and
    the records that cannot be used, in order, each with its reason.

    As in any JSON object, a material id given twice keeps its last entry, and a frame id
    given twice within a material its last record."""
    run, one = _decoders(energy_key)
    wrapped = b"{" + bytes(data) + b"}"
    try:
        materials = run.decode(wrapped)
    except msgspec.DecodeError:  # a bad record or bad JSON: entry by entry
        return _frames_of(_entries_one_by_one(wrapped, one, energy_key), energy_key)
    return _frames_of([(mid, fid, rec) for mid, frames in materials.items()
                       for fid, rec in frames.items()], energy_key)


def frame_from_record(material_id: str, frame_id: str, record: Any,
                      energy_key: str = "uncorrected_total_energy") -> Frame:
    """One record given as Python objects (e.g. from ``json.load``), read and checked as
    :func:`read_run` reads records. Raises RecordError."""
    try:
        rec = msgspec.convert(record, record_type(energy_key))
    except msgspec.ValidationError as err:
        raise RecordError(_reason(err)) from None
    frames, quarantine = _frames_of([(str(material_id), str(frame_id), rec)], energy_key)
    if quarantine:
        raise RecordError(quarantine[0].reason)
    return frames[0]


def frames_from_records(entries: list[tuple[str, str, Any]], energy_key: str
                        ) -> tuple[list[Frame], list[Quarantined]]:
    """Frames of many records given as Python objects, ``(material id, frame id, record)``
    each (a record in MPtrj's layout, as :func:`frame_from_record` reads one; a ``str`` in
    place of a record is a reason to quarantine it with), checked together as
    :func:`read_run` checks a run: the good frames and the quarantined records, each in
    order."""
    record = record_type(energy_key)
    decoded: list[Entry] = []
    for mid, fid, rec in entries:
        if not isinstance(rec, str):
            try:
                rec = msgspec.convert(rec, record)
            except msgspec.ValidationError as err:
                rec = _reason(err)
        decoded.append((str(mid), str(fid), rec))
    return _frames_of(decoded, energy_key)


Entry = tuple[str, str, Any]  # (material id, frame id, decoded record or reason string)


def _entries_one_by_one(wrapped: bytes, one: msgspec.json.Decoder, energy_key: str
                        ) -> list[Entry]:
    """Each record of a run decoded on its own: ``(mid, fid, record)``, or ``(mid, fid,
    reason)`` for a record that does not decode (``fid`` ``"?"`` for a material that
    cannot be read at all)."""
    try:
        materials: dict[str, Any] = _ENTRIES.decode(wrapped)
    except msgspec.DecodeError:  # not valid JSON: material by material
        materials = _materials_one_by_one(wrapped)
    out: list[Entry] = []
    record = record_type(energy_key)
    for mid, raw in materials.items():
        if isinstance(raw, msgspec.Raw):
            try:
                frames = _ENTRIES.decode(raw)
            except msgspec.ValidationError:
                out.append((mid, "?", "material: value is not an object of frames"))
                continue
        elif isinstance(raw, dict):  # read by the standard library
            frames = raw
        elif isinstance(raw, str):
            out.append((mid, "?", raw))
            continue
        else:
            out.append((mid, "?", "material: value is not an object of frames"))
            continue
        for fid, rec in frames.items():
            try:
                value = one.decode(rec) if isinstance(rec, msgspec.Raw) else \
                    msgspec.convert(rec, record)
            except msgspec.ValidationError as err:
                value = _reason(err)
            out.append((mid, fid, value))
    return out


def _materials_one_by_one(wrapped: bytes) -> dict[str, Any]:
    """{material id: the entry's value as msgspec.Raw, as Python objects read by the
    standard library (NaN, Infinity), or the reason neither could read it}."""
    out: dict[str, Any] = {}
    scanner = MaterialScanner()
    scanner.state[DEPTH] = 1  # the entries sit inside the top-level object
    body = memoryview(wrapped)[1:-1]
    for start, end, _ in scanner.feed(body):
        piece = b"{" + bytes(body[start:end]) + b"}"
        try:
            out.update(_ENTRIES.decode(piece))
            continue
        except msgspec.DecodeError:
            pass
        try:
            out.update(json.loads(piece))
        except ValueError as err:
            mid = bytes(body[start:end]).split(b'"')[1].decode(errors="replace")
            out[mid] = f"malformed JSON: {err}"
    return out


# ------------------------------------------------------------------ records to columns

def _frames_of(entries: list[Entry], energy_key: str) -> tuple[list[Frame], list[Quarantined]]:
    """Frames of the decoded records of ``entries`` and the quarantined rest, each in the
    order of ``entries``. The values of all records are gathered into flat columns first
    (one numpy conversion per field, not per record) and checked there; a frame's arrays
    are views of the columns."""
    kept = [(mid, fid, rec) for mid, fid, rec in entries if not isinstance(rec, str)]
    cols = _Columns([rec for _, _, rec in kept])
    problems = cols.problems(energy_key)
    if is_energy_per_atom(energy_key):
        cols.energy = cols.energy * cols.n_atoms  # eV/atom to eV
        cols.notes = (energy_note(energy_key),)
    frames: list[Frame] = []
    quarantine: list[Quarantined] = []
    b = 0
    for mid, fid, rec in entries:
        if isinstance(rec, str):
            quarantine.append(Quarantined(mid, fid, rec))
            continue
        problem = problems.get(b)
        if problem is not None:
            quarantine.append(Quarantined(mid, fid, problem))
        else:
            frames.append(cols.frame(b, mid, fid))
        b += 1
    return frames, quarantine


_Z = {symbol: z for symbol, z in atomic_numbers.items()}
_NO_SPECIES = Species("", math.nan)  # stands in for a site without exactly one species
_NO_STRUCTURE = Structure(Lattice(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))), [])


class _Columns:
    """The values of B decoded records as flat arrays: atom ``a`` of record ``b`` is row
    ``atom_ptr[b] + a`` of the per-atom arrays, force row ``force_ptr[b] + a`` (the
    pointers differ only where a record has as many force rows as atoms)."""

    def __init__(self, records: list):
        n = len(records)
        self.has_structure = np.fromiter(map(_IS_NOT_NONE, map(_STRUCTURE, records)), bool, n)
        structures = list(map(_STRUCTURE, records))
        if not self.has_structure.all():
            structures = [s if s is not None else _NO_STRUCTURE for s in structures]
        sites_of = list(map(_SITES, structures))
        self.n_atoms = _lengths(sites_of)
        self.atom_ptr = _ptr(self.n_atoms)
        n_atoms = int(self.atom_ptr[-1])
        sites = list(_chain(sites_of))
        lattices = list(map(_LATTICE, structures))
        self.cell = _numbers(_chain(_chain(map(_MATRIX, lattices))), 9 * n).reshape(n, 3, 3)  # Å
        self.pbc = np.fromiter(_chain(map(_PBC, lattices)), bool, 3 * n).reshape(n, 3)
        self.positions = _numbers(_chain(map(_XYZ, sites)), 3 * n_atoms).reshape(-1, 3)  # Å
        species = list(map(_SPECIES, sites))
        self.n_species = _lengths(species)
        first = (list(map(_FIRST, species)) if (self.n_species == 1).all() else
                 [sp[0] if len(sp) == 1 else _NO_SPECIES for sp in species])
        self.symbols = list(map(_ELEMENT, first))
        try:
            self.numbers = np.fromiter(map(_Z.__getitem__, self.symbols), np.int64, n_atoms)
        except KeyError:  # an unknown element: -1, reported by problems()
            self.numbers = np.array([_Z.get(symbol, -1) for symbol in self.symbols],
                                    dtype=np.int64)
        self.occupancy = _numbers(map(_OCCU, first), n_atoms)
        energy = list(map(_ENERGY, records))
        self.has_energy = np.fromiter(map(_IS_NOT_NONE, energy), bool, n)
        self.energy = _numbers(energy if self.has_energy.all() else
                               (math.nan if e is None else e for e in energy), n)  # eV
        forces = [f if f is not None else () for f in map(_FORCE, records)]
        self.has_force = np.fromiter(map(_IS_NOT_NONE, map(_FORCE, records)), bool, n)
        self.force_ptr = _ptr(_lengths(forces))
        self.forces = _numbers(_chain(_chain(forces)),
                               3 * int(self.force_ptr[-1])).reshape(-1, 3)  # eV/Å
        stress = list(map(_STRESS, records))
        self.has_stress = np.fromiter(map(_IS_NOT_NONE, stress), bool, n)
        stress_kbar = _numbers(_chain(_chain(s if s is not None else _NAN33 for s in stress)),
                               9 * n).reshape(n, 3, 3)
        self.stress_kbar_finite = np.isfinite(stress_kbar).all(axis=(1, 2))
        self.stress = stress_from_vasp_kbar(stress_kbar)  # (B, 3, 3) eV/Å³, ASE sign
        magmom = list(map(_MAGMOM, records))
        self.has_magmom = np.fromiter(map(_IS_NOT_NONE, magmom), bool, n)
        magmom = [m if m is not None else () for m in magmom]
        self.magmom_ptr = _ptr(_lengths(magmom))
        self.magmom = _numbers(_chain(magmom), int(self.magmom_ptr[-1]))  # μB
        # the sites' moments (μB), read only for records without a top-level magmom (a
        # tenth of MPtrj's): NaN where a site has none
        self.site_magmom = np.full(n_atoms, math.nan)
        site_has_magmom = np.zeros(n_atoms, dtype=bool)
        need = np.flatnonzero(~self.has_magmom & (self.n_atoms > 0))
        if need.size:
            atoms = np.concatenate([np.arange(self.atom_ptr[b], self.atom_ptr[b + 1])
                                    for b in need.tolist()])
            values = [p.magmom if p is not None else None for p in
                      map(_PROPERTIES, _chain(sites_of[b] for b in need.tolist()))]
            site_has_magmom[atoms] = np.fromiter(map(_IS_NOT_NONE, values), bool, len(atoms))
            self.site_magmom[atoms] = _numbers((math.nan if m is None else m for m in values),
                                               len(atoms))
        self.use_site_magmom = np.zeros(n, dtype=bool)
        self.use_site_magmom[need] = _all_per_record(site_has_magmom, self.atom_ptr)[need]
        self.notes: tuple[tuple[str, str], ...] = ()  # notes of every record of the run
        self._mask_optional_labels()

    def problems(self, energy_key: str) -> dict[int, str]:
        """Record index -> why it cannot be used (the first problem, in the order of the
        record's fields: structure, cell, sites, energy, forces). The optional stress and
        magmom never make a record unusable (see :meth:`_mask_optional_labels`)."""
        out: dict[int, str] = {}
        n_atoms, ptr = self.n_atoms, self.atom_ptr

        def flag(mask, reason):
            for b in np.flatnonzero(mask).tolist():
                if b not in out:
                    out[b] = reason(b)

        flag(~self.has_structure, lambda b: "structure: missing")
        flag(n_atoms == 0, lambda b: "structure.sites: empty")
        cell_finite = np.isfinite(self.cell).all(axis=(1, 2))
        flag(~cell_finite, lambda b: "structure.lattice.matrix: contains NaN or inf")
        for b in np.flatnonzero(_suspect_cells(self.cell) & cell_finite).tolist():
            problem = cell_problem(self.cell[b])
            if problem is not None and b not in out:
                out[b] = f"structure.lattice: {problem}"
        partial = (self.n_species != 1) | ~(np.abs(self.occupancy - 1.0)
                                            <= 1e-9 * np.maximum(np.abs(self.occupancy), 1.0))
        unknown = self.numbers < 0
        bad_site = partial | unknown
        flag(_any_per_record(bad_site, ptr), lambda b: self._site_problem(b, partial, unknown))
        flag(~_all_per_record(np.isfinite(self.positions).all(axis=1), ptr),
             lambda b: "structure.sites.xyz: contains NaN or inf")
        flag(~self.has_energy, lambda b: f"{energy_key}: missing")
        flag(~np.isfinite(self.energy), lambda b: f"{energy_key}: NaN or inf")
        flag(~self.has_force, lambda b: "force: missing")
        n_force = np.diff(self.force_ptr)
        flag(n_force != n_atoms, lambda b: f"force: {n_force[b]} rows for {n_atoms[b]} atoms")
        flag(~_all_per_record(np.isfinite(self.forces).all(axis=1), self.force_ptr),
             lambda b: "force: contains NaN or inf")
        return out

    def _mask_optional_labels(self) -> None:
        """Decide, per record, the optional labels it keeps (``stress_ok``, ``magmom_ok``:
        (B,) bool) and why the others are masked (``stress_masked``, ``magmom_masked``:
        (B,) the :data:`~orbitgraph.preprocess.sources.labels.MASKED` note's text, or None)."""
        n = len(self.n_atoms)
        self.stress_ok = self.has_stress & self.stress_kbar_finite
        self.stress_masked = np.where(~self.has_stress, STRESS_MISSING,
                                      np.where(self.stress_ok, None,
                                               not_finite("stress", STRESS_KEY)))
        n_magmom = np.diff(self.magmom_ptr)
        top_count = self.has_magmom & (n_magmom == self.n_atoms)
        top_finite = _all_per_record(np.isfinite(self.magmom), self.magmom_ptr)
        site_finite = _all_per_record(np.isfinite(self.site_magmom), self.atom_ptr)
        self.magmom_ok = np.where(self.has_magmom, top_count & top_finite,
                                  self.use_site_magmom & site_finite)
        masked = np.full(n, None, dtype=object)
        masked[~self.has_magmom & ~self.use_site_magmom] = MAGMOM_MISSING
        masked[~self.magmom_ok & (self.use_site_magmom | top_count)] = MAGMOM_NOT_FINITE
        masked[self.has_magmom & ~top_count] = MAGMOM_COUNT
        self.magmom_masked = masked

    def _site_problem(self, b: int, partial: np.ndarray, unknown: np.ndarray) -> str:
        lo, hi = self.atom_ptr[b], self.atom_ptr[b + 1]
        a = int(np.flatnonzero(partial[lo:hi] | unknown[lo:hi])[0])
        if partial[lo + a]:
            return f"structure.sites[{a}]: partial occupancy is not supported"
        return f"structure.sites[{a}]: unknown element {self.symbols[lo + a]!r}"

    def frame(self, b: int, material_id: str, frame_id: str) -> Frame:
        """Record ``b`` as a Frame: its masked optional labels are None and noted."""
        a0, a1 = self.atom_ptr[b], self.atom_ptr[b + 1]
        f0 = self.force_ptr[b]
        if not self.magmom_ok[b]:
            magmom = None
        elif self.has_magmom[b]:
            m0 = self.magmom_ptr[b]
            magmom = self.magmom[m0:m0 + a1 - a0]
        else:
            magmom = self.site_magmom[a0:a1]
        notes = self.notes + tuple((MASKED, what) for what in
                                   (self.stress_masked[b], self.magmom_masked[b])
                                   if what is not None)
        return Frame(frame_id=frame_id, material_id=material_id, cell=self.cell[b],
                     positions=self.positions[a0:a1], numbers=self.numbers[a0:a1],
                     energy=float(self.energy[b]), forces=self.forces[f0:f0 + a1 - a0],
                     stress=self.stress[b] if self.stress_ok[b] else None, magmom=magmom,
                     pbc=self.pbc[b], notes=notes)


_NAN33 = ((math.nan,) * 3,) * 3
_chain = itertools.chain.from_iterable
_FIRST = operator.itemgetter(0)
(_STRUCTURE, _SITES, _LATTICE, _MATRIX, _PBC, _XYZ, _SPECIES, _ELEMENT, _OCCU, _PROPERTIES,
 _MAGMOM, _ENERGY, _FORCE, _STRESS) = map(operator.attrgetter, (
    "structure", "sites", "lattice", "matrix", "pbc", "xyz", "species", "element", "occu",
    "properties", "magmom", "energy", "force", "stress"))
_IS_NOT_NONE = functools.partial(operator.is_not, None)


def _numbers(values, count: int) -> np.ndarray:
    """(count,) float64 of an iterable of ``count`` Python numbers (one pass, no list)."""
    return np.fromiter(values, np.float64, count)


def _lengths(lists) -> np.ndarray:
    return np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))


def _ptr(lengths: np.ndarray) -> np.ndarray:
    """(B + 1,) int64 offsets of B consecutive runs of ``lengths``."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _any_per_record(mask: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """(B,) bool: any of ``mask[ptr[b]:ptr[b + 1]]``."""
    counts = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(mask, out=counts[1:])
    return counts[ptr[1:]] > counts[ptr[:-1]]


def _all_per_record(mask: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """(B,) bool: all of ``mask[ptr[b]:ptr[b + 1]]`` (True for an empty run)."""
    return ~_any_per_record(~mask, ptr)


# ------------------------------------------------------------------ cells

def cell_problem(cell: np.ndarray) -> str | None:
    """Why a (3, 3) cell (rows = lattice vectors, Å) is unusable, or None. Left-handed
    cells (negative determinant) are usable: VASP and ASE accept them."""
    with np.errstate(over="ignore", invalid="ignore"):  # entries near the float limit
        det = float(np.linalg.det(cell))
        norms = float(np.prod(np.linalg.norm(cell, axis=1)))
    if not (np.isfinite(det) and np.isfinite(norms)):
        return (f"cell too large: its volume is beyond the float range (largest entry "
                f"{np.abs(cell).max():.3g} Å)")
    if not norms > 0 or abs(det) <= 1e-6 * norms:
        return f"singular cell (volume {det:.3g} Å^3)"
    return None  # a left-handed cell (det < 0) is a valid crystal: its volume is abs(det)


def check_cell(cell: np.ndarray, field: str = "structure.lattice") -> None:
    problem = cell_problem(cell)
    if problem is not None:
        raise RecordError(f"{field}: {problem}")


def _suspect_cells(cells: np.ndarray) -> np.ndarray:
    """(B,) bool: the (B, 3, 3) cells that may be singular or too large, by a test looser
    than :func:`cell_problem`, which then decides each."""
    if not len(cells):
        return np.zeros(0, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):  # huge entries: inf norms are suspect
        det = np.linalg.det(cells)
        norms = np.prod(np.linalg.norm(cells, axis=2), axis=1)
        return ~(norms > 0) | ~np.isfinite(norms) | (np.abs(det) <= 1e-5 * norms)
