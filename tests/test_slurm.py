"""The build on a real batch system: the SLURM guide's section (docs/guides/slurm.md), run on
a one-node SLURM that ``tests/cluster/slurm_node.py`` starts on this machine, gives the store
an in-process build gives, from a many-file source (the bundled sample as a folder of
``.aselmdb`` files, as OMat24 ships, partitioned by file and row range across the jobs); a
cancelled worker job is survived; a refused job and a job that
never starts end the build with one line.

Skipped where SLURM's daemons are not installed (or this is not root); under ``CI`` that is
a failure instead, so a broken install cannot pass as a skip (``.ci/run`` installs them).
"""
from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cluster.slurm_node import missing_programs, one_node_slurm
from helpers import small_mptrj_frames, write_ase_db_folder
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.store import open_store, verify_store
from orbitgraph.preprocess.store.shard import is_committed
from orbitgraph.train.pipelines import load_pipelines

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "orbitgraph.train.cli"]
STORE = "sample-k16"
SLOW_SHARDS = ROOT / "tests" / "cluster" / "slow_shards.py"


def readme_cluster_section() -> dict:
    """The ``cluster`` mapping of the first YAML block of the SLURM guide
    (docs/guides/slurm.md, "On a SLURM cluster")."""
    text = (ROOT / "docs" / "guides" / "slurm.md").read_text()
    section = text[text.index("# On a SLURM cluster"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return yaml.safe_load(block)["cluster"]


README_CLUSTER = readme_cluster_section()


def _problems() -> list[str]:
    problems = [f"{p} is not installed" for p in missing_programs()]
    if importlib.util.find_spec("dask_jobqueue") is None:
        problems.append("dask-jobqueue is not installed (pip install -e '.[cluster]')")
    if os.geteuid() != 0:
        problems.append("the one-node SLURM runs its daemons as root")
    return problems


@pytest.fixture(scope="module")
def slurm():
    """A running one-node SLURM whose partition is the README's queue."""
    problems = _problems()
    if problems:
        reason = "one-node SLURM unavailable: " + "; ".join(problems) + \
            " (apt-get install slurm-wlm munge, as root)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {reason}; .ci/run installs them")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="orbitgraph-slurm-"))
    try:
        with one_node_slurm(root, partition=README_CLUSTER["options"]["queue"]) as cluster:
            yield cluster
    finally:
        shutil.rmtree(root, ignore_errors=True)


