"""Artifacts stored in the control plane's database, for replicas that share no volume.

`--artifact-store database`: a verified upload is written to the database in 1 MiB chunks in one
transaction (so a blob either exists whole or not at all), after the local file passed its digest
and the registration gates. The local artifact directory stays as scratch for uploads and as a read
cache: a replica that never saw the upload fetches the chunks once, checks the digest and then
serves the file from disk like the local store does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from foedus.server.artifacts.local import BlobWriter, LocalBlobStore
from foedus.server.errors import NotFound
from foedus.server.store.base import Store

CHUNK_BYTES = 1024 * 1024


class DatabaseBlobWriter(BlobWriter):
    def __init__(self, store: DatabaseBlobStore, path: Path) -> None:
        super().__init__(store, path)
        self._owner = store

    def commit(self, digest: str) -> Path:
        """Stores the verified file in the database, then keeps it in the local cache."""
        self._owner.persist(digest, self.path, self.size)
        return super().commit(digest)


class DatabaseBlobStore(LocalBlobStore):
    """Blobs in the database; `cache_root` holds uploads in progress and a cache of read blobs."""

    def __init__(self, db: Store, cache_root: Path, *, clock: Callable[[], int] | None = None) -> None:
        super().__init__(cache_root)
        self._db = db
        self._clock = clock or (lambda: time.time_ns() // 1000)

    def writer(self) -> BlobWriter:
        return DatabaseBlobWriter(self, self.part_path())

    def persist(self, digest: str, path: Path, size: int) -> None:
        self._db.put_blob(digest, size, _chunks(path), self._clock())

    def exists(self, digest: str) -> bool:
        self.path_of(digest)  # validates the digest
        return self._db.blob_size(digest) is not None

    def open(self, digest: str) -> BinaryIO:
        cached = self.path_of(digest)
        size = self._db.blob_size(digest)
        if size is None:
            raise NotFound(f"artifact {digest} is missing from the artifact store")
        if not (cached.is_file() and cached.stat().st_size == size):
            writer = super().writer()
            try:
                for chunk in self._db.blob_chunks(digest):
                    writer.write(chunk)
                writer.verify(digest, size)
                BlobWriter.commit(writer, digest)
            except BaseException:
                writer.abort()
                raise
        return super().open(digest)

    def digests(self) -> Iterator[tuple[str, float]]:
        for digest, stored_us in self._db.blob_digests():
            yield digest, stored_us / 1e6

    def delete(self, digest: str) -> None:
        self._db.delete_blob(digest)
        super().delete(digest)


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk
