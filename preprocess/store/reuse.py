"""What a build may reuse of its output folder: resume a partial build of the same store,
refuse another store's with what differs, or discard a partial build when asked.

A build writes ``build.json`` into its output folder before its first shard: the store id,
the backend, ``frames_per_shard`` (which frames each shard index holds), the source (path,
format, fingerprint, each file's SHA-256) and what the id hashes
(:meth:`~orbitgraph.preprocess.store.manifest.StoreSpec.identity`). A rerun of the same
build resumes (committed shards are skipped). Another build is refused with one line saying
what differs (which source file changed, which parameter) unless it asks to discard the
partial build (``--discard-partial``); a complete store (``manifest.json``) is never
discarded. A first build that fails before committing any shard takes its ``build.json``
back, so that the corrected source or parameter simply builds."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from orbitgraph.preprocess.store.manifest import (
    BUILD_FILE,
    MANIFEST_FILE,
    Manifest,
    SourceInfo,
    StoreError,
    StoreSpec,
)
from orbitgraph.preprocess.store.shard import is_committed
from orbitgraph.preprocess.store.writer import INDEX_NAME, QUARANTINE_NAME

log = logging.getLogger("orbitgraph.build")

DISCARD_FLAG = "--discard-partial"
SHOWN = 3  # changed files named in a message; the rest are counted


def claim(out: Path, spec: StoreSpec, discard_partial: bool = False) -> bool:
    """Make ``out`` the folder of ``spec``'s build: resume the partial build there when it
    is the same (store id and ``frames_per_shard``), else refuse, or discard it first when
    ``discard_partial``. Returns True when this call wrote ``build.json``.

    Raises StoreError naming what differs (and the flag) for a partial build of another
    store or with another ``frames_per_shard``."""
    out = Path(out)
    build_file = out / BUILD_FILE
    if build_file.is_file():
        try:
            recorded = _read_build_file(build_file)
        except StoreError:
            if not discard_partial:
                raise
            recorded = {}
        same = (recorded.get("store_id") == spec.store_id
                and recorded.get("frames_per_shard") == spec.frames_per_shard)
        if same:
            return False
        if not discard_partial:
            raise StoreError(_refusal(out, recorded, spec))
        discard(out, recorded.get("store_id"))
    out.mkdir(parents=True, exist_ok=True)
    build_file.write_text(json.dumps({
        "store_id": spec.store_id, "backend": spec.backend,
        "frames_per_shard": spec.frames_per_shard, "source": spec.source.to_dict(),
        "identity": spec.identity()}, indent=1))
    return True


def _read_build_file(path: Path) -> dict:
    try:
        recorded = json.loads(path.read_text())
    except ValueError as err:
        raise StoreError(f"{path}: damaged, not JSON ({err}); add {DISCARD_FLAG} to delete "
                         "the partial build in its folder") from None
    if not isinstance(recorded, dict):
        raise StoreError(f"{path}: damaged, not a JSON object; add {DISCARD_FLAG} to delete "
                         "the partial build in its folder")
    return recorded


def _refusal(out: Path, recorded: dict, spec: StoreSpec) -> str:
    n = len(committed_shards(out))
    if recorded.get("store_id") == spec.store_id:
        return (f"{out}: a partial build with frames_per_shard={recorded.get('frames_per_shard')}"
                f" exists; resume it with the same value, or add {DISCARD_FLAG} to delete its "
                f"{n} committed shards and start anew")
    what = describe_difference(recorded.get("source"), recorded.get("identity"), spec)
    return (f"{out} holds a partial build of another store (id {recorded.get('store_id')}, "
            f"this build's is {spec.store_id}): {what}. Add {DISCARD_FLAG} to delete its {n} "
            "committed shards and build this store there, or use another --out")


def other_store_error(out: Path, manifest: Manifest, spec: StoreSpec) -> StoreError:
    """The error for a build into a folder that holds a complete store of another id."""
    what = describe_difference(manifest.source.to_dict(), manifest.identity or None, spec)
    return StoreError(f"{out} already holds another store (id {manifest.store_id}, this "
                      f"build's is {spec.store_id}): {what}; use another --out, or delete "
                      "that store to build this one there")


def describe_difference(source: dict | None, identity: dict | None, spec: StoreSpec) -> str:
    """What differs between a recorded build (its source as :meth:`SourceInfo.to_dict`, and
    what its id hashed) and ``spec``: the source files that changed, then the parameters."""
    parts = []
    if source is not None and source.get("fingerprint") != spec.source.fingerprint:
        parts.extend(_file_changes(dict(source.get("files") or {}), spec.source,
                                   source.get("path")))
    if identity:
        now = dict(_flat(spec.identity()))
        for key, value in _flat(identity):
            if key != "source" and now.get(key, value) != value:
                parts.append(f"{key} {value!r} -> {now[key]!r}")
    if parts:
        return "; ".join(parts[:SHOWN] + ([f"and {len(parts) - SHOWN} more differences"]
                                          if len(parts) > SHOWN else []))
    if source is not None and source.get("fingerprint") != spec.source.fingerprint:
        return (f"the source {spec.source.path} is not what it was built from (the record "
                "names no file digests: written by an earlier version)")
    return "built with other label keys or by an earlier version (the record does not say)"


def _file_changes(before: dict[str, str], now: SourceInfo,
                  built_from: str | None = None) -> list[str]:
    """'PATH changed (SHA-256 was ..., is ...)', 'PATH is new', 'PATH is gone' per file;
    for a one-file source given by another path than ``built_from`` (the recorded source
    path), 'PATH is not the file the store was built from, OLD (SHA-256 ...)'."""
    if not before:
        return []
    after = dict(now.files)
    root = Path(now.path)

    def where(name: str) -> str:
        return str(root / name) if root.is_dir() else str(root)

    if len(before) == len(after) == 1 and not root.is_dir():  # one file, perhaps renamed
        (_, was), = before.items()
        (_, sha), = after.items()
        if was == sha:
            return []
        if built_from is not None and _resolved(built_from) != _resolved(str(root)):
            return [f"{root} is not the file the store was built from, {built_from} "
                    f"(SHA-256 {was[:12]}..., this one's {sha[:12]}...)"]
        return [f"{root} changed (SHA-256 was {was[:12]}..., is {sha[:12]}...)"]
    changes = [f"{where(name)} changed (SHA-256 was {before[name][:12]}..., is "
               f"{after[name][:12]}...)" for name in after
               if name in before and before[name] != after[name]]
    changes += [f"{where(name)} is new" for name in after if name not in before]
    changes += [f"{where(name)} is gone" for name in before if name not in after]
    return changes


def _resolved(path: str) -> str:
    """``path`` absolute, links resolved (a path recorded relative to another working
    folder may still name the same file: then it compares unequal, and the message says
    'not the file' of a file that may be the same one renamed)."""
    return str(Path(path).resolve())


def _flat(d: dict, prefix: str = ""):
    """(dotted key, value) of a nested dict's leaves: ``graph.k``, ``labels.energy``."""
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def committed_shards(out: Path) -> list[str]:
    """Names of the shards committed in ``out``."""
    shards = Path(out) / "shards"
    if not shards.is_dir():
        return []
    return sorted(p.name for p in shards.glob("shard-*") if is_committed(out, p.name))


def discard(out: Path, store_id: str | None) -> None:
    """Delete the partial build in ``out``: its shards (committed or not), ``build.json``,
    and the index and quarantine tables a finished or refused build may have left. Other
    files in ``out`` are kept. Raises StoreError for a complete store."""
    out = Path(out)
    if (out / MANIFEST_FILE).is_file():
        raise StoreError(f"{out} holds a complete store; it is not discarded (delete it "
                         "yourself if it is no longer needed)")
    n = len(committed_shards(out))
    if (out / "shards").exists():
        shutil.rmtree(out / "shards")
    for name in (INDEX_NAME, QUARANTINE_NAME, BUILD_FILE):
        (out / name).unlink(missing_ok=True)
    log.warning(f"{out}: discarded the partial build of store {store_id} ({n} committed "
                f"shards deleted, {DISCARD_FLAG})")


def release(out: Path) -> None:
    """After a failed build that wrote ``build.json``: take it back when no shard was
    committed (there is nothing to resume)."""
    out = Path(out)
    if committed_shards(out):
        return
    (out / BUILD_FILE).unlink(missing_ok=True)
    try:
        (out / "shards").rmdir()
    except OSError:  # missing, or holds a temporary a worker left (the next build's to remove)
        pass
