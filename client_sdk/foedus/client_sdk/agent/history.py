"""The agent's local metric history: one row per interval on local disk, read by federated training.

Only aggregates are kept (request counts, error rate, latency quantiles, resource use, scores), never
raw model inputs. Rows older than the retention are deleted as new ones arrive.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

HISTORY_METRICS = (
    "requests",
    "error_rate",
    "latency_p50_ms",
    "latency_p99_ms",
    "process_cpu_percent",
    "process_memory_bytes",
)
"""The interval metric vector, in this order: what the statistical detector and the ops models see."""


class LocalHistory:
    def __init__(self, path: Path, *, retention_s: float = 7 * 86_400) -> None:
        self.retention_s = retention_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS intervals (start_ms INTEGER NOT NULL, version TEXT NOT NULL, "
            "metrics TEXT NOT NULL, scores TEXT NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS ix_intervals_start ON intervals(start_ms)")
        self._lock = threading.Lock()

    def append(
        self, start_ms: int, version: str, metrics: dict[str, float], scores: dict[str, float]
    ) -> None:
        cutoff = int((time.time() - self.retention_s) * 1000)
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO intervals VALUES (?, ?, ?, ?)",
                (start_ms, version, json.dumps(metrics), json.dumps(scores)),
            )
            self._db.execute("DELETE FROM intervals WHERE start_ms < ?", (cutoff,))
            self._db.execute("COMMIT")

    def rows(self, since_ms: int = 0) -> list[tuple[int, str, dict[str, float], dict[str, float]]]:
        with self._lock:
            cursor = self._db.execute(
                "SELECT start_ms, version, metrics, scores FROM intervals WHERE start_ms >= ? ORDER BY start_ms",
                (since_ms,),
            )
            return [(s, v, json.loads(m), json.loads(c)) for s, v, m, c in cursor]

    def close(self) -> None:
        self._db.close()
