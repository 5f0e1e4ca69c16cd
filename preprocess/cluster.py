"""Where the build runs: a Dask cluster from a typed config, with the same code path for a
laptop (LocalCluster sized to the machine), an existing scheduler, or a batch system
through dask-jobqueue (SLURM, PBS, SGE, LSF, ...).

``pipelines.yaml`` (docs/guides/slurm.md explains each key and what a site changes)::

    cluster:
      kind: slurm            # local | address | slurm | pbs | sge | lsf | htcondor | synchronous
      jobs: 8                # batch jobs to start (dask-jobqueue scale)
      start_timeout: 600     # s: fail when no worker has joined by then (batch kinds)
      options:               # passed to dask_jobqueue.SLURMCluster(...)
        queue: cpu
        account: my-project
        cores: 32
        processes: 8
        memory: 128GB
        walltime: "02:00:00"
        log_directory: runs/cluster-logs   # relative: to pipelines.yaml's directory

On a batch system the driver (this process) runs the Dask scheduler and submits ``jobs``
worker jobs; it logs where the jobs write their output and which jobs it submitted, fails
with one line when the batch system refuses every job or no worker joins within
``start_timeout`` seconds, and names the submitted job ids (``batch_jobs``). The jobs are
cancelled when the build ends, fails, or the driver gets SIGTERM or Ctrl-C.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field, model_validator

from orbitgraph.config import Config, validation_context
from orbitgraph.errors import ConfigError

log = logging.getLogger("orbitgraph.cluster")
JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster",
                  "lsf": "LSFCluster", "htcondor": "HTCondorCluster", "oar": "OARCluster",
                  "moab": "MoabCluster"}
KINDS = ("local", "address", "synchronous", *JOBQUEUE_KINDS)


class ClusterError(ConfigError):
    """The cluster section cannot be satisfied: the batch system refused the worker jobs, or
    no worker joined in time. A user error (check ``cluster.options``), printed as one line."""


class BuildProcessError(RuntimeError):
    """A process building partitions without a cluster died (killed, or out of memory): the
    build stopped; its committed shards are kept and a rerun resumes it."""


class ClusterConfig(Config):
    """Where a build runs: ``kind`` and the settings of that kind."""

    section = "cluster"

    kind: Literal[KINDS] = Field("local", description="local (this machine: processes "
                                 "forked from this one for a source up to "
                                 "in_process_max_bytes, a LocalCluster above it), address (a "
                                 "running scheduler), synchronous (this process) or a batch "
                                 "system through dask-jobqueue")
    address: str | None = Field(None, description="kind address: the scheduler, "
                                "tcp://host:8786")
    workers: int | None = Field(None, ge=1, description="kind local: worker processes, "
                                "forked or a LocalCluster's (null: one per core, at most 8 "
                                "for a LocalCluster; 1 without a cluster: this process)")
    threads_per_worker: int = Field(1, ge=1, description="kind local: threads per worker")
    memory_limit: str = Field("auto", description="kind local: memory per worker (e.g. 4GB)")
    jobs: int = Field(1, ge=1, description="batch kinds: batch jobs to submit")
    start_timeout: float = Field(600.0, gt=0, description="s; batch kinds: from submission "
                                 "until the first worker joins, else a one-line error")
    options: dict[str, Any] = Field(default_factory=dict, description="batch kinds: "
                                    "dask_jobqueue cluster keyword arguments (a relative "
                                    "log_directory is taken relative to pipelines.yaml)")
    in_process_max_bytes: int = Field(2_000_000_000, ge=0, description="bytes; kind local: a "
                                      "source of at most this many bytes (decompressed) is "
                                      "built without a cluster, on one process per core "
                                      "forked from this one, instead of on a LocalCluster "
                                      "(0: always a LocalCluster)")

    @model_validator(mode="before")
    @classmethod
    def _log_directory(cls, data):
        """A relative ``options.log_directory`` is relative to the validation context's
        ``base`` (the directory of pipelines.yaml)."""
        base = validation_context().get("base")
        options = data.get("options") if isinstance(data, dict) else None
        if base is not None and isinstance(options, dict) and options.get("log_directory"):
            log_dir = Path(os.path.expanduser(str(options["log_directory"])))
            data = {**data, "options": {**options, "log_directory": str(Path(base) / log_dir)}}
        return data

    @model_validator(mode="after")
    def _address_given(self):
        if self.kind == "address" and not self.address:
            raise ValueError("address is required when kind is 'address'")
        return self

    @classmethod
    def from_dict(cls, d: dict | None, base: str | Path | None = None,
                  where: str | None = None) -> "ClusterConfig":
        """From pipelines.yaml's ``cluster`` mapping; a relative ``options.log_directory``
        is taken relative to ``base`` (the directory of pipelines.yaml)."""
        return super().from_dict(d, where=where, context={"base": base})


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@contextlib.contextmanager
def dask_client(config: ClusterConfig) -> Iterator["object | None"]:
    """A ``distributed.Client`` for the config (None for the synchronous scheduler).

    For a batch system the client is returned once the first worker has joined; raises
    ClusterError when every job is refused or ``config.start_timeout`` s pass first."""
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
        with cluster, Client(cluster) as client:
            yield client
        return
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError(f"cluster.kind {config.kind!r} needs dask-jobqueue: "
                          "pip install 'orbitgraph[cluster]'", "cluster.kind") from None
    cluster_cls = getattr(dask_jobqueue, JOBQUEUE_KINDS[config.kind])
    job_cls = _recording(cluster_cls.job_cls)
    cluster = cluster_cls(**config.options, job_cls=job_cls)
    log_dir = config.options.get("log_directory")
    log.info(f"{config.kind} worker jobs write their output to "
             + (f"{Path(log_dir).resolve()}/" if log_dir else
                f"the batch system's default place (SLURM: slurm-JOBID.out in {Path.cwd()}; "
                "set cluster.options.log_directory)"))
    with _terminate_unwinds(), cluster, Client(cluster) as client:
        cluster.scale(jobs=config.jobs)
        _await_first_worker(client, config, job_cls, log_dir)
        log.info(f"{config.kind} jobs {', '.join(job_cls.submitted)}: a worker has joined")
        yield client


@contextlib.contextmanager
def _terminate_unwinds() -> Iterator[None]:
    """While batch jobs run, SIGTERM (``kill``, the driver's own job cancelled or out of
    walltime) unwinds the build as Ctrl-C does, so the worker jobs are cancelled instead of
    left in the queue; the process then exits with status 143. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def batch_jobs(client) -> list[str]:
    """Ids of the batch jobs submitted for ``client``'s dask-jobqueue cluster, in order of
    submission (including jobs that have ended since); [] for other clusters."""
    job_cls = getattr(getattr(client, "cluster", None), "job_cls", None)
    return list(getattr(job_cls, "submitted", []))


