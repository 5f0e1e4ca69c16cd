"""Atomic reference energies E0 (eV per element), fitted to a store's frames as a model asks.

A potential predicts E = Σ_i (network_i + E0(z_i)); E0 takes the bulk of the energy out of
what the network must learn. How practitioners choose it, and the name of each choice
(``model.atomic_energies``):

``least_squares``
    E0 minimising Σ_f (E_f − Σ_z n_fz E0_z)² over the training frames: the store
    manifest's ``atomic_energies_eV``, solved when the store was built
    (:mod:`orbitgraph.preprocess.store.stats`; mace-torch's ``E0s: average``). Over a small,
    element-rich set it is ill-conditioned: an element held by a few frames, always beside
    the same partners, gets a wild value (tens of eV, of either sign) that the network must
    then undo.
``regularised``
    E0 minimising Σ_f ((E_f − Σ_z n_fz E0_z) / N_f)² + λ Σ_z (E0_z − ē)²: least squares of
    energies per atom, with each element's E0 pulled toward ē, the mean energy per atom of
    the training frames. The prior weighs as much as λ frames made of that element alone at
    ē (a one-element frame adds exactly ((E_f / N_f) − E0_z)²), so it decides only the E0s
    that the data leave undetermined; λ = ``model.e0_regularisation``.
``average``
    ē for every element of the training frames.
``isolated``
    The energy of each element's isolated atom: a one-atom frame whose atom has no periodic
    image within the model's cutoff, so that the network sees no neighbour and the frame's
    energy is exactly what E0 stands for (mace-torch's ``config_type=IsolatedAtom`` frames,
    given a box larger than the cutoff). Taken from every split: they are reference
    energies, not samples of the data.

Elements absent from the training frames get no E0 (0 eV in the model, which warns where it
meets them). Energies are read from the store's index (compositions, energies), never from
its shards, except the one-atom frames' cells for ``isolated``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from ase.formula import Formula

from orbitgraph.errors import StoreError
from orbitgraph.preprocess.store.reader import GraphStore
from orbitgraph.preprocess.store.stats import N_ELEMENTS

E0_FITS = ("regularised", "least_squares", "average", "isolated")  # model.atomic_energies


@lru_cache(maxsize=65536)
def _formula_counts(formula: str) -> tuple[tuple[int, int], ...]:
    """((Z, count), ...) of an index formula such as 'Fe2O3'."""
    return tuple((atomic_numbers[symbol], n) for symbol, n in Formula(formula).count().items())


def composition_matrix(frames: GraphStore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts (F, 119) float64, energies (F,) eV, atoms (F,)) of ``frames``, from the index:
    counts[f, z] is the number of atoms of atomic number z in frame f."""
    formulas = frames.index["composition"].to_pylist()
    counts = np.zeros((len(formulas), N_ELEMENTS))
    for f, formula in enumerate(formulas):
        for z, n in _formula_counts(formula):
            counts[f, z] = n
    energies = frames.index["energy"].to_numpy().astype(np.float64)
    n_atoms = frames.index["n_atoms"].to_numpy().astype(np.float64)
    return counts, energies, n_atoms


def regularised_e0(counts: np.ndarray, energies: np.ndarray, n_atoms: np.ndarray,
                   regularisation: float) -> dict[int, float]:
    """{Z: E0 in eV} minimising Σ_f ((E_f − n_f·E0) / N_f)² + λ Σ_z (E0_z − ē)², ē the
    mean of E_f / N_f, over the elements present (module docstring).

    Shapes: counts (F, 119), energies (F,) eV, n_atoms (F,). Raises ValueError for λ <= 0
    (the unregularised problem is ``least_squares``)."""
    if not regularisation > 0:
        raise ValueError(f"E0 regularisation must be > 0 frames, got {regularisation}")
    present = np.flatnonzero(counts.sum(axis=0))
    if not present.size:
        return {}
    fractions = counts[:, present] / n_atoms[:, None]  # (F, P) atom fractions
    per_atom = energies / n_atoms
    mean = float(per_atom.mean())
    lhs = fractions.T @ fractions + regularisation * np.eye(present.size)
    rhs = fractions.T @ per_atom + regularisation * mean
    solution = np.linalg.solve(lhs, rhs)  # symmetric positive definite for λ > 0
    return {int(z): float(v) for z, v in zip(present, solution, strict=True)}


