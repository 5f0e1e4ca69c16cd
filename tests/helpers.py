"""Shared test helpers: small fixtures made here, never downloaded."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from orbitgraph.train.testing import random_rotation  # noqa: F401  (re-exported for the tests)
from orbitgraph.units import EV_PER_A3_IN_KBAR

DATA = Path(__file__).parent / "data"
SMALL_MPTRJ = DATA / "mptrj_small.json.gz"
VASP_FRAMES = DATA / "vasp_frames.json.gz"


def load_small_mptrj() -> dict:
    with gzip.open(SMALL_MPTRJ, "rt") as f:
        return json.load(f)


def sample_structures(limit: int | None = None
                      ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(frame_id, cell, positions, numbers) of the bundled MPtrj-format sample."""
    out = []
    for frames in load_small_mptrj().values():
        for fid, rec in frames.items():
            s = rec["structure"]
            cell = np.array(s["lattice"]["matrix"], dtype=np.float64)
            pos = np.array([site["xyz"] for site in s["sites"]], dtype=np.float64)
            from pymatgen.core import Element
            z = np.array([Element(site["species"][0]["element"]).Z for site in s["sites"]])
            out.append((fid, cell, pos, z))
            if limit is not None and len(out) >= limit:
                return out
    return out


def canonical_edges(g) -> list[tuple]:
    """Edges as a sorted list of (centre, neighbour, S) tuples."""
    return sorted(zip(g.centers.tolist(), g.neighbors.tolist(),
                      map(tuple, g.unit_shifts.tolist()), strict=True))


def per_atom_sorted_distances(g) -> list[np.ndarray]:
    ptr = g.edge_ptr
    return [np.sort(g.distances[ptr[i]:ptr[i + 1]]) for i in range(g.n_atoms)]




def write_small_mptrj(path: Path, frames: int = 40, max_atoms: int = 20) -> Path:
    """About ``frames`` frames of the bundled sample's materials of at most ``max_atoms``
    atoms (whole materials), as an MPtrj-format file: for tests that train."""
    small: dict = {}
    for mid, records in load_small_mptrj().items():
        if len(next(iter(records.values()))["structure"]["sites"]) <= max_atoms:
            small[mid] = records
        if sum(map(len, small.values())) >= frames:
            break
    path.write_text(json.dumps(small))
    return path


def stress_to_vasp_kbar(stress_ev_a3) -> np.ndarray:
    """(3, 3) eV/Å³, ASE sign -> (3, 3) kBar, VASP sign (how MPtrj holds stress)."""
    return -np.asarray(stress_ev_a3, dtype=np.float64) * EV_PER_A3_IN_KBAR


def write_mptrj(path: Path, materials: dict, labels: str = "emt") -> Path:
    """{material id: [ase.Atoms, ...]} as an MPtrj-format file, labelled by EMT (or with
    zero energies, forces and stresses: ``labels="zero"``); open cells get no stress."""
    from ase.calculators.emt import EMT

    def record(atoms):
        periodic = bool(atoms.pbc.all())
        if labels == "emt":
            atoms.calc = EMT()
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            stress = atoms.get_stress(voigt=False) if periodic else None
        else:
            energy, forces, stress = 0.0, np.zeros((len(atoms), 3)), np.zeros((3, 3))
        return {"structure": {"lattice": {"matrix": atoms.cell.array.tolist(),
                                          "pbc": atoms.pbc.tolist()},
                              "sites": [{"species": [{"element": el, "occu": 1}],
                                         "xyz": p.tolist()}
                                        for el, p in zip(atoms.get_chemical_symbols(),
                                                         atoms.positions, strict=True)]},
                "uncorrected_total_energy": energy, "corrected_total_energy": energy,
                "force": np.asarray(forces).tolist(), "magmom": None,
                "stress": stress_to_vasp_kbar(stress).tolist() if stress is not None else None}

    path.write_text(json.dumps({mid: {f"{mid}-{i}": record(a) for i, a in enumerate(frames)}
                                for mid, frames in materials.items()}))
    return path


