"""MPtrj records to :class:`~preprocess.frame.Frame`, with validation.

A record is one value of the published MPtrj JSON, ``{material_id: {frame_id: record}}``:
``structure`` (a pymatgen Structure dict), ``uncorrected_total_energy`` and
``corrected_total_energy`` (eV), ``force`` (eV/Å), ``stress`` (kBar, VASP sign),
``magmom`` (list or null). The structure dict is read directly (no pymatgen objects: they
cost more than the graph).

Every problem raises :class:`RecordError` with a reason that names the field; the pipeline
puts such records in quarantine with their ids.
"""
from __future__ import annotations

import math

import numpy as np
from ase.data import atomic_numbers

from preprocess.frame import Frame
from preprocess.units import stress_from_vasp_kbar


class RecordError(ValueError):
    """A record that cannot be used; ``reason`` says which field and why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _array(value, shape, field: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RecordError(f"{field}: not a numeric array") from None
    if arr.shape != shape:
        raise RecordError(f"{field}: shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise RecordError(f"{field}: contains NaN or inf")
    return arr


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


def frame_from_record(material_id: str, frame_id: str, record: dict,
                      energy_key: str = "uncorrected_total_energy") -> Frame:
    """Parse and validate one MPtrj record. Raises RecordError."""
    if not isinstance(record, dict):
        raise RecordError(f"record: expected an object, got {type(record).__name__}")
    structure = record.get("structure")
    if not isinstance(structure, dict):
        raise RecordError("structure: missing or not an object")
    try:
        lattice = structure["lattice"]
        sites = structure["sites"]
    except KeyError as err:
        raise RecordError(f"structure: missing {err.args[0]!r}") from None
    if not isinstance(sites, list) or not sites:
        raise RecordError("structure.sites: missing or empty")
    cell = _array(lattice.get("matrix") if isinstance(lattice, dict) else None, (3, 3),
                  "structure.lattice.matrix")
    check_cell(cell)
    try:
        pbc = np.asarray(lattice.get("pbc", (True, True, True)), dtype=bool).reshape(3)
    except (TypeError, ValueError):
        raise RecordError("structure.lattice.pbc: expected 3 booleans") from None
    n = len(sites)
    numbers = np.empty(n, dtype=np.int64)
    site_magmom = []
    try:
        xyz = [site["xyz"] for site in sites]
        for a, site in enumerate(sites):
            species = site["species"]
            if len(species) != 1 or not math.isclose(float(species[0].get("occu", 1.0)), 1.0):
                raise RecordError(f"structure.sites[{a}]: partial occupancy is not supported")
            symbol = species[0]["element"]
            if symbol not in atomic_numbers:
                raise RecordError(f"structure.sites[{a}]: unknown element {symbol!r}")
            numbers[a] = atomic_numbers[symbol]
            site_magmom.append((site.get("properties") or {}).get("magmom"))
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise RecordError(f"structure.sites: malformed site ({type(err).__name__}: {err})") from None
    positions = _array(xyz, (n, 3), "structure.sites.xyz")

    if energy_key not in record or record[energy_key] is None:
        raise RecordError(f"{energy_key}: missing")
    try:
        energy = float(record[energy_key])
    except (TypeError, ValueError):
        raise RecordError(f"{energy_key}: not a number") from None
    if not math.isfinite(energy):
        raise RecordError(f"{energy_key}: NaN or inf")
    if record.get("force") is None:
        raise RecordError("force: missing")
    forces = np.asarray(record["force"], dtype=object)
    if forces.shape[:1] != (n,):
        raise RecordError(f"force: {forces.shape[0] if forces.ndim else 0} rows for {n} atoms")
    forces = _array(record["force"], (n, 3), "force")
    stress = None
    if record.get("stress") is not None:
        stress = stress_from_vasp_kbar(_array(record["stress"], (3, 3), "stress"))
    magmom = record.get("magmom")
    if magmom is None and all(m is not None for m in site_magmom):
        magmom = site_magmom
    if magmom is not None:
        magmom = _array(magmom, (n,), "magmom")
    return Frame(frame_id=str(frame_id), material_id=str(material_id), cell=cell,
                 positions=positions, numbers=numbers, energy=energy, forces=forces,
                 stress=stress, magmom=magmom, pbc=pbc)
