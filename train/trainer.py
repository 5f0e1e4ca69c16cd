"""Training: stream a store into a potential, validate, checkpoint, resume exactly.

One optimiser step per batch. The loss is
    w_E · mean_frames ℓ(E/N) + w_F · mean_components ℓ(F) + w_σ · mean_components ℓ(σ)
with ℓ the squared error or Huber; under DDP the means run over the *global* batch (counts
are summed across ranks, :mod:`train.distributed`), so N ranks give the same step as one
process with their union. The learning rate follows :mod:`train.schedule`; the weights in
float64, float32, TF32 or bf16 autocast (:mod:`train.precision`).

A checkpoint (:mod:`train.checkpointing`) holds the config, model, EMA, optimiser, schedule,
RNG states, the loader position (epoch, batches delivered) and the epoch's loss so far: a
run killed mid-epoch and resumed continues the same trajectory and logs the same records
(:mod:`train.epoch_log`), and a finished run given a larger ``max_steps`` or ``epochs``
continues to the new budget. A run directory holding another model's or another store's run
is refused in one line (:class:`~orbitgraph.train.checkpointing.ResumeError`).

Several datasets: ``store`` given as a list of stores with weights and names (each a
:class:`~orbitgraph.train.datasets.DatasetSpec`, a mapping of its keys, or a path) trains
on all of them, each step drawing its dataset by weight
(:mod:`orbitgraph.train.mixing`); E0s are fitted per dataset and validation reports each
dataset's errors on its own reference (metrics ``NAME/energy_mae_meV_per_atom``...).

``best.pt`` holds the (EMA) weights with the lowest validation criterion
(:func:`~orbitgraph.train.evaluation.validation_loss`); a store without validation frames
has no such choice, and ``best.pt`` is then the model at the end of the latest epoch (the
log says so). Code outside the loop follows a run through callbacks (:mod:`train.callbacks`).
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from orbitgraph.errors import ConfigError, StoreError
from orbitgraph.model import Potential, build_model
from orbitgraph.model.config import ModelConfig, load_config
from orbitgraph.preprocess.graph_params import graph_for_model
from orbitgraph.preprocess.store import GraphStore, open_store
from orbitgraph.preprocess.store.e0 import statistics_with_e0
from orbitgraph.train.callbacks import Callback
from orbitgraph.train.checkpointing import (
    BEST,
    CHECKPOINT,
    TrainState,
    load_checkpoint,
    save_checkpoint,
    save_inference_model,
)
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.datasets import (
    Dataset,
    dataset_specs,
    energy_references,
    open_datasets,
    weighted_statistics,
)
from orbitgraph.train.distributed import all_sum, init_distributed, rank_device
from orbitgraph.train.ema import EMA
from orbitgraph.train.epoch_log import EpochLog
from orbitgraph.train.evaluation import (
    dataset_metrics,
    elements,
    untrained_elements,
    validation_loss,
    validation_metrics,
)
from orbitgraph.train.loader import empty_batch, make_loader, over_budget, steps_per_epoch
from orbitgraph.train.metrics import loss_sums
from orbitgraph.train.mixing import MixedPlanner, make_mixed_loader
from orbitgraph.train.precision import DTYPES, autocast, e3nn_inputs_in, set_matmul_precision
from orbitgraph.train.schedule import Schedule

log = logging.getLogger("orbitgraph.train")


@dataclass(frozen=True)
class Advice:
    """What the trainer's messages tell the user to do, in the terms of the command that
    runs it: ``go_on`` after "nothing to train" (a finished run), ``new_run`` after a
    :class:`~orbitgraph.train.checkpointing.ResumeError`. The defaults are ``orbitgraph
    train``'s."""

    go_on: str = "raise --max-steps or --epochs to continue, or give another --out"
    new_run: str = "give another --out to start a new run"


