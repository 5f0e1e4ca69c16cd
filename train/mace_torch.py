"""mace-torch's flat configuration files, read as an orbitgraph run (``orbitgraph train
--config``).

``mace_run_train --config mace.yaml`` takes a flat YAML of its command-line arguments. The
same file given to ``orbitgraph train --config`` is translated key by key into a run file's
sections (:mod:`orbitgraph.train.run_file`): every key that has an equivalent here is
mapped (:data:`RULES`, the table in docs/guides/mace-torch.md), and every other key of
mace-torch's parser (:data:`MACE_TORCH_KEYS`), or value without an equivalent (``loss:
l1l2energyforces``), is refused, all of them in one line. Keys the file does not give take
orbitgraph's defaults, not mace-torch's.

Differences the mapping keeps (what the numbers mean is the same):

* ``stress_weight``: mace-torch weighs squared stress errors in eV/Å³, orbitgraph in GPa
  (``train.stress_weight``), so the weight is divided by 160.21766208². Under ``loss:
  huber`` the stress term's ``huber_delta`` is then in GPa too (in eV/Å³ in mace-torch);
  under ``loss: universal`` it stays in eV/Å³, as there.
* ``valid_fraction`` holds out materials, not frames (a material's frames stay together).
* ``E0s: average`` is mace-torch's least-squares fit (``least_squares`` here); without
  ``E0s`` mace-torch takes isolated atoms, orbitgraph its default (``regularised``).
* ``batch_size`` is a fixed number of frames per batch (``train.loader.batch_frames``).
* ``name`` and ``work_dir`` give the run directory, ``work_dir/name``; ``--out`` wins.

Key names come from ``build_default_arg_parser`` in ``mace/tools/arg_parser.py`` (mace-torch
at commit 667eee4 of 2026-03-01; its ``--config`` itself aside).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orbitgraph.config import yaml_value
from orbitgraph.errors import ConfigError
from orbitgraph.units import EV_PER_A3_IN_GPA

# mace_run_train's --model choices
MACE_TORCH_MODELS = ("BOTNet", "MACE", "ScaleShiftMACE", "PolarMACE", "MACELES",
                     "ScaleShiftBOTNet", "AtomicDipolesMACE", "AtomicDielectricMACE",
                     "EnergyDipolesMACE")
# every key of mace_run_train's argument parser (``--config`` aside)
MACE_TORCH_KEYS = (
    "name", "seed", "work_dir", "log_dir", "model_dir", "checkpoints_dir", "results_dir",
    "downloads_dir", "device", "default_dtype", "distributed", "launcher", "log_level", "plot",
    "plot_frequency", "plot_interaction_e", "error_table", "model", "r_max", "radial_type",
    "num_radial_basis", "num_cutoff_basis", "pair_repulsion", "distance_transform",
    "apply_cutoff", "use_last_readout_only", "use_embedding_readout", "interaction",
    "interaction_first", "max_ell", "correlation", "use_reduced_cg", "use_so3",
    "use_agnostic_product", "num_interactions", "MLP_irreps", "radial_MLP", "hidden_irreps",
    "edge_irreps", "num_channels", "max_L", "gate", "kspace_cutoff_factor",
    "atomic_multipoles_max_l", "atomic_multipoles_smearing_width", "field_feature_max_l",
    "field_feature_widths", "field_feature_norms", "num_recursion_steps", "field_si",
    "include_electrostatic_self_interaction", "add_local_electron_energy",
    "quadrupole_feature_corrections", "return_electrostatic_potentials", "field_norm_factor",
    "fixedpoint_update_config", "field_readout_config", "scaling", "avg_num_neighbors",
    "compute_avg_num_neighbors", "compute_stress", "compute_forces", "compute_polarizability",
    "compute_atomic_dipole", "train_file", "valid_file", "valid_fraction", "test_file",
    "test_dir", "multi_processed_test", "num_workers", "pin_memory", "atomic_numbers", "mean",
    "std", "statistics_file", "les_arguments", "E0s", "pseudolabel_replay",
    "pseudolabel_replay_compute_stress", "foundation_filter_elements", "heads",
    "multiheads_finetuning", "foundation_head", "weight_pt_head",
    "real_pt_data_ratio_threshold", "num_samples_pt", "force_mh_ft_lr", "subselect_pt",
    "filter_type_pt", "disallow_random_padding_pt", "pt_train_file", "pt_valid_file",
    "foundation_model_elements", "keep_isolated_atoms", "lora", "lora_rank", "lora_alpha",
    "energy_key", "forces_key", "virials_key", "stress_key", "dipole_key",
    "polarizability_key", "head_key", "charges_key", "elec_temp_key", "total_spin_key",
    "total_charge_key", "embedding_specs", "skip_evaluate_heads", "loss", "forces_weight",
    "swa_forces_weight", "stage_two_forces_weight", "energy_weight", "swa_energy_weight",
    "stage_two_energy_weight", "virials_weight", "swa_virials_weight",
    "stage_two_virials_weight", "stress_weight", "swa_stress_weight",
    "stage_two_stress_weight", "dipole_weight", "swa_dipole_weight", "stage_two_dipole_weight",
    "swa_polarizability_weight", "stage_two_polarizability_weight", "polarizability_weight",
    "config_type_weights", "huber_delta", "optimizer", "beta", "beta1_schedulefree",
    "beta2_schedulefree", "batch_size", "valid_batch_size", "lr", "swa_lr", "stage_two_lr",
    "weight_decay", "lr_params_factors", "freeze", "amsgrad", "scheduler", "lr_factor",
    "scheduler_patience", "lr_scheduler_gamma", "swa", "stage_two", "start_swa",
    "start_stage_two", "lbfgs", "ema", "ema_decay", "max_num_epochs", "patience",
    "foundation_model", "foundation_model_kwargs", "foundation_model_readout", "eval_interval",
    "keep_checkpoints", "save_all_checkpoints", "restart_latest", "save_cpu", "clip_grad",
    "dry_run", "enable_cueq", "only_cueq", "enable_oeq", "wandb", "wandb_dir",
    "wandb_project", "wandb_entity", "wandb_name", "wandb_log_hypers",
)


class NoEquivalent(ConfigError):
    """A value of a mace-torch key that orbitgraph cannot represent; ``str`` says why."""


@dataclass
class Translation:
    """The run file being written from a mace-torch file: ``doc`` (sections), which mace
    key set each path (to report contradictions), and the refusals so far."""

    doc: dict = field(default_factory=lambda: {"model": {"preset": "mace"}})
    set_by: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)

    def put(self, path: str, value, key: str) -> None:
        """Set ``path`` (``train.lr``) to ``value`` for mace key ``key``; a second key that
        sets it otherwise is refused as contradicting the first."""
        if path in self.set_by and _get(self.doc, path) != value:
            self.refused.append(f"{key} (contradicts {self.set_by[path]})")
            return
        self.set_by.setdefault(path, key)
        from orbitgraph.train.pipelines import set_path
        set_path(self.doc, path, value)


def _get(doc: dict, path: str):
    for part in path.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


# ------------------------------------------------------------------ value conversions

def _bool(value) -> bool:
    """mace-torch's str2bool: true/false, yes/no, t/f, y/n, 1/0."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "t", "y", "1"):
        return True
    if text in ("no", "false", "f", "n", "0"):
        return False
    raise NoEquivalent(f"{value!r} is not a boolean")


