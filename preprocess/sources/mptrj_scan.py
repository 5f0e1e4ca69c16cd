"""Where each material of an MPtrj JSON file lies: byte ranges without parsing.

The published file is one object, ``{material_id: {frame_id: record, ...}, ...}``, of about
12 GB. JSON libraries give values, not where they lie, so one compiled pass over the bytes
(fed in chunks, in order) tracks just enough state to find every material entry: the
nesting depth, and whether it is inside a string (and just after a backslash there).

* A string opened at depth 1 is a material id: the entry starts at its opening quote.
* A string opened at depth 2 is a frame id: the entry holds one more frame.
* A bracket closing back to depth 1 ends the entry (one past it).

Brackets and quotes inside strings are text, not structure. Nothing else is checked: the
reader decodes each entry and reports any that is not valid JSON.
"""
from __future__ import annotations

import numba
import numpy as np

from orbitgraph.errors import InputError

# slots of the state carried from one chunk to the next
DEPTH, IN_STRING, ESCAPE, START, FRAMES = range(5)

QUOTE, BACKSLASH = 34, 92
OPENERS = (123, 91)  # { [
CLOSERS = (125, 93)  # } ]


@numba.njit(cache=True, nogil=True)
def _scan(buf, base, state, starts, ends, frames):
    """Scan ``buf`` (bytes at absolute offset ``base``) and append the materials that end
    in it to ``starts``, ``ends``, ``frames``.

    Returns how many were appended; if the outputs fill up first, ``-(p + 1)`` where ``p``
    is the offset in ``buf`` to call again from (the byte at ``p`` not yet consumed).
    Returns early, leaving ``state[DEPTH] < 0``, at a bracket that closes nothing.
    """
    n_out = 0
    depth = state[DEPTH]
    in_string = state[IN_STRING]
    escape = state[ESCAPE]
    for p in range(buf.shape[0]):
        c = buf[p]
        if in_string:
            if escape:
                escape = 0
            elif c == BACKSLASH:
                escape = 1
            elif c == QUOTE:
                in_string = 0
            continue
        if c == QUOTE:
            in_string = 1
            if depth == 1:
                state[START] = base + p
                state[FRAMES] = 0
            elif depth == 2:
                state[FRAMES] += 1
        elif c == OPENERS[0] or c == OPENERS[1]:
            depth += 1
        elif c == CLOSERS[0] or c == CLOSERS[1]:
            if depth == 2:  # this closes a material's entry
                if n_out == starts.shape[0]:
                    state[DEPTH] = depth
                    state[IN_STRING] = in_string
                    state[ESCAPE] = escape
                    return -(p + 1)
                starts[n_out] = state[START]
                ends[n_out] = base + p + 1
                frames[n_out] = state[FRAMES]
                n_out += 1
            depth -= 1
            if depth < 0:
                break
    state[DEPTH] = depth
    state[IN_STRING] = in_string
    state[ESCAPE] = escape
    return n_out


class MaterialScanner:
    """Feed the file's bytes in order; get ``(start, end, n_frames)`` of every material
    entry that ends in them (``start`` at the id's opening quote, ``end`` one past the
    entry's closing brace, offsets from the first byte fed)."""

    def __init__(self, cap: int = 1 << 16):
        self.state = np.zeros(5, dtype=np.int64)
        self.offset = 0  # bytes fed so far
        self._starts = np.empty(cap, np.int64)
        self._ends = np.empty(cap, np.int64)
        self._frames = np.empty(cap, np.int64)

    def feed(self, data: bytes) -> list[tuple[int, int, int]]:
        buf = np.frombuffer(data, dtype=np.uint8)
        out: list[tuple[int, int, int]] = []
        pos = 0
        while pos < buf.shape[0]:
            n = _scan(buf[pos:], self.offset + pos, self.state, self._starts, self._ends,
                      self._frames)
            count = self._starts.shape[0] if n < 0 else n
            pos = pos - n - 1 if n < 0 else buf.shape[0]
            out.extend(zip(self._starts[:count].tolist(), self._ends[:count].tolist(),
                           self._frames[:count].tolist(), strict=True))
            if self.state[DEPTH] < 0:
                raise InputError(f"MPtrj JSON: unbalanced closing bracket near byte "
                                 f"{self.offset + pos}")
        self.offset += buf.shape[0]
        return out

    def finish(self, path: str) -> None:
        """Raise InputError if the bytes fed end inside a value (a truncated file)."""
        if self.state[DEPTH] != 0 or self.state[IN_STRING]:
            raise InputError(f"{path}: the JSON ends inside a value at byte {self.offset} "
                             "(truncated file?)")
