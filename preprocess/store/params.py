"""Typed parameters that determine a store's contents."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from preprocess.graph import DEFAULT_K, DEFAULT_TIE_TOLERANCE, _check_params

ENERGY_KEYS = ("uncorrected_total_energy", "corrected_total_energy")
LABELS = ("energy", "forces", "stress", "virial")


@dataclass(frozen=True)
class GraphParams:
    """How the graphs were built (see :mod:`preprocess.graph`)."""

    k: int = DEFAULT_K
    ties: str = "include"
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE
    cutoff: float | None = None

    def __post_init__(self):
        _check_params(self.k, self.ties, self.tie_tolerance, self.cutoff)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GraphParams":
        unknown = set(d) - {"k", "ties", "tie_tolerance", "cutoff"}
        if unknown:
            raise ValueError(f"graph parameters: unknown keys {sorted(unknown)}; "
                             "expected k, ties, tie_tolerance, cutoff")
        return cls(**d)

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


@dataclass(frozen=True)
class LabelKeys:
    """Where a source's frames hold their labels: the names of the fields read as the
    energy (eV), forces (eV/Å, per atom), stress (eV/Å³, ASE sign) and virial (eV, stored
    as the stress σ = -virial / V). ``None``: the source's convention
    (:meth:`preprocess.sources.base.Source.resolve_labels` says which).

    The keys determine what a store holds, so they are part of its id. The stored stress
    is a frame's ``stress`` where it has one, else the stress from its ``virial``.
    """

    energy: str | None = None
    forces: str | None = None
    stress: str | None = None
    virial: str | None = None

    def __post_init__(self):
        for name in LABELS:
            key = getattr(self, name)
            if key is not None and (not isinstance(key, str) or not key.strip()):
                raise ValueError(f"{name}_key: expected a field name or None, got {key!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SplitParams:
    """Train/validation/test split by material (a hash of the material id and the seed)."""

    val_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self):
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"split: {name} must be in [0, 1), got {v!r}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("split: val_fraction + test_fraction must be < 1")

    def to_dict(self) -> dict:
        return asdict(self)
