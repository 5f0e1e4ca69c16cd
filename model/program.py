"""Exported programs: a potential's atomic energies as a ``torch.export`` program in one
``.pt2`` file, runnable without orbitgraph's model code, and the module that turns them
into energy, forces and stress.

What is exported is the map from one batch's tensors to atomic energies,

    (numbers, positions, cell, batch, centers, neighbors, unit_shifts, rank_neighbor,
     rank_unit_shift)  ->  atomic_energies (N,) eV

(:data:`PROGRAM_INPUTS`; shapes and units those of :class:`orbitgraph.model.batch.Batch`,
positions and cell already strained), with the number of atoms N, edges E and frames B
symbolic: one program serves structures of any size. Forces and stress are taken by
autograd through the loaded program, outside it, by the code that differentiates the eager
potential (:func:`orbitgraph.model.potential.energy_and_derivatives`), so a program's
energy, forces and stress are those of the eager model (same operations on the same
numbers: equal to the last bit on the CPU in the tests). ``torch.export`` does not export
``torch.autograd.grad`` inside the program (torch 2.13 refuses with "We found a fake tensor
in the exported program constant's list"), hence the derivatives outside.

The graph's k is a constant of the program (the graphs it is fed must have been built with
it); the graph's rules (``graph`` in the metadata, :class:`GraphParams` as plain data) are
not in the program: the calculator builds each graph with them before calling it.

The archive also holds ``extra/orbitgraph.json`` (:data:`METADATA_FILE`): the format
version, the model config, graph parameters, E0s, dtype, units, the chemical symbols of the
training frames and which weights (EMA or raw) were exported; a reader needs nothing else.
A program holds its operations with its weights, so one of an older format (1: the species
projections as ``nn.Linear``) runs as it was exported: the format changes of
:mod:`orbitgraph.model.checkpoint` need no conversion here.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from torch import nn

from orbitgraph.errors import ConfigError, InputError, MissingFileError
from orbitgraph.model.batch import Batch
from orbitgraph.model.checkpoint import FORMAT_VERSION, check_format_version
from orbitgraph.model.config import ModelConfig
from orbitgraph.model.potential import FLOAT_DTYPES, Potential, energy_and_derivatives
from orbitgraph.model.scatter import scatter_sum

# the program's inputs, in order (Batch's fields of the same names)
PROGRAM_INPUTS = ("numbers", "positions", "cell", "batch", "centers", "neighbors",
                  "unit_shifts", "rank_neighbor", "rank_unit_shift")
METADATA_FILE = "orbitgraph.json"  # in the archive's extra/ folder
SUFFIX = ".pt2"  # torch.export.load reads no other file name


class AtomicEnergies(nn.Module):
    """The module exported: ``potential``'s atomic energies (N,) eV from the tensors of
    :data:`PROGRAM_INPUTS`, for graphs built with ``k`` neighbours."""

    def __init__(self, potential: Potential, k: int):
        super().__init__()
        self.potential = potential
        self.k = int(k)

    def forward(self, numbers, positions, cell, batch, centers, neighbors, unit_shifts,
                rank_neighbor, rank_unit_shift) -> torch.Tensor:
        # atoms per frame, as a scatter (the potential does not read it; bincount's length
        # would depend on the data)
        n_atoms = scatter_sum(torch.ones_like(batch), batch, cell.shape[0])
        flat = Batch(numbers=numbers, positions=positions, cell=cell, batch=batch,
                     n_atoms=n_atoms, centers=centers, neighbors=neighbors,
                     unit_shifts=unit_shifts, rank_neighbor=rank_neighbor,
                     rank_unit_shift=rank_unit_shift, k=self.k)
        return self.potential.atomic_energies(flat, positions, cell)


def program_inputs(batch: Batch) -> tuple[torch.Tensor, ...]:
    """``batch``'s tensors in the order of :data:`PROGRAM_INPUTS`."""
    return tuple(getattr(batch, name) for name in PROGRAM_INPUTS)


