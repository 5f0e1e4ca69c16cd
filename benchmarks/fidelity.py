"""Teacher-student fidelity: does an orbitgraph potential trained on a teacher's labels
reproduce the teacher's materials properties?

usage: python benchmarks/fidelity.py [--teacher emt|chgnet] [--systems Cu3Au,Ni3Al,Ag]
           [--minutes 5] [--threads 2] [--md-ps 10] [--quick] [--out DIR]

The teacher is an ASE calculator available offline: ASE's EMT (fast; only Al, Cu, Ag, Au,
Ni, Pd, Pt are meaningful, its H, C, N, O parameters are not a physical oxide or covalent
model, so with EMT every system is a metal or alloy) or CHGNet (the ``chgnet`` package
ships its weights; model version 0.3.0, which labelled MPtrj-style data).

For each system (a cubic cell, see :data:`SYSTEMS`):

1. Data, generated as practitioners do and labelled by the teacher (energy eV, forces eV/Å,
   stress eV/Å³ with ASE's sign): Langevin NVT MD at several temperatures, strained cells
   (isotropic, uniaxial and shear), rattled strained cells, the steps of a cell
   relaxation and, around the teacher's relaxed cell, cold MD and cells whose atoms are
   displaced by Gaussians of 0.005-0.03 Å (the curvature that phonons and elastic
   constants probe; without them the students' force responses were 20-28 % off at
   phonopy's 0.015 Å).
   Every trajectory is a material of its own (``mp_id``) and lies wholly in one split,
   and the splits use different seeds and temperatures: train (MD at 0.1 from the relaxed
   cell, 0.3, 0.6 and 1.0 x the system's hot temperature), val (0.75 x) and test (0.45 and
   0.85 x). Written as extended XYZ with ``REF_energy``, ``REF_forces``, ``REF_stress``
   (Voigt, xx yy zz yz xz xy). Each trajectory is kept in ``frames/`` once labelled
   (:class:`FrameCache`), so an interrupted generation resumes and a plan that grows
   labels only its new trajectories.
2. Train and val are built into a store with :func:`orbitgraph.build_store` (the 16-NN
   graph), then trained with :class:`orbitgraph.Trainer` from a run file (``run.yaml``, the
   model and training settings of this benchmark, all explicit: it is also what
   ``orbitgraph train --config run.yaml`` reads). The budget is wall time (``--minutes``):
   a short probe measures the time per step and the run gets that many steps of a cosine
   schedule whose last quarter is stage two (``train.stage_two``: a constant 1e-3 on a
   loss whose energy weight is raised 100x, its force and stress weights 10x); the model
   has per-element weights in its symmetric contraction (``contraction_weights:
   element``, as mace-torch's MACE). The validation curve (force MAE against wall time)
   goes to ``curves.csv``, one row per validation with a ``trainer`` column, so another
   trainer's curve (e.g. mace-torch on the same extxyz files) can be appended and plotted
   beside it.
3. Teacher and student (:class:`orbitgraph.OrbitCalculator`, float64) are compared on the
   test trajectories (E per atom, F components, σ components: MAE) and on properties
   computed by matcalc for both calculators alike (matcalc wraps an ASE calculator with
   ASE's optimisers and cell filters, pymatgen's EOS and elastic fits and phonopy, so the
   teacher and the student go through the same code): the relaxed lattice parameter, the
   Birch-Murnaghan bulk modulus, the elastic constants C11, C12, C44 (strains of
   ±0.5 and ±1 %, :attr:`Settings.elastic_strains`), phonon frequencies at
   Γ, X, M and R of the cubic cell (phonopy, finite displacements in a supercell), and NVT
   MD at the hot temperature for ``--md-ps`` picoseconds from the same start and the same
   random numbers: stability (finite energies, no two atoms closer than 0.7 x the closest
   pair of the teacher's run, mean temperature within 50 % of the teacher's) and the radial
   distribution function's L1 difference to the teacher's.
4. A table is printed and written to ``fidelity.csv`` and ``fidelity.json``; per system a
   PNG holds the parity plots, the EOS, the phonon DOS and the RDFs; ``curves.png`` the
   validation curves.

The targets are those of issue #30: E ≤ 3 meV/atom, F ≤ 60 meV/Å, lattice 0.5 %, bulk
modulus 5 %, elastic constants 10 %, phonon frequencies 5 %, stable MD.
``--quick`` runs the whole pipeline in about a minute with a tiny model, a few frames and
short calculations (the smoke test, tests/test_fidelity.py); its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mace import MACE_VERSION, run_mace  # noqa: E402  (before _common drops this folder)

# isort: split
from _common import OUT  # noqa: E402

GPA = 160.21766208  # GPa per eV/Å³
# q points (reduced coordinates of the cubic cell's reciprocal lattice) whose phonon
# frequencies are compared
Q_POINTS = {"Γ": (0.0, 0.0, 0.0), "X": (0.5, 0.0, 0.0), "M": (0.5, 0.5, 0.0),
            "R": (0.5, 0.5, 0.5)}
ACOUSTIC_THZ = 0.5  # frequencies below this (acoustic modes at Γ) are left out of relative errors
TARGETS = {"energy_mae_meV_per_atom": 3.0, "forces_mae_meV_per_A": 60.0,
           "lattice_rel": 0.005, "bulk_modulus_rel": 0.05, "elastic_rel": 0.10,
           "phonon_rel": 0.05}


# ----------------------------------------------------------------------------- systems

@dataclass(frozen=True)
class System:
    """A cubic crystal: ``build()`` gives its conventional cell; ``hot_K`` is the
    temperature of the high-temperature MD (below the teacher's melting point)."""

    name: str
    bonding: str
    hot_K: float
    teachers: tuple[str, ...]

    def build(self):
        from ase.build import bulk
        from ase.lattice.compounds import B2, L1_2

        makers = {
            "Cu3Au": lambda: L1_2(("Au", "Cu"), latticeconstant=3.75),
            "NiAl": lambda: B2(("Ni", "Al"), latticeconstant=2.88),
            "Ni3Al": lambda: L1_2(("Al", "Ni"), latticeconstant=3.57),
            "Ag": lambda: bulk("Ag", "fcc", a=4.09, cubic=True),
            "Mo": lambda: bulk("Mo", "bcc", a=3.15, cubic=True),
            "CaO": lambda: bulk("CaO", "rocksalt", a=4.81, cubic=True),
            "MgO": lambda: bulk("MgO", "rocksalt", a=4.21, cubic=True),
            "SiC": lambda: bulk("SiC", "zincblende", a=4.36, cubic=True),
        }
        atoms = makers[self.name]()
        atoms.pbc = True
        return atoms


SYSTEMS = {s.name: s for s in (
    System("Cu3Au", "metallic alloy (L1_2)", 900.0, ("emt", "chgnet")),
    # EMT's B2 NiAl is mechanically unstable (C11 69 < C12 90 GPa): CHGNet only
    System("NiAl", "intermetallic (B2)", 1200.0, ("chgnet",)),
    System("Ni3Al", "intermetallic (L1_2)", 1200.0, ("emt", "chgnet")),
    System("Ag", "fcc metal", 900.0, ("emt", "chgnet")),
    System("Mo", "bcc transition metal", 1500.0, ("chgnet",)),
    System("CaO", "ionic oxide (rocksalt)", 1500.0, ("chgnet",)),
    # CHGNet labels MgO 4x slower than CaO (18 bonds within its 3 Å bond graph, not 6)
    System("MgO", "ionic oxide (rocksalt)", 1500.0, ("chgnet",)),
    System("SiC", "covalent (zincblende)", 1500.0, ("chgnet",)),
)}
DEFAULT_SYSTEMS = {"emt": "Cu3Au,Ni3Al,Ag", "chgnet": "Mo,CaO,SiC"}


def make_teacher(name: str):
    """The teacher's ASE calculator: ``emt`` or ``chgnet`` (CHGNet model 0.3.0 on CPU)."""
    if name == "emt":
        from ase.calculators.emt import EMT
        return EMT()
    if name == "chgnet":
        try:
            from chgnet.model import CHGNet, CHGNetCalculator
        except ImportError:
            raise SystemExit("--teacher chgnet needs the chgnet package: "
                             "pip install -e '.[fidelity]'") from None
        return CHGNetCalculator(CHGNet.load(model_name="0.3.0", verbose=False),
                                use_device="cpu")
    raise SystemExit(f"--teacher: emt or chgnet, not {name!r}")


def teacher_version(name: str) -> str:
    """The version of the package behind the teacher ``name`` (ase or chgnet)."""
    from importlib.metadata import version

    return version("chgnet" if name == "chgnet" else "ase")


def supercell_reps(atoms, min_atoms: int = 32, min_length: float = 7.0) -> tuple[int, ...]:
    """Repetitions of a cubic cell giving at least ``min_atoms`` atoms and edges of at
    least ``min_length`` Å (MD, training frames and phonon supercells)."""
    n = max(math.ceil((min_atoms / len(atoms)) ** (1 / 3)),
            math.ceil(min_length / min(atoms.cell.lengths())))
    return (n, n, n)


@dataclass(frozen=True)
class Settings:
    """How much of everything: frames, steps and property grids (full or ``--quick``)."""

    md_every: int = 10  # MD steps between snapshots
    md_snapshots: int = 40  # per trajectory
    md_equilibrate: int = 100  # steps before the first snapshot
    strained: int = 30  # strained cells (training; a third of that in val and test)
    rattled: int = 30
    relax_steps: int = 20
    # near equilibrium (the teacher's relaxed cell): MD at this fraction of the hot
    # temperature, and cells with every atom displaced by a Gaussian of 0.005-0.03 Å (the
    # amplitudes of phonopy's finite displacements and below those of room-temperature
    # vibrations)
    cold_fraction: float = 0.1
    displaced: int = 40  # training; a quarter of that in val
    fmax: float = 0.005  # eV/Å, relaxations of the properties
    relax_max_steps: int = 200
    eos_points: int = 9
    eos_strain: float = 0.06
    # the strains of the elastic fit, normal and shear alike (deformation-gradient entries):
    # the Materials Project's set (de Jong et al., Sci. Data 2, 150009 (2015)), within the
    # training strains; matcalc's default shears of ±3 and ±6 % probe past them
    elastic_strains: tuple[float, ...] = (-0.01, -0.005, 0.005, 0.01)
    md_ps: float = 10.0
    md_timestep_fs: float = 2.0
    md_sample_every: int = 10
    probe_steps: int = 30


QUICK = Settings(md_every=2, md_snapshots=6, md_equilibrate=4, strained=6, rattled=6,
                 relax_steps=4, displaced=4, fmax=0.05, relax_max_steps=10, eos_points=5,
                 md_ps=0.04, md_sample_every=2, probe_steps=2)


# ---------------------------------------------------------------------- data generation

def labelled(atoms, trajectory: str, kind: str):
    """A calculator-free copy of ``atoms`` holding its calculator's results as REF_*
    labels (eV, eV/Å, eV/Å³ Voigt with ASE's sign) and its trajectory as ``mp_id``."""
    frame = atoms.copy()  # without the calculator: extxyz must not write its keys too
    frame.info = {"REF_energy": float(atoms.get_potential_energy()),
                  "REF_stress": np.asarray(atoms.get_stress(voigt=True), dtype=np.float64),
                  "mp_id": trajectory, "config_type": kind}
    frame.arrays["REF_forces"] = np.asarray(atoms.get_forces(), dtype=np.float64)
    for key in ("momenta",):
        frame.arrays.pop(key, None)
    return frame


def langevin(atoms, calc, temperature_K: float, seed: int, s: Settings):
    """A copy of ``atoms`` on ``calc`` with Maxwell-Boltzmann velocities at ``temperature_K``
    and the Langevin NVT integrator that moves it (``s.md_timestep_fs``, friction 0.02/fs),
    both drawing from one generator seeded by ``seed``: ``(atoms, dynamics)``."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    return atoms, Langevin(atoms, s.md_timestep_fs * units.fs, temperature_K=temperature_K,
                           friction=0.02, fixcm=False, rng=rng)


def md_frames(cell, calc, temperature_K: float, seed: int, trajectory: str,
              s: Settings) -> list:
    """Snapshots of Langevin NVT MD (:func:`langevin`) started from ``cell``."""
    atoms, dyn = langevin(cell, calc, temperature_K, seed, s)
    dyn.run(s.md_equilibrate)
    frames = []
    for _ in range(s.md_snapshots):
        dyn.run(s.md_every)
        frames.append(labelled(atoms, trajectory, f"md{temperature_K:.0f}K"))
    return frames


def random_strain(rng, isotropic: float, shear: float) -> np.ndarray:
    """A deformation gradient I + ε: isotropic strain in ±``isotropic``, plus independent
    normal components in ±``shear`` (uniaxial: the tetragonal strains that set C11 - C12)
    and symmetric shear components in ±``shear`` (C44)."""
    eps = np.eye(3) * rng.uniform(-isotropic, isotropic)
    eps += np.diag(rng.uniform(-shear, shear, size=3))
    off = rng.uniform(-shear, shear, size=3)
    eps[0, 1] = eps[1, 0] = off[0]
    eps[0, 2] = eps[2, 0] = off[1]
    eps[1, 2] = eps[2, 1] = off[2]
    return np.eye(3) + eps


def strained_frames(cell, calc, n: int, seed: int, trajectory: str, kind: str,
                    strain: tuple[float, float] = (0.03, 0.02),
                    rattle: tuple[float, float] = (0.0, 0.0)) -> list:
    """``n`` copies of ``cell`` labelled ``kind``: strained by :func:`random_strain` with
    ``strain`` = (isotropic, per axis and shear) amplitudes, every atom displaced by a
    Gaussian whose width per Cartesian component (Å) is ``rattle[0]``, or drawn from the
    range ``rattle`` per frame (none for 0)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = cell.copy()
        atoms.set_cell(cell.cell.array @ random_strain(rng, *strain).T, scale_atoms=True)
        lo, hi = rattle
        width = lo if lo == hi else rng.uniform(lo, hi)
        if width:
            atoms.positions += rng.normal(0.0, width, atoms.positions.shape)
        atoms.calc = calc
        frames.append(labelled(atoms, trajectory, kind))
    return frames


def relaxation_frames(cell, calc, steps: int, seed: int, trajectory: str) -> list:
    """The steps of a FIRE relaxation (positions and cell, FrechetCellFilter) from a
    strained, rattled cell."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    rng = np.random.default_rng(seed)
    atoms = cell.copy()
    atoms.set_cell(cell.cell.array @ random_strain(rng, 0.04, 0.02).T, scale_atoms=True)
    atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
    atoms.calc = calc
    frames = []
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    for _ in opt.irun(fmax=1e-3, steps=steps):
        frames.append(labelled(atoms, trajectory, "relaxation"))
    return frames


def relaxed_cell(cell, calc):
    """``cell`` relaxed by ``calc`` (positions and cell, FIRE on a FrechetCellFilter, to
    1e-3 eV/Å): the equilibrium that the near-equilibrium frames are drawn around."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms = cell.copy()
    atoms.calc = calc
    if not FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-3, steps=300):
        raise RuntimeError(f"{atoms.get_chemical_formula()}: the teacher's relaxation did "
                           "not reach 1e-3 eV/Å in 300 steps; the near-equilibrium frames "
                           "need its equilibrium")
    atoms.calc = None
    return atoms


