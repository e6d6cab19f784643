"""The Foedus server as a real subprocess, for tests that kill it, restart it or measure its memory.

    pool = ServerPool()
    try:
        server = pool.start(tmp_path / "data", db=postgres_url)   # ServerConfig fields as settings
        key = server.create_tenant("acme")
        ...
        server.kill()                                              # SIGKILL, no cleanup in the server
        server = pool.start(tmp_path / "data")                     # same data dir, same admin.key
    finally:
        pool.close()                                               # ends whatever is still running

The server listens on 127.0.0.1:0 unless `listen` is given; its port is read from the line `foedus server listening on HOST:PORT`
that `serve()` prints once it is serving. Its stdout and stderr go to a log file next to the data dir.
The server dies with the thread that started it (PR_SET_PDEATHSIG), so start servers from the test's
main thread. `pid_namespace=True` runs it as PID 1 of a new PID namespace, as in a container, where
every restart gets the same pid (needs `unshare` and root; see `pid_namespaces_available`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

from foedus.client_sdk import Client
from foedus.client_sdk.testing import free_port

# Runs in the child. argv: data dir, settings as JSON, the parent's pid (0: don't check it).
_SCRIPT = """
import asyncio, ctypes, json, logging, os, signal, sys
from pathlib import Path
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if int(sys.argv[3]) and os.getppid() != int(sys.argv[3]):
        sys.exit("the test process is gone")
except (OSError, AttributeError):
    pass
from foedus.server.app import serve
from foedus.server.config import load_config
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
settings = {"listen": "127.0.0.1:0", "latency_runs": 3, **json.loads(sys.argv[2])}
asyncio.run(serve(load_config(env={}, data_dir=Path(sys.argv[1]), **settings)))
"""

_UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
_LISTENING = re.compile(r"^foedus server listening on (?P<host>\S+):(?P<port>\d+)\s*$", re.MULTILINE)
_LIVE: weakref.WeakSet[ServerProcess] = weakref.WeakSet()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class ServerError(RuntimeError):
    """The server did not start, or did not stop as asked."""


@functools.cache
def pid_namespaces_available() -> bool:
    """Whether `unshare` can run a process in a new PID namespace here (root, or user namespaces)."""
    try:
        return subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry.name))
    return out


class ServerProcess:
    """One server subprocess. `start()` returns once it serves; `stop()`, `kill()` end it; a
    stopped or killed one can be started again (same data dir and settings, same log file)."""

    def __init__(
        self, data_dir: Path, log_path: Path | None = None, *, pid_namespace: bool = False, **settings: Any
    ) -> None:
        """`settings` are ServerConfig fields (`db=...`, `gc_grace_s=...`); None values are left out."""
        self.data_dir = Path(data_dir)
        self.settings = {k: v for k, v in settings.items() if v is not None}
        self.log_path = log_path or self.data_dir.with_name(
            f"{self.data_dir.name}-server-{time.time_ns()}.log"
        )
        self.pid_namespace = pid_namespace
        self.proc: subprocess.Popen[bytes] | None = None
        self._server_pid = 0
        self.host = ""
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> ServerProcess:
        if self.alive:
            raise ServerError("already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A restart appends to the same log: its address is looked for in what this start wrote.
        since = self.log_path.stat().st_size if self.log_path.exists() else 0
        parent = 0 if self.pid_namespace else os.getpid()
        args = [
            sys.executable,
            "-u",
            "-c",
            _SCRIPT,
            str(self.data_dir),
            json.dumps(self.settings),
            str(parent),
        ]
        if self.pid_namespace:
            args = [*_UNSHARE, *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FOEDUS_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while True:
            match = _LISTENING.search(self.log(since))
            if match:
                self.host, self.port = match["host"], int(match["port"])
                break
            if self.proc.poll() is not None:
                raise ServerError(
                    f"server exited with {self.proc.returncode} before serving; log:\n{self.log()[-4000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(f"server did not start within {timeout} s; log:\n{self.log()[-4000:]}")
            time.sleep(0.05)
        self._server_pid = self.proc.pid
        if self.pid_namespace:  # the server is unshare's child
            children = _children(self.proc.pid)
            if len(children) != 1:
                self.kill()
                raise ServerError(f"cannot find the server under unshare (children: {children})")
            self._server_pid = children[0]
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful shutdown); SIGKILL if it has not exited after `timeout`. Returns the exit code."""
        if self.proc is None:
            raise ServerError("not started")
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._server_pid or self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ServerError(f"server did not stop within {timeout} s of SIGTERM") from None
        return self.proc.returncode

    def kill(self) -> int:
        """SIGKILL of the server process: it gets no chance to clean up. Waits; returns the exit code."""
        if self.proc is None:
            raise ServerError("not started")
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._server_pid or self.proc.pid, signal.SIGKILL)
            if self._server_pid != self.proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()  # unshare, or a server that had not printed its address yet
        return self.proc.wait(30)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The server process's pid (as seen from here, also with `pid_namespace`)."""
        if not self._server_pid:
            raise ServerError("not started")
        return self._server_pid

    # --- access ----------------------------------------------------------------------------------
    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def client(self, api_key: str | None = None, **kwargs: Any) -> Client:
        """A client with the given key (default: the platform admin key)."""
        return Client.connect(self.target, api_key=api_key or self.admin_key, **kwargs)

    def create_tenant(self, name: str) -> str:
        """Creates a tenant and returns the secret of its first owner key."""
        with self.client() as admin:
            return admin.tenants.create(name).owner_key_secret

    def log(self, since: int = 0) -> str:
        """The log, from byte `since` on."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    # --- memory ----------------------------------------------------------------------------------
    def rss(self) -> dict[str, int]:
        """{"VmRSS": kB, "VmHWM": kB} of the server process, from /proc/PID/status (HWM = peak RSS)."""
        values: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
        return values

    def reset_peak_rss(self) -> bool:
        """Resets VmHWM to the current RSS (Linux >= 4.0, /proc/PID/clear_refs); False where not possible."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True


