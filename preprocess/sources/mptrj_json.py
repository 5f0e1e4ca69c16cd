"""The MPtrj JSON file as published: ``{material_id: {frame_id: record}}``, ``.json`` or
``.json.gz``, streamed with memory bounded by the partition, never by the file.

A compiled byte scanner walks the file once (about 500 MB/s), tracking string and nesting
state, and finds where each material's ``"id": {...}`` entry starts and ends and how many
frames it holds. Runs of whole materials become partitions. A worker reads its partition's
byte range and extracts the records' columns with compiled code
(:mod:`preprocess.sources.mptrj_extract`); records that path does not take, and runs that
are not valid JSON, are parsed with orjson and checked by
:func:`~preprocess.sources.records.frame_from_record`. For a gzip file the driver streams
the decompressed bytes and hands each partition its bytes.
"""
from __future__ import annotations

import bisect
import gzip
import json
from pathlib import Path
from typing import Iterator

import numba
import numpy as np
import orjson

from preprocess.frame import Frame
from preprocess.sources.base import SPLIT_BYTES, Partition, Quarantined, is_gzip, read_range
from preprocess.sources.labels import LabelError, LabelPlan
from preprocess.sources.mptrj_extract import OK, SLOW, Extracted, extract
from preprocess.sources.records import RecordError, cell_problem, frame_from_record
from preprocess.store.params import LabelKeys
from preprocess.threads import thread_map
from preprocess.units import stress_from_vasp_kbar

CHUNK = 64 << 20

# the published layout's label fields: the energy key is the build's choice
DEFAULT_ENERGY_KEY = "uncorrected_total_energy"
FORCES_KEY = "force"  # eV/Å
STRESS_KEY = "stress"  # kBar, VASP sign

# scanner state slots
_DEPTH, _IN_STRING, _ESCAPE, _START, _FRAMES = range(5)

_ONES = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)
# each byte the scanner acts on, repeated in all 8 bytes of a word
_QUOTE, _BACKSLASH, _LBRACE, _RBRACE, _LBRACKET, _RBRACKET = (
    np.uint64(c * 0x0101010101010101) for c in (34, 92, 123, 125, 91, 93))


@numba.njit(cache=True, nogil=True, inline="always")
def _has_byte(word, repeated):
    """Non-zero if any byte of ``word`` equals the byte ``repeated`` is made of."""
    v = word ^ repeated
    return (v - _ONES) & ~v & _HIGH


@numba.njit(cache=True, nogil=True)
def _scan(buf, base, state, starts, ends, frames):
    """Scan ``buf`` (bytes at absolute offset ``base``); append finished materials.

    Returns how many were appended (``-1`` if the output arrays are full: call again with
    the unscanned rest). ``state`` carries depth, string/escape flags, the current
    material's start offset and frame count across chunks. A depth-1 string is a material
    key (its value is an object), a depth-2 string is a frame key. Eight bytes at a time
    are skipped while none of them is a quote, backslash or bracket (most of a number
    array), which makes the scan about 1.5x faster than byte by byte.
    """
    n_out = 0
    cap = starts.shape[0]
    depth = state[_DEPTH]
    in_string = state[_IN_STRING]
    escape = state[_ESCAPE]
    n = buf.shape[0]
    words = buf[:n - n % 8].view(np.uint64)
    p = 0
    while p < n:
        if (p & 7) == 0 and p + 8 <= n and not escape:
            w = words[p >> 3]
            if in_string:
                hit = _has_byte(w, _QUOTE) | _has_byte(w, _BACKSLASH)
            else:
                hit = (_has_byte(w, _QUOTE) | _has_byte(w, _LBRACE) | _has_byte(w, _RBRACE)
                       | _has_byte(w, _LBRACKET) | _has_byte(w, _RBRACKET))
            if hit == 0:
                p += 8
                continue
        c = buf[p]
        if in_string:
            if escape:
                escape = 0
            elif c == 92:  # backslash
                escape = 1
            elif c == 34:  # closing quote
                in_string = 0
            p += 1
            continue
        if c == 34:  # opening quote
            in_string = 1
            if depth == 1:
                state[_START] = base + p
                state[_FRAMES] = 0
            elif depth == 2:
                state[_FRAMES] += 1
        elif c == 123 or c == 91:  # { [
            depth += 1
        elif c == 125 or c == 93:  # } ]
            depth -= 1
            if depth == 1:
                if n_out == cap:
                    state[_DEPTH] = depth + 1
                    state[_IN_STRING] = in_string
                    state[_ESCAPE] = escape
                    return -(p + 1)  # resume at p (this brace not consumed)
                starts[n_out] = state[_START]
                ends[n_out] = base + p + 1
                frames[n_out] = state[_FRAMES]
                n_out += 1
            elif depth < 0:
                state[_DEPTH] = depth
                return n_out
        p += 1
    state[_DEPTH] = depth
    state[_IN_STRING] = in_string
    state[_ESCAPE] = escape
    return n_out


