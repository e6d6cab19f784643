"""The agent's local durable queue of telemetry batches, written before sending so an outage loses nothing.

A `TelemetryQueue` is one SQLite file (stdlib sqlite3) in WAL mode with ``synchronous=FULL``: once
`put` returns, the batch is on disk and survives a process kill (and, as far as the disk honours
fsync, a power loss); once `ack` returns, the acknowledged batches are gone for good. The sender
`peek`s the oldest batches, sends them in order, and `ack`s those the control plane confirmed.

Batch ids are ``"<queue id>-<sequence>"``: the queue id is a random UUID drawn when the file is
created, the sequence an SQLite AUTOINCREMENT number (zero-padded, so ids of one queue sort in put
order) that is never reused, even after every batch was acknowledged. Ids are therefore unique
across agents and restarts, and the server can use them to make a resent batch idempotent.

Size policy: with `max_batches` and/or `max_bytes` set, a `put` that would exceed either is refused
with `TelemetryQueueFull` and nothing already queued is dropped; the caller decides what to do
(aggregate coarser, retry later, count it as lost in its own telemetry). `refused` counts the
refusals of this process.

All methods are thread-safe (one connection, one lock). One process should own a queue file at a
time; another may open it afterwards (after a crash, too) and finds every batch still queued.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    queue_id TEXT NOT NULL,
    batches INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TRIGGER IF NOT EXISTS batch_queued AFTER INSERT ON batches BEGIN
    UPDATE queue_state SET batches = batches + 1, bytes = bytes + length(NEW.payload);
END;
CREATE TRIGGER IF NOT EXISTS batch_acknowledged AFTER DELETE ON batches BEGIN
    UPDATE queue_state SET batches = batches - 1, bytes = bytes - length(OLD.payload);
END;
"""
_SEQUENCE_DIGITS = 20


class TelemetryQueueFull(Exception):
    """A batch was refused because the queue is at its size limit; nothing was dropped."""


@dataclass(frozen=True)
class Batch:
    """One queued telemetry batch."""

    batch_id: str
    """Globally unique, idempotency key for the server; sorts in put order within a queue."""
    payload: bytes
    created_at: float
    """When it was put, in Unix seconds."""
    sequence: int
    """Position in this queue (increasing, never reused)."""


class TelemetryQueue:
    """A durable FIFO of telemetry batches in one SQLite file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_batches: int | None = None,
        max_bytes: int | None = None,
        busy_timeout_s: float = 10.0,
    ) -> None:
        """Opens the queue at `path`, creating the file (and a new queue id) if it does not exist."""
        if (max_batches is not None and max_batches < 1) or (max_bytes is not None and max_bytes < 1):
            raise ValueError("max_batches and max_bytes must be positive when given")
        self.path = Path(path)
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self.refused = 0
        """Batches this process could not queue because the queue was full."""
        self._lock = threading.Lock()
        # autocommit mode (isolation_level=None): transactions are the explicit BEGIN IMMEDIATE below
        self._db = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)  # idempotent, each statement atomic
            with self._transaction():
                self._db.execute(
                    "INSERT OR IGNORE INTO queue_state (id, queue_id, batches, bytes) VALUES (1, ?, 0, 0)",
                    (uuid.uuid4().hex,),
                )
            row = self._db.execute("SELECT queue_id FROM queue_state WHERE id = 1").fetchone()
        except BaseException:
            self._db.close()
            raise
        self.queue_id: str = row[0]
        """Random id of this queue file, the prefix of its batch ids."""

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def put(self, payload: bytes) -> str:
        """Queues a batch durably and returns its id; raises `TelemetryQueueFull` at the size limit."""
        data = bytes(payload)
        with self._lock, self._transaction():
            batches, size = self._db.execute("SELECT batches, bytes FROM queue_state WHERE id = 1").fetchone()
            if self.max_batches is not None and batches + 1 > self.max_batches:
                self.refused += 1
                raise TelemetryQueueFull(f"telemetry queue holds {batches} batches, its limit")
            if self.max_bytes is not None and size + len(data) > self.max_bytes:
                self.refused += 1
                raise TelemetryQueueFull(
                    f"telemetry queue holds {size} bytes; a batch of {len(data)} bytes "
                    f"would exceed its limit of {self.max_bytes}"
                )
            cursor = self._db.execute(
                "INSERT INTO batches (payload, created_at) VALUES (?, ?)", (data, time.time())
            )
            sequence = cursor.lastrowid
        assert sequence is not None
        return self._batch_id(sequence)

    def peek(self, limit: int = 100) -> list[Batch]:
        """The oldest `limit` batches, oldest first, without removing them."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, payload, created_at FROM batches ORDER BY sequence LIMIT ?", (limit,)
            ).fetchall()
        return [
            Batch(batch_id=self._batch_id(seq), payload=bytes(payload), created_at=created, sequence=seq)
            for seq, payload, created in rows
        ]

    def ack(self, batch_ids: Iterable[str]) -> int:
        """Removes the given batches durably; returns how many were still queued.

        Acknowledging a batch twice is harmless; an id of another queue raises ValueError and
        removes nothing.
        """
        sequences = [(self._sequence(batch_id),) for batch_id in batch_ids]
        if not sequences:
            return 0
        with self._lock, self._transaction():
            cursor = self._db.executemany("DELETE FROM batches WHERE sequence = ?", sequences)
            return max(cursor.rowcount, 0)

    def depth(self) -> int:
        """Number of queued batches."""
        with self._lock:
            return int(self._db.execute("SELECT batches FROM queue_state WHERE id = 1").fetchone()[0])

    def size_bytes(self) -> int:
        """Total payload bytes queued."""
        with self._lock:
            return int(self._db.execute("SELECT bytes FROM queue_state WHERE id = 1").fetchone()[0])

    def oldest_age_s(self) -> float | None:
        """Seconds since the oldest queued batch was put; None when the queue is empty."""
        with self._lock:
            row = self._db.execute("SELECT created_at FROM batches ORDER BY sequence LIMIT 1").fetchone()
        return None if row is None else max(0.0, time.time() - float(row[0]))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> TelemetryQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _batch_id(self, sequence: int) -> str:
        return f"{self.queue_id}-{sequence:0{_SEQUENCE_DIGITS}d}"

    def _sequence(self, batch_id: str) -> int:
        queue_id, sep, sequence = batch_id.rpartition("-")
        if not sep or queue_id != self.queue_id or not sequence.isdigit():
            raise ValueError(f"{batch_id!r} is not a batch id of telemetry queue {self.queue_id}")
        return int(sequence)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (the connection is in autocommit)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
