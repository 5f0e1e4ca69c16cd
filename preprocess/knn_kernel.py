"""Numba kernel for periodic k-nearest-neighbour graphs of many structures.

The public API and the full specification live in :mod:`preprocess.graph`; this module
only holds the compiled loop so that the definition of the graph reads apart from the
arithmetic. Every structure of a batch is processed in one call, because per-call overhead,
not arithmetic, dominates for the ~25-atom cells of MPtrj.

Search for one centre atom ``i`` with radius ``r``: a candidate ``(j, S)`` has fractional
offset ``f_j - f_i + S``; its Cartesian length bounds each fractional component by
``r / h_a``, where ``h_a`` is the spacing of the lattice planes normal to axis ``a``. The
integer box of shifts allowed by that bound therefore holds every candidate within ``r``.
Candidates are sorted by (quantised distance, j, S) with a stable sort over an enumeration
that is already in (j, S) order. ``r`` grows until the (k+1)-th candidate (the first one
not kept, after tie inclusion) lies strictly inside the searched ball, which proves that no
candidate outside it could have been kept.
"""
from __future__ import annotations

import math

import numba
import numpy as np

# Status codes returned per structure.
STATUS_OK = 0
STATUS_COINCIDENT = 1

_GROW = 1.5


@numba.njit(cache=True, nogil=True)
def _grow_i32(a, n):
    b = np.empty(max(2 * a.shape[0], n), np.int32)
    b[: a.shape[0]] = a
    return b


@numba.njit(cache=True, nogil=True)
def _grow_f64(a, n):
    b = np.empty(max(2 * a.shape[0], n), np.float64)
    b[: a.shape[0]] = a
    return b


@numba.njit(cache=True, nogil=True)
def _grow_s(a, n):
    b = np.empty((max(2 * a.shape[0], n), 3), np.int32)
    b[: a.shape[0]] = a
    return b


@numba.njit(cache=True, nogil=True, inline="always")
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


@numba.njit(cache=True, nogil=True)
def _search(i, a0, n, positions, frac, cell, span, periodic, r, k, include_ties,
            tie_tolerance, inv_quantum, lq, lc, cj, cs, cd):
    """Sorted best candidates of centre ``i`` among those within ``r`` Å.

    ``lq`` (quantised distances) and ``lc`` (indices into the pool ``cj``, ``cs``, ``cd``) form
    a list sorted by (quantised distance, arrival). Returns ``(m, kept)``: the list length and
    how many of its entries are kept (``m - kept`` is 0 or 1, the first candidate not kept),
    or ``(-1, 0)`` when a buffer is too small (the caller grows it and calls again).
    """
    m = 0
    kept = 0
    pool = 0
    bound2 = r * r
    xi = positions[a0 + i, 0]
    yi = positions[a0 + i, 1]
    zi = positions[a0 + i, 2]
    for j in range(n):
        lo0 = hi0 = lo1 = hi1 = lo2 = hi2 = 0
        if periodic[0]:
            df = frac[j, 0] - frac[i, 0]
            lo0 = math.ceil(-span[0] - df - 1e-9)
            hi0 = math.floor(span[0] - df + 1e-9)
        if periodic[1]:
            df = frac[j, 1] - frac[i, 1]
            lo1 = math.ceil(-span[1] - df - 1e-9)
            hi1 = math.floor(span[1] - df + 1e-9)
        if periodic[2]:
            df = frac[j, 2] - frac[i, 2]
            lo2 = math.ceil(-span[2] - df - 1e-9)
            hi2 = math.floor(span[2] - df + 1e-9)
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
                    if d2 > bound2:
                        continue
                    d = math.sqrt(d2)
                    q = np.int64(d * inv_quantum + 0.5)
                    p = m  # insertion point: after every entry with key <= q
                    while p > 0 and lq[p - 1] > q:
                        p -= 1
                    if m > kept and p >= m:
                        continue  # not better than the current first-not-kept
                    if m == lq.shape[0] or pool == cj.shape[0]:
                        return -1, 0
                    cj[pool] = j
                    cs[pool, 0] = s0
                    cs[pool, 1] = s1
                    cs[pool, 2] = s2
                    cd[pool] = d
                    for t in range(m, p, -1):
                        lq[t] = lq[t - 1]
                        lc[t] = lc[t - 1]
                    lq[p] = q
                    lc[p] = pool
                    pool += 1
                    m += 1
                    if m < k:
                        kept = m
                        continue
                    # what is kept now; keep one more entry, drop the rest
                    kept = k
                    if include_ties:
                        limit = cd[lc[k - 1]] + tie_tolerance
                        while kept < m and cd[lc[kept]] <= limit:
                            kept += 1
                    if m > kept + 1:
                        m = kept + 1
                    if m > kept:
                        dn = cd[lc[kept]]
                        bound2 = min(bound2, dn * dn * (1.0 + 1e-12))
    return m, kept


