"""An experiment's run directories: one per resolved configuration, the latest reachable
under the experiment's name.

An experiment's results (checkpoints, metrics, plots) belong to the configuration that
produced them: the id of the store it trained on, its model settings and its training
settings, each resolved (every key with its value, defaults included, the loader's batch
budget that of the training device). Its directory is ``experiments/NAME-ID``, ID a hash
of that configuration (written beside the results, :data:`CONFIG_FILE`), so a changed
configuration trains in a directory of its own and the earlier one is kept;
``experiments/NAME`` is a relative symbolic link to the latest.

A link rather than a pointer file: paths through it (``experiments/NAME/best.pt``) keep
working for every program; POSIX file systems, the cluster ones included (Lustre, GPFS,
NFS), hold symbolic links, and a relative one survives moving or copying the workdir
(``cp -a``, ``rsync -a``). It is replaced atomically (made beside it, then renamed over
it), so a reader sees the old or the new target, never none.

Training settings that do not change the results (:data:`NOT_RESULTS`: logging, checkpoint
frequency, plots, loader processes and memory pinning) are left out, so changing them
reuses the results.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("orbitgraph.run")
CONFIG_FILE = "experiment.json"
# train settings left out of an experiment's configuration: none changes its results
NOT_RESULTS = ("log_every", "checkpoint_every", "plots", "tensorboard", "loader.num_workers",
               "loader.pin_memory", "loader.max_atoms_by_device")


def resolved_config(store_id: str | list[dict], model, train) -> dict:
    """The configuration an experiment's results belong to, as plain data: ``store_id``
    (over several stores: a list of each one's store, name, id and weight),
    ``model`` (a :class:`orbitgraph.model.config.ModelConfig`, every key) and ``train`` (a
    :class:`orbitgraph.train.config.TrainConfig`, its loader's budget resolved for its
    device, without :data:`NOT_RESULTS`), as JSON gives it back."""
    train = train.model_copy(update={"loader": train.loader.for_device(train.device)})
    settings = train.to_dict()
    for path in NOT_RESULTS:
        *parents, key = path.split(".")
        node = settings
        for part in parents:
            node = node[part]
        del node[key]
    config = {"store_id": store_id, "model": model.to_dict(), "train": settings}
    return json.loads(json.dumps(config))  # as read back from CONFIG_FILE (str keys, lists)


def config_id(config: dict) -> str:
    """16 hex digits of the SHA-256 of ``config`` as sorted JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def read_config(run: Path) -> dict | None:
    """The configuration recorded in the run directory ``run`` (None if there is none)."""
    path = run / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_config(run: Path, config: dict) -> None:
    """Record ``config`` in ``run`` (created if missing)."""
    run.mkdir(parents=True, exist_ok=True)
    (run / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``KEY.PATH old -> new`` for every key whose value differs between two
    configurations (nested mappings compared key by key; a missing key shows as None)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key} {a!r} -> {b!r}")
    return changes


def point_latest(link: Path, run: Path) -> None:
    """Make ``link`` (``experiments/NAME``) a relative symbolic link to the sibling run
    directory ``run``, atomically. A real directory in its place (the one run directory
    per experiment of earlier versions) is kept, renamed to ``NAME-unversioned`` (or
    ``-unversioned-2``, ...), with a warning."""
    if link.is_symlink() and os.readlink(link) == run.name:
        return
    if link.exists() and not link.is_symlink():
        kept = link.with_name(f"{link.name}-unversioned")
        n = 1
        while kept.exists() or kept.is_symlink():
            n += 1
            kept = link.with_name(f"{link.name}-unversioned-{n}")
        link.rename(kept)
        log.warning(f"{link} held results of an unrecorded configuration (written before each "
                    f"configuration had a directory of its own): kept as {kept}")
    tmp = link.with_name(f".{link.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(run.name, tmp)
    os.replace(tmp, link)