def _number(kind: type) -> Callable:
    def convert(value):
        if isinstance(value, bool):
            raise NoEquivalent(f"{value!r} is not a number")
        try:
            number = kind(float(value)) if kind is float else int(str(value))
        except ValueError:
            raise NoEquivalent(f"{value!r} is not {'a number' if kind is float else 'an integer'}"
                               ) from None
        return number
    return convert


def _literal(value):
    """A value mace-torch reads from a string (``"[64, 64]"``, ``"{1: -13.6}"``) as YAML."""
    if not isinstance(value, str):
        return value
    try:
        return yaml_value(value)
    except ConfigError:
        raise NoEquivalent(f"{value!r} cannot be read") from None


def _irreps(value):
    from e3nn import o3
    try:
        return o3.Irreps(str(value))
    except (ValueError, AssertionError):
        raise NoEquivalent(f"{value!r} is not an irreps string") from None


# ------------------------------------------------------------------ rules

Rule = Callable[[Any, Translation, str], None]


def _to(*paths: str, convert: Callable = lambda v: v) -> Rule:
    def rule(value, t: Translation, key: str) -> None:
        converted = convert(value)
        for path in paths:
            t.put(path, converted, key)
    return rule


def _choice(path: str, mapping: dict) -> Rule:
    """A value of ``mapping`` ({mace-torch's value: ours}); any other value is refused."""
    def rule(value, t: Translation, key: str) -> None:
        if value not in mapping:
            raise NoEquivalent(f"{value!r} (here: {', '.join(map(str, mapping))})")
        t.put(path, mapping[value], key)
    return rule


