"""Typed model configuration, presets, and the one builder ``build_model``.

A config is a flat dict (or YAML) of the fields of :class:`ModelConfig`; a ``preset`` key
starts from a named preset and the other keys override it. Unknown keys or values of the
wrong kind raise ValueError naming the key, the value and what was expected.

Presets:
* ``mace``      — symmetric contraction, correlation 3, MLP readout on the last block;
* ``sevennet``  — linear self-interaction followed by a gate (SevenNet/NequIP style);
* ``invariant`` — the invariant toolbox (edge MLP, attention, multi-scale, final MLP).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

KINDS = ("equivariant", "invariant")
CHOICES = {
    "kind": KINDS,
    "radial_basis": ("bessel", "gaussian"),
    "message_weights": ("radial", "radial+species", "radial+species+features"),
    "aggregation": ("sum", "sigmoid", "softmax"),
    "self_interaction": ("symmetric_contraction", "linear", "gate", "tensor_square"),
    "readout": ("linear", "mlp", "mlp_last"),
    "block_reduction": ("sum", "last", "mean"),
    "attention": ("none", "sigmoid", "softmax"),
    "rank_envelope": ("adaptive", "next", "none"),
}


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "equivariant"
    # geometry and radial features
    cutoff: float = 6.0  # Å, radial envelope cutoff
    radial_basis: str = "bessel"
    num_radial: int = 8
    envelope_p: int = 5
    # k-NN rank envelope (model.radial): "adaptive" (soft k nearest, C² energy; needs graphs
    # with ties: include and tie_tolerance >= width), "next" (ramp below d_{k+1}: continuous
    # energy, forces jump where the (k+1)-th candidate changes), or "none"
    rank_envelope: str = "adaptive"
    rank_envelope_width: float = 0.5  # Å (adaptive: needs graphs with tie_tolerance >= it)
    k: int | None = None  # neighbours the model wants (None: what the store has)
    # species
    species_dim: int = 16
    # equivariant network
    channels: int = 64
    sh_l_max: int = 3
    hidden_l_max: int = 1
    layers: int = 2
    radial_mlp: tuple[int, ...] = (64, 64)
    message_weights: str = "radial+species"
    aggregation: str = "sum"
    self_interaction: str = "symmetric_contraction"
    correlation: int = 3
    readout: str = "mlp_last"
    readout_mlp: tuple[int, ...] = (16,)
    block_reduction: str = "sum"
    # invariant toolbox
    hidden: int = 64
    attention: str = "sigmoid"
    bands: tuple[float, ...] = ()  # Å; edges split into distance bands at these radii
    final_mlp: tuple[int, ...] = (64, 64)
    # from the store manifest (filled in by build_model when statistics are given)
    avg_num_neighbors: float = 16.0
    atomic_energies: dict = field(default_factory=dict)  # {Z: E0 in eV}
    scale: float = 1.0  # eV; initial species-wise scale
    shift: float = 0.0  # eV; initial species-wise shift

    def __post_init__(self):
        if isinstance(self.rank_envelope, bool):  # rank_envelope: true/false in older configs
            object.__setattr__(self, "rank_envelope", "next" if self.rank_envelope else "none")
        if not (isinstance(self.rank_envelope_width, (int, float)) and self.rank_envelope_width > 0):
            raise ValueError(f"model.rank_envelope_width: expected a positive number of Å, "
                             f"got {self.rank_envelope_width!r}")
        for name, options in CHOICES.items():
            value = getattr(self, name)
            if value not in options:
                raise ValueError(f"model.{name}: {value!r} is not one of {', '.join(options)}")
        for name in ("num_radial", "species_dim", "channels", "layers", "correlation", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name}: expected an integer >= 1, got {value!r}")
        for name in ("sh_l_max", "hidden_l_max", "envelope_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"model.{name}: expected an integer >= 0, got {value!r}")
        if self.hidden_l_max > self.sh_l_max:
            raise ValueError(f"model.hidden_l_max ({self.hidden_l_max}) cannot exceed "
                             f"sh_l_max ({self.sh_l_max})")
        if not self.cutoff > 0:
            raise ValueError(f"model.cutoff: expected a positive number of Å, got {self.cutoff!r}")
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"model.k: expected an integer >= 1 or null, got {self.k!r}")
        if list(self.bands) != sorted(self.bands):
            raise ValueError(f"model.bands: radii must increase, got {list(self.bands)}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("radial_mlp", "readout_mlp", "bands", "final_mlp"):
            d[key] = list(d[key])
        d["atomic_energies"] = {int(z): float(v) for z, v in self.atomic_energies.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        preset = d.pop("preset", None)
        base = dict(PRESETS[_check_preset(preset)]) if preset is not None else {}
        base.update(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(base) - known)
        if unknown:
            raise ValueError(f"model: unknown keys {unknown}; known keys are {sorted(known)}")
        for key in ("radial_mlp", "readout_mlp", "bands", "final_mlp"):
            if key in base:
                if not isinstance(base[key], (list, tuple)):
                    raise ValueError(f"model.{key}: expected a list, got {base[key]!r}")
                base[key] = tuple(base[key])
        if "atomic_energies" in base:
            base["atomic_energies"] = {int(z): float(v) for z, v in base["atomic_energies"].items()}
        return cls(**base)


PRESETS: dict[str, dict[str, Any]] = {
    "mace": {"kind": "equivariant", "self_interaction": "symmetric_contraction",
             "correlation": 3, "readout": "mlp_last", "aggregation": "sum"},
    "sevennet": {"kind": "equivariant", "self_interaction": "gate", "readout": "linear",
                 "correlation": 1, "layers": 3, "hidden_l_max": 2, "sh_l_max": 2},
    "invariant": {"kind": "invariant", "attention": "sigmoid", "bands": (3.0, 4.5),
                  "radial_basis": "gaussian", "num_radial": 16},
}


def _check_preset(name) -> str:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return name


def load_config(spec: str | Path | dict | ModelConfig) -> ModelConfig:
    """A ModelConfig from a preset name, a YAML file, a dict or a ModelConfig."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, dict):
        return ModelConfig.from_dict(spec)
    text = str(spec)
    if text in PRESETS:
        return ModelConfig.from_dict({"preset": text})
    path = Path(text)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model config file")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of model settings")
        return ModelConfig.from_dict(data.get("model", data))
    raise ValueError(f"unknown model preset {text!r}; choose one of {', '.join(PRESETS)} "
                     "or give a YAML file")


def with_statistics(cfg: ModelConfig, statistics: dict | None) -> ModelConfig:
    """Fill the dataset-derived fields from a store manifest's statistics."""
    if not statistics:
        return cfg
    return dataclasses.replace(
        cfg,
        avg_num_neighbors=float(statistics["mean_neighbors_per_atom"]),
        atomic_energies={int(z): float(v) for z, v in statistics["atomic_energies_eV"].items()},
        scale=float(statistics.get("force_rms_eV_per_A") or 1.0) or 1.0,
    )
