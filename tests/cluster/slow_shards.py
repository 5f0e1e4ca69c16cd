"""A Dask worker preload for the SLURM fault test (``dask-worker --preload THIS_FILE``).

Every partition a worker builds first leaves a marker file
``$ORBITGRAPH_TEST_MARKERS/JOBID-shard-NNNNNN`` (JOBID: the batch job running the worker)
and then waits ``$ORBITGRAPH_TEST_SHARD_DELAY`` seconds, so a test can see which job holds
which partition and cancel a job while it holds one.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import orbitgraph.preprocess.build as build
from orbitgraph.preprocess.store.shard import shard_name


def _install() -> None:
    """Wrap the partition builder once (distributed may import a preload more than once)."""
    if getattr(build._build_partition, "_marked_and_slow", False):
        return
    original = build._build_partition

    def marked_and_slow(source, part, *args, **kwargs):
        markers = Path(os.environ["ORBITGRAPH_TEST_MARKERS"])
        job = os.environ.get("SLURM_JOB_ID", "nojob")
        (markers / f"{job}-{shard_name(part.index)}").touch()
        time.sleep(float(os.environ["ORBITGRAPH_TEST_SHARD_DELAY"]))
        return original(source, part, *args, **kwargs)

    marked_and_slow._marked_and_slow = True
    build._build_partition = marked_and_slow


_install()