def displaced_frames(cell, calc, n: int, seed: int, trajectory: str) -> list:
    """``n`` copies of the equilibrium ``cell``, strained (:func:`random_strain`: 0.5 %
    isotropic plus up to 0.5 % per axis and in shear) and every atom displaced by a
    Gaussian whose width per Cartesian component is drawn from 0.005-0.03 Å per frame
    (the largest displacement of a 54-64-atom frame is 0.02-0.12 Å): the small, harmonic
    displacements that phonons and elastic constants probe."""
    return strained_frames(cell, calc, n, seed, trajectory, "displaced",
                           strain=(0.005, 0.005), rattle=(0.005, 0.03))


DATA_SETTINGS = ("md_every", "md_snapshots", "md_equilibrate", "md_timestep_fs", "strained",
                 "rattled", "relax_steps", "cold_fraction", "displaced")


FRAMES_VERSION = 2  # of the generation code: raise it when a change alters kept frames


class FrameCache:
    """Each trajectory's labelled frames in ``root/<trajectory>_<amount>.extxyz``, kept as
    soon as they are labelled, so that an interrupted or extended data generation labels
    only what is missing. ``key`` (the teacher and its version, the system's temperatures,
    :data:`DATA_SETTINGS`, :data:`FRAMES_VERSION`) is kept in ``root/key.json``; frames of
    another key (or of none) are deleted. A folder holding anything but kept frames is
    refused (SystemExit), never emptied."""

    KEPT = (".extxyz", ".partial")

    def __init__(self, root: Path, key: dict):
        self.root = root
        if root.is_dir():
            strangers = [p.name for p in root.iterdir()
                         if p.suffix not in self.KEPT and p.name != "key.json"]
            if strangers:
                raise SystemExit(f"{root}: not a folder of kept frames (it holds "
                                 f"{', '.join(sorted(strangers)[:3])}); give another --out")
            try:
                kept = json.loads((root / "key.json").read_text())
            except (OSError, json.JSONDecodeError):
                kept = None
            if kept != key:
                print(f"{root}: frames of other settings, relabelling", flush=True)
                for p in root.iterdir():
                    p.unlink()
        root.mkdir(parents=True, exist_ok=True)
        (root / "key.partial").write_text(json.dumps(key, indent=1))
        (root / "key.partial").replace(root / "key.json")

    def get(self, trajectory: str, amount: float, label) -> list:
        """The frames of ``trajectory`` with ``amount`` (a count or a temperature
        fraction): read, or made by ``label()`` and kept. A file that cannot be read (an
        interrupted copy) is labelled again."""
        from ase.io import read, write

        path = self.root / f"{trajectory}_{amount:g}.extxyz"
        if path.is_file():
            try:
                frames = read(path, index=":")
            except Exception as e:  # noqa: BLE001 (ASE raises several kinds)
                print(f"{path}: unreadable ({e}), labelling again", flush=True)
            else:
                if frames:
                    return frames
        frames = label()
        if frames:
            partial = path.with_suffix(".partial")
            write(partial, frames, format="extxyz")
            partial.replace(path)  # whole trajectories only
        return frames