class MaterialScanner:
    """Feed bytes in order; get (start, end, n_frames) of every complete material entry."""

    def __init__(self, cap: int = 1 << 16):
        self.state = np.zeros(5, dtype=np.int64)
        self.offset = 0
        self._starts = np.empty(cap, np.int64)
        self._ends = np.empty(cap, np.int64)
        self._frames = np.empty(cap, np.int64)

    def feed(self, data: bytes) -> list[tuple[int, int, int]]:
        buf = np.frombuffer(data, dtype=np.uint8)
        out: list[tuple[int, int, int]] = []
        pos = 0
        while pos < buf.shape[0]:
            n = _scan(buf[pos:], self.offset + pos, self.state, self._starts, self._ends,
                      self._frames)
            if n < 0:  # outputs full
                stop = -n - 1
                count = self._starts.shape[0]
                pos += stop
            else:
                count = n
                pos = buf.shape[0]
            out.extend(zip(self._starts[:count].tolist(), self._ends[:count].tolist(),
                           self._frames[:count].tolist()))
            if self.state[_DEPTH] < 0:
                raise ValueError(f"MPtrj JSON: unbalanced closing bracket near byte "
                                 f"{self.offset + pos}")
        self.offset += buf.shape[0]
        return out

    def finish(self, path: str) -> None:
        if self.state[_DEPTH] != 0 or self.state[_IN_STRING]:
            raise ValueError(f"{path}: the JSON ends inside a value at byte {self.offset} "
                             "(truncated file?)")


def _group(materials, frames_per_partition: int):
    """Runs of whole materials with at least ``frames_per_partition`` frames each."""
    run: list[tuple[int, int, int]] = []
    count = 0
    for m in materials:
        run.append(m)
        count += m[2]
        if count >= frames_per_partition:
            yield run, count
            run, count = [], 0
    if run:
        yield run, count


