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

While ``fit`` runs, the main rank writes everything the run says to ``train.log`` as well,
with a progress bar on a terminal (:mod:`orbitgraph.train.run_log`); SIGINT and SIGTERM stop the run
after the step in progress with a checkpoint of it (:mod:`orbitgraph.train.interrupts`).

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

import contextlib
import logging
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols
from filelock import FileLock, Timeout

from orbitgraph.errors import ConfigError, ResumeError, StoreError
from orbitgraph.model import Potential, build_model
from orbitgraph.model.config import ModelConfig, load_config
from orbitgraph.preprocess.graph_params import graph_for_model
from orbitgraph.preprocess.store import GraphStore, open_store
from orbitgraph.preprocess.store.e0 import statistics_with_e0
from orbitgraph.train.callbacks import Callback, StepLosses
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
    pooled_statistics,
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
from orbitgraph.train.interrupts import Interrupted, StopRequests, signal_name
from orbitgraph.train.loader import empty_batch, make_loader, over_budget, steps_per_epoch
from orbitgraph.train.metrics import loss_sums
from orbitgraph.train.mixing import MixedPlanner, make_mixed_loader
from orbitgraph.train.precision import DTYPES, autocast, e3nn_inputs_in, set_matmul_precision
from orbitgraph.train.run_log import TRAIN_LOG, RunLog
from orbitgraph.train.schedule import Schedule

log = logging.getLogger("orbitgraph.train")
RUN_LOCK = ".run.lock"  # held by the process training in a run directory


@dataclass(frozen=True)
class Advice:
    """What the trainer's messages tell the user to do, in the terms of the command that
    runs it: ``go_on`` after "nothing to train" (a finished run), ``new_run`` after a
    :class:`~orbitgraph.train.checkpointing.ResumeError`. The defaults are ``orbitgraph
    train``'s."""

    go_on: str = "raise --max-steps or --epochs to continue, or give another --out"
    new_run: str = "give another --out to start a new run"


