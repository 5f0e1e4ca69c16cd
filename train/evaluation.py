"""Errors of a potential on a store's frames: validation during training, ``evaluate`` of a
saved model (on a split of a store, or on every frame of a source file), and the elements a
model never trained on.

Metrics (:class:`~orbitgraph.train.metrics.ErrorAccumulator`): MAE/RMSE of the energy per
atom (meV/atom), the force components (meV/Å) and the stress components (GPa), beside the
baselines of :func:`orbitgraph.train.report.baselines` (E0-only energy, zero force, zero
stress) and, where the frames have a ``config_type``, per config_type.

``evaluate`` with an output folder writes there (:func:`write_outputs`):

    predictions.extxyz   labels (REF_*) and predictions per frame (train/predictions.py)
    predictions.csv      one row per frame
    parity.png           predicted against reference energy, forces, stress
    metrics.json         the metrics (unless the command names another file)
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from orbitgraph.errors import StoreError
from orbitgraph.model import Potential
from orbitgraph.model.batch import Batch
from orbitgraph.preprocess.store import GraphStore, empty_splits, open_store
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.datasets import (
    dataset_of_store,
    frame_energy_shift,
    recorded_store,
    reference_shift,
)
from orbitgraph.train.distributed import DistInfo, all_sum
from orbitgraph.train.loader import LoaderConfig, make_loader
from orbitgraph.train.metrics import ErrorAccumulator
from orbitgraph.train.predictions import Predictions
from orbitgraph.train.report import Pairs, baseline_errors, baselines, pooled_baselines
from orbitgraph.train.weights import SavedPotential, load_potential


def add_errors(acc: ErrorAccumulator, model: Potential, batches: Iterable,
               device: torch.device | str, dtype: torch.dtype,
               each: Callable[[dict, Batch], None] | None = None) -> None:
    """Add ``model``'s energies, forces and stresses on each of ``batches`` (moved to
    ``device`` and ``dtype``) and their labels to ``acc``; ``each(out, batch)`` is called
    too with the model's output on each batch where given."""
    for batch in batches:
        batch = batch.to(device, dtype)
        out = model(batch, forces=True, stress=True, training=False)
        acc.add(out, batch)
        if each is not None:
            each(out, batch)


def validation_metrics(model: Potential, frames: GraphStore, loader: LoaderConfig, graph,
                       info: DistInfo, device: torch.device, dtype: torch.dtype,
                       keep_pairs: bool = False) -> tuple[dict, object]:
    """The metrics of ``model`` (put in eval mode) on ``frames``, read in order with the
    batch budget of ``loader`` and the graphs ``graph`` (GraphParams), each rank its share,
    summed over the ranks; and the (reference, predicted) pairs where ``keep_pairs`` (None
    otherwise; this rank's)."""
    acc = ErrorAccumulator(keep_pairs=keep_pairs)
    model.eval()
    if len(frames):
        in_order = loader.model_copy(update={"shuffle": False, "num_workers": 0})
        add_errors(acc, model, make_loader(frames, in_order, 0, info.rank, info.world,
                                           graph=graph), device, dtype)
    if info.world > 1:
        acc.load_tensor(all_sum(acc.merge_tensor(), info))
    return acc.result(), acc.pairs


def dataset_metrics(model: Potential, sets: list, loader: LoaderConfig, graph, info: DistInfo,
                    device: torch.device, dtype: torch.dtype, keep_pairs: bool = False
                    ) -> tuple[dict, dict[str, dict], object]:
    """The metrics of ``model`` over several datasets' frames, ``sets`` a list of (name,
    frames, :class:`~orbitgraph.train.datasets.Dataset`): over all their frames, and per
    dataset ({name: metrics}), each dataset's energies compared on its own E0 reference
    (the model's prediction plus the dataset's E0 shift, equivalently its label moved onto
    the model's), summed over the ranks; with ``keep_pairs``, this rank's pairs of all."""
    total = ErrorAccumulator(keep_pairs=keep_pairs)
    model.eval()
    accs = {}
    in_order = loader.model_copy(update={"shuffle": False, "num_workers": 0})
    for name, frames, data in sets:
        acc = accs[name] = ErrorAccumulator()
        if not len(frames):
            continue
        batches = make_loader(frames, in_order, 0, info.rank, info.world, graph=graph)
        if data is not None:
            batches = (data.shift_energy(batch) for batch in batches)
        add_errors(total, model, batches, device, dtype, each=lambda out, batch, acc=acc:
                   acc.add(out, batch))
    if info.world > 1:
        for acc in (total, *accs.values()):
            acc.load_tensor(all_sum(acc.merge_tensor(), info))
    return total.result(), {name: acc.result() for name, acc in accs.items()}, total.pairs


