"""Numba kernel for periodic k-nearest-neighbour graphs of many structures.

The public API and the full specification live in :mod:`orbitgraph.preprocess.graph`; this module
only holds the compiled loops so that the definition of the graph reads apart from the
arithmetic. Every structure of a batch is processed in one call, because per-call overhead,
not arithmetic, dominates for the ~25-atom cells of MPtrj.

Search radius: a candidate ``(j, S)`` of centre ``i`` has fractional offset
``f_j - f_i + S``; a Cartesian length ``<= r`` bounds each fractional component by
``r / h_a``, where ``h_a`` is the spacing of the lattice planes normal to axis ``a``, so the
integer box of shifts allowed by that bound holds every candidate within ``r``.

Per structure:

1. One pass over unordered atom pairs at a common radius ``r_start`` (a ball holding
   ~1.45 (k + 1) atoms at the cell's density, plus the tie tolerance when ties are
   included) writes every candidate into the bucket of both its atoms.
2. Per centre, the candidates are ranked all-pairs by a key of quantised distance and
   arrival (a branch-free, vectorised count over distinct keys), each is written straight
   to its sorted place in the output, and runs of equal quantised distance are then put
   in (j, S) order by insertion.
3. The answer is complete when the first candidate not kept (after tie inclusion) lies
   strictly inside the searched ball: nothing outside it could have been kept. A centre
   that is not complete (a sparse neighbourhood: ~1 in 40 MPtrj-like centres at
   the default 0.5 Å tie tolerance, ~1 in 125 at 0.01 Å) or has
   more than 256 candidates takes the slow path: searched again alone with a radius grown
   by 1.1, then by 1.5, its candidates ranked the same way (selected by insertion when
   there are more than 256).

Every comparison of distances (order, the k-th, tie inclusion, the first candidate not kept,
completeness) is made on the quantised grid, so the kept set is a function of the grid
values alone and never of which equal-grid candidate was seen first. The grid's rule is
:mod:`orbitgraph.preprocess.distance_grid`: its functions are compiled here and inlined.
The compiled code is cached on disk once per installation, keyed by both files
(:mod:`orbitgraph.preprocess.kernel_cache`).

The search radius is bounded: a centre's own images along the shortest periodic lattice
vector (length ``L``) are ``2`` candidates per multiple of ``L``, so the k-th candidate lies
within ``ceil(k / 2) L`` and the first candidate not kept within ``tolerance + L`` of it.
A search that passes ``2 ((k // 2 + 3) L + tolerance) + 1`` Å, more than twice that bound,
without proving completeness is a defect, reported as :data:`STATUS_INCOMPLETE` for the
structure instead of growing until memory runs out.
"""
from __future__ import annotations

import enum
import math
from collections import namedtuple

import numpy as np

from orbitgraph.preprocess import distance_grid, kernel_cache


class Status(enum.IntEnum):
    """Per-structure outcome of :func:`knn_batch` (its ``status`` array holds these ints)."""

    OK = 0
    COINCIDENT = 1  # two atoms closer than ``coincident``; ``bad`` holds i, j, S
    INCOMPLETE = 2  # a centre's search passed its radius limit; ``bad[b, 0]`` is the centre


# the same codes as plain ints, for the compiled code and for callers
STATUS_OK = int(Status.OK)
STATUS_COINCIDENT = int(Status.COINCIDENT)
STATUS_INCOMPLETE = int(Status.INCOMPLETE)

# The kernel's arguments, grouped (namedtuples compile to structs in nopython mode; a group
# whose arrays are regrown is rebuilt, never mutated).

# The batch of structures: cells float64 (B, 3, 3), rows are lattice vectors, Å; positions
# float64 (N_total, 3), Å, concatenated; atom_ptr int64 (B + 1,), structure b owns atoms
# atom_ptr[b]:atom_ptr[b + 1]; pbc bool (B, 3).
Structures = namedtuple("Structures", "cells positions atom_ptr pbc")
# The rules of the graph (the fields of a GraphParams, and its derived numbers): k neighbours
# kept per atom (before ties); include_ties: keep every candidate within tie_tolerance (Å) of
# the k-th, which is q_tolerance steps of the distance grid; cutoff (Å, inf for none): longer
# edges are dropped afterwards; coincident (Å): a closer candidate is an error.
Rules = namedtuple("Rules", "k include_ties tie_tolerance q_tolerance cutoff coincident")
# Edge buffers (and, returned, the edges): i, j int32 (E,), s int32 (E, 3), d float64 (E,) Å.
Edges = namedtuple("Edges", "i j s d")
# Per atom, the first candidate not kept: distance float64 (N_total,) Å (inf: none),
# neighbor int32 (N_total,) (-1: none), shift int32 (N_total, 3).
NextCandidates = namedtuple("NextCandidates", "distance neighbor shift")
# Per structure: status int64 (B,) (Status codes), bad int64 (B, 5) (see Status).
Failures = namedtuple("Failures", "status bad")
# What knn_batch returns.
KnnResult = namedtuple("KnnResult", "centers neighbors unit_shifts distances edge_ptr "
                       "next_distance next_neighbor next_unit_shift status bad")

