"""What a trained potential learned: its test errors beside the baselines it must beat.

Baselines, on the same frames as the model's metrics:

* energy: the atomic reference energies alone, E = Σ_i E0(z_i), with the store's
  least-squares E0 fitted on the train split (what an untrained potential predicts);
* forces: zero force on every atom;
* stress: zero stress.

A model that learned nothing scores the baseline; ``ratio`` = model MAE / baseline MAE.
Units are the ones practitioners quote: meV/atom, meV/Å, GPa.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from orbitgraph.preprocess.store import GraphStore
from orbitgraph.preprocess.store.stats import N_ELEMENTS, element_counts
from orbitgraph.units import EV_PER_A3_IN_GPA

# (key of the metrics, label, unit, baseline name)
QUANTITIES = (("energy_mae_meV_per_atom", "energy/atom", "meV/atom", "E0 only"),
              ("forces_mae_meV_per_A", "forces", "meV/Å", "zero force"),
              ("stress_mae_GPa", "stress", "GPa", "zero stress"))


def baselines(store: GraphStore, split: str | None) -> dict[str, float]:
    """MAEs of the E0-only energy, zero force and zero stress on ``split`` of ``store`` (all
    of it if None), keyed like :meth:`orbitgraph.train.metrics.ErrorAccumulator.result` (meV/atom,
    meV/Å, GPa), plus ``frames``. E0 (eV per element) is the manifest's, fitted on the
    train split."""
    return pooled_baselines([baseline_errors(store, split)])


def baseline_errors(store: GraphStore, split: str | None) -> tuple[np.ndarray, ...]:
    """The baselines' absolute errors on ``split`` of ``store`` (all of it if None), each
    on the store's own E0s: energy per atom (F,) eV/atom, force components (3N,) eV/Å,
    stress components (9F',) eV/Å³ of the F' frames with a stress label."""
    e0_of = store.manifest.statistics["atomic_energies_eV"]
    e0 = np.zeros(N_ELEMENTS)
    for z, value in e0_of.items():
        e0[int(z)] = value
    subset = store.subset(split=split) if split is not None else store
    e_abs, f_abs, s_abs = [np.empty(0)], [np.empty(0)], [np.empty(0)]
    for _, data, rows in subset.iter_shards():
        block = data.take(rows)
        n_atoms = block["n_atoms"].astype(np.int64)
        e_ref = element_counts(block["numbers"], n_atoms) @ e0
        e_abs.append(np.abs(block["energy"] - e_ref) / np.maximum(n_atoms, 1))
        f_abs.append(np.abs(block["forces"]).ravel())
        stress = block["stress"].reshape(-1, 9)
        s_abs.append(np.abs(stress[~np.isnan(stress).any(axis=1)]).ravel())
    return tuple(np.concatenate(parts) for parts in (e_abs, f_abs, s_abs))


def pooled_baselines(errors: list[tuple[np.ndarray, ...]]) -> dict[str, float]:
    """The baselines' MAEs (as :func:`baselines`) over the frames of several stores or
    splits pooled, each part's errors (:func:`baseline_errors`) on its own E0s: what the
    baselines score on several datasets, each on its own energy reference."""
    def mean(parts, scale):
        values = np.concatenate(parts)
        return float(values.mean() * scale) if values.size else float("nan")

    return {"energy_mae_meV_per_atom": mean([e[0] for e in errors], 1000.0),
            "forces_mae_meV_per_A": mean([e[1] for e in errors], 1000.0),
            "stress_mae_GPa": mean([e[2] for e in errors], EV_PER_A3_IN_GPA),
            "frames": int(sum(len(e[0]) for e in errors))}


@dataclass
class Pairs:
    """Reference and predicted values, one row per pair (column 0 reference, 1 predicted).

    Shapes: ``energy`` (F, 2) eV/atom, ``forces`` (3N, 2) eV/Å, ``stress`` (9F', 2) GPa over
    the F' frames that have a stress label.
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray

    def mae(self) -> dict[str, float]:
        """MAEs in the quoted units, keyed like the metrics."""
        def m(p, scale):
            return float(np.abs(p[:, 1] - p[:, 0]).mean() * scale) if len(p) else float("nan")
        return {"energy_mae_meV_per_atom": m(self.energy, 1000.0),
                "forces_mae_meV_per_A": m(self.forces, 1000.0),
                "stress_mae_GPa": m(self.stress, 1.0)}

    def thinned(self, max_rows: int = 20_000, seed: int = 0) -> "Pairs":
        """At most ``max_rows`` rows per quantity, drawn at random (seeded): enough for a
        parity plot of a large test split."""
        rng = np.random.default_rng(seed)

        def thin(p):
            if len(p) <= max_rows:
                return p
            return p[np.sort(rng.choice(len(p), max_rows, replace=False))]
        return Pairs(thin(self.energy), thin(self.forces), thin(self.stress))

    def save(self, path: Path) -> None:
        np.savez_compressed(path, energy=self.energy, forces=self.forces, stress=self.stress)

    @classmethod
    def concat(cls, parts: list["Pairs"]) -> "Pairs":
        """The rows of ``parts`` one after the other (e.g. several datasets' pairs)."""
        return cls(*(np.concatenate([getattr(p, name) for p in parts] or [np.empty((0, 2))])
                     for name in ("energy", "forces", "stress")))

    @classmethod
    def load(cls, path: Path) -> "Pairs":
        with np.load(path) as d:
            return cls(d["energy"], d["forces"], d["stress"])


def predict_pairs(model: torch.nn.Module, store: GraphStore, graph, split: str | None = None,
                  device: str | torch.device = "cpu", max_atoms: int = 2048) -> Pairs:
    """Run ``model`` (a :class:`model.Potential`, in its own dtype) over ``split`` of
    ``store`` (all of it if None) with the graphs ``graph`` asks for; the pairs for parity
    plots."""
    from orbitgraph.train.loader import LoaderConfig, make_loader

    subset = store.subset(split=split) if split is not None else store
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    energy, forces, stress = [], [], []
    if len(subset):
        for batch in make_loader(subset, LoaderConfig(max_atoms=max_atoms, shuffle=False),
                                 graph=graph):
            batch = batch.to(device, dtype)
            out = model(batch, forces=True, stress=True, training=False)
            n = batch.n_atoms.double().clamp(min=1)
            energy.append(torch.stack([batch.energy.double() / n,
                                       out["energy"].detach().double() / n], 1))
            forces.append(torch.stack([batch.forces.double().flatten(),
                                       out["forces"].detach().double().flatten()], 1))
            has = ~torch.isnan(batch.stress).flatten(1).any(dim=1)
            stress.append(torch.stack([batch.stress[has].double().flatten(),
                                       out["stress"][has].detach().double().flatten()], 1)
                          * EV_PER_A3_IN_GPA)
    model.train(was_training)

    def cat(parts):
        return torch.cat(parts).cpu().numpy() if parts else np.empty((0, 2))

    return Pairs(cat(energy), cat(forces), cat(stress))


def results_table(metrics: dict, baseline: dict) -> str:
    """The model's test MAEs beside the baselines' on the same frames."""
    lines = [f"{'':12s} {'model MAE':>10s} {'baseline':>10s} {'ratio':>6s}  unit      baseline",
             ]
    for key, label, unit, name in QUANTITIES:
        model, base = metrics[key], baseline[key]
        ratio = model / base if base > 0 else float("nan")
        lines.append(f"{label:12s} {model:10.3f} {base:10.3f} {ratio:6.2f}  {unit:9s} {name}")
    lines.append(f"({metrics['frames']} frames; E0 only: the energy Σ E0 of the train split's "
                 "least-squares atomic energies)")
    if metrics.get("frames_with_untrained_elements"):
        lines.append(f"({metrics['frames_with_untrained_elements']} of them hold elements "
                     f"absent from the training split: "
                     f"{', '.join(metrics['untrained_elements'])})")
    return "\n".join(lines)


def evaluation_table(metrics: dict) -> str:
    """What ``orbitgraph evaluate`` prints: MAE and RMSE of energy per atom (meV/atom),
    force components (meV/Å) and stress components (GPa) with the baseline's MAE beside
    each (``metrics["baseline"]``, on the same frames), for all frames, then for each
    config_type of ``metrics["by_config_type"]`` (none where the frames have none)."""
    rmse = {"energy_mae_meV_per_atom": "energy_rmse_meV_per_atom",
            "forces_mae_meV_per_A": "forces_rmse_meV_per_A", "stress_mae_GPa": "stress_rmse_GPa"}
    head = (f"{'':26s} {'MAE':>9s} {'RMSE':>9s} {'baseline':>9s} {'ratio':>6s}  "
            f"{'unit':9s} baseline")
    lines = [head]

    def rows(group: dict, name: str) -> None:
        for key, label, unit, baseline_name in QUANTITIES:
            model, base = group[key], group["baseline"][key]
            ratio = model / base if base > 0 else float("nan")
            lines.append(f"{name + label:26s} {model:9.3f} {group[rmse[key]]:9.3f} "
                         f"{base:9.3f} {ratio:6.2f}  {unit:9s} {baseline_name}")

    rows(metrics, "")
    for config_type, group in metrics.get("by_config_type", {}).items():
        lines.append(f"config_type {config_type} ({group['frames']} frames)")
        rows(group, "  ")
    fitted = ("these frames" if metrics.get("split") == "all" else
              "each dataset's store's train split" if "datasets" in metrics else
              "the store's train split")
    no_stress = "; NaN stress: no frame has a stress label" if not np.isfinite(
        metrics.get("stress_mae_GPa", float("nan"))) else ""
    lines.append(f"({metrics['frames']} frames; E0 only: the energy Σ E0 of least-squares "
                 f"atomic energies fitted to {fitted}; ratio: MAE / baseline MAE, 1 for a "
                 f"model that learned nothing{no_stress})")
    if metrics.get("frames_with_untrained_elements"):
        lines.append(f"({metrics['frames_with_untrained_elements']} of them hold elements "
                     f"absent from the training split: "
                     f"{', '.join(metrics['untrained_elements'])})")
    return "\n".join(lines)


def datasets_table(metrics: dict) -> str:
    """What ``orbitgraph evaluate`` prints for a model trained on several datasets: for each
    dataset of ``metrics["datasets"]`` (:func:`orbitgraph.train.evaluation.evaluate_datasets`)
    a block of :func:`evaluation_table` rows, its energies on its own E0 reference, then the
    block of all their frames together."""
    blocks = []
    for name, group in metrics["datasets"].items():
        blocks += [f"dataset {name} ({group['store']}, {group['split']} split, "
                   f"{group['frames']} frames; energies on its own E0 reference)",
                   evaluation_table(group), ""]
    blocks += [f"all datasets ({metrics['frames']} frames of {len(metrics['datasets'])} "
               f"datasets, each on its own E0 reference)", evaluation_table(metrics)]
    return "\n".join(blocks)


def comparison_table(store_name: str, rows: list[dict]) -> str:
    """One line per experiment on one store: model, parameters, steps, training wall time
    and the test MAEs, then the baselines' line. ``rows`` are the experiments' metrics
    files (see :meth:`orbitgraph.train.pipelines.Pipelines.run_experiment`)."""
    if not rows:
        return f"store {store_name}: no finished experiments"
    split = rows[0]["split"]
    lines = [f"experiments on store {store_name} ({split} split, {rows[0]['frames']} frames)",
             f"{'experiment':18s} {'model':>9s} {'params':>8s} {'steps':>6s} {'train s':>8s} "
             f"{'E meV/atom':>11s} {'F meV/Å':>9s} {'σ GPa':>7s}"]
    for r in rows:
        lines.append(f"{r['experiment']:18s} {r['model']:>9s} {r['parameters']:8,d} "
                     f"{r['steps']:6d} {r['train_wall_s']:8.1f} "
                     f"{r['energy_mae_meV_per_atom']:11.1f} {r['forces_mae_meV_per_A']:9.1f} "
                     f"{r['stress_mae_GPa']:7.3f}")
    b = rows[0]["baseline"]
    lines.append(f"{'baselines: E0 only, zero force, zero stress':53s} "
                 f"{b['energy_mae_meV_per_atom']:11.1f} {b['forces_mae_meV_per_A']:9.1f} "
                 f"{b['stress_mae_GPa']:7.3f}")
    return "\n".join(lines)
