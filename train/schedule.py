"""Learning-rate schedules: linear warmup, then cosine decay, plateau drops or a constant rate.

    lr(s) = max(min_lr, lr · w(s) · c(s) · p)        (lr_2 from step s_2 on, with a stage two)
    w(s)  = min(1, (s + 1) / warmup_steps)           (1 without warmup)
    c(s)  = ½ (1 + cos(π · min(1, s / total)))         (cosine; 1 for the others)
    p     = plateau_factor ** drops                     (plateau; 1 for the others)

With a stage two (``train.stage_two``, mace-torch's SWA stage) the rate is that stage's
constant ``lr_2`` from its first step ``s_2`` on (:meth:`Schedule.for_run`), and the
plateau drops stop counting.
``s`` counts optimiser steps from 0: the step that takes a run from ``s`` to ``s + 1``
steps uses lr(s). ``total`` is the run's budget in steps (``max_steps``, or ``epochs`` ×
steps per epoch). Under ``plateau`` the validation criterion at the end of each epoch
(:meth:`Schedule.epoch_end`) drops ``p`` by ``plateau_factor`` after more than
``plateau_patience`` epochs without an improvement (a decrease of more than 1e-12).

:class:`Schedule` is a :class:`torch.optim.lr_scheduler.LRScheduler`: the trainer calls its
``step()`` after each optimiser step and keeps its ``state_dict`` in the checkpoint. A
resumed run continues its step count and plateau state; the warmup, the cosine's length,
the floor and the peak rate are the resumed run's settings, so a run continued with a
larger budget spreads its cosine over the new budget. The plateau drops are not torch's
ReduceLROnPlateau, which scales the optimiser's current rate: this closed form sets the
rate anew at every step (and torch's SequentialLR does not take ReduceLROnPlateau).
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from orbitgraph.train.config import TrainConfig

IMPROVEMENT = 1e-12  # the least decrease of the validation criterion that counts (plateau)
# what a resumed run takes from the checkpoint; the rest of the plan is the run's own
RESUMED = ("last_epoch", "plateau_factor", "best", "bad_epochs")
# the plan a resumed run may change
PLAN = ("kind", "warmup", "total", "min_lr", "base_lrs", "stage_two")


class Schedule(LRScheduler):
    """The learning rate of every step (module docstring), for every parameter group of
    ``optimizer`` (``lr`` is each group's rate at construction).

    ``kind``: cosine, plateau or constant; ``warmup``: steps of linear warmup; ``total``:
    the budget in steps (the cosine's length); ``patience`` and ``factor``: the plateau
    drops; ``min_lr``: the floor of every schedule; ``stage_two``: ``(s_2, lr_2)``, the
    first step of stage two and its constant rate (None: no stage two)."""

    def __init__(self, optimizer: Optimizer, kind: str, warmup: int, total: int,
                 patience: int, factor: float, min_lr: float,
                 stage_two: tuple[int, float] | None = None):
        self.kind = kind
        self.stage_two = None if stage_two is None else (int(stage_two[0]),
                                                         float(stage_two[1]))
        self.warmup = warmup
        self.total = total
        self.patience = patience
        self.factor = factor
        self.min_lr = min_lr
        self.plateau_factor = 1.0
        self.best = math.inf  # the lowest validation criterion so far (plateau)
        self.bad_epochs = 0  # epochs since it last improved
        super().__init__(optimizer)  # sets every group's rate to lr(0)

    @classmethod
    def for_run(cls, optimizer: Optimizer, cfg: TrainConfig, total: int) -> Schedule:
        """The schedule ``cfg`` asks for, over a budget of ``total`` steps (stage two, if
        any, from step :func:`stage_two_start` on)."""
        two = cfg.stage_two
        return cls(optimizer, cfg.schedule, cfg.warmup_steps, total, cfg.plateau_patience,
                   cfg.plateau_factor, cfg.min_lr,
                   None if two is None else (stage_two_start(two.start, total), two.lr))

    def in_stage_two(self, step: int) -> bool:
        """Whether optimiser step ``step`` (counted from 0) is one of stage two."""
        return self.stage_two is not None and step >= self.stage_two[0]

    def lr_at(self, step: int, base_lr: float) -> float:
        """lr(step) for a group whose peak rate is ``base_lr``, with the plateau factor as
        it stands; stage two's rate from its first step on (the same for every group)."""
        if self.in_stage_two(step):
            return self.stage_two[1]
        f = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0
        if self.kind == "cosine" and self.total > 0:
            progress = min(1.0, step / self.total)
            f *= 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(self.min_lr, base_lr * f * self.plateau_factor)

    def get_lr(self) -> list[float]:
        """The rate of each group for step ``last_epoch`` (torch's name for the count)."""
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]

    @property
    def lr(self) -> float:
        """The rate the next optimiser step takes (the first group's)."""
        return self.get_last_lr()[0]

    def epoch_end(self, val_loss: float) -> None:
        """Plateau: count an epoch whose validation criterion ``val_loss`` did not improve
        on the best by more than 1e-12, and after more than ``patience`` such epochs in a row
        drop the rate by ``factor``. The other schedules, and stage two, ignore it."""
        if self.kind != "plateau" or self.in_stage_two(self.last_epoch - 1):
            return  # the steps just validated were stage two's
        if val_loss < self.best - IMPROVEMENT:
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.plateau_factor *= self.factor
                self.bad_epochs = 0
                self._set_rates()

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue from a checkpoint's ``state_dict``: its step count and plateau state
        (:data:`RESUMED`); the plan (kind, warmup, total, floor, peak rates) stays this
        run's, and the groups' rates follow it."""
        missing = [key for key in RESUMED if key not in state_dict]
        if missing:
            raise KeyError(f"schedule state without {', '.join(missing)}")
        self.__dict__.update({key: state_dict[key] for key in RESUMED})
        self._set_rates()

    def replan_text(self, state_dict: dict) -> str | None:
        """After :meth:`load_state_dict` of a checkpoint's ``state_dict``: None where this
        run's plan (:data:`PLAN`) is the checkpoint's, else a line saying that the schedule
        is re-planned (the new budget, the old and the new plan) with the old and the new
        rate at the current step. A checkpoint that does not record a setting counts as
        unchanged in it."""
        old = {key: state_dict[key] for key in PLAN if key in state_dict}
        changed = [key for key in old if old[key] != getattr(self, key)]
        if not changed:
            return None
        old_lr = state_dict.get("_last_lr", [None])[0]
        step = self.last_epoch
        was = ", ".join(f"{key} {old[key]} -> {getattr(self, key)}" for key in changed)
        rate = (f"{old_lr:.4g} -> {self.lr:.4g}" if old_lr is not None
                else f"now {self.lr:.4g}")
        return (f"learning-rate schedule re-planned for this run ({self.kind} over "
                f"{self.total} steps; {was}): the rate at step {step} goes {rate}")

    def _set_rates(self) -> None:
        """Every group's rate to lr(``last_epoch``) as the schedule now stands."""
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def stage_two_start(fraction: float, total: int) -> int:
    """The first step of stage two: ``round(fraction × total)``, at least 1 and at most
    ``total - 1`` (so each stage has a step) where ``total`` > 1."""
    return min(max(int(round(fraction * total)), 1), max(total - 1, 1))
