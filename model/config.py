"""Typed model configuration, presets, and the one builder ``build_model``.

A config is a flat dict (or YAML) of the fields of :class:`ModelConfig`; a ``preset`` key
starts from a named preset and the other keys override it. Unknown keys or values of the
wrong kind raise ConfigError (a ValueError) naming the key, the value and what was expected.

Presets:
* ``mace``      — symmetric contraction, correlation 3, MLP readout on the last block;
* ``sevennet``  — linear self-interaction followed by a gate (SevenNet/NequIP style);
* ``invariant`` — the invariant toolbox (edge MLP, attention, multi-scale, final MLP).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from orbitgraph.config import Config, read_yaml
from orbitgraph.errors import ConfigError
from orbitgraph.model.aggregation import AggregationMode
from orbitgraph.model.invariant import Attention
from orbitgraph.model.message import WeightInputs
from orbitgraph.model.networks import NETWORKS
from orbitgraph.model.radial import RADIAL_BASES, RANK_ENVELOPES
from orbitgraph.model.readout import BlockReduction, ReadoutKind
from orbitgraph.model.self_interaction import SELF_INTERACTIONS, ContractionWeights

# the options of each block setting, as the blocks declare them: the keys of a block's
# registry, or the values of its Literal type where one module handles every option
CHOICES = {
    "kind": tuple(NETWORKS),
    "radial_basis": tuple(RADIAL_BASES),
    "message_weights": get_args(WeightInputs),
    "aggregation": get_args(AggregationMode),
    "self_interaction": tuple(SELF_INTERACTIONS),
    "contraction_weights": get_args(ContractionWeights),
    "readout": get_args(ReadoutKind),
    "block_reduction": get_args(BlockReduction),
    "attention": get_args(Attention),
    "rank_envelope": tuple(RANK_ENVELOPES),
    # how E0 is fitted to the store's frames (orbitgraph.preprocess.store.e0)
    "atomic_energies": ("regularised", "least_squares", "average", "isolated"),
}
# mace-torch's hyperparameter names, accepted with ``preset: mace`` so that a MACE user's
# settings carry over (``correlation`` and ``pair_repulsion`` are the same in both):
# ``num_radial_basis`` and ``num_cutoff_basis`` are mace_run_train's names, ``num_bessel``
# and ``num_polynomial_cutoff`` those of mace-torch's model classes
MACE_TORCH_NAMES = {"r_max": "cutoff", "max_ell": "sh_l_max", "max_L": "hidden_l_max",
                    "num_channels": "channels", "num_interactions": "layers",
                    "num_radial_basis": "num_radial", "num_bessel": "num_radial",
                    "num_cutoff_basis": "envelope_p", "num_polynomial_cutoff": "envelope_p"}

Width = Annotated[int, Field(ge=1)]
# what the dataset-derived settings left null are for a model built without a store
UNTRAINED = {"avg_num_neighbors": 16.0, "scale": 1.0}


class ModelConfig(Config):
    """A model's hyperparameters (see the module docstring for presets)."""

    section = "model"

    kind: Literal[CHOICES["kind"]] = Field("equivariant", description="equivariant (MACE "
                                           "family) or the invariant toolbox")
    # geometry and radial features
    cutoff: float = Field(6.0, gt=0, description="Å; radial envelope cutoff (mace-torch: "
                          "r_max)")
    radial_basis: Literal[CHOICES["radial_basis"]] = Field("bessel", description="radial "
                                                           "basis functions")
    num_radial: int = Field(8, ge=1, description="radial basis functions (mace-torch: "
                            "num_bessel)")
    envelope_p: int = Field(5, ge=0, description="exponent of the polynomial cutoff envelope "
                            "(mace-torch: num_polynomial_cutoff)")
    # k-NN rank envelope (model.radial): "adaptive" (soft k nearest, C² energy; needs graphs
    # with ties: include and tie_tolerance >= width), "next" (ramp below d_{k+1}: continuous
    # energy, forces jump where the (k+1)-th candidate changes), or "none"
    rank_envelope: Literal[CHOICES["rank_envelope"]] = Field(
        "adaptive", description="k-NN rank envelope: adaptive (soft k nearest, C² energy), "
        "next (ramp below d_{k+1}) or none")
    rank_envelope_width: float = Field(0.5, gt=0, description="Å; adaptive needs graphs with "
                                       "tie_tolerance >= it")
    k: int | None = Field(None, ge=1, description="neighbours the model wants (null: what "
                          "the store has)")
    # species
    species_dim: int = Field(16, ge=1, description="species embedding size")
    # equivariant network
    channels: int = Field(64, ge=1, description="channels per irrep (mace-torch: "
                          "num_channels)")
    sh_l_max: int = Field(3, ge=0, description="largest degree of the spherical harmonics "
                          "(mace-torch: max_ell)")
    hidden_l_max: int = Field(1, ge=0, description="largest degree of the hidden features, "
                              "<= sh_l_max (mace-torch: max_L)")
    layers: int = Field(2, ge=1, description="interaction blocks (mace-torch: "
                        "num_interactions)")
    radial_mlp: tuple[Width, ...] = Field((64, 64), description="hidden widths of the MLP "
                                          "from radial features to message weights")
    message_weights: Literal[CHOICES["message_weights"]] = Field(
        "radial+species", description="what the message weights depend on")
    aggregation: Literal[CHOICES["aggregation"]] = Field("sum", description="how messages "
                                                         "are summed at each atom")
    self_interaction: Literal[CHOICES["self_interaction"]] = Field(
        "symmetric_contraction", description="node update after aggregation")
    correlation: int = Field(3, ge=1, description="body order of the symmetric contraction "
                             "(mace-torch: correlation)")
    contraction_weights: Literal[CHOICES["contraction_weights"]] = Field(
        "embedding", description="the symmetric contraction's path and channel weights: "
        "projected from the species embedding, or a table per element (mace-torch's)")
    readout: Literal[CHOICES["readout"]] = Field("mlp_last", description="per-block energy "
                                                 "readout")
    readout_mlp: tuple[Width, ...] = Field((16,), description="hidden widths of the MLP "
                                           "readout")
    block_reduction: Literal[CHOICES["block_reduction"]] = Field(
        "sum", description="how block energies combine")
    # invariant toolbox
    hidden: int = Field(64, ge=1, description="invariant toolbox: hidden width")
    attention: Literal[CHOICES["attention"]] = Field("sigmoid", description="invariant "
                                                     "toolbox: attention over neighbours")
    bands: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        (), description="Å, increasing; edges split into distance bands at these radii")
    final_mlp: tuple[Width, ...] = Field((64, 64), description="invariant toolbox: hidden "
                                         "widths of the final MLP")
    # short-range repulsion (model.repulsion)
    pair_repulsion: bool = Field(False, description="add the ZBL screened nuclear repulsion "
                                 "of pairs closer than their covalent radii (mace-torch: "
                                 "pair_repulsion)")
    # from the store's frames when training (with_statistics); a value given is kept
    avg_num_neighbors: float | None = Field(
        None, gt=0, description="normalises sum aggregation (null: the store's mean "
        f"neighbours per atom; {UNTRAINED['avg_num_neighbors']} for a model built without "
        "a store)")
    atomic_energies: Literal[CHOICES["atomic_energies"]] | dict[int, float] = Field(
        "regularised", description="E0 per element: a {Z: eV} mapping, kept as given, or "
        "fitted to the store: regularised (least squares of energies per atom, each E0 "
        "pulled toward the mean energy per atom), least_squares (of total energies; "
        "mace-torch's E0s: average), average (the mean energy per atom for every element) "
        "or isolated (one-atom frames with no periodic image within the cutoff); without a "
        "store, 0 eV")
    e0_regularisation: float = Field(1.0, gt=0, description="frames; regularised E0s: each "
                                     "element's E0 is pulled toward the mean energy per atom "
                                     "as much as this many frames of that element alone at it "
                                     "would pull it")
    scale: float | None = Field(None, gt=0, description="eV; initial species-wise scale "
                                "(null: the store's force RMS; "
                                f"{UNTRAINED['scale']} for a model built without a store)")
    shift: float = Field(0.0, description="eV; initial species-wise shift")

    @model_validator(mode="before")
    @classmethod
    def _presets_and_aliases(cls, data):
        """A ``preset`` key starts from that preset; mace-torch's names (with preset mace)
        stand for ours."""
        if not isinstance(data, dict):
            return data
        d = dict(data)
        preset = d.pop("preset", None)
        if preset is not None:
            _check_preset(preset)
        for alias, name in MACE_TORCH_NAMES.items():
            if alias not in d:
                continue
            if preset is None:
                raise ValueError(f"{alias} is mace-torch's name for {name}: add preset: mace "
                                 f"(or give {name})")
            if preset != "mace":
                raise ValueError(f"{alias} is mace-torch's name for {name}, accepted with "
                                 f"preset: mace; with preset: {preset}, give {name}")
            others = [key for key in (name, *MACE_TORCH_NAMES) if key != alias and key in data
                      and (key == name or MACE_TORCH_NAMES[key] == name)]
            if others:
                raise ValueError(f"{alias} (mace-torch's name) and {others[0]} are the same "
                                 f"setting; give one of them")
            d[name] = d.pop(alias)
        unknown = sorted(set(d) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known keys are "
                             f"{sorted(cls.model_fields)}"
                             + (f" and mace-torch's {sorted(MACE_TORCH_NAMES)}"
                                if preset == "mace" else ""))
        if isinstance(d.get("rank_envelope"), bool):  # rank_envelope: true/false in older configs
            d["rank_envelope"] = "next" if d["rank_envelope"] else "none"
        return {**PRESETS[preset], **d} if preset is not None else d

    @model_validator(mode="after")
    def _consistent(self):
        if self.hidden_l_max > self.sh_l_max:
            raise ValueError(f"hidden_l_max ({self.hidden_l_max}) cannot exceed sh_l_max "
                             f"({self.sh_l_max})")
        if list(self.bands) != sorted(self.bands):
            raise ValueError(f"bands: radii must increase, got {list(self.bands)}")
        return self


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


