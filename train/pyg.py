"""Frames and batches as PyTorch Geometric ``Data`` and ``Batch`` (PyG is optional:
``pip install orbitgraph[pyg]``).

Fields, in PyG's names where PyG has one (N atoms, E edges of one frame):

=============  ===========  ==========================================================
pos            (N, 3)       Å
edge_index     (2, E)       int64 (sources j, targets i): the edge i <- j, messages flow
                            from ``edge_index[0]`` to ``edge_index[1]`` (PyG's
                            ``source_to_target``; MACE's (sender, receiver))
unit_shifts    (E, 3)       integer cell shifts S (float, as mace-torch holds them)
shifts         (E, 3)       Cartesian shifts S @ cell, Å: the edge vector is
                            ``pos[j] + shifts - pos[i]``
cell           (1, 3, 3)    Å, lattice vectors as rows (a Batch stacks them to (B, 3, 3))
pbc            (1, 3)       bool
numbers        (N,)         int64 atomic numbers
energy         (1,)         eV
forces         (N, 3)       eV/Å
stress         (1, 3, 3)    eV/Å³, ASE's sign (positive = tensile); NaN where missing
frame_id,      str
material_id
=============  ===========  ==========================================================

A PyG ``Batch`` adds ``batch`` (N,), the frame of each atom, and ``ptr``, and offsets
``edge_index`` by each frame's first atom. Floats are float64 unless ``dtype`` says
otherwise.
"""
from __future__ import annotations

import numpy as np
import torch

from orbitgraph.model.batch import Batch
from orbitgraph.preprocess.store import centers_of


def _pyg():
    try:
        import torch_geometric.data as pyg_data
    except ImportError:
        raise ImportError("PyTorch Geometric is not installed: pip install "
                          "'orbitgraph[pyg]' (or torch-geometric)") from None
    return pyg_data


def _float(values, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64)).to(dtype)


def frame_to_data(frame: dict, dtype: torch.dtype = torch.float64):
    """One frame (a :class:`~orbitgraph.train.dataset.FrameDataset` item, or a store frame
    as :meth:`GraphStore.__getitem__` gives it) -> ``torch_geometric.data.Data``.

    Raises ImportError naming the package when PyG is not installed.
    """
    pyg_data = _pyg()
    n_edges = np.asarray(frame["n_edges"], dtype=np.int64)
    centers = torch.from_numpy(centers_of(n_edges))
    neighbors = torch.as_tensor(np.asarray(frame["neighbors"], dtype=np.int64))
    cell = _float(frame["cell"], torch.float64).reshape(3, 3)
    unit_shifts = _float(frame["unit_shifts"], torch.float64).reshape(-1, 3)
    return pyg_data.Data(
        pos=_float(frame["positions"], dtype).reshape(-1, 3),
        edge_index=torch.stack((neighbors, centers)),
        unit_shifts=unit_shifts.to(dtype),
        shifts=(unit_shifts @ cell).to(dtype),
        cell=cell.to(dtype).unsqueeze(0),
        pbc=torch.as_tensor(np.asarray(frame["pbc"], dtype=bool)).reshape(1, 3),
        numbers=torch.as_tensor(np.asarray(frame["numbers"], dtype=np.int64)),
        energy=_float(frame["energy"], dtype).reshape(1),
        forces=_float(frame["forces"], dtype).reshape(-1, 3),
        stress=_float(frame["stress"], dtype).reshape(1, 3, 3),
        frame_id=str(frame["frame_id"]), material_id=str(frame["material_id"]))


def batch_to_pyg(batch: Batch):
    """An orbitgraph :class:`Batch` -> ``torch_geometric.data.Batch`` of its frames, in
    order, in the batch's dtype. Positions are as the batch holds them (relative to each
    frame's first atom: edge vectors are unchanged). A Batch holds neither ``pbc`` nor
    ``material_id``, so neither do these; a batch without labels gives Data without
    ``energy``, ``forces`` and ``stress``.

    Raises ImportError naming the package when PyG is not installed.
    """
    pyg_data = _pyg()
    n_atoms = batch.n_atoms.cpu()
    atom_ptr = torch.cat((n_atoms.new_zeros(1), torch.cumsum(n_atoms, 0))).tolist()
    edges_per_frame = torch.bincount(batch.batch[batch.centers], minlength=batch.n_frames)
    edge_ptr = torch.cat((n_atoms.new_zeros(1), torch.cumsum(edges_per_frame.cpu(), 0))).tolist()
    shifts = torch.einsum("ea,eab->eb", batch.unit_shifts, batch.cell[batch.batch[batch.centers]])
    data = []
    for b in range(batch.n_frames):
        (a0, a1), (e0, e1) = atom_ptr[b:b + 2], edge_ptr[b:b + 2]
        fields = dict(pos=batch.positions[a0:a1], edge_index=batch.edge_index[:, e0:e1] - a0,
                      unit_shifts=batch.unit_shifts[e0:e1], shifts=shifts[e0:e1],
                      cell=batch.cell[b:b + 1], numbers=batch.numbers[a0:a1],
                      frame_id=batch.frame_ids[b])
        if batch.energy is not None:
            fields.update(energy=batch.energy[b:b + 1], forces=batch.forces[a0:a1],
                          stress=batch.stress[b:b + 1])
        data.append(pyg_data.Data(**fields))
    return pyg_data.Batch.from_data_list(data)
