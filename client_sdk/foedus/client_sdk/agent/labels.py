"""The agent's local record of predictions, joined with delayed labels into performance counts.

Every answered inference request that carries an id (OIP `ModelInferRequest.id`) becomes a row of a
local SQLite file: request id -> version, time, predicted class or value, predicted probabilities,
and the value of the version's sensitive feature when one is declared. A request of N > 1 rows is
recorded as `<id>/0` ... `<id>/<N-1>`. Rows are kept for `retention_s` (default 7 days), then
pruned; a label that comes later finds nothing to join. Raw inputs are not stored, and nothing of
a row leaves the host: only additive counts do (see `foedus.client_sdk.performance`).

Labels come from the control plane in sequence order. `join` stores the pulled labels, advances the
cursor and joins every waiting label with its prediction in one transaction, so after a restart the
agent continues from the last sequence it stored and no label is joined twice. A label whose request
id is not known here waits `unmatched_retention_s` (default 1 hour): another agent of the deployment
may hold the prediction (then it never joins here), or the prediction is still in the agent's
memory buffer. The first label of a request id counts; later ones are ignored.

Each record or join writes its counts to an outbox row in the same transaction; the outbox row's
id is the idempotency key of its `ReportPerformance` call, so a resend after a crash is never
counted twice by the control plane.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from foedus.client_sdk.agent.queue import _Transaction
from foedus.client_sdk.performance import CLASSIFICATION, REGRESSION, PerformanceTotals, expected_confusion
from foedus.v1 import agent_pb2

DEFAULT_RETENTION_S = 7 * 86_400
DEFAULT_UNMATCHED_RETENTION_S = 3_600
WINDOW_MS = 60_000
"""Counts are keyed by the minute of the prediction time; queries sum minutes into windows."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    log_id TEXT NOT NULL,
    label_cursor INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    task TEXT NOT NULL,
    predicted TEXT NOT NULL,
    value REAL NOT NULL,
    probabilities TEXT,
    segment TEXT NOT NULL,
    labelled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ix_predictions_time ON predictions (time_ms);
CREATE TABLE IF NOT EXISTS pending_labels (
    request_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL
);
"""


def normalize_label(value: object) -> str:
    """One text per class: integral numbers as integers ("1.0" and "1" are the same class)."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number == int(number):
        return str(int(number))
    return text


@dataclass(frozen=True, slots=True)
class Prediction:
    request_id: str
    version: str
    time_ms: int
    task: str
    predicted: str
    value: float
    probabilities: dict[str, float] | None
    segment: str


@dataclass(frozen=True, slots=True)
class VersionOutputs:
    """How to read a version's answers: its class labels (probability columns) and sensitive feature."""

    classes: tuple[str, ...] | None = None
    """Labels of the probability columns; None: the column index ("0", "1", ...)."""
    sensitive_column: int | None = None
    sensitive_feature: str = ""


@dataclass
class PredictionBuffer:
    """Predictions of answered requests, in memory until the agent writes them to its log."""

    versions: dict[str, VersionOutputs] = field(default_factory=dict)
    rows: list[Prediction] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def configure(self, version: str, outputs: VersionOutputs) -> None:
        self.versions[version] = outputs

    def record(
        self,
        request_id: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        names: Sequence[str],
        outputs: Sequence[np.ndarray],
    ) -> None:
        if not request_id:
            return
        rows = extract(
            request_id, version, self.versions.get(version, VersionOutputs()), inputs, names, outputs
        )
        if rows:
            with self._lock:
                self.rows.extend(rows)

    def take(self) -> list[Prediction]:
        with self._lock:
            rows, self.rows = self.rows, []
        return rows


def extract(
    request_id: str,
    version: str,
    config: VersionOutputs,
    inputs: Mapping[str, np.ndarray],
    names: Sequence[str],
    outputs: Sequence[np.ndarray],
) -> list[Prediction]:
    """Predictions of one answered request: a label output (integers or text) with an optional 2-D
    probability output makes a classification, a single float output a regression."""
    labels = probabilities = values = None
    for array in outputs:
        if array.dtype.kind in "iubOSU" and labels is None and (array.ndim == 1 or array.shape[-1] == 1):
            labels = array.reshape(-1)
        elif array.dtype.kind == "f" and array.ndim == 2 and array.shape[1] >= 2 and probabilities is None:
            probabilities = array
        elif array.dtype.kind == "f" and values is None and (array.ndim == 1 or array.shape[-1] == 1):
            values = array.reshape(-1)
    rows_n = labels.size if labels is not None else values.size if values is not None else 0
    if rows_n == 0:
        return []
    segments = [""] * rows_n
    if config.sensitive_column is not None and len(inputs) == 1:
        matrix = next(iter(inputs.values()))
        if matrix.ndim == 2 and matrix.shape[0] == rows_n and config.sensitive_column < matrix.shape[1]:
            segments = [normalize_label(v) for v in matrix[:, config.sensitive_column].tolist()]
    now = int(time.time() * 1000)
    out = []
    for i in range(rows_n):
        rid = request_id if rows_n == 1 else f"{request_id}/{i}"
        if labels is not None:
            probs = None
            if probabilities is not None and probabilities.shape[0] == rows_n:
                columns = config.classes or tuple(str(j) for j in range(probabilities.shape[1]))
                if len(columns) == probabilities.shape[1]:
                    probs = {c: float(p) for c, p in zip(columns, probabilities[i].tolist(), strict=True)}
            predicted = normalize_label(labels[i].item() if hasattr(labels[i], "item") else labels[i])
            out.append(Prediction(rid, version, now, CLASSIFICATION, predicted, 0.0, probs, segments[i]))
        else:
            assert values is not None
            value = float(values[i])
            out.append(Prediction(rid, version, now, REGRESSION, "", value, None, segments[i]))
    return out


