"""JSON numbers to float64 in compiled code, bit for bit what Python's ``float()`` gives.

The MPtrj file is mostly numbers (about 350 per frame, most printed with 17 significant
digits by Python's ``repr``). Reading them through Python objects costs more than building
the graphs, so :mod:`preprocess.sources.mptrj_extract` parses them here, straight from the
bytes:

* the JSON number grammar is checked (``-?(0|[1-9]\\d*)(\\.\\d+)?([eE][+-]?\\d+)?``);
* up to 19 significant digits and a decimal exponent are read exactly;
* Clinger's fast path (mantissa <= 2^53, |exponent| <= 22: one correctly rounded IEEE
  multiplication or division of exact operands) covers short numbers;
* otherwise the Eisel–Lemire algorithm (D. Lemire, "Number parsing at a gigabyte per
  second", Software: Practice and Experience 51, 2021) multiplies by a 128-bit truncation
  of 5^q and rounds to nearest-even, which is exact whenever it does not report failure.

Every case the fast routes cannot prove exact — more than 19 significant digits, results
in the subnormal range or beyond the largest double, the rare ambiguous product — is
reported as ``INEXACT`` and converted by the caller with Python's ``float()``.
"""
from __future__ import annotations

import numba
import numpy as np

# parse status
OK = 0
INEXACT = 1  # a valid number the caller must convert with float()
BAD = -1  # not a JSON number

_SMALLEST_POWER = -342  # below: the value rounds to zero
_LARGEST_POWER = 308  # above: the value overflows
_MASK32 = np.uint64(0xFFFFFFFF)
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def _power_of_five_table() -> tuple[np.ndarray, np.ndarray]:
    """High and low 64-bit words of 5^q scaled into [2^127, 2^128), q = -342 ... 308.

    For q >= 0 the value is truncated; for q < 0 it is the reciprocal rounded up (the
    construction of Lemire's paper, computed here with Python's exact integers).
    """
    hi, lo = [], []
    for q in range(_SMALLEST_POWER, _LARGEST_POWER + 1):
        if q >= 0:
            v = 5 ** q
            while v < 1 << 127:
                v <<= 1
            while v >= 1 << 128:
                v >>= 1
        else:
            p5 = 5 ** -q
            z = p5.bit_length() if p5 & (p5 - 1) else p5.bit_length() - 1  # ceil(log2(p5))
            b = z + 127 if q >= -27 else 2 * z + 128
            v = (1 << b) // p5 + 1
            while v >= 1 << 128:
                v >>= 1
        hi.append(v >> 64)
        lo.append(v & ((1 << 64) - 1))
    return np.array(hi, dtype=np.uint64), np.array(lo, dtype=np.uint64)


POW5_HI, POW5_LO = _power_of_five_table()
_EXACT_POWERS_OF_TEN = np.array([10.0 ** e for e in range(23)])  # exact doubles


@numba.njit(cache=True)
def _mul128(a, b):
    """(high, low) 64-bit words of the 128-bit product of two uint64."""
    a_lo = a & _MASK32
    a_hi = a >> np.uint64(32)
    b_lo = b & _MASK32
    b_hi = b >> np.uint64(32)
    p0 = a_lo * b_lo
    p1 = a_lo * b_hi
    p2 = a_hi * b_lo
    p3 = a_hi * b_hi
    mid = (p0 >> np.uint64(32)) + (p1 & _MASK32) + (p2 & _MASK32)
    low = (mid << np.uint64(32)) | (p0 & _MASK32)
    high = p3 + (p1 >> np.uint64(32)) + (p2 >> np.uint64(32)) + (mid >> np.uint64(32))
    return high, low


@numba.njit(cache=True)
def _leading_zeros(w):
    n = 0
    for step in (32, 16, 8, 4, 2, 1):
        if w >> np.uint64(64 - step) == np.uint64(0):
            w = w << np.uint64(step)
            n += step
    return n