def validation_loss(cfg: TrainConfig, metrics: dict, stage_two: bool = False) -> float:
    """The criterion for best.pt, the plateau schedule and early stopping:
    w_E · MAE(E/N) [eV/atom] + w_F · MAE(F) [eV/Å] + w_σ · MAE(σ) [GPa], the stress term
    left out where no validation frame has a stress label (NaN without validation); the
    weights are ``cfg``'s, or its stage two's where ``stage_two``."""
    w = cfg.stage_two if stage_two else cfg
    loss = (w.energy_weight * metrics["energy_mae_meV_per_atom"] / 1000
            + w.forces_weight * metrics["forces_mae_meV_per_A"] / 1000)
    if w.stress_weight and not math.isnan(metrics["stress_mae_GPa"]):
        loss += w.stress_weight * metrics["stress_mae_GPa"]
    return loss


def elements(frames: GraphStore) -> list[str]:
    """The chemical symbols that some frame of ``frames`` holds (from the index), sorted."""
    return sorted({el for frame in frames.index["elements"].to_pylist() for el in frame})


def untrained_elements(trained: Iterable[str], frames: GraphStore) -> tuple[int, list[str]]:
    """How many of ``frames`` hold an element not in ``trained`` (the symbols of the
    training frames, :func:`elements`), and those elements (read from the index). The model
    has learned nothing about them (its E0 for them is 0), so such frames carry large energy
    errors; they are counted, never dropped."""
    trained = set(trained)
    missing = [set(frame) - trained for frame in frames.index["elements"].to_pylist()]
    return sum(1 for m in missing if m), sorted(set().union(*missing))


def frames_to_evaluate(store: GraphStore, split: str) -> GraphStore:
    """The frames of ``split`` ('train', 'val' or 'test') of ``store``. Raises StoreError,
    naming the store, the split and the fraction that would give it frames, when it holds
    none (a metric over no frames is NaN, not a result)."""
    subset = store.subset(split=split)
    if len(subset):
        return subset
    why = empty_splits(store.index.column("material_id").to_pylist(),
                       store.manifest.split).get(split, f"the {split} split holds no frames")
    raise StoreError(f"{store.root}: cannot evaluate on the {split} split: {why}; choose "
                     "another split (evaluate.split) or rebuild the store with that fraction")


def evaluate(checkpoint: str | Path, store: str | Path | GraphStore, split: str = "test",
             device: str = "cpu", max_atoms: int = 2048, weights: str | None = None,
             out: str | Path | None = None, dataset: str | None = None) -> dict:
    """MAE/RMSE of a saved model (in float64) on a split of a store, which weights they are
    (``weights``, in words: by default those validation used, the EMA's where training kept
    one; see :func:`orbitgraph.train.weights.load_potential`), the baselines' MAEs on the
    same frames (``baseline``), the metrics per config_type where the frames have one
    (``by_config_type``), and how many of the split's frames hold elements that none of the
    model's training frames held (see :func:`untrained_elements`); one warning per such
    element (``orbitgraph.evaluate`` logger). With ``out`` (a folder, created), the
    predictions, the parity plot and the metrics are written there (:func:`write_outputs`;
    their paths under ``files``). ``dataset``: for a model trained on several datasets, the
    one whose energy reference the store's labels are on (default: the dataset whose store
    it is; :func:`orbitgraph.train.datasets.dataset_of_store`, which raises ConfigError
    for a name the model does not know, and for a store of none of its datasets without
    ``dataset``; all datasets at once: :func:`evaluate_datasets`). Raises StoreError when
    the split holds no frames (:func:`frames_to_evaluate`)."""
    saved = load_potential(checkpoint, device=device, weights=weights, dtype=torch.float64)
    store = store if isinstance(store, GraphStore) else open_store(store)
    dataset = dataset_of_store(saved.datasets, store, dataset, str(checkpoint))
    shift = reference_shift(saved.datasets, dataset, str(checkpoint))
    subset = frames_to_evaluate(store, split)
    metrics = evaluate_frames(saved, subset, split, f"{store.root}: {split} split", device,
                              max_atoms, out, e0_shift=shift)
    if saved.datasets:
        metrics["dataset"] = dataset
    return metrics