# Inside the kernel:
# one structure: its atoms are rows a0:a0 + n of positions (Å); frac (>= n, 3) their
# fractional coordinates; cell (3, 3) Å; heights (3,) Å, the spacing of the lattice planes
# normal to each axis; periodic bool (3,)
Geometry = namedtuple("Geometry", "positions a0 n frac cell heights periodic")
# the search of one structure: r_start (Å) the common radius of the pass over pairs,
# r_limit (Å) the bound past which a search is a defect, q_inside the largest grid distance
# that proves completeness within r_start
Search = namedtuple("Search", "r_start r_limit q_inside")
# candidate buckets: centre i owns rows i * (width + 1) onwards (width rows and a spare) of
# j int64, s int64 (., 3), d float64 (Å); count (>= n,) candidates per centre; forward
# (>= n,) scratch of the pass over pairs
Buckets = namedtuple("Buckets", "j s d count forward width")
# candidates to select from: j int64 (C,), s int64 (C, 3), d float64 (C,) Å (buckets and the
# slow path's pool have the same fields)
Candidates = namedtuple("Candidates", "j s d")
# scratch of the all-pairs ranking, (256,) int64 each: keys (quantised distance and
# candidate number), ranks, quantised distances in sorted order
Ranking = namedtuple("Ranking", "q rank q_sorted")
# scratch of the slow path: the bounded sorted list (lq grid distances, lc candidate rows)
# and the pool of candidates gathered alone (cj, cs, cd)
SlowScratch = namedtuple("SlowScratch", "lq lc cj cs cd")

_GROW = 1.5

# the rule of the distance grid, compiled for scalars and inlined where it is called
_quantise = kernel_cache.njit(nogil=True, inline="always")(distance_grid.quantise)
_joins_by_tie = kernel_cache.njit(nogil=True, inline="always")(distance_grid.joins_by_tie)
_inside_bound = kernel_cache.njit(nogil=True, inline="always")(distance_grid.inside_bound)
_proves_complete = kernel_cache.njit(nogil=True,
                                     inline="always")(distance_grid.proves_complete)


@kernel_cache.njit(nogil=True)
def _grow_edges(edges, n):
    """``edges`` with room for at least ``n`` (at least doubled), contents kept."""
    size = max(2 * edges.i.shape[0], n)
    used = edges.i.shape[0]
    i = np.empty(size, np.int32)
    j = np.empty(size, np.int32)
    s = np.empty((size, 3), np.int32)
    d = np.empty(size, np.float64)
    i[:used] = edges.i
    j[:used] = edges.j
    s[:used] = edges.s
    d[:used] = edges.d
    return Edges(i, j, s, d)


@kernel_cache.njit(nogil=True, inline="always")
def _inv3(c, out):
    """Inverse of a 3x3 matrix into ``out``; returns the determinant."""
    a, b_, c_ = c[0, 0], c[0, 1], c[0, 2]
    d, e, f = c[1, 0], c[1, 1], c[1, 2]
    g, h, i = c[2, 0], c[2, 1], c[2, 2]
    co0 = e * i - f * h
    co1 = f * g - d * i
    co2 = d * h - e * g
    det = a * co0 + b_ * co1 + c_ * co2
    out[0, 0] = co0 / det
    out[1, 0] = co1 / det
    out[2, 0] = co2 / det
    out[0, 1] = (c_ * h - b_ * i) / det
    out[1, 1] = (a * i - c_ * g) / det
    out[2, 1] = (b_ * g - a * h) / det
    out[0, 2] = (b_ * f - c_ * e) / det
    out[1, 2] = (c_ * d - a * f) / det
    out[2, 2] = (a * e - b_ * d) / det
    return det


@kernel_cache.njit(nogil=True, inline="always")
def _shift_range(periodic, span, df):
    """The integer shifts ``S_a`` with ``|df + S_a| <= span`` (to 1e-9), as ``(lo, hi)``:
    along an axis, only they can bring an image with fractional offset ``df`` within the
    radius (``span = r / h_a``). Just 0 on an axis without periodicity."""
    if not periodic:
        return 0, 0
    return math.ceil(-span - df - 1e-9), math.floor(span - df + 1e-9)


