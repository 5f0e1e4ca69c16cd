"""What code outside the trainer may add to a run: hooks the training loop calls.

Pass callbacks to :class:`~orbitgraph.train.trainer.Trainer` (``callbacks=[...]``) or append
them to its ``callbacks`` list before :meth:`~orbitgraph.train.trainer.Trainer.fit`. A
callback subclasses :class:`Callback` and overrides the hooks it needs; every rank calls
them (use ``trainer.info.is_main`` to act once). An exception raised in a hook stops the
run as one raised by the loop would: the last checkpoint is where it resumes.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from orbitgraph.train.epoch_log import write_csv

if TYPE_CHECKING:
    from orbitgraph.train.trainer import Trainer

STEP_LOSSES = "step_losses.csv"  # (step, batch loss) of every step, in a run directory


class Callback:
    """The hooks of a run; each does nothing here."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """``fit`` begins; ``trainer.state`` is where the run stands (after a resume, the
        checkpoint's step)."""

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        """Optimiser step ``step`` (counted from 1, as ``trainer.state.step``) is done;
        ``loss`` is its batch's loss (the global batch's under DDP)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict) -> None:
        """Validation after ``epoch`` (or where the step budget stopped it part-way) is
        done and ``record`` (train_loss, lr, the validation metrics) is the history's last
        entry; the checkpoint of that point is written."""


class StepLosses(Callback):
    """(step, batch loss) of every optimiser step of the run, for the loss curve (the
    history holds one mean per epoch), kept in the run directory (:data:`STEP_LOSSES`) so
    that a resumed run's curve is the uninterrupted run's: those of earlier calls up to the
    step the run resumes from (the later ones are taken again), then each step it takes,
    appended to :attr:`losses` and to the file as it goes (by the main rank; the losses are
    the global batches', equal on every rank)."""

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []
        self.path: Path | None = None  # the file, on the main rank

    def on_fit_start(self, trainer: Trainer) -> None:
        path = trainer.out / STEP_LOSSES
        earlier = []
        if path.is_file():
            with open(path, newline="") as f:
                earlier = [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(f)]
        self.losses = [(step, loss) for step, loss in earlier if step <= trainer.state.step]
        if trainer.info.is_main:
            self.path = path
            trainer.out.mkdir(parents=True, exist_ok=True)
            write_csv(path, [{"step": step, "loss": loss} for step, loss in self.losses],
                      ["step", "loss"])

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        self.losses.append((step, loss))
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(f"{step},{loss!r}\n")