def evaluate_datasets(checkpoint: str | Path, stores: dict[str, str | Path] | None = None,
                      split: str = "test", device: str = "cpu", max_atoms: int = 2048,
                      weights: str | None = None, out: str | Path | None = None) -> dict:
    """:func:`evaluate` of a model trained on several datasets on each dataset's ``split``,
    each on its own energy reference, and on all their frames together: the metrics of
    all the frames (MAE/RMSE, the baselines pooled over the datasets' frames, each on its
    store's E0s, ``by_config_type``) with ``datasets`` {name: that dataset's
    :func:`evaluate` metrics, plus its ``store``}. ``stores`` {name: store}: where each
    dataset's store is (default, and for a name it leaves out: where the checkpoint
    recorded it). With ``out``, each dataset's predictions and parity plot are written to
    ``out``/NAME (:func:`write_outputs`, with its metrics.json) and the parity plot of all
    frames to ``out``/parity.png (paths under ``files``; ``out``/metrics.json is the
    caller's to write). Raises ConfigError for a model trained on one store or a store
    name it does not know, ConfigError or MissingFileError where a store is not recorded
    or gone (:func:`orbitgraph.train.datasets.recorded_store`), InputError where a store
    is not the one the dataset was trained on (another store id), and StoreError where a
    dataset's split holds no frames."""
    metrics, _ = dataset_evaluation(checkpoint, stores, split, device, max_atoms, weights, out)
    return metrics


def dataset_evaluation(checkpoint: str | Path, stores: dict[str, str | Path] | None = None,
                       split: str = "test", device: str = "cpu", max_atoms: int = 2048,
                       weights: str | None = None, out: str | Path | None = None,
                       keep_pairs: bool = False) -> tuple[dict, Pairs | None]:
    """:func:`evaluate_datasets`'s metrics, and the (reference, predicted) pairs of all the
    frames (each dataset's energies on its own reference) where ``out`` is given or
    ``keep_pairs`` (None otherwise)."""
    from orbitgraph.errors import ConfigError, InputError

    where = str(checkpoint)
    saved = load_potential(checkpoint, device=device, weights=weights, dtype=torch.float64)
    records = saved.datasets
    if not records:
        raise ConfigError(f"--store: {where} was trained on one store; give the store "
                          "(--store) or a source file (--source) to evaluate it on", "--store")
    stores = dict(stores or {})
    for name in stores:
        reference_shift(records, name, where)
    per, runs, subsets = {}, [], []
    for record in records:
        name = record["name"]
        path = stores.get(name) or recorded_store(records, name, where)
        store = open_store(path)
        if store.manifest.store_id != record.get("store_id"):
            raise InputError(f"{store.root}: not the store dataset {name!r} of {where} was "
                             f"trained on (store id {store.manifest.store_id}, trained on "
                             f"{record.get('store_id')}); give that store")
        subset = frames_to_evaluate(store, split)
        run = evaluate_run(saved, subset, device, max_atoms, keep=keep_pairs or out is not None,
                           e0_shift=reference_shift(records, name, where))
        where_out = Path(out) / name if out is not None else None
        per[name] = {**run.metrics(saved, subset, split, f"{store.root}: {split} split",
                                   where_out), "dataset": name, "store": str(store.root)}
        if where_out is not None:
            write_json(Path(per[name]["files"]["metrics"]), per[name])
        runs.append(run)
        subsets.append(subset)
    total = ErrorAccumulator()
    groups: dict[str, ErrorAccumulator] = {}
    group_errors: dict[str, list] = {}
    for run in runs:
        merge_into(total, run.acc)
        for group, acc in run.predictions.by_config_type.items():
            merge_into(groups.setdefault(group, ErrorAccumulator()), acc)
            group_errors.setdefault(group, []).append(
                baseline_errors(run.predictions.config_type_frames(group), None))
    untrained = sorted(set().union(*(m["untrained_elements"] for m in per.values())))
    metrics = {"split": split, "weights": saved.weights, **total.result(),
               "baseline": pooled_baselines([baseline_errors(subset, None)
                                             for subset in subsets]),
               "by_config_type": {group: {**acc.result(),
                                          "baseline": pooled_baselines(group_errors[group])}
                                  for group, acc in sorted(groups.items())},
               "frames_with_untrained_elements": sum(m["frames_with_untrained_elements"]
                                                     for m in per.values()),
               "untrained_elements": untrained, "datasets": per}
    pairs = None
    if keep_pairs or out is not None:
        pairs = Pairs.concat([run.predictions.pairs() for run in runs])
    if out is not None:
        from orbitgraph.train.plots import write_parity
        metrics["files"] = {
            "parity": write_parity(Path(out) / "parity.png", pairs, metrics,
                                   metrics["baseline"], f"{where}: {split} splits of "
                                   f"{', '.join(per)} ({metrics['frames']} frames)"),
            "metrics": str(Path(out) / "metrics.json")}
    return metrics, pairs