@kernel_cache.njit(nogil=True)
def _gather(i, geo, span, r, scratch):
    """Every candidate of centre ``i`` of structure ``geo`` within ``r`` Å (``span[a] =
    r / heights[a]``) into the pool ``scratch.cj, cs, cd``, in (j, S) order.

    Returns their number, or -1 when the pool is too small (the caller grows it).
    """
    positions, a0, n, frac, cell, periodic = (geo.positions, geo.a0, geo.n, geo.frac,
                                              geo.cell, geo.periodic)
    cj, cs, cd = scratch.cj, scratch.cs, scratch.cd
    m = 0
    r2 = r * r
    xi = positions[a0 + i, 0]
    yi = positions[a0 + i, 1]
    zi = positions[a0 + i, 2]
    for j in range(n):
        lo0, hi0 = _shift_range(periodic[0], span[0], frac[j, 0] - frac[i, 0])
        lo1, hi1 = _shift_range(periodic[1], span[1], frac[j, 1] - frac[i, 1])
        lo2, hi2 = _shift_range(periodic[2], span[2], frac[j, 2] - frac[i, 2])
        dx = positions[a0 + j, 0] - xi
        dy = positions[a0 + j, 1] - yi
        dz = positions[a0 + j, 2] - zi
        for s0 in range(lo0, hi0 + 1):
            for s1 in range(lo1, hi1 + 1):
                for s2 in range(lo2, hi2 + 1):
                    if j == i and s0 == 0 and s1 == 0 and s2 == 0:
                        continue
                    vx = dx + (s0 * cell[0, 0] + s1 * cell[1, 0] + s2 * cell[2, 0])
                    vy = dy + (s0 * cell[0, 1] + s1 * cell[1, 1] + s2 * cell[2, 1])
                    vz = dz + (s0 * cell[0, 2] + s1 * cell[1, 2] + s2 * cell[2, 2])
                    d2 = vx * vx + vy * vy + vz * vz
                    if d2 > r2:
                        continue
                    if m == cj.shape[0]:
                        return -1
                    cj[m] = j
                    cs[m, 0] = s0
                    cs[m, 1] = s1
                    cs[m, 2] = s2
                    cd[m] = math.sqrt(d2)
                    m += 1
    return m


