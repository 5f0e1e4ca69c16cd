"""A map-style ``torch.utils.data.Dataset`` over a store or a subset, for any PyTorch code.

``dataset[i]`` is frame ``i`` of the (sub)set: its tensors with its graph, named and shaped
as the store schema declares them (:mod:`orbitgraph.preprocess.schema`; docs/guides/store.md):

==================  =========================  =============  ======================
field               shape                      dtype          unit
==================  =========================  =============  ======================
frame_id,           (str)
material_id
cell                (3, 3)                     float64        Å, lattice vectors as rows
pbc                 (3,)                       bool
energy              ()                         float64        eV
stress              (3, 3)                     float64        eV/Å³, ASE sign; NaN if missing
numbers, n_atoms    (N,), ()                   int64
positions           (N, 3)                     float64        Å
forces              (N, 3)                     float64        eV/Å
magmom              (N,)                       float64        μB; NaN if missing
n_edges             (N,)                       int64          edges of each centre atom i
neighbors           (E,)                       int64          atom j of each edge i <- j,
                                                              centres in order (CSR)
unit_shifts         (E, 3)                     int64          S: r_ij = r_j + S @ cell - r_i
next_distance,      (N,), (N,), (N, 3)         float64, int64 the first candidate not kept
next_neighbor,
next_unit_shift
==================  =========================  =============  ======================

``dataset.collate`` makes a list of items one :class:`orbitgraph.model.Batch` (offsets
applied, what the models take), for ``torch.utils.data.DataLoader(dataset, batch_size=32,
shuffle=True, collate_fn=dataset.collate)``; ``transform`` maps each item, e.g. to a PyG
``Data`` (:func:`orbitgraph.train.pyg.frame_to_data`) for PyG's DataLoader.

Random access reads a frame's whole shard (the last few are cached): right for a store of
a few shards or a subset. To train at scale, stream the store instead
(:func:`orbitgraph.train.loader.make_loader`): it plans each epoch from the index, reads
each shard once per epoch and packs batches to an atom budget.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from orbitgraph.errors import GraphMismatchError
from orbitgraph.model.batch import Batch
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.preprocess.schema import FIELDS
from orbitgraph.preprocess.store import GraphStore
from orbitgraph.train.collate import collate
from orbitgraph.train.loader import filter_block


def _tensor(values: np.ndarray) -> torch.Tensor:
    """Integers as int64, floats as float64 (float32 forces are widened exactly), bools."""
    kind = values.dtype.kind
    dtype = np.int64 if kind in "iu" else np.float64 if kind == "f" else values.dtype
    return torch.from_numpy(np.array(values, dtype=dtype))  # a copy: C-ordered, 0-d kept


class FrameDataset(Dataset):
    """Frames of ``store`` (a :class:`GraphStore` or a subset of one), with graphs as
    ``graph`` asks (default: as stored; a smaller k or a cutoff are filtered exactly as the
    streaming loader does, :func:`orbitgraph.train.loader.filter_block`).

    Raises ValueError when the store's graphs cannot serve ``graph``.
    """

    def __init__(self, store: GraphStore, graph: GraphParams | None = None,
                 transform: Callable[[dict], Any] | None = None,
                 dtype: torch.dtype = torch.float64):
        self.store = store
        self.stored = store.manifest.graph
        self.graph = graph or self.stored
        try:
            self.stored.check_can_serve(self.graph)
        except GraphMismatchError as err:
            raise GraphMismatchError(f"{store.root}: {err}") from None
        self.transform = transform
        self.dtype = dtype
        self._shard = store.index.column("shard").to_numpy()
        self._row = store.index.column("row").to_numpy()

    def __len__(self) -> int:
        return len(self.store)

    def frame(self, i: int) -> dict[str, torch.Tensor | str]:
        """Frame ``i`` as tensors (see the module's table), before ``transform``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} frames")
        i %= len(self)
        block = self.store.read_shard(int(self._shard[i])).take([int(self._row[i])])
        block = filter_block(block, self.stored, self.graph)
        out: dict[str, torch.Tensor | str] = {}
        for f in FIELDS:
            values = block[f.name]
            if f.dtype == "str":
                out[f.name] = str(values[0])
            else:
                out[f.name] = _tensor(values[0] if f.level == "frame" else values)
        return out

    def __getitem__(self, i: int):
        item = self.frame(i)
        return self.transform(item) if self.transform is not None else item

    def collate(self, items: Sequence[dict]) -> Batch:
        """Items (without ``transform``) -> one :class:`Batch` in ``dtype`` (neighbour
        indices offset to the batch's atoms, centres from the counts)."""
        return collate(items, k=self.graph.k, dtype=self.dtype)