class Trainer:
    def __init__(self, store: str | Path | GraphStore, model_config, train_config: TrainConfig,
                 out: str | Path, resume: bool = True, advice: Advice = Advice(),
                 callbacks: Sequence[Callback] = ()):
        self.cfg = train_config.model_copy(
            update={"loader": train_config.loader.for_device(train_config.device)})
        self.out = Path(out)
        self.advice = advice
        self.callbacks = list(callbacks)
        self.info = init_distributed(self.cfg.device)
        self.device = rank_device(self.cfg.device, self.info)
        self.dtype = DTYPES[self.cfg.precision]
        set_matmul_precision(self.cfg.precision)
        mcfg = load_config(model_config)
        self.datasets: list[Dataset] | None = None  # several datasets: train/datasets.py
        if isinstance(store, (list, tuple)):
            self.datasets, self.graph = open_datasets(
                dataset_specs(list(store)), mcfg.k, mcfg.rank_envelope,
                mcfg.rank_envelope_width)
            self.store = self.datasets[0].store
        else:
            self.store = store if isinstance(store, GraphStore) else open_store(store)
            self.graph = graph_for_model(self.store.manifest.graph, mcfg.k,
                                         mcfg.rank_envelope, mcfg.rank_envelope_width)
        self.train_set = self.store.subset(split="train")
        self.val_set = self.store.subset(split="val")
        self.planner: MixedPlanner | None = None
        if self.datasets is not None:
            self.planner = MixedPlanner(
                [Dataset(d.name, d.store.subset(split="train"), d.weight)
                 for d in self.datasets], self.cfg.loader, self.info.rank, self.info.world)
            for data in self.planner.datasets:
                if not len(data.store):
                    raise StoreError(f"{data.name}: the store {data.store.root} has no "
                                     "training frames")
        if not self.has_validation():
            for name, needed in (("schedule", self.cfg.schedule == "plateau"),
                                 ("early_stopping_patience",
                                  self.cfg.early_stopping_patience is not None)):
                if needed:
                    raise ConfigError(f"train.{name}: {getattr(self.cfg, name)!r} follows the "
                                      "validation error, and the store has no validation "
                                      "frames (its val_fraction is 0)", f"train.{name}")
        self.trained_elements = (elements(self.train_set) if self.planner is None else sorted(
            set().union(*(elements(d.store) for d in self.planner.datasets))))
        torch.manual_seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        random.seed(self.cfg.seed)
        stats = (store_statistics(self.store, mcfg) if self.datasets is None
                 else mixed_statistics(self.datasets, self.planner.datasets, mcfg))
        self.model: Potential = build_model(mcfg.model_copy(update={"k": self.graph.k}),
                                            stats, self.dtype)
        self.model.to(device=self.device)
        if self.cfg.precision == "bf16":
            e3nn_inputs_in(self.model, self.dtype)
        self.ddp = None
        if self.info.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.ema = None
        if self.cfg.ema_decay is not None:
            self.ema = EMA(self.model, self.cfg.ema_decay)
        opt_cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.model.parameters(), lr=self.cfg.lr,
                                 weight_decay=self.cfg.weight_decay, amsgrad=self.cfg.amsgrad)
        self.steps_per_epoch = self.epoch_steps(0)
        total = self.cfg.max_steps or self.cfg.epochs * self.steps_per_epoch
        self.schedule = Schedule.for_run(self.optimizer, self.cfg, total)
        self.state = TrainState()
        self.total_steps = total
        self.resumed_from: int | None = None  # the step a checkpoint left off at
        self.epoch_log = EpochLog(self.out, self.cfg.tensorboard)
        if resume and (self.out / CHECKPOINT).is_file():
            load_checkpoint(self, self.out / CHECKPOINT)

    def epoch_steps(self, epoch: int) -> int:
        """Steps of ``epoch``: the busiest rank's batches of the store, or with several
        datasets the sum of theirs (:class:`~orbitgraph.train.mixing.MixedPlanner`)."""
        if self.planner is not None:
            return self.planner.steps(epoch)
        return steps_per_epoch(self.train_set, self.cfg.loader, epoch, self.info.world)

    def validation_sets(self) -> list[tuple[str, GraphStore, Dataset | None]]:
        """(name, frames, dataset) of each validation split: the store's, or each
        dataset's (name "" for a single store, whose dataset is None)."""
        if self.datasets is None:
            return [("", self.val_set, None)]
        if not hasattr(self, "_validation_sets"):  # subsets of large indexes take a while
            self._validation_sets = [(d.name, d.store.subset(split="val"), d)
                                     for d in self.datasets]
        return self._validation_sets

    def has_validation(self) -> bool:
        return any(len(frames) for _, frames, _ in self.validation_sets())

    def budget_reached(self) -> bool:
        if self.cfg.max_steps is not None:
            return self.state.step >= self.cfg.max_steps
        return self.state.epoch >= self.cfg.epochs

    def stopped_early(self) -> bool:
        patience = self.cfg.early_stopping_patience
        return patience is not None and self.state.epochs_without_improvement >= patience

    def budget_text(self) -> str:
        return (f"{self.cfg.max_steps} steps" if self.cfg.max_steps is not None
                else f"{self.cfg.epochs} epochs")

    # ----------------------------------------------------------------- one step
    def precision_context(self):
        """bf16: autocast to bfloat16 (lengths stay outside it, see model.geometry); the
        other precisions: nothing (TF32 is a global switch, set at construction)."""
        return autocast(self.cfg.precision, self.device)

    def _forward(self, module, batch):
        with self.precision_context():
            return module(batch, forces=True, stress=True, training=True)

    def train_step(self, batch) -> float:
        """One optimiser step on ``batch`` (this rank's share of the global batch) at the
        schedule's rate; returns the global batch's loss."""
        module = self.ddp or self.model
        self.model.train()
        out = self._forward(module, batch)
        sums = loss_sums(out, batch, self.cfg.loss, self.cfg.huber_delta)
        counts = all_sum(torch.stack([sums["n_energy"], sums["n_forces"], sums["n_stress"]])
                         .to(torch.float64), self.info)
        w = (self.cfg.energy_weight, self.cfg.forces_weight, self.cfg.stress_weight)
        loss = sum(wi * sums[key] / max(float(c), 1.0)
                   for wi, key, c in zip(w, ("energy", "forces", "stress"), counts, strict=True))
        # DDP averages gradients over ranks; scale so the result is the global-batch mean
        (loss * self.info.world).backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.state.step += 1
        self.schedule.step()  # the rate of the next step
        return float(all_sum(loss.detach().double().reshape(1), self.info))

    # --------------------------------------------------------------- training loop
    def fit(self, stop_after: int | None = None) -> dict:
        """Train until ``epochs``/``max_steps``; ``stop_after`` steps ends the process's work
        early right after a checkpoint (what a kill after that checkpoint leaves behind).
        Progress goes to the ``orbitgraph.train`` logger (INFO), problems at WARNING; the
        callbacks hear of the start, each step and each validation.

        Returns steps (in all), steps_this_call, epochs, wall_s, best_val and history."""
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._log_start()
        for callback in self.callbacks:
            callback.on_fit_start(self)
        t0 = time.perf_counter()
        steps_this_call = 0
        while not self.state.finished:
            epoch = self.state.epoch
            n_steps = self.epoch_steps(epoch)
            if self.planner is not None:
                loader = make_mixed_loader(self.planner, epoch, self.state.batches_in_epoch,
                                           self.graph, torch.float64)
            else:
                loader = make_loader(self.train_set, self.cfg.loader, epoch, self.info.rank,
                                     self.info.world, skip=self.state.batches_in_epoch,
                                     graph=self.graph, dtype=torch.float64)
            it = iter(loader)
            while self.state.batches_in_epoch < n_steps and not self.budget_reached():
                batch = next(it, None)
                batch = (batch if batch is not None else empty_batch(self.graph.k)).to(
                    self.device, self.dtype, non_blocking=True)
                loss = self.train_step(batch)
                for callback in self.callbacks:
                    callback.on_step_end(self, self.state.step, loss)
                self.state.epoch_loss_sum += loss
                self.state.epoch_loss_steps += 1
                self.state.batches_in_epoch += 1
                steps_this_call += 1
                if self.info.is_main and self.state.step % self.cfg.log_every == 0:
                    log.info(f"epoch {epoch} step {self.state.step} loss {loss:.5g} "
                             f"lr {self.schedule.lr:.3g}")
                if self.state.step % self.cfg.checkpoint_every == 0:
                    save_checkpoint(self)
                if stop_after is not None and steps_this_call >= stop_after:
                    save_checkpoint(self)
                    return {"stopped_at_step": self.state.step}
            self._end_of_pass(epoch, self.state.batches_in_epoch >= n_steps)
        if self.info.is_main and self.cfg.plots:
            from orbitgraph.train.plots import write_plots
            write_plots(self)
        return {"steps": self.state.step, "steps_this_call": steps_this_call,
                "epochs": self.state.epoch, "wall_s": time.perf_counter() - t0,
                "best_val": self.state.best_val, "history": self.state.history}

    def _end_of_pass(self, epoch: int, epoch_done: bool) -> None:
        """Validate, log, choose best.pt and checkpoint, at the end of an epoch or where the
        step budget stopped one part-way (the epoch then goes on if the budget is raised).

        The history holds one record per epoch: ``train_loss`` is the mean loss of the
        epoch's steps so far (those before a resume included), and a record of an epoch
        that the budget stopped part-way is replaced when the epoch goes on."""
        metrics = self.validate()
        has_val = self.has_validation()
        val_loss = validation_loss(self.cfg, metrics)
        if has_val:
            self.schedule.epoch_end(val_loss)
        state = self.state
        train_loss = (state.epoch_loss_sum / state.epoch_loss_steps if state.epoch_loss_steps
                      else float("nan"))
        record = {"epoch": epoch, "step": state.step, "train_loss": train_loss,
                  "lr": self.schedule.lr, **metrics}
        if state.history and state.history[-1]["epoch"] == epoch:
            state.history[-1] = record
        else:
            state.history.append(record)
        improved = has_val and val_loss < self.state.best_val
        if improved:
            self.state.best_val = val_loss
            self.state.epochs_without_improvement = 0
        elif has_val:
            self.state.epochs_without_improvement += 1
        if epoch_done:
            self.state.epoch += 1
            self.state.batches_in_epoch = 0
            self.state.epoch_loss_sum, self.state.epoch_loss_steps = 0.0, 0
        self.state.finished = self.budget_reached() or self.stopped_early()
        if self.info.is_main:
            self._log_epoch(record)
            if improved or not has_val:  # without validation: the latest epoch's model
                save_inference_model(self, self.out / BEST)
        save_checkpoint(self)
        for callback in self.callbacks:
            callback.on_epoch_end(self, epoch, record)

    def _log_start(self) -> None:
        """What the user should know before the first step: where a resumed run stands,
        frames that the budget cannot hold or the model cannot know, and what best.pt is."""
        if self.resumed_from is not None:
            where = (f"epoch {self.state.epoch}, batch {self.state.batches_in_epoch}"
                     if self.state.batches_in_epoch else f"start of epoch {self.state.epoch}")
            if self.state.finished:
                why = ("it stopped early: no validation improvement for "
                       f"{self.state.epochs_without_improvement} epochs" if self.stopped_early()
                       else f"it has reached {self.budget_text()}")
                log.info(f"{self.out}: nothing to train, {why} (step {self.state.step}); "
                         f"{self.advice.go_on}")
            else:
                log.info(f"{self.out}: resuming at step {self.state.step} ({where}), training "
                         f"to {self.budget_text()}")
        n_over, atoms, edges = over_budget(self.train_set, self.cfg.loader)
        if n_over:
            log.warning(f"{n_over} training frames exceed the batch budget "
                        f"(loader.max_atoms={self.cfg.loader.max_atoms} atoms, "
                        f"{self.cfg.loader.edge_budget} edges on {self.cfg.device}), the "
                        f"largest {atoms} atoms and {edges} edges: each makes a batch of its "
                        "own, which can exhaust the device's memory; raise the budget for this "
                        "device (loader.max_atoms_by_device, or --max-atoms) or leave such "
                        "frames out")
        n_untrained, untrained = untrained_elements(self.trained_elements, self.val_set)
        if n_untrained:
            log.warning(f"{n_untrained} of {len(self.val_set)} validation frames hold "
                        f"elements absent from the training split ({', '.join(untrained)}); "
                        f"their energy errors will be large")
        if not self.has_validation():
            log.warning("the store has no validation frames, so no model can be chosen by "
                        "validation: best.pt is the model at the end of the latest epoch (EMA "
                        "weights where EMA is on)")

    # ---------------------------------------------------------------- evaluation
    def inference_model(self) -> Potential:
        return self.ema.module if self.ema is not None else self.model

    def validate(self, store: GraphStore | None = None, keep_pairs: bool = False) -> dict:
        """The metrics of the inference model (:meth:`inference_model`) on ``store``
        (default: the validation split), over every rank; with ``keep_pairs``, this rank's
        (reference, predicted) pairs in ``last_pairs``."""
        if store is not None or self.datasets is None:
            metrics, self.last_pairs = validation_metrics(
                self.inference_model(), store if store is not None else self.val_set,
                self.cfg.loader, self.graph, self.info, self.device, self.dtype, keep_pairs)
            return metrics
        metrics, by_dataset, self.last_pairs = dataset_metrics(
            self.inference_model(), self.validation_sets(), self.cfg.loader, self.graph,
            self.info, self.device, self.dtype, keep_pairs)
        for name, result in by_dataset.items():
            metrics.update({f"{name}/{key}": value for key, value in result.items()})
        return metrics

    # -------------------------------------------------------------------- logging
    def _log_epoch(self, record: dict) -> None:
        self.epoch_log.write(self.state.history)
        if record["frames"]:
            log.info(f"epoch {record['epoch']}: train loss {record['train_loss']:.5g}, val "
                     f"energy MAE {record['energy_mae_meV_per_atom']:.2f} meV/atom, forces MAE "
                     f"{record['forces_mae_meV_per_A']:.1f} meV/Å, stress MAE "
                     f"{record['stress_mae_GPa']:.3f} GPa")
        else:
            log.info(f"epoch {record['epoch']}: train loss {record['train_loss']:.5g} (no "
                     "validation frames; best.pt is this model)")
        for name, _, _ in self.validation_sets():  # several datasets: a line for each
            if name and record.get(f"{name}/frames"):
                log.info(f"  dataset {name}: energy MAE "
                         f"{record[f'{name}/energy_mae_meV_per_atom']:.2f} meV/atom, forces "
                         f"MAE {record[f'{name}/forces_mae_meV_per_A']:.1f} meV/Å, stress MAE "
                         f"{record[f'{name}/stress_mae_GPa']:.3f} GPa "
                         f"({record[f'{name}/frames']} frames)")


