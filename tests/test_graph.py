"""The k-nearest-neighbour orbit graph: fast kernel vs reference, libraries, invariances."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import canonical_edges, per_atom_sorted_distances, random_rotation, sample_structures
from orbitgraph.errors import ConfigError, InputError
from orbitgraph.preprocess.graph import KnnGraph, knn_graph, knn_graphs
from orbitgraph.preprocess.graph_reference import knn_graph_reference

# ---------------------------------------------------------------------------- structures


@st.composite
def structures(draw):
    """Cells and positions covering the awkward cases: tilted, tiny, slabs, chains, boxes."""
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["triclinic", "tilted", "tiny", "slab", "chain", "molecule"]))
    rng = np.random.default_rng(seed)
    n = int(draw(st.integers(1, 60 if kind not in ("tiny",) else 4)))
    pbc = (True, True, True)
    if kind == "triclinic":
        cell = np.diag(rng.uniform(3, 9, 3)) + rng.normal(0, 1.0, (3, 3))
        cell *= (n / 8) ** (1 / 3) if n > 8 else 1.0
    elif kind == "tilted":
        a = rng.uniform(3, 6)
        cell = np.array([[a, 0, 0], [rng.uniform(2, 5) * a, a, 0],
                         [rng.uniform(-4, 4) * a, rng.uniform(-4, 4) * a, a]])
        cell *= (n / 4) ** (1 / 3) if n > 4 else 1.0
    elif kind == "tiny":
        cell = np.diag(rng.uniform(1.2, 2.0, 3)) + rng.normal(0, 0.2, (3, 3))
    elif kind == "slab":
        side = rng.uniform(3, 5) * max(1.0, (n / 6) ** 0.5)
        cell = np.diag([side, side, 4.0 + 20.0])
        cell[1, 0] = rng.uniform(-1, 1)
    elif kind == "chain":
        cell = np.diag([rng.uniform(1.5, 3.0) * max(1, n // 2), 15.0, 15.0])
        pbc = (True, False, False)
    else:  # molecule in a box, no periodicity
        cell = np.eye(3) * 12.0
        pbc = (False, False, False)
    if kind != "slab" and kind != "chain" and kind != "molecule":
        pbc = tuple(bool(x) for x in draw(st.sampled_from(
            [(1, 1, 1), (1, 1, 1), (1, 1, 0), (1, 0, 0), (0, 1, 1)])))
    frac = rng.random((n, 3))
    if kind == "slab":
        frac[:, 2] *= 4.0 / 24.0
        pbc = (True, True, False)
    if kind in ("chain", "molecule"):
        frac[:, 1:] = 0.3 + 0.4 * frac[:, 1:]
    pos = frac @ cell
    # unwrapped positions: move some atoms by whole cell vectors
    pos += rng.integers(-1, 2, (n, 3)) * np.array(pbc) @ cell * (rng.random((n, 1)) < 0.3)
    return cell, pos, pbc


settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@given(structures(), st.sampled_from([1, 4, 16, 32]), st.sampled_from(["include", "break"]),
       st.sampled_from([None, 3.5]))
def test_fast_matches_reference(structure, k, ties, cutoff):
    cell, pos, pbc = structure
    fast = knn_graph(cell, pos, pbc=pbc, k=k, ties=ties, cutoff=cutoff)
    ref = knn_graph_reference(cell, pos, pbc=pbc, k=k, ties=ties, cutoff=cutoff)
    # identical distance multisets per atom, always
    for a, b in zip(per_atom_sorted_distances(fast), per_atom_sorted_distances(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(fast.next_distance, ref.next_distance)
    np.testing.assert_array_equal(fast.next_neighbor, ref.next_neighbor)
    np.testing.assert_array_equal(fast.next_unit_shift, ref.next_unit_shift)
    # the kernel and the reference compute distances with the same float64 formula, so the
    # whole ordered edge list is identical, in both tie modes
    np.testing.assert_array_equal(fast.centers, ref.centers)
    np.testing.assert_array_equal(fast.neighbors, ref.neighbors)
    np.testing.assert_array_equal(fast.unit_shifts, ref.unit_shifts)
    np.testing.assert_array_equal(fast.distances, ref.distances)


@given(structures(), st.sampled_from([1, 16]))
def test_graph_properties(structure, k):
    cell, pos, pbc = structure
    g = knn_graph(cell, pos, pbc=pbc, k=k)
    n = len(pos)
    assert np.all(np.diff(g.centers) >= 0), "edges sorted by centre"
    assert len(set(canonical_edges(g))) == g.n_edges, "no duplicate (i, j, S)"
    assert not np.any((g.centers == g.neighbors) & ~g.unit_shifts.any(axis=1)), "no self edge"
    assert np.all(g.unit_shifts[:, ~np.array(pbc)] == 0), "no images along open axes"
    # distances are what the unit shifts say
    vec = pos[g.neighbors] + g.unit_shifts @ cell - pos[g.centers]
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), g.distances, atol=1e-9)
    counts = g.counts
    if any(pbc):
        assert np.all(counts >= k)
        assert np.all(np.isfinite(g.next_distance))
    else:  # a finite set of candidates: all of them when k >= n - 1
        assert np.all(counts >= min(k, n - 1))
        if k >= n - 1:
            assert np.all(counts == n - 1) and np.all(np.isinf(g.next_distance))
    ptr = g.edge_ptr
    for i in range(n):
        if counts[i]:
            assert g.distances[ptr[i + 1] - 1] <= g.next_distance[i]


def test_batch_equals_one_by_one():
    items = sample_structures(40)
    cells = [c for _, c, _, _ in items]
    poss = [p for _, _, p, _ in items]
    for ties in ("include", "break"):
        batch = knn_graphs(cells, poss, k=16, ties=ties)
        assert len(batch) == len(items)
        for b, (cell, pos) in enumerate(zip(cells, poss, strict=True)):
            one = knn_graph(cell, pos, k=16, ties=ties)
            got = batch[b]
            for field in ("centers", "neighbors", "unit_shifts", "distances", "next_distance",
                          "next_neighbor", "next_unit_shift"):
                np.testing.assert_array_equal(getattr(got, field), getattr(one, field))


def _dense_cluster(rng):
    """A 30 Å cell whose atoms sit mostly in one 7 Å cube: the cell's mean density sets the
    kernel's first search radius, so cluster atoms get far more than 256 candidates."""
    cluster = 0.8 + np.stack(np.meshgrid(*[np.arange(7.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    cluster += rng.normal(0, 0.05, cluster.shape)
    spread = rng.random((20, 3)) * 30.0
    spread = spread[np.min(np.linalg.norm(spread[:, None] - cluster[None], axis=2), axis=1) > 2.0]
    return np.eye(3) * 30.0, np.concatenate([cluster, spread])


def _isolated_adatom(rng):
    """A dense slab and one atom 6 Å above it: its first search radius holds too few
    candidates, so it is searched again alone with a growing radius."""
    frac = rng.random((24, 3)) * np.array([1, 1, 0.25])
    cell = np.diag([6.0, 6.0, 30.0])
    pos = frac @ cell
    pos = pos[np.argsort(pos[:, 2])]
    top = np.array([[3.0, 3.0, pos[:, 2].max() + 6.0]])
    return cell, np.concatenate([pos, top])


@pytest.mark.parametrize("ties", ["include", "break"])
def test_slow_paths_equal_reference(ties):
    """Structures that leave the kernel's fast path (more than 256 candidates for one
    centre; a centre not complete within the first radius) give the reference's graph, alone
    and in a batch between ordinary structures (buffers regrown mid-batch)."""
    rng = np.random.default_rng(3)
    dense, adatom = _dense_cluster(rng), _isolated_adatom(rng)
    # the cases really leave the fast path: counts within the kernel's first radius
    for (cell, pos), check in ((dense, lambda c: c.max() > 256), (adatom, lambda c: c.min() < 17)):
        n = len(pos)
        r_start = 1.15 * (3.0 * 17 * abs(np.linalg.det(cell)) / (4 * np.pi * n)) ** (1 / 3) + 0.01
        wide = knn_graph(cell, pos, k=n * 8, ties="break")  # every candidate within ~r_start
        counts = np.bincount(wide.centers[wide.distances <= r_start], minlength=n)
        assert check(counts)
    items = sample_structures(6)
    cells = [c for _, c, _, _ in items]
    poss = [p for _, _, p, _ in items]
    cells[2:2], poss[2:2] = [dense[0], adatom[0]], [dense[1], adatom[1]]
    batch = knn_graphs(cells, poss, k=16, ties=ties)
    for b, (cell, pos) in enumerate(zip(cells, poss, strict=True)):
        ref = knn_graph_reference(cell, pos, k=16, ties=ties)
        for got in (batch[b], knn_graph(cell, pos, k=16, ties=ties)):
            for field in ("centers", "neighbors", "unit_shifts", "distances", "next_distance",
                          "next_neighbor", "next_unit_shift"):
                np.testing.assert_array_equal(getattr(got, field), getattr(ref, field))


def test_batch_with_per_structure_pbc():
    cell = np.eye(3) * 4.0
    pos = np.random.default_rng(0).random((5, 3)) * 4.0
    batch = knn_graphs([cell, cell], [pos, pos], pbc=[(True, True, True), (False, False, False)],
                       k=4)
    assert batch[0].unit_shifts.any()
    assert not batch[1].unit_shifts.any()
    assert batch[1].n_edges == 5 * 4


# ------------------------------------------------------------- an independent library


@pytest.mark.parametrize("library", ["vesin", "ase"])
def test_against_independent_radius_list(library):
    """Our edges are exactly the radius-list edges up to each atom's last kept distance."""
    for fid, cell, pos, _ in sample_structures(60):
        g = knn_graph(cell, pos, k=16, ties="include")
        radius = float(g.next_distance.max()) + 1e-6
        if library == "vesin":
            from vesin import NeighborList
            i, j, s, d = NeighborList(cutoff=radius, full_list=True).compute(
                points=pos, box=cell, periodic=True, quantities="ijSd")
        else:
            from ase import Atoms
            from ase.neighborlist import neighbor_list
            atoms = Atoms(numbers=np.ones(len(pos), int), positions=pos, cell=cell, pbc=True)
            i, j, s, d = neighbor_list("ijSd", atoms, radius)
        ptr = g.edge_ptr
        for a in range(g.n_atoms):
            last = g.distances[ptr[a + 1] - 1]
            sel = (i == a) & (d <= last + 1e-9)
            theirs = sorted(zip(j[sel].tolist(), map(tuple, np.asarray(s[sel]).tolist()),
                                strict=True))
            ours = sorted(zip(g.neighbors[ptr[a]:ptr[a + 1]].tolist(),
                              map(tuple, g.unit_shifts[ptr[a]:ptr[a + 1]].tolist()), strict=True))
            assert ours == theirs, f"{fid} atom {a}: edge sets differ from {library}"
            beyond = np.sort(d[(i == a) & (d > last + 1e-9)])
            assert beyond.size and abs(beyond[0] - g.next_distance[a]) < 1e-9, f"{fid} atom {a}"


# ------------------------------------------------------------------------ invariances


def _sample_for_invariance():
    rng = np.random.default_rng(7)
    items = sample_structures(30)
    return [(cell, pos) for _, cell, pos, _ in items], rng


def _assert_same_distances(g1: KnnGraph, g2: KnnGraph, perm=None):
    d1 = per_atom_sorted_distances(g1)
    d2 = per_atom_sorted_distances(g2)
    if perm is not None:
        d2 = [d2[p] for p in np.argsort(perm)]
    for a, b in zip(d1, d2, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-9)


def test_translation_rotation_permutation_wrapping():
    structures_, rng = _sample_for_invariance()
    for cell, pos in structures_:
        g = knn_graph(cell, pos)
        _assert_same_distances(g, knn_graph(cell, pos + rng.normal(0, 5, 3)))
        rot = random_rotation(rng)
        _assert_same_distances(g, knn_graph(cell @ rot.T, pos @ rot.T))
        wrapped = (np.linalg.solve(cell.T, pos.T).T % 1.0) @ cell
        gw = knn_graph(cell, wrapped)
        _assert_same_distances(g, gw)
        # wrapping changes unit shifts, never (centre, neighbour, edge vector)
        v1 = np.round(pos[g.neighbors] + g.unit_shifts @ cell - pos[g.centers], 8)
        v2 = np.round(wrapped[gw.neighbors] + gw.unit_shifts @ cell - wrapped[gw.centers], 8)
        assert sorted(map(tuple, np.c_[g.centers, g.neighbors, v1].tolist())) == \
            sorted(map(tuple, np.c_[gw.centers, gw.neighbors, v2].tolist()))
        perm = rng.permutation(len(pos))
        gp = knn_graph(cell, pos[perm])
        # atom perm[a] of the original is atom a of the permuted structure
        d_orig = per_atom_sorted_distances(g)
        d_perm = per_atom_sorted_distances(gp)
        for a in range(len(pos)):
            np.testing.assert_allclose(d_perm[a], d_orig[perm[a]], atol=1e-9)


@pytest.mark.parametrize("reps", [(2, 2, 2), (3, 1, 2)])
def test_supercell_gives_same_distances(reps):
    structures_, _ = _sample_for_invariance()
    for cell, pos in structures_[:12]:
        g = knn_graph(cell, pos)
        offsets = np.array([(a, b, c) for a in range(reps[0]) for b in range(reps[1])
                            for c in range(reps[2])])
        big_pos = (pos[None, :, :] + (offsets @ cell)[:, None, :]).reshape(-1, 3)
        big_cell = cell * np.array(reps)[:, None]
        gs = knn_graph(big_cell, big_pos)
        d_prim = per_atom_sorted_distances(g)
        d_super = per_atom_sorted_distances(gs)
        for a, d in enumerate(d_super):
            np.testing.assert_allclose(d, d_prim[a % len(pos)], atol=1e-9)


# ------------------------------------------------------------------- perfect crystals


def test_fcc_keeps_its_shells():
    a = 3.61
    cell = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    g = knn_graph(cell, np.zeros((1, 3)), k=16)
    assert g.n_edges == 18  # 12 at a/sqrt(2) + 6 at a
    assert np.isclose(g.next_distance[0], a * np.sqrt(1.5))
    conv = np.eye(3) * a
    basis = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]]) * a
    gc = knn_graph(conv, basis, k=16)
    assert np.all(gc.counts == 18)
    gb = knn_graph(conv, basis, k=16, ties="break")
    assert np.all(gb.counts == 16)
    # break keeps the nearest shell whole and then the lowest (j, S) of the second
    assert np.sum(np.isclose(gb.distances[:16], a / np.sqrt(2))) == 12


def test_bcc_keeps_three_shells():
    a = 3.3
    cell = np.eye(3) * a
    g = knn_graph(cell, np.array([[0, 0, 0], [a / 2] * 3]), k=16)
    assert np.all(g.counts == 26)  # 8 + 6 + 12
    broken = knn_graph(cell, np.array([[0, 0, 0], [a / 2] * 3]), k=16, ties="break")
    assert np.all(broken.counts == 16)


def test_break_is_translation_invariant_in_perfect_crystals():
    a = 3.61
    conv = np.eye(3) * a
    basis = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]]) * a
    g = knn_graph(conv, basis, ties="break")
    g2 = knn_graph(conv, basis + np.array([0.123, -0.456, 0.789]), ties="break")
    assert canonical_edges(g) == canonical_edges(g2)