SOURCE_FILE_SIZES = [7, 30, 41, 33, 40]  # the sample's 151 frames; partitions cross files


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The bundled sample as a folder of five ``.aselmdb`` files in two subset folders."""
    if importlib.util.find_spec("ase_db_backends") is None:
        reason = "the many-file source is .aselmdb files: pip install -e '.[omat]'"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {reason}")
        pytest.skip(reason)
    return write_ase_db_folder(tmp_path_factory.mktemp("omat-like"), small_mptrj_frames(),
                               SOURCE_FILE_SIZES)


def _pipelines(directory: Path, cluster: dict, source: Path) -> Path:
    """A pipelines.yaml in ``directory``: the many-file ``source`` in four shards of <= 40
    frames, built where ``cluster`` says."""
    data = {"cluster": cluster,
            "sources": {"sample": {"path": str(source), "format": "ase-db"}},
            "stores": {STORE: {"source": "sample", "frames_per_shard": 40,
                               "graph": {"k": 16, "ties": "include", "tie_tolerance": 0.01},
                               "split": {"val_fraction": 0.15, "test_fraction": 0.15}}}}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, source) -> Path:
    """The store built in this process (no cluster)."""
    path = _pipelines(tmp_path_factory.mktemp("in-process"), {"kind": "synchronous"}, source)
    summary = load_pipelines(path).build(STORE, progress=False)
    return summary.store


def _build_command(path: Path) -> list[str]:
    """Progress (INFO) goes to stderr, the summary to stdout; no bar off a terminal."""
    return CLI + ["build", str(path), "--store", STORE]


def _jobs_in_summary(stdout: str) -> list[str]:
    found = re.findall(r"^  batch jobs (.+)$", stdout, re.M)
    assert len(found) == 1, stdout
    return found[0].split(", ")


def _wait_until_gone(slurm, jobs: list[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = {j: s for j, s in slurm.jobs().items() if j in jobs}
        if not queued:
            return queued
        time.sleep(0.2)
    return queued


def assert_same_store(a: Path, b: Path) -> None:
    """Index, quarantine, manifest counts, statistics and shard records (checksums), and
    every column of every shard equal."""
    sa, sb = open_store(a), open_store(b)
    assert sa.manifest.store_id == sb.manifest.store_id
    assert sa.index.equals(sb.index), "index"
    assert sa.quarantine().equals(sb.quarantine()), "quarantine"
    assert sa.manifest.counts == sb.manifest.counts
    assert sa.manifest.statistics == sb.manifest.statistics
    assert sa.manifest.shards == sb.manifest.shards
    shards = range(len(sa.manifest.shards))
    for (s, da, _), (_, db, _) in zip(sa.iter_shards(shards), sb.iter_shards(shards), strict=True):
        assert da.columns.keys() == db.columns.keys()
        for name, x in da.columns.items():
            y = db.columns[name]
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), \
                f"shard {s} column {name}"


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("orbitgraph: error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def test_readme_cluster_section_is_a_slurm_job_script(source, tmp_path):
    """Without a batch system: the README's section loads, and dask-jobqueue turns it into
    the job script it promises (log directory relative to pipelines.yaml)."""
    if importlib.util.find_spec("dask_jobqueue") is None and not os.environ.get("CI"):
        pytest.skip("dask-jobqueue is not installed (pip install -e '.[cluster]')")
    from dask_jobqueue import SLURMCluster

    config = load_pipelines(_pipelines(tmp_path, README_CLUSTER, source)).cluster
    assert config == ClusterConfig.from_dict(README_CLUSTER, tmp_path)
    assert config.kind == "slurm" and config.jobs == README_CLUSTER["jobs"]
    log_dir = tmp_path / README_CLUSTER["options"]["log_directory"]
    assert config.options["log_directory"] == str(log_dir)
    script = SLURMCluster.job_cls("tcp://scheduler:8786", name="worker",
                                  **config.options).job_script()
    opts = README_CLUSTER["options"]
    for line in (f"#SBATCH -p {opts['queue']}", f"#SBATCH -A {opts['account']}",
                 f"#SBATCH --cpus-per-task={opts['cores']}", "#SBATCH --mem=954M",
                 f"#SBATCH -t {opts['walltime']}", f"#SBATCH -o {log_dir}/dask-worker-%J.out",
                 f"--local-directory {opts['local_directory']}",
                 f"--interface {opts['interface']}"):
        assert line in script, (line, script)


def test_pipelines_yaml_slurm_comment_has_the_readme_keys():
    """The commented SLURM example in pipelines.yaml uses the guide's keys (site values)."""
    lines = (ROOT / "pipelines.yaml").read_text().splitlines()
    start = lines.index("  # kind: slurm")
    block = []
    for line in lines[start:]:
        if not line.startswith("  # "):
            break
        block.append(line[4:])
    example = yaml.safe_load("\n".join(block))
    assert example.keys() == README_CLUSTER.keys()
    assert example["options"].keys() == README_CLUSTER["options"].keys()
    assert ClusterConfig.from_dict(example).kind == "slurm"