def merge_into(total: ErrorAccumulator, part: ErrorAccumulator) -> None:
    """Add the sums of ``part`` to ``total`` (errors of disjoint frames)."""
    total.load_tensor(total.merge_tensor() + part.merge_tensor())


def evaluate_source(checkpoint: str | Path, source: str | Path, out: str | Path,
                    source_format: str | None = None, device: str = "cpu",
                    max_atoms: int = 2048, weights: str | None = None,
                    label_keys: dict[str, str] | None = None,
                    dataset: str | None = None) -> dict:
    """:func:`evaluate` on every frame of a source file or folder (MPtrj JSON or extended
    XYZ, read as ``orbitgraph build`` reads it: the source's label conventions, quarantine
    of bad records). Its graphs are built with the checkpoint's graph parameters into a
    store in ``out``/store (:func:`orbitgraph.preprocess.build.build_store`, in this
    process, no val or test split), which a rerun on the same source reuses; the outputs
    are written to ``out``. ``label_keys``: the fields holding the labels, as
    ``orbitgraph build`` takes them ({"energy_key": ..., "forces_key": ..., "stress_key":
    ..., "virial_key": ...}; those not given follow the source's convention), e.g. for a
    file holding both ``REF_energy`` and a model's ``energy``. The energy baseline's E0s
    are the least-squares fit to these frames. ``dataset``: for a model trained on several
    datasets, the one whose energy reference the file's labels are on; required for such a
    model (a file is no dataset's store: ConfigError without it, and for a name the model
    does not know). Raises what ``build_store`` raises (one line naming the source) for a
    source that holds no usable frame, a folder ``out``/store that holds another store,
    or a label it cannot tell."""
    from orbitgraph.preprocess.build import build_store
    from orbitgraph.preprocess.cluster import ClusterConfig
    from orbitgraph.preprocess.store.params import SplitParams, StoreParams

    saved = load_potential(checkpoint, device=device, weights=weights, dtype=torch.float64)
    if saved.datasets and dataset is None:
        from orbitgraph.errors import ConfigError
        raise ConfigError(f"dataset: {checkpoint} was trained on the datasets "
                          f"{', '.join(r['name'] for r in saved.datasets)}; name the one whose "
                          f"energy reference (E0s) the labels of {source} are on (--dataset "
                          "NAME)", "dataset")
    shift = reference_shift(saved.datasets, dataset, str(checkpoint))
    params = StoreParams.from_dict(dict(label_keys or {}), where="evaluate").model_copy(
        update={"graph": saved.graph,
                "split": SplitParams(val_fraction=0.0, test_fraction=0.0)})
    summary = build_store(source, Path(out) / "store", params, source_format=source_format,
                          cluster=ClusterConfig(kind="synchronous"), progress=False)
    if summary.quarantined:
        logging.getLogger("orbitgraph.evaluate").warning(
            f"{source}: {summary.quarantined} records not evaluated (quarantined: see "
            f"{summary.store}/quarantine.parquet)")
    store = open_store(summary.store)
    metrics = evaluate_frames(saved, store, "all", f"{source}: all frames", device, max_atoms,
                              out, e0_shift=shift)
    if saved.datasets:
        metrics["dataset"] = dataset
    return metrics


def evaluate_frames(saved: SavedPotential, frames: GraphStore, split: str, title: str,
                    device: str = "cpu", max_atoms: int = 2048,
                    out: str | Path | None = None, e0_shift=None) -> dict:
    """The metrics of :func:`evaluate` for the model ``saved`` on ``frames`` (a store or a
    subset of one, not empty) named ``split`` in the metrics and ``title`` on the plot;
    written to ``out`` where given. ``e0_shift`` (float64 (119,), eV per atom of each Z):
    added to the model's energies, to put them on the frames' reference (None: none)."""
    run = evaluate_run(saved, frames, device, max_atoms, keep=out is not None,
                       e0_shift=e0_shift)
    return run.metrics(saved, frames, split, title, out)


