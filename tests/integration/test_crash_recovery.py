"""SIGKILL of the server in the middle of registrations and a large upload, then a restart on its data.

What must hold after the restart: every acknowledged version is there with its content; each model's
versions are numbered 1..N without gaps or repeats; no visible version points at a missing or partial
blob; the upload that was in flight left no version; the killed process's partial uploads are gone.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from serverproc import ServerPool, pid_namespaces_available, sha256_file

from foedus.client_sdk import Client
from foedus.client_sdk.errors import FoedusError, NotFound

KiB = 1024
MiB = 1024 * KiB
SMALL_MIN, SMALL_MAX = 64 * KiB, 2 * MiB
LARGE_BYTES = 100 * MiB
WORKERS = 4
MODELS = ("alpha", "beta")  # several workers per model: version numbers are contended
MIN_ACKS = 8  # acknowledged registrations before the large upload starts and the kill may come
WAIT_S = 30.0


@dataclass(frozen=True)
class Ack:
    model: str
    version: int
    sha256: str
    size: int


@dataclass
class Journal:
    """What the clients saw, written by the worker threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acks: list[Ack] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)
    """(model, sha256) of registrations cut off by the kill: committed or not, both are fine."""
    errors: list[str] = field(default_factory=list)
    """Failures before the kill: none expected."""

    def count(self) -> int:
        with self.lock:
            return len(self.acks)


def write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            piece = os.urandom(min(MiB, remaining))
            digest.update(piece)
            f.write(piece)
            remaining -= len(piece)
    return digest.hexdigest()


def register_in_a_loop(
    target: str,
    key: str,
    workdir: Path,
    worker: int,
    journal: Journal,
    killed: threading.Event,
    stop: threading.Event,
) -> None:
    rng = random.Random(worker)
    with Client.connect(target, api_key=key, timeout=WAIT_S) as client:
        n = 0
        while not stop.is_set():
            model = MODELS[(worker + n) % len(MODELS)]
            path = workdir / f"w{worker}-{n}.bin"
            size = rng.randint(SMALL_MIN, SMALL_MAX)
            sha = write_random(path, size)
            n += 1
            try:
                version = client.models.register(model, path, framework="custom", timeout=60)
            except Exception as exc:
                with journal.lock:
                    if killed.is_set():
                        journal.unknown.append((model, sha))
                    else:
                        journal.errors.append(f"worker {worker}: {model}: {exc!r}")
                return
            finally:
                path.unlink()
            with journal.lock:
                journal.acks.append(Ack(model, version.version, version.artifact.sha256, size))
                if version.artifact.sha256 != sha or version.artifact.size_bytes != size:
                    journal.errors.append(f"worker {worker}: acknowledged {version} for sha256 {sha}")


class LargeUpload:
    """Registers a large artifact in a thread; `outcome` is the version, or the exception it raised."""

    def __init__(self, target: str, key: str, path: Path, model: str = "large") -> None:
        self.outcome: list[object] = []
        self._args = (target, key, path, model)
        self.thread = threading.Thread(target=self._run, name="upload-large", daemon=True)

    def _run(self) -> None:
        target, key, path, model = self._args
        with Client.connect(target, api_key=key, timeout=WAIT_S) as client:
            try:
                self.outcome.append(client.models.register(model, path, framework="custom", timeout=120))
            except Exception as exc:
                self.outcome.append(exc)