def write_source(path: Path, fmt: str, frames: list[dict]) -> Path:
    """The same labelled frames as an MPtrj JSON file (``fmt`` "mptrj-json"), an extended
    XYZ file ("extxyz"), an ASE database ("ase-db": fairchem's .aselmdb, which keeps NaN;
    SQLite stores NaN as NULL) or an Alexandria JSON file ("alexandria-json"), at ``path``
    with the format's suffix.

    Each frame: ``mid``, ``fid``, ``symbols``, ``positions`` (N, 3) Å, ``cell`` (3, 3) Å,
    ``energy`` eV, ``forces`` (N, 3) eV/Å, optional ``stress`` (3, 3) eV/Å³ with ASE's sign
    (symmetric), ``magmom`` (N,) μB and ``info`` (more per-frame numbers, e.g.
    ``energy_per_atom``). NaN is written as each format writes it (``NaN`` in JSON as
    Python writes it, ``nan`` in extxyz). MPtrj: the energy is ``uncorrected_total_energy``
    and the stress kBar with VASP's sign; extxyz: ``energy=``, ``stress=`` (9 values),
    ``forces`` and ``magmoms`` columns, ``mp_id`` and ``frame_id``; ASE database: the
    calculator's results (stress as 6 Voigt values), ``mp_id``, ``frame_id`` and ``info`` as
    key-value pairs; Alexandria: :func:`alexandria_entry` each."""
    from extxyz_writer import frame_text

    if fmt == "ase-db":
        return write_ase_db(path.with_suffix(".aselmdb"), frames)
    if fmt == "alexandria-json":  # .json.bz2, as Alexandria ships (and its name tells)
        import bz2

        path = path.with_suffix(".json.bz2")
        path.write_bytes(bz2.compress(json.dumps(
            {"entries": [alexandria_entry(f) for f in frames]}).encode()))
        return path
    if fmt == "extxyz":
        texts = []
        for f in frames:
            info = {"frame_id": f["fid"], "mp_id": f["mid"], "energy": f["energy"],
                    **f.get("info", {})}
            if f.get("stress") is not None:
                info["stress"] = np.asarray(f["stress"], dtype=np.float64)
            columns = {"forces": np.asarray(f["forces"], dtype=np.float64)}
            if f.get("magmom") is not None:
                columns["magmoms"] = np.asarray(f["magmom"], dtype=np.float64)
            texts.append(frame_text(f["symbols"], f["positions"], f["cell"], info, columns))
        path = path.with_suffix(".extxyz")
        path.write_text("".join(texts))
        return path
    materials: dict = {}
    for f in frames:
        stress = f.get("stress")
        magmom = f.get("magmom")
        materials.setdefault(f["mid"], {})[f["fid"]] = {
            "structure": {"lattice": {"matrix": np.asarray(f["cell"]).tolist()},
                          "sites": [{"species": [{"element": s, "occu": 1}],
                                     "xyz": list(map(float, p))}
                                    for s, p in zip(f["symbols"], f["positions"], strict=True)]},
            "uncorrected_total_energy": f["energy"], "corrected_total_energy": f["energy"],
            "force": np.asarray(f["forces"]).tolist(),
            "stress": None if stress is None else stress_to_vasp_kbar(
                np.asarray(stress, dtype=np.float64)).tolist(),
            "magmom": None if magmom is None else np.asarray(magmom).tolist(),
            **f.get("info", {})}
    path = path.with_suffix(".json")
    path.write_text(json.dumps(materials))
    return path


def small_mptrj_frames() -> list[dict]:
    """The bundled MPtrj-format sample as frames for :func:`write_source` (energy: the
    uncorrected total energy, eV; stress converted to eV/Å³ with ASE's sign), in file
    order."""
    from orbitgraph.units import stress_from_vasp_kbar

    frames = []
    for mid, records in load_small_mptrj().items():
        for fid, rec in records.items():
            sites = rec["structure"]["sites"]
            frames.append({"mid": mid, "fid": fid,
                           "symbols": [site["species"][0]["element"] for site in sites],
                           "positions": np.array([site["xyz"] for site in sites], float),
                           "cell": np.array(rec["structure"]["lattice"]["matrix"], float),
                           "energy": rec["uncorrected_total_energy"],
                           "forces": np.array(rec["force"], float),
                           "stress": stress_from_vasp_kbar(rec["stress"])})
    return frames


