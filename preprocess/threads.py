"""One pool of threads per process for the compiled kernels that release the GIL."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_pool: tuple[int, ThreadPoolExecutor] | None = None


def local_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on the process's pool (started once: a thread costs about
    a millisecond to start, a run of the kernels tens). A forked child gets its own."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(max(2, local_cores()),
                                                 thread_name_prefix="orbitgraph"))
    return list(_pool[1].map(fn, items))
