"""Typed parameters that determine a store's contents, declared once (pydantic models).

:class:`StoreParams` is a store's section of pipelines.yaml (and the settings of
``orbitgraph build``) less its source; :class:`GraphParams`, :class:`SplitParams` and
:class:`LabelKeys` are the parts hashed into the store id (with the minimum distance).
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from orbitgraph.config import Config
from orbitgraph.preprocess.graph import DEFAULT_K, DEFAULT_TIE_TOLERANCE, _check_params

LABELS = ("energy", "forces", "stress", "virial")
TIES = ("include", "break")
BACKENDS = ("zarr", "arrow")
DEFAULT_BACKEND = "zarr"
FRAMES_PER_SHARD = 2000
MIN_DISTANCE = 0.5  # Å

LabelKey = Annotated[str | None, Field(pattern=r"\S", json_schema_extra={
    "expected": "a field name or null"})]


class GraphParams(Config):
    """How the graphs were built (see :mod:`orbitgraph.preprocess.graph`)."""

    section = "graph"

    k: int = Field(DEFAULT_K, ge=1, description="neighbours kept per atom")
    ties: Literal[TIES] = Field("include", description="include: every candidate within "
                                "tie_tolerance of the k-th distance is kept too; break: "
                                "exactly k, ties broken by index")
    tie_tolerance: float = Field(DEFAULT_TIE_TOLERANCE, ge=0, description="Å; candidates "
                                 "this close to the k-th distance are ties (the adaptive "
                                 "rank envelope needs >= its width)")
    cutoff: float | None = Field(None, gt=0, description="Å; drop neighbours farther than "
                                 "this (null: none)")

    @model_validator(mode="before")
    @classmethod
    def _ties_first(cls, data):
        if isinstance(data, dict) and data.get("ties", "include") not in TIES:
            raise ValueError(f"ties must be 'include' or 'break', got {data['ties']!r}")
        return data

    @model_validator(mode="after")
    def _graph_rules(self):
        _check_params(self.k, self.ties, self.tie_tolerance, self.cutoff)
        return self

    def can_serve(self, wanted: "GraphParams") -> bool:
        """Whether graphs built with these parameters contain the graphs ``wanted`` asks for,
        so that the loader can filter them at load time instead of rebuilding.

        True when the tie rule and tolerance match, ``wanted.k <= self.k`` and the cutoff
        can only drop edges.
        """
        if (self.ties, self.tie_tolerance) != (wanted.ties, wanted.tie_tolerance):
            return False
        if wanted.k > self.k:
            return False
        if self.cutoff is not None and (wanted.cutoff is None or wanted.cutoff > self.cutoff):
            return False
        return True


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
