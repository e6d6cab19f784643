"""Wakes the watchers of a deployment, a rollout or an alert stream when it changes, in every replica.

A change committed in this process wakes its watchers at once. With PostgreSQL, the change is also
published with NOTIFY on one channel, and every replica LISTENs on it, so a change made through any
replica reaches the watchers of all the others within milliseconds. Watchers still re-read the
store every `poll_s` seconds: that covers SQLite with several worker processes, a NOTIFY lost while
a replica's listening connection was down (a PostgreSQL restart), and a process killed between its
commit and its NOTIFY.

A notification's payload is `tenant NUL key`; `key` is a deployment name or another watcher's key
(a rollout, an alert stream). Keys in the tenant `*` are broadcasts to the replicas themselves
(`subscribe`), e.g. "keys changed, forget cached principals".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

CHANNEL = "foedus_changes"
"""The PostgreSQL NOTIFY channel of the change feed."""
BROADCAST = "*"
"""The tenant of replica-wide notifications (no tenant is named `*`: names are slugs)."""
_SEP = "\x1f"  # unit separator: neither tenant names nor keys contain it


class ChangeFeed:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, poll_s: float = 2.0) -> None:
        self._loop = loop
        self.poll_s = poll_s
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = {}
        self._subscribers: dict[str, list[Callable[[], None]]] = {}
        self._bus: PostgresBus | None = None

    def notify(self, tenant: str, deployment: str) -> None:
        """Thread-safe: called by a service after it committed a change."""
        self._loop.call_soon_threadsafe(self._wake, (tenant, deployment))
        if self._bus is not None:
            self._bus.publish(f"{tenant}{_SEP}{deployment}")

    def subscribe(self, key: str, callback: Callable[[], None]) -> None:
        """Calls `callback` (on the event loop) whenever any replica notifies (BROADCAST, key)."""
        self._subscribers.setdefault(key, []).append(callback)

    def connect_postgres(self, url: str) -> None:
        """Publishes changes with NOTIFY and listens for those of the other replicas (PostgreSQL)."""
        self._bus = PostgresBus(url, self._received)
        self._bus.start()

    def close(self) -> None:
        if self._bus is not None:
            self._bus.stop()
            self._bus = None

    def _received(self, payload: str) -> None:
        tenant, sep, key = payload.partition(_SEP)
        if sep:
            self._loop.call_soon_threadsafe(self._wake, (tenant, key))

    def _wake(self, key: tuple[str, str]) -> None:
        for event in self._waiters.get(key, ()):
            event.set()
        if key[0] == BROADCAST:
            for callback in self._subscribers.get(key[1], ()):
                try:
                    callback()
                except Exception:
                    log.exception("change feed subscriber of %s failed", key[1])

    async def wait(self, tenant: str, deployment: str) -> None:
        """Returns when the deployment changed in any replica, or after the poll interval."""
        key = (tenant, deployment)
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self.poll_s)
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[key]


class PostgresBus:
    """NOTIFY and LISTEN on `CHANNEL`, each on a connection of its own, in one background thread.

    Publishing never blocks the caller: payloads queue up and the thread sends them. When the
    database goes away (restart, failover), the thread reconnects with backoff and LISTENs again;
    what was published meanwhile is sent once it is back (watchers poll in the meantime).
    """

    def __init__(self, url: str, on_payload: Callable[[str], None]) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        # psycopg wants a libpq URL: the SQLAlchemy driver suffix goes.
        self._dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_payload = on_payload
        self._pending: list[str] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="foedus-change-bus", daemon=True)
        self.connected = threading.Event()
        """Set while the listening connection is up (for tests and health)."""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def publish(self, payload: str) -> None:
        with self._cond:
            if len(self._pending) < 100_000:  # a database down for long: watchers poll anyway
                self._pending.append(payload)
            self._cond.notify_all()

    def _run(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                self._serve()
                backoff = 0.2
            except Exception as exc:  # psycopg.OperationalError and friends: the database went away
                self.connected.clear()
                log.warning("change feed: PostgreSQL connection lost (%s); reconnecting", exc)
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _serve(self) -> None:
        import psycopg

        with (
            psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as listener,
            psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as sender,
        ):
            listener.execute(f"LISTEN {CHANNEL}")
            self.connected.set()
            log.info("change feed: listening on PostgreSQL channel %s", CHANNEL)
            while not self._stopping:
                self._send(sender)
                # Short waits keep publishing prompt; notifies() returns early when one arrives.
                for note in listener.notifies(timeout=0.05):
                    self._on_payload(note.payload)

    def _send(self, sender: Any) -> None:
        with self._cond:
            batch, self._pending = self._pending, []
        try:
            for payload in dict.fromkeys(batch):  # one NOTIFY per distinct change
                sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        except Exception:
            with self._cond:
                self._pending[:0] = batch
            raise
