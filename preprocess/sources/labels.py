"""Which fields of a source are its labels, decided once per build, and how one frame's
labels are read and counted.

A build reads one energy (eV), one forces array (eV/Å per atom) and at most one stress
(eV/Å³, ASE sign: positive = tensile). The keys come from the build's
:class:`~orbitgraph.preprocess.store.params.LabelKeys`; a key left ``None`` is filled from the
source's convention. For extended XYZ the convention is "the one candidate present": the
driver scans every frame's comment line before any work starts and collects the fields
that look like a label of each kind (names below, case-insensitive):

========  =======================================  =========================================
label     candidates                                read as
========  =======================================  =========================================
energy    per-frame ``energy`` or ``*_energy``     eV (``energy=`` is ASE's calculator energy)
forces    per-atom ``R:3`` ``forces``/``*_forces``  eV/Å (``force``, ``*_force`` too)
stress    per-frame ``stress`` or ``*_stress``     eV/Å³, ASE sign; 6 Voigt values (xx yy zz
                                                    yz xz xy) or 9 (3x3)
virial    per-frame ``virial(s)``, ``*_virial(s)``  eV, 6 or 9 values; stored as the stress
                                                    σ = -virial / V, V = abs(det(cell)) in Å³
========  =======================================  =========================================

With more than one candidate of a kind and no key given, the build stops with a
:class:`LabelError` that lists them (a file holding reference labels and a model's
predictions must not be read as either silently). The stored stress is the frame's stress
where it has one, else the stress from its virial.

Per frame, one rule for every source format:

* energy and forces are required: absent, unreadable, NaN or inf quarantines the frame with
  the reason. So does a frame without any stress or virial when the build named one of
  their keys (the key must be present in every frame).
* stress and magnetic moments are optional: a frame whose value is absent, NaN or inf or of
  a form the store does not hold is kept and the label is masked, stored as NaN (stress: the
  whole (3, 3) tensor; magmom: every atom of the frame), which the loss, the metrics and the
  statistics leave out. Each masked label is counted, with why (:data:`MASKED`).

An energy key that names an energy per atom (a name with ``per_atom`` in it, as MPtrj's
``energy_per_atom``: eV/atom) is stored as the total energy, value × n_atoms (eV), and
counted as converted. Every label-like field present but not stored (another candidate, a
per-atom column of three numbers that looks like forces) is counted too; the counts go to
the build summary and the manifest.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from orbitgraph.errors import LabelError, RecordError
from orbitgraph.preprocess.store.params import LabelKeys

FAMILIES: dict[str, re.Pattern] = {
    "energy": re.compile(r"(?:.*_)?energy", re.IGNORECASE),
    "forces": re.compile(r"(?:.*_)?forces?", re.IGNORECASE),
    "stress": re.compile(r"(?:.*_)?stress", re.IGNORECASE),
    "virial": re.compile(r"(?:.*_)?virials?", re.IGNORECASE),
}
PER_FRAME = ("energy", "stress", "virial")

# per-atom arrays of ASE's extxyz reader that are not labels of this store
NOT_LABELS = frozenset({"positions", "numbers", "momenta", "velocities", "initial_magmoms",
                        "magmoms", "magmom", "initial_charges", "masses", "tags", "move_mask"})

# the categories of a frame's notes (see count_notes): a label-like field not stored; a
# label converted to the store's units; an optional label masked (stored as NaN)
NOT_STORED = "not_stored"
CONVERTED = "converted"
MASKED = "masked"
CATEGORIES = (NOT_STORED, CONVERTED, MASKED)

_PER_ATOM = re.compile(r"(?:^|_)per_atom(?:_|$)", re.IGNORECASE)


def is_energy_per_atom(key: str) -> bool:
    """Whether the energy field ``key`` holds an energy per atom (eV/atom): its name has
    ``per_atom`` as a word (``energy_per_atom``, ``ef_per_atom``, ``REF_energy_per_atom``)."""
    return bool(_PER_ATOM.search(key))


def energy_note(key: str) -> tuple[str, str]:
    """The note of a frame whose energy was read from the per-atom field ``key``."""
    return CONVERTED, f"energy = '{key}' × n_atoms (eV/atom to eV)"


@dataclass(frozen=True)
class LabelPlan:
    """The keys a build reads, the same for every frame of the source.

    ``energy`` and ``forces`` are required in every frame. The stored stress is read from
    ``stress`` where a frame has it (in ``stress_units``), else converted from ``virial``.
    ``stress_required``: a stress or virial key was chosen by the build, so a frame with
    neither is quarantined (keys found by the scan are optional: absent means NaN).
    ``energy_per_atom``: the energy key holds eV/atom, stored × n_atoms as the total energy
    (eV); always derived from the key (:func:`is_energy_per_atom`), whatever is passed.
    """

    energy: str
    forces: str
    stress: str | None = None
    virial: str | None = None
    stress_required: bool = False
    stress_units: str = "eV/Å³, ASE sign"
    energy_per_atom: bool = False

    def __post_init__(self):
        object.__setattr__(self, "energy_per_atom", is_energy_per_atom(self.energy))

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        energy = (f"energy '{self.energy}' (eV/atom, stored × n_atoms as the total energy in "
                  "eV)" if self.energy_per_atom else f"energy '{self.energy}' (eV)")
        parts = [energy, f"forces '{self.forces}' (eV/Å)"]
        stress = []
        if self.stress is not None:
            stress.append(f"stress '{self.stress}' ({self.stress_units})")
        if self.virial is not None:
            stress.append(f"stress = -virial / V from '{self.virial}' (virial in eV, V = "
                          "abs(det(cell)) Å³; eV/Å³, ASE sign)")
        text = ", else ".join(stress) if stress else "no stress"
        if self.stress_required:
            text += " (required in every frame)"
        return ", ".join(parts + [text])


def plan_from_keys(keys: LabelKeys) -> LabelPlan:
    """The plan of keys that are all given (no scan needed)."""
    if keys.energy is None or keys.forces is None:
        raise ValueError("plan_from_keys: energy and forces keys must be given")
    return LabelPlan(keys.energy, keys.forces, keys.stress, keys.virial,
                     stress_required=keys.stress is not None or keys.virial is not None)


def needs_scan(keys: LabelKeys) -> bool:
    return any(getattr(keys, kind) is None for kind in FAMILIES)


# ------------------------------------------------------------------ extxyz comment lines

_KEY_VALUE = re.compile(rb'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*("[^"]*"|\{[^}]*\}|\S+)')


def header_candidates(comment: bytes) -> list[tuple[str, str]]:
    """(kind, key) of every label candidate named in an extxyz comment line, without
    parsing values: per-frame keys by name, per-atom columns of ``Properties=`` that hold
    three reals."""
    out = []
    for key, value in _KEY_VALUE.findall(comment):
        name = key.decode()
        if name == "Properties":
            fields = value.strip(b'"{}').decode().split(":")
            # name:type:columns triples; a malformed string (not whole triples) is for ASE's
            # reader to report, not for this scan of label keys
            for col, kind, width in zip(fields[0::3], fields[1::3], fields[2::3],
                                        strict=False):
                if kind == "R" and width == "3" and FAMILIES["forces"].fullmatch(col):
                    out.append(("forces", col))
            continue
        for kind in PER_FRAME:
            if FAMILIES[kind].fullmatch(name):
                out.append((kind, name))
                break
    return out


class CandidateCount:
    """Frames holding each candidate key, gathered over a source's comment lines."""

    def __init__(self):
        self.frames = 0
        self.counts: dict[str, Counter] = {kind: Counter() for kind in FAMILIES}

    def add(self, comment: bytes) -> None:
        self.frames += 1
        for kind, key in set(header_candidates(comment)):
            self.counts[kind][key] += 1

    def resolve(self, keys: LabelKeys, where: str) -> LabelPlan:
        """The plan for ``keys``: each key not given is the one candidate of its kind
        (none for stress and virial is allowed).

        Raises one LabelError that lists, for each kind with several candidates, the
        candidates and how many frames hold each, or says that there is no energy or
        forces label."""
        if self.frames == 0:  # nothing to read; the build reports the empty source
            return LabelPlan(keys.energy or "energy", keys.forces or "forces", keys.stress,
                             keys.virial)
        problems = []
        chosen = {}
        for kind in FAMILIES:
            given = getattr(keys, kind)
            if given is not None:
                chosen[kind] = given
                continue
            found = self.counts[kind]
            if len(found) == 1:
                chosen[kind] = next(iter(found))
            elif len(found) > 1:
                listed = ", ".join(f"'{k}' ({n} of {self.frames} frames)" for k, n in
                                   sorted(found.items(), key=lambda x: (-x[1], x[0])))
                problems.append(f"{len(found)} candidate {kind} labels and none chosen: "
                                f"{listed}; choose one with --{kind}-key ({kind}_key in "
                                "pipelines.yaml)")
            elif kind in ("energy", "forces"):
                what = ("a per-frame field named energy or ending in _energy"
                        if kind == "energy" else
                        "a per-atom column of 3 reals named forces or ending in _forces")
                problems.append(f"no {kind} label in any of its {self.frames} frames (looked "
                                f"for {what}); name it with --{kind}-key ({kind}_key in "
                                "pipelines.yaml)")
            else:
                chosen[kind] = None
        if problems:
            raise LabelError(f"{where}: " + "; ".join(problems))
        return LabelPlan(chosen["energy"], chosen["forces"], chosen["stress"],
                         chosen["virial"], stress_required=keys.stress is not None
                         or keys.virial is not None)