def average_e0(counts: np.ndarray, energies: np.ndarray, n_atoms: np.ndarray
               ) -> dict[int, float]:
    """{Z: ē in eV} for every element present: ē the mean of E_f / N_f (shapes as in
    :func:`regularised_e0`)."""
    present = np.flatnonzero(counts.sum(axis=0))
    if not present.size:
        return {}
    mean = float(np.mean(energies / n_atoms))
    return {int(z): mean for z in present}


def isolated_atoms(store: GraphStore, cutoff: float) -> dict[int, float]:
    """{Z: energy in eV} of the one-atom frames of ``store`` (any split) whose atom has no
    periodic image closer than ``cutoff`` Å. Raises StoreError, naming the frames, where
    two such frames of one element disagree by more than 1 meV."""
    found: dict[int, tuple[float, str]] = {}
    singles = store.subset(max_atoms=1)
    for i in range(len(singles)):
        frame = singles[i]
        images = frame["unit_shifts"].astype(np.float64) @ frame["cell"]
        if images.size and np.linalg.norm(images, axis=1).min() < cutoff:
            continue  # a crystal of one atom per cell, not an isolated atom
        z, energy = int(frame["numbers"][0]), float(frame["energy"])
        if z in found and abs(found[z][0] - energy) > 1e-3:
            raise StoreError(f"{store.root}: isolated {chemical_symbols[z]} atoms "
                             f"{found[z][1]!r} and {frame['frame_id']!r} have energies "
                             f"{found[z][0]:.6g} and {energy:.6g} eV; keep one of them")
        found.setdefault(z, (energy, str(frame["frame_id"])))
    return {z: energy for z, (energy, _) in sorted(found.items())}


def fit_e0(store: GraphStore, method: str, *, regularisation: float | None = None,
           cutoff: float | None = None) -> dict[int, float]:
    """{Z: E0 in eV} for the elements of the training frames of ``store``, by ``method``
    (least_squares, regularised, average or isolated; module docstring). ``regularisation``
    (frames) is λ of ``regularised``; ``cutoff`` (Å, the model's) decides which one-atom
    frames are isolated atoms.

    Raises StoreError when the store has no training frames, or, for ``isolated``, when an
    element of the training frames has no isolated atom (naming the elements); ValueError
    for an unknown method or one whose parameter is missing."""
    train = store.subset(split="train")
    if not len(train):
        raise StoreError(f"{store.root}: no training frames to fit E0s to")
    if method == "least_squares":
        return {int(z): float(v) for z, v in
                store.manifest.statistics["atomic_energies_eV"].items()}
    if method == "isolated":
        if cutoff is None:
            raise ValueError("isolated E0s need the model's cutoff")
        return _isolated_for(store, train, cutoff)
    counts, energies, n_atoms = composition_matrix(train)
    if method == "regularised":
        if regularisation is None:
            raise ValueError("regularised E0s need the regularisation (frames)")
        return regularised_e0(counts, energies, n_atoms, regularisation)
    if method == "average":
        return average_e0(counts, energies, n_atoms)
    raise ValueError(f"unknown E0 method {method!r}; choose one of {', '.join(E0_FITS)}")


def _isolated_for(store: GraphStore, train: GraphStore, cutoff: float) -> dict[int, float]:
    atoms = isolated_atoms(store, cutoff)
    wanted = sorted({atomic_numbers[el] for frame in train.index["elements"].to_pylist()
                     for el in frame})
    missing = [chemical_symbols[z] for z in wanted if z not in atoms]
    if missing:
        raise StoreError(
            f"{store.root}: model.atomic_energies 'isolated': no isolated atom of "
            f"{', '.join(missing)} (a one-atom frame with no periodic image within "
            f"{cutoff:g} Å; an extxyz frame without a Lattice is quarantined, give it a box "
            "larger than the cutoff); add them, or give model.atomic_energies as a mapping "
            "or another method")
    return {z: atoms[z] for z in wanted}



def statistics_with_e0(store: GraphStore, method: str | None, *,
                       regularisation: float | None = None,
                       cutoff: float | None = None) -> dict:
    """The store manifest's statistics with ``atomic_energies_eV`` fitted by ``method``
    (:func:`fit_e0`, which takes the keywords) and ``atomic_energies_method`` naming it;
    ``method`` None leaves the manifest's least-squares E0s (a model whose E0s are given
    as a mapping needs none)."""
    stats = dict(store.manifest.statistics)
    if method is None:
        return {**stats, "atomic_energies_method": "least_squares"}
    e0 = fit_e0(store, method, regularisation=regularisation, cutoff=cutoff)
    return {**stats, "atomic_energies_eV": e0, "atomic_energies_method": method}