def export_program(potential: Potential, example: Batch) -> torch.export.ExportedProgram:
    """``torch.export`` of ``potential``'s atomic energies (:class:`AtomicEnergies`), traced
    on ``example`` (a batch in the potential's dtype and on its device, with at least 2
    frames, 2 atoms and 2 edges: torch.export takes sizes of 0 and 1 for constants) with
    the numbers of atoms, edges and frames symbolic. The potential is put in eval mode.

    Raises ValueError for a smaller example; torch.export's own errors for a potential it
    cannot trace."""
    if example.n_frames < 2 or example.numbers.shape[0] < 2 or example.n_edges < 2:
        raise ValueError("export_program: the example batch needs at least 2 frames, 2 atoms "
                         "and 2 edges, so that no size is taken for a constant")
    module = AtomicEnergies(potential.eval(), example.k)
    atoms = torch.export.Dim("atoms", min=1)
    edges = torch.export.Dim("edges", min=1)
    frames = torch.export.Dim("frames", min=1)
    per = {"numbers": atoms, "positions": atoms, "cell": frames, "batch": atoms,
           "centers": edges, "neighbors": edges, "unit_shifts": edges,
           "rank_neighbor": atoms, "rank_unit_shift": atoms}
    shapes = tuple({0: per[name]} for name in PROGRAM_INPUTS)
    return torch.export.export(module, program_inputs(example), dynamic_shapes=shapes)


def _check_suffix(path: Path) -> None:
    if path.suffix != SUFFIX:
        raise InputError(f"{path}: an exported program's file name ends in {SUFFIX} "
                         "(torch.export reads no other)")


def save_program(program: torch.export.ExportedProgram, path: str | Path,
                 metadata: dict) -> None:
    """Write ``program`` to ``path`` (ending in ``.pt2``) with ``metadata`` (plain,
    JSON-serialisable data: :func:`orbitgraph.model.model_metadata`, ``graph``, ``k``,
    ``weights``, ...) and ``format_version`` as ``extra/orbitgraph.json``; written beside
    it, then renamed over it. Raises InputError for another suffix."""
    path = Path(path)
    _check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**metadata, "format_version": FORMAT_VERSION, "inputs": list(PROGRAM_INPUTS),
            "outputs": ["atomic_energies"]}
    tmp = path.with_name(path.stem + ".tmp" + SUFFIX)
    torch.export.save(program, tmp, extra_files={METADATA_FILE: json.dumps(meta)})
    tmp.replace(path)


def is_program(path: str | Path) -> bool:
    """Whether ``path`` is a ``torch.export`` archive (a zip holding ``archive_format``; a
    ``torch.save`` file is a zip too, holding ``data.pkl`` instead)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/archive_format") or name == "archive_format"
                   for name in archive.namelist())


def read_program_metadata(path: str | Path) -> dict:
    """The metadata of the program at ``path`` (``extra/orbitgraph.json``), E0s with
    integer keys. Raises MissingFileError for a missing file and InputError, naming it,
    for a file that is no orbitgraph program or of a newer format version."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such exported program")
    if not is_program(path):
        raise InputError(f"{path}: not a torch.export archive")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(f"extra/{METADATA_FILE}")]
        if not names:
            raise InputError(f"{path}: a torch.export archive without extra/{METADATA_FILE}: "
                             "not an orbitgraph program (orbitgraph package writes them)")
        try:
            meta = json.loads(archive.read(names[0]))
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: extra/{METADATA_FILE} is not JSON ({err})") from None
    check_format_version(path, meta.get("format_version", 0))
    missing = [key for key in ("model_config", "graph", "k", "dtype") if key not in meta]
    if missing:
        raise InputError(f"{path}: extra/{METADATA_FILE} has no {missing[0]!r}")
    meta["atomic_energies"] = {int(z): e for z, e in meta.get("atomic_energies", {}).items()}
    return meta