class Trainer:
    """One training run in the run directory ``out`` (resumed from its checkpoint unless
    ``resume`` is False). ``step_losses`` records every step's loss (``step_losses.csv``,
    the loss curve); ``callbacks`` follow the run (:mod:`train.callbacks`)."""

    def __init__(self, store: str | Path | GraphStore, model_config, train_config: TrainConfig,
                 out: str | Path, resume: bool = True, advice: Advice = Advice(),
                 callbacks: Sequence[Callback] = ()):
        self.cfg = train_config.model_copy(
            update={"loader": train_config.loader.for_device(train_config.device)})
        self.out = Path(out)
        self.advice = advice
        self.step_losses = StepLosses()
        self.callbacks = [self.step_losses, *callbacks]
        self._stop: StopRequests | None = None  # SIGINT/SIGTERM while fit runs
        self.stop_agreed = False  # a rank received one: every rank stops after this step
        self.replanned: str | None = None  # how a resume changed the learning-rate plan
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
        self.e0_text = e0_text(mcfg, stats)
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
        return steps_per_epoch(self.train_set, self.cfg.loader, epoch, self.info.world,
                               self.info.rank)

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
        counts = torch.stack([sums["n_energy"], sums["n_forces"], sums["n_stress"]]
                             ).to(torch.float64)
        # a signal on any rank stops every rank after this same step: its flag is summed
        # with the counts (no extra collective)
        stop = float(self._stop is not None and self._stop.requested)
        counts = all_sum(torch.cat([counts, counts.new_tensor([stop])]), self.info)
        self.stop_agreed = bool(counts[3] > 0)
        w = self.loss_weights(self.state.step)
        loss = sum(wi * sums[key] / max(float(c), 1.0) for wi, key, c
                   in zip(w, ("energy", "forces", "stress"), counts[:3], strict=True))
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

    def loss_weights(self, step: int) -> tuple[float, float, float]:
        """(energy, forces, stress) weights of optimiser step ``step`` (from 0): stage two's
        from its first step on (``train.stage_two``), else the run's."""
        w = self.cfg.stage_two if self.schedule.in_stage_two(step) else self.cfg
        return w.energy_weight, w.forces_weight, w.stress_weight

    # --------------------------------------------------------------- training loop
    def fit(self, stop_after: int | None = None) -> dict:
        """Train until ``epochs``/``max_steps``; ``stop_after`` steps ends the process's work
        early right after a checkpoint (what a kill after that checkpoint leaves behind).
        Progress goes to the ``orbitgraph.train`` logger (INFO), problems at WARNING, all of
        it also to ``train.log`` in the run directory, with a progress bar on a terminal
        (:mod:`train.run_log`); the callbacks hear of the start, each step and each
        validation.

        SIGINT and SIGTERM received meanwhile stop the run after the optimiser step in
        progress, on every rank at the same step: the checkpoint of that step is written,
        a warning says which step the same command resumes from, and
        :class:`~orbitgraph.train.interrupts.Interrupted` is raised. The signals' previous
        handlers are restored when ``fit`` ends.

        One process trains in a run directory at a time: the main rank holds an advisory lock
        on ``OUT/.run.lock`` (released when the process ends, killed too), and a second run
        started on the same directory meanwhile raises ResumeError on every rank before it
        writes anything (two runs would interleave ``train.log`` and ``step_losses.csv``
        and overwrite each other's checkpoints, as when SLURM requeues a job whose first
        instance is still alive).

        Returns steps (in all), steps_this_call, epochs, wall_s, best_val and history."""
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        with self._run_dir_lock(), \
                RunLog(self.out, self.info.is_main, self.total_steps, self.state.step) as run_log, \
                StopRequests(announce=self.info.is_main) as stop:
            self._stop = stop
            try:
                return self._fit(stop_after, run_log)
            finally:
                self._stop = None
                self.stop_agreed = False

    @contextlib.contextmanager
    def _run_dir_lock(self):
        """Hold ``OUT/.run.lock`` (main rank) while the run trains; ResumeError on every rank
        when another process holds it."""
        lock = FileLock(self.out / RUN_LOCK) if self.info.is_main else None
        busy = torch.zeros(1, device=self.device)
        if lock is not None:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                busy += 1
        if float(all_sum(busy, self.info)):
            raise ResumeError(f"{self.out}: another process is training in this run directory "
                              f"(it holds {self.out / RUN_LOCK}); wait for it to end or stop "
                              "it, or give another --out")
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    def _fit(self, stop_after: int | None, run_log: RunLog) -> dict:
        if self.info.is_main:
            self._log_start()
        for callback in self.callbacks:
            callback.on_fit_start(self)
        run_log.start_bar()
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
                if loss > self.state.epoch_loss_max:
                    self.state.epoch_loss_max = loss
                    self.state.epoch_loss_max_step = self.state.step
                self.state.batches_in_epoch += 1
                steps_this_call += 1
                run_log.step(log, self.state.step, f"epoch {epoch} step {self.state.step} loss "
                             f"{loss:.5g} lr {self.schedule.lr:.3g}",
                             f"epoch {epoch}, loss {loss:.4g}", self.cfg.log_every)
                saved = self.state.step % self.cfg.checkpoint_every == 0
                if saved:
                    save_checkpoint(self)
                if self._stop_now():
                    self._interrupt(saved)
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

    def _stop_now(self) -> bool:
        """Whether to stop after the step just taken: a rank had a signal by the time the
        step summed its counts (every rank then agrees), or, in a single process, by now."""
        if self.stop_agreed:
            return True
        return self.info.world == 1 and self._stop is not None and self._stop.requested

    def _interrupt(self, saved: bool) -> None:
        """A rank received SIGINT or SIGTERM: checkpoint this step (unless ``saved``), say
        where the run resumes, raise :class:`~orbitgraph.train.interrupts.Interrupted`."""
        if not saved:
            save_checkpoint(self)
        signum = self._stop.signum if self._stop is not None else None
        signum = signum if signum is not None else signal.SIGTERM  # another rank's signal
        state = self.state
        message = (f"{signal_name(signum)}: stopped after step {state.step} (epoch "
                   f"{state.epoch}, batch {state.batches_in_epoch}); {self.out / CHECKPOINT} "
                   f"holds it, and the same command resumes from step {state.step}")
        if self.info.is_main:
            log.warning(message)
        raise Interrupted(signum, state.step, message)

    def _end_of_pass(self, epoch: int, epoch_done: bool) -> None:
        """Validate, log, choose best.pt and checkpoint, at the end of an epoch or where the
        step budget stopped one part-way (the epoch then goes on if the budget is raised).

        The history holds one record per epoch: ``train_loss`` is the mean loss of the
        epoch's steps so far (those before a resume included), ``train_loss_max`` the
        largest of them, and a record of an epoch
        that the budget stopped part-way is replaced when the epoch goes on."""
        metrics = self.validate()
        has_val = self.has_validation()
        # the stage of the steps just taken decides the criterion; a validation of another
        # stage than best_val's chooses best.pt anew
        stage_two = self.schedule.in_stage_two(self.state.step - 1)
        val_loss = validation_loss(self.cfg, metrics, stage_two)
        stage = 2 if stage_two else 1
        if stage != self.state.best_stage:
            self.state.best_stage = stage
            self.state.best_val, self.state.epochs_without_improvement = math.inf, 0
            if self.info.is_main and stage_two:
                log.info(f"stage two from step {self.schedule.stage_two[0]}: lr "
                         f"{self.schedule.stage_two[1]:g}, weights energy "
                         f"{self.cfg.stage_two.energy_weight:g}, forces "
                         f"{self.cfg.stage_two.forces_weight:g}, stress "
                         f"{self.cfg.stage_two.stress_weight:g}; best.pt is chosen among "
                         "its validations")
        if has_val:
            self.schedule.epoch_end(val_loss)
        state = self.state
        train_loss = (state.epoch_loss_sum / state.epoch_loss_steps if state.epoch_loss_steps
                      else float("nan"))
        record = {"epoch": epoch, "step": state.step, "train_loss": train_loss,
                  "train_loss_max": state.epoch_loss_max if state.epoch_loss_steps
                  else float("nan"), "lr": self.schedule.lr, **metrics}
        n = state.epoch_loss_steps
        loss_text = (f"train loss {train_loss:.5g} (mean of {n} step{'s' * (n != 1)}, "
                     f"the largest {state.epoch_loss_max:.5g} at step "
                     f"{state.epoch_loss_max_step})" if state.epoch_loss_steps
                     else f"train loss {train_loss:.5g}")
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
            self.state.epoch_loss_max, self.state.epoch_loss_max_step = 0.0, 0
        self.state.finished = self.budget_reached() or self.stopped_early()
        if self.info.is_main:
            self._log_epoch(record, loss_text)
            if improved or not has_val:  # without validation: the latest epoch's model
                save_inference_model(self, self.out / BEST)
        save_checkpoint(self)
        for callback in self.callbacks:
            callback.on_epoch_end(self, epoch, record)

    def _log_start(self) -> None:
        """What the user should know before the first step: the run's summary
        (:meth:`summary`), where a resumed run stands and how its learning-rate plan
        changed, frames that the budget cannot hold or the model cannot know, and what
        best.pt is."""
        for line in self.summary():
            log.info(line)
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
                if self.replanned:
                    log.info(self.replanned)
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

    def summary(self) -> list[str]:
        """The lines that open a run: the model (parameters, dtype, device, threads, ranks),
        the store (id; frames and atoms per split), the E0s (their source and range), the
        budget (steps per epoch and in all, the batch budget), the optimiser and schedule,
        and where the run writes."""
        cfg, mcfg = self.cfg, self.model.config
        params = sum(p.numel() for p in self.model.parameters())
        ranks = f" on each of {self.info.world} ranks" if self.info.world > 1 else ""
        lines = [f"model: {mcfg.kind}, {params:,} parameters, {cfg.precision} on "
                 f"{self.device}{ranks}, {torch.get_num_threads()} CPU threads"]
        splits = []
        for split in ("train", "val", "test"):
            subset = self.store.subset(split=split)
            atoms = int(subset.index.column("n_atoms").to_numpy().sum()) if len(subset) else 0
            splits.append(f"{split} {len(subset):,} frames ({atoms:,} atoms)")
        lines.append(f"store {self.store.manifest.store_id} ({self.store.root}): "
                     + ", ".join(splits))
        if self.e0_text:
            lines.append(self.e0_text)
        per_epoch = self.steps_per_epoch
        batches = (f"{cfg.loader.batch_frames} frames" if cfg.loader.batch_frames is not None
                   else f"up to {cfg.loader.max_atoms} atoms and {cfg.loader.edge_budget} edges")
        steps = (f"{self.total_steps:,} steps" if cfg.max_steps is not None
                 else f"{cfg.epochs} epochs = {self.total_steps:,} steps")
        lines.append(f"budget: {steps}, {per_epoch:,} steps per epoch (batches of {batches}); "
                     f"checkpoint every {cfg.checkpoint_every} steps, log every "
                     f"{cfg.log_every}")
        warmup = f", {cfg.warmup_steps} warmup steps" if cfg.warmup_steps else ""
        lines.append(f"optimiser: {cfg.optimizer}, lr {cfg.lr:g} ({cfg.schedule}{warmup}, "
                     f"floor {cfg.min_lr:g}); loss {cfg.loss} with weights energy "
                     f"{cfg.energy_weight:g}, forces {cfg.forces_weight:g}, stress "
                     f"{cfg.stress_weight:g}")
        if cfg.stage_two is not None:
            two = cfg.stage_two
            lines.append(f"stage two from step {self.schedule.stage_two[0]:,}: lr {two.lr:g} "
                         f"(constant), weights energy {two.energy_weight:g}, forces "
                         f"{two.forces_weight:g}, stress {two.stress_weight:g}")
        lines.append(f"run directory: {self.out} (log: {self.out / TRAIN_LOG})")
        return lines

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
    def _log_epoch(self, record: dict, loss: str) -> None:
        """The epoch's line: ``loss``, its mean training loss, which a few large steps can
        dominate, with the number of steps and the largest step loss (the log lines show
        every ``log_every``-th step only; ``step_losses.csv`` and the loss curves show them
        all), and the validation MAEs."""
        self.epoch_log.write(self.state.history)
        if record["frames"]:
            log.info(f"epoch {record['epoch']}: {loss}, val "
                     f"energy MAE {record['energy_mae_meV_per_atom']:.2f} meV/atom, forces MAE "
                     f"{record['forces_mae_meV_per_A']:.1f} meV/Å, stress MAE "
                     f"{record['stress_mae_GPa']:.3f} GPa")
        else:
            log.info(f"epoch {record['epoch']}: {loss} (no validation frames; best.pt is "
                     "this model)")
        for name, _, _ in self.validation_sets():  # several datasets: a line for each
            if name and record.get(f"{name}/frames"):
                log.info(f"  dataset {name}: energy MAE "
                         f"{record[f'{name}/energy_mae_meV_per_atom']:.2f} meV/atom, forces "
                         f"MAE {record[f'{name}/forces_mae_meV_per_A']:.1f} meV/Å, stress MAE "
                         f"{record[f'{name}/stress_mae_GPa']:.3f} GPa "
                         f"({record[f'{name}/frames']} frames)")


