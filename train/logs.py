"""orbitgraph's messages: one logger hierarchy, ``orbitgraph``, and the command line's handler.

Modules log to children of ``orbitgraph`` (``orbitgraph.build``, ``orbitgraph.cluster``,
``orbitgraph.train``, ``orbitgraph.evaluate``, ``orbitgraph.run``): progress at INFO,
details at DEBUG, what the user should act on at WARNING. Results (tables of errors, the
``info`` and ``verify`` reports) are the commands' output and are printed on stdout.

The ``orbitgraph`` command calls :func:`setup_logging`: messages go to stderr as plain
lines, warnings prefixed ``warning:``; ``--quiet`` keeps warnings only, ``--verbose`` adds
DEBUG. Used as a library, orbitgraph configures nothing: Python's default shows warnings
and hides progress; ``logging.basicConfig(level=logging.INFO)`` (or
``setup_logging(logging.INFO)``) shows progress.
"""
from __future__ import annotations

import logging
import sys

ROOT = "orbitgraph"


class Formatter(logging.Formatter):
    """The message alone; warnings and errors prefixed by their level (``warning: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (pytest and callers
    that redirect stderr replace it after the handler is made)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ and setStream assign it
        pass


def setup_logging(level: int = logging.INFO) -> logging.Handler:
    """Send the ``orbitgraph`` loggers' messages at ``level`` and above to stderr, one
    plain line each; replaces the handler an earlier call installed. The loggers pass INFO
    and above whatever ``level`` (DEBUG too at ``level`` DEBUG), for the run's log file.
    Returns the handler (:func:`teardown_logging` removes it)."""
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        if isinstance(handler, _StderrHandler):
            logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(Formatter("%(message)s"))
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(min(level, logging.INFO))
    return handler


def progress_wanted() -> bool:
    """Whether progress bars may show: not where :func:`setup_logging` keeps stderr to
    warnings (``--quiet``). (tqdm itself turns a bar off where stderr is not a terminal.)"""
    return not any(isinstance(h, _StderrHandler) and h.level > logging.INFO
                   for h in logging.getLogger(ROOT).handlers)


def teardown_logging(handler: logging.Handler) -> None:
    """Undo :func:`setup_logging`: remove its handler and the level it set."""
    logger = logging.getLogger(ROOT)
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