class ServerSet:
    """One control plane as processes: a single server, or replicas on one PostgreSQL database.

    Every member listens on a port of its own that is kept across `kill()` and `start()`, so
    clients and agents given `target` find the control plane again where they left it. With more
    than one member, `target` is a gRPC URI of all of them (`ipv4:HOST:PORT,HOST:PORT`): the SDK,
    the CLI and agents spread their calls over the replicas and fail over between them. Member i
    keeps its data in `DATA_DIR/replica-i` (the single server in DATA_DIR itself); the first
    creates the admin key, the others start after it with the same key file.
    """

    def __init__(self, pool: ServerPool, data_dir: Path, count: int = 1, **settings: Any) -> None:
        if count > 1 and not str(settings.get("db") or "").startswith("postgresql"):
            raise ValueError("replicas share one PostgreSQL database: give db='postgresql://...'")
        self.pool = pool
        self.settings = settings
        self.db = str(settings.get("db") or "")
        dirs = [Path(data_dir)] if count == 1 else [Path(data_dir) / f"replica-{i}" for i in range(count)]
        ports = [free_port() for _ in dirs]
        self.members = [
            ServerProcess(d, listen=f"127.0.0.1:{port}", **settings)
            for d, port in zip(dirs, ports, strict=True)
        ]
        pool.servers.extend(self.members)
        addresses = [f"127.0.0.1:{port}" for port in ports]
        self.target = addresses[0] if count == 1 else "ipv4:" + ",".join(addresses)

    def start(self) -> ServerSet:
        """Starts every member that is not running (again at its address, on its data)."""
        first = self.members[0]
        for member in self.members:
            if member.alive:
                continue
            if member is not first:
                member.data_dir.mkdir(parents=True, exist_ok=True)
                (member.data_dir / "admin.key").write_text(first.admin_key + "\n")
            member.start()
        return self

    def kill(self) -> None:
        """SIGKILL of every member: the whole control plane crashes."""
        for member in self.members:
            member.kill()

    @property
    def admin_key(self) -> str:
        return self.members[0].admin_key

    def client(self, api_key: str | None = None, **kwargs: Any) -> Client:
        """A client of all members with the given key (default: the platform admin key)."""
        return Client.connect(self.target, api_key=api_key or self.admin_key, **kwargs)

    def create_tenant(self, name: str) -> str:
        """Creates a tenant and returns the secret of its first owner key."""
        with self.client() as admin:
            return admin.tenants.create(name).owner_key_secret

    def lease_holder(self, lease: str) -> ServerProcess | None:
        """The member whose process holds the named database lease now (replicas only)."""
        import psycopg

        with psycopg.connect(self.db) as conn:
            row = conn.execute("SELECT owner FROM leases WHERE name = %s", (lease,)).fetchone()
        if row is None:
            return None
        pid = int(str(row[0]).split(":")[1])  # HOST:PID:NONCE
        return next((m for m in self.members if m.alive and m.pid == pid), None)


class ServerPool:
    """Starts servers and guarantees they are gone after `close()` (use it in a fixture's finalizer)."""

    def __init__(self) -> None:
        self.servers: list[ServerProcess] = []

    def start(self, data_dir: Path, **settings: Any) -> ServerProcess:
        server = ServerProcess(data_dir, **settings)
        self.servers.append(server)
        return server.start()

    def start_set(self, data_dir: Path, count: int = 1, **settings: Any) -> ServerSet:
        """A ServerSet of `count` members with these settings, started."""
        return ServerSet(self, data_dir, count, **settings).start()

    def close(self) -> None:
        for server in self.servers:
            if server.alive:
                with contextlib.suppress(ServerError):
                    server.stop(timeout=10)
            if server.proc is not None:
                server.kill()
        self.servers.clear()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.kill()