def part_files(data_dir: Path) -> dict[Path, int]:
    sizes = {}
    for part in (data_dir / "artifacts" / "tmp").glob("*.part"):
        try:
            sizes[part] = part.stat().st_size
        except FileNotFoundError:
            continue
    return sizes


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> str | None:
    """None: SQLite in the data dir; else a fresh PostgreSQL database (skips without one)."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return None


def test_sigkill_during_registrations_then_restart_keeps_acknowledged_versions(
    db: str | None, pool: ServerPool, tmp_path: Path
) -> None:
    # `db` before `pool`: the servers stop before their PostgreSQL database is dropped.
    rng = random.Random()
    data_dir = tmp_path / "data"
    workdir = tmp_path / "work"
    workdir.mkdir()
    large = workdir / "large.bin"
    large_sha = write_random(large, LARGE_BYTES)

    server = pool.start(data_dir, db=db)
    admin_key = server.admin_key
    key = server.create_tenant(f"crash-{uuid.uuid4().hex[:8]}")

    journal = Journal()
    killed, stop = threading.Event(), threading.Event()
    workers = [
        threading.Thread(
            target=register_in_a_loop,
            args=(server.target, key, workdir, i, journal, killed, stop),
            name=f"register-{i}",
            daemon=True,
        )
        for i in range(WORKERS)
    ]
    upload = LargeUpload(server.target, key, large)
    uploader, large_outcome = upload.thread, upload.outcome
    try:
        for t in workers:
            t.start()
        wait_for(lambda: journal.count() >= MIN_ACKS or journal.errors, f"{MIN_ACKS} acknowledged versions")
        assert not journal.errors, journal.errors
        uploader.start()
        # Kill at a random point of the large upload (small ones are at most 2 MiB, so a larger
        # .part file is the large one), while the small registrations go on around it.
        kill_at = rng.randint(4 * MiB, LARGE_BYTES // 2)
        wait_for(
            lambda: any(size >= kill_at for size in part_files(data_dir).values()) or large_outcome,
            f"the large upload to reach {kill_at} bytes",
        )
        assert not large_outcome, f"the large upload ended before the kill: {large_outcome}"
        killed.set()
        assert server.kill() == -9
        stale_parts = part_files(data_dir)
    finally:
        stop.set()
        killed.set()
        for t in [*workers, uploader]:
            if t.is_alive() or t.ident is not None:
                t.join(WAIT_S)
    assert not any(t.is_alive() for t in [*workers, uploader]), "a client thread hangs after the kill"
    assert not journal.errors, journal.errors
    assert len(journal.acks) >= MIN_ACKS
    assert any(size >= kill_at for size in stale_parts.values()), "the large upload was not in flight"
    assert len(large_outcome) == 1
    assert isinstance(large_outcome[0], FoedusError), f"the large upload was not cut off: {large_outcome}"
    acked = {(a.model, a.version): a for a in journal.acks}
    assert len(acked) == len(journal.acks), f"a version number was acknowledged twice: {journal.acks}"

    # --- restart on the same data dir --------------------------------------------------------------
    server = pool.start(data_dir, db=db)
    assert server.admin_key == admin_key
    assert part_files(data_dir) == {}, "partial uploads of the killed server were not removed on start"
    with server.client() as admin:
        assert admin.whoami().key_id

    out = tmp_path / "out"
    out.mkdir()
    with server.client(key) as client:
        for model in MODELS:
            visible = client.models.versions(model, include_archived=True)
            numbers = sorted(v.version for v in visible)
            assert numbers == list(range(1, len(numbers) + 1)), f"{model}: versions {numbers}"
            by_number = {v.version: v for v in visible}
            for (m, number), ack in acked.items():
                if m == model:
                    assert number in by_number, f"acknowledged {ack} is gone after the restart"
                    assert by_number[number].artifact.sha256 == ack.sha256, f"{ack} changed its content"
                    assert by_number[number].artifact.size_bytes == ack.size
            allowed = {a.sha256 for a in journal.acks if a.model == model} | {
                sha for m, sha in journal.unknown if m == model
            }
            for v in visible:
                assert v.artifact.sha256 in allowed, f"{model} v{v.version} has content no client sent"
                got = client.models.download(model, out, v.version)
                assert got.stat().st_size == v.artifact.size_bytes
                assert sha256_file(got) == v.artifact.sha256, f"{model} v{v.version}: corrupt blob"
                got.unlink()
            unacked_visible = [v.version for v in visible if (model, v.version) not in acked]
            assert len(unacked_visible) <= sum(1 for m, _ in journal.unknown if m == model)

        try:
            found = client.models.versions("large", include_archived=True)
        except NotFound:
            found = []
        assert found == [], f"the cut-off large upload is visible: {found}"

        # No blob stored under a digest holds other (partial) content.
        blobs = [p for p in (data_dir / "artifacts" / "sha256").rglob("*") if p.is_file()]
        assert large_sha not in {p.name for p in blobs}
        for blob in blobs:
            assert sha256_file(blob) == blob.name, f"{blob} does not hold the content of its digest"

        # Numbering goes on where it stopped.
        for model in MODELS:
            latest = max((v.version for v in client.models.versions(model, limit=1)), default=0)
            extra = workdir / f"after-{model}.bin"
            write_random(extra, 100 * KiB)
            assert client.models.register(model, extra, framework="custom").version == latest + 1

    print(
        f"{'postgresql' if db else 'sqlite'}: {len(journal.acks)} acknowledged, "
        f"{len(journal.unknown)} cut off, killed at {kill_at} bytes of the large upload, "
        f"{len(stale_parts)} partial upload(s) left by the kill"
    )


def test_restart_with_the_same_pid_removes_the_killed_servers_partial_uploads(
    pool: ServerPool, tmp_path: Path
) -> None:
    """In a container the server is PID 1 on every start, so the killed server had the new one's pid.

    Its partial uploads must still be removed on start: they belong to a dead process.
    """
    if not pid_namespaces_available():
        pytest.skip("needs `unshare --pid` (root or user namespaces)")
    data_dir = tmp_path / "data"
    large = tmp_path / "large.bin"
    write_random(large, 64 * MiB)
    server = pool.start(data_dir, pid_namespace=True)
    key = server.create_tenant("container")
    upload = LargeUpload(server.target, key, large)
    upload.thread.start()
    try:
        wait_for(
            lambda: any(size >= 8 * MiB for size in part_files(data_dir).values()) or upload.outcome,
            "the large upload to reach 8 MiB",
        )
        assert not upload.outcome, f"the large upload ended before the kill: {upload.outcome}"
        server.kill()
    finally:
        upload.thread.join(WAIT_S)
    assert isinstance(upload.outcome[0], FoedusError)
    stale = part_files(data_dir)
    assert stale, "the kill left no partial upload to clean up"

    server = pool.start(data_dir, pid_namespace=True)
    left = part_files(data_dir)
    assert left == {}, (
        f"partial uploads of the killed server survive the restart: {sorted(p.name for p in left)} "
        "(named after the dead server's pid, which the new server has too)"
    )
    with server.client(key) as client, pytest.raises(NotFound):
        client.models.versions("large")
