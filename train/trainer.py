"""Training: stream a store into a potential, validate, checkpoint, resume exactly.

One optimiser step per batch. The loss is
    w_E · mean_frames ℓ(E/N) + w_F · mean_components ℓ(F) + w_σ · mean_components ℓ(σ)
with ℓ the squared error or Huber; under DDP the means run over the *global* batch (counts
are summed across ranks), so N ranks give the same step as one process with their union.

A checkpoint holds the config, model, EMA, optimiser, schedule, RNG states, the loader
position (epoch, batches delivered) and the epoch's loss so far: a run killed mid-epoch and
resumed continues the same trajectory and logs the same records (:mod:`train.epoch_log`),
and a finished run given a larger ``max_steps`` or ``epochs`` continues to the
new budget. A run directory holding another model's or another store's run is refused in
one line (:class:`ResumeError`).

``best.pt`` holds the (EMA) weights with the lowest validation criterion
(:meth:`Trainer.validation_loss`); a store without validation frames has no such choice,
and ``best.pt`` is then the model at the end of the latest epoch (the log says so).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist
from ase.data import chemical_symbols

from orbitgraph.errors import ConfigError, ResumeError, StoreError
from orbitgraph.model import (
    Potential,
    build_model,
    read_checkpoint,
    save_model,
    write_checkpoint,
)
from orbitgraph.model.config import ModelConfig, load_config
from orbitgraph.preprocess.graph_params import graph_for_model
from orbitgraph.preprocess.store import GraphStore, empty_splits, open_store
from orbitgraph.preprocess.store.e0 import statistics_with_e0
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.ema import EMA
from orbitgraph.train.epoch_log import EpochLog
from orbitgraph.train.loader import (
    LoaderConfig,
    empty_batch,
    make_loader,
    over_budget,
    steps_per_epoch,
)
from orbitgraph.train.metrics import ErrorAccumulator, loss_sums
from orbitgraph.train.weights import load_potential

DTYPES = {"float64": torch.float64, "float32": torch.float32, "tf32": torch.float32,
          "bf16": torch.float32}
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
log = logging.getLogger("orbitgraph.train")
# loader settings that decide which batches an epoch holds (num_workers does not)
PLAN_SETTINGS = ("max_atoms", "max_edges", "batch_frames", "shuffle", "shuffle_shards", "seed")


@dataclass(frozen=True)
class Advice:
    """What the trainer's messages tell the user to do, in the terms of the command that
    runs it: ``go_on`` after "nothing to train" (a finished run), ``new_run`` after a
    :class:`ResumeError`. The defaults are ``orbitgraph train``'s."""

    go_on: str = "raise --max-steps or --epochs to continue, or give another --out"
    new_run: str = "give another --out to start a new run"

def e3nn_inputs_in(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the floating inputs of ``model``'s e3nn Linear and TensorProduct layers to
    ``dtype``. Under bf16 autocast, torch's layers (MLPs, the symmetric contraction's
    products) hand on bf16 tensors, and e3nn contracts them with its float32 weights in
    code that autocast does not cover (tensordot): the e3nn layers then run in float32, the
    torch layers in bf16, and lengths, strain and spherical harmonics in float32 outside
    autocast (see model.geometry)."""
    from e3nn import o3

    def cast(module, args):
        return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a
                     for a in args)

    for module in model.modules():
        if isinstance(module, (o3.Linear, o3.TensorProduct)):
            module.register_forward_pre_hook(cast)


# ------------------------------------------------------------------------ distributed

@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

def init_distributed(device: str) -> DistInfo:
    """From torchrun's environment; NCCL on GPUs, gloo on CPU. Single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))

def all_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t

# -------------------------------------------------------------------------- schedule

@dataclass
class Schedule:
    """lr = base · warmup(step) · cosine(step) · plateau_factor (clamped at min_lr)."""

    kind: str
    base_lr: float
    warmup: int
    total: int
    patience: int
    factor: float
    min_lr: float
    plateau_factor: float = 1.0
    best: float = math.inf
    bad_epochs: int = 0

    def lr(self, step: int) -> float:
        f = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0
        if self.kind == "cosine" and self.total > 0:
            progress = min(1.0, step / self.total)
            f *= 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(self.min_lr, self.base_lr * f * self.plateau_factor)

    def epoch_end(self, val_loss: float) -> None:
        if self.kind != "plateau":
            return
        if val_loss < self.best - 1e-12:
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.plateau_factor *= self.factor
                self.bad_epochs = 0

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)

# ---------------------------------------------------------------------------- state