@numba.njit(cache=True, nogil=True)
def _collect_pairs(a0, n, positions, frac, cell, span, periodic, r, cc, cj, cs, cd):
    """Every candidate within ``r`` of every centre, each unordered pair visited once.

    Writes (centre, neighbour, S, d) into ``cc, cj, cs, cd`` for both directions of a pair
    (``(j, -S)`` seen from ``j``). Returns the count, or -1 if the buffers are too small.
    """
    c = 0
    r2 = r * r
    cap = cc.shape[0]
    for i in range(n):
        xi = positions[a0 + i, 0]
        yi = positions[a0 + i, 1]
        zi = positions[a0 + i, 2]
        for j in range(i, n):
            lo0 = hi0 = lo1 = hi1 = lo2 = hi2 = 0
            if periodic[0]:
                df = frac[j, 0] - frac[i, 0]
                lo0 = math.ceil(-span[0] - df - 1e-9)
                hi0 = math.floor(span[0] - df + 1e-9)
                if lo0 > hi0:
                    continue
            if periodic[1]:
                df = frac[j, 1] - frac[i, 1]
                lo1 = math.ceil(-span[1] - df - 1e-9)
                hi1 = math.floor(span[1] - df + 1e-9)
                if lo1 > hi1:
                    continue
            if periodic[2]:
                df = frac[j, 2] - frac[i, 2]
                lo2 = math.ceil(-span[2] - df - 1e-9)
                hi2 = math.floor(span[2] - df + 1e-9)
                if lo2 > hi2:
                    continue
            dx = positions[a0 + j, 0] - xi
            dy = positions[a0 + j, 1] - yi
            dz = positions[a0 + j, 2] - zi
            for s0 in range(lo0, hi0 + 1):
                for s1 in range(lo1, hi1 + 1):
                    for s2 in range(lo2, hi2 + 1):
                        if j == i and (s0 < 0 or (s0 == 0 and (s1 < 0 or (s1 == 0 and s2 <= 0)))):
                            continue  # own images: take S > 0 and add -S below
                        vx = dx + (s0 * cell[0, 0] + s1 * cell[1, 0] + s2 * cell[2, 0])
                        vy = dy + (s0 * cell[0, 1] + s1 * cell[1, 1] + s2 * cell[2, 1])
                        vz = dz + (s0 * cell[0, 2] + s1 * cell[1, 2] + s2 * cell[2, 2])
                        d2 = vx * vx + vy * vy + vz * vz
                        if d2 > r2:
                            continue
                        if c + 2 > cap:
                            return -1
                        d = math.sqrt(d2)
                        cc[c] = i
                        cj[c] = j
                        cs[c, 0] = s0
                        cs[c, 1] = s1
                        cs[c, 2] = s2
                        cd[c] = d
                        cc[c + 1] = j
                        cj[c + 1] = i
                        cs[c + 1, 0] = -s0
                        cs[c + 1, 1] = -s1
                        cs[c + 1, 2] = -s2
                        cd[c + 1] = d
                        c += 2
    return c


