"""E0s as practitioners choose them (model.atomic_energies): the fits of
orbitgraph.preprocess.store.e0, isolated atoms from a store, and settings given by the user
kept by training (never overwritten by the store's statistics)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import write_emt_extxyz
from orbitgraph.errors import ConfigError, StoreError
from orbitgraph.model.config import CHOICES, load_config, with_statistics
from orbitgraph.preprocess.build import build_store
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.store import open_store
from orbitgraph.preprocess.store.e0 import (
    E0_FITS,
    average_e0,
    composition_matrix,
    fit_e0,
    regularised_e0,
)
from orbitgraph.preprocess.store.params import SplitParams

SYNC = ClusterConfig(kind="synchronous")
TINY = {"preset": "mace", "channels": 4, "radial_mlp": [8], "readout_mlp": [4], "layers": 1,
        "sh_l_max": 1, "hidden_l_max": 0, "cutoff": 5.0}


def counts_of(frames: list[dict[int, int]]) -> np.ndarray:
    counts = np.zeros((len(frames), 119))
    for f, composition in enumerate(frames):
        for z, n in composition.items():
            counts[f, z] = n
    return counts


@pytest.fixture(scope="module")
def emt_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("e0")
    source = write_emt_extxyz(root / "emt.extxyz")
    build_store(source, root / "store", split=SplitParams(0.0, 0.0), cluster=SYNC,
                progress=False)
    return open_store(root / "store")


def test_the_methods_are_the_configs_choices():
    assert set(E0_FITS) == set(CHOICES["atomic_energies"])


def test_regularised_decides_only_what_the_data_leave_undetermined():
    """Elements 1 and 2 have many one-element frames (E0 -3 and -5 eV/atom); elements 3
    and 4 occur only together, nearly in one ratio, with 0.1 eV/atom of noise: least squares
    sends them eV away from every energy per atom in the data, the regularised fit keeps
    them among them, and still finds elements 1 and 2."""
    rng = np.random.default_rng(0)
    frames = [{1: 4}] * 30 + [{2: 2}] * 30 + [{3: 50, 4: 50}] * 2 + [{3: 51, 4: 50}]
    counts = counts_of(frames)
    truth = np.zeros(119)
    truth[[1, 2, 3, 4]] = [-3.0, -5.0, -4.0, -4.0]
    energies = counts @ truth
    energies[-3:] += rng.normal(0, 0.1, 3) * counts[-3:].sum(1)
    n_atoms = counts.sum(1)
    present = [1, 2, 3, 4]
    ata, aty = counts.T @ counts, counts.T @ energies
    lsq, *_ = np.linalg.lstsq(ata[np.ix_(present, present)], aty[present], rcond=None)
    reg = regularised_e0(counts, energies, n_atoms, 1.0)
    assert sorted(reg) == present
    per_atom = energies / n_atoms
    assert lsq[2] > per_atom.max() + 5 and lsq[3] < per_atom.min() - 5, lsq  # wild
    for z in (3, 4):
        assert per_atom.min() < reg[z] < per_atom.max(), reg
    assert abs(reg[1] + 3.0) < 0.05 and abs(reg[2] + 5.0) < 0.05, reg
    # λ -> 0 approaches least squares of energies per atom; λ <= 0 is refused
    loose = regularised_e0(counts[:60], energies[:60], n_atoms[:60], regularisation=1e-9)
    assert abs(loose[1] + 3.0) < 1e-8 and abs(loose[2] + 5.0) < 1e-8
    with pytest.raises(ValueError, match="regularisation must be > 0"):
        regularised_e0(counts, energies, n_atoms, regularisation=0.0)


def test_average_is_the_mean_energy_per_atom():
    counts = counts_of([{1: 2}, {8: 1, 1: 2}])
    energies = np.array([-6.0, -15.0])
    e0 = average_e0(counts, energies, counts.sum(1))
    assert e0 == {1: -4.0, 8: -4.0}


def test_fits_from_a_store(emt_store):
    counts, energies, n_atoms = composition_matrix(emt_store.subset(split="train"))
    assert counts.shape == (len(emt_store), 119) and n_atoms.sum() == 3 * 16 + 1 + 2
    assert fit_e0(emt_store, "least_squares") == emt_store.manifest.statistics[
        "atomic_energies_eV"]
    assert set(fit_e0(emt_store, "regularised", regularisation=1.0)) == {13, 29}
    assert fit_e0(emt_store, "average") == average_e0(counts, energies, n_atoms)


def test_isolated_atoms_are_one_atom_frames_far_from_their_images(emt_store):
    """The one-atom Cu and Al frames in a 12 Å box are isolated atoms; the one-atom fcc Cu
    cell (images 2.55 Å away) is a crystal; a cutoff beyond the box finds none."""
    e0 = fit_e0(emt_store, "isolated", cutoff=5.0)
    by_id = {emt_store.index["frame_id"][i].as_py(): i for i in range(len(emt_store))}
    assert e0 == {29: emt_store[by_id["iso-Cu"]]["energy"],
                  13: emt_store[by_id["iso-Al"]]["energy"]}
    with pytest.raises(StoreError, match=r"no isolated atom of Al, Cu .*within 13 Å"):
        fit_e0(emt_store, "isolated", cutoff=13.0)


def test_with_statistics_keeps_what_is_given():
    stats = {"atomic_energies_eV": {1: -1.0}, "atomic_energies_method": "regularised",
             "mean_neighbors_per_atom": 20.0, "force_rms_eV_per_A": 0.5}
    given = load_config({**TINY, "atomic_energies": {1: -2.0}, "avg_num_neighbors": 7.5,
                         "scale": 2.0})
    assert with_statistics(given, stats) == given
    filled = with_statistics(load_config(TINY), stats)
    assert (filled.atomic_energies, filled.avg_num_neighbors, filled.scale) == (
        {1: -1.0}, 20.0, 0.5)
    with pytest.raises(ValueError, match="'average', but these statistics hold regularised"):
        with_statistics(load_config({**TINY, "atomic_energies": "average"}), stats)
    untrained = with_statistics(load_config(TINY))
    assert (untrained.atomic_energies, untrained.avg_num_neighbors, untrained.scale) == (
        {}, 16.0, 1.0)


@pytest.mark.parametrize("method", ["least_squares", "regularised", "average", "isolated"])
def test_training_fits_the_e0s_the_model_names(emt_store, tmp_path, method):
    from orbitgraph.train.config import TrainConfig
    from orbitgraph.train.trainer import Trainer

    trainer = Trainer(emt_store, {**TINY, "atomic_energies": method}, TrainConfig(
        max_steps=1, plots=False, tensorboard=False), tmp_path / "run")
    expected = fit_e0(emt_store, method, regularisation=1.0, cutoff=TINY["cutoff"])
    assert trainer.model.config.atomic_energies == expected
    e0 = trainer.model.scale_shift.e0
    assert all(float(e0[z]) == pytest.approx(v) for z, v in expected.items())


def test_training_keeps_the_settings_given(emt_store, tmp_path):
    """An explicit E0 mapping, avg_num_neighbors and scale are never overwritten by the
    store's statistics; left null, they are the store's."""
    from orbitgraph.train.config import TrainConfig
    from orbitgraph.train.trainer import Trainer

    cfg = TrainConfig(max_steps=1, plots=False, tensorboard=False)
    given = {**TINY, "atomic_energies": {13: -1.25, 29: -2.5}, "avg_num_neighbors": 7.5,
             "scale": 2.0}
    model = Trainer(emt_store, given, cfg, tmp_path / "given").model
    assert model.config.atomic_energies == {13: -1.25, 29: -2.5}
    assert (model.config.avg_num_neighbors, model.config.scale) == (7.5, 2.0)
    assert float(model.scale_shift.e0[29]) == -2.5
    stats = emt_store.manifest.statistics
    default = Trainer(emt_store, TINY, cfg, tmp_path / "default").model
    assert default.config.avg_num_neighbors == stats["mean_neighbors_per_atom"]
    assert default.config.scale == stats["force_rms_eV_per_A"]
    with pytest.raises(ConfigError, match=r"model.atomic_energies: no E0 for Cu \(elements"):
        Trainer(emt_store, {**TINY, "atomic_energies": {13: -1.0}}, cfg, tmp_path / "missing")