@kernel_cache.njit(nogil=True)
def _collect_pairs(geo, span, r, buckets):
    """Every candidate within ``r`` of every centre of ``geo``, each unordered pair
    visited once (``span[a] = r / heights[a]``).

    Candidates of centre ``i`` go to its bucket, ``width`` rows from ``i * (width + 1)`` of
    ``buckets.j`` (j), ``.s`` (S) and ``.d`` (d, Å), plus one spare row that absorbs the
    writes of images out of range and of overflow; ``buckets.count[i]`` is how many it has.
    The pass over pairs ``j >= i`` fills ``i``'s bucket (``forward[i]`` rows, holding d² until
    the root is taken for those within ``r`` only), then each of those rows is copied into
    ``j``'s bucket as ``(i, -S)``. Returns the largest count: if it
    exceeds ``width`` the buckets overflowed and the caller calls again with wider ones.
    The edge vector is ``(r_j - r_i) + ((S0 a + S1 b) + S2 c)``, the association the
    reference uses, so distances agree to the last bit.
    """
    positions, a0, n, frac, cell = geo.positions, geo.a0, geo.n, geo.frac, geo.cell
    bj, bs, bd, count, forward = (buckets.j, buckets.s, buckets.d, buckets.count,
                                  buckets.forward)
    width = buckets.width
    r2 = r * r
    stride = width + 1
    # cell, spans and flags in locals: the stores below could alias arrays, locals cannot
    ax, ay, az = cell[0, 0], cell[0, 1], cell[0, 2]
    bx, by, bz = cell[1, 0], cell[1, 1], cell[1, 2]
    cx, cy, cz = cell[2, 0], cell[2, 1], cell[2, 2]
    sp0, sp1, sp2 = span[0], span[1], span[2]
    p0, p1, p2 = geo.periodic[0], geo.periodic[1], geo.periodic[2]
    for i in range(n):
        xi = positions[a0 + i, 0]
        yi = positions[a0 + i, 1]
        zi = positions[a0 + i, 2]
        fi0, fi1, fi2 = frac[i, 0], frac[i, 1], frac[i, 2]
        base = i * stride
        ci = 0  # i's bucket is the only one written in this pass: count in a register
        for j in range(i, n):
            lo0, hi0 = _shift_range(p0, sp0, frac[j, 0] - fi0)
            lo1, hi1 = _shift_range(p1, sp1, frac[j, 1] - fi1)
            lo2, hi2 = _shift_range(p2, sp2, frac[j, 2] - fi2)
            if lo0 > hi0 or lo1 > hi1 or lo2 > hi2:
                continue
            dx = positions[a0 + j, 0] - xi
            dy = positions[a0 + j, 1] - yi
            dz = positions[a0 + j, 2] - zi
            for s0 in range(lo0, hi0 + 1):
                ux = s0 * ax
                uy = s0 * ay
                uz = s0 * az
                for s1 in range(lo1, hi1 + 1):
                    wx = ux + s1 * bx
                    wy = uy + s1 * by
                    wz = uz + s1 * bz
                    for s2 in range(lo2, hi2 + 1):
                        if j == i and (s0 < 0 or (s0 == 0 and (s1 < 0 or (s1 == 0 and s2 <= 0)))):
                            continue  # own images: take S > 0 and add -S below
                        vx = dx + (wx + s2 * cx)
                        vy = dy + (wy + s2 * cy)
                        vz = dz + (wz + s2 * cz)
                        d2 = vx * vx + vy * vy + vz * vz
                        # written whether within r or not, counted only if so: a store
                        # costs less than the mispredicted branch it replaces
                        hit = d2 <= r2
                        # past the end: the spare row. Unsigned indices here and below:
                        # numba wraps negative int64 indices with a compare and select per
                        # access, which costs the stores ~10 % of the kernel's time
                        t = np.uint64(min(ci, width) + base)
                        ci += hit
                        bj[t] = j
                        bs[t, 0] = s0
                        bs[t, 1] = s1
                        bs[t, 2] = s2
                        bd[t] = d2  # the square: the root is taken for hits only, below
        count[i] = ci
    # each pair seen from its other atom: (i, -S) into j's bucket, for the hits only
    for i in range(n):
        forward[i] = count[i]
    for i in range(n):
        for row in range(i * stride, i * stride + min(forward[i], width)):
            t = np.uint64(row)
            d = math.sqrt(bd[t])
            bd[t] = d
            j = bj[t]
            u = np.uint64(min(count[j], width) + j * stride)
            count[j] += 1
            bj[u] = i
            bs[u, 0] = -bs[t, 0]
            bs[u, 1] = -bs[t, 1]
            bs[u, 2] = -bs[t, 2]
            bd[u] = d
    widest = 0
    for i in range(n):
        widest = max(widest, count[i])
    return widest


@kernel_cache.njit(nogil=True, inline="always")
def _before(q, j, s0, s1, s2, qb, jb, sb0, sb1, sb2):
    """Whether candidate (q, j, S) sorts strictly before (qb, jb, Sb): the ordering key,
    field by field (scalars, so that the comparison compiles to registers)."""
    if q != qb:
        return q < qb
    if j != jb:
        return j < jb
    if s0 != sb0:
        return s0 < sb0
    if s1 != sb1:
        return s1 < sb1
    return s2 < sb2


_RANKED_MAX = 256  # candidates of one centre ranked all-pairs; more go the slow path
_KEY_BITS = 8  # a candidate's number (< _RANKED_MAX) in the low bits of its ranking key
_KEY_MAX_Q = np.int64(2) ** (62 - _KEY_BITS)  # grid distances (~4.6e6 Å) the key can hold


