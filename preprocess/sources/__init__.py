"""Sources of labelled frames: the MPtrj JSON file and extended XYZ files or folders."""
from __future__ import annotations

from pathlib import Path

from orbitgraph.preprocess.sources.base import Partition, Quarantined, Source
from orbitgraph.preprocess.sources.extxyz import ExtxyzSource, is_extxyz_name
from orbitgraph.preprocess.sources.fingerprint import SourceDigest, digest_source
from orbitgraph.preprocess.sources.mptrj_json import MPtrjJsonSource

FORMATS = {"mptrj-json": MPtrjJsonSource, "extxyz": ExtxyzSource}


def open_source(path: str | Path, source_format: str | None = None) -> Source:
    """Open a source, guessing the format from the name when not given."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if source_format is None:
        name = p.name.lower()
        if p.is_dir() or is_extxyz_name(name):
            source_format = "extxyz"
        elif name.endswith((".json", ".json.gz")):
            source_format = "mptrj-json"
        else:
            raise ValueError(f"{path}: cannot tell the format from the name; "
                             f"give one of {sorted(FORMATS)}")
    if source_format not in FORMATS:
        raise ValueError(f"unknown source format {source_format!r}; "
                         f"expected one of {sorted(FORMATS)}")
    return FORMATS[source_format](p)


__all__ = ["FORMATS", "Partition", "Quarantined", "Source", "SourceDigest", "digest_source",
           "open_source"]
