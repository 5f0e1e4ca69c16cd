"""Training: stream a store into a potential, validate, checkpoint, resume exactly.

One optimiser step per batch. The loss is
    w_E · mean_frames ℓ(E/N) + w_F · mean_components ℓ(F) + w_σ · mean_components ℓ(σ)
with ℓ the squared error or Huber; under DDP the means run over the *global* batch (counts
are summed across ranks), so N ranks give the same step as one process with their union.

A checkpoint holds the config, model, EMA, optimiser, schedule, RNG states and the loader
position (epoch, batches delivered): a run killed mid-epoch and resumed continues the same
trajectory.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from model import Potential, build_model
from model.config import ModelConfig, load_config
from model.radial import check_graph
from preprocess.store import GraphStore, open_store
from preprocess.store.params import GraphParams
from train.config import TrainConfig
from train.ema import EMA
from train.loader import empty_batch, make_loader, steps_per_epoch
from train.metrics import ErrorAccumulator, loss_sums

DTYPES = {"float64": torch.float64, "float32": torch.float32, "tf32": torch.float32,
          "bf16": torch.float32}
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"

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
    history: list = field(default_factory=list)
    finished: bool = False

def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}

def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])

class Trainer:
    def __init__(self, store: str | Path | GraphStore, model_config, train_config: TrainConfig,
                 out: str | Path, resume: bool = True):
        self.cfg = train_config
        self.out = Path(out)
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
        torch.manual_seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        random.seed(self.cfg.seed)
        mcfg = load_config(model_config)
        stored = self.store.manifest.graph
        self.graph = replace(stored, k=mcfg.k or stored.k)
        if not stored.can_serve(self.graph):
            raise ValueError(f"model wants k={self.graph.k}, the store was built with "
                             f"k={stored.k}; build a store with k >= {self.graph.k}")
        check_graph(mcfg.rank_envelope, mcfg.rank_envelope_width, self.graph.ties,
                    self.graph.tie_tolerance)
        self.model: Potential = build_model(replace(mcfg, k=self.graph.k),
                                            self.store.manifest.statistics)
        self.model.to(device=self.device, dtype=self.dtype)
        self.ddp = None
        if self.info.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.ema = None
        if self.cfg.ema_decay is not None:
            self.ema = EMA(self.model, self.cfg.ema_decay)
        opt_cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.model.parameters(), lr=self.cfg.lr,
                                 weight_decay=self.cfg.weight_decay)
        self.steps_per_epoch = steps_per_epoch(self.train_set, self.cfg.loader, 0, self.info.world)
        total = self.cfg.max_steps or self.cfg.epochs * self.steps_per_epoch
        self.schedule = Schedule(self.cfg.schedule, self.cfg.lr, self.cfg.warmup_steps, total,
                                 self.cfg.plateau_patience, self.cfg.plateau_factor, self.cfg.min_lr)
        self.state = TrainState()
        self.total_steps = total
        if resume and (self.out / CHECKPOINT).is_file():
            self.load_checkpoint(self.out / CHECKPOINT)
        self._tb = None

    # ----------------------------------------------------------------- one step
    def _forward(self, module, batch):
        ctx = (torch.autocast(self.device.type, dtype=torch.bfloat16)
               if self.cfg.precision == "bf16" else nullcontext())
        with ctx:
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
                   for wi, key, c in zip(w, ("energy", "forces", "stress"), counts))
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
    def fit(self, stop_after: int | None = None, log=print) -> dict:
        """Train until ``epochs``/``max_steps``; ``stop_after`` steps ends the process's work
        early right after a checkpoint (what a kill after that checkpoint leaves behind)."""
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            n_untrained, untrained = untrained_elements(self.train_set, self.val_set)
            if n_untrained:
                log(f"warning: {n_untrained} of {len(self.val_set)} validation frames hold "
                    f"elements absent from the training split ({', '.join(untrained)}); "
                    f"their energy errors will be large")
        t0 = time.perf_counter()
        steps_this_call = 0
        while not self.state.finished:
            epoch = self.state.epoch
            n_steps = steps_per_epoch(self.train_set, self.cfg.loader, epoch, self.info.world)
            loader = make_loader(self.train_set, self.cfg.loader, epoch, self.info.rank,
                                 self.info.world, skip=self.state.batches_in_epoch,
                                 graph=self.graph, dtype=torch.float64)
            it = iter(loader)
            losses = []
            while self.state.batches_in_epoch < n_steps:
                batch = next(it, None)
                batch = (batch if batch is not None else empty_batch(self.graph.k)).to(
                    self.device, self.dtype, non_blocking=True)
                losses.append(self.train_step(batch))
                self.state.batches_in_epoch += 1
                steps_this_call += 1
                if self.info.is_main and self.state.step % self.cfg.log_every == 0:
                    log(f"epoch {epoch} step {self.state.step} loss {losses[-1]:.5g} "
                        f"lr {self.schedule.lr(self.state.step):.3g}")
                done = self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps
                if self.state.step % self.cfg.checkpoint_every == 0 or done:
                    self.save_checkpoint()
                if stop_after is not None and steps_this_call >= stop_after:
                    self.save_checkpoint()
                    return {"stopped_at_step": self.state.step}
                if done:
                    break
            metrics = self.validate()
            val_loss = metrics["energy_mae_meV_per_atom"] / 1000 + \
                self.cfg.forces_weight * metrics["forces_mae_meV_per_A"] / 1000
            self.schedule.epoch_end(val_loss)
            record = {"epoch": epoch, "step": self.state.step,
                      "train_loss": float(np.mean(losses)) if losses else float("nan"),
                      "lr": self.schedule.lr(self.state.step), **metrics}
            self.state.history.append(record)
            improved = val_loss < self.state.best_val
            if improved:
                self.state.best_val = val_loss
                self.state.epochs_without_improvement = 0
            else:
                self.state.epochs_without_improvement += 1
            self.state.epoch += 1
            self.state.batches_in_epoch = 0
            stop_early = (self.cfg.early_stopping_patience is not None and
                          self.state.epochs_without_improvement >= self.cfg.early_stopping_patience)
            reached = (self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps) \
                or (self.cfg.max_steps is None and self.state.epoch >= self.cfg.epochs)
            self.state.finished = bool(reached or stop_early)
            if self.info.is_main:
                self._log_epoch(record, log)
                if improved:
                    self.save_inference_model(self.out / BEST)
            self.save_checkpoint()
        if self.info.is_main and self.cfg.plots:
            from train.plots import write_plots
            write_plots(self)
        return {"steps": self.state.step, "epochs": self.state.epoch,
                "wall_s": time.perf_counter() - t0,
                "best_val": self.state.best_val, "history": self.state.history}

    # ---------------------------------------------------------------- evaluation
    def inference_model(self) -> Potential:
        return self.ema.module if self.ema is not None else self.model

    def validate(self, store: GraphStore | None = None, keep_pairs: bool = False) -> dict:
        store = store if store is not None else self.val_set
        acc = ErrorAccumulator(keep_pairs=keep_pairs)
        model = self.inference_model()
        model.eval()
        if len(store):
            loader = make_loader(store, replace(self.cfg.loader, shuffle=False, num_workers=0),
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
        path = path or self.out / CHECKPOINT
        path.parent.mkdir(parents=True, exist_ok=True)
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
        }
        tmp = path.with_suffix(".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Path) -> None:
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        if ckpt["store_id"] != self.store.manifest.store_id:
            raise ValueError(f"{path} was trained on store {ckpt['store_id']}, not "
                             f"{self.store.manifest.store_id}; use another --out to start anew")
        self.model.load_state_dict(ckpt["model_state"])
        if self.ema is not None and ckpt["ema_state"] is not None:
            self.ema.load_state_dict(ckpt["ema_state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])

    def save_inference_model(self, path: Path) -> None:
        """Config + (EMA) weights + graph parameters: what the calculator and evaluate need."""
        state = (self.ema.model_state(self.model) if self.ema is not None
                 else self.model.state_dict())
        torch.save({"model_config": self.model.config.to_dict(), "model_state": state,
                    "graph": self.graph.to_dict(), "store_id": self.store.manifest.store_id},
                   path)

    # -------------------------------------------------------------------- logging
    def _log_epoch(self, record: dict, log) -> None:
        path = self.out / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(record))
            if new:
                writer.writeheader()
            writer.writerow(record)
        log(f"epoch {record['epoch']}: train loss {record['train_loss']:.5g}, val energy MAE "
            f"{record['energy_mae_meV_per_atom']:.2f} meV/atom, forces MAE "
            f"{record['forces_mae_meV_per_A']:.1f} meV/Å")
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency; a broken install is reported once
                log("tensorboard unavailable; CSV logs only")
                self.cfg = replace(self.cfg, tensorboard=False)
                return
            if self._tb is None:
                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self._tb.add_scalar(key, value, record["step"])
            self._tb.flush()


def untrained_elements(train: GraphStore, frames: GraphStore) -> tuple[int, list[str]]:
    """How many of ``frames`` hold an element that no frame of ``train`` holds, and those
    elements (both read from the index). The model has learned nothing about them (its E0
    for them is 0), so such frames carry large energy errors; they are counted, never
    dropped."""
    trained = {el for frame in train.index["elements"].to_pylist() for el in frame}
    missing = [set(frame) - trained for frame in frames.index["elements"].to_pylist()]
    return sum(1 for m in missing if m), sorted(set().union(*missing))


def evaluate(checkpoint: str | Path, store: str | Path | GraphStore, split: str = "test",
             device: str = "cpu", max_atoms: int = 2048) -> dict:
    """MAE/RMSE of a saved model on a split of a store, and how many of its frames hold
    elements absent from the store's train split (see :func:`untrained_elements`)."""
    ckpt = torch.load(checkpoint, map_location=device, weights_only=False)
    store = store if isinstance(store, GraphStore) else open_store(store)
    graph = GraphParams.from_dict(ckpt["graph"])
    model = Potential(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model_state"])
    model.to(device=device, dtype=torch.float64).eval()
    subset = store.subset(split=split)
    from train.loader import LoaderConfig
    loader = make_loader(subset, LoaderConfig(max_atoms=max_atoms, shuffle=False), graph=graph)
    acc = ErrorAccumulator()
    for batch in loader:
        batch = batch.to(device, torch.float64)
        acc.add(model(batch), batch)
    n_untrained, untrained = untrained_elements(store.subset(split="train"), subset)
    return {"split": split, **acc.result(), "frames_with_untrained_elements": n_untrained,
            "untrained_elements": untrained}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, default=float))
