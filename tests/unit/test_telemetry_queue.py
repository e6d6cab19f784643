"""The agent's durable telemetry queue: order, acknowledgement, size limits, threads and a killed process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from foedus.client_sdk.agent.queue import TelemetryQueue, TelemetryQueueFull


def test_batches_come_back_in_put_order_with_unique_increasing_ids(tmp_path: Path) -> None:
    with TelemetryQueue(tmp_path / "telemetry.db") as queue:
        assert queue.depth() == 0 and queue.oldest_age_s() is None and queue.peek() == []
        before = time.time()
        ids = [queue.put(f"batch {i}".encode()) for i in range(12)]
        assert len(set(ids)) == 12 and ids == sorted(ids)
        assert all(batch_id.startswith(queue.queue_id + "-") for batch_id in ids)
        batches = queue.peek(limit=5)
        assert [b.batch_id for b in batches] == ids[:5]
        assert [b.payload for b in batches] == [f"batch {i}".encode() for i in range(5)]
        assert [b.sequence for b in batches] == sorted(b.sequence for b in batches)
        assert before <= batches[0].created_at <= time.time()
        assert queue.depth() == 12 and len(queue.peek(limit=100)) == 12
        assert queue.size_bytes() == sum(len(f"batch {i}") for i in range(12))
        age = queue.oldest_age_s()
        assert age is not None and 0.0 <= age < 60.0


def test_ack_removes_only_the_given_batches_and_is_idempotent(tmp_path: Path) -> None:
    with TelemetryQueue(tmp_path / "telemetry.db") as queue:
        ids = [queue.put(bytes([i]) * 10) for i in range(6)]
        assert queue.ack([ids[1], ids[4]]) == 2
        assert [b.batch_id for b in queue.peek()] == [ids[0], ids[2], ids[3], ids[5]]
        assert queue.ack([ids[1], ids[0]]) == 1  # ids[1] was acknowledged already
        assert queue.ack([]) == 0
        assert queue.depth() == 3 and queue.size_bytes() == 30
        with pytest.raises(ValueError, match="not a batch id"):
            queue.ack(["0123abcd-00000000000000000003"])
        with pytest.raises(ValueError):
            queue.ack([ids[2], "garbage"])
        assert queue.depth() == 3  # a bad id in the list removes nothing
        assert queue.ack(ids) == 3
        assert queue.depth() == 0 and queue.oldest_age_s() is None


def test_reopen_keeps_batches_queue_id_and_never_reuses_a_sequence(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    with TelemetryQueue(path) as queue:
        queue_id = queue.queue_id
        first = [queue.put(b"a"), queue.put(b"b"), queue.put(b"c")]
        queue.ack(first[1:])  # the newest batches are gone; their sequences must not come back
    with TelemetryQueue(path) as queue:
        assert queue.queue_id == queue_id
        assert [b.batch_id for b in queue.peek()] == first[:1]
        later = queue.put(b"d")
        assert later > first[-1] and later not in first
    other = TelemetryQueue(tmp_path / "other.db")
    assert other.queue_id != queue_id  # ids are unique across queue files
    other.close()


def test_a_full_queue_refuses_new_batches_and_drops_nothing(tmp_path: Path) -> None:
    with TelemetryQueue(tmp_path / "by_count.db", max_batches=3) as queue:
        ids = [queue.put(b"x") for _ in range(3)]
        with pytest.raises(TelemetryQueueFull):
            queue.put(b"y")
        assert queue.refused == 1 and [b.batch_id for b in queue.peek()] == ids
        queue.ack(ids[:1])
        queue.put(b"y")  # room again after an acknowledgement
        assert queue.depth() == 3
    with TelemetryQueue(tmp_path / "by_bytes.db", max_bytes=100) as queue:
        queue.put(b"x" * 60)
        with pytest.raises(TelemetryQueueFull, match="exceed"):
            queue.put(b"x" * 41)
        queue.put(b"x" * 40)
        with pytest.raises(TelemetryQueueFull):
            queue.put(b"z")
        assert queue.size_bytes() == 100 and queue.depth() == 2 and queue.refused == 2
    with pytest.raises(ValueError):
        TelemetryQueue(tmp_path / "bad.db", max_batches=0)


def test_threads_put_and_ack_concurrently_without_losing_or_duplicating(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    queue = TelemetryQueue(path)
    returned: list[list[str]] = [[] for _ in range(8)]

    def producer(worker: int) -> None:
        for i in range(100):
            returned[worker].append(queue.put(f"{worker}:{i}".encode()))

    def sender() -> None:
        while any(len(r) < 100 for r in returned) or queue.depth():
            queue.ack(b.batch_id for b in queue.peek(limit=7)[:3])

    threads = [threading.Thread(target=producer, args=(w,)) for w in range(8)]
    threads.append(threading.Thread(target=sender))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    all_ids = [batch_id for ids in returned for batch_id in ids]
    assert len(all_ids) == 800 == len(set(all_ids))
    assert all(ids == sorted(ids) for ids in returned)  # each thread sees its own puts in order
    assert queue.depth() == 0 and queue.size_bytes() == 0
    queue.close()


_PRODUCER = textwrap.dedent(
    """
    import sys
    from foedus.client_sdk.agent.queue import TelemetryQueue

    queue = TelemetryQueue(sys.argv[1])
    first = [queue.put(b"first-%d" % i) for i in range(100)]
    queue.ack(first[:50])
    print("acked", *first[:50], flush=True)
    i = 0
    while True:
        batch_id = queue.put(b"later-%d" % i + b"." * (i % 2000))
        print(batch_id, i, flush=True)
        i += 1
    """
)


def test_every_put_and_ack_survives_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, str(path)], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert child.stdout is not None
    acked_line = child.stdout.readline().split()
    assert acked_line[0] == "acked", acked_line
    acked = set(acked_line[1:])
    returned: dict[str, int] = {}
    try:
        while len(returned) < 300:
            line = child.stdout.readline()
            assert line, f"the producer exited early with {child.wait()}"
            batch_id, number = line.split()
            returned[batch_id] = int(number)
    finally:
        os.kill(child.pid, signal.SIGKILL)  # mid-put: no close, no checkpoint
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    with TelemetryQueue(path) as queue:
        batches = queue.peek(limit=1_000_000)
    ids = [b.batch_id for b in batches]
    assert len(ids) == len(set(ids)), "a batch was duplicated"
    assert ids == sorted(ids)
    queued = {b.batch_id: b.payload for b in batches}
    assert not acked & queued.keys(), "an acknowledged batch came back"
    missing = [batch_id for batch_id in returned if batch_id not in queued]
    assert not missing, f"{len(missing)} batches that put() returned for were lost"
    for batch_id, i in returned.items():
        assert queued[batch_id] == b"later-%d" % i + b"." * (i % 2000)
    # the 50 unacknowledged first batches come first, then the later ones in order
    assert [b.payload for b in batches[:50]] == [b"first-%d" % i for i in range(50, 100)]
