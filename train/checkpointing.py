"""What a run directory's checkpoints hold, and how a run continues from one.

``checkpoint.pt`` (:data:`CHECKPOINT`, the run's state): the model config, the model's, the
EMA's, the optimiser's and the schedule's state_dicts, the loop state (epoch, loader
position, step, best validation, history, the epoch's loss so far), the RNG states, the
training config, the graph parameters, the store id, the rank count and the training
elements. A run killed mid-epoch and resumed from it continues the same trajectory; a
finished run given a larger budget continues to it; a directory holding another model's
or another store's run is refused in one line (:class:`ResumeError`).

``best.pt`` (:data:`BEST`, what the calculator and ``evaluate`` load): the model config and
the (EMA) weights of the chosen epoch, the graph parameters, the store id, the training
elements, the step and which weights they are (:func:`save_inference_model`).

All are plain data and tensors (:mod:`orbitgraph.model.checkpoint`).
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from orbitgraph.errors import ResumeError
from orbitgraph.model import read_checkpoint, save_model, write_checkpoint
from orbitgraph.model.checkpoint import (
    LINEAR_PROJECTIONS_VERSION,
    projection_scales,
    upgrade_model_state,
)
from orbitgraph.model.config import ModelConfig

if TYPE_CHECKING:
    from orbitgraph.train.trainer import Trainer

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
# loader settings that decide which batches an epoch holds (num_workers does not)
PLAN_SETTINGS = ("max_atoms", "max_edges", "batch_frames", "shuffle", "shuffle_shards", "seed")
log = logging.getLogger("orbitgraph.train")


@dataclass
class TrainState:
    """Where a run stands: what ``checkpoint.pt`` holds as ``state``."""

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
    # the epoch's largest step loss so far and its step: a mean that a few steps dominate
    # says so (the log lines show every log_every-th step only)
    epoch_loss_max: float = 0.0
    epoch_loss_max_step: int = 0
    # the stage (1, or 2: train.stage_two) whose criterion best_val is: a validation of the
    # other stage starts best.pt's choice anew, under that stage's weights (a resumed run
    # with another budget may move stage two's start either way)
    best_stage: int = 1


def rng_state() -> dict:
    """torch's, numpy's and Python's global RNG states as tensors and plain data (numpy's
    MT19937 key as an int64 tensor), so checkpoints load with weights_only=True."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": (str(name), torch.from_numpy(key.astype(np.int64)), int(pos),
                      int(has_gauss), float(gauss)),
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    """Restore the global RNG states of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.int64).astype(np.uint32), pos,
                         has_gauss, gauss))
    random.setstate(state["python"])


def save_checkpoint(trainer: Trainer, path: Path | None = None) -> None:
    """The run's state as ``path`` (default: the run directory's :data:`CHECKPOINT`),
    written atomically by the main rank (the others write nothing)."""
    if not trainer.info.is_main:
        return
    ckpt = {
        "model_config": trainer.model.config.to_dict(),
        "model_state": trainer.model.state_dict(),
        "ema_state": trainer.ema.state_dict() if trainer.ema is not None else None,
        "optimizer": trainer.optimizer.state_dict(),
        "schedule": trainer.schedule.state_dict(),
        "state": trainer.state.__dict__,
        "rng": rng_state(),
        "train_config": trainer.cfg.to_dict(),
        "graph": trainer.graph.to_dict(),
        "store_id": trainer.store.manifest.store_id,
        "world": trainer.info.world,
        "trained_elements": trainer.trained_elements,
        "datasets": dataset_records(trainer),
    }
    path = path or trainer.out / CHECKPOINT
    write_checkpoint(ckpt, path)
    log.debug(f"{path}: step {trainer.state.step} saved")


def load_checkpoint(trainer: Trainer, path: Path) -> None:
    """Continue ``trainer``'s run from ``path``: its states, with this run's budget and
    schedule settings (a larger budget continues a finished run; the cosine then spans the
    new one, and ``trainer.replanned`` says how the rate changed). A checkpoint of format 0
    or 1 has its weights, EMA weights and Adam moments converted to the normalised species
    projections (:func:`~orbitgraph.model.checkpoint.upgrade_model_state`,
    :func:`upgrade_optimizer_state`), with a warning. Raises :class:`ResumeError` where
    ``path`` holds another run (:func:`check_same_run`)."""

    ckpt = read_checkpoint(path, map_location=trainer.device)
    check_same_run(trainer, ckpt)
    version = ckpt.get("format_version", 0)
    trainer.model.load_state_dict(upgrade_model_state(trainer.model, ckpt["model_state"],
                                                      version, path))
    if trainer.ema is not None and ckpt["ema_state"] is not None:
        ema = ckpt["ema_state"]
        trainer.ema.load_state_dict({**ema, "shadow": upgrade_model_state(
            trainer.model, ema["shadow"], version, path)})
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    if version <= LINEAR_PROJECTIONS_VERSION:
        upgrade_optimizer_state(trainer)
        log.warning(f"{path} was written before the species projections were normalised "
                    f"(checkpoint format {version}): its weights and optimiser moments are "
                    "converted and predict as they did, but the run continues with the "
                    "normalised projections' steps, which differ from those the older code "
                    "would have taken")
    state = TrainState(**ckpt["state"])
    schedule = ckpt["schedule"]
    if "last_epoch" not in schedule:  # written before the schedule was torch's: same count
        schedule = {**schedule, "last_epoch": state.step}
    trainer.schedule.load_state_dict(schedule)
    trainer.replanned = trainer.schedule.replan_text(schedule)
    trainer.state = state
    state.finished = trainer.budget_reached() or trainer.stopped_early()
    trainer.resumed_from = state.step
    trainer.epoch_log.resume(state.step, standing_records(state))
    if state.batches_in_epoch and "epoch_loss_steps" not in ckpt["state"]:
        log.warning(f"{path} was written before checkpoints held the epoch's loss so "
                    f"far: epoch {state.epoch}'s train_loss will be the mean of the "
                    "steps after this resume only")
    set_rng_state(ckpt["rng"])


def standing_records(state: TrainState) -> list[dict]:
    """The history's records that a run resumed at ``state`` keeps: all but that of an
    epoch the step budget stopped part-way, which goes on now and gets a new record."""
    history = state.history
    goes_on = bool(state.batches_in_epoch and history and history[-1]["epoch"] == state.epoch)
    return history[:-1] if goes_on else list(history)


def upgrade_optimizer_state(trainer: Trainer) -> None:
    """Convert the optimiser moments of a format-1 checkpoint's projection weights to the
    normalised parametrisation (:func:`~orbitgraph.model.checkpoint.projection_scales`):
    with W₂ = W₁·c (c = √in_features) the gradient is ∂L/∂W₂ = (∂L/∂W₁)/c, so Adam's first
    moments (``exp_avg``) are divided by c and its second moments (``exp_avg_sq``,
    AMSGrad's ``max_exp_avg_sq``) by c². The next step then moves each W₂ by what the older
    code would have moved W₁ (Adam's eps aside), W₁ by c times less: the normalised
    parametrisation's step, from moments consistent with its gradients."""
    parameters = dict(trainer.model.named_parameters())
    for name, scale in projection_scales(trainer.model).items():
        moments = trainer.optimizer.state.get(parameters[name], {})
        for key, power in (("exp_avg", 1), ("exp_avg_sq", 2), ("max_exp_avg_sq", 2)):
            if key in moments:
                moments[key].div_(scale ** power)


def check_same_run(trainer: Trainer, ckpt: dict) -> None:
    """Raise :class:`ResumeError` unless ``ckpt`` is a run of ``trainer``'s model on its
    store's graphs, and, stopped mid-epoch, one whose epoch plan this run would make alike."""
    out, restart = trainer.out, trainer.advice.new_run
    store_id = trainer.store.manifest.store_id
    if ckpt["store_id"] != store_id:
        raise ResumeError(f"{out} holds a run on store {ckpt['store_id']}, not on "
                          f"{store_id} ({trainer.store.location}); {restart}")
    saved_sets, our_sets = ckpt.get("datasets"), dataset_records(trainer)
    names = [[(d["name"], d["store_id"]) for d in x] if x else None
             for x in (saved_sets, our_sets)]
    if names[0] != names[1]:
        raise ResumeError(f"{out} holds a run on the datasets {names[0]}, not on "
                          f"{names[1]}; {restart}")
    saved = ModelConfig.from_dict(ckpt["model_config"]).to_dict()  # with newer defaults
    for what, theirs, ours in (("model", saved, trainer.model.config.to_dict()),
                               ("graph", ckpt["graph"], trainer.graph.to_dict())):
        changed = [f"{key} {theirs.get(key)!r} -> {ours[key]!r}" for key in ours
                   if key != "atomic_energies" and theirs.get(key) != ours[key]]
        if changed:
            raise ResumeError(f"{out} holds a run of another {what} "
                              f"({', '.join(changed[:4])}); {restart}")
    if ckpt["state"]["batches_in_epoch"]:
        theirs = ckpt["train_config"]["loader"]
        ours = trainer.cfg.loader.to_dict()
        changed = [f"loader.{key} {theirs[key]!r} -> {ours[key]!r}" for key in PLAN_SETTINGS
                   if theirs[key] != ours[key]]
        weights = [[d["weight"] for d in x] if x else None for x in (saved_sets, our_sets)]
        if weights[0] != weights[1]:
            changed.append(f"dataset weights {weights[0]} -> {weights[1]}")
        if ckpt.get("world", 1) != trainer.info.world:
            changed.append(f"ranks {ckpt.get('world', 1)} -> {trainer.info.world}")
        if changed:
            raise ResumeError(
                f"{out} stopped part-way through epoch {ckpt['state']['epoch']}, whose "
                f"batches depend on what this run changes ({', '.join(changed)}): resume "
                f"with the same settings, or {restart}")


def save_inference_model(trainer: Trainer, path: Path) -> None:
    """Config + (EMA) weights + graph parameters: what the calculator and evaluate need."""
    state = (trainer.ema.model_state(trainer.model) if trainer.ema is not None
             else trainer.model.state_dict())
    save_model(trainer.model, path, state=state,
               extra={"graph": trainer.graph.to_dict(),
                      "store_id": trainer.store.manifest.store_id,
                      "trained_elements": trainer.trained_elements, "step": trainer.state.step,
                      "weights": "ema" if trainer.ema is not None else "raw",
                      "datasets": dataset_records(trainer)})


def dataset_records(trainer: Trainer) -> list[dict] | None:
    """The run's datasets as checkpoints keep them (None for a run on one store): each
    one's name, store id, store (its absolute path, or URL: where ``orbitgraph evaluate``
    finds it), normalised weight and E0 shift {Z: eV per atom, non-zero only},
    the first being the primary (the model's own reference)."""
    if trainer.datasets is None:
        return None
    return [{"name": d.name, "store_id": d.store.manifest.store_id, "weight": d.weight,
             "path": (str(Path(d.store.root).resolve()) if d.store.location.is_local
                      else str(d.store.root)),
             "e0_shift": ({int(z): float(d.e0_shift[z]) for z in np.flatnonzero(d.e0_shift)}
                          if d.e0_shift is not None else {})}
            for d in trainer.datasets]