def generate(system: System, calc, s: Settings, cache: FrameCache | None = None
             ) -> dict[str, list]:
    """{split: frames} for train, val and test: independent trajectories (seeds,
    temperatures) per split, all labelled by ``calc`` (through ``cache`` where given).
    Training holds hot MD, strained, rattled and relaxing cells, and near equilibrium
    (the teacher's relaxed cell) cold MD and small displacements; val holds hot MD,
    rattled and displaced cells; test the hot MD, strained and rattled cells of earlier
    versions of this benchmark, so that its errors stay comparable."""
    cell = system.build().repeat(supercell_reps(system.build()))
    hot, name = system.hot_K, system.name
    plan = {
        "train": [("md", 0.3, 11), ("md", 0.6, 12), ("md", 1.0, 13),
                  ("strained", s.strained, 14), ("rattled", s.rattled, 15),
                  ("relax", s.relax_steps, 16), ("coldmd", s.cold_fraction, 17),
                  ("displaced", s.displaced, 18)],
        "val": [("md", 0.75, 21), ("rattled", max(s.rattled // 3, 2), 22),
                ("displaced", max(s.displaced // 4, 2), 23)],
        "test": [("md", 0.45, 31), ("md", 0.85, 32), ("strained", max(s.strained // 3, 2), 33),
                 ("rattled", max(s.rattled // 3, 2), 34)],
    }
    equilibrium = None

    def label(kind, amount, seed, trajectory):
        nonlocal equilibrium
        if kind in ("coldmd", "displaced") and equilibrium is None:
            equilibrium = relaxed_cell(cell, calc)
        if kind == "md":
            return md_frames(cell, calc, amount * hot, seed, trajectory, s)
        if kind == "coldmd":
            return md_frames(equilibrium, calc, amount * hot, seed, trajectory, s)
        if kind == "displaced":
            return displaced_frames(equilibrium, calc, amount, seed, trajectory)
        if kind == "strained":
            return strained_frames(cell, calc, amount, seed, trajectory, kind)
        if kind == "rattled":
            return strained_frames(cell, calc, amount, seed, trajectory, kind,
                                   rattle=(0.05, 0.05))
        return relaxation_frames(cell, calc, amount, seed, trajectory)

    out = {}
    for split, items in plan.items():
        frames = []
        for kind, amount, seed in items:
            trajectory = f"{name}-{split}-{kind}-{seed}"
            make = partial(label, kind, amount, seed, trajectory)
            frames += cache.get(trajectory, amount, make) if cache else make()
        out[split] = frames
    return out


def material_id_in(split: str, stem: str, params) -> str:
    """A material id starting with ``stem`` that the store's split hash
    (:func:`orbitgraph.preprocess.store.writer.split_of` with ``params``) puts in
    ``split``: the first of ``stem``, ``stem-1``, ``stem-2``... that does."""
    from orbitgraph.preprocess.store.writer import split_of

    for i in range(10_000):
        mid = stem if i == 0 else f"{stem}-{i}"
        if split_of(mid, params) == split:
            return mid
    raise RuntimeError(f"no material id for the {split} split from {stem!r}")


RADIUS_K = 128  # neighbours kept by the radius graph's k-NN build: more than any system has


def split_params():
    from orbitgraph.preprocess.store import SplitParams
    return SplitParams(val_fraction=0.5, test_fraction=0.0, seed=0)


DATA_STAMP = "data.json"  # who labelled the extxyz files beside it (--reuse-data checks it)


def write_sources(frames: dict[str, list], root: Path, teacher_name: str) -> None:
    """Train and val frames as one extxyz file (each trajectory given a material id that
    the store's split hash puts in its own split), test frames as another, and train and
    val each on its own (for mace-torch); then :data:`DATA_STAMP`, naming the teacher."""
    (root / DATA_STAMP).unlink(missing_ok=True)  # until the files below are whole
    from ase.io import write

    split = split_params()
    rename: dict[str, str] = {}
    source = []
    for name in ("train", "val"):
        for atoms in frames[name]:
            stem = atoms.info["mp_id"]
            if stem not in rename:
                rename[stem] = material_id_in(name, stem, split)
            atoms = atoms.copy()
            atoms.info["mp_id"] = rename[stem]
            source.append(atoms)
    write(root / "train_val.extxyz", source, format="extxyz")
    for name in ("train", "val", "test"):
        write(root / f"{name}.extxyz", frames[name], format="extxyz")
    (root / DATA_STAMP).write_text(json.dumps({"teacher": teacher_name}))


def read_test(root: Path) -> tuple[list, dict]:
    """The test frames of an earlier run in ``root`` and the frame count of each split."""
    from ase.io import read

    test = read(root / "test.extxyz", index=":")
    trajectories: dict[str, int] = {}
    for atoms in read(root / "train_val.extxyz", index=":"):
        trajectories[atoms.info["mp_id"]] = trajectories.get(atoms.info["mp_id"], 0) + 1
    from orbitgraph.preprocess.store.writer import split_of

    n = {"train": 0, "val": 0, "test": len(test)}
    for mid, count in trajectories.items():
        n[split_of(mid, split_params())] += count
    return test, n


def build(root: Path, graph: str) -> Path:
    """The store of ``root/train_val.extxyz`` (:func:`orbitgraph.build_store`): the 16-NN
    graph (``knn``, the project's default) in ``root/store``, or a radius graph of
    the model's 6 Å cutoff (``radius``: every neighbour within 6 Å; the k-NN build with
    k = :data:`RADIUS_K` and a 6 Å cutoff) in ``root/store-radius``."""
    from orbitgraph import build_store
    from orbitgraph.preprocess.cluster import ClusterConfig
    from orbitgraph.preprocess.graph_params import GraphParams

    extra = {} if graph == "knn" else {"graph": GraphParams(k=RADIUS_K, cutoff=6.0)}
    store = root / ("store" if graph == "knn" else f"store-{graph}")
    build_store(root / "train_val.extxyz", store, energy_key="REF_energy",
                forces_key="REF_forces", stress_key="REF_stress", split=split_params(),
                cluster=ClusterConfig(kind="synchronous"), progress=False,
                discard_partial=True, **extra)
    return store


def radius_degree(frames: list, cutoff: float = 6.0) -> int:
    """The most neighbours within ``cutoff`` Å of any atom of ``frames``: a radius graph
    built as k-NN with k = :data:`RADIUS_K` holds every such neighbour only if this is
    below k."""
    from ase.neighborlist import neighbor_list

    return max(int(np.bincount(neighbor_list("i", a, cutoff), minlength=len(a)).max())
               for a in frames)


# ---------------------------------------------------------------------------- training

def run_document(store: Path, out: Path, quick: bool, max_steps: int, seed: int = 0,
                 overrides: dict | None = None) -> dict:
    """The run file of one system: its model and training settings, all explicit (so that
    they do not follow the project's defaults as those change). Single-composition data:
    E0s by the average energy per atom (a least-squares fit of one composition is
    singular). ``overrides``: ``{"model": {...}, "train": {...}}``, entries replaced (an
    ablation's); in a train section (``stage_two``, ``loader``) only the keys given, and
    ``None`` removes the section."""
    model = ({"preset": "mace", "channels": 8, "sh_l_max": 1, "hidden_l_max": 0,
              "correlation": 2, "layers": 1, "radial_mlp": [16], "readout_mlp": [8]}
             if quick else
             {"preset": "mace", "channels": 16, "sh_l_max": 2, "hidden_l_max": 1,
              "correlation": 2, "layers": 2, "radial_mlp": [32], "readout_mlp": [16]})
    # per-element contraction weights (mace-torch's, which the race runs) and stage two
    # (mace-torch's SWA stage): each lowered the force error at a fixed step count on CaO
    # (docs/guides/benchmarks.md, the ablations)
    model.update({"cutoff": 6.0, "num_radial": 8, "atomic_energies": "average",
                  "contraction_weights": "element"})
    train = {"max_steps": max_steps, "epochs": 10_000, "lr": 0.005, "optimizer": "adam",
             "amsgrad": True, "weight_decay": 0.0, "schedule": "cosine", "warmup_steps": 0,
             "min_lr": 1e-5, "ema_decay": 0.99, "grad_clip": 10.0, "precision": "float32",
             "loss": "mse", "energy_weight": 10.0, "forces_weight": 10.0,
             "stress_weight": 1.0, "seed": seed,
             "loader": {"batch_frames": 4, "seed": seed},
             "log_every": 10 ** 9, "checkpoint_every": 10 ** 9, "plots": False,
             "tensorboard": False,
             # stage two's weights are absolute: against this run's E 10, F 10, σ 1 per GPa²,
             # energy 100x, forces and stress 10x (mace-torch's default stress weight,
             # 10 per (eV/Å³)², is 0.00039 per GPa² here: with it a CaO race's stress error
             # was 0.34 GPa and its bulk modulus 21 % off, with these 0.14 GPa and 3.7 %)
             "stage_two": {"start": 0.75, "lr": 1e-3, "energy_weight": 1000.0,
                           "forces_weight": 100.0, "stress_weight": 10.0}}
    overrides = overrides or {}
    model.update(overrides.get("model", {}))
    for key, value in overrides.get("train", {}).items():
        # a section's keys replace its own (stage_two: {lr: 5e-4} keeps its weights);
        # null removes the section
        if isinstance(value, dict) and isinstance(train.get(key), dict):
            train[key] = {**train[key], **value}
        else:
            train[key] = value
    return {"store": str(store), "model": model, "train": train, "out": str(out)}


def trainer_from(doc: dict, callbacks=()):
    """A :class:`orbitgraph.Trainer` for a run document (as ``orbitgraph train --config``
    reads it)."""
    from orbitgraph import Trainer
    from orbitgraph.train.config import TrainConfig

    return Trainer(doc["store"], doc["model"], TrainConfig.from_dict(doc["train"]),
                   Path(doc["out"]), resume=False, callbacks=list(callbacks))


class BudgetSpent(Exception):
    """The training run is past its wall-time deadline."""


def train(store: Path, root: Path, minutes: float, quick: bool, system: str,
          max_steps: int | None = None, overrides: dict | None = None,
          ready=None) -> dict:
    """Train within ``minutes`` of wall time: a probe of ``probe_steps`` steps measures
    the time per step (the median between steps, the first left out; after ``ready()``
    returns, so that a code racing beside it is already training), the run gets
    ``0.9 x budget / step time`` steps of a cosine schedule (the rest is left to the
    validations), and stops at the first validation past 1.25 x the budget if the machine
    slowed down meanwhile; or exactly ``max_steps`` steps, without a probe or a deadline.
    Writes ``run.yaml`` and the validation curve ``curves.csv``; returns the run's
    summary (best.pt, steps, wall_s, curve)."""
    import yaml

    from orbitgraph.train.callbacks import Callback

    class Clock(Callback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, trainer, step: int, loss: float) -> None:
            self.ends.append(time.perf_counter())

    s = QUICK if quick else Settings()
    per_step, deadline = float("nan"), math.inf
    if max_steps is None:
        if ready is not None:
            ready()
        clock = Clock()
        trainer_from(run_document(store, root / "probe", quick, s.probe_steps,
                                  overrides=overrides), [clock]).fit()
        per_step = float(np.median(np.diff(clock.ends)))
        max_steps = max(int(0.9 * minutes * 60 / per_step), s.probe_steps)
        deadline = 1.25 * minutes * 60
    steps = max_steps
    doc = run_document(store, root / "run", quick, steps, overrides=overrides)
    (root / "run.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    curve: list[dict] = []

    class Curve(Callback):
        """Validation MAE against training wall time."""

        def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
            curve.append({"trainer": "orbitgraph", "system": system,
                          "wall_s": round(time.perf_counter() - start, 2),
                          "step": trainer.state.step, "epoch": epoch,
                          "energy_mae_meV_per_atom": record["energy_mae_meV_per_atom"],
                          "forces_mae_meV_per_A": record["forces_mae_meV_per_A"],
                          "stress_mae_GPa": record.get("stress_mae_GPa", float("nan"))})
            if time.perf_counter() - start > deadline:
                raise BudgetSpent

    trainer = trainer_from(doc, [Curve()])
    start = time.perf_counter()
    try:
        result = trainer.fit()
    except BudgetSpent:
        print(f"{system}: past 1.25 x the budget at step {trainer.state.step} of {steps}: "
              "stopped (best.pt: the best validation so far)", flush=True)
        result = {"steps": trainer.state.step, "wall_s": time.perf_counter() - start}
    with open(root / "curves.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(curve[0]))
        w.writeheader()
        w.writerows(curve)
    return {"model": root / "run" / "best.pt", "steps": result["steps"],
            "wall_s": result["wall_s"], "s_per_step_probe": per_step, "curve": curve,
            "params": sum(p.numel() for p in trainer.model.parameters())}


# the file of a race's mace-torch validations in its work folder (train_mace writes it,
# run_system waits for it)
MACE_STAMPS = "mace_stamps.json"

# mace-torch's run_train, every validation stamped with the time it ended, stopped at the
# first validation past the budget (seconds after the validation before the first step)
MACE_TRAIN = r'''
import importlib, json, sys, time
import torch
train_module = importlib.import_module("mace.tools.train")  # mace.tools.train is also a function
argv, stamps_path = json.loads(sys.argv[1]), sys.argv[2]
threads, budget = int(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(threads)
class Spent(Exception):
    pass
stamps, original = [], train_module.valid_err_log
def stamped(valid_loss, eval_metrics, logger, log_errors, epoch=None, *rest, **kw):
    stamps.append({"epoch": epoch, "t": time.perf_counter(),
                   "energy_mae_meV_per_atom": 1e3 * float(eval_metrics["mae_e_per_atom"]),
                   "forces_mae_meV_per_A": 1e3 * float(eval_metrics["mae_f"]),
                   "stress_mae_GPa": 160.21766208 * float(eval_metrics.get("mae_stress", "nan"))})
    out = original(valid_loss, eval_metrics, logger, log_errors, epoch, *rest, **kw)
    json.dump(stamps, open(stamps_path, "w"))
    if stamps[-1]["t"] - stamps[0]["t"] > budget:
        raise Spent
    return out
train_module.valid_err_log = stamped
from mace.cli.run_train import main
sys.argv = ["mace_run_train", *argv]
try:
    main()
except Spent:
    pass
'''


def train_mace(root: Path, work: Path, minutes: float, threads: int, system: str,
               seed: int = 0) -> list:
    """mace-torch (its own venv, :mod:`_mace`) on the same train and val frames
    (``train.extxyz``, ``val.extxyz`` in ``root``; its run in ``work/mace``) with the settings of
    :func:`run_document` where mace-torch has them: 16 channels, hidden 0e + 1o, l <= 2,
    correlation 2, 2 interactions, 8 Bessel functions, cutoff 6 Å, radial MLP [32],
    readout 16x0e, per-element weights in the symmetric contraction (mace-torch's only
    kind), E0s by the average energy per atom, MSE on E per atom, F and σ with weights 10,
    10 and 1 per GPa², Adam with AMSGrad at 0.005, batches of 4 frames, EMA 0.99,
    clipping at 10, float32. Its learning rate stays constant (its plateau scheduler with
    infinite patience) and it has no SWA stage; orbitgraph's run has a cosine schedule
    and stage two over its last quarter. Trains
    until the first validation past ``minutes`` of wall time; returns its validation
    curve in the rows of ``curves.csv`` (``trainer`` mace-torch)."""
    stamps = work / MACE_STAMPS
    argv = ["--name=mace", f"--seed={seed}", f"--work_dir={work / 'mace'}",
            f"--train_file={root / 'train.extxyz'}", f"--valid_file={root / 'val.extxyz'}",
            "--energy_key=REF_energy", "--forces_key=REF_forces", "--stress_key=REF_stress",
            "--E0s=average", "--model=MACE", "--num_channels=16", "--max_L=1", "--max_ell=2",
            "--correlation=2", "--num_interactions=2", "--num_radial_basis=8",
            "--num_cutoff_basis=5", "--r_max=6.0", "--radial_MLP=[32]", "--MLP_irreps=16x0e",
            "--loss=stress", "--energy_weight=10.0", "--forces_weight=10.0",
            f"--stress_weight={GPA ** 2}", "--compute_stress=True", "--optimizer=adam",
            "--lr=0.005", "--weight_decay=0.0", "--scheduler_patience=1000000",
            "--batch_size=4", "--valid_batch_size=4", "--max_num_epochs=100000", "--ema",
            "--ema_decay=0.99", "--eval_interval=1", "--clip_grad=10.0",
            "--default_dtype=float32", "--device=cpu", "--error_table=PerAtomMAE",
            "--num_workers=0", "--save_cpu"]
    run_mace(MACE_TRAIN, json.dumps(argv), str(stamps), str(threads), str(minutes * 60),
             threads=threads)
    marks = json.loads(stamps.read_text())
    start = marks[0]["t"]  # the validation before the first step
    return [{"trainer": f"mace-torch {MACE_VERSION}", "system": system,
             "wall_s": round(m["t"] - start, 2), "step": "", "epoch": m["epoch"] + 1,
             "energy_mae_meV_per_atom": m["energy_mae_meV_per_atom"],
             "forces_mae_meV_per_A": m["forces_mae_meV_per_A"],
             "stress_mae_GPa": m["stress_mae_GPa"]}
            for m in marks[1:] if m["epoch"] is not None]


def time_to_reach(curve: list[dict], target: float) -> float | None:
    """Training wall time (s) at the first validation with a force MAE <= ``target``."""
    for c in curve:
        if float(c["forces_mae_meV_per_A"]) <= target:
            return float(c["wall_s"])
    return None


def race_summary(ours: list[dict], theirs: list[dict]) -> dict:
    """mace-torch's final validation force MAE and wall time; orbitgraph's at that wall
    time (its last validation by then) and at its end; when orbitgraph first reached
    mace-torch's final (None: never) and that time over mace-torch's."""
    target = float(theirs[-1]["forces_mae_meV_per_A"])
    reached = time_to_reach(ours, target)
    until = [c for c in ours if float(c["wall_s"]) <= float(theirs[-1]["wall_s"])]
    return {"mace_final_val_F": target, "mace_wall_s": float(theirs[-1]["wall_s"]),
            "ours_val_F_at_mace_wall": (float(until[-1]["forces_mae_meV_per_A"]) if until
                                        else None),
            "ours_final_val_F": float(ours[-1]["forces_mae_meV_per_A"]),
            "ours_wall_s": float(ours[-1]["wall_s"]), "ours_reached_mace_final_s": reached,
            "time_ratio": (reached / float(theirs[-1]["wall_s"])
                           if reached is not None else None)}


def student_calculator(model: Path):
    from orbitgraph import OrbitCalculator
    return OrbitCalculator.from_checkpoint(model)  # float64


# -------------------------------------------------------------------------- properties

def predict(frames: list, calc) -> dict:
    """Energy (eV), forces (eV/Å), stress (eV/Å³ Voigt) of ``frames`` by ``calc``."""
    e, f, s = [], [], []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        e.append(atoms.get_potential_energy())
        f.append(atoms.get_forces())
        s.append(atoms.get_stress(voigt=True))
    return {"energy": np.array(e), "forces": np.concatenate(f), "stress": np.array(s),
            "n_atoms": np.array([len(a) for a in frames])}


def reference(frames: list) -> dict:
    return {"energy": np.array([a.info["REF_energy"] for a in frames]),
            "forces": np.concatenate([a.arrays["REF_forces"] for a in frames]),
            "stress": np.array([a.info["REF_stress"] for a in frames]),
            "n_atoms": np.array([len(a) for a in frames])}


def label_errors(ref: dict, pred: dict) -> dict:
    """MAE of energy per atom (meV/atom), force components (meV/Å), stress components
    (GPa)."""
    return {"energy_mae_meV_per_atom":
            float(1e3 * np.abs((pred["energy"] - ref["energy"]) / ref["n_atoms"]).mean()),
            "forces_mae_meV_per_A": float(1e3 * np.abs(pred["forces"] - ref["forces"]).mean()),
            "stress_mae_GPa": float(GPA * np.abs(pred["stress"] - ref["stress"]).mean())}


NAN = float("nan")
EMPTY = {"a_A": NAN, "volume_A3": NAN, "bulk_modulus_GPa": NAN,
         "eos": {"volumes": [], "energies": []}, "C11_GPa": NAN, "C12_GPa": NAN,
         "C44_GPa": NAN, "phonon_THz": {q: [] for q in Q_POINTS},
         "phonon_dos": {"THz": [], "dos": []},
         "md": {"steps": 0, "finite": False, "closest_A": NAN, "mean_T_K": NAN, "r_A": [],
                "rdf": []}}


def properties(calc, system: System, s: Settings, seed: int = 7) -> dict:
    """The properties of ``system`` under ``calc``, through matcalc: relaxed lattice
    parameter a (Å, positions and cell relaxed, FrechetCellFilter), Birch-Murnaghan bulk
    modulus (GPa) and its E(V) points (Å³, eV), elastic constants C11, C12, C44 (GPa, the
    means of the cubic-equivalent Voigt entries; deformed cells relaxed inside), phonon
    frequencies (THz) at :data:`Q_POINTS` and the DOS (phonopy, finite displacements in the
    :func:`supercell_reps` supercell), and NVT MD at ``hot_K`` for ``md_ps`` ps (see
    :func:`hot_md`). All start from this calculator's own relaxed cell. A calculation
    that fails (an EOS without a minimum in its range, a relaxation that diverges) leaves
    its values NaN and its one-line reason in ``failures``. Every random number comes from
    ``seed``: one calculator twice gives the same numbers."""
    from matcalc import ElasticityCalc, EOSCalc, PhononCalc, RelaxCalc
    from pymatgen.io.ase import AseAtomsAdaptor

    cell = system.build()
    relax_kw = {"fmax": s.fmax, "max_steps": s.relax_max_steps}
    out = json.loads(json.dumps(EMPTY))
    out["failures"] = {}

    def attempt(name, fn):
        try:
            with warnings.catch_warnings():
                # a poor EOS fit or imaginary modes show in the compared numbers
                warnings.simplefilter("ignore")
                fn()
        except Exception as err:  # noqa: BLE001  (a property the model cannot give)
            out["failures"][name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"

    structure = cell

    def relax():
        nonlocal structure
        relaxed = RelaxCalc(calc, **relax_kw).calc(cell)
        structure = relaxed["final_structure"]
        out["a_A"], out["volume_A3"] = float(relaxed["a"]), float(relaxed["volume"])

    def eos():
        r = EOSCalc(calc, n_points=s.eos_points, max_abs_strain=s.eos_strain,
                    relax_structure=False, relax_calc_kwargs=relax_kw).calc(structure)
        out["bulk_modulus_GPa"] = float(r["bulk_modulus_bm"])
        out["eos"] = {"volumes": [float(v) for v in r["eos"]["volumes"]],
                      "energies": [float(e) for e in r["eos"]["energies"]]}

    def elastic():
        r = ElasticityCalc(calc, norm_strains=s.elastic_strains,
                           shear_strains=s.elastic_strains, relax_structure=False,
                           relax_deformed_structures=True, units_GPa=True, fmax=s.fmax,
                           relax_calc_kwargs=relax_kw).calc(structure)
        c = np.asarray(r["elastic_tensor"].voigt, dtype=np.float64)
        out["C11_GPa"] = float(np.mean([c[0, 0], c[1, 1], c[2, 2]]))
        out["C12_GPa"] = float(np.mean([c[0, 1], c[0, 2], c[1, 2]]))
        out["C44_GPa"] = float(np.mean([c[3, 3], c[4, 4], c[5, 5]]))

    reps = supercell_reps(cell)

    def phonons():
        phonon = PhononCalc(calc, supercell_matrix=np.diag(reps), relax_structure=False,
                            write_phonon=False, seed=seed).calc(structure)["phonon"]
        phonon.run_qpoints(list(Q_POINTS.values()))
        out["phonon_THz"] = {q: [float(x) for x in f] for q, f in
                             zip(Q_POINTS, phonon.qpoints.frequencies, strict=True)}
        phonon.run_mesh([8, 8, 8])
        phonon.run_total_dos()
        dos = phonon.total_dos
        out["phonon_dos"] = {"THz": dos.frequency_points.tolist(), "dos": dos.dos.tolist()}

    def md():
        start = AseAtomsAdaptor.get_atoms(structure) if not hasattr(structure, "arrays") \
            else structure.copy()
        out["md"] = hot_md(start.repeat(reps), calc, system.hot_K, s, seed)

    for name, fn in (("relaxation", relax), ("eos", eos), ("elastic", elastic),
                     ("phonons", phonons), ("md", md)):
        attempt(name, fn)
    return out


def hot_md(atoms, calc, temperature_K: float, s: Settings, seed: int) -> dict:
    """Langevin NVT at ``temperature_K`` for ``md_ps`` ps from ``atoms``: the RDF (over
    the second half, up to just under half the shortest cell edge), the closest pair (Å),
    the mean temperature of the second half (K), whether every energy was finite."""
    from ase.geometry.rdf import get_rdf

    atoms, dyn = langevin(atoms, calc, temperature_K, seed, s)
    n_steps = max(int(round(s.md_ps * 1000 / s.md_timestep_fs)), 2 * s.md_sample_every)
    rmax = 0.49 * min(atoms.cell.lengths())
    nbins = 100
    rdf, temps, closest, finite = np.zeros(nbins), [], np.inf, True
    samples = 0
    for i in range(n_steps // s.md_sample_every):
        dyn.run(s.md_sample_every)
        e = atoms.get_potential_energy()
        finite = finite and bool(np.isfinite(e))
        d = atoms.get_all_distances(mic=True)
        closest = min(closest, float(d[np.triu_indices(len(atoms), 1)].min()))
        if not finite or closest < 0.3:
            break  # exploded: nothing more to learn from it
        if i >= (n_steps // s.md_sample_every) // 2:
            g, r = get_rdf(atoms, rmax, nbins)
            rdf += g
            samples += 1
            temps.append(float(atoms.get_temperature()))
    r = (np.arange(nbins) + 0.5) * rmax / nbins
    return {"steps": n_steps, "finite": finite, "closest_A": closest,
            "mean_T_K": float(np.mean(temps)) if temps else float("nan"),
            "r_A": r.tolist(), "rdf": (rdf / max(samples, 1)).tolist()}


# -------------------------------------------------------------------------- comparison

def rel(student: float, teacher: float) -> float:
    return abs(student - teacher) / abs(teacher) if teacher else abs(student - teacher)


def compare(teacher: dict, student: dict) -> dict:
    """Errors of the student's properties against the teacher's: relative errors of a,
    B, C11, C12, C44 (the largest of them: ``elastic_rel``), mean and largest relative
    error of phonon frequencies above :data:`ACOUSTIC_THZ` (``phonon_rel``, ``phonon_max_rel``)
    and their MAE (THz), the RDF's L1 difference (∫|g_s - g_t| dr / ∫ g_t dr) and whether the
    student's MD was stable: finite energies, no pair closer than 0.7 x the teacher's closest,
    a mean temperature within 50 % of the teacher's (the same thermostat and random numbers:
    a student far from it heats or freezes). A property that failed gives NaN (and a
    target not met)."""
    out = {"lattice_rel": rel(student["a_A"], teacher["a_A"]),
           "bulk_modulus_rel": rel(student["bulk_modulus_GPa"], teacher["bulk_modulus_GPa"])}
    for c in ("C11", "C12", "C44"):
        out[f"{c}_rel"] = rel(student[f"{c}_GPa"], teacher[f"{c}_GPa"])
    out["elastic_rel"] = max(out["C11_rel"], out["C12_rel"], out["C44_rel"])
    ft = np.concatenate([teacher["phonon_THz"][q] for q in Q_POINTS])
    fs = np.concatenate([student["phonon_THz"][q] for q in Q_POINTS])
    if ft.size and ft.shape == fs.shape:
        optical = np.abs(ft) > ACOUSTIC_THZ
        r = np.abs(fs - ft)[optical] / np.abs(ft[optical])
        out["phonon_rel"] = float(r.mean()) if r.size else 0.0
        out["phonon_max_rel"] = float(r.max()) if r.size else 0.0
        out["phonon_mae_THz"] = float(np.abs(fs - ft).mean())
    else:  # a phonon calculation failed
        out["phonon_rel"] = out["phonon_max_rel"] = out["phonon_mae_THz"] = NAN
    gt, gs = np.asarray(teacher["md"]["rdf"]), np.asarray(student["md"]["rdf"])
    out["rdf_l1"] = (float(np.abs(gs - gt).sum() / max(gt.sum(), 1e-12))
                     if gt.size and gt.shape == gs.shape else NAN)
    md_t, md_s = teacher["md"], student["md"]
    out["md_stable"] = bool(md_s["finite"] and md_s["closest_A"] >= 0.7 * md_t["closest_A"]
                            and abs(md_s["mean_T_K"] - md_t["mean_T_K"]) <= 0.5 * md_t["mean_T_K"])
    return out


ROWS = [  # (label, key in the system's result, unit, target key or None)
    ("E MAE", "energy_mae_meV_per_atom", "meV/atom", "energy_mae_meV_per_atom"),
    ("F MAE", "forces_mae_meV_per_A", "meV/Å", "forces_mae_meV_per_A"),
    ("σ MAE", "stress_mae_GPa", "GPa", None),
    ("a", "lattice_rel", "rel", "lattice_rel"),
    ("B", "bulk_modulus_rel", "rel", "bulk_modulus_rel"),
    ("C11", "C11_rel", "rel", "elastic_rel"),
    ("C12", "C12_rel", "rel", "elastic_rel"),
    ("C44", "C44_rel", "rel", "elastic_rel"),
    ("phonons", "phonon_rel", "rel", "phonon_rel"),
    ("phonon max", "phonon_max_rel", "rel", None),
    ("RDF L1", "rdf_l1", "", None),
    ("MD stable", "md_stable", "", None),
]
VALUES = {"a": "a_A", "B": "bulk_modulus_GPa", "C11": "C11_GPa", "C12": "C12_GPa",
          "C44": "C44_GPa"}


def table(results: dict) -> list[dict]:
    """One row per (system, property): teacher and student values where they are
    numbers, the error, the target and whether it is met."""
    rows = []
    for name, r in results.items():
        for label, key, unit, target in ROWS:
            if key not in r["errors"]:  # --labels-only
                continue
            err = r["errors"][key]
            row = {"system": name, "property": label, "unit": unit,
                   "teacher": r.get("teacher", {}).get(VALUES.get(label, ""), ""),
                   "student": r.get("student", {}).get(VALUES.get(label, ""), ""),
                   "error": err, "target": TARGETS.get(target, "") if target else "",
                   "met": ""}
            if key == "md_stable":
                row["met"] = "yes" if err else "NO"
            elif target:
                row["met"] = "yes" if err <= TARGETS[target] else "NO"
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    def fmt(v):
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    print(f"\n{'system':8s} {'property':11s} {'teacher':>10s} {'student':>10s} {'error':>10s} "
          f"{'unit':9s} {'target':>7s} met")
    for r in rows:
        print(f"{r['system']:8s} {r['property']:11s} {fmt(r['teacher']):>10s} "
              f"{fmt(r['student']):>10s} {fmt(r['error']):>10s} {r['unit']:9s} "
              f"{fmt(r['target']):>7s} {r['met']}")


# ------------------------------------------------------------------------------- plots

def plot_system(name: str, ref: dict, pred: dict, teacher: dict, student: dict,
                path: Path) -> None:
    """Parity (E per atom, F, σ), EOS, phonon DOS and RDF of teacher and student."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(13, 8))
    pairs = [(ref["energy"] / ref["n_atoms"], pred["energy"] / pred["n_atoms"],
              "energy, eV/atom"),
             (ref["forces"].ravel(), pred["forces"].ravel(), "force components, eV/Å"),
             (GPA * ref["stress"].ravel(), GPA * pred["stress"].ravel(),
              "stress components, GPa")]
    for a, (x, y, label) in zip(ax[0], pairs, strict=True):
        a.plot(x, y, ".", ms=2)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        a.plot([lo, hi], [lo, hi], "k-", lw=0.5)
        a.set_xlabel(f"teacher {label}")
        a.set_ylabel("student")
        a.set_title(f"test parity: {label}")
    for props, style, who in ((teacher, "-", "teacher"), (student, "--", "student")):
        ax[1, 0].plot(props["eos"]["volumes"], props["eos"]["energies"], "o" + style,
                      label=f"{who}: B = {props['bulk_modulus_GPa']:.0f} GPa")
        ax[1, 1].plot(props["phonon_dos"]["THz"], props["phonon_dos"]["dos"], style,
                      label=who)
        ax[1, 2].plot(props["md"]["r_A"], props["md"]["rdf"], style, label=who)
    ax[1, 0].set_xlabel("volume, Å³")
    ax[1, 0].set_ylabel("energy, eV")
    ax[1, 0].set_title("equation of state")
    ax[1, 1].set_xlabel("frequency, THz")
    ax[1, 1].set_title("phonon DOS")
    ax[1, 2].set_xlabel("r, Å")
    ax[1, 2].set_title("RDF, hot NVT")
    for a in ax[1]:
        a.legend(fontsize=8)
    fig.suptitle(f"{name}: student against teacher")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(curves: list[dict], path: Path) -> None:
    """Validation force MAE against training wall time, one line per (trainer, system)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    keys = sorted({(c["trainer"], c["system"]) for c in curves})
    for trainer, system in keys:
        pts = [c for c in curves if (c["trainer"], c["system"]) == (trainer, system)]
        ax.plot([c["wall_s"] / 60 for c in pts], [c["forces_mae_meV_per_A"] for c in pts],
                "o-", ms=3, label=f"{trainer} {system}")
    ax.set_xlabel("training wall time, min")
    ax.set_ylabel("validation force MAE, meV/Å")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -------------------------------------------------------------------------------- main

def json_object(text: str, flag: str) -> dict:
    """``text`` parsed as a JSON object; SystemExit naming ``flag`` if it is not one."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{flag}: not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{flag}: a JSON object of entries is needed, not "
                         f"{type(value).__name__} {text!r}")
    return value


def check_overrides(overrides: dict, quick: bool) -> None:
    """SystemExit naming the flag if ``overrides`` make a model or training section that
    orbitgraph refuses (an unknown key, a bad value): before any data is labelled."""
    from orbitgraph.errors import ConfigError
    from orbitgraph.model.config import load_config
    from orbitgraph.train.config import TrainConfig

    doc = run_document(Path("store"), Path("run"), quick, 1, overrides=overrides)
    for flag, check in (("--model-overrides", lambda: load_config(doc["model"])),
                        ("--train-overrides", lambda: TrainConfig.from_dict(doc["train"]))):
        try:
            check()
        except ConfigError as e:
            raise SystemExit(f"{flag}: {e}") from None


def check_reuse(root: Path, teacher_name: str) -> None:
    """SystemExit unless ``root`` holds an earlier run's data labelled by ``teacher_name``
    (``--reuse-data``)."""
    if not (root / "train_val.extxyz").is_file() or not (root / "test.extxyz").is_file():
        raise SystemExit(f"--reuse-data: no earlier run's data in {root} (train_val.extxyz, "
                         "test.extxyz); run once without --reuse-data first")
    stamp = root / DATA_STAMP  # absent in folders written before it was
    if stamp.is_file() and (made_by := json.loads(stamp.read_text())["teacher"]) != teacher_name:
        raise SystemExit(f"--reuse-data: the data in {root} were labelled by {made_by}, not "
                         f"by --teacher {teacher_name}")


def run_system(system: System, teacher_name: str, args, s: Settings, root: Path,
               overrides: dict) -> dict:
    """Data (or, with ``--reuse-data``, the data of an earlier run in ``root``), store,
    training (in ``root``, or ``root/<--tag>``, with ``overrides``: ``{"model": ...,
    "train": ...}`` as :func:`run_document` takes them), test errors and (unless
    ``--labels-only``) properties of one system."""
    root.mkdir(parents=True, exist_ok=True)
    teacher = make_teacher(teacher_name)
    t0 = time.perf_counter()
    if args.reuse_data:
        test, n = read_test(root)
    else:
        key = {"teacher": teacher_name, "teacher_version": teacher_version(teacher_name),
               "hot_K": system.hot_K, "frames_version": FRAMES_VERSION,
               **{k: getattr(s, k) for k in DATA_SETTINGS}}
        frames = generate(system, teacher, s, FrameCache(root / "frames", key))
        n = {k: len(v) for k, v in frames.items()}
        test = frames["test"]
        write_sources(frames, root, teacher_name)
    print(f"{system.name}: {n['train']}/{n['val']}/{n['test']} train/val/test frames of "
          f"{len(test[0])} atoms by {teacher_name} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    overrides = {**overrides, "model": dict(overrides["model"])}  # this system's own
    if args.graph == "radius":
        from ase.io import read

        degree = radius_degree(read(root / "train_val.extxyz", index=":"))
        if degree >= RADIUS_K:
            raise SystemExit(f"{system.name}: {degree} neighbours within 6 Å: a radius graph "
                             f"needs k > {degree}, not {RADIUS_K}")
        overrides["model"].setdefault("rank_envelope", "none")
        print(f"{system.name}: radius graph, at most {degree} neighbours within 6 Å "
              f"(k = {RADIUS_K}), rank envelope {overrides['model']['rank_envelope']}",
              flush=True)
    work = root / args.tag if args.tag else root
    work.mkdir(parents=True, exist_ok=True)
    if args.student:
        return evaluate(system, teacher, teacher_name, Path(args.student), test, n, args, s,
                        work, {"model": Path(args.student)}, None, overrides)
    store = build(root, args.graph)
    race = None
    if args.race:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1)
        (work / MACE_STAMPS).unlink(missing_ok=True)  # an earlier race's
        shutil.rmtree(work / "mace", ignore_errors=True)
        mace = pool.submit(train_mace, root, work, args.minutes, args.threads, system.name)

        def ready() -> None:
            """Until mace-torch has validated once (its set-up done, its steps begun); its
            failure is raised at once, and a set-up longer than the budget ends the run."""
            waited = time.perf_counter()
            while not (work / MACE_STAMPS).is_file():
                if mace.done():
                    mace.result()  # raises mace-torch's error
                    raise SystemExit("mace-torch ended before its first validation")
                if time.perf_counter() - waited > args.minutes * 60:
                    raise SystemExit(f"mace-torch did not validate within {args.minutes} "
                                     "minutes of starting: see its log in "
                                     f"{work / 'mace'}")
                time.sleep(1.0)
    run = train(store, work, args.minutes, args.quick, system.name, args.max_steps, overrides,
                ready if args.race else None)
    if args.race:
        theirs = mace.result()
        pool.shutdown()
        race = race_summary(run["curve"], theirs)
        with open(work / "curves.csv", "a", newline="") as f:
            csv.DictWriter(f, fieldnames=list(run["curve"][0])).writerows(theirs)
        print(f"{system.name}: mace-torch ended at validation F MAE "
              f"{race['mace_final_val_F']:.1f} meV/Å after {race['mace_wall_s']:.0f} s; "
              f"orbitgraph reached it after {race['ours_reached_mace_final_s']} s and ended "
              f"at {race['ours_final_val_F']:.1f}", flush=True)
    last = run["curve"][-1]
    print(f"{system.name}: trained {run['steps']} steps in {run['wall_s']:.0f} s "
          f"({run['params']:,d} parameters); last validation F MAE "
          f"{last['forces_mae_meV_per_A']:.1f} meV/Å", flush=True)
    return evaluate(system, teacher, teacher_name, run["model"], test, n, args, s, work, run,
                    race, overrides)


def evaluate(system: System, teacher, teacher_name: str, model: Path, test: list, n: dict,
             args, s: Settings, work: Path, run: dict, race: dict | None,
             overrides: dict) -> dict:
    """The student ``model`` against ``teacher``: test-set errors and (unless
    ``--labels-only``) properties, with plots in ``work``; ``run`` is the training's
    summary (or ``{"model": ...}`` for ``--student``)."""
    student = student_calculator(model)
    ref, pred = reference(test), predict(test, student)
    training = {k: v for k, v in run.items() if k not in ("curve", "model")}
    result = {"errors": label_errors(ref, pred), "training": training, "frames": n,
              "teacher_name": teacher_name, "race": race, "overrides": overrides,
              "graph": args.graph}
    if args.labels_only:
        (work / "summary.json").write_text(json.dumps(result, indent=1, default=str))
        return result
    t0 = time.perf_counter()
    props_t = properties(teacher, system, s if args.teacher_md_ps is None else
                         Settings(**{**asdict(s), "md_ps": args.teacher_md_ps}))
    props_s = properties(student, system, s)
    print(f"{system.name}: properties in {time.perf_counter() - t0:.0f} s", flush=True)
    for who, props in (("teacher", props_t), ("student", props_s)):
        for what, why in props["failures"].items():
            print(f"{system.name}: the {who}'s {what} failed: {why}", flush=True)
    result["errors"].update(compare(props_t, props_s))
    plot_system(system.name, ref, pred, props_t, props_s, work / f"{system.name}.png")
    return {"teacher": props_t, "student": props_s, **result}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", choices=("emt", "chgnet"), default="emt")
    ap.add_argument("--systems", help=f"comma-separated, of {', '.join(SYSTEMS)} "
                    f"(default: {DEFAULT_SYSTEMS})")
    ap.add_argument("--minutes", type=float, default=5.0,
                    help="training wall-time budget per system")
    ap.add_argument("--max-steps", type=int,
                    help="train exactly this many steps instead (no wall-time probe)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--md-ps", type=float, help="hot NVT length, ps (default 10; --quick 0.04)")
    ap.add_argument("--teacher-md-ps", type=float,
                    help="the teacher's hot NVT length, ps, when it is too slow for --md-ps "
                    "(its RDF, the reference, converges well before the student's "
                    "stability is shown)")
    ap.add_argument("--md-every", type=int,
                    help="MD steps between training snapshots (default 10)")
    ap.add_argument("--race", action="store_true",
                    help="train mace-torch on the same frames at the same time, for the "
                    "same wall time (its own venv; one --threads each)")
    ap.add_argument("--reuse-data", action="store_true",
                    help="train on the data an earlier run left in --out (no teacher runs "
                    "for data; ablations)")
    ap.add_argument("--tag", help="train into <out>/<system>/<tag> (an ablation's folder)")
    ap.add_argument("--graph", choices=("knn", "radius"), default="knn",
                    help="knn: the 16-NN graph with the adaptive rank envelope; radius: "
                    f"every neighbour within 6 Å (k = {RADIUS_K} with a 6 Å cutoff), "
                    "rank envelope none")
    ap.add_argument("--model-overrides", default="{}", help="JSON replacing model entries")
    ap.add_argument("--train-overrides", default="{}",
                    help="JSON replacing train entries (a section's given keys replace its "
                    "own; null removes it)")
    ap.add_argument("--student", help="evaluate this checkpoint (best.pt or a kept model) "
                    "against the teacher instead of training one; with --reuse-data and --tag")
    ap.add_argument("--labels-only", action="store_true",
                    help="test-set E/F/σ errors only, no properties (ablations)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny data, model and calculations: checks the pipeline only")
    ap.add_argument("--out", default=str(OUT / "fidelity"))
    args = ap.parse_args(argv)
    overrides = {"model": json_object(args.model_overrides, "--model-overrides"),
                 "train": json_object(args.train_overrides, "--train-overrides")}
    import torch

    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else Settings()
    if args.md_ps is not None:
        s = Settings(**{**asdict(s), "md_ps": args.md_ps})
    if args.md_every is not None:
        s = Settings(**{**asdict(s), "md_every": args.md_every})
    names = (args.systems or DEFAULT_SYSTEMS[args.teacher]).split(",")
    for name in names:
        if name not in SYSTEMS:
            raise SystemExit(f"--systems: unknown system {name!r}; choose from "
                             f"{', '.join(SYSTEMS)}")
        if args.teacher not in SYSTEMS[name].teachers:
            raise SystemExit(f"--systems: {name} with --teacher {args.teacher}: EMT has no "
                             "physical oxide or covalent parameters, and its B2 NiAl is "
                             "mechanically unstable; use --teacher chgnet")
    if args.race and args.max_steps is not None:
        raise SystemExit("--race: mace-torch trains for --minutes of wall time; give "
                         "--minutes, not --max-steps")
    if args.reuse_data and not args.tag:
        raise SystemExit("--reuse-data: give a --tag too (the ablation's folder), so that the "
                         "run that made the data keeps its model and table")
    if args.student and not (args.reuse_data and len(names) == 1 and not args.race):
        raise SystemExit("--student: evaluates one model on its system's earlier data; give "
                         "one --systems, --reuse-data and --tag, not --race")
    if args.student and not Path(args.student).is_file():
        raise SystemExit(f"--student: no checkpoint at {args.student}")
    if args.student and (args.graph != "knn" or overrides["model"] or overrides["train"]):
        raise SystemExit("--student: the checkpoint holds its own graph and model; give no "
                         "--graph, --model-overrides or --train-overrides")
    if args.student and (Path(args.out) / names[0] / args.tag / "run.yaml").is_file():
        raise SystemExit(f"--student: --tag {args.tag} is a training run's folder, whose "
                         "table this would replace; give another --tag")
    check_overrides(overrides, args.quick)
    out = Path(args.out)
    if args.reuse_data:
        for name in names:
            check_reuse(out / name, args.teacher)
    out.mkdir(parents=True, exist_ok=True)
    results = {name: run_system(SYSTEMS[name], args.teacher, args, s, out / name, overrides)
               for name in names}
    rows = table(results)
    print_table(rows)
    tag = f"-{args.tag}" if args.tag else ""
    with open(out / f"fidelity{tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = {"args": vars(args), "settings": asdict(s), "targets": TARGETS,
               "results": results, "table": rows}
    (out / f"fidelity{tag}.json").write_text(json.dumps(summary, indent=1, default=str))
    if args.student:
        where = (f"summary {out}/<system>/{args.tag}/summary.json" if args.labels_only else
                 f"plots {out}/<system>/{args.tag}/<system>.png")
        print(f"\ntable {out / f'fidelity{tag}.csv'}; {where}")
        return summary
    curves = []
    for name in names:
        with open(out / name / args.tag / "curves.csv" if args.tag else
                  out / name / "curves.csv") as f:
            curves += [{**r, "wall_s": float(r["wall_s"]),
                        "forces_mae_meV_per_A": float(r["forces_mae_meV_per_A"])}
                       for r in csv.DictReader(f)]
    plot_curves(curves, out / f"curves{tag}.png")
    print(f"\ntable {out / f'fidelity{tag}.csv'}; plots {out}/<system>/<system>.png, "
          f"{out / f'curves{tag}.png'}")
    return summary


if __name__ == "__main__":
    main()
