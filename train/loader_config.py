"""The loader's settings (:class:`LoaderConfig`), apart from the loader itself so that reading
a configuration (``orbitgraph build`` reads pipelines.yaml's schema) does not import torch."""
from __future__ import annotations

from typing import Annotated

from orbitgraph.config import Config
from pydantic import Field

DEVICE_PATTERN = r"^(cpu|cuda(:\d+)?|mps)$"
DEVICES = "cpu, cuda, cuda:N or mps"
Device = Annotated[str, Field(pattern=DEVICE_PATTERN, json_schema_extra={"expected": DEVICES})]


class LoaderConfig(Config):
    """How batches are planned and read (see :mod:`orbitgraph.train.loader`)."""

    section = "loader"

    max_atoms: int = Field(1024, ge=1, description="atoms per batch (budget)")
    max_edges: int | None = Field(None, ge=1, description="edges per batch (budget; null: "
                                  "20 x max_atoms)")
    max_atoms_by_device: dict[Device, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="budgets for particular devices, e.g. {cuda: 4096, "
        "cuda:1: 2048, cpu: 512}: the trainer's device, else its type, else max_atoms")
    batch_frames: int | None = Field(None, ge=1, description="a fixed number of frames per "
                                     "batch instead of the budgets")
    shuffle: bool = Field(True, description="shuffle shards and frames each epoch")
    shuffle_shards: int = Field(4, ge=1, description="the shuffle buffer spans this many "
                                "shards")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (batches do "
                             "not depend on it)")
    pin_memory: bool = Field(False, description="pinned host memory for faster copies to a "
                             "GPU")
    seed: int = Field(0, ge=0, description="seed of the shard and frame order")

    @property
    def edge_budget(self) -> int:
        return self.max_edges if self.max_edges is not None else 20 * self.max_atoms

    def for_device(self, device: str) -> "LoaderConfig":
        """This config with ``max_atoms`` the budget of ``device`` ("cpu", "cuda", "cuda:1")."""
        budgets = self.max_atoms_by_device
        kind = device.split(":")[0]
        atoms = budgets.get(device, budgets.get(kind, self.max_atoms))
        return self.model_copy(update={"max_atoms": atoms})