def _accept(*values) -> Rule:
    """Values that are what orbitgraph always does; any other value is refused."""
    def rule(value, t: Translation, key: str) -> None:
        try:
            value = _bool(value) if isinstance(values[0], bool) else value
        except NoEquivalent:
            pass
        if value not in values:
            raise NoEquivalent(f"{value!r} (here always {values[0]!r})")
    return rule


def _hidden_irreps(value, t: Translation, key: str) -> None:
    """'128x0e + 128x1o': equal multiplicities on l = 0..L with parity (-1)^l (mace's form)."""
    irreps = _irreps(value)
    muls = {mul for mul, _ in irreps}
    ls = [ir.l for _, ir in irreps]
    if len(muls) != 1 or ls != list(range(len(ls))) or any(ir.p != (-1) ** ir.l
                                                            for _, ir in irreps):
        raise NoEquivalent(f"{value!r} (here: C x 0e + C x 1o + ... up to L, one C)")
    t.put("model.channels", muls.pop(), key)
    t.put("model.hidden_l_max", max(ls), key)


def _mlp_irreps(value, t: Translation, key: str) -> None:
    irreps = _irreps(value)
    if len(irreps) != 1 or irreps[0].ir.l != 0 or irreps[0].ir.p != 1:
        raise NoEquivalent(f"{value!r} (here: one hidden layer of N x 0e scalars)")
    t.put("model.readout_mlp", [irreps[0].mul], key)


def _radial_mlp(value, t: Translation, key: str) -> None:
    widths = _literal(value)
    if not isinstance(widths, list):
        raise NoEquivalent(f"{value!r} is not a list of widths")
    t.put("model.radial_mlp", widths, key)


def _e0s(value, t: Translation, key: str) -> None:
    """average (least squares), a {Z: eV} mapping, or a JSON file of one."""
    if isinstance(value, str) and value.strip().lower() == "average":
        t.put("model.atomic_energies", "least_squares", key)
        return
    if isinstance(value, str) and value.strip().endswith(".json"):
        path = Path(value.strip())
        if not path.is_file():
            raise NoEquivalent(f"{value!r}: no such file")
        value = json.loads(path.read_text())
    mapping = _literal(value)
    if not isinstance(mapping, dict):
        raise NoEquivalent(f"{value!r} (here: average, a {{Z: eV}} mapping or a .json file)")
    try:
        e0 = {int(z): float(v) for z, v in mapping.items()}
    except (TypeError, ValueError):
        raise NoEquivalent(f"{value!r} is not a mapping of atomic numbers to eV") from None
    t.put("model.atomic_energies", e0, key)


def _scaling(value, t: Translation, key: str) -> None:
    if value == "rms_forces_scaling":
        t.put("model.scale", None, key)  # the store's force RMS
    elif value == "no_scaling":
        t.put("model.scale", 1.0, key)
    else:
        raise NoEquivalent(f"{value!r} (here: rms_forces_scaling, no_scaling)")


def _compute_avg_num_neighbors(value, t: Translation, key: str) -> None:
    if _bool(value):
        t.put("model.avg_num_neighbors", None, key)  # the store's statistics


def _stress_weight(value, t: Translation, key: str) -> None:
    t.put("train.stress_weight", _number(float)(value) / EV_PER_A3_IN_GPA ** 2, key)


LOSSES = {  # mace-torch's loss: (our loss, the terms it leaves out)
    "weighted": ("mse", ("stress",)), "stress": ("mse", ()), "huber": ("huber", ()),
    "universal": ("universal", ()), "forces_only": ("mse", ("energy", "stress")),
}


def _loss(value, t: Translation, key: str) -> None:
    if value not in LOSSES:
        raise NoEquivalent(f"{value!r} (here: {', '.join(LOSSES)})")
    loss, left_out = LOSSES[value]
    t.put("train.loss", loss, key)
    for term in left_out:
        t.put(f"train.{term}_weight", 0.0, key)