@kernel_cache.njit(nogil=True, inline="always")
def _rank_into(first, last, candidates, rules, ranking, e, edges):
    """Write the head of the sorted candidates in rows ``first:last`` of ``candidates``
    (:data:`Candidates`, or the buckets, which have the same fields) to ``edges.j, .s, .d``
    from row ``e``: the kept ones (k, plus ties), then the first not kept. Returns ``(m,
    kept)``: ``m = min(c, kept + 1)`` rows of the sorted order are in place (rows from
    ``e + m`` to ``e + c`` are scratch); ``(-1, 0)`` when a distance is too large for the
    ranking key (the caller selects by insertion instead).

    Each candidate's key is its quantised distance with its number in the low bits, so
    keys are distinct; its rank is the number of smaller keys, counted over all pairs in a
    branch-free (vectorised) loop, and it goes to ``e + rank``. That orders by quantised
    distance, and equal ones (own images S and -S always) by arrival; runs of equal
    quantised distance are then put in (j, S) order by insertion. The k-th quantised
    distance is then the k-th row's, and ties are counted from there.
    """
    bj, bs, bd = candidates.j, candidates.s, candidates.d
    key, rank, q_sorted = ranking.q, ranking.rank, ranking.q_sorted
    out_j, out_s, out_d = edges.j, edges.s, edges.d
    k = rules.k
    c = last - first
    q_max = np.int64(0)
    for a in range(c):
        q = _quantise(bd[first + a])
        q_max = max(q_max, q)
        key[a] = (q << _KEY_BITS) | a
    if q_max >= _KEY_MAX_Q:
        return -1, 0
    for a in range(c):
        ka = key[a]
        less = 0
        for b in range(c):
            less += key[b] < ka
        rank[a] = less
    for a in range(c):
        o = np.uint64(first + a)
        r = rank[a]
        t = np.uint64(e + r)
        out_j[t] = bj[o]
        out_s[t, 0] = bs[o, 0]
        out_s[t, 1] = bs[o, 1]
        out_s[t, 2] = bs[o, 2]
        out_d[t] = bd[o]
        q_sorted[r] = key[a] >> _KEY_BITS
    for x in range(1, c):
        q = q_sorted[x]
        if q != q_sorted[x - 1]:
            continue
        # a run of equal grid distances: insert row x among them by (j, S)
        t = e + x
        j, s0, s1, s2, d = out_j[t], out_s[t, 0], out_s[t, 1], out_s[t, 2], out_d[t]
        y = x
        while y > 0 and q_sorted[y - 1] == q:
            u = e + y - 1
            if not _before(q, j, s0, s1, s2, q, out_j[u], out_s[u, 0], out_s[u, 1], out_s[u, 2]):
                break
            out_j[u + 1] = out_j[u]
            out_s[u + 1, 0] = out_s[u, 0]
            out_s[u + 1, 1] = out_s[u, 1]
            out_s[u + 1, 2] = out_s[u, 2]
            out_d[u + 1] = out_d[u]
            y -= 1
        if y < x:
            u = e + y
            out_j[u] = j
            out_s[u, 0] = s0
            out_s[u, 1] = s1
            out_s[u, 2] = s2
            out_d[u] = d
    kept = c
    if c > k:
        kept = k
        if rules.include_ties:
            while kept < c and _joins_by_tie(q_sorted[kept], q_sorted[k - 1], rules.q_tolerance):
                kept += 1
    return min(c, kept + 1), kept


@kernel_cache.njit(nogil=True)
def _select_insertion(first, last, candidates, rules, lq, lc):
    """Best candidates among rows ``first:last`` of ``candidates`` (:data:`Candidates`),
    inserted one by one into the bounded list ``lq`` (quantised distances) / ``lc``
    (rows) sorted by (q, j, S). Returns ``(m, kept)``: the list length and how many of its
    entries are kept (``m - kept`` is 0 or 1, the first candidate not kept), or ``(-1, 0)``
    when the list buffers are too small (the caller grows them and calls again)."""
    cj, cs, cd = candidates.j, candidates.s, candidates.d
    k, include_ties, q_tolerance = rules.k, rules.include_ties, rules.q_tolerance
    m = 0
    kept = 0
    q_bound = np.int64(2) ** 62  # candidates beyond this grid value cannot enter the list
    for o in range(first, last):
        q = _quantise(cd[o])
        if q > q_bound:
            continue
        j = cj[o]
        p = m
        while p > 0:
            ob = lc[p - 1]
            if not _before(q, j, cs[o, 0], cs[o, 1], cs[o, 2], lq[p - 1], cj[ob],
                           cs[ob, 0], cs[ob, 1], cs[ob, 2]):
                break
            p -= 1
        if m > kept and p >= m:
            continue
        if m == lq.shape[0]:
            return -1, 0
        for u in range(m, p, -1):
            lq[u] = lq[u - 1]
            lc[u] = lc[u - 1]
        lq[p] = q
        lc[p] = o
        m += 1
        if m < k:
            kept = m
            continue
        kept = k
        if include_ties:
            while kept < m and _joins_by_tie(lq[kept], lq[k - 1], q_tolerance):
                kept += 1
        if m > kept + 1:
            m = kept + 1
        if m > kept:
            q_bound = lq[kept]
    return m, kept


@kernel_cache.njit(nogil=True, inline="always")
def _coincident(b, i, e, m, rules, edges, failures):
    """Whether centre ``i``'s nearest candidate (row ``e`` of the sorted ``edges``, one of
    ``m``) is closer than ``rules.coincident``; if so the pair is recorded for structure
    ``b`` in ``failures``."""
    if m == 0 or edges.d[e] >= rules.coincident:
        return False
    failures.status[b] = STATUS_COINCIDENT
    failures.bad[b, 0] = i
    failures.bad[b, 1] = edges.j[e]
    failures.bad[b, 2] = edges.s[e, 0]
    failures.bad[b, 3] = edges.s[e, 1]
    failures.bad[b, 4] = edges.s[e, 2]
    return True


