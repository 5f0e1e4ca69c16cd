"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (a SLURM time limit or preemption,
``kill``, ``docker stop``).

While :meth:`~orbitgraph.train.trainer.Trainer.fit` runs, :class:`StopRequests` replaces
the handlers of both signals by one that only records the signal; the loop finishes the
optimiser step in progress (never half a step), all ranks agree on stopping at the same
step (the request is summed over ranks with the step's counts,
:meth:`~orbitgraph.train.trainer.Trainer.train_step`), the main rank writes
``checkpoint.pt`` at that step, and ``fit`` raises :class:`Interrupted`. The same command
then resumes from that step and continues the uninterrupted run's trajectory. A second
SIGINT while the step finishes raises ``KeyboardInterrupt`` at once (the last checkpoint
written stands). The previous handlers are restored when ``fit`` returns or raises.

Exit status (``orbitgraph train``): 128 + the signal's number, 130 for SIGINT and 143 for
SIGTERM, what a shell and SLURM report for a process the signal ended: the job is not
recorded as completed, and a requeue script (``[ $? -eq 143 ] && scontrol requeue``)
sees the status it expects.
"""
from __future__ import annotations

import logging
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
log = logging.getLogger("orbitgraph.train")


class Interrupted(KeyboardInterrupt):
    """``fit`` stopped on signal ``signum`` after optimiser step ``step`` and wrote its
    checkpoint there. A ``KeyboardInterrupt``, so that code which stops on Ctrl-C stops on
    this too; ``exit_status`` is 128 + ``signum``."""

    def __init__(self, signum: int, step: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.step = step

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopRequests:
    """A context in which SIGINT and SIGTERM are recorded (:attr:`signum`, the first one
    received) instead of ending the process; the previous handlers come back on exit.
    With ``announce``, the first signal is acknowledged at once in a warning.

    Signal handlers can only be set from the main thread: elsewhere (a training thread of a
    notebook or a service) the context installs nothing, says so at DEBUG, and the signals
    keep their handlers."""

    def __init__(self, announce: bool = True) -> None:
        self.signum: int | None = None
        self.announce = announce  # say at once that the signal was heard (the main rank)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is not threading.main_thread():
            log.debug("training outside the main thread: SIGINT and SIGTERM keep their "
                      "handlers (no checkpoint on a signal)")
            return self
        for signum in SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            # None: a handler set outside Python, which cannot be set again from here
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _record(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        if self.signum is None:
            self.signum = signum
            if self.announce:  # a step can take minutes: say now that the signal was heard
                log.warning(f"{signal_name(signum)}: stopping after the step in progress, "
                            "with a checkpoint of it (Ctrl-C again stops at once, without "
                            "one)")

    @property
    def requested(self) -> bool:
        """Whether a signal arrived (on this process)."""
        return self.signum is not None


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