# ------------------------------------------------------------------ one ASE frame

RAW = "orbitgraph_raw_"  # info prefix of a stress/virial value kept as read (see parse_comment)
_SPECIAL = re.compile(r"(^|\s)(stress|virial)(\s*=)")


def parse_comment(line: str) -> dict:
    """ASE's extxyz comment parser, except that ``stress=`` and ``virial=`` may hold 6
    (Voigt) as well as 9 values, and a value of another form is kept (under a private
    name) for the label reader to report instead of failing the frame's parse."""
    from ase.io.extxyz import key_val_str_to_dict

    info = key_val_str_to_dict(_SPECIAL.sub(lambda m: m.group(1) + RAW + m.group(2)
                                            + m.group(3), line))
    for name in ("stress", "virial"):
        if RAW + name not in info:
            continue
        value = info[RAW + name]
        if isinstance(value, np.ndarray) and value.dtype.kind in "if" and value.shape in (
                (6,), (9,)):
            del info[RAW + name]
            info[name] = value.reshape(3, 3, order="F") if value.shape == (9,) else value
    return info


def _lookup(atoms, results: dict, key: str):
    """The value of ``key`` in a frame: ASE keeps it in ``info`` (per frame), ``arrays``
    (per atom) or its calculator's results (``energy``, ``forces``, ``stress``, ...)."""
    for table in (atoms.info, atoms.arrays, results):
        if key in table:
            return table[key]
    return atoms.info.get(RAW + key)