def store_statistics(store: GraphStore, cfg: ModelConfig) -> dict:
    """The statistics of ``store`` that ``cfg`` leaves to the data, its E0s fitted as
    ``cfg.atomic_energies`` names (a mapping given is kept as it is); logged."""
    method = cfg.atomic_energies if isinstance(cfg.atomic_energies, str) else None
    stats = statistics_with_e0(store, method, regularisation=cfg.e0_regularisation,
                               cutoff=cfg.cutoff)
    e0 = stats["atomic_energies_eV"] if method else cfg.atomic_energies
    if method is None:
        missing = sorted(set(elements(store.subset(split="train")))
                         - {chemical_symbols[z] for z in e0})
        if missing:
            raise ConfigError(f"model.atomic_energies: no E0 for {', '.join(missing)} (elements "
                              "of the training frames); give every one, or name a method "
                              "(regularised, least_squares, average, isolated)",
                              "model.atomic_energies")
    if e0:
        log.info(f"E0s ({method or 'as given'}): {len(e0)} elements, {min(e0.values()):.4g} to "
                 f"{max(e0.values()):.4g} eV")
    return stats


def mixed_statistics(datasets: list[Dataset], train: list[Dataset], cfg: ModelConfig) -> dict:
    """The statistics of several datasets for ``cfg`` (:func:`weighted_statistics`): E0s
    fitted per dataset by the method ``cfg.atomic_energies`` names
    (:func:`~orbitgraph.train.datasets.energy_references`; each dataset's ``e0_shift`` set,
    in ``datasets`` and their training subsets ``train``), or a given mapping shared by
    all (no shifts); logged."""
    stats = weighted_statistics(datasets)
    if not isinstance(cfg.atomic_energies, str):
        return {**stats, "atomic_energies_method": "least_squares"}
    e0 = energy_references(datasets, cfg.atomic_energies, regularisation=cfg.e0_regularisation,
                           cutoff=cfg.cutoff)
    for data, sub in zip(datasets, train, strict=True):
        sub.e0_shift = data.e0_shift
        if np.any(data.e0_shift):
            worst = float(np.abs(data.e0_shift).max())
            log.info(f"dataset {data.name}: E0s fitted apart ({cfg.atomic_energies}), up to "
                     f"{worst:.4g} eV/atom from the model's; its energies are moved onto them")
    return {**stats, "atomic_energies_eV": e0, "atomic_energies_method": cfg.atomic_energies}