@kernel_cache.njit(nogil=True, inline="always")
def _emit(i, a0, e, m, kept, cutoff, edges, nxt):
    """Finish centre ``i`` (atom ``a0 + i`` of the batch) whose sorted list of ``m``
    candidates is at ``edges`` row ``e`` onwards: drop edges beyond ``cutoff`` (Å), record
    the first candidate not kept in ``nxt``, fill the centre column. Returns the new edge
    count."""
    out_d = edges.d
    n_kept = kept  # sorted: all kept are within the cutoff if the last one is
    if kept > 0 and out_d[e + kept - 1] > cutoff:
        n_kept = 0
        while out_d[e + n_kept] <= cutoff:
            n_kept += 1
    if n_kept < m:
        nxt.distance[a0 + i] = out_d[e + n_kept]
        nxt.neighbor[a0 + i] = edges.j[e + n_kept]
        nxt.shift[a0 + i, 0] = edges.s[e + n_kept, 0]
        nxt.shift[a0 + i, 1] = edges.s[e + n_kept, 1]
        nxt.shift[a0 + i, 2] = edges.s[e + n_kept, 2]
    for t in range(n_kept):
        edges.i[e + t] = i
    return e + n_kept


@kernel_cache.njit(nogil=True)
def _sort_head(first, last, candidates, rules, ranking, scratch, e, edges):
    """The head of the sorted candidates in rows ``first:last`` of ``candidates`` (the
    buckets or the slow path's pool) written to ``edges`` from row ``e``, as
    :func:`_rank_into` writes it: ranked all-pairs when there are at most
    ``_RANKED_MAX``, else selected by insertion. Returns ``(m, kept, scratch, edges)``
    (the latter two possibly regrown)."""
    c = last - first
    if c <= _RANKED_MAX:
        if e + c > edges.j.shape[0]:
            edges = _grow_edges(edges, e + c + rules.k + 2)
        m, kept = _rank_into(first, last, candidates, rules, ranking, e, edges)
        if m >= 0:
            return m, kept, scratch, edges
    m, kept = _select_insertion(first, last, candidates, rules, scratch.lq, scratch.lc)
    while m < 0:
        scratch = SlowScratch(np.empty(2 * scratch.lq.shape[0], np.int64),
                              np.empty(2 * scratch.lc.shape[0], np.int64),
                              scratch.cj, scratch.cs, scratch.cd)
        m, kept = _select_insertion(first, last, candidates, rules, scratch.lq, scratch.lc)
    if e + m > edges.j.shape[0]:
        edges = _grow_edges(edges, e + m + rules.k + 2)
    for t in range(m):
        o = scratch.lc[t]
        edges.j[e + t] = candidates.j[o]
        edges.s[e + t, 0] = candidates.s[o, 0]
        edges.s[e + t, 1] = candidates.s[o, 1]
        edges.s[e + t, 2] = candidates.s[o, 2]
        edges.d[e + t] = candidates.d[o]
    return m, kept, scratch, edges


# The first regrowth of a slow centre's radius: of the MPtrj-like centres that r_start
# leaves unproven, 99-99.5 % are proven within 1.1 r_start (a ball of 1.33x the volume,
# where _GROW's 3.4x would gather and sort 2.5x more candidates); later ones grow by _GROW.
_FIRST_GROW = 1.1


