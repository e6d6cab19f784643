"""Per-tenant rate limits: token buckets per tenant, for calls and for ingested telemetry points.

Each tenant's bucket holds up to `burst` tokens and refills at `rate` tokens per second; every
call of a tenant's key takes one. A call that finds the bucket empty is refused with
RESOURCE_EXHAUSTED and the time until a token is back (the `retry-after-ms` trailer). The platform
admin is not limited. Buckets live in the server process: with several processes or replicas each
enforces the limit on the calls it serves.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from foedus.server.errors import ResourceExhausted


class RateLimiter:
    """Token buckets by key (the tenant)."""

    def __init__(self, rate: float, burst: int = 0, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError("the rate must be a positive number of requests per second")
        self.rate = float(rate)
        self.burst = float(burst if burst > 0 else max(1, math.ceil(2 * rate)))
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens for `key`: 0.0 when granted, else the seconds until they are there.

        A cost above the burst is granted from a full bucket and leaves it in debt, so a large
        batch is never refused for ever, and what follows it waits for the debt to be repaid.
        """
        need = min(cost, self.burst)
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= need:
                self._buckets[key] = (tokens - cost, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (need - tokens) / self.rate


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
