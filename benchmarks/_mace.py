"""mace-torch in its own virtual environment, for the benchmarks that race it.

mace-torch 0.3.16 pins e3nn 0.4.4 (orbitgraph needs e3nn >= 0.5), so it lives in
benchmarks/_out/mace-venv, created on first use (pip install torch==2.13.0
mace-torch==0.3.16), and runs as a subprocess; e3nn 0.4.4 needs
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 on torch >= 2.6 (its constants file is a pickled slice).

Import this module before ``_common`` (which drops the benchmarks folder from the path).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / "_out" / "mace-venv"
MACE_VERSION = "0.3.16"


def mace_python() -> Path:
    """The venv's interpreter, the venv made first if missing."""
    py = VENV / "bin" / "python"
    if not py.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0",
                        f"mace-torch=={MACE_VERSION}"], check=True)
    return py


def mace_env(threads: int | None = None) -> dict[str, str]:
    """The environment mace-torch's processes need (and a CPU thread count, if given)."""
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_mace(script: str, *args: str, threads: int | None = None) -> str:
    """Run ``script`` (Python source) in the venv; its stdout, or SystemExit with its
    stderr's tail."""
    proc = subprocess.run([str(mace_python()), "-c", script, *args], capture_output=True,
                          text=True, env=mace_env(threads))
    if proc.returncode != 0:
        raise SystemExit(f"mace-torch run failed:\n{proc.stderr[-4000:]}")
    return proc.stdout