def test_tiny_cell_enumerates_images():
    cell = np.eye(3) * 1.5
    g = knn_graph(cell, np.zeros((1, 3)), k=32)
    assert g.n_edges >= 32
    assert np.all(g.neighbors == 0)


def test_molecule_without_periodicity():
    pos = np.array([[0, 0, 0], [0.74, 0, 0.0]])
    g = knn_graph(np.eye(3) * 10, pos, pbc=False, k=16)
    assert g.n_edges == 2
    assert np.all(np.isinf(g.next_distance))
    g = knn_graph(np.eye(3) * 10, pos, pbc=(True, True, True), k=1)
    assert np.allclose(g.distances, 0.74)


def test_cutoff_drops_long_edges():
    cell = np.eye(3) * 3.3
    pos = np.array([[0, 0, 0], [1.65] * 3])
    g = knn_graph(cell, pos, k=16, cutoff=3.0)
    assert np.all(g.distances <= 3.0)
    assert np.all(g.counts == 8)
    assert np.allclose(g.next_distance, 3.3)


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("cell,pos,kwargs,kind,match", [
    (np.eye(3) * 4, [[0, 0, np.nan]], {}, InputError, "atom 0 are not finite"),
    (np.full((3, 3), np.inf), [[0, 0, 0]], {}, InputError, "cell has non-finite"),
    (np.array([[1, 0, 0], [2, 0, 0], [0, 0, 1.0]]), [[0, 0, 0]], {}, InputError, "singular"),
    (np.eye(3) * 4, [[0, 0, 0]], {"k": 0}, ConfigError, "k must be an integer >= 1"),
    (np.eye(3) * 4, [[0, 0, 0]], {"ties": "random"}, ConfigError, "ties must be"),
    (np.eye(3) * 4, [[0, 0, 0]], {"cutoff": -1.0}, ConfigError, "cutoff must be"),
    (np.eye(3) * 4, [[0, 0, 0], [1, 1, 1], [1, 1, 1]], {}, InputError,
     "atoms 1 and 2 .* same place"),
    (np.eye(3) * 4, [[0, 0, 0], [4, 0, 0]], {}, InputError, "atoms 0 and 1 .*same place"),
    (np.eye(3) * 4, [[0, 0]], {}, InputError, "shape"),
])
def test_bad_input_is_a_clear_value_error(cell, pos, kwargs, kind, match):
    """A bad structure is the user's InputError, a bad parameter their ConfigError: both
    ValueErrors, as before they had types of their own."""
    assert issubclass(kind, ValueError)
    with pytest.raises(kind, match=match):
        knn_graph(cell, np.array(pos, dtype=float), **kwargs)


