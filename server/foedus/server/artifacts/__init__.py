"""Content-addressed artifact storage (sha256)."""

from foedus.server.artifacts.local import BlobWriter, LocalBlobStore

__all__ = ["BlobWriter", "LocalBlobStore"]