def _compute_stress(value, t: Translation, key: str) -> None:
    if not _bool(value):
        t.put("train.stress_weight", 0.0, key)


def _plateau(path: str, convert: Callable) -> Rule:
    """lr_factor, scheduler_patience: mace-torch's default scheduler is ReduceLROnPlateau."""
    def rule(value, t: Translation, key: str) -> None:
        t.put(path, convert(value), key)
        if "train.schedule" not in t.set_by:
            t.put("train.schedule", "plateau", key)
    return rule


def _ema(value, t: Translation, key: str) -> None:
    if not _bool(value):
        t.put("train.ema_decay", None, key)


def _clip_grad(value, t: Translation, key: str) -> None:
    none = value is None or str(value).strip().lower() == "none"
    t.put("train.grad_clip", None if none else _number(float)(value), key)


def _stage_two_on(value, t: Translation, key: str) -> None:
    """swa / stage_two: true turns stage two on (its other keys are read only then, or
    with a start epoch)."""
    if _bool(value):
        t.put("train.stage_two.on", True, key)  # replaced by from_mace_torch


def _stage_two_weight(term: str) -> Rule:
    def rule(value, t: Translation, key: str) -> None:
        w = _number(float)(value)
        t.put(f"train.stage_two.{term}_weight",
              w / EV_PER_A3_IN_GPA ** 2 if term == "stress" else w, key)
    return rule


def _stage_two_start(value, t: Translation, key: str) -> None:
    t.put("train.stage_two.start_epoch", _number(int)(value), key)  # replaced below


