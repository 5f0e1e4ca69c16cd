"""A run's per-epoch records on disk: ``metrics.csv`` and TensorBoard scalars.

The records are the trainer's history (``TrainState.history``, checkpointed with the run),
one per epoch. Both logs are written from it, so that a run stopped and resumed logs what
the uninterrupted run logs:

* ``metrics.csv`` is rewritten whole from the history at each record (beside it, then
  renamed over it): a record replaced (an epoch that the step budget stopped part-way and a
  larger budget continued) appears once, and rows written after the checkpoint a run
  resumes from are gone;
* TensorBoard's event files only grow. A resumed run opens its writer with ``purge_step``
  at the step it resumes from, which makes TensorBoard drop the earlier files' events of
  that step and later, then writes again the records of that step that still stand (an
  epoch that ended exactly there).
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

log = logging.getLogger("orbitgraph.train")
METRICS_CSV = "metrics.csv"
TENSORBOARD = "tensorboard"


def write_csv(path: Path, records: list[dict], fields: list[str] | None = None) -> None:
    """``records`` (dicts of numbers) as a CSV file with a header row (``fields``, default:
    the records' keys), replacing ``path`` atomically: written beside it, then renamed over
    it."""
    if fields is None:
        fields = list(dict.fromkeys(key for record in records for key in record))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    os.replace(tmp, path)


class EpochLog:
    """``metrics.csv`` and (with ``tensorboard``) TensorBoard scalars in ``out``; written by
    the main process only."""

    def __init__(self, out: Path, tensorboard: bool):
        self.out = Path(out)
        self.tensorboard = tensorboard
        self._writer = None
        self._purge_step: int | None = None
        self._standing: list[dict] = []

    def resume(self, step: int, standing: list[dict]) -> None:
        """The run goes on from its checkpoint of ``step``; ``standing``: the history's
        records that the resumed run keeps (not one it will replace). TensorBoard's events
        of ``step`` and later are dropped when the writer opens, those of ``standing`` at
        ``step`` written again."""
        self._purge_step = step
        self._standing = [r for r in standing if r["step"] >= step]

    def write(self, history: list[dict]) -> None:
        """Log the history's latest record: ``metrics.csv`` rewritten from all of them, the
        latest record's numbers to TensorBoard at its step."""
        write_csv(self.out / METRICS_CSV, history)
        writer = self._tensorboard()
        if writer is not None:
            _add_scalars(writer, history[-1])
            writer.flush()

    def _tensorboard(self):
        """The SummaryWriter, opened at the first record (None without TensorBoard)."""
        if not self.tensorboard or self._writer is not None:
            return self._writer
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency; a broken install is reported once
            log.warning("tensorboard unavailable; CSV logs only")
            self.tensorboard = False
            return None
        self._writer = SummaryWriter(str(self.out / TENSORBOARD), purge_step=self._purge_step)
        for record in self._standing:
            _add_scalars(self._writer, record)
        return self._writer


def _add_scalars(writer, record: dict) -> None:
    for key, value in record.items():
        if isinstance(value, (int, float)) and key not in ("epoch", "step"):
            writer.add_scalar(key, value, record["step"])