class ExportedPotential(nn.Module):
    """A loaded program, called as a :class:`Potential` is: ``model(batch, forces=True,
    stress=True)`` returns ``energy`` (B,) eV, ``atomic_energies`` (N,) eV, ``forces``
    (N, 3) eV/Å and ``stress`` (B, 3, 3) eV/Å³ (ASE sign) as asked, the derivatives by
    autograd through the program.

    Attributes: ``config`` (the :class:`ModelConfig` it was exported from, for the graph
    rules its rank envelope needs), ``metadata`` (:func:`read_program_metadata`), ``dtype``,
    ``k``. The program runs in its dtype: ``.to(dtype=...)`` to another raises ConfigError;
    ``.to(device)`` moves it (``torch.export.passes.move_to_device_pass``)."""

    def __init__(self, program: torch.export.ExportedProgram, metadata: dict):
        super().__init__()
        self.metadata = metadata
        self.config = ModelConfig.from_dict(metadata["model_config"])
        self.dtype = getattr(torch, metadata["dtype"])
        self.k = int(metadata["k"])
        self._program = program
        self.program = program.module()

    def atomic_energies(self, batch: Batch, positions: torch.Tensor,
                        cell: torch.Tensor) -> torch.Tensor:
        """(N,) eV from positions (N, 3) Å and cell (B, 3, 3) Å (as
        :meth:`Potential.atomic_energies`). Raises InputError for graphs of another k."""
        if batch.k != self.k:
            raise InputError(f"exported program: graphs built with k={batch.k}; this program "
                             f"takes k={self.k} (build them with its graph parameters)")
        return self.program(batch.numbers, positions, cell, batch.batch, batch.centers,
                            batch.neighbors, batch.unit_shifts, batch.rank_neighbor,
                            batch.rank_unit_shift)

    def forward(self, batch: Batch, forces: bool = True, stress: bool = True,
                training: bool = False) -> dict[str, torch.Tensor]:
        """As :meth:`Potential.forward`."""
        return energy_and_derivatives(self.atomic_energies, batch, forces, stress, training)

    def to(self, *args, **kwargs) -> "ExportedPotential":
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and dtype != self.dtype:
            raise _other_dtype(self.metadata["dtype"], dtype)
        if device is not None and torch.device(device) != self.device:
            from torch.export.passes import move_to_device_pass
            self._program = move_to_device_pass(self._program, torch.device(device))
            self.program = self._program.module()
        return self

    def train(self, mode: bool = True) -> "ExportedPotential":
        """Sets only this module's flag: the program was exported in eval mode, and an
        exported module refuses ``train()``/``eval()`` (the potential has no dropout or
        batch norm, so the modes compute the same)."""
        self.training = mode
        return self

    @property
    def device(self) -> torch.device:
        return next(iter(self.program.parameters())).device


def load_program(path: str | Path, map_location="cpu",
                 dtype: torch.dtype | None = None) -> ExportedPotential:
    """The program at ``path`` (written by :func:`save_program`) as an
    :class:`ExportedPotential` on ``map_location``. ``dtype``: None, or the program's
    (checked). Raises MissingFileError, InputError (:func:`read_program_metadata`; a file
    whose name does not end in ``.pt2``) and ConfigError for another dtype."""
    path = Path(path)
    meta = read_program_metadata(path)
    _check_suffix(path)
    if meta["dtype"] not in {str(d).removeprefix("torch.") for d in FLOAT_DTYPES}:
        raise InputError(f"{path}: extra/{METADATA_FILE}: dtype {meta['dtype']!r}")
    if dtype is not None and str(dtype) != f"torch.{meta['dtype']}":  # before loading (s)
        raise _other_dtype(meta["dtype"], dtype)
    return ExportedPotential(torch.export.load(path), meta).to(map_location).eval()


def _other_dtype(exported: str, asked: torch.dtype) -> ConfigError:
    return ConfigError(f"an exported program runs in the dtype it was exported in "
                       f"({exported}), not {asked}: package the model again with that dtype")
