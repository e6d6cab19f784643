"""Artifacts stored by content digest in a local directory; identical content is stored once.

Layout: ROOT/sha256/ab/<digest> for blobs, ROOT/tmp/ for uploads in progress. An upload streams to
a temporary file while hashing, and becomes a blob only by an atomic rename after it was verified
(fsync of file and directory first), so a crash never leaves a partial blob under a digest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from foedus.server.errors import InvalidArgument, NotFound

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class BlobWriter:
    """One upload in progress: append chunks, then `verify` and `commit`, or `abort`."""

    def __init__(self, store: LocalBlobStore, path: Path) -> None:
        self._store = store
        self.path = path
        self._file: BinaryIO = open(path, "xb")  # noqa: SIM115 - closed by commit/abort
        # Held while the upload is alive; a file nobody holds a lock on was left by a dead process.
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def verify(self, expected_sha256: str, expected_size: int) -> str:
        """Flushes the file to disk and checks size and digest; returns the digest."""
        if self.size != expected_size:
            raise InvalidArgument(
                f"artifact size mismatch: declared {expected_size} bytes, received {self.size}"
            )
        digest = self._hash.hexdigest()
        if digest != expected_sha256.lower():
            raise InvalidArgument(
                f"artifact sha256 mismatch: the client computed {expected_sha256}, the server {digest}; "
                "the upload was corrupted, retry it"
            )
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return digest

    def commit(self, digest: str) -> Path:
        """Moves the verified file under its digest (a no-op when that content is stored already)."""
        final = self._store.path_of(digest)
        if final.exists():
            self.path.unlink(missing_ok=True)
            # Fresh mtime: garbage collection spares it until the version referencing it commits.
            os.utime(final)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, final)
        _fsync_dir(final.parent)
        return final

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)


class LocalBlobStore:
    """Blobs in a local directory, named by sha256."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "sha256"
        self._tmp = root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path_of(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise InvalidArgument("a sha256 digest is 64 lowercase hex characters")
        return self._blobs / digest[:2] / digest

    def writer(self) -> BlobWriter:
        return BlobWriter(self, self.part_path())

    def part_path(self) -> Path:
        """A fresh path for an upload in progress."""
        return self._tmp / f"{time.time_ns()}-{os.urandom(6).hex()}.part"

    def exists(self, digest: str) -> bool:
        return self.path_of(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path_of(digest), "rb")
        except FileNotFoundError as exc:
            raise NotFound(f"artifact {digest} is missing from the artifact store") from exc

    def digests(self) -> Iterator[tuple[str, float]]:
        """Every stored blob with its modification time."""
        for sub in self._blobs.iterdir():
            if sub.is_dir():
                for blob in sub.iterdir():
                    if _DIGEST.match(blob.name):
                        yield blob.name, blob.stat().st_mtime

    def delete(self, digest: str) -> None:
        self.path_of(digest).unlink(missing_ok=True)

    def remove_stale_uploads(self) -> int:
        """Deletes uploads that no live writer holds (left by a crashed or killed process).

        Each writer holds an exclusive flock on its file, so this is right whatever the pid of the
        process that left it, also when a restarted server gets the same pid (PID 1 in a container).
        """
        removed = 0
        for part in self._tmp.glob("*.part"):
            try:
                fd = os.open(part, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # an upload in progress
            finally:
                os.close(fd)
            part.unlink(missing_ok=True)
            removed += 1
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