def write_ase_db_folder(folder: Path, frames: list[dict], sizes: list[int],
                        suffix: str = ".aselmdb") -> Path:
    """``frames`` as a many-file ASE database source, the way OMat24 ships: consecutive runs
    of ``sizes`` frames (summing to ``len(frames)``) in files ``{subset}/part.{k}{suffix}``,
    the files spread over two subset folders (``folder/a``, ``folder/b``) so that the
    source's sorted file order is not the order written. Returns ``folder``."""
    assert sum(sizes) == len(frames), (sizes, len(frames))
    start = 0
    for k, n in enumerate(sizes):
        path = folder / "ab"[k % 2] / f"part.{k}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_ase_db(path, frames[start:start + n])
        start += n
    return folder


def write_ase_db(path: Path, frames: list[dict], append: bool = False) -> Path:
    """``frames`` (as for :func:`write_source`) as the rows of an ASE database at ``path``
    (.db: SQLite; .aselmdb: LMDB through ase-db-backends), written by ``ase.db`` in one
    transaction: the labels as the calculator's results (stress as 6 Voigt values), a frame
    without ``cell`` and ``pbc`` False as a molecule; ``mp_id``, ``frame_id`` (when the frame
    has a ``fid``) and ``info`` as key-value pairs, ``data`` (a dict) as the row's data.
    ``append``: add the rows to the database at ``path`` (e.g. a copy of an empty one,
    which spares SQLite creating its tables again)."""
    import ase.db

    db = ase.db.connect(str(path), append=append)
    with db:
        db.count()  # SQLite: its tables exist even without rows
        for f in frames:
            db.write(_atoms_with_results(f),
                     key_value_pairs={**({"mp_id": f["mid"], "frame_id": f["fid"]}
                                         if "fid" in f else {}), **f.get("info", {})},
                     data=f.get("data") or None)
    if hasattr(db, "close"):
        db.close()
    return path


def _atoms_with_results(f: dict):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    atoms = Atoms(f["symbols"], positions=f["positions"], cell=f["cell"],
                  pbc=f.get("pbc", True))
    results = {}
    if f.get("energy") is not None:
        results["energy"] = f["energy"]
    if f.get("forces") is not None:
        results["forces"] = np.asarray(f["forces"], dtype=np.float64)
    if f.get("stress") is not None:
        results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(f["stress"], float))
    if f.get("magmom") is not None:
        results["magmoms"] = np.asarray(f["magmom"], dtype=np.float64)
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def alexandria_entry(f: dict) -> dict:
    """One frame (as for :func:`write_source`) as Alexandria writes an entry: pymatgen's
    ``ComputedStructureEntry.as_dict()``, the forces and magnetic moments as site
    properties, ``data`` with ``mat_id`` and the stress in kBar with VASP's sign."""
    from monty.json import jsanitize
    from pymatgen.core import Lattice, Structure
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    props = {"forces": np.asarray(f["forces"], dtype=np.float64).tolist()}
    if f.get("magmom") is not None:
        props["magmom"] = np.asarray(f["magmom"], dtype=np.float64).tolist()
    structure = Structure(Lattice(np.asarray(f["cell"], dtype=np.float64)), f["symbols"],
                          np.asarray(f["positions"], dtype=np.float64),
                          coords_are_cartesian=True, site_properties=props)
    data = {"mat_id": f["mid"], **f.get("info", {})}
    if f.get("stress") is not None:
        data["stress"] = stress_to_vasp_kbar(np.asarray(f["stress"], float)).tolist()
    entry = ComputedStructureEntry(structure, f["energy"], data=data, entry_id=f["fid"])
    return jsanitize(entry.as_dict(), strict=False)


def graphs_of(frames, params):
    """The graphs of ``frames`` (preprocess.frame.Frame) built with ``params``, as the build
    builds them (one compiled call)."""
    from orbitgraph.preprocess.graph import knn_graphs

    return knn_graphs([f.cell for f in frames], [f.positions for f in frames],
                      pbc=np.array([f.pbc for f in frames], dtype=bool).reshape(-1, 3),
                      params=params)