def model_spec(spec: str | Path | dict) -> dict:
    """The settings mapping of a preset name (``{"preset": name}``), a YAML file (its
    ``model:`` section, or the whole file) or a mapping, before validation."""
    if isinstance(spec, dict):
        return dict(spec)
    text = str(spec)
    if text in PRESETS:
        return {"preset": text}
    path = Path(text)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        data = read_yaml(path, "model config")
        return dict(data.get("model", data))
    raise ConfigError(f"unknown model preset {text!r}; choose one of {', '.join(PRESETS)} "
                      "or give a YAML file")


def load_config(spec: str | Path | dict | ModelConfig, where: str = "model") -> ModelConfig:
    """A ModelConfig from a preset name, a YAML file, a dict or a ModelConfig; errors name
    keys under ``where``."""
    if isinstance(spec, ModelConfig):
        return spec
    return ModelConfig.from_dict(model_spec(spec), where=where)


def with_statistics(cfg: ModelConfig, statistics: dict | None = None) -> ModelConfig:
    """``cfg`` with the settings it leaves to the data filled in, and those it gives kept:
    ``avg_num_neighbors`` and ``scale`` when null, ``atomic_energies`` when it names a
    method. ``statistics`` are a store's (its manifest's, with ``atomic_energies_eV``
    fitted by the method that ``atomic_energies_method`` names: see
    :func:`orbitgraph.preprocess.store.e0.statistics_with_e0`); without them, the values of
    an untrained model (:data:`UNTRAINED`, and E0 = 0 eV).

    Raises ValueError when the statistics' E0s were fitted by another method than
    ``cfg.atomic_energies`` names (a manifest's own are least squares)."""
    update: dict[str, Any] = {}
    if statistics:
        if isinstance(cfg.atomic_energies, str):
            fitted = statistics.get("atomic_energies_method", "least_squares")
            if fitted != cfg.atomic_energies:
                raise ValueError(f"model.atomic_energies: {cfg.atomic_energies!r}, but these "
                                 f"statistics hold {fitted} E0s")
            update["atomic_energies"] = {int(z): float(v) for z, v in
                                         statistics["atomic_energies_eV"].items()}
        if cfg.avg_num_neighbors is None:
            update["avg_num_neighbors"] = float(statistics["mean_neighbors_per_atom"])
        if cfg.scale is None:
            update["scale"] = float(statistics.get("force_rms_eV_per_A") or 1.0) or 1.0
    else:
        if isinstance(cfg.atomic_energies, str):
            update["atomic_energies"] = {}
        update.update({name: value for name, value in UNTRAINED.items()
                       if getattr(cfg, name) is None})
    return cfg.model_copy(update=update) if update else cfg