@kernel_cache.njit(nogil=True)
def _centre_slow(i, geo, search, buckets, rules, scratch, ranking, e, edges, ranked):
    """One centre the fast path cannot finish: too many candidates to rank all-pairs, or
    the answer is not proven complete within ``search.r_start`` (then its candidates are
    gathered again alone with a growing radius, up to ``search.r_limit``). Its candidates
    are its bucket's rows; ``ranked``: the fast path has already sorted them and found the
    answer unproven within ``r_start``, so they are not sorted again. Writes the sorted
    list to ``edges`` from row ``e``; returns its length ``m`` (-1 when completeness is not
    proven within ``r_limit``), the number kept, and the (possibly regrown) ``scratch`` and
    ``edges``.
    """
    span = np.empty(3, np.float64)
    r = search.r_start
    if not ranked:
        first = i * (buckets.width + 1)
        m, kept, scratch, edges = _sort_head(first, first + buckets.count[i], buckets, rules,
                                             ranking, scratch, e, edges)
        # The first candidate not kept must lie strictly inside the searched ball.
        if r == np.inf or (m > kept and _proves_complete(_quantise(edges.d[e + kept]),
                                                         search.q_inside)):
            return m, kept, scratch, edges
    grow = _FIRST_GROW
    while True:
        if r > search.r_limit:
            return -1, 0, scratch, edges
        r *= grow
        grow = _GROW
        for a in range(3):
            span[a] = r / geo.heights[a]
        pool = _gather(i, geo, span, r, scratch)
        while pool < 0:
            size = 2 * scratch.cj.shape[0]
            scratch = SlowScratch(scratch.lq, scratch.lc, np.empty(size, np.int64),
                                  np.empty((size, 3), np.int64), np.empty(size, np.float64))
            pool = _gather(i, geo, span, r, scratch)
        m, kept, scratch, edges = _sort_head(0, pool, Candidates(scratch.cj, scratch.cs,
                                                                 scratch.cd),
                                             rules, ranking, scratch, e, edges)
        if m > kept and _proves_complete(_quantise(edges.d[e + kept]), _inside_bound(r)):
            return m, kept, scratch, edges