@numba.njit(cache=True, nogil=True, inline="always")
def _before(q, j, s0, s1, s2, qb, jb, sb0, sb1, sb2):
    """Whether candidate (q, j, S) sorts strictly before (qb, jb, Sb)."""
    if q != qb:
        return q < qb
    if j != jb:
        return j < jb
    if s0 != sb0:
        return s0 < sb0
    if s1 != sb1:
        return s1 < sb1
    return s2 < sb2


_RANKED_MAX = 256  # candidates of one centre ranked all-pairs; more go through insertion


@numba.njit(cache=True, nogil=True)
def _select(first, last, order, cj, cs, cd, k, include_ties, tie_tolerance, inv_quantum,
            lq, lc, qbuf, rank, taken):
    """Best candidates among ``order[first:last]`` into the list ``lq, lc`` (see _search).

    Ranks all of a centre's candidates at once: the rank of a candidate is the number that
    sort before it, counted over all pairs in a branch-free loop (~25
    candidates per centre in MPtrj), so the sorted list is written directly. Equal
    quantised distances, rare, are ordered by (j, S) afterwards. Same result as inserting
    them one by one (:func:`_select_insertion`), which larger sets use.
    """
    c = last - first
    if c > qbuf.shape[0]:
        return _select_insertion(first, last, order, cj, cs, cd, k, include_ties,
                                 tie_tolerance, inv_quantum, lq, lc)
    for a in range(c):
        qbuf[a] = np.int64(cd[order[first + a]] * inv_quantum + 0.5)
    for a in range(c):
        qa = qbuf[a]
        less = 0
        for b in range(c):
            less -= (qbuf[b] - qa) >> 63  # +1 if q_b < q_a; 0 <= q < 2^62, no overflow
        rank[a] = less
    # equal q give equal ranks: then some rank is taken twice
    for a in range(c):
        taken[a] = False
    equal_q = False
    for a in range(c):
        equal_q |= taken[rank[a]]
        taken[rank[a]] = True
    if equal_q:
        for a in range(c):
            oa = order[first + a]
            for b in range(c):
                if b != a and qbuf[b] == qbuf[a]:
                    ob = order[first + b]
                    if _before(qbuf[b], cj[ob], cs[ob, 0], cs[ob, 1], cs[ob, 2], qbuf[a],
                               cj[oa], cs[oa, 0], cs[oa, 1], cs[oa, 2]):
                        rank[a] += 1
    cap = lq.shape[0]
    for a in range(c):
        r = rank[a]
        if r < cap:
            lq[r] = qbuf[a]
            lc[r] = order[first + a]
    if c <= k:
        return (c, c) if c <= cap else (-1, 0)
    if k >= cap:
        return -1, 0
    kept = k
    if include_ties:
        limit = cd[lc[k - 1]] + tie_tolerance
        while kept < c and kept < cap and cd[lc[kept]] <= limit:
            kept += 1
    if kept >= cap:  # the list is too short to hold the ties and the first not kept
        return -1, 0
    return min(c, kept + 1), kept


@numba.njit(cache=True, nogil=True)
def _select_insertion(first, last, order, cj, cs, cd, k, include_ties, tie_tolerance,
                      inv_quantum, lq, lc):
    """Best candidates among ``order[first:last]`` into the list ``lq, lc`` (see _search),
    inserted one by one into a bounded sorted list."""
    m = 0
    kept = 0
    bound = np.inf
    for t in range(first, last):
        o = order[t]
        d = cd[o]
        if d > bound:
            continue
        q = np.int64(d * inv_quantum + 0.5)
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
            limit = cd[lc[k - 1]] + tie_tolerance
            while kept < m and cd[lc[kept]] <= limit:
                kept += 1
        if m > kept + 1:
            m = kept + 1
        if m > kept:
            bound = cd[lc[kept]] * (1.0 + 1e-12)
    return m, kept


