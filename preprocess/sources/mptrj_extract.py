"""MPtrj records straight from the JSON bytes into columns, without Python objects.

Parsing a partition with orjson and walking the dicts costs about three times the graph
build: every number becomes a Python float, every site a dict. This module walks the bytes
of a run of ``"material_id": {frame_id: record, ...}`` entries in compiled code and writes
the fields a frame needs (cell, pbc, positions, elements, energy, forces, stress, magmom)
into flat arrays. It is an accelerator, not a second definition of a valid record:

* it accepts only records it fully understands — every field where
  :func:`~preprocess.sources.records.frame_from_record` expects it, numbers as JSON numbers,
  one fully occupied species per site, no repeated keys — and flags every other record
  ``SLOW``; the caller re-parses those with orjson and ``frame_from_record``, which keeps
  or quarantines them with its own reasons;
* the whole run is checked against the JSON grammar (values it does not need are
  validated as they are skipped); if it is not valid JSON, :func:`extract` returns None and
  the caller parses the run the general way, which reports malformed materials;
* numbers are converted exactly as Python's ``float()`` does
  (:mod:`preprocess.sources.json_numbers`); the few the compiled routes cannot prove exact
  are converted by ``float()`` here.

So a store built through this path equals, bit for bit, one built from ``orjson.loads``;
``tests/test_mptrj_extract.py`` checks that on fixtures, planted bad records and
random mutations of valid ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from preprocess.sources.json_numbers import BAD, INEXACT, parse_number

OK = 0
SLOW = 1  # the caller parses this record the general way

# regions of the one float64 ``values`` output: frame b's energy is
# values[regions[ENERGY] + b], its cell values[regions[CELL] + 9 b:...], atom a's position
# values[regions[POSITIONS] + 3 a:...]; regions[END] is the total size
ENERGY, CELL, STRESS, POSITIONS, FORCES, MAGMOM, SITE_MAGMOM, END = range(8)
_STACK = 512  # deepest nesting of a skipped value
OBJECT_END, ARRAY_END = 125, 93  # the bytes } and ]


def _element_table() -> np.ndarray:
    """Atomic number of each 1- or 2-letter symbol, indexed by ``b0 << 8 | b1`` (b1 = 0
    for one letter); -1 where the symbol is unknown (the general path reports it)."""
    from ase.data import atomic_numbers

    table = np.full(1 << 16, -1, dtype=np.int16)
    for symbol, z in atomic_numbers.items():
        raw = symbol.encode()
        if len(raw) in (1, 2):
            table[raw[0] << 8 | (raw[1] if len(raw) == 2 else 0)] = z
    return table


def _key(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8).copy()


K_STRUCTURE, K_FORCE, K_STRESS, K_MAGMOM = (_key("structure"), _key("force"), _key("stress"),
                                            _key("magmom"))
K_LATTICE, K_SITES, K_MATRIX, K_PBC = _key("lattice"), _key("sites"), _key("matrix"), _key("pbc")
K_SPECIES, K_XYZ, K_PROPERTIES = _key("species"), _key("xyz"), _key("properties")
K_ELEMENT, K_OCCU = _key("element"), _key("occu")


# -- grammar helpers ------------------------------------------------------------------------

@numba.njit(cache=True)
def _ws(buf, p):
    n = buf.shape[0]
    while p < n and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
        p += 1
    return p


@numba.njit(cache=True)
def _string_end(buf, p):
    """One past the closing quote of the string at ``buf[p] == '"'``; -1 if invalid.
    Second value: whether it holds escapes."""
    n = buf.shape[0]
    p += 1
    escaped = False
    while p < n:
        c = buf[p]
        if c == 34:
            return p + 1, escaped
        if c < 32:
            return -1, escaped
        if c == 92:
            escaped = True
            if p + 1 >= n:
                return -1, escaped
            e = buf[p + 1]
            if e == 117:  # \uXXXX
                if p + 5 >= n:
                    return -1, escaped
                for h in range(p + 2, p + 6):
                    x = buf[h]
                    if not (48 <= x <= 57 or 65 <= x <= 70 or 97 <= x <= 102):
                        return -1, escaped
                p += 6
                continue
            if not (e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110
                    or e == 114 or e == 116):
                return -1, escaped
            p += 2
            continue
        p += 1
    return -1, escaped


@numba.njit(cache=True)
def _literal_end(buf, p):
    """One past ``true``/``false``/``null`` at p; -1 if none is there."""
    n = buf.shape[0]
    c = buf[p]
    if c == 116 and p + 4 <= n and buf[p + 1] == 114 and buf[p + 2] == 117 and buf[p + 3] == 101:
        return p + 4
    if (c == 102 and p + 5 <= n and buf[p + 1] == 97 and buf[p + 2] == 108
            and buf[p + 3] == 115 and buf[p + 4] == 101):
        return p + 5
    if c == 110 and p + 4 <= n and buf[p + 1] == 117 and buf[p + 2] == 108 and buf[p + 3] == 108:
        return p + 4
    return -1


@numba.njit(cache=True)
def _after_key(buf, p):
    """At an object key: p past ``"key":`` and the whitespace after it; -1 if none."""
    if p >= buf.shape[0] or buf[p] != 34:
        return -1
    p, _ = _string_end(buf, p)
    if p < 0:
        return -1
    p = _ws(buf, p)
    if p >= buf.shape[0] or buf[p] != 58:
        return -1
    return _ws(buf, p + 1)


@numba.njit(cache=True)
def _value_end(buf, p, bits):
    """One past the JSON value starting at ``buf[p]``, checking its grammar; -1 if invalid.
    ``bits[1:]`` holds the stack of open containers (123 object, 91 array)."""
    n = buf.shape[0]
    depth = 0
    while True:
        # p is at the start of a value
        if p >= n:
            return -1
        c = buf[p]
        if c == 123 or c == 91:
            if depth == _STACK:
                return -1
            bits[1 + depth] = c
            depth += 1
            p = _ws(buf, p + 1)
            if p < n and buf[p] == (125 if c == 123 else 93):  # empty container
                depth -= 1
                p += 1
            else:
                if c == 123:
                    p = _after_key(buf, p)
                    if p < 0:
                        return -1
                continue  # to the container's first value
        elif c == 34:
            p, _ = _string_end(buf, p)
            if p < 0:
                return -1
        elif c == 45 or 48 <= c <= 57:
            p, _, status = parse_number(buf, p, bits)
            if status == BAD:
                return -1
        else:
            p = _literal_end(buf, p)
            if p < 0:
                return -1
        # after a value: close containers or move to the next member
        while True:
            if depth == 0:
                return p
            p = _ws(buf, p)
            if p >= n:
                return -1
            top = bits[depth]
            if buf[p] == 44:  # ,
                p = _ws(buf, p + 1)
                if top == 123:
                    p = _after_key(buf, p)
                    if p < 0:
                        return -1
                break
            if buf[p] == (125 if top == 123 else 93):
                depth -= 1
                p += 1
                continue
            return -1


@numba.njit(cache=True)
def _is_key(buf, s, e, key):
    if e - s != key.shape[0]:
        return False
    for t in range(key.shape[0]):
        if buf[s + t] != key[t]:
            return False
    return True


# -- the extractor ----------------------------------------------------------------------------

@numba.njit(cache=True)
def _member(buf, p):
    """At an object member ``"key": value``: (key start, key end, value start), or p < 0.
    Keys with escapes never match a field name: such a record goes the general way."""
    n = buf.shape[0]
    if p >= n or buf[p] != 34:
        return -1, -1, -1
    end, escaped = _string_end(buf, p)
    if end < 0 or escaped:
        return -1, -1, -1
    q = _ws(buf, end)
    if q >= n or buf[q] != 58:
        return -1, -1, -1
    return p + 1, end - 1, _ws(buf, q + 1)


@numba.njit(cache=True)
def _next(buf, p, close):
    """After a value in an object (``close`` = ``}``) or array (``]``): (p at the next
    member or item, False), (p past ``close``, True) or -1."""
    n = buf.shape[0]
    p = _ws(buf, p)
    if p < n and buf[p] == 44:
        return _ws(buf, p + 1), False
    if p < n and buf[p] == close:
        return p + 1, True
    return -1, True


@numba.njit(cache=True)
def _number(buf, p, bits, values, index, frame, fb, n_fb):
    """Parse a number into ``values[index]``; if ``float()`` must convert it, add a row
    (index, start, end, frame) to ``fb``. Returns (end, n_fb), end < 0 if no number."""
    if p >= buf.shape[0] or not (buf[p] == 45 or 48 <= buf[p] <= 57):
        return -1, n_fb
    end, value, status = parse_number(buf, p, bits)
    if status == BAD:
        return -1, n_fb
    values[index] = value
    if status == INEXACT:
        if n_fb == fb.shape[0]:
            return -1, n_fb
        fb[n_fb, 0] = index
        fb[n_fb, 1] = p
        fb[n_fb, 2] = end
        fb[n_fb, 3] = frame
        n_fb += 1
    return end, n_fb


@numba.njit(cache=True)
def _numbers(buf, p, bits, values, first, count, limit, frame, fb, n_fb):
    """A JSON array of exactly ``count`` numbers into ``values[first:first + count]``,
    which must end before ``limit`` (the end of its region)."""
    n = buf.shape[0]
    if p >= n or buf[p] != 91 or first + count > limit:
        return -1, n_fb
    p = _ws(buf, p + 1)
    for t in range(count):
        p, n_fb = _number(buf, p, bits, values, first + t, frame, fb, n_fb)
        if p < 0:
            return -1, n_fb
        p, closed = _next(buf, p, ARRAY_END)
        if p < 0 or closed != (t == count - 1):
            return -1, n_fb
    return p, n_fb


@numba.njit(cache=True)
def _rows3(buf, p, bits, values, first, limit, frame, fb, n_fb):
    """A JSON array of rows of 3 numbers into ``values[first:limit]``: (end, rows, n_fb)."""
    n = buf.shape[0]
    if p >= n or buf[p] != 91:
        return -1, 0, n_fb
    p = _ws(buf, p + 1)
    rows = 0
    if p < n and buf[p] == 93:
        return p + 1, 0, n_fb
    while True:
        p, n_fb = _numbers(buf, p, bits, values, first + 3 * rows, 3, limit, frame, fb, n_fb)
        if p < 0:
            return -1, rows, n_fb
        rows += 1
        p, closed = _next(buf, p, ARRAY_END)
        if p < 0 or closed:
            return p, rows, n_fb


@numba.njit(cache=True)
def _species(buf, p, elements, bits):
    """``[{"element": "Fe", "occu": 1, ...}]`` with one fully occupied species: (end, Z)."""
    n = buf.shape[0]
    if p >= n or buf[p] != 91:
        return -1, -1
    p = _ws(buf, p + 1)
    if p >= n or buf[p] != 123:
        return -1, -1
    p = _ws(buf, p + 1)
    z = -1
    seen = 0
    while True:
        ks, ke, p = _member(buf, p)
        if p < 0:
            return -1, -1
        if _is_key(buf, ks, ke, K_ELEMENT):
            if seen & 1 or buf[p] != 34:
                return -1, -1
            seen |= 1
            end, escaped = _string_end(buf, p)
            length = end - p - 2
            if end < 0 or escaped or length < 1 or length > 2:
                return -1, -1
            code = (np.int64(buf[p + 1]) << 8) | (np.int64(buf[p + 2]) if length == 2 else 0)
            z = elements[code]
            if z < 0:
                return -1, -1
            p = end
        elif _is_key(buf, ks, ke, K_OCCU):
            if seen & 2:
                return -1, -1
            seen |= 2
            end, value, status = parse_number(buf, p, bits)
            if status != 0:
                return -1, -1
            if abs(value - 1.0) > 1e-9 * max(abs(value), 1.0):  # math.isclose(occu, 1)
                return -1, -1
            p = end
        else:
            p = _value_end(buf, p, bits)
            if p < 0:
                return -1, -1
        p, closed = _next(buf, p, OBJECT_END)
        if p < 0:
            return -1, -1
        if closed:
            break
    p = _ws(buf, p)
    if p >= n or buf[p] != 93 or not seen & 1:
        return -1, -1  # no element, or more than one species
    return p + 1, z


@numba.njit(cache=True)
def _site_properties(buf, p, values, index, bits, frame, fb, n_fb):
    """A site's ``properties``: null or an object whose ``magmom`` (number or null) goes to
    ``values[index]``. Returns (end, n_fb, magmom present); end < 0 if not understood."""
    if buf[p] == 110:  # null
        return _literal_end(buf, p), n_fb, False
    if buf[p] != 123:
        return -1, n_fb, False
    p = _ws(buf, p + 1)
    if buf[p] == 125:
        return p + 1, n_fb, False
    seen_magmom = False
    has_magmom = False
    while True:
        ks, ke, p = _member(buf, p)
        if p < 0:
            return -1, n_fb, False
        if _is_key(buf, ks, ke, K_MAGMOM):
            if seen_magmom:
                return -1, n_fb, False
            seen_magmom = True
            if buf[p] == 110:  # null
                p = _literal_end(buf, p)
            else:
                p, n_fb = _number(buf, p, bits, values, index, frame, fb, n_fb)
                has_magmom = p >= 0
        else:
            p = _value_end(buf, p, bits)
        if p < 0:
            return -1, n_fb, False
        p, closed = _next(buf, p, OBJECT_END)
        if p < 0:
            return -1, n_fb, False
        if closed:
            return p, n_fb, has_magmom


@numba.njit(cache=True)
def _lattice(buf, p, b, regions, values, pbcs, bits, fb, n_fb):
    """The lattice object of frame ``b``: ``matrix`` (3 rows of 3, required) into its cell,
    ``pbc`` (3 booleans) into ``pbcs[b]``. Returns (end, n_fb); end < 0 if not understood."""
    if p >= buf.shape[0] or buf[p] != 123:
        return -1, n_fb
    p = _ws(buf, p + 1)
    seen = 0
    while True:
        ks, ke, p = _member(buf, p)
        if p < 0:
            return -1, n_fb
        if _is_key(buf, ks, ke, K_MATRIX):
            if seen & 1:
                return -1, n_fb
            seen |= 1
            p, rows, n_fb = _rows3(buf, p, bits, values, regions[CELL] + 9 * b,
                                   regions[CELL] + 9 * b + 9, b, fb, n_fb)
            if p < 0 or rows != 3:
                return -1, n_fb
        elif _is_key(buf, ks, ke, K_PBC):
            if seen & 2 or buf[p] != 91:
                return -1, n_fb
            seen |= 2
            p = _ws(buf, p + 1)
            for t in range(3):
                if buf[p] == 116:
                    pbcs[b, t] = True
                elif buf[p] == 102:
                    pbcs[b, t] = False
                else:
                    return -1, n_fb
                p = _literal_end(buf, p)
                if p < 0:
                    return -1, n_fb
                p, closed = _next(buf, p, ARRAY_END)
                if p < 0 or closed != (t == 2):
                    return -1, n_fb
        else:
            p = _value_end(buf, p, bits)
            if p < 0:
                return -1, n_fb
        p, closed = _next(buf, p, OBJECT_END)
        if p < 0:
            return -1, n_fb
        if closed:
            break
    if not seen & 1:
        return -1, n_fb
    return p, n_fb


@numba.njit(cache=True)
def _site(buf, p, a, regions, values, numbers, elements, bits, frame, fb, n_fb):
    """One site object into atom row ``a``: (end, n_fb, magmom present)."""
    n = buf.shape[0]
    if p >= n or buf[p] != 123:
        return -1, n_fb, False
    p = _ws(buf, p + 1)
    seen = 0
    has_magmom = False
    while True:
        ks, ke, p = _member(buf, p)
        if p < 0:
            return -1, n_fb, False
        if _is_key(buf, ks, ke, K_SPECIES):
            if seen & 1:
                return -1, n_fb, False
            seen |= 1
            p, z = _species(buf, p, elements, bits)
            if p < 0:
                return -1, n_fb, False
            numbers[a] = z
        elif _is_key(buf, ks, ke, K_XYZ):
            if seen & 2:
                return -1, n_fb, False
            seen |= 2
            p, n_fb = _numbers(buf, p, bits, values, regions[POSITIONS] + 3 * a, 3,
                               regions[POSITIONS + 1], frame, fb, n_fb)
            if p < 0:
                return -1, n_fb, False
        elif _is_key(buf, ks, ke, K_PROPERTIES):
            if seen & 4:
                return -1, n_fb, False
            seen |= 4
            p, n_fb, has_magmom = _site_properties(buf, p, values, regions[SITE_MAGMOM] + a,
                                                   bits, frame, fb, n_fb)
            if p < 0:
                return -1, n_fb, False
        else:
            p = _value_end(buf, p, bits)
            if p < 0:
                return -1, n_fb, False
        p, closed = _next(buf, p, OBJECT_END)
        if p < 0:
            return -1, n_fb, False
        if closed:
            break
    if seen & 3 != 3:
        return -1, n_fb, False
    return p, n_fb, has_magmom


@numba.njit(cache=True)
def _structure(buf, p, a0, b, regions, values, pbcs, numbers, elements, bits, fb, n_fb):
    """The structure object of frame ``b``: (end, sites, sites with a magmom, n_fb)."""
    n = buf.shape[0]
    if p >= n or buf[p] != 123:
        return -1, 0, 0, n_fb
    p = _ws(buf, p + 1)
    seen = 0
    n_sites = 0
    n_site_magmom = 0
    while True:
        ks, ke, p = _member(buf, p)
        if p < 0:
            return -1, 0, 0, n_fb
        if _is_key(buf, ks, ke, K_LATTICE):
            if seen & 1:
                return -1, 0, 0, n_fb
            seen |= 1
            p, n_fb = _lattice(buf, p, b, regions, values, pbcs, bits, fb, n_fb)
            if p < 0:
                return -1, 0, 0, n_fb
        elif _is_key(buf, ks, ke, K_SITES):
            if seen & 2 or p >= n or buf[p] != 91:
                return -1, 0, 0, n_fb
            seen |= 2
            p = _ws(buf, p + 1)
            if buf[p] == 93:
                return -1, 0, 0, n_fb  # no sites
            while True:
                a = a0 + n_sites
                if a >= numbers.shape[0]:
                    return -1, 0, 0, n_fb
                p, n_fb, has_magmom = _site(buf, p, a, regions, values, numbers, elements,
                                            bits, b, fb, n_fb)
                if p < 0:
                    return -1, 0, 0, n_fb
                n_sites += 1
                n_site_magmom += has_magmom
                p, closed = _next(buf, p, ARRAY_END)
                if p < 0:
                    return -1, 0, 0, n_fb
                if closed:
                    break
        else:
            p = _value_end(buf, p, bits)
            if p < 0:
                return -1, 0, 0, n_fb
        p, closed = _next(buf, p, OBJECT_END)
        if p < 0:
            return -1, 0, 0, n_fb
        if closed:
            break
    if seen != 3:
        return -1, 0, 0, n_fb
    return p, n_sites, n_site_magmom, n_fb


@numba.njit(cache=True)
def _record(buf, p, b, a0, energy_key, regions, values, pbcs, flags, numbers, elements, bits,
            fb, n_fb):
    """Record ``b`` at ``buf[p]`` with its atoms from row ``a0``: (end, atoms, n_fb);
    end < 0 if the record needs the general path. ``flags[b]``: 1 stress, 2 magmom list,
    4 every site has a magmom."""
    n = buf.shape[0]
    if p >= n or buf[p] != 123:
        return -1, 0, n_fb
    p = _ws(buf, p + 1)
    if buf[p] == 125:
        return -1, 0, n_fb
    seen = 0
    n_sites = -1
    n_force = -1
    n_magmom = -1
    n_site_magmom = 0
    while True:
        ks, ke, p = _member(buf, p)
        if p < 0:
            return -1, 0, n_fb
        if _is_key(buf, ks, ke, K_STRUCTURE):
            if seen & 1:
                return -1, 0, n_fb
            seen |= 1
            p, n_sites, n_site_magmom, n_fb = _structure(
                buf, p, a0, b, regions, values, pbcs, numbers, elements, bits, fb, n_fb)
        elif _is_key(buf, ks, ke, energy_key):
            if seen & 2:
                return -1, 0, n_fb
            seen |= 2
            p, n_fb = _number(buf, p, bits, values, regions[ENERGY] + b, b, fb, n_fb)
        elif _is_key(buf, ks, ke, K_FORCE):
            if seen & 4:
                return -1, 0, n_fb
            seen |= 4
            p, n_force, n_fb = _rows3(buf, p, bits, values, regions[FORCES] + 3 * a0,
                                      regions[FORCES + 1], b, fb, n_fb)
        elif _is_key(buf, ks, ke, K_STRESS):
            if seen & 8:
                return -1, 0, n_fb
            seen |= 8
            if buf[p] == 110:
                p = _literal_end(buf, p)
            else:
                p, rows, n_fb = _rows3(buf, p, bits, values, regions[STRESS] + 9 * b,
                                       regions[STRESS] + 9 * b + 9, b, fb, n_fb)
                if rows != 3:
                    return -1, 0, n_fb
                flags[b] |= 1
        elif _is_key(buf, ks, ke, K_MAGMOM):
            if seen & 16:
                return -1, 0, n_fb
            seen |= 16
            if buf[p] == 110:
                p = _literal_end(buf, p)
            elif buf[p] == 91:
                p = _ws(buf, p + 1)
                n_magmom = 0
                if buf[p] == 93:
                    p += 1
                else:
                    while True:
                        index = regions[MAGMOM] + a0 + n_magmom
                        if index >= regions[MAGMOM + 1]:
                            return -1, 0, n_fb
                        p, n_fb = _number(buf, p, bits, values, index, b, fb, n_fb)
                        if p < 0:
                            return -1, 0, n_fb
                        n_magmom += 1
                        p, closed = _next(buf, p, ARRAY_END)
                        if p < 0:
                            return -1, 0, n_fb
                        if closed:
                            break
                flags[b] |= 2
            else:
                return -1, 0, n_fb
        else:
            p = _value_end(buf, p, bits)
        if p < 0:
            return -1, 0, n_fb
        p, closed = _next(buf, p, OBJECT_END)
        if p < 0:
            return -1, 0, n_fb
        if closed:
            break
    if seen & 7 != 7 or n_force != n_sites or (n_magmom >= 0 and n_magmom != n_sites):
        return -1, 0, n_fb
    if n_site_magmom == n_sites:
        flags[b] |= 4
    return p, n_sites, n_fb


@numba.njit(cache=True, nogil=True)
def _extract(buf, energy_key, elements, regions, values, materials, spans, status, atom_ptr,
             pbcs, flags, numbers, fb):
    """Walk ``"mid": {"fid": record, ...}, ...`` in ``buf`` (which ends with one NUL byte
    past the data, so that no helper reads beyond it). Returns (materials, frames, fallback
    numbers), or -1s if the bytes are not valid JSON of that shape or the outputs are too
    small. ``materials[m]``: (start, end) of each material id; ``spans[b]``: material id,
    frame id and record (start, end) byte offsets."""
    n = buf.shape[0] - 1
    bits = np.zeros(1 + _STACK, dtype=np.uint64)  # parse_number's scratch, then a stack
    # np.int64(0), not 0: a literal 0 passed on would compile every callee a second time
    m = np.int64(0)
    b = np.int64(0)
    a = np.int64(0)
    n_fb = np.int64(0)
    p = _ws(buf, 0)
    while p < n:
        if buf[p] != 34 or m == materials.shape[0]:
            return -1, -1, 0
        mid_start = p + 1
        p, _ = _string_end(buf, p)
        if p < 0:
            return -1, -1, 0
        mid_end = p - 1
        materials[m, 0] = mid_start
        materials[m, 1] = mid_end
        m += 1
        p = _ws(buf, p)
        if p >= n or buf[p] != 58:
            return -1, -1, 0
        p = _ws(buf, p + 1)
        if p >= n or buf[p] != 123:
            return -1, -1, 0  # not an object of frames: the general path reports it
        p = _ws(buf, p + 1)
        if p < n and buf[p] == 125:
            p += 1
        else:
            while True:
                if p >= n or buf[p] != 34 or b == spans.shape[0]:
                    return -1, -1, 0
                fid_start = p + 1
                p, _ = _string_end(buf, p)
                if p < 0:
                    return -1, -1, 0
                fid_end = p - 1
                p = _ws(buf, p)
                if p >= n or buf[p] != 58:
                    return -1, -1, 0
                p = _ws(buf, p + 1)
                record_start = p
                flags[b] = 0
                end, atoms, n_fb_after = _record(buf, p, b, a, energy_key, regions, values,
                                                 pbcs, flags, numbers, elements, bits, fb, n_fb)
                if end < 0:
                    end = _value_end(buf, record_start, bits)
                    if end < 0:
                        return -1, -1, 0
                    status[b] = SLOW
                    atoms = 0
                else:
                    status[b] = OK
                    n_fb = n_fb_after
                spans[b, 0] = mid_start
                spans[b, 1] = mid_end
                spans[b, 2] = fid_start
                spans[b, 3] = fid_end
                spans[b, 4] = record_start
                spans[b, 5] = end
                atom_ptr[b + 1] = atom_ptr[b] + atoms
                a += atoms
                b += 1
                p, closed = _next(buf, end, OBJECT_END)
                if p < 0:
                    return -1, -1, 0
                if closed:
                    break
        p = _ws(buf, p)
        if p < n:
            if buf[p] != 44:
                return -1, -1, 0
            p = _ws(buf, p + 1)
            if p >= n:
                return -1, -1, 0
    return m, b, n_fb


ELEMENTS = _element_table()


@dataclass
class Extracted:
    """Frames of a run of materials as columns (frame b's atoms: ``atom_ptr[b]:atom_ptr[b+1]``).

    ``status[b]`` is OK or SLOW; a SLOW frame has no atoms here and must be parsed the
    general way from its bytes, ``data[record_spans[b, 0]:record_spans[b, 1]]``. Units are
    the source's (stress in kBar, VASP sign).
    """

    material_keys: list[str]  # every material of the run, frames or not, in order
    material_ids: list[str]  # (B,) of each frame
    frame_ids: list[str]
    record_spans: np.ndarray  # (B, 2) byte offsets of each record
    status: np.ndarray  # (B,) OK | SLOW
    atom_ptr: np.ndarray  # (B + 1,)
    energy: np.ndarray  # (B,) eV
    cell: np.ndarray  # (B, 3, 3) Å
    pbc: np.ndarray  # (B, 3) bool
    stress_kbar: np.ndarray  # (B, 3, 3), NaN rows where absent
    has_stress: np.ndarray  # (B,) bool
    magmom_source: np.ndarray  # (B,) 0 none, 1 record list, 2 site properties
    positions: np.ndarray  # (A, 3) Å
    numbers: np.ndarray  # (A,) atomic numbers
    forces: np.ndarray  # (A, 3) eV/Å
    magmom: np.ndarray  # (A,) record-level magmom
    site_magmom: np.ndarray  # (A,) site-property magmom


def _decode_id(data: bytes | memoryview, start: int, end: int) -> str:
    raw = bytes(data[start:end])
    if b"\\" in raw:
        import json
        return json.loads(b'"' + raw + b'"')
    return raw.decode("utf-8")


def extract(data: bytes | memoryview, energy_key: str) -> Extracted | None:
    """Columns of the records in ``data``, or None if ``data`` is not valid JSON of the
    form ``"material_id": {"frame_id": {...}, ...}, ...``, is not UTF-8, or repeats a
    material or frame id (a JSON parser keeps only the last of repeated keys)."""
    try:
        str(data, "utf-8")
    except UnicodeDecodeError:
        return None
    buf = np.empty(len(data) + 1, dtype=np.uint8)
    buf[:-1] = np.frombuffer(data, dtype=np.uint8)
    buf[-1] = 0
    objects = int(np.count_nonzero(buf == 123))  # >= materials, frames and sites
    n_frames, n_atoms = objects, objects
    sizes = np.zeros(END + 1, dtype=np.int64)
    sizes[[ENERGY, CELL, STRESS, POSITIONS, FORCES, MAGMOM, SITE_MAGMOM]] = [
        n_frames, 9 * n_frames, 9 * n_frames, 3 * n_atoms, 3 * n_atoms, n_atoms, n_atoms]
    regions = np.concatenate(([0], np.cumsum(sizes)))[:END + 1]
    values = np.empty(int(regions[END]))  # only what a taken frame wrote is read back
    materials = np.empty((objects, 2), dtype=np.int64)
    spans = np.empty((n_frames, 6), dtype=np.int64)
    status = np.empty(n_frames, dtype=np.int8)
    atom_ptr = np.zeros(n_frames + 1, dtype=np.int64)
    pbcs = np.ones((n_frames, 3), dtype=bool)
    flags = np.zeros(n_frames, dtype=np.int8)
    numbers = np.empty(n_atoms, dtype=np.int16)
    fallback = np.empty((max(16, n_atoms), 4), dtype=np.int64)
    key = np.frombuffer(energy_key.encode(), dtype=np.uint8).copy()
    n_materials, count, n_fb = _extract(buf, key, ELEMENTS, regions, values, materials, spans,
                                        status, atom_ptr, pbcs, flags, numbers, fallback)
    if count < 0:
        return None
    material_keys = [_decode_id(data, s, e) for s, e in materials[:n_materials].tolist()]
    if len(set(material_keys)) != n_materials:
        return None  # a repeated material id: a JSON parser keeps only the last
    spans = spans[:count]
    status = status[:count]
    for index, start, end, frame in fallback[:n_fb].tolist():
        if status[frame] == OK:
            value = float(bytes(data[start:end]))
            values[index] = value
            if not math.isfinite(value):
                status[frame] = SLOW  # the general path reports the non-finite value
    material_ids = [_decode_id(data, s, e) for s, e in spans[:, :2].tolist()]
    frame_ids = [_decode_id(data, s, e) for s, e in spans[:, 2:4].tolist()]
    if len(set(zip(material_ids, frame_ids))) != count:
        return None  # a frame id repeated within its material
    n_used = int(atom_ptr[count])

    def region(r: int, size: int) -> np.ndarray:
        return values[regions[r]:regions[r] + size]

    flags = flags[:count]
    has_stress = (flags & 1) != 0
    stress = region(STRESS, 9 * count).reshape(count, 3, 3)
    stress[~has_stress] = np.nan
    magmom_source = np.where(flags & 2, 1, np.where(flags & 4, 2, 0)).astype(np.int8)
    return Extracted(
        material_keys=material_keys, material_ids=material_ids, frame_ids=frame_ids,
        record_spans=spans[:, 4:6],
        status=status, atom_ptr=atom_ptr[:count + 1], energy=region(ENERGY, count),
        cell=region(CELL, 9 * count).reshape(count, 3, 3), pbc=pbcs[:count],
        stress_kbar=stress, has_stress=has_stress, magmom_source=magmom_source,
        positions=region(POSITIONS, 3 * n_used).reshape(-1, 3),
        numbers=numbers[:n_used].astype(np.int64),
        forces=region(FORCES, 3 * n_used).reshape(-1, 3),
        magmom=region(MAGMOM, n_used), site_magmom=region(SITE_MAGMOM, n_used))
