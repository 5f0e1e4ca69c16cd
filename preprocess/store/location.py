"""Where a store lives: a local directory, or any fsspec URL for reading.

Stores are built on a local or shared filesystem (shards are committed by an atomic
rename, which object stores do not have) and can then be copied anywhere and read back
through fsspec: ``s3://bucket/stores/mptrj-k16``, ``gs://...``, ``https://...``,
``file:///...``, ``memory://...``. The scheme's fsspec package (s3fs, gcsfs...) must be
installed; credentials go in ``storage_options`` exactly as fsspec expects them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from orbitgraph.errors import ConfigError


def is_url(path: str | Path) -> bool:
    return isinstance(path, str) and "://" in path


class Location:
    """A store root or a directory inside it; local (``path``) or remote (``url``).

    ``loc / "shards" / "shard-000000"`` names a directory below; ``read_bytes(name)`` and
    ``is_file(name)`` look at a file in this directory.
    """

    def __init__(self, where: "str | Path | Location",
                 storage_options: dict[str, Any] | None = None):
        if isinstance(where, Location):
            self.url, self.path = where.url, where.path
            self.storage_options = dict(where.storage_options)
            self._fs = where._fs
            return
        self.storage_options = dict(storage_options or {})
        self._fs = None
        if is_url(where):
            self.url: str | None = str(where).rstrip("/")
            self.path: Path | None = None
        else:
            if self.storage_options:
                raise ConfigError("storage_options only apply to fsspec URLs, not local paths",
                                  "storage_options")
            self.url, self.path = None, Path(where)

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def fs(self):
        """The fsspec filesystem and the path within it (remote locations only)."""
        if self._fs is None:
            import fsspec

            self._fs = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return self._fs

    def __truediv__(self, name: str) -> "Location":
        out = Location(self)
        if self.is_local:
            out.path = self.path / name
        else:
            out.url = f"{self.url}/{name}"
            out._fs = None if self._fs is None else (self._fs[0], f"{self._fs[1]}/{name}")
        return out

    def exists(self) -> bool:
        if self.is_local:
            return self.path.exists()
        fs, path = self.fs
        return fs.exists(path)

    def is_file(self, name: str) -> bool:
        if self.is_local:
            return (self.path / name).is_file()
        fs, path = self.fs
        return fs.isfile(f"{path}/{name}")

    def read_bytes(self, name: str) -> bytes:
        if self.is_local:
            return (self.path / name).read_bytes()
        fs, path = self.fs
        with fs.open(f"{path}/{name}", "rb") as f:
            return f.read()

    def __str__(self) -> str:
        return str(self.path) if self.is_local else self.url

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __getstate__(self) -> dict:  # filesystems are rebuilt lazily after pickling
        return {**self.__dict__, "_fs": None}
