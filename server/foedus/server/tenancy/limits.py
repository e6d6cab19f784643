"""Per-tenant rate limits: token buckets per tenant, for calls and for ingested telemetry points.

Each tenant's bucket holds up to `burst` tokens and refills at `rate` tokens per second; every
call of a tenant's key takes one. A call that finds the bucket empty is refused with
RESOURCE_EXHAUSTED and the time until a token is back (the `retry-after-ms` trailer). The platform
admin is not limited.

The limits are for the whole control plane. Buckets live in the server process, and every process
(replica or worker) renews a row in the store's members table every few seconds (`Membership`):
each one counts the processes renewed lately and keeps 1/N of the rate and of the burst. Calls
spread evenly over the processes (round-robin balancing) then get the configured rate in all;
traffic that is uneven gets less (a client stuck to one replica gets about 1/N of it). A process
that stops leaves at once; one that dies is dropped after the member timeout, and the others take
over its share then.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from foedus.server.errors import ResourceExhausted
from foedus.server.store.base import Store

log = logging.getLogger("foedus.server.limits")


class RateLimiter:
    """Token buckets by key (the tenant).

    `rate` and `burst` are the limits of the whole control plane; this process enforces its share
    of them, 1/`members` (`share()`), with a burst of at least one token.
    """

    def __init__(self, rate: float, burst: int = 0, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError("the rate must be a positive number of requests per second")
        self.rate = float(rate)
        self.burst = float(burst if burst > 0 else max(1, math.ceil(2 * rate)))
        self._rate, self._burst = self.rate, self.burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def share(self, members: int) -> None:
        """Enforces 1/`members` of the rate and of the burst (at least one token) from now on."""
        members = max(1, members)
        with self._lock:
            self._rate = self.rate / members
            self._burst = max(1.0, self.burst / members)

    @property
    def local_rate(self) -> float:
        """Tokens per second this process grants a tenant: its share of the rate."""
        return self._rate

    @property
    def local_burst(self) -> float:
        """The most tokens a tenant's bucket holds in this process: its share of the burst."""
        return self._burst

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens for `key`: 0.0 when granted, else the seconds until they are there.

        A cost above the burst is granted from a full bucket and leaves it in debt, so a large
        batch is never refused for ever, and what follows it waits for the debt to be repaid.
        """
        now = self._clock()
        with self._lock:
            rate, burst = self._rate, self._burst
            need = min(cost, burst)
            tokens, then = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - then) * rate)
            if tokens >= need:
                self._buckets[key] = (tokens - cost, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (need - tokens) / rate


class Membership:
    """This server process's row in the store's members table, and the limiters that share their
    limits among the live members.

    `renew()` (every `heartbeat_s`, in the store's threads) registers or renews the row, drops the
    members not renewed for `timeout_s`, and gives each limiter its share; `leave()` deletes the
    row when the process stops, so the others take over its share at their next renewal.
    """

    def __init__(
        self,
        store: Store,
        limiters: Sequence[RateLimiter],
        *,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.member = uuid.uuid4().hex
        self.members = 1
        """The live server processes counted at the last renewal, this one included."""
        self._store = store
        self._limiters = list(limiters)
        self._timeout_us = int(timeout_s * 1_000_000)
        self._clock = clock

    def renew(self) -> int:
        """Renews this process's row; returns the number of live members and shares the limits."""
        members = max(
            1, self._store.renew_member(self.member, int(self._clock() * 1_000_000), self._timeout_us)
        )
        if members != self.members:
            log.info("rate limits are shared among %d server process(es)", members)
        self.members = members
        for limiter in self._limiters:
            limiter.share(members)
        return members

    def leave(self) -> None:
        self._store.remove_member(self.member)


def take_ingest(limiter: RateLimiter | None, tenant: str | None, points: int, what: str) -> None:
    """Takes `points` from the tenant's ingest limit (None: unlimited, or the admin); over it,
    ResourceExhausted with the wait, and the caller stores nothing of `what`."""
    if limiter is None or tenant is None:
        return
    wait = limiter.take(tenant, points)
    if wait > 0:
        raise ResourceExhausted(
            f"tenant {tenant!r} is over its ingest limit of {limiter.rate:g} points per second; "
            f"{what} ({points} points) was not stored: send it again in {wait:.2f} s",
            retry_after_s=wait,
        )