@pytest.mark.slow
def test_readme_cluster_section_builds_the_sample_store_through_slurm(source, slurm,
                                                                      reference, tmp_path):
    """``orbitgraph build pipelines.yaml --store NAME`` submits real jobs through
    dask-jobqueue; the store equals the in-process one; the summary names the jobs and the
    log says where their output is."""
    path = _pipelines(tmp_path, README_CLUSTER, source)
    run = subprocess.run(_build_command(path), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = _jobs_in_summary(run.stdout)
    assert len(jobs) == README_CLUSTER["jobs"]
    log_dir = tmp_path / README_CLUSTER["options"]["log_directory"]
    assert f"slurm worker jobs write their output to {log_dir}/" in run.stderr
    for job in jobs:  # the file names are SLURM's (%J): each job ran a Dask worker
        assert "Start worker" in (log_dir / f"dask-worker-{job}.err").read_text()
    store = Path(run.stdout.strip().splitlines()[-1])
    assert store.parent == tmp_path / "runs" / "stores" and store.name == reference.name
    assert_same_store(store, reference)
    assert _wait_until_gone(slurm, jobs) == {}, "the jobs are cancelled when the build ends"


@pytest.mark.slow
def test_a_worker_job_cancelled_mid_build_is_survived(source, slurm, reference, tmp_path):
    """scancel of a job while its worker builds a partition: the partition runs again in
    the other job and the build completes with the same store."""
    markers = tmp_path / "markers"
    markers.mkdir()
    cluster = copy.deepcopy(README_CLUSTER)
    cluster["options"]["worker_extra_args"] = ["--preload", str(SLOW_SHARDS)]
    path = _pipelines(tmp_path, cluster, source)
    out = tmp_path / "runs" / "stores" / reference.name
    env = {**os.environ, "ORBITGRAPH_TEST_MARKERS": str(markers),
           "ORBITGRAPH_TEST_SHARD_DELAY": "3"}
    proc = subprocess.Popen(_build_command(path), cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    victim = None
    try:
        deadline = time.monotonic() + 300
        while victim is None and proc.poll() is None and time.monotonic() < deadline:
            running = {j for j, state in slurm.jobs().items() if state == "RUNNING"}
            # the partition a job started last: the furthest from being committed
            for marker in sorted(markers.iterdir(), key=lambda m: -m.stat().st_mtime):
                job, shard = marker.name.split("-", 1)
                if job in running and not is_committed(out, shard):
                    slurm.command("scancel", job)
                    victim = (job, shard)
                    break
            time.sleep(0.1)
        assert victim is not None, "a job held a partition while the build ran"
        assert _wait_until_gone(slurm, [victim[0]]) == {}, "SLURM ended the cancelled job"
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    job, shard = victim
    jobs = _jobs_in_summary(stdout)
    assert job in jobs and len(jobs) == README_CLUSTER["jobs"]
    again = [m.name for m in markers.iterdir() if m.name.endswith(f"-{shard}")
             and not m.name.startswith(f"{job}-")]
    assert again, f"{shard}, lost with job {job}, ran again in another job"
    assert_same_store(out, reference)
    assert verify_store(out, sample=8).ok


@pytest.mark.slow
def test_an_impossible_memory_request_ends_the_build_with_one_line(source, slurm, tmp_path):
    """sbatch refuses a job no node can hold: one error line at once, nothing queued."""
    cluster = copy.deepcopy(README_CLUSTER)
    cluster["options"]["memory"] = "100TB"
    assert 100e12 > slurm.memory_mb * 2**20, "more memory than the node has"
    run = subprocess.run(_build_command(_pipelines(tmp_path, cluster, source)), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 2
    line = _one_error_line(run.stderr)
    assert line.startswith("orbitgraph: error: cluster: the slurm batch system refused the "
                           "worker job (sbatch: error: Memory specification can not be "
                           "satisfied"), line
    assert "check cluster.options" in line
    assert slurm.jobs() == {}


@pytest.mark.slow
def test_a_job_that_never_starts_ends_the_build_after_start_timeout(source, slurm, tmp_path):
    """Jobs the queue accepts but does not start (here: not before an hour from now) end
    the build after cluster.start_timeout with one line naming them; they are cancelled."""
    cluster = copy.deepcopy(README_CLUSTER)
    cluster["start_timeout"] = 5
    cluster["options"]["job_extra_directives"] = ["--begin=now+3600"]
    run = subprocess.run(_build_command(_pipelines(tmp_path, cluster, source)), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 2
    line = _one_error_line(run.stderr)
    match = re.search(r"no Dask worker joined within 5 s \(cluster\.start_timeout\) of "
                      r"submitting slurm jobs (\d+), (\d+) \((.*?)\); their output: (\S+);",
                      line)
    assert match, line
    jobs = [match.group(1), match.group(2)]
    assert match.group(3) == f"{jobs[0]} PENDING BeginTime; {jobs[1]} PENDING BeginTime"
    assert match.group(4) == str(tmp_path / README_CLUSTER["options"]["log_directory"])
    assert _wait_until_gone(slurm, jobs) == {}, "the jobs are cancelled"


@pytest.mark.slow
def test_a_terminated_build_cancels_its_jobs(source, slurm, tmp_path):
    """SIGTERM to the driver (kill, its own job cancelled or out of walltime) while its jobs
    wait in the queue: the jobs are cancelled, not left queued."""
    cluster = copy.deepcopy(README_CLUSTER)
    cluster["options"]["job_extra_directives"] = ["--begin=now+3600"]
    proc = subprocess.Popen(_build_command(_pipelines(tmp_path, cluster, source)), cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        said = []
        for line in proc.stderr:  # progress (INFO): until the driver says it submitted the jobs
            said.append(line)
            if line.startswith("submitted slurm jobs"):
                break
        jobs = re.match(r"submitted slurm jobs ([\d, ]+);", said[-1]).group(1).split(", ")
        assert len(jobs) == README_CLUSTER["jobs"]
        assert {slurm.jobs()[j] for j in jobs} == {"PENDING"}
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr[-3000:]
    assert _wait_until_gone(slurm, jobs) == {}, "the queued jobs are cancelled"
