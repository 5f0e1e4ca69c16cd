"""Where the build runs: a Dask cluster from a typed config, with the same code path for a
laptop (LocalCluster sized to the machine), an existing scheduler, or a batch system
through dask-jobqueue (SLURM, PBS, SGE, LSF, ...).

``pipelines.yaml``::

    cluster:
      kind: slurm            # local | address | slurm | pbs | sge | lsf | htcondor | synchronous
      jobs: 8                # batch jobs to start (dask-jobqueue scale)
      options:               # passed to dask_jobqueue.SLURMCluster(...)
        queue: cpu
        cores: 32
        processes: 8
        memory: 128GB
        walltime: "02:00:00"
        account: my-project
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Iterator

JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster",
                  "lsf": "LSFCluster", "htcondor": "HTCondorCluster", "oar": "OARCluster",
                  "moab": "MoabCluster"}
KINDS = ("local", "address", "synchronous", *JOBQUEUE_KINDS)


@dataclass(frozen=True)
class ClusterConfig:
    kind: str = "local"
    address: str | None = None  # for kind "address": tcp://host:8786
    workers: int | None = None  # local: worker processes (default: one per core, at most 8)
    threads_per_worker: int = 1
    memory_limit: str = "auto"  # per local worker
    jobs: int = 1  # jobqueue: batch jobs
    options: dict = field(default_factory=dict)  # jobqueue cluster keyword arguments

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"cluster.kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.kind == "address" and not self.address:
            raise ValueError("cluster.address is required when cluster.kind is 'address'")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"cluster.workers must be >= 1, got {self.workers}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "ClusterConfig":
        d = dict(d or {})
        known = {"kind", "address", "workers", "threads_per_worker", "memory_limit", "jobs",
                 "options"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"cluster: unknown keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**d)

    @classmethod
    def for_scheduler(cls, scheduler: str | None, workers: int | None = None) -> "ClusterConfig":
        """From a CLI ``--scheduler``: None (local), 'synchronous', or an address."""
        if scheduler in (None, "local"):
            return cls(workers=workers)
        if scheduler == "synchronous":
            return cls(kind="synchronous")
        return cls(kind="address", address=scheduler)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@contextlib.contextmanager
def dask_client(config: ClusterConfig) -> Iterator["object | None"]:
    """A ``distributed.Client`` for the config (None for the synchronous scheduler)."""
    if config.kind == "synchronous":
        yield None
        return
    from distributed import Client, LocalCluster

    if config.kind == "address":
        with Client(config.address) as client:
            yield client
        return
    if config.kind == "local":
        cluster = LocalCluster(n_workers=config.workers or default_workers(),
                               threads_per_worker=config.threads_per_worker,
                               memory_limit=config.memory_limit, processes=True,
                               dashboard_address=":0")
    else:
        try:
            import dask_jobqueue
        except ImportError:
            raise ValueError(f"cluster.kind {config.kind!r} needs dask-jobqueue: "
                             "pip install 'orbitgraph[cluster]'") from None
        cluster_cls = getattr(dask_jobqueue, JOBQUEUE_KINDS[config.kind])
        cluster = cluster_cls(**config.options)
        cluster.scale(jobs=config.jobs)
    with cluster, Client(cluster) as client:
        yield client