class MPtrjJsonSource:
    format = "mptrj-json"

    def __init__(self, path: str | Path):
        self.path = str(path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        self.gzipped = is_gzip(self.path)

    def _materials(self) -> Iterator[tuple[int, int, int]]:
        scanner = MaterialScanner()
        opener = gzip.open if self.gzipped else open
        with opener(self.path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield from scanner.feed(chunk)
        scanner.finish(self.path)

    def partitions(self, frames_per_partition: int) -> Iterator[Partition]:
        if not self.gzipped:
            for i, (run, count) in enumerate(_group(self._materials(), frames_per_partition)):
                yield Partition(i, len(run), count, ((self.path, run[0][0], run[-1][1]),),
                                splits=_splits(run))
            return
        yield from self._gzip_partitions(frames_per_partition)

    def _gzip_partitions(self, frames_per_partition: int) -> Iterator[Partition]:
        """Stream the decompressed bytes; each partition carries its own bytes."""
        scanner = MaterialScanner()
        window = bytearray()
        window_start = 0  # absolute offset of window[0]
        run: list[tuple[int, int, int]] = []
        count = 0
        index = 0
        with gzip.open(self.path, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if chunk:
                    window += chunk
                    found = scanner.feed(chunk)
                else:
                    scanner.finish(self.path)
                    found = []
                for m in found:
                    run.append(m)
                    count += m[2]
                    if count >= frames_per_partition:
                        yield self._payload_partition(index, run, count, window, window_start)
                        index += 1
                        run, count = [], 0
                if not chunk:
                    break
                # drop bytes no open partition needs
                keep_from = run[0][0] if run else scanner.offset
                if scanner.state[_DEPTH] >= 1 and not run:
                    keep_from = min(keep_from, int(scanner.state[_START]))
                drop = max(0, keep_from - window_start)
                del window[:drop]
                window_start += drop
        if run:
            yield self._payload_partition(index, run, count, window, window_start)

    @staticmethod
    def _payload_partition(index, run, count, window, window_start) -> Partition:
        data = bytes(window[run[0][0] - window_start: run[-1][1] - window_start])
        return Partition(index, len(run), count, payload=data, splits=_splits(run))

    def label_keys(self, keys: LabelKeys) -> LabelKeys:
        """MPtrj records hold forces under ``force`` and stress under ``stress`` (kBar,
        VASP sign); the energy is any number field of the record, by default
        ``uncorrected_total_energy`` (filled in). Naming ``stress`` makes it required in
        every frame. Raises LabelError for other forces, stress or virial keys."""
        for name, fixed in (("forces", FORCES_KEY), ("stress", STRESS_KEY), ("virial", None)):
            key = getattr(keys, name)
            if key is not None and key != fixed:
                have = f"under '{fixed}'" if fixed else "no such field"
                raise LabelError(f"{self.path}: MPtrj JSON records hold {name} {have}; "
                                 f"{name}_key {key!r} cannot be read from this format")
        return LabelKeys(keys.energy or DEFAULT_ENERGY_KEY, keys.forces, keys.stress)

    def resolve_labels(self, keys: LabelKeys) -> LabelPlan:
        """The plan for ``keys`` (nothing is read: the layout is fixed). The stress is
        required in every frame only if the build named it."""
        full = self.label_keys(keys)
        return LabelPlan(full.energy, FORCES_KEY, STRESS_KEY,
                         stress_required=keys.stress is not None,
                         stress_units="kBar, VASP sign; stored as -stress / 1602.1766208 "
                                      "eV/Å³, ASE sign")

    def read(self, part: Partition, labels: LabelPlan | str, threads: int = 1
             ) -> tuple[list[Frame], list[Quarantined]]:
        """``labels``: a plan, or just the energy key (stress optional)."""
        if isinstance(labels, str):
            labels = LabelPlan(labels, FORCES_KEY, STRESS_KEY)
        if part.payload is not None:
            data = part.payload
        else:
            (path, start, end), = part.ranges
            data = read_range(path, start, end)
        frames, quarantine = parse_materials(data, labels.energy, part.splits, threads)
        if labels.stress_required and any(f.stress is None for f in frames):
            quarantine = quarantine + [Quarantined(f.material_id, f.frame_id,
                                                   f"{STRESS_KEY}: missing")
                                       for f in frames if f.stress is None]
            frames = [f for f in frames if f.stress is not None]
        return frames, quarantine


def _splits(run: list[tuple[int, int, int]]) -> tuple[int, ...]:
    """Offsets from the run's first byte of material entries about every SPLIT_BYTES."""
    base = last = run[0][0]
    out = []
    for start, _, _ in run[1:]:
        if start - last >= SPLIT_BYTES:
            out.append(start - base)
            last = start
    return tuple(out)


def _cut(data: bytes, splits: tuple[int, ...], pieces: int) -> list[memoryview]:
    """Views of ``data`` cut at the ``splits`` nearest to ``pieces`` equal parts (each
    piece ends with its last material's closing brace)."""
    cuts: list[int] = []
    for g in range(1, pieces):
        target = len(data) * g // pieces
        i = bisect.bisect_left(splits, target)
        best = min(splits[max(0, i - 1):i + 1], key=lambda s: abs(s - target), default=0)
        if best > (cuts[-1] if cuts else 0):
            cuts.append(best)
    bounds = [0, *cuts, len(data)]
    view = memoryview(data)
    out = []
    for a, b in zip(bounds, bounds[1:]):
        while b > a and data[b - 1] in b" \t\r\n,":  # the separator before the next entry
            b -= 1
        out.append(view[a:b])
    return out


def parse_materials(data: bytes, energy_key: str, splits: tuple[int, ...] = (),
                    threads: int = 1) -> tuple[list[Frame], list[Quarantined]]:
    """Frames of a run of ``"material_id": {frame_id: record, ...}`` entries, in order, and
    the records that failed validation.

    The compiled extractor takes the run if it is valid JSON; the records it leaves (and
    the whole run otherwise) go through :func:`parse_materials_general`. With ``threads``
    > 1 the run is cut at ``splits`` (offsets of material entries) into that many pieces,
    parsed in parallel (the extractor releases the GIL); a material id found in two pieces
    sends the run back to one piece, so that JSON's rule for a repeated key (the last
    one wins) applies as it does to a run read whole.
    """
    pieces = _cut(data, splits, threads) if threads > 1 and splits else [data]
    if len(pieces) > 1:
        parsed = thread_map(lambda piece: _parse_run(piece, energy_key), pieces)
        keys = [key for _, _, piece_keys in parsed for key in piece_keys]
        if len(set(keys)) == len(keys):
            return ([f for frames, _, _ in parsed for f in frames],
                    [q for _, quarantine, _ in parsed for q in quarantine])
    frames, quarantine, _ = _parse_run(data, energy_key)
    return frames, quarantine


def _parse_run(data: bytes | memoryview, energy_key: str
               ) -> tuple[list[Frame], list[Quarantined], list[str]]:
    """(frames, quarantined records, material ids) of one run."""
    columns = extract(data, energy_key)
    if columns is None:
        return _parse_general(bytes(data), energy_key)
    return (*_frames_of_columns(columns, data, energy_key), columns.material_keys)


def _frames_of_columns(ex: Extracted, data: bytes | memoryview, energy_key: str
                       ) -> tuple[list[Frame], list[Quarantined]]:
    status = ex.status.copy()
    taken = np.nonzero(status == OK)[0]
    for b in taken[_suspect_cells(ex.cell[taken])].tolist():
        if cell_problem(ex.cell[b]) is not None:
            status[b] = SLOW  # frame_from_record says what is wrong with it
    stress = stress_from_vasp_kbar(ex.stress_kbar)
    magmom = {1: ex.magmom, 2: ex.site_magmom}
    ptr = ex.atom_ptr.tolist()
    frames: list[Frame] = []
    quarantine: list[Quarantined] = []
    for b, (mid, fid) in enumerate(zip(ex.material_ids, ex.frame_ids)):
        if status[b] == OK:
            a0, a1 = ptr[b], ptr[b + 1]
            source = int(ex.magmom_source[b])
            frames.append(Frame(
                frame_id=fid, material_id=mid, cell=ex.cell[b], positions=ex.positions[a0:a1],
                numbers=ex.numbers[a0:a1], energy=float(ex.energy[b]),
                forces=ex.forces[a0:a1], stress=stress[b] if ex.has_stress[b] else None,
                magmom=magmom[source][a0:a1] if source else None, pbc=ex.pbc[b]))
            continue
        start, end = ex.record_spans[b].tolist()
        text = bytes(data[start:end])
        try:
            record = orjson.loads(text)
        except orjson.JSONDecodeError:  # e.g. a number beyond the float range
            record = json.loads(text)
        try:
            frames.append(frame_from_record(mid, fid, record, energy_key))
        except RecordError as err:
            quarantine.append(Quarantined(mid, fid, err.reason))
    return frames, quarantine


def _suspect_cells(cells: np.ndarray) -> np.ndarray:
    """(B,) bool: the (B, 3, 3) cells that may be singular or too large, by a test looser
    than :func:`~preprocess.sources.records.cell_problem`, which then decides each
    (left-handed cells are valid crystals)."""
    if not len(cells):
        return np.zeros(0, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):  # huge entries: inf norms are suspect
        det = np.linalg.det(cells)
        norms = np.prod(np.linalg.norm(cells, axis=2), axis=1)
        return ~(norms > 0) | ~np.isfinite(norms) | (np.abs(det) <= 1e-5 * norms)


def parse_materials_general(data: bytes, energy_key: str
                            ) -> tuple[list[Frame], list[Quarantined]]:
    """The general path: the run is parsed at once with orjson; if that fails, entry by
    entry (with the standard library as a second try: it accepts the NaN/Infinity
    literals that Python writes), so that one malformed material is quarantined and its
    neighbours are kept.
    """
    frames, quarantine, _ = _parse_general(data, energy_key)
    return frames, quarantine


def _parse_general(data: bytes, energy_key: str
                   ) -> tuple[list[Frame], list[Quarantined], list[str]]:
    """(frames, quarantined records, material ids) of a run, the general way."""
    quarantine: list[Quarantined] = []
    try:
        materials = [orjson.loads(b"{" + data + b"}")]
    except orjson.JSONDecodeError:
        materials, quarantine = _materials_one_by_one(data)
    frames, more = _frames_of(materials, energy_key)
    keys = [q.material_id for q in quarantine] + [mid for obj in materials for mid in obj]
    return frames, quarantine + more, keys


def _materials_one_by_one(data: bytes) -> tuple[list[dict], list[Quarantined]]:
    """Each material entry of a run that is not valid JSON parsed on its own, with the
    standard library as a second try; the entries neither can read are quarantined."""
    materials: list[dict] = []
    quarantine: list[Quarantined] = []
    scanner = MaterialScanner()
    scanner.state[_DEPTH] = 1  # the entries sit inside the top-level object
    for start, end, _ in scanner.feed(data):
        piece = b"{" + data[start:end] + b"}"
        try:
            materials.append(orjson.loads(piece))
        except orjson.JSONDecodeError:
            try:
                materials.append(json.loads(piece))
            except ValueError as err:
                mid = data[start:end].split(b'"')[1].decode(errors="replace")
                quarantine.append(Quarantined(mid, "?", f"malformed JSON: {err}"))
    return materials, quarantine


def _frames_of(materials: list[dict], energy_key: str) -> tuple[list[Frame], list[Quarantined]]:
    frames: list[Frame] = []
    quarantine: list[Quarantined] = []
    for obj in materials:
        for mid, entries in obj.items():
            if not isinstance(entries, dict):
                quarantine.append(Quarantined(mid, "?", "material: value is not an object of frames"))
                continue
            for fid, rec in entries.items():
                try:
                    frames.append(frame_from_record(mid, fid, rec, energy_key))
                except RecordError as err:
                    quarantine.append(Quarantined(mid, str(fid), err.reason))
    return frames, quarantine