@numba.njit(cache=True)
def _eisel_lemire(w, q, pow5_hi, pow5_lo):
    """IEEE bits (without sign) of w * 10^q as uint64; 0 when the product cannot decide
    or the result is subnormal or infinite (the caller then falls back to ``float()``)."""
    lz = _leading_zeros(w)
    w = w << np.uint64(lz)
    index = q - _SMALLEST_POWER
    high, low = _mul128(w, pow5_hi[index])
    if (high & np.uint64(0x1FF)) == np.uint64(0x1FF):  # the low bits may carry: refine
        high2, low2 = _mul128(w, pow5_lo[index])
        new_low = low + high2
        if new_low < low:
            high += np.uint64(1)
        low = new_low
    if low == _ALL_ONES and (q < -27 or q > 55):
        return np.uint64(0)  # ambiguous: let the exact path decide
    upper = int(high >> np.uint64(63))
    shift = np.uint64(upper + 9)
    mantissa = high >> shift
    power2 = (((152170 + 65536) * q) >> 16) + 63 + upper - lz + 1023
    if power2 <= 0:
        return np.uint64(0)  # subnormal
    if (low <= np.uint64(1) and -4 <= q <= 23
            and (mantissa & np.uint64(3)) == np.uint64(1)
            and (mantissa << shift) == high):
        mantissa &= ~np.uint64(1)  # exactly halfway: round to even
    mantissa += mantissa & np.uint64(1)
    mantissa >>= np.uint64(1)
    if mantissa >= np.uint64(1) << np.uint64(53):
        mantissa = np.uint64(1) << np.uint64(52)
        power2 += 1
    mantissa &= ~(np.uint64(1) << np.uint64(52))
    if power2 >= 0x7FF:
        return np.uint64(0)  # overflow
    return mantissa | (np.uint64(power2) << np.uint64(52))


@numba.njit(cache=True)
def parse_number(buf, p, bits):
    """Parse the JSON number starting at ``buf[p]``.

    Returns ``(end, value, status)``: ``end`` one past the number, ``status`` OK (``value``
    is exact), INEXACT (valid, but convert ``buf[p:end]`` with ``float()``) or BAD.
    ``bits`` is a uint64 scratch array; its element 0 carries IEEE bits to a float64.
    """
    n = buf.shape[0]
    negative = False
    if p < n and buf[p] == 45:  # -
        negative = True
        p += 1
    if p >= n or not 48 <= buf[p] <= 57:
        return p, 0.0, BAD
    w = np.uint64(0)
    first_digit = p
    if buf[p] == 48:  # a leading 0 stands alone
        p += 1
    else:
        while p < n and 48 <= buf[p] <= 57:
            w = w * np.uint64(10) + np.uint64(buf[p] - 48)
            p += 1
    digits = p - first_digit
    exponent = 0
    if p < n and buf[p] == 46:  # .
        p += 1
        fraction_start = p
        while p < n and 48 <= buf[p] <= 57:
            w = w * np.uint64(10) + np.uint64(buf[p] - 48)
            p += 1
        if p == fraction_start:
            return p, 0.0, BAD
        digits += p - fraction_start
        exponent = fraction_start - p
    if p < n and (buf[p] == 101 or buf[p] == 69):  # e E
        p += 1
        exp_negative = False
        if p < n and (buf[p] == 43 or buf[p] == 45):
            exp_negative = buf[p] == 45
            p += 1
        exp_start = p
        e = 0
        while p < n and 48 <= buf[p] <= 57:
            if e < 100000:
                e = e * 10 + (buf[p] - 48)
            p += 1
        if p == exp_start:
            return p, 0.0, BAD
        exponent += -e if exp_negative else e
    if p < n and (48 <= buf[p] <= 57 or buf[p] == 46):
        return p, 0.0, BAD  # e.g. "01" or "1.2.3"
    if digits > 19:  # leading zeros (0.000...) are not significant
        for c in range(first_digit, p):
            if buf[c] == 48:
                digits -= 1
            elif buf[c] != 46:
                break
        if digits > 19:
            return p, 0.0, INEXACT
    if w == np.uint64(0):
        return p, -0.0 if negative else 0.0, OK
    if -22 <= exponent <= 22 and w <= np.uint64(1) << np.uint64(53):
        value = float(w)
        if exponent < 0:
            value = value / _EXACT_POWERS_OF_TEN[-exponent]
        else:
            value = value * _EXACT_POWERS_OF_TEN[exponent]
        return p, -value if negative else value, OK
    if exponent < _SMALLEST_POWER or exponent > _LARGEST_POWER:
        return p, 0.0, INEXACT
    ieee = _eisel_lemire(w, exponent, POW5_HI, POW5_LO)
    if ieee == np.uint64(0):
        return p, 0.0, INEXACT
    bits[0] = ieee
    value = bits.view(np.float64)[0]
    return p, -value if negative else value, OK
