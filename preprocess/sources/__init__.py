"""Sources of labelled frames: the MPtrj JSON file, extended XYZ files, ASE databases
(SQLite ``.db``, fairchem's ``.aselmdb``) and Alexandria JSON files; the last three as one
file, a folder or a glob pattern (:mod:`orbitgraph.preprocess.sources.files`)."""
from __future__ import annotations

import glob as globlib
from pathlib import Path

from orbitgraph.errors import ConfigError, InputError, MissingFileError
from orbitgraph.preprocess.sources.alexandria import AlexandriaJsonSource
from orbitgraph.preprocess.sources.ase_db import SUFFIXES as ASE_DB_SUFFIXES
from orbitgraph.preprocess.sources.ase_db import AseDbSource, is_ase_db_name
from orbitgraph.preprocess.sources.base import Partition, Quarantined, Source
from orbitgraph.preprocess.sources.extxyz import SUFFIXES as EXTXYZ_SUFFIXES
from orbitgraph.preprocess.sources.extxyz import ExtxyzSource, is_extxyz_name
from orbitgraph.preprocess.sources.files import is_glob
from orbitgraph.preprocess.sources.fingerprint import SourceDigest, digest_source
from orbitgraph.preprocess.sources.mptrj_json import MPtrjJsonSource

FORMATS = {"mptrj-json": MPtrjJsonSource, "extxyz": ExtxyzSource, "ase-db": AseDbSource,
           "alexandria-json": AlexandriaJsonSource}
MPTRJ_SUFFIXES = (".json", ".json.gz")
# Alexandria ships .json.bz2 (MPtrj never does); its .json and .json.gz files need --format
ALEXANDRIA_SUFFIXES = (".json.bz2",)
# the formats a folder or a glob pattern may hold (MPtrj is one file)
MANY_FILES = ("extxyz", "ase-db", "alexandria-json")


def file_format(name: str) -> str | None:
    """The format one file's name tells, or None."""
    name = name.lower()
    if is_extxyz_name(name):
        return "extxyz"
    if is_ase_db_name(name):
        return "ase-db"
    if name.endswith(ALEXANDRIA_SUFFIXES):
        return "alexandria-json"
    if name.endswith(MPTRJ_SUFFIXES):
        return "mptrj-json"
    return None


def format_from_name(path: str | Path) -> str | None:
    """The format a source's name tells, or None. A folder or a glob pattern: the one
    format of :data:`MANY_FILES` whose files it holds (a folder holding none: extxyz, whose
    reader then says that it holds no such files); None when it holds several."""
    p = Path(path)
    if is_glob(path):
        names = [Path(f).name for f in globlib.glob(str(path), recursive=True)]
    elif p.is_dir():
        names = [f.name for f in p.rglob("*") if f.is_file()]
    else:
        return file_format(p.name)
    found = {file_format(n) for n in names} & set(MANY_FILES)
    if len(found) == 1:
        return found.pop()
    return "extxyz" if not found and p.is_dir() else None


def unknown_name_hint(path: str | Path) -> str:
    """What to say about a source whose name tells no format: the names known, and the flag
    (or pipelines.yaml key) that gives the format."""
    names = MPTRJ_SUFFIXES + EXTXYZ_SUFFIXES + ASE_DB_SUFFIXES + ALEXANDRIA_SUFFIXES
    return (f"its name ends in none of {', '.join(names)} (or a folder or pattern holds "
            f"files of several formats); give the format with --format {'|'.join(FORMATS)} "
            "(`format:` of the source in pipelines.yaml)")


def open_source(path: str | Path, source_format: str | None = None) -> Source:
    """Open a source, guessing the format from the name when not given. ``path``: a file,
    a folder, or a glob pattern (ase-db, alexandria-json, extxyz)."""
    p = Path(path)
    if not is_glob(path) and not p.exists():
        raise MissingFileError(f"{path}: no such file or folder")
    if source_format is None:
        source_format = format_from_name(path)
        if source_format is None:
            raise InputError(f"{path}: cannot tell the format from the name: "
                             f"{unknown_name_hint(path)}")
    if source_format not in FORMATS:
        raise ConfigError(f"unknown source format {source_format!r}; "
                          f"expected one of {sorted(FORMATS)}", "format")
    return FORMATS[source_format](str(path) if is_glob(path) else p)


__all__ = ["FORMATS", "MANY_FILES", "Partition", "Quarantined", "Source", "SourceDigest",
           "digest_source", "file_format", "format_from_name", "is_extxyz_name",
           "open_source", "unknown_name_hint"]