@dataclass
class TrainState:
    epoch: int = 0
    batches_in_epoch: int = 0  # the loader position within the epoch
    step: int = 0
    best_val: float = math.inf
    epochs_without_improvement: int = 0
    history: list = field(default_factory=list)  # one record per epoch (see _end_of_pass)
    finished: bool = False
    # this epoch's training loss so far: the sum of its steps' losses (each the global
    # batch's, all-reduced, so equal on every rank) and their count; checkpointed, so that a
    # resumed epoch logs the mean over all its steps
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0

def rng_state() -> dict:
    """torch's, numpy's and Python's global RNG states as tensors and plain data (numpy's
    MT19937 key as an int64 tensor), so checkpoints load with weights_only=True."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": (str(name), torch.from_numpy(key.astype(np.int64)), int(pos),
                      int(has_gauss), float(gauss)),
            "python": random.getstate()}

def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.int64).astype(np.uint32), pos,
                         has_gauss, gauss))
    random.setstate(state["python"])

class Trainer:
    def __init__(self, store: str | Path | GraphStore, model_config, train_config: TrainConfig,
                 out: str | Path, resume: bool = True, advice: Advice = Advice()):
        self.cfg = train_config.model_copy(
            update={"loader": train_config.loader.for_device(train_config.device)})
        self.out = Path(out)
        self.advice = advice
        self.info = init_distributed(self.cfg.device)
        self.device = torch.device(self.cfg.device if not self.cfg.device.startswith("cuda")
                                   else f"cuda:{self.info.local_rank}"
                                   if self.cfg.device == "cuda" else self.cfg.device)
        self.dtype = DTYPES[self.cfg.precision]
        if self.cfg.precision == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.store = store if isinstance(store, GraphStore) else open_store(store)
        self.train_set = self.store.subset(split="train")
        self.val_set = self.store.subset(split="val")
        if not len(self.val_set):
            for name, needed in (("schedule", self.cfg.schedule == "plateau"),
                                 ("early_stopping_patience",
                                  self.cfg.early_stopping_patience is not None)):
                if needed:
                    raise ConfigError(f"train.{name}: {getattr(self.cfg, name)!r} follows the "
                                      "validation error, and the store has no validation "
                                      "frames (its val_fraction is 0)", f"train.{name}")
        self.trained_elements = elements(self.train_set)
        torch.manual_seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        random.seed(self.cfg.seed)
        mcfg = load_config(model_config)
        self.graph = graph_for_model(self.store.manifest.graph, mcfg.k, mcfg.rank_envelope,
                                     mcfg.rank_envelope_width)
        self.model: Potential = build_model(mcfg.model_copy(update={"k": self.graph.k}),
                                            store_statistics(self.store, mcfg), self.dtype)
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
        self.steps_per_epoch = steps_per_epoch(self.train_set, self.cfg.loader, 0, self.info.world)
        total = self.cfg.max_steps or self.cfg.epochs * self.steps_per_epoch
        self.schedule = Schedule(self.cfg.schedule, self.cfg.lr, self.cfg.warmup_steps, total,
                                 self.cfg.plateau_patience, self.cfg.plateau_factor,
                                 self.cfg.min_lr)
        self.state = TrainState()
        self.total_steps = total
        self.resumed_from: int | None = None  # the step a checkpoint left off at
        self.epoch_log = EpochLog(self.out, self.cfg.tensorboard)
        if resume and (self.out / CHECKPOINT).is_file():
            self.load_checkpoint(self.out / CHECKPOINT)

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
        return (torch.autocast(self.device.type, dtype=torch.bfloat16)
                if self.cfg.precision == "bf16" else nullcontext())

    def _forward(self, module, batch):
        with self.precision_context():
            return module(batch, forces=True, stress=True, training=True)

    def train_step(self, batch) -> float:
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
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr(self.state.step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.state.step += 1
        return float(all_sum(loss.detach().double().reshape(1), self.info))

    # --------------------------------------------------------------- training loop
    def fit(self, stop_after: int | None = None) -> dict:
        """Train until ``epochs``/``max_steps``; ``stop_after`` steps ends the process's work
        early right after a checkpoint (what a kill after that checkpoint leaves behind).
        Progress goes to the ``orbitgraph.train`` logger (INFO), problems at WARNING.

        Returns steps (in all), steps_this_call, epochs, wall_s, best_val and history."""
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._log_start()
        t0 = time.perf_counter()
        steps_this_call = 0
        while not self.state.finished:
            epoch = self.state.epoch
            n_steps = steps_per_epoch(self.train_set, self.cfg.loader, epoch, self.info.world)
            loader = make_loader(self.train_set, self.cfg.loader, epoch, self.info.rank,
                                 self.info.world, skip=self.state.batches_in_epoch,
                                 graph=self.graph, dtype=torch.float64)
            it = iter(loader)
            while self.state.batches_in_epoch < n_steps and not self.budget_reached():
                batch = next(it, None)
                batch = (batch if batch is not None else empty_batch(self.graph.k)).to(
                    self.device, self.dtype, non_blocking=True)
                loss = self.train_step(batch)
                self.state.epoch_loss_sum += loss
                self.state.epoch_loss_steps += 1
                self.state.batches_in_epoch += 1
                steps_this_call += 1
                if self.info.is_main and self.state.step % self.cfg.log_every == 0:
                    log.info(f"epoch {epoch} step {self.state.step} loss {loss:.5g} "
                             f"lr {self.schedule.lr(self.state.step):.3g}")
                if self.state.step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if stop_after is not None and steps_this_call >= stop_after:
                    self.save_checkpoint()
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
        has_val = len(self.val_set) > 0
        val_loss = self.validation_loss(metrics)
        if has_val:
            self.schedule.epoch_end(val_loss)
        state = self.state
        train_loss = (state.epoch_loss_sum / state.epoch_loss_steps if state.epoch_loss_steps
                      else float("nan"))
        record = {"epoch": epoch, "step": state.step, "train_loss": train_loss,
                  "lr": self.schedule.lr(state.step), **metrics}
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
                self.save_inference_model(self.out / BEST)
        self.save_checkpoint()

    def validation_loss(self, metrics: dict) -> float:
        """The criterion for best.pt, the plateau schedule and early stopping:
        w_E · MAE(E/N) [eV/atom] + w_F · MAE(F) [eV/Å] + w_σ · MAE(σ) [GPa], the stress term
        left out where no validation frame has a stress label (NaN without validation)."""
        loss = (self.cfg.energy_weight * metrics["energy_mae_meV_per_atom"] / 1000
                + self.cfg.forces_weight * metrics["forces_mae_meV_per_A"] / 1000)
        if self.cfg.stress_weight and not math.isnan(metrics["stress_mae_GPa"]):
            loss += self.cfg.stress_weight * metrics["stress_mae_GPa"]
        return loss

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
        if not len(self.val_set):
            log.warning("the store has no validation frames, so no model can be chosen by "
                        "validation: best.pt is the model at the end of the latest epoch (EMA "
                        "weights where EMA is on)")

    # ---------------------------------------------------------------- evaluation
    def inference_model(self) -> Potential:
        return self.ema.module if self.ema is not None else self.model

    def validate(self, store: GraphStore | None = None, keep_pairs: bool = False) -> dict:
        store = store if store is not None else self.val_set
        acc = ErrorAccumulator(keep_pairs=keep_pairs)
        model = self.inference_model()
        model.eval()
        if len(store):
            in_order = self.cfg.loader.model_copy(update={"shuffle": False, "num_workers": 0})
            loader = make_loader(store, in_order,
                                 0, self.info.rank, self.info.world, graph=self.graph)
            for batch in loader:
                batch = batch.to(self.device, self.dtype)
                out = model(batch, forces=True, stress=True, training=False)
                acc.add(out, batch)
        if self.info.world > 1:
            acc.load_tensor(all_sum(acc.merge_tensor(), self.info))
        self.last_pairs = acc.pairs
        return acc.result()

    # --------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: Path | None = None) -> None:
        if not self.info.is_main:
            return
        ckpt = {
            "model_config": self.model.config.to_dict(),
            "model_state": self.model.state_dict(),
            "ema_state": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "state": self.state.__dict__,
            "rng": rng_state(),
            "train_config": self.cfg.to_dict(),
            "graph": self.graph.to_dict(),
            "store_id": self.store.manifest.store_id,
            "world": self.info.world,
            "trained_elements": self.trained_elements,
        }
        path = path or self.out / CHECKPOINT
        write_checkpoint(ckpt, path)
        log.debug(f"{path}: step {self.state.step} saved")

    def load_checkpoint(self, path: Path) -> None:
        """Continue the run in ``path``: its states, this run's budget and schedule settings
        (a larger budget continues a finished run; the cosine then spans the new one)."""
        ckpt = read_checkpoint(path, map_location=self.device)
        self._check_same_run(ckpt)
        self.model.load_state_dict(ckpt["model_state"])
        if self.ema is not None and ckpt["ema_state"] is not None:
            self.ema.load_state_dict(ckpt["ema_state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict({key: ckpt["schedule"][key] for key in
                                       ("plateau_factor", "best", "bad_epochs")})
        self.state = TrainState(**ckpt["state"])
        self.state.finished = self.budget_reached() or self.stopped_early()
        self.resumed_from = self.state.step
        self.epoch_log.resume(self.state.step, self._standing_records())
        if self.state.batches_in_epoch and "epoch_loss_steps" not in ckpt["state"]:
            log.warning(f"{path} was written before checkpoints held the epoch's loss so "
                        f"far: epoch {self.state.epoch}'s train_loss will be the mean of the "
                        "steps after this resume only")
        set_rng_state(ckpt["rng"])

    def _standing_records(self) -> list[dict]:
        """The history's records that this (resumed) run keeps: all but that of an epoch
        the step budget stopped part-way, which goes on now and gets a new record."""
        history, state = self.state.history, self.state
        goes_on = bool(state.batches_in_epoch and history and
                       history[-1]["epoch"] == state.epoch)
        return history[:-1] if goes_on else list(history)

    def _check_same_run(self, ckpt: dict) -> None:
        """Raise :class:`ResumeError` unless ``ckpt`` is a run of this model on this store's
        graphs, and, stopped mid-epoch, one whose epoch plan this run would make alike."""
        restart = self.advice.new_run
        if ckpt["store_id"] != self.store.manifest.store_id:
            raise ResumeError(f"{self.out} holds a run on store {ckpt['store_id']}, not on "
                              f"{self.store.manifest.store_id} ({self.store.location}); {restart}")
        saved = ModelConfig.from_dict(ckpt["model_config"]).to_dict()  # with newer defaults
        for what, theirs, ours in (("model", saved, self.model.config.to_dict()),
                                   ("graph", ckpt["graph"], self.graph.to_dict())):
            changed = [f"{key} {theirs.get(key)!r} -> {ours[key]!r}" for key in ours
                       if key != "atomic_energies" and theirs.get(key) != ours[key]]
            if changed:
                raise ResumeError(f"{self.out} holds a run of another {what} "
                                  f"({', '.join(changed[:4])}); {restart}")
        if ckpt["state"]["batches_in_epoch"]:
            theirs = ckpt["train_config"]["loader"]
            ours = self.cfg.loader.to_dict()
            changed = [f"loader.{key} {theirs[key]!r} -> {ours[key]!r}" for key in PLAN_SETTINGS
                       if theirs[key] != ours[key]]
            if ckpt.get("world", 1) != self.info.world:
                changed.append(f"ranks {ckpt.get('world', 1)} -> {self.info.world}")
            if changed:
                raise ResumeError(
                    f"{self.out} stopped part-way through epoch {ckpt['state']['epoch']}, whose "
                    f"batches depend on what this run changes ({', '.join(changed)}): resume "
                    f"with the same settings, or {restart}")

    def save_inference_model(self, path: Path) -> None:
        """Config + (EMA) weights + graph parameters: what the calculator and evaluate need."""
        state = (self.ema.model_state(self.model) if self.ema is not None
                 else self.model.state_dict())
        save_model(self.model, path, state=state,
                   extra={"graph": self.graph.to_dict(), "store_id": self.store.manifest.store_id,
                          "trained_elements": self.trained_elements, "step": self.state.step,
                          "weights": "ema" if self.ema is not None else "raw"})

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
             device: str = "cpu", max_atoms: int = 2048, weights: str | None = None) -> dict:
    """MAE/RMSE of a saved model (in float64) on a split of a store, which weights they are
    (``weights``, in words: by default those validation used, the EMA's where training kept
    one; see :func:`orbitgraph.train.weights.load_potential`), and how many of the split's
    frames hold elements that none of the model's training frames held (see
    :func:`untrained_elements`); one warning per such element (``orbitgraph.evaluate``
    logger). Raises StoreError when the split holds no frames (:func:`frames_to_evaluate`)."""
    saved = load_potential(checkpoint, device=device, weights=weights, dtype=torch.float64)
    store = store if isinstance(store, GraphStore) else open_store(store)
    subset = frames_to_evaluate(store, split)
    model = saved.model.to(device=device, dtype=torch.float64).eval()
    loader = make_loader(subset, LoaderConfig(max_atoms=max_atoms, shuffle=False),
                         graph=saved.graph)
    acc = ErrorAccumulator()
    for batch in loader:
        batch = batch.to(device, torch.float64)
        acc.add(model(batch), batch)
    n_untrained, untrained = untrained_elements(saved.trained_elements, subset)
    per_frame = subset.index["elements"].to_pylist()
    for el in untrained:
        n = sum(1 for frame in per_frame if el in frame)
        logging.getLogger("orbitgraph.evaluate").warning(
            f"element {el}: no training frame of this model held it (its E0 is 0 eV "
            f"and the network never saw it); {n} of the {len(subset)} {split} frames hold it")
    return {"split": split, "weights": saved.weights, **acc.result(),
            "frames_with_untrained_elements": n_untrained, "untrained_elements": untrained}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, default=float))
