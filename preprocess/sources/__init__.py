"""Sources of labelled frames: the MPtrj JSON file and extended XYZ files or folders."""
from __future__ import annotations

from pathlib import Path

from orbitgraph.errors import ConfigError, InputError, MissingFileError
from orbitgraph.preprocess.sources.base import Partition, Quarantined, Source
from orbitgraph.preprocess.sources.extxyz import SUFFIXES as EXTXYZ_SUFFIXES
from orbitgraph.preprocess.sources.extxyz import ExtxyzSource, is_extxyz_name
from orbitgraph.preprocess.sources.fingerprint import SourceDigest, digest_source
from orbitgraph.preprocess.sources.mptrj_json import MPtrjJsonSource

FORMATS = {"mptrj-json": MPtrjJsonSource, "extxyz": ExtxyzSource}
MPTRJ_SUFFIXES = (".json", ".json.gz")


def format_from_name(path: str | Path) -> str | None:
    """The format a source's name tells (a folder: extxyz files), or None."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir() or is_extxyz_name(name):
        return "extxyz"
    if name.endswith(MPTRJ_SUFFIXES):
        return "mptrj-json"
    return None


def unknown_name_hint(path: str | Path) -> str:
    """What to say about a file whose name tells no format: the names known, and the flag
    (or pipelines.yaml key) that gives the format."""
    return (f"its name ends in none of {', '.join(MPTRJ_SUFFIXES + EXTXYZ_SUFFIXES)}; give "
            f"the format with --format {'|'.join(FORMATS)} (`format:` of the source in "
            "pipelines.yaml)")


def open_source(path: str | Path, source_format: str | None = None) -> Source:
    """Open a source, guessing the format from the name when not given."""
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{path}: no such file or folder")
    if source_format is None:
        source_format = format_from_name(p)
        if source_format is None:
            raise InputError(f"{path}: cannot tell the format from the name: "
                             f"{unknown_name_hint(p)}")
    if source_format not in FORMATS:
        raise ConfigError(f"unknown source format {source_format!r}; "
                          f"expected one of {sorted(FORMATS)}", "format")
    return FORMATS[source_format](p)


__all__ = ["FORMATS", "Partition", "Quarantined", "Source", "SourceDigest", "digest_source",
           "format_from_name", "is_extxyz_name", "open_source", "unknown_name_hint"]