@kernel_cache.njit(nogil=True)
def knn_batch(structures, rules, edges):
    """Build the graphs of ``B`` structures.

    Parameters
    ----------
    structures : :data:`Structures` (cells, positions, atom_ptr, pbc; shapes and units there)
    rules : :data:`Rules` (k, include_ties, tie_tolerance, q_tolerance, cutoff, coincident)
    edges : :data:`Edges` of capacity C: i, j int32 (C,), s int32 (C, 3), d float64 (C,)
        Output buffers, allocated by the caller: numpy's allocator reuses memory between
        calls, while arrays allocated here start on fresh pages each call (~10% of the run
        time for MPtrj-like batches). Grown if too small.

    Returns
    -------
    :data:`KnnResult`:
    centers, neighbors : int32 (E,) local to their structure
    unit_shifts : int32 (E, 3)
    distances : float64 (E,)
    edge_ptr : int64 (B + 1,)
    next_distance : float64 (N_total,), Å, of the first candidate not kept (inf: none)
    next_neighbor : int32 (N_total,), its neighbour index local to the structure (-1: none)
    next_unit_shift : int32 (N_total, 3), its cell shift
    status : int64 (B,), :class:`Status` codes
    bad : int64 (B, 5), for a coincident pair: i, j, S; for an incomplete search: i
    """
    cells, positions, atom_ptr, pbc = (structures.cells, structures.positions,
                                       structures.atom_ptr, structures.pbc)
    k = rules.k
    tie_tolerance = rules.tie_tolerance
    n_struct = cells.shape[0]
    n_total = positions.shape[0]
    edge_ptr = np.zeros(n_struct + 1, np.int64)
    nxt = NextCandidates(np.full(n_total, np.inf), np.full(n_total, -1, np.int32),
                         np.zeros((n_total, 3), np.int32))
    failures = Failures(np.zeros(n_struct, np.int64), np.zeros((n_struct, 5), np.int64))

    scratch = SlowScratch(np.empty(2 * (k + 2), np.int64), np.empty(2 * (k + 2), np.int64),
                          np.empty(8 * (k + 2), np.int64), np.empty((8 * (k + 2), 3), np.int64),
                          np.empty(8 * (k + 2), np.float64))
    # candidate buckets of the current structure, ``width`` rows (+ 1 spare) per atom
    width = 2 * (k + 2)
    buckets = Buckets(np.empty(64 * (width + 1), np.int64),
                      np.empty((64 * (width + 1), 3), np.int64),
                      np.empty(64 * (width + 1), np.float64),
                      np.empty(64, np.int64), np.empty(64, np.int64), width)
    ranking = Ranking(np.empty(_RANKED_MAX, np.int64), np.empty(_RANKED_MAX, np.int64),
                      np.empty(_RANKED_MAX, np.int64))

    frac = np.empty((64, 3), np.float64)
    inv = np.empty((3, 3), np.float64)
    heights = np.empty(3, np.float64)
    span = np.empty(3, np.float64)
    periodic = np.zeros(3, np.bool_)
    e = 0
    for b in range(n_struct):
        a0 = atom_ptr[b]
        n = atom_ptr[b + 1] - a0
        cell = cells[b]
        det = _inv3(cell, inv)
        if frac.shape[0] < n:
            frac = np.empty((n, 3), np.float64)
            buckets = Buckets(buckets.j, buckets.s, buckets.d, np.empty(n, np.int64),
                              np.empty(n, np.int64), buckets.width)
        for i in range(n):
            for a in range(3):
                frac[i, a] = (positions[a0 + i, 0] * inv[0, a] + positions[a0 + i, 1] * inv[1, a]
                              + positions[a0 + i, 2] * inv[2, a])
        for a in range(3):
            heights[a] = 1.0 / math.sqrt(inv[0, a] ** 2 + inv[1, a] ** 2 + inv[2, a] ** 2)
            periodic[a] = pbc[b, a]
        geo = Geometry(positions, a0, n, frac, cell, heights, periodic)
        if not (periodic[0] or periodic[1] or periodic[2]):
            r_start = np.inf
            r_limit = np.inf
        else:
            # twice the radius that must prove completeness (module docstring)
            shortest = np.inf
            for a in range(3):
                if periodic[a]:
                    shortest = min(shortest, math.sqrt(cell[a, 0] ** 2 + cell[a, 1] ** 2
                                                       + cell[a, 2] ** 2))
            r_limit = 2.0 * ((k // 2 + 3) * shortest + tie_tolerance) + 1.0
            # A ball holding ~1.45 (k + 1) atoms at the cell's density (1.13 in radius: a
            # smaller one saves less than its extra slow-path searches cost).
            r_start = 1.13 * (3.0 * (k + 1) * abs(det) / (4.0 * math.pi * max(n, 1))) ** (1.0 / 3.0)
            if rules.include_ties:
                r_start += tie_tolerance
        # largest quantised distance that proves completeness within r_start
        q_inside = _inside_bound(r_start) if r_start < np.inf else np.int64(2) ** 62
        search = Search(r_start, r_limit, q_inside)
        # One pass over unordered pairs at the common radius r_start collects every
        # candidate of every centre; an atom whose answer is not proven complete by it is
        # searched again on its own with a growing radius.
        for a in range(3):
            span[a] = r_start / heights[a] if r_start < np.inf else 0.0
        while True:
            rows = n * (buckets.width + 1)
            if buckets.j.shape[0] < rows:
                buckets = Buckets(np.empty(rows, np.int64), np.empty((rows, 3), np.int64),
                                  np.empty(rows, np.float64), buckets.count, buckets.forward,
                                  buckets.width)
            widest = _collect_pairs(geo, span, r_start, buckets)
            if widest <= buckets.width:
                break
            buckets = Buckets(buckets.j, buckets.s, buckets.d, buckets.count, buckets.forward,
                              widest + widest // 2)
        stride = buckets.width + 1
        count = buckets.count

        failed = False
        centre = 0  # the first centre not yet finished
        while centre < n:
            # room for every candidate still to come: the loop below never reallocates, so
            # no array is reassigned inside it (numba then adds no reference counting)
            need = e
            for t in range(centre, n):
                need += count[t]
            if need > edges.j.shape[0]:
                edges = _grow_edges(edges, need + (n_struct - b) * (k + 2))
            slow = n
            ranked = False  # whether the slow centre's bucket was sorted here
            for i in range(centre, n):
                first = i * stride
                c_i = count[i]
                if c_i > _RANKED_MAX:
                    slow = i
                    break
                m, kept = _rank_into(first, first + c_i, buckets, rules, ranking, e, edges)
                if m < 0:
                    slow = i
                    break
                if not (r_start == np.inf or (
                        kept < m and _proves_complete(_quantise(edges.d[e + kept]), q_inside))):
                    slow = i
                    ranked = True
                    break
                if _coincident(b, i, e, m, rules, edges, failures):
                    failed = True
                    break
                e = _emit(i, a0, e, m, kept, rules.cutoff, edges, nxt)
            if failed or slow == n:
                break
            m, kept, scratch, edges = _centre_slow(slow, geo, search, buckets, rules, scratch,
                                                   ranking, e, edges, ranked)
            if m < 0:
                failures.status[b] = STATUS_INCOMPLETE
                failures.bad[b, 0] = slow
                failed = True
                break
            if _coincident(b, slow, e, m, rules, edges, failures):
                failed = True
                break
            e = _emit(slow, a0, e, m, kept, rules.cutoff, edges, nxt)
            centre = slow + 1
        if failed:
            e = edge_ptr[b]
            for i in range(n):
                nxt.distance[a0 + i] = np.inf
                nxt.neighbor[a0 + i] = -1
        edge_ptr[b + 1] = e
    return KnnResult(edges.i[:e], edges.j[:e], edges.s[:e], edges.d[:e], edge_ptr, nxt.distance,
                     nxt.neighbor, nxt.shift, failures.status, failures.bad)
