"""A one-node SLURM batch system on this machine, for tests: munged, slurmctld and slurmd.

Installs nothing. Where the daemons are installed (Debian: ``apt-get install slurm-wlm
munge``, as root), ``one_node_slurm(directory)`` generates a munge key and a ``slurm.conf``
in ``directory``, starts the three daemons in the foreground as children of this process,
waits until ``sinfo`` shows the node idle, and on exit (also when the body raises) cancels
every job still queued and stops the daemons it started, by process id.

The node is this machine under its short host name (``hostname -s``) at 127.0.0.1 with
2 CPUs. No cgroups are needed: processes are tracked by /proc (``proctrack/linuxproc``),
tasks are not confined (``task/none``), nothing is accounted. SLURM's client commands
(sbatch, squeue, scancel, sinfo) find this cluster through ``SLURM_CONF``, which the
context manager sets in ``os.environ`` while it runs (children such as dask-jobqueue's
sbatch calls inherit it).

As a script, it starts the cluster and waits for Ctrl-C::

    python tests/cluster/slurm_node.py [DIRECTORY]
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "sinfo", "sbatch", "squeue", "scancel")
CPUS = 2


class SlurmStartError(RuntimeError):
    """The one-node cluster did not come up; the message names the daemon and its log."""


def missing_programs() -> list[str]:
    """The daemons and client commands this module needs that are not installed."""
    found = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p, path=found) is None]


def _program(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")
    if path is None:
        raise SlurmStartError(f"{name} is not installed (apt-get install slurm-wlm munge)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    """This machine's memory in MiB (the node's RealMemory)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise SlurmStartError("/proc/meminfo has no MemTotal line")


@dataclass(frozen=True)
class OneNodeSlurm:
    """A running one-node cluster: its configuration and where the daemons log."""

    root: Path
    conf: Path  # slurm.conf; SLURM_CONF points here while the cluster runs
    node: str  # the node's name, this machine's short host name
    partition: str
    cpus: int
    memory_mb: int  # the node's RealMemory

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM's client commands (sbatch, squeue, ...)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def command(self, *args: str, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        done = subprocess.run([_program(args[0]), *args[1:]], env=self.env, text=True,
                              capture_output=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): "
                               f"{done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> dict[str, str]:
        """Job id -> state (PENDING, RUNNING, ...) of every job the controller lists."""
        out = self.command("squeue", "--noheader", "--format=%i %T")
        return dict(line.split() for line in out.splitlines() if line.strip())

    def node_state(self) -> str:
        return self.command("sinfo", "--noheader", "--Node", "--format=%t").strip()

    def logs(self) -> str:
        """The tails of the daemons' logs (for a failure message)."""
        parts = []
        for name in DAEMONS:
            path = self.root / f"{name}.log"
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-15:]
                parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)


def write_config(root: Path, node: str, partition: str, cpus: int, memory_mb: int) -> Path:
    """``slurm.conf`` for one node in ``root`` (state, spool, pid and log files there too)."""
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(f"""\
# One-node SLURM for orbitgraph's tests (tests/cluster/slurm_node.py); generated.
ClusterName=orbitgraph-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root / 'munge.socket'}
CredType=cred/munge
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: processes tracked through /proc, tasks not confined, nothing accounted
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")  # noqa: E501 (slurm.conf has no line continuation for its NodeName line)
    return conf


def _stop(proc: subprocess.Popen, name: str, wait: float = 15) -> None:
    """SIGTERM the daemon by pid, SIGKILL it if it is still there after ``wait`` s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(wait)


def _wait_for(what: str, ready, timeout: float, procs: dict, cluster: OneNodeSlurm) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise SlurmStartError(f"{name} exited with status {proc.returncode} while "
                                      f"waiting for {what}\n{cluster.logs()}")
        try:
            if ready():
                return
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            last = err
        time.sleep(0.2)
    raise SlurmStartError(f"{what}: not ready after {timeout:g} s ({last})\n{cluster.logs()}")


@contextlib.contextmanager
def one_node_slurm(root: str | Path, partition: str = "debug", cpus: int = CPUS,
                   timeout: float = 60) -> Iterator[OneNodeSlurm]:
    """Start munged, slurmctld and slurmd for one node; stop them (by pid) on exit.

    ``root``: an empty directory for the key, configuration, state, spool and logs.
    Raises SlurmStartError naming the daemon when the node is not idle after ``timeout`` s.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munged requires the socket's directory to be searchable by all
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True,
                          check=True).stdout.strip()
    memory_mb = _memory_mb()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = write_config(root, node, partition, cpus, memory_mb)
    cluster = OneNodeSlurm(root, conf, node, partition, cpus, memory_mb)
    previous_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)

    commands = {
        "munged": [_program("munged"), "--foreground", "--force", f"--key-file={key}",
                   f"--socket={root / 'munge.socket'}", f"--pid-file={root / 'munged.pid'}",
                   f"--seed-file={root / 'munged.seed'}", f"--log-file={root / 'munged.log'}"],
        "slurmctld": [_program("slurmctld"), "-D", "-i", "-f", str(conf)],
        "slurmd": [_program("slurmd"), "-D", "-N", node, "-f", str(conf)],
    }
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in DAEMONS:
            with open(root / f"{name}.out", "w") as out:
                procs[name] = subprocess.Popen(commands[name], stdout=out,
                                               stderr=subprocess.STDOUT, env=cluster.env,
                                               start_new_session=True)
            if name == "munged":
                _wait_for("munged's socket", (root / "munge.socket").exists, timeout, procs,
                          cluster)
            elif name == "slurmctld":
                _wait_for("slurmctld", lambda: cluster.command("sinfo", "--noheader") or True,
                          timeout, procs, cluster)
        _wait_for(f"node {node} idle in sinfo", lambda: cluster.node_state() == "idle",
                  timeout, procs, cluster)
        yield cluster
    finally:
        try:
            if "slurmctld" in procs and procs["slurmctld"].poll() is None:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    cluster.command("scancel", f"--partition={partition}")
                    deadline = time.monotonic() + 30
                    while cluster.jobs() and time.monotonic() < deadline:
                        time.sleep(0.2)
        finally:
            for name in reversed(DAEMONS):
                if name in procs:
                    _stop(procs[name], name)
            if previous_conf is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = previous_conf


def main(argv: list[str]) -> int:
    missing = missing_programs()
    if missing:
        print(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)",
              file=sys.stderr)
        return 1
    root = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="slurm-"))

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # `kill PID` stops the daemons too
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with &
    with one_node_slurm(root) as cluster:
        print(f"export SLURM_CONF={cluster.conf}\n# node {cluster.node} idle; Ctrl-C or "
              f"kill {os.getpid()} stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
