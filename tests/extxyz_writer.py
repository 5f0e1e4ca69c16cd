"""Extended XYZ text written by hand, so that tests control every key name and value
(ASE's writer renames and reshapes some of them)."""
from __future__ import annotations

import numpy as np


def _numbers(values) -> str:
    return " ".join(repr(float(x)) for x in np.ravel(values))


def frame_text(symbols, positions, cell, info: dict | None = None,
               columns: dict | None = None, pbc=(True, True, True)) -> str:
    """One frame. ``info``: per-frame key -> number, string or array (written quoted,
    row-major); ``columns``: per-atom name -> (N,) or (N, 3) floats; ``cell`` rows are the
    lattice vectors (Å)."""
    positions = np.asarray(positions, dtype=np.float64)
    columns = columns or {}
    props = "species:S:1:pos:R:3" + "".join(
        f":{name}:R:{1 if np.ndim(a) == 1 else np.shape(a)[1]}" for name, a in columns.items())
    parts = [f'Lattice="{_numbers(cell)}"', f"Properties={props}"]
    for key, value in (info or {}).items():
        if isinstance(value, str):
            parts.append(f"{key}={value}")
        elif np.ndim(value) == 0:
            parts.append(f"{key}={float(value)!r}")
        else:
            parts.append(f'{key}="{_numbers(value)}"')
    parts.append(f'pbc="{" ".join("T" if p else "F" for p in pbc)}"')
    lines = [str(len(symbols)), " ".join(parts)]
    for i, symbol in enumerate(symbols):
        row = [symbol, _numbers(positions[i])]
        row += [_numbers(np.asarray(a, dtype=np.float64)[i]) for a in columns.values()]
        lines.append(" ".join(row))
    return "\n".join(lines) + "\n"


def nacl(shift: float = 0.0, a: float = 5.64) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(symbols, positions, cell): a 2-atom NaCl-like cell, the Cl atom moved by ``shift`` Å."""
    cell = np.array([[0.0, a / 2, a / 2], [a / 2, 0.0, a / 2], [a / 2, a / 2, 0.0]])
    positions = np.array([[0.0, 0.0, 0.0], [a / 2 + shift, 0.1, -0.05]])
    return ["Na", "Cl"], positions, cell