@dataclass
class EvaluationRun:
    """A model's errors on some frames: all of them (``acc``) and per frame and per
    config_type (``predictions``)."""

    acc: ErrorAccumulator
    predictions: Predictions

    def metrics(self, saved: SavedPotential, frames: GraphStore, split: str, title: str,
                out: str | Path | None = None) -> dict:
        """:func:`evaluate_frames`'s metrics (one warning per untrained element); with
        ``out``, the files written there (:func:`write_outputs`)."""
        n_untrained, untrained = untrained_elements(saved.trained_elements, frames)
        per_frame = frames.index["elements"].to_pylist()
        for el in untrained:
            n = sum(1 for frame in per_frame if el in frame)
            logging.getLogger("orbitgraph.evaluate").warning(
                f"element {el}: no training frame of this model held it (its E0 is 0 eV and "
                f"the network never saw it); {n} of the {len(frames)} {split} frames hold it")
        by_type = self.predictions.by_config_type
        metrics = {"split": split, "weights": saved.weights, **self.acc.result(),
                   "baseline": baselines(frames, None),
                   "by_config_type": {group: {**group_acc.result(),
                                              "baseline": baselines(
                                                  self.predictions.config_type_frames(group),
                                                  None)}
                                      for group, group_acc in sorted(by_type.items())},
                   "frames_with_untrained_elements": n_untrained,
                   "untrained_elements": untrained}
        if out is not None:
            metrics["files"] = write_outputs(Path(out), self.predictions, metrics,
                                             f"{title} ({len(frames)} frames)")
        return metrics


def evaluate_run(saved: SavedPotential, frames: GraphStore, device: str = "cpu",
                 max_atoms: int = 2048, keep: bool = False, e0_shift=None) -> EvaluationRun:
    """Run the model ``saved`` (in float64) over ``frames`` in order, batches of at most
    ``max_atoms`` atoms, its energies moved by ``e0_shift`` (as :func:`evaluate_frames`);
    ``keep``: keep each frame's prediction (for the files and parity plots)."""
    model = saved.model.to(device=device, dtype=torch.float64).eval()
    if e0_shift is not None and np.any(e0_shift):
        model = OnReference(model, e0_shift)
    loader = make_loader(frames, LoaderConfig(max_atoms=max_atoms, shuffle=False),
                         graph=saved.graph)
    run = EvaluationRun(ErrorAccumulator(), Predictions(frames, keep=keep))
    add_errors(run.acc, model, loader, device, torch.float64, each=run.predictions.add)
    return run


class OnReference:
    """A potential whose energies are moved onto another dataset's E0 reference: called as
    the potential is, it adds Σ_i shift(z_i) (eV; ``shift`` float64 (119,), eV per atom of
    each atomic number) to each frame's energy; forces and stress are the potential's."""

    def __init__(self, model: Potential, shift):
        self.model, self.shift = model, shift

    def __call__(self, batch: Batch, **kwargs) -> dict:
        out = dict(self.model(batch, **kwargs))
        shift = frame_energy_shift(self.shift, batch)
        out["energy"] = out["energy"] + shift.to(out["energy"].dtype)
        return out


def write_outputs(out: Path, predictions: Predictions, metrics: dict, title: str) -> dict:
    """``predictions.extxyz``, ``predictions.csv`` and ``parity.png`` in ``out`` (created);
    {kind: path}, with ``metrics`` where the metrics JSON goes (written by the caller)."""
    from orbitgraph.train.plots import write_parity

    out.mkdir(parents=True, exist_ok=True)
    files = {"extxyz": out / "predictions.extxyz", "csv": out / "predictions.csv",
             "parity": out / "parity.png", "metrics": out / "metrics.json"}
    predictions.write_extxyz(files["extxyz"])
    predictions.write_csv(files["csv"])
    write_parity(files["parity"], predictions.pairs(), metrics, metrics["baseline"], title)
    return {kind: str(path) for kind, path in files.items()}


def write_json(path: Path, data: dict) -> None:
    """``data`` (metrics: numbers, strings, lists, dicts; numpy scalars as floats) as
    indented JSON at ``path``."""
    path.write_text(json.dumps(data, indent=1, default=float))
