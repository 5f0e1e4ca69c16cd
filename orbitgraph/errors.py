"""The user-error types: what the user's input, configuration or files got wrong.

Every error that the user can mend (bad input data, a bad setting, a store or run directory
that cannot serve what was asked) is an :class:`OrbitgraphError`; its message is one line
that names the record, file or key, the problem and, where there is one, the way out. The
``orbitgraph`` command prints such an error as that line and exits with status 2; anything
else is a defect of the program and keeps its traceback.

The types that stood for ``ValueError`` before stay ``ValueError`` subclasses, and
:class:`MissingFileError` a ``FileNotFoundError``, so that callers catching those keep
working. Checks that only a defect can fail (an invariant of the program's own data, a
caller passing the wrong type) raise plain exceptions instead.
"""
from __future__ import annotations


class OrbitgraphError(Exception):
    """Base of every error the user can mend; ``str(err)`` is one line."""


class InputError(OrbitgraphError, ValueError):
    """Input data that cannot be used as given (a structure, a source file, a frame)."""


class RecordError(InputError):
    """A source record that cannot be used; ``reason`` says which field and why (the build
    quarantines the record with it)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SourceChangedError(InputError):
    """A source file changed while the build read it (while it was hashed, or since its
    partitions were planned)."""


class MissingFileError(OrbitgraphError, FileNotFoundError):
    """A file or folder the user named does not exist (a source, a settings file, a
    checkpoint); a ``FileNotFoundError`` too, so that callers catching that keep working."""


class LabelError(InputError):
    """The build cannot tell which field of a source is a label (several candidates, or
    none)."""


class ConfigError(OrbitgraphError, ValueError):
    """A configuration value was refused; ``str(err)`` is one line naming the key path, the
    value and what was expected. ``path`` is the key path (``train.loader.max_atoms``)."""

    def __init__(self, line: str, path: str = ""):
        super().__init__(line)
        self.path = path


class StoreError(OrbitgraphError):
    """A store is missing, incomplete, damaged or from an incompatible version."""


class NotAStoreError(StoreError):
    """The path is a file, or a folder that no build wrote (a source, perhaps)."""


class GraphMismatchError(StoreError, ValueError):
    """A store's graphs cannot serve what a model or loader asks of them: more neighbours
    than were stored, other tie handling, or too small a tie tolerance for the model's rank
    envelope. ``model_key``: the model setting that asks (``k``, ``rank_envelope``; empty
    when graphs are asked for directly)."""

    def __init__(self, line: str, model_key: str = ""):
        super().__init__(line)
        self.model_key = model_key


class ResumeError(OrbitgraphError, ValueError):
    """A run directory or checkpoint cannot be continued by the command as given."""