def test_batch_error_names_the_structure():
    cells = [np.eye(3) * 4] * 3
    poss = [np.zeros((1, 3)), np.array([[0, 0, 0], [0, 0, 0.0]]), np.zeros((1, 3))]
    with pytest.raises(ValueError, match="structure 1: atoms 0 and 1"):
        knn_graphs(cells, poss)
    poss[1] = np.array([[0, 0, np.inf]])
    with pytest.raises(ValueError, match="structure 1: positions of atom 0"):
        knn_graphs(cells, poss)


@pytest.mark.parametrize("ties", [True, False])
def test_ranked_selection_equals_insertion(ties):
    """The kernel's two selection paths (all-pairs ranking for the usual ~25 candidates,
    insertion for large sets and the slow path) keep the same candidates in the same
    order, ties included, and that order is the (quantised distance, j, S) key; both end
    with the first candidate not kept."""
    from orbitgraph.preprocess import knn_kernel as kk
    rng = np.random.default_rng(7)
    for trial in range(300):
        c = int(rng.integers(1, 80))
        d = rng.uniform(1.0, 5.0, c)
        shells = rng.choice([1.0, 2.0, 2.5], c)  # many exactly equal distances
        d = np.where(rng.random(c) < 0.5, shells, d)
        cj = rng.integers(0, 6, c)
        cs = rng.integers(-2, 3, (c, 3))
        _, unique = np.unique(np.column_stack([cj, cs]), axis=0, return_index=True)
        shuffle = rng.permutation(unique)  # (j, S) identify a candidate; arrival order random
        d, cj, cs = d[shuffle], cj[shuffle], cs[shuffle].copy()
        c = len(d)
        k = int(rng.integers(1, 20))

        out_j, out_s, out_d = (np.empty(c, np.int32), np.empty((c, 3), np.int32),
                               np.empty(c, np.float64))
        rules = kk.Rules(k, ties, 0.01, 10_000_000, np.inf, 1e-6)  # tolerance 0.01 Å, on the grid
        candidates = kk.Candidates(cj, cs, d)
        ranking = kk.Ranking(*(np.empty(256, np.int64) for _ in range(3)))
        m_ranked, kept_ranked = kk._rank_into(0, c, candidates, rules, ranking, 0,
                                              kk.Edges(np.empty(c, np.int32), out_j, out_s,
                                                       out_d))
        ranked = [(out_j[t], *out_s[t], out_d[t]) for t in range(m_ranked)]

        lq = np.empty(2 * (k + 2), np.int64)
        lc = np.empty(2 * (k + 2), np.int64)
        while True:
            m, kept = kk._select_insertion(0, c, candidates, rules, lq, lc)
            if m >= 0:
                break
            lq = np.empty(2 * lq.shape[0], np.int64)
            lc = np.empty(2 * lc.shape[0], np.int64)
        inserted = [(cj[o], *cs[o], d[o]) for o in lc[:m]]

        assert kept == kept_ranked, trial
        assert m == min(c, kept + 1) == m_ranked, trial
        assert inserted == ranked, trial
        keys = sorted((round(d[o] * 1e9), cj[o], *cs[o], d[o]) for o in range(c))
        assert [key[1:] for key in keys][:m] == ranked, trial


def test_far_apart_atoms_are_ranked_by_insertion():
    """Distances too large for the all-pairs ranking key (> ~4.6e6 Å, a molecule's atoms
    spread far apart) take the insertion selection, with the reference's result."""
    pos = np.array([[0.0, 0, 0], [1.0, 0, 0], [0, 2.0, 0], [1e7, 0, 0], [0, 0, 3e7]])
    cell = np.eye(3) * 10.0
    for ties in ("include", "break"):
        got = knn_graph(cell, pos, pbc=False, k=3, ties=ties)
        want = knn_graph_reference(cell, pos, pbc=False, k=3, ties=ties)
        for field in ("centers", "neighbors", "unit_shifts", "distances", "next_distance"):
            assert np.array_equal(getattr(got, field), getattr(want, field)), (ties, field)
    assert got.distances.max() > 1e7