def _recording(job_cls: type) -> type:
    """``job_cls`` (a dask-jobqueue Job) that records submitted job ids and refusals.

    A refused submission (the submit command's non-zero exit) is recorded instead of raised:
    dask-jobqueue starts jobs in a background callback whose exceptions no caller sees (they
    surface as a logged traceback, and the cluster then fails to close);
    ``_await_first_worker`` reports them as one line. Such a job counts as started for
    distributed's bookkeeping (it has no job id, so closing it cancels nothing)."""
    from distributed.core import Status

    class Recorded(job_cls):
        submitted: list[str] = []
        refused: list[str] = []

        async def start(self):
            try:
                await super().start()
            except Exception as err:  # noqa: BLE001 - reported by _await_first_worker
                Recorded.refused.append(_submit_error(err))
                self.status = Status.running
            else:
                Recorded.submitted.append(str(self.job_id))

        async def close(self):
            await super().close()  # cancels the job (scancel, qdel, ...) if it has an id
            self.status = Status.closed

    Recorded.__name__ = Recorded.__qualname__ = f"Recorded{job_cls.__name__}"
    return Recorded


def _submit_error(err: Exception) -> str:
    """The submit command's own error lines from dask-jobqueue's RuntimeError."""
    text = str(err)
    if "stderr:" in text:
        lines = [s.strip() for s in text.split("stderr:", 1)[1].splitlines() if s.strip()]
        if lines:
            return "; ".join(lines)
    return " ".join(text.split())


def _await_first_worker(client, config: ClusterConfig, job_cls, log_dir) -> None:
    deadline = time.monotonic() + config.start_timeout
    warned = 0
    announced = False
    while True:
        refused = job_cls.refused
        if not announced and job_cls.submitted and \
                len(job_cls.submitted) + len(refused) >= config.jobs:
            log.info(f"submitted {config.kind} jobs {', '.join(job_cls.submitted)}; waiting "
                     f"up to {config.start_timeout:g} s (cluster.start_timeout) for the first "
                     "worker")
            announced = True
        try:
            client.wait_for_workers(1, timeout=0.25)
            return
        except TimeoutError:
            pass
        if len(refused) >= config.jobs:
            raise ClusterError(f"cluster: the {config.kind} batch system refused the worker "
                               f"job ({refused[0]}); check cluster.options")
        if len(refused) > warned:
            log.warning(f"{config.kind} refused {len(refused)} of {config.jobs} worker "
                        f"jobs ({refused[-1]}); waiting for the others")
            warned = len(refused)
        if time.monotonic() >= deadline:
            ids = job_cls.submitted
            states = _queue_states(config.kind, ids)
            raise ClusterError(
                f"cluster: no Dask worker joined within {config.start_timeout:g} s "
                f"(cluster.start_timeout) of submitting {config.kind} jobs "
                f"{', '.join(ids) or '(none)'}{f' ({states})' if states else ''}; their "
                f"output: {Path(log_dir).resolve() if log_dir else 'the batch default'}; "
                f"the jobs are cancelled")


def _queue_states(kind: str, ids: list[str]) -> str:
    """'ID STATE REASON; ...' from squeue for SLURM jobs still queued ('' otherwise)."""
    if kind != "slurm" or not ids:
        return ""
    try:
        out = subprocess.run(["squeue", "--noheader", f"--jobs={','.join(ids)}",
                              "--format=%i %T %r"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    rows = {line.split()[0]: " ".join(line.split()) for line in out.splitlines() if line.strip()}
    return "; ".join(rows[i] for i in ids if i in rows)  # in the order the jobs are named
