"""Sources that are many files: which files a path names, and the plan by file and row range.

A source path is a file, a folder (every file below it whose name the format reads, in
sorted order of their paths) or a glob pattern (``data/*.aselmdb``,
``shards/**/*.db``: the matching files in sorted order). The store id's fingerprint names a
folder's or a glob's files by their paths relative to the folder (a glob's folder: the part
of the pattern before its first wildcard), see
:mod:`orbitgraph.preprocess.sources.fingerprint`.

Formats whose records are addressed by index (the rows of an ASE database, the entries of an
Alexandria JSON file) are planned by :func:`row_partitions`: the files' record counts are
taken one file at a time, as the plan is consumed, so that the first partition is built
while later files have not been opened (OMat24 ships as thousands of files). A partition is
a run of ``frames_per_partition`` records, in order, that may end inside one file and start
in the next: its ``ranges`` are ``(file, first record, end record)`` pieces. A plan depends
only on the files' contents and ``frames_per_partition``, so a rerun maps the same records
to the same shards; a folder of files and their concatenation give the same partitions.
"""
from __future__ import annotations

import glob as globlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

from orbitgraph.errors import MissingFileError
from orbitgraph.preprocess.sources.base import Partition


def is_glob(path: str | Path) -> bool:
    """Whether ``path`` is a pattern (``*``, ``?`` or ``[``), not an existing file or folder
    (whose name may hold such characters)."""
    return globlib.has_magic(str(path)) and not Path(path).exists()


def glob_root(pattern: str | Path) -> Path:
    """The folder a pattern's files are named relative to: its part before the first
    component with a wildcard (``data/omat/*/*.aselmdb`` -> ``data/omat``)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if globlib.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def source_files(path: str | Path, reads: Callable[[str], bool], what: str) -> list[str]:
    """The files a source at ``path`` reads, in order: the file itself; a folder's files
    (at any depth) whose name ``reads`` (lower-cased name -> bool) accepts; or a glob's
    matches that ``reads`` accepts (``**`` matches folders recursively); sorted as paths
    (component by component).
    ``what`` names the files in errors (``".db or .aselmdb files"``).

    Raises MissingFileError for a path that does not exist, or a folder or pattern that
    holds none of the files."""
    p = Path(path)
    if is_glob(path):
        files = sorted(Path(f) for f in globlib.glob(str(path), recursive=True)
                       if Path(f).is_file() and reads(Path(f).name.lower()))
        if not files:
            raise MissingFileError(f"{path}: the pattern matches no {what}")
        return [str(f) for f in files]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and reads(f.name.lower()))
        if not files:
            raise MissingFileError(f"{path}: no {what} in this folder")
        return [str(f) for f in files]
    if not p.is_file():
        raise MissingFileError(f"{path}: no such file or folder")
    return [str(p)]


def display_name(root: str | Path, file: str) -> str:
    """How frame ids name ``file`` of the source at ``root``: its path relative to the
    folder (or the glob's folder, :func:`glob_root`), POSIX; a single file's name."""
    if is_glob(root):
        base = glob_root(root)
    elif Path(root).is_dir():
        base = Path(root)
    else:
        return Path(file).name
    return Path(file).relative_to(base).as_posix()


def row_partitions(counts: Iterable[tuple[str, int]], frames_per_partition: int
                   ) -> Iterator[Partition]:
    """The plan of a source whose files hold ``counts`` records each (``(file, n)`` in the
    source's order, consumed lazily): partitions of ``frames_per_partition`` records (the
    last may hold fewer), each a tuple of ``(file, start, end)`` record ranges. The records
    of one material are not known before they are read, so a material's frames may span
    two shards (the split is by a hash of the material id, not by shard);
    ``n_materials`` is the frame count."""
    if frames_per_partition < 1:
        raise ValueError(f"frames_per_partition must be at least 1, got {frames_per_partition}")
    index = 0
    pieces: list[tuple[str, int, int]] = []
    n = 0
    for file, count in counts:
        start = 0
        while start < count:
            take = min(count - start, frames_per_partition - n)
            pieces.append((file, start, start + take))
            n += take
            start += take
            if n == frames_per_partition:
                yield Partition(index, n, n, tuple(pieces))
                index += 1
                pieces, n = [], 0
    if n:
        yield Partition(index, n, n, tuple(pieces))