def _finish_stage_two(data: dict, t: Translation) -> None:
    """Stage two as mace-torch 0.3.16 reads it (``mace/tools/arg_parser_tools.py``,
    ``mace/tools/scripts_utils.py`` ``get_swa``): on with swa/stage_two true or a start
    epoch given (its other keys ignored otherwise); its start epoch (default
    max(1, E // 4 × 3) of max_num_epochs E) becomes ``train.stage_two.start``, the fraction
    of the budget; a loss without a stress term (weighted, or compute_stress false) has
    none in stage two either; forces_only has no stage two."""
    two = _get(t.doc, "train.stage_two")
    if two is None:
        return
    start = two.pop("start_epoch", None)
    if not two.pop("on", False) and start is None:
        del t.doc["train"]["stage_two"]
        if not t.doc["train"]:
            del t.doc["train"]
        return
    if data.get("loss") == "forces_only":
        t.refused.append("swa/stage_two: mace-torch has no stage two with the forces_only "
                         "loss")
        return
    if _get(t.doc, "train.stress_weight") == 0.0:  # the stage's loss has no stress term
        two["stress_weight"] = 0.0
    epochs = _get(t.doc, "train.epochs")
    if start is None and epochs is not None:
        start = max(1, epochs // 4 * 3)
    if start is not None:
        if epochs is None:
            t.refused.append("start_swa/start_stage_two: needs max_num_epochs (the start is "
                             "a fraction of the budget here)")
        elif not 0 < start < epochs:
            t.refused.append(f"start_swa/start_stage_two: {start} is not within the "
                             f"{epochs} epochs")
        else:
            two["start"] = start / epochs


# key: (rule, what it becomes here), in the order of mace-torch's parser
RULES: dict[str, tuple[Rule, str]] = {
    "name": (lambda v, t, k: None, "the run directory `work_dir/name` (`--out` wins)"),
    "seed": (_to("train.seed", "train.loader.seed", convert=_number(int)),
             "`train.seed` and `train.loader.seed`"),
    "work_dir": (lambda v, t, k: None, "the run directory `work_dir/name`"),
    "device": (_choice("train.device", {"cpu": "cpu", "cuda": "cuda", "mps": "mps"}),
               "`train.device` (cpu, cuda, mps)"),
    "default_dtype": (_choice("train.precision", {"float32": "float32", "float64": "float64"}),
                      "`train.precision`"),
    "plot": (_to("train.plots", convert=_bool), "`train.plots`"),
    "model": (_choice("model.preset", {"MACE": "mace", "ScaleShiftMACE": "mace"}),
              "`model.preset: mace` (MACE, ScaleShiftMACE; species-wise scale and shift)"),
    "r_max": (_to("model.cutoff", convert=_number(float)), "`model.cutoff`, Å"),
    "radial_type": (_choice("model.radial_basis", {"bessel": "bessel", "gaussian": "gaussian"}),
                    "`model.radial_basis` (bessel, gaussian)"),
    "num_radial_basis": (_to("model.num_radial", convert=_number(int)), "`model.num_radial`"),
    "num_cutoff_basis": (_to("model.envelope_p", convert=_number(int)), "`model.envelope_p`"),
    "pair_repulsion": (_to("model.pair_repulsion", convert=_bool),
                       "`model.pair_repulsion` (ZBL)"),
    "use_last_readout_only": (_to("model.block_reduction",
                                  convert=lambda v: "last" if _bool(v) else "sum"),
                              "`model.block_reduction`: last (true) or sum (false)"),
    "max_ell": (_to("model.sh_l_max", convert=_number(int)), "`model.sh_l_max`"),
    "correlation": (_to("model.correlation", convert=_number(int)), "`model.correlation`"),
    "num_interactions": (_to("model.layers", convert=_number(int)), "`model.layers`"),
    "MLP_irreps": (_mlp_irreps, "`model.readout_mlp` (`16x0e`: [16])"),
    "radial_MLP": (_radial_mlp, "`model.radial_mlp`"),
    "hidden_irreps": (_hidden_irreps, "`model.channels` and `model.hidden_l_max` "
                      "(`128x0e + 128x1o`: 128 and 1)"),
    "num_channels": (_to("model.channels", convert=_number(int)), "`model.channels`"),
    "max_L": (_to("model.hidden_l_max", convert=_number(int)), "`model.hidden_l_max`"),
    "gate": (_accept("silu"), "silu only: the readout MLP's activation"),
    "scaling": (_scaling, "`model.scale`: rms_forces_scaling (null: the store's force RMS), "
                "no_scaling (1)"),
    "avg_num_neighbors": (_to("model.avg_num_neighbors", convert=_number(float)),
                          "`model.avg_num_neighbors` (kept as given)"),
    "compute_avg_num_neighbors": (_compute_avg_num_neighbors,
                                  "true: `model.avg_num_neighbors: null` (the store's)"),
    "compute_stress": (_compute_stress, "false: `train.stress_weight: 0` (stress is always "
                       "computed here)"),
    "compute_forces": (_accept(True), "true only (forces are always computed here)"),
    "train_file": (_to("source", convert=str), "`source`: the store is built from it"),
    "valid_fraction": (_to("build.split.val_fraction", convert=_number(float)),
                       "`build.split.val_fraction` (of materials)"),
    "num_workers": (_to("train.loader.num_workers", convert=_number(int)),
                    "`train.loader.num_workers`"),
    "pin_memory": (_to("train.loader.pin_memory", convert=_bool), "`train.loader.pin_memory`"),
    "mean": (_to("model.shift", convert=_number(float)), "`model.shift`, eV"),
    "std": (_to("model.scale", convert=_number(float)), "`model.scale`, eV (kept as given)"),
    "E0s": (_e0s, "`model.atomic_energies`: average → least_squares, a {Z: eV} mapping or "
            "a .json file of one → that mapping"),
    "keep_isolated_atoms": (_accept(True), "true only (one-atom frames are trained on here)"),
    "energy_key": (_to("build.energy_key", convert=str), "`build.energy_key`"),
    "forces_key": (_to("build.forces_key", convert=str), "`build.forces_key`"),
    "virials_key": (_to("build.virial_key", convert=str), "`build.virial_key`"),
    "stress_key": (_to("build.stress_key", convert=str), "`build.stress_key`"),
    "loss": (_loss, "`train.loss`: weighted → mse without stress, stress → mse, huber → "
             "huber, universal → universal, forces_only → mse on forces alone"),
    "forces_weight": (_to("train.forces_weight", convert=_number(float)),
                      "`train.forces_weight` (eV/Å)"),
    "energy_weight": (_to("train.energy_weight", convert=_number(float)),
                      "`train.energy_weight` (eV/atom)"),
    "stress_weight": (_stress_weight, "`train.stress_weight` ÷ 160.21766208² (eV/Å³ → GPa)"),
    "huber_delta": (_to("train.huber_delta", convert=_number(float)), "`train.huber_delta`"),
    "optimizer": (_choice("train.optimizer", {"adam": "adam", "adamw": "adamw"}),
                  "`train.optimizer` (adam, adamw)"),
    "beta": (_accept(0.9), "0.9 only (Adam's β₁ here)"),
    "batch_size": (_to("train.loader.batch_frames", convert=_number(int)),
                   "`train.loader.batch_frames`"),
    "lr": (_to("train.lr", convert=_number(float)), "`train.lr`"),
    "weight_decay": (_to("train.weight_decay", convert=_number(float)),
                     "`train.weight_decay` (on every weight)"),
    "amsgrad": (_to("train.amsgrad", convert=_bool), "`train.amsgrad`"),
    "scheduler": (_choice("train.schedule", {"ReduceLROnPlateau": "plateau"}),
                  "`train.schedule: plateau` (ReduceLROnPlateau)"),
    "lr_factor": (_plateau("train.plateau_factor", _number(float)),
                  "`train.plateau_factor` (and `train.schedule: plateau`)"),
    "scheduler_patience": (_plateau("train.plateau_patience", _number(int)),
                           "`train.plateau_patience` (and `train.schedule: plateau`)"),
    "ema": (_ema, "false: `train.ema_decay: null`"),
    "ema_decay": (_to("train.ema_decay", convert=_number(float)), "`train.ema_decay`"),
    "max_num_epochs": (_to("train.epochs", convert=_number(int)), "`train.epochs`"),
    "patience": (_to("train.early_stopping_patience", convert=_number(int)),
                 "`train.early_stopping_patience`"),
    "eval_interval": (_accept(1), "1 only (validation every epoch)"),
    "restart_latest": (_accept(True), "true only (a run directory with a checkpoint resumes)"),
    "clip_grad": (_clip_grad, "`train.grad_clip`"),
}
for _prefix in ("swa", "stage_two"):  # stage_two_* are mace-torch's later names of swa_*
    RULES.update({
        _prefix: (_stage_two_on, "true: `train.stage_two` (the other keys of the stage are "
                  "read only then, or with its start)"),
        f"start_{_prefix}": (_stage_two_start, "`train.stage_two.start` = this epoch ÷ "
                             "max_num_epochs (default max(1, E // 4 × 3) ÷ E); turns the "
                             "stage on"),
        f"{_prefix}_lr": (_to("train.stage_two.lr", convert=_number(float)),
                          "`train.stage_two.lr`"),
        f"{_prefix}_energy_weight": (_stage_two_weight("energy"),
                                     "`train.stage_two.energy_weight` (eV/atom)"),
        f"{_prefix}_forces_weight": (_stage_two_weight("forces"),
                                     "`train.stage_two.forces_weight` (eV/Å)"),
        f"{_prefix}_stress_weight": (_stage_two_weight("stress"),
                                     "`train.stage_two.stress_weight` ÷ 160.21766208²"),
    })


def from_mace_torch(data: dict, where: str) -> dict:
    """The run-file sections (``model``, ``train``, ``build``, ``source``, ``out``) of a
    mace-torch config ``data`` read from ``where``.

    Raises ConfigError, one line naming ``where`` and every key (or key: value) that has no
    equivalent here, is not mace-torch's or contradicts another."""
    t = Translation()
    for key, value in data.items():
        if key not in RULES:
            t.refused.append(key if key in MACE_TORCH_KEYS else f"{key} (not mace-torch's)")
            continue
        try:
            RULES[key][0](value, t, key)
        except NoEquivalent as why:
            t.refused.append(f"{key}: {why}")
    _finish_stage_two(data, t)
    if t.refused:
        raise ConfigError(f"{where}: read as a mace-torch config; no equivalent here for "
                          f"{'; '.join(t.refused)}; remove them (the mapped keys are listed in "
                          "docs/guides/mace-torch.md)")
    if "name" in data or "work_dir" in data:
        t.doc["out"] = str(Path(str(data.get("work_dir", "."))) / str(data.get("name", "")))
    return t.doc


def mapping_markdown() -> str:
    """The table of mace-torch keys and what each becomes here (the copy in
    docs/guides/mace-torch.md is checked by a test)."""
    lines = ["| mace-torch | orbitgraph |", "| --- | --- |"]
    lines += [f"| `{key}` | {text} |" for key, (_, text) in RULES.items()]
    return "\n".join(lines)