Key = tuple[str, int, str]
"""(version, window start in ms, segment)."""


class PredictionLog:
    """Predictions, waiting labels, the label cursor and an outbox of counts, in one SQLite file."""

    def __init__(
        self,
        path: str | Path,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        unmatched_retention_s: float = DEFAULT_UNMATCHED_RETENTION_S,
    ) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.unmatched_retention_s = unmatched_retention_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            with _Transaction(self._db):
                self._db.execute(
                    "INSERT OR IGNORE INTO log_state (id, log_id, label_cursor) VALUES (1, ?, 0)",
                    (uuid.uuid4().hex,),
                )
            row = self._db.execute("SELECT log_id FROM log_state WHERE id = 1").fetchone()
        except BaseException:
            self._db.close()
            raise
        self.log_id: str = row[0]

    @property
    def cursor(self) -> int:
        """Sequence of the last label stored here."""
        with self._lock:
            return int(self._db.execute("SELECT label_cursor FROM log_state WHERE id = 1").fetchone()[0])

    def record(self, rows: Sequence[Prediction], sensitive: Mapping[str, str] | None = None) -> None:
        """Stores predictions (a known request id keeps its first prediction) and queues their counts."""
        if not rows:
            return
        totals: dict[Key, PerformanceTotals] = {}
        with self._lock, _Transaction(self._db):
            for row in rows:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO predictions (request_id, version, time_ms, task, predicted, value,"
                    " probabilities, segment) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.request_id,
                        row.version,
                        row.time_ms,
                        row.task,
                        row.predicted,
                        row.value,
                        json.dumps(row.probabilities) if row.probabilities is not None else None,
                        row.segment,
                    ),
                )
                if cursor.rowcount != 1:
                    continue
                t = _totals(totals, row.version, row.time_ms, row.segment, row.task)
                t.predictions += 1
                if row.probabilities is not None:
                    t.add_cells(t.expected, _expected_cells(row.probabilities, row.predicted, +1.0))
            self._queue(totals, sensitive or {})

    def join(self, labels: Iterable[agent_pb2.Label], sensitive: Mapping[str, str] | None = None) -> int:
        """Stores pulled labels, moves the cursor past them, joins every waiting label it can.

        Returns the number of labels joined. Waiting labels older than `unmatched_retention_s` are dropped.
        """
        now = int(time.time() * 1000)
        joined = 0
        totals: dict[Key, PerformanceTotals] = {}
        with self._lock, _Transaction(self._db):
            last = None
            for label in labels:
                self._db.execute(
                    "INSERT OR IGNORE INTO pending_labels (request_id, label, received_ms) VALUES (?, ?, ?)",
                    (label.request_id, label.label, now),
                )
                last = label.sequence if last is None else max(last, label.sequence)
            if last is not None:
                self._db.execute(
                    "UPDATE log_state SET label_cursor = MAX(label_cursor, ?) WHERE id = 1", (last,)
                )
            matches = self._db.execute(
                "SELECT l.request_id, l.label, p.version, p.time_ms, p.task, p.predicted, p.value,"
                " p.probabilities, p.segment, p.labelled FROM pending_labels l"
                " JOIN predictions p ON p.request_id = l.request_id"
            ).fetchall()
            for rid, label, version, time_ms, task, predicted, value, probs_json, segment, done in matches:
                self._db.execute("DELETE FROM pending_labels WHERE request_id = ?", (rid,))
                if done:
                    continue  # labelled before: the first label counts
                if not _add_labelled(
                    _totals(totals, version, time_ms, segment, task),
                    task,
                    normalize_label(label),
                    predicted,
                    value,
                    json.loads(probs_json) if probs_json else None,
                ):
                    continue
                self._db.execute("UPDATE predictions SET labelled = 1 WHERE request_id = ?", (rid,))
                joined += 1
            self._db.execute(
                "DELETE FROM pending_labels WHERE received_ms <= ?",
                (now - int(self.unmatched_retention_s * 1000),),
            )
            self._queue(totals, sensitive or {})
        return joined

    def prune(self) -> int:
        """Removes predictions older than the retention window; returns how many."""
        cutoff = int((time.time() - self.retention_s) * 1000)
        with self._lock, _Transaction(self._db):
            return max(self._db.execute("DELETE FROM predictions WHERE time_ms < ?", (cutoff,)).rowcount, 0)

    def outbox(self, limit: int = 20) -> list[tuple[str, agent_pb2.ReportPerformanceRequest]]:
        """The oldest queued reports with their batch ids, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, payload FROM outbox ORDER BY sequence LIMIT ?", (limit,)
            ).fetchall()
        out = []
        for sequence, payload in rows:
            request = agent_pb2.ReportPerformanceRequest.FromString(bytes(payload))
            request.batch_id = f"{self.log_id}-p{sequence:020d}"
            out.append((request.batch_id, request))
        return out

    def ack(self, batch_id: str) -> None:
        sequence = int(batch_id.rpartition("-p")[2])
        with self._lock, _Transaction(self._db):
            self._db.execute("DELETE FROM outbox WHERE sequence = ?", (sequence,))

    def prediction_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _queue(self, totals: Mapping[Key, PerformanceTotals], sensitive: Mapping[str, str]) -> None:
        """Writes one outbox row per sensitive feature (inside the caller's transaction)."""
        by_feature: dict[str, list[agent_pb2.PerformanceCounts]] = {}
        for (version, window, segment), t in sorted(totals.items()):
            by_feature.setdefault(sensitive.get(version, "") if segment else "", []).append(
                counts_message(version, window, segment, t)
            )
        for feature, counts in by_feature.items():
            request = agent_pb2.ReportPerformanceRequest(counts=counts, sensitive_feature=feature)
            self._db.execute("INSERT INTO outbox (payload) VALUES (?)", (request.SerializeToString(),))


def _totals(
    totals: dict[Key, PerformanceTotals], version: str, time_ms: int, segment: str, task: str
) -> PerformanceTotals:
    key = (version, time_ms - time_ms % WINDOW_MS, segment)
    t = totals.get(key)
    if t is None:
        t = totals[key] = PerformanceTotals(task=task)
    return t


def _expected_cells(
    probabilities: Mapping[str, float], predicted: str, sign: float
) -> list[tuple[str, str, float]]:
    classes = list(probabilities)
    cells = expected_confusion(np.asarray([[probabilities[c] for c in classes]]), [predicted], classes)
    return [(t, p, sign * w) for (t, p), w in cells.items()]


def _add_labelled(
    t: PerformanceTotals,
    task: str,
    label: str,
    predicted: str,
    value: float,
    probabilities: Mapping[str, float] | None,
) -> bool:
    """Adds one joined prediction; False when the label does not fit the task (not a number)."""
    if task == REGRESSION:
        try:
            truth = float(label)
        except ValueError:
            return False
        if not math.isfinite(truth):
            return False
        error = value - truth
        t.sum_abs_error += abs(error)
        t.sum_squared_error += error * error
        t.sum_error += error
    else:
        t.add_cells(t.confusion, [(label, predicted, 1.0)])
        if probabilities is not None:
            t.add_cells(t.expected, _expected_cells(probabilities, predicted, -1.0))
            for cls, p in probabilities.items():
                positive = int(cls == label)
                t.add_scores(cls, [p], [positive], [1 - positive])
    t.labelled += 1
    return True


def counts_message(
    version: str, window: int, segment: str, t: PerformanceTotals
) -> agent_pb2.PerformanceCounts:
    msg = agent_pb2.PerformanceCounts(
        version=int(version),
        window_start_unix_ms=window,
        segment=segment,
        predictions=t.predictions,
        labelled=t.labelled,
        task=t.task,
        sum_abs_error=t.sum_abs_error,
        sum_squared_error=t.sum_squared_error,
        sum_error=t.sum_error,
    )
    for (true, predicted), weight in sorted(t.confusion.items()):
        msg.confusion.append(
            agent_pb2.ConfusionCell(true_label=true, predicted_label=predicted, weight=weight)
        )
    for (true, predicted), weight in sorted(t.expected.items()):
        msg.expected.append(
            agent_pb2.ConfusionCell(true_label=true, predicted_label=predicted, weight=weight)
        )
    for label, by_score in sorted(t.scores.items()):
        items = sorted(by_score.items())
        msg.scores.append(
            agent_pb2.ClassScores(
                label=label,
                scores=[s for s, _ in items],
                positives=[c[0] for _, c in items],
                negatives=[c[1] for _, c in items],
            )
        )
    return msg


def totals_from_message(msg: agent_pb2.PerformanceCounts) -> PerformanceTotals:
    t = PerformanceTotals(
        task=msg.task,
        predictions=msg.predictions,
        labelled=msg.labelled,
        sum_abs_error=msg.sum_abs_error,
        sum_squared_error=msg.sum_squared_error,
        sum_error=msg.sum_error,
    )
    t.add_cells(t.confusion, ((c.true_label, c.predicted_label, c.weight) for c in msg.confusion))
    t.add_cells(t.expected, ((c.true_label, c.predicted_label, c.weight) for c in msg.expected))
    for s in msg.scores:
        t.add_scores(s.label, list(s.scores), list(s.positives), list(s.negatives))
    return t
