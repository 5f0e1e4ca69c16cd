"""The source fingerprint: what a store id knows of the source's content.

Every byte of every file a source reads is hashed, so that any change of content gives
another store id: SHA-256, as ``sha256sum`` prints it (a gzip file's compressed bytes;
this machine's CPUs hash at ~1.7 GB/s in hardware, against blake2b's 0.7 GB/s). The
fingerprint of a single-file source is its file's SHA-256; that of a folder (or a glob
pattern) is the SHA-256 of the listing ``"{sha256}  {name}\\n"`` of the files it reads, in
order, each named by its path relative to the folder (a pattern's folder: its part before
the first wildcard; ``sha256sum``'s output format).

Hashing a 12 GB file takes seconds, so each file's digest is remembered in a small JSON
cache keyed by the file's resolved path and its status: size, modification and change
times (ns), inode and device. An unchanged file is then recognised from one ``stat``.
Writing a file changes its change time (ctime), which no tool can set back, so a
same-size edit whose modification time was restored is hashed again too. The cache lives
in the user's cache folder, ``$XDG_CACHE_HOME/orbitgraph/`` (default
``~/.cache/orbitgraph/``): not beside the source (dataset folders are often read-only and
shared) nor in a store (the digest decides which store; one source feeds many).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from orbitgraph.errors import SourceChangedError
from orbitgraph.preprocess.sources.files import glob_root, is_glob

log = logging.getLogger("orbitgraph.build")

CACHE_FILE = "source-digests.json"
CACHE_ENTRIES = 1000  # files remembered; the least recently hashed are forgotten first
READ_BLOCK = 1 << 20  # bytes per read while hashing
# A file changed less than this before its hash started may change again within the same
# timestamp tick (coarse clocks, network filesystems) unseen by the cache: not remembered.
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class SourceDigest:
    """What a store id knows of its source.

    ``fingerprint``: hex SHA-256 of the file, or of a folder's listing (module docstring).
    ``files``: (name, hex SHA-256) of each file read, in order; a file source's name is the
    file's name, a folder's files are named by their paths relative to it (POSIX).
    """

    fingerprint: str
    files: tuple[tuple[str, str], ...]


def digest_source(root: str | Path, files: Sequence[str | Path]) -> SourceDigest:
    """The digest of the source at ``root`` (a file, a folder or a glob pattern) that reads
    ``files``.

    Raises :class:`SourceChangedError` when a file changes while it is hashed, and OSError
    when one cannot be read."""
    many = is_glob(root) or Path(root).is_dir()
    root = glob_root(root) if is_glob(root) else Path(root)
    cache = DigestCache.load()
    try:
        named = tuple((_name(root, Path(f)), cache.sha256(Path(f))) for f in files)
    finally:
        cache.save()
    if many:
        listing = "".join(f"{digest}  {name}\n" for name, digest in named)
        return SourceDigest(hashlib.sha256(listing.encode()).hexdigest(), named)
    (_, digest), = named
    return SourceDigest(digest, named)


def _name(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix() if root.is_dir() else path.name


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of every byte of ``path``, read in 1 MiB blocks into one buffer."""
    h = hashlib.sha256()
    buffer = bytearray(READ_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/orbitgraph``, or ``~/.cache/orbitgraph`` (the XDG default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orbitgraph"


def _stamp(st: os.stat_result) -> list[int]:
    """What identifies one version of a file: size, mtime and ctime (ns), inode, device."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class DigestCache:
    """{resolved path: {"stat": stamp, "sha256": hex}} in ``cache_dir() / CACHE_FILE``.

    A cache only ever saves work: one that cannot be read or written is reported with a
    warning and the files are hashed again."""

    def __init__(self, path: Path, entries: dict):
        self.path = path
        self.entries = entries
        self.added: dict[str, dict] = {}

    @classmethod
    def load(cls) -> "DigestCache":
        path = cache_dir() / CACHE_FILE
        return cls(path, _read_entries(path))

    def sha256(self, path: Path) -> str:
        """The file's hex SHA-256: remembered if its status is unchanged, else hashed (and
        remembered unless it changed within :data:`RACY_NS` of the hash's start)."""
        key = str(path.resolve())
        stamp = _stamp(os.stat(path))
        entry = self.added.get(key) or self.entries.get(key)
        if isinstance(entry, dict) and entry.get("stat") == stamp:
            return entry["sha256"]
        started = time.time_ns()
        t0 = time.perf_counter()
        digest = file_sha256(path)
        seconds = time.perf_counter() - t0
        after = os.stat(path)
        if _stamp(after) != stamp:
            raise SourceChangedError(f"{path}: changed while it was being read (size "
                                     f"{stamp[0]} -> {after.st_size} bytes); build again once "
                                     "it is no longer being written")
        if stamp[0] >= 1 << 28:
            log.info(f"{path}: hashed {stamp[0] / 1e9:.1f} GB in {seconds:.1f} s (SHA-256, "
                     "once per version of the file)")
        if max(after.st_mtime_ns, after.st_ctime_ns) < started - RACY_NS:
            self.added[key] = {"stat": stamp, "sha256": digest}
        return digest

    def save(self) -> None:
        """Merge what was hashed into the file as it is now (another build may have written
        it meanwhile), keep the newest :data:`CACHE_ENTRIES`, replace it atomically."""
        if not self.added:
            return
        entries = _read_entries(self.path)
        for key, entry in self.added.items():
            entries.pop(key, None)
            entries[key] = entry
        kept = dict(list(entries.items())[-CACHE_ENTRIES:])
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(kept))
            os.replace(tmp, self.path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            log.warning(f"{self.path}: cannot save the source digests ({err}); an unchanged "
                        "source will be hashed again by the next build")


def _read_entries(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning(f"{path}: cannot read the cache of source digests ({err}); the sources "
                    "are hashed again")
        return {}
    if not isinstance(entries, dict):
        log.warning(f"{path}: not a cache of source digests (a JSON object); the sources are "
                    "hashed again")
        return {}
    return entries
