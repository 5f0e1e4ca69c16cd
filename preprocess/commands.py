"""Command-line actions of the preprocessing stage: ``info`` and ``verify`` (``build`` lives
in :mod:`orbitgraph.preprocess.build`)."""
from __future__ import annotations

import contextlib
from pathlib import Path

from ase.data import chemical_symbols

from orbitgraph.preprocess.sources import (
    MANY_FILES,
    file_format,
    format_from_name,
    unknown_name_hint,
)
from orbitgraph.preprocess.store import NotAStoreError, open_store, verify_store
from orbitgraph.preprocess.store.params import LABELS


@contextlib.contextmanager
def _store_expected(path: str | Path):
    """Say how to build a store from ``path`` when it is not one but may be a source:
    ``orbitgraph build --source PATH --out DIR``, with ``--format`` when the name tells
    none."""
    try:
        yield
    except NotAStoreError as err:
        p = Path(path)
        if p.is_dir() and not any(file_format(f.name) in MANY_FILES for f in p.rglob("*")):
            raise  # a folder source holds extxyz, ASE database or Alexandria files
        build = f"orbitgraph build --source {path} --out DIR"
        if format_from_name(p) is None:
            raise NotAStoreError(f"{err}; to build a store from it as a source, `{build} "
                                 f"--format ...`: {unknown_name_hint(p)}") from None
        raise NotAStoreError(f"{err}; to build a store from it as a source: `{build}`"
                             ) from None


def info(path: str | Path) -> str:
    """A human-readable summary of a store's manifest. Raises StoreError (NotAStoreError
    with the command that builds one, for a source given instead of a store)."""
    with _store_expected(path):
        store = open_store(path)
    m = store.manifest
    st = m.statistics
    splits = {}
    for s in store.index.column("split").to_pylist():
        splits[s] = splits.get(s, 0) + 1
    e0 = ", ".join(f"{chemical_symbols[z]} {v:.3f}"
                   for z, v in sorted(st["atomic_energies_eV"].items()))
    size = sum(r.bytes for r in m.shards)
    lines = [
        f"store      {store.root}",
        f"id         {m.store_id}   schema {m.schema_version}   backend {m.backend}   "
        f"orbitgraph {m.code_version}",
        f"source     {m.source.path} ({m.source.format}, fingerprint {m.source.fingerprint})",
        f"graph      k={m.graph.k} ties={m.graph.ties} tie_tolerance={m.graph.tie_tolerance} Å "
        f"cutoff={m.graph.cutoff}",
        "labels     " + (", ".join(f"{k} {m.labels[k]}" for k in LABELS
                                   if m.labels.get(k) is not None)
                         + (" (stress required)" if m.labels.get("stress_required") else "")
                         if m.labels else f"energy {m.energy_key}"),
        f"counts     {m.counts['frames']} frames, {m.counts['atoms']} atoms, {m.counts['edges']} "
        f"edges, {m.counts['shards']} shards, {m.counts['quarantined']} quarantined",
        "splits     " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())),
        f"size       {size / 1e6:.1f} MB of shard data, "
        f"{size / max(m.counts['edges'], 1):.2f} bytes/edge",
        f"neighbours {st['mean_neighbors_per_atom']:.3f} per atom (mean)",
        f"forces     RMS {st['force_rms_eV_per_A']:.4f} eV/Å (train)",
        f"energy     {st['energy_per_atom_mean_eV']:.4f} ± "
        f"{st['energy_per_atom_std_eV']:.4f} eV/atom (train)",
        f"E0 (eV)    {e0 if e0 else '-'}",
    ]
    for title, key in (("converted", "labels_converted"), ("not stored", "labels_not_stored")):
        for what, n in sorted(m.counts.get(key, {}).items(), key=lambda x: (-x[1], x[0])):
            lines.append(f"{title:<11}{n} frames: {what}")
    return "\n".join(lines)


def verify(path: str | Path, sample: int = 64) -> tuple[bool, str]:
    with _store_expected(path):
        report = verify_store(path, sample=sample)
    head = (f"{'OK' if report.ok else 'DAMAGED'}: {report.shards} shards, {report.frames} frames "
            f"checked, {report.rebuilt} graphs rebuilt and compared")
    return report.ok, "\n".join([head, *("  " + p for p in report.problems)])