def store_statistics(store: GraphStore, cfg: ModelConfig) -> dict:
    """The statistics of ``store`` that ``cfg`` leaves to the data, its E0s fitted as
    ``cfg.atomic_energies`` names (a mapping given is kept as it is; :func:`e0_text`
    describes them). Raises ConfigError where a mapping lacks an element of the training
    split."""
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
    return stats


def e0_text(cfg: ModelConfig, stats: dict) -> str | None:
    """The E0 line of a run's summary: where the E0s come from (the method fitted to the
    store, or "as given") and the range of their values in eV; None without E0s."""
    method = cfg.atomic_energies if isinstance(cfg.atomic_energies, str) else None
    e0 = stats["atomic_energies_eV"] if method else cfg.atomic_energies
    if not e0:
        return None
    return (f"E0s ({method or 'as given'}): {len(e0)} elements, {min(e0.values()):.4g} to "
            f"{max(e0.values()):.4g} eV")


def mixed_statistics(datasets: list[Dataset], train: list[Dataset], cfg: ModelConfig) -> dict:
    """The statistics of several datasets for ``cfg`` (:func:`pooled_statistics`): E0s
    fitted per dataset by the method ``cfg.atomic_energies`` names
    (:func:`~orbitgraph.train.datasets.energy_references`; each dataset's ``e0_shift`` set,
    in ``datasets`` and their training subsets ``train``), or a given mapping shared by
    all (no shifts); logged."""
    stats = pooled_statistics(datasets, train)
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
