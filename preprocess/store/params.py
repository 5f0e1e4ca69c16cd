"""Typed parameters that determine a store's contents, declared once (pydantic models).

:class:`StoreParams` is a store's section of pipelines.yaml (and the settings of
``orbitgraph build``) less its source; :class:`GraphParams` (declared beside the graph, in
:mod:`orbitgraph.preprocess.graph_params`), :class:`SplitParams` and :class:`LabelKeys` are
the parts hashed into the store id (with the minimum distance).
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from orbitgraph.config import Config
from orbitgraph.preprocess.graph_params import GraphParams

LABELS = ("energy", "forces", "stress", "virial")
BACKENDS = ("zarr", "arrow")
DEFAULT_BACKEND = "zarr"
FRAMES_PER_SHARD = 2000
MIN_DISTANCE = 0.5  # Å

LabelKey = Annotated[str | None, Field(pattern=r"\S", json_schema_extra={
    "expected": "a field name or null"})]


class LabelKeys(Config):
    """Where a source's frames hold their labels: the names of the fields read as the
    energy (eV), forces (eV/Å, per atom), stress (eV/Å³, ASE sign) and virial (eV, stored
    as the stress σ = -virial / V). ``None``: the source's convention
    (:meth:`orbitgraph.preprocess.sources.base.Source.resolve_labels` says which).

    The keys determine what a store holds, so they are part of its id. The stored stress
    is a frame's ``stress`` where it has one, else the stress from its ``virial``.
    """

    section = "labels"

    energy: LabelKey = Field(None, description="field holding the energy, eV")
    forces: LabelKey = Field(None, description="per-atom field holding the forces, eV/Å")
    stress: LabelKey = Field(None, description="field holding the stress, eV/Å³ with ASE's "
                             "sign")
    virial: LabelKey = Field(None, description="field holding the virial, eV (stored as the "
                             "stress -virial / V)")


class SplitParams(Config):
    """Train/validation/test split by material (a hash of the material id and the seed)."""

    section = "split"

    val_fraction: float = Field(0.05, ge=0, lt=1, description="fraction of materials held "
                                "out for validation")
    test_fraction: float = Field(0.05, ge=0, lt=1, description="fraction of materials held "
                                 "out for testing")
    seed: int = Field(0, description="seed of the hash that assigns materials to splits")

    @model_validator(mode="after")
    def _leaves_training_frames(self):
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction must be < 1, got "
                             f"{self.val_fraction} + {self.test_fraction}")
        return self


class StoreParams(Config):
    """What ``orbitgraph build`` and a store of pipelines.yaml set: the graphs, the backend,
    the label keys (null: the source's convention; see :mod:`orbitgraph.preprocess.sources.labels`),
    the shard size, the closest atoms accepted and the split."""

    section = "store"

    graph: GraphParams = Field(default_factory=GraphParams)
    backend: Literal[BACKENDS] = Field(DEFAULT_BACKEND, description="zarr: one Zarr v3 array per "
                                       "column; arrow: Arrow IPC files")
    energy_key: LabelKey = Field(None, description="field holding the energy, eV (MPtrj: "
                                 "uncorrected_total_energy; extxyz: the one energy or "
                                 "*_energy field present)")
    forces_key: LabelKey = Field(None, description="per-atom field holding the forces, eV/Å")
    stress_key: LabelKey = Field(None, description="field holding the stress, eV/Å³ with "
                                 "ASE's sign; naming it makes it required in every frame")
    virial_key: LabelKey = Field(None, description="extxyz field holding the virial, eV; "
                                 "stored as the stress -virial / V")
    frames_per_shard: int = Field(FRAMES_PER_SHARD, ge=1, description="frames per shard "
                                  "(the unit of work and of reading)")
    min_distance: float = Field(MIN_DISTANCE, ge=0, description="Å; records with closer "
                                "atoms are quarantined")
    split: SplitParams = Field(default_factory=SplitParams)

    @property
    def labels(self) -> LabelKeys:
        return LabelKeys(self.energy_key, self.forces_key, self.stress_key, self.virial_key)