@numba.njit(cache=True, nogil=True)
def knn_batch(cells, positions, atom_ptr, pbc, k, include_ties, tie_tolerance, cutoff,
              quantum, coincident):
    """Build the graphs of ``B`` structures.

    Parameters
    ----------
    cells : float64 (B, 3, 3), rows are lattice vectors, Å
    positions : float64 (N_total, 3), Å, structures concatenated
    atom_ptr : int64 (B + 1,), structure b owns atoms ``atom_ptr[b]:atom_ptr[b+1]``
    pbc : bool (B, 3)
    k : int, neighbours kept per atom (before tie inclusion)
    include_ties : bool, keep all candidates within ``tie_tolerance`` of the k-th distance
    tie_tolerance : float, Å
    cutoff : float, Å; edges longer than this are dropped afterwards (``inf`` for none)
    quantum : float, Å; distances are ordered on this grid, then by (j, S)
    coincident : float, Å; a candidate closer than this is an error

    Returns
    -------
    centers, neighbors : int32 (E,) local to their structure
    shifts : int32 (E, 3)
    distances : float64 (E,)
    edge_ptr : int64 (B + 1,)
    next_distance : float64 (N_total,)
    status : int64 (B,), STATUS_OK or STATUS_COINCIDENT
    bad : int64 (B, 5), for a coincident pair: i, j, S
    """
    n_struct = cells.shape[0]
    n_total = positions.shape[0]
    inv_quantum = 1.0 / quantum
    cap = max(64, n_total * (k + 2))
    # int32 outputs: half the memory traffic of int64, which is a fifth of the run time
    out_i = np.empty(cap, np.int32)
    out_j = np.empty(cap, np.int32)
    out_s = np.empty((cap, 3), np.int32)
    out_d = np.empty(cap, np.float64)
    edge_ptr = np.zeros(n_struct + 1, np.int64)
    next_distance = np.full(n_total, np.inf)
    status = np.zeros(n_struct, np.int64)
    bad = np.zeros((n_struct, 5), np.int64)

    lq = np.empty(2 * (k + 2), np.int64)
    lc = np.empty(2 * (k + 2), np.int64)
    cj = np.empty(8 * (k + 2), np.int64)
    cs = np.empty((8 * (k + 2), 3), np.int64)
    cd = np.empty(8 * (k + 2), np.float64)

    pc = np.empty(64 * (k + 2), np.int64)
    pj = np.empty(64 * (k + 2), np.int64)
    ps = np.empty((64 * (k + 2), 3), np.int64)
    pd = np.empty(64 * (k + 2), np.float64)
    order = np.empty(64 * (k + 2), np.int64)
    qbuf = np.empty(_RANKED_MAX, np.int64)
    rank = np.empty(_RANKED_MAX, np.int64)
    taken = np.empty(_RANKED_MAX, np.bool_)
    starts = np.empty(65, np.int64)
    fill = np.empty(65, np.int64)

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
        for i in range(n):
            for a in range(3):
                frac[i, a] = (positions[a0 + i, 0] * inv[0, a] + positions[a0 + i, 1] * inv[1, a]
                              + positions[a0 + i, 2] * inv[2, a])
        for a in range(3):
            heights[a] = 1.0 / math.sqrt(inv[0, a] ** 2 + inv[1, a] ** 2 + inv[2, a] ** 2)
            periodic[a] = pbc[b, a]
        if not (periodic[0] or periodic[1] or periodic[2]):
            r_start = np.inf
        else:
            # A ball holding ~k+1 atoms at the cell's density; grown below when too small.
            r_start = 1.15 * (3.0 * (k + 1) * abs(det) / (4.0 * math.pi * max(n, 1))) ** (1.0 / 3.0)
            if include_ties:
                r_start += tie_tolerance
        # One pass over unordered pairs at the common radius r_start collects every
        # candidate of every centre; an atom whose answer is not proven complete by it is
        # searched again on its own with a growing radius.
        for a in range(3):
            span[a] = r_start / heights[a] if r_start < np.inf else 0.0
        while True:
            c = _collect_pairs(a0, n, positions, frac, cell, span, periodic, r_start,
                               pc, pj, ps, pd)
            if c >= 0:
                break
            pc = np.empty(2 * pc.shape[0], np.int64)
            pj = np.empty(2 * pj.shape[0], np.int64)
            ps = np.empty((2 * ps.shape[0], 3), np.int64)
            pd = np.empty(2 * pd.shape[0], np.float64)
        if order.shape[0] < c:
            order = np.empty(pc.shape[0], np.int64)
        if starts.shape[0] < n + 1:
            starts = np.empty(n + 1, np.int64)
            fill = np.empty(n + 1, np.int64)
        starts[: n + 1] = 0
        for t in range(c):
            starts[pc[t] + 1] += 1
        for i in range(n):
            starts[i + 1] += starts[i]
        fill[: n + 1] = starts[: n + 1]
        for t in range(c):
            order[fill[pc[t]]] = t
            fill[pc[t]] += 1

        failed = False
        for i in range(n):
            while True:
                m, kept = _select(starts[i], starts[i + 1], order, pj, ps, pd, k, include_ties,
                                  tie_tolerance, inv_quantum, lq, lc, qbuf, rank, taken)
                if m >= 0:
                    break
                lq = np.empty(2 * lq.shape[0], np.int64)
                lc = np.empty(2 * lc.shape[0], np.int64)
            src_j = pj
            src_s = ps
            src_d = pd
            r = r_start
            complete = r == np.inf or (m > kept and lq[kept] < np.int64(r * inv_quantum) - 1)
            while not complete:
                r *= _GROW
                for a in range(3):
                    span[a] = r / heights[a]
                m, kept = _search(i, a0, n, positions, frac, cell, span, periodic, r, k,
                                  include_ties, tie_tolerance, inv_quantum, lq, lc, cj, cs, cd)
                if m < 0:  # a buffer was too small: grow it and search again
                    lq = np.empty(2 * lq.shape[0], np.int64)
                    lc = np.empty(2 * lc.shape[0], np.int64)
                    cj = np.empty(2 * cj.shape[0], np.int64)
                    cs = np.empty((2 * cs.shape[0], 3), np.int64)
                    cd = np.empty(2 * cd.shape[0], np.float64)
                    r /= _GROW
                    continue
                src_j = cj
                src_s = cs
                src_d = cd
                # The first candidate not kept must lie strictly inside the searched ball.
                complete = m > kept and lq[kept] < np.int64(r * inv_quantum) - 1
            if m > 0 and src_d[lc[0]] < coincident:
                o = lc[0]
                status[b] = STATUS_COINCIDENT
                bad[b, 0] = i
                bad[b, 1] = src_j[o]
                bad[b, 2] = src_s[o, 0]
                bad[b, 3] = src_s[o, 1]
                bad[b, 4] = src_s[o, 2]
                failed = True
                break
            if e + kept > out_i.shape[0]:
                need = e + kept + (n - i) * (k + 2)
                out_i = _grow_i32(out_i, need)
                out_j = _grow_i32(out_j, need)
                out_d = _grow_f64(out_d, need)
                out_s = _grow_s(out_s, need)
            n_kept = 0
            for t in range(kept):
                o = lc[t]
                if src_d[o] > cutoff:
                    break
                out_i[e] = i
                out_j[e] = src_j[o]
                out_s[e, 0] = src_s[o, 0]
                out_s[e, 1] = src_s[o, 1]
                out_s[e, 2] = src_s[o, 2]
                out_d[e] = src_d[o]
                e += 1
                n_kept += 1
            if n_kept < m:
                next_distance[a0 + i] = src_d[lc[n_kept]]
        if failed:
            e = edge_ptr[b]
            for i in range(n):
                next_distance[a0 + i] = np.inf
        edge_ptr[b + 1] = e
    return out_i[:e], out_j[:e], out_s[:e], out_d[:e], edge_ptr, next_distance, status, bad
