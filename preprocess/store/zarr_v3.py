"""A direct writer of the Zarr v3 arrays of one shard (read back through zarr-python).

zarr-python spends about 4 ms of Python per array it creates (metadata objects, its codec
pipeline, an event loop round trip per chunk), which on a shard of 15 small arrays cost
more than compressing the data (sample shard: 91 ms written through zarr, 33 ms of it
compression). A shard's arrays are written whole, once, so this module encodes them
directly with the codecs zarr itself uses (numcodecs' blosc, vlen-utf8 and zstd,
google-crc32c) and writes exactly the documents and files the Zarr v3 specification
defines and zarr-python writes for the same arrays:

* ``zarr.json`` of the group and of each array (shape, data type, one regular chunk that
  covers the array, fill value, codecs);
* numeric arrays: one file ``c/0[/0...]`` in the ``sharding_indexed`` layout: the inner
  chunks (``inner_rows`` rows each, the last one padded with the fill value), each
  blosc-zstd compressed with byte shuffle, then the index: ``(offset, nbytes)`` as
  little-endian uint64 per inner chunk in C order, followed by its crc32c;
* string arrays: one chunk, vlen-utf8 then zstd (level 0), unsharded.

Inner chunks that hold only the fill value are written like any other (zarr-python would
leave them out; a reader cannot tell the difference). Reading stays with zarr-python.
"""
from __future__ import annotations

import json
from pathlib import Path

import google_crc32c
import numpy as np
from numcodecs import Blosc, VLenUTF8, Zstd

EMPTY_GROUP = {"attributes": {}, "zarr_format": 3, "node_type": "group"}


def write_group(path: Path) -> None:
    """An empty Zarr v3 group at ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "zarr.json").write_text(json.dumps(EMPTY_GROUP))


def _metadata(shape: tuple[int, ...], data_type: str, chunk_shape: tuple[int, ...],
              fill_value, codecs: list[dict]) -> dict:
    return {"shape": list(shape), "data_type": data_type,
            "chunk_grid": {"name": "regular",
                           "configuration": {"chunk_shape": list(chunk_shape)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill_value, "codecs": codecs, "attributes": {},
            "zarr_format": 3, "node_type": "array", "storage_transformers": []}


def write_array(path: Path, metadata: dict, chunk: bytes | None) -> None:
    """An array's ``zarr.json`` and its one chunk (``None``: an array of no rows)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "zarr.json").write_text(json.dumps(metadata))  # C encoder; indent is pure Python
    if chunk is not None:
        key = path.joinpath("c", *["0"] * len(metadata["shape"]))
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(chunk)


def encode_sharded_array(arr: np.ndarray, inner_rows: int, clevel: int, blocksize: int = 0
                         ) -> tuple[dict, bytes | None]:
    """Metadata and chunk of numeric or bool ``arr`` (rows, *trailing) as one shard of
    ``inner_rows``-row chunks.

    The outer chunk is the whole array rounded up to whole inner chunks, so the array is
    one file; a reader can still fetch one inner chunk by its byte range.
    """
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    n, trailing = arr.shape[0], arr.shape[1:]
    inner_rows = max(1, int(inner_rows))
    n_inner = -(-n // inner_rows)
    outer_rows = max(inner_rows, n_inner * inner_rows)
    typesize = arr.dtype.itemsize
    blosc_config = {"typesize": typesize, "cname": "zstd", "clevel": clevel,
                    "shuffle": "shuffle", "blocksize": blocksize}
    # the bytes codec names an endianness only where there is one (as zarr-python writes it)
    to_bytes = ({"name": "bytes"} if typesize == 1 else
                {"name": "bytes", "configuration": {"endian": "little"}})
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    codecs = [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": [inner_rows, *trailing],
        "codecs": [to_bytes, {"name": "blosc", "configuration": blosc_config}],
        "index_codecs": [little, {"name": "crc32c"}],
        "index_location": "end"}}]
    data_type = "bool" if arr.dtype == bool else arr.dtype.name
    fill = False if arr.dtype == bool else (0.0 if arr.dtype.kind == "f" else 0)
    metadata = _metadata(arr.shape, data_type, (outer_rows, *trailing), fill, codecs)
    if n == 0:
        return metadata, None
    codec = Blosc(cname="zstd", clevel=clevel, shuffle=Blosc.SHUFFLE, blocksize=blocksize,
                  typesize=typesize)
    pieces: list[bytes] = []
    index = np.empty((n_inner, 2), dtype="<u8")
    offset = 0
    for c in range(n_inner):
        block = arr[c * inner_rows:(c + 1) * inner_rows]
        if block.shape[0] < inner_rows:  # the last inner chunk, padded with the fill value
            block = np.concatenate([block, np.zeros((inner_rows - block.shape[0], *trailing),
                                                    dtype=arr.dtype)])
        piece = codec.encode(block.reshape(-1).view(np.uint8))
        pieces.append(piece)
        index[c] = (offset, len(piece))
        offset += len(piece)
    index_bytes = index.tobytes()
    crc = np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()
    return metadata, b"".join(pieces) + index_bytes + crc


def encode_string_array(values: np.ndarray) -> tuple[dict, bytes | None]:
    """Metadata and chunk of a 1-d array of strings: one chunk, vlen-utf8 then zstd."""
    n = len(values)
    codecs = [{"name": "vlen-utf8", "configuration": {}},
              {"name": "zstd", "configuration": {"level": 0, "checksum": False}}]
    metadata = _metadata((n,), "string", (max(1, n),), "", codecs)
    chunk = None
    if n:
        encoded = VLenUTF8().encode(np.asarray(values, dtype=object))
        chunk = Zstd(level=0).encode(encoded)
    return metadata, chunk