def _tensor(value) -> np.ndarray | None:
    """(3, 3) float64 from 6 Voigt values (xx yy zz yz xz xy), 9 values (column-major, as
    ASE reads 3x3 keys) or a (3, 3) array; None for any other form."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.shape == (6,):
        xx, yy, zz, yz, xz, xy = arr
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if arr.shape == (9,):
        return arr.reshape(3, 3, order="F")
    if arr.shape == (3, 3):
        return arr
    return None


@dataclass
class FrameLabels:
    energy: float  # eV
    forces: np.ndarray  # (N, 3) eV/Å
    stress: np.ndarray | None  # (3, 3) eV/Å³, ASE sign; None: masked
    magmom: np.ndarray | None  # (N,) μB; None: masked
    notes: tuple[tuple[str, str], ...]  # (NOT_STORED | CONVERTED | MASKED, what)


def read_labels(atoms, plan: LabelPlan, cell: np.ndarray, pbc: np.ndarray) -> FrameLabels:
    """One frame's labels by ``plan``. Raises RecordError (from
    :mod:`orbitgraph.preprocess.sources.records`) naming the field when a required label is
    absent or unreadable; an optional one (stress, magmom) that is not usable is masked and
    noted."""

    calc = atoms.calc
    results = getattr(calc, "results", {}) if calc is not None else {}
    n = len(atoms)
    notes: list[tuple[str, str]] = []

    value = _lookup(atoms, results, plan.energy)
    if value is None:
        raise RecordError(f"{plan.energy}: missing")
    try:
        if isinstance(value, (bool, np.bool_, str)):
            raise TypeError(type(value).__name__)
        energy = float(value)
    except (TypeError, ValueError):
        raise RecordError(f"{plan.energy}: not a number") from None
    if not np.isfinite(energy):
        raise RecordError(f"{plan.energy}: NaN or inf")
    if plan.energy_per_atom:  # eV/atom to eV
        energy *= n
        notes.append(energy_note(plan.energy))

    value = _lookup(atoms, results, plan.forces)
    if value is None:
        raise RecordError(f"{plan.forces}: missing")
    try:
        forces = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RecordError(f"{plan.forces}: not numbers") from None
    if forces.shape != (n, 3):
        raise RecordError(f"{plan.forces}: shape {forces.shape} for {n} atoms")
    if not np.all(np.isfinite(forces)):
        raise RecordError(f"{plan.forces}: contain NaN or inf")

    stress, handled = _stress(atoms, results, plan, cell, pbc, notes)
    magmom = _magmom(atoms, results, n, notes)

    used = {plan.energy, plan.forces, *handled}
    for name in sorted({*atoms.info, *atoms.arrays, *results} - used):
        if name.startswith(RAW):
            name = name[len(RAW):]
            if name in used:
                continue
        notes.extend((NOT_STORED, what) for what in _unused(name, _lookup(atoms, results, name), n))
    return FrameLabels(energy, forces, stress, magmom, tuple(notes))


def _magmom(atoms, results: dict, n: int, notes: list) -> np.ndarray | None:
    """(N,) μB from the calculator's ``magmoms`` or the ``magmoms``/``magmom`` column; None,
    noted as masked, where the frame has none, or one that is not one finite number per
    atom."""
    value = _lookup(atoms, results, "magmoms")
    if value is None:
        value = atoms.arrays.get("magmom")
    if value is None:
        notes.append((MASKED, MAGMOM_MISSING))
        return None
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        notes.append((MASKED, f"magmom: shape {arr.shape[1:]} per atom, the store holds one "
                              "number per atom"))
        return None
    if not np.all(np.isfinite(arr)):
        notes.append((MASKED, MAGMOM_NOT_FINITE))
        return None
    return arr


def _stress(atoms, results: dict, plan: LabelPlan, cell: np.ndarray, pbc: np.ndarray,
            notes: list) -> tuple[np.ndarray | None, list[str]]:
    """(stress (3, 3) eV/Å³ ASE sign or None, the keys read) by ``plan``: the stress key
    where the frame holds a usable one, else the virial key. A frame without a usable one
    is noted as masked (why: the first problem met); a value present but not used beside
    the one stored is noted as not stored. A required stress that is absent raises
    RecordError."""

    handled: list[str] = []
    problems: list[str] = []
    for kind, key in (("stress", plan.stress), ("virial", plan.virial)):
        value = None if key is None else _lookup(atoms, results, key)
        if value is None:
            continue
        handled.append(key)
        tensor = _tensor(value)
        if tensor is None:
            shape = "text" if isinstance(value, str) else np.shape(value)
            problems.append(f"{kind} '{key}': not understood (shape {shape})")
        elif not np.all(np.isfinite(tensor)):
            problems.append(not_finite(kind, key))
        elif kind == "stress":
            return tensor, handled
        elif not np.all(pbc):
            problems.append(f"virial '{key}': the frame is not periodic along all three axes "
                            "(no volume)")
        else:
            notes.extend((NOT_STORED, what) for what in problems)
            notes.append((CONVERTED, virial_note(key)))
            return -tensor / abs(float(np.linalg.det(cell))), handled
    if plan.stress_required and not handled:
        named = " or ".join(f"'{k}'" for k in (plan.stress, plan.virial) if k is not None)
        raise RecordError(f"stress: missing (no {named} in this frame)")
    notes.append((MASKED, problems[0] if problems else STRESS_MISSING))
    notes.extend((NOT_STORED, what) for what in problems[1:])
    return None, handled


STRESS_MISSING = "stress: missing"
MAGMOM_MISSING = "magmom: missing"
MAGMOM_NOT_FINITE = "magmom: NaN or inf"


def not_finite(kind: str, key: str) -> str:
    """Why a stress or virial read from field ``key`` is masked: it holds NaN or inf."""
    return f"{kind} '{key}': NaN or inf"


def virial_note(key: str) -> str:
    """The note of a frame whose stress was converted from the virial field ``key``."""
    return (f"stress = -virial / V from '{key}' (virial in eV, V = abs(det(cell)) in Å³, "
            "stress in eV/Å³ with ASE's sign)")


def _unused(name: str, value, n: int) -> list[str]:
    """What a field the build does not store is, if it looks like a label."""
    for kind in ("energy", "stress", "virial"):
        if FAMILIES[kind].fullmatch(name):
            return [f"{kind} '{name}'"]
    if name in NOT_LABELS:
        return []
    if FAMILIES["forces"].fullmatch(name):
        return [f"forces '{name}'"]
    if isinstance(value, np.ndarray) and value.shape == (n, 3) and value.dtype.kind == "f":
        return [f"per-atom column '{name}' (3 numbers per atom, like forces)"]
    return []


def count_notes(notes_per_frame) -> dict[str, dict[str, int]]:
    """{category: {what: frames}} over frames' notes, for each of :data:`CATEGORIES`."""
    out: dict[str, Counter] = {category: Counter() for category in CATEGORIES}
    for notes in notes_per_frame:
        for category, what in sorted(set(notes)):
            out[category][what] += 1
    return {category: dict(c) for category, c in out.items()}
