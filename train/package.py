"""``orbitgraph package``: a model file that travels, and optionally an exported program.

From a training run's ``checkpoint.pt`` or ``best.pt`` (or a model file), with the weights
asked for (:func:`orbitgraph.train.weights.load_potential`: by default those validation
used), it writes

* a model file (``--out``, :func:`orbitgraph.model.save_model`): the weights of one set,
  the model config, the graph parameters, the E0s per element (eV), the dtype, the units,
  which weights (``ema`` or ``raw``), the chemical symbols of the training frames, the
  file it came from and, for a model trained on several datasets, their records
  (``datasets``: name, store id, weight, E0 shift per element in eV/atom; see
  :func:`orbitgraph.train.checkpointing.dataset_records`), so that
  ``OrbitCalculator(file, dataset=NAME)`` predicts on a dataset's energy reference as the
  checkpoint does; all plain data and tensors: it loads with
  ``torch.load(weights_only=True)``, and :func:`orbitgraph.load_model` rebuilds the eager
  :class:`~orbitgraph.model.Potential` from it without the training code;
* with ``program``, an exported program (``.pt2``, :mod:`orbitgraph.model.program`): the
  potential's atomic energies as a ``torch.export`` program with the same metadata (the
  dataset records too: a program loaded by the calculator or torch-sim model takes the
  same ``dataset=``). Before
  it is written, its energies, forces and stress on structures of other sizes than the
  export example are compared with the eager model's, and a difference beyond
  :data:`TOLERANCE` is an error (nothing is written).

The name follows nequip's ``nequip-package`` (a trained model in one deployable file);
``orbitgraph export`` already writes a store's frames to extended XYZ.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers

from orbitgraph.errors import InputError
from orbitgraph.model import model_metadata, read_checkpoint, save_model
from orbitgraph.model.program import export_program, load_program, save_program
from orbitgraph.preprocess.graph_params import graph_for_model
from orbitgraph.train.collate import batch_from_structures
from orbitgraph.train.weights import load_potential

# largest |program - eager| / max |eager| of energy, forces and stress accepted per dtype:
# the program runs the eager model's operations on the same numbers (equal to the last bit
# on the CPU in the tests); float32 leaves room for a reordered sum over ~100 terms (eps
# 1.2e-7)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@dataclass(frozen=True)
class Packaged:
    """What :func:`package_model` wrote: the model file, the program (or None), which
    weights, in words, the dtype, and the program's largest relative difference from the
    eager model on the check structures (None without a program)."""

    model_file: Path
    program: Path | None
    weights: str
    dtype: torch.dtype
    program_difference: float | None


def example_structures(numbers: list[int], sizes: tuple[int, ...], seed: int = 0) -> list:
    """Jittered simple-cubic crystals, one per size: (cell (3, 3) Å, positions (n, 3) Å,
    atomic numbers (n,) drawn from ``numbers``), about 2.4 Å between neighbours, in skewed
    (non-orthogonal) cells: inputs for tracing and checking a program."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        m = int(np.ceil(n ** (1 / 3)))
        grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
        frac = (grid + 0.5 + rng.uniform(-0.1, 0.1, (n, 3))) / m
        cell = np.eye(3) * 2.4 * m + rng.normal(0, 0.2, (3, 3))
        out.append((cell, frac @ cell, rng.choice(numbers, n)))
    return out


def relative_difference(got: dict, want: dict) -> float:
    """Largest |got - want| / max |want| over energy, forces and stress (max |want| floored
    at 1e-12: forces of one atom are 0)."""
    return max(float((got[key] - want[key]).detach().abs().max()
                     / want[key].detach().abs().max().clamp(min=1e-12))
               for key in ("energy", "forces", "stress"))


def package_model(checkpoint: str | Path, out: str | Path, program: str | Path | None = None,
                  weights: str | None = None, dtype: torch.dtype | None = None) -> Packaged:
    """Write the model file ``out`` (and, with ``program``, the exported program there,
    its name ending in ``.pt2``) of the model in ``checkpoint``, with its ``weights``
    (``ema``, ``raw`` or None: those validation used), in ``dtype`` (None: that of the
    checkpoint's weights; float64 for forces and stress to float64 precision).

    Raises what :func:`~orbitgraph.train.weights.load_potential` raises (MissingFileError,
    InputError naming the file, ConfigError), InputError for a program name without
    ``.pt2``, and RuntimeError (a defect of the export, not the user's doing) where the
    program's results differ from the eager model's beyond :data:`TOLERANCE` (then no
    program is written)."""
    checkpoint, out = Path(checkpoint), Path(out)
    saved = load_potential(checkpoint, weights=weights, dtype=dtype)
    model = saved.model.eval()
    ckpt = read_checkpoint(checkpoint)
    step = ckpt["state"]["step"] if "state" in ckpt else ckpt.get("step")
    extra = {"graph": saved.graph.to_dict(), "trained_elements": saved.trained_elements,
             "weights": saved.kind, "weights_said": saved.weights,
             "source": str(checkpoint), "step": step, "store_id": ckpt.get("store_id"),
             "datasets": saved.datasets}
    difference = None
    if program is not None:
        program = Path(program)
        exported, difference = _exported(model, saved, program)
        save_program(exported, program, {**model_metadata(model), **extra,
                                         "k": _graph(model, saved.graph).k})
    save_model(model, out, extra=extra)
    the_dtype = next(model.parameters()).dtype
    return Packaged(out, program, saved.weights, the_dtype, difference)


def _graph(model, graph):
    """The graph parameters the calculator builds each structure's graph with."""
    return graph_for_model(graph, None, model.config.rank_envelope,
                           model.config.rank_envelope_width)


def _exported(model, saved, path: Path):
    """The exported program of ``model`` and its largest relative difference from the eager
    model on structures of other sizes than the export example, checked."""
    if path.suffix != ".pt2":  # before minutes of tracing
        raise InputError(f"{path}: an exported program's file name ends in .pt2 "
                         "(torch.export reads no other)")
    graph = _graph(model, saved.graph)
    dtype = next(model.parameters()).dtype
    elements = saved.trained_elements or []
    numbers = [atomic_numbers[s] for s in elements] or [
        z for z, e in model_metadata(model)["atomic_energies"].items()] or [1]
    example = batch_from_structures(example_structures(numbers, (4, 6)), graph).to(
        dtype=dtype)
    exported = export_program(model, example)
    # checked through a save and load, as a user gets it, on other sizes: one frame of one
    # atom (sizes 0 and 1 are where a traced program may have kept the example's), and
    # three frames of 2, 3 and 9 atoms
    checks = [batch_from_structures(example_structures(numbers, sizes, seed=1), graph).to(
        dtype=dtype) for sizes in ((1,), (2, 3, 9))]
    with tempfile.TemporaryDirectory() as tmp:
        save_program(exported, Path(tmp) / "check.pt2", {
            **model_metadata(model), "graph": saved.graph.to_dict(), "k": graph.k})
        loaded = load_program(Path(tmp) / "check.pt2")
        try:
            difference = max(relative_difference(loaded(check), model(check))
                             for check in checks)
        except RuntimeError as err:  # a size the trace fixed: torch's runtime assertion
            raise RuntimeError(f"{path}: the exported program fails on a batch of another "
                               f"size ({str(err).splitlines()[0]}); not written") from err
    if not difference <= TOLERANCE[dtype]:
        raise RuntimeError(f"{path}: the exported program's energy, forces or stress "
                                   f"differ from the eager model's by {difference:.3g} "
                                   f"(relative; accepted: {TOLERANCE[dtype]:g} in {dtype}); "
                                   "not written")
    return exported, difference
