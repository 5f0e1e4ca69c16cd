"""What every source provides: a deterministic partition plan and a partition reader.

A partition is a contiguous run of whole materials (all frames of a material land in one
shard). The plan depends only on the source's bytes and ``frames_per_partition``, so a
rerun after an interruption maps the same frames to the same shard indices and builds
only what is missing. Reading a partition is a pure function of (source, partition), cheap
to ship to a Dask worker: for plain files it carries a byte range, never the data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from orbitgraph.errors import SourceChangedError
from orbitgraph.preprocess.frame import Frame
from orbitgraph.preprocess.sources.labels import LabelPlan
from orbitgraph.preprocess.store.params import LabelKeys


@dataclass(frozen=True)
class Partition:
    """Frames ``[frame_start, frame_start + n_frames)`` of the source, as shard ``index``.

    ``ranges`` are (path, start, end) pieces to read: byte offsets for text formats (MPtrj
    JSON, extxyz), record positions for formats of addressable records (the rows of an ASE
    database, the entries of an Alexandria file; see
    :mod:`orbitgraph.preprocess.sources.files`). ``payload`` holds the bytes of the pieces
    that cannot be read at an offset (gzip streams: offsets are then in the decompressed
    bytes; Alexandria files: their entries' JSON), in the order of ``ranges``.
    """

    index: int
    n_materials: int
    n_frames: int
    ranges: tuple[tuple[str, int, int], ...] = ()
    payload: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Quarantined:
    material_id: str
    frame_id: str
    reason: str

    def to_dict(self) -> dict:
        return {"material_id": self.material_id, "frame_id": self.frame_id, "reason": self.reason}


class Source(Protocol):
    path: str
    format: str
    files: list[str]  # the files read, in order (what the store id's fingerprint hashes)
    # frames of the last partitions() plan, counted as it is iterated, that name no material
    # (each is then a material of its own, and the splits are by frame); 0 where the plan
    # does not read the frames (ASE databases, Alexandria: their rows are read by workers)
    frames_without_material_id: int
    material_keys: tuple[str, ...]  # the per-frame fields a material id is read from

    def partitions(self, frames_per_partition: int) -> Iterator[Partition]:
        """The plan, in order; for gzip sources each partition carries its bytes."""

    def label_keys(self, keys: LabelKeys) -> LabelKeys:
        """``keys`` with the names the format fixes filled in, without reading the source
        (what the store id hashes)."""

    def resolve_labels(self, keys: LabelKeys) -> LabelPlan:
        """The keys every frame is read with; may read the source (once, in the driver).
        Raises :class:`~orbitgraph.preprocess.sources.labels.LabelError` when a key is not given and
        the source does not say which field it is."""

    def read(self, part: Partition, labels: LabelPlan, threads: int = 1
             ) -> tuple[list[Frame], list[Quarantined]]:
        """Parse and validate one partition: good frames and quarantined records, in the
        source's order; ``threads`` may parse pieces of it in parallel (same result)."""


def read_range(path: str, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    if len(data) != end - start:
        raise SourceChangedError(f"{path}: expected {end - start} bytes at offset {start}, got "
                                 f"{len(data)} (the file changed since the plan was made?)")
    return data


def is_gzip(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"
