"""A 200 MB artifact streams through a real server process without the server holding it in memory.

With --replicas: through two replicas on PostgreSQL with the artifacts in the database (upload to
one, download from either), each replica's peak memory measured."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from serverproc import ServerProcess, ServerSet, sha256_file

from foedus.client_sdk import Client

MiB = 1024 * 1024
LARGE_BYTES = 200 * MiB
MAX_PEAK_GROWTH_KB = 100_000_000 // 1024  # 100 MB, in the kB (KiB) of /proc/PID/status

pytestmark = pytest.mark.slow


def write_random(path: Path, size: int) -> Path:
    """Random bytes written in 1 MiB pieces: the file is never held in memory."""
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            piece = os.urandom(min(MiB, remaining))
            f.write(piece)
            remaining -= len(piece)
    return path


def blob_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "artifacts" / "sha256").rglob("*") if p.is_file())


def stored_blobs(server: ServerSet) -> dict[str, int]:
    """sha256 -> size of every stored blob: files under the data dir, or rows in the database."""
    if server.settings.get("artifact_store") != "database":
        files = blob_files(server.members[0].data_dir)
        assert all(p.parent.name == p.name[:2] for p in files), files  # sha256/ab/abcd...
        assert len({p.name for p in files}) == len(files), files  # each digest stored once
        return {p.name: p.stat().st_size for p in files}
    import psycopg

    with psycopg.connect(server.db) as conn:
        return dict(conn.execute("SELECT sha256, size FROM artifact_blobs").fetchall())


@pytest.fixture
def server(start_control_plane: Callable[..., ServerSet], tmp_path: Path) -> ServerSet:
    return start_control_plane(tmp_path / "data")


@pytest.fixture
def owner(server: ServerSet) -> Iterator[Client]:
    key = server.create_tenant(f"big-{uuid.uuid4().hex[:8]}")
    with server.client(key) as client:
        yield client


def start_peak(server: ServerProcess) -> int:
    """Starts a peak-RSS measurement; returns the baseline (kB) to subtract from VmHWM later.

    Where the kernel allows it VmHWM is reset to the current RSS, so that the measurement does not
    hide growth below an earlier peak (start-up, warm-up); elsewhere the baseline is the peak so far.
    """
    if server.reset_peak_rss():
        return server.rss()["VmRSS"]
    return server.rss()["VmHWM"]


def test_200mb_artifact_streams_with_bounded_server_memory_and_is_stored_once(
    server: ServerSet, owner: Client, tmp_path: Path
) -> None:
    # Warm-up: a small round trip loads every code path (and its allocations) once.
    warm = write_random(tmp_path / "warm.bin", 3 * MiB + 17)
    owner.models.register("warm", warm, framework="custom")
    owner.models.download("warm", tmp_path, 1)

    large = write_random(tmp_path / "large.bin", LARGE_BYTES)
    large_sha = sha256_file(large)
    # peak RSS growth (kB) since the warm-up, of the server process that grew most, after each step
    growth: dict[str, int] = {}
    baselines = {member.pid: start_peak(member) for member in server.members}

    def peak_growth() -> int:
        return max(member.rss()["VmHWM"] - baselines[member.pid] for member in server.members)

    v1 = owner.models.register("large", large, framework="custom")
    growth["upload"] = peak_growth()
    assert v1.version == 1
    assert v1.artifact.sha256 == large_sha
    assert v1.artifact.size_bytes == LARGE_BYTES
    assert v1.artifact.framework == "custom"

    out = tmp_path / "out"
    out.mkdir()
    got = owner.models.download("large", out, 1)
    growth["download"] = peak_growth()
    assert got.stat().st_size == LARGE_BYTES
    assert sha256_file(got) == large_sha
    got.unlink()

    # Stored once, under its digest, complete.
    blobs = stored_blobs(server)
    assert blobs[large_sha] == LARGE_BYTES

    # The same content as a second version: a new version, the same single blob.
    v2 = owner.models.register("large", large, framework="custom")
    growth["second upload"] = peak_growth()
    assert v2.version == 2
    assert v2.artifact.sha256 == large_sha
    assert stored_blobs(server) == blobs
    assert len(blobs) == 2  # warm-up + large, nothing else
    for member in server.members:  # no upload left behind
        tmp = member.data_dir / "artifacts" / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []
    assert [v.version for v in owner.models.versions("large")] == [2, 1]
    assert sha256_file(owner.models.download("large", out, 2)) == large_sha

    print(f"server peak RSS growth since the warm-up (kB, cumulative after each step): {growth}")
    for step, kb in growth.items():
        assert kb < MAX_PEAK_GROWTH_KB, (
            f"server peak RSS grew by {kb / 1024:.1f} MiB by the end of the {step} of a "
            f"{LARGE_BYTES // MiB} MiB artifact (limit 100 MB): artifacts must stream, not be buffered"
        )