def build_columns(frames, params) -> dict:
    """A shard's columns of ``frames``, their graphs built with ``params``."""
    from orbitgraph.preprocess.store.shard import columns_from_frames

    return columns_from_frames(frames, graphs_of(frames, params))


def write_shard(root, index: int, frames, spec, **kwargs):
    """``write_frames_shard`` with the frames' graphs built by ``spec.graph``."""
    from orbitgraph.preprocess.store import write_frames_shard

    return write_frames_shard(root, index, frames, spec, graphs_of(frames, spec.graph), **kwargs)

def write_emt_extxyz(path: Path, isolated: tuple[str, ...] = ("Cu", "Al"),
                     box: float = 12.0) -> Path:
    """An extxyz file labelled by ASE's EMT (``energy``, ``stress`` eV/Å³ with ASE's sign,
    ``forces``): rattled 4-atom Cu, Al and Cu3Al cells (one material each, 4 frames), a
    1-atom fcc Cu cell (a crystal: its atom's images are 2.55 Å away), and one-atom frames
    of the ``isolated`` elements in a cubic box of ``box`` Å, tagged as mace-torch tags
    isolated atoms (``config_type=IsolatedAtom``)."""
    from ase import Atoms
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from extxyz_writer import frame_text

    def labelled(atoms, mid, fid, info=None):
        atoms.calc = EMT()
        info = {"mp_id": mid, "frame_id": fid, "energy": atoms.get_potential_energy(),
                "stress": atoms.get_stress(voigt=False), **(info or {})}
        return frame_text(atoms.get_chemical_symbols(), atoms.positions, atoms.cell.array,
                          info, {"forces": atoms.get_forces()})

    frames = []
    cells = {"Cu": bulk("Cu", "fcc", a=3.61, cubic=True), "Al": bulk("Al", "fcc", a=4.05,
                                                                      cubic=True)}
    cu3al = bulk("Cu", "fcc", a=3.7, cubic=True)
    cu3al.numbers[0] = 13
    cells["Cu3Al"] = cu3al
    for name, atoms in cells.items():
        for step in range(4):
            rattled = atoms.copy()
            rattled.rattle(0.05, seed=step)
            frames.append(labelled(rattled, f"mp-{name}", f"mp-{name}-{step}"))
    frames.append(labelled(bulk("Cu", "fcc", a=3.61), "mp-Cu-prim", "mp-Cu-prim-0"))
    for symbol in isolated:
        atom = Atoms(symbol, positions=[[0.0, 0.0, 0.0]], cell=np.eye(3) * box, pbc=True)
        frames.append(labelled(atom, f"iso-{symbol}", f"iso-{symbol}",
                               {"config_type": "IsolatedAtom"}))
    path.write_text("".join(frames))
    return path


def emt_materials(n_frames: int, seed: int) -> dict:
    """Rattled, strained fcc Cu, Al and CuAl cells (4 atoms), two frames per material."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    materials: dict = {}
    for i in range(n_frames):
        kind = ["Cu", "Al", "CuAl"][i % 3]
        atoms = bulk("Al", "fcc", a=4.05, cubic=True) if kind == "Al" else \
            bulk("Cu", "fcc", a=3.6, cubic=True)
        if kind == "CuAl":
            atoms.symbols[[1, 2]] = "Al"
        atoms.set_cell(atoms.cell @ (np.eye(3) + rng.normal(0, 0.02, (3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        materials.setdefault(f"mp-{seed}-{i // 2}", []).append(atoms)
    return materials


def shift_energies(path: Path, shift: dict[int, float]) -> Path:
    """Add Σ_i shift(z_i) to every frame's energies of an MPtrj file (another reference)."""
    from ase.data import atomic_numbers

    data = json.loads(path.read_text())
    for frames in data.values():
        for rec in frames.values():
            extra = sum(shift[atomic_numbers[site["species"][0]["element"]]]
                        for site in rec["structure"]["sites"])
            rec["uncorrected_total_energy"] += extra
            rec["corrected_total_energy"] += extra
    path.write_text(json.dumps(data))
    return path
