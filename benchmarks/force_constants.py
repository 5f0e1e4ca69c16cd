"""Force constants of a fidelity student against its teacher, by displacement size: where
do phonon errors come from?

usage: python benchmarks/force_constants.py MODEL [--teacher chgnet] [--system CaO]
           [--displacements 0.015,0.05,0.1] [--threads 1]

MODEL is a student checkpoint of ``benchmarks/fidelity.py`` (e.g.
``benchmarks/_out/fidelity-chgnet-b/CaO/race2/run/best.pt``). The system's cubic cell is
relaxed by the teacher (FIRE on positions and cell, FrechetCellFilter, fmax 1e-3 eV/Å),
repeated as the fidelity benchmark repeats it, and in that perfect supercell the first atom
of each element is moved along x by each displacement d (Å). For teacher and student alike:
ΔF = F(displaced) − F(perfect) (eV/Å, every atom), its relative error
‖ΔF_student − ΔF_teacher‖ / ‖ΔF_teacher‖, and the on-site force constant −ΔF_ix / d
(eV/Å²). Phonopy's finite differences (matcalc: d = 0.015 Å) see the smallest d; a
student whose error shrinks as d grows has the forces of its training displacements right
and the curvature at equilibrium wrong (phonon frequencies go as the square root of the
force constants).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import (  # noqa: E402
    SYSTEMS,
    make_teacher,
    relaxed_cell,
    student_calculator,
    supercell_reps,
)


def forces(calc, atoms) -> np.ndarray:
    """Forces (N, 3) eV/Å of a copy of ``atoms`` through ``calc``."""
    a = atoms.copy()
    a.calc = calc
    return a.get_forces()


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the student's checkpoint (best.pt or a packaged model)")
    ap.add_argument("--teacher", choices=("emt", "chgnet"), default="chgnet")
    ap.add_argument("--system", default="CaO", choices=sorted(SYSTEMS))
    ap.add_argument("--displacements", default="0.015,0.05,0.1", help="Å, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    teacher, student = make_teacher(args.teacher), student_calculator(Path(args.model))
    cell = relaxed_cell(SYSTEMS[args.system].build(), teacher)
    perfect = cell.repeat(supercell_reps(cell))
    f0 = {"teacher": forces(teacher, perfect), "student": forces(student, perfect)}
    print(f"{args.system}: a = {cell.cell.lengths()[0]:.4f} Å (teacher), {len(perfect)} atoms; "
          f"largest force in the perfect cell: teacher {abs(f0['teacher']).max():.1e}, "
          f"student {abs(f0['student']).max():.1e} eV/Å")
    print(f"{'atom':>4} {'d, Å':>6} {'|ΔF| teacher':>13} {'rel. error ΔF':>14} "
          f"{'k teacher':>10} {'k student':>10} {'k error':>8}   (k: eV/Å²)")
    rows = []
    firsts = {s: i for i, s in reversed(list(enumerate(perfect.get_chemical_symbols())))}
    for symbol, i in sorted(firsts.items(), key=lambda kv: kv[1]):
        for d in (float(x) for x in args.displacements.split(",")):
            moved = perfect.copy()
            moved.positions[i, 0] += d
            df = {who: forces(calc, moved) - f0[who]
                  for who, calc in (("teacher", teacher), ("student", student))}
            rel = float(np.linalg.norm(df["student"] - df["teacher"])
                        / np.linalg.norm(df["teacher"]))
            k_t, k_s = -df["teacher"][i, 0] / d, -df["student"][i, 0] / d
            rows.append({"atom": symbol, "d_A": d, "dF_rel_error": rel, "k_teacher": k_t,
                         "k_student": k_s})
            print(f"{symbol:>4} {d:6.3f} {np.linalg.norm(df['teacher']):13.3f} {rel:14.3f} "
                  f"{k_t:10.2f} {k_s:10.2f} {k_s / k_t - 1:+8.1%}")
    return rows


if __name__ == "__main__":
    main()
