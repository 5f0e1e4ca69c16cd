"""What a run says while it trains: ``train.log`` in the run directory and the progress bar.

While :meth:`~orbitgraph.train.trainer.Trainer.fit` runs on the main rank, every message of
the ``orbitgraph`` loggers (INFO and above; DEBUG too where the logger lets it through) is
also appended to ``OUT/train.log`` (:data:`TRAIN_LOG`), each line prefixed with its UTC
time: a resumed run's lines follow the earlier calls'.

On a terminal (stderr a tty, and not ``--quiet``) a tqdm bar shows the step, the epoch, the
latest loss, s/step and the time left; the other messages print above it, and the
per-step lines go to ``train.log`` only. Off a terminal (a SLURM output file, a pipe) there
is no bar and the per-step lines go to stderr too. A per-step line comes after the first
step of each call and every ``log_every`` steps, with the mean s/step of the call so far and
the time left at that pace.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

from orbitgraph.train.logs import ROOT, progress_wanted

TRAIN_LOG = "train.log"


class _FileFormatter(logging.Formatter):
    """``2026-12-07T00:16:38Z message``; warnings and errors prefixed by their level."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%SZ')} {text}"


class RunLog:
    """``train.log`` and the bar of one ``fit`` call on the main rank (``enabled``); on the
    other ranks it does nothing. Use as a context: the file handler and the bar live until
    it exits.

    ``total``: the run's budget in steps; ``initial``: the step it starts from."""

    def __init__(self, out: Path, enabled: bool, total: int, initial: int):
        self.out = Path(out)
        self.enabled = enabled
        self.total, self.initial = total, initial
        self.handler: logging.FileHandler | None = None
        self.bar: tqdm | None = None
        self._added: list[logging.Handler] = []
        self._redirect = None
        self._t0 = time.perf_counter()

    def __enter__(self) -> RunLog:
        if not self.enabled:
            return self
        logger = logging.getLogger(ROOT)
        if not logger.hasHandlers():
            # the file handler would hide Python's last resort (warnings on stderr) from a
            # caller that configured no logging: keep it in its place
            self._added.append(logging.lastResort)
        self.handler = logging.FileHandler(self.out / TRAIN_LOG, encoding="utf-8")
        self.handler.setFormatter(_FileFormatter())
        self._added.append(self.handler)
        for handler in self._added:
            logger.addHandler(handler)
        return self

    def start_bar(self) -> None:
        """Show the bar (after the run's opening lines, which print before it); the pace
        of the log lines is counted from here."""
        self._t0 = time.perf_counter()
        if not self.enabled or not progress_wanted():
            return
        self.bar = tqdm(total=self.total, initial=self.initial, unit="step", desc="training",
                        disable=None, file=sys.stderr, dynamic_ncols=True)
        if self.bar.disable:  # stderr is not a terminal
            self.bar = None
            return
        from tqdm.contrib.logging import logging_redirect_tqdm  # imports asyncio: ~40 ms
        self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger(ROOT)])
        self._redirect.__enter__()
        if self.handler is not None:  # the redirect keeps file handlers; make sure of ours
            logger = logging.getLogger(ROOT)
            if self.handler not in logger.handlers:
                logger.addHandler(self.handler)

    def step(self, logger: logging.Logger, step: int, text: str, postfix: str,
             log_every: int) -> None:
        """Step ``step`` (counted from 1) is done: advance the bar (its ``postfix``: epoch
        and loss). After the call's first step and every ``log_every`` steps, ``text`` with
        the pace (s/step) and the time left is this step's log line (to ``train.log`` only
        while the bar shows, through ``logger`` otherwise)."""
        log_line = step == self.initial + 1 or step % log_every == 0
        if log_line:
            pace = (time.perf_counter() - self._t0) / max(step - self.initial, 1)
            left = tqdm.format_interval(max(self.total - step, 0) * pace)
            text = f"{text} ({pace:.3g} s/step, {left} left)"
        if self.bar is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(1)
            if log_line and self.handler is not None:
                self.handler.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0,
                                                      text, None, None))
        elif log_line and self.enabled:
            logger.info(text)

    def __exit__(self, *exc) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        logger = logging.getLogger(ROOT)
        for handler in self._added:
            logger.removeHandler(handler)
        if self.handler is not None:
            self.handler.close()
        self._added = []
