"""The on-disk cache of the compiled graph kernel, and the line said while it compiles.

numba compiles the graph kernel (:mod:`orbitgraph.preprocess.knn_kernel`) the first time it
runs, ~15-40 s, and its own cache (``cache=True``) keeps the result but checks only the
timestamp of the file that defines each function. The kernel also compiles the rule of
the distance grid (:mod:`orbitgraph.preprocess.distance_grid`), so an edit of that file
would leave a stale kernel in numba's cache. Here the cache of every kernel function is
keyed by a digest of both source files (and numba's version): a change of either compiles
the kernel again, an unchanged pair never does.

Where: ``$ORBITGRAPH_KERNEL_CACHE`` if set; else beside the sources, in
``preprocess/__pycache__/graph-kernel-<digest>/`` (once per installation, as numba's own
cache); else, where the installation is read-only, ``$XDG_CACHE_HOME/orbitgraph/`` (default
``~/.cache/orbitgraph/``) ``graph-kernel-<digest>/``.

numba has no public hook for where a function's cache lives; :func:`njit` attaches a cache
with this module's locator the way numba's ``Dispatcher.enable_caching`` attaches its own
(``numba.core.caching``, stable since numba 0.49). Compiling is announced with numba's event
API (``numba:compile`` fires only when a function is compiled, not when it is loaded).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numba
from numba.core import event
from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator

from orbitgraph.preprocess.sources.fingerprint import cache_dir

log = logging.getLogger("orbitgraph.graph")

COMPILING_MESSAGE = "compiling the graph kernel (once per installation, ~30 s)..."
CACHE_ENV = "ORBITGRAPH_KERNEL_CACHE"  # a folder: the kernel's cache goes there instead

_HERE = Path(__file__).resolve().parent
# the files whose code the kernel compiles: a change of either invalidates the cache
KERNEL_SOURCES = (_HERE / "knn_kernel.py", _HERE / "distance_grid.py")


def source_digest(paths=KERNEL_SOURCES) -> str:
    """Hex digest (16 chars) of the contents of ``paths`` and numba's version: the key of
    the kernel's cache folder and the freshness stamp of its entries."""
    h = hashlib.sha256(numba.__version__.encode())
    for path in paths:
        data = Path(path).read_bytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def cache_path(digest: str | None = None) -> Path:
    """The folder of the kernel's cache (see the module docstring for the order), created.

    Where neither the installation nor the user's cache folder can be written, a folder
    under the system's temporary folder, with a warning.

    Raises
    ------
    OSError
        ``$ORBITGRAPH_KERNEL_CACHE`` is set but cannot be written, or no folder can.
    """
    name = f"graph-kernel-{digest or source_digest()}"
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        path = Path(chosen) / name
        if not _writable(path):
            raise OSError(f"{CACHE_ENV}={chosen}: cannot write the graph kernel's cache there")
        return path
    for path in (_HERE / "__pycache__" / name, cache_dir() / name):
        if _writable(path):
            return path
    user = os.getuid() if hasattr(os, "getuid") else 0
    path = Path(tempfile.gettempdir()) / f"orbitgraph-{user}" / name
    log.warning(f"cannot write the graph kernel's cache in {_HERE / '__pycache__'} nor in "
                f"{cache_dir()}: it goes to {path}, which may not last (set {CACHE_ENV} to a "
                "writable folder)")
    if not _writable(path):
        raise OSError(f"cannot write the graph kernel's cache in {path} either")
    return path


class _KernelLocator(_CacheLocator):
    """numba cache locator: entries in :func:`cache_path`, fresh while
    :func:`source_digest` is unchanged."""

    _digest: str | None = None  # computed once per process, on the first kernel function
    _path: str | None = None

    def __init__(self, py_func):
        self._lineno = py_func.__code__.co_firstlineno
        cls = type(self)
        if cls._digest is None:
            cls._digest = source_digest()
            cls._path = str(cache_path(cls._digest))

    def ensure_cache_path(self):
        Path(self.get_cache_path()).mkdir(parents=True, exist_ok=True)

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return self._digest

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        return cls(py_func)


class _KernelCacheImpl(CompileResultCacheImpl):
    _locator_classes = [_KernelLocator]


class _KernelCache(FunctionCache):
    _impl_class = _KernelCacheImpl


def njit(**options):
    """``numba.njit(**options)`` whose on-disk cache is this module's (``cache`` must not
    be given)."""
    def wrap(func):
        dispatcher = numba.njit(**options)(func)
        dispatcher._cache = _KernelCache(func)  # what Dispatcher.enable_caching does
        return dispatcher
    return wrap


class _Announcer(event.Listener):
    """Logs :data:`COMPILING_MESSAGE` when the first compilation of a process starts."""

    said = False

    def on_start(self, ev):
        if not _Announcer.said:
            _Announcer.said = True
            log.info(COMPILING_MESSAGE)

    def on_end(self, ev):
        pass


_ANNOUNCER = _Announcer()


@contextlib.contextmanager
def announce_compilation() -> Iterator[None]:
    """Within the block, the start of a compilation (a cache miss) is logged once per
    process on the ``orbitgraph.graph`` logger at INFO: :data:`COMPILING_MESSAGE`."""
    if _Announcer.said:
        yield
        return
    with event.install_listener("numba:compile", _ANNOUNCER):
        yield
